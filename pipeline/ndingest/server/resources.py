"""The resource API (datasets, projects, tokens, channels) and ndio's createChannel /
deleteChannel, over the catalog and the store.

    /nd/resource/dataset/{ds}/
    /nd/resource/dataset/{ds}/project/{pr}/
    /nd/resource/dataset/{ds}/project/{pr}/channel/{ch}/
    /nd/resource/dataset/{ds}/project/{pr}/token/{tk}/

GET answers the catalog row as JSON (ndstore's field names, the catalog's columns). POST
takes the same fields: it creates the row (201), or, if it exists, compares the fields the
body gives (201 when equal; 409 naming the field when not; fields left out take defaults
on creation and are not compared). A channel's display window is state, not identity, so
it changes without a conflict: PATCH a channel with `{"startwindow": lo, "endwindow": hi}`
(both, lo <= hi; a key when the server has keys; 200 with the row), and so does its
`readonly` (0 or 1). A readonly channel refuses every write, as ndstore's do (403 naming
it: a window PATCH, DELETE, deleteChannel, and in writes.py and propagate.py the cutout
POST and setPropagate) but the PATCH that sets `readonly` to 0. An empty PATCH `{}`
changes nothing: a client checks with it that the server accepts its key (`ndingest
ingest` into a server does, before it writes). DELETE answers 204; a dataset or project that still
has projects, tokens or channels is a 409 naming them. Creating a channel also creates
its precomputed volume(s), with the scales the dataset row implies (what an ingest
writes); deleting one (`delete_channel`) takes its locks, renames its volumes and markers
out of the way, then deletes its row, so a channel made again under its name starts
empty. Writes need a key when the server has keys; GETs of what is not public too, and
of what does not exist, alike (401 or 403), so no answer tells a private name from a
missing one.

The four kinds differ only in data, so they are rows of one table (`KINDS`): each `Kind`
names its fields, its parent, whether its name is unique in its parent or in the whole
catalog, and how its row is made and deleted; one GET, one POST and one DELETE serve all four.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .. import catalog
from ..blocks import Box, Vec3
from ..channellock import ChannelGate
from ..errors import NotFound, RequestError, StateConflict, StoreError
from ..markers import channel_dir
from ..plan import max_levels
from ..spec import CHANNEL_TYPES, DATATYPES, NAME_RE, RESERVED_NAMES
from ..targets import LocalStore, VolumeRef, precomputed_info
from .context import (SCALING_NAMES, ServerContext, TokenView, catalog_scales, nd_routes, refuse_readonly,
                      slash_optional)
from .autoingest import running_job
from .writes import read_body

logger = logging.getLogger(__name__)

TRASH = ".trash"  # STORE/.trash/: deleted channels' folders, until they are removed
JSON_LIMIT = 1 << 20  # bytes of a resource body
JSON_DEPTH = 32  # nesting of a resource body: its values are flat, ndio's bodies two or three deep
MAX_WHOLE = 1 << 40  # whole numbers (sizes, offsets, times, levels) are below it: the catalog's are 64-bit


# --- values ------------------------------------------------------------------------------------
def check_name(value: Any, field: str) -> str:
    """DESIGN's name rule: ASCII letters, digits and _, and none the store or API uses."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise RequestError(f"{field} = {value!r} is not a valid name (ASCII letters, digits and _ only)")
    if value.lower() in (r.lower() for r in RESERVED_NAMES):
        raise RequestError(f"{field} = {value!r} is reserved (the store or the REST API uses it)")
    return value


def _int(value: Any, field: str, *, low: int | None = None, high: int | None = None) -> int:
    """A whole number in low..high, and always below 2^40 either way (so no catalog insert
    overflows)."""
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int):
        raise RequestError(f"{field} = {value!r} is not a whole number")
    if abs(value) >= MAX_WHOLE:
        raise RequestError(f"{field} = {value} is out of range (its size must be below 2^40)")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in {low}..{high}"
        raise RequestError(f"{field} = {value} must be {bounds}")
    return value


def _float(value: Any, field: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise RequestError(f"{field} = {value!r} is not a number")
    if positive and value <= 0:
        raise RequestError(f"{field} = {value} must be > 0")
    return float(value)


def _choice(value: Any, field: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise RequestError(f"{field} = {value!r} is not one of {', '.join(choices)}")
    return value


def _scaling(value: Any) -> int:
    """scalingoption as the catalog keeps it: 0 zslices, 1 isotropic (names accepted too)."""
    by_name = {"zslices": 0, "isotropic": 1, "xyz": 1}
    if isinstance(value, str) and value in by_name:
        return by_name[value]
    return _int(value, "scalingoption", low=0, high=1)


Field = tuple[Callable[[Any], Any], Any]  # (check, default); a default of REQUIRED must be given
REQUIRED = object()


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise RequestError(f"{field} = {value!r} is not a non-empty string")
    return value


def default_window(datatype: str) -> tuple[float, float]:
    """What a channel made without a window shows: the whole range of its integers, 0..1 for floats."""
    return (0.0, float(np.iinfo(datatype).max)) if np.dtype(datatype).kind == "u" else (0.0, 1.0)


# --- each kind's own fields and rules (besides its key and its parent, which Kind adds) ------------
def dataset_fields(body: dict) -> dict[str, Field]:
    return {
        **{f"{a}imagesize": (lambda v, f=f"{a}imagesize": _int(v, f, low=1), REQUIRED) for a in "xyz"},
        **{f"{a}offset": (lambda v, f=f"{a}offset": _int(v, f, low=0), 0) for a in "xyz"},
        **{f"{a}voxelres": (lambda v, f=f"{a}voxelres": _float(v, f, positive=True), REQUIRED) for a in "xyz"},
        "scalingoption": (_scaling, 0),
        "scalinglevels": (lambda v: _int(v, "scalinglevels", low=0), 0),
        "public": (lambda v: _int(v, "public", low=0, high=1), 0),
    }


def check_dataset(v: dict) -> None:
    """Levels stop where the volume is 1 voxel wide: past that a level has nothing to halve."""
    extent = Box.from_shape(Vec3(v["xoffset"], v["yoffset"], v["zoffset"]),
                            Vec3(v["ximagesize"], v["yimagesize"], v["zimagesize"]))
    top = max_levels(extent, SCALING_NAMES[v["scalingoption"]])
    if v["scalinglevels"] > top:
        raise RequestError(f"dataset: scalinglevels = {v['scalinglevels']}: the volume is 1 voxel wide in x or y "
                           f"at level {top}; the largest allowed is {top}")


def project_fields(body: dict) -> dict[str, Field]:
    return {
        "host": (lambda v: _text(v, "host"), "localhost"),
        "kvengine": (lambda v: _text(v, "kvengine"), "precomputed"),
        "mdengine": (lambda v: _text(v, "mdengine"), "sqlite"),
        "public": (lambda v: _int(v, "public", low=0, high=1), 0),
    }


def token_fields(body: dict) -> dict[str, Field]:
    return {"public": (lambda v: _int(v, "public", low=0, high=1), 0)}


def channel_fields(body: dict) -> dict[str, Field]:
    """The datatype is checked first: the window's default depends on it."""
    datatype = _choice(body.get("channel_datatype"), "channel_datatype", DATATYPES)
    window = default_window(datatype)
    return {
        "channel_type": (lambda v: _choice(v, "channel_type", CHANNEL_TYPES), REQUIRED),
        "channel_datatype": (lambda v: v, REQUIRED),
        "resolution": (lambda v: _int(v, "resolution", low=0, high=0), 0),
        "propagate": (lambda v: _int(v, "propagate", low=0, high=2), catalog.PROPAGATE_NOT),
        "readonly": (lambda v: _int(v, "readonly", low=0, high=1), 0),
        "starttime": (lambda v: _int(v, "starttime", low=0), 0),
        "endtime": (lambda v: _int(v, "endtime", low=0), 0),
        "startwindow": (lambda v: _float(v, "startwindow"), window[0]),
        "endwindow": (lambda v: _float(v, "endwindow"), window[1]),
        "default": (lambda v: _int(v, "default", low=0, high=1), 0),
    }


def check_channel(v: dict) -> None:
    if v["channel_type"] == "annotation" and np.dtype(v["channel_datatype"]).kind != "u":
        raise RequestError(f"channel: annotation labels must be unsigned integers, not {v['channel_datatype']}")
    if v["starttime"] > v["endtime"]:
        raise RequestError(f"channel: starttime {v['starttime']} is after endtime {v['endtime']}")
    if v["channel_type"] != "timeseries" and v["endtime"] != v["starttime"]:
        raise RequestError(f"channel: a {v['channel_type']} channel has one time point; "
                           f"channel_type timeseries for {v['starttime']}..{v['endtime']}")


# --- the table of kinds -------------------------------------------------------------------------
@dataclass(frozen=True)
class Kind:
    """One row of the resource table. ndstore's field names let `name` be at once the URL
    segment and path parameter, the word in messages and the column in which a child keeps
    its parent's name; a kind's own name is in `{name}_name`. Left as None, `make`, `remove`
    and `listing` touch the catalog row alone (a channel also has volumes, and is listed by
    name)."""

    name: str
    table: sa.Table
    parent: Kind | None
    fields: Callable[[dict], dict[str, Field]]  # the body's own fields: (check, default)
    unique_in_parent: bool = False  # False: the name is unique in the whole catalog (ndstore's tokens)
    check: Callable[[dict], None] = lambda values: None  # rules across fields, after each is checked
    aliases: tuple[tuple[str, str], ...] = ()  # (another client's name, ours) for a field
    state: tuple[str, ...] = ()  # fields that change without a conflict: a POST never compares them
    make: Callable[[ServerContext, catalog.Row, dict[str, dict]], None] | None = None
    remove: Callable[[ServerContext, Mapping[str, str]], None] | None = None
    listing: Callable[[ServerContext, str], list[dict]] | None = None  # its rows under a parent's name
    post_checks_parent: bool = True  # see TOKEN
    methods: tuple[str, ...] = ("GET", "POST", "DELETE")

    @property
    def name_column(self) -> str:
        return f"{self.name}_name"

    @property
    def key(self) -> tuple[str, ...]:
        """The columns that find one row: the uniqueness rule."""
        return (self.parent.name, self.name_column) if self.unique_in_parent else (self.name_column,)

    @property
    def path(self) -> str:
        above = self.parent.path if self.parent else "/nd/resource/"
        return f"{above}{self.name}/{{{self.name}}}/"

    def key_of(self, names: Mapping[str, str]) -> dict[str, str]:
        """The key's values from the URL's names."""
        return {c: names[self.parent.name] if c != self.name_column else names[self.name] for c in self.key}

    def rows_under(self, ctx: ServerContext, parent: str) -> list[dict]:
        if self.listing is not None:
            return self.listing(ctx, parent)
        return ctx.rows(self.table, self.table.c[self.parent.name] == parent)

    def create(self, ctx: ServerContext, row: catalog.Row, above: dict[str, dict]) -> None:
        """The row, or the check that it matches (CatalogConflict); `above`: its parents' rows."""
        if self.make is not None:
            self.make(ctx, row, above)
        else:
            catalog.ensure_rows(ctx.engine_for_writes(), [row])

    def delete(self, ctx: ServerContext, names: Mapping[str, str]) -> None:
        if self.remove is not None:
            self.remove(ctx, names)
        else:
            delete_row(ctx, self.table, **self.key_of(names))


DATASET = Kind("dataset", catalog.datasets, None, dataset_fields, check=check_dataset)
PROJECT = Kind("project", catalog.projects, DATASET, project_fields)
# A POST that leaves `project` out, to a token that exists under another project, answers
# that token's row (201) where GET and DELETE answer 404. Kept as the four handlers had it;
# post_checks_parent=True makes it their 404.
TOKEN = Kind("token", catalog.tokens, PROJECT, token_fields, post_checks_parent=False)
CHANNEL = Kind(
    "channel", catalog.channels, PROJECT, channel_fields, unique_in_parent=True, check=check_channel,
    aliases=(("datatype", "channel_datatype"),),  # ndio's name
    state=("propagate",),  # the levels' state, which the server sets
    make=lambda ctx, row, above: create_channel(ctx, row, dataset_row=above["dataset"]),
    remove=lambda ctx, names: delete_channel(ctx, names["channel"], dataset=names["dataset"], project=names["project"]),
    listing=ServerContext.channel_rows,
    methods=("GET", "POST", "DELETE", "PATCH"),
)
KINDS = (DATASET, PROJECT, TOKEN, CHANNEL)  # this order: routes, and what a refused DELETE names


def row_from_body(kind: Kind, body: dict, names: Mapping[str, str]) -> catalog.Row:
    """A catalog Row from a POST body: checked values, defaults for what it leaves out (not
    compared with an existing row), the key from the URL. A body may name the parent, but
    only as the URL does. Where the name is unique in the whole catalog the parent is a field
    (the URL's by default), so a body that gives it meets a row under another parent as a
    409 naming it."""
    body = dict(body)
    for alias, field in kind.aliases:
        if alias in body:
            if field in body and body[field] != body[alias]:
                raise RequestError(f"{kind.name}: {alias} and {field} disagree")
            body[field] = body.pop(alias)
    spec = kind.fields(body)
    if kind.parent is not None:
        parent, wanted = kind.parent.name, names[kind.parent.name]
        if body.get(parent, wanted) != wanted:
            raise RequestError(f"{kind.name}: {parent} = {body[parent]!r} disagrees with the URL's {wanted!r}")
        if parent not in kind.key:
            spec = {parent: (lambda v: v, wanted), **spec}
    fixed = {c: check_name(v, c) if c == kind.name_column else v for c, v in kind.key_of(names).items()}
    unknown = sorted(set(body) - set(spec) - set(fixed))
    if unknown:
        raise RequestError(f"{kind.name}: unknown field(s) {', '.join(unknown)}; known: {', '.join([*fixed, *spec])}")
    for name, value in fixed.items():
        if name in body and body[name] != value:
            raise RequestError(f"{kind.name}: {name} = {body[name]!r} disagrees with the URL's {value!r}")
    values, not_given = dict(fixed), []
    for name, (check, default) in spec.items():
        if name in body:
            values[name] = check(body[name])
        elif default is REQUIRED:
            raise RequestError(f"{kind.name}: field {name} is required")
        else:
            values[name] = default
            not_given.append(name)
    kind.check(values)
    return catalog.Row(kind.table, kind.key, values, kind.name, ignore=(*not_given, *kind.state))


@dataclass(frozen=True)
class ChannelUpdate:
    """What a channel PATCH changes: its window (both ends), its readonly flag, or nothing."""

    window: tuple[float, float] | None = None
    readonly: int | None = None

    def allowed_on(self, row: dict) -> None:
        """A readonly channel takes one write: the PATCH that sets readonly to 0 (and with
        it, the window). `{}` changes nothing, so it stays a key check on any channel."""
        if self.readonly != 0 and (self.window is not None or self.readonly is not None):
            refuse_readonly(row)


def channel_update(body: dict) -> ChannelUpdate:
    """A PATCH body's changes; only the window (both of its ends at once) and `readonly`
    may change this way."""
    window_fields = ("startwindow", "endwindow")
    unknown = sorted(set(body) - {*window_fields, "readonly"})
    if unknown:
        raise RequestError(f"channel PATCH: only startwindow and endwindow, and readonly, can change this way, "
                           f"not {', '.join(unknown)}")
    readonly = _int(body["readonly"], "readonly", low=0, high=1) if "readonly" in body else None
    given = set(body) & set(window_fields)
    if not given:
        return ChannelUpdate(None, readonly)
    if given != set(window_fields):
        raise RequestError("channel PATCH: give both startwindow and endwindow")
    lo, hi = _float(body["startwindow"], "startwindow"), _float(body["endwindow"], "endwindow")
    if lo > hi:
        raise RequestError(f"channel PATCH: startwindow {lo} is above endwindow {hi}")
    return ChannelUpdate((lo, hi), readonly)


# --- the catalog and the store -----------------------------------------------------------------
def public_row(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "id"}


def find(ctx: ServerContext, table: sa.Table, **key) -> dict | None:
    found = ctx.rows(table, *(table.c[k] == v for k, v in key.items()))
    return found[0] if found else None


def must_find(ctx: ServerContext, table: sa.Table, what: str, **key) -> dict:
    row = find(ctx, table, **key)
    if row is None:
        raise NotFound(f"{what} {'/'.join(map(str, key.values()))!r} does not exist")
    return row


def find_row(ctx: ServerContext, kind: Kind, names: Mapping[str, str], *, check_parent: bool = True) -> dict:
    """`kind`'s row by its key; 404 when missing, or when a name unique in the whole catalog
    is found under another parent than the URL names."""
    row = must_find(ctx, kind.table, kind.name, **kind.key_of(names))
    parent = kind.parent
    if check_parent and parent is not None and parent.name not in kind.key and row[parent.name] != names[parent.name]:
        raise NotFound(f"{kind.name} {names[kind.name]!r} belongs to {parent.name} {row[parent.name]!r}, "
                       f"not {names[parent.name]!r}")
    return row


def lookup(ctx: ServerContext, kind: Kind, names: Mapping[str, str]) -> dict[str, dict]:
    """The rows the URL names from its dataset down to `kind`'s, by kind name; 404 at the
    first missing one, so a URL never reaches a row through a parent it is not under."""
    above = lookup(ctx, kind.parent, names) if kind.parent else {}
    return {**above, kind.name: find_row(ctx, kind, names)}


def is_public(rows: dict[str, dict]) -> int:
    """The flag that decides a GET: the row's own `public`, or (a channel has none) its project's."""
    return next(row["public"] for row in reversed(rows.values()) if "public" in row)


def users(ctx: ServerContext, kind: Kind, name: str) -> list[str]:
    """What still lies under `kind`'s row `name`, each as "KIND NAME"."""
    return [f"{child.name} {row[child.name_column]}"
            for child in KINDS if child.parent is kind for row in child.rows_under(ctx, name)]


def channel_refs(dataset: str, project: str, values: dict) -> list[VolumeRef]:
    if values["channel_type"] == "timeseries":
        return [VolumeRef(dataset, project, values["channel_name"], t)
                for t in range(values["starttime"], values["endtime"] + 1)]
    return [VolumeRef(dataset, project, values["channel_name"])]


def create_channel(ctx: ServerContext, row: catalog.Row, *, dataset_row: dict) -> None:
    """The channel's catalog row and its volumes (or the check that both match); its
    `info` is the one an ingest writes for this dataset (`context.catalog_scales`)."""
    values = row.values
    info = precomputed_info(datatype=values["channel_datatype"], channel_type=values["channel_type"],
                            scales=catalog_scales(dataset_row))
    store = LocalStore(ctx.store)
    refs = channel_refs(dataset_row["dataset_name"], values["project"], values)
    engine = ctx.engine_for_writes()
    catalog.check_rows(engine, [row])
    for ref in refs:  # an info of other geometry is a conflict before the row is written
        existing = store.info(ref)
        if existing is not None and existing != info:
            store.create_volume(ref, info)  # raises CatalogConflict naming what differs
    catalog.ensure_rows(engine, [row])
    for ref in refs:
        store.create_volume(ref, info)


def delete_channel(ctx: ServerContext, name: str, *, dataset: str, project: str) -> None:
    """Delete a channel so that nothing of it comes back: under its locks (409 while an
    ingest or autoIngest job of it runs; writes under way end first), its volumes and
    markers are renamed into the store's trash, then its row goes, then the trash is
    emptied in the background. A channel made again under the name starts empty; a delete
    that fails leaves the row and the data as they were. 403 naming it when it is readonly."""
    refuse_readonly(must_find(ctx, catalog.channels, "channel", project=project, channel_name=name))
    job = running_job(ctx.store, project, name)
    if job is not None:
        raise StateConflict(f"channel {name!r} is being ingested by autoIngest job {job} (queued or running); "
                            f"delete it when the job has finished (GET autoIngest/{project}/)")
    markers = channel_dir(ctx.store, dataset, project, name)
    with ChannelGate(markers, name) as gate, gate.deleting():
        # again, under the locks: a delete that waited there may find it gone, or readonly
        refuse_readonly(must_find(ctx, catalog.channels, "channel", project=project, channel_name=name))
        trash = trash_dir(ctx.store)
        moved = move_into(trash, {"volumes": ctx.store / dataset / project / name, "markers": markers})
        try:
            catalog.delete_channel(ctx.engine_for_writes(), project, name)
        except BaseException:
            move_back(trash, moved)
            raise
    threading.Thread(target=shutil.rmtree, args=(trash,), kwargs={"ignore_errors": True}, daemon=True,
                     name=f"trash-{name}").start()


def trash_dir(store: Path) -> Path:
    """A new folder under STORE/.trash/ (a dot-name: no dataset is called that) for one
    delete's folders; what a server stopped before emptying it may be removed by hand."""
    folder = store / TRASH / f"{time.time_ns()}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        folder.mkdir(parents=True)
    except OSError as exc:
        raise StoreError(f"{folder}: cannot make the trash folder: {exc.strerror or exc}") from exc
    return folder


def move_into(trash: Path, folders: dict[str, Path]) -> dict[str, Path]:
    """Rename each folder that exists to trash/NAME (atomic, within the store's file system);
    on a failure the ones moved go back, and StoreError names the folder."""
    moved: dict[str, Path] = {}
    for label, folder in folders.items():
        try:
            folder.rename(trash / label)
        except FileNotFoundError:
            continue
        except OSError as exc:
            move_back(trash, moved)
            raise StoreError(f"{folder}: cannot move it to {trash}: {exc.strerror or exc}") from exc
        moved[label] = folder
    return moved


def move_back(trash: Path, moved: dict[str, Path]) -> None:
    for label, folder in moved.items():
        try:
            (trash / label).rename(folder)
        except OSError:
            logger.exception("cannot move %s back to %s", trash / label, folder)


def delete_row(ctx: ServerContext, table: sa.Table, **key) -> None:
    with ctx.engine_for_writes().begin() as conn:
        conn.execute(sa.delete(table).where(*(table.c[k] == v for k, v in key.items())))


def refuse_if_used(what: str, users: list[str]) -> None:
    if users:
        raise StateConflict(f"{what} still has {', '.join(users)}; delete those first")


# --- the request's edge --------------------------------------------------------------------------
async def json_body(request: Request) -> dict:
    body = await read_body(request, JSON_LIMIT)
    check_depth(body)
    try:
        value = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise RequestError(f"body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise RequestError(f"body is a JSON {type(value).__name__}, not an object")
    return value


def check_depth(body: bytes, limit: int = JSON_DEPTH) -> None:
    """400 for a body nested deeper than `limit` (json.loads recurses: 100k `[` is a
    RecursionError), counted over its brackets outside strings before it is parsed."""
    depth, in_string, escaped = 0, False, False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                raise RequestError(f"body is nested deeper than {limit} levels")
        elif byte in (0x5D, 0x7D):
            depth -= 1


def shown_without_key(ctx: ServerContext, kind: Kind, names: Mapping[str, str]) -> bool:
    """Whether a GET of `kind`'s row answers without a key: the row that holds its `public`
    flag (its own; a channel's project's) exists and is public. A private row and a missing
    one are alike here, so the key is checked before anything tells them apart."""
    owner = kind if "public" in kind.table.c else kind.parent
    try:
        return bool(is_public(lookup(ctx, owner, names)))
    except NotFound:
        return False


def routes(ctx: ServerContext) -> list:
    async def get(kind: Kind, request: Request) -> Response:
        """The row; with keys, one not public needs a key, a missing one too (alike: 401/403),
        and only then is a missing one 404."""
        names = request.path_params
        if ctx.keyring is not None and not await run_in_threadpool(shown_without_key, ctx, kind, names):
            ctx.require_key(request)
        rows = await run_in_threadpool(lookup, ctx, kind, names)
        return JSONResponse(public_row(rows[kind.name]))

    async def post(kind: Kind, request: Request) -> Response:
        """The body is checked (400) before the parents are looked up (404)."""
        ctx.require_key(request)
        names = request.path_params
        row = row_from_body(kind, await json_body(request), names)

        def create() -> dict:
            above = lookup(ctx, kind.parent, names) if kind.parent else {}
            kind.create(ctx, row, above)
            return find_row(ctx, kind, names, check_parent=kind.post_checks_parent)
        return JSONResponse(public_row(await run_in_threadpool(create)), status_code=201)

    async def delete(kind: Kind, request: Request) -> Response:
        ctx.require_key(request)
        names = request.path_params

        def remove() -> None:
            lookup(ctx, kind, names)
            refuse_if_used(f"{kind.name} {names[kind.name]!r}", users(ctx, kind, names[kind.name]))
            kind.delete(ctx, names)
        await run_in_threadpool(remove)
        return Response(status_code=204)

    async def patch(kind: Kind, request: Request) -> Response:
        """A channel's window or readonly flag (only a channel has a PATCH route); `{}`
        checks the key and the channel. readonly is lifted before the window is set."""
        assert kind is CHANNEL
        ctx.require_key(request)
        change = channel_update(await json_body(request))
        names = request.path_params

        def update() -> dict:
            change.allowed_on(lookup(ctx, kind, names)[kind.name])
            project, channel = names["project"], names["channel"]
            if change.readonly == 0:
                catalog.set_readonly(ctx.engine_for_writes(), project, channel, 0)
            if change.window is not None:
                catalog.set_window(ctx.engine_for_writes(), project, channel, change.window)
            if change.readonly == 1:
                catalog.set_readonly(ctx.engine_for_writes(), project, channel, 1)
            return find_row(ctx, kind, names)
        return JSONResponse(public_row(await run_in_threadpool(update)))

    # HEAD is a GET (Starlette routes it wherever GET is, and a browser sends it cross-site
    # unasked): it once fell through to DELETE and removed what it named
    answers = {"GET": get, "HEAD": get, "POST": post, "DELETE": delete, "PATCH": patch}

    def endpoint(kind: Kind):
        async def answer(request: Request) -> Response:
            return await answers[request.method](kind, request)
        return answer

    async def create_channels(request: Request) -> Response:
        """ndio's createChannel: {"channels": {NAME: {channel_name, channel_type, datatype, readonly}}}."""
        ctx.require_key(request)
        body = await json_body(request)
        token = await run_in_threadpool(ctx.token, request.path_params["token"])
        wanted = body.get("channels")
        if not isinstance(wanted, dict) or not wanted:
            raise RequestError('createChannel: body must be {"channels": {NAME: {...}, ...}}')
        rows = []
        for name, fields in wanted.items():
            if not isinstance(fields, dict):
                raise RequestError(f"createChannel: channels.{name} is not an object")
            fields = dict(fields)
            if fields.pop("channel_name", name) != name:
                raise RequestError(f"createChannel: channels.{name}.channel_name disagrees with its key {name!r}")
            rows.append(row_from_body(CHANNEL, fields, {"project": token.project_name, "channel": name}))
        await run_in_threadpool(lambda: [create_channel(ctx, row, dataset_row=token.dataset) for row in rows])
        return PlainTextResponse("SUCCESS")

    async def delete_channels(request: Request) -> Response:
        """ndio's deleteChannel: {"channels": [NAME, ...]}."""
        ctx.require_key(request)
        body = await json_body(request)
        token: TokenView = await run_in_threadpool(ctx.token, request.path_params["token"])
        names = body.get("channels")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise RequestError('deleteChannel: body must be {"channels": [NAME, ...]}')

        def delete() -> None:
            found = [ctx.channel(token, name) for name in names]  # 404 naming it, before anything is deleted
            for channel in found:
                channel.writable()  # 403 naming a readonly one, likewise
            for name in names:
                delete_channel(ctx, name, dataset=token.dataset_name, project=token.project_name)
        await run_in_threadpool(delete)
        return PlainTextResponse("SUCCESS")

    return [
        *(route for kind in KINDS for route in slash_optional(kind.path, endpoint(kind), methods=kind.methods)),
        *nd_routes("{token}/createChannel/", create_channels, methods=("POST",)),
        *nd_routes("{token}/deleteChannel/", delete_channels, methods=("POST",)),
    ]
