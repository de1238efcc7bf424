"""Partition tables: GPT (512/4096-byte sectors, CRC checks, backup fallback) and MBR.

``read_partition_table(source)`` returns a ``PartitionTable``; see ``model.py``.
"""

from immutools.volumes.model import Partition, PartitionTable  # noqa: F401
