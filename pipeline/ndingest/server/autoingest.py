"""ndstore's auto-ingest: `POST autoIngest/` with the JSON ndio's `NDIngest` writes, answered
at once; the ingest runs in the background as an `ndingest ingest` subprocess.

    POST {prefix}autoIngest/            {"dataset": {...}, "project": {...}, "channels": {...}, "metadata": ...}
    GET  {prefix}autoIngest/{project}/  (ours, not ndstore's) {"state": "running"|"done"|"failed", "message": ...}

The body (ndio's `nd_json`, ndstore's `extractDatasetDict`/`extractChannelDict`):
- `dataset`: `dataset_name`, `imagesize` and `voxelres` ([x, y, z]), optional `offset`,
  `scalinglevels` (default "auto") and `scaling` (0 zslices, 1 isotropic);
- `project`: `project_name`, optional `token_name` (default the project's) and `public`;
- `channels`: {NAME: {`channel_name`, `datatype`, `channel_type` (image or annotation),
  `data_url`, `file_format`, `file_type`, optional `windowrange`, `readonly`}}.
- Sources, by `file_format`: `SLICE` (ndstore's) with `file_type` tif or tiff is one 2-D
  TIFF per z at `{data_url}/{token}/{channel}/{z:04d}.{file_type}`, z from the dataset's z
  offset on, `imagesize` z of them; `HDF5` (ours) with `file_type` h5 or hdf5: `data_url`
  is the file itself (its `CUTOUT`, else its only 3-D array). Only `http(s)://` and
  `file://` URLs; everything is downloaded first, so the ingest reads local files that
  cannot change under it.

A job lives in `STORE/_markers/autoIngest/{dataset}/{project}/` (`_markers` is private to
the store and `autoIngest` is a reserved name, so no dataset's folders can meet it):
`sources/`, `spec.toml`, `ingest.log` and `status.json`. One job per project at a time: the
POST takes an `flock` on the job's `lock` (409 while another holds it, in any worker
process) and the job's thread keeps it until the ingest ends. The ingest is a subprocess,
so a crash of it never takes the server down; a job whose server died while it ran (state
"running", lock free) reads as failed. A job that failed may be posted again: the ingest
resumes. With `--api-keys`, posting needs a key (ndio sends none: 401).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .. import catalog
from ..errors import NotFound, RequestError, SourceError, StateConflict
from ..markers import atomic_write
from ..runlock import try_lock
from ..spec import DATATYPES, NAME_RE, RESERVED_NAMES
from .context import ServerContext, nd_routes
from .writes import read_body

logger = logging.getLogger(__name__)

JSON_LIMIT = 1 << 20  # bytes of an autoIngest body
JOBS = ("_markers", "autoIngest")  # under the store
RUNNING, DONE, FAILED = "running", "done", "failed"
SCHEMES = ("http", "https", "file")
FORMATS = {"slice": ("tif", "tiff"), "hdf5": ("h5", "hdf5")}
CHANNEL_TYPES = ("image", "annotation")
DOWNLOAD_THREADS = 4
DOWNLOAD_TIMEOUT = 60.0  # s without a byte from the source's server


# --- the body ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChannelJob:
    name: str
    channel_type: str
    datatype: str
    data_url: str
    file_format: str  # "slice" or "hdf5"
    file_type: str
    window: tuple[float, float] | None
    readonly: bool


@dataclass(frozen=True)
class Job:
    """One autoIngest body, checked: what the spec and the downloads are made from."""

    dataset: str
    size: tuple[int, int, int]
    resolution: tuple[float, float, float]
    offset: tuple[int, int, int]
    scaling: str
    levels: int | str
    project: str
    token: str
    public: bool
    channels: tuple[ChannelJob, ...]


def _name(value, field: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise RequestError(f"autoIngest: {field} = {value!r} is not a valid name (ASCII letters, digits and _ only)")
    if value.lower() in (r.lower() for r in RESERVED_NAMES):
        raise RequestError(f"autoIngest: {field} = {value!r} is reserved (the store or the REST API uses it)")
    return value


def _table(body: dict, key: str, where: str) -> dict:
    value = body.get(key)
    if not isinstance(value, dict):
        raise RequestError(f"autoIngest: {where}{key} must be an object")
    return value


def _numbers(value, field: str, kind: type, *, positive: bool) -> tuple:
    ok = isinstance(value, list) and len(value) == 3 and all(
        isinstance(v, (int, float) if kind is float else int) and not isinstance(v, bool) for v in value)
    if not ok or any(v < 0 or (positive and v == 0) for v in value):
        raise RequestError(f"autoIngest: {field} = {value!r} must be three {'positive' if positive else 'non-negative'} "
                           f"{'numbers' if kind is float else 'integers'} [x, y, z]")
    return tuple(kind(v) for v in value)


def _flag(value, field: str) -> bool:
    if value in (0, 1) and not isinstance(value, float):
        return bool(value)
    raise RequestError(f"autoIngest: {field} = {value!r} must be 0 or 1")


def _scaling(value) -> str:
    names = {0: "zslices", 1: "isotropic", "zslices": "zslices", "isotropic": "isotropic", "xyz": "isotropic"}
    if isinstance(value, bool) or value not in names:
        raise RequestError(f"autoIngest: dataset.scaling = {value!r} must be 0 (zslices) or 1 (isotropic)")
    return names[value]


def _levels(value) -> int | str:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise RequestError(f"autoIngest: dataset.scalinglevels = {value!r} must be an integer >= 0")


def check_url(url, field: str) -> str:
    """Only http(s) and file URLs are fetched; anything else is a 400."""
    if not isinstance(url, str) or not url:
        raise RequestError(f"autoIngest: {field} = {url!r} must be a URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise RequestError(f"autoIngest: {field} = {url!r}: only {', '.join(SCHEMES)} URLs are fetched")
    if parts.scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path.startswith("/")):
        raise RequestError(f"autoIngest: {field} = {url!r}: a file URL names an absolute path on this host "
                           f"(file:///abs/path)")
    if parts.scheme != "file" and not parts.hostname:
        raise RequestError(f"autoIngest: {field} = {url!r} names no host")
    return url.rstrip("/")


def _channel(key: str, table) -> ChannelJob:
    where = f"channels.{key}"
    if not isinstance(table, dict):
        raise RequestError(f"autoIngest: {where} must be an object")
    name = _name(table.get("channel_name", key), f"{where}.channel_name")
    if name != key:
        raise RequestError(f"autoIngest: {where}.channel_name = {name!r} disagrees with its key {key!r}")
    kind = table.get("channel_type")
    if kind not in CHANNEL_TYPES:
        raise RequestError(f"autoIngest: {where}.channel_type = {kind!r} must be one of {', '.join(CHANNEL_TYPES)} "
                           f"(time series are not auto-ingested)")
    datatype = table.get("datatype")
    if datatype not in DATATYPES:
        raise RequestError(f"autoIngest: {where}.datatype = {datatype!r} must be one of {', '.join(DATATYPES)}")
    if table.get("resolution", 0) != 0:
        raise RequestError(f"autoIngest: {where}.resolution = {table['resolution']!r}: only resolution 0 is ingested; "
                           f"the levels above are built from it")
    fmt = str(table.get("file_format", "")).lower()
    file_type = str(table.get("file_type", "")).lower()
    if fmt not in FORMATS or file_type not in FORMATS[fmt]:
        raise RequestError(f"autoIngest: {where}: file_format {table.get('file_format')!r} with file_type "
                           f"{table.get('file_type')!r} is not one of: SLICE with tif or tiff, HDF5 with h5 or hdf5")
    window = table.get("windowrange")
    if window is not None:
        if not (isinstance(window, list) and len(window) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in window) and window[0] <= window[1]):
            raise RequestError(f"autoIngest: {where}.windowrange = {window!r} must be [low, high]")
        window = (float(window[0]), float(window[1]))
    return ChannelJob(name, kind, datatype, check_url(table.get("data_url"), f"{where}.data_url"), fmt, file_type,
                      window, _flag(table.get("readonly", 0), f"{where}.readonly"))


def parse_job(raw: bytes) -> Job:
    """The autoIngest body, checked field by field; a 400 naming the first bad one."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"autoIngest: the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise RequestError("autoIngest: the body must be an object with dataset, project and channels")
    ds, pr, chans = _table(body, "dataset", ""), _table(body, "project", ""), _table(body, "channels", "")
    if not chans:
        raise RequestError("autoIngest: channels names no channel")
    project = _name(pr.get("project_name"), "project.project_name")
    return Job(
        dataset=_name(ds.get("dataset_name"), "dataset.dataset_name"),
        size=_numbers(ds.get("imagesize"), "dataset.imagesize", int, positive=True),
        resolution=_numbers(ds.get("voxelres"), "dataset.voxelres", float, positive=True),
        offset=_numbers(ds.get("offset", [0, 0, 0]), "dataset.offset", int, positive=False),
        scaling=_scaling(ds.get("scaling", 0)),
        levels=_levels(ds.get("scalinglevels", "auto")),
        project=project,
        token=_name(pr.get("token_name") or project, "project.token_name"),
        public=_flag(pr.get("public", 1), "project.public"),
        channels=tuple(_channel(k, v) for k, v in chans.items()),
    )


# --- the job's folder and state --------------------------------------------------------------------
def jobs_dir(store: Path) -> Path:
    return Path(store).joinpath(*JOBS)


def job_dir(store: Path, dataset: str, project: str) -> Path:
    return jobs_dir(store) / dataset / project


def write_status(folder: Path, state: str, message: str, **more) -> None:
    record = {"state": state, "message": message, "updated": time.time(), **more}
    atomic_write(folder / "status.json", json.dumps(record, indent=1).encode(), durable=False)


def read_status(folder: Path) -> dict:
    """The job's status; "running" with its lock free means its server died: failed."""
    try:
        status = json.loads((folder / "status.json").read_text())
    except (OSError, ValueError):
        return {"state": FAILED, "message": "the job's status is unreadable"}
    if status.get("state") == RUNNING:
        fd = try_lock(folder / "lock")
        if fd is not None:
            os.close(fd)
            status = {**status, "state": FAILED,
                      "message": "the server stopped while the job ran; post the same body again to resume it"}
    return status


def find_job(store: Path, project: str) -> Path:
    """The job folder of `project` (project names are unique in a catalog); 404 otherwise."""
    _name(project, "project")
    found = sorted(p for p in jobs_dir(store).glob(f"*/{project}") if (p / "status.json").exists())
    if not found:
        raise NotFound(f"no autoIngest of project {project!r} on this server")
    return found[0]


# --- the background job ----------------------------------------------------------------------------
def source_files(job: Job, channel: ChannelJob) -> list[tuple[str, str]]:
    """(URL, local file name) of every file the channel's source is made of."""
    if channel.file_format == "hdf5":
        return [(channel.data_url, f"{channel.name}.{channel.file_type}")]
    z0 = job.offset[2]
    return [(f"{channel.data_url}/{job.token}/{channel.name}/{z:04d}.{channel.file_type}",
             f"{channel.name}/{z:04d}.{channel.file_type}") for z in range(z0, z0 + job.size[2])]


def download(url: str, target: Path) -> None:
    """One file, to a temp name and then renamed; only http(s) and file URLs."""
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        try:
            shutil.copyfile(urllib.parse.unquote(parts.path), part)
        except OSError as exc:
            raise RequestError(f"{url}: cannot read it: {exc.strerror or exc}") from None
    else:
        try:
            with requests.get(url, stream=True, timeout=DOWNLOAD_TIMEOUT) as reply:
                if reply.status_code != 200:
                    raise RequestError(f"{url}: answered {reply.status_code}")
                if urllib.parse.urlsplit(reply.url).scheme not in ("http", "https"):
                    raise RequestError(f"{url}: redirected to {reply.url}, which is not http(s)")
                with open(part, "wb") as out:
                    for piece in reply.iter_content(1 << 20):
                        out.write(piece)
        except requests.RequestException as exc:
            raise RequestError(f"{url}: cannot fetch it: {type(exc).__name__}") from None
    os.replace(part, target)


def source_size(path: Path, channel: ChannelJob, pages: int) -> tuple[int, int, int]:
    """(x, y, z) of a downloaded source, from its header: the first TIFF page (of `pages`),
    or the HDF5 file's array."""
    if channel.file_format == "hdf5":
        import h5py

        from ..sources import find_hdf5_array

        name = find_hdf5_array(path)
        with h5py.File(path, "r") as f:
            shape = f[name].shape
        return (shape[-1], shape[-2], shape[-3])
    import tifffile

    with tifffile.TiffFile(path) as tif:
        y, x = tif.pages[0].shape[:2]
    return (x, y, pages)


def check_sizes(job: Job, folder: Path) -> None:
    """Each channel's source is as large as the body's `imagesize`; a RequestError otherwise."""
    for c in job.channels:
        files = source_files(job, c)
        first = folder / "sources" / files[0][1]
        try:
            size = source_size(first, c, len(files))
        except (OSError, ValueError, IndexError, KeyError) as exc:  # tifffile's TiffFileError is a ValueError
            raise SourceError(f"channel {c.name}: {files[0][0]} is not a readable "
                              f"{c.file_format.upper()} file: {exc}") from None
        if size != job.size:
            raise RequestError(f"channel {c.name}: the source is x {size[0]}, y {size[1]}, z {size[2]}, but "
                               f"dataset.imagesize is {list(job.size)}")


def spec_text(job: Job, store: Path, sources: dict[str, Path]) -> str:
    """The `ndingest ingest` spec of a job: the server's own store, the downloaded sources."""
    levels = f'"{job.levels}"' if job.levels == "auto" else str(job.levels)
    lines = ["[dataset]", f'name = "{job.dataset}"', f"offset = [{', '.join(map(str, job.offset))}]",
             f"voxel_resolution = [{', '.join(repr(r) for r in job.resolution)}]",
             f'scaling_option = "{job.scaling}"', f"scaling_levels = {levels}", "",
             "[project]", f'name = "{job.project}"', f'token = "{job.token}"',
             f"public = {'true' if job.public else 'false'}", ""]
    for c in job.channels:
        lines += [f"[channels.{c.name}]", f'type = "{c.channel_type}"', f"source = {json.dumps(str(sources[c.name]))}",
                  f'datatype = "{c.datatype}"', f"readonly = {'true' if c.readonly else 'false'}"]
        if c.window is not None:
            lines.append(f"window_range = [{c.window[0]!r}, {c.window[1]!r}]")
        lines.append("")
    lines += ["[store]", f"path = {json.dumps(str(Path(store).resolve()))}", ""]
    return "\n".join(lines)


def ingest_argv(spec: Path) -> list[str]:
    """`ndingest ingest SPEC` with this server's interpreter (its venv), whatever PATH holds."""
    return [sys.executable, "-c", "import sys; from ndingest.cli import main; sys.exit(main())", "ingest", str(spec)]


def last_error(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ndingest:")]
    return (errors or lines or ["no output"])[-1]


def run_job(store: Path, job: Job, folder: Path, lock_fd: int) -> None:
    """Download, write the spec, run the ingest; the status says how far it got. Holds
    the job's lock (`lock_fd`) until the end."""
    names = [c.name for c in job.channels]
    more = {"dataset": job.dataset, "project": job.project, "token": job.token, "channels": names}
    try:
        files = {c.name: source_files(job, c) for c in job.channels}
        count = sum(len(f) for f in files.values())
        write_status(folder, RUNNING, f"downloading {count} files", **more)
        with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            list(pool.map(lambda item: download(item[0], folder / "sources" / item[1]),
                          [item for f in files.values() for item in f]))
        check_sizes(job, folder)
        sources = {c.name: folder / "sources" / (f"{c.name}.{c.file_type}" if c.file_format == "hdf5"
                                                  else f"{c.name}/*.{c.file_type}") for c in job.channels}
        spec = folder / "spec.toml"
        atomic_write(spec, spec_text(job, store, sources).encode(), durable=False)
        write_status(folder, RUNNING, f"ingesting {', '.join(names)}", **more)
        with open(folder / "ingest.log", "wb") as log:
            # the ingest inherits the job's lock: should this server die, no second ingest of
            # the project starts while the first still runs
            code = subprocess.run(ingest_argv(spec), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  cwd=folder, pass_fds=(lock_fd,)).returncode
        if code != 0:
            write_status(folder, FAILED, f"ndingest ingest exited {code}: {last_error(folder / 'ingest.log')}", **more)
            return
        write_status(folder, DONE, f"ingested {', '.join(names)} of project {job.project}", **more)
    except (RequestError, SourceError) as exc:  # a source that cannot be fetched, read, or has another size
        write_status(folder, FAILED, str(exc), **more)
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


def start_job(ctx: ServerContext, job: Job) -> None:
    """Take the project's lock and start the job's thread; 409 while one runs, or when a
    channel exists that no failed job of ours left behind."""
    folder = job_dir(ctx.store, job.dataset, job.project)
    earlier = read_status(folder) if (folder / "status.json").exists() else None
    there = existing_channels(ctx, job)
    if there and (earlier is None or earlier["state"] == DONE):
        raise StateConflict(f"autoIngest: channel {', '.join(there)} already exists in project {job.project!r}; "
                            f"choose another channel name")
    fd = try_lock(folder / "lock")
    if fd is None:
        raise StateConflict(f"autoIngest: an ingest of project {job.project!r} is running; "
                            f"GET autoIngest/{job.project}/ for its state")
    try:
        write_status(folder, RUNNING, "starting", dataset=job.dataset, project=job.project)
        threading.Thread(target=run_job, args=(ctx.store, job, folder, fd), daemon=True,
                         name=f"autoingest-{job.project}").start()
    except BaseException:
        os.close(fd)
        raise


# --- routes --------------------------------------------------------------------------------------
def routes(ctx: ServerContext) -> list:
    async def post(request: Request) -> Response:
        ctx.require_key(request)
        job = parse_job(await read_body(request, JSON_LIMIT))
        await run_in_threadpool(start_job, ctx, job)
        return JSONResponse(f"SUCCESS. The ingest process has now started; GET autoIngest/{job.project}/ "
                            f"for its state.")

    def status(request: Request) -> Response:
        project = request.path_params["project"]
        folder = find_job(ctx.store, project)
        if not ctx.project_is_public(project):
            ctx.require_key(request)
        found = read_status(folder)
        return JSONResponse({"state": found["state"], "message": found["message"], "project": project,
                             "dataset": folder.parent.name, "channels": found.get("channels", [])})

    return [
        *nd_routes("autoIngest/", post, methods=("POST",)),
        *nd_routes("autoIngest/{project}/", status),
    ]

