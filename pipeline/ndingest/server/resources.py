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
(both, lo <= hi; a key when the server has keys; 200 with the row). An empty PATCH `{}`
changes nothing: a client checks with it that the server accepts its key (`ndingest
ingest` into a server does, before it writes). DELETE answers 204; a dataset or project that still
has projects, tokens or channels is a 409 naming them. Creating a channel also creates
its precomputed volume(s), with the scales the dataset row implies (what an ingest
writes); deleting one removes its volumes and markers. Writes need a key when the server
has keys; GETs of what is not public too.
"""
from __future__ import annotations

import json
import logging
import shutil
from typing import Any, Callable

import numpy as np
import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .. import catalog
from ..blocks import Box, Vec3
from ..errors import NotFound, RequestError, StateConflict, StoreError
from ..markers import channel_dir
from ..plan import max_levels
from ..spec import CHANNEL_TYPES, DATATYPES, NAME_RE, RESERVED_NAMES
from ..targets import LocalStore, VolumeRef, precomputed_info
from .context import SCALING_NAMES, ServerContext, TokenView, catalog_scales, nd_routes, slash_optional
from .writes import read_body

logger = logging.getLogger(__name__)

RESOURCE = "/nd/resource/dataset/{dataset}/"
JSON_LIMIT = 1 << 20  # bytes of a resource body


# --- values ------------------------------------------------------------------------------------
def check_name(value: Any, field: str) -> str:
    """DESIGN's name rule: ASCII letters, digits and _, and none the store or API uses."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise RequestError(f"{field} = {value!r} is not a valid name (ASCII letters, digits and _ only)")
    if value.lower() in (r.lower() for r in RESERVED_NAMES):
        raise RequestError(f"{field} = {value!r} is reserved (the store or the REST API uses it)")
    return value


def _int(value: Any, field: str, *, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool):
        value = int(value)
    if not isinstance(value, int):
        raise RequestError(f"{field} = {value!r} is not a whole number")
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


def _fields(kind: str, body: dict, *, table: sa.Table, spec: dict[str, Field], fixed: dict[str, Any]) -> catalog.Row:
    """A catalog Row from a JSON body: checked values, defaults for what it leaves out
    (not compared with an existing row), and `fixed` values from the URL."""
    unknown = sorted(set(body) - set(spec) - set(fixed))
    if unknown:
        raise RequestError(f"{kind}: unknown field(s) {', '.join(unknown)}; known: {', '.join([*fixed, *spec])}")
    for name, value in fixed.items():
        if name in body and body[name] != value:
            raise RequestError(f"{kind}: {name} = {body[name]!r} disagrees with the URL's {value!r}")
    values, not_given = dict(fixed), []
    for name, (check, default) in spec.items():
        if name in body:
            values[name] = check(body[name])
        elif default is REQUIRED:
            raise RequestError(f"{kind}: field {name} is required")
        else:
            values[name] = default
            not_given.append(name)
    key = tuple(fixed)
    return catalog.Row(table, key, values, kind, ignore=tuple(not_given))


def dataset_row(name: str, body: dict) -> catalog.Row:
    spec: dict[str, Field] = {
        **{f"{a}imagesize": (lambda v, f=f"{a}imagesize": _int(v, f, low=1), REQUIRED) for a in "xyz"},
        **{f"{a}offset": (lambda v, f=f"{a}offset": _int(v, f, low=0), 0) for a in "xyz"},
        **{f"{a}voxelres": (lambda v, f=f"{a}voxelres": _float(v, f, positive=True), REQUIRED) for a in "xyz"},
        "scalingoption": (_scaling, 0),
        "scalinglevels": (lambda v: _int(v, "scalinglevels", low=0), 0),
        "public": (lambda v: _int(v, "public", low=0, high=1), 0),
    }
    row = _fields("dataset", body, table=catalog.datasets, spec=spec,
                  fixed={"dataset_name": check_name(name, "dataset_name")})
    v = row.values
    extent = Box.from_shape(Vec3(v["xoffset"], v["yoffset"], v["zoffset"]),
                            Vec3(v["ximagesize"], v["yimagesize"], v["zimagesize"]))
    top = max_levels(extent, SCALING_NAMES[v["scalingoption"]])
    if v["scalinglevels"] > top:
        raise RequestError(f"dataset: scalinglevels = {v['scalinglevels']}: the volume is 1 voxel wide in x or y "
                           f"at level {top}; the largest allowed is {top}")
    return row


def project_row(name: str, body: dict, *, dataset: str) -> catalog.Row:
    spec: dict[str, Field] = {
        "dataset": (lambda v: v, dataset),
        "host": (lambda v: _text(v, "host"), "localhost"),
        "kvengine": (lambda v: _text(v, "kvengine"), "precomputed"),
        "mdengine": (lambda v: _text(v, "mdengine"), "sqlite"),
        "public": (lambda v: _int(v, "public", low=0, high=1), 0),
    }
    if body.get("dataset", dataset) != dataset:
        raise RequestError(f"project: dataset = {body['dataset']!r} disagrees with the URL's {dataset!r}")
    return _fields("project", body, table=catalog.projects, spec=spec,
                   fixed={"project_name": check_name(name, "project_name")})


def _text(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise RequestError(f"{field} = {value!r} is not a non-empty string")
    return value


def token_row(name: str, body: dict, *, project: str) -> catalog.Row:
    spec: dict[str, Field] = {
        "project": (lambda v: v, project),
        "public": (lambda v: _int(v, "public", low=0, high=1), 0),
    }
    if body.get("project", project) != project:
        raise RequestError(f"token: project = {body['project']!r} disagrees with the URL's {project!r}")
    return _fields("token", body, table=catalog.tokens, spec=spec, fixed={"token_name": check_name(name, "token_name")})


def default_window(datatype: str) -> tuple[float, float]:
    """What a channel made without a window shows: the whole range of its integers, 0..1 for floats."""
    return (0.0, float(np.iinfo(datatype).max)) if np.dtype(datatype).kind == "u" else (0.0, 1.0)


def channel_row(name: str, body: dict, *, project: str) -> catalog.Row:
    """A channel row; `channel_datatype` may also be given as `datatype` (ndio's name)."""
    body = dict(body)
    if "datatype" in body:
        if "channel_datatype" in body and body["channel_datatype"] != body["datatype"]:
            raise RequestError("channel: datatype and channel_datatype disagree")
        body["channel_datatype"] = body.pop("datatype")
    datatype = _choice(body.get("channel_datatype"), "channel_datatype", DATATYPES)
    window = default_window(datatype)
    spec: dict[str, Field] = {
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
    if body.get("project", project) != project:
        raise RequestError(f"channel: project = {body['project']!r} disagrees with the URL's {project!r}")
    body.pop("project", None)
    row = _fields("channel", body, table=catalog.channels, spec=spec,
                  fixed={"project": project, "channel_name": check_name(name, "channel_name")})
    v = row.values
    if v["channel_type"] == "annotation" and np.dtype(v["channel_datatype"]).kind != "u":
        raise RequestError(f"channel: annotation labels must be unsigned integers, not {v['channel_datatype']}")
    if v["starttime"] > v["endtime"]:
        raise RequestError(f"channel: starttime {v['starttime']} is after endtime {v['endtime']}")
    if v["channel_type"] != "timeseries" and v["endtime"] != v["starttime"]:
        raise RequestError(f"channel: a {v['channel_type']} channel has one time point; "
                           f"channel_type timeseries for {v['starttime']}..{v['endtime']}")
    return catalog.Row(row.table, row.key, row.values, row.kind, ignore=(*row.ignore, "propagate"))


def window_update(body: dict) -> tuple[float, float] | None:
    """A PATCH body's new window (None for `{}`: nothing to change); only the window may
    change this way, and both of its ends at once."""
    fields = ("startwindow", "endwindow")
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise RequestError(f"channel PATCH: only startwindow and endwindow can change this way, not "
                           f"{', '.join(unknown)}")
    if not body:
        return None
    if set(body) != set(fields):
        raise RequestError("channel PATCH: give both startwindow and endwindow")
    lo, hi = _float(body["startwindow"], "startwindow"), _float(body["endwindow"], "endwindow")
    if lo > hi:
        raise RequestError(f"channel PATCH: startwindow {lo} is above endwindow {hi}")
    return (lo, hi)


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


def project_of(ctx: ServerContext, dataset: str, project: str) -> dict:
    """The project row, which must belong to `dataset` (the URL's); 404 otherwise."""
    must_find(ctx, catalog.datasets, "dataset", dataset_name=dataset)
    row = must_find(ctx, catalog.projects, "project", project_name=project)
    if row["dataset"] != dataset:
        raise NotFound(f"project {project!r} belongs to dataset {row['dataset']!r}, not {dataset!r}")
    return row


def channel_refs(dataset: str, project: str, values: dict) -> list[VolumeRef]:
    if values["channel_type"] == "timeseries":
        return [VolumeRef(dataset, project, values["channel_name"], t)
                for t in range(values["starttime"], values["endtime"] + 1)]
    return [VolumeRef(dataset, project, values["channel_name"])]


def create_channel(ctx: ServerContext, row: catalog.Row, *, dataset_row: dict) -> dict:
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
    return must_find(ctx, catalog.channels, "channel", project=values["project"], channel_name=values["channel_name"])


def delete_channel(ctx: ServerContext, name: str, *, dataset: str, project: str) -> None:
    """The channel's row, then its volumes and markers (edits, locks, ingest markers)."""
    must_find(ctx, catalog.channels, "channel", project=project, channel_name=name)
    catalog.delete_channel(ctx.engine_for_writes(), project, name)
    for folder in (ctx.store / dataset / project / name, channel_dir(ctx.store, dataset, project, name)):
        try:
            shutil.rmtree(folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StoreError(f"{folder}: cannot remove: {exc.strerror or exc}") from exc


def delete_row(ctx: ServerContext, table: sa.Table, **key) -> None:
    with ctx.engine_for_writes().begin() as conn:
        conn.execute(sa.delete(table).where(*(table.c[k] == v for k, v in key.items())))


def refuse_if_used(what: str, users: list[str]) -> None:
    if users:
        raise StateConflict(f"{what} still has {', '.join(users)}; delete those first")


# --- the request's edge --------------------------------------------------------------------------
async def json_body(request: Request) -> dict:
    body = await read_body(request, JSON_LIMIT)
    try:
        value = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"body is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise RequestError(f"body is a JSON {type(value).__name__}, not an object")
    return value


def check_visible(ctx: ServerContext, request: Request, public: int) -> None:
    """GETs of what is not public need a key when the server has keys."""
    if not public:
        ctx.require_key(request)


def routes(ctx: ServerContext) -> list:
    def created(row: dict) -> Response:
        return JSONResponse(public_row(row), status_code=201)

    async def dataset(request: Request) -> Response:
        name = request.path_params["dataset"]
        if request.method == "GET":
            row = await run_in_threadpool(must_find, ctx, catalog.datasets, "dataset", dataset_name=name)
            check_visible(ctx, request, row["public"])
            return JSONResponse(public_row(row))
        ctx.require_key(request)
        if request.method == "POST":
            row = dataset_row(name, await json_body(request))

            def create() -> dict:
                catalog.ensure_rows(ctx.engine_for_writes(), [row])
                return must_find(ctx, catalog.datasets, "dataset", dataset_name=name)
            return created(await run_in_threadpool(create))

        def delete() -> None:
            must_find(ctx, catalog.datasets, "dataset", dataset_name=name)
            refuse_if_used(f"dataset {name!r}", [f"project {r['project_name']}" for r in
                                                 ctx.rows(catalog.projects, catalog.projects.c.dataset == name)])
            delete_row(ctx, catalog.datasets, dataset_name=name)
        await run_in_threadpool(delete)
        return Response(status_code=204)

    async def project(request: Request) -> Response:
        ds, name = request.path_params["dataset"], request.path_params["project"]
        if request.method == "GET":
            row = await run_in_threadpool(project_of, ctx, ds, name)
            check_visible(ctx, request, row["public"])
            return JSONResponse(public_row(row))
        ctx.require_key(request)
        if request.method == "POST":
            row = project_row(name, await json_body(request), dataset=ds)

            def create() -> dict:
                must_find(ctx, catalog.datasets, "dataset", dataset_name=ds)
                catalog.ensure_rows(ctx.engine_for_writes(), [row])
                return project_of(ctx, ds, name)
            return created(await run_in_threadpool(create))

        def delete() -> None:
            project_of(ctx, ds, name)
            users = [f"token {r['token_name']}" for r in ctx.rows(catalog.tokens, catalog.tokens.c.project == name)]
            users += [f"channel {r['channel_name']}" for r in ctx.channel_rows(name)]
            refuse_if_used(f"project {name!r}", users)
            delete_row(ctx, catalog.projects, project_name=name)
        await run_in_threadpool(delete)
        return Response(status_code=204)

    async def token(request: Request) -> Response:
        ds, pr, name = (request.path_params[k] for k in ("dataset", "project", "token"))
        if request.method == "GET":
            def get() -> dict:
                project_of(ctx, ds, pr)
                row = must_find(ctx, catalog.tokens, "token", token_name=name)
                if row["project"] != pr:
                    raise NotFound(f"token {name!r} belongs to project {row['project']!r}, not {pr!r}")
                return row
            row = await run_in_threadpool(get)
            check_visible(ctx, request, row["public"])
            return JSONResponse(public_row(row))
        ctx.require_key(request)
        if request.method == "POST":
            row = token_row(name, await json_body(request), project=pr)

            def create() -> dict:
                project_of(ctx, ds, pr)
                catalog.ensure_rows(ctx.engine_for_writes(), [row])
                return must_find(ctx, catalog.tokens, "token", token_name=name)
            return created(await run_in_threadpool(create))

        def delete() -> None:
            project_of(ctx, ds, pr)
            row = must_find(ctx, catalog.tokens, "token", token_name=name)
            if row["project"] != pr:
                raise NotFound(f"token {name!r} belongs to project {row['project']!r}, not {pr!r}")
            delete_row(ctx, catalog.tokens, token_name=name)
        await run_in_threadpool(delete)
        return Response(status_code=204)

    async def channel(request: Request) -> Response:
        ds, pr, name = (request.path_params[k] for k in ("dataset", "project", "channel"))
        if request.method == "PATCH":
            ctx.require_key(request)
            window = window_update(await json_body(request))

            def update() -> dict:
                project_of(ctx, ds, pr)
                must_find(ctx, catalog.channels, "channel", project=pr, channel_name=name)
                if window is not None:
                    catalog.set_window(ctx.engine_for_writes(), pr, name, window)
                return must_find(ctx, catalog.channels, "channel", project=pr, channel_name=name)
            return JSONResponse(public_row(await run_in_threadpool(update)))
        if request.method == "GET":
            def get() -> tuple[dict, dict]:
                project = project_of(ctx, ds, pr)
                return project, must_find(ctx, catalog.channels, "channel", project=pr, channel_name=name)
            project, row = await run_in_threadpool(get)
            check_visible(ctx, request, project["public"])
            return JSONResponse(public_row(row))
        ctx.require_key(request)
        if request.method == "POST":
            row = channel_row(name, await json_body(request), project=pr)

            def create() -> dict:
                project_of(ctx, ds, pr)
                dataset = must_find(ctx, catalog.datasets, "dataset", dataset_name=ds)
                return create_channel(ctx, row, dataset_row=dataset)
            return created(await run_in_threadpool(create))

        def delete() -> None:
            project_of(ctx, ds, pr)
            delete_channel(ctx, name, dataset=ds, project=pr)
        await run_in_threadpool(delete)
        return Response(status_code=204)

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
            rows.append(channel_row(name, fields, project=token.project_name))
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
            for name in names:
                ctx.channel(token, name)  # 404 naming it, before anything is deleted
            for name in names:
                delete_channel(ctx, name, dataset=token.dataset_name, project=token.project_name)
        await run_in_threadpool(delete)
        return PlainTextResponse("SUCCESS")

    methods = ("GET", "POST", "DELETE")
    return [
        *slash_optional(RESOURCE, dataset, methods=methods),
        *slash_optional(RESOURCE + "project/{project}/", project, methods=methods),
        *slash_optional(RESOURCE + "project/{project}/token/{token}/", token, methods=methods),
        *slash_optional(RESOURCE + "project/{project}/channel/{channel}/", channel, methods=(*methods, "PATCH")),
        *nd_routes("{token}/createChannel/", create_channels, methods=("POST",)),
        *nd_routes("{token}/deleteChannel/", delete_channels, methods=("POST",)),
    ]

