"""Distribution knowledge kept as data: ``data/distributions/<id>.yaml``, loaded once."""

from __future__ import annotations

from functools import lru_cache

from immutools.paths import data_dir


@lru_cache(maxsize=None)
def load_distribution(dist_id: str) -> dict:
    import yaml

    path = data_dir() / "distributions" / f"{dist_id}.yaml"
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or data.get("id") != dist_id:
        raise ValueError(f"{path}: not a distribution file for {dist_id!r}")
    return data
