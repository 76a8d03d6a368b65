"""ndstore's auto-ingest JSON (what ndio's `NDIngest` writes) turned into an ndingest spec.

One implementation for `ndingest ingest ND.json --store DIR` and `POST autoIngest/`:

    job = parse_job(raw)                 # pure: checks every field, RequestError naming it
    spec = prepare_job(store, job)       # fetch the sources, write STORE/_jobs/TOKEN.toml

The body (ndio's `nd_json`, ndstore's `extractDatasetDict`/`extractChannelDict`):
- `dataset`: `dataset_name`, `imagesize` and `voxelres` ([x, y, z]), optional `offset`,
  `timerange` ([t0, t1], inclusive; time series only, t0 = 0), `scalinglevels` (default
  "auto") and `scaling` (0 zslices, 1 isotropic);
- `project`: `project_name`, optional `token_name` (default the project's) and `public`;
- `channels`: {NAME: {`channel_name`, `datatype`, `channel_type` (image, annotation or
  timeseries), `data_url`, `file_format`, `file_type`, optional `windowrange`, `readonly`}}.
- Sources, by `file_format`: `SLICE` (ndstore's) with `file_type` tif, tiff or png is one
  2-D image per z at `{data_url}/{token}/{channel}/{z:04d}.{file_type}`, z from the
  dataset's z offset on, `imagesize` z of them; a time series has one such folder per time
  point, `{data_url}/{token}/{channel}/time{t:04d}/`. `HDF5` (ours) with `file_type` h5 or
  hdf5: `data_url` is the file itself (its `CUTOUT`, else its only 3-D array). Only
  `http(s)://` and `file://` URLs.

Slices are read where they are, over HTTP (`webslices`: the spec's source is the URL
pattern with `z_range`, and `t_range` for a time series), so a 2 TB stack needs no second
2 TB here. An HDF5 `data_url` is one file that h5py must open locally: a `file:///` one is
read in place, an http(s) one downloaded first into `STORE/_jobs/TOKEN/sources/` (a file
already there is not fetched again, so a rerun resumes). The spec, `STORE/_jobs/TOKEN.toml`,
names those sources; `_jobs` is a reserved name, so no dataset's folders can meet it.
ndio's `output_json` writes a Python repr (single quotes),
not JSON: `load_nd_json` reads JSON and falls back to `ast.literal_eval`.
"""
from __future__ import annotations

import ast
import json
import logging
import os
import tempfile
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import fetchpolicy
from .errors import FetchRefused, RequestError, SourceError
from .markers import atomic_write
from .spec import DATATYPES, JOBS, NAME_RE, RESERVED_NAMES, job_folder
from .wire.client import Client, decoded_pieces

logger = logging.getLogger(__name__)

SCHEMES = ("http", "https", "file")
FORMATS = {"slice": ("tif", "tiff", "png"), "hdf5": ("h5", "hdf5")}
CHANNEL_TYPES = ("image", "annotation", "timeseries")
ND_KEYS = ("dataset", "project", "channels")
DOWNLOAD_THREADS = 4
DOWNLOAD_TIMEOUT = 60.0  # s without a byte from the source's server
MAX_SIZE = 1 << 40  # bound of every size, offset and resolution of a body (sizes below 2^40)
MAX_TIME_POINTS = 1 << 20  # bound of a time series' timerange end (t1 < 2^20)
MAX_LEVELS = 40  # bound of scalinglevels: a size below 2^40 halves to 1 voxel within 40 levels


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
    """One auto-ingest body, checked: what the spec and the downloads are made from."""

    dataset: str
    size: tuple[int, int, int]
    resolution: tuple[float, float, float]
    offset: tuple[int, int, int]
    time_points: int  # 1 unless a channel is a time series
    scaling: str
    levels: int | str
    project: str
    token: str
    public: bool
    channels: tuple[ChannelJob, ...]


def _name(value, field: str) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise RequestError(f"{field} = {value!r} is not a valid name (ASCII letters, digits and _ only)")
    if value.lower() in (r.lower() for r in RESERVED_NAMES):
        raise RequestError(f"{field} = {value!r} is reserved (the store or the REST API uses it)")
    return value


def _table(body: dict, key: str) -> dict:
    value = body.get(key)
    if not isinstance(value, dict):
        raise RequestError(f"{key} must be an object")
    return value


def _numbers(value, field: str, kind: type, *, positive: bool, count: int = 3, below: int = MAX_SIZE) -> tuple:
    """`count` finite numbers in [0, below) (above 0 when `positive`): a size, offset or
    resolution past 2^40 would overflow the catalog's integers and every plan after it."""
    ok = isinstance(value, (list, tuple)) and len(value) == count and all(
        isinstance(v, (int, float) if kind is float else int) and not isinstance(v, bool) for v in value)
    if not ok or not all(0 <= v < below and (v > 0 or not positive) for v in value):  # NaN fails 0 <= v
        axes = "[x, y, z]" if count == 3 else "[t0, t1]"
        raise RequestError(f"{field} = {value!r} must be {count} {'positive' if positive else 'non-negative'} "
                           f"{'numbers' if kind is float else 'integers'} {axes} below 2^{below.bit_length() - 1}")
    return tuple(kind(v) for v in value)


def _flag(value, field: str) -> bool:
    if value in (0, 1) and not isinstance(value, float):
        return bool(value)
    raise RequestError(f"{field} = {value!r} must be 0 or 1")


def _scaling(value) -> str:
    names = {0: "zslices", 1: "isotropic", "zslices": "zslices", "isotropic": "isotropic", "xyz": "isotropic"}
    if isinstance(value, bool) or value not in names:
        raise RequestError(f"dataset.scaling = {value!r} must be 0 (zslices) or 1 (isotropic)")
    return names[value]


def _levels(value) -> int | str:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_LEVELS):
        return value
    raise RequestError(f"dataset.scalinglevels = {value!r} must be an integer from 0 to {MAX_LEVELS}")


def _time_points(ds: dict, channels: tuple[ChannelJob, ...]) -> int:
    if not any(c.channel_type == "timeseries" for c in channels):
        return 1
    if "timerange" not in ds:
        raise RequestError("dataset.timerange is needed for a timeseries channel ([t0, t1], inclusive)")
    t0, t1 = _numbers(ds["timerange"], "dataset.timerange", int, positive=False, count=2, below=MAX_TIME_POINTS)
    if t0 != 0 or t1 < t0:
        raise RequestError(f"dataset.timerange = {ds['timerange']!r}: time series start at 0 here ([0, t1])")
    if any(c.channel_type != "timeseries" for c in channels):
        raise RequestError("a timeseries channel cannot share a job with image or annotation channels")
    return t1 - t0 + 1


def check_url(url, field: str) -> str:
    """Only http(s) and file URLs are fetched; anything else is a RequestError."""
    if not isinstance(url, str) or not url:
        raise RequestError(f"{field} = {url!r} must be a URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise RequestError(f"{field} = {url!r}: only {', '.join(SCHEMES)} URLs are fetched")
    if parts.scheme == "file" and (parts.netloc not in ("", "localhost") or not parts.path.startswith("/")):
        raise RequestError(f"{field} = {url!r}: a file URL names an absolute path on this host (file:///abs/path)")
    if parts.scheme != "file" and not parts.hostname:
        raise RequestError(f"{field} = {url!r} names no host")
    return url.rstrip("/")


def _channel(key: str, table) -> ChannelJob:
    where = f"channels.{key}"
    if not isinstance(table, dict):
        raise RequestError(f"{where} must be an object")
    name = _name(table.get("channel_name", key), f"{where}.channel_name")
    if name != key:
        raise RequestError(f"{where}.channel_name = {name!r} disagrees with its key {key!r}")
    kind = table.get("channel_type")
    if kind not in CHANNEL_TYPES:
        raise RequestError(f"{where}.channel_type = {kind!r} must be one of {', '.join(CHANNEL_TYPES)}")
    datatype = table.get("datatype")
    if datatype not in DATATYPES:
        raise RequestError(f"{where}.datatype = {datatype!r} must be one of {', '.join(DATATYPES)}")
    if table.get("resolution", 0) not in (0, None):
        raise RequestError(f"{where}.resolution = {table['resolution']!r}: only resolution 0 is ingested; "
                           f"the levels above are built from it")
    fmt = str(table.get("file_format", "")).lower()
    file_type = str(table.get("file_type", "")).lower()
    if fmt not in FORMATS or file_type not in FORMATS[fmt]:
        raise RequestError(f"{where}: file_format {table.get('file_format')!r} with file_type "
                           f"{table.get('file_type')!r} is not one of: SLICE with tif, tiff or png, "
                           f"HDF5 with h5 or hdf5")
    if kind == "timeseries" and fmt != "slice":
        raise RequestError(f"{where}: a timeseries channel is read from SLICE files (time{{t:04d}}/ folders)")
    window = table.get("windowrange")
    if window is not None:
        if not (isinstance(window, (list, tuple)) and len(window) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < MAX_SIZE for v in window)
                and window[0] <= window[1]):
            raise RequestError(f"{where}.windowrange = {window!r} must be [low, high], each of magnitude below 2^40")
        window = (float(window[0]), float(window[1]))
    readonly = table.get("readonly", 0)
    return ChannelJob(name, kind, datatype, check_url(table.get("data_url"), f"{where}.data_url"), fmt, file_type,
                      window, _flag(0 if readonly is None else readonly, f"{where}.readonly"))


def load_nd_json(raw: bytes | str):
    """The body as Python values: JSON, else a Python literal (ndio's `output_json` writes
    `str(dict)`). Never evaluates code: `ast.literal_eval` admits literals only."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nesting 100k deep
        error = exc
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError, TypeError):
        raise RequestError(f"the body is neither JSON nor a Python literal: {error}") from None


def job_from_body(body) -> Job:
    """A parsed body, checked field by field; RequestError naming the first bad one."""
    if not isinstance(body, dict):
        raise RequestError("the body must be an object with dataset, project and channels")
    ds, pr, chans = _table(body, "dataset"), _table(body, "project"), _table(body, "channels")
    if not chans:
        raise RequestError("channels names no channel")
    project = _name(pr.get("project_name"), "project.project_name")
    channels = tuple(_channel(k, v) for k, v in chans.items())
    public = pr.get("public", 1)
    return Job(
        dataset=_name(ds.get("dataset_name"), "dataset.dataset_name"),
        size=_numbers(ds.get("imagesize"), "dataset.imagesize", int, positive=True),
        resolution=_numbers(ds.get("voxelres"), "dataset.voxelres", float, positive=True),
        offset=_numbers(ds.get("offset") or [0, 0, 0], "dataset.offset", int, positive=False),
        time_points=_time_points(ds, channels),
        scaling=_scaling(ds.get("scaling", 0) if ds.get("scaling") is not None else 0),
        levels=_levels(ds.get("scalinglevels", "auto") if ds.get("scalinglevels") is not None else "auto"),
        project=project,
        token=_name(pr.get("token_name") or project, "project.token_name"),
        public=_flag(1 if public is None else public, "project.public"),
        channels=channels,
    )


def parse_job(raw: bytes | str, where: str = "autoIngest") -> Job:
    """`load_nd_json` then `job_from_body`; every error one line starting with `where`."""
    try:
        return job_from_body(load_nd_json(raw))
    except RequestError as exc:
        raise RequestError(f"{where}: {exc}") from None


def is_nd_json(path: str | os.PathLike) -> bool:
    """Whether `path` holds an auto-ingest body rather than a TOML spec: a `.json` name, or
    (any other name but `.toml`) a JSON or Python-literal object with dataset, project and
    channels."""
    p = Path(path)
    if p.suffix.lower() == ".json":
        return True
    if p.suffix.lower() == ".toml":
        return False
    try:
        body = load_nd_json(p.read_bytes()[: 1 << 20])
    except (OSError, RequestError):
        return False
    return isinstance(body, dict) and all(k in body for k in ND_KEYS)


# --- where a job's files go ------------------------------------------------------------------------
def jobs_dir(store: Path) -> Path:
    return Path(store) / JOBS


def spec_path(store: Path, token: str) -> Path:
    """STORE/_jobs/TOKEN.toml, the job's spec."""
    return jobs_dir(store) / f"{token}.toml"


def job_dir(store: Path, token: str) -> Path:
    """STORE/_jobs/TOKEN/: the job's sources (and, on a server, its log and status)."""
    return jobs_dir(store) / token


def slice_pattern(job: Job, channel: ChannelJob) -> str:
    """ndstore's SLICE layout as a `webslices` URL pattern: `{data_url}/{token}/{channel}/
    [time{t:04d}/]{z:04d}.{ext}`."""
    folder = f"{channel.data_url}/{job.token}/{channel.name}"
    if channel.channel_type == "timeseries":
        folder += "/time{t:04d}"
    return folder + "/{z:04d}." + channel.file_type


def hdf5_file(channel: ChannelJob, sources: Path) -> Path:
    """Where an HDF5 source is read: a file:/// URL's own file, else its copy under sources/."""
    from .webslices import file_path

    if urllib.parse.urlsplit(channel.data_url).scheme == "file":
        return file_path(channel.data_url)
    return sources / f"{channel.name}.{channel.file_type}"


def spec_source(job: Job, channel: ChannelJob, sources: Path) -> dict:
    """The spec's `source` (and `z_range`, `t_range`) of a channel: an HDF5 file fetched
    under sources/, or the slices' URL pattern, z numbered from the dataset's z offset."""
    if channel.file_format == "hdf5":
        return {"source": str(hdf5_file(channel, sources))}
    out = {"source": slice_pattern(job, channel), "z_range": [job.offset[2], job.offset[2] + job.size[2]]}
    if channel.channel_type == "timeseries":
        out["t_range"] = [0, job.time_points]
    return out


def spec_text(job: Job, store: Path) -> str:
    """The `ndingest ingest` spec of a job: `store`, the sources under STORE/_jobs/TOKEN/sources/."""
    store = Path(store).resolve()
    sources = job_dir(store, job.token) / "sources"
    levels = f'"{job.levels}"' if job.levels == "auto" else str(job.levels)
    lines = ["# written by ndingest from an auto-ingest body (ndstore's ND JSON)",
             "[dataset]", f'name = "{job.dataset}"', f"offset = [{', '.join(map(str, job.offset))}]",
             f"voxel_resolution = [{', '.join(repr(r) for r in job.resolution)}]",
             f'scaling_option = "{job.scaling}"', f"scaling_levels = {levels}", "",
             "[project]", f'name = "{job.project}"', f'token = "{job.token}"',
             f"public = {'true' if job.public else 'false'}", ""]
    for c in job.channels:
        lines += [f"[channels.{c.name}]", f'type = "{c.channel_type}"',
                  *(f"{key} = {json.dumps(value)}" for key, value in spec_source(job, c, sources).items()),
                  f'datatype = "{c.datatype}"', f"readonly = {'true' if c.readonly else 'false'}"]
        if c.window is not None:
            lines.append(f"window_range = [{c.window[0]!r}, {c.window[1]!r}]")
        lines.append("")
    lines += ["[store]", f"path = {json.dumps(str(store))}", ""]
    return "\n".join(lines)


# --- fetching the sources --------------------------------------------------------------------------
def _fetch(url: str, part: Path, cap: int | None) -> None:
    parts = urllib.parse.urlsplit(url)
    import requests

    client = Client(f"{parts.scheme}://{parts.netloc}", key=None)  # retries connection errors and 5xx
    try:
        with client.session().get(url, stream=True, timeout=DOWNLOAD_TIMEOUT) as reply:
            if reply.status_code != 200:
                raise SourceError(f"{url}: answered {reply.status_code}")
            if urllib.parse.urlsplit(reply.url).scheme not in ("http", "https"):
                raise SourceError(f"{url}: redirected to {reply.url}, which is not http(s)")
            with open(part, "wb") as out:
                for piece in decoded_pieces(reply, url, cap=cap):
                    out.write(piece)
    except FetchRefused as exc:
        raise FetchRefused(str(exc) if str(exc).startswith(url) else f"{url}: {exc}") from None
    except requests.RequestException as exc:
        raise SourceError(f"{url}: cannot fetch it: {type(exc).__name__}") from None


def download(url: str, target: Path, cap: int | None = None) -> None:
    """One file by http(s), to a temp name and then renamed, at most `cap` bytes (decoded);
    a target already there is complete and kept."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    part = _part(target)
    try:
        _fetch(url, part, cap)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)


def _part(target: Path) -> Path:
    """A temp name of its own beside `target` (two runs fetching at once never share one)."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    return Path(name)


def declared_bytes(job: Job, channel: ChannelJob) -> int:
    """What the body says a channel holds: x × y × z × t × bytes per voxel."""
    x, y, z = job.size
    return x * y * z * job.time_points * np.dtype(channel.datatype).itemsize


def job_policy(job: Job, policy: fetchpolicy.FetchPolicy) -> fetchpolicy.FetchPolicy:
    """`policy` (the server's) for this job: each slice body capped at `volume_cap` of the
    largest page the body declares (x × y × bytes per voxel). A download's cap is its own
    channel's (`prepare_job`)."""
    pages = [job.size[0] * job.size[1] * np.dtype(c.datatype).itemsize for c in job.channels
             if c.file_format == "slice"]
    return policy.with_slice_bytes(fetchpolicy.volume_cap(max(pages)) if pages else None)


def refuse_files(job: Job, policy: fetchpolicy.FetchPolicy) -> None:
    """A RequestError naming the first `file://` data_url outside `policy.allow_files` (its
    path resolved: a symlink out is outside). A slice folder is checked here as a folder;
    each slice file again where the job reads it."""
    for c in job.channels:
        if urllib.parse.urlsplit(c.data_url).scheme != "file":
            continue
        from .webslices import file_path

        if not fetchpolicy.is_inside(file_path(c.data_url), policy.allow_files):
            raise RequestError(f"channels.{c.name}.data_url = {c.data_url!r}: a file outside the folders "
                               f"serve --allow-files (NDINGEST_ALLOW_FILES) allows is not read")


def source_size(job: Job, channel: ChannelJob, store: Path) -> tuple[int, int, int]:
    """(x, y, z) of a channel's source, opened as the spec will open it (slices staged
    where the spec's runs stage them)."""
    from .sources import open_source

    found = spec_source(job, channel, job_dir(store, job.token) / "sources")
    return tuple(open_source(found["source"], z_range=found.get("z_range"), t_range=found.get("t_range"),
                             spec_path=spec_path(store, job.token)).size_xyz)


def check_sizes(job: Job, store: Path) -> None:
    """Each channel's source is as large as the body's `imagesize`; a RequestError otherwise."""
    for c in job.channels:
        size = source_size(job, c, store)
        if size != job.size:
            raise RequestError(f"channel {c.name}: the source is x {size[0]}, y {size[1]}, z {size[2]}, but "
                               f"dataset.imagesize is {list(job.size)}")


def prepare_job(store: Path, job: Job, *, say=None) -> Path:
    """Fetch the http(s) HDF5 sources into STORE/_jobs/TOKEN/sources/ (slices and local
    files are read where they are), check every source's size, and write the spec
    STORE/_jobs/TOKEN.toml; its path. A rerun fetches only what is missing."""
    sources = job_dir(store, job.token) / "sources"
    capped = fetchpolicy.current() is not None  # a job posted to serve
    items = [(c.data_url, hdf5_file(c, sources), fetchpolicy.volume_cap(declared_bytes(job, c)) if capped else None)
             for c in job.channels if c.file_format == "hdf5" and not c.data_url.startswith("file:")]
    if items and say is not None:
        say(f"fetching {len(items)} HDF5 source files into {sources}")
    with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
        list(pool.map(lambda item: download(*item), items))
    check_sizes(job, store)
    return write_spec(store, job)


def write_spec(store: Path, job: Job) -> Path:
    """STORE/_jobs/TOKEN.toml, written atomically; its path."""
    path = spec_path(store, job.token)
    atomic_write(path, spec_text(job, store).encode(), durable=False)
    return path


def job_running(spec: Path) -> bool:
    """Whether the job of a job spec (STORE/_jobs/TOKEN.toml) says it is running or queued
    (the server's `status.json`): then a source still missing is to be fetched, not lost."""
    folder = job_folder(spec)
    try:
        return json.loads((folder / "status.json").read_text()).get("state") in ("running", "queued")
    except (OSError, ValueError, AttributeError, TypeError):  # TypeError: not a job's spec
        return False


def fetching_note(spec: Path, error: Exception) -> str | None:
    """For a job's spec (STORE/_jobs/TOKEN.toml) whose fetched HDF5 source cannot be opened
    (`error` names a file under the job's sources/): how many files are fetched so far, and
    where the job says more; None for any other spec or error (a slice server that cannot
    be reached is its own error, not a fetch under way)."""
    folder = job_folder(spec)
    if folder is None or str(folder / "sources") not in str(error):
        return None
    fetched = sum(1 for p in (folder / "sources").rglob("*") if p.is_file() and not p.name.endswith(".part"))
    log = folder / "ingest.log"
    more = f"; see {log}" if log.exists() else ""
    return (f"an auto-ingest job: its sources are still being fetched, or the fetch failed; "
            f"{fetched} files in {folder / 'sources'} so far{more}")
