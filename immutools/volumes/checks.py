"""Checks shared by the GPT and MBR readers: partitions past the image end, overlaps."""

from __future__ import annotations

from immutools.volumes.model import Partition


def describe(part: Partition) -> str:
    return f"partition {part.number}" + (f" ({part.label})" if part.label else "")


def check_extents(partitions: list[Partition], image_size: int, warnings: list[str]) -> bool:
    """Warn for partitions reaching past the end of the image; True if any does.

    Such partitions are kept: a truncated download should still show its whole table.
    """
    truncated = False
    for part in partitions:
        end = part.start + part.size
        if part.start >= image_size:
            warnings.append(
                f"{describe(part)} starts at byte {part.start}, beyond the end of the image "
                f"({image_size} bytes): the image looks truncated"
            )
            truncated = True
        elif end > image_size:
            warnings.append(
                f"{describe(part)} ends at byte {end}, {end - image_size} bytes beyond the end of the "
                f"image ({image_size} bytes): the image looks truncated"
            )
            truncated = True
    return truncated


MAX_OVERLAP_WARNINGS = 16  # a hostile table of 256 identical entries has 32640 overlapping pairs


def check_overlaps(partitions: list[Partition], warnings: list[str]) -> None:
    """Warn for overlapping partitions (sorted sweep), naming at most MAX_OVERLAP_WARNINGS pairs."""
    ordered = sorted(partitions, key=lambda p: (p.first_lba, p.last_lba))
    active: list[Partition] = []
    pairs = 0
    for part in ordered:
        active = [a for a in active if a.last_lba >= part.first_lba]
        for other in active:
            pairs += 1
            if pairs <= MAX_OVERLAP_WARNINGS:
                warnings.append(f"{describe(other)} and {describe(part)} overlap")
        active.append(part)
    if pairs > MAX_OVERLAP_WARNINGS:
        warnings.append(f"{pairs - MAX_OVERLAP_WARNINGS} more overlapping partition pairs not listed")
