"""A spec joined with its sources: what each channel is and which blocks it needs.

Every process (CLI, Luigi worker, luigid client on another host) rebuilds the same plan
from the spec path alone, so tasks carry nothing but that path and small integers.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .blocks import Box, BlockTask, Vec3, ceil_div, chunk_grid, chunk_shape, plan_tasks, shard_cuboid
from .downsample import factors, level_extent
from .errors import SourceError, SpecError
from .markers import channel_dir, project_dir
from .chunked import locate_array, names_an_array_folder
from .source_base import Source
from .sources import open_source
from .spec import ChannelSpec, Spec, load_spec
from .catalog import Catalog, SqlCatalog, SqliteCatalog
from .targets import LocalStore, Scale, Target, VolumeRef

logger = logging.getLogger(__name__)

MAX_TASKS_PER_CHANNEL = 1000  # Luigi's scheduler is quadratic in its task count


def max_levels(extent: Box, scaling_option: str) -> int:
    """The first level at which x or y is 1 voxel wide (DESIGN's level extents)."""
    level = 0
    while True:
        shape = level_extent(extent, level, scaling_option).shape
        if shape.x <= 1 or shape.y <= 1:
            return level
        level += 1


def resolve_levels(scaling_levels: int | str, *, extent: Box, scaling_option: str,
                   voxel_resolution_nm: tuple[float, float, float]) -> int:
    """The levels above 0; "auto" halves until one chunk covers the level in x and y.

    Either stops at the first level where x or y is 1 voxel wide: past it a level would
    only repeat the one below in that axis. A number past it is refused (SpecError) before
    anything is written; "auto" of a thin volume (x 5000, y 3) stops there too, so the
    number `inspect` prints for "auto" is one a spec may give.
    """
    top = max_levels(extent, scaling_option)
    if scaling_levels != "auto":
        if int(scaling_levels) > top:
            shape = level_extent(extent, top, scaling_option).shape
            axis = "x" if shape.x == 1 else "y"
            raise SpecError(
                f"dataset.scaling_levels = {scaling_levels}: the volume (x {extent.shape.x}, y {extent.shape.y}) is "
                f"1 voxel wide in {axis} at level {top}; the largest allowed is {top} (or \"auto\")")
        return int(scaling_levels)
    for level in range(top):
        chunk = chunk_shape(scaling_option, voxel_resolution_nm, level)
        shape = level_extent(extent, level, scaling_option).shape
        if shape.x <= chunk.x and shape.y <= chunk.y:
            return level
    return top


@dataclass(frozen=True)
class LevelPlan:
    """One level of a channel: its absolute extent, chunk (ndstore's cuboid), tasks, and
    chunks per block (`level_block_chunks`)."""

    level: int
    extent: Box
    chunk: Vec3
    tasks: list[BlockTask] = field(hash=False)
    block_chunks: Vec3

    @property
    def total_blocks(self) -> int:
        return sum(len(s.blocks) for s in self.tasks)


@dataclass(frozen=True)
class ChannelPlan:
    spec: ChannelSpec
    source: Source
    dataset: str
    project: str
    levels: list[LevelPlan] = field(hash=False)  # level 0 first
    markers_dir: Path = field(hash=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def extent(self) -> Box:
        """Level 0's extent: the dataset offset and size."""
        return self.levels[0].extent

    @property
    def chunk(self) -> Vec3:
        return self.levels[0].chunk

    @property
    def tasks(self) -> list[BlockTask]:
        """Level 0's tasks, written from the source."""
        return self.levels[0].tasks

    @property
    def datatype(self) -> str:
        return self.source.dtype.name

    @property
    def time_range(self) -> tuple[int, int]:
        return (0, self.source.time_points - 1)

    def ref(self, t: int) -> VolumeRef:
        return VolumeRef(self.dataset, self.project, self.name, t if self.spec.type == "timeseries" else None)

    @property
    def channel_ref(self) -> VolumeRef:
        """The channel as a whole (what edit records are kept per), whatever its time points."""
        return VolumeRef(self.dataset, self.project, self.name)

    @property
    def refs(self) -> list[VolumeRef]:
        return [self.ref(t) for t in range(self.source.time_points)]

    @property
    def total_blocks(self) -> int:
        """Blocks of every level."""
        return sum(lv.total_blocks for lv in self.levels)


@dataclass(frozen=True)
class Plan:
    spec: Spec
    store: Target
    size: Vec3
    scaling_levels: int  # levels above 0, as the catalog's `scalinglevels` ("auto" resolved)
    channels: dict[str, ChannelPlan] = field(hash=False)
    catalog: Catalog = field(hash=False, compare=False)  # the store's, or the server's resource API
    state_dir: Path = field(hash=False, compare=False)  # markers, run lock, reports: the store, or .ndingest/

    @property
    def scales(self) -> list[Scale]:
        """What the precomputed `info` lists, one scale per level."""
        any_channel = next(iter(self.channels.values()))
        res = self.spec.dataset.voxel_resolution_nm
        f = factors(self.spec.dataset.scaling_option)
        return [Scale(resolution_nm=tuple(r * fa**lv.level for r, fa in zip(res, f)),  # type: ignore[arg-type]
                      voxel_offset=lv.extent.begin, size=lv.extent.shape, chunk=lv.chunk,
                      sharded=self.spec.store.sharding)
                for lv in any_channel.levels]

    @property
    def markers_dir(self) -> Path:
        return project_dir(self.state_dir, self.spec.dataset.name, self.spec.project.name)

    def channel(self, name: str) -> ChannelPlan:
        if name not in self.channels:
            raise SpecError(f"{self.spec.path}: no channel {name!r}; channels: {', '.join(self.channels)}")
        return self.channels[name]


def check_source(channel: ChannelSpec, source: Source) -> None:
    """A spec value that disagrees with the source is an error, never a cast."""
    if channel.datatype and channel.datatype != source.dtype.name:
        raise SpecError(
            f"channels.{channel.name}.datatype = {channel.datatype!r} but {source.description} "
            f"holds {source.dtype.name}"
        )
    if source.dtype.name not in ("uint8", "uint16", "uint32", "uint64", "float32"):
        raise SourceError(f"{source.description}: datatype {source.dtype.name} is not one ndstore stores")
    if channel.type == "annotation" and source.dtype.kind != "u":
        raise SourceError(f"{source.description}: annotation labels must be unsigned integers, not {source.dtype.name}")
    if channel.type != "timeseries" and source.time_points > 1:
        raise SourceError(
            f"{source.description}: has {source.time_points} time points; "
            f"set channels.{channel.name}.type = \"timeseries\""
        )


def check_placement(spec: Spec, channel: ChannelSpec, source: Source) -> None:
    """A source that knows where its voxels lie (an ndstore project: its offset and
    resolution) must lie where the spec's dataset says; other sources take the spec's word."""
    offset = getattr(source, "offset_xyz", None)
    if offset is not None and tuple(offset) != tuple(spec.dataset.offset_xyz):
        raise SpecError(f"dataset.offset = {list(spec.dataset.offset_xyz)} but {source.description} (channel "
                        f"{channel.name}) starts at {list(offset)}; set dataset.offset to it")
    resolution = getattr(getattr(source, "info", None), "voxel_resolution_nm", None)
    if resolution is not None and tuple(map(float, resolution)) != tuple(map(float, spec.dataset.voxel_resolution_nm)):
        raise SpecError(f"dataset.voxel_resolution = {list(spec.dataset.voxel_resolution_nm)} but "
                        f"{source.description} (channel {channel.name}) has {list(resolution)}")


def level_block_chunks(extent: Box, chunk: Vec3, spec: Spec) -> Vec3:
    """Chunks per block of a level: `ingest.block_chunks`, or with `store.sharding` one
    precomputed shard file's cuboid of the level's grid, so no two blocks (no two writers)
    share a shard file. Edge blocks are clipped by the volume either way."""
    if spec.store.sharding:
        return shard_cuboid(chunk_grid(extent.shape, chunk))
    return spec.ingest.block_chunks


def _tasks_for(extent: Box, chunk: Vec3, spec: Spec, time_points: int, *,
                block_chunks: Vec3 | None = None) -> list[BlockTask]:
    """Tasks of `blocks_per_task` blocks of `block_chunks` (default: the spec's), made
    bigger where a channel would have more than `MAX_TASKS_PER_CHANNEL` per level. A task
    holds blocks of one time point, so the cap is shared out per time point (past 1,000
    time points: one task each)."""
    block_chunks = block_chunks or spec.ingest.block_chunks
    grid = [ceil_div(s, c * b) for s, c, b in zip(extent.shape, chunk, block_chunks)]
    tasks_per_time_point = max(1, MAX_TASKS_PER_CHANNEL // time_points)
    per_task = max(spec.ingest.blocks_per_task, ceil_div(grid[0] * grid[1] * grid[2], tasks_per_time_point))
    return plan_tasks(extent, chunk, block_chunks=block_chunks, blocks_per_task=per_task,
                       time_points=time_points)


def plan_levels(extent: Box, spec: Spec, *, levels: int, time_points: int) -> list[LevelPlan]:
    """Level 0 .. `levels`, each with its own extent, cuboid and tasks."""
    ds = spec.dataset
    out = []
    for level in range(levels + 1):
        lv_extent = level_extent(extent, level, ds.scaling_option)
        chunk = chunk_shape(ds.scaling_option, ds.voxel_resolution_nm, level)
        block_chunks = level_block_chunks(lv_extent, chunk, spec)
        out.append(LevelPlan(level, lv_extent, chunk, _tasks_for(lv_extent, chunk, spec, time_points,
                                                                  block_chunks=block_chunks),
                             block_chunks=block_chunks))
    return out


def build_plan(spec: Spec) -> Plan:
    """Open every source (shape and dtype only) and cut each channel into tasks."""
    ds = spec.dataset
    sources = {name: open_source(ch.source, ch.axes, z_range=ch.z_range, t_range=ch.t_range, spec_path=spec.path)
               for name, ch in spec.channels.items()}
    for name, ch in spec.channels.items():
        check_source(ch, sources[name])
        check_placement(spec, ch, sources[name])
    sizes = {name: src.size_xyz for name, src in sources.items()}
    first = next(iter(sizes))
    for name, size in sizes.items():
        if size != sizes[first]:
            raise SourceError(
                f"{sources[name].description}: size x{size.x} y{size.y} z{size.z} differs from channel "
                f"{first}'s x{sizes[first].x} y{sizes[first].y} z{sizes[first].z}; a dataset has one size"
            )
    size = sizes[first]
    extent = Box.from_shape(ds.offset_xyz, size)
    levels = resolve_levels(ds.scaling_levels, extent=extent, scaling_option=ds.scaling_option,
                            voxel_resolution_nm=ds.voxel_resolution_nm)
    store, rows, state = open_target(spec)
    channels = {
        name: ChannelPlan(
            spec=ch, source=sources[name], dataset=ds.name, project=spec.project.name,
            levels=plan_levels(extent, spec, levels=levels, time_points=sources[name].time_points),
            markers_dir=channel_dir(state, ds.name, spec.project.name, name),
        )
        for name, ch in spec.channels.items()
    }
    return Plan(spec=spec, store=store, size=size, scaling_levels=levels, channels=channels, catalog=rows,
                state_dir=state)


def open_target(spec: Spec) -> tuple[Target, Catalog, Path]:
    """The spec's target, its catalog and where its markers live: a local store keeps all
    three in its folder, its catalog in the database `store.catalog` names if given; a
    server (`store.url`) keeps the first two (`remote`)."""
    if spec.store.url is not None:
        from .remote import open_remote

        return open_remote(spec)
    assert spec.store.path is not None
    store = LocalStore(spec.store.path)
    rows = SqlCatalog(spec.store.catalog) if spec.store.catalog else SqliteCatalog(store.catalog_path)
    return store, rows, store.path


def load_plan(spec_path: str | os.PathLike) -> Plan:
    """The plan of the spec at `spec_path`, cached per spec and source file versions."""
    spec = load_spec(spec_path)
    stamps = tuple(_stamp(ch.source) for ch in spec.channels.values())
    return _plan_cached(spec, stamps)


def _stamp(source: str) -> tuple:
    if names_an_array_folder(source):  # zarr, N5, precomputed: their metadata files
        try:
            files = locate_array(source).metadata
        except SourceError:
            return (source, None)
        return (source, *(_stamp(str(f)) for f in files))
    path = source.partition(":/")[0] if ":/" in source else source
    try:
        st = os.stat(path)
        return (path, st.st_size, st.st_mtime_ns)
    except OSError:
        return (path, None, None)


@functools.lru_cache(maxsize=8)
def _plan_cached(spec: Spec, stamps: tuple) -> Plan:
    return build_plan(spec)
