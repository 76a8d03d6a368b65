"""ndstore's read routes: project info, public tokens and datasets, cutouts, PNG slices.

Answers are shaped as ndstore's (`ndproj/jsonprojinfo.py`) and as ndio reads them:
`dataset.offset["0"]`, `dataset.cube_dimension["0"]`, `dataset.description` (ndio groups
tokens by it), `channels[NAME].datatype`. ndio's `get_cutout` sends a time range `0,1` even
for channels that are not time series, and reads `CUTOUT` of the group named after the
channel from the hdf5 answer.
"""
from __future__ import annotations

import io
import json
import logging

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from .. import catalog
from ..blocks import Box
from ..errors import RequestError
from ..slices import PLANES, label_colours, plane_pixels, window_to_uint8
from ..wire.cutouts import FORMATS, encode
from .budget import Lease, cutout_estimate, slice_estimate
from .context import ChannelView, ServerContext, TokenView, catalog_levels, nd_routes, parse_int

logger = logging.getLogger(__name__)

SCALING_STRINGS = {0: "zslices", 1: "xyz"}  # ndstore's `scaling` values
NDSTORE_VERSION = "1.0"  # what ndstore reported; clients only display it


def json_response(value: object) -> Response:
    """ndstore's JSON: sorted keys, indented (`json.dumps(..., sort_keys=True, indent=4)`)."""
    return Response(json.dumps(value, sort_keys=True, indent=4) + "\n", media_type="application/json")


def _number(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)


def dataset_json(token: TokenView, channels: list[ChannelView]) -> dict:
    """ndstore's `datasetdict`: per-level dicts keyed by the level as a string."""
    ds = token.dataset
    levels = catalog_levels(ds)
    starts = [c.time_range[0] for c in channels] or [0]
    ends = [c.time_range[1] for c in channels] or [0]
    return {
        "name": ds["dataset_name"],
        "description": ds["dataset_name"],
        "scalinglevels": int(ds["scalinglevels"]),
        "scaling": SCALING_STRINGS[int(ds["scalingoption"])],
        "resolutions": [lv.level for lv in levels],
        "imagesize": {str(lv.level): list(lv.extent.shape) for lv in levels},
        "offset": {str(lv.level): list(lv.extent.begin) for lv in levels},
        "voxelres": {str(lv.level): [float(r) for r in lv.resolution_nm] for lv in levels},
        "cube_dimension": {str(lv.level): list(lv.chunk) for lv in levels},
        "timerange": [min(starts), max(ends)],
        "public": int(ds["public"]),
    }


def channel_json(channel: ChannelView) -> dict:
    """ndstore's `chandict`, with the levels this channel's volume really holds."""
    row = channel.row
    return {
        "channel_type": channel.channel_type,
        "datatype": channel.datatype,
        "exceptions": 0,
        "readonly": int(row["readonly"]),
        "resolution": int(row["resolution"]),
        "propagate": int(row["propagate"]),
        "windowrange": [_number(v) for v in channel.window],
        "timerange": list(channel.time_range),
        "description": "",
        "default": bool(row["default"]),
        "levels": [lv.level for lv in channel.levels],
    }


def project_info(ctx: ServerContext, token: TokenView) -> dict:
    channels = ctx.channels(token)
    return {
        "dataset": dataset_json(token, channels),
        "project": {"name": token.project_name, "description": token.project_name, "dataset": token.dataset_name,
                    "schema_version": "0.0", "ndstore_version": NDSTORE_VERSION, "s3backend": 0,
                    "public": int(token.project["public"])},
        "channels": {c.name: channel_json(c) for c in channels},
        "metadata": {},
    }


def cutout_limit_check(ctx: ServerContext, channel: ChannelView, box: Box, times: int) -> None:
    """A cutout larger than the server's body limit is refused (400) before it is read,
    so one request cannot make the server hold gigabytes."""
    nbytes = box.shape.volume * times * np.dtype(channel.datatype).itemsize
    if nbytes > ctx.max_body:
        raise RequestError(f"cutout of {nbytes} bytes is larger than this server's limit of {ctx.max_body} bytes; "
                           f"ask for smaller boxes")


class LeasedResponse(Response):
    """An answer whose share of the memory budget is given back once its body is sent (or
    the client went away). The body goes out in SEND_PIECE pieces: uvicorn waits for the
    socket to drain before each, so a slow client holds the lease, not a second copy of
    the body in the transport's buffer."""

    SEND_PIECE = 1 << 20

    def __init__(self, body: bytes, *, media_type: str, lease: Lease):
        self.lease = lease.keep()
        super().__init__(body, media_type=media_type)

    async def __call__(self, scope, receive, send) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            body, piece = memoryview(self.body), self.SEND_PIECE
            for at in range(0, max(1, len(body)), piece):
                await send({"type": "http.response.body", "body": bytes(body[at:at + piece]),
                            "more_body": at + piece < len(body)})
        finally:
            self.body = b""
            self.lease.release()


def png_bytes(picture: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    return buffer.getvalue()


def slice_box(channel: ChannelView, plane: str, level: int, x: str, y: str, z: str) -> Box:
    """ndstore's slice URL parts (the fixed axis a single number) as a one-voxel-thick box."""
    parts = {"x": x, "y": y, "z": z}
    fixed = {"xy": "z", "xz": "y", "yz": "x"}[plane]
    index = channel.parse_index(parts[fixed], fixed, level)
    parts[fixed] = f"{index},{index + 1}"
    return channel.parse_box(parts["x"], parts["y"], parts["z"], level)


def render_plane(ctx: ServerContext, channel: ChannelView, plane: str, level: int, box: Box, t: int) -> bytes:
    """The PNG `ndingest slice` draws for that plane (slices.py's window and colours)."""
    pixels = plane_pixels(ctx.read(channel, level, box, t), plane)
    if channel.channel_type == "annotation":
        picture = label_colours(pixels)
    else:
        picture = window_to_uint8(pixels, channel.window)
    del pixels
    return png_bytes(picture)


def slice_bytes(channel: ChannelView, box: Box) -> int:
    """What a slice of `box` takes from the memory budget (budget.slice_estimate)."""
    return slice_estimate(box.shape.volume, np.dtype(channel.datatype).itemsize,
                          pixel_bytes=3 if channel.channel_type == "annotation" else 1)


def slice_time(channel: ChannelView, text: str | None) -> int:
    """A slice's time point: one number after the plane's parts, the first one by default."""
    if text is None:
        return channel.time_range[0]
    t = parse_int(text, "time point")
    return channel.parse_times(f"{t},{t + 1}").start


def routes(ctx: ServerContext) -> list:
    def info(request: Request) -> Response:
        token = ctx.readable_token(request.path_params["token"], request)
        return json_response(project_info(ctx, token))

    def public_tokens(request: Request) -> Response:
        rows = ctx.rows(catalog.tokens, catalog.tokens.c.public == 1)
        return json_response(sorted(r["token_name"] for r in rows))

    def public_datasets(request: Request) -> Response:
        rows = ctx.rows(catalog.datasets, catalog.datasets.c.public == 1)
        return json_response(sorted(r["dataset_name"] for r in rows))

    def cutout(request: Request) -> Response:
        p = request.path_params
        fmt = p["fmt"]
        if fmt not in PLANES and fmt not in FORMATS:
            raise RequestError(f"format {fmt!r} is not one of {', '.join(FORMATS)} (cutouts) "
                               f"or {', '.join(PLANES)} (slices)")
        token = ctx.readable_token(p["token"], request)
        channel = ctx.channel(token, p["channel"])
        level = channel.level(p["res"]).level
        if fmt in PLANES:
            box = slice_box(channel, fmt, level, p["x"], p["y"], p["z"])
            cutout_limit_check(ctx, channel, box, 1)
            t = slice_time(channel, p.get("t"))
            with ctx.budget.lease(slice_bytes(channel, box), f"{fmt} slice {box} of {channel.name}") as lease:
                body = render_plane(ctx, channel, fmt, level, box, t)
                return LeasedResponse(body, media_type="image/png", lease=lease)
        box = channel.parse_box(p["x"], p["y"], p["z"], level)
        times = channel.parse_times(p.get("t"))
        cutout_limit_check(ctx, channel, box, len(times))
        nbytes = cutout_estimate(box.shape.volume * len(times), np.dtype(channel.datatype).itemsize)
        with ctx.budget.lease(nbytes, f"{fmt} cutout {box} of {channel.name}") as lease:
            array = ctx.read_times(channel, level, box, times)
            body, media_type = encode(fmt, array, channel=channel.name, channel_type=channel.channel_type,
                                      datatype=channel.datatype)
            del array
            return LeasedResponse(body, media_type=media_type, lease=lease)

    cut = "{token}/{channel}/{fmt}/{res}/{x}/{y}/{z}/"
    return [
        *nd_routes("public_tokens/", public_tokens),
        *nd_routes("public_datasets/", public_datasets),
        *nd_routes("{token}/info/", info),
        *nd_routes(cut, cutout),
        *nd_routes(cut + "{t}/", cutout),
    ]
