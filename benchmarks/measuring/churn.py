"""Malloc churn: the minor page faults (`getrusage`'s ru_minflt) of a fresh interpreter that
allocates and frees a pair of 16 MiB buffers (a 256^3 uint8 cutout and its encoding)
twenty times, after a warm-up of two, with glibc's defaults and with the server's malloc
settings (`ndingest.malloc`: two arenas, freed memory kept up to 256 MiB). A buffer mapped
anew costs a fault per 4 KiB page, 4,096 per buffer; one reused costs none. A property of
the machine's C library as much as of ndingest, hence a benchmark's row, not a test."""
from __future__ import annotations

import json
import platform
import subprocess
import sys

from measuring import median

PAIRS, BUFFER = 20, 16 << 20
KEEP_FREED = "from ndingest import malloc\nassert malloc.few_arenas(2) and malloc.keep_freed(256 << 20)"
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
    """The faults of the churn in a fresh interpreter that first runs `setup`."""
    code = CHURN.format(setup=setup)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def churn_line(runs: int = 3) -> str:
    """serve.py's row: the median of `runs` fresh interpreters each way; skipped off glibc."""
    libc = platform.libc_ver()[0]
    if libc != "glibc":
        return f"malloc churn: skipped (mallopt is glibc's; this C library is {libc or 'unknown'})"
    defaults = median([churn_faults("") for _ in range(runs)])
    kept = median([churn_faults(KEEP_FREED) for _ in range(runs)])
    pages = BUFFER // 4096
    return (f"malloc churn: glibc defaults {defaults:,} faults; keep_freed {kept:,} faults "
            f"({PAIRS} pairs of {BUFFER >> 20} MiB buffers allocated and freed after a warm-up of two, minor page "
            f"faults of a fresh interpreter, median of {runs}; a buffer mapped anew is {pages:,}, so "
            f"{2 * PAIRS * pages:,} for all; keep_freed: `malloc.few_arenas(2)`, `malloc.keep_freed(256 << 20)`)")
