"""`ndingest slice`: one plane of a channel at one level, as a PNG (ndstore's xy/xz/yz).
The server's slice route draws with the same functions, so it lives in the steps layer,
below both the CLI and the server.

Image voxels map linearly from the channel's window range to 0..255 (identity for a
0..255 window), rounded half up; annotation labels get stable colours (the same id is
the same colour in every slice and every run), zero is black.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np

from .blocks import Box, Vec3
from .errors import SpecError
from .markers import atomic_write
from .plan import ChannelPlan, Plan

logger = logging.getLogger(__name__)

PLANES = ("xy", "xz", "yz")


def plane_box(extent: Box, plane: str, index: int) -> Box:
    """The one-voxel-thick box of `plane` at absolute `index` on the fixed axis."""
    axis = {"xy": "z", "xz": "y", "yz": "x"}[plane]
    lo, hi = getattr(extent.begin, axis), getattr(extent.end, axis)
    if not lo <= index < hi:
        raise SpecError(f"{plane} slice at {axis} = {index} lies outside the level's {axis} range [{lo}, {hi})")
    begin, end = extent.begin._asdict(), extent.end._asdict()
    begin[axis], end[axis] = index, index + 1
    return Box(Vec3(**begin), Vec3(**end))


def plane_pixels(zyx: np.ndarray, plane: str) -> np.ndarray:
    """Rows and columns as ndstore drew them: xy -> (y, x), xz -> (z, x), yz -> (z, y)."""
    return {"xy": lambda a: a[0], "xz": lambda a: a[:, 0, :], "yz": lambda a: a[:, :, 0]}[plane](zyx)


TILE_PIXELS = 1 << 17  # pixels coloured at once: a few 1 MiB float64/uint64 temporaries, whatever the plane


def row_tiles(rows: int, cols: int) -> list[slice]:
    """Row bands of about TILE_PIXELS pixels (at least one row), top to bottom."""
    step = max(1, TILE_PIXELS // max(1, cols))
    return [slice(r, min(rows, r + step)) for r in range(0, rows, step)]


def window_to_uint8(pixels: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Linear map of [lo, hi] to [0, 255], rounded half up, clipped outside the window;
    band by band, so the float64 temporaries are a tile's, never the plane's."""
    lo, hi = float(window[0]), float(window[1])
    out = np.empty(pixels.shape, dtype=np.uint8)
    for band in row_tiles(*pixels.shape):
        values = pixels[band].astype(np.float64)
        if hi <= lo:
            out[band] = np.where(values > lo, 255, 0)
        else:
            out[band] = np.clip(np.floor((values - lo) * 255.0 / (hi - lo) + 0.5), 0, 255)
    return out


def label_colours(labels: np.ndarray) -> np.ndarray:
    """RGB per label from a 64-bit mix of the id (splitmix64's finaliser); zero is black,
    every other id gets channels in 48..255 so no segment is drawn black. Band by band:
    the uint64 temporaries are a tile's, never the plane's."""
    out = np.empty((*labels.shape, 3), dtype=np.uint8)
    for band in row_tiles(*labels.shape):
        out[band] = _colours(labels[band])
    return out


def _colours(labels: np.ndarray) -> np.ndarray:
    """One band's colours, in place where numpy allows (a band's uint64 arrays, two at once)."""
    h = labels.astype(np.uint64)
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    rgb = np.empty((*labels.shape, 3), dtype=np.uint8)
    for i, shift in enumerate((0, 8, 16)):
        channel = h >> np.uint64(shift)
        channel &= np.uint64(0xFF)
        channel *= np.uint64(208)
        channel //= np.uint64(256)
        channel += np.uint64(48)
        rgb[..., i] = channel
    rgb[labels == 0] = 0
    return rgb


def check_time_point(cp: ChannelPlan, t: int) -> None:
    """`--t T` must name one of the channel's time points (0 for a channel that is not a time series)."""
    t0, t1 = cp.time_range
    if not t0 <= t <= t1:
        note = "" if cp.spec.type == "timeseries" else " (not a time series)"
        raise SpecError(f"--t {t}: channel {cp.name} has time points {t0}..{t1}{note}")


def render_slice(plan: Plan, cp: ChannelPlan, *, plane: str, index: int, level: int, t: int = 0,
                 window: tuple[float, float]) -> np.ndarray:
    """The picture of one plane: (rows, cols) uint8 for images, (rows, cols, 3) for labels."""
    if not 0 <= level < len(cp.levels):
        raise SpecError(f"--res {level}: channel {cp.name} has levels 0..{len(cp.levels) - 1}")
    check_time_point(cp, t)
    box = plane_box(cp.levels[level].extent, plane, index)
    if plan.store.info(cp.ref(t)) is None:
        raise SpecError(f"{plan.store.volume_dir(cp.ref(t))}: channel {cp.name} is not in the store; run ingest first")
    pixels = plane_pixels(plan.store.read(cp.ref(t), level, box), plane)
    if cp.spec.type == "annotation":
        return label_colours(pixels)
    return window_to_uint8(pixels, window)


def write_png(picture: np.ndarray, path: Path) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())
