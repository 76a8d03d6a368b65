"""Each channel's neuroglancer-precomputed files over HTTP, as they lie in the store.

    /precomputed/DATASET/PROJECT/CHANNEL/info              a channel's info
    /precomputed/DATASET/PROJECT/CHANNEL/<scale>/<chunk>   its chunk (or shard) files
    /precomputed/DATASET/PROJECT/CHANNEL/tN/...            time point N of a time series:
                                                            each is a volume of its own,
                                                            so `precomputed://…/CHANNEL/t0`

so `precomputed://http://HOST:PORT/precomputed/DATASET/PROJECT/CHANNEL` opens in
neuroglancer and CloudVolume. `Range` requests are answered 206 (sharded volumes are read by
byte range; Starlette's FileResponse does the ranges, 416 when unsatisfiable; in a bucket
store only the range asked is read from the bucket). CORS is
`guard.Cors`: `*` for public projects, a private one's only to an `--allow-origin` origin.
A missing chunk is a 404, which both readers take as fill.

Only files inside that channel's folder are ever served: a path with `..`, `.` or empty
parts (percent-encoded or not: the server decodes before routing), a hidden name, or one
that resolves (through symlinks) outside the folder is a 404, so the catalog, the markers
and the keys file stay private. The channel must be in the catalog, and with a key file a
project without a public token needs `Authorization: Token <key>` here as on its cutouts,
checked before anything is looked up: without a valid key, a private project's file and a
missing one answer alike (401, or 403 for a wrong key).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator

from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse
from starlette.routing import Route

from ..errors import NotFound
from ..kvpath import KvPath
from ..targets import VolumeRef
from .context import ServerContext

logger = logging.getLogger(__name__)


def safe_parts(path: str) -> list[str]:
    """The parts of a request path inside a channel folder; NotFound for anything that
    could step out of it or name a hidden file (`..`, `.`, empty parts, NUL, backslash)."""
    parts = path.split("/")
    for part in parts:
        if part in ("", ".", "..") or part.startswith(".") or "\\" in part or "\x00" in part:
            raise NotFound("no such file")
    return parts


def channel_file(ctx: ServerContext, dataset: str, project: str, channel: str, path: str) -> Path | KvPath:
    """The file `path` names inside a catalogued channel's folder, checked after resolving
    symlinks (in a bucket: the object under the channel's prefix); NotFound otherwise
    (also for folders)."""
    ctx.channel_by_path(dataset, project, channel)
    parts = safe_parts(path)
    folder = ctx.volume_dir(VolumeRef(dataset, project, channel))
    if isinstance(folder, KvPath):
        return folder.joinpath(*parts)  # safe_parts let no part step out; a missing object: object_response
    root = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, target]) != root or not os.path.isfile(target):
        raise NotFound("no such file")
    return Path(target)


def byte_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """The one range `bytes=a-b`, `bytes=a-` or `bytes=-n` asks of `size` bytes, as
    [start, stop); None for no Range, or one this answers whole (several ranges, another
    unit, not a range at all: RFC 9110 lets a server ignore it); False if unsatisfiable."""
    if not header or "," in header:
        return None
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or not dash or not (first + last).isdigit():
        return None
    if not first:  # the last n bytes
        n = int(last)
        return (max(0, size - n), size) if n > 0 and size > 0 else False
    start = int(first)
    if last and int(last) < start:
        return None  # not a valid range: ignored
    stop = min(size, int(last) + 1) if last else size
    return (start, stop) if start < size and start < stop else False


def requested_range(header: str | None) -> tuple[int, int | None] | None:
    """The one range `bytes=a-b` or `bytes=a-` asks, as [start, stop) for a ranged read
    (stop None: to the end), before the object's size is known; None for no Range, a
    suffix `bytes=-n` (whose start needs the size) or one `byte_range` answers whole."""
    if not header or "," in header:
        return None
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or not dash or not first.isdigit() or (last and not last.isdigit()):
        return None
    if last and int(last) < int(first):
        return None
    return int(first), (int(last) + 1 if last else None)


def object_response(target: KvPath, range_header: str | None, media_type: str) -> Response:
    """An object of a bucket store. `bytes=a-b` or `bytes=a-`: that range alone is read
    from the bucket (one ranged GET: a multi-GB shard file is never read whole for a chunk
    of it) and answered 206; its Content-Range names the object's size when the read shows
    it, else `*` (RFC 9110 14.4); past the end, 416. No Range: read and sent a piece at a
    time (`streamed_object_response`). A suffix `bytes=-n` or several ranges: the object
    is read whole (`whole_object_response`)."""
    wanted = requested_range(range_header)
    if range_header is None:
        return streamed_object_response(target, media_type)
    if wanted is None:
        return whole_object_response(target, range_header, media_type)
    headers = {"Accept-Ranges": "bytes"}
    try:
        data, size = target.read_range(*wanted)
    except FileNotFoundError:
        raise NotFound("no such file") from None
    except EOFError:
        return Response(status_code=416, headers=headers)  # no size known: no Content-Range
    start, total = wanted[0], "*" if size is None else str(size)
    return Response(data, status_code=206, media_type=media_type,
                    headers={**headers, "Content-Range": f"bytes {start}-{start + len(data) - 1}/{total}"})


OBJECT_PIECE = 8 << 20  # bytes of a bucket object read at once when it is answered whole


def streamed_object_response(target: KvPath, media_type: str) -> Response:
    """A bucket object answered whole, read OBJECT_PIECE bytes at a time (ranged GETs), so a
    multi-GB shard file never sits in memory whole: one piece with a Content-Length when
    it fits, else the pieces streamed as they are read."""
    headers = {"Accept-Ranges": "bytes"}
    try:
        first, _ = target.read_range(0, OBJECT_PIECE)
    except FileNotFoundError:
        raise NotFound("no such file") from None
    except EOFError:
        first = b""  # an empty object
    if len(first) < OBJECT_PIECE:
        return Response(first, media_type=media_type, headers=headers)

    def pieces() -> Iterator[bytes]:
        yield first
        at = len(first)
        while True:
            try:
                piece, _ = target.read_range(at, at + OBJECT_PIECE)
            except EOFError:
                return
            yield piece
            if len(piece) < OBJECT_PIECE:
                return
            at += len(piece)

    return StreamingResponse(pieces(), media_type=media_type, headers=headers)


def whole_object_response(target: KvPath, range_header: str | None, media_type: str) -> Response:
    """An object read whole from the bucket for a Range this does not read by itself (a
    suffix, several ranges): answered whole, or the suffix asked (206; 416 when unsatisfiable)."""
    try:
        data = target.read_bytes()
    except FileNotFoundError:
        raise NotFound("no such file") from None
    wanted = byte_range(range_header, len(data))
    headers = {"Accept-Ranges": "bytes"}
    if wanted is False:
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{len(data)}"})
    if wanted is None:
        return Response(data, media_type=media_type, headers=headers)
    start, stop = wanted
    return Response(data[start:stop], status_code=206, media_type=media_type,
                    headers={**headers, "Content-Range": f"bytes {start}-{stop - 1}/{len(data)}"})


def routes(ctx: ServerContext) -> list:
    def serve_file(request: Request) -> Response:
        p = request.path_params
        ctx.readable_project(p["project"], request)  # before the lookup: a missing file answers as a private one
        target = channel_file(ctx, p["dataset"], p["project"], p["channel"], p["path"])
        media_type = "application/json" if target.name == "info" else "application/octet-stream"
        if isinstance(target, KvPath):
            return object_response(target, request.headers.get("range"), media_type)
        return FileResponse(target, media_type=media_type)

    return [Route("/precomputed/{dataset}/{project}/{channel}/{path:path}", serve_file, methods=["GET", "HEAD"])]
