"""What the PRIVATE partition says about the running system: the bootconfig GRUB hands the kernel,
the live settings in the API datastore (``/var/lib/bottlerocket/datastore``), and from them the
kernel lockdown mode corndog sets at boot (else the variant's documented default)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from immutools.disk import DiskImage, Volume
from immutools.errors import ImmutoolsError
from immutools.report.model import evidence
from immutools.system.bootconfig import parse_blob

_MAX_SETTING = 1024 * 1024
_MAX_BOOTCONFIG = 64 * 1024              # the kernel takes at most 32 KiB of bootconfig text


class PrivateStore:
    """Reads from PRIVATE's filesystem; every reader answers (None, None) when it is absent."""

    def __init__(self, image: DiskImage, knowledge: dict, volume: Volume | None):
        self.image = image
        self.conf = knowledge["private"]
        self.volume = volume
        self.fs = image.filesystem(volume) if volume is not None else None

    def setting(self, key: str) -> tuple[object, dict | None]:
        """A live setting (JSON scalar) from the API datastore, with evidence; None if absent."""
        if self.fs is None:
            return None, None
        path = f"{self.conf['datastore']}/{self.conf['settings'][key]}"
        try:
            if not self.fs.exists(path):
                return None, None
            raw = self.fs.read_text(path, max_bytes=_MAX_SETTING)
            value = json.loads(raw)
        except (ImmutoolsError, ValueError) as exc:
            self.image.warn(f"{self.volume.describe()}: {path}: {exc}")
            return None, None
        if isinstance(value, (dict, list)):
            self.image.warn(f"{self.volume.describe()}: {path}: not a scalar setting")
            return None, None
        return value, evidence(f"{self.volume.describe()}: {path}", f"datastore setting = {raw.strip()}")

    def bootconfig(self):
        """The parsed bootconfig blob GRUB passes as the "initrd", with evidence."""
        if self.fs is None:
            return None, None
        path = self.conf["bootconfig"]
        try:
            if not self.fs.exists(path):
                return None, None
            cfg = parse_blob(self.fs.read(path, max_bytes=_MAX_BOOTCONFIG))
        except ImmutoolsError as exc:
            self.image.warn(f"{self.volume.describe()}: {path}: {exc}")
            return None, None
        return cfg, evidence(f"{self.volume.describe()}: {path}",
                             f"bootconfig, {cfg.size} bytes, checksum {cfg.checksum:#x} valid")

    def has_user_data(self) -> bool | None:
        """Whether PRIVATE holds metal user data (None: PRIVATE unreadable)."""
        if self.fs is None:
            return None
        try:
            return self.fs.exists(self.conf["user_data"])
        except ImmutoolsError:
            return None


@dataclass
class Lockdown:
    mode: str | None
    evidence: list[dict] = field(default_factory=list)
    observed: bool = False


def read_lockdown(store: PrivateStore, knowledge: dict, variant: str | None) -> Lockdown:
    """settings.kernel.lockdown from the datastore, else the variant's documented default."""
    conf = knowledge["lockdown"]
    value, ev = store.setting("lockdown")
    if value in conf["modes"]:
        return Lockdown(value, [ev], True)
    if value is not None:
        store.image.warn(f"{ev['source']}: lockdown {value!r} is not one of {', '.join(conf['modes'])}; using the default")
    for rule in conf["defaults"]:
        if "default" in rule:
            mode = rule["default"]
        elif variant and variant.endswith(rule.get("variant_suffix", "\0")):
            mode = rule["mode"]
        else:
            continue
        why = f"settings.kernel.lockdown default for variant {variant}" if variant else "settings.kernel.lockdown default"
        return Lockdown(mode, [evidence(conf["defaults_source"], why, False)], False)
    return Lockdown(None)
