"""A stack of 2-D slices read where it lies, by URL: ndstore's SLICE layout without a copy.

    source = "http://host/data/TOKEN/CHANNEL/{z:04d}.png"    # one file per z
    z_range = [1000, 1100]                                   # first z, one past the last
    source = "http://host/data/TOKEN/CHANNEL/time{t:04d}/{z:04d}.tif"
    t_range = [0, 3]                                         # a time series: t too

`http(s)://` and `file:///` URLs; TIFF (one 2-D page per file) and PNG (one channel).
Source coordinates start at 0: z 0 is the file of `z_range[0]`.

A block reads the files of its z range, each whole (a PNG has no partial read, and file
servers such as Python's `http.server` answer no `Range`), `IN_FLIGHT` at once per process,
through `remote.Client`'s session: connection errors and 5xx retried with backoff, a 4xx
never. Decoded pages are kept, least recently used dropped, because blocks run x fastest
inside a task: the next block needs the pages the last one fetched. The cache holds one
block's z range of pages (the deepest read so far, at most PAGE_CACHE_BYTES), so memory is
one slab of slices whatever the stack's depth. Every page must have the first page's shape
and dtype; one that does not, a missing file or one that is not an image is a SourceError
naming its URL (exit 3).

The fingerprint (what the markers' manifest compares to notice a source that changed) is
every file's size and `Last-Modified`/`ETag`, from a HEAD each (a rewrite of the same size
within the same second of `Last-Modified` only `verify` sees). Every task checks it, so it
is taken once per run and process: again only after FINGERPRINT_SECONDS in the process
that took it, never in a Luigi worker forked from it. A slice changed during a run is
`verify`'s to find (it re-reads every block from the source).
"""
from __future__ import annotations

import io
import os
import re
import threading
import time
import urllib.parse
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .blocks import Box
from .errors import RemoteError, SourceError
from .sources import Source

SCHEMES = ("http", "https", "file")
SUFFIXES = (".tif", ".tiff", ".png")
FIELD_RE = re.compile(r"\{([a-z_]*)(?::[^{}]*)?\}")
PAGE_CACHE_BYTES = 512 * 2**20  # at most, per source and process: a block's z range of pages
FINGERPRINT_SECONDS = 600.0  # 10^4 slices: ~3 s of HEADs per 10 minutes of a one-process run
MISSING = (403, 404, 410)
NO_HEAD = (405, 501)
BODY_TRIES = 3  # a body cut off mid-read is fetched again (urllib3 retries only until the headers)


def names_web_slices(source: str) -> bool:
    """Whether `source` is a URL pattern of slices (`{z...}` in an http(s) or file URL)."""
    return urllib.parse.urlsplit(source).scheme in SCHEMES and "{z" in source


def check_pattern(pattern: str, z_range, t_range) -> None:
    """SourceError unless `pattern` is a URL of TIFF or PNG files with a `{z}` field (and a
    `{t}` field exactly when there is a `t_range`), and the ranges are [first, stop) pairs."""
    parts = urllib.parse.urlsplit(pattern)
    if parts.scheme not in SCHEMES:
        raise SourceError(f"{pattern}: slices are read from http(s):// or file:/// URLs")
    fields = set(FIELD_RE.findall(pattern))
    if not fields <= {"z", "t"} or "z" not in fields:
        raise SourceError(f"{pattern}: a slice pattern names {{z}} (and {{t}} for a time series), "
                          f"e.g. .../{{z:04d}}.png; found {', '.join(sorted(fields)) or 'no field'}")
    if ("t" in fields) != (t_range is not None):
        raise SourceError(f"{pattern}: a {{t}} field and t_range go together")
    for name, value in (("z_range", z_range), ("t_range", t_range)):
        if value is None and name == "t_range":
            continue
        if value is None or len(value) != 2 or not 0 <= value[0] < value[1]:
            raise SourceError(f"{pattern}: {name} = {value!r} must be [first, stop) with 0 <= first < stop")
    try:
        url = format_url(pattern, z_range[0], t_range[0] if t_range else 0)
    except (ValueError, KeyError, IndexError) as exc:
        raise SourceError(f"{pattern}: not a slice pattern: {exc}") from None
    if Path(urllib.parse.urlsplit(url).path).suffix.lower() not in SUFFIXES:
        raise SourceError(f"{pattern}: slices are TIFF or PNG files ({', '.join(SUFFIXES)})")


def format_url(pattern: str, z: int, t: int) -> str:
    return pattern.format(z=z, t=t)


def decode_page(body: bytes, url: str) -> np.ndarray:
    """One 2-D page from a TIFF or PNG file's bytes; SourceError naming `url` otherwise."""
    try:
        if body[:8] == b"\x89PNG\r\n\x1a\n":
            from PIL import Image

            with Image.open(io.BytesIO(body)) as image:
                if image.mode not in ("L", "I;16", "I;16B", "I", "F"):
                    raise SourceError(f"{url}: PNG mode {image.mode} is not one gray channel; "
                                      f"a slice holds one value per voxel")
                page = np.asarray(image)
        else:
            import tifffile

            with tifffile.TiffFile(io.BytesIO(body)) as tif:
                if len(tif.pages) != 1:
                    raise SourceError(f"{url}: has {len(tif.pages)} pages; a slice is one 2-D page")
                page = tif.pages[0].asarray()
    except SourceError:
        raise
    except Exception as exc:  # PIL and tifffile raise many types on a bad file
        from .tiff import one_line

        raise SourceError(f"{url}: not a readable TIFF or PNG slice: {one_line(exc)}") from None
    if page.ndim != 2:
        raise SourceError(f"{url}: page is {page.shape}; a slice is one 2-D page of one sample per voxel")
    return page.astype(page.dtype.newbyteorder("="), copy=False)


class WebSliceSource(Source):
    """Slices at `pattern`, z over `z_range` (and t over `t_range`), as (t, z, y, x).

    Shape and dtype come from the first page; picklable (the Client drops its session,
    this its pages and thread pool; each process makes its own)."""

    def __init__(self, pattern: str, z_range: tuple[int, int], t_range: tuple[int, int] | None = None,
                 axes: str | None = None):
        from .remote import Client, quiet_retries

        check_pattern(pattern, z_range, t_range)
        self.pattern, self.z_range, self.t_range = pattern, tuple(z_range), tuple(t_range) if t_range else None
        self.axes = "tzyx" if t_range else "zyx"
        if axes not in (None, self.axes):
            raise SourceError(f"{pattern}: slices are read as {self.axes}; axes = {axes!r} does not apply")
        parts = urllib.parse.urlsplit(pattern)
        quiet_retries()
        self.client = None if parts.scheme == "file" else Client(f"{parts.scheme}://{parts.netloc}", key=None)
        self._pools: dict[int, ThreadPoolExecutor] = {}
        self._cache = _Pages(0)
        self._stamp: tuple[int, float, list[dict]] | None = None  # (pid, when, fingerprint)
        first = self._fetch_page(0, 0)
        self._shape_yx: tuple[int, int] = first.shape
        self._dtype: np.dtype = first.dtype
        self._cache.grow_to(min(PAGE_CACHE_BYTES, first.nbytes))
        self._cache.put((0, 0), first)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pools": {}, "_cache": _Pages(0)}

    def url(self, z: int, t: int = 0) -> str:
        """The file of source z (from 0) at time point t (from 0)."""
        return format_url(self.pattern, self.z_range[0] + z, (self.t_range[0] if self.t_range else 0) + t)

    @property
    def shape_tzyx(self) -> tuple[int, int, int, int]:
        times = self.t_range[1] - self.t_range[0] if self.t_range else 1
        return (times, self.z_range[1] - self.z_range[0], *self._shape_yx)

    @property
    def dtype(self) -> np.dtype:
        return self._dtype

    @property
    def files(self) -> list[Path]:
        return []

    @property
    def urls(self) -> list[str]:
        t, z, _, _ = self.shape_tzyx
        return [self.url(zi, ti) for ti in range(t) for zi in range(z)]

    @property
    def description(self) -> str:
        return self.pattern

    @property
    def file_listing(self) -> str:
        urls = self.urls
        return urls[0] if len(urls) == 1 else f"{len(urls)}: {urls[0]} ... {urls[-1]}"

    def _pool(self) -> ThreadPoolExecutor:
        from .remote import process_pool

        return process_pool(self._pools, "ndingest-slices")

    # --- bytes -----------------------------------------------------------------------------------
    def _get(self, url: str) -> bytes:
        if self.client is None:
            try:
                return Path(_file_path(url)).read_bytes()
            except OSError as exc:
                raise SourceError(f"{url}: cannot read it: {exc.strerror or exc}") from None
        for attempt in range(BODY_TRIES):
            reply = self.client.request("GET", url, expect=(200, *MISSING), stream=True)
            with reply:
                if reply.status_code != 200:
                    raise SourceError(f"{url}: {reply.status_code} {reply.reason}; the slice is not there")
                try:  # in one read: twice as fast as `.content`'s 10 KiB pieces for a 1 MiB slice
                    return reply.raw.read(decode_content=True)
                except Exception as exc:  # urllib3's ProtocolError, a timeout: the connection broke mid-body
                    if attempt + 1 == BODY_TRIES:
                        raise SourceError(f"{url}: the answer broke off {BODY_TRIES} times: "
                                          f"{type(exc).__name__}") from None
        raise AssertionError("unreachable")

    def _stat(self, url: str) -> dict:
        """What tells one version of a file from another: size, and mtime or the server's
        validators."""
        if self.client is None:
            try:
                st = os.stat(_file_path(url))
            except OSError as exc:
                raise SourceError(f"{url}: cannot read it: {exc.strerror or exc}") from None
            return {"path": url, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        reply = self.client.request("HEAD", url, expect=(200, *NO_HEAD, *MISSING), allow_redirects=True)
        if reply.status_code in NO_HEAD:  # a server without HEAD: a GET's headers, its body left unread
            with self.client.request("GET", url, expect=(200, *MISSING), stream=True) as reply:
                pass
        if reply.status_code != 200:
            raise SourceError(f"{url}: {reply.status_code} {reply.reason}; the slice is not there")
        headers = reply.headers
        return {"path": url, "size": headers.get("Content-Length"), "modified": headers.get("Last-Modified"),
                "etag": headers.get("ETag")}

    def fingerprint(self) -> list[dict]:
        """Every file's size and version (a HEAD each, IN_FLIGHT at once), taken again in
        the process that took it once FINGERPRINT_SECONDS have passed. A process forked
        from it (a Luigi worker's task) uses its parent's: the run's preflight looked at
        every file, and every task asking again would be a HEAD per slice per task."""
        now = time.monotonic()
        if self._stamp is None or (self._stamp[0] == os.getpid() and now - self._stamp[1] > FINGERPRINT_SECONDS):
            self._stamp = (os.getpid(), now, list(self._pool().map(self._stat, self.urls)))
        return self._stamp[2]

    # --- voxels ----------------------------------------------------------------------------------
    def _fetch_page(self, z: int, t: int) -> np.ndarray:
        url = self.url(z, t)
        try:
            page = decode_page(self._get(url), url)
        except RemoteError as exc:  # out of retries: the server's error, naming the URL
            raise SourceError(str(exc)) from None
        return page

    def _matching_page(self, z: int, t: int) -> np.ndarray:
        page = self._fetch_page(z, t)
        if page.shape != self._shape_yx or page.dtype != self._dtype:
            url, (y, x) = self.url(z, t), self._shape_yx
            raise SourceError(f"{url}: page is y {page.shape[0]} x {page.shape[1]} {page.dtype}, the first "
                              f"({self.url(0, 0)}) y {y} x {x} {self._dtype}; every slice must match "
                              f"(a value is never cast)")
        return page

    def read(self, box: Box, t: int = 0) -> np.ndarray:
        """(z, y, x) voxels of `box`: its pages from the cache, the others fetched at once."""
        self._check_box(box, t)
        zs, ys, xs = box.to_zyx_slices()
        out = np.empty(tuple(box.shape)[::-1], dtype=self.dtype)
        wanted = list(range(zs.start, zs.stop))
        page_bytes = self._shape_yx[0] * self._shape_yx[1] * self._dtype.itemsize
        self._cache.grow_to(min(PAGE_CACHE_BYTES, len(wanted) * page_bytes))
        pages = {z: self._cache.get((t, z)) for z in wanted}
        missing = [z for z, page in pages.items() if page is None]
        futures = {z: self._pool().submit(self._matching_page, z, t) for z in missing}
        for z, future in futures.items():
            pages[z] = future.result()
            self._cache.put((t, z), pages[z])
        for i, z in enumerate(wanted):
            out[i] = pages[z][ys, xs]
        return out


class _Pages:
    """Decoded pages by (t, z), least recently used dropped past `limit` bytes; a lock,
    since a read's fetches finish on pool threads (the puts are on the reading thread,
    but one source may be read from several)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._pages: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def grow_to(self, limit: int) -> None:
        """Keep up to `limit` bytes if that is more than now: one block's z range of pages,
        so the next block of the same slab finds them all and the slab before is dropped."""
        self.limit = max(self.limit, limit)

    def get(self, key: tuple[int, int]) -> np.ndarray | None:
        with self._lock:
            page = self._pages.get(key)
            if page is not None:
                self._pages.move_to_end(key)
            return page

    def put(self, key: tuple[int, int], page: np.ndarray) -> None:
        if page.nbytes > self.limit:
            return
        with self._lock:
            old = self._pages.pop(key, None)
            self._bytes += page.nbytes - (old.nbytes if old is not None else 0)
            self._pages[key] = page
            while self._bytes > self.limit:
                self._bytes -= self._pages.popitem(last=False)[1].nbytes


def _file_path(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path)
