"""Distribution knowledge kept as data: ``data/distributions/<id>.yaml`` and shared files such as
``data/systemd.yaml``, loaded once and checked against ``data/distributions/schema.json``."""

from __future__ import annotations

import json
from functools import lru_cache

from immutools.paths import data_dir


def load_yaml_file(path):
    """Our own data files, parsed with libyaml's C loader when PyYAML has it (ten times faster than
    the pure-Python one: it is part of every scan's fixed cost); same safe subset either way."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as f:
        return yaml.load(f, Loader=loader)  # noqa: S506 - a safe loader


@lru_cache(maxsize=None)
def load_distribution(dist_id: str) -> dict:
    """``data/distributions/<dist_id>.yaml``; its ``id`` must be ``dist_id``."""
    path = data_dir() / "distributions" / f"{dist_id}.yaml"
    data = load_yaml_file(path)
    if not isinstance(data, dict) or data.get("id") != dist_id:
        raise ValueError(f"{path}: not a distribution file for {dist_id!r}")
    return data


@lru_cache(maxsize=None)
def load_data(name: str) -> dict:
    """A shared data file, ``data/<name>.yaml``."""
    data = load_yaml_file(data_dir() / f"{name}.yaml")
    if not isinstance(data, dict):
        raise ValueError(f"data/{name}.yaml: not a mapping")
    return data


def distribution_ids() -> list[str]:
    return sorted(p.stem for p in (data_dir() / "distributions").glob("*.yaml"))


def distribution_schema() -> dict:
    return json.loads((data_dir() / "distributions" / "schema.json").read_text(encoding="utf-8"))
