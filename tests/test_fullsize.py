"""Full-size replicas: package trees with a real distribution's shape, grafted into the replicas.

* The package tree source agrees with the reference tool: every member ``dpkg-deb`` lists for the
  set's packages is in the tree with the same type, permission bits (setuid/setgid included),
  owner and link target (after the merged-/usr move and the set's ``drop`` rules), and the tree's
  setuid/setgid lists are what ``find -perm`` says.
* The builder's graft rules, checked with ``debugfs`` on an ext4 image: spec files win over package
  files, ``exclude`` leaves subtrees out, ``relocate`` renames, modes and owners survive.
* Every full-size replica (``data/replica-specs/fullsize/``) scans as its ``expect:`` says: the thin
  replica's facts plus the setuid/setgid sets, which the builder computed from the staged tree and
  which are checked here against ``find`` on the package tree and the spec's own files.

The first run downloads the package sets (about 390 MB of ``.deb`` files, cached in the fixture
cache) and builds the trees and images: several minutes. Later runs reuse all of it.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from builders import have, run
from expect import assert_matches_manifest
from fullsize import missing_tools, package_tree, tree_provider
from replicas import build_replica, replica_manifest

from immutools.replica import builder as rb
from immutools.replica.context import path_match
from immutools.replica.packages import canonical, deb_name
from immutools.replica.spec import list_specs, load_spec, render
from immutools.scan import scan

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(missing_tools()), reason=f"needs Debian's {', '.join(missing_tools())}"),
]

FULLSIZE = [s.name for s in list_specs(fullsize=True)]
SMALL_SET = "bottlerocket-root"   # a small set with setuid programs: the tree source's differential checks use it


# ------------------------------------------------------------------------------------------------
# The tree source against dpkg-deb
# ------------------------------------------------------------------------------------------------

def _dpkg_listing(deb: Path) -> list[tuple[str, str, int, int, str]]:
    """(name, mode string, uid, gid, link) of every member, from ``dpkg-deb --fsys-tarfile | tar -tv``."""
    tar = subprocess.run(f"dpkg-deb --fsys-tarfile '{deb}' | tar -tv --numeric-owner --quoting-style=literal",
                         shell=True, capture_output=True, check=True).stdout.decode()
    rows = []
    for line in tar.splitlines():
        mode, owner, _size, _date, _time, rest = line.split(None, 5)
        link = ""
        if mode[0] == "l":
            rest, link = rest.split(" -> ", 1)
        elif mode[0] == "h":
            rest, link = rest.split(" link to ", 1)
        uid, gid = (int(x) for x in owner.split("/"))
        rows.append((rest, mode, uid, gid, link))
    return rows


def _perm(mode: str) -> int:
    """``-rwsr-xr-x`` -> 0o4755 (what tar prints)."""
    bits = 0
    for i, (ch, val) in enumerate(zip(mode[1:], (0o400, 0o200, 0o100, 0o40, 0o20, 0o10, 4, 2, 1))):
        if ch in "rwxst":
            bits |= val
        if i == 2 and ch in "sS":
            bits |= 0o4000
        if i == 5 and ch in "sS":
            bits |= 0o2000
        if i == 8 and ch in "tT":
            bits |= 0o1000
        if ch in "ST":
            bits &= ~val
    return bits


def test_package_tree_matches_dpkg_deb():
    provider = tree_provider()
    res = provider.resolution(SMALL_SET)
    tree = package_tree(SMALL_SET)
    facts = tree.facts
    assert facts["packages"] == {n: v for n, v, _a in res.packages}
    expected: dict[str, tuple] = {}
    for name, version, arch in res.packages:
        for member, mode, uid, gid, link in _dpkg_listing(provider.debs / deb_name(name, version, arch)):
            rel = canonical(member)
            if not rel or res.set.dropped(rel):
                continue
            if mode[0] == "d":
                expected.setdefault(rel, ("d", _perm(mode), uid, gid, ""))
            else:
                expected.setdefault(rel, (mode[0], _perm(mode), uid, gid, link))
    assert len(expected) > 1000
    for rel, (kind, perm, uid, gid, link) in sorted(expected.items()):
        path = tree.root / rel
        st = os.lstat(path)
        if kind == "d":
            assert stat.S_ISDIR(st.st_mode), rel
        elif kind == "l":
            assert stat.S_ISLNK(st.st_mode) and os.readlink(path) == link, rel
            continue
        elif kind == "h":
            assert os.path.samefile(path, tree.root / canonical(link)), rel
            continue
        else:
            assert stat.S_ISREG(st.st_mode), rel
        assert stat.S_IMODE(st.st_mode) == perm, (rel, oct(st.st_mode), oct(perm))
        assert tree.owner(rel) == (uid, gid), rel
    # nothing else in the tree but the directories tar implies and the merged-/usr top links
    listed = {str(p.relative_to(tree.root)) for p in tree.root.rglob("*")}
    extra = sorted(listed - set(expected))
    assert all((tree.root / e).is_dir() and not (tree.root / e).is_symlink() or e in ("bin", "sbin", "lib", "lib64")
               for e in extra), extra[:20]
    assert facts["entries"] == len(listed)
    for bit, key in (("4000", "setuid"), ("2000", "setgid")):
        found = run(["find", str(tree.root), "-type", "f", "-perm", f"-{bit}"]).stdout.decode().split()
        assert sorted("/" + str(Path(p).relative_to(tree.root)) for p in found) == facts[key]
    # contents: emptied, except small kept files and ELF headers of executables
    sizes = [os.lstat(p).st_size for p in tree.root.rglob("*") if p.is_file() and not p.is_symlink()]
    assert max(sizes) <= 64 * 1024 and sum(sizes) < 8 * 2**20


# ------------------------------------------------------------------------------------------------
# Graft rules
# ------------------------------------------------------------------------------------------------

GRAFT_SPEC = f"""
distribution: testos
release: "1"
layout_source: "tests/test_fullsize.py (synthetic)"
source_date_epoch: 1700000000
disk: {{size: 256 MiB}}
partitions:
  root:
    number: 1
    type: 0FC63DAF-8483-4772-8E79-3D69D8477DE4
    guid: 11111111-0000-4000-8000-000000000001
    start: 2048
    size: 200 MiB
    content: {{type: ext4, uuid: 22222222-0000-4000-8000-000000000001, tree: root}}
vars: {{kver: 9.9.9-test}}
trees:
  root:
    usr/bin/mount: {{text: "spec wins\\n", mode: "0755"}}
    usr/lib/os-release: {{text: "ID=testos\\n"}}
grafts:
  root:
    - set: {SMALL_SET}
      from: /usr
      into: /usr
      exclude: [usr/share/ca-certificates, usr/sbin/mkfs.xfs]
      relocate: {{"usr/lib/modules/*": "usr/lib/modules/{{{{kver}}}}"}}
expect:
  surface: {{setuid: "{{{{computed.trees.root.setuid}}}}"}}
"""


def _debugfs(image: Path, request: str) -> str:
    return run(["debugfs", "-R", request, str(image)]).stdout.decode(errors="replace")


@pytest.mark.skipif(not have("debugfs"), reason="needs debugfs")
def test_graft_rules(tmp_path):
    path = tmp_path / "graft.yaml"
    path.write_text(GRAFT_SPEC)
    spec = load_spec(path)
    manifest = rb.build(spec, tmp_path / "out", trees=tree_provider(), compute_sha256=False)
    image = tmp_path / "out" / manifest["image"]
    part = tmp_path / "root.img"
    p = manifest["partitions"][0]
    run(["dd", f"if={image}", f"of={part}", "bs=1M", f"skip={p['offset'] >> 20}", f"count={p['size'] >> 20}", "status=none"])
    tree = package_tree(SMALL_SET)
    assert _debugfs(part, "cat /usr/bin/mount") == "spec wins\n"                  # the spec's file replaced the package's
    assert "Inode" not in _debugfs(part, "stat /usr/share/ca-certificates")        # excluded
    kernels = [d.name for d in (tree.root / "usr/lib/modules").iterdir()]
    assert len(kernels) == 1
    assert "9.9.9-test" in _debugfs(part, "ls -l /usr/lib/modules")               # relocated
    assert kernels[0] not in _debugfs(part, "ls -l /usr/lib/modules")
    umount = _debugfs(part, "stat /usr/bin/umount")                                 # a package setuid file
    assert "Mode:  04755" in umount and "User:     0" in umount
    assert (tree.root / "usr/sbin/mkfs.xfs").exists() and "Inode" not in _debugfs(part, "stat /usr/sbin/mkfs.xfs")
    trees = manifest["computed"]["trees"]["root"]
    assert trees["set"] == SMALL_SET and trees["packages"] == tree.facts["package_count"]
    assert "/usr/bin/umount" in trees["setuid"] and "/usr/bin/mount" not in trees["setuid"]
    assert manifest["expect"]["surface"]["setuid"] == trees["setuid"]              # a list through a template
    assert any("full-size file tree" in text for text in manifest["provenance"]["limitations"])


# ------------------------------------------------------------------------------------------------
# The full-size replicas
# ------------------------------------------------------------------------------------------------

def _expected_special(spec, manifest) -> dict[str, list[str]]:
    """setuid/setgid OS paths from ``find`` on the package trees, mapped as the grafts map them,
    with the spec's own entries at their paths (a spec entry replaces a package entry)."""
    out: dict[str, set[str]] = {"setuid": set(), "setgid": set()}
    for tname, grafts in spec.data["grafts"].items():
        # render with the variables the tree is staged with (partition and commit vars included)
        ctx = dict(rb.base_context(spec))
        for p in spec.partitions:
            if p.content.get("tree") == tname:
                ctx.update(render(p.vars, ctx, "vars"))
        for steps in (spec.data.get("ostree") or {}).values():
            for step in steps.get("steps", []):
                if step.get("commit", {}).get("tree") == tname:
                    ctx.update(step["commit"].get("vars") or {})
        ctx = {k: render(v, ctx, k) for k, v in ctx.items()}
        own = {render(k, ctx, k).strip("/"): v for k, v in spec.trees[tname].items()}
        for g in render(grafts, ctx, "grafts"):
            tree = package_tree(g["set"])
            frm, into = g.get("from", "/").strip("/"), g.get("into", "/").strip("/")
            base = g.get("mountpoint", "/").rstrip("/")
            for bit, key in (("4000", "setuid"), ("2000", "setgid")):
                found = run(["find", str(tree.root / frm), "-type", "f", "-perm", f"-{bit}"]).stdout.decode().split()
                for f in found:
                    rel = str(Path(f).relative_to(tree.root))
                    if any(path_match("/".join(rel.split("/")[:i]), pat) for pat in g.get("exclude", [])
                           for i in range(1, rel.count("/") + 2)):
                        continue
                    dest = os.path.normpath(os.path.join(into, os.path.relpath(rel, frm or ".")))
                    if dest in own:
                        continue
                    out[key].add(f"{base}/{dest}")
        for rel, entry in own.items():
            mode = int(str(entry.get("mode", "0644")), 8) if isinstance(entry, dict) else 0
            if isinstance(entry, dict) and "dir" not in entry and "symlink" not in entry:
                if mode & 0o4000:
                    out["setuid"].add(f"{base}/{rel}")
                if mode & 0o2000:
                    out["setgid"].add(f"{base}/{rel}")
    return {k: sorted(v) for k, v in out.items()}


@pytest.fixture(scope="module", params=FULLSIZE)
def fullsize(request):
    name = request.param
    path = build_replica(name)
    return name, path, replica_manifest(name)


def test_fullsize_replica_scans_as_its_spec_says(fullsize):
    name, path, manifest = fullsize
    report = scan(str(path), progress=False)
    assert_matches_manifest(report, manifest)
    prov = report["image"]["provenance"]
    assert prov["replica"] is True and prov["spec"] == name
    assert any("full-size file tree" in text for text in prov["limitations"])
    trees = manifest["computed"]["trees"]
    assert trees and all(t["packages"] > 50 for t in trees.values())
    assert sum(t["grafted_entries"] for t in trees.values()) > 2000


def test_fullsize_special_files_match_find(fullsize):
    name, _path, manifest = fullsize
    spec = load_spec(name)
    expected = _expected_special(spec, manifest)
    assert manifest["expect"]["surface"]["setuid"] == expected["setuid"]
    assert manifest["expect"]["surface"]["setgid"] == expected["setgid"]


# the trees' entry counts (whole staged tree: package entries + the replica's own); the bounds are
# the shapes the package sets stand for (see data/replica-specs/package-sets/debian-bookworm.yaml)
COUNT_BOUNDS = {
    "debian-12-amd64-genericcloud-fullsize": ("root", 60_000, 90_000),
    "flatcar-stable-4593-amd64-fullsize": ("usr", 15_000, 40_000),
    "fcos-stable-43-amd64-fullsize": ("fcos_usr", 15_000, 80_000),
    "bottlerocket-aws-k8s-1.31-x86_64-fullsize": ("root", 5_000, 30_000),
    "talos-v1.13.0-amd64-metal-fullsize": ("rootfs", 2_000, 10_000),
}


def test_fullsize_counts_are_realistic():
    assert set(COUNT_BOUNDS) == set(FULLSIZE)
    for name, (tree, low, high) in COUNT_BOUNDS.items():
        entries = replica_manifest(name)["computed"]["trees"][tree]["entries"]
        assert low <= entries <= high, (name, entries)
