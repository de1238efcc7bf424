"""The analysis layer: scan reports as pandas DataFrames, the immutability score, charts, HTML.

``loading`` (reports from JSON files, images and folders; no pandas), ``frames`` (tidy tables),
``rubric`` (the score from ``data/rubric.yaml`` and its sensitivity check), ``charts``
(matplotlib figures), ``table`` (the ``immutools compare`` terminal table), ``html`` (the static
report page). The public entry point is ``immutools.frames``; see ``docs/frames.md``.
Importing this package is cheap; pandas and matplotlib are imported by the submodules that need
them, never by ``immutools scan``.
"""
