"""Error types and the exit codes the CLI maps them to.

Exit codes are a public interface (documented in the README):

  0  success (a partly readable image still exits 0, with warnings)
  2  usage error (bad arguments)
  3  the input is not a readable or supported disk image
  4  I/O error reading the input or writing the output
  5  a resource limit was hit (decompressed size, memory, recursion)
  6  verification failed (``immutools verify``: a hash mismatch, an unreadable target, a superblock
     contradicting the boot chain's table)
  7  nothing to verify (``immutools verify``: no dm-verity target, or none the boot chain pairs with a root hash)
  8  the configuration file cannot be read or is invalid (``immutools/config.py``)
  10 an internal error (a bug: please report it; ``--debug`` shows the traceback)
Also ``immutools diff``: 1 when the two scans differ, as diff(1) does.
"""

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_BAD_IMAGE = 3
EXIT_IO = 4
EXIT_LIMIT = 5
EXIT_VERIFY_FAILED = 6
EXIT_NOTHING_TO_VERIFY = 7
EXIT_CONFIG = 8
EXIT_INTERNAL = 10


class ImmutoolsError(Exception):
    """Base class: a problem we can describe to the user in one line."""

    exit_code = EXIT_BAD_IMAGE


class UnsupportedImageError(ImmutoolsError):
    """The input is not a disk image we can read (unknown format, empty, truncated)."""

    exit_code = EXIT_BAD_IMAGE


class CorruptDataError(ImmutoolsError):
    """A structure inside the image is damaged or inconsistent."""

    exit_code = EXIT_BAD_IMAGE


class UnsupportedFeatureError(ImmutoolsError):
    """A structure uses a feature we do not implement (e.g. an EROFS incompat bit)."""

    exit_code = EXIT_BAD_IMAGE


class ImageIOError(ImmutoolsError):
    """Reading the input (or writing a cache or output) failed at the OS level."""

    exit_code = EXIT_IO


class LimitExceededError(ImmutoolsError):
    """A safety bound was hit: decompressed size, object count, recursion depth."""

    exit_code = EXIT_LIMIT


class FileSystemError(ImmutoolsError):
    """A path lookup inside an image filesystem failed (missing file, not a directory, loop)."""

    exit_code = EXIT_BAD_IMAGE


class NotFoundError(FileSystemError):
    pass


class NotADirectoryError_(FileSystemError):
    pass


class IsADirectoryError_(FileSystemError):
    pass
