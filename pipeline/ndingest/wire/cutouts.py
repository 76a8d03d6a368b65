"""ndstore's cutout formats, both ways. The server's side: `encode` for GET answers,
`decode` for POST bodies. A client's side (the remote target, the ndstore reader):
`cutout_path` names a box, `encode_cutout` makes a POST body, `decode_cutout` reads a GET
answer through the same `decode`. Here, below readers, stores and the server, so that a
client reads an answer without importing the server package (Starlette).

Shapes (DESIGN's REST section): the cutout is (z, y, x), or (t, z, y, x) for a time series;
`hdf5` and `raw` carry it as is, `npz` and `blosc` with a leading axis of 1 (ndstore's
channel axis). Every body comes from a client, so decoding trusts nothing: the dtype and
shape must be exactly the channel's and the box's, decompression is bounded by the bytes
that shape needs, `npz` loads with `allow_pickle=False`, and `blosc.pack_array` — a pickle
— goes through `_NumpyOnlyUnpickler`, which builds numpy arrays and dtypes and nothing else.
"""
from __future__ import annotations

import io
import logging
import pickle
import struct
import zlib
from typing import Any, Callable

import numpy as np

from ..blocks import Box
from ..errors import RemoteError, RequestError

logger = logging.getLogger(__name__)

FORMATS = ("hdf5", "npz", "blosc", "raw")
MEDIA_TYPES = {"hdf5": "application/x-hdf5", "npz": "application/octet-stream",
               "blosc": "application/octet-stream", "raw": "application/octet-stream"}
HEADER_SLACK = 1 << 16  # bytes a pickle's or .npy's header may add to the voxels

# what a body may fail with while it is parsed: all of them mean "not a valid cutout"
_PARSE_ERRORS = (ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError, OSError,
                 OverflowError, MemoryError, RuntimeError, struct.error, zlib.error, pickle.UnpicklingError)


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise RequestError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    return fmt


# --- encode ----------------------------------------------------------------------------------
def encode(fmt: str, array: np.ndarray, *, channel: str, channel_type: str, datatype: str) -> tuple[bytes, str]:
    """The body of a GET cutout of `array` ((z, y, x) or (t, z, y, x)) and its media type."""
    check_format(fmt)
    array = np.asarray(array, dtype=datatype)
    if fmt == "hdf5":
        body = _encode_hdf5(array, channel=channel, channel_type=channel_type, datatype=datatype)
    elif fmt == "npz":
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(array)[np.newaxis], allow_pickle=False)
        body = zlib.compress(buf.getbuffer(), 1)
    elif fmt == "blosc":
        import blosc

        if array.nbytes + HEADER_SLACK > blosc.MAX_BUFFERSIZE:
            raise RequestError(f"a blosc cutout holds at most {blosc.MAX_BUFFERSIZE} bytes; this one is "
                               f"{array.nbytes}: ask for smaller boxes, or npz")
        body = blosc.pack_array(np.ascontiguousarray(array)[np.newaxis], clevel=5, cname="lz4")
    else:
        body = np.ascontiguousarray(array).tobytes()
    return body, MEDIA_TYPES[fmt]


def _encode_hdf5(array: np.ndarray, *, channel: str, channel_type: str, datatype: str) -> bytes:
    """An in-memory HDF5 file laid out as ndstore's (and the tutorial's) cutouts."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        group = f.create_group(channel)
        group.create_dataset("CUTOUT", data=array, compression="gzip", compression_opts=1)
        group.create_dataset("CHANNELTYPE", data=channel_type)
        group.create_dataset("DATATYPE", data=datatype)
    return buf.getvalue()


# --- a client's side --------------------------------------------------------------------------
def cutout_path(fmt: str, level: int, box: Box, t: int | None) -> str:
    """ndstore's cutout path after a channel's URL, `fmt/level/x0,x1/y0,y1/z0,z1/` (absolute
    voxels), with `t,t+1/` for one time point of a time series: what every client here asks."""
    b, e = box.begin, box.end
    return f"{fmt}/{level}/{b.x},{e.x}/{b.y},{e.y}/{b.z},{e.z}/" + (f"{t},{t + 1}/" if t is not None else "")


def encode_cutout(fmt: str, array: np.ndarray) -> bytes:
    """A POST body: (1, [t,] z, y, x), as ndstore's clients send it."""
    array = np.ascontiguousarray(array)[np.newaxis]
    if fmt == "blosc":
        import blosc

        return blosc.pack_array(array, clevel=1, cname="lz4")
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return zlib.compress(buf.getbuffer(), 1)


def decode_cutout(fmt: str, body: bytes, *, datatype: str, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A GET answer as the array of `shape`; blosc through the server's numpy-only
    unpickler (a blosc body is a pickle), npz with allow_pickle=False."""
    try:
        return decode(fmt, body, datatype=datatype, shape=shape)
    except RequestError as exc:
        raise RemoteError(f"{what}: the answer is not the cutout asked for: {exc}") from exc


# --- decode ----------------------------------------------------------------------------------
def decode(fmt: str, body: bytes, *, datatype: str, shape: tuple[int, ...], channel: str | None = None) -> np.ndarray:
    """The (z, y, x) or (t, z, y, x) array of `shape` a POST body carries, exactly of
    `datatype`; RequestError (400) with one line for anything else. For `hdf5`, the
    `CUTOUT` of the group named `channel` (or of the only group, or at the top level)."""
    check_format(fmt)
    dtype = np.dtype(datatype)
    shape = tuple(int(s) for s in shape)
    expected = int(np.prod(shape)) * dtype.itemsize
    try:
        if fmt == "raw":
            array = _decode_raw(body, dtype, shape, expected)
        elif fmt == "npz":
            array = _strip_channel_axis(_decode_npz(body, expected), shape, fmt)
        elif fmt == "blosc":
            array = _strip_channel_axis(_decode_blosc(body, expected), shape, fmt)
        else:
            array = _decode_hdf5(body, channel, dtype, shape)
    except RequestError:
        raise
    except _PARSE_ERRORS as exc:
        raise RequestError(f"{fmt} body is not a valid cutout: {_one_line(exc)}") from exc
    return _checked(array, dtype, shape, fmt)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _checked(array: Any, dtype: np.dtype, shape: tuple[int, ...], fmt: str) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise RequestError(f"{fmt} body holds a {type(array).__name__}, not a numpy array")
    if array.dtype != dtype:
        raise RequestError(f"{fmt} body holds {array.dtype.name} voxels; the channel stores {dtype.name}")
    if array.shape != shape:
        raise RequestError(f"{fmt} body has shape {array.shape}; the box needs {shape} ((t,) z, y, x)")
    return array


def _strip_channel_axis(array: Any, shape: tuple[int, ...], fmt: str) -> Any:
    """npz and blosc carry ndstore's leading channel axis of 1: (1, z, y, x)."""
    if isinstance(array, np.ndarray):
        if array.ndim != len(shape) + 1 or array.shape[0] != 1:
            raise RequestError(f"{fmt} body has shape {array.shape}; the box needs {(1, *shape)} (1, (t,) z, y, x)")
        return array[0]
    return array


def _decode_raw(body: bytes, dtype: np.dtype, shape: tuple[int, ...], expected: int) -> np.ndarray:
    if len(body) != expected:
        raise RequestError(f"raw body has {len(body)} bytes; the box needs {expected} "
                           f"({' x '.join(map(str, shape))} {dtype.name}, C order)")
    return np.frombuffer(body, dtype=dtype).reshape(shape)


def _bounded_decompress(body: bytes, limit: int) -> bytes:
    """zlib-inflate `body`, refusing more than `limit` bytes (no decompression bomb)."""
    inflater = zlib.decompressobj()
    out = inflater.decompress(body, limit + 1)
    if len(out) > limit:
        raise RequestError(f"npz body inflates past the {limit} bytes the box needs")
    if not inflater.eof:
        raise RequestError("npz body is truncated (its zlib stream does not end)")
    return out


def _decode_npz(body: bytes, expected: int) -> Any:
    raw = _bounded_decompress(body, expected + HEADER_SLACK)
    return np.load(io.BytesIO(raw), allow_pickle=False)


def _decode_blosc(body: bytes, expected: int) -> Any:
    """`blosc.unpack_array` without its `pickle.loads`: the header's size is checked
    against the box first, then the pickle is read by `_NumpyOnlyUnpickler`."""
    import blosc

    if len(body) < 16:
        raise RequestError(f"blosc body has {len(body)} bytes, fewer than a blosc header")
    nbytes, cbytes = struct.unpack_from("<I", body, 4)[0], struct.unpack_from("<I", body, 12)[0]
    if cbytes != len(body):
        raise RequestError(f"blosc body has {len(body)} bytes; its header says {cbytes} (truncated or padded)")
    if nbytes > expected + HEADER_SLACK:
        raise RequestError(f"blosc body inflates to {nbytes} bytes; the box needs {expected}")
    pickled = blosc.decompress(body)
    return _NumpyOnlyUnpickler(io.BytesIO(pickled)).load()


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """`_codecs.encode` as a protocol-2 pickle of bytes uses it, and only that (latin1):
    another codec (zlib, bz2) could inflate a small pickle into a huge buffer."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise RequestError(f"blosc body's pickle calls _codecs.encode with {encoding!r}; only latin1 is allowed")
    return text.encode("latin1")


def _numpy_globals() -> dict[tuple[str, str], Callable | type]:
    """What a pickled numpy array may name, under both numpy 1's and numpy 2's module names."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Callable | type] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that knows numpy arrays and dtypes and nothing else: any other global
    (os.system, builtins.eval, ...) is refused before it is looked up, so nothing runs."""

    ALLOWED = _numpy_globals()

    def find_class(self, module: str, name: str):
        found = self.ALLOWED.get((module, name))
        if found is None:
            raise RequestError(f"blosc body's pickle names {module}.{name}; only numpy arrays are accepted")
        return found

    def persistent_load(self, pid):
        raise RequestError("blosc body's pickle refers to a persistent object; only numpy arrays are accepted")


def _decode_hdf5(body: bytes, channel: str | None, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The `CUTOUT` dataset of an in-memory HDF5 file; never one stored outside the body
    (external raw files, virtual datasets, links to other files would read the server's
    own files into the volume), and no link is followed to find it. Its dtype, shape and
    chunks are checked from the header before a byte of it is read (`check_hdf5_layout`)."""
    import h5py

    if not body.startswith(b"\x89HDF\r\n\x1a\n"):
        raise RequestError("hdf5 body is not an HDF5 file (no HDF5 signature at its start)")
    with h5py.File(io.BytesIO(body), "r") as f:
        dset = _hard(_cutout_parent(f, channel), "CUTOUT")
        if not isinstance(dset, h5py.Dataset):
            raise RequestError("hdf5 body's CUTOUT is not a dataset stored in the body")
        if dset.external or dset.is_virtual:
            raise RequestError("hdf5 body's CUTOUT is stored outside the body (external or virtual); "
                               "send the voxels themselves")
        check_hdf5_layout(dset.dtype, dset.shape, dset.chunks, dtype=dtype, shape=shape)
        out = np.empty(shape, dtype=dtype)
        if out.size:
            dset.read_direct(out)
        return out


def check_hdf5_layout(found_dtype: np.dtype, found_shape: tuple[int, ...], chunks: tuple[int, ...] | None, *,
                      dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """An HDF5 body's CUTOUT as its header describes it must be exactly the channel's dtype
    (no sub-array dtype, which multiplies what a read holds: ('f8', (64,)) is 512 bytes a
    voxel) and the box's shape, in chunks no larger than the box on any axis, so reading it
    holds no more than the box's bytes plus one chunk. RequestError (400) otherwise."""
    if found_dtype != dtype:
        raise RequestError(f"hdf5 body's CUTOUT holds {found_dtype} voxels; the channel stores {dtype.name}")
    if tuple(found_shape) != shape:
        raise RequestError(f"hdf5 body's CUTOUT has shape {tuple(found_shape)}; the box needs {shape} ((t,) z, y, x)")
    if chunks is not None and any(c > max(1, s) for c, s in zip(chunks, shape)):
        raise RequestError(f"hdf5 body's CUTOUT is stored in chunks of {tuple(chunks)}, larger than the box {shape}")


def _hard(group, name: str):
    """`group[name]` if it is a hard link (an object inside this file), else None: soft and
    external links are never followed."""
    import h5py

    return group[name] if isinstance(group.get(name, getlink=True), h5py.HardLink) else None


def _cutout_parent(f, channel: str | None):
    """The group holding `CUTOUT`: the one named after the channel, else the only group
    that holds one, else the file's top level (a bare CUTOUT)."""
    import h5py

    def holds_cutout(name: str) -> bool:
        group = _hard(f, name)
        return isinstance(group, h5py.Group) and _hard(group, "CUTOUT") is not None

    if channel is not None and holds_cutout(channel):
        return f[channel]
    groups = [name for name in f.keys() if holds_cutout(name)]
    if len(groups) == 1:
        return f[groups[0]]
    if _hard(f, "CUTOUT") is not None:
        return f
    if groups:
        raise RequestError(f"hdf5 body holds cutouts for {', '.join(groups)}; none for channel {channel!r}")
    raise RequestError(f"hdf5 body holds no CUTOUT (neither in a group {channel!r} nor at its top level)")
