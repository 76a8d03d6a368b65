"""The server's malloc settings: a freed cutout buffer is reused, not mapped afresh.

Counted in minor page faults of a fresh interpreter (`getrusage`), which allocates and frees
two 16 MiB buffers (a 256^3 uint8 cutout and its encoding) twenty times. What glibc's
defaults cost is the platform's, not ndingest's: `benchmarks/serve.py` prints it beside
these settings' count."""
from __future__ import annotations

import platform
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))  # the churn serve.py measures, one program for both
from measuring.churn import KEEP_FREED, churn_faults  # noqa: E402

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")


def test_keep_freed_reuses_freed_buffers():
    assert churn_faults(KEEP_FREED) < 2 * 4096


def test_the_server_app_keeps_freed_buffers(tmp_path):
    """`serve` and `uvicorn --workers` both build the app with create_app: the settings are there."""
    setup = f"from pathlib import Path\nfrom ndingest.server import create_app\ncreate_app(Path({str(tmp_path)!r}))"
    assert churn_faults(setup) < 2 * 4096
