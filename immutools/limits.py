"""Safety bounds for hostile input. One place, so reviewers can see them all.

Every reader checks against these instead of trusting sizes found in the image.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    # Largest virtual disk we will decompress into the sparse cache.
    max_decompressed_bytes: int = 256 * 1024**3
    # Decompression-bomb bounds (immutools/image/guard.py): a compressed stream whose first bytes
    # are this many zeros has no disk structure; with no size declared in its first MiB, a stream
    # may not decompress to more than max_undeclared_bytes; and no more concatenated
    # members/streams/frames than max_compressed_members (pbzip2 writes one stream per 900 kB of
    # input: ~300,000 for a 256 GiB disk).
    max_leading_zeros: int = 64 * 1024**2
    max_undeclared_bytes: int = 1024**3
    max_compressed_members: int = 4_000_000
    # Largest block a random-access index may declare (xz block, zstd frame), decoded in memory;
    # files with larger blocks are decompressed whole instead.
    max_random_access_block: int = 256 * 1024**2
    # Largest single file we read fully into memory (os-release, grub.cfg, units, ...).
    max_file_read: int = 64 * 1024**2
    # Largest nested object (initramfs segment, squashfs inside cpio) we unpack into memory.
    max_nested_bytes: int = 1024 * 1024**2
    # Directory walk bounds.
    max_walk_depth: int = 64
    max_walk_entries: int = 2_000_000
    max_dir_entries: int = 1_000_000
    # Symlink resolution hops inside an image filesystem.
    max_symlink_hops: int = 40
    # Nesting of containers (compressed -> disk -> partition -> cpio -> squashfs ...).
    max_nesting: int = 8
    # Partition table entries we accept.
    max_partitions: int = 256
    # Extended-partition chain length for MBR.
    max_ebr_chain: int = 128


DEFAULT_LIMITS = Limits()
