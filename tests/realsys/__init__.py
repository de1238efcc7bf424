"""Real operating systems for the tests: Debian 12 built from Debian's packages with ``mmdebstrap``,
laid out by the distributions' own image tools (``sgdisk``/``mke2fs``, ``systemd-repart``, mkosi 14's
steps), each with ground truth computed by reference tools without immutools.

``real_system(name)`` builds (or takes from the fixture cache) one of ``IMAGES``; see ``layouts.py``
for what each image is and ``truth.py`` for what is measured.
"""

from realsys.images import FAST_IMAGES, IMAGES, SLOW_IMAGES, RealSystem, RealSystemUnavailable, real_system  # noqa: F401
