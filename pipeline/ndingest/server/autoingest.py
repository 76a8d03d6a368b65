"""ndstore's auto-ingest: `POST autoIngest/` with the JSON ndio's `NDIngest` writes, answered
at once; the ingest runs in the background as an `ndingest ingest` subprocess.

    POST {prefix}autoIngest/            {"dataset": {...}, "project": {...}, "channels": {...}, "metadata": ...}
    GET  {prefix}autoIngest/{project}/  (ours, not ndstore's) {"state": "running"|"done"|"failed", "message": ...}

The body and how it becomes a spec: `ndingest.ndjson` (shared with `ndingest ingest
ND.json --store DIR`). The POST checks the body (400 naming the first bad field), writes the
spec to `STORE/_jobs/TOKEN.toml` and the body to `STORE/_jobs/TOKEN/nd.json`, answers 200,
and a thread runs `ndingest ingest STORE/_jobs/TOKEN/nd.json --store STORE` as a subprocess
(it fetches an http(s) HDF5 source into `STORE/_jobs/TOKEN/sources/`, reads slices where
they are, and runs the Luigi DAG), its output in `STORE/_jobs/TOKEN/ingest.log`, its state
in `STORE/_jobs/TOKEN/status.json`.
`ndingest status STORE/_jobs/TOKEN.toml` and the channel's `getPropagate/` show its progress.

One job per project at a time: the POST takes an `flock` on `STORE/_jobs/PROJECT.lock`
(409 while another holds it, in any worker process; project names have no dot, so no token's
file meets it) and the ingest subprocess inherits it until it ends. The ingest is a
subprocess, so a crash of it never takes the server down; a job whose server died while it
ran (state "running", lock free) reads as failed. A job that failed may be posted again: the
ingest resumes. With `--api-keys`, posting needs a key (ndio sends none: 401).

What a job may read is `ndingest.fetchpolicy`'s: a `file://` data_url outside `serve
--allow-files` is 400 at the POST; the subprocess gets the policy in its environment
(`job_env`), so its fetches reach public addresses only unless `--fetch-from` names them,
its downloads are capped, and it reads no HDF5 dataset stored in other files.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import catalog, fetchpolicy
from ..errors import NotFound, NotSupported, RequestError, StateConflict
from ..markers import atomic_write
from ..ndjson import Job, job_dir, job_policy, jobs_dir, load_nd_json, parse_job, refuse_files, spec_path, write_spec
from ..runlock import try_lock
from ..spec import NAME_RE
from .context import ServerContext, nd_routes
from .writes import read_body

logger = logging.getLogger(__name__)

JSON_LIMIT = 1 << 20  # bytes of an autoIngest body
RUNNING, DONE, FAILED = "running", "done", "failed"


# --- the job's folder and state --------------------------------------------------------------------
def lock_path(store: Path, project: str) -> Path:
    return jobs_dir(store) / f"{project}.lock"


def write_status(folder: Path, state: str, message: str, **more) -> None:
    record = {"state": state, "message": message, "updated": time.time(), **more}
    atomic_write(folder / "status.json", json.dumps(record, indent=1).encode(), durable=False)


def read_status(store: Path, folder: Path) -> dict:
    """The job's status; "running" with its project's lock free means its server died: failed."""
    try:
        status = json.loads((folder / "status.json").read_text())
    except (OSError, ValueError):
        return {"state": FAILED, "message": "the job's status is unreadable"}
    if status.get("state") == RUNNING and NAME_RE.fullmatch(str(status.get("project", ""))):
        fd = try_lock(lock_path(store, status["project"]))
        if fd is not None:
            os.close(fd)
            status = {**status, "state": FAILED,
                      "message": "the server stopped while the job ran; post the same body again to resume it"}
    return status


def find_job(store: Path, project: str) -> Path:
    """The job folder (STORE/_jobs/TOKEN/) of `project`, the latest one posted; 404 otherwise."""
    if not NAME_RE.fullmatch(project):
        raise NotFound(f"no autoIngest of project {project!r} on this server")
    found = []
    for status in jobs_dir(store).glob("*/status.json"):
        try:
            record = json.loads(status.read_text())
        except (OSError, ValueError):
            continue
        if record.get("project") == project:
            found.append((record.get("posted", 0), status.parent))
    if not found:
        raise NotFound(f"no autoIngest of project {project!r} on this server")
    return max(found)[1]


# --- the background job ----------------------------------------------------------------------------
def ingest_argv(body: Path, store: Path) -> list[str]:
    """`ndingest ingest BODY --store STORE` with this server's interpreter (its venv), whatever PATH holds."""
    return [sys.executable, "-c", "import sys; from ndingest.cli import main; sys.exit(main())", "ingest", str(body),
            "--store", str(store)]


def job_env(policy: fetchpolicy.FetchPolicy, job: Job, folder: Path) -> dict:
    """The ingest subprocess's environment: this server's, plus the job's `fetchpolicy`
    (NDINGEST_JOB_POLICY), which it and the Luigi workers it forks inherit."""
    found = job_policy(job, policy).with_files(folder / "sources")
    return {**os.environ, fetchpolicy.ENV: found.to_env()}


def last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ndingest:")]
    return (errors or lines or ["no output"])[-1]


def run_job(store: Path, job: Job, folder: Path, lock_fd: int, more: dict,
            policy: fetchpolicy.FetchPolicy = fetchpolicy.FetchPolicy()) -> None:
    """Run `ndingest ingest` on the job's body (fetch, spec, Luigi DAG) as a subprocess; the
    status says how it ended. Holds the project's lock (`lock_fd`) until the end."""
    try:
        with open(folder / "ingest.log", "wb") as log:
            # the ingest inherits the project's lock: should this server die, no second ingest
            # of the project starts while the first still runs
            code = subprocess.run(ingest_argv(folder / "nd.json", store), stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, cwd=folder, pass_fds=(lock_fd,),
                                  env=job_env(policy, job, folder)).returncode
        if code != 0:
            write_status(folder, FAILED, f"ndingest ingest exited {code}: {last_error(folder / 'ingest.log')}", **more)
            return
        names = ", ".join(c.name for c in job.channels)
        write_status(folder, DONE, f"ingested {names} of project {job.project}", **more)
    except Exception as exc:  # a thread has no caller: say "failed" rather than "running" forever
        logger.exception("autoIngest %s/%s failed", job.dataset, job.project)
        write_status(folder, FAILED, f"internal error: {type(exc).__name__}; the server's log has the details", **more)
    finally:
        os.close(lock_fd)


def existing_channels(ctx: ServerContext, job: Job) -> list[str]:
    c = catalog.channels.c
    wanted = [ch.name for ch in job.channels]
    return sorted(r["channel_name"] for r in ctx.rows(catalog.channels, c.project == job.project)
                  if r["channel_name"] in wanted)


def start_job(ctx: ServerContext, job: Job, body: bytes) -> None:
    """Take the project's lock, write the spec and the body, and start the job's thread; 409
    while one runs, when the token's job belongs to another project, or when a channel
    exists that no failed job of ours left behind."""
    if ctx.catalog_url is not None:
        raise NotSupported(f"autoIngest: this server's catalog is {ctx.catalog_name}, and a job's ingest writes "
                           f"STORE/catalog.sqlite; ingest with a spec whose store.catalog names it")
    store = Path(ctx.store).resolve()  # the subprocess runs in the job's folder
    folder = job_dir(store, job.token)
    earlier = read_status(store, folder) if (folder / "status.json").exists() else None
    if earlier is not None and earlier.get("project") not in (None, job.project):
        raise StateConflict(f"autoIngest: token {job.token!r} is project {earlier['project']!r}'s; "
                            f"choose another token_name")
    there = existing_channels(ctx, job)
    if there and (earlier is None or earlier["state"] == DONE):
        raise StateConflict(f"autoIngest: channel {', '.join(there)} already exists in project {job.project!r}; "
                            f"choose another channel name")
    fd = try_lock(lock_path(store, job.project))
    if fd is None:
        raise StateConflict(f"autoIngest: an ingest of project {job.project!r} is running; "
                            f"GET autoIngest/{job.project}/ for its state")
    try:
        more = {"dataset": job.dataset, "project": job.project, "token": job.token,
                "channels": [c.name for c in job.channels], "spec": str(spec_path(store, job.token)),
                "posted": time.time()}
        atomic_write(folder / "nd.json", body, durable=False)
        write_spec(store, job)
        write_status(folder, RUNNING, "checking the sources and ingesting; `ndingest status SPEC` for its blocks",
                     **more)
        threading.Thread(target=run_job, args=(store, job, folder, fd, more, ctx.fetch_policy), daemon=True,
                         name=f"autoingest-{job.project}").start()
    except BaseException:
        os.close(fd)
        raise


# --- routes --------------------------------------------------------------------------------------
def routes(ctx: ServerContext) -> list:
    async def post(request: Request) -> Response:
        ctx.require_key(request)
        raw = await read_body(request, JSON_LIMIT)
        job = parse_job(raw)
        try:
            refuse_files(job, ctx.fetch_policy)
        except RequestError as exc:
            raise RequestError(f"autoIngest: {exc}") from None
        # the body as JSON, even when it came as ndio's Python repr: what the subprocess reads
        body = json.dumps(load_nd_json(raw), default=str).encode()
        await run_in_threadpool(start_job, ctx, job, body)
        return JSONResponse(f"SUCCESS. The ingest process has now started; GET autoIngest/{job.project}/ "
                            f"for its state.")

    def status(request: Request) -> Response:
        project = request.path_params["project"]
        folder = find_job(ctx.store, project)
        if not ctx.project_is_public(project):
            ctx.require_key(request)
        found = read_status(ctx.store, folder)
        return JSONResponse({"state": found["state"], "message": found["message"], "project": project,
                             "dataset": found.get("dataset"), "token": found.get("token", folder.name),
                             "spec": found.get("spec"), "channels": found.get("channels", [])})

    return [
        *nd_routes("autoIngest/", post, methods=("POST",)),
        *nd_routes("autoIngest/{project}/", status),
    ]

