"""immutools: measure how immutable an operating system is, offline, from its disk image.

The package mirrors the pipeline:
image access (``immutools.image``) -> volumes (``immutools.volumes``) ->
filesystems (``immutools.fs``) -> collectors (``immutools.collectors``) ->
the report model (``immutools.report``) -> frames and charts.
"""

__version__ = "0.1.0"
