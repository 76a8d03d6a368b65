"""Speed and peak memory of `ndingest ingest` against a hand-written copy and CloudVolume.

Run from the project root:

    .venv/bin/python benchmarks/ingest.py [--size 1GiB] [--dtype uint8] [--workers 1] [--keep] [--tmp DIR]
                                          [--no-sharded] [--no-s3]

In a fresh folder (under --tmp, else the system temp dir; removed at the end unless
--keep) it writes one deterministic volume of --size bytes as an uncompressed HDF5
`image/CUTOUT` (z, y, x) chunked (16, 128, 128): uniform noise over half the value
range plus a smooth x/y/z gradient, so EM-like, cheap to make and not trivially
compressible; uncompressed so that gzip is not what is measured. 1 GiB of uint8 is
1024x1024x1024. It is made slab by slab (never the whole volume) and not timed. Then,
each as its own subprocess, so each has its own peak RSS:

1. baseline copy: a hand-written h5py -> tensorstore copy into a neuroglancer
   precomputed volume with ndingest's layout (chunks 128x128x16, raw encoding), in
   whole-xy slabs one block deep (64 z, whole chunks), tensorstore's default context
   (`file_io_sync` on: an fsync per chunk file; no cache pool). The engine's limit;
2. baseline read-back compare: the copy read back with tensorstore, slab by slab,
   asserted equal to the HDF5 (the copy's equivalent of ndingest's verify);
3. the same copy with `file_io_sync` off and one os.sync() at the end (for information:
   what an fsync per chunk file costs);
4. `ndingest inspect SPEC` before any store exists (scans the window range);
5. `ndingest --debug ingest SPEC --workers N` into a fresh store (inspect of headers,
   catalog, writes, verify; no window-range scan: the blocks give it); its write
   phase is read from the log, as the span from Luigi's first `running IngestBlock`
   to its last `done IngestBlock` (and, beside it, the sum
   of the `wrote N blocks ... in S s` lines of ndingest.tasks);
6. `ndingest verify SPEC` (re-reads every block);
7. CloudVolume (`parallel=1`, `compress=False`, raw) uploading the same slabs, then one
   os.sync(), so its data is as durable as ndingest's and the baseline copy's;
8. the disk floor: one plain file per chunk, each a chunk's size, written with
   open/write/close into one folder, then os.sync() (no ingest into this folder that
   keeps DESIGN.md's one file per chunk can make its data durable faster); beside it,
   the same bytes as one file.

Then, in the same rounds (skipped with --no-sharded; the files each run above left are
counted too):

9. the sharded layout of `[store] sharding = true` (neuroglancer_uint64_sharded_v1 as
   `ndingest.blocks.sharding_spec` gives it; one shard file per cuboid of
   `ndingest.blocks.shard_cuboid` chunks, which is also ndingest's sharded block):
   a hand-written h5py -> tensorstore copy into it, one cuboid-deep slab at a time, each
   shard cuboid of the slab staged in its own `ts.Transaction()` and the slab's commits
   then awaited together (tensorstore's default context, as in 1); `ndingest --debug ingest`
   of the same spec plus `sharding = true` into a fresh store (write phase as in 5, and
   the ingest must say every block is written and verified); CloudVolume uploading
   the same cuboids, one `cv[...] = ` per shard file (which CloudVolume writes as one shard
   file), then one os.sync(). Files written by each are counted: voxel files (chunk or
   shard files) and ndingest's marker and report files.

And (skipped with --no-s3; its sharded half also with --no-sharded), into S3: moto's
server (`moto_server`, started once on 127.0.0.1, its request log kept in the folder) with
one bucket and a fresh key prefix per run:

10. the hand-written copy of 1 through tensorstore's s3 kvstore (one object per chunk);
   `ndingest --debug ingest` with `[store] path = "s3://bucket/prefix"` and a fresh SQLite
   catalog (`[store] catalog`); then both again in the sharded layout of 9 (the copy one
   transaction per shard file). The children get AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
   AWS_SECRET_ACCESS_KEY and AWS_REGION pointing at moto. After each run boto3 lists the
   objects it wrote (voxel objects; ndingest's `_markers/` and `_reports/` objects), its
   requests are the request lines moto logged while it ran (a whole process: ndingest's
   include its markers, reports and verify's reads), and its prefix is then emptied.
   Every ndingest run must write the layout (info's data type, size, chunks, encoding,
   sharding) its hand-written copy wrote.

Seconds of the hand-written steps and CloudVolume are their timed loops (the store
opened, every slab moved), without interpreter start-up and imports; ndingest's
commands are whole processes (imports included), so the ratios lean against ndingest.
The "process s" column gives every step's wall time as a process. MB/s is volume
bytes / seconds / 1e6. Peak RSS is the child's `ru_maxrss` from `os.wait4`: the largest
resident set of the child or any process it waited for (with --workers N > 1, Luigi's
forked workers run side by side, so their sum can be up to N times the figure). As in
tutorial_memory.py this script imports nothing heavy, so its own resident set (which a
child inherits at exec) inflates no figure. The goals checked (from the issue): write
phase >= 0.9x the baseline copy; whole ingest >= 0.75x baseline copy + read-back;
whole ingest >= 3x CloudVolume (and, where that is below the disk floor, says so);
ingest peak RSS < 400 MiB for 1 GiB (default settings); sharded, local disk: write phase
>= 0.9x the hand-written sharded copy, and no slower than the unsharded write phase
(unsharded seconds / sharded seconds >= 1); into S3: write phase >= 0.8x the hand-written
S3 copy, unsharded and sharded.

Prints a Markdown table, then (unless both parts are skipped) a second one for the layouts
(files or objects written, and S3 requests, per GiB), the goals and the machine.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
from pathlib import Path

from measuring import (NDINGEST, PYTHON, Measured, MiB, bench_spec, goal, machine, median_run, parse_size,
                       reported_seconds)
from measuring import measure_synced as measure
from measuring.copies import step_cloudvolume, step_copy, step_floor, step_layout_copy, step_readback
from measuring.layouts import Run, check_layouts, print_layouts
from measuring.ndlog import ingest_status, write_phase
from measuring.s3 import Moto, environment, measure_requests, moto_server_bin, step_objects
from measuring.stores import Written, files_written
from measuring.volumes import HDF5_CHUNK_ZYX, ITEMSIZE, RESOLUTION, Volume, generate, volume_shape
from ndingest.blocks import Vec3, chunk_shape  # pure: no numpy, no I/O
from ndingest.spec import DEFAULT_BLOCK_CHUNKS


# --- the steps, each run as `python benchmarks/ingest.py --step NAME --workdir DIR` ----------

def run_step(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    vol = Volume.load(workdir)
    out = Path(args.out) if args.out else workdir
    if args.step == "generate":
        generate(vol, workdir)
    elif args.step == "copy":
        step_copy(vol, workdir, out, fsync_each_file=args.sync == "default")
    elif args.step == "readback":
        step_readback(vol, workdir, out)
    elif args.step == "cloudvolume":
        step_cloudvolume(vol, workdir, out, sharded=args.sharded)
    elif args.step == "layoutcopy":
        step_layout_copy(vol, workdir, args.out, sharded=args.sharded)
    elif args.step == "objects":
        step_objects(args.out, delete=args.delete)
    elif args.step == "floor":
        step_floor(vol, workdir)
    return 0


# --- the parent: runs and measures the steps ---------------------------------------------

def step_argv(step: str, workdir: Path, *extra: str) -> list[str]:
    return [PYTHON, str(Path(__file__).resolve()), "--step", step, "--workdir", str(workdir), *extra]


def ingest_argv(spec: Path, workers: int) -> list[str]:
    return [NDINGEST, "--debug", "ingest", str(spec), "--workers", str(workers)]


def objects_written(urls: list[str], workdir: Path) -> list[Written]:
    """Count the objects under each of `urls` (one child with boto3), then delete them."""
    out = measure(step_argv("objects", workdir, "--out", ",".join(urls), "--delete"), workdir).stdout
    return [Written(**raw) for raw in json.loads(out.splitlines()[-1])]


def round_sharded(vol: Volume, workdir: Path, spec: Path, workers: int, runs: dict[str, list[Run]]) -> None:
    """One round of 9: the hand-written sharded copy, ndingest, CloudVolume, each into a fresh folder."""
    out = workdir / "sharded_copy"
    measured = measure(step_argv("layoutcopy", workdir, "--out", str(out), "--sharded"), workdir)
    runs["sharded_copy"].append(Run(measured, files_written(out)))
    shutil.rmtree(out, ignore_errors=True)
    store = workdir / "store_sharded"
    shutil.rmtree(store, ignore_errors=True)
    measured = measure(ingest_argv(spec, workers), workdir)
    runs["sharded_ingest"].append(Run(measured, files_written(store), status=ingest_status(measured)))
    out = workdir / "cloudvolume_sharded"
    measured = measure(step_argv("cloudvolume", workdir, "--out", str(out), "--sharded"), workdir)
    runs["sharded_cloudvolume"].append(Run(measured, files_written(out)))
    shutil.rmtree(out, ignore_errors=True)


def round_s3(moto: Moto, bucket: str, index: int, vol: Volume, workdir: Path, args: argparse.Namespace,
             runs: dict[str, list[Run]], *, sharded: bool) -> None:
    """One round of 10 in one layout: the hand-written copy, then ndingest (fresh SQLite
    catalog), each into a fresh prefix that is emptied once counted."""
    name = "s3_sharded" if sharded else "s3"
    copy_url, url = f"s3://{bucket}/round{index}-{name}-copy", f"s3://{bucket}/round{index}-{name}-ndingest"
    copy, copy_requests = measure_requests(
        moto, step_argv("layoutcopy", workdir, "--out", copy_url, *(["--sharded"] if sharded else [])), workdir)
    catalog = workdir / f"catalog_{name}.sqlite"
    for old in workdir.glob(f"{catalog.name}*"):  # the database and its lock file
        old.unlink()
    spec = workdir / f"bench_{name}.toml"
    store_extra = f'catalog = "sqlite:///{catalog}"' + ("\nsharding = true" if sharded else "")
    spec.write_text(bench_spec("ingest_bench", "source.h5", resolution=RESOLUTION,
                               channel_extra=f'datatype = "{args.dtype}"', store=url, store_extra=store_extra))
    measured, requests = measure_requests(moto, ingest_argv(spec, args.workers), workdir)
    copy_written, written = objects_written([copy_url, url], workdir)
    runs[f"{name}_copy"].append(Run(copy, copy_written, copy_requests))
    runs[f"{name}_ingest"].append(Run(measured, written, requests, ingest_status(measured)))


def bench(args: argparse.Namespace) -> int:
    itemsize = ITEMSIZE[args.dtype]
    chunk = chunk_shape("zslices", RESOLUTION, 0)
    block = chunk * Vec3(*DEFAULT_BLOCK_CHUNKS)
    vol = Volume(volume_shape(args.size, itemsize), args.dtype, tuple(chunk), block.z, "source.h5")
    workdir = Path(tempfile.mkdtemp(prefix="ndingest-ingest-bench-", dir=args.tmp))
    spec = workdir / "bench.toml"
    drop = (lambda path: None) if args.keep else (lambda path: shutil.rmtree(path, ignore_errors=True))
    sharded_spec = workdir / "bench_sharded.toml"
    moto: Moto | None = None
    layouts: dict[str, list[Run]] = {k: [] for k in ("copy", "ingest", "cloudvolume")}  # files of the runs above
    try:
        vol.save(workdir)
        spec.write_text(bench_spec("ingest_bench", "source.h5", resolution=RESOLUTION,
                                   channel_extra=f'datatype = "{args.dtype}"'))
        if not args.no_s3:  # it starts while the source is made, so it slows no timed step
            moto, bucket = Moto.launch(workdir), "ndingest-bench"
        generate = measure(step_argv("generate", workdir), workdir)
        if not args.no_sharded:
            sharded_spec.write_text(bench_spec("ingest_bench", "source.h5", resolution=RESOLUTION,
                                               channel_extra=f'datatype = "{args.dtype}"', store="store_sharded",
                                               store_extra="sharding = true"))
            layouts.update({k: [] for k in ("sharded_copy", "sharded_ingest", "sharded_cloudvolume")})
        if moto is not None:
            moto.create_bucket(bucket)
            layouts.update({k: [] for k in ("s3_copy", "s3_ingest")})
            if not args.no_sharded:
                layouts.update({k: [] for k in ("s3_sharded_copy", "s3_sharded_ingest")})

        runs: dict[str, list[Measured]] = {k: [] for k in ("floor", "copy", "readback", "nosync", "inspect",
                                                           "ingest", "verify", "cloudvolume")}
        statuses = []
        for index in range(args.rounds):  # interleaved, so a slow spell of the disk hits every step alike
            runs["floor"].append(measure(step_argv("floor", workdir), workdir))
            runs["copy"].append(measure(step_argv("copy", workdir, "--out", str(workdir / "baseline")), workdir))
            runs["readback"].append(measure(step_argv("readback", workdir, "--out", str(workdir / "baseline")),
                                            workdir))
            layouts["copy"].append(Run(runs["copy"][-1], files_written(workdir / "baseline")))
            shutil.rmtree(workdir / "baseline", ignore_errors=True)
            runs["nosync"].append(measure(step_argv("copy", workdir, "--out", str(workdir / "baseline_nosync"),
                                                    "--sync", "end"), workdir))
            shutil.rmtree(workdir / "baseline_nosync", ignore_errors=True)
            shutil.rmtree(workdir / "store", ignore_errors=True)
            runs["inspect"].append(measure([NDINGEST, "inspect", str(spec)], workdir))  # no store: scans the source
            runs["ingest"].append(measure([NDINGEST, "--debug", "ingest", str(spec), "--workers", str(args.workers)],
                                          workdir))
            runs["verify"].append(measure([NDINGEST, "verify", str(spec)], workdir))
            statuses.append(json.loads(measure([NDINGEST, "status", "--json", str(spec)], workdir).stdout))
            layouts["ingest"].append(Run(runs["ingest"][-1], files_written(workdir / "store")))
            runs["cloudvolume"].append(measure(step_argv("cloudvolume", workdir, "--out", str(workdir / "cloudvolume")),
                                               workdir))
            layouts["cloudvolume"].append(Run(runs["cloudvolume"][-1],
                                              files_written(workdir / "cloudvolume")))
            shutil.rmtree(workdir / "cloudvolume", ignore_errors=True)
            if not args.no_sharded:
                round_sharded(vol, workdir, sharded_spec, args.workers, layouts)
            if moto is not None:
                with environment(moto.env):
                    for sharded in (False, True)[:1 if args.no_sharded else 2]:
                        round_s3(moto, bucket, index, vol, workdir, args, layouts, sharded=sharded)
        floor, copy, readback, nosync, cloudvolume = (median_run(runs[k], reported=True)
                                                      for k in ("floor", "copy", "readback", "nosync", "cloudvolume"))
        inspect, ingest, verify = (median_run(runs[k], reported=False) for k in ("inspect", "ingest", "verify"))
        status = statuses[-1]
        if not args.keep:
            drop(workdir / "store")
    finally:
        if moto is not None:
            moto.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    image = status["channels"]["image"]
    if image["done"] != image["total"] or image["verified"] != image["total"]:
        sys.exit(f"ingest did not finish: {image}")
    if any(s["channels"]["image"] != image for s in statuses):
        sys.exit(f"rounds disagree: {statuses}")
    check_layouts(layouts)
    phase = sorted((write_phase(m.stderr) for m in runs["ingest"]), key=lambda p: p.span_seconds)[len(runs["ingest"]) // 2]
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    nbytes = vol.nbytes
    base = reported_seconds(copy)
    base_rb = base + reported_seconds(readback)

    def row(what: str, seconds: float, process: float | None, peak: int | None) -> str:
        process_s = f"{process:.2f}" if process is not None else "-"
        rss = f"{peak / MiB:.0f}" if peak is not None else "-"
        return (f"| {what} | {seconds:.2f} | {process_s} | {nbytes / seconds / 1e6:.0f} | {rss} | "
                f"{base / seconds:.2f} |")

    z, y, x = vol.shape_zyx
    blocks = image["total"]
    print(f"Volume: {x}x{y}x{z} {vol.dtype} = {nbytes:,} bytes ({nbytes / MiB:.0f} MiB), uncompressed HDF5 "
          f"chunked {HDF5_CHUNK_ZYX} (z, y, x); precomputed chunks {chunk.x}x{chunk.y}x{chunk.z}, raw; "
          f"ndingest blocks {block.x}x{block.y}x{block.z} ({blocks} blocks, {phase.shards} IngestBlock tasks), "
          f"--workers {args.workers}; median of {args.rounds} interleaved rounds; baseline and CloudVolume slabs {x}x{y}x{vol.slab_z}. "
          f"Source written in {reported_seconds(generate):.1f} s (not timed below).")
    print()
    print("| step | seconds | process s | MB/s | peak RSS MiB | speed vs baseline copy |")
    print("|---|---:|---:|---:|---:|---:|")
    print(row("disk floor: one plain file per chunk (open, write, close), then os.sync()", reported_seconds(floor),
              None, None))
    print(row("(the same bytes as one file, one fsync; for information)", reported_seconds(floor, "one_file"),
              None, None))
    print(row("baseline copy: h5py -> tensorstore, defaults (file_io_sync on)", base, copy.seconds,
              copy.peak_rss))
    print(row("baseline read-back compare (tensorstore vs h5py)", reported_seconds(readback),
              readback.seconds, readback.peak_rss))
    print(row("baseline copy + read-back compare", base_rb, copy.seconds + readback.seconds,
              max(copy.peak_rss, readback.peak_rss)))
    print(row("(baseline copy, file_io_sync off + one os.sync() at the end; for information)",
              reported_seconds(nosync), nosync.seconds, nosync.peak_rss))
    print(row("`ndingest inspect SPEC` (window-range scan, no store yet)", inspect.seconds,
              inspect.seconds, inspect.peak_rss))
    print(row(f"ndingest write phase (Luigi span of {phase.shards} IngestBlock tasks)", phase.span_seconds,
              None, None))
    print(row("`ndingest ingest SPEC` (whole pipeline: inspect, catalog, write, verify)", ingest.seconds,
              ingest.seconds, ingest.peak_rss))
    print(row("`ndingest verify SPEC` (re-reads every block)", verify.seconds, verify.seconds,
              verify.peak_rss))
    print(row("CloudVolume upload (parallel=1, compress=False) + one os.sync()", reported_seconds(cloudvolume),
              cloudvolume.seconds, cloudvolume.peak_rss))
    print(row("(CloudVolume upload loop alone, before its os.sync(); for information)",
              reported_seconds(cloudvolume, "loop"), None, None))
    print()
    print(f"Write phase: Luigi span {phase.span_seconds:.2f} s; sum of ndingest's per-task times "
          f"{phase.shard_seconds:.1f} s ({phase.blocks} blocks over {phase.shards} IngestBlock tasks).")
    print()
    layout_goals = print_layouts(vol, layouts, phase) if set(layouts) - {"copy", "ingest", "cloudvolume"} else []

    ingest_mib = ingest.peak_rss / MiB
    print("Goals:")
    print(goal("write phase vs baseline copy (speed ratio)", base / phase.span_seconds, 0.9))
    print(f"  (for information: vs the copy with one os.sync() at the end, "
          f"{reported_seconds(nosync) / phase.span_seconds:.3f}x)")
    print(goal("whole ingest vs baseline copy + read-back compare (speed ratio)", base_rb / ingest.seconds,
               0.75))
    cv = reported_seconds(cloudvolume)
    print(goal("whole ingest vs CloudVolume upload (speed ratio)", cv / ingest.seconds, 3))
    if cv / 3 < reported_seconds(floor):
        print(f"  (out of reach on this disk: 3x CloudVolume means the whole ingest in {cv / 3:.2f} s, but "
              f"writing its chunk files durably takes {reported_seconds(floor):.2f} s by itself, before "
              f"verify's reads of source and store)")
    print(f"  (for information, like for like: write phase vs CloudVolume upload, both durable: "
          f"{cv / phase.span_seconds:.3f}x)")
    per_process = ", largest single process" if args.workers > 1 else ""
    print(goal(f"ingest peak RSS, {nbytes / MiB:.0f} MiB volume, --workers {args.workers}{per_process} "
               f"(goal stated for 1 GiB, defaults)", ingest_mib, 400, unit=" MiB", below=True))
    for line in layout_goals:
        print(line)
    print()
    print(f"Machine: {machine()}; temp dir {Path(args.tmp or tempfile.gettempdir())}")
    if args.keep:
        print(f"Kept {workdir}")
    if own_peak >= min(m.peak_rss for m in (copy, readback, inspect, ingest, verify, cloudvolume)):
        print(f"warning: this script's own peak RSS ({own_peak / MiB:.0f} MiB) may inflate the children's",
              file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=2**30, help="volume size in bytes, e.g. 1GiB (default), "
                        "256MiB")
    parser.add_argument("--dtype", choices=sorted(ITEMSIZE), default="uint8", help="voxel type (default uint8)")
    parser.add_argument("--workers", type=int, default=1, help="ndingest ingest --workers (default 1)")
    parser.add_argument("--rounds", type=int, default=3, help="measure every step N times, interleaved; report "
                        "the median time and the largest peak RSS (default 3)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder and every output")
    parser.add_argument("--tmp", metavar="DIR", help="where to make the temporary folder (default: system temp dir)")
    parser.add_argument("--no-sharded", action="store_true", help="skip the sharded layout (local and in S3)")
    parser.add_argument("--no-s3", action="store_true", help="skip the runs into S3 (moto's server on 127.0.0.1)")
    parser.add_argument("--step", choices=("generate", "copy", "readback", "cloudvolume", "floor", "layoutcopy",
                                           "objects"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--sync", choices=("default", "end"), default="default", help=argparse.SUPPRESS)
    parser.add_argument("--sharded", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--delete", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        return run_step(args)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if not args.no_s3 and moto_server_bin() is None:
        parser.error("moto's S3 server is not installed (pip install 'moto[server]'); or pass --no-s3")
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
