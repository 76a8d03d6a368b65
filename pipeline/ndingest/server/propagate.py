"""Propagation, as ndio calls it: `getPropagate/` and `setPropagate/{0,1}/`, and the
background rebuild of levels >= 1 from level 0.

The catalog's `propagate` is 0 (levels stale or never built), 1 (rebuild wanted or under
way), 2 (built). Who may change it, and how:

- a POST sets 0 after its edit record, before its first voxel, and again after them (`mark_stale`);
- `setPropagate/1/` sets 1 and makes sure a builder runs (from 2: 409); `setPropagate/0/`
  sets 0;
- a builder sets 1 -> 2 only if no POST came in while it built: it compares the channel's
  newest edit (`edits.latest_edit`) before and after, and updates only where the state is
  still 1. A POST during a build so leaves 0 (stale), never a 2 over unpropagated voxels.

One builder per channel at a time, across threads and `--workers` processes: it holds an
`flock` on the channel's `build.lock` for as long as it builds, and while the state is 1
when it is done it builds again. A builder that died with its process (state 1, lock
free) is restarted by the next `getPropagate/` or `setPropagate/1/` that sees it.

Like a POST, setPropagate and each block a builder writes run inside the channel's gate
(`locks.channel_gate`): setPropagate is 409 while an ingest of the channel runs, and a
builder stops when one starts (leaving the state to the ingest, which builds the levels
and marks them); a delete waits for the block under way, and the builder then stops
without writing another (`ChannelGone`).
"""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from .. import catalog
from ..blocks import Box, Vec3, plan_blocks
from ..downsample import child_box, factors, reduce_box
from ..edits import latest_edit
from ..channellock import ChannelGate
from ..errors import ChannelGone, NdingestError, RequestError, StateConflict, StoreError
from ..markers import flush_filesystem
from ..runlock import try_lock
from ..targets import VolumeRef, write_box
from .context import SCALING_NAMES, ChannelView, LevelView, ServerContext, nd_routes
from .locks import channel_gate, channel_markers, level_sharding, lock_cell

logger = logging.getLogger(__name__)

NOT, UNDER_WAY, DONE = catalog.PROPAGATE_NOT, catalog.PROPAGATE_UNDER_WAY, catalog.PROPAGATE_DONE
BLOCK_CHUNKS = Vec3(2, 2, 2)  # level blocks of 2x2x2 chunks: a few MiB of children per read


# --- the state in the catalog ------------------------------------------------------------------
def _where(channel: ChannelView):
    c = catalog.channels.c
    return sa.and_(c.project == channel.token.project_name, c.channel_name == channel.name)


def read_state(ctx: ServerContext, channel: ChannelView) -> int:
    """The channel's `propagate` as the catalog holds it now (not as the request began)."""
    with _engine(ctx).connect() as conn:
        value = conn.execute(sa.select(catalog.channels.c.propagate).where(_where(channel))).scalar()
    if value is None:
        raise StateConflict(f"channel {channel.name!r} was deleted meanwhile")
    return int(value)


def _engine(ctx: ServerContext) -> sa.Engine:
    engine = ctx.engine
    if engine is None:
        raise StoreError(f"{ctx.store}: the catalog is gone")
    return engine


def set_state(ctx: ServerContext, channel: ChannelView, state: int, *,
              only_from: tuple[int, ...] | None = None) -> bool:
    """Set `propagate` (only where it is one of `only_from`, if given); True if a row changed."""
    where = _where(channel)
    if only_from is not None:
        where = sa.and_(where, catalog.channels.c.propagate.in_(only_from))
    try:
        with _engine(ctx).begin() as conn:
            return conn.execute(sa.update(catalog.channels).where(where).values(propagate=state)).rowcount > 0
    except sa.exc.OperationalError as exc:
        raise StoreError(f"catalog {ctx.catalog_name}: {exc.orig}") from exc


def mark_stale(ctx: ServerContext, channel: ChannelView) -> None:
    """After a POST: the levels above 0 no longer follow level 0 (a read first, so most
    POSTs, made while it is already 0, take no write lock on the catalog)."""
    if read_state(ctx, channel) != NOT:
        set_state(ctx, channel, NOT, only_from=(UNDER_WAY, DONE))


# --- the builder -------------------------------------------------------------------------------
def build_lock_path(ctx: ServerContext, channel: ChannelView) -> Path:
    return channel_markers(ctx, channel) / "build.lock"


def ensure_builder(ctx: ServerContext, channel: ChannelView) -> bool:
    """Start a builder thread unless one holds the channel's build lock; True if started."""
    fd = try_lock(build_lock_path(ctx, channel))
    if fd is None:
        return False
    thread = threading.Thread(target=_run_builder, args=(ctx, channel, fd), daemon=True,
                              name=f"propagate-{channel.token.project_name}-{channel.name}")
    thread.start()
    return True


def _run_builder(ctx: ServerContext, channel: ChannelView, fd: int) -> None:
    """Rebuild while the state is 1; then release the lock, and take it again if a
    request asked for another rebuild while we were letting go."""
    while fd is not None:
        try:
            _build_while_wanted(ctx, channel)
        finally:
            os.close(fd)  # releases the flock
        try:
            fd = try_lock(build_lock_path(ctx, channel)) if read_state(ctx, channel) == UNDER_WAY else None
        except StateConflict:  # the channel was deleted
            fd = None
        except (NdingestError, OSError, sa.exc.SQLAlchemyError):
            logger.exception("propagate %s/%s: cannot check for another rebuild", channel.token.name, channel.name)
            fd = None


def _build_while_wanted(ctx: ServerContext, channel: ChannelView) -> None:
    try:
        while read_state(ctx, channel) == UNDER_WAY:
            stamp = latest_edit(channel_markers(ctx, channel))
            rebuild_levels(ctx, channel)
            flush_filesystem(ctx.store)
            if latest_edit(channel_markers(ctx, channel)) == stamp and set_state(ctx, channel, DONE, only_from=(UNDER_WAY,)):
                logger.info("propagate %s/%s: levels rebuilt", channel.token.name, channel.name)
                return
    except ChannelGone:  # deleted meanwhile: its row, if any, is a new channel's
        logger.info("propagate %s/%s: the channel was deleted; rebuild stopped", channel.token.name, channel.name)
    except StateConflict as exc:  # an ingest of the channel holds it: the state is the ingest's to set
        logger.info("propagate %s/%s: rebuild stopped: %s", channel.token.name, channel.name, exc)
    except Exception:  # a thread has no caller: log it, and say "stale" rather than "building" forever
        logger.exception("propagate %s/%s: rebuild failed", channel.token.name, channel.name)
        try:
            set_state(ctx, channel, NOT, only_from=(UNDER_WAY,))
        except (NdingestError, sa.exc.SQLAlchemyError):
            logger.exception("propagate %s/%s: cannot mark the levels stale", channel.token.name, channel.name)


def rebuild_levels(ctx: ServerContext, channel: ChannelView) -> None:
    """Every level >= 1 of every volume of the channel, each from the one below, over the
    level's chunk grid (as its `info` lays it out), with downsample's exact reductions;
    each block (or shard file) inside the channel's gate."""
    with channel_gate(ctx, channel) as gate:
        _rebuild_levels(ctx, channel, gate)


def _rebuild_levels(ctx: ServerContext, channel: ChannelView, gate: ChannelGate) -> None:
    handles = ctx.handles
    f = factors(SCALING_NAMES[int(channel.token.dataset["scalingoption"])])
    for ref in channel.refs:
        for below, level in zip(channel.levels, channel.levels[1:]):
            if level_sharding(channel, level.level) is None:
                for box in plan_blocks(level.extent, level.chunk, BLOCK_CHUNKS):
                    with gate.writing(doing="rebuild its levels"):
                        handles.write(ref, level.level, box, _reduced(ctx, channel, ref, below, box, f))
                continue
            cell = lock_cell(channel, level.level)  # one shard file's cuboid
            for shard_box in level.extent.chunks(cell, within=level.extent):
                with gate.writing(doing="rebuild its levels"):
                    _rebuild_shard_file(ctx, channel, ref, below, level, shard_box, f)


def _reduced(ctx: ServerContext, channel: ChannelView, ref: VolumeRef, below: LevelView, box: Box,
             f: Vec3) -> np.ndarray:
    """`box` of the level above `below`, reduced from `below` as stored now."""
    children = ctx.handles.read(ref, below.level, child_box(box, f).intersect(below.extent))
    return reduce_box(children, box, below.extent, f, channel_type=channel.channel_type)


def _rebuild_shard_file(ctx: ServerContext, channel: ChannelView, ref: VolumeRef, below: LevelView,
                        level: LevelView, shard_box: Box, f: Vec3) -> None:
    """One precomputed shard file of `level`, built in blocks of BLOCK_CHUNKS (a few MiB
    of children per read) staged in one transaction, so the file is written once, whole."""
    import tensorstore as ts

    handle = ctx.handles.get(ref, level.level)
    if handle is None:
        raise StoreError(f"{ctx.handles.volume_dir(ref)}: no volume to rebuild level {level.level} in")
    what = f"{ctx.handles.volume_dir(ref)}: cannot write {shard_box} at level {level.level}"
    txn = ts.Transaction()
    staged = handle.with_transaction(txn)
    for box in shard_box.chunks(level.chunk * BLOCK_CHUNKS, within=shard_box):
        write_box(staged, box, _reduced(ctx, channel, ref, below, box, f), what=what, one_transaction=False).wait()
    try:
        txn.commit_sync()
    except (ValueError, RuntimeError) as exc:
        raise StoreError(f"{what}: {exc}") from exc


def request_rebuild(ctx: ServerContext, channel: ChannelView) -> None:
    """`setPropagate/1/`: from 0 (or a build that died) start one; from 2, 409."""
    state = read_state(ctx, channel)
    if state == DONE:
        raise StateConflict(f"channel {channel.name!r} is already propagated (2); post to it, or "
                            f"setPropagate/0/, before asking for another rebuild")
    set_state(ctx, channel, UNDER_WAY, only_from=(NOT, UNDER_WAY))
    ensure_builder(ctx, channel)


# --- routes ------------------------------------------------------------------------------------
def routes(ctx: ServerContext) -> list:
    def get_propagate(request: Request) -> Response:
        token = ctx.readable_token(request.path_params["token"], request)
        channel = ctx.channel(token, request.path_params["channel"])
        state = read_state(ctx, channel)
        if state == UNDER_WAY and not ctx.read_only:  # a bucket store has no build lock: its pipeline builds
            ensure_builder(ctx, channel)  # a builder that died with its process is restarted
        return PlainTextResponse(str(state))

    def set_propagate(request: Request) -> Response:
        ctx.require_key(request)
        value = request.path_params["value"]
        if value not in ("0", "1"):
            raise RequestError(f"setPropagate/{value}/: only 0 (mark the levels stale) or 1 (rebuild them) can be set")
        channel = ctx.channel(ctx.token(request.path_params["token"]), request.path_params["channel"]).writable()
        with channel_gate(ctx, channel) as gate, gate.writing(doing=f"setPropagate/{value}/"):
            if value == "1":
                request_rebuild(ctx, channel)
            else:
                set_state(ctx, channel, NOT)
        return PlainTextResponse(str(read_state(ctx, channel)))

    return [  # plain functions: Starlette runs them in its thread pool
        *nd_routes("{token}/{channel}/getPropagate/", get_propagate),
        *nd_routes("{token}/{channel}/setPropagate/{value}/", set_propagate),
    ]
