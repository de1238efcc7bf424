"""The in-memory filesystem: it agrees with a real reader on the same tree, and it lets the rules
of the system layer and the collectors be tested without building a disk."""

from __future__ import annotations

import os
import stat

import pytest

from builders import cached, run

from immutools.collectors.flatcar import FlatcarCollector
from immutools.fs import open_filesystem
from immutools.fs.memory import Dir, File, MemoryFileSystem, Symlink
from immutools.image.source import FileSource
from immutools.system.compose import resolve_lenient, unit_path_conditions_fail
from immutools.system.rootview import OsTree
from immutools.system.surface import inventory
from immutools.system.units import UnitSet

TREE = {
    "/etc/os-release": "ID=sample\nVERSION_ID=1\n",
    "/usr/bin/bash": File(b"\x7fELF\x02\x01\x01" + b"\0" * 57, mode=0o755),
    "/usr/bin/passwd": File(b"x", mode=0o4755),
    "/usr/bin/wall": File(b"x", mode=0o2755, gid=5),
    "/bin": Symlink("usr/bin"),
    "/home": Symlink("var/home"),
    "/var/empty": Dir(mode=0o700),
    "/usr/lib/systemd/system/var-data.mount": "[Unit]\nConditionPathExists=/etc/data-enabled\n[Mount]\nWhat=/dev/sdb1\nWhere=/var/data\n",
}


def _materialise(fs: MemoryFileSystem, root: str) -> None:
    for entry in fs.walk("/"):
        target = os.path.join(root, entry.path.lstrip("/"))
        if entry.stat.is_dir:
            os.makedirs(target, exist_ok=True)
            os.chmod(target, entry.stat.perm)
        elif entry.stat.is_symlink:
            os.symlink(entry.link_target, target)
        else:
            with open(target, "wb") as f:
                f.write(fs.read(entry.path))
            os.chown(target, entry.stat.uid, entry.stat.gid)   # before chmod: chown clears setuid
            os.chmod(target, stat.S_IMODE(entry.stat.mode))


@pytest.fixture(scope="module")
def ext4_twin(tmp_path_factory):
    fs = MemoryFileSystem(TREE)

    def build(path):
        src = tmp_path_factory.mktemp("twin")
        _materialise(fs, str(src))
        run(["mke2fs", "-q", "-t", "ext4", "-d", src, path, "8M"])

    return open_filesystem(FileSource(str(cached("memfs-twin", {"tree": repr(TREE), "v": 2}, build))))


def test_agrees_with_ext4_on_the_same_tree(ext4_twin):
    """The same tree in memory and in a real ext4 (mke2fs -d): same entries, modes, owners, sizes,
    link targets; same setuid/setgid answer."""
    mem = MemoryFileSystem(TREE)

    def listing(fs):
        return {(e.path, e.stat.mode, e.stat.uid, e.stat.gid, e.stat.size if not e.stat.is_dir else 0, e.link_target)
                for e in fs.walk("/") if not e.path.startswith("/lost+found")}

    assert listing(mem) == listing(ext4_twin)
    assert [p for p, _ in mem.find_special()] == [p for p, _ in ext4_twin.find_special()] == ["/usr/bin/passwd", "/usr/bin/wall"]
    assert mem.read("/bin/bash", 0, 4) == ext4_twin.read("/bin/bash", 0, 4) == b"\x7fELF"


def test_symlinks_stay_inside():
    fs = MemoryFileSystem({"/a": Symlink("../../../etc"), "/etc/x": "y"})
    assert fs.read("/a/x") == b"y"                 # ".." never climbs above the root
    assert resolve_lenient(fs, "/home/user") == "/home/user"


def test_unit_path_condition_rule_without_a_disk():
    """systemd skips a mount unit whose ConditionPathExists= fails; passes once the file exists."""
    fs = MemoryFileSystem(TREE)
    tree = OsTree.single(fs)
    unit = UnitSet(tree).mount_unit("var-data.mount").unit
    assert unit_path_conditions_fail(unit, tree)["detail"].startswith("ConditionPathExists=/etc/data-enabled fails")
    fs.add("/etc/data-enabled", "")
    assert unit_path_conditions_fail(unit, OsTree.single(fs)) is None


def test_flatcar_etc_era_rule_without_a_disk():
    """Flatcar's /etc era: the confext image wins, then the overlay lower directory, then the release."""
    collector = FlatcarCollector()
    assert collector._etc_era(OsTree.single(MemoryFileSystem({"/usr/lib/confexts/00-flatcar-default.raw": ""})), "4628.0.0")[0] == "confext"
    assert collector._etc_era(OsTree.single(MemoryFileSystem({"/usr/share/flatcar/etc/hosts": ""})), "3602.2.0")[0] == "overlay"
    era, ev = collector._etc_era(OsTree.single(MemoryFileSystem({})), "3227.2.4")
    assert era == "plain" and ev and ev[0]["observed"] is False


def test_surface_inventory_without_a_disk():
    surface = inventory(OsTree.single(MemoryFileSystem(TREE))).to_report()
    assert surface["shells"] == ["/usr/bin/bash"]
    assert surface["setuid"] == ["/usr/bin/passwd"] and surface["setgid"] == ["/usr/bin/wall"]
    assert stat.S_IMODE(MemoryFileSystem(TREE).stat("/var/empty").mode) == 0o700
