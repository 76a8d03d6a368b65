"""The interface every reader implements: a volume of (t, z, y, x) read in boxes.

Its own module, below `sources` (which opens each kind of source), so that the readers of
a server's channel (`ndstore`) and of slices by URL (`webslices`) implement it without
importing `sources`, which imports them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from .blocks import Box, Vec3
from .errors import SourceError

SCAN_BYTES = 64 * 2**20


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
    def file_listing(self) -> str:
        """The files in reading order, as "count: first ... last", so a stack's sort order
        shows in `inspect` before anything is written."""
        files = self.files
        if len(files) == 1:
            return str(files[0])
        return f"{len(files)}: {files[0].name} ... {files[-1].name}"

    @property
    def known_window_range(self) -> tuple[float, float] | None:
        """A window range known without reading voxels (a server's channel info), or None."""
        return None

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
