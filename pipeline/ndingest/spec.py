"""Load and validate a spec file into frozen dataclasses.

TOML is parsed once here; everything downstream gets typed objects, never the dict,
so a misspelt key is an error naming it rather than a silent default.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .blocks import Vec3
from .errors import SpecError
from .urls import is_url, names_web_slices, store_url

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"^[A-Za-z0-9_]+$")
# Names the store (its folders) or the REST API (its routes) use; refused in any case,
# since a case-insensitive file system would make `_Markers` the markers folder.
RESERVED_NAMES = ("_markers", "_reports", "_jobs", "info", "createChannel", "deleteChannel", "public_tokens",
                  "public_datasets", "autoIngest", "resource", "ocp", "nd")
CHANNEL_TYPES = ("image", "annotation", "timeseries")
DATATYPES = ("uint8", "uint16", "uint32", "uint64", "float32")
SCALING_OPTIONS = ("zslices", "isotropic")
AXES_RE = re.compile(r"^t?[xyz]{3}$|^[xyz]{3}t$")

JOBS = "_jobs"  # under the store: an auto-ingest job's spec (TOKEN.toml) and its folder (TOKEN/)
DEFAULT_BLOCK_CHUNKS = (2, 2, 4)
DEFAULT_BLOCKS_PER_TASK = 64


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    offset_xyz: Vec3
    voxel_resolution_nm: tuple[float, float, float]
    scaling_option: str
    scaling_levels: int | str  # an integer >= 0, or "auto"
    public: bool = True


@dataclass(frozen=True)
class ProjectSpec:
    name: str
    token: str
    public: bool = True


@dataclass(frozen=True)
class ChannelSpec:
    name: str
    type: str
    source: str  # resolved path, glob, or "file.h5:/dataset"
    datatype: str | None = None
    window_range: tuple[float, float] | None = None
    readonly: bool = False
    axes: str | None = None
    z_range: tuple[int, int] | None = None  # a slice pattern's z numbers, [first, stop)
    t_range: tuple[int, int] | None = None  # and its t numbers, for a time series


@dataclass(frozen=True)
class StoreSpec:
    path: Path | str | None  # a folder, or an object store's URL (s3://bucket/prefix), opened by the store
    url: str | None = None
    catalog: str | None = None  # a postgresql:// or sqlite:/// URL; None: the store's catalog.sqlite
    sharding: bool = False  # neuroglancer_uint64_sharded_v1, one shard file per block (blocks.sharding_spec)


@dataclass(frozen=True)
class IngestOptions:
    """How blocks are cut and grouped; does not change what is stored."""

    block_chunks: Vec3 = Vec3(*DEFAULT_BLOCK_CHUNKS)
    blocks_per_task: int = DEFAULT_BLOCKS_PER_TASK


@dataclass(frozen=True)
class Spec:
    path: Path
    dataset: DatasetSpec
    project: ProjectSpec
    channels: dict[str, ChannelSpec] = field(hash=False)
    store: StoreSpec
    ingest: IngestOptions = IngestOptions()


def _check_keys(table: dict, allowed: set[str], where: str, path: Path) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        keys = ", ".join(f"{where}.{k}" if where else k for k in unknown)
        raise SpecError(f"{path}: unknown key {keys} (allowed: {', '.join(sorted(allowed))})")


def _require(table: dict, key: str, where: str, path: Path) -> Any:
    if key not in table:
        raise SpecError(f"{path}: missing key {where}.{key}")
    return table[key]


def _name(value: Any, key: str, path: Path) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise SpecError(
            f"{path}: {key} = {value!r} is not a valid name (ASCII letters, digits and _ only)"
        )
    reserved = next((r for r in RESERVED_NAMES if r.lower() == value.lower()), None)
    if reserved is not None:
        raise SpecError(f"{path}: {key} = {value!r} is reserved: the store or the REST API uses {reserved!r} "
                        f"(reserved in any case: {', '.join(RESERVED_NAMES)})")
    return value


def _triple(value: Any, key: str, path: Path, *, kind: type, minimum: float, strict: bool = False) -> tuple:
    ok = isinstance(value, list) and len(value) == 3
    ok = ok and all(isinstance(v, (int, float) if kind is float else int) and not isinstance(v, bool) for v in value)
    if not ok:
        raise SpecError(f"{path}: {key} = {value!r} must be three {'numbers' if kind is float else 'integers'} [x, y, z]")
    for v in value:
        if v < minimum or (strict and v == minimum):
            bound = f"> {minimum}" if strict else f">= {minimum}"
            raise SpecError(f"{path}: {key} = {value!r}: every value must be {bound}")
    return tuple(kind(v) for v in value)


def _bool(value: Any, key: str, path: Path) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"{path}: {key} = {value!r} must be true or false")
    return value


def _dataset(table: dict, path: Path) -> DatasetSpec:
    allowed = {"name", "offset", "voxel_resolution", "scaling_option", "scaling_levels", "public"}
    _check_keys(table, allowed, "dataset", path)
    option = table.get("scaling_option", "zslices")
    if option not in SCALING_OPTIONS:
        raise SpecError(f"{path}: dataset.scaling_option = {option!r} must be one of {', '.join(SCALING_OPTIONS)}")
    levels = table.get("scaling_levels", 0)
    if not (levels == "auto" or (isinstance(levels, int) and not isinstance(levels, bool) and levels >= 0)):
        raise SpecError(f"{path}: dataset.scaling_levels = {levels!r} must be an integer >= 0 or \"auto\"")
    return DatasetSpec(
        name=_name(_require(table, "name", "dataset", path), "dataset.name", path),
        offset_xyz=Vec3(*_triple(table.get("offset", [0, 0, 0]), "dataset.offset", path, kind=int, minimum=0)),
        voxel_resolution_nm=_triple(
            _require(table, "voxel_resolution", "dataset", path), "dataset.voxel_resolution", path,
            kind=float, minimum=0, strict=True,
        ),
        scaling_option=option,
        scaling_levels=levels,
        public=_bool(table.get("public", True), "dataset.public", path),
    )


def _project(table: dict, path: Path) -> ProjectSpec:
    _check_keys(table, {"name", "token", "public"}, "project", path)
    name = _name(_require(table, "name", "project", path), "project.name", path)
    return ProjectSpec(
        name=name,
        token=_name(table.get("token", name), "project.token", path),
        public=_bool(table.get("public", True), "project.public", path),
    )


def _resolve_source(source: Any, key: str, base: Path) -> str:
    if not isinstance(source, str) or not source:
        raise SpecError(f"{base}: {key} = {source!r} must be a path")
    if "://" in source:  # a URL (zarr://file:///abs, precomputed://file:///abs): taken as written
        if "file://" in source and not source.rpartition("file://")[2].startswith("/"):
            raise SpecError(f"{base}: {key} = {source!r}: a file:// URL needs an absolute path "
                            f"(file:///abs/path); write a relative folder as a plain path")
        return source
    file_part, sep, inner = source.partition(":/") if ":/" in source and "://" not in source else (source, "", "")
    resolved = str((base.parent / os.path.expanduser(file_part)).resolve()) if not os.path.isabs(file_part) else file_part
    if "{z" in resolved and not sep:  # a local slice pattern (`pngs/{z:04d}.png`): read as a file URL
        return "file://" + urllib.parse.quote(resolved, safe="/{}:")
    return f"{resolved}:/{inner}" if sep else resolved


def _channel(name: str, table: Any, path: Path) -> ChannelSpec:
    where = f"channels.{name}"
    _name(name, where, path)
    if not isinstance(table, dict):
        raise SpecError(f"{path}: {where} must be a table")
    _check_keys(table, {"type", "source", "datatype", "window_range", "readonly", "axes", "z_range", "t_range"},
                where, path)
    ctype = _require(table, "type", where, path)
    if ctype not in CHANNEL_TYPES:
        raise SpecError(f"{path}: {where}.type = {ctype!r} must be one of {', '.join(CHANNEL_TYPES)}")
    datatype = table.get("datatype")
    if datatype is not None and datatype not in DATATYPES:
        raise SpecError(f"{path}: {where}.datatype = {datatype!r} must be one of {', '.join(DATATYPES)}")
    window = table.get("window_range")
    if window is not None:
        if not (isinstance(window, list) and len(window) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in window)
                and window[0] <= window[1]):
            raise SpecError(f"{path}: {where}.window_range = {window!r} must be [low, high] with low <= high")
        window = (window[0], window[1])
    axes = table.get("axes")
    if axes is not None and (not isinstance(axes, str) or not AXES_RE.fullmatch(axes) or len(set(axes)) != len(axes)):
        raise SpecError(f"{path}: {where}.axes = {axes!r} must name x, y, z (and t) once each, e.g. \"zyx\" or \"tzyx\"")
    source = _resolve_source(_require(table, "source", where, path), f"{where}.source", path)
    _check_slice_pattern(source, table, where, path)
    return ChannelSpec(
        name=name,
        type=ctype,
        source=source,
        datatype=datatype,
        window_range=window,
        readonly=_bool(table.get("readonly", False), f"{where}.readonly", path),
        axes=axes,
        z_range=_range(table.get("z_range"), f"{where}.z_range", path),
        t_range=_range(table.get("t_range"), f"{where}.t_range", path),
    )


def _check_slice_pattern(source: str, table: dict, where: str, path: Path) -> None:
    """z_range goes with a slice pattern (`.../{z:04d}.png`) and only with one."""
    if names_web_slices(source) and "z_range" not in table:
        raise SpecError(f"{path}: {where}.source is a slice pattern; {where}.z_range = [first, stop) names its "
                        f"files")
    for key in ("z_range", "t_range"):
        if key in table and not names_web_slices(source):
            raise SpecError(f"{path}: {where}.{key} applies to a slice pattern source (.../{{z:04d}}.png) only")


def _range(value: Any, key: str, path: Path) -> tuple[int, int] | None:
    """A slice pattern's numbers, [first, stop) like Python's range: [1000, 1100] is 100 files."""
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                for v in value) and 0 <= value[0] < value[1]):
        raise SpecError(f"{path}: {key} = {value!r} must be [first, stop) integers with 0 <= first < stop")
    return (value[0], value[1])


def _store(table: dict, path: Path) -> StoreSpec:
    _check_keys(table, {"path", "url", "catalog", "sharding"}, "store", path)
    sharding = _bool(table.get("sharding", False), "store.sharding", path)
    if "url" in table:
        if sharding:
            raise SpecError(f"{path}: store.sharding = true with store.url: a server's volumes are laid out by "
                            f"the server, one file per chunk; remove store.sharding")
        if "path" in table:
            raise SpecError(f"{path}: store.path and store.url both given; a spec writes to one store")
        if "catalog" in table:
            raise SpecError(f"{path}: store.catalog = {_masked(table['catalog'])!r} with store.url: the server "
                            f"keeps its own catalog; remove store.catalog")
        return StoreSpec(path=None, url=_server_url(table["url"], path))
    raw = _require(table, "path", "store", path)
    if not isinstance(raw, str) or not raw:
        raise SpecError(f"{path}: store.path = {raw!r} must be a folder")
    catalog = _catalog_url(table["catalog"], path) if "catalog" in table else None
    if is_url(raw):
        if catalog is None:
            raise SpecError(f"{path}: store.path = {raw!r} needs store.catalog: an object store keeps no catalog "
                            f"file (\"postgresql://user:password@host:5432/database\", shared by every host)")
        try:
            return StoreSpec(path=store_url(raw), catalog=catalog, sharding=sharding)
        except SpecError as exc:
            raise SpecError(f"{path}: store.path = {raw!r}: {exc}") from exc
    if "://" in raw:
        raise SpecError(f"{path}: store.path = {raw!r}: a local folder or s3://bucket/prefix "
                        f"(gs:// is not supported yet)")
    return StoreSpec(path=(path.parent / os.path.expanduser(raw)).resolve(), catalog=catalog, sharding=sharding)


CATALOG_URL_RE = re.compile(r"^postgresql(\+psycopg)?://[^/\s]*/[^/\s?#]+(\?\S*)?$")
SQLITE_URL_PREFIX = "sqlite:///"


def _masked(value: Any) -> Any:
    """`value` with a URL's password as ***, so an error line never shows it."""
    return re.sub(r"(://[^/:@\s]*):[^/@\s]*@", r"\1:***@", value) if isinstance(value, str) else value


def _catalog_url(value: Any, path: Path) -> str:
    """A catalog by URL: PostgreSQL (hosts sharing a store share it), or a SQLite file
    (`sqlite:///rel/path` resolves against the spec's folder, `sqlite:////abs/path`)."""
    if isinstance(value, str) and CATALOG_URL_RE.fullmatch(value):
        return value
    if isinstance(value, str) and value.startswith(SQLITE_URL_PREFIX) and len(value) > len(SQLITE_URL_PREFIX) \
            and "?" not in value:
        file = value[len(SQLITE_URL_PREFIX):]
        return SQLITE_URL_PREFIX + str((path.parent / os.path.expanduser(file)).resolve())
    raise SpecError(f"{path}: store.catalog = {_masked(value)!r} must be a postgresql:// URL "
                    f"(\"postgresql://user:password@host:5432/database\") or a sqlite:/// file")


URL_RE = re.compile(r"^https?://[^/\s?#]+(/[^\s?#]*)?$")


def _server_url(value: Any, path: Path) -> str:
    """An ndstore-compatible server's base URL, e.g. "http://host:port/nd" (no trailing
    slash): `/sd/...` and `/resource/...` are appended to it."""
    if not isinstance(value, str) or not URL_RE.fullmatch(value):
        raise SpecError(f"{path}: store.url = {value!r} must be a server's http:// or https:// URL, "
                        f"e.g. \"http://host:8080/nd\"")
    return value.rstrip("/")


LEGACY_INGEST_KEYS = {"blocks_per_shard": "blocks_per_task"}  # old name: new name


def _ingest(table: dict, path: Path) -> IngestOptions:
    for old, new in LEGACY_INGEST_KEYS.items():
        if old in table:
            if new in table:
                raise SpecError(f"{path}: ingest.{old} and ingest.{new} both given; {old} is {new}'s old name")
            logger.warning("%s: ingest.%s is now called ingest.%s (read as such)", path, old, new)
            table = {**{k: v for k, v in table.items() if k != old}, new: table[old]}
    _check_keys(table, {"block_chunks", "blocks_per_task"}, "ingest", path)
    chunks = _triple(table.get("block_chunks", list(DEFAULT_BLOCK_CHUNKS)), "ingest.block_chunks", path,
                     kind=int, minimum=1)
    per_task = table.get("blocks_per_task", DEFAULT_BLOCKS_PER_TASK)
    if not isinstance(per_task, int) or isinstance(per_task, bool) or per_task < 1:
        raise SpecError(f"{path}: ingest.blocks_per_task = {per_task!r} must be an integer >= 1")
    return IngestOptions(block_chunks=Vec3(*chunks), blocks_per_task=per_task)


def _check_sharding_blocks(doc: dict, path: Path) -> None:
    """With sharding a block is one shard file's cuboid of chunks, which each level's
    grid decides (blocks.shard_cuboid), so a block size given by hand is refused."""
    store, ingest = doc["store"], doc.get("ingest")
    if store.get("sharding") is True and isinstance(ingest, dict) and "block_chunks" in ingest:
        raise SpecError(f"{path}: ingest.block_chunks = {ingest['block_chunks']!r} with store.sharding = true: "
                        f"a sharded block is one shard file's cuboid of chunks, set per level; "
                        f"remove ingest.block_chunks")


def parse_spec(text: str, path: Path) -> Spec:
    """Validate the TOML text of a spec whose file is `path` (paths resolve against it)."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from exc
    _check_keys(doc, {"dataset", "project", "channels", "store", "ingest"}, "", path)
    for key in ("dataset", "project", "channels", "store"):
        if not isinstance(doc.get(key), dict):
            raise SpecError(f"{path}: missing table [{key}]")
    if not doc["channels"]:
        raise SpecError(f"{path}: [channels] names no channel")
    _check_sharding_blocks(doc, path)
    return Spec(
        path=path,
        dataset=_dataset(doc["dataset"], path),
        project=_project(doc["project"], path),
        channels={name: _channel(name, table, path) for name, table in doc["channels"].items()},
        store=_store(doc["store"], path),
        ingest=_ingest(doc.get("ingest", {}), path),
    )


def load_spec(path: str | os.PathLike) -> Spec:
    """Read and validate the spec at `path`; cached per file version (Luigi asks often)."""
    p = Path(path).expanduser().resolve()
    try:
        stat = p.stat()
    except OSError as exc:
        raise SpecError(f"{p}: cannot read spec: {exc.strerror}") from exc
    return _load_cached(p, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _load_cached(path: Path, mtime_ns: int, size: int) -> Spec:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read spec: {exc}") from exc
    return parse_spec(text, path)


def job_folder(spec: str | os.PathLike) -> Path | None:
    """STORE/_jobs/TOKEN/ for a job's spec (STORE/_jobs/TOKEN.toml); None for any other spec."""
    spec = Path(spec).resolve()
    if spec.parent.name != JOBS or spec.suffix != ".toml":
        return None
    return spec.parent / spec.stem
