"""What the benchmarks share: run a command as a subprocess and take its wall time, peak
RSS and output; what a step reports and how runs are summed up (medians, goals); sizes;
describe the machine; a spec. Stdlib only, so importing it costs the parent (whose
resident set a child's ru_maxrss may count) next to nothing.

Beside it, imported by the scripts that need them (each stdlib-only at import; numpy,
h5py, tensorstore and the rest are imported inside the functions that use them):
`volumes` (the deterministic sources), `stores` (opening precomputed volumes, what a run
wrote), `copies` (ingest.py's hand-written copies, CloudVolume and the disk floor),
`s3` (moto's server), `ndlog` (what ndingest's output says), `layouts` (ingest.py's
layouts table), `servers` (`ndingest serve`, a server that does no work, PostgreSQL),
`load` (serve.py's load clients) and `churn` (malloc's page faults)."""
from __future__ import annotations

import argparse
import json
import os
import re
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BIN = Path(sys.executable).parent
NDINGEST = str(BIN / "ndingest")
PYTHON = str(BIN / "python")
MiB = 2**20
GiB = 2**30
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


@dataclass
class Measured:
    seconds: float  # the whole process, wall time
    peak_rss: int  # bytes: the child's ru_maxrss from wait4
    stdout: str
    stderr: str


def measure(argv: list[str], cwd: Path, *, sync_first: bool = False) -> Measured:
    """Run `argv`, wait for it with wait4, and return its wall time, peak RSS and output;
    a failure ends the benchmark with the command's output."""
    if sync_first:
        os.sync()  # the previous step's dirty pages are not this step's writeback
    with tempfile.TemporaryFile(mode="w+", dir=cwd) as out, tempfile.TemporaryFile(mode="w+", dir=cwd) as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not wait again
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited {proc.returncode}:\n{stdout}{stderr[-5000:]}")
    return Measured(seconds, usage.ru_maxrss * 1024, stdout, stderr)


def measure_synced(argv: list[str], cwd: Path) -> Measured:
    """Each step starts with the disk flushed: the previous step's writeback is not its cost."""
    return measure(argv, cwd, sync_first=True)


def seconds_out(seconds: float, **more: float) -> None:
    """What a step reports to the parent: its timed part (and any `more`), as the last line of stdout."""
    print(json.dumps({"seconds": seconds, **more}))


def reported_seconds(m: Measured, key: str = "seconds") -> float:
    """The timed part a step printed as its last stdout line."""
    return float(json.loads(m.stdout.strip().splitlines()[-1])[key])


def median_run(runs: list[Measured], *, reported: bool) -> Measured:
    """The run with the median time (timed part or whole process), with the largest peak RSS of all."""
    ordered = sorted(runs, key=lambda m: reported_seconds(m) if reported else m.seconds)
    middle = ordered[len(ordered) // 2]
    return Measured(middle.seconds, max(m.peak_rss for m in runs), middle.stdout, middle.stderr)


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def goal(name: str, value: float, target: float, unit: str = "x", below: bool = False) -> str:
    ok = value < target if below else value >= target
    sign = "<" if below else ">="
    shown = f"{value:.0f}" if unit == " MiB" else f"{value:.3f}"
    return f"- {name}: {shown}{unit} (goal {sign} {target:g}{unit}): {verdict(ok)}"


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"{text!r}: a size such as 1GiB, 512MiB or 500MB")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def machine() -> str:
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    return (f"{len(os.sched_getaffinity(0))} CPUs ({cpu}), {mem_kib / 2**20:.1f} GiB RAM, "
            f"Python {platform.python_version()}, {platform.system()} {platform.release()}")


def bench_spec(name: str, source: str | Path, *, resolution=(4.0, 4.0, 40.0), scaling_option: str = "zslices",
               levels: int = 0, channel: str = "image", channel_type: str = "image", channel_extra: str = "",
               store: str | Path = "store", ingest: str = "", store_extra: str = "") -> str:
    """The spec of a benchmark: one channel `channel` of `source`; dataset, project and
    token all named `name`, at offset 0; `channel_extra`, `store_extra` (more `[store]`
    keys) and `ingest` are TOML lines."""
    text = f"""[dataset]
name = "{name}"
offset = [0, 0, 0]
voxel_resolution = [{resolution[0]}, {resolution[1]}, {resolution[2]}]
scaling_option = "{scaling_option}"
scaling_levels = {levels}

[project]
name = "{name}"
token = "{name}"
public = true

[channels.{channel}]
type = "{channel_type}"
source = "{source}"
{channel_extra}
[store]
path = "{store}"
""" + (f"{store_extra}\n" if store_extra else "")
    return text + (f"\n[ingest]\n{ingest}\n" if ingest else "")
