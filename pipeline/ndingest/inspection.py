"""What an image tells (step 2 of the tutorial), and the tutorial's full table for a spec.

The tutorial read ndstore's `CUTOUT` as (x, y, z); it is (z, y, x). Sizes here come from
the source's declared axes, and the table says which order it assumed.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Callable

from .source_base import Source
from .sources import HDF5Source, hdf5_linked_files, window_range

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceSummary:
    """The keys of `ndingest inspect --json`."""

    x_size: int
    y_size: int
    z_size: int
    time_range: tuple[int, int]
    datatype: str
    window_range: tuple[float, float] | None  # None: not scanned (an ingest learns it from its blocks)
    axes: str

    def to_json(self) -> dict:
        d = asdict(self)
        d["time_range"] = list(self.time_range)
        d["window_range"] = list(self.window_range) if self.window_range is not None else None
        return d

    @classmethod
    def from_json(cls, d: dict) -> "SourceSummary":
        window = tuple(d["window_range"]) if d["window_range"] is not None else None
        return cls(**{**d, "time_range": tuple(d["time_range"]), "window_range": window})


def summarize(source: Source, *, window: tuple[float, float] | None = None, scan: bool = True,
              progress: Callable[[int], None] | None = None) -> SourceSummary:
    """Sizes, time range, dtype (from headers), and the window range: `window` if given,
    else the one the source knows (a server's channel info), else scanned box by box, or
    None without `scan` (an ingest takes it from the blocks it writes, so the source is
    not read once more just for it)."""
    t, z, y, x = source.shape_tzyx
    window = window if window is not None else source.known_window_range
    if window is None and scan:
        window = window_range(source, progress)
    return SourceSummary(x_size=x, y_size=y, z_size=z, time_range=(0, t - 1), datatype=source.dtype.name,
                         window_range=window, axes=source.axes)


def linked_file_notes(source: Source) -> list[str]:
    """One line per dataset of an HDF5 source's file whose voxels live in other files
    (external storage, virtual sources), naming them: readable here, refused in a job
    posted to `serve`, and worth knowing before publishing what they hold."""
    if not isinstance(source, HDF5Source):
        return []
    return [f"{source.path}:{name} reads its voxels from other files: {', '.join(files)}"
            for name, files in hdf5_linked_files(source.path)]


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def source_table(summary: SourceSummary, *, files: str = "") -> list[tuple[str, str]]:
    """The table of `inspect SOURCE`; `files` (a Source's file_listing) shows which files
    are read, in which order, so a stack sorted wrongly shows before it is ingested."""
    rows = [
        ("x size", str(summary.x_size)),
        ("y size", str(summary.y_size)),
        ("z size", str(summary.z_size)),
        ("time range", f"({summary.time_range[0]}, {summary.time_range[1]})"),
        ("data type", summary.datatype),
        ("window range", "(not scanned)" if summary.window_range is None
         else f"({_fmt(summary.window_range[0])}, {_fmt(summary.window_range[1])})"),
        ("axes (file order, slowest first)", summary.axes),
    ]
    return rows + [("files", files)] if files else rows


def spec_table(spec, channel: str, summary: SourceSummary, *, levels: int, files: str = "") -> list[tuple[str, str]]:
    """The tutorial's table for one channel of a spec (`files` as in source_table)."""
    ds = spec.dataset
    rows = [("dataset name", ds.name), ("channel", f"{channel} ({spec.channels[channel].type})")]
    rows += [("files", files)] if files else []
    rows += source_table(summary)[:6]
    rows += [(f"{a} offset", str(v)) for a, v in zip("xyz", ds.offset_xyz)]
    levels_text = f"{levels} (auto)" if ds.scaling_levels == "auto" else str(levels)
    rows += [("scaling levels", levels_text), ("scaling option", ds.scaling_option)]
    rows += [(f"{a} voxel resolution", f"{_fmt(v)} nm") for a, v in zip("xyz", ds.voxel_resolution_nm)]
    rows += [("axes (file order, slowest first)", summary.axes)]
    return rows


def spec_dataset_json(spec, *, levels: int) -> dict:
    """The dataset rows of the tutorial's table, as `inspect SPEC --json`'s "dataset" object."""
    ds = spec.dataset
    return {
        "name": ds.name,
        **{f"{a}_offset": v for a, v in zip("xyz", ds.offset_xyz)},
        **{f"{a}_voxel_resolution": v for a, v in zip("xyz", ds.voxel_resolution_nm)},  # nm
        "scaling_option": ds.scaling_option,
        "scaling_levels": levels,
        "scaling_levels_auto": ds.scaling_levels == "auto",
    }


def format_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    head = f"{'field'.ljust(width)} | value"
    return "\n".join([head, f"{'-' * width}-|------"] + [f"{k.ljust(width)} | {v}" for k, v in rows])
