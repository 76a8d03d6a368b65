"""zarr (v2, v3, OME-Zarr), N5 and neuroglancer precomputed arrays, read through tensorstore.

Which array a folder or URL names is decided from its metadata files alone
(`locate_array`); tensorstore opens and reads it, in this process inside Luigi's forked
workers and in a reader process of its own anywhere else (`tensorstore_reader`), because
tensorstore aborts a forked child once its parent has used it. `sources.TensorstoreSource`
is the Source over these.
"""
from __future__ import annotations

import atexit
import json
import logging
import multiprocessing
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import traceback
import urllib.parse
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .errors import NdingestError, SourceError

logger = logging.getLogger(__name__)

TS_SCHEMES = ("zarr", "zarr2", "zarr3", "n5", "precomputed", "file")  # URL schemes: SCHEME://file:///abs
TS_DRIVERS = {"zarr2": "zarr", "zarr3": "zarr3", "n5": "n5", "precomputed": "neuroglancer_precomputed"}
METADATA_NAMES = frozenset({".zarray", ".zattrs", ".zgroup", "zarr.json", "attributes.json", "info", "provenance"})
# An array without a single chunk file reads as its fill value everywhere. zarr and
# tensorstore write no chunk that equals the fill value, so a small all-zero volume is one;
# past this size it is a broken or unwritten export (metadata claiming 10^12 voxels), refused.
EMPTY_ARRAY_VOXELS = 2**30


@dataclass(frozen=True)
class ArrayLocation:
    """A tensorstore-readable array as found on disk, before tensorstore opens it."""

    name: str                   # the folder or URL as the user wrote it, for messages
    format: str                 # zarr2 | zarr3 | n5 | precomputed
    folder: Path                # the array's own folder (an OME-Zarr group's first dataset)
    metadata: tuple[Path, ...]  # the files that fingerprint the source: never its chunks (millions)
    dims: str | None = None     # axis names the metadata declares, slowest first ("c" allowed)
    scale_key: str = ""         # precomputed: scale 0's folder, under `folder`


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SourceError(f"{path}: cannot read metadata: {exc}") from exc
    if not isinstance(doc, dict):
        raise SourceError(f"{path}: metadata is not a JSON object")
    return doc


def _axis_letters(names) -> str | None:
    """'tczyx' letters for axis names like ["c", "z", "y", "x"] (OME-Zarr, zarr v3
    dimension_names, N5 axes), or None when they are absent or other names."""
    if not isinstance(names, list) or not names:
        return None
    letters = [n.get("name") if isinstance(n, dict) else n for n in names]
    if not all(isinstance(n, str) and len(n) == 1 and n.lower() in "tczyx" for n in letters):
        return None
    out = "".join(letters).lower()
    return out if len(set(out)) == len(out) else None


def _url_folder(source: str) -> tuple[str | None, Path]:
    """(format hint, folder) of `precomputed://file:///abs`, `zarr://…`, `zarr2://…`,
    `zarr3://…`, `n5://…` or `file:///abs`; only local file URLs are read."""
    scheme, _, rest = source.partition("://")
    if scheme not in TS_SCHEMES:
        raise SourceError(f"{source}: unknown source URL scheme {scheme}://; "
                          f"a source URL is {', '.join(s + '://' for s in TS_SCHEMES if s != 'file')} then file:///abs/path")
    if scheme != "file":
        inner, sep, rest = rest.partition("://")
        if inner != "file" or not sep:
            raise SourceError(f"{source}: only local file:// URLs are read, e.g. {scheme}://file:///abs/path")
    if not rest.startswith("/"):
        raise SourceError(f"{source}: a file:// URL needs an absolute path (file:///abs/path), not {rest!r}")
    return (None if scheme in ("zarr", "file") else scheme, Path(urllib.parse.unquote(rest)))


def names_an_array_folder(source: str) -> bool:
    """Whether `source` is for `locate_array`: a URL or a folder (HDF5 and TIFF are files)."""
    return "://" in source or os.path.isdir(source)


def locate_array(source: str) -> ArrayLocation:
    """Which array a folder or URL names, from its metadata files alone (no tensorstore):
    `.zarray` zarr v2, `zarr.json` zarr v3, `attributes.json` N5, `info` precomputed; an
    OME-Zarr group is read at its first (highest resolution) dataset."""
    hint, folder = _url_folder(source) if "://" in source else (None, Path(source))
    if not folder.exists():
        raise SourceError(f"{source}: source folder not found")
    if not folder.is_dir():
        raise SourceError(f"{source}: not a folder")
    return _locate_in(source, folder, hint)


def _locate_in(name: str, folder: Path, hint: str | None) -> ArrayLocation:
    def has(f: str) -> bool:
        return (folder / f).is_file()

    if hint in (None, "precomputed") and has("info"):
        return _locate_precomputed(name, folder)
    if hint in (None, "zarr", "zarr2") and has(".zarray"):
        return ArrayLocation(name, "zarr2", folder, (folder / ".zarray",))
    if hint in (None, "zarr", "zarr3") and has("zarr.json"):
        meta = _read_json(folder / "zarr.json")
        if meta.get("node_type") == "array":
            return ArrayLocation(name, "zarr3", folder, (folder / "zarr.json",),
                                 dims=_axis_letters(meta.get("dimension_names")))
        attrs = meta.get("attributes") if isinstance(meta.get("attributes"), dict) else {}
        return _locate_ome(name, folder, attrs.get("ome", attrs), (folder / "zarr.json",), "zarr3")
    if hint in (None, "zarr", "zarr2") and (has(".zgroup") or has(".zattrs")):
        attrs = _read_json(folder / ".zattrs") if has(".zattrs") else {}
        return _locate_ome(name, folder, attrs, tuple(folder / f for f in (".zgroup", ".zattrs") if has(f)), "zarr2")
    if hint in (None, "n5") and has("attributes.json"):
        attrs = _read_json(folder / "attributes.json")
        if "dimensions" not in attrs:
            raise SourceError(f"{name}: an N5 group, not an array; name one of its arrays: "
                              f"{', '.join(_child_arrays(folder)) or 'none found'}")
        dims = _axis_letters(attrs.get("axes"))  # N5 lists axes fastest first, as its dimensions
        return ArrayLocation(name, "n5", folder, (folder / "attributes.json",), dims=dims[::-1] if dims else None)
    kind, files = {
        None: ("a zarr, N5 or neuroglancer precomputed", ".zarray, .zgroup, zarr.json, attributes.json or info"),
        "zarr": ("a zarr", ".zarray, .zgroup or zarr.json"), "zarr2": ("a zarr v2", ".zarray or .zgroup"),
        "zarr3": ("a zarr v3", "zarr.json"), "n5": ("an N5", "attributes.json"),
        "precomputed": ("a neuroglancer precomputed", "info"),
    }[hint]
    pages = next((e.name for e in os.scandir(folder) if e.name.lower().endswith((".tif", ".tiff"))), None)
    hint_pages = f"; for its TIFF pages, a glob such as \"{folder}/*{Path(pages).suffix}\"" if pages else ""
    raise SourceError(f"{name}: not {kind} folder (no {files}){hint_pages}")


def _child_arrays(folder: Path, limit: int = 10) -> list[str]:
    names = []
    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if entry.is_dir() and any((Path(entry.path) / f).is_file() for f in (".zarray", "zarr.json", "attributes.json")):
            names.append(entry.name)
            if len(names) == limit:
                break
    return names


def _locate_ome(name: str, folder: Path, attrs, group_metadata: tuple[Path, ...], fmt: str) -> ArrayLocation:
    """An OME-Zarr group's first dataset of its first multiscale (its highest resolution)."""
    multiscales = attrs.get("multiscales") if isinstance(attrs, dict) else None
    if not multiscales:
        raise SourceError(f"{name}: a zarr group without OME-Zarr multiscales; name one of its arrays: "
                          f"{', '.join(_child_arrays(folder)) or 'none found'}")
    try:
        first = multiscales[0]
        path = str(first["datasets"][0]["path"])
    except (KeyError, IndexError, TypeError) as exc:
        raise SourceError(f"{group_metadata[-1]}: OME-Zarr multiscales[0] has no datasets[0].path") from exc
    if not (folder / path).is_dir():
        raise SourceError(f"{name}: OME-Zarr dataset {path!r} (multiscales[0].datasets[0]) not found")
    inner = _locate_in(f"{name.rstrip('/')}/{path}", folder / path, fmt)
    return replace(inner, metadata=group_metadata + inner.metadata,
                   dims=_axis_letters(first.get("axes")) or inner.dims)


def _locate_precomputed(name: str, folder: Path) -> ArrayLocation:
    info = _read_json(folder / "info")
    try:
        key = str(info["scales"][0]["key"])
        channels = int(info.get("num_channels", 1))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise SourceError(f"{folder / 'info'}: not a neuroglancer precomputed info (scales[0].key): {exc}") from exc
    if channels != 1:
        raise SourceError(f"{name}: num_channels = {channels}; only single-channel precomputed volumes are read")
    return ArrayLocation(name, "precomputed", folder, (folder / "info",), dims="xyzc", scale_key=key)


def tensorstore_spec(location: ArrayLocation) -> dict:
    spec: dict = {"driver": TS_DRIVERS[location.format],
                  "kvstore": {"driver": "file", "path": str(location.folder.absolute()) + "/"}}
    if location.format == "precomputed":
        spec["scale_index"] = 0  # the highest resolution
    return spec


def _ts_message(exc: Exception) -> str:
    """tensorstore's message without the spec it appends."""
    return str(exc).split(" [tensorstore_spec=")[0]


def open_tensorstore(location: ArrayLocation):
    """The array as a read-only view whose dimensions are slowest first, from 0: N5 lists
    its dimensions fastest first (tensorstore keeps that order), precomputed starts at
    its voxel_offset."""
    import tensorstore as ts

    try:
        store = ts.open(tensorstore_spec(location), read=True).result()
    except ValueError as exc:
        raise SourceError(f"{location.name}: cannot open as {location.format}: {_ts_message(exc)}") from exc
    if location.format == "n5":
        store = store.T
    return store.translate_to[0]


class TensorstoreReader:
    """Opens (once per array) and reads tensorstore arrays in this process."""

    def __init__(self) -> None:
        self._stores: dict[ArrayLocation, object] = {}

    def _store(self, location: ArrayLocation):
        if location not in self._stores:
            self._stores[location] = open_tensorstore(location)
        return self._stores[location]

    def describe(self, location: ArrayLocation) -> tuple[tuple[int, ...], str]:
        store = self._store(location)
        return tuple(store.domain.shape), store.dtype.numpy_dtype.str

    def read(self, location: ArrayLocation, index: tuple, *, order: str, what: str) -> np.ndarray:
        try:
            return self._store(location)[index].read(order=order).result()
        except ValueError as exc:
            raise SourceError(f"{location.name}: cannot read {what}: {_ts_message(exc)}") from exc


def _send(stream, message) -> None:
    """A pickled message; an array in a reply follows it as raw bytes (a pickle would
    copy a block twice more)."""
    array = message[1] if message[0] == "ok" and isinstance(message[1], np.ndarray) else None
    if array is not None:
        order = "F" if array.flags.f_contiguous and not array.flags.c_contiguous else "C"
        array = np.asarray(array, order=order)
        message = ("array", array.shape, array.dtype.str, order)
    data = pickle.dumps(message, protocol=5)
    stream.write(struct.pack("<Q", len(data)) + data)
    if array is not None:
        stream.write(array.reshape(-1, order=order).view(np.uint8).data)
    stream.flush()


def _receive(stream):
    """The next message, or None at end of input."""
    head = stream.read(8)
    if len(head) < 8:
        return None
    message = pickle.loads(stream.read(struct.unpack("<Q", head)[0]))
    if message[0] != "array":
        return message
    _, shape, dtype, order = message
    flat = np.empty(int(np.prod(shape, dtype=np.int64)), dtype=dtype)
    view, done = flat.view(np.uint8).data, 0
    while done < len(view):
        got = stream.readinto(view[done:])
        if not got:
            return None
        done += got
    return ("ok", flat.reshape(shape, order=order))


class ReaderProcess:
    """tensorstore in a process of its own, for a process that may fork later.

    Once a process has used tensorstore, a child it forks aborts at its first tensorstore
    call ("fork() use detected"): keying handles by pid is not enough. The CLI opens and
    spot-checks sources, then Luigi forks its workers, so the CLI reads through this
    (a fresh interpreter, not a fork) and Luigi's workers read in their own process."""

    def __init__(self) -> None:
        package_root = str(Path(__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        self._proc = subprocess.Popen([sys.executable, "-c", "from ndingest.chunked import serve_reads; serve_reads()"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self._lock = threading.Lock()
        atexit.register(self.close)

    def _call(self, *request):
        with self._lock:
            try:
                _send(self._proc.stdin, request)
                reply = _receive(self._proc.stdout)
            except (OSError, ValueError):
                reply = None
        if reply is None:
            raise SourceError(f"tensorstore reader process ended (exit code {self._proc.poll()}) "
                              f"while reading {request[1].name}")
        kind, value = reply
        if kind == "error":
            raise SourceError(value)
        if kind == "bug":
            raise RuntimeError(f"in the tensorstore reader process:\n{value}")
        return value

    def describe(self, location: ArrayLocation) -> tuple[tuple[int, ...], str]:
        return self._call("describe", location)

    def read(self, location: ArrayLocation, index: tuple, *, order: str, what: str) -> np.ndarray:
        return self._call("read", location, index, order, what)

    def close(self) -> None:
        try:
            self._proc.stdin.close()  # the reader ends at end of input
        except OSError:
            pass  # it has ended already
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self._proc.stdout.close()


def serve_reads() -> None:
    """The reader process's loop: requests on stdin, replies on stdout, until end of input."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the CLI; its end of the pipe ends this
    requests, replies = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # nothing printed may land in the replies
    reader = TensorstoreReader()
    while (request := _receive(requests)) is not None:
        op, location, *args = request
        try:
            reply = ("ok", reader.describe(location) if op == "describe" else
                     reader.read(location, args[0], order=args[1], what=args[2]))
        except NdingestError as exc:
            reply = ("error", str(exc))
        except Exception:  # a bug: its traceback goes back to the caller
            reply = ("bug", traceback.format_exc())
        _send(replies, reply)


_READERS: dict[int, TensorstoreReader | ReaderProcess] = {}


def tensorstore_reader() -> TensorstoreReader | ReaderProcess:
    """In a worker that multiprocessing forked (Luigi's), tensorstore itself; in any other
    process, which may fork workers later, a reader process (one per process)."""
    pid = os.getpid()
    if pid not in _READERS:
        _READERS.clear()  # a parent's reader is not this process's to use
        forked_worker = multiprocessing.parent_process() is not None
        _READERS[pid] = TensorstoreReader() if forked_worker else ReaderProcess()
    return _READERS[pid]


def holds_a_chunk(location: ArrayLocation) -> bool:
    """Whether any chunk file lies under the array; stops at the first one found, so a
    2 TB array costs a few directory reads."""
    pending = [location.folder / location.scale_key]
    while pending:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    if entry.is_dir():
                        pending.append(Path(entry.path))
                    elif entry.name not in METADATA_NAMES:
                        return True
        except OSError:
            continue
    return False
