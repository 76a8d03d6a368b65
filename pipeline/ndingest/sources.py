"""Read-only views of input volumes, block by block, never the whole volume.

A source is addressed in its own voxel coordinates (0 at its first voxel); the dataset
offset is added by the caller. Axes are reordered in one place, `_to_zyx`, so every
reader below returns (z, y, x) whatever order the file keeps.
"""
from __future__ import annotations

import glob
import logging
import os
from pathlib import Path

import numpy as np

from . import fetchpolicy, tiff
from .blocks import Box
from .chunked import (EMPTY_ARRAY_VOXELS, ArrayLocation, holds_a_chunk, locate_array, names_an_array_folder,
                      tensorstore_reader)
from .errors import FetchRefused, SourceError
from .ndstore import NdstoreSource, names_a_server
from .source_base import Source
from .urls import names_web_slices
from .webslices import WebSliceSource

logger = logging.getLogger(__name__)

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_CACHE_BYTES = 64 * 2**20  # h5py's 1 MiB default thrashes on gzip-chunked cutouts


def default_axes(ndim: int) -> str:
    return {3: "zyx", 4: "tzyx"}.get(ndim, "")


def _to_zyx(array: np.ndarray, axes: str) -> np.ndarray:
    """Transpose an array whose axes are `axes` (no t) to (z, y, x), as a view."""
    return np.transpose(array, [axes.index(a) for a in "zyx"])


class ArraySource(Source):
    """One n-D array whose dimensions `dims` names, slowest first: the axes x, y, z (and
    t), plus "c" for a channel of size 1 read at index 0. HDF5 and tensorstore arrays
    share this; a subclass reads `index(box, t)` from its array and returns `to_zyx` of it."""

    _shape: tuple[int, ...]
    _dtype: np.dtype
    dims: str

    def _name_dims(self, dims: str) -> None:
        """Set `dims` (and `axes`, without "c") once it is known to fit the array's shape."""
        if len(dims) != len(self._shape):
            raise SourceError(
                f"{self.description}: array has {len(self._shape)} axes {self._shape}, but axes = "
                f"{dims or '(none)'!r}; set the channel's axes, e.g. \"zyx\" or \"tzyx\""
            )
        self.dims, self.axes = dims, dims.replace("c", "")

    @property
    def shape_tzyx(self) -> tuple[int, int, int, int]:
        size = dict(zip(self.dims, self._shape))
        return (size.get("t", 1), size["z"], size["y"], size["x"])

    @property
    def dtype(self) -> np.dtype:
        """In this machine's byte order: a big-endian file's values are read, not its bytes."""
        return np.dtype(self._dtype).newbyteorder("=")

    def index(self, box: Box, t: int) -> tuple:
        """The array's index of `box` at time point `t`, in its own dimension order."""
        span = {"x": slice(box.begin.x, box.end.x), "y": slice(box.begin.y, box.end.y),
                "z": slice(box.begin.z, box.end.z), "t": t, "c": 0}
        return tuple(span[d] for d in self.dims)

    def to_zyx(self, array: np.ndarray) -> np.ndarray:
        """What `index` read, as a (z, y, x) view; a copy in native byte order where the file
        keeps another (h5py returns a big-endian dataset's bytes as they are, and the store,
        the checksums and every comparison work on values)."""
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        return _to_zyx(array, self.axes.replace("t", ""))


class HDF5Source(ArraySource):
    """One array of an HDF5 file: ndstore's cutout layout (`GROUP/CUTOUT`) or any dataset."""

    def __init__(self, path: Path, dataset: str, axes: str | None = None):
        self.path = path
        self.dataset = dataset
        with self._open() as f:
            ds = _hdf5_object(path, f, dataset)
            self._shape, self._dtype, self._chunks = tuple(ds.shape), ds.dtype, ds.chunks
            check_hdf5_array(path, dataset, ds)
            if fetchpolicy.current() is not None:  # a job posted to serve reads this file's own bytes only
                files = linked_files(path, ds)
                if files:
                    raise FetchRefused(f"{path}:{dataset}: its voxels are stored in other files "
                                       f"({', '.join(files)}); a job posted to serve reads only the file itself")
        self._name_dims(axes or default_axes(len(self._shape)))
        self._handle = None  # (pid, file, dataset), opened at the first read of each process

    def _open(self):
        return open_hdf5(self.path)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handle": None}

    def _array(self):
        """The dataset, looked up once per process: a path lookup per block costs about a
        millisecond, and a handle inherited through Luigi's fork (the CLI's preflight reads
        blocks before Luigi forks its workers) is not this process's to use."""
        if self._handle is None or self._handle[0] != os.getpid():
            f = self._open()
            self._handle = (os.getpid(), f, f[self.dataset])
        return self._handle[2]

    @property
    def files(self) -> list[Path]:
        return [self.path]

    @property
    def description(self) -> str:
        return f"{self.path}:{self.dataset}"

    def read(self, box: Box, t: int = 0) -> np.ndarray:
        self._check_box(box, t)
        try:
            array = self._array()[self.index(box, t)]
        except (OSError, KeyError, ValueError) as exc:
            raise SourceError(f"{self.description}: cannot read {box}: {exc}") from exc
        return self.to_zyx(array)


def open_hdf5(path: Path):
    """Open read-only with a chunk cache big enough for block reads (in a job posted to
    `serve`, only a file inside its allowed folders: `fetchpolicy.check_file`)."""
    import h5py

    fetchpolicy.check_file(path)
    try:
        return h5py.File(path, "r", rdcc_nbytes=HDF5_CACHE_BYTES, rdcc_nslots=100_003)
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path}: cannot open as HDF5: {exc}") from exc


def _dtype_text(dtype: np.dtype) -> str:
    if dtype.names:
        return f"compound ({', '.join(dtype.names)})"
    if dtype.kind in "OSU":
        return f"string or object ({dtype})"
    return str(dtype)


def check_hdf5_array(path: Path, name: str, ds) -> None:
    """Refuse, from metadata alone, an array that cannot be read as a volume: a type that
    holds no numbers, a shape that is not 3D/4D or is empty, or a huge one with no stored
    data (metadata claiming 10^12 voxels in a small file). Nothing big is read: a read would
    otherwise fail mid-ingest, or return fill values for data that is not there."""
    where = f"{path}:{name}"
    if ds.dtype.names or ds.dtype.subdtype is not None or ds.dtype.kind not in "biuf":
        raise SourceError(f"{where}: dtype {_dtype_text(ds.dtype)} holds no voxel values; "
                          f"a volume is numbers (uint8, uint16, uint32, uint64, float32)")
    if ds.ndim not in (3, 4):
        raise SourceError(f"{where}: array is {ds.ndim}D {tuple(ds.shape)}; a volume needs 3 axes (zyx) "
                          f"or 4 with t (tzyx)")
    voxels = int(np.prod(ds.shape, dtype=object))
    if voxels == 0:
        raise SourceError(f"{where}: array of shape {tuple(ds.shape)} is empty (0 voxels)")
    _check_hdf5_storage(where, ds, voxels)


def _check_hdf5_storage(where: str, ds, voxels: int) -> None:
    """A dataset never written reads as its fill value: legal for a small one (an empty
    label volume), a broken export past EMPTY_ARRAY_VOXELS (metadata claiming 10^12
    voxels in a 2 kB file), as for zarr. (Data past the end of the file, HDF5 itself
    refuses to open: "invalid dataset size".)"""
    import h5py

    if voxels <= EMPTY_ARRAY_VOXELS or ds.is_virtual or ds.external:
        return
    layout = ds.id.get_create_plist().get_layout()
    if layout == h5py.h5d.COMPACT:
        return
    if layout == h5py.h5d.CHUNKED and hasattr(ds.id, "chunk_iter"):
        found: list = []  # stop at the first chunk: counting them all reads the whole index
        ds.id.chunk_iter(lambda info: found.append(info) or True)
        stored = len(found)
    else:
        stored = ds.id.get_storage_size()
    if stored == 0:
        raise SourceError(f"{where}: holds no data for its {voxels:,} voxels (shape {tuple(ds.shape)}, "
                          f"no storage allocated in the file)")


def linked_files(path: Path, ds) -> list[str]:
    """The other files an HDF5 dataset's voxels are read from: its external storage
    (`create_dataset(..., external=[...])`), its virtual sources (a VDS), or, for a dataset
    reached through an external link, the file the link opens. [] for one stored in `path`."""
    files = [name.decode(errors="replace") if isinstance(name, bytes) else str(name)
             for name, *_ in (ds.external or [])]
    if ds.is_virtual:
        # ".": this file's own datasets, named too (any VDS is refused in a job: its sources may be external)
        files += [str(path) if m.file_name == "." else m.file_name for m in ds.virtual_sources()]
    if os.path.realpath(ds.file.filename) != os.path.realpath(path):
        files.append(ds.file.filename)
    return list(dict.fromkeys(files))


def hdf5_linked_files(path: Path) -> list[tuple[str, list[str]]]:
    """(dataset, the other files it reads) for each dataset of the file that reads any."""
    with open_hdf5(path) as f:
        return [(name, files) for name, ds in _hdf5_datasets(path, f) if (files := linked_files(path, ds))]


def _hdf5_object(path: Path, f, name: str):
    """`f[name]`; a header HDF5 finds corrupt (e.g. a size the file cannot hold) is an
    error naming the object."""
    try:
        return f[name]
    except (KeyError, OSError, RuntimeError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        raise SourceError(f"{path}:{name}: cannot open: {message}") from exc


def _hdf5_datasets(path: Path, f) -> list[tuple[str, object]]:
    """(path, dataset) of every dataset in the file, each header opened and checked."""
    import h5py

    names: list[str] = []
    f.visit(names.append)
    objects = [("/" + n, _hdf5_object(path, f, "/" + n)) for n in names]
    return [(n, o) for n, o in objects if isinstance(o, h5py.Dataset)]


def find_hdf5_array(path: Path) -> str:
    """The array to read from an HDF5 file: the one `CUTOUT` of ndstore's layout, else
    the only 3D/4D dataset; an ambiguous file is an error listing the candidates."""
    with open_hdf5(path) as f:
        arrays = [name for name, ds in _hdf5_datasets(path, f) if ds.ndim in (3, 4)]
    cutouts = [a for a in arrays if a.rsplit("/", 1)[-1] == "CUTOUT"]
    for candidates in (cutouts, arrays):
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            raise SourceError(
                f"{path}: ambiguous HDF5, {len(candidates)} arrays: {', '.join(candidates)}; "
                f"pick one as \"{path.name}:/PATH\""
            )
    raise SourceError(f"{path}: no 3D or 4D array in this HDF5 file; arrays here: {_hdf5_listing(path)}")


def _hdf5_listing(path: Path, limit: int = 10) -> str:
    """Up to `limit` datasets of the file with their shapes, for a message."""
    with open_hdf5(path) as f:
        found = [f"{name} {tuple(ds.shape)}" for name, ds in _hdf5_datasets(path, f)]
    more = f" and {len(found) - limit} more" if len(found) > limit else ""
    return ", ".join(found[:limit]) + more if found else "none"


class TiffSource(Source):
    """A stack of 2D TIFF files (one page each, in natural name order) or one multi-page
    TIFF (every page in file order, however many series tifffile groups them into).

    Every page header is checked at open (shape, dtype, samples per pixel), so a stack
    with one odd page is refused before anything is written; a read decodes only the
    strips or tiles its box meets (`tiff.PageReader`, one per process)."""

    def __init__(self, files: list[Path], axes: str | None = None):
        self._files = files
        self.axes = axes or "zyx"
        if self.axes != "zyx":
            raise SourceError(f"{files[0]}: TIFF sources are read as zyx, not {self.axes!r}")
        if len(files) == 1:
            self._page, depth = tiff.scan_file(files[0])
        else:
            self._page, depth = tiff.scan_stack(files), len(files)
        self._zyx = (depth, *self._page.shape_yx)
        self._reader: tuple[int, tiff.PageReader] | None = None  # (pid, reader), made per process

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_reader": None}

    def _pages(self) -> tiff.PageReader:
        """This process's reader: open files and decoded strips inherited through Luigi's
        fork are not this process's to use."""
        if self._reader is None or self._reader[0] != os.getpid():
            self._reader = (os.getpid(), tiff.PageReader(self._files))
        return self._reader[1]

    @property
    def shape_tzyx(self) -> tuple[int, int, int, int]:
        return (1, *self._zyx)

    @property
    def dtype(self) -> np.dtype:
        return self._page.dtype

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    def read(self, box: Box, t: int = 0) -> np.ndarray:
        self._check_box(box, t)
        zs, ys, xs = box.to_zyx_slices()
        out = np.empty(tuple(box.shape)[::-1], dtype=self.dtype)
        reader = self._pages()
        for i, z in enumerate(range(zs.start, zs.stop)):
            file_index, page_index = (0, z) if len(self._files) == 1 else (z, 0)
            reader.read_into(out[i], file_index, page_index, ys=ys, xs=xs, expect=self._page)
        return out


class TensorstoreSource(ArraySource):
    """A zarr (v2, v3; OME-Zarr's level 0), N5 or neuroglancer precomputed array, read box
    by box through tensorstore. `dims` names the array's dimensions slowest first: `axes`
    plus "c", a channel of size 1 read at index 0. It keeps no handle (it pickles as is):
    `chunked.tensorstore_reader` holds one per process, where forking allows it."""

    def __init__(self, location: ArrayLocation, axes: str | None = None):
        self.location = location
        shape, dtype = tensorstore_reader().describe(location)
        self._shape, self._dtype = shape, np.dtype(dtype)
        self._name_dims(self._declared_dims(axes))
        size = dict(zip(self.dims, self._shape))
        if size.get("c", 1) != 1:
            raise SourceError(f"{location.name}: has {size['c']} channels (c axis of {self._shape}); "
                              f"only one channel per source is read")
        voxels = int(np.prod(self._shape, dtype=object))
        if voxels > EMPTY_ARRAY_VOXELS and not holds_a_chunk(location):
            raise SourceError(f"{location.name}: holds no data for its {voxels:,} voxels (shape {self._shape}): "
                              f"no chunk under {location.folder / location.scale_key}")

    def _declared_dims(self, axes: str | None) -> str:
        """The spec's axes, checked against what the metadata declares (which wins)."""
        name, declared = self.location.name, self.location.dims
        if self.location.format == "precomputed":
            if axes not in (None, "xyz"):
                raise SourceError(f"{name}: a neuroglancer precomputed volume is read as x, y, z; "
                                  f"axes = {axes!r} does not apply (leave it out)")
        elif declared and axes and axes != declared.replace("c", ""):
            raise SourceError(f"{name}: axes = {axes!r} but its metadata names the axes {declared!r}")
        return declared or axes or default_axes(len(self._shape))

    @property
    def files(self) -> list[Path]:
        return list(self.location.metadata)

    @property
    def description(self) -> str:
        return self.location.name

    def read(self, box: Box, t: int = 0) -> np.ndarray:
        self._check_box(box, t)
        order = "F" if self.location.format == "precomputed" else "C"  # x-fastest chunks: F, then a view
        array = tensorstore_reader().read(self.location, self.index(box, t), order=order, what=f"{box} t={t}")
        return self.to_zyx(array)


def open_source(source: str, axes: str | None = None, *, z_range: tuple[int, int] | None = None,
                t_range: tuple[int, int] | None = None, spec_path: str | os.PathLike | None = None) -> Source:
    """Open `source`: an HDF5 file (optionally `file.h5:/dataset`), a TIFF file, a glob
    of TIFF pages, a zarr/N5/precomputed folder or URL (`zarr://file:///abs`, ...), an
    ndstore server's channel (`ndstore://host:port/TOKEN/CHANNEL`, `http://…/nd/sd/…`), or
    slices by URL pattern (`http://…/{z:04d}.png` over `z_range`, staged where
    `webslices.default_cache_dir` says for the spec at `spec_path`).
    Raises SourceError naming the file when it cannot."""
    if names_web_slices(source):
        if z_range is None:
            raise SourceError(f"{source}: a slice pattern needs z_range = [first, stop) (name it in a spec)")
        return WebSliceSource(source, z_range, t_range, axes, spec_path=spec_path)
    if names_a_server(source):
        return NdstoreSource(source, axes)
    if names_an_array_folder(source):
        return TensorstoreSource(locate_array(source), axes)
    file_part, sep, inner = source.partition(":/")
    if sep:
        path = Path(file_part)
        if not path.is_file():
            raise SourceError(f"{path}: source file not found")
        import h5py

        with open_hdf5(path) as f:
            if not isinstance(f.get("/" + inner), h5py.Dataset):
                found = [name for name, _ in _hdf5_datasets(path, f)]
                raise SourceError(f"{path}: no dataset /{inner}; arrays here: {', '.join(found) or 'none'}")
        return HDF5Source(path, "/" + inner, axes)
    if glob.has_magic(source):
        files = sorted((Path(p) for p in glob.glob(source)), key=tiff.natural_key)
        if not files:
            raise SourceError(f"{source}: no file matches this pattern")
        if any(f.suffix.lower() not in TIFF_SUFFIXES for f in files):
            raise SourceError(f"{source}: a glob must name TIFF pages (.tif, .tiff)")
        return TiffSource(files, axes)
    path = Path(source)
    if not path.exists():
        raise SourceError(f"{path}: source file not found")
    if path.suffix.lower() in TIFF_SUFFIXES:
        return TiffSource([path], axes)
    return HDF5Source(path, find_hdf5_array(path), axes)


def value_range(block: np.ndarray) -> tuple[float, float] | None:
    """(min, max) of a block, or None when it holds no value to window. Float blocks count
    their finite values only: a NaN or inf is no display window (and NaN would compare
    false everywhere)."""
    if block.dtype.kind == "f":
        block = block[np.isfinite(block)]
    if not block.size:
        return None
    return (block.min().item(), block.max().item())


def merge_ranges(ranges) -> tuple[float, float]:
    """The window over blocks' `value_range`s; none with a value (all non-finite, or
    empty) is (0, 0)."""
    known = [r for r in ranges if r is not None]
    if not known:
        return (0, 0)
    return (min(r[0] for r in known), max(r[1] for r in known))


def window_range(source: Source, progress=None) -> tuple[float, float]:
    """(min, max) over every voxel and time point, read box by box in bounded memory
    (`value_range` of each box, merged)."""
    ranges = []
    boxes = source.scan_boxes()
    for t in range(source.time_points):
        for box in boxes:
            ranges.append(value_range(source.read(box, t)))
            if progress:
                progress(box.shape.volume)
    return merge_ranges(ranges)
