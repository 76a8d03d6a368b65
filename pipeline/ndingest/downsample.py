"""The resolution hierarchy: level geometry and the two reductions, as pure functions.

Level r halves x and y (and z for isotropic datasets). On a halved axis the level covers
`[floor(offset / 2^r), ceil((offset + size) / 2^r))`, and voxel i is built from the
level-(r-1) voxels at absolute coordinates 2i and 2i+1 that lie inside the volume, so
an odd offset or size loses no voxel and edges are never darkened by padding::

    level r-1:   |  .  | 2i  |2i+1 |  ...   (a child outside the volume is left out,
    level r:        |    i      |            not counted as zero)
"""
from __future__ import annotations

import numpy as np

from .blocks import Box, Vec3, ceil_div


def factors(scaling_option: str) -> Vec3:
    """Per-level reduction along x, y, z."""
    return Vec3(2, 2, 2) if scaling_option == "isotropic" else Vec3(2, 2, 1)


def level_extent(extent: Box, level: int, scaling_option: str) -> Box:
    """The absolute box level `level` covers, from the level-0 `extent`."""
    f = factors(scaling_option)
    scale = [fa**level for fa in f]
    lo = [b // s for b, s in zip(extent.begin, scale)]
    hi = [ceil_div(e, s) for e, s in zip(extent.end, scale)]
    return Box(Vec3(*lo), Vec3(*hi))


def child_box(box: Box, f: Vec3) -> Box:
    """The level-(r-1) box whose voxels build `box` at level r (before clipping)."""
    return Box(box.begin * f, box.end * f)


def _children(block: np.ndarray, mask: np.ndarray, f: Vec3) -> tuple[np.ndarray, np.ndarray]:
    """Reshape (Z*fz, Y*fy, X*fx) to (Z, Y, X, fz*fy*fx) candidates and their validity."""
    z, y, x = (n // k for n, k in zip(block.shape, (f.z, f.y, f.x)))
    shape = (z, f.z, y, f.y, x, f.x)
    order = (0, 2, 4, 1, 3, 5)
    flat = (z, y, x, f.z * f.y * f.x)
    return (block.reshape(shape).transpose(order).reshape(flat),
            mask.reshape(shape).transpose(order).reshape(flat))


def pad_to_children(children: np.ndarray, children_box: Box, wanted: Box) -> tuple[np.ndarray, np.ndarray]:
    """Place `children` (zyx voxels of `children_box`) into the full `wanted` box, with a
    mask of the voxels that exist; `wanted` is `child_box` of the level-r box."""
    out = np.zeros(tuple(wanted.shape)[::-1], dtype=children.dtype)
    mask = np.zeros(out.shape, dtype=bool)
    rel = children_box.shift(-wanted.begin)
    out[rel.to_zyx_slices()] = children
    mask[rel.to_zyx_slices()] = True
    return out, mask


def downsample_mean(block: np.ndarray, mask: np.ndarray, f: Vec3) -> np.ndarray:
    """Mean of the existing children. Integers round half up (floor(mean + 1/2)) exactly,
    in int64/uint64 arithmetic; float32 keeps the float mean. The dtype is kept."""
    values, valid = _children(block, mask, f)
    count = valid.sum(axis=-1)
    if block.dtype.kind == "f":
        total = np.where(valid, values, 0).sum(axis=-1, dtype=np.float64)
        return (total / np.maximum(count, 1)).astype(block.dtype)
    wide = np.uint64 if block.dtype == np.uint64 else np.int64
    values = np.where(valid, values, 0).astype(wide)
    c = np.maximum(count, 1).astype(wide)
    if block.dtype.itemsize < 8:  # at most 8 children of < 2^32: the sum cannot wrap
        return ((2 * values.sum(axis=-1, dtype=wide) + c) // (2 * c)).astype(block.dtype)
    # 64-bit values near the maximum would wrap a plain sum: split each child by the count
    # into quotient and remainder, so mean = sum(q) + the rounded mean of the remainders
    quotients = (values // c[..., None]).sum(axis=-1, dtype=wide)
    remainders = (values % c[..., None]).sum(axis=-1, dtype=wide)  # at most c * (c - 1)
    return (quotients + (2 * remainders + c) // (2 * c)).astype(block.dtype)


def downsample_mode_nonzero(block: np.ndarray, mask: np.ndarray, f: Vec3) -> np.ndarray:
    """The most frequent non-zero label among the existing children, ties to the smallest;
    zero only where every child is zero. Never an average of ids."""
    labels, valid = _children(block, mask, f)
    labels = np.where(valid, labels, 0)
    nonzero = labels != 0
    counts = (labels[..., :, None] == labels[..., None, :]).sum(axis=-1) * nonzero
    best = counts.max(axis=-1, keepdims=True)
    top = np.iinfo(labels.dtype).max
    winner = np.where((counts == best) & nonzero, labels, top).min(axis=-1)
    return np.where(best[..., 0] > 0, winner, 0).astype(block.dtype)


def reduce(block: np.ndarray, mask: np.ndarray, f: Vec3, *, channel_type: str) -> np.ndarray:
    """The level-r voxels of one box: mode for annotations, mean for everything else."""
    if channel_type == "annotation":
        return downsample_mode_nonzero(block, mask, f)
    return downsample_mean(block, mask, f)
