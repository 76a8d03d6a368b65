"""The resolution hierarchy: level geometry and the two reductions, as pure functions.

Level r halves x and y (and z for isotropic datasets). On a halved axis the level covers
`[floor(offset / 2^r), ceil((offset + size) / 2^r))`, and voxel i is built from the
level-(r-1) voxels at absolute coordinates 2i and 2i+1 that lie inside the volume, so
an odd offset or size loses no voxel and edges are never darkened by padding::

    level r-1:   |  .  | 2i  |2i+1 |  ...   (a child outside the volume is left out,
    level r:        |    i      |            not counted as zero)

Both reductions work on the k = fz*fy*fx strided views of the block (one per child
position), never on a transposed copy. `mask=None` means every child exists, the case of
most blocks: no padding, no mask, a constant count.
"""
from __future__ import annotations

import sys

import numpy as np

from .blocks import Box, Vec3, ceil_div

# the integer type each dtype's children are summed in: 8 children of an n-bit value, doubled
# and plus 8, fit in 2n bits; 64-bit values take the quotient/remainder path instead
_SUM_TYPE = {np.dtype(a): np.dtype(b) for a, b in (
    ("uint8", "uint16"), ("uint16", "uint32"), ("uint32", "uint64"),
    ("int8", "int16"), ("int16", "int32"), ("int32", "int64"))}

SLAB_BYTES = 1 << 20  # input bytes reduced at a time: the temporaries stay in L2

# compare-exchange networks that sort 4 and 8 values (5 and 19 comparators, optimal)
_NETWORKS = {
    4: ((0, 1), (2, 3), (0, 2), (1, 3), (1, 2)),
    8: ((0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7), (0, 1), (2, 3), (4, 5), (6, 7),
        (2, 4), (3, 5), (1, 4), (3, 6), (1, 2), (3, 4), (5, 6)),
}


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


def pad_to_children(children: np.ndarray, children_box: Box, wanted: Box) -> tuple[np.ndarray, np.ndarray]:
    """Place `children` (zyx voxels of `children_box`) into the full `wanted` box, with a
    mask of the voxels that exist; `wanted` is `child_box` of the level-r box. Only edge
    blocks need it: where `children_box == wanted`, reduce with `mask=None`."""
    out = np.zeros(tuple(wanted.shape)[::-1], dtype=children.dtype)
    mask = np.zeros(out.shape, dtype=bool)
    rel = children_box.shift(-wanted.begin)
    out[rel.to_zyx_slices()] = children
    mask[rel.to_zyx_slices()] = True
    return out, mask


def _views(a: np.ndarray, f: Vec3) -> list[np.ndarray]:
    """The k children of every output voxel as k strided (Z, Y, X) views of `a`, no copy."""
    return [a[dz::f.z, dy::f.y, dx::f.x] for dz in range(f.z) for dy in range(f.y) for dx in range(f.x)]


def _sum(views: list[np.ndarray], dtype: np.dtype) -> np.ndarray:
    """The element-wise sum of `views` in `dtype`, in one output array."""
    if len(views) == 1:
        return views[0].astype(dtype)
    total = np.add(views[0], views[1], dtype=dtype)
    for v in views[2:]:
        np.add(total, v, out=total, dtype=dtype)
    return total


def _mean_float(views: list[np.ndarray], count, dtype: np.dtype) -> np.ndarray:
    total = _sum(views, np.dtype(np.float64))
    total /= count
    return total.astype(dtype)


def _mean_64(views: list[np.ndarray], c, dtype: np.dtype) -> np.ndarray:
    """64-bit values near the maximum would wrap a plain sum: split each child by the count
    into quotient and remainder, so mean = sum(q) + the rounded mean of the remainders
    (floor division and a non-negative remainder, for signed values too). A count that is
    a power of two (every full block) divides by shifting."""
    quotients = np.zeros(views[0].shape, dtype=dtype)
    remainders = np.zeros(views[0].shape, dtype=dtype)  # at most c * (c - 1)
    shift = int(c).bit_length() - 1 if np.ndim(c) == 0 and int(c) & (int(c) - 1) == 0 else None
    for v in views:
        if shift is None:
            quotients += v // c
            remainders += v % c
        else:
            quotients += v >> shift
            remainders += v & (int(c) - 1)
    return quotients + (2 * remainders + c) // (2 * c)


_EVEN_BYTES = np.uint64(0x00FF00FF00FF00FF)


def _mean_uint8_lanes(block: np.ndarray, f: Vec3) -> np.ndarray:
    """The full-block uint8 mean, eight voxels per 64-bit word: each word's x-neighbours
    (bytes 2i, 2i+1) are added into four 16-bit lanes, the rows of every child position
    summed lane by lane (at most 8 * 255, no carry between lanes), then rounded half up
    and shifted; the low byte of each lane is the output voxel (little-endian)."""
    words = block.view(np.uint64)
    rows = [words[dz::f.z, dy::f.y] for dz in range(f.z) for dy in range(f.y)]
    total = rows[0] & _EVEN_BYTES
    part = np.empty_like(total)
    for i, row in enumerate(rows):
        if i:
            np.bitwise_and(row, _EVEN_BYTES, out=part)
            total += part
        np.right_shift(row, np.uint64(8), out=part)
        part &= _EVEN_BYTES
        total += part
    k = 2 * len(rows)
    total += np.uint64(0x0001000100010001 * (k // 2))
    total >>= np.uint64(k.bit_length() - 1)
    return np.ascontiguousarray(total.view(np.uint8)[..., 0::2])


def _by_slabs(reduce_slab, block: np.ndarray, mask: np.ndarray | None, f: Vec3) -> np.ndarray:
    """`reduce_slab` applied to slabs of about `SLAB_BYTES` of the block, along z, so the
    temporaries of each step stay in the CPU's cache instead of going through memory."""
    shape = (block.shape[0] // f.z, block.shape[1] // f.y, block.shape[2] // f.x)
    plane = f.z * block.shape[1] * block.shape[2] * block.dtype.itemsize
    step = max(1, SLAB_BYTES // max(1, plane))
    if step >= shape[0]:
        return reduce_slab(block, mask, f)
    out = np.empty(shape, dtype=block.dtype)
    for z0 in range(0, shape[0], step):
        part = slice(z0 * f.z, (z0 + step) * f.z)
        out[z0:z0 + step] = reduce_slab(block[part], None if mask is None else mask[part], f)
    return out


def downsample_mean(block: np.ndarray, mask: np.ndarray | None, f: Vec3) -> np.ndarray:
    """Mean of the existing children (all of them where `mask` is None). Integers round
    half up (floor(mean + 1/2)) exactly: 8- to 32-bit children are summed in a type twice
    as wide (full uint8 blocks eight voxels per 64-bit word), 64-bit ones by quotient and
    remainder; float32 keeps the float mean (summed in float64). The dtype is kept."""
    return _by_slabs(_mean_slab, block, mask, f)


def _mean_slab(block: np.ndarray, mask: np.ndarray | None, f: Vec3) -> np.ndarray:
    dtype = block.dtype
    views = _views(block, f)
    if mask is None:
        k = len(views)
        if dtype.kind == "f":
            return _mean_float(views, k, dtype)
        if dtype.itemsize == 8:
            return _mean_64(views, dtype.type(k), dtype).astype(dtype, copy=False)
        if dtype == np.uint8 and f.x == 2 and block.shape[2] % 8 == 0 and sys.byteorder == "little":
            return _mean_uint8_lanes(np.ascontiguousarray(block), f)
        total = _sum(views, _SUM_TYPE[dtype])
        total += k // 2  # k is 2^n: floor((2 sum + k) / 2k) = floor((sum + k/2) / k) = (sum + k/2) >> n
        total >>= k.bit_length() - 1  # an arithmetic shift: floor for negative sums too
        return total.astype(dtype)
    valid = _views(mask, f)
    count = _sum(valid, np.dtype(np.uint8))
    np.maximum(count, 1, out=count)
    zero = dtype.type(0)
    views = [np.where(m, v, zero) for v, m in zip(views, valid)]
    if dtype.kind == "f":
        return _mean_float(views, count, dtype)
    if dtype.itemsize == 8:
        return _mean_64(views, count.astype(dtype), dtype).astype(dtype, copy=False)
    wide = _SUM_TYPE[dtype]
    c = count.astype(wide)
    total = _sum(views, wide)
    total *= 2
    total += c
    total //= 2 * c
    return total.astype(dtype)


def _sort_columns(columns: list[np.ndarray]) -> list[np.ndarray]:
    """Sort k same-shaped arrays element-wise (column i holds the i-th smallest), with a
    fixed compare-exchange network: no per-voxel sort call."""
    k = len(columns)
    network = _NETWORKS.get(k) or tuple(  # odd-even transposition sort: any k
        (i, i + 1) for r in range(k) for i in range(r % 2, k - 1, 2))
    columns = list(columns)
    for i, j in network:
        lo = np.minimum(columns[i], columns[j])
        columns[j] = np.maximum(columns[i], columns[j])
        columns[i] = lo
    return columns


def _mode_of_four(s0: np.ndarray, s1: np.ndarray, s2: np.ndarray, s3: np.ndarray) -> np.ndarray:
    """`_mode_of_columns` for four sorted unsigned columns (zero, if present, comes first),
    by the few patterns of equal neighbours::

        s1 == s2:  s1 has the most (2-4); if s1 is 0, so is s0, and s3 is all that is left
        s0 == s1, s2 == s3:  two pairs, the smaller non-zero: s0, or s2 if s0 is 0
        s0 == s1 only:  the pair s0, or the smallest single s2 if the pair is zeros
        s2 == s3 only:  the pair s2 (non-zero: s2 > s1)
        all differ:  the smallest non-zero, s0 or s1
    """
    pair01, pair23 = s0 == s1, s2 == s3
    apart = np.where(s0 != 0, s0, np.where(pair01, s2, s1))
    apart = np.where(pair23 & ~pair01, s2, apart)
    return np.where(s1 == s2, np.where(s1 != 0, s1, s3), apart)


def _mode_of_columns(columns: list[np.ndarray]) -> np.ndarray:
    """Most frequent non-zero value per element, ties to the smallest, zero if all are
    zero: sort, then keep the first longest run of equal non-zero values (in ascending
    order, a run found later replaces the best only when strictly longer)."""
    s = _sort_columns(columns)
    if len(s) == 4 and s[0].dtype.kind == "u":
        return _mode_of_four(*s)
    best_count = (s[0] != 0).astype(np.uint8)
    best = s[0].copy()
    run = np.ones(s[0].shape, dtype=np.uint8)
    for prev, cur in zip(s, s[1:]):
        run *= prev == cur  # a new value starts a run of 1
        run += 1
        better = (run > best_count) & (cur != 0)
        np.copyto(best_count, run, where=better)
        np.copyto(best, cur, where=better)
    np.copyto(best, 0, where=best_count == 0)
    return best


def downsample_mode_nonzero(block: np.ndarray, mask: np.ndarray | None, f: Vec3) -> np.ndarray:
    """The most frequent non-zero label among the existing children (all of them where
    `mask` is None), ties to the smallest; zero only where every child is zero. Never an
    average of ids. A missing child counts as a zero, which the rule ignores anyway.

    Where every child holds the same label (inside a segment: most voxels) that label is
    the answer; only the other voxels are gathered and sorted (never a k x k comparison)."""
    return _by_slabs(_mode_slab, block, mask, f)


def _mode_slab(block: np.ndarray, mask: np.ndarray | None, f: Vec3) -> np.ndarray:
    if mask is not None:
        block = np.where(mask, block, block.dtype.type(0))
    block = np.ascontiguousarray(block)
    units, per = _child_units(block, f)
    out = np.array(block[::f.z, ::f.y, ::f.x])  # C-order copy of the first child
    if per == 2:  # the two halves of the first unit differ
        mixed = block[::f.z, ::f.y, 0::2] != block[::f.z, ::f.y, 1::2]
    else:
        mixed = np.zeros(out.shape, dtype=bool)
    differs = np.empty(out.shape, dtype=bool)
    for u in units[1:]:
        np.not_equal(u, units[0], out=differs)
        mixed |= differs
    at = np.flatnonzero(mixed)
    if at.size:
        out.reshape(-1)[at] = _mode_of_columns(_gather_children(block, f, at, per=per))
    return out


def _child_units(block: np.ndarray, f: Vec3) -> tuple[list[np.ndarray], int]:
    """The children of every output voxel as strided (Z, Y, X) views, and how many
    children each element of a view holds: two x-neighbours read as one integer twice as
    wide where the dtype allows (half the compares, each over contiguous rows), else one."""
    if f.x == 2 and block.dtype.itemsize <= 4:
        pairs = block.view(np.dtype(f"u{2 * block.dtype.itemsize}"))
        return [pairs[dz::f.z, dy::f.y] for dz in range(f.z) for dy in range(f.y)], 2
    return _views(block, f), 1


def _gather_children(block: np.ndarray, f: Vec3, at: np.ndarray, *, per: int) -> list[np.ndarray]:
    """The k children of the output voxels at flat indices `at`, as k 1-D arrays: one
    gather by flat index per unit of `per` x-neighbours (not a 3-D fancy index)."""
    units = block.reshape(-1).view(np.dtype(f"u{per * block.dtype.itemsize}") if per > 1 else block.dtype)
    _, uy, ux = block.shape[0], block.shape[1], block.shape[2] // per
    y, x = block.shape[1] // f.y, block.shape[2] // f.x
    zy, xi = np.divmod(at, x)
    zi, yi = np.divmod(zy, y)
    base = zi * (f.z * uy * ux) + yi * (f.y * ux) + xi * (f.x // per)
    columns = []
    for dz in range(f.z):
        for dy in range(f.y):
            for dx in range(f.x // per):
                gathered = units[base + (dz * uy * ux + dy * ux + dx)].view(block.dtype)
                columns += [gathered] if per == 1 else [gathered[0::2], gathered[1::2]]
    return columns


def reduce(block: np.ndarray, mask: np.ndarray | None, f: Vec3, *, channel_type: str) -> np.ndarray:
    """The level-r voxels of one box: mode for annotations, mean for everything else;
    `mask=None` when every child exists."""
    if channel_type == "annotation":
        return downsample_mode_nonzero(block, mask, f)
    return downsample_mean(block, mask, f)


def reduce_box(children: np.ndarray, box: Box, below: Box, f: Vec3, *, channel_type: str) -> np.ndarray:
    """`box` of level r from `children`, the (z, y, x) voxels of `child_box(box, f)`
    clipped to `below` (the extent of level r-1): what the pipeline writes and verifies,
    and what a server's rebuild writes. Most blocks have every child, so no padding and
    no mask; an edge block's missing children are left out, never counted as zeros."""
    wanted = child_box(box, f)
    have = wanted.intersect(below)
    if have == wanted:
        return reduce(children, None, f, channel_type=channel_type)
    block, mask = pad_to_children(children, have, wanted)
    return reduce(block, mask, f, channel_type=channel_type)
