"""ndstore's auto-ingest: `POST autoIngest/` with the JSON ndio's `NDIngest` writes, answered
at once; the ingest runs in the background as an `ndingest ingest` subprocess.

    POST {prefix}autoIngest/            {"dataset": {...}, "project": {...}, "channels": {...}, "metadata": ...}
    GET  {prefix}autoIngest/{project}/  (ours, not ndstore's) {"state": "queued"|"running"|"done"|"failed", ...}

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
file meets it) and the ingest subprocess inherits it until it ends. At most `max_jobs`
(`serve --max-jobs`, NDINGEST_MAX_JOBS) jobs of a store run at once, across worker
processes: a running job holds one of the flocks `STORE/_jobs/.slots/0.lock` ..
`{max_jobs - 1}.lock` (a dot-name: no token's folder meets it), and its ingest inherits that
too. The rest queue: the POST still answers 200, the status says "queued" with the job's
place, and a thread of the server starts it, oldest first, when a slot frees. The ingest is
a subprocess, so a crash of it never takes the server down; a job whose server died while it
ran or waited (state "running" or "queued", its project's lock free) reads as failed. A job
that failed may be posted again: the ingest resumes. With `--api-keys`, posting needs a key
(ndio sends none: 401), checked before anything is looked up.

A POST claims the token's folder under an flock on `STORE/_jobs/TOKEN.claim`, held from the
owner check to the last write, so two POSTs of one `token_name` never both pass the check.
A token taken by another project (its job's or the catalog's), a project that exists,
private, with no job of this token, and a project whose job under another token runs or
waits answer one same 409: no answer tells another project's name or a private project's
existence.

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
from ..runlock import held_lock, try_lock
from ..spec import NAME_RE
from .context import ServerContext, nd_routes
from .writes import read_body

logger = logging.getLogger(__name__)

JSON_LIMIT = 1 << 20  # bytes of an autoIngest body
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
QUEUE_POLL = 0.25  # s between a queued job's looks for a free slot
STARTED = "checking the sources and ingesting; `ndingest status SPEC` for its blocks"
STOPPED = {RUNNING: "the server stopped while the job ran; post the same body again to resume it",
           QUEUED: "the server stopped while the job was queued; post the same body again to start it"}


# --- the job's folder and state --------------------------------------------------------------------
def lock_path(store: Path, project: str) -> Path:
    """STORE/_jobs/PROJECT.lock: held by the project's job (its thread, then its ingest), its token written in it."""
    return jobs_dir(store) / f"{project}.lock"


def claim_path(store: Path, token: str) -> Path:
    """STORE/_jobs/TOKEN.claim: held while a POST checks who owns the token's folder and writes in it."""
    return jobs_dir(store) / f"{token}.claim"


def slot_path(store: Path, index: int) -> Path:
    """STORE/_jobs/.slots/INDEX.lock, one of `--max-jobs` job slots (a dot-name: no token's folder)."""
    return jobs_dir(store) / ".slots" / f"{index}.lock"


def take_slot(store: Path, max_jobs: int) -> int | None:
    """The fd holding a free job slot of the store, or None while all `max_jobs` are taken (by any process)."""
    for index in range(max_jobs):
        fd = try_lock(slot_path(store, index))
        if fd is not None:
            return fd
    return None


def write_status(folder: Path, state: str, message: str, **more) -> None:
    record = {"state": state, "message": message, "updated": time.time(), **more}
    atomic_write(folder / "status.json", json.dumps(record, indent=1).encode(), durable=False)


def is_alive(store: Path, record: dict) -> bool:
    """Whether the job of a status record still holds its project's lock (its server's thread
    or its ingest); a lock held for another token of the project is not this job's."""
    path = lock_path(store, record["project"])
    fd = try_lock(path)
    if fd is not None:
        os.close(fd)
        return False
    try:
        holder = path.read_text(errors="replace").strip()
    except OSError:
        return True
    return holder in ("", record.get("token"))  # "": a holder that has not written its token yet


def read_status(store: Path, folder: Path) -> dict:
    """The job's status; "running" or "queued" with its project's lock free means its server died: failed."""
    try:
        status = json.loads((folder / "status.json").read_text())
    except (OSError, ValueError):
        return {"state": FAILED, "message": "the job's status is unreadable"}
    if (status.get("state") in STOPPED and NAME_RE.fullmatch(str(status.get("project", "")))
            and not is_alive(store, status)):
        status = {**status, "state": FAILED, "message": STOPPED[status["state"]]}
    return status


def job_records(store: Path) -> list[tuple[Path, dict]]:
    """(folder, status record) of every job of the store, as written (unreadable ones left out)."""
    found = []
    for status in jobs_dir(store).glob("*/status.json"):
        try:
            record = json.loads(status.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            found.append((status.parent, record))
    return found


def queued_ahead(store: Path, me: dict) -> int:
    """How many live queued jobs of the store were posted before `me` (a status record): they
    take a slot first, whichever worker process holds them."""
    mine = (me["posted"], me["token"])
    return sum(1 for _, r in job_records(store)
               if r.get("state") == QUEUED and r.get("token") != me["token"]
               and isinstance(r.get("posted"), (int, float)) and (r["posted"], str(r.get("token"))) < mine
               and NAME_RE.fullmatch(str(r.get("project", ""))) and is_alive(store, r))


def queued_message(place: int, max_jobs: int) -> str:
    slots = "its one job slot is" if max_jobs == 1 else f"all {max_jobs} of its job slots are"
    return f"queued, place {place}: the store's {slots} taken (serve --max-jobs); it starts when one frees"


def find_job(store: Path, project: str) -> Path:
    """The job folder (STORE/_jobs/TOKEN/) of `project`, the latest one posted; 404 otherwise."""
    found = [(record.get("posted", 0), folder) for folder, record in job_records(store)
             if record.get("project") == project] if NAME_RE.fullmatch(project) else []
    if not found:
        raise NotFound(f"no autoIngest of project {project!r} on this server")
    return max(found)[1]


def running_job(store: Path, project: str, channel: str) -> Path | None:
    """The folder of the queued or running job that writes `channel` of `project`, if one
    does (a delete of the channel is refused meanwhile, its fetch included, before its
    ingest takes the channel's lock)."""
    try:
        folder = find_job(store, project)
    except NotFound:
        return None
    status = read_status(store, folder)
    return folder if status.get("state") in (QUEUED, RUNNING) and channel in status.get("channels", []) else None


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


def run_job(store: Path, job: Job, folder: Path, fds: tuple[int, ...], more: dict,
            policy: fetchpolicy.FetchPolicy = fetchpolicy.FetchPolicy()) -> None:
    """Run `ndingest ingest` on the job's body (fetch, spec, Luigi DAG) as a subprocess; the
    status says how it ended. The subprocess inherits `fds` (the project's lock, the job's slot)."""
    try:
        with open(folder / "ingest.log", "wb") as log:
            # the ingest inherits the project's lock and its slot: should this server die, no
            # second ingest of the project starts, nor more than --max-jobs, while it still runs
            code = subprocess.run(ingest_argv(folder / "nd.json", store), stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, cwd=folder, pass_fds=fds,
                                  env=job_env(policy, job, folder)).returncode
        if code != 0:
            write_status(folder, FAILED, f"ndingest ingest exited {code}: {last_error(folder / 'ingest.log')}", **more)
            return
        names = ", ".join(c.name for c in job.channels)
        write_status(folder, DONE, f"ingested {names} of project {job.project}", **more)
    except Exception as exc:  # a thread has no caller: say "failed" rather than "running" forever
        logger.exception("autoIngest %s/%s failed", job.dataset, job.project)
        write_status(folder, FAILED, f"internal error: {type(exc).__name__}; the server's log has the details", **more)


def wait_for_slot(store: Path, folder: Path, more: dict, max_jobs: int) -> int:
    """The fd of a job slot, once this queued job is the oldest queued one and a slot is
    free; its status keeps its place meanwhile."""
    place = None
    while True:
        ahead = queued_ahead(store, more)
        if ahead == 0:
            fd = take_slot(store, max_jobs)
            if fd is not None:
                return fd
        if ahead + 1 != place:
            place = ahead + 1
            write_status(folder, QUEUED, queued_message(place, max_jobs), place=place, **more)
        time.sleep(QUEUE_POLL)


def job_thread(store: Path, job: Job, folder: Path, *, lock_fd: int, slot_fd: int | None, more: dict,
               max_jobs: int, policy: fetchpolicy.FetchPolicy = fetchpolicy.FetchPolicy()) -> None:
    """A job's thread: wait for a slot when it has none, then run it; lets go of the project's
    lock and the slot at the end (its ingest's copies go with the ingest)."""
    try:
        if slot_fd is None:
            slot_fd = wait_for_slot(store, folder, more, max_jobs)
            write_status(folder, RUNNING, STARTED, **more)
        run_job(store, job, folder, (lock_fd, slot_fd), more, policy)
    except Exception as exc:  # a thread has no caller: say "failed" rather than "queued" forever
        logger.exception("autoIngest %s/%s failed", job.dataset, job.project)
        write_status(folder, FAILED, f"internal error: {type(exc).__name__}; the server's log has the details", **more)
    finally:
        for fd in (lock_fd, slot_fd):
            if fd is not None:
                os.close(fd)


def existing_channels(ctx: ServerContext, job: Job) -> list[str]:
    c = catalog.channels.c
    wanted = [ch.name for ch in job.channels]
    return sorted(r["channel_name"] for r in ctx.rows(catalog.channels, c.project == job.project)
                  if r["channel_name"] in wanted)


def taken(job: Job) -> StateConflict:
    """The one answer for a token or project this POST may not take, whoever holds it."""
    return StateConflict(f"autoIngest: token {job.token!r} or project {job.project!r} is taken; "
                         f"choose another token_name or project_name")


def check_claim(ctx: ServerContext, store: Path, job: Job) -> bool:
    """May this job take its token's folder and its project? 409 (`taken`, alike) when the
    token's folder or catalog row is another project's, or the project exists, private, and
    no earlier job of this token made it; 409 naming the channel when a channel exists that
    no failed job of ours left behind. Whether an earlier job of this token was this
    project's. Run under the token's claim."""
    folder = job_dir(store, job.token)
    earlier = read_status(store, folder) if (folder / "status.json").exists() else None
    ours = earlier is not None and earlier.get("project") == job.project
    t = catalog.tokens.c
    owners = {r["project"] for r in ctx.rows(catalog.tokens, t.token_name == job.token)}
    private = (not ours and bool(ctx.rows(catalog.projects, catalog.projects.c.project_name == job.project))
               and not ctx.project_is_public(job.project))
    if (earlier is not None and earlier.get("project") not in (None, job.project)) or owners - {job.project} \
            or private:
        raise taken(job)
    there = existing_channels(ctx, job)
    if there and (earlier is None or earlier["state"] == DONE):
        raise StateConflict(f"autoIngest: channel {', '.join(there)} already exists in project {job.project!r}; "
                            f"choose another channel name")
    return ours


def start_job(ctx: ServerContext, job: Job, body: bytes) -> None:
    """Claim the token's folder, take the project's lock, write the spec and the body, and
    start the job's thread, running when a slot is free, else queued; 409 while a job of the
    project runs or waits, or as `check_claim` says."""
    if ctx.catalog_url is not None:
        raise NotSupported(f"autoIngest: this server's catalog is {ctx.catalog_name}, and a job's ingest writes "
                           f"STORE/catalog.sqlite; ingest with a spec whose store.catalog names it")
    store = Path(ctx.store).resolve()  # the subprocess runs in the job's folder
    folder = job_dir(store, job.token)
    with held_lock(claim_path(store, job.token)):  # one POST of a token at a time, check to last write
        ours = check_claim(ctx, store, job)
        fd = try_lock(lock_path(store, job.project))
        if fd is None and not ours:  # another token's job of the project (not in the catalog yet)
            raise taken(job)
        if fd is None:
            raise StateConflict(f"autoIngest: an ingest of project {job.project!r} is running or queued; "
                                f"GET autoIngest/{job.project}/ for its state")
        slot = None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, job.token.encode(), 0)  # whose lock: `is_alive`
            more = {"dataset": job.dataset, "project": job.project, "token": job.token,
                    "channels": [c.name for c in job.channels], "spec": str(spec_path(store, job.token)),
                    "posted": time.time()}
            atomic_write(folder / "nd.json", body, durable=False)
            write_spec(store, job)
            ahead = queued_ahead(store, more)
            slot = take_slot(store, ctx.max_jobs) if ahead == 0 else None
            if slot is None:
                write_status(folder, QUEUED, queued_message(ahead + 1, ctx.max_jobs), place=ahead + 1, **more)
            else:
                write_status(folder, RUNNING, STARTED, **more)
            threading.Thread(target=job_thread, args=(store, job, folder),
                             kwargs={"lock_fd": fd, "slot_fd": slot, "more": more, "max_jobs": ctx.max_jobs,
                                     "policy": ctx.fetch_policy},
                             daemon=True, name=f"autoingest-{job.project}").start()
        except BaseException:
            for held in (fd, slot):
                if held is not None:
                    os.close(held)
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
        if not ctx.project_is_public(project):  # the key before the lookup: missing and private answer alike
            ctx.require_key(request)
        folder = find_job(ctx.store, project)
        found = read_status(ctx.store, folder)
        place = {"place": found["place"]} if found["state"] == QUEUED and "place" in found else {}
        return JSONResponse({"state": found["state"], "message": found["message"], "project": project,
                             "dataset": found.get("dataset"), "token": found.get("token", folder.name),
                             "spec": found.get("spec"), "channels": found.get("channels", []), **place})

    return [
        *nd_routes("autoIngest/", post, methods=("POST",)),
        *nd_routes("autoIngest/{project}/", status),
    ]

