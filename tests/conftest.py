import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from builders import REPO  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _private_decompression_cache(tmp_path_factory):
    """Tests never touch the user's decompression cache: every scan (and every CLI subprocess, which
    inherits the environment) uses a cache directory of this test session."""
    saved = os.environ.get("IMMUTOOLS_CACHE_DIR")
    os.environ["IMMUTOOLS_CACHE_DIR"] = str(tmp_path_factory.mktemp("decompression-cache"))
    yield
    if saved is None:
        os.environ.pop("IMMUTOOLS_CACHE_DIR", None)
    else:
        os.environ["IMMUTOOLS_CACHE_DIR"] = saved


@pytest.fixture(scope="session")
def is_root() -> bool:
    return os.geteuid() == 0


def pytest_report_header(config):
    return f"immutools tests from {REPO}; fixture cache: {os.environ.get('IMMUTOOLS_FIXTURE_CACHE', REPO / '.cache' / 'fixtures')}"
