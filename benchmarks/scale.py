"""10^5 blocks: how long planning, scheduling, resuming and a no-op rerun take.

Run from the project root:

    .venv/bin/python benchmarks/scale.py [--blocks-x 50 --blocks-y 50 --blocks-z 40]

In a temporary folder it writes an HDF5 source whose shape holds the requested grid of
64x64x64 blocks (isotropic chunks, `block_chunks = [1, 1, 1]`; 100,000 blocks by
default) without writing any voxel (unallocated chunks), so the figures are about the
pipeline's bookkeeping, not I/O. Then, each timed on its own:

1. `load_plan`: the spec joined with its source into levels, blocks and tasks;
2. Luigi scheduling of a fresh ingest (a local-scheduler Worker adding the Verify task,
   which asks every task's `complete()`), no task run;
3. the finished state is made without writing voxels: the real Inspect → CreateChannels
   tasks, then every block's written and verified markers and each task's seal (same
   files as the writers'), the verify report and propagate = 2;
4. `ndingest status SPEC` (counts 2 x 10^5 markers), and `ndingest plan SPEC` before
   anything is written and once everything is;
5. `ndingest ingest SPEC` on the finished ingest (the cron no-op), as a subprocess;
6. resume after a kill in the middle of a task (half its blocks marked, no seal): Luigi
   scheduling alone, then the whole `ndingest ingest SPEC` that finishes the job.

Prints a Markdown table and the machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import logging

import luigi
import luigi.scheduler
import luigi.worker

from ndingest import markers
from ndingest.plan import load_plan
from ndingest.steps import mark_propagated
from ndingest.tasks import CreateChannels, Verify
from ndingest.verify import report_dir

from measuring import bench_spec
from measuring.servers import start_postgresql

NDINGEST = str(Path(sys.executable).parent / "ndingest")
EDGE = 64  # isotropic chunk = block


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def schedule_only(spec: Path) -> int:
    """Add the DAG to a fresh local scheduler, as `luigi.build` does, without running it."""
    worker = luigi.worker.Worker(scheduler=luigi.scheduler.Scheduler(), worker_processes=1)
    with worker:
        worker.add(Verify(spec=str(spec)))
        return len(worker._scheduled_tasks)


def fake_finished(spec: Path) -> None:
    """The state a finished ingest leaves, without its voxels."""
    assert luigi.build([CreateChannels(spec=str(spec))], local_scheduler=True), "CreateChannels failed"
    plan = load_plan(str(spec))
    # the source's chunks are unallocated and the store has no chunk files: both read as zeros
    zeros = markers.checksum(np.zeros((EDGE, EDGE, EDGE), dtype=np.uint8))
    for cp in plan.channels.values():
        for lv in cp.levels:
            for task in lv.tasks:
                for kind in (markers.WRITTEN, markers.VERIFIED):
                    directory = markers.task_dir(cp.markers_dir, kind, lv.level, task)
                    directory.mkdir(parents=True, exist_ok=True)
                    for box in task.blocks:
                        record = {"box": box.to_key(), "t": task.t, "level": lv.level, "checksum": zeros,
                                  "dtype": "uint8", "pid": os.getpid()}
                        (directory / f"{box.to_key()}{markers.SUFFIX}").write_text(json.dumps(record))
                    markers.seal_task(directory, task)  # as write_task and verify_task do
    report_dir(plan).mkdir(parents=True, exist_ok=True)
    (report_dir(plan) / "verify.csv").write_text("fabricated by benchmarks/scale.py\n")
    mark_propagated(plan)


def plan_row(spec: Path, name: str) -> tuple[str, float, str]:
    """`ndingest plan SPEC --json` as a subprocess: the seconds and what it counted."""
    seconds, run = timed(lambda: subprocess.run([NDINGEST, "plan", "--json", str(spec)], capture_output=True,
                                                text=True, check=True))
    found = json.loads(run.stdout)
    level0 = found["channels"]["image"]["levels"][0]
    done = f", {level0['done']:,} done" if "done" in level0 else ""
    return (name, seconds, f"{level0['blocks']:,} level-0 blocks{done}; estimate "
                           f"{found['estimate_seconds']['median']:.0f} s")


def catalog_rows(folder: Path, source: Path, catalog: str) -> list[tuple[str, float, str]]:
    """`status` and the cron no-op of the same finished ingest, its catalog in PostgreSQL."""
    spec = folder / "spec_pg.toml"
    spec.write_text(bench_spec("scale_bench", source, resolution=(4.0, 4.0, 4.0), scaling_option="isotropic",
                               channel_extra="window_range = [0, 255]", store=folder / "store_pg",
                               ingest="block_chunks = [1, 1, 1]")
                    .replace(f'path = "{folder / "store_pg"}"', f'path = "{folder / "store_pg"}"\ncatalog = "{catalog}"'))
    fake_finished(spec)
    rows = []
    seconds, status = timed(lambda: subprocess.run([NDINGEST, "status", str(spec)], capture_output=True,
                                                    text=True, check=True))
    rows.append(("`ndingest status SPEC`, catalog in PostgreSQL", seconds, status.stdout.strip()))
    seconds, rerun = timed(lambda: subprocess.run([NDINGEST, "ingest", str(spec)], capture_output=True, text=True))
    assert rerun.returncode == 0, rerun.stderr
    rows.append(("`ndingest ingest SPEC`, finished, catalog in PostgreSQL (cron no-op)", seconds,
                 rerun.stdout.splitlines()[0]))
    return rows


def main() -> None:
    logging.getLogger("luigi-interface").setLevel(logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks-x", type=int, default=50)
    parser.add_argument("--blocks-y", type=int, default=50)
    parser.add_argument("--blocks-z", type=int, default=40)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (for profiling)")
    parser.add_argument("--no-postgresql", action="store_true",
                        help="skip the rows of a PostgreSQL catalog (started here as tests/postgres.py does)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ndingest-scale-"))
    rows = []
    postgres = None
    try:
        source = folder / "big.h5"
        shape = (args.blocks_z * EDGE, args.blocks_y * EDGE, args.blocks_x * EDGE)  # (z, y, x)
        with h5py.File(source, "w") as f:
            ds = f.create_dataset("image/CUTOUT", shape=shape, dtype="uint8", chunks=(EDGE, EDGE, EDGE))
            ds[0, 0, 0] = 0  # stores one (all-zero) chunk: a huge array with none is refused as broken
        spec = folder / "spec.toml"
        spec.write_text(bench_spec("scale_bench", source, resolution=(4.0, 4.0, 4.0), scaling_option="isotropic",
                                   channel_extra="window_range = [0, 255]", store=folder / "store",
                                   ingest="block_chunks = [1, 1, 1]"))

        seconds, plan = timed(lambda: load_plan(str(spec)))
        cp = plan.channel("image")
        n_blocks = sum(len(s.blocks) for s in cp.tasks)
        rows.append(("plan (`load_plan`)", seconds, f"{n_blocks:,} blocks in {len(cp.tasks):,} tasks"))
        seconds, n_tasks = timed(lambda: schedule_only(spec))
        rows.append(("Luigi scheduling, fresh ingest (no task run)", seconds, f"{n_tasks:,} tasks"))
        rows.append(plan_row(spec, "`ndingest plan SPEC`, nothing written (whole process)"))
        seconds, _ = timed(lambda: fake_finished(spec))
        rows.append(("(setup: catalog, 2 x markers, report; not a figure)", seconds, ""))
        seconds, status = timed(lambda: subprocess.run([NDINGEST, "status", str(spec)], capture_output=True,
                                                        text=True, check=True))
        rows.append(("`ndingest status SPEC`", seconds, status.stdout.strip()))
        rows.append(plan_row(spec, "`ndingest plan SPEC`, finished (reads every seal)"))
        seconds, rerun = timed(lambda: subprocess.run([NDINGEST, "ingest", str(spec)], capture_output=True, text=True))
        assert rerun.returncode == 0, rerun.stderr
        rows.append(("`ndingest ingest SPEC`, finished ingest (cron no-op)", seconds, rerun.stdout.splitlines()[0]))
        # a kill in the middle of a task: half its blocks marked, no seal, nothing verified
        lost = cp.tasks[len(cp.tasks) // 2]
        for kind in (markers.WRITTEN, markers.VERIFIED):
            directory = markers.task_dir(cp.markers_dir, kind, 0, lost)
            markers.sealed_path(directory).unlink()
            for box in lost.blocks[len(lost.blocks) // 2 if kind == markers.WRITTEN else 0:]:
                (directory / f"{box.to_key()}{markers.SUFFIX}").unlink()
        seconds, n_tasks = timed(lambda: schedule_only(spec))
        rows.append(("resume: Luigi scheduling after a kill mid-task", seconds, f"{n_tasks:,} tasks"))
        seconds, rerun = timed(lambda: subprocess.run([NDINGEST, "ingest", str(spec)], capture_output=True, text=True))
        assert rerun.returncode == 0, rerun.stderr
        rows.append(("resume: `ndingest ingest SPEC` after a kill mid-task", seconds,
                     f"writes {len(lost.blocks) - len(lost.blocks) // 2} blocks, verifies {len(lost.blocks)}, "
                     "report of every block"))
        if not args.no_postgresql:
            postgres = start_postgresql()
            rows += catalog_rows(folder, source, postgres.new_database())
    finally:
        if postgres is not None:
            postgres.stop()
        if args.keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print("| step | seconds | note |\n|---|---:|---|")
    for name, seconds, note in rows:
        print(f"| {name} | {seconds:.2f} | {note} |")
    print(f"\nMachine: {os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.platform()}")


if __name__ == "__main__":
    main()
