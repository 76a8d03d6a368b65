"""TIFF pages checked from their headers at open, and read a region at a time.

tifffile's whole-file readers do not fit block reads: `imread` decodes every page of a
compressed file (64 blocks of a 16 MiB deflate file decoded 1 GiB), `series[0]` is only
the first of the series a page-by-page writer leaves (one per page), and `memmap` needs
uncompressed contiguous data. Here every page of every file is checked up front (shape,
dtype, samples per pixel, data inside the file), reading headers only, so a stack that
would be stored wrong is refused before anything is written; and a read decodes only
the strips or tiles that meet the block, keeping a few recent ones for the next block.
"""
from __future__ import annotations

import logging
import math
import re
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import SourceError

logger = logging.getLogger(__name__)

SEGMENT_CACHE_BYTES = 64 * 2**20  # decoded strips kept per source and process (see PageReader)
MAX_OPEN_FILES = 128  # a block of a stack reads one file per z; the next block reads them again
JPEG_COMPRESSIONS = frozenset({6, 7, 33007, 34892})


def natural_key(path: Path | str) -> tuple:
    """Sort key comparing digit runs as numbers, so s2.tif comes before s10.tif as a file
    browser shows them (a text sort would put s10 between s1 and s2)."""
    parts = re.split(r"([0-9]+)", str(path))
    return (tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), str(path))


def one_line(exc: BaseException) -> str:
    """A library's message on one line: the CLI prints exactly one."""
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass(frozen=True)
class PageFormat:
    """What every page of a volume must share."""

    shape_yx: tuple[int, int]
    dtype: np.dtype

    def __str__(self) -> str:
        return f"x{self.shape_yx[1]} y{self.shape_yx[0]} {self.dtype.name}"

    def difference(self, other: "PageFormat") -> str:
        """How this page differs from `other`, naming both values."""
        if self.dtype != other.dtype:
            return f"dtype {self.dtype.name} differs from {other.dtype.name}"
        return f"size x{self.shape_yx[1]} y{self.shape_yx[0]} differs from x{other.shape_yx[1]} y{other.shape_yx[0]}"


def _name(value) -> str:
    return str(getattr(value, "name", value)).lower()


def page_format(where: str, page) -> PageFormat:
    """A page's format from its header; refuses what cannot be one plane of voxels."""
    if page.samplesperpixel > 1:
        raise SourceError(
            f"{where}: {page.samplesperpixel} samples per pixel ({_name(page.photometric)}); a volume takes "
            f"one sample per voxel: save each channel as its own grayscale TIFF"
        )
    if page.dtype is None:
        raise SourceError(f"{where}: sample format {page.sampleformat} at {page.bitspersample} bits "
                          f"is not a voxel type")
    if page.imagedepth > 1:
        raise SourceError(f"{where}: a 3D page (image depth {page.imagedepth}) is not read; save one plane per page")
    return PageFormat((page.imagelength, page.imagewidth), np.dtype(page.dtype))


def _check_data_inside(where: str, page, file_size: int) -> None:
    """Strips that lie past the end of the file are a truncated copy: refuse it now, not
    with a decoder's error halfway through an ingest."""
    end = max((o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n), default=0)
    if end > file_size:
        raise SourceError(f"{where}: data ends at byte {end:,}, past the end of the file ({file_size:,} bytes): "
                          f"truncated")


def _check_one_z_axis(path: Path, tif, pages: int) -> None:
    """Pages are read in file order as z. An ImageJ or OME hyperstack, or a tifffile-shaped
    4D array, interleaves channels or time points with z: refuse rather than mix them."""
    if tif.is_imagej:
        meta = tif.imagej_metadata or {}
        images = int(meta.get("images", pages))
        if pages == 1 and images > 1:
            raise SourceError(f"{path}: ImageJ file of {images} images with one page header "
                              f"(ImageJ's layout past 4 GiB) is not read; save it as a TIFF stack or BigTIFF")
        channels, slices, frames = (int(meta.get(k, 1)) for k in ("channels", "slices", "frames"))
        if channels > 1 or (slices > 1 and frames > 1):
            raise SourceError(f"{path}: ImageJ hyperstack of {channels} channels, {slices} slices, {frames} frames; "
                              f"its pages are not one z axis: save one channel and time point per file")
        return
    if pages > 1 and (tif.is_ome or tif.is_shaped):
        for series in tif.series:
            extra = [f"{a}={n}" for a, n in zip(series.axes, series.shape) if a not in "YX" and n > 1]
            if len(extra) > 1 or any(e[0] in "CS" for e in extra):
                raise SourceError(f"{path}: series of axes {series.axes} shape {tuple(series.shape)} "
                                  f"({', '.join(extra)}); its pages are not one z axis: save one channel and "
                                  f"time point per file")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(re.sub(r"<tifffile\.\w+ @\d+> ", "", record.getMessage()))


@contextmanager
def _tifffile_errors() -> Iterator[list[str]]:
    """The errors tifffile logs, kept from stderr. A truncated or corrupt IFD chain is
    only logged: tifffile stops at the last good page, and the volume would lose z."""
    log, handler = logging.getLogger("tifffile"), _Collect()
    propagate, log.propagate = log.propagate, False
    log.addHandler(handler)
    try:
        yield handler.messages
    finally:
        log.removeHandler(handler)
        log.propagate = propagate


def scan_file(path: Path) -> tuple[PageFormat, int]:
    """The format shared by every page of `path` and their count, from the headers alone
    (a 384-page file takes tens of milliseconds); a page that differs is an error naming it."""
    import tifffile

    try:
        size = path.stat().st_size
        with _tifffile_errors() as errors, tifffile.TiffFile(path) as tif:
            tif.pages.useframes = False  # a TiffFrame takes its shape from page 0 unchecked
            first: PageFormat | None = None
            count = 0
            for index, page in enumerate(tif.pages):
                where = f"{path} page {index}" if index else str(path)
                fmt = page_format(where, page)
                _check_data_inside(where, page, size)
                if first is None:
                    first = fmt
                elif fmt != first:
                    raise SourceError(f"{where}: {fmt.difference(first)} on page 0; every page of a volume must "
                                      f"match (a value is never cast)")
                count += 1
            if errors:
                raise SourceError(f"{path}: corrupt or truncated TIFF after page {count - 1}: {errors[0]}")
            if first is None:
                raise SourceError(f"{path}: TIFF without pages")
            _check_one_z_axis(path, tif, count)
    except SourceError:
        raise
    except Exception as exc:  # tifffile raises many types on a bad file
        raise SourceError(f"{path}: cannot open as TIFF: {one_line(exc)}") from exc
    return first, count


def scan_stack(files: list[Path]) -> PageFormat:
    """The format shared by a stack's files, one 2D page each; the first file that differs
    from the first one is an error naming both values."""
    first = None
    for path in files:
        fmt, pages = scan_file(path)
        if pages != 1:
            raise SourceError(f"{path}: has {pages} pages; a stack takes one page per file "
                              f"(name a multi-page file as a source of its own)")
        if first is None:
            first = (path, fmt)
        elif fmt != first[1]:
            raise SourceError(f"{path}: {fmt.difference(first[1])} in {first[0].name}, the stack's first file; "
                              f"every page of a stack must match (a value is never cast)")
    assert first is not None
    return first[1]


def _is_raw(page) -> bool:
    """Uncompressed strips of whole bytes: rows can be read straight from the file."""
    return (page.compression == 1 and not page.is_tiled and page.predictor == 1 and page.fillorder == 1
            and page.sampleformat != 5 and page.bitspersample == np.dtype(page.dtype).itemsize * 8)


def segment_indices(page, ys: slice, xs: slice) -> list[int]:
    """The strips or tiles of `page` that meet rows `ys` and columns `xs`."""
    if ys.start >= ys.stop or xs.start >= xs.stop:
        return []
    if page.is_tiled:
        across = math.ceil(page.imagewidth / page.tilewidth)
        rows = range(ys.start // page.tilelength, (ys.stop - 1) // page.tilelength + 1)
        cols = range(xs.start // page.tilewidth, (xs.stop - 1) // page.tilewidth + 1)
        return [r * across + c for r in rows for c in cols]
    per_strip = min(page.rowsperstrip, page.imagelength)
    return list(range(ys.start // per_strip, (ys.stop - 1) // per_strip + 1))


@dataclass(frozen=True)
class Segment:
    """A decoded strip or tile at (y, x) of its page; `data` None for an empty one."""

    y: int
    x: int
    shape_yx: tuple[int, int]
    data: np.ndarray | None

    @property
    def nbytes(self) -> int:
        return 0 if self.data is None else self.data.nbytes


class PageReader:
    """Regions of the pages of `files`, for one process: open files (least recently used
    closed past MAX_OPEN_FILES) and decoded segments (byte-bounded, least recently used
    dropped). Blocks run x fastest inside a task, so the next block reads the strips the
    last one decoded: 64 pages of 256-row deflate strips 1024 wide is 16 MiB."""

    def __init__(self, files: list[Path], *, cache_bytes: int = SEGMENT_CACHE_BYTES):
        self.files = files
        self.cache_bytes = cache_bytes
        self._open: OrderedDict[int, object] = OrderedDict()
        self._segments: OrderedDict[tuple[int, int, int], Segment] = OrderedDict()
        self._cached = 0

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()
        self._segments.clear()
        self._cached = 0

    def _tif(self, file_index: int):
        import tifffile

        tif = self._open.pop(file_index, None)
        if tif is None:
            tif = tifffile.TiffFile(self.files[file_index])
            tif.pages.useframes = False
            tif.pages.cache = True  # parse each page's tags once, not once per block
            while len(self._open) >= MAX_OPEN_FILES:
                self._open.popitem(last=False)[1].close()
        self._open[file_index] = tif
        return tif

    def read_into(self, out: np.ndarray, file_index: int, page_index: int, *, ys: slice, xs: slice,
                  expect: PageFormat) -> None:
        """Rows `ys`, columns `xs` of one page into `out` (2D); a page whose format is not
        `expect` (the file changed since it was opened) is an error."""
        path = self.files[file_index]
        where = f"{path} page {page_index}" if page_index else str(path)
        try:
            page = self._tif(file_index).pages[page_index]
            if page_format(where, page) != expect:
                raise SourceError(f"{where}: {page_format(where, page).difference(expect)} when opened; "
                                  f"the file changed")
            if _is_raw(page):
                self._read_rows(page, out, ys, xs)
            else:
                self._read_segments((file_index, page_index), page, out, ys, xs)
        except SourceError:
            raise
        except Exception as exc:  # tifffile and its codecs raise many types
            raise SourceError(f"{where}: cannot read rows {ys.start}-{ys.stop}: {one_line(exc)}") from exc

    def _read_rows(self, page, out: np.ndarray, ys: slice, xs: slice) -> None:
        """Uncompressed strips: only the rows asked for are read, whatever the strip size."""
        dtype = np.dtype(page.parent.byteorder + page.dtype.char)
        width, per_strip = page.imagewidth, min(page.rowsperstrip, page.imagelength)
        row_bytes = width * dtype.itemsize
        fh = page.parent.filehandle
        y = ys.start
        while y < ys.stop:
            strip = y // per_strip
            stop = min(ys.stop, (strip + 1) * per_strip)
            with fh.lock:
                fh.seek(page.dataoffsets[strip] + (y - strip * per_strip) * row_bytes)
                data = fh.read((stop - y) * row_bytes)
            if len(data) != (stop - y) * row_bytes:
                raise SourceError(f"{page.parent.filename}: strip {strip} is cut short: truncated file")
            rows = np.frombuffer(data, dtype).reshape(stop - y, width)
            out[y - ys.start:stop - ys.start] = rows[:, xs]
            y = stop

    def _read_segments(self, key: tuple[int, int], page, out: np.ndarray, ys: slice, xs: slice) -> None:
        height, width = page.imagelength, page.imagewidth
        for index in segment_indices(page, ys, xs):
            seg = self._segment(key, page, index)
            y0, y1 = max(ys.start, seg.y), min(ys.stop, seg.y + seg.shape_yx[0], height)
            x0, x1 = max(xs.start, seg.x), min(xs.stop, seg.x + seg.shape_yx[1], width)
            if y0 >= y1 or x0 >= x1:
                continue
            whole = (y0, y1, x0, x1) == (seg.y, min(seg.y + seg.shape_yx[0], height),
                                         seg.x, min(seg.x + seg.shape_yx[1], width))
            if not whole:  # the rest of it is another block's: keep it for that one
                self._keep((*key, index), seg)
            target = out[y0 - ys.start:y1 - ys.start, x0 - xs.start:x1 - xs.start]
            if seg.data is None:
                target[...] = page.nodata
            else:
                target[...] = seg.data[y0 - seg.y:y1 - seg.y, x0 - seg.x:x1 - seg.x]

    def _segment(self, key: tuple[int, int], page, index: int) -> Segment:
        seg = self._segments.get((*key, index))
        if seg is not None:
            self._segments.move_to_end((*key, index))
            return seg
        return decode_segment(page, index)

    def _keep(self, cache_key: tuple[int, int, int], seg: Segment) -> None:
        """Remember a segment the box used only part of; one it used whole (a full-width
        scan) no later block needs, and would only crowd out those that do."""
        if cache_key in self._segments or seg.nbytes > self.cache_bytes:
            return
        self._segments[cache_key] = seg
        self._cached += seg.nbytes
        while self._cached > self.cache_bytes:
            self._cached -= self._segments.popitem(last=False)[1].nbytes


def decode_segment(page, index: int) -> Segment:
    """Strip or tile `index` of `page`, read and decoded alone."""
    count = page.databytecounts[index]
    data = None
    if count:
        fh = page.parent.filehandle
        with fh.lock:
            fh.seek(page.dataoffsets[index])
            data = fh.read(count)
    kwargs = {}
    if page.compression in JPEG_COMPRESSIONS:
        kwargs = {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader}
    array, (_, _, y, x, _), shape = page.decode(data, index, **kwargs)
    if array is None:
        return Segment(y, x, (shape[1], shape[2]), None)
    array = array.reshape(array.shape[1], array.shape[2])  # (depth 1, rows, columns, 1 sample)
    return Segment(y, x, array.shape, array)
