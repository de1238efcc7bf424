import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from builders import REPO  # noqa: E402


@pytest.fixture(scope="session")
def is_root() -> bool:
    return os.geteuid() == 0


def pytest_report_header(config):
    return f"immutools tests from {REPO}; fixture cache: {os.environ.get('IMMUTOOLS_FIXTURE_CACHE', REPO / '.cache' / 'fixtures')}"
