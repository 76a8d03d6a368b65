"""`ndingest serve`: an ndstore-compatible HTTP server over a local store, or over a bucket
store read-only (Starlette, uvicorn).

Modules:
- `context`: the store, its catalog, the key ring and channel lookups every route uses;
  `nd_routes` mounts a route under both ndstore prefixes (`/nd/sd/`, `/ocp/ca/`).
- `reads`: project info, public tokens and datasets, cutout GETs, PNG slices.
- `precomputed`: each channel's precomputed files over HTTP, with Range.
- `guard`: what keeps web pages out (Host, Origin, Sec-Fetch-Site and form Content-Type
  checks) and the CORS of `/precomputed/` (`*` for public projects only).
- `page`: `GET /`, an HTML overview with thumbnails and neuroglancer links.
- `keys`, `writes`, `locks`, `resources`, `propagate`: the API keys, cutout POSTs (each
  recorded by `ndingest.edits`, which `verify` reads) and their chunk locks, the resource
  API, level rebuilds. Cutout encodings are `ndingest.wire.cutouts`, shared with clients.

Starlette and uvicorn are imported only by this package, which only `serve` imports. Every
`RequestError` becomes its status with one text/plain line; a bug is a 500 with one
generic line, its traceback only in the server's log.
"""
from __future__ import annotations

import importlib
import logging
import socket
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from .. import malloc
from ..errors import CatalogConflict, RequestError, SpecError, StoreError
from ..fetchpolicy import make_policy
from ..kvpath import KvPath
from ..urls import is_url
from . import budget
from .context import MAX_JOBS, ServerContext
from .guard import Cors, Guard, WebPolicy, is_loopback, split_list

logger = logging.getLogger(__name__)

# each module's `routes(ctx)`, in this order: reads, precomputed and page first, then the write side
ROUTE_MODULES = ("reads", "precomputed", "page", "writes", "resources", "autoingest")


def _one_line(text: str) -> str:
    return " ".join(text.split()) + "\n"


async def _request_error(request: Request, exc: Exception) -> PlainTextResponse:
    status = getattr(exc, "status", 400)
    headers = {"WWW-Authenticate": "Token"} if status == 401 else None
    if getattr(exc, "retry_after", None) is not None:  # errors.Busy: the memory budget stayed taken
        headers = {"Retry-After": str(exc.retry_after)}
    return PlainTextResponse(_one_line(str(exc)), status_code=status, headers=headers)


async def _conflict(request: Request, exc: Exception) -> PlainTextResponse:
    return PlainTextResponse(_one_line(str(exc)), status_code=409)


async def _bad_request(request: Request, exc: Exception) -> PlainTextResponse:
    return PlainTextResponse(_one_line(str(exc)), status_code=400)


async def _internal(request: Request, exc: Exception) -> PlainTextResponse:
    # no traceback here: Starlette raises the exception on after this answer, and uvicorn logs it
    logger.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
    return PlainTextResponse("internal server error; the server's log has the details\n", status_code=500)


class ReadOnly:
    """A bucket store's server answers reads only: every other request (POSTs, DELETEs,
    `setPropagate`, `autoIngest`) is 501 with one line, before any route runs."""

    WRITES_BY_GET = {"setPropagate", "autoIngest"}  # path segments (the trailing slash is optional)

    def __init__(self, app, store: str):
        self.app, self.store = app, store

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and (scope["method"] not in ("GET", "HEAD", "OPTIONS")
                                        or self.WRITES_BY_GET.intersection(scope["path"].split("/"))):
            reply = PlainTextResponse(f"{self.store} is a bucket store, served read-only: "
                                      f"{scope['method']} {scope['path']} is not served\n", status_code=501)
            await reply(scope, receive, send)
            return
        await self.app(scope, receive, send)


def store_at(text: str, named: str) -> Path | KvPath:
    """The store `text` names (`named` says where it came from, for the message): a bucket's
    prefix (s3://bucket/prefix, before Path() folds it into s3:/…) or a folder; SpecError
    if the bucket cannot be read or there is no such folder. A bucket is checked with one
    request that lists nothing (`KvPath.check_readable`): each uvicorn worker calls this at
    start, and the prefix may hold millions of keys; an empty prefix is an empty store."""
    if is_url(text):
        store = KvPath.from_url(text)
        try:
            store.check_readable()
        except StoreError as exc:
            raise SpecError(f"{named}{exc}") from exc
        return store
    if not Path(text).is_dir():
        raise SpecError(f"{named}{text}: no such folder")
    return Path(text)


def create_app(store: Path | KvPath, *, api_keys: Path | None = None, max_body: int = 1 << 30,
               catalog_url: str | None = None, bound_host: str = "127.0.0.1",
               allow_origins: tuple[str, ...] = (), allow_hosts: tuple[str, ...] = (),
               allow_files: tuple[str, ...] = (), fetch_from: tuple[str, ...] = (),
               max_jobs: int = MAX_JOBS, memory_mib: int = budget.DEFAULT_MEMORY_MIB,
               memory_wait: float = budget.WAIT_SECONDS) -> Starlette:
    """The app over `store` (which may be empty: the catalog is looked up per request), its
    catalog `STORE/catalog.sqlite` or the database `catalog_url` names. A bucket's prefix
    (a KvPath, its catalog a database) is served read-only (`ReadOnly`). `bound_host` (the
    address it listens on: loopback by default), `allow_origins` and `allow_hosts` are what
    `guard` admits from browsers; `allow_files` (folders) and `fetch_from` (HOST[:PORT]) what
    auto-ingest jobs may read besides public http(s) addresses (`ndingest.fetchpolicy`);
    `max_jobs`: auto-ingest jobs running at once on the store. `memory_mib` is the
    process's memory budget (see `budget`): what requests' voxels hold at once plus the
    freed heap malloc keeps; a request waits up to `memory_wait` seconds for its share.

    Also tunes this process's malloc (see `malloc`): a cutout's buffers come from freed heap,
    not fresh pages; two arenas bound what is kept to 2 x budget.keep_freed_bytes, counted in
    the budget. `uvicorn --workers` processes build their app here too."""
    if memory_mib < budget.MIN_MEMORY_MIB:
        raise SpecError(f"--memory {memory_mib}: the memory budget is at least {budget.MIN_MEMORY_MIB} MiB")
    memory = memory_mib * budget.MiB
    malloc.few_arenas()
    malloc.keep_freed(budget.keep_freed_bytes(memory))
    ctx = ServerContext.open(store, api_keys=api_keys, max_body=max_body, catalog_url=catalog_url, max_jobs=max_jobs)
    ctx.fetch_policy = make_policy(allow_files, fetch_from)  # SpecError naming a bad folder or host
    ctx.budget = budget.MemoryBudget(budget.request_bytes(memory), wait_seconds=memory_wait)
    modules = [importlib.import_module(f".{name}", __name__) for name in ROUTE_MODULES]
    routes = [route for module in modules for route in module.routes(ctx)]
    policy = WebPolicy(bound_host, tuple(allow_origins), tuple(allow_hosts))
    middleware = [Middleware(Guard, policy=policy), Middleware(Cors, is_public=ctx.project_is_public, policy=policy)]
    middleware += [Middleware(ReadOnly, store=str(store))] if ctx.read_only else []
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={
        RequestError: _request_error,
        CatalogConflict: _conflict,
        SpecError: _bad_request,  # BadBox included
        Exception: _internal,
    })
    app.router.redirect_slashes = False  # routes take both forms; a redirected POST would lose its body
    app.state.ctx = ctx
    return app


def app_from_env() -> Starlette:
    """The app for a shared server under uvicorn's own CLI, e.g.
    `uvicorn ndingest.server:app_from_env --factory --workers 4`: the store from
    NDINGEST_STORE (a folder, or s3://bucket/prefix served read-only), the keys file from
    NDINGEST_API_KEYS (unset: writes are open), a PostgreSQL catalog from NDINGEST_CATALOG
    (unset: STORE/catalog.sqlite); what browsers may do (see guard) from NDINGEST_HOST (the
    address uvicorn binds, as its --host; unset: loopback, so Host must be localhost or a
    loopback address), NDINGEST_ALLOW_ORIGIN and NDINGEST_ALLOW_HOST (comma- or
    space-separated, as serve's --allow-origin and --allow-host); NDINGEST_MAX_JOBS (serve's --max-jobs:
    auto-ingest jobs running at once on the store, across the workers); what auto-ingest
    jobs may read from NDINGEST_ALLOW_FILES and NDINGEST_FETCH_FROM (comma- or space-separated,
    as --allow-files and --fetch-from); each worker's memory budget in MiB from
    NDINGEST_MEMORY (serve's --memory). Safe with several workers:
    writes lock per chunk across processes (see writes)."""
    import os

    store = os.environ.get("NDINGEST_STORE", "")
    if not store:
        raise SpecError("NDINGEST_STORE is not set: set it to the store's folder (or s3://bucket/prefix)")
    where = store_at(store, "NDINGEST_STORE=")
    keys = os.environ.get("NDINGEST_API_KEYS") or None
    return create_app(where, api_keys=Path(keys) if keys else None,
                      catalog_url=os.environ.get("NDINGEST_CATALOG") or None,
                      bound_host=os.environ.get("NDINGEST_HOST") or "127.0.0.1",
                      allow_origins=split_list(os.environ.get("NDINGEST_ALLOW_ORIGIN")),
                      allow_hosts=split_list(os.environ.get("NDINGEST_ALLOW_HOST")),
                      allow_files=split_list(os.environ.get("NDINGEST_ALLOW_FILES")),
                      fetch_from=split_list(os.environ.get("NDINGEST_FETCH_FROM")),
                      max_jobs=max_jobs_from_env(), memory_mib=budget.memory_from_env(os.environ),
                      memory_wait=budget.wait_from_env(os.environ))


def max_jobs_from_env() -> int:
    """NDINGEST_MAX_JOBS (serve's --max-jobs when that is not given): a whole number >= 1; unset: MAX_JOBS."""
    import os

    text = os.environ.get("NDINGEST_MAX_JOBS", "").strip()
    if not text:
        return MAX_JOBS
    if not text.isdigit() or int(text) < 1:
        raise SpecError(f"NDINGEST_MAX_JOBS={text!r} must be a whole number >= 1")
    return int(text)


def exposure_warning(host: str, *, has_keys: bool) -> str | None:
    """What is open where `serve` listens, or None when nothing is (keys configured).
    ndio's writes send no key, so without --api-keys whoever reaches the address may write:
    on loopback, every user and program of this machine (not web pages: see guard); beyond
    it, anyone, and over plain http browsers send no Sec-Fetch-Site, so a page's `<img>` may
    send the GET setPropagate: only --api-keys protects it there."""
    if has_keys:
        return None
    if is_loopback(host):
        return (f"on {host} without --api-keys: any user or program of this machine may write "
                "(web pages may not: their Origin, Sec-Fetch-Site, Host and form Content-Types are refused)")
    return ("over plain http, where browsers send no Sec-Fetch-Site so only --api-keys keeps a web page's "
            f"GET setPropagate out, on {host} without --api-keys: anyone who can reach it may write")


def bind(host: str, port: int) -> socket.socket:
    """The socket `serve` listens on, bound before uvicorn starts, so an address in use or
    not this host's is one SpecError line (exit 2), not uvicorn's log and exit 1."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise SpecError(f"--host {host}: {exc.strerror}") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise SpecError(f"--host {host} --port {port}: cannot listen there: {exc.strerror or exc}") from exc
    return sock


def run(app: Starlette, sock: socket.socket, *, debug: bool = False) -> None:
    """Serve `app` on the bound `sock` with uvicorn until interrupted (one process: see writes)."""
    import uvicorn

    config = uvicorn.Config(app, log_level="debug" if debug else "warning")
    uvicorn.Server(config).run(sockets=[sock])
