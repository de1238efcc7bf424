"""Ground truth for the real-system images, computed at build time without immutools.

From the disk image: ``sfdisk --json`` (partition table), ``blkid -p -o export --offset --size``
per partition (filesystem type, UUID, label; the probe runs on the image file, no loop device),
``veritysetup dump``/``veritysetup verify`` on the data and hash partitions (extracted with ``dd``),
the UKI's ``.cmdline``/``.osrel`` through ``mtype`` + ``objcopy``, and the verity signature
partition's JSON.

From the unpacked tree the image was made of (before packing): os-release, ``findmnt --fstab``
over its fstab, the enabled units (``*.wants/``/``*.requires/`` links), ``find -perm -4000`` and
``-2000`` (setuid/setgid), the kernel's modules and ``CONFIG_MODULE_SIG_FORCE``, ``/etc/shells``,
sshd, ``/sbin/init``, ``dpkg-query`` over the package database, and what ``/efi`` and ``/boot``
hold. ``scope="/usr"`` restricts every tree fact to what a /usr-only partition carries.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import subprocess
from pathlib import Path

from builders import ENV, run
from realsys.layouts import partitions_of

SHELLS_FILE = "etc/shells"
SSHD_UNITS = ("ssh.service", "sshd.service", "ssh.socket", "sshd.socket")
UNIT_DIRS = ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")


# ------------------------------------------------------------------------------------------------
# the disk
# ------------------------------------------------------------------------------------------------
def _attr_bits(attrs: str) -> int:
    """sfdisk's ``attrs`` ("RequiredPartition LegacyBIOSBootable GUID:59,60") -> the 64-bit value."""
    value = 0
    for word in attrs.replace(",", " ").split():
        if word == "RequiredPartition":
            value |= 1 << 0
        elif word == "NoBlockIOProtocol":
            value |= 1 << 1
        elif word == "LegacyBIOSBootable":
            value |= 1 << 2
        elif word.startswith("GUID:"):
            value |= 1 << int(word[5:])
        elif word.isdigit():                  # continuation of "GUID:59,60"
            value |= 1 << int(word)
    return value


def blkid(image: Path, start: int, size: int) -> dict:
    proc = subprocess.run(["blkid", "-p", "-o", "export", "--offset", str(start), "--size", str(size), str(image)],
                          capture_output=True, text=True, env=ENV)
    out = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        if key in ("TYPE", "UUID", "LABEL", "VERSION", "USAGE", "BLOCK_SIZE"):
            out[key] = value
    return out


def disk_truth(image: Path) -> dict:
    table = json.loads(run(["sfdisk", "--json", image]).stdout)["partitiontable"]
    parts = []
    for p in partitions_of(image):
        row = dict(p)
        row["attr_bits"] = _attr_bits(p["attrs"])
        row["blkid"] = blkid(image, p["start"], p["size"])
        parts.append(row)
    return {"label": table["label"], "disk_guid": table.get("id", "").lower(), "sector_size": table.get("sectorsize", 512),
            "partitions": parts}


def extract(image: Path, part: dict, dest: Path) -> Path:
    run(["dd", f"if={image}", f"of={dest}", "bs=1M", f"skip={part['start']}", f"count={part['size']}",
         "iflag=skip_bytes,count_bytes", "conv=sparse", "status=none"])
    return dest


def verity_dump(hash_file: Path) -> dict:
    out = {}
    for line in run(["veritysetup", "dump", hash_file]).stdout.decode().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return {"data_blocks": int(out["Data blocks"]), "data_block_size": int(out["Data block size"]),
            "hash_block_size": int(out["Hash block size"]), "hash_algorithm": out["Hash algorithm"], "salt": out["Salt"],
            "uuid": out.get("UUID")}


def verity_truth(image: Path, disk: dict, root_hash: str, work: Path) -> dict:
    """Which partitions the root hash names (data UUID = first 128 bits, hash UUID = last 128 bits;
    the hash written in the boot chain is the key), and ``veritysetup verify`` on that pair."""
    hexhash = root_hash.lower()
    data_uuid = f"{hexhash[:8]}-{hexhash[8:12]}-{hexhash[12:16]}-{hexhash[16:20]}-{hexhash[20:32]}"
    tail = hexhash[-32:]
    hash_uuid = f"{tail[:8]}-{tail[8:12]}-{tail[12:16]}-{tail[16:20]}-{tail[20:32]}"
    data = next((p for p in disk["partitions"] if p["uuid"] == data_uuid), None)
    hashp = next((p for p in disk["partitions"] if p["uuid"] == hash_uuid), None)
    if data is None or hashp is None:
        raise RuntimeError(f"{image}: no partitions with UUIDs {data_uuid} / {hash_uuid}")
    data_file = extract(image, data, work / "verity-data.img")
    hash_file = extract(image, hashp, work / "verity-hash.img")
    dump = verity_dump(hash_file)
    ok = subprocess.run(["veritysetup", "verify", str(data_file), str(hash_file), hexhash], capture_output=True).returncode == 0
    if not ok:
        raise RuntimeError(f"{image}: veritysetup verify failed for partitions {data['number']}/{hashp['number']}")
    data_file.unlink()
    hash_file.unlink()
    return {"root_hash": hexhash, "data_partition": data["number"], "hash_partition": hashp["number"],
            "veritysetup_verify": ok, **dump}


def signature_truth(image: Path, disk: dict, type_guid: str) -> list[dict]:
    rows = []
    with open(image, "rb") as f:
        for p in disk["partitions"]:
            if p["type"] != type_guid:
                continue
            f.seek(p["start"])
            raw = f.read(min(p["size"], 1 << 20)).rstrip(b"\0")
            doc = json.loads(raw) if raw.startswith(b"{") else None
            rows.append({"partition": p["number"], "label": p["name"], "root_hash": doc.get("rootHash") if doc else None,
                         "certificate_fingerprint": doc.get("certificateFingerprint") if doc else None})
    return rows


def uki_truth(image: Path, disk: dict, esp_number: int, uki_path: str, work: Path) -> dict:
    """The UKI's sections as ``objcopy`` reads them (the ESP file read with ``mtype``)."""
    esp = next(p for p in disk["partitions"] if p["number"] == esp_number)
    esp_file = extract(image, esp, work / "esp-extracted.img")
    uki = work / "uki.efi"
    with open(uki, "wb") as f:
        subprocess.run(["mtype", "-i", str(esp_file), "::/" + uki_path], stdout=f, check=True,
                       env=dict(ENV, MTOOLS_SKIP_CHECK="1"))
    sections = {}
    for name in (".cmdline", ".osrel"):
        out = work / f"section{name}"
        run(["objcopy", "-O", "binary", f"--only-section={name}", uki, out])
        sections[name] = out.read_text().strip("\0\n ")
    listing = subprocess.run(["mdir", "-i", str(esp_file), "-b", "-/", "::/"], capture_output=True, text=True,
                             env=dict(ENV, MTOOLS_SKIP_CHECK="1")).stdout.split()
    esp_file.unlink()
    uki.unlink()
    return {"path": uki_path, "cmdline": sections[".cmdline"], "osrel": parse_os_release(sections[".osrel"]),
            "esp_files": sorted(x[len("::"):] for x in listing if x.startswith("::/"))}


# ------------------------------------------------------------------------------------------------
# the tree
# ------------------------------------------------------------------------------------------------
def parse_os_release(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        try:
            words = shlex.split(value)
        except ValueError:
            continue
        out[key] = words[0] if words else ""
    return out


def in_tree(tree: Path, path: str, max_hops: int = 40) -> str | None:
    """Resolve ``path`` inside ``tree`` (absolute links relative to the tree root): the canonical
    path, or None when it does not exist."""
    parts = [c for c in path.split("/") if c]
    resolved: list[str] = []
    hops = 0
    while parts:
        comp = parts.pop(0)
        if comp == ".":
            continue
        if comp == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = tree.joinpath(*resolved, comp)
        if candidate.is_symlink():
            hops += 1
            if hops > max_hops:
                return None
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [c for c in target.split("/") if c] + parts
            continue
        if not candidate.exists():
            return None
        resolved.append(comp)
    return "/" + "/".join(resolved)


def _find(tree: Path, scope: str, *args: str) -> list[str]:
    base = tree / scope.lstrip("/") if scope != "/" else tree
    proc = run(["find", base, "-xdev", *args, "-printf", "%P\\n"])
    prefix = "/" if scope == "/" else scope.rstrip("/") + "/"
    return sorted(prefix + line for line in proc.stdout.decode().splitlines() if line)


def _within(path: str, scope: str) -> bool:
    return scope == "/" or path == scope or path.startswith(scope.rstrip("/") + "/")


def enabled_units(tree: Path, scope: str) -> list[dict]:
    rows = []
    for d in UNIT_DIRS:
        full = tree / d
        if full.is_symlink() or not full.is_dir() or not _within("/" + d, scope):
            continue
        for wants in sorted(full.iterdir()):
            if not (wants.name.endswith(".wants") or wants.name.endswith(".requires")) or not wants.is_dir():
                continue
            for link in sorted(wants.iterdir()):
                rows.append({"unit": link.name, "by": wants.name, "dir": "/" + d})
    return rows


def kernel_config_sig_force(tree: Path, scope: str) -> dict:
    configs = sorted((tree / "boot").glob("config-*")) if scope == "/" else []
    if not configs:
        return {"config": None, "module_sig_force": None}
    text = configs[-1].read_text(errors="replace")
    if re.search(r"^CONFIG_MODULE_SIG_FORCE=y$", text, re.M):
        force = True
    elif re.search(r"^# CONFIG_MODULE_SIG_FORCE is not set$", text, re.M) or "CONFIG_MODULE_SIG_FORCE" not in text:
        force = False
    else:
        force = None
    return {"config": "/" + str(configs[-1].relative_to(tree)), "module_sig_force": force}


def shells(tree: Path, scope: str) -> list[str]:
    """Real files behind the entries of /etc/shells (Debian's register of login shells)."""
    shells_file = tree / SHELLS_FILE
    out = set()
    for line in shells_file.read_text().splitlines() if shells_file.exists() else []:
        line = line.strip()
        if not line.startswith("/"):
            continue
        real = in_tree(tree, line)
        if real and _within(real, scope) and os.access(tree / real.lstrip("/"), os.X_OK):
            out.add(real)
    return sorted(out)


def dpkg_truth(tree: Path) -> dict | None:
    admin = tree / "var/lib/dpkg"
    if not (admin / "status").exists():
        return None
    proc = run(["dpkg-query", f"--admindir={admin}", "-W", "-f", "${db:Status-Abbrev} ${Package}\\n"])
    installed = sorted(line.split()[1] for line in proc.stdout.decode().splitlines() if line.startswith("ii"))
    return {"installed": len(installed), "has": {p: p in installed for p in ("apt", "dpkg", "openssh-server", "sudo", "systemd")}}


def dir_state(tree: Path, path: str) -> dict:
    full = tree / path.lstrip("/")
    if full.is_symlink():
        return {"exists": True, "symlink": os.readlink(full), "entries": None}
    if not full.exists():
        return {"exists": False, "entries": None}
    if not full.is_dir():
        return {"exists": True, "entries": None}
    return {"exists": True, "entries": sorted(os.listdir(full))}


def elf_machine(path: Path) -> str | None:
    out = subprocess.run(["file", "-b", "-L", str(path)], capture_output=True, text=True).stdout
    return "x86_64" if "x86-64" in out else "aarch64" if "aarch64" in out else None


def tree_truth(tree: Path, scope: str = "/") -> dict:
    osrel_path = in_tree(tree, "/etc/os-release") if scope == "/" else in_tree(tree, "/usr/lib/os-release")
    osrel = parse_os_release((tree / osrel_path.lstrip("/")).read_text()) if osrel_path else {}
    fstab = None
    if scope == "/" and (tree / "etc/fstab").exists():
        proc = subprocess.run(["findmnt", "--fstab", "--tab-file", str(tree / "etc/fstab"), "--json",
                               "-o", "SOURCE,TARGET,FSTYPE,OPTIONS"], capture_output=True, text=True)
        fstab = json.loads(proc.stdout)["filesystems"] if proc.returncode == 0 and proc.stdout.strip() else []
    units = enabled_units(tree, scope)
    init_real = in_tree(tree, "/sbin/init")
    modules = _find(tree, "/usr/lib/modules", "(", "-name", "*.ko", "-o", "-name", "*.ko.xz", "-o", "-name", "*.ko.zst",
                    "-o", "-name", "*.ko.gz", ")", "-type", "f") if (tree / "usr/lib/modules").is_dir() else []
    sshd = in_tree(tree, "/usr/sbin/sshd")
    return {
        "scope": scope,
        "os_release": osrel,
        "os_release_path": osrel_path,
        "arch": elf_machine(tree / "usr/bin/env"),
        "fstab": fstab,
        "enabled_units": units,
        "sshd": bool(sshd and _within(sshd, scope)),
        "sshd_enabled": any(u["unit"] in SSHD_UNITS for u in units),
        "setuid": _find(tree, scope, "-type", "f", "-perm", "-4000"),
        "setgid": _find(tree, scope, "-type", "f", "-perm", "-2000"),
        "shells": shells(tree, scope),
        "init": posixpath.basename(init_real) if init_real and _within(init_real, scope) else None,
        "kernel_modules": len(modules),
        **kernel_config_sig_force(tree, scope),
        "selinux_config": (tree / "etc/selinux/config").exists() if scope == "/" else False,
        "dpkg": dpkg_truth(tree) if scope == "/" else None,
        "kernels": sorted(p.name[len("vmlinuz-"):] for p in (tree / "boot").glob("vmlinuz-*")) if scope == "/" else [],
        "machine_id": (tree / "etc/machine-id").read_text().strip() if scope == "/" and (tree / "etc/machine-id").exists() else None,
        "efi": dir_state(tree, "/efi") if scope == "/" else None,
        "boot": dir_state(tree, "/boot") if scope == "/" else None,
        "home": dir_state(tree, "/home") if scope == "/" else None,
        "srv": dir_state(tree, "/srv") if scope == "/" else None,
    }


def first_boot_enabled(tree_tar: Path, units: tuple[str, ...] = SSHD_UNITS) -> bool:
    """Whether systemd itself enables any of ``units`` on a first boot of this tree's /usr (no
    /etc/machine-id: machine-id(5) "First Boot Semantics"; systemd 252 runs the presets in
    enable-only mode, and a unit no preset line names is enabled). Asked of ``systemctl --root``
    on a staging root holding the tree's unit files and presets, with an empty /etc."""
    import tarfile
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with tarfile.open(tree_tar) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.lstrip("./").startswith(("usr/lib/systemd/system/", "usr/lib/systemd/system-preset/"))]
            tar.extractall(root, members=members, filter="tar")
        (root / "etc").mkdir(exist_ok=True)
        (root / "lib").symlink_to("usr/lib")
        subprocess.run(["systemctl", f"--root={root}", "preset-all", "--preset-mode=enable-only"],
                       capture_output=True, check=True)
        for unit in units:
            state = subprocess.run(["systemctl", f"--root={root}", "is-enabled", unit], capture_output=True, text=True)
            if state.stdout.strip() == "enabled":
                return True
    return False
