"""Chunk locks of cutout POSTs and level rebuilds, and the channel's bookkeeping folder
they live in. Its own module, below `writes` and `propagate`, which both take them.

Every write of `serve` (a POST, setPropagate, each block of a level rebuild) also runs
inside the channel's gate (`channel_gate`, `channellock.ChannelGate.writing`): refused
(409) while an ingest of the channel runs, and waited for by a delete.

Two POSTs that touch one chunk never interleave: each takes an `flock` on the chunk's
lock stripe (`flocked`), in sorted order. In a sharded level a stripe guards the cuboid
of chunks one shard file holds (`lock_cell`).
"""
from __future__ import annotations

import fcntl
import os
import zlib
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from ..blocks import Box, Vec3, chunk_grid, shard_cuboid
from ..channellock import ChannelGate
from ..errors import StoreError
from ..markers import channel_dir
from .context import ChannelView, ServerContext

LOCK_STRIPES = 1024  # lock files per channel: bounded, however many chunks a volume has


# --- where a channel's bookkeeping lives -------------------------------------------------------
def channel_markers(ctx: ServerContext, channel: ChannelView) -> Path:
    return channel_dir(ctx.store, channel.token.dataset_name, channel.token.project_name, channel.name)


def channel_gate(ctx: ServerContext, channel: ChannelView) -> ChannelGate:
    """The channel's write, ingest and delete locks (close it, or use it in a `with`)."""
    return ChannelGate(channel_markers(ctx, channel), channel.name)


# --- chunk locks -------------------------------------------------------------------------------
def lock_stripes(boxes: list[tuple[int | None, Box]], *, chunk: Vec3, within: Box) -> list[int]:
    """The sorted lock stripes of every chunk (or `lock_cell`) the boxes touch (per time
    point): a fixed order, so two requests that share chunks take their locks in the same order."""
    stripes = set()
    for t, box in boxes:
        for cell in box.chunks(chunk, within):
            stripes.add(zlib.crc32(f"{t}/{cell.to_key()}".encode()) % LOCK_STRIPES)
    return sorted(stripes)


def level_sharding(channel: ChannelView, level: int) -> dict | None:
    """The level's precomputed `sharding` as its `info` has it; None: one file per chunk."""
    scales = (channel.info or {}).get("scales", [])
    return scales[level].get("sharding") if level < len(scales) else None


def lock_cell(channel: ChannelView, level: int) -> Vec3:
    """What one lock stripe guards: a chunk, or in a sharded level the cuboid of chunks
    one shard file holds (two POSTs to different chunks of one shard file would each
    read-modify-write the whole file). A hash other than identity scatters a shard's
    chunks, so the whole level is one cell then."""
    lv = channel.levels[level]
    sharding = level_sharding(channel, level)
    if sharding is None:
        return lv.chunk
    if sharding.get("hash") != "identity":
        return lv.extent.shape
    inner = int(sharding["preshift_bits"]) + int(sharding["minishard_bits"])
    return lv.chunk * shard_cuboid(chunk_grid(lv.extent.shape, lv.chunk), inner_bits=inner)


@contextmanager
def flocked(folder: Path, stripes: list[int]) -> Iterator[None]:
    """Hold an exclusive flock on each stripe's lock file, taken in the given (sorted) order."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{folder}: cannot make the lock folder: {exc.strerror or exc}") from exc
    with ExitStack() as stack:
        for stripe in stripes:
            path = folder / f"{stripe:04d}.lock"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise StoreError(f"{path}: cannot open lock file: {exc.strerror or exc}") from exc
            stack.callback(os.close, fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
            stack.callback(fcntl.flock, fd, fcntl.LOCK_UN)
        yield
