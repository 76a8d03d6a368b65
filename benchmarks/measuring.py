"""What the benchmarks share: run a command as a subprocess and take its wall time, peak
RSS and output; describe the machine. Stdlib only, so importing it costs the parent
(whose resident set a child's ru_maxrss may count) next to nothing."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


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
