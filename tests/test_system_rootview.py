"""``OsTree`` composition on real images (ext4 ROOT + squashfs or btrfs /usr), compared with the
kernel's view of the same images loop-mounted the same way: a chrooted child process lists the
whole tree and resolves paths with the real VFS (needs root; skipped otherwise)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from builders import have, run
from immutools.errors import FileSystemError, NotADirectoryError_, NotFoundError
from immutools.system.rootview import OsTree, as_tree
from system_trees import open_fs, os_tree, root_image, usr_image

needs_images = pytest.mark.skipif(not (have("mke2fs") and have("mksquashfs")), reason="mke2fs or mksquashfs missing")

TRICKY = ["/", "/bin/sh", "/sbin/init", "/lib/systemd/../../etc/fstab", "/usr/../bin/ash", "/bin/../etc/machine-id",
          "/usr/bin/dangling", "/usr/bin/cat", "/lib64/modules/6.1.0", "/usr/bin/../../../../etc/selinux/config",
          "/bin/nothing", "/etc/systemd/system/masked.service", "/etc/systemd/system/default.target", "/usr",
          "/usr/lib/systemd/system/multi-user.target.wants/vend.service"]

# Runs in a child: walk and resolve inside the mounted tree, chrooted so absolute links behave.
_CHILD = r"""
import json, os, sys
paths = json.loads(sys.stdin.read())
os.chroot(sys.argv[1]); os.chdir("/")
entries = []
for top, dirs, files in os.walk("/"):
    dirs[:] = sorted(d for d in dirs if not (top == "/" and d == "lost+found"))
    for name in sorted(dirs + files):
        p = os.path.join(top, name)
        st = os.lstat(p)
        entries.append([p, st.st_mode, st.st_size if not os.path.isdir(p) or os.path.islink(p) else 0,
                        os.readlink(p) if os.path.islink(p) else None])
resolved = {}
for p in paths:
    try:
        resolved[p] = os.path.realpath(p, strict=True)
    except OSError:
        resolved[p] = None
print(json.dumps({"entries": entries, "resolved": resolved}))
"""


def _kernel_view(root_img: Path, usr_img: Path, usr_type: str, paths: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="ostree-ref-") as tmp:
        mnt = Path(tmp)
        run(["mount", "-o", "loop,ro", "-t", "ext4", str(root_img), str(mnt)])
        try:
            run(["mount", "-o", "loop,ro", "-t", usr_type, str(usr_img), str(mnt / "usr")])
            try:
                proc = subprocess.run([sys.executable, "-c", _CHILD, str(mnt)], input=json.dumps(paths),
                                      capture_output=True, text=True, check=True)
            finally:
                run(["umount", str(mnt / "usr")])
        finally:
            run(["umount", str(mnt)])
    return json.loads(proc.stdout)


def _our_view(tree: OsTree, paths: list[str]) -> dict:
    entries = []
    for entry in tree.walk("/"):
        if entry.path == "/lost+found" or entry.path.startswith("/lost+found/"):
            continue
        size = 0 if entry.stat.is_dir else entry.stat.size
        entries.append([entry.path, entry.stat.mode, size, entry.link_target])
    resolved = {}
    for p in paths:
        try:
            resolved[p] = tree.realpath(p)
        except FileSystemError:
            resolved[p] = None
    return {"entries": sorted(entries), "resolved": resolved}


@needs_images
@pytest.mark.skipif(os.geteuid() != 0, reason="loop mounts and chroot need root")
@pytest.mark.parametrize("usr_type", ["squashfs", "btrfs"])
def test_matches_kernel_mount_of_same_images(usr_type):
    if usr_type == "btrfs" and not have("mkfs.btrfs"):
        pytest.skip("mkfs.btrfs missing")
    tree = os_tree("full", usr_type)
    ours = _our_view(tree, TRICKY)
    theirs = _kernel_view(root_image("full"), usr_image("full", usr_type), usr_type, TRICKY)
    theirs["entries"] = sorted(theirs["entries"])
    assert [e[0] for e in ours["entries"]] == [e[0] for e in theirs["entries"]]
    for mine, ref in zip(ours["entries"], theirs["entries"]):
        assert mine == ref, mine[0]
    assert ours["resolved"] == theirs["resolved"]


@needs_images
def test_composition_basics():
    tree = os_tree("full")
    assert "usr" in tree.listdir("/") and "bin" in tree.listdir("/usr")
    assert tree.read_text("/usr/lib/os-release").startswith("ID=minios")
    assert tree.read_text("/lib/os-release") == tree.read_text("/usr/lib/os-release")   # /lib -> usr/lib on ROOT
    assert tree.realpath("/bin/sh") == "/usr/bin/bash" and tree.lrealpath("/bin/sh") == "/usr/bin/sh"
    assert tree.realpath("/usr/..") == "/" and tree.realpath("/usr/../usr/bin/../..") == "/"
    assert tree.stat("/bin/sh").is_file and tree.lstat("/bin").is_symlink
    root_mount, usr_mount = tree.mounts
    assert tree.which_mount("/bin/sh") is usr_mount and tree.which_mount("/bin", follow=False) is root_mount
    assert tree.which_mount("/usr") is usr_mount and tree.which_mount("/usrx") is root_mount
    assert tree.locate("/bin/sh") == (usr_mount, "/bin/bash", "/usr/bin/bash")
    assert tree.source_of("/etc/fstab") == "ROOT (ext4): /etc/fstab"
    assert tree.source_of("/sbin/init") == "USR (squashfs): /lib/systemd/systemd"
    assert tree.source_of("/usr/missing/file") == "USR (squashfs): /missing/file"
    ev = tree.evidence("/bin/sh", "shell", observed=False)
    assert ev == {"source": "USR (squashfs): /bin/bash", "observed": False, "detail": "shell"}
    assert tree.node_identity("/usr/bin/coreutils") == tree.node_identity("/usr/bin/hardlinked-coreutils")
    assert tree.node_identity("/bin/ls") == tree.node_identity("/usr/bin/coreutils")
    assert tree.node_identity("/usr/bin/bash") != tree.node_identity("/usr/bin/dash")
    with pytest.raises(NotFoundError):
        tree.stat("/usr/bin/dangling")
    with pytest.raises(NotADirectoryError_):
        tree.listdir("/etc/fstab")
    assert as_tree(tree) is tree


@needs_images
def test_walk_metadata_prunes_and_crosses_mounts():
    tree = os_tree("full")
    seen = dict(tree.walk_metadata("/", prune=lambda p: p in ("/proc", "/usr/lib")))
    assert "/proc" in seen and "/proc/fake-suid" not in seen
    assert "/usr/lib" in seen and "/usr/lib/os-release" not in seen
    assert "/usr/bin/su" in seen and seen["/usr/bin/su"].is_setuid
    assert seen["/bin"].is_symlink and "/bin/sh" not in seen            # links are not followed
    full = {e.path for e in tree.walk("/")}
    assert set(dict(tree.walk_metadata("/"))) == full


@needs_images
def test_subdirectory_mount_virtual_dirs_and_stacking():
    root_fs = open_fs(root_image("full"), "ext4")
    usr_fs = open_fs(usr_image("full"), "squashfs")
    # a subdirectory as /, like Bottlerocket's sys-root
    tree = OsTree()
    tree.mount("/", usr_fs, subdir="/lib", label="USR lib")
    assert "os-release" in tree.listdir("/") and tree.read_text("/os-release").startswith("ID=")
    assert tree.realpath("/..") == "/"                                 # never into the hidden parent
    assert tree.source_of("/os-release") == "USR lib: /lib/os-release"
    with pytest.raises(NotADirectoryError_):
        tree.mount("/x", usr_fs, subdir="/lib/os-release")
    # a mount point whose parents do not exist below it
    tree.mount("/deep/er/mnt", root_fs, subdir="/etc", label="ROOT etc")
    assert "deep" in tree.listdir("/") and tree.stat("/deep").is_dir and tree.listdir("/deep/er") == ["mnt"]
    assert tree.read_text("/deep/er/mnt/fstab").startswith("LABEL=ROOT")
    assert "/deep/er/mnt/selinux/config" in {e.path for e in tree.walk("/deep")}
    assert tree.which_mount("/deep").target == "/"                   # virtual dirs belong to the parent mount
    # a later mount on the same target hides the earlier one
    tree2 = os_tree("full")
    tree2.mount("/usr", root_fs, subdir="/var", label="ROOT var")
    assert sorted(tree2.listdir("/usr")) == ["lib", "tmp"]
    assert tree2.lstat("/bin").is_symlink and not tree2.exists("/bin/sh") and tree2.lrealpath("/bin") == "/bin"
    assert [m.label for m in tree2.visible_mounts()] == ["ROOT (ext4)", "ROOT var"]
    # an empty tree is one virtual directory
    empty = OsTree()
    assert empty.listdir("/") == [] and empty.stat("/").is_dir and empty.which_mount("/") is None


@needs_images
def test_file_where_a_mount_needs_a_directory():
    root_fs = open_fs(root_image("full"), "ext4")
    usr_fs = open_fs(usr_image("full"), "squashfs")
    tree = OsTree.single(root_fs, label="ROOT")
    tree.mount("/etc/fstab/inner", usr_fs, label="USR")         # /etc/fstab is a file on ROOT
    assert tree.stat("/etc/fstab").is_dir and "inner" in tree.listdir("/etc/fstab")
    assert tree.exists("/etc/fstab/inner/lib/os-release")
    assert stat.S_ISDIR(dict(tree.walk_metadata("/etc"))["/etc/fstab"].mode)
