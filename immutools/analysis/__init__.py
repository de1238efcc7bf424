"""The analysis layer: scan reports as pandas DataFrames, the immutability score, charts, HTML.

``loading`` (reports from JSON files, images and folders, and the helpers every other module
shares; no pandas; imports no other analysis module), ``rubric`` (the score from
``data/rubric.yaml``), ``ranking`` (which images are comparable: completeness and coverage),
``sensitivity`` (how the ranking depends on the weights), ``frames`` (tidy tables), ``charts``
(matplotlib figures), ``table`` (the ``immutools compare`` terminal table), ``html`` (the static
report page). Each module uses only public names of the others, and their imports form no cycle
(tests/test_frames.py checks both). The public entry point is ``immutools.frames``; see
``docs/frames.md``.
Importing this package is cheap; pandas and matplotlib are imported by the submodules that need
them, never by ``immutools scan``.
"""
