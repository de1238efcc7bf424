"""Replica building steps Bottlerocket images need (bottlerocket-os/twoliter v0.5.0 twoliter/embedded/rpm2img, imghelper).

* ``shrink_ext``: rpm2img shrinks the BOOT and ROOT ext4 images with ``resize2fs -M`` after
  ``mkfs.ext4 -d``; resize2fs truncates the image file, so the dm-verity data area (ROOT) is the
  shrunk filesystem, not the partition.
* ``bootconfig_bytes``: PRIVATE's ``bootconfig.data``, as ``bootconfig -a`` writes it onto an empty
  file (Debian does not package the tool). Layout from the kernel's
  Documentation/admin-guide/bootconfig.rst: the text with a terminating NUL, NUL padding so the
  whole file is a multiple of 4 bytes, le32 size (text + padding), le32 checksum (byte sum of the
  text), then the 12-byte magic ``#BOOTCONFIG\\n``.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from immutools.replica.context import BuildError
from immutools.replica.kinds import register

BOOTCONFIG_MAGIC = b"#BOOTCONFIG\n"


def shrink_ext(runner, image: Path, step: str) -> dict:
    """``resize2fs -M`` the ext image file; return the new block count and size."""
    runner.run(["resize2fs", "-M", image], step + ":resize2fs")
    proc = runner.run(["dumpe2fs", "-h", image], step + ":dumpe2fs")
    text = proc.stdout.decode(errors="replace")
    count = re.search(r"^Block count:\s*(\d+)", text, re.M)
    size = re.search(r"^Block size:\s*(\d+)", text, re.M)
    if not count or not size:
        raise BuildError(f"{step}: dumpe2fs printed no block count after resize2fs -M")
    blocks, block_size = int(count.group(1)), int(size.group(1))
    # resize2fs truncates a regular file it shrinks; make sure, the verity data area depends on it.
    with open(image, "r+b") as f:
        f.truncate(blocks * block_size)
    return {"shrunk_blocks": blocks, "shrunk_size": blocks * block_size}


@register("bootconfig")
def bootconfig_entry(build, value, entry, ctx, where) -> bytes:
    return bootconfig_bytes(str(value))


def bootconfig_bytes(text: str) -> bytes:
    body = text.encode() + b"\0"
    body += bytes(-len(body) % 4)       # size + checksum + magic are 20 bytes: the file stays 4-aligned
    checksum = sum(body) & 0xFFFFFFFF
    return body + struct.pack("<II", len(body), checksum) + BOOTCONFIG_MAGIC
