"""`ndingest plan SPEC [--json] [--strict]` as a user runs it: it writes nothing, its JSON
has the issue's keys, `--strict` is exit 7 when the volume cannot fit, a half-done ingest
shows what is left, and 10^5 blocks answer (speed itself is benchmarks' business)."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import h5py

from ndingest.sample import ANNOTATION_FILE, IMAGE_FILE

from conftest import ingest_tutorial, run_cli, write_spec

LEVEL_KEYS = ["level", "blocks", "tasks", "bytes", "files", "markers"]
MARKERS = "store/_markers/neurostorm_kat11_scale3/kat11_scale3"


def unallocated_h5(path: Path, shape_zyx: tuple[int, int, int], dtype: str = "uint8") -> Path:
    """A huge HDF5 array with one stored chunk (as benchmarks/scale.py makes it): its shape
    is declared, its bytes are not on disk."""
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("image/CUTOUT", shape=shape_zyx, dtype=dtype, chunks=(64, 64, 64))
        ds[0, 0, 0] = 0  # one chunk stored: an array with none past 2^30 voxels is refused as broken
    return path


def test_plan_counts_the_tutorial_and_writes_nothing(tmp_path, tutorial_data):
    spec = write_spec(tmp_path / "work", image=tutorial_data / IMAGE_FILE, annotation=tutorial_data / ANNOTATION_FILE)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    result = run_cli("plan", "--json", str(spec))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # no store, catalog, lock, marker or scratch
    out = json.loads(result.stdout)
    assert {"channels", "free_bytes", "needed_bytes", "estimate_seconds"} <= set(out)
    assert list(out["estimate_seconds"]) == ["median", "min", "max"]
    assert out["estimate_seconds"]["min"] <= out["estimate_seconds"]["median"] <= out["estimate_seconds"]["max"]
    assert list(out["channels"]) == ["image", "annotation"]
    image, annotation = (out["channels"][n]["levels"] for n in ("image", "annotation"))
    assert [list(lv) for lv in image] == [LEVEL_KEYS]
    assert image[0] == {"level": 0, "blocks": 8, "tasks": 1, "bytes": 12_000_000, "files": 78, "markers": 18}
    assert annotation[0]["bytes"] == 48_000_000
    assert out["needed_bytes"] == 60_000_000 + 36 * 200
    # the disk's free space is the machine's; what plan makes of it is ndingest's
    assert isinstance(out["free_bytes"], int) and out["free_bytes"] >= 0
    assert out["left_bytes"] == out["needed_bytes"]  # nothing written yet
    assert out["fits"] is (out["left_bytes"] <= out["free_bytes"])

    text = run_cli("plan", str(spec))
    assert text.returncode == 0, text.stderr
    assert "level | blocks | tasks" in text.stdout and "11.4 MiB" in text.stdout
    assert "free space: " in text.stdout and "estimate for the ingest: " in text.stdout
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_strict_is_exit_7_when_the_volume_cannot_fit(tmp_path):
    # 65536 x 65536 x 4096 uint64: 128 TiB declared, one 2 MiB chunk on disk; 16,384 blocks of 2048x2048x256
    source = unallocated_h5(tmp_path / "huge.h5", (4096, 65536, 65536), dtype="uint64")
    spec = write_spec(tmp_path, image=source, offset=(0, 0, 0), ingest="block_chunks = [16, 16, 16]")
    loose = run_cli("plan", "--json", str(spec))
    assert loose.returncode == 0, loose.stderr
    out = json.loads(loose.stdout)
    assert out["needed_bytes"] > out["free_bytes"] and out["needed_bytes"] >= 128 * 2**40
    assert "warning: " in loose.stderr and "exit 7" in loose.stderr
    assert any("sharding = true" in r for r in out["recommendations"])  # past 100 GiB unsharded

    strict = run_cli("plan", "--strict", str(spec))
    assert strict.returncode == 7, strict.stderr
    assert "DOES NOT FIT" in strict.stdout and "recommended: " in strict.stdout and "sharding = true" in strict.stdout
    assert strict.stderr.startswith("ndingest: error: ") and "free in" in strict.stderr
    assert not (tmp_path / "store").exists() and not list(tmp_path.glob(".ndingest-plan-*"))


def test_plan_of_a_half_done_ingest_shows_what_is_left(tmp_path, tutorial_data):
    spec, _ = ingest_tutorial(tmp_path, tutorial_data)
    done = json.loads(run_cli("plan", "--json", str(spec)).stdout)
    assert done["channels"]["image"]["levels"][0]["done"] == 8
    assert done["estimate_seconds"] == {"median": 0.0, "min": 0.0, "max": 0.0}  # nothing left
    image_written = tmp_path / MARKERS / "image/written/level0"
    shutil.rmtree(image_written / "task00000")  # the task's markers and its seal, as a kill before them leaves it
    (image_written / "task00000.done").unlink()

    result = run_cli("plan", "--json", str(spec))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    image, annotation = (out["channels"][n]["levels"][0] for n in ("image", "annotation"))
    assert (image["done"], image["verified"], image["blocks"]) == (0, 8, 8)
    assert (annotation["done"], annotation["blocks"]) == (8, 8)
    assert out["left_bytes"] >= 12_000_000 and out["left_bytes"] < out["needed_bytes"]
    assert out["estimate_seconds"]["max"] > 0
    text = run_cli("plan", str(spec)).stdout
    assert "written | verified" in text and "estimate for what is left: " in text and "left to write" in text


def test_plan_of_100000_blocks_answers(tmp_path):
    # benchmarks/scale.py's volume: 3200 x 3200 x 2560 in 64^3 blocks (isotropic, one chunk per block)
    source = unallocated_h5(tmp_path / "big.h5", (2560, 3200, 3200))
    spec = write_spec(tmp_path, image=source, offset=(0, 0, 0), resolution=(4.0, 4.0, 4.0),
                      ingest="block_chunks = [1, 1, 1]")
    spec.write_text(spec.read_text().replace('scaling_option = "zslices"', 'scaling_option = "isotropic"'))
    started = time.monotonic()
    result = run_cli("plan", "--json", str(spec), timeout=120)
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    (level0,) = json.loads(result.stdout)["channels"]["image"]["levels"]
    assert level0["blocks"] == 100_000 and level0["files"] == 100_000 and level0["tasks"] == 1000
    print(f"ndingest plan of 100,000 blocks: {took:.2f} s (whole process)")


def test_plan_of_a_bucket_store_has_no_free_space_to_measure(tmp_path, tutorial_data, s3_server):
    bucket = s3_server.new_bucket()
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE, store=f"s3://{bucket}/lab/vol")
    spec.write_text(spec.read_text() + f'catalog = "sqlite:///{tmp_path / "catalog.sqlite"}"\n')
    result = run_cli("plan", "--json", "--strict", str(spec))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["free_bytes"] is None and out["needed_bytes"] == 12_000_000 + 18 * 200
    assert "store I/O not timed" in result.stderr and "warning" not in result.stderr
    assert "free space: unknown" in run_cli("plan", str(spec)).stdout
    assert s3_server.keys(bucket) == [] and not (tmp_path / "catalog.sqlite").exists()
