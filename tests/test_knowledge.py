"""Distribution knowledge as data: every file follows the shared schema, every key is read by its
collector, and every citation in the repository can be followed from a clone."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from builders import REPO
from replicas import build_replica

import immutools.collectors.base as collector_base
from immutools.knowledge import distribution_ids, distribution_schema, load_distribution
from immutools.replica.spec import list_specs
from immutools.scan import scan

IDS = distribution_ids()


@pytest.mark.parametrize("dist_id", IDS)
def test_distribution_file_follows_the_schema(dist_id):
    jsonschema.validate(load_distribution(dist_id), distribution_schema())


# ------------------------------------------------------------------------------------------------
# every key is read
# ------------------------------------------------------------------------------------------------
class _Tracked(dict):
    """A mapping that records the dotted path of every key read from it (lists of mappings are
    tracked element-wise under ``[]``)."""

    def __init__(self, data: dict, path: str, seen: set):
        super().__init__()
        self._path, self._seen = path, seen
        for key, value in data.items():
            super().__setitem__(key, _track(value, f"{path}.{key}" if path else str(key), seen))

    def _mark(self, key):
        self._seen.add(f"{self._path}.{key}" if self._path else str(key))

    def __getitem__(self, key):
        self._mark(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        if key in self.keys():
            self._mark(key)
        return super().get(key, default)

    def items(self):
        for key in self.keys():
            self._mark(key)
        return super().items()

    def values(self):
        for key in self.keys():
            self._mark(key)
        return super().values()

    def __iter__(self):
        for key in self.keys():
            self._mark(key)
        return super().__iter__()

    def __or__(self, other):
        for key in self.keys():
            self._mark(key)
        return dict(self.items()) | dict(other)


def _track(value, path: str, seen: set):
    if isinstance(value, dict):
        return _Tracked(value, path, seen)
    if isinstance(value, list):
        return [_track(v, f"{path}[]", seen) for v in value]
    return value


def _key_paths(value, path: str = "") -> set[str]:
    out = set()
    if isinstance(value, dict):
        for key, sub in value.items():
            here = f"{path}.{key}" if path else str(key)
            out.add(here)
            out |= _key_paths(sub, here)
    elif isinstance(value, list):
        for sub in value:
            out |= _key_paths(sub, f"{path}[]")
    return out


# Keys read only on paths the healthy replicas do not take; each says why it is kept. (Variants in
# the replica set that take those paths make an entry unnecessary: remove it then.)
LOOKUP_TABLES = {
    "*": {
        # detection weights: a key is read when its fingerprint hits on some image
        "detect",
        # documented defaults of guaranteed mounts: read when the image does not describe the mount
        # (tests/test_completeness.py damages copies to take that path)
        "guarantees.facts[].default",
    },
    "flatcar": {
        # the /etc era by release number, when the image has neither the overlay nor the confext files
        "etc_eras[].from_major",
        # update_engine's built-in defaults, when no update.conf sets GROUP/SERVER
        "update.default_group", "update.default_server", "update.defaults_source",
    },
    "ostree": {
        # Zincati's built-in Cincinnati server, when no drop-in sets it; Atomic desktop variants by
        # VARIANT_ID (Kinoite, Sway, Budgie have no replica)
        "zincati.default_server", "variants.kinoite", "variants.sericea", "variants.onyx",
    },
    # partitions found by label when their numbers moved
    "cos": {"gpt.slots.B.kernel_label", "gpt.slots.B.root_label"},
    "dps": {
        # every DPS image kind has its own block (os.role); the top level serves an image whose kind
        # is unknown; no replica is a plain-root or plain-usr image (tests/test_dps.py builds small ones)
        "guarantees.facts", "guarantees.documented_by", "guarantees.roles.root-verity", "guarantees.roles.usr",
        # pairing by partition label, when no root hash is known
        "verity_label_suffix",
    },
}


@pytest.mark.slow
def test_every_key_of_every_distribution_file_is_read(monkeypatch):
    seen: set[str] = set()
    tracked = {dist_id: _track(load_distribution(dist_id), "", seen) for dist_id in IDS}

    def tracked_load(dist_id):
        return tracked[dist_id]

    monkeypatch.setattr(collector_base, "load_distribution", tracked_load)
    for spec in list_specs():
        if spec.abstract:
            continue
        scan(str(build_replica(spec.name)), progress=False)
    unread = {}
    for dist_id in IDS:
        paths = _key_paths(yaml.safe_load((REPO / "data" / "distributions" / f"{dist_id}.yaml").read_text()))
        missing = sorted(p for p in paths if p not in seen
                         and not any(p == t or p.startswith(t + ".")
                                     for t in LOOKUP_TABLES["*"] | LOOKUP_TABLES.get(dist_id, set())))
        if missing:
            unread[dist_id] = missing
    assert not unread, f"keys no collector reads on any replica: {json.dumps(unread, indent=1)}"


# ------------------------------------------------------------------------------------------------
# citations a clone can follow
# ------------------------------------------------------------------------------------------------
_TEAM_NOTES = re.compile(r"shared/reference|/work/shared|\b(?:flatcar|bottlerocket|talos|ostree-and-others|"
                         r"article-and-peers|real-systems)\.md\b")


def test_no_citation_points_outside_the_repository():
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in files:
        path = Path(REPO, name)
        if path.suffix not in (".py", ".yaml", ".yml", ".md", ".json", ".toml", ".ipynb", ".c", ".sh") and name != "run":
            continue
        if not path.is_file() or path.stat().st_size > 4 * 1024 * 1024:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if _TEAM_NOTES.search(line) and "_TEAM_NOTES" not in line:
                offenders.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not offenders, f"{len(offenders)} citations of the team notes:\n" + "\n".join(offenders[:60])
