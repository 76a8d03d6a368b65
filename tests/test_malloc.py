"""The server's malloc settings: a freed cutout buffer is reused, not mapped afresh.

Counted in minor page faults of a fresh interpreter (`getrusage`), which allocates and frees
two 16 MiB buffers (a 256^3 uint8 cutout and its encoding) twenty times. What glibc's
defaults cost is the platform's, not ndingest's: `benchmarks/serve.py` prints it beside
these settings' count."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

CHURN = """
import json, resource
{setup}
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
warm = [b"\\x01" * (16 << 20) for _ in range(2)]
del warm
before = faults()
for _ in range(20):
    cutout = b"\\x01" * (16 << 20)
    body = b"\\x02" * (16 << 20)
    del cutout, body
print(json.dumps(faults() - before))
"""


def churn_faults(setup: str) -> int:
    code = CHURN.format(setup=setup)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_keep_freed_reuses_freed_buffers():
    faults = churn_faults("from ndingest import malloc\nassert malloc.few_arenas(2) and malloc.keep_freed(256 << 20)")
    assert faults < 2 * 4096


def test_the_server_app_keeps_freed_buffers(tmp_path):
    """`serve` and `uvicorn --workers` both build the app with create_app: the settings are there."""
    setup = f"from pathlib import Path\nfrom ndingest.server import create_app\ncreate_app(Path({str(tmp_path)!r}))"
    assert churn_faults(setup) < 2 * 4096

