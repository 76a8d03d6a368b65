"""A stack of 2-D slices read where it lies, by URL: ndstore's SLICE layout without a copy.

    source = "http://host/data/TOKEN/CHANNEL/{z:04d}.png"    # one file per z
    z_range = [1000, 1100]                                   # first z, one past the last
    source = "http://host/data/TOKEN/CHANNEL/time{t:04d}/{z:04d}.tif"
    t_range = [0, 3]                                         # a time series: t too

`http(s)://` and `file:///` URLs; TIFF (one 2-D page per file) and PNG (one channel). In a
job posted to `serve`, `fetchpolicy` bounds what is read: files inside --allow-files only,
addresses checked at connect time (`wire.client`), a slice body capped after decompression.
Source coordinates start at 0: z 0 is the file of `z_range[0]`.

A slice is fetched whole (a PNG has no partial read, and file servers such as Python's
`http.server` answer no `Range`) through `wire.client.Client`'s session: connection errors and
5xx retried with backoff, a 4xx never; a body cut off mid-read is fetched again. It is
decoded once, checked against the first slice (shape, dtype, one gray channel: a slice
that differs, a missing file or one that is not an image is a SourceError naming its URL,
exit 3) and staged on local disk as an uncompressed TIFF page (`SliceFiles`), so a block
reads only its rows of it (`tiff.PageReader`) and the blocks across a slab, x fastest
inside a task, fetch each slice once: a 20k x 20k slice is fetched and decoded once, not
once per 256 x 256 block. Several slices are fetched at once (IN_FLIGHT, fewer when whole
decoded slices would pass FETCH_BYTES). The staged files are disposable: named by URL and
version (so a changed slice is fetched again), shared by the processes of a run (written
to a temp name, then renamed), the least recently used removed past max(SLICE_CACHE_BYTES,
two blocks' z ranges), in `$NDINGEST_SLICE_CACHE`, an auto-ingest job's folder or
`.ndingest/staged/` beside the spec (`default_cache_dir`), and removed once an ingest has
written and verified every block (`drop_staged`).

The fingerprint (what the markers' manifest compares to notice a source that changed) is
every file's size and `Last-Modified`/`ETag`, from a HEAD each (a rewrite of the same size
within the same second of `Last-Modified` only `verify` sees). Every task checks it, so it
is taken once per run and process: again only after FINGERPRINT_SECONDS in the process
that took it, never in a Luigi worker forked from it. A slice changed during a run is
`verify`'s to find (it re-reads every block from the source).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from . import fetchpolicy, tiff
from .blocks import Box
from .errors import FetchRefused, NdingestError, RemoteError, SourceError
from .source_base import Source
from .spec import job_folder
from .urls import SLICE_SCHEMES, names_web_slices
from .wire.client import IN_FLIGHT, SMALL_IN_FLIGHT, Client, decoded_pieces, process_pool, quiet_retries

SUFFIXES = (".tif", ".tiff", ".png")
FIELD_RE = re.compile(r"\{([a-z_]*)(?::[^{}]*)?\}")
SLICE_CACHE_BYTES = 4 * 2**30  # staged slices kept on disk, at least (see SliceFiles)
FETCH_BYTES = 512 * 2**20  # whole decoded slices in memory at once, at most (but one)
CACHE_ENV = "NDINGEST_SLICE_CACHE"
STALE_PART_SECONDS = 3600.0  # a temp file this old is a killed writer's, not one at work
FINGERPRINT_SECONDS = 600.0  # 10^4 slices: ~3 s of HEADs per 10 minutes of a one-process run
MISSING = (403, 404, 410)
NO_HEAD = (405, 501)
BODY_TRIES = 3  # a body cut off mid-read is fetched again (urllib3 retries only until the headers)


def check_pattern(pattern: str, z_range, t_range) -> None:
    """SourceError unless `pattern` is a URL of TIFF or PNG files with a `{z}` field (and a
    `{t}` field exactly when there is a `t_range`), and the ranges are [first, stop) pairs."""
    parts = urllib.parse.urlsplit(pattern)
    if parts.scheme not in SLICE_SCHEMES:
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
    if parts.scheme == "file" and "\0" in urllib.parse.unquote(parts.path):
        raise SourceError(f"{pattern}: a file URL's path holds no NUL byte (%00)")


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
        raise SourceError(f"{url}: not a readable TIFF or PNG slice: {tiff.one_line(exc)}") from None
    if page.ndim != 2:
        raise SourceError(f"{url}: page is {page.shape}; a slice is one 2-D page of one sample per voxel")
    return page.astype(page.dtype.newbyteorder("="), copy=False)


class WebSliceSource(Source):
    """Slices at `pattern`, z over `z_range` (and t over `t_range`), as (t, z, y, x).

    Shape and dtype come from the first slice (its staged copy's header once staged);
    picklable (the Client drops its session, this its reader and thread pool; each
    process makes its own, and shares the staged files)."""

    def __init__(self, pattern: str, z_range: tuple[int, int], t_range: tuple[int, int] | None = None,
                 axes: str | None = None, *, cache_dir: str | os.PathLike | None = None,
                 spec_path: str | os.PathLike | None = None):
        check_pattern(pattern, z_range, t_range)
        self.pattern, self.z_range, self.t_range = pattern, tuple(z_range), tuple(t_range) if t_range else None
        self.axes = "tzyx" if t_range else "zyx"
        if axes not in (None, self.axes):
            raise SourceError(f"{pattern}: slices are read as {self.axes}; axes = {axes!r} does not apply")
        parts = urllib.parse.urlsplit(pattern)
        quiet_retries()
        self.client = None if parts.scheme == "file" else Client(f"{parts.scheme}://{parts.netloc}", key=None)
        self._pools: dict[tuple[int, str], ThreadPoolExecutor] = {}
        self._stamp: tuple[int, float, list[dict]] | None = None  # (pid, when, fingerprint)
        self.staged = SliceFiles(Path(cache_dir) if cache_dir else default_cache_dir(pattern, spec_path))
        self._paths: tuple[list[dict], list[Path]] | None = None  # (the fingerprint, its staged paths)
        self._reader: tuple[int, tiff.PageReader] | None = None  # (pid, reader), made per process
        path = self._staged_paths()[0]
        if self.staged.touch(path):  # staged by this run already: its header says the format
            self._format, _ = tiff.scan_file(path)
        else:
            first = self._fetch_page(0, 0)
            self._format = tiff.PageFormat(first.shape, first.dtype)
            self._stage(0, 0, path, first)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pools": {}, "_reader": None}

    def url(self, z: int, t: int = 0) -> str:
        """The file of source z (from 0) at time point t (from 0)."""
        return format_url(self.pattern, self.z_range[0] + z, (self.t_range[0] if self.t_range else 0) + t)

    @property
    def shape_tzyx(self) -> tuple[int, int, int, int]:
        times = self.t_range[1] - self.t_range[0] if self.t_range else 1
        return (times, self.z_range[1] - self.z_range[0], *self._format.shape_yx)

    @property
    def dtype(self) -> np.dtype:
        return self._format.dtype

    @property
    def files(self) -> list[Path]:
        return []

    @property
    def urls(self) -> list[str]:
        """Every slice's URL, t slowest (the order of `_index`)."""
        times = self.t_range[1] - self.t_range[0] if self.t_range else 1
        return [self.url(z, t) for t in range(times) for z in range(self.z_range[1] - self.z_range[0])]

    @property
    def description(self) -> str:
        return self.pattern

    @property
    def file_listing(self) -> str:
        urls = self.urls
        return urls[0] if len(urls) == 1 else f"{len(urls)}: {urls[0]} ... {urls[-1]}"

    def _pool(self) -> ThreadPoolExecutor:
        return process_pool(self._pools, "ndingest-slices")

    def _head_pool(self) -> ThreadPoolExecutor:
        return process_pool(self._pools, "ndingest-heads", SMALL_IN_FLIGHT)

    # --- bytes -----------------------------------------------------------------------------------
    def _get(self, url: str) -> bytes:
        """A slice's bytes; in a job posted to `serve`, at most its `slice_bytes` (decoded), and a
        file only inside --allow-files (checked where it is read, symlinks resolved)."""
        policy = fetchpolicy.current()
        cap = policy.slice_bytes if policy is not None else None
        if self.client is None:
            fetchpolicy.check_file(file_path(url), url)
            try:
                with open(file_path(url), "rb") as f:
                    body = f.read() if cap is None else f.read(cap + 1)
            except OSError as exc:
                raise SourceError(f"{url}: cannot read it: {exc.strerror or exc}") from None
            if cap is not None and len(body) > cap:
                raise FetchRefused(f"{url}: holds more than {cap:,} bytes, the cap of a slice of this job")
            return body
        for attempt in range(BODY_TRIES):
            reply = self.client.request("GET", url, expect=(200, *MISSING), stream=True)
            with reply:
                if reply.status_code != 200:
                    raise SourceError(f"{url}: {reply.status_code} {reply.reason}; the slice is not there")
                try:  # in 1 MiB pieces: twice as fast as `.content`'s 10 KiB pieces for a 1 MiB slice
                    return b"".join(decoded_pieces(reply, url, cap=cap))
                except NdingestError:  # past the cap, or a body that is not what it says: not a broken line
                    raise
                except Exception as exc:  # urllib3's ProtocolError, a timeout: the connection broke mid-body
                    if attempt + 1 == BODY_TRIES:
                        raise SourceError(f"{url}: the answer broke off {BODY_TRIES} times: "
                                          f"{type(exc).__name__}") from None
        raise AssertionError("unreachable")

    def _stat(self, url: str) -> dict:
        """What tells one version of a file from another: size, and mtime or the server's
        validators. A server out of retries is a SourceError naming the URL, as for a GET."""
        try:
            return self._validators(url)
        except RemoteError as exc:
            raise SourceError(str(exc)) from None

    def _validators(self, url: str) -> dict:
        if self.client is None:
            fetchpolicy.check_file(file_path(url), url)
            try:
                st = os.stat(file_path(url))
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
        """Every file's size and version (a HEAD each, SMALL_IN_FLIGHT at once), taken again in
        the process that took it once FINGERPRINT_SECONDS have passed. A process forked
        from it (a Luigi worker's task) uses its parent's: the run's preflight looked at
        every file, and every task asking again would be a HEAD per slice per task."""
        now = time.monotonic()
        if self._stamp is None or (self._stamp[0] == os.getpid() and now - self._stamp[1] > FINGERPRINT_SECONDS):
            self._stamp = (os.getpid(), now, list(self._head_pool().map(self._stat, self.urls)))
        return self._stamp[2]

    # --- voxels ----------------------------------------------------------------------------------
    def _fetch_page(self, z: int, t: int) -> np.ndarray:
        url = self.url(z, t)
        try:
            page = decode_page(self._get(url), url)
        except RemoteError as exc:  # out of retries: the server's error, naming the URL
            raise SourceError(str(exc)) from None
        return page

    def _index(self, z: int, t: int) -> int:
        """Slice (t, z)'s place in `urls`, the fingerprint and the staged paths."""
        return t * (self.z_range[1] - self.z_range[0]) + z

    def _staged_paths(self) -> list[Path]:
        """Where each slice's current version is staged (made again when the fingerprint
        is: a changed slice gets a new name, so its old copy is never read)."""
        prints = self.fingerprint()
        if self._paths is None or self._paths[0] is not prints:
            self._paths = (prints, [self.staged.path(p["path"], p) for p in prints])
            self._reader = None
        return self._paths[1]

    def _pages(self) -> tiff.PageReader:
        """This process's reader of the staged files (open files kept across blocks)."""
        paths = self._staged_paths()
        if self._reader is None or self._reader[0] != os.getpid():
            self._reader = (os.getpid(), tiff.PageReader(paths))
        return self._reader[1]

    def _stage(self, z: int, t: int, path: Path, page: np.ndarray | None = None) -> Path:
        """`path`, the staged file of slice (t, z): fetched, checked and written if not
        there yet. Runs on pool threads: everything it needs is given."""
        if self.staged.touch(path):
            return path
        url = self.url(z, t)
        if page is None:
            page = self._fetch_page(z, t)
        if page.shape != self._format.shape_yx or page.dtype != self._format.dtype:
            (y, x), dtype = self._format.shape_yx, self._format.dtype
            raise SourceError(f"{url}: page is y {page.shape[0]} x {page.shape[1]} {page.dtype}, the first "
                              f"({self.url(0, 0)}) y {y} x {x} {dtype}; every slice must match "
                              f"(a value is never cast)")
        self.staged.write(path, page)
        return path

    def _stage_all(self, keys: list[tuple[int, int]]) -> list[Path]:
        """The staged files of `keys` ((t, z) each), fetched several at once: IN_FLIGHT, or
        fewer when that many whole decoded slices would pass FETCH_BYTES."""
        at_once = max(1, min(IN_FLIGHT, FETCH_BYTES // max(1, self._page_bytes)))
        staged = self._staged_paths()  # once here, not on each pool thread
        jobs = [(z, t, staged[self._index(z, t)]) for t, z in keys]
        paths: list[Path] = []
        for i in range(0, len(jobs), at_once):
            paths += list(self._pool().map(lambda job: self._stage(*job), jobs[i:i + at_once]))
        return paths

    @property
    def _page_bytes(self) -> int:
        (y, x), dtype = self._format.shape_yx, self._format.dtype
        return y * x * dtype.itemsize

    def read(self, box: Box, t: int = 0) -> np.ndarray:
        """(z, y, x) voxels of `box`: its slices staged (fetched if they are not), then
        their rows read from the staged files."""
        self._check_box(box, t)
        zs, ys, xs = box.to_zyx_slices()
        out = np.empty(tuple(box.shape)[::-1], dtype=self.dtype)
        keys = [(t, z) for z in range(zs.start, zs.stop)]
        for attempt in range(2):  # another process may remove a staged file between staging and reading
            paths = self._stage_all(keys)
            reader = self._pages()
            try:
                for i, z in enumerate(range(zs.start, zs.stop)):
                    reader.read_into(out[i], self._index(z, t), 0, ys=ys, xs=xs, expect=self._format)
                break
            except SourceError:
                if attempt or all(p.exists() for p in paths):
                    raise
        if self.staged.trim(keep=set(paths), limit=max(SLICE_CACHE_BYTES, 2 * len(keys) * self._page_bytes)):
            reader.close()  # a removed file an open handle keeps holds its disk space
        return out


STAGED = "staged"  # the staging folder's name, in a job's folder or in `.ndingest/` beside a spec


def default_cache_dir(pattern: str, spec_path: str | os.PathLike | None = None) -> Path:
    """Where the slices of `pattern` stage: one folder per pattern in $NDINGEST_SLICE_CACHE;
    else in the spec's own place, on the disk the user chose, not the temp folder (often
    a tmpfs, i.e. RAM): an auto-ingest job's folder in the store, any other spec's
    `.ndingest/staged/` beside it. The temp folder only with no spec (a bare source)."""
    if os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV])
    elif spec_path is None:
        root = Path(tempfile.gettempdir()) / f"ndingest-slices-{os.getuid()}"
    else:
        job = job_folder(spec_path)
        root = job / STAGED if job is not None else Path(spec_path).resolve().parent / ".ndingest" / STAGED
    return root / hashlib.sha256(pattern.encode()).hexdigest()[:16]


def drop_staged(spec) -> None:
    """Remove the slices a finished ingest of `spec` staged in their default place: every
    block is written and verified, and a later `verify` stages what it reads again. A
    folder $NDINGEST_SLICE_CACHE names is the user's to keep (it stays bounded)."""
    if os.environ.get(CACHE_ENV) or spec.path is None:
        return
    for channel in spec.channels.values():
        if names_web_slices(str(channel.source)):
            folder = default_cache_dir(str(channel.source), spec.path)
            shutil.rmtree(folder, ignore_errors=True)
            try:
                folder.parent.rmdir()  # `staged/` too, once no other pattern's slices are in it
            except OSError:
                pass


class SliceFiles:
    """Staged slices in `folder`: one uncompressed TIFF page per slice version, written to
    a temp name and renamed (processes of a run share them), least recently used removed
    past a byte limit. A removed file a process still has open stays readable to it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.grown = False  # staged a file since the last trim: only then is the folder listed

    def path(self, url: str, version: dict) -> Path:
        key = json.dumps([url, {k: v for k, v in version.items() if k != "path"}], sort_keys=True)
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.tif"

    def touch(self, path: Path) -> bool:
        """Whether `path` is staged; if so, marked as used now."""
        try:
            os.utime(path)
            return True
        except OSError:  # not there (or no folder to hold it: `write` says why)
            return False

    def write(self, path: Path, page: np.ndarray) -> None:
        import tifffile

        part = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, part = tempfile.mkstemp(dir=self.folder, prefix=".", suffix=".part")
            os.close(fd)
            tifffile.imwrite(part, page)
            os.replace(part, path)
            self.grown = True
        except OSError as exc:
            raise SourceError(f"{self.folder}: cannot stage a slice there ({exc.strerror or exc}); set "
                              f"{CACHE_ENV} to a folder with room for two blocks' slices") from None
        finally:
            if part is not None and os.path.exists(part):
                os.unlink(part)

    def trim(self, *, keep: set[Path], limit: int) -> bool:
        """Remove the least recently used files but `keep` while the folder holds more than
        `limit` bytes, and temp files a killed writer left (older than STALE_PART_SECONDS);
        whether a staged file was removed. Lists the folder only if this process staged a
        file since the last trim (a block whose slices were all staged costs nothing)."""
        if not self.grown:
            return False
        self.grown = False
        try:
            found = [(st.st_mtime, st.st_size, p) for p in self.folder.glob("*.tif") for st in _stat(p)]
            stale = time.time() - STALE_PART_SECONDS
            for part in self.folder.glob(".*.part"):
                if any(st.st_mtime < stale for st in _stat(part)):
                    part.unlink(missing_ok=True)
        except OSError:
            return False
        total, removed = sum(size for _, size, _ in found), False
        for _, size, path in sorted(found, key=lambda f: f[0]):
            if total <= limit:
                break
            if path not in keep:
                path.unlink(missing_ok=True)
                total, removed = total - size, True
        return removed


def _stat(path: Path) -> list[os.stat_result]:
    """[its stat], or [] for a file another process just removed."""
    try:
        return [path.stat()]
    except FileNotFoundError:
        return []


def file_path(url: str) -> Path:
    """The file a `file:///abs/path` URL names (percent-escapes undone)."""
    return Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
