"""What every route needs: the store, its catalog, the key ring, and channel lookups.

The server opens channels from the catalog and each volume's precomputed `info`, never
from a spec, so `serve --store DIR` needs nothing else. The catalog may appear after the
server starts (an empty store, then an ingest or a resource POST): it is looked up lazily.

Reads go through tensorstore with F-order reads transposed as views (DESIGN's pitfalls);
tensorstore keeps no chunk cache here, so a read always sees what a POST just wrote.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from .. import catalog
from ..blocks import Box, Vec3, chunk_shape
from ..downsample import factors, level_extent
from ..errors import BadBox, Forbidden, NotFound, SpecError, StateConflict, StoreError
from ..fetchpolicy import FetchPolicy
from ..kvpath import KvPath
from ..targets import CATALOG_FILE, LocalStore, Scale, VolumeRef, parse_info, scale_key, tensorstore_spec
from .budget import DEFAULT_MEMORY_MIB, MiB, MemoryBudget, request_bytes

logger = logging.getLogger(__name__)

SCALING_NAMES = {0: "zslices", 1: "isotropic"}
MAX_JOBS = 2  # auto-ingest jobs running at once per store by default (`serve --max-jobs`, NDINGEST_MAX_JOBS)


@dataclass(frozen=True)
class TokenView:
    """A token with the project and dataset it opens (catalog rows as dicts)."""

    name: str
    project: dict
    dataset: dict
    public: bool

    @property
    def project_name(self) -> str:
        return self.project["project_name"]

    @property
    def dataset_name(self) -> str:
        return self.dataset["dataset_name"]


@dataclass(frozen=True)
class LevelView:
    """One level of a channel as its `info` describes it: absolute extent, chunk, scale key."""

    level: int
    key: str
    resolution_nm: tuple[float, float, float]
    extent: Box
    chunk: Vec3


def refuse_readonly(row: dict) -> None:
    """ndstore's rule: a readonly channel takes no write (cutout POST, setPropagate, window
    PATCH, DELETE, deleteChannel) but the channel PATCH that sets `readonly` to 0."""
    if row["readonly"]:
        raise Forbidden(f"channel {row['channel_name']!r} is readonly: PATCH its readonly to 0 before writing "
                        f"to it or deleting it")


@dataclass(frozen=True)
class ChannelView:
    """A channel as the server sees it: its catalog row, its volumes and their levels.

    `info` is the stored precomputed `info` (of time point `starttime` for a time series),
    or None while the channel has no volume yet; `levels` then come from the catalog."""

    token: TokenView
    row: dict
    info: dict | None
    levels: tuple[LevelView, ...]

    @property
    def name(self) -> str:
        return self.row["channel_name"]

    @property
    def channel_type(self) -> str:
        return self.row["channel_type"]

    @property
    def datatype(self) -> str:
        return self.row["channel_datatype"]

    @property
    def is_timeseries(self) -> bool:
        return self.channel_type == "timeseries"

    @property
    def readonly(self) -> bool:
        return bool(self.row["readonly"])

    def writable(self) -> "ChannelView":
        """This channel, for a write; 403 naming it when it is readonly."""
        refuse_readonly(self.row)
        return self

    @property
    def time_range(self) -> tuple[int, int]:
        """(starttime, endtime), inclusive as the catalog keeps it."""
        return (int(self.row["starttime"]), int(self.row["endtime"]))

    @property
    def window(self) -> tuple[float, float]:
        return (float(self.row["startwindow"]), float(self.row["endwindow"]))

    def ref(self, t: int | None = None) -> VolumeRef:
        """The volume of time point `t` (a time series), or the channel's only volume."""
        ds, pr = self.token.dataset_name, self.token.project_name
        if self.is_timeseries:
            return VolumeRef(ds, pr, self.name, self.time_range[0] if t is None else t)
        return VolumeRef(ds, pr, self.name)

    @property
    def refs(self) -> list[VolumeRef]:
        t0, t1 = self.time_range
        return [self.ref(t) for t in range(t0, t1 + 1)] if self.is_timeseries else [self.ref()]

    def level(self, res: str | int) -> LevelView:
        """Level `res` (a URL part); 400 naming the levels that exist otherwise."""
        try:
            index = int(res)
        except (TypeError, ValueError):
            raise BadBox(f"resolution {res!r} is not a whole number; channel {self.name} has levels "
                         f"0..{len(self.levels) - 1}") from None
        if not 0 <= index < len(self.levels):
            raise BadBox(f"resolution {index} does not exist; channel {self.name} has levels 0..{len(self.levels) - 1}")
        return self.levels[index]

    def parse_box(self, x: str, y: str, z: str, level: int) -> Box:
        """The box of three "lo,hi" URL parts (half-open, absolute voxels at `level`),
        which must lie inside that level's offset..offset+size; 400 otherwise."""
        extent = self.level(level).extent
        lo, hi = [], []
        for axis, text in zip("xyz", (x, y, z)):
            b, e = parse_range(text, axis)
            low, high = getattr(extent.begin, axis), getattr(extent.end, axis)
            if not (low <= b < e <= high):
                raise BadBox(f"{axis} range {b},{e} lies outside level {level}'s {axis} range {low},{high} "
                             f"(half-open, non-empty, absolute voxels)")
            lo.append(b)
            hi.append(e)
        return Box(Vec3(*lo), Vec3(*hi))

    def parse_index(self, text: str, axis: str, level: int) -> int:
        """One absolute coordinate on `axis` (a slice's fixed plane), inside the level; 400 otherwise."""
        value = parse_int(text, axis)
        extent = self.level(level).extent
        low, high = getattr(extent.begin, axis), getattr(extent.end, axis)
        if not low <= value < high:
            raise BadBox(f"{axis} = {value} lies outside level {level}'s {axis} range {low},{high}")
        return value

    def parse_times(self, text: str | None) -> range:
        """A "t0,t1" URL part (half-open) inside starttime..endtime+1; none means the
        first time point (ndstore's default time range).

        A channel that is not a time series ignores a well-formed range, as ndstore did:
        ndio sends `0,1` with every cutout GET and `0,0` with every blosc POST."""
        t0, t1 = self.time_range
        if text is None:
            return range(t0, t0 + 1)
        b, e = parse_range(text, "t")
        if not self.is_timeseries:
            if b > e:
                raise BadBox(f"time range {b},{e} begins after it ends")
            return range(t0, t0 + 1)
        if not (t0 <= b < e <= t1 + 1):
            raise BadBox(f"time range {b},{e} lies outside channel {self.name}'s time range {t0},{t1 + 1} "
                         f"(half-open, non-empty)")
        return range(b, e)


def parse_int(text: str, what: str) -> int:
    try:
        if not text.strip().lstrip("-").isdigit():
            raise ValueError
        return int(text)
    except ValueError:
        raise BadBox(f"{what} {text!r} is not a whole number") from None


def parse_range(text: str, axis: str) -> tuple[int, int]:
    """ndstore's "lo,hi" (half-open); 400 naming the axis when malformed."""
    parts = text.split(",")
    if len(parts) != 2:
        raise BadBox(f"{axis} range {text!r} is not lo,hi")
    return parse_int(parts[0], f"{axis} range {text!r}:"), parse_int(parts[1], f"{axis} range {text!r}:")


def catalog_levels(dataset: dict) -> tuple[LevelView, ...]:
    """Levels 0..scalinglevels as the catalog's dataset row implies them (DESIGN's level
    rule and ndstore's cuboids): what ingest writes in each channel's `info`, and what a
    channel with no volume yet answers with."""
    scaling = SCALING_NAMES[int(dataset["scalingoption"])]
    res = (float(dataset["xvoxelres"]), float(dataset["yvoxelres"]), float(dataset["zvoxelres"]))
    extent = Box.from_shape(Vec3(*(int(dataset[f"{a}offset"]) for a in "xyz")),
                            Vec3(*(int(dataset[f"{a}imagesize"]) for a in "xyz")))
    f = factors(scaling)
    out = []
    for level in range(int(dataset["scalinglevels"]) + 1):
        lres = (res[0] * f.x**level, res[1] * f.y**level, res[2] * f.z**level)
        out.append(LevelView(level, scale_key(lres), lres, level_extent(extent, level, scaling),
                             chunk_shape(scaling, res, level)))
    return tuple(out)


def catalog_scales(dataset: dict) -> list[Scale]:
    """The precomputed scales of a new channel of `dataset` (what ingest writes in `info`)."""
    return [Scale(lv.resolution_nm, lv.extent.begin, lv.extent.shape, lv.chunk) for lv in catalog_levels(dataset)]


def info_levels(info: dict) -> tuple[LevelView, ...]:
    """The levels a precomputed `info` lists, level 0 first."""
    out = []
    for level, scale in enumerate(info["scales"]):
        res = tuple(float(v) for v in scale["resolution"])
        begin = Vec3(*(int(v) for v in scale["voxel_offset"]))
        extent = Box.from_shape(begin, Vec3(*(int(v) for v in scale["size"])))
        out.append(LevelView(level, scale["key"], (res[0], res[1], res[2]), extent,
                             Vec3(*(int(v) for v in scale["chunk_sizes"][0]))))
    return tuple(out)


BUCKET_INFO_SECONDS = 2.0  # how long a bucket volume's `info` is taken as read (a channel made again: seen after)


class VolumeHandles:
    """tensorstore handles on every (volume, level), opened once per process and reopened
    when the volume's `info` changes (a channel deleted and made again), with no chunk
    cache, so every read (a POST's read-modify-write too) starts from what is on disk."""

    def __init__(self, store: Path | KvPath):
        self.store = store  # as ServerContext.open made it
        self._handles: dict = {}
        self._infos: dict[VolumeRef, tuple[float, bytes | None]] = {}  # a bucket's: (when read, bytes)
        self._lock = threading.Lock()

    def volume_dir(self, ref: VolumeRef) -> Path | KvPath:
        return self.store.joinpath(*ref.parts)

    def _info_version(self, ref: VolumeRef) -> tuple | None:
        """What changes when the volume's `info` is written again; None while it has none.
        In a bucket, the object's bytes (one GET): an object has no inode."""
        if isinstance(self.store, KvPath):
            data = self.bucket_info(ref)
            return None if data is None else (hashlib.sha256(data).hexdigest(),)
        try:
            st = (self.volume_dir(ref) / "info").stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def bucket_info(self, ref: VolumeRef) -> bytes | None:
        """A bucket volume's `info` (None: none), read again once BUCKET_INFO_SECONDS have
        passed: a cutout used it three times, each a GET (a round trip to the bucket)."""
        now = time.monotonic()
        seen = self._infos.get(ref)
        if seen is not None and now - seen[0] < BUCKET_INFO_SECONDS:
            return seen[1]
        try:
            data = (self.volume_dir(ref) / "info").read_bytes()
        except FileNotFoundError:
            data = None
        self._infos[ref] = (now, data)
        return data

    def get(self, ref: VolumeRef, level: int):
        """The handle, or None while the volume has no `info` (not created yet)."""
        import tensorstore as ts

        version = self._info_version(ref)
        if version is None:
            return None
        key = (ref, level, version, os.getpid())  # per process: none survives a fork
        handle = self._handles.get(key)
        if handle is None:
            try:
                handle = ts.open(tensorstore_spec(self.volume_dir(ref), level)).result()
            except (ValueError, RuntimeError) as exc:
                raise StoreError(f"{self.volume_dir(ref)}: cannot open level {level}: {exc}") from exc
            with self._lock:
                self._handles = {k: v for k, v in self._handles.items() if k[:2] != (ref, level)}
                self._handles[key] = handle
        return handle

    def _existing(self, ref: VolumeRef, level: int):
        handle = self.get(ref, level)
        if handle is None:
            raise StateConflict(f"channel {ref.channel} has no volume at {ref} yet; create the channel "
                                f"through the resource API or an ingest first")
        return handle

    def read(self, ref: VolumeRef, level: int, box: Box) -> np.ndarray:
        """(z, y, x) voxels of `box`: an F-order read transposed as a view."""
        x, y, z = (slice(b, e) for b, e in zip(box.begin, box.end))
        handle = self._existing(ref, level)
        try:
            return handle[x, y, z, 0].read(order="F").result().T
        except (ValueError, RuntimeError, IndexError) as exc:
            raise StoreError(f"{self.volume_dir(ref)}: cannot read {box} at level {level}: {exc}") from exc

    def write(self, ref: VolumeRef, level: int, box: Box, array: np.ndarray) -> None:
        """Write (z, y, x) voxels at `box`; durable after the caller's flush."""
        x, y, z = (slice(b, e) for b, e in zip(box.begin, box.end))
        handle = self._existing(ref, level)
        try:
            handle[x, y, z, 0].write(array.T).result()
        except (ValueError, RuntimeError, IndexError) as exc:
            raise StoreError(f"{self.volume_dir(ref)}: cannot write {box} at level {level}: {exc}") from exc


@dataclass
class ServerContext:
    """The store a server answers for; one per app, shared by every request (thread-safe)."""

    store: Path | KvPath  # a folder, or a bucket's prefix (read only: `read_only`)
    keyring: object | None = None  # keys.KeyRing, or None: no --api-keys given
    max_body: int = 1 << 30
    catalog_url: str | None = None  # a postgresql:// catalog (`serve --catalog`); None: STORE/catalog.sqlite
    max_jobs: int = MAX_JOBS  # auto-ingest jobs running at once on the store (`serve --max-jobs`)
    fetch_policy: FetchPolicy = field(default_factory=FetchPolicy)  # what auto-ingest jobs may read
    _engine: sa.Engine | None = field(default=None, repr=False)
    _engine_file: tuple[int, int] | None = field(default=None, repr=False)  # the SQLite file it opened
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    handles: VolumeHandles = field(init=False, repr=False)
    # what requests' voxels may hold at once (serve --memory less malloc's kept heap: create_app)
    budget: MemoryBudget = field(default_factory=lambda: MemoryBudget(request_bytes(DEFAULT_MEMORY_MIB * MiB)),
                                 repr=False)

    def __post_init__(self) -> None:
        self.handles = VolumeHandles(self.store)

    @classmethod
    def open(cls, store: Path, *, api_keys: Path | None = None, max_body: int = 1 << 30,
             catalog_url: str | None = None, max_jobs: int = MAX_JOBS) -> "ServerContext":
        keyring = None
        if api_keys is not None:
            from .keys import KeyRing
            keyring = KeyRing.load(Path(api_keys))
        if catalog_url is not None:
            catalog.catalog_url(catalog_url)  # a SpecError naming it now, not at the first request
        elif isinstance(store, KvPath):
            raise SpecError(f"{store}: a bucket store's catalog is a database; give its postgresql:// URL "
                            f"(serve --catalog, or NDINGEST_CATALOG)")
        return cls(store if isinstance(store, KvPath) else Path(store), keyring, max_body, catalog_url, max_jobs)

    @property
    def read_only(self) -> bool:
        """A bucket store is served for reading only: writes lock chunks with flock, which
        an object store has not."""
        return isinstance(self.store, KvPath)

    # --- catalog ---------------------------------------------------------------------------
    @property
    def catalog_path(self) -> Path:
        return self.store / CATALOG_FILE

    @property
    def catalog_name(self) -> str:
        """How messages name the catalog: its file, or its URL without the password."""
        return catalog.describe(catalog.catalog_url(self.catalog_url or self.catalog_path))

    def _catalog_file(self) -> tuple[int, int] | None:
        """The SQLite catalog file's (device, inode); None for a database URL or no file yet."""
        if self.catalog_url is not None:
            return None
        try:
            st = self.catalog_path.stat()
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def _open_engine(self, *, create: bool) -> None:
        """(Re)open the pooled engine (under `_lock`), closing the pool it replaces."""
        old = self._engine
        self._engine = catalog.engine_for(self.catalog_url or self.catalog_path, create=create, pooled=True)
        self._engine_file = self._catalog_file()
        if old is not None:
            old.dispose()

    @property
    def engine(self) -> sa.Engine | None:
        """The catalog's engine, or None while the store has no catalog yet. Its connections
        are pooled; a SQLite catalog file replaced or removed under the server is opened
        anew, so no pooled connection reads a file that is gone."""
        if self._engine is None or self._catalog_file() != self._engine_file:
            with self._lock:
                if self._engine is None or self._catalog_file() != self._engine_file:
                    self._open_engine(create=False)
        return self._engine

    def engine_for_writes(self) -> sa.Engine:
        """The catalog's engine, creating the catalog (and its tables) if needed."""
        with self._lock:
            if self._engine is None or self._catalog_file() != self._engine_file or \
                    (self.catalog_url is None and self._engine_file is None):
                self._open_engine(create=True)
            else:
                catalog.metadata.create_all(self._engine)
        return self._engine

    def rows(self, table: sa.Table, *where) -> list[dict]:
        """Rows of a catalog table (none when the catalog or the table does not exist yet)."""
        engine = self.engine
        if engine is None:
            return []
        try:
            with engine.connect() as conn:
                return [dict(r) for r in conn.execute(sa.select(table).where(*where)).mappings()]
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            if "no such table" in str(exc.orig) or "does not exist" in str(exc.orig):  # SQLite, PostgreSQL
                return []
            raise StoreError(f"catalog {self.catalog_name}: {exc.orig}") from exc

    def _one(self, table: sa.Table, *where) -> dict | None:
        found = self.rows(table, *where)
        return found[0] if found else None

    # --- keys ------------------------------------------------------------------------------
    def require_key(self, request):
        """Who sent the request's key (`keys.Holder`: its id and its name in the keys
        file), or None when the server has no key file; 401 without a key, 403 with a wrong one."""
        if self.keyring is None:
            return None
        return self.keyring.holder(request.headers.get("authorization"))

    def readable_token(self, name: str, request) -> TokenView:
        """The token a read names, its key checked before the token is looked up: with keys,
        a name that is not a public token answers 401 (no key) or 403 (a wrong one) whether
        it exists or not, so no answer tells a private name from a missing one; with a valid
        key (or no key file) a missing one is 404."""
        if self.keyring is not None and not self.is_public_token(name):
            self.require_key(request)
        return self.token(name)

    def is_public_token(self, name: str) -> bool:
        t = catalog.tokens.c
        return bool(self.rows(catalog.tokens, t.token_name == name, t.public == 1))

    def readable_project(self, project: str, request) -> None:
        """The key check of a read by project name (the precomputed route), before the
        project is looked up: a project without a public token needs a key when keys are
        configured, whether it exists or not."""
        if self.keyring is not None and not self.project_is_public(project):
            self.require_key(request)

    # --- lookups ---------------------------------------------------------------------------
    def token(self, name: str) -> TokenView:
        """The token `name` with its project and dataset; 404 naming it otherwise."""
        row = self._one(catalog.tokens, catalog.tokens.c.token_name == name)
        if row is None:
            raise NotFound(f"token {name!r} does not exist")
        project = self._one(catalog.projects, catalog.projects.c.project_name == row["project"])
        if project is None:
            raise NotFound(f"token {name!r} names project {row['project']!r}, which does not exist")
        dataset = self._one(catalog.datasets, catalog.datasets.c.dataset_name == project["dataset"])
        if dataset is None:
            raise NotFound(f"project {project['project_name']!r} names dataset {project['dataset']!r}, "
                           f"which does not exist")
        return TokenView(name, project, dataset, bool(row["public"]))

    def channel_rows(self, project: str) -> list[dict]:
        c = catalog.channels.c
        return sorted(self.rows(catalog.channels, c.project == project), key=lambda r: r["channel_name"])

    def channel(self, token: TokenView, name: str) -> ChannelView:
        """Channel `name` of the token's project, its `info` read from the store; 404 otherwise."""
        c = catalog.channels.c
        row = self._one(catalog.channels, c.project == token.project_name, c.channel_name == name)
        if row is None:
            names = [r["channel_name"] for r in self.channel_rows(token.project_name)]
            raise NotFound(f"channel {name!r} does not exist in token {token.name!r}; "
                           f"channels: {', '.join(names) or 'none'}")
        return self.channel_view(token, row)

    def channel_view(self, token: TokenView, row: dict) -> ChannelView:
        view = ChannelView(token, row, None, ())
        info = self.volume_info(view.ref())
        levels = info_levels(info) if info is not None else catalog_levels(token.dataset)
        return ChannelView(token, row, info, levels)

    def channels(self, token: TokenView) -> list[ChannelView]:
        return [self.channel_view(token, row) for row in self.channel_rows(token.project_name)]

    def channel_by_path(self, dataset: str, project: str, channel: str) -> dict:
        """The catalog row of DATASET/PROJECT/CHANNEL (the precomputed route); 404 otherwise."""
        pr = self._one(catalog.projects, catalog.projects.c.project_name == project)
        c = catalog.channels.c
        row = self._one(catalog.channels, c.project == project, c.channel_name == channel) if pr else None
        if pr is None or pr["dataset"] != dataset or row is None:
            raise NotFound(f"no channel {dataset}/{project}/{channel} in the catalog")
        return row

    def project_is_public(self, project: str) -> bool:
        """A project reads without a key when one of its tokens is public (ndstore reaches
        projects only through tokens)."""
        t = catalog.tokens.c
        return bool(self.rows(catalog.tokens, t.project == project, t.public == 1))

    # --- volumes ---------------------------------------------------------------------------
    def volume_dir(self, ref: VolumeRef) -> Path | KvPath:
        return LocalStore(self.store).volume_dir(ref)

    def volume_info(self, ref: VolumeRef) -> dict | None:
        """The volume's precomputed `info`, or None while it has none (as the pipeline reads it)."""
        if isinstance(self.store, KvPath):  # read at most every BUCKET_INFO_SECONDS
            data = self.handles.bucket_info(ref)
            return None if data is None else parse_info(data, self.volume_dir(ref) / "info")
        return LocalStore(self.store).info(ref)

    def read(self, channel: ChannelView, level: int, box: Box, t: int | None = None) -> np.ndarray:
        """The (z, y, x) voxels of `box` at `level` (time point `t` of a time series).

        An F-order read transposed as a view (not C-contiguous: encoders copy if they must).
        A volume not written yet reads as zeros, as ndstore answers for an empty channel."""
        ref = channel.ref(t)
        if self.handles.get(ref, level) is None:
            return np.zeros(tuple(reversed(box.shape)), dtype=channel.datatype)
        return self.handles.read(ref, level, box)

    def read_times(self, channel: ChannelView, level: int, box: Box, times: range) -> np.ndarray:
        """(t, z, y, x) for a time series, (z, y, x) otherwise: the array a cutout answers."""
        if not channel.is_timeseries:
            return self.read(channel, level, box)
        return np.stack([self.read(channel, level, box, t) for t in times])

    def parse_box(self, channel: ChannelView, x: str, y: str, z: str, level: int) -> Box:
        return channel.parse_box(x, y, z, level)


ND_PREFIXES = ("/nd/sd/", "/ocp/ca/")


def slash_optional(path: str, endpoint, *, methods: tuple[str, ...] = ("GET",), name: str | None = None) -> list:
    """`path` with and without its trailing slash (no redirect: a redirected POST loses its body)."""
    from starlette.routing import Route

    bare = path.rstrip("/")
    return [Route(bare, endpoint, methods=list(methods), name=name),
            Route(bare + "/", endpoint, methods=list(methods))]


def nd_routes(path: str, endpoint, *, methods: tuple[str, ...] = ("GET",), name: str | None = None) -> list:
    """Routes for an ndstore path (relative, e.g. "{token}/info/") under `/nd/sd/` and
    `/ocp/ca/` (the tutorial's links), trailing slash optional."""
    out = []
    for i, prefix in enumerate(ND_PREFIXES):
        out += slash_optional(prefix + path.lstrip("/"), endpoint, methods=methods, name=name if i == 0 else None)
    return out
