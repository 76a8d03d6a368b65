"""`ndingest sample`: the tutorial's two cutouts, synthetic and deterministic.

Written as ndstore's HDF5 cutout service gave them: a group named after the channel
holding `CUTOUT` in (z, y, x), `CHANNELTYPE` and `DATATYPE`, gzip-compressed.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import StoreError

logger = logging.getLogger(__name__)

TUTORIAL_SHAPE_ZYX = (200, 200, 300)  # x 1000-1300, y 2000-2200, z 1000-1200
IMAGE_FILE = "kasthuri11-image-hdf5-3-1000_1300-2000_2200-1000_1200-ocpcutout.h5"
ANNOTATION_FILE = "kat11segments-annotation-hdf5-3-1000_1300-2000_2200-1000_1200-ocpcutout.h5"


def synthetic_labels(shape_zyx: tuple[int, int, int], *, seed: int = 11, neurites: int | None = None) -> np.ndarray:
    """uint32 neurites: tubes of varying radius wandering through the volume, each its
    own large id, with zero background between them."""
    rng = np.random.default_rng(seed)
    z, y, x = shape_zyx
    labels = np.zeros(shape_zyx, dtype=np.uint32)
    count = neurites if neurites is not None else max(4, int(60 * (x * y * z / 12e6) ** (1 / 3)))
    ids = np.unique(rng.integers(1, 2**31, size=4 * count, dtype=np.uint32))
    ids = rng.permutation(ids)[:count]
    grid_z, grid_y, grid_x = np.ogrid[:z, :y, :x]
    for label in ids:
        start = rng.uniform([0, 0, 0], [z, y, x])
        direction = rng.normal(size=3)
        direction[0] += 2.0 * rng.choice([-1, 1])  # mostly along z, as neurites in EM stacks
        direction /= np.linalg.norm(direction)
        base_radius = rng.uniform(3, 11)
        steps = int(2 * max(shape_zyx))
        points = start + np.outer(np.arange(-steps // 2, steps // 2), direction)
        wobble = np.cumsum(rng.normal(scale=0.15, size=points.shape), axis=0)
        points += wobble
        radii = base_radius * (1 + 0.3 * np.sin(np.arange(len(points)) / rng.uniform(8, 30)))
        for (pz, py, px), r in zip(points[::2], radii[::2]):
            lo = np.maximum(np.floor([pz - r, py - r, px - r]).astype(int), 0)
            hi = np.minimum(np.ceil([pz + r, py + r, px + r]).astype(int) + 1, [z, y, x])
            if np.any(lo >= hi):
                continue
            sz, sy, sx = (slice(a, b) for a, b in zip(lo, hi))
            inside = ((grid_z[sz] - pz) ** 2 + (grid_y[:, sy] - py) ** 2 + (grid_x[:, :, sx] - px) ** 2) <= r * r
            view = labels[sz, sy, sx]
            view[inside & (view == 0)] = label
    return labels


def _smooth(a: np.ndarray, width: int) -> np.ndarray:
    """Moving average of `width` along every axis (cumulative sums, edges repeated)."""
    for axis in range(a.ndim):
        pad = [(0, 0)] * a.ndim
        pad[axis] = (width, 0)
        c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis)
        n = a.shape[axis]
        a = (np.take(c, np.arange(width, width + n), axis=axis) - np.take(c, np.arange(n), axis=axis)) / width
    return a


def synthetic_em(labels: np.ndarray, *, seed: int = 12) -> np.ndarray:
    """uint8 EM-like texture matching `labels`: bright cytoplasm, dark membranes at label
    edges, grainy extracellular space and vesicles; stretched to exactly 0..254."""
    rng = np.random.default_rng(seed)
    field = 150 + 25 * _smooth(rng.normal(size=labels.shape), 3) * 3
    field[labels == 0] = 110
    edge = np.zeros(labels.shape, dtype=bool)
    for axis in (1, 2):
        diff = np.diff(labels, axis=axis) != 0
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        edge[tuple(lo)] |= diff
        edge[tuple(hi)] |= diff
    field[edge] = 40
    vesicles = _smooth((rng.random(labels.shape) < 0.002).astype(np.float64), 2) > 0.1
    field[vesicles] -= 50
    field += rng.normal(scale=12, size=labels.shape)
    lo, hi = field.min(), field.max()
    return np.round((field - lo) / (hi - lo) * 254).astype(np.uint8)


def write_cutout(path: Path, channel: str, channel_type: str, cutout: np.ndarray) -> None:
    """ndstore's HDF5 cutout file, written to a temp name then renamed."""
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            group = f.create_group(channel)
            group.create_dataset("CUTOUT", data=cutout, compression="gzip", chunks=True)
            group.create_dataset("CHANNELTYPE", data=channel_type)
            group.create_dataset("DATATYPE", data=cutout.dtype.name)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise StoreError(f"{path}: cannot write sample: {exc}") from exc


def write_sample(directory: Path, shape_zyx: tuple[int, int, int] = TUTORIAL_SHAPE_ZYX) -> list[Path]:
    """Write the image and annotation cutouts into `directory`; returns their paths."""
    labels = synthetic_labels(shape_zyx)
    image = synthetic_em(labels)
    paths = [directory / IMAGE_FILE, directory / ANNOTATION_FILE]
    write_cutout(paths[0], "image", "image", image)
    write_cutout(paths[1], "annotation", "annotation", labels)
    return paths
