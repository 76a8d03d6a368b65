"""The benchmarks' deterministic sources, as uncompressed HDF5 (z, y, x), made slab by slab
and never timed: ingest.py's `Volume` (its shape, layout and precomputed `info`) and
`generate`; serve.py's `generate_uint8`; pyramid.py's `wide_shape` and `generate_kind`.
Importing this module costs no numpy (ndingest.blocks is pure)."""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from measuring import seconds_out
from ndingest.blocks import Vec3, chunk_grid, shard_cuboid, sharding_spec  # pure: no numpy, no I/O

ITEMSIZE = {"uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "float32": 4}
RESOLUTION = (32.0, 32.0, 40.0)  # the tutorial's scale 3: zslices chunks are 128x128x16
HDF5_CHUNK_ZYX = (16, 128, 128)
HDF5_DATASET = "image/CUTOUT"


# --- ingest.py's volume --------------------------------------------------------------------

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


def volume_shape(nbytes: int, itemsize: int) -> tuple[int, int, int]:
    """(z, y, x): x = y a power of two (1024 unless the volume is small or huge), z the rest."""
    voxels = max(1, nbytes // itemsize)
    side = 1024
    while side > 128 and side * side * 16 > voxels:
        side //= 2
    while (2 * side) ** 3 <= voxels:
        side *= 2
    return (max(1, voxels // (side * side)), side, side)


def generate(vol: Volume, workdir: Path) -> None:
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
    seconds_out(time.perf_counter() - started)


# --- serve.py's and pyramid.py's ------------------------------------------------------------

def generate_uint8(path: Path, shape_zyx: tuple[int, int, int]) -> None:
    """Noise over half the range plus a smooth gradient (as `generate`), slab by slab."""
    import h5py
    import numpy as np

    z, y, x = shape_zyx
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:y, 0:x]
    gradient = ((xx + yy) * 64 // (x + y)).astype(np.uint8)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("image/CUTOUT", shape=shape_zyx, dtype="uint8", chunks=(min(16, z), 128, 128))
        for z0 in range(0, z, 16):
            z1 = min(z, z0 + 16)
            slab = rng.integers(0, 128, size=(z1 - z0, y, x), dtype=np.uint8) + gradient
            slab += (np.arange(z0, z1) * 60 // max(1, z)).astype(np.uint8)[:, None, None]
            ds[z0:z1] = slab


def read_source(path: Path):
    import h5py

    with h5py.File(path, "r") as f:
        return f["image/CUTOUT"][...]


def wide_shape(nbytes: int, itemsize: int) -> tuple[int, int, int]:
    """(z, y, x): x 1024, y 2048 (halved together while z would be below 16), z the rest."""
    voxels = max(1, nbytes // itemsize)
    x, y = 1024, 2048
    while x > 64 and voxels // (x * y) < 16:
        x, y = x // 2, y // 2
    return (max(1, voxels // (x * y)), y, x)


def generate_kind(kind: str, dtype: str, dataset: str, shape: tuple[int, int, int], path: Path) -> None:
    """pyramid.py's sources: `kind` "image", uint8 noise plus a gradient (as `generate_uint8`);
    else labels: blobs of 16x16x4 voxels, a quarter zero, ids from a few thousand, speckled."""
    import h5py
    import numpy as np

    z, y, x = shape
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        ds = f.create_dataset(dataset, shape=shape, dtype=dtype, chunks=(min(16, z), min(128, y), min(128, x)))
        for z0 in range(0, z, 16):
            z1 = min(z, z0 + 16)
            if kind == "image":
                yy, xx = np.mgrid[0:y, 0:x]
                slab = rng.integers(0, 128, size=(z1 - z0, y, x), dtype=np.uint8)
                slab += ((xx + yy) * 64 // (x + y)).astype(np.uint8) + np.uint8(z0 * 60 // max(1, z))
            else:  # blobs of 16x16x4 voxels, a quarter zero, ids from a few thousand
                cells = rng.integers(1, 4000, size=(-(-(z1 - z0) // 4), -(-y // 16), -(-x // 16)), dtype=np.uint32)
                cells[rng.random(cells.shape) < 0.25] = 0
                slab = cells.repeat(4, 0).repeat(16, 1).repeat(16, 2)[: z1 - z0, :y, :x]
                speckle = rng.random(slab.shape) < 0.05  # stray voxels, so children disagree
                slab[speckle] = rng.integers(0, 4000, size=int(speckle.sum()), dtype=np.uint32)
            ds[z0:z1] = slab
