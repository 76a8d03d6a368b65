"""The remote target: an ndstore-compatible REST server (`ndingest serve`), spoken to with requests.

    [store]
    url = "http://host:port/nd"     # the key, if the server has keys: NDINGEST_API_KEY

`RemoteStore` has `LocalStore`'s interface over cutouts: POSTs with `?mode=replace` (every
voxel written, annotation zeros too, so a rerun after `--restart` can also erase labels)
and GETs, blosc both ways. `RestCatalog` is the `catalog.Catalog` seam over the resource
API. Both share one `Client`: a `requests.Session` per process with urllib3's `Retry`
mounted, which retries connection errors and 5xx with backoff, POSTs included (a
replace-mode POST of the same voxels, or a resource POST of the same values, is
idempotent), and never a 4xx. An HTTP failure is one `RemoteError` line naming the
method, URL and the server's one-line answer (exit 8); a 409 is a `CatalogConflict`
(exit 4). The key is sent as `Authorization: Token <key>` and never appears in a message.

Markers, the run lock and reports cannot live in a remote store: they go to
`.ndingest/<server>/` beside the spec (`state_dir`), one folder per server URL.
"""
from __future__ import annotations

import io
import logging
import os
import re
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np

from . import catalog
from .blocks import Box
from .edits import Edit
from .errors import CatalogConflict, NdingestError, RemoteError, RequestError, SpecError, StoreError
from .targets import VolumeRef

if TYPE_CHECKING:
    import requests

    from .spec import Spec

logger = logging.getLogger(__name__)

KEY_ENV = "NDINGEST_API_KEY"
RETRIES = 5  # per request; with BACKOFF, about 3 s of waiting for a server that is down
BACKOFF = 0.1  # s; urllib3 waits 0, 2, 4, 8, 16 x this between tries
RETRY_STATUSES = (500, 502, 503, 504)
IN_FLIGHT = 4  # cutout requests under way at once per process: a small bounded pool
SMALL_IN_FLIGHT = 16  # HEADs under way at once: tiny answers, so the link's latency bounds them
TIMEOUT = (10.0, 600.0)  # s to connect, s to wait for an answer (a POST is flushed before it)
UNREACHABLE_SECONDS = 60.0  # after a request ran out of retries, others fail at once this long
PROPAGATE_TIMEOUT = 6 * 3600.0  # s to wait for the server to build the levels
FORMATS = ("blosc", "npz")


def server_folder(url: str) -> str:
    """`url` as one folder name (host, port and path), so two servers never share markers."""
    parts = urlsplit(url)
    return re.sub(r"[^A-Za-z0-9.-]+", "_", f"{parts.netloc}{parts.path}").strip("_") or "server"


def state_dir(spec_path: Path, url: str) -> Path:
    """Where a remote target's markers, lock and reports live: `.ndingest/` beside the spec."""
    return spec_path.parent / ".ndingest" / server_folder(url)


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _reason(exc: Exception) -> str:
    """The OS's words for a connection failure ("Connection refused"), not urllib3's nest."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip()
    if "aborted" in text.lower() or "disconnected" in text.lower() or "reset" in text.lower():
        return "the connection was lost"
    return _one_line(text, 120)


class Client:
    """The URL, the key and one retrying session per process (sessions do not survive
    Luigi's fork; pickling drops them, and the key stays out of `repr`).

    Once a request has run out of retries on a server it cannot reach, every request of
    this process fails at once for `UNREACHABLE_SECONDS`: Luigi runs the tasks left after
    a failed one, and each would otherwise spend its own retries on a server that is down.
    """

    def __init__(self, url: str, *, key: str | None = None, retries: int = RETRIES, backoff: float = BACKOFF):
        self.url = url.rstrip("/")
        self.key = key or None
        self.retries, self.backoff = retries, backoff
        self._sessions: dict[int, requests.Session] = {}
        self._unreachable: tuple[float, str] | None = None  # (when, why) the last request gave up

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_sessions": {}, "_unreachable": None}

    def __repr__(self) -> str:
        return f"Client({self.url!r}, key={'set' if self.key else None})"

    @property
    def root(self) -> str:
        """scheme://host:port, where `/precomputed/` is served."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    def session(self) -> "requests.Session":
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        pid = os.getpid()
        found = self._sessions.get(pid)
        if found is None:
            retry = Retry(total=self.retries, connect=self.retries, read=self.retries, status=self.retries,
                          other=0, backoff_factor=self.backoff, status_forcelist=RETRY_STATUSES,
                          allowed_methods=frozenset({"HEAD", "GET", "POST", "PUT", "PATCH", "DELETE"}),
                          raise_on_status=False)
            adapter = HTTPAdapter(max_retries=retry, pool_connections=2, pool_maxsize=max(2 * IN_FLIGHT, SMALL_IN_FLIGHT))
            found = requests.Session()
            found.mount("http://", adapter)
            found.mount("https://", adapter)
            if self.key:
                found.headers["Authorization"] = f"Token {self.key}"
            self._sessions = {pid: found}
        return found

    def request(self, method: str, url: str, *, expect: tuple[int, ...] = (200,), **kwargs) -> "requests.Response":
        """The server's answer if its status is one of `expect`; else the error it means."""
        import requests

        if self._unreachable is not None and time.monotonic() - self._unreachable[0] < UNREACHABLE_SECONDS:
            raise RemoteError(f"{method} {url}: cannot reach the server at {self.url} ({self._unreachable[1]} "
                              f"{time.monotonic() - self._unreachable[0]:.0f} s ago; not tried again)")
        try:
            reply = self.session().request(method, url, timeout=TIMEOUT, **kwargs)
        except requests.exceptions.ConnectionError as exc:
            self._unreachable = (time.monotonic(), _reason(exc))
            raise RemoteError(f"{method} {url}: cannot reach the server at {self.url} ({_reason(exc)}, "
                              f"after {self.retries} retries)") from exc
        except requests.exceptions.RequestException as exc:
            raise RemoteError(f"{method} {url}: {type(exc).__name__}: {_one_line(str(exc), 200)}") from exc
        if reply.status_code in expect:
            return reply
        raise self.error(method, url, reply)

    def error(self, method: str, url: str, reply: "requests.Response") -> NdingestError:
        status, line = reply.status_code, _one_line(reply.text) or reply.reason
        if status == 409:
            return CatalogConflict(f"{self.url}: {line} ({method} {url})")
        if status == 401 and self.key is None:
            return RemoteError(f"{method} {url}: the server at {self.url} wants a key and none was sent; set "
                               f"{KEY_ENV} ({status}: {line})")
        if status == 401 or (status == 403 and "key" in line.lower()):  # not a readonly channel's 403
            return RemoteError(f"{method} {url}: the server at {self.url} refused the key in {KEY_ENV} "
                               f"({status}: {line})")
        return RemoteError(f"{method} {url}: {status} {line}")

    def get_json(self, url: str) -> dict | None:
        """A resource as JSON, or None when the server answers 404."""
        reply = self.request("GET", url, expect=(200, 404))
        if reply.status_code == 404:
            return None
        try:
            return reply.json()
        except ValueError as exc:
            raise RemoteError(f"GET {url}: the answer is not JSON: {_one_line(reply.text, 120)}") from exc


def process_pool(pools: dict[tuple[int, str], ThreadPoolExecutor], name: str,
                 size: int = IN_FLIGHT) -> ThreadPoolExecutor:
    """This process's pool `name` of `size` request threads in `pools` (an object's own
    dict, emptied when it is pickled), made on first use: threads do not survive Luigi's fork."""
    pid = os.getpid()
    if any(key[0] != pid for key in pools):
        pools.clear()  # a parent's threads: gone in this process
    if (pid, name) not in pools:
        pools[(pid, name)] = ThreadPoolExecutor(size, thread_name_prefix=name)
    return pools[(pid, name)]


# --- cutouts ---------------------------------------------------------------------------------------
def cutout_path(fmt: str, level: int, box: Box, t: int | None) -> str:
    """ndstore's cutout path after a channel's URL, `fmt/level/x0,x1/y0,y1/z0,z1/` (absolute
    voxels), with `t,t+1/` for one time point of a time series: what every client here asks."""
    b, e = box.begin, box.end
    return f"{fmt}/{level}/{b.x},{e.x}/{b.y},{e.y}/{b.z},{e.z}/" + (f"{t},{t + 1}/" if t is not None else "")


def encode_cutout(fmt: str, array: np.ndarray) -> bytes:
    """A POST body: (1, [t,] z, y, x), as ndstore's clients send it."""
    array = np.ascontiguousarray(array)[np.newaxis]
    if fmt == "blosc":
        import blosc

        return blosc.pack_array(array, clevel=1, cname="lz4")
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return zlib.compress(buf.getbuffer(), 1)


def decode_cutout(fmt: str, body: bytes, *, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A GET answer as the array of `shape`; blosc through the server's numpy-only
    unpickler (a blosc body is a pickle), npz with allow_pickle=False."""
    from .server.formats import decode  # imports the server package (starlette), only when reading

    try:
        return decode(fmt, body, datatype=datatype, shape=shape)
    except RequestError as exc:
        raise RemoteError(f"{what}: the answer is not the cutout asked for: {exc}") from exc


@dataclass
class PendingRequest:
    """A cutout request under way on the store's pool; `wait()` returns its result."""

    future: Future

    def wait(self):
        return self.future.result()


class RemoteStore:
    """A project's volumes on an ndstore-compatible server, through one token.

    A write answers once the server has flushed the voxels (so a marker may follow it).
    Levels >= 1 are built by the server (`builds_levels`), after level 0, by
    `RestCatalog.build_levels`."""

    builds_levels = True
    max_in_flight = IN_FLIGHT

    def __init__(self, client: Client, *, token: str, fmt: str = "blosc"):
        if fmt not in FORMATS:
            raise ValueError(f"cutout format {fmt!r} is not one of {', '.join(FORMATS)}")
        self.client, self.token, self.fmt = client, token, fmt
        self._pools: dict[tuple[int, str], ThreadPoolExecutor] = {}
        self._datatypes: dict[VolumeRef, str] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pools": {}}

    def __repr__(self) -> str:
        return f"RemoteStore({self.client.url!r}, token={self.token!r})"

    @property
    def path(self) -> str:
        """The server's URL: what `ndingest ingest` prints as the store."""
        return self.client.url

    @property
    def catalog_path(self) -> PurePosixPath:
        """The resource API's path on the server (the catalog a user can reach)."""
        return PurePosixPath(urlsplit(self.client.url).path or "/") / "resource"

    def reopened(self) -> "RemoteStore":
        return RemoteStore(Client(self.client.url, key=self.client.key, retries=self.client.retries,
                                  backoff=self.client.backoff), token=self.token, fmt=self.fmt)

    def location(self, ref: VolumeRef) -> str:
        """The volume's precomputed URL (what neuroglancer and CloudVolume open)."""
        return f"precomputed://{self.client.root}/precomputed/{'/'.join(ref.parts)}"

    def _info_url(self, ref: VolumeRef) -> str:
        return f"{self.client.root}/precomputed/{'/'.join(ref.parts)}/info"

    def info(self, ref: VolumeRef) -> dict | None:
        found = self.client.get_json(self._info_url(ref))
        if found is not None:
            self._datatypes[ref] = found["data_type"]
        return found

    def create_volume(self, ref: VolumeRef, info: dict) -> None:
        """Check the volume the server made with the channel (the resource API's POST)
        has this `info`; CatalogConflict naming what differs otherwise."""
        existing = self.info(ref)
        if existing is None:
            raise StoreError(f"{self._info_url(ref)}: the server holds no volume for channel {ref.channel}; "
                             f"create the channel first (its resource POST makes the volume)")
        if existing != info:
            diff = sorted(k for k in info if existing.get(k) != info[k])
            raise CatalogConflict(
                f"{self._info_url(ref)} exists with other {', '.join(diff)}: "
                f"{ {k: existing.get(k) for k in diff} } != { {k: info[k] for k in diff} }")

    def forget_volume(self, ref: VolumeRef) -> None:
        """Nothing to do: deleting the channel on the server removed its volumes."""

    def flush(self) -> None:
        """Nothing to do: the server flushes a POST's voxels before it answers 200."""

    def _pool(self) -> ThreadPoolExecutor:
        return process_pool(self._pools, "ndingest-remote")

    def cutout_url(self, ref: VolumeRef, level: int, box: Box) -> str:
        return f"{self.client.url}/sd/{self.token}/{ref.channel}/{cutout_path(self.fmt, level, box, ref.t)}"

    def write(self, ref: VolumeRef, level: int, box: Box, array: np.ndarray) -> None:
        self.start_write(ref, level, box, array).wait()

    def start_write(self, ref: VolumeRef, level: int, box: Box, array: np.ndarray) -> PendingRequest:
        """POST (z, y, x) voxels at `box` (replace mode); `wait()` returns once the server
        answered 200, i.e. flushed them."""
        url = self.cutout_url(ref, level, box) + "?mode=replace"
        body_of = array[np.newaxis] if ref.t is not None else array

        def post() -> None:
            self.client.request("POST", url, data=encode_cutout(self.fmt, body_of),
                                headers={"Content-Type": "application/octet-stream"})
        return PendingRequest(self._pool().submit(post))

    def read(self, ref: VolumeRef, level: int, box: Box) -> np.ndarray:
        return self.start_read(ref, level, box).wait()

    def start_read(self, ref: VolumeRef, level: int, box: Box) -> PendingRequest:
        """GET the (z, y, x) voxels at `box`; a box outside the volume is the server's 400."""
        url = self.cutout_url(ref, level, box)
        shape = tuple(reversed(box.shape))

        def get() -> np.ndarray:
            datatype = self._datatype(ref)
            reply = self.client.request("GET", url)
            array = decode_cutout(self.fmt, reply.content, datatype=datatype,
                                  shape=(1, *shape) if ref.t is not None else shape, what=f"GET {url}")
            return array[0] if ref.t is not None else array
        return PendingRequest(self._pool().submit(get))

    def edits(self, channel: VolumeRef) -> list[Edit]:
        """The cutout POSTs the server recorded for `channel` (ours, its replace-mode ones
        among them: `verify` counts only those after a block's marker), oldest first."""
        url = f"{self.client.url}/sd/{self.token}/{channel.channel}/edits/"
        found = self.client.get_json(url)
        if found is None:
            raise RemoteError(f"GET {url}: 404: the server holds no channel {channel.channel!r} for token {self.token!r}")
        if not isinstance(found, list):
            raise RemoteError(f"GET {url}: the answer is not a list of edit records")
        return [Edit.from_record(record, where=f"GET {url}") for record in found]

    def _datatype(self, ref: VolumeRef) -> str:
        if ref not in self._datatypes and self.info(ref) is None:
            raise StoreError(f"{self._info_url(ref)}: the server holds no volume for channel {ref.channel}")
        return self._datatypes[ref]


# --- the catalog -----------------------------------------------------------------------------------
class RestCatalog:
    """`catalog.Catalog` over the resource API: rows are GET to check, POST to create (the
    server compares the fields the body gives: 409 naming one that differs), and a
    channel's window is set by PATCH. Propagation goes through ndio's get/setPropagate."""

    def __init__(self, client: Client, *, dataset: str, project: str, token: str, probe_channel: str):
        self.client, self.dataset, self.project, self.token = client, dataset, project, token
        self.probe_channel = probe_channel

    @property
    def where(self) -> str:
        return f"{self.client.url}/resource/"

    def _dataset_url(self) -> str:
        return f"{self.client.url}/resource/dataset/{self.dataset}/"

    def _project_url(self, project: str) -> str:
        return f"{self._dataset_url()}project/{project}/"

    def _channel_url(self, project: str, channel: str) -> str:
        return f"{self._project_url(project)}channel/{channel}/"

    def _row_url(self, row: catalog.Row) -> str:
        v = row.values
        if row.kind == "dataset":
            return f"{self.client.url}/resource/dataset/{v['dataset_name']}/"
        if row.kind == "project":
            return self._project_url(v["project_name"])
        if row.kind == "token":
            return f"{self._project_url(v['project'])}token/{v['token_name']}/"
        assert row.kind == "channel", row.kind
        return self._channel_url(v["project"], v["channel_name"])

    def check_access(self) -> None:
        """Fail before anything is written if the server refuses our key (or wants one):
        an empty PATCH of a channel checks the key and changes nothing (404 is fine:
        the channel may not exist yet)."""
        self.client.request("PATCH", self._channel_url(self.project, self.probe_channel), json={},
                            expect=(200, 404))

    def check_rows(self, rows: list[catalog.Row]) -> None:
        for row in rows:
            stored = self.client.get_json(self._row_url(row))
            if stored is not None:
                catalog.compare_row(row, stored)

    def rows_present(self, rows: list[catalog.Row]) -> bool:
        try:
            for row in rows:
                stored = self.client.get_json(self._row_url(row))
                if stored is None:
                    return False
                catalog.compare_row(row, stored)
        except CatalogConflict:
            return False
        return True

    def ensure_rows(self, rows: list[catalog.Row]) -> None:
        """POST each row (201 when made or equal); the fields a row ignores (state, or a
        window not known yet) stay out of the body, so the server does not compare them."""
        for row in rows:
            body = {k: v for k, v in row.values.items() if k not in row.ignore}
            logger.info("%s: ensuring %s", self.client.url, row.label)
            self.client.request("POST", self._row_url(row), json=body, expect=(200, 201))

    def find_dataset(self, name: str) -> dict | None:
        return self.client.get_json(f"{self.client.url}/resource/dataset/{name}/")

    def find_channel(self, project: str, channel: str) -> dict | None:
        return self.client.get_json(self._channel_url(project, channel))

    def set_window(self, project: str, channel: str, window: tuple[float, float]) -> None:
        self.client.request("PATCH", self._channel_url(project, channel),
                            json={"startwindow": float(window[0]), "endwindow": float(window[1])})

    def delete_channel(self, project: str, channel: str) -> None:
        """The channel's row and volumes on the server (`--restart`)."""
        self.client.request("DELETE", self._channel_url(project, channel), expect=(204, 404))

    # --- propagation -------------------------------------------------------------------------------
    def _propagate_url(self, channel: str, what: str) -> str:
        return f"{self.client.url}/sd/{self.token}/{channel}/{what}/"

    def propagate_state(self, channel: str) -> int:
        url = self._propagate_url(channel, "getPropagate")
        text = self.client.request("GET", url).text.strip()
        if text not in ("0", "1", "2"):
            raise RemoteError(f"GET {url}: answered {_one_line(text, 60)!r}, not 0, 1 or 2")
        return int(text)

    def set_propagate(self, project: str, channel: str, state: int) -> None:
        """0 marks the server's levels stale, 1 asks for a rebuild (answered at once); 2
        only checks they are built, since only the server's rebuild may say so."""
        if state == catalog.PROPAGATE_DONE:
            now = self.propagate_state(channel)
            if now != catalog.PROPAGATE_DONE:
                raise RemoteError(f"{self._propagate_url(channel, 'getPropagate')}: channel {channel}'s levels are "
                                  f"not built on the server (propagate {now}): a cutout POST came in after they "
                                  f"were; rerun to build them again")
            return
        self.client.request("GET", self._propagate_url(channel, f"setPropagate/{state}"), expect=(200, 409))

    def build_levels(self, channel: str, *, timeout: float = PROPAGATE_TIMEOUT) -> None:
        """Have the server build `channel`'s levels >= 1 from level 0 and wait until it
        says they are (getPropagate 2). From 0, setPropagate/1/ (a 409 means it is 2 by
        now); at 1 a rebuild is under way (one that died with its server is restarted
        by the server's getPropagate)."""
        state = self.propagate_state(channel)
        if state == catalog.PROPAGATE_NOT:
            self.set_propagate(self.project, channel, catalog.PROPAGATE_UNDER_WAY)
        deadline, pause = time.monotonic() + timeout, 0.05
        while state != catalog.PROPAGATE_DONE:
            state = self.propagate_state(channel)
            if state == catalog.PROPAGATE_NOT:
                raise RemoteError(f"{self._propagate_url(channel, 'getPropagate')}: the server stopped building "
                                  f"channel {channel}'s levels (propagate 0: the rebuild failed, or a cutout POST "
                                  f"came in meanwhile; its log tells which); rerun to ask again")
            if state != catalog.PROPAGATE_DONE and time.monotonic() >= deadline:
                raise RemoteError(f"{self._propagate_url(channel, 'getPropagate')}: channel {channel}'s levels are "
                                  f"still being built after {timeout:.0f} s; rerun to keep waiting")
            if state != catalog.PROPAGATE_DONE:
                time.sleep(pause)
                pause = min(pause * 2, 2.0)


def quiet_retries() -> None:
    """urllib3 logs every retry as a WARNING; here a retry is expected, and the request that
    finally fails becomes our one line. Under --debug (root logger at DEBUG) they stay."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def open_remote(spec: "Spec") -> tuple[RemoteStore, RestCatalog, Path]:
    """The store, catalog and bookkeeping folder of a spec whose `[store]` has a `url`;
    the key comes from NDINGEST_API_KEY (unset or empty: no key is sent)."""
    assert spec.store.url is not None
    readonly = [name for name, ch in spec.channels.items() if ch.readonly]
    if readonly:
        raise SpecError(f"{spec.path}: channels.{readonly[0]}.readonly = true: a server refuses every write to a "
                        f"readonly channel, the ingest's too; ingest into {spec.store.url} with readonly = false")
    quiet_retries()
    client = Client(spec.store.url, key=os.environ.get(KEY_ENV) or None)
    store = RemoteStore(client, token=spec.project.token)
    rest = RestCatalog(client, dataset=spec.dataset.name, project=spec.project.name, token=spec.project.token,
                       probe_channel=next(iter(spec.channels)))
    return store, rest, state_dir(spec.path, spec.store.url)

