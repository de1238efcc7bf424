"""Replica disk images built from published layouts (``data/replica-specs/*.yaml``).

Real vendor images cannot be downloaded in every environment, so the project builds replicas that
follow each distribution's published layout exactly (partition numbers, GUIDs, attributes, sizes,
filesystems and mkfs options, paths, key file contents, dm-verity) with small stand-ins for the
bulk of the file contents. Every replica carries a provenance record (``/immutools-replica.json``)
saying so.

    python -m immutools.replica list
    python -m immutools.replica build SPEC... --out DIR [--forms raw,bz2,qcow2]
"""

BUILDER_VERSION = "1.0"

__all__ = ["BUILDER_VERSION"]
