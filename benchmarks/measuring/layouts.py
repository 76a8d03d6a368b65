"""ingest.py's layouts table: each layout's hand-written copy beside ndingest's write phase
and whole ingest (and CloudVolume's upload), with the files or objects each wrote and, into
S3, the requests it made; the checks that they wrote the same layout; the goals it checks."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from measuring import GiB, MiB, Measured, goal, median_run, reported_seconds
from measuring.ndlog import WritePhase, write_phase
from measuring.stores import Written
from measuring.volumes import Volume


@dataclass
class Run:
    """One run of a layouts' table row: its process, what it wrote, the S3 requests it made
    (by method; none for a local run) and, for a new ndingest run, `ingest_status`."""

    measured: Measured
    written: Written
    requests: dict[str, int] = field(default_factory=dict)
    status: dict[str, int] | None = None


def median_phase(runs: list[Run]) -> WritePhase:
    phases = sorted((write_phase(r.measured.stderr) for r in runs), key=lambda p: p.span_seconds)
    return phases[len(phases) // 2]


def median_requests(runs: list[Run]) -> dict[str, int]:
    return sorted((r.requests for r in runs), key=lambda q: sum(q.values()))[len(runs) // 2]


def check_layouts(runs: dict[str, list[Run]]) -> None:
    """Every ndingest run finished, wrote what its hand-written copy wrote (layout and
    number of voxel files), and every round wrote the same; else the figures compare
    unlike things and the benchmark stops."""
    pairs = [("copy", "ingest"), ("sharded_copy", "sharded_ingest"), ("sharded_copy", "sharded_cloudvolume"),
             ("s3_copy", "s3_ingest"), ("s3_sharded_copy", "s3_sharded_ingest")]
    for key, rs in runs.items():
        if len({(r.written.voxels, json.dumps(r.written.layout, sort_keys=True)) for r in rs}) > 1:
            sys.exit(f"{key}: rounds wrote different things: {[r.written for r in rs]}")
        for r in rs:
            if r.status is not None and not r.status["done"] == r.status["verified"] == r.status["total"] > 0:
                sys.exit(f"{key}: ingest did not finish: {r.status}")
    for copy, other in pairs:
        if runs.get(copy) and runs.get(other):
            a, b = runs[copy][-1].written, runs[other][-1].written
            if a.layout != b.layout or a.voxels != b.voxels:
                sys.exit(f"{other} wrote another layout than {copy}: {b.voxels} voxel files, {b.layout}; "
                         f"{a.voxels}, {a.layout}")


def print_layouts(vol: Volume, layouts: dict[str, list[Run]], phase: WritePhase) -> list[str]:
    """Print the layouts' table (each layout's ndingest rows beside its hand-written copy)
    and its notes; return the goal lines it checks."""
    nbytes = vol.nbytes

    def per_gib(n: int) -> str:
        return f"{n:,} ({n * GiB / nbytes:,.0f})"

    def row(what: str, seconds: float, process: float | None, peak: int | None, versus: float,
            runs: list[Run] | None) -> str:
        process_s = f"{process:.2f}" if process is not None else "-"
        rss = f"{peak / MiB:.0f}" if peak is not None else "-"
        files = "- | -"
        if runs:
            w = runs[-1].written  # every round wrote the same (check_layouts)
            files = f"{per_gib(w.voxels)} | {per_gib(w.markers + w.reports)}"
        requests = "- | -"
        if runs and runs[-1].requests:
            q = median_requests(runs)
            total = sum(q.values())
            requests = (f"{total:,} ({q['PUT']:,} / {q['GET']:,} / {q['HEAD']:,} / {q['POST'] + q['DELETE']:,}) | "
                        f"{total * GiB / nbytes:,.0f}")
        return (f"| {what} | {seconds:.2f} | {process_s} | {nbytes / seconds / 1e6:.0f} | {rss} | "
                f"{versus / seconds:.2f} | {files} | {requests} |")

    def section(label: str, name: str, copy_what: str, phase: WritePhase | None = None) -> tuple[float, WritePhase]:
        """The rows of one layout: its hand-written copy, ndingest's write phase and whole ingest."""
        copies, ingests = layouts[f"{name}_copy" if name else "copy"], layouts[f"{name}_ingest" if name else "ingest"]
        copy = median_run([r.measured for r in copies], reported=True)
        ingest = median_run([r.measured for r in ingests], reported=False)
        phase = phase or median_phase(ingests)
        seconds = reported_seconds(copy)
        print(row(f"{label}: {copy_what}", seconds, copy.seconds, copy.peak_rss, seconds, copies))
        print(row(f"{label}: ndingest write phase (Luigi span of {phase.shards} IngestBlock tasks)", phase.span_seconds,
                  None, None, seconds, None))
        print(row(f"{label}: `ndingest ingest SPEC` (whole pipeline: inspect, catalog, write, verify)", ingest.seconds,
                  ingest.seconds, ingest.peak_rss, seconds, ingests))
        return seconds, phase

    def cloudvolume_row(label: str, name: str, versus: float) -> None:
        cv = median_run([r.measured for r in layouts[name]], reported=True)
        print(row(label, reported_seconds(cv), cv.seconds, cv.peak_rss, versus, layouts[name]))

    print("| layout: step | seconds | process s | MB/s | peak RSS MiB | speed vs the layout's hand-written copy | "
          "voxel files or objects (per GiB) | marker + report files or objects (per GiB) | "
          "requests: all (PUT / GET / HEAD / POST + DELETE) | requests per GiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    goals, phases = [], {"unsharded, local": phase}
    base, _ = section("unsharded, local", "",
                      "baseline copy (as above): h5py -> tensorstore, defaults (file_io_sync on)", phase)
    cloudvolume_row("unsharded, local: CloudVolume upload (as above; parallel=1, compress=False) + one os.sync()",
                    "cloudvolume", base)
    if "sharded_copy" in layouts:
        copy, phases["sharded, local"] = section(
            "sharded, local", "sharded",
            "hand-written copy: h5py -> tensorstore, one transaction per shard file, defaults (file_io_sync on)")
        cloudvolume_row("sharded, local: CloudVolume upload, one `cv[...] = ` per shard file (parallel=1, "
                        "compress=False) + one os.sync()", "sharded_cloudvolume", copy)
        span = phases["sharded, local"].span_seconds
        goals.append(goal("sharded write phase vs hand-written sharded copy, local disk (speed ratio)",
                          copy / span, 0.9))
        goals.append(goal("sharded vs unsharded write phase, local disk (unsharded seconds / sharded seconds)",
                          phase.span_seconds / span, 1.0))
    for label, name, how in (("S3, one object per chunk", "s3", "whole slabs"),
                             ("S3, sharded", "s3_sharded", "one transaction per shard file")):
        if f"{name}_copy" in layouts:
            copy, phases[label] = section(label, name, f"hand-written copy: h5py -> tensorstore's s3 kvstore, {how}")
            goals.append(goal(f"{label}: write phase vs hand-written S3 copy (speed ratio)",
                              copy / phases[label].span_seconds, 0.8))
    print()
    sx, sy, sz = vol.shard_xyz
    print(f"Voxel files or objects: chunk or shard files in the scale's folder; markers + reports: ndingest's "
          f"`_markers/` and `_reports/` (info files and catalogs not counted); (per GiB): the count x 2^30 / "
          f"{nbytes:,} volume bytes. Sharded: {vol.shard_files} shard files of up to {sx}x{sy}x{sz} voxels "
          f"(ndingest's sharded blocks are these cuboids). Requests: the lines moto logged while the process "
          f"ran, median over rounds: ndingest's are the whole ingest (markers, reports and verify's reads "
          f"included), the copies' include their info and their one-column read-back check.")
    for label, p in phases.items():
        print(f"Write phase, {label}: Luigi span {p.span_seconds:.2f} s; sum of ndingest's per-task times "
              f"{p.shard_seconds:.1f} s ({p.blocks} blocks over {p.shards} IngestBlock tasks).")
    print()
    return goals
