"""Read-only views of input volumes, block by block, never the whole volume.

A source is addressed in its own voxel coordinates (0 at its first voxel); the dataset
offset is added by the caller. Axes are reordered in one place, `_to_zyx`, so every
reader below returns (z, y, x) whatever order the file keeps.
"""
from __future__ import annotations

import glob
import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from .blocks import Box, Vec3
from .errors import SourceError

logger = logging.getLogger(__name__)

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
TIFF_SUFFIXES = (".tif", ".tiff")
HDF5_CACHE_BYTES = 64 * 2**20  # h5py's 1 MiB default thrashes on gzip-chunked cutouts
SCAN_BYTES = 64 * 2**20


def default_axes(ndim: int) -> str:
    return {3: "zyx", 4: "tzyx"}.get(ndim, "")


def _to_zyx(array: np.ndarray, axes: str) -> np.ndarray:
    """Transpose an array whose axes are `axes` (no t) to (z, y, x), as a view."""
    return np.transpose(array, [axes.index(a) for a in "zyx"])


class Source(ABC):
    """A volume of shape (t, z, y, x) to be read in boxes; picklable, handles opened lazily."""

    axes: str

    @property
    @abstractmethod
    def shape_tzyx(self) -> tuple[int, int, int, int]: ...

    @property
    @abstractmethod
    def dtype(self) -> np.dtype: ...

    @property
    @abstractmethod
    def files(self) -> list[Path]: ...

    @abstractmethod
    def read(self, box: Box, t: int = 0) -> np.ndarray:
        """The voxels of `box` (source coordinates) at time point `t`, shaped (z, y, x)."""

    @property
    def description(self) -> str:
        return str(self.files[0]) if len(self.files) == 1 else f"{self.files[0].parent}/ ({len(self.files)} files)"

    @property
    def size_xyz(self) -> Vec3:
        _, z, y, x = self.shape_tzyx
        return Vec3(x, y, z)

    @property
    def extent(self) -> Box:
        return Box(Vec3(0, 0, 0), self.size_xyz)

    @property
    def time_points(self) -> int:
        return self.shape_tzyx[0]

    def scan_boxes(self, max_bytes: int = SCAN_BYTES) -> list[Box]:
        """Boxes covering the volume for a bounded-memory pass (window range, checks)."""
        x, y, z = self.size_xyz
        plane = max(1, x * y * self.dtype.itemsize)
        thickness = max(1, min(z, max_bytes // plane))
        if plane <= max_bytes:
            tile = Vec3(x, y, thickness)
        else:
            side = max(1, int((max_bytes // self.dtype.itemsize) ** 0.5))
            tile = Vec3(min(x, side), min(y, side), 1)
        return list(self.extent.chunks(tile, within=self.extent))

    def fingerprint(self) -> list[dict]:
        """Size and mtime of every file, to notice a source that changed under a run."""
        out = []
        for f in self.files:
            try:
                st = f.stat()
            except OSError as exc:
                raise SourceError(f"{f}: cannot read source: {exc.strerror}") from exc
            out.append({"path": str(f), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        return out

    def _check_box(self, box: Box, t: int) -> None:
        if not self.extent.contains(box) or not 0 <= t < self.time_points:
            raise SourceError(f"{self.description}: box {box} t={t} lies outside the source {self.extent}")


class HDF5Source(Source):
    """One array of an HDF5 file: ndstore's cutout layout (`GROUP/CUTOUT`) or any dataset."""

    def __init__(self, path: Path, dataset: str, axes: str | None = None):
        self.path = path
        self.dataset = dataset
        with self._open() as f:
            ds = f[dataset]
            self._shape, self._dtype, self._chunks = tuple(ds.shape), ds.dtype, ds.chunks
        self.axes = axes or default_axes(len(self._shape))
        if len(self.axes) != len(self._shape):
            raise SourceError(
                f"{path}:{dataset}: array has {len(self._shape)} axes {self._shape}, "
                f"but axes = {self.axes or '(none)'!r}; set the channel's axes, e.g. \"zyx\" or \"tzyx\""
            )
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
    def shape_tzyx(self) -> tuple[int, int, int, int]:
        size = dict(zip(self.axes, self._shape))
        return (size.get("t", 1), size["z"], size["y"], size["x"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._dtype)

    @property
    def files(self) -> list[Path]:
        return [self.path]

    @property
    def description(self) -> str:
        return f"{self.path}:{self.dataset}"

    def read(self, box: Box, t: int = 0) -> np.ndarray:
        self._check_box(box, t)
        span = {"x": slice(box.begin.x, box.end.x), "y": slice(box.begin.y, box.end.y),
                "z": slice(box.begin.z, box.end.z), "t": t}
        try:
            array = self._array()[tuple(span[a] for a in self.axes)]
        except (OSError, KeyError, ValueError) as exc:
            raise SourceError(f"{self.description}: cannot read {box}: {exc}") from exc
        return _to_zyx(array, self.axes.replace("t", ""))


def open_hdf5(path: Path):
    """Open read-only with a chunk cache big enough for block reads."""
    import h5py

    try:
        return h5py.File(path, "r", rdcc_nbytes=HDF5_CACHE_BYTES, rdcc_nslots=100_003)
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path}: cannot open as HDF5: {exc}") from exc


def find_hdf5_array(path: Path) -> str:
    """The array to read from an HDF5 file: the one `CUTOUT` of ndstore's layout, else
    the only 3D/4D dataset; an ambiguous file is an error listing the candidates."""
    import h5py

    with open_hdf5(path) as f:
        arrays: list[str] = []
        f.visititems(lambda name, obj: arrays.append("/" + name)
                     if isinstance(obj, h5py.Dataset) and obj.ndim in (3, 4) else None)
    cutouts = [a for a in arrays if a.rsplit("/", 1)[-1] == "CUTOUT"]
    for candidates in (cutouts, arrays):
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            raise SourceError(
                f"{path}: ambiguous HDF5, {len(candidates)} arrays: {', '.join(candidates)}; "
                f"pick one as \"{path.name}:/PATH\""
            )
    raise SourceError(f"{path}: no 3D or 4D array in this HDF5 file")


class TiffSource(Source):
    """A stack of 2D TIFF pages (one file per z, sorted by name) or one multi-page TIFF."""

    def __init__(self, files: list[Path], axes: str | None = None):
        import tifffile

        self._files = files
        try:
            with tifffile.TiffFile(files[0]) as tif:
                series = tif.series[0]
                page_shape, self._dtype = tuple(series.shape), series.dtype
        except Exception as exc:  # tifffile raises many types on a bad file
            raise SourceError(f"{files[0]}: cannot open as TIFF: {exc}") from exc
        if len(files) > 1:
            if len(page_shape) != 2:
                raise SourceError(f"{files[0]}: a TIFF stack needs 2D pages, this one is {page_shape}")
            self._zyx = (len(files), *page_shape)
        elif len(page_shape) == 3:
            self._zyx = page_shape
        elif len(page_shape) == 2:
            self._zyx = (1, *page_shape)
        else:
            raise SourceError(f"{files[0]}: TIFF of shape {page_shape} is not a 3D volume")
        self.axes = axes or "zyx"
        if self.axes != "zyx":
            raise SourceError(f"{files[0]}: TIFF sources are read as zyx, not {self.axes!r}")

    @property
    def shape_tzyx(self) -> tuple[int, int, int, int]:
        return (1, *self._zyx)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._dtype)

    @property
    def files(self) -> list[Path]:
        return list(self._files)

    def _plane_reader(self, index: int):
        import tifffile

        path = self._files[index if len(self._files) > 1 else 0]
        try:
            return tifffile.memmap(path, mode="r")
        except Exception:  # compressed or tiled: fall back to decoding
            try:
                return tifffile.imread(path)
            except Exception as exc:
                raise SourceError(f"{path}: cannot read TIFF: {exc}") from exc

    def read(self, box: Box, t: int = 0) -> np.ndarray:
        self._check_box(box, t)
        zs, ys, xs = box.to_zyx_slices()
        if len(self._files) == 1:
            volume = self._plane_reader(0)
            volume = volume.reshape(self._zyx)
            return np.asarray(volume[zs, ys, xs])
        out = np.empty(tuple(box.shape)[::-1], dtype=self.dtype)
        for i, z in enumerate(range(zs.start, zs.stop)):
            plane = self._plane_reader(z)
            if plane.shape != self._zyx[1:]:
                raise SourceError(f"{self._files[z]}: page shape {plane.shape} differs from {self._zyx[1:]}")
            out[i] = plane[ys, xs]
        return out


def open_source(source: str, axes: str | None = None) -> Source:
    """Open `source`: an HDF5 file (optionally `file.h5:/dataset`), a TIFF file, or a glob
    of TIFF pages. Raises SourceError naming the file when it cannot."""
    file_part, sep, inner = source.partition(":/")
    if sep:
        path = Path(file_part)
        if not path.is_file():
            raise SourceError(f"{path}: source file not found")
        import h5py

        with open_hdf5(path) as f:
            if not isinstance(f.get("/" + inner), h5py.Dataset):
                found: list[str] = []
                f.visititems(lambda n, o: found.append("/" + n) if isinstance(o, h5py.Dataset) else None)
                raise SourceError(f"{path}: no dataset /{inner}; arrays here: {', '.join(found) or 'none'}")
        return HDF5Source(path, "/" + inner, axes)
    if glob.has_magic(source):
        files = sorted(Path(p) for p in glob.glob(source))
        if not files:
            raise SourceError(f"{source}: no file matches this pattern")
        if any(f.suffix.lower() not in TIFF_SUFFIXES for f in files):
            raise SourceError(f"{source}: a glob must name TIFF pages (.tif, .tiff)")
        return TiffSource(files, axes)
    path = Path(source)
    if not path.exists():
        raise SourceError(f"{path}: source file not found")
    if path.is_dir():
        raise SourceError(f"{path}: is a folder; name a file, or a glob such as \"{path}/*.tif\"")
    if path.suffix.lower() in TIFF_SUFFIXES:
        return TiffSource([path], axes)
    return HDF5Source(path, find_hdf5_array(path), axes)


def window_range(source: Source, progress=None) -> tuple[float, float]:
    """(min, max) over every voxel and time point, read box by box in bounded memory."""
    lo, hi = None, None
    boxes = source.scan_boxes()
    for t in range(source.time_points):
        for box in boxes:
            block = source.read(box, t)
            if block.size:
                bmin, bmax = block.min(), block.max()
                lo = bmin if lo is None else min(lo, bmin)
                hi = bmax if hi is None else max(hi, bmax)
            if progress:
                progress(box.shape.volume)
    if lo is None:
        return (0, 0)
    return (lo.item(), hi.item())
