"""The mount-table rules on hand-built tables shaped like the upstream runtime mount tables
(flatcar/init units, bottlerocket-core-kit packages/release, siderolabs/talos
internal/pkg/mount/v3/helpers.go), plus the corner cases: prefix by components,
later-wins stacking, overlay upper on tmpfs / persistent / absent, binds resolved at mount time,
a bind cycle. And source resolution against a real partitioned image."""

from __future__ import annotations

import jsonschema
import pytest

from builders import cached, have, run, sgdisk_layout, write_at
from immutools.disk import DiskImage
from immutools.report.model import STANDARD_PATHS, evidence, load_schema
from immutools.system.cmdline import KernelCmdline
from immutools.system.mounts import MountEntry, MountTable, path_rows, path_states, resolve_source, resolve_source_match


def ev(what: str) -> list[dict]:
    return [evidence(f"test: {what}")]


def states(table, paths=None, resolve=None) -> dict[str, tuple[str, str]]:
    return {p.path: (p.state, p.via) for p in path_states(table, paths, resolve)}


def flatcar_table() -> MountTable:
    t = MountTable()
    t.add(MountEntry("/", "LABEL=ROOT", "ext4", ["rw"], evidence=ev("root")))
    t.add(MountEntry("/usr", "/dev/mapper/usr", "btrfs", ["ro", "rescue=nologreplay"], integrity="dm-verity", evidence=ev("usr")))
    t.add(MountEntry("/etc", "overlay", "overlay",
                     ["lowerdir=/usr/share/flatcar/etc", "upperdir=/etc", "workdir=/.etc-work"], evidence=ev("etc")))
    t.add(MountEntry("/boot", "/dev/disk/by-label/EFI-SYSTEM", "vfat", ["rw"], evidence=ev("boot")))
    t.add(MountEntry("/oem", "/dev/disk/by-label/OEM", "btrfs", ["nodev"], evidence=ev("oem")))
    t.add(MountEntry("/tmp", "tmpfs", "tmpfs", ["mode=1777", "nosuid"], evidence=ev("tmp")))
    t.add(MountEntry("/run", "tmpfs", "tmpfs", [], evidence=ev("run")))
    t.add(MountEntry("/media", "tmpfs", "tmpfs", ["nodev", "noexec"], evidence=ev("media")))
    return t


def test_flatcar_shape():
    t = flatcar_table()
    s = states(t)
    assert s["/"] == ("persistent", "/")
    assert s["/usr"] == ("read-only", "/usr")
    assert s["/etc"] == ("persistent", "/etc")           # overlay upper /etc lies on ROOT
    assert s["/var"] == ("persistent", "/") and s["/home"] == ("persistent", "/")
    assert s["/tmp"] == ("volatile", "/tmp") and s["/run"] == ("volatile", "/run")
    assert s["/boot"] == ("persistent", "/boot") and s["/oem"] == ("persistent", "/oem")
    etc = t.get("/etc")
    assert etc.kind == "overlay" and etc.lower == ["/usr/share/flatcar/etc"] and etc.work == "/.etc-work"
    usr = t.get("/usr")
    assert (usr.access, usr.persistence, usr.kind) == ("ro", "image", "block")
    row = next(p for p in path_states(t) if p.path == "/etc")
    assert row.chain == ["/etc", "/"] and row.evidence == ev("etc") + ev("root")
    # every standard path and every mount target appears once, standard ones first
    paths = [p.path for p in path_states(t)]
    assert paths[: len(STANDARD_PATHS)] == list(STANDARD_PATHS) and "/oem" in paths
    assert len(paths) == len(set(paths))


def test_report_rows_validate_against_schema():
    t = flatcar_table()
    schema = load_schema()
    mounts_schema = {"$defs": schema["$defs"], **schema["properties"]["mounts"]}
    paths_schema = {"$defs": schema["$defs"], **schema["properties"]["paths"]}
    jsonschema.validate(t.to_report(), mounts_schema)
    jsonschema.validate(path_rows(t), paths_schema)
    row = t.get("/etc").to_report()
    assert set(row) >= {"target", "source", "fstype", "options", "access", "persistence", "integrity", "evidence",
                        "observed", "kind", "lower", "upper", "work"}


def test_bottlerocket_binds_resolve_at_mount_time():
    t = MountTable()
    t.add(MountEntry("/", "/dev/dm-0", "erofs", ["ro"], integrity="dm-verity", evidence=ev("root")))
    t.add(MountEntry("/etc", "tmpfs", "tmpfs", ["mode=755"], evidence=ev("etc")))
    t.add(MountEntry("/local", "/dev/disk/by-partlabel/BOTTLEROCKET-DATA", "ext4", ["nosuid"], evidence=ev("local")))
    t.add(MountEntry("/var", "/local/var", "none", ["rbind", "rshared"], evidence=ev("var")))
    t.add(MountEntry("/opt", "/local/opt", "none", ["rbind", "rshared"], evidence=ev("opt")))
    t.add(MountEntry("/mnt", "/local/mnt", "none", ["rbind", "rshared"], evidence=ev("mnt")))
    # the raw directories are masked afterwards by binds of the read-only /srv
    for d in ("var", "opt", "mnt"):
        t.add(MountEntry(f"/local/{d}", "/srv", "none", ["bind", "nosuid", "nodev", "noexec"], evidence=ev(f"mask {d}")))
    t.add(MountEntry("/var/lib/bottlerocket", "/dev/disk/by-partlabel/BOTTLEROCKET-PRIVATE", "ext4", [], evidence=ev("private")))
    t.add(MountEntry("/tmp", "tmpfs", "tmpfs", ["noexec"], evidence=ev("tmp")))
    t.add(MountEntry("/boot", "/dev/disk/by-partlabel/BOTTLEROCKET-BOOT-A", "ext4", ["ro", "nosuid"], evidence=ev("boot")))
    t.add(MountEntry("/opt/cni", "overlay", "overlay",
                     ["lowerdir=/usr/libexec/cni", "upperdir=/var/lib/cni-plugins/.overlay/upper", "workdir=/var/lib/cni-plugins/.overlay/work"],
                     evidence=ev("cni")))
    t.add(MountEntry("/root/.aws", "tmpfs", "tmpfs", ["mode=0700"], evidence=ev("aws")))
    s = states(t)
    assert s["/"] == ("read-only", "/") and s["/usr"] == ("read-only", "/")
    assert s["/etc"] == ("volatile", "/etc")
    assert s["/var"] == ("persistent", "/var") and s["/opt"] == ("persistent", "/opt")
    assert s["/local/var"] == ("read-only", "/local/var")      # the mask: /srv on the verity root
    assert s["/boot"] == ("read-only", "/boot")
    assert s["/opt/cni"] == ("persistent", "/opt/cni")          # upper on /var -> /local
    assert s["/root/.aws"] == ("volatile", "/root/.aws") and s["/root"] == ("read-only", "/")
    row = next(p for p in path_states(t) if p.path == "/var")
    assert row.chain == ["/var", "/local"]


def test_talos_overlays_and_bound_files():
    t = MountTable()
    t.add(MountEntry("/", "/dev/loop0", "squashfs", ["ro", "nosuid"], evidence=ev("root")))
    t.add(MountEntry("/run", "tmpfs", "tmpfs", [], evidence=ev("run")))
    t.add(MountEntry("/system", "tmpfs", "tmpfs", [], evidence=ev("system")))
    t.add(MountEntry("/tmp", "tmpfs", "tmpfs", ["size=64M"], evidence=ev("tmp")))
    t.add(MountEntry("/var", "/dev/disk/by-partlabel/EPHEMERAL", "xfs", [], evidence=ev("var")))
    t.add(MountEntry("/etc/kubernetes", "overlay", "overlay",
                     ["lowerdir=/etc/kubernetes", "upperdir=/var/system/overlays/etc-kubernetes-diff",
                      "workdir=/var/system/overlays/etc-kubernetes-workdir"], evidence=ev("k8s")))
    t.add(MountEntry("/etc/hosts", "/system/etc/hosts", None, ["bind"], evidence=ev("hosts")))
    t.add(MountEntry("/usr/etc/udev", "overlay", "overlay", ["lowerdir=/usr/etc/udev"], evidence=ev("lower only")))
    s = states(t, paths=["/", "/etc", "/etc/hosts", "/etc/kubernetes/pki", "/usr", "/var/log"])
    assert s["/"] == ("read-only", "/") and s["/etc"] == ("read-only", "/") and s["/usr"] == ("read-only", "/")
    assert s["/etc/hosts"] == ("volatile", "/etc/hosts")
    assert s["/etc/kubernetes/pki"] == ("persistent", "/etc/kubernetes")
    assert s["/var/log"] == ("persistent", "/var")
    assert s["/usr/etc/udev"] == ("read-only", "/usr/etc/udev")   # an overlay without upper dir
    assert t.get("/etc/hosts").kind == "bind"


def test_prefix_by_components_and_stacking():
    t = MountTable()
    t.add(MountEntry("/", "r", "ext4", ["ro"], evidence=ev("r")))
    t.add(MountEntry("/usr", "u", "ext4", [], evidence=ev("u")))
    assert t.lookup("/usrx").target == "/" and t.lookup("/usr/x").target == "/usr" and t.lookup("/usr").target == "/usr"
    assert t.lookup("/usr/../etc").target == "/"
    later = t.add(MountEntry("/usr", "tmpfs", "tmpfs", [], evidence=ev("t")))
    assert t.get("/usr") is later and len(t.stack("/usr")) == 2 and len(t) == 2
    assert states(t, ["/usr"])["/usr"] == ("volatile", "/usr")
    assert MountTable().lookup("/x") is None and path_states(MountTable()) == []
    # a writable image mount keeps writes; a ro option wins over a writable type; volatile persistence
    assert MountEntry("/x", "d", "ext4", []).access == "rw"
    assert MountEntry("/x", "d", "squashfs", []).access == "ro"
    t2 = MountTable([MountEntry("/", "d", "ext4", [], persistence="image"),
                     MountEntry("/z", "zram0", "ext4", [], persistence="volatile"),
                     MountEntry("/t", "tmpfs", "tmpfs", ["ro"])])
    assert states(t2) | {} == states(t2)
    s = states(t2, ["/", "/z", "/t"])
    assert s["/"] == ("persistent", "/") and s["/z"] == ("volatile", "/z") and s["/t"] == ("read-only", "/t")


def test_overlay_upper_on_tmpfs_and_resolve_hook():
    t = MountTable()
    t.add(MountEntry("/", "r", "erofs", [], evidence=ev("r")))
    t.add(MountEntry("/run", "tmpfs", "tmpfs", []))
    t.add(MountEntry("/etc", "overlay", "overlay", ["lowerdir=/usr/etc", "upperdir=/run/etc-upper", "workdir=/run/etc-work"]))
    t.add(MountEntry("/var", "v", "xfs", []))
    s = states(t, ["/etc", "/home"], resolve=lambda p: {"/home": "/var/home"}.get(p, p))
    assert s["/etc"] == ("volatile", "/etc")
    assert s["/home"] == ("persistent", "/var")            # ostree: /home -> var/home
    row = next(p for p in path_states(t, ["/home"], resolve=lambda p: "/var/home") if p.path == "/home")
    assert row.resolved == "/var/home" and row.to_report()["resolved"] == "/var/home"
    assert states(t, ["/missing"], resolve=lambda p: 1 / 0)["/missing"] == ("read-only", "/")


def test_bind_cycle_is_detected_and_bounded():
    t = MountTable()
    t.add(MountEntry("/a", "/b", None, ["bind"], evidence=ev("a")))
    t.add(MountEntry("/b", "/a", None, ["bind"], evidence=ev("b")))
    rows = {p.path: p for p in path_states(t, [])}
    assert set(rows) == {"/a", "/b"}
    for row in rows.values():
        assert row.state == "persistent" and row.note and "cycle" in row.note
    # with a real filesystem under the cycle, the fallback is what the path is without the binds
    t2 = MountTable()
    t2.add(MountEntry("/a", "/b", None, ["bind"]))
    t2.add(MountEntry("/b", "/a", None, ["bind"]))
    t2.add(MountEntry("/", "r", "squashfs", []))
    rows = {p.path: p for p in path_states(t2, [])}
    assert rows["/a"].state == "read-only" and "cycle" in rows["/a"].note
    # a long chain of binds is bounded
    t3 = MountTable()
    for n in range(100):
        t3.add(MountEntry(f"/d{n}", f"/d{n + 1}", None, ["bind"]))
    assert all(p.state in ("persistent", "read-only", "volatile") for p in path_states(t3, []))


# ---- source resolution on a real partitioned image --------------------------------------------------
USR_A_GUID = "7130c94a-213a-4e5a-8e26-6cce9662f132"
ROOT_GUID = "3884dd41-8582-4404-b9a8-e9b84f2df50e"


def _disk():
    recipe = {"v": 1, "layout": "flatcar-mini"}

    def build(out):
        sgdisk_layout(out, 40 * 1024 * 1024, [
            {"number": 1, "start": 2048, "size": 8192, "type": "ef00", "label": "EFI-SYSTEM"},
            {"number": 3, "start": 10240, "size": 16384, "type": "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6",
             "label": "USR-A", "guid": USR_A_GUID},
            {"number": 4, "start": 26624, "size": 16384, "type": "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6", "label": "USR-B"},
            {"number": 9, "start": 43008, "size": 32768, "type": ROOT_GUID, "label": "ROOT-PART",
             "guid": "11111111-2222-3333-4444-555555555555"},
        ])
        esp = out.with_name(out.name + ".esp")
        root = out.with_name(out.name + ".root")
        run(["mkfs.vfat", "-C", "-n", "EFI-SYSTEM", "-i", "1234ABCD", str(esp), str(8192 // 2)])
        run(["mke2fs", "-q", "-t", "ext4", "-L", "ROOT", "-U", "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee", str(root), "16M"])
        write_at(out, 2048 * 512, esp)
        write_at(out, 43008 * 512, root)
        esp.unlink()
        root.unlink()

    return cached("system-mounts-disk", recipe, build)


@pytest.mark.skipif(not (have("sgdisk") and have("mke2fs") and have("mkfs.vfat")), reason="sgdisk, mke2fs or mkfs.vfat missing")
def test_resolve_source_on_image():
    with DiskImage.open(str(_disk())) as image:
        def num(spec, cmdline=None):
            vol = resolve_source(spec, image, cmdline)
            return vol.number if vol else None

        assert num("LABEL=ROOT") == 9                       # filesystem label, not the GPT name
        assert num("LABEL=ROOT-PART") is None
        assert num("PARTLABEL=ROOT-PART") == 9 and num("/dev/disk/by-partlabel/USR-B") == 4
        assert num("UUID=AAAAAAAA-bbbb-cccc-dddd-eeeeeeeeeeee") == 9
        assert num("/dev/disk/by-uuid/1234-ABCD") == 1      # vfat serial
        assert num(f"PARTUUID={USR_A_GUID.upper()}") == 3
        assert num(f"PARTUUID={USR_A_GUID}/PARTNROFF=1") == 4
        assert num("/dev/vda9") == 9 and num("/dev/nvme0n1p1") == 1 and num("/dev/sda7") is None
        assert num("/dev/mapper/usr") is None               # no command line: unknown
        flatcar = KernelCmdline(f"mount.usr=/dev/mapper/usr verity.usr=PARTUUID={USR_A_GUID} root=LABEL=ROOT")
        match = resolve_source_match("/dev/mapper/usr", image, flatcar)
        assert match.volume.number == 3 and match.verity and "dm-verity" in match.how
        table = (f"root,,,ro,0 8 verity 1 PARTUUID={USR_A_GUID}/PARTNROFF=1 PARTUUID={USR_A_GUID}/PARTNROFF=2 "
                 "4096 4096 1 1 sha256 aa bb")
        br = KernelCmdline(f'root=/dev/dm-0 dm-mod.create="{table}"')
        assert num("/dev/dm-0", br) == 4 and num("/dev/mapper/root", br) == 4 and num("/dev/dm-1", br) is None
        assert resolve_source_match("/dev/vda9", image).observed is False
        assert num("tmpfs") is None and num("/local/var") is None


def test_constructors_from_fstab_units_and_cmdline():
    from immutools.system.fstab import parse_fstab
    from immutools.system.units import Assignment, MountUnit, Unit

    (root, var, tmp), _ = parse_fstab("LABEL=ROOT / ext4 defaults 0 1\n/local/var /var none rbind\n"
                                      "tmpfs /tmp tmpfs mode=1777\n", "/etc/fstab")
    t = MountTable([MountEntry.from_fstab(root), MountEntry.from_fstab(var), MountEntry.from_fstab(tmp)])
    assert t.get("/var").kind == "bind" and t.get("/tmp").persistence == "volatile"
    assert t.get("/").evidence[0] == evidence("/etc/fstab", "line 1: LABEL=ROOT / ext4 defaults")
    assigns = [Assignment("Mount", k, v, "/usr/lib/systemd/system/var-lib-foo.mount", n)
               for n, (k, v) in enumerate([("What", "/dev/disk/by-label/DATA"), ("Where", "/var/lib/foo"),
                                           ("Type", "ext4"), ("Options", "noatime")], 2)]
    unit = Unit("var-lib-foo.mount", assigns[0].path, assigns[0].path, [], assigns)
    mu = MountUnit("var-lib-foo.mount", unit.path, "/dev/disk/by-label/DATA", "/var/lib/foo", "ext4", ["noatime"], unit)
    entry = MountEntry.from_mount_unit(mu)
    assert (entry.target, entry.source, entry.kind, entry.access) == ("/var/lib/foo", "/dev/disk/by-label/DATA", "block", "rw")
    assert [e["detail"] for e in entry.evidence][0] == "[Mount] What=/dev/disk/by-label/DATA (line 2)"
    line = KernelCmdline("root=LABEL=ROOT rootflags=rw mount.usr=/dev/mapper/usr mount.usrflags=ro", origin="grub.cfg")
    usr = MountEntry.from_cmdline("/usr", line.usr_mount(), line, integrity="dm-verity")
    assert usr.access == "ro" and usr.persistence == "image" and usr.evidence[0]["source"].endswith("from grub.cfg")
    rootm = MountEntry.from_cmdline("/", line.root_mount(), line)
    assert rootm.access == "rw" and [e["detail"] for e in rootm.evidence] == ["root=LABEL=ROOT", "rootflags=rw"]
