"""Distribution knowledge kept as data: ``data/distributions/<id>.yaml`` and shared files such as
``data/systemd.yaml``, loaded once and checked against ``data/distributions/schema.json``."""

from __future__ import annotations

import json
from functools import lru_cache

from immutools.paths import data_dir


def _load_yaml(path):
    import yaml

    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


@lru_cache(maxsize=None)
def load_distribution(dist_id: str) -> dict:
    """``data/distributions/<dist_id>.yaml``; its ``id`` must be ``dist_id``."""
    path = data_dir() / "distributions" / f"{dist_id}.yaml"
    data = _load_yaml(path)
    if not isinstance(data, dict) or data.get("id") != dist_id:
        raise ValueError(f"{path}: not a distribution file for {dist_id!r}")
    return data


@lru_cache(maxsize=None)
def load_data(name: str) -> dict:
    """A shared data file, ``data/<name>.yaml``."""
    data = _load_yaml(data_dir() / f"{name}.yaml")
    if not isinstance(data, dict):
        raise ValueError(f"data/{name}.yaml: not a mapping")
    return data


def distribution_ids() -> list[str]:
    return sorted(p.stem for p in (data_dir() / "distributions").glob("*.yaml"))


def distribution_schema() -> dict:
    return json.loads((data_dir() / "distributions" / "schema.json").read_text(encoding="utf-8"))
