"""The benchmark scripts still run end to end at a small size (their figures are not
checked here: speed is measured by running them, not by timed assertions)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO


def run_benchmark(tmp_path, script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_ingest_benchmark_prints_every_row_and_goal(tmp_path):
    from s3 import moto_server_bin

    with_s3 = moto_server_bin() is not None  # else the S3 rows are skipped, as tests/e2e's S3 tests are
    out = run_benchmark(tmp_path, "ingest.py", "--size", "8MiB", "--rounds", "1", "--tmp", str(tmp_path),
                        *(() if with_s3 else ("--no-s3",)))
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    layouts = ("sharded, local", "S3, one object per chunk", "S3, sharded") if with_s3 else ("sharded, local",)
    for row in ("disk floor", "baseline copy", "baseline read-back compare", "ndingest write phase",
                "`ndingest ingest SPEC`", "`ndingest verify SPEC`", "CloudVolume upload",
                "unsharded, local: baseline copy", "sharded, local: CloudVolume upload",
                *(f"{layout}: {step}" for layout in layouts
                  for step in ("hand-written copy", "ndingest write phase", "`ndingest ingest SPEC`"))):
        assert any(line.startswith(f"| {row}") for line in rows), row
    goals = [line for line in out.splitlines() if line.startswith("- ") and ("PASS" in line or "MISS" in line)]
    assert len(goals) == (8 if with_s3 else 6), out
    assert not list(tmp_path.iterdir()), "the benchmark left its temporary folder behind"


@pytest.mark.parametrize("script, args, expect", [
    ("scale.py", ("--blocks-x", "8", "--blocks-y", "8", "--blocks-z", "2"), "128/128 blocks written"),
    ("tutorial_memory.py", ("--runs", "1"), "import floor"),
    ("tiff_memory.py", ("--quick",), "import floor"),
    ("webslices.py", ("--quick", "--rounds", "1"), "| HTTP URL pattern |"),
])
def test_other_benchmarks_run(tmp_path, script, args, expect):
    assert expect in run_benchmark(tmp_path, script, *args)


def test_pyramid_benchmark_prints_every_row_and_goal(tmp_path):
    out = run_benchmark(tmp_path, "pyramid.py", "--quick", "--tmp", str(tmp_path))
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    for row in ("one tensorstore read of level 0", "`ndingest ingest`, scaling_levels = 0",
                "`ndingest ingest`, scaling_levels = 3", "ndingest's 3 levels", "tensorstore `downsample` driver",
                "CloudVolume + tinybrain", "careful numpy mean"):
        assert any(line.startswith(f"| {row}") for line in rows), row
    goals = [line for line in out.splitlines() if line.startswith("- ") and ("PASS" in line or "MISS" in line)]
    assert len(goals) == 4, out
    assert not list(tmp_path.iterdir()), "the benchmark left its temporary folder behind"


def test_serve_benchmark_prints_every_row_and_goal(tmp_path):
    out = run_benchmark(tmp_path, "serve.py", "--quick", "--load-seconds", "3", "--heavy-seconds", "2", "--tmp", str(tmp_path))
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    for row in ("tensorstore, local, F order", "GET blosc + ", "GET blosc, body only", "GET npz + ", "GET raw + ",
                "GET blosc + `blosc.unpack_array` from a server that only sends", "the same bodies over a bare loopback socket",
                "`ndingest ingest`, local store",
                "`ndingest ingest`, `[store] url`", "GET blosc |", "PNG xy", "PNG xz", "PNG yz", "POST image blosc",
                "POST labels npz", "all |", "GET hdf5 |", "GET raw |", "PNG xy 4k |", "PNG yz 4k |", "POST blosc |"):
        assert any(line.startswith(f"| {row}") for line in rows), row
    goals = [line for line in out.splitlines() if line.startswith("- ")]
    assert len(goals) == 7, out
    load = [line for line in goals if line.startswith("- load:")]
    assert len(load) == 2 and all(line.endswith("PASS") for line in load), out  # no errors, bit-exact
    heavy = [line for line in goals if line.startswith("- heavy:")]
    assert len(heavy) == 3 and heavy[0].endswith("PASS"), out  # no 5xx but 503s: the budget's figures vary
    assert "The server's peak RSS over the whole run: " in out
    assert "The server's peak RSS over the cutouts and the load: " in out
    assert any(line.startswith("malloc churn: ") for line in out.splitlines()), out  # figures, or why skipped
    assert not list(tmp_path.iterdir()), "the benchmark left its temporary folder behind"
