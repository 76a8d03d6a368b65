"""ingest.py's anchors, each run as a step of its own (`ingest.py --step NAME`): the
hand-written h5py -> tensorstore copy (step 1) and its read-back compare (2), the copy into
a layout of its own (sharded, or into S3; 9, 10), CloudVolume's upload (7) and the disk
floor (8). Each prints its timed part with `seconds_out`."""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from measuring import seconds_out
from measuring.stores import open_layout, open_precomputed
from measuring.volumes import HDF5_DATASET, ITEMSIZE, RESOLUTION, Volume


def step_copy(vol: Volume, workdir: Path, out: Path, fsync_each_file: bool) -> None:
    """h5py -> tensorstore, one slab (whole chunks) at a time. With `fsync_each_file`,
    tensorstore's default context (it fsyncs every chunk file); else `file_io_sync` off
    and one os.sync() at the end, so the copy is as durable either way."""
    import h5py

    started = time.perf_counter()
    context = None if fsync_each_file else {"file_io_sync": False}
    store = open_precomputed(out, context, create_info=vol.info())
    with h5py.File(workdir / vol.source, "r") as f:
        ds = f[HDF5_DATASET]
        for z0, z1 in vol.slabs():
            slab = ds[z0:z1]  # (z, y, x) C order
            store[:, :, z0:z1, 0].write(slab.T).result()  # precomputed is x, y, z: a view
    if not fsync_each_file:
        os.sync()
    seconds_out(time.perf_counter() - started)


def step_readback(vol: Volume, workdir: Path, out: Path) -> None:
    """Read the copy back slab by slab (F order, transposed views) and compare with the HDF5."""
    import h5py
    import numpy as np

    started = time.perf_counter()
    store = open_precomputed(out, None, create_info=None)
    with h5py.File(workdir / vol.source, "r") as f:
        ds = f[HDF5_DATASET]
        for z0, z1 in vol.slabs():
            stored = store[:, :, z0:z1, 0].read(order="F").result().T
            if not np.array_equal(stored, ds[z0:z1]):
                sys.exit(f"baseline read-back: z {z0}-{z1} differs from the source")
    seconds_out(time.perf_counter() - started)


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
    seconds_out(seconds, loop=loop)


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
    store = open_layout(vol, out, sharded=sharded)
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
    seconds_out(seconds)


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
    seconds_out(files, one_file=one_file)
