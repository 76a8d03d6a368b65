"""Geometry as values: `Vec3`, `Box`, the chunk grid and the task plan.

Everything here is pure: no I/O, integer arithmetic only, same answer every time.
Boxes are half-open and in absolute voxels (the dataset offset included), because
precomputed lays its chunk grid out from `voxel_offset`, not from zero.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator, NamedTuple

from .errors import BadBox


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


class Vec3(NamedTuple):
    """A point or a size, always x, y, z."""

    x: int
    y: int
    z: int

    def __add__(self, other: "Vec3") -> "Vec3":  # type: ignore[override]
        return Vec3(self.x + other.x, self.y + other.y, self.z + other.z)

    def __sub__(self, other: "Vec3") -> "Vec3":
        return Vec3(self.x - other.x, self.y - other.y, self.z - other.z)

    def __neg__(self) -> "Vec3":
        return Vec3(-self.x, -self.y, -self.z)

    def __mul__(self, other: "Vec3") -> "Vec3":  # type: ignore[override]
        return Vec3(self.x * other.x, self.y * other.y, self.z * other.z)

    @property
    def volume(self) -> int:
        return self.x * self.y * self.z


@dataclass(frozen=True, slots=True)
class Box:
    """A half-open box of voxels: `begin` inclusive, `end` exclusive, absolute coordinates."""

    begin: Vec3
    end: Vec3

    def __post_init__(self) -> None:
        for axis, b, e in zip("xyz", self.begin, self.end):
            if b > e:  # not an assert: `python -O` would drop it
                raise BadBox(f"box {axis} range [{b}, {e}) begins after it ends "
                             f"(begin {tuple(self.begin)}, end {tuple(self.end)})")

    @classmethod
    def from_shape(cls, begin: Vec3, shape: Vec3) -> "Box":
        return cls(Vec3(*begin), Vec3(*begin) + Vec3(*shape))

    @property
    def shape(self) -> Vec3:
        return self.end - self.begin

    @property
    def is_empty(self) -> bool:
        return any(b == e for b, e in zip(self.begin, self.end))

    def shift(self, by: Vec3) -> "Box":
        return Box(self.begin + by, self.end + by)

    def intersect(self, other: "Box") -> "Box":
        lo = Vec3(*(max(a, b) for a, b in zip(self.begin, other.begin)))
        hi = Vec3(*(max(l, min(a, b)) for l, a, b in zip(lo, self.end, other.end)))
        return Box(lo, hi)

    def contains(self, other: "Box") -> bool:
        return all(sb <= ob for sb, ob in zip(self.begin, other.begin)) and all(
            oe <= se for se, oe in zip(self.end, other.end)
        )

    def snap_to_grid(self, chunk: Vec3, origin: Vec3) -> "Box":
        """Grow to chunk edges counted from `origin` (the level's voxel_offset)."""
        lo = [o + (b - o) // c * c for b, c, o in zip(self.begin, chunk, origin)]
        hi = [o + ceil_div(e - o, c) * c for e, c, o in zip(self.end, chunk, origin)]
        return Box(Vec3(*lo), Vec3(*hi))

    def chunks(self, chunk: Vec3, within: "Box") -> Iterator["Box"]:
        """The grid cells of size `chunk` (from `within.begin`) that cover this box,
        each clipped to `within`, x fastest."""
        grid = self.snap_to_grid(chunk, within.begin)
        # per axis, the clipped [lo, hi) of each cell, then their product (10^5 blocks plan in a blink)
        spans = [[(max(lo, w0), max(max(lo, w0), min(lo + c, w1))) for lo in range(b, e, c)]
                 for b, e, c, w0, w1 in zip(grid.begin, grid.end, chunk, within.begin, within.end)]
        for (z0, z1), (y0, y1), (x0, x1) in itertools.product(spans[2], spans[1], spans[0]):
            yield Box(Vec3(x0, y0, z0), Vec3(x1, y1, z1))

    def to_zyx_slices(self) -> tuple[slice, slice, slice]:
        return (
            slice(self.begin.z, self.end.z),
            slice(self.begin.y, self.end.y),
            slice(self.begin.x, self.end.x),
        )

    def to_key(self) -> str:
        """Precomputed's chunk name, `x0-x1_y0-y1_z0-z1`."""
        b, e = self.begin, self.end  # spelled out: `status` of 10^6 blocks makes this key 2 x 10^6 times
        return f"{b.x}-{e.x}_{b.y}-{e.y}_{b.z}-{e.z}"

    @classmethod
    def from_key(cls, key: str) -> "Box":
        pairs = [tuple(int(v) for v in part.split("-")) for part in key.split("_")]
        if len(pairs) != 3 or any(len(p) != 2 for p in pairs):
            raise ValueError(f"not a box key: {key!r}")
        return cls(Vec3(*(p[0] for p in pairs)), Vec3(*(p[1] for p in pairs)))

    def __str__(self) -> str:
        return self.to_key()


def chunk_shape(scaling_option: str, voxel_resolution_nm: tuple[float, float, float], level: int) -> Vec3:
    """ndstore's cuboid (its `cube_dimension`) at `level`.

    Isotropic datasets use 64^3. For zslices, 128x128x16 while the level's voxels are
    still flatter than tall (zres / (xres * 2^level) > 0.5), else 64^3.
    """
    if scaling_option == "isotropic":
        return Vec3(64, 64, 64)
    xres, _, zres = voxel_resolution_nm
    return Vec3(128, 128, 16) if zres / (xres * 2**level) > 0.5 else Vec3(64, 64, 64)


def block_shape(chunk: Vec3, block_chunks: Vec3) -> Vec3:
    return chunk * block_chunks


@dataclass(frozen=True, slots=True)
class BlockTask:
    """One Luigi task's worth of blocks: `index` within its channel, time point `t`."""

    index: int
    t: int
    blocks: tuple[Box, ...]


def plan_blocks(extent: Box, chunk: Vec3, block_chunks: Vec3) -> list[Box]:
    """Chunk-aligned blocks covering `extent`, clipped to it, x fastest.

    The grid starts at `extent.begin` (the level's voxel_offset), so every block is a
    whole number of chunks except at the far edges, where it is cut by the volume::

        extent.begin
        +--------+--------+----+
        | block  | block  |edge|   <- edge blocks are clipped, never padded
        +--------+--------+----+
        | block  | block  |edge|
        +--------+--------+----+  extent.end
    """
    return list(extent.chunks(block_shape(chunk, block_chunks), within=extent))


def plan_tasks(
    extent: Box,
    chunk: Vec3,
    *,
    block_chunks: Vec3,
    blocks_per_task: int,
    time_points: int = 1,
) -> list[BlockTask]:
    """Group the blocks of `extent` (per time point) into tasks, in plan order."""
    blocks = plan_blocks(extent, chunk, block_chunks)
    tasks: list[BlockTask] = []
    for t in range(time_points):
        for start in range(0, len(blocks), blocks_per_task):
            tasks.append(BlockTask(len(tasks), t, tuple(blocks[start : start + blocks_per_task])))
    return tasks


# --- precomputed shard files (neuroglancer_uint64_sharded_v1) ---------------------------------
# Not the Luigi `BlockTask` above: these are the files a sharded precomputed scale stores its
# chunks in. Each holds the chunks whose compressed Morton codes agree above the low
# PRESHIFT_BITS bits, so a block that is exactly one such cuboid is exactly one file.
PRESHIFT_BITS = 6  # 64 chunks per shard file: 4x4x4 chunks where the grid allows


def chunk_grid(extent_shape: Vec3, chunk: Vec3) -> Vec3:
    """Chunks per axis of a level (the last ones may be cut by the volume)."""
    return Vec3(*(ceil_div(s, c) for s, c in zip(extent_shape, chunk)))


def morton_bits(grid: Vec3) -> Vec3:
    """Bits per axis of the compressed Morton code of a `grid` of chunks: ceil(log2(g))."""
    return Vec3(*((g - 1).bit_length() for g in grid))


def compressed_morton_code(position: Vec3, grid: Vec3) -> int:
    """neuroglancer's chunk id in a sharded scale: the bits of x, y, z interleaved from
    bit 0, an axis left out once its bits are used up (so small axes cost no bits)."""
    bits = morton_bits(grid)
    code, j = 0, 0
    for i in range(max(bits)):
        for axis in range(3):
            if i < bits[axis]:
                code |= ((position[axis] >> i) & 1) << j
                j += 1
    return code


def shard_cuboid(grid: Vec3, *, inner_bits: int = PRESHIFT_BITS) -> Vec3:
    """Chunks per axis of one shard file: the axes the first `inner_bits` interleaved
    Morton bits go to (preshift + minishard bits of an identity-hashed spec; what
    CloudVolume's `image_shard_shape_from_spec` computes).

    A level of at most 64 chunks is one shard file: the cuboid is its grid rounded up to
    powers of two. Cuboids are aligned at the level's voxel_offset, as the grid is::

        grid 8x8x2 -> bits x,y,z,x,y,x -> cuboid 8x4x2 chunks, 2 shard files
    """
    bits = morton_bits(grid)
    taken, used = [0, 0, 0], 0
    for i in range(max(bits, default=0)):
        for axis in range(3):
            if i < bits[axis] and used < inner_bits:
                taken[axis] += 1
                used += 1
    return Vec3(*(1 << b for b in taken))


def sharding_spec(grid: Vec3) -> dict:
    """A scale's `sharding` in `info`: identity hash, no minishards, and every Morton bit
    above the preshift a shard bit (fewer would let two cuboids, two blocks, share a
    file). Raw index and data: CloudVolume, tensorstore and neuroglancer all read it."""
    return {
        "@type": "neuroglancer_uint64_sharded_v1",
        "hash": "identity",
        "preshift_bits": PRESHIFT_BITS,
        "minishard_bits": 0,
        "shard_bits": max(0, sum(morton_bits(grid)) - PRESHIFT_BITS),
        "minishard_index_encoding": "raw",
        "data_encoding": "raw",
    }


def shard_file_name(position: Vec3, grid: Vec3) -> str:
    """The shard file holding the chunk at grid `position`, e.g. `00f.shard` (hex, padded
    to the shard bits, as neuroglancer, tensorstore and CloudVolume name it)."""
    shard_bits = sharding_spec(grid)["shard_bits"]
    number = (compressed_morton_code(position, grid) >> PRESHIFT_BITS) & ((1 << shard_bits) - 1)
    return f"{number:0{max(1, ceil_div(shard_bits, 4))}x}.shard"
