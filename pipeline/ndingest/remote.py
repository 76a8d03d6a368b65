"""The remote target: an ndstore-compatible REST server (`ndingest serve`), spoken to with requests.

    [store]
    url = "http://host:port/nd"     # the key, if the server has keys: NDINGEST_API_KEY

`RemoteStore` has `LocalStore`'s interface over cutouts: POSTs with `?mode=replace` (every
voxel written, annotation zeros too, so a rerun after `--restart` can also erase labels)
and GETs, blosc both ways. `RestCatalog` is the `catalog.Catalog` seam over the resource
API. Both share one `wire.client.Client` (retries, one-line errors; the key, from
NDINGEST_API_KEY, never in a message).

Markers, the run lock and reports cannot live in a remote store: they go to
`.ndingest/<server>/` beside the spec (`state_dir`), one folder per server URL.
"""
from __future__ import annotations

import logging
import os
import re
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np

from . import catalog
from .blocks import Box
from .edits import Edit
from .errors import CatalogConflict, RemoteError, SpecError, StoreError
from .targets import VolumeRef
from .wire.client import IN_FLIGHT, KEY_ENV, Client, one_line, process_pool, quiet_retries
from .wire.cutouts import cutout_path, decode_cutout, encode_cutout

if TYPE_CHECKING:
    from .spec import Spec

logger = logging.getLogger(__name__)

PROPAGATE_TIMEOUT = 6 * 3600.0  # s to wait for the server to build the levels
FORMATS = ("blosc", "npz")


def server_folder(url: str) -> str:
    """`url` as one folder name (host, port and path), so two servers never share markers."""
    parts = urlsplit(url)
    return re.sub(r"[^A-Za-z0-9.-]+", "_", f"{parts.netloc}{parts.path}").strip("_") or "server"


def state_dir(spec_path: Path, url: str) -> Path:
    """Where a remote target's markers, lock and reports live: `.ndingest/` beside the spec."""
    return spec_path.parent / ".ndingest" / server_folder(url)


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
            raise RemoteError(f"GET {url}: answered {one_line(text, 60)!r}, not 0, 1 or 2")
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

