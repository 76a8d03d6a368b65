"""Where voxels go: the local store, one neuroglancer-precomputed volume per channel
(the other `Target`, a REST server, is `remote.RemoteStore`).

Layout::

    STORE/catalog.sqlite
    STORE/DATASET/PROJECT/CHANNEL/info                 (t{t}/info for time series)
    STORE/DATASET/PROJECT/CHANNEL/<scale key>/<x0-x1_y0-y1_z0-z1>
    STORE/DATASET/PROJECT/CHANNEL/<scale key>/<hex>.shard    with `[store] sharding = true`

`precomputed_info` and `tensorstore_spec` are pure; `LocalStore` opens each volume once
per process, lazily: its handles are keyed by process, so a worker Luigi forks opens its
own, and they are dropped when pickled.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .blocks import Box, Vec3, chunk_grid, sharding_spec
from .edits import Edit, read_edits
from .errors import CatalogConflict, StoreError
from .kvpath import KvPath
from .markers import atomic_write, channel_dir, flush_filesystem
from .urls import is_url

logger = logging.getLogger(__name__)

CATALOG_FILE = "catalog.sqlite"


@dataclass(frozen=True)
class VolumeRef:
    """One precomputed volume: a channel, or one time point of a time-series channel."""

    dataset: str
    project: str
    channel: str
    t: int | None = None

    @property
    def parts(self) -> tuple[str, ...]:
        tail = (f"t{self.t}",) if self.t is not None else ()
        return (self.dataset, self.project, self.channel, *tail)

    def __str__(self) -> str:
        return "/".join(self.parts)


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def scale_key(resolution_nm: tuple[float, float, float]) -> str:
    """CloudVolume's scale naming, e.g. `32_32_40`."""
    return "_".join(_number(v) for v in resolution_nm)


@dataclass(frozen=True)
class Scale:
    """One level as precomputed describes it (absolute voxel_offset at that level)."""

    resolution_nm: tuple[float, float, float]
    voxel_offset: Vec3
    size: Vec3
    chunk: Vec3
    sharded: bool = False  # one precomputed shard file per block, not one file per chunk

    @property
    def sharding(self) -> dict | None:
        """The scale's `sharding` in `info`, decided by its chunk grid alone."""
        return sharding_spec(chunk_grid(self.size, self.chunk)) if self.sharded else None


def precomputed_info(*, datatype: str, channel_type: str, scales: list[Scale]) -> dict:
    """The `info` of one channel, level 0 first; annotations are `segmentation` volumes,
    so neuroglancer and CloudVolume pick their segmentation views."""
    return {
        "@type": "neuroglancer_multiscale_volume",
        "type": "segmentation" if channel_type == "annotation" else "image",
        "data_type": datatype,
        "num_channels": 1,
        "scales": [{
            "key": scale_key(s.resolution_nm),
            "resolution": list(s.resolution_nm),
            "voxel_offset": list(s.voxel_offset),
            "size": list(s.size),
            "chunk_sizes": [list(s.chunk)],
            "encoding": "raw",
            **({"sharding": s.sharding} if s.sharded else {}),
        } for s in scales],
    }


def kvstore_spec(volume_dir: Path | KvPath) -> dict:
    """tensorstore's kvstore of a volume's folder: a local folder, or a prefix in a bucket."""
    if isinstance(volume_dir, KvPath):
        return volume_dir.bucket.kvstore_spec(volume_dir.key + "/")
    return {"driver": "file", "path": str(volume_dir) + "/"}


def tensorstore_spec(volume_dir: Path | KvPath, level: int, *, sync: bool = False) -> dict:
    """tensorstore's view of one level; writes are made durable by `LocalStore.flush`,
    once per batch, not by an fsync per chunk file (`sync`). In a bucket a PUT is durable
    when it returns."""
    return {
        "driver": "neuroglancer_precomputed",
        "kvstore": kvstore_spec(volume_dir),
        "scale_index": level,
        "open": True,
        "store_data_equal_to_fill_value": True,  # readers that refuse missing chunks work
        "recheck_cached_data": False,
        "context": {"cache_pool": {"total_bytes_limit": 0}, "file_io_sync": sync},
    }


@dataclass
class PendingWrite:
    """A tensorstore write under way; `wait()` returns once it is written (not yet flushed)."""

    future: object
    what: str

    def wait(self) -> None:
        try:
            self.future.result()
        except (ValueError, RuntimeError, IndexError) as exc:
            raise StoreError(f"{self.what}: {exc}") from exc


@dataclass
class PendingRead:
    """A tensorstore read under way; `wait()` returns the (z, y, x) voxels."""

    future: object
    what: str

    def wait(self) -> np.ndarray:
        try:
            return self.future.result().T
        except (ValueError, RuntimeError, IndexError) as exc:
            raise StoreError(f"{self.what}: {exc}") from exc


def is_sharded(handle) -> bool:
    """Whether an open precomputed level keeps its chunks in shard files."""
    return "sharding" in (handle.spec().to_json().get("scale_metadata") or {})


def write_box(handle, box: Box, array: np.ndarray, *, what: str, one_transaction: bool) -> PendingWrite:
    """Begin writing (z, y, x) voxels at `box` of an open level.

    `one_transaction` (a sharded level): the box is staged in memory and committed as one
    transaction, so each shard file it touches is written once, never read-modified-written
    per chunk; a block that is a whole shard file's cuboid is written without reading it."""
    import tensorstore as ts

    try:
        view = handle[box.begin.x:box.end.x, box.begin.y:box.end.y, box.begin.z:box.end.z, 0]
        if not one_transaction:
            return PendingWrite(view.write(array.T), what)
        txn = ts.Transaction()
        view.with_transaction(txn).write(array.T).result()  # staged, nothing on disk yet
        return PendingWrite(txn.commit_async(), what)
    except (ValueError, RuntimeError, IndexError) as exc:
        raise StoreError(f"{what}: {exc}") from exc


class Pending(Protocol):
    """A write or read under way; `wait()` finishes it (a read returns its voxels)."""

    def wait(self): ...


class Target(Protocol):
    """Where voxels go: `LocalStore`, or `remote.RemoteStore` (a REST server). Both keep
    tests/contract/test_target_contract.py.

    `builds_levels`: the target builds levels >= 1 itself (a server's setPropagate/1/),
    so the pipeline writes level 0 only. `max_in_flight`: writes `ingest.write_task`
    keeps under way at once."""

    builds_levels: bool
    max_in_flight: int

    def info(self, ref: VolumeRef) -> dict | None: ...
    def create_volume(self, ref: VolumeRef, info: dict) -> None: ...
    def forget_volume(self, ref: VolumeRef) -> None: ...
    def location(self, ref: VolumeRef) -> str: ...
    def reopened(self) -> "Target": ...
    def flush(self) -> None: ...
    def write(self, ref: VolumeRef, level: int, box: Box, array: np.ndarray) -> None: ...
    def start_write(self, ref: VolumeRef, level: int, box: Box, array: np.ndarray) -> Pending: ...
    def read(self, ref: VolumeRef, level: int, box: Box) -> np.ndarray: ...
    def start_read(self, ref: VolumeRef, level: int, box: Box) -> Pending: ...
    def edits(self, channel: VolumeRef) -> list[Edit]: ...


def parse_info(data: bytes, path: Path | KvPath) -> dict:
    """A volume's `info` from its bytes; StoreError naming `path` if it is not JSON."""
    try:
        return json.loads(data)
    except ValueError as exc:
        raise StoreError(f"{path}: unreadable: {exc}") from exc


class LocalStore:
    """A folder holding the catalog and the precomputed volumes, or a prefix in a bucket
    (`s3://bucket/prefix`, a `KvPath`) laid out alike, whose catalog is a database."""

    builds_levels = False  # the pipeline's Downsample tasks write every level
    IN_FLIGHT_IN_A_BUCKET = 4  # an object store answers each PUT after a round trip: keep several under way

    @property
    def max_in_flight(self) -> int:
        """Writes under way at once: on a local disk tensorstore finishes one while the next
        block is read; in a bucket several, so round trips overlap (and verify reads ahead)."""
        return self.IN_FLIGHT_IN_A_BUCKET if isinstance(self.path, KvPath) else 1

    def __init__(self, path: Path | KvPath | str):
        """`path`: a folder, a bucket's prefix, or its URL (a spec's `[store] path`)."""
        self.path = path if isinstance(path, KvPath) else KvPath.from_url(path) if is_url(path) else Path(path)
        self._handles: dict[tuple[VolumeRef, int, int], object] = {}
        self._sharded: dict[tuple[VolumeRef, int, int], bool] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}, "_sharded": {}}

    @property
    def catalog_path(self) -> Path:
        return self.path / CATALOG_FILE

    def volume_dir(self, ref: VolumeRef) -> Path:
        return self.path.joinpath(*ref.parts)

    def location(self, ref: VolumeRef) -> str:
        """Where the volume lies, for people: its folder."""
        return str(self.volume_dir(ref))

    def reopened(self) -> "LocalStore":
        """A fresh handle on the same folder, sharing no tensorstore handle (verify's reader)."""
        return LocalStore(self.path)

    def forget_volume(self, ref: VolumeRef) -> None:
        """Remove the volume's `info`, so the next ingest makes it again (`--restart`)."""
        (self.volume_dir(ref) / "info").unlink(missing_ok=True)

    def info(self, ref: VolumeRef) -> dict | None:
        path = self.volume_dir(ref) / "info"
        try:
            return parse_info(path.read_bytes(), path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"{path}: unreadable: {exc}") from exc

    def create_volume(self, ref: VolumeRef, info: dict) -> None:
        """Write the volume's `info`, or check the one there matches."""
        existing = self.info(ref)
        if existing is None:
            atomic_write(self.volume_dir(ref) / "info", json.dumps(info, indent=1).encode())
        elif existing != info:
            diff = sorted(k for k in info if existing.get(k) != info[k])
            raise CatalogConflict(
                f"{self.volume_dir(ref) / 'info'} exists with other {', '.join(diff)}: "
                f"{ {k: existing.get(k) for k in diff} } != { {k: info[k] for k in diff} }"
            )

    def _handle(self, ref: VolumeRef, level: int):
        import tensorstore as ts

        key = (ref, level, os.getpid())  # per process: tensorstore's threads do not survive a fork
        if key not in self._handles:
            try:
                self._handles[key] = ts.open(tensorstore_spec(self.volume_dir(ref), level)).result()
            except (ValueError, RuntimeError) as exc:
                raise StoreError(f"{self.volume_dir(ref)}: cannot open level {level}: {exc}") from exc
            self._sharded[key] = is_sharded(self._handles[key])
        return self._handles[key]

    def flush(self) -> None:
        """Make every write so far durable (one syncfs for the store's file system)."""
        flush_filesystem(self.path)

    def write(self, ref: VolumeRef, level: int, box: Box, array: np.ndarray) -> None:
        """Write (z, y, x) voxels at `box`; durable once `flush()` returns."""
        self.start_write(ref, level, box, array).wait()

    def start_write(self, ref: VolumeRef, level: int, box: Box, array: np.ndarray) -> "PendingWrite":
        """Begin writing (z, y, x) voxels at `box`; tensorstore finishes it in the
        background while the caller reads the next block. `wait()` before `flush()`.
        A sharded level's block is one shard file, committed as one transaction."""
        handle = self._handle(ref, level)
        return write_box(handle, box, array, what=f"{self.volume_dir(ref)}: cannot write {box}",
                         one_transaction=self._sharded[(ref, level, os.getpid())])

    def read(self, ref: VolumeRef, level: int, box: Box) -> np.ndarray:
        """The (z, y, x) voxels at `box`: an F-order read, transposed as a view."""
        return self.start_read(ref, level, box).wait()

    def start_read(self, ref: VolumeRef, level: int, box: Box) -> "PendingRead":
        """Begin reading `box`; tensorstore reads in the background until `wait()`."""
        handle = self._handle(ref, level)
        what = f"{self.volume_dir(ref)}: cannot read {box}"
        try:
            future = handle[box.begin.x:box.end.x, box.begin.y:box.end.y, box.begin.z:box.end.z, 0].read(order="F")
        except (ValueError, RuntimeError, IndexError) as exc:
            raise StoreError(f"{what}: {exc}") from exc
        return PendingRead(future, what)

    def edits(self, channel: VolumeRef) -> list[Edit]:
        """The cutout POSTs `ndingest serve` made to `channel` of this store, oldest first."""
        return read_edits(channel_dir(self.path, channel.dataset, channel.project, channel.channel))
