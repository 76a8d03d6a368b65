"""Cutout POSTs: ndstore's write semantics over the precomputed volumes, safe under
concurrent requests, threads and `uvicorn --workers` processes.

    POST {token}/{channel}/{fmt}/0/{x0},{x1}/{y0},{y1}/{z0},{z1}/[{t0},{t1}/][?mode=replace]

- Writes go to level 0 only, ndstore's base resolution; the levels above are rebuilt from
  it by `setPropagate/1/` (until then `propagate` is 0: stale). Another level is a 400.
- An image (or time-series) POST overwrites the box. An annotation POST overwrites only
  where the posted labels are non-zero (ndstore's rule: a zero means "no label here").
  `?mode=replace` writes every voxel, zeros included, for annotations too: the pipeline's
  own ingest into a server uses it, so a rerun can also erase labels. Like every write it
  needs a key when the server has keys.
- Body limit (the app's `max_body`): a Content-Length past it is a 413 before a byte is
  read, and a body that grows past it while streaming is cut off with a 413. The box's
  voxels count against it too, so a small compressed body cannot inflate past it.
- Two POSTs that touch one chunk never interleave: each takes an `flock` on the chunk's
  lock stripe (files under the channel's markers folder, taken in sorted order so two
  requests never wait on each other) around its read-modify-write. In a sharded volume
  the stripe covers a whole precomputed shard file (`lock_cell`), since a write to one
  chunk rewrites its shard file, and the POST is written in one transaction. flock works between
  threads (one open file each) and between processes; tensorstore keeps no cache here
  (`cache_pool` 0), so every read-modify-write starts from what is on disk.
- Before the first voxel: an edit record (`edits.record_edit`: the key's name in the keys
  file, if it has one, never the key or its id), made durable, and `propagate` 0; so a
  POST that fails part-way leaves the levels stale and an edit `verify` reports. After
  the voxels: one flush of the store's file system, `propagate` 0 again, then 200.
- Each POST runs inside the channel's gate (`locks.channel_gate`): 409 naming the job
  while an ingest of the channel holds it, and a delete of the channel waits for it.
- `GET {token}/{channel}/edits/` (not ndstore's) lists the records as JSON, for a
  `verify` of a store behind a server; `key` is that name or null.
"""
from __future__ import annotations

import logging

import numpy as np
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from ..blocks import Box
from ..edits import read_edits, record_edit
from ..errors import BodyTooLarge, RequestError, StateConflict
from ..markers import flush_filesystem
from ..targets import VolumeRef, is_sharded, write_box
from ..wire import cutouts
from . import propagate
from .budget import post_estimate
from .context import ChannelView, ServerContext, VolumeHandles, nd_routes
from .locks import channel_gate, channel_markers, flocked, lock_cell, lock_stripes

logger = logging.getLogger(__name__)

MODES = ("overwrite", "replace")
WRITE_LEVEL = 0


def write_voxels(handles: VolumeHandles, ref: VolumeRef, level: int, box: Box, voxels: np.ndarray) -> None:
    """Write (z, y, x) voxels at `box`; a sharded level in one transaction, so each shard
    file the box touches is rewritten once, not once per chunk."""
    handle = handles.get(ref, level)
    if handle is None or not is_sharded(handle):
        handles.write(ref, level, box, voxels)  # one file per chunk (or no volume: its error)
        return
    write_box(handle, box, voxels, what=f"{handles.volume_dir(ref)}: cannot write {box} at level {level}",
              one_transaction=True).wait()


# --- the write itself ----------------------------------------------------------------------------
def keeps_old_labels(channel_type: str, mode: str) -> bool:
    """ndstore's annotation rule: a zero in a POST means "no label here", so the stored
    label stays (unless `mode` is replace); images take every posted voxel."""
    return channel_type == "annotation" and mode != "replace"


def write_cutout(ctx: ServerContext, channel: ChannelView, *, box: Box, times: range, array: np.ndarray,
                 mode: str, key_name: str | None) -> None:
    """Write one decoded POST (`array` (z, y, x), or (t, z, y, x) for a time series) inside
    the channel's gate (409 while an ingest of it runs) and under the chunk locks: first
    the edit record (durable) and `propagate` 0, then the voxels, a flush, and `propagate`
    0 again (a setPropagate/1/ made while they were being written may have rebuilt the
    levels from half of them)."""
    handles = ctx.handles
    markers = channel_markers(ctx, channel)
    with channel_gate(ctx, channel) as gate, gate.writing(doing="post to it"):
        channel = current_channel(ctx, channel)
        per_time = [(t if channel.is_timeseries else None, array[i] if channel.is_timeseries else array)
                    for i, t in enumerate(times)]
        stripes = lock_stripes([(t, box) for t, _ in per_time], chunk=lock_cell(channel, WRITE_LEVEL),
                               within=channel.levels[WRITE_LEVEL].extent)
        with flocked(markers / "locks" / f"level{WRITE_LEVEL}", stripes):
            record_edit(markers, [box], key_name=key_name, times=list(times) if channel.is_timeseries else None,
                        mode=mode, durable=True)
            propagate.mark_stale(ctx, channel)
            for t, voxels in per_time:
                ref = channel.ref(t)
                if keeps_old_labels(channel.channel_type, mode):
                    voxels = np.where(voxels != 0, voxels, handles.read(ref, WRITE_LEVEL, box))
                write_voxels(handles, ref, WRITE_LEVEL, box, voxels)
        flush_filesystem(ctx.store)
        propagate.mark_stale(ctx, channel)


def current_channel(ctx: ServerContext, channel: ChannelView) -> ChannelView:
    """The channel as it is inside its gate (404 if deleted since the request looked it
    up; 409 if made again since, unlike the one the body was decoded for)."""
    now = ctx.channel(channel.token, channel.name).writable()
    if (now.datatype, now.channel_type, now.levels, now.time_range) != \
            (channel.datatype, channel.channel_type, channel.levels, channel.time_range):
        raise StateConflict(f"channel {channel.name!r} was deleted and made again meanwhile, unlike before; "
                            f"post again")
    return now


# --- the request's edge --------------------------------------------------------------------------
def declared_length(request: Request, limit: int) -> int | None:
    """The Content-Length, refused (413) past `limit` before any of the body is read."""
    text = request.headers.get("content-length")
    if text is None:
        return None
    if not text.strip().isdigit():
        raise RequestError(f"Content-Length {text!r} is not a number of bytes")
    length = int(text)
    if length > limit:
        raise BodyTooLarge(f"body of {length} bytes is larger than this server's limit of {limit} bytes; "
                           f"post smaller boxes")
    return length


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, counted while it streams: past `limit` it is a 413 at once."""
    declared_length(request, limit)
    parts, size = [], 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise BodyTooLarge(f"body grew past this server's limit of {limit} bytes; post smaller boxes")
        parts.append(part)
    return b"".join(parts)


def check_decoded_size(shape: tuple[int, ...], datatype: str, limit: int) -> None:
    """The voxels a POST's box holds count against the same limit as its body: a small
    compressed body must not make the server allocate gigabytes (413 before reading it)."""
    nbytes = int(np.prod(shape)) * np.dtype(datatype).itemsize
    if nbytes > limit:
        raise BodyTooLarge(f"the box holds {nbytes} bytes of voxels, more than this server's limit of {limit} "
                           f"bytes; post smaller boxes")


def parse_mode(request: Request) -> str:
    mode = request.query_params.get("mode", "overwrite")
    if mode not in MODES:
        raise RequestError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    return mode


def writable_channel(ctx: ServerContext, token_name: str, channel_name: str) -> ChannelView:
    """The channel a POST writes; 404 if unknown, 403 if readonly."""
    return ctx.channel(ctx.token(token_name), channel_name).writable()


def parse_target(channel: ChannelView, p: dict) -> tuple[Box, range]:
    """The POST's level-0 box and time points; 400 for another level or bad coordinates."""
    level = channel.level(p["res"]).level
    if level != WRITE_LEVEL:
        raise RequestError(f"cutouts are posted at resolution {WRITE_LEVEL} (the base level); level {level} "
                           f"is rebuilt from it by setPropagate/1/")
    return channel.parse_box(p["x"], p["y"], p["z"], WRITE_LEVEL), channel.parse_times(p.get("t"))


def routes(ctx: ServerContext) -> list:
    async def post_cutout(request: Request) -> Response:
        p = request.path_params
        holder = ctx.require_key(request)
        key_name = holder.name if holder is not None else None
        fmt = cutouts.check_format(p["fmt"])
        mode = parse_mode(request)
        declared_length(request, ctx.max_body)
        channel = await run_in_threadpool(writable_channel, ctx, p["token"], p["channel"])
        box, times = parse_target(channel, p)
        shape = (len(times), *reversed(box.shape)) if channel.is_timeseries else tuple(reversed(box.shape))
        check_decoded_size(shape, channel.datatype, ctx.max_body)
        nbytes = post_estimate(shape, channel.datatype, declared_length(request, ctx.max_body))  # before the body
        await run_in_threadpool(ctx.budget.take, nbytes, f"{fmt} POST {box} to {channel.name}")
        try:
            body = await read_body(request, ctx.max_body)

            def decode_and_write() -> None:
                array = cutouts.decode(fmt, body, datatype=channel.datatype, shape=shape, channel=channel.name)
                write_cutout(ctx, channel, box=box, times=times, array=array, mode=mode, key_name=key_name)

            await run_in_threadpool(decode_and_write)
        finally:
            ctx.budget.give_back(nbytes)
        return PlainTextResponse(f"wrote {box} of {channel.name}\n")

    def list_edits(request: Request) -> Response:
        """Not ndstore's: the channel's edit records, for a `verify` of a remote store."""
        token = ctx.readable_token(request.path_params["token"], request)
        channel = ctx.channel(token, request.path_params["channel"])
        return JSONResponse([e.to_listing() for e in read_edits(channel_markers(ctx, channel))])

    cut = "{token}/{channel}/{fmt}/{res}/{x}/{y}/{z}/"
    return [
        *nd_routes(cut, post_cutout, methods=("POST",)),
        *nd_routes(cut + "{t}/", post_cutout, methods=("POST",)),
        *nd_routes("{token}/{channel}/edits/", list_edits),
        *propagate.routes(ctx),
    ]
