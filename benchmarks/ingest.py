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
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from measuring import Measured, bench_spec, machine
from measuring import measure as measure_once
from ndingest.blocks import Vec3, chunk_grid, chunk_shape, shard_cuboid, sharding_spec  # pure: no numpy, no I/O
from ndingest.spec import DEFAULT_BLOCK_CHUNKS

if TYPE_CHECKING:  # the parent never imports tensorstore
    import tensorstore

BIN = Path(sys.executable).parent
NDINGEST = str(BIN / "ndingest")
PYTHON = str(BIN / "python")
ITEMSIZE = {"uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "float32": 4}
RESOLUTION = (32.0, 32.0, 40.0)  # the tutorial's scale 3: zslices chunks are 128x128x16
HDF5_CHUNK_ZYX = (16, 128, 128)
HDF5_DATASET = "image/CUTOUT"
MiB = 2**20
GiB = 2**30
UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}



# --- the volume -----------------------------------------------------------------------

@dataclass(frozen=True)
class Volume:
    """What every step works on: the source, its shape, and the precomputed layout."""

    shape_zyx: tuple[int, int, int]
    dtype: str
    chunk_xyz: tuple[int, int, int]
    slab_z: int  # z depth of one read/write slab: one block deep, whole chunks
    source: str

    @property
    def nbytes(self) -> int:
        z, y, x = self.shape_zyx
        return x * y * z * ITEMSIZE[self.dtype]

    def slabs(self, depth: int | None = None) -> list[tuple[int, int]]:
        """(z0, z1) of each slab, `depth` (default `slab_z`) deep, the last one cut by the volume."""
        z, depth = self.shape_zyx[0], depth or self.slab_z
        return [(z0, min(z, z0 + depth)) for z0 in range(0, z, depth)]

    @property
    def shard_xyz(self) -> tuple[int, int, int]:
        """Voxels per axis of one shard file's cuboid of chunks (ndingest's sharded block),
        before the volume's far edges cut it."""
        z, y, x = self.shape_zyx
        chunk = Vec3(*self.chunk_xyz)
        return tuple(shard_cuboid(chunk_grid(Vec3(x, y, z), chunk)) * chunk)

    def shards_xy(self) -> list[tuple[int, int, int, int]]:
        """(x0, x1, y0, y1) of each shard cuboid of a slab, x fastest, cut by the volume."""
        _, y, x = self.shape_zyx
        sx, sy, _ = self.shard_xyz
        return [(x0, min(x, x0 + sx), y0, min(y, y0 + sy)) for y0 in range(0, y, sy) for x0 in range(0, x, sx)]

    @property
    def shard_files(self) -> int:
        """Shard files of the sharded layout: one per cuboid."""
        return len(self.shards_xy()) * len(self.slabs(self.shard_xyz[2]))

    @property
    def scale_key(self) -> str:
        return "_".join(f"{r:g}" for r in RESOLUTION)

    def middle_column(self) -> tuple[int, int, int, int]:
        """(x0, x1, y0, y1) of one chunk column in the middle: what the untimed checks read back."""
        _, y, x = self.shape_zyx
        cx, cy, _ = self.chunk_xyz
        x0, y0 = (x // 2) // cx * cx, (y // 2) // cy * cy
        return x0, min(x, x0 + cx), y0, min(y, y0 + cy)

    def info(self, *, sharded: bool = False) -> dict:
        """The precomputed `info` ndingest writes for this volume (one image scale, raw);
        `sharded`: with `[store] sharding = true`'s `sharding` (ndingest.blocks.sharding_spec)."""
        z, y, x = self.shape_zyx
        scale = {"key": self.scale_key, "resolution": list(RESOLUTION), "voxel_offset": [0, 0, 0],
                 "size": [x, y, z], "chunk_sizes": [list(self.chunk_xyz)], "encoding": "raw"}
        if sharded:
            scale["sharding"] = sharding_spec(chunk_grid(Vec3(x, y, z), Vec3(*self.chunk_xyz)))
        return {
            "@type": "neuroglancer_multiscale_volume", "type": "image", "data_type": self.dtype,
            "num_channels": 1, "scales": [scale],
        }

    @classmethod
    def load(cls, workdir: Path) -> "Volume":
        raw = json.loads((workdir / "volume.json").read_text())
        return cls(tuple(raw["shape_zyx"]), raw["dtype"], tuple(raw["chunk_xyz"]), raw["slab_z"], raw["source"])

    def save(self, workdir: Path) -> None:
        (workdir / "volume.json").write_text(json.dumps(asdict(self)))


def parse_size(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).lower() not in UNITS:
        raise argparse.ArgumentTypeError(f"{text!r}: a size such as 1GiB, 256MiB or 500MB")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def volume_shape(nbytes: int, itemsize: int) -> tuple[int, int, int]:
    """(z, y, x): x = y a power of two (1024 unless the volume is small or huge), z the rest."""
    voxels = max(1, nbytes // itemsize)
    side = 1024
    while side > 128 and side * side * 16 > voxels:
        side //= 2
    while (2 * side) ** 3 <= voxels:
        side *= 2
    return (max(1, voxels // (side * side)), side, side)


# --- what a run left: files in a folder, or objects under a bucket prefix ----------------------

LAYOUT_KEYS = ("voxel_offset", "size", "chunk_sizes", "encoding", "sharding")
VOXEL_FILE = re.compile(r"\d+-\d+_\d+-\d+_\d+-\d+|[0-9a-f]+\.shard")  # a chunk key, or a shard file


@dataclass(frozen=True)
class Written:
    """What one run wrote, by kind: voxel files (chunk or shard files, told by name: the
    scale's folder is `32_32_40` for ndingest, `32.0_32.0_40.0` for CloudVolume), ndingest's
    markers (`_markers/`: per-block markers, manifest, lock, inspect) and reports
    (`_reports/`), and the rest (info, catalog)."""

    voxels: int
    markers: int
    reports: int
    other: int
    layout: dict | None  # the info's data type and scale 0's LAYOUT_KEYS; None: no info found


def kind_of(parts: tuple[str, ...]) -> str:
    """The kind of a file, from its path below the store (or copy) folder."""
    if parts[0] == "_markers":
        return "markers"
    if parts[0] == "_reports":
        return "reports"
    return "voxels" if len(parts) >= 2 and VOXEL_FILE.fullmatch(parts[-1]) else "other"


def layout_of(info: dict) -> dict:
    """What two writers of "the same layout" must agree on."""
    scale = info["scales"][0]
    return {"data_type": info["data_type"], **{k: scale.get(k) for k in LAYOUT_KEYS}}


def written_from(paths: list[tuple[str, ...]], layout: dict | None) -> Written:
    kinds = [kind_of(parts) for parts in paths]
    return Written(*(kinds.count(k) for k in ("voxels", "markers", "reports", "other")), layout)


def files_written(folder: Path) -> Written:
    """The files under a local folder, by kind, and the layout its `info` gives."""
    paths = [Path(root, name).relative_to(folder).parts for root, _, names in os.walk(folder) for name in names]
    infos = [folder.joinpath(*parts) for parts in paths if parts[-1] == "info" and kind_of(parts) == "other"]
    return written_from(paths, layout_of(json.loads(infos[0].read_text())) if infos else None)


# --- the steps, each run as `python benchmarks/ingest.py --step NAME --workdir DIR` ----------

def _seconds_out(seconds: float, **more: float) -> None:
    """What a step reports to the parent: its timed part (and any `more`), as the last line of stdout."""
    print(json.dumps({"seconds": seconds, **more}))


def step_generate(vol: Volume, workdir: Path) -> None:
    """Write the source slab by slab: noise over half the range plus a smooth gradient."""
    import h5py
    import numpy as np

    z, y, x = vol.shape_zyx
    dtype = np.dtype(vol.dtype)
    rng = np.random.default_rng(0)
    if dtype.kind == "f":
        half = 0.5
    else:
        half = (int(np.iinfo(dtype).max) + 1) // 2
    yy, xx = np.mgrid[0:y, 0:x]
    gradient_xy = ((xx + yy) / max(1, x + y - 2) * (half / 2)).astype(dtype)  # [0, half/2]
    chunks = tuple(min(c, s) for c, s in zip(HDF5_CHUNK_ZYX, vol.shape_zyx))
    started = time.perf_counter()
    with h5py.File(workdir / vol.source, "w") as f:
        ds = f.create_dataset(HDF5_DATASET, shape=vol.shape_zyx, dtype=dtype, chunks=chunks)
        for z0, z1 in vol.slabs():
            if dtype.kind == "f":
                slab = rng.random((z1 - z0, y, x), dtype=dtype) * dtype.type(half)
            else:
                slab = rng.integers(0, half, size=(z1 - z0, y, x), dtype=dtype)
            for i, zi in enumerate(range(z0, z1)):
                slab[i] += gradient_xy
                slab[i] += dtype.type(zi / max(1, z - 1) * (half / 2) * 0.999)  # below max: no wrap
            ds[z0:z1] = slab
    _seconds_out(time.perf_counter() - started)


def _open_precomputed(out: Path, context: dict | None, *, create_info: dict | None) -> tensorstore.TensorStore:
    import tensorstore as ts

    if create_info is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "info").write_text(json.dumps(create_info, indent=1))
    spec: dict = {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": f"{out}/"},
                  "scale_index": 0, "open": True}
    if context is not None:
        spec["context"] = context
    return ts.open(spec).result()


def step_copy(vol: Volume, workdir: Path, out: Path, fsync_each_file: bool) -> None:
    """h5py -> tensorstore, one slab (whole chunks) at a time. With `fsync_each_file`,
    tensorstore's default context (it fsyncs every chunk file); else `file_io_sync` off
    and one os.sync() at the end, so the copy is as durable either way."""
    import h5py

    started = time.perf_counter()
    context = None if fsync_each_file else {"file_io_sync": False}
    store = _open_precomputed(out, context, create_info=vol.info())
    with h5py.File(workdir / vol.source, "r") as f:
        ds = f[HDF5_DATASET]
        for z0, z1 in vol.slabs():
            slab = ds[z0:z1]  # (z, y, x) C order
            store[:, :, z0:z1, 0].write(slab.T).result()  # precomputed is x, y, z: a view
    if not fsync_each_file:
        os.sync()
    _seconds_out(time.perf_counter() - started)


def step_readback(vol: Volume, workdir: Path, out: Path) -> None:
    """Read the copy back slab by slab (F order, transposed views) and compare with the HDF5."""
    import h5py
    import numpy as np

    started = time.perf_counter()
    store = _open_precomputed(out, None, create_info=None)
    with h5py.File(workdir / vol.source, "r") as f:
        ds = f[HDF5_DATASET]
        for z0, z1 in vol.slabs():
            stored = store[:, :, z0:z1, 0].read(order="F").result().T
            if not np.array_equal(stored, ds[z0:z1]):
                sys.exit(f"baseline read-back: z {z0}-{z1} differs from the source")
    _seconds_out(time.perf_counter() - started)


def step_cloudvolume(vol: Volume, workdir: Path, out: Path, *, sharded: bool = False) -> None:
    """CloudVolume uploads the same slabs (parallel=1: DESIGN.md's pitfall; raw, uncompressed).
    `sharded`: into the sharded layout, one cuboid-deep slab at a time and one `cv[...] = `
    per shard cuboid, which CloudVolume writes as one shard file (`ImageSource._upload_shard`)."""
    import h5py
    import numpy as np
    from cloudvolume import CloudVolume

    z, y, x = vol.shape_zyx
    started = time.perf_counter()
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="image", data_type=vol.dtype, encoding="raw", resolution=list(RESOLUTION),
        voxel_offset=[0, 0, 0], chunk_size=list(vol.chunk_xyz), volume_size=[x, y, z])
    if sharded:
        info["scales"][0]["sharding"] = vol.info(sharded=True)["scales"][0]["sharding"]
    cv = CloudVolume(f"file://{out}", info=info, parallel=1, compress=False, progress=False)
    cv.commit_info()
    with h5py.File(workdir / vol.source, "r") as f:
        ds = f[HDF5_DATASET]
        if not sharded:
            for z0, z1 in vol.slabs():
                cv[:, :, z0:z1] = ds[z0:z1].T
        else:
            for z0, z1 in vol.slabs(vol.shard_xyz[2]):
                slab = ds[z0:z1]
                for x0, x1, y0, y1 in vol.shards_xy():
                    cv[x0:x1, y0:y1, z0:z1] = slab[:, y0:y1, x0:x1].T
        loop = time.perf_counter() - started
        os.sync()  # as durable as ndingest's write phase and the baseline copies
        seconds = time.perf_counter() - started
        # a cheap check, not timed: one chunk column in the middle reads back equal
        x0, x1, y0, y1 = vol.middle_column()
        back = CloudVolume(f"file://{out}", parallel=1, progress=False)[x0:x1, y0:y1, 0:z][..., 0]
        if not np.array_equal(np.asarray(back).T, ds[:, y0:y1, x0:x1]):
            sys.exit("CloudVolume upload: read-back differs from the source")
    _seconds_out(seconds, loop=loop)


def _open_layout(vol: Volume, out: str, *, sharded: bool) -> tensorstore.TensorStore:
    """A fresh precomputed volume at `out` (a folder, or s3://bucket/prefix through
    tensorstore's s3 kvstore as ndingest's `kvpath.Bucket` specifies it), with ndingest's
    `info`; tensorstore's default context."""
    import tensorstore as ts
    from ndingest.kvpath import KvPath
    from ndingest.urls import is_url

    info = vol.info(sharded=sharded)
    if not is_url(out):
        return _open_precomputed(Path(out), None, create_info=info)
    folder = KvPath.from_url(out)
    kvstore = folder.bucket.kvstore_spec(folder.key + "/")
    ts.KvStore.open(kvstore).result().write("info", json.dumps(info, indent=1).encode()).result()
    return ts.open({"driver": "neuroglancer_precomputed", "kvstore": kvstore, "scale_index": 0,
                    "open": True}).result()


def step_layout_copy(vol: Volume, workdir: Path, out: str, *, sharded: bool) -> None:
    """The baseline copy into a layout or a place of its own: `out` a folder or
    s3://bucket/prefix; unsharded, whole slabs as `step_copy` writes them (one file or
    object per chunk); `sharded`, one cuboid-deep slab at a time, each shard cuboid of it
    staged in its own transaction and the slab's commits awaited together, so each shard
    file is written once, whole, and tensorstore writes a slab's files side by side, as it
    does a slab's chunk files unsharded. One chunk column is read back and compared, untimed."""
    import h5py
    import numpy as np
    import tensorstore as ts

    started = time.perf_counter()
    store = _open_layout(vol, out, sharded=sharded)
    with h5py.File(workdir / vol.source, "r") as f:
        ds = f[HDF5_DATASET]
        if not sharded:
            for z0, z1 in vol.slabs():
                store[:, :, z0:z1, 0].write(ds[z0:z1].T).result()
        else:
            for z0, z1 in vol.slabs(vol.shard_xyz[2]):
                slab = ds[z0:z1]
                commits = []
                for x0, x1, y0, y1 in vol.shards_xy():
                    txn = ts.Transaction()
                    store.with_transaction(txn)[x0:x1, y0:y1, z0:z1, 0].write(slab[:, y0:y1, x0:x1].T).result()
                    commits.append(txn.commit_async())
                for commit in commits:
                    commit.result()
        seconds = time.perf_counter() - started
        x0, x1, y0, y1 = vol.middle_column()
        back = store[x0:x1, y0:y1, :, 0].read(order="F").result().T
        if not np.array_equal(back, ds[:, y0:y1, x0:x1]):
            sys.exit(f"hand-written copy into {out}: read-back differs from the source")
    _seconds_out(seconds)


def _s3_client():
    import boto3

    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"],
                        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])


def step_objects(urls: str, *, delete: bool) -> None:
    """Count, with boto3, the objects under each s3://bucket/prefix of comma-separated `urls`
    by kind (`Written`), read the layout from the `info` among them, and with `delete` remove
    them all (moto keeps objects in memory or its spool folder: a GiB a run)."""
    client = _s3_client()
    found = []
    for url in urls.split(","):
        bucket, prefix = url.removeprefix("s3://").split("/", 1)
        keys, token = [], None
        while True:
            page = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/",
                                          **({"ContinuationToken": token} if token else {}))
            keys += [o["Key"] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                break
            token = page["NextContinuationToken"]
        relative = [tuple(k[len(prefix) + 1:].split("/")) for k in keys]
        infos = [k for k, parts in zip(keys, relative) if kind_of(parts) == "other" and parts[-1] == "info"]
        layout = layout_of(json.loads(client.get_object(Bucket=bucket, Key=infos[0])["Body"].read())) if infos else None
        found.append(asdict(written_from(relative, layout)))
        if delete:
            for start in range(0, len(keys), 1000):
                client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]],
                                                             "Quiet": True})
    print(json.dumps(found))


def step_floor(vol: Volume, workdir: Path) -> None:
    """The disk's own limit for this layout: as many files as the volume has chunks, each
    of a chunk's size, written plainly (open, write, close) into one folder, then os.sync().
    No ingest into this folder that keeps one file per chunk can make its data durable
    faster; the disk's speed for one big file is printed beside it for comparison."""
    z, y, x = vol.shape_zyx
    cx, cy, cz = vol.chunk_xyz
    chunk_bytes = cx * cy * cz * ITEMSIZE[vol.dtype]
    data = os.urandom(chunk_bytes)
    folder = workdir / "floor"
    folder.mkdir()
    started = time.perf_counter()
    for z0 in range(0, z, cz):
        for y0 in range(0, y, cy):
            for x0 in range(0, x, cx):
                (folder / f"{x0}-{x0 + cx}_{y0}-{y0 + cy}_{z0}-{z0 + cz}").write_bytes(data)
    os.sync()
    files = time.perf_counter() - started
    shutil.rmtree(folder)
    os.sync()
    started = time.perf_counter()
    with open(workdir / "floor.bin", "wb", buffering=0) as f:
        for _ in range(vol.nbytes // chunk_bytes):
            f.write(data)
        os.fsync(f.fileno())
    one_file = time.perf_counter() - started
    (workdir / "floor.bin").unlink()
    _seconds_out(files, one_file=one_file)


def run_step(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    vol = Volume.load(workdir)
    out = Path(args.out) if args.out else workdir
    if args.step == "generate":
        step_generate(vol, workdir)
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

def measure(argv: list[str], cwd: Path) -> Measured:
    """Each step starts with the disk flushed: the previous step's writeback is not its cost."""
    return measure_once(argv, cwd, sync_first=True)


def reported_seconds(m: Measured, key: str = "seconds") -> float:
    """The timed part a step printed as its last stdout line."""
    return float(json.loads(m.stdout.strip().splitlines()[-1])[key])


def median_run(runs: list[Measured], *, reported: bool) -> Measured:
    """The run with the median time (timed part or whole process), with the largest peak RSS of all."""
    ordered = sorted(runs, key=lambda m: reported_seconds(m) if reported else m.seconds)
    middle = ordered[len(ordered) // 2]
    return Measured(middle.seconds, max(m.peak_rss for m in runs), middle.stdout, middle.stderr)


def step_argv(step: str, workdir: Path, *extra: str) -> list[str]:
    return [PYTHON, str(Path(__file__).resolve()), "--step", step, "--workdir", str(workdir), *extra]


LOG_TIME = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) "
LUIGI_TASK = re.compile(LOG_TIME + r"luigi-interface \w+: .*\b(running|done)\s+IngestBlock\(", re.M)
SHARD_LINE = re.compile(LOG_TIME + r"ndingest\.tasks INFO: IngestBlock_\S+: wrote (\d+) blocks "
                        r"\((\d+) already marked\), ([0-9.]+) MB in ([0-9.]+) s$", re.M)


@dataclass
class WritePhase:
    span_seconds: float  # Luigi's first `running IngestBlock` to its last `done IngestBlock`
    shard_seconds: float  # the sum of ndingest's per-shard `in S s` (0.1 s resolution each)
    shards: int
    blocks: int


def write_phase(log: str) -> WritePhase:
    def at(stamp: str) -> float:
        return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()

    events = [(at(stamp), what) for stamp, what in LUIGI_TASK.findall(log)]
    shards = SHARD_LINE.findall(log)
    starts = [t for t, what in events if what == "running"]
    ends = [t for t, what in events if what == "done"]
    if not starts or not ends or not shards:
        sys.exit("could not find the IngestBlock lines in the ingest's --debug log; has its format changed?")
    return WritePhase(max(ends) - min(starts), sum(float(s[4]) for s in shards), len(shards),
                      sum(int(s[1]) for s in shards))


# --- S3: moto's server, started by the benchmark ------------------------------------------

HOST = "127.0.0.1"
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours the line of every status but 200
REQUEST = re.compile(r'"(GET|PUT|POST|DELETE|HEAD) ')
METHODS = ("PUT", "GET", "HEAD", "POST", "DELETE")


def moto_server_bin() -> str | None:
    found = BIN / "moto_server"
    return str(found) if found.exists() else shutil.which("moto_server")


@dataclass
class Moto:
    """moto's S3 server on 127.0.0.1 (as tests/s3.py starts it). werkzeug logs one line per
    request to its stderr, kept in `log`; a run's requests are the lines logged meanwhile."""

    proc: subprocess.Popen
    port: int
    log: Path

    @classmethod
    def launch(cls, workdir: Path) -> "Moto":
        """Start it; it takes a few seconds to listen (`wait_ready`), meanwhile the local steps run."""
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        spool = workdir / "moto-tmp"  # where moto spills objects over 5 MiB (shard files): removed with workdir
        spool.mkdir()
        log = workdir / "moto.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([moto_server_bin(), "-H", HOST, "-p", str(port)], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, "TMPDIR": str(spool)})
        return cls(proc, port, log)

    def create_bucket(self, bucket: str, timeout: float = 30.0) -> None:
        """Make `bucket` once moto answers: a plain, unsigned `PUT /bucket` (moto checks no
        signature), so the parent needs no boto3 and no child to wait for it."""
        request = (f"PUT /{bucket} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
                   f"Content-Length: 0\r\nConnection: close\r\n\r\n")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((HOST, self.port), timeout=5) as conn:
                    conn.sendall(request.encode())
                    answer = conn.recv(4096).decode(errors="replace")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"moto_server did not start:\n{self.log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.1)
        if not answer.startswith("HTTP/1.1 200"):
            sys.exit(f"moto_server: cannot make bucket {bucket}: {answer[:500]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def env(self) -> dict[str, str]:
        """What the children need to reach it (tensorstore's s3 kvstore, boto3)."""
        return {"AWS_ENDPOINT_URL": f"http://{HOST}:{self.port}", "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}

    def log_size(self) -> int:
        """The log's length once it stops growing (moto logs a request as it answers it)."""
        size = self.log.stat().st_size
        while True:
            time.sleep(0.05)
            now = self.log.stat().st_size
            if now == size:
                return size
            size = now

    def requests_since(self, offset: int) -> dict[str, int]:
        """Request lines logged after `offset`, by method."""
        end = self.log_size()
        with open(self.log, "rb") as f:
            f.seek(offset)
            text = ANSI.sub("", f.read(end - offset).decode(errors="replace"))
        found = REQUEST.findall(text)
        return {m: found.count(m) for m in METHODS}


@contextmanager
def environment(values: dict[str, str]):
    """`values` in os.environ, so the children started meanwhile inherit them; then as before."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --- the layouts' rows: local sharded, S3 unsharded and sharded ----------------------------

@dataclass
class Run:
    """One run of a layouts' table row: its process, what it wrote, the S3 requests it made
    (by method; none for a local run) and, for a new ndingest run, `ingest_status`."""

    measured: Measured
    written: Written
    requests: dict[str, int] = field(default_factory=dict)
    status: dict[str, int] | None = None


def ingest_argv(spec: Path, workers: int) -> list[str]:
    return [NDINGEST, "--debug", "ingest", str(spec), "--workers", str(workers)]


INGEST_SAYS = re.compile(r"^image: (\d+)/(\d+) blocks written, (\d+)/(\d+) verified", re.M)


def ingest_status(m: Measured) -> dict[str, int]:
    """The image channel's blocks done, verified and in total, as `ndingest ingest` prints them
    at its end (`steps.channel_status`, what `ndingest status` prints; no process more to run)."""
    found = INGEST_SAYS.search(m.stdout)
    if not found:
        sys.exit(f"could not find `image: D/T blocks written, V/T verified` in ndingest ingest's output; "
                 f"has its format changed?\n{m.stdout[-2000:]}")
    done, total, verified, _ = (int(g) for g in found.groups())
    return {"done": done, "verified": verified, "total": total}


def measure_requests(moto: Moto, argv: list[str], cwd: Path) -> tuple[Measured, dict[str, int]]:
    start = moto.log_size()
    measured = measure(argv, cwd)
    return measured, moto.requests_since(start)


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


def goal(name: str, value: float, target: float, unit: str = "x", below: bool = False) -> str:
    ok = value < target if below else value >= target
    sign = "<" if below else ">="
    shown = f"{value:.0f}" if unit == " MiB" else f"{value:.3f}"
    return f"- {name}: {shown}{unit} (goal {sign} {target:g}{unit}): {'PASS' if ok else 'MISS'}"


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
