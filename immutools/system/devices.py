"""Block-device source specifications as fstab, unit files and the kernel command line write them.

``LABEL=``, ``UUID=``, ``PARTLABEL=``, ``PARTUUID=`` tags, the ``/dev/disk/by-*`` names udev makes
for them, device-mapper names and plain kernel device names. Written here because no library parses
these offline; the rules follow systemd's ``fstab_node_to_udev_node`` / udev's
``encode_devnode_name`` (src/shared/fstab-util.c, src/libudev/libudev-util.c) and the kernel's
``PARTUUID=<uuid>/PARTNROFF=<n>`` root syntax (init/do_mounts.c). Checked against
``systemd-fstab-generator`` in the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Tag prefix -> the /dev/disk/by-* directory udev makes for it.
TAG_DIRS = {"LABEL": "by-label", "UUID": "by-uuid", "PARTLABEL": "by-partlabel", "PARTUUID": "by-partuuid", "ID": "by-id"}
_DIR_TAGS = {v: k for k, v in TAG_DIRS.items()}
# Tags systemd 252 turns into /dev/disk/by-* nodes (ID= is left as written there).
_DEVNODE_TAGS = ("LABEL", "UUID", "PARTUUID", "PARTLABEL")
# udev keeps these ASCII characters in device node names; everything else is \xNN (libudev-util.c).
_DEVNODE_SAFE = set("#+-.:=@_")

# Kernel partition device names: sda3, vda3, xvda3, hda3 / nvme0n1p3, mmcblk0p3, loop0p3.
_PARTITION_DEV = re.compile(r"^/dev/(?:(?:[shv]|xv)d[a-z]+(\d+)|(?:nvme\d+n\d+|mmcblk\d+|loop\d+|md\d+)p(\d+))$")


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source. ``kind``: label, uuid, partlabel, partuuid, id (a tag or its /dev/disk
    name), mapper (/dev/mapper/NAME), dm (/dev/dm-N), partition (/dev/sda3: ``number``), devnode
    (another /dev path), path (another absolute path: bind sources, image files), or other (tmpfs,
    overlay, none, ...)."""

    raw: str
    kind: str
    value: str
    number: int | None = None        # partition number (kind partition) or PARTNROFF offset
    offset: int | None = None        # PARTUUID=<uuid>/PARTNROFF=<offset>

    @property
    def is_tag(self) -> bool:
        return self.kind in ("label", "uuid", "partlabel", "partuuid", "id")


def unquote(value: str) -> str:
    """Strip one pair of matching surrounding quotes (systemd ``unquote(s, QUOTES)``)."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


def encode_devnode_name(name: str) -> str:
    """udev's encoding of a tag value into a /dev/disk/by-* file name."""
    out = []
    for ch in name:
        if ch.isascii():
            if ch.isalnum() or ch in _DEVNODE_SAFE:
                out.append(ch)
            else:
                out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)      # valid UTF-8 multibyte characters are kept as they are
    return "".join(out)


def decode_devnode_name(name: str) -> str:
    r"""Undo ``\xNN`` escapes in a /dev/disk/by-* name (bytes decoded as UTF-8)."""
    if "\\x" not in name:
        return name
    raw = bytearray()
    i = 0
    encoded = name.encode("utf-8", "surrogateescape")
    while i < len(encoded):
        if encoded[i:i + 2] == b"\\x" and i + 4 <= len(encoded):
            try:
                raw.append(int(encoded[i + 2:i + 4], 16))
                i += 4
                continue
            except ValueError:
                pass
        raw.append(encoded[i])
        i += 1
    return raw.decode("utf-8", "replace")


def devnode(spec: str) -> str:
    """The node systemd-fstab-generator writes as ``What=`` for a source (``LABEL=ROOT`` ->
    ``/dev/disk/by-label/ROOT``); other sources unchanged."""
    for tag in _DEVNODE_TAGS:
        if spec.startswith(tag + "="):
            return f"/dev/disk/{TAG_DIRS[tag]}/" + encode_devnode_name(unquote(spec[len(tag) + 1:]))
    return spec


def parse_source(spec: str) -> SourceSpec:
    """Classify a source as written in fstab, a unit's ``What=`` or ``root=``."""
    raw = spec
    spec = spec.strip()
    head, sep, rest = spec.partition("=")
    if sep and head.upper() in TAG_DIRS and head == head.upper():
        value = unquote(rest)
        offset = None
        if head == "PARTUUID":
            m = re.match(r"^([^/]*)/PARTNROFF=(-?\d+)$", value)
            if m:
                value, offset = m.group(1), int(m.group(2))
        return SourceSpec(raw, head.lower(), value, offset=offset)
    if spec.startswith("/dev/disk/"):
        parts = spec.split("/")
        if len(parts) == 5 and parts[3] in _DIR_TAGS and parts[4]:
            return SourceSpec(raw, _DIR_TAGS[parts[3]].lower(), decode_devnode_name(parts[4]))
    if spec.startswith("/dev/mapper/") and len(spec) > len("/dev/mapper/"):
        return SourceSpec(raw, "mapper", spec[len("/dev/mapper/"):])
    m = re.match(r"^/dev/dm-(\d+)$", spec)
    if m:
        return SourceSpec(raw, "dm", m.group(1), number=int(m.group(1)))
    m = _PARTITION_DEV.match(spec)
    if m:
        return SourceSpec(raw, "partition", spec, number=int(m.group(1) or m.group(2)))
    if spec.startswith("/dev/"):
        return SourceSpec(raw, "devnode", spec)
    if spec.startswith("/"):
        return SourceSpec(raw, "path", spec)
    return SourceSpec(raw, "other", spec)
