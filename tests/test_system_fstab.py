"""fstab parsing compared with libmount (``findmnt --fstab --tab-file``) on the same files."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from builders import have
from immutools.system.fstab import parse_fstab, split_options, unmangle

FSTAB = """# /etc/fstab: static file system information.
LABEL=ROOT / ext4 rw,noatime 0 1
UUID=abcd-1234\t/boot vfat umask=0077 0 2
   /dev/disk/by-partlabel/BOTTLEROCKET-DATA /local auto defaults,nosuid,nodev 0 0
/local/var /var none rbind,rshared
tmpfs /tmp tmpfs mode=1777,strictatime,size=50%
/dev/sda3 /mnt/with\\040space\\011tab xfs context="system_u:object_r:etc_t:s0,c1",ro 0 0
PARTUUID=aa-bb /x btrfs
LABEL="QUOTED" /q ext4 ro 0 0
/dev/mapper/usr /usr btrfs ro,rescue=nologreplay 0 0
/dev/caf\\303\\251 /m\\134n ext4 defaults 0 0

bad line
PARTLABEL=USR-B /usr2 btrfs ro 1 x
overlay /etc overlay lowerdir=/usr/share/flatcar/etc,upperdir=/etc,workdir=/.etc-work 0 0
"""


@pytest.mark.skipif(not have("findmnt"), reason="findmnt not installed (Debian package util-linux)")
def test_matches_findmnt(tmp_path):
    path = tmp_path / "fstab"
    path.write_text(FSTAB)
    proc = subprocess.run(["findmnt", "--fstab", "--tab-file", str(path), "-J",
                           "-o", "SOURCE,TARGET,FSTYPE,OPTIONS,FREQ,PASSNO"], capture_output=True, text=True)
    theirs = json.loads(proc.stdout)["filesystems"]
    ours, warnings = parse_fstab(FSTAB, "/etc/fstab")
    assert len(ours) == len(theirs)
    for mine, row in zip(ours, theirs):
        assert mine.source == row["source"]
        assert mine.target == row["target"]
        assert mine.fstype == row["fstype"]
        assert ",".join(mine.options) == (row["options"] or "")
        assert (mine.freq, mine.passno) == (row["freq"], row["passno"])
    # libmount refuses the same lines
    refused = re.findall(r"parse error at line (\d+)", proc.stderr)
    assert len(refused) == 2
    assert [w.split(" line ")[1].split(":")[0] for w in warnings] == refused


def test_entry_details():
    entries, _ = parse_fstab(FSTAB, "/etc/fstab")
    by_target = {e.target: e for e in entries}
    root = by_target["/"]
    assert root.line == 2 and root.path == "/etc/fstab" and root.spec.kind == "label" and not root.read_only
    assert by_target["/mnt/with space\ttab"].read_only
    assert by_target["/mnt/with space\ttab"].options == ['context="system_u:object_r:etc_t:s0,c1"', "ro"]
    assert by_target["/q"].spec.value == "QUOTED"
    assert by_target["/x"].options == [] and by_target["/x"].effective_options == ["defaults"]
    assert by_target["/usr"].spec.kind == "mapper"
    assert by_target["/m\\n"].source == "/dev/café"
    assert by_target["/etc"].option_value("upperdir") == "/etc"
    assert by_target["/tmp"].option_value("size") == "50%"
    assert split_options("a,,b") == ["a", "b"] and unmangle("no escapes") == "no escapes"
