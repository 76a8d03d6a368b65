"""An ndstore project's channel as a source: read from a server, cutout by cutout.

    source = "ndstore://host:port/TOKEN/CHANNEL"          # http://host:port/nd/sd/TOKEN/CHANNEL/
    source = "http://host:port/nd/sd/TOKEN/CHANNEL/"      # or .../ocp/ca/TOKEN/CHANNEL/

The project's info (`GET .../TOKEN/info/`) gives level 0's size, offset and resolution,
the channel's datatype, window and time range, so `inspect` fills the tutorial's table
without reading a voxel. A read is `GET .../CHANNEL/blosc/0/x0,x1/y0,y1/z0,z1/` in
absolute coordinates: the source is addressed from 0 like every other, and the server's
dataset offset is added here, in one place (`absolute_box`). A box is fetched as a few
z-slabs at once (`IN_FLIGHT` requests per process), each decoded by the server's
numpy-only unpickler. The session is `wire.client.Client`'s: connection errors and 5xx are
retried with backoff, a 4xx never. A 4xx or an answer that is not the project asked for is
a `SourceError` naming the URL (exit 3); a server that cannot be reached is the Client's
`RemoteError` (exit 8).
"""
from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .blocks import Box, Vec3
from .errors import RemoteError, SourceError
from .source_base import Source
from .spec import DATATYPES
from .wire.client import KEY_ENV, Client, one_line, process_pool, quiet_retries
from .wire.cutouts import cutout_path, decode_cutout

if TYPE_CHECKING:
    import requests

logger = logging.getLogger(__name__)

SCHEME = "ndstore://"
# ndstore://host:port/TOKEN/CHANNEL[/]
NDSTORE_RE = re.compile(r"^ndstore://(?P<host>[^/\s?#]+)/(?P<token>\w+)/(?P<channel>\w+)/?$")
# http(s)://host:port[/prefix]/nd/sd/TOKEN/CHANNEL[/]  (or ndstore's older /ocp/ca/)
HTTP_RE = re.compile(r"^(?P<root>https?://[^/\s?#]+(/[^\s?#]*?)?)/(?P<api>nd/sd|ocp/ca)/(?P<token>\w+)/(?P<channel>\w+)/?$")
PIECE_BYTES = 1 << 20  # a box is fetched as z-slabs of about this size, up to IN_FLIGHT at once
SOURCE_4XX = (400, 401, 403, 404, 405, 410, 413, 414, 422)  # answers that mean "no such source" or "bad box"


@dataclass(frozen=True)
class ChannelAddress:
    """Where a channel lives: `api` is the server's `.../nd/sd` URL (no trailing slash)."""

    api: str
    token: str
    channel: str

    @property
    def info_url(self) -> str:
        return f"{self.api}/{self.token}/info/"

    @property
    def channel_url(self) -> str:
        return f"{self.api}/{self.token}/{self.channel}/"

    def cutout_url(self, box: Box, t: int | None) -> str:
        """Level 0's blosc cutout of `box` (absolute), at time point `t` for a time series."""
        return self.channel_url + cutout_path("blosc", 0, box, t)


def names_a_server(source: str) -> bool:
    """Whether `source` is an ndstore channel: `ndstore://…`, or an http(s) URL."""
    return source.startswith(SCHEME) or source.startswith(("http://", "https://"))


def parse_address(source: str) -> ChannelAddress:
    """The channel an `ndstore://` or `http(s)://…/nd/sd/TOKEN/CHANNEL/` source names."""
    found = NDSTORE_RE.fullmatch(source)
    if found:
        return ChannelAddress(f"http://{found['host']}/nd/sd", found["token"], found["channel"])
    found = HTTP_RE.fullmatch(source)
    if found:
        return ChannelAddress(f"{found['root']}/{found['api']}", found["token"], found["channel"])
    raise SourceError(f"{source}: not an ndstore channel; write \"ndstore://host:port/TOKEN/CHANNEL\" "
                      f"or \"http://host:port/nd/sd/TOKEN/CHANNEL/\"")


@dataclass(frozen=True)
class ChannelInfo:
    """What the project's info says about level 0 and one channel (x, y, z order)."""

    size_xyz: Vec3
    offset_xyz: Vec3
    voxel_resolution_nm: tuple[float, float, float]
    datatype: str
    channel_type: str
    time_range: tuple[int, int]  # inclusive, as ndstore's
    window_range: tuple[float, float] | None  # None: the server knows none ([0, 0])


def parse_info(info: object, address: ChannelAddress) -> ChannelInfo:
    """The channel's facts from `GET .../TOKEN/info/`; SourceError naming the URL for an
    answer that is not such an info, or a project without that channel."""
    where = address.info_url
    try:
        dataset, channels = info["dataset"], info["channels"]
        if address.channel not in channels:
            raise SourceError(f"{address.channel_url}: token {address.token!r} has no channel {address.channel!r}; "
                              f"channels: {', '.join(sorted(channels)) or 'none'}")
        channel = channels[address.channel]
        size = Vec3(*(int(v) for v in dataset["imagesize"]["0"]))
        offset = Vec3(*(int(v) for v in dataset["offset"]["0"]))
        resolution = tuple(float(v) for v in dataset["voxelres"]["0"])
        datatype, channel_type = str(channel["datatype"]), str(channel["channel_type"])
        t0, t1 = (int(v) for v in channel.get("timerange", [0, 0]))
        window = tuple(channel.get("windowrange", [0, 0]))
    except SourceError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise SourceError(f"{where}: not an ndstore project info ({type(exc).__name__}: {exc})") from exc
    if len(size) != 3 or len(resolution) != 3 or any(s < 1 for s in size) or t1 < t0:
        raise SourceError(f"{where}: level 0 of size {tuple(size)}, time range ({t0}, {t1}) holds no volume")
    if datatype not in DATATYPES:
        raise SourceError(f"{address.channel_url}: datatype {datatype!r} is not one ndstore stores "
                          f"({', '.join(DATATYPES)})")
    known = len(window) == 2 and all(isinstance(v, (int, float)) for v in window) and tuple(window) != (0, 0)
    return ChannelInfo(size, offset, resolution, datatype, channel_type, (t0, t1),  # type: ignore[arg-type]
                       (window[0], window[1]) if known else None)


class NdstoreSource(Source):
    """Level 0 of one channel of an ndstore project on a server, as (t, z, y, x).

    Picklable: the Client drops its session and this its thread pool, both made again
    per process (neither survives Luigi's fork)."""

    def __init__(self, source: str, axes: str | None = None, *, key: str | None = None):
        self.source = source
        self.address = parse_address(source)
        quiet_retries()
        self.client = Client(self.address.api, key=key if key is not None else os.environ.get(KEY_ENV) or None)
        self.info = parse_info(self._get_json(self.address.info_url), self.address)
        self.axes = "tzyx" if self.is_timeseries else "zyx"
        if axes not in (None, self.axes):
            raise SourceError(f"{self.description}: a server's cutouts are read as {self.axes}; "
                              f"axes = {axes!r} does not apply (leave it out)")
        self._pools: dict[tuple[int, str], ThreadPoolExecutor] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pools": {}}

    def _get(self, url: str) -> "requests.Response":
        """GET `url`: 200 is the answer, a 4xx a SourceError naming it; connection errors
        and 5xx are retried by the Client, and once out of retries are its RemoteError."""
        reply = self.client.request("GET", url, expect=(200, *SOURCE_4XX))
        if reply.status_code != 200:
            hint = f"; set {KEY_ENV} to a key the server accepts" if reply.status_code in (401, 403) else ""
            raise SourceError(f"{url}: {reply.status_code} {one_line(reply.text) or reply.reason}{hint}")
        return reply

    def _get_json(self, url: str) -> object:
        reply = self._get(url)
        try:
            return reply.json()
        except ValueError as exc:
            raise SourceError(f"{url}: the answer is not JSON (is this an ndstore server?)") from exc

    def _pool(self) -> ThreadPoolExecutor:
        return process_pool(self._pools, "ndingest-ndstore")

    @property
    def is_timeseries(self) -> bool:
        return self.info.channel_type == "timeseries"

    @property
    def shape_tzyx(self) -> tuple[int, int, int, int]:
        x, y, z = self.info.size_xyz
        t0, t1 = self.info.time_range
        return (t1 - t0 + 1 if self.is_timeseries else 1, z, y, x)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.info.datatype)

    @property
    def files(self) -> list[Path]:
        return []

    @property
    def description(self) -> str:
        return self.address.channel_url

    @property
    def file_listing(self) -> str:
        return self.address.channel_url

    @property
    def known_window_range(self) -> tuple[float, float] | None:
        return self.info.window_range

    @property
    def offset_xyz(self) -> Vec3:
        return self.info.offset_xyz

    def fingerprint(self) -> list[dict]:
        """The channel's URL with the info that decides its voxels, and the server's edit
        records of it: a project ingested again with another size, offset, datatype or time
        range, or a cutout POSTed to it since, is noticed (exit 3). A server without
        `edits/` (ndstore's own) leaves the second to `verify`."""
        info = self.info
        return [{"path": self.address.channel_url, "size": list(info.size_xyz), "offset": list(info.offset_xyz),
                 "datatype": info.datatype, "channel_type": info.channel_type,
                 "time_range": list(info.time_range), "edits": self._edits()}]

    def _edits(self) -> list | None:
        """(count, newest time) of the channel's level-0 edit records, or None when the
        server keeps none it can show."""
        reply = self.client.request("GET", self.address.channel_url + "edits/", expect=(200, *SOURCE_4XX))
        try:
            records = reply.json() if reply.status_code == 200 else None
            level0 = [float(r["when"]) for r in records if r.get("level", 0) == 0] if records is not None else None
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        return None if level0 is None else [len(level0), max(level0, default=0.0)]

    def absolute_box(self, box: Box) -> Box:
        """`box` (source coordinates, from 0) in the server's absolute coordinates."""
        return box.shift(self.info.offset_xyz)

    def read(self, box: Box, t: int = 0) -> np.ndarray:
        """(z, y, x) voxels of `box`, fetched as z-slabs of about PIECE_BYTES at once."""
        self._check_box(box, t)
        out = np.empty(tuple(reversed(box.shape)), dtype=self.dtype)
        if box.is_empty:
            return out
        plane = box.shape.x * box.shape.y * self.dtype.itemsize
        step = max(1, PIECE_BYTES // max(plane, 1))
        slabs = [Box(Vec3(box.begin.x, box.begin.y, z), Vec3(box.end.x, box.end.y, min(z + step, box.end.z)))
                 for z in range(box.begin.z, box.end.z, step)]
        time = self.info.time_range[0] + t if self.is_timeseries else None
        if len(slabs) == 1:
            out[...] = self._read_slab(slabs[0], time)
            return out
        futures = [self._pool().submit(self._read_slab, slab, time) for slab in slabs]
        for slab, future in zip(slabs, futures):
            out[slab.begin.z - box.begin.z:slab.end.z - box.begin.z] = future.result()
        return out

    def _read_slab(self, box: Box, time: int | None) -> np.ndarray:
        url = self.address.cutout_url(self.absolute_box(box), time)
        shape = tuple(reversed(box.shape))
        body = self._get(url).content
        try:
            array = decode_cutout("blosc", body, datatype=self.info.datatype,
                                  shape=(1, *shape) if time is not None else shape, what=f"GET {url}")
        except RemoteError as exc:  # the answer is not the cutout asked for
            raise SourceError(str(exc)) from exc
        return array[0] if time is not None else array

