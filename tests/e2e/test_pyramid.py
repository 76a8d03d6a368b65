"""The resolution hierarchy end to end, against a slow, obvious reference written here."""
from __future__ import annotations

import json
import sqlite3
from collections import Counter

import numpy as np
import pytest
import tensorstore as ts

from conftest import run_cli, write_h5, write_spec

VOLUME = "store/pyr/pyr"


def reference_level(below: np.ndarray, below_begin_xyz, begin_xyz, shape_xyz, fz: int, annotation: bool) -> np.ndarray:
    """Level r from level r-1 voxel by voxel: children at 2i, 2i+1 inside the volume."""
    out = np.zeros(tuple(shape_xyz)[::-1], dtype=below.dtype)
    bz, by, bx = below.shape
    for z in range(shape_xyz[2]):
        for y in range(shape_xyz[1]):
            for x in range(shape_xyz[0]):
                kids = []
                ax, ay, az = begin_xyz[0] + x, begin_xyz[1] + y, begin_xyz[2] + z
                for cz in range(az * fz, az * fz + fz):
                    for cy in (2 * ay, 2 * ay + 1):
                        for cx in (2 * ax, 2 * ax + 1):
                            lz, ly, lx = cz - below_begin_xyz[2], cy - below_begin_xyz[1], cx - below_begin_xyz[0]
                            if 0 <= lz < bz and 0 <= ly < by and 0 <= lx < bx:
                                kids.append(int(below[lz, ly, lx]))
                if annotation:
                    counts = Counter(k for k in kids if k)
                    out[z, y, x] = min(counts, key=lambda k: (-counts[k], k)) if counts else 0
                else:
                    out[z, y, x] = (2 * sum(kids) + len(kids)) // (2 * len(kids))
    return out


def read_level(folder, channel: str, level: int) -> tuple[np.ndarray, list, list]:
    vol = ts.open({"driver": "neuroglancer_precomputed", "scale_index": level,
                   "kvstore": {"driver": "file", "path": str(folder / VOLUME / channel)}}).result()
    begin = list(vol.domain.inclusive_min[:3])
    return vol[..., 0].read().result().transpose(2, 1, 0), begin, list(vol.domain.shape[:3])


@pytest.mark.parametrize("option, offset, levels", [
    ("zslices", (3, 5, 7), 3),
    ("isotropic", (1, 2, 3), 2),
])
def test_every_level_equals_the_reference(tmp_path, option, offset, levels):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, size=(9, 23, 29), dtype=np.uint8)  # odd sizes (z, y, x)
    labels = np.zeros((9, 23, 29), dtype=np.uint32)  # sparse labels, ties included
    sparse = rng.random(labels.shape) < 0.3
    labels[sparse] = rng.choice(np.array([7, 9, 4_000_000_000], dtype=np.uint32), size=int(sparse.sum()))
    labels[2:6, 4:9, 3:11] = 9
    labels[0, 0, 1] = 4_000_000_000
    image_h5 = write_h5(tmp_path / "img.h5", image)
    labels_h5 = write_h5(tmp_path / "lab.h5", labels, "annotation/CUTOUT")
    spec = write_spec(tmp_path, image=image_h5, annotation=labels_h5, dataset="pyr", project="pyr",
                      offset=offset, resolution=(4.0, 4.0, 4.0))
    text = spec.read_text().replace('scaling_option = "zslices"', f'scaling_option = "{option}"')
    spec.write_text(text.replace("scaling_levels = 0", f"scaling_levels = {levels}"))
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr

    fz = 2 if option == "isotropic" else 1
    for channel, data in (("image", image), ("annotation", labels)):
        info = json.loads((tmp_path / VOLUME / channel / "info").read_text())
        assert len(info["scales"]) == levels + 1
        below, below_begin = data, list(offset)
        for level in range(1, levels + 1):
            stored, begin, shape = read_level(tmp_path, channel, level)
            expected_begin = [o // 2**level for o in offset[:2]] + [offset[2] // fz**level]
            assert begin == expected_begin
            end0 = [o + s for o, s in zip(offset, (29, 23, 9))]
            assert [b + s for b, s in zip(begin, shape)] == [-(-e // 2**level) for e in end0[:2]] + [-(-end0[2] // fz**level)]
            expected = reference_level(below, below_begin, begin, shape, fz, channel == "annotation")
            np.testing.assert_array_equal(stored, expected, err_msg=f"{channel} level {level}")
            below, below_begin = stored, begin
    db = sqlite3.connect(tmp_path / "store/catalog.sqlite")
    assert [r[0] for r in db.execute("select propagate from channels")] == [2, 2]
    status = json.loads(run_cli("status", str(spec), "--json").stdout)["channels"]["image"]
    assert sorted(status["levels"]) == [str(lv) for lv in range(levels + 1)]
    assert status["done"] == status["total"] == status["verified"]


def test_auto_levels_stop_when_one_chunk_covers_x_and_y(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, size=(16, 300, 520), dtype=np.uint8)
    spec = write_spec(tmp_path, image=write_h5(tmp_path / "v.h5", data), dataset="pyr", project="pyr",
                      offset=(0, 0, 0))
    spec.write_text(spec.read_text().replace("scaling_levels = 0", 'scaling_levels = "auto"'))
    assert run_cli("ingest", str(spec)).returncode == 0
    info = json.loads((tmp_path / VOLUME / "image/info").read_text())
    fits = [s["size"][0] <= s["chunk_sizes"][0][0] and s["size"][1] <= s["chunk_sizes"][0][1] for s in info["scales"]]
    assert fits == [False] * (len(fits) - 1) + [True]  # 520x300 -> ... -> 33x19 in one 64x64 cuboid
    assert [s["size"][:2] for s in info["scales"]][-1] == [33, 19]
    assert [s["key"] for s in info["scales"]][:2] == ["32_32_40", "64_64_40"]


def test_verify_catches_a_corrupted_upper_level_chunk(tmp_path):
    data = np.random.default_rng(2).integers(0, 255, size=(16, 256, 256), dtype=np.uint8)
    spec = write_spec(tmp_path, image=write_h5(tmp_path / "v.h5", data), dataset="pyr", project="pyr",
                      offset=(0, 0, 0))
    spec.write_text(spec.read_text().replace("scaling_levels = 0", "scaling_levels = 1"))
    assert run_cli("ingest", str(spec)).returncode == 0
    chunk = tmp_path / VOLUME / "image/64_64_40/0-128_0-128_0-16"
    raw = bytearray(chunk.read_bytes())
    raw[10] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    result = run_cli("verify", str(spec))
    assert result.returncode == 5 and "level1 0-128_0-128_0-16: differs from the level below" in result.stderr
