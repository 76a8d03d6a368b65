"""Resume after a real SIGKILL, the run lock, changed sources, and verify catching damage."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tensorstore as ts

from ndingest.sample import ANNOTATION_FILE, IMAGE_FILE

from conftest import (NDINGEST, read_cutout, run_cli, run_in_terminal, wait_for_markers, write_h5,
                      write_spec, written_markers)

SHAPE_ZYX = (256, 512, 512)  # 256 one-chunk blocks per channel: slow enough to kill mid-run
ONE_CHUNK_BLOCKS = "block_chunks = [1, 1, 1]\nblocks_per_task = 16"
VOLUME = "store/neurostorm_kat11_scale3/kat11_scale3"


@pytest.fixture(scope="module")
def big_sources(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(7)
    image = rng.integers(0, 255, size=SHAPE_ZYX, dtype=np.uint8)
    labels = (rng.integers(0, 4, size=SHAPE_ZYX, dtype=np.uint32) * 1_000_003)
    return write_h5(folder / "image.h5", image), write_h5(folder / "labels.h5", labels, "annotation/CUTOUT")


def start_ingest(spec: Path) -> subprocess.Popen:
    return subprocess.Popen([NDINGEST, "ingest", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def live_children(pid: int) -> list[int]:
    listed = subprocess.run(["ps", "--ppid", str(pid), "-o", "pid=,stat="], capture_output=True, text=True)
    return sorted(int(child) for child, stat in zip(*[iter(listed.stdout.split())] * 2) if not stat.startswith("Z"))


def unsealed_tasks(folder: Path) -> list[Path]:
    """Level-0 task folders with some block markers but no `.done` seal: being written."""
    return [d for d in (folder / "store/_markers").glob("*/*/*/written/level0/task*")
            if d.is_dir() and not d.with_name(d.name + ".done").exists() and any(d.glob("*.json"))]


def chunk_path(folder: Path, channel: str, block_key: str) -> Path:
    return folder / VOLUME / channel / "32_32_40" / block_key


def test_sigkill_mid_ingest_then_rerun_writes_only_unmarked_blocks(tmp_path, big_sources):
    image, labels = big_sources
    spec = write_spec(tmp_path, image=image, annotation=labels, ingest=ONE_CHUNK_BLOCKS)
    proc = start_ingest(spec)
    wait_for_markers(tmp_path, proc, at_least=3)
    proc.send_signal(signal.SIGKILL)  # workers=1: Luigi runs the tasks in this very process
    proc.wait()
    killed_at = time.time_ns()

    status = json.loads(run_cli("status", str(spec), "--json").stdout)["channels"]
    total = status["image"]["total"] + status["annotation"]["total"]
    done = status["image"]["done"] + status["annotation"]["done"]
    assert total == 512 and 3 <= done < total, status

    marked = {(m.parts[-5], m.stem) for m in written_markers(tmp_path)}
    before = {key: chunk_path(tmp_path, *key).stat() for key in marked}
    time.sleep(0.01)
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr

    for key, st in before.items():  # marked blocks were not written again
        now = chunk_path(tmp_path, *key).stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns), key
    for channel in ("image", "annotation"):  # every unmarked block was (re)written after the kill
        for chunk in (tmp_path / VOLUME / channel / "32_32_40").iterdir():
            if (channel, chunk.name) not in marked:
                assert chunk.stat().st_mtime_ns >= killed_at, chunk
    for channel, source in (("image", image), ("annotation", labels)):
        vol = ts.open({"driver": "neuroglancer_precomputed",
                       "kvstore": {"driver": "file", "path": str(tmp_path / VOLUME / channel)}}).result()
        np.testing.assert_array_equal(vol[..., 0].read().result().transpose(2, 1, 0), read_cutout(source))
    assert run_cli("verify", str(spec)).returncode == 0


def test_second_run_on_the_same_store_exits_6_while_the_first_runs(tmp_path, big_sources):
    image, labels = big_sources
    spec = write_spec(tmp_path, image=image, annotation=labels, ingest=ONE_CHUNK_BLOCKS)
    first = start_ingest(spec)
    try:
        wait_for_markers(tmp_path, first)
        second = run_cli("ingest", str(spec))
        assert second.returncode == 6, second.stderr
        assert "already running" in second.stderr and "Traceback" not in second.stderr
    finally:
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err


def test_changed_source_stops_the_run_with_exit_3_and_restart_rewrites_it(tmp_path, tutorial_data):
    source = write_h5(tmp_path / "src/image.h5", read_cutout(tutorial_data / IMAGE_FILE))
    spec = write_spec(tmp_path, image=source)
    assert run_cli("ingest", str(spec)).returncode == 0

    changed = read_cutout(source)[::-1].copy()
    write_h5(source, changed)
    result = run_cli("ingest", str(spec))
    assert result.returncode == 3, result.stderr
    assert str(source) in result.stderr and "--restart image" in result.stderr
    assert "Traceback" not in result.stderr

    result = run_cli("ingest", str(spec), "--restart", "image")
    assert result.returncode == 0, result.stderr
    vol = ts.open({"driver": "neuroglancer_precomputed",
                   "kvstore": {"driver": "file", "path": str(tmp_path / VOLUME / "image")}}).result()
    np.testing.assert_array_equal(vol[..., 0].read().result().transpose(2, 1, 0), changed)


def ingest_contiguous(tmp_path: Path, data: np.ndarray) -> tuple[Path, Path, int]:
    """`data` as a contiguous, uncompressed HDF5 (so bytes can change in place), ingested:
    (spec, source, file offset of the first voxel)."""
    import h5py

    source = tmp_path / "src/raw.h5"
    source.parent.mkdir()
    with h5py.File(source, "w") as f:
        f.create_dataset("image/CUTOUT", data=data)
        offset = f["image/CUTOUT"].id.get_offset()
    spec = write_spec(tmp_path, image=source)
    assert run_cli("ingest", str(spec)).returncode == 0
    return spec, source, offset


def change_in_place(source: Path, at: int, value: int) -> None:
    """One byte of `source` changed, its size and mtime kept."""
    st = source.stat()
    with open(source, "r+b") as f:
        f.seek(at)
        f.write(bytes([value]))
    os.utime(source, ns=(st.st_atime_ns, st.st_mtime_ns))


@pytest.mark.parametrize("where, block", [
    ("first", "1000-1256_2000-2200_1000-1064"),
    ("last", "1256-1300_2000-2200_1192-1200"),
])
def test_content_change_keeping_size_and_mtime_stops_the_rerun_with_exit_3(tmp_path, tutorial_data, where, block):
    data = read_cutout(tutorial_data / IMAGE_FILE)
    spec, source, offset = ingest_contiguous(tmp_path, data)
    index = 5 if where == "first" else data.size - 1  # the first voxel row's 6th, or the very last voxel
    change_in_place(source, offset + index, (int(data.flat[index]) + 1) % 256)
    result = run_cli("ingest", str(spec))
    assert result.returncode == 3, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert str(source) in line and block in line and "--restart image" in line, line

    result = run_cli("ingest", str(spec), "--restart", "image")
    assert result.returncode == 0, result.stderr
    assert run_cli("verify", str(spec)).returncode == 0


def test_content_change_without_size_or_mtime_change_fails_verify(tmp_path, tutorial_data):
    data = read_cutout(tutorial_data / IMAGE_FILE)
    spec, source, offset = ingest_contiguous(tmp_path, data)
    change_in_place(source, offset + 5, (int(data.flat[5]) + 1) % 256)
    result = run_cli("verify", str(spec))
    assert result.returncode == 5, result.stderr
    assert "1000-1256_2000-2200_1000-1064" in result.stderr


@pytest.mark.parametrize("damage, status", [
    (lambda b: b[:100] + bytes([b[100] ^ 0xFF]) + b[101:], "differs from source"),
    (lambda b: b[: len(b) // 2], "unreadable"),
])
def test_verify_catches_a_hand_corrupted_chunk(tmp_path, tutorial_spec, damage, status):
    assert run_cli("ingest", str(tutorial_spec)).returncode == 0
    chunk = tutorial_spec.parent / VOLUME / "annotation/32_32_40/1128-1256_2000-2128_1016-1032"
    chunk.write_bytes(damage(chunk.read_bytes()))
    result = run_cli("verify", str(tutorial_spec))
    assert result.returncode == 5
    assert "annotation t0 level0 1000-1256_2000-2200_1000-1064" in result.stderr and status in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    report = json.loads((tutorial_spec.parent / "store/_reports/neurostorm_kat11_scale3/kat11_scale3/verify.json").read_text())
    bad = [r for r in report if r["status"] != "ok"]
    assert [(r["channel"], r["block"], r["status"]) for r in bad] == [
        ("annotation", "1000-1256_2000-2200_1000-1064", status)]


def test_sigkill_mid_level_then_rerun_resumes_that_level(tmp_path, big_sources):
    image, labels = big_sources
    spec = write_spec(tmp_path, image=image, annotation=labels, ingest=ONE_CHUNK_BLOCKS)
    spec.write_text(spec.read_text().replace("scaling_levels = 0", "scaling_levels = 1"))
    proc = start_ingest(spec)
    wait_for_markers(tmp_path, proc, level=1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    status = json.loads(run_cli("status", str(spec), "--json").stdout)["channels"]
    level1_done = sum(status[c]["levels"]["1"]["done"] for c in status)
    level1_total = sum(status[c]["levels"]["1"]["total"] for c in status)
    assert 1 <= level1_done < level1_total, status
    marked = {(m.parts[-5], m.stem): m.stat().st_mtime_ns for m in written_markers(tmp_path, 1)}

    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr
    after = {(m.parts[-5], m.stem): m.stat().st_mtime_ns for m in written_markers(tmp_path, 1)}
    assert len(after) == level1_total
    assert all(after[key] == mtime for key, mtime in marked.items()), "a marked level-1 block was redone"
    assert run_cli("verify", str(spec)).returncode == 0


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs mounted at `tmp_path`/store: a real disk that fills up (root only)."""
    mount = tmp_path / "store"
    mount.mkdir()
    tried = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)],
                           capture_output=True, text=True)
    if tried.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {tried.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_exits_7_naming_the_store_and_a_rerun_with_room_finishes(tmp_path, tutorial_data, small_disk):
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE, annotation=tutorial_data / ANNOTATION_FILE)
    result = run_cli("ingest", str(spec))
    assert result.returncode == 7, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("ndingest: error")]
    assert len(errors) == 1 and str(small_disk) in errors[0] and "No space left on device" in errors[0], result.stderr
    status = json.loads(run_cli("status", str(spec), "--json").stdout)["channels"]
    assert sum(c["done"] for c in status.values()) < sum(c["total"] for c in status.values()), status

    subprocess.run(["mount", "-o", "remount,size=256m", str(small_disk)], check=True)
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr
    for channel, source in (("image", IMAGE_FILE), ("annotation", ANNOTATION_FILE)):
        vol = ts.open({"driver": "neuroglancer_precomputed",
                       "kvstore": {"driver": "file", "path": str(tmp_path / VOLUME / channel)}}).result()
        np.testing.assert_array_equal(vol[..., 0].read().result().transpose(2, 1, 0),
                                      read_cutout(tutorial_data / source))
    assert run_cli("verify", str(spec)).returncode == 0


def test_a_killed_worker_process_is_named_and_a_rerun_finishes(tmp_path, big_sources):
    image, labels = big_sources  # tasks of 64 one-chunk blocks: each task's process lives a while
    spec = write_spec(tmp_path, image=image, annotation=labels, ingest="block_chunks = [1, 1, 1]\nblocks_per_task = 64")
    proc = subprocess.Popen([NDINGEST, "ingest", str(spec), "--workers", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    wait_for_markers(tmp_path, proc, at_least=3)
    # Kill task processes (Luigi forks one per task) that are surely mid-task: one that has
    # just finished may already have told its parent DONE, and then nothing died. So freeze
    # them all, and kill them only while some task has markers but no seal yet.
    deadline = time.monotonic() + 60
    while True:
        live = live_children(proc.pid)
        for pid in live:
            os.kill(pid, signal.SIGSTOP)
        if live and unsealed_tasks(tmp_path) and live_children(proc.pid) == live:
            break
        for pid in live:
            os.kill(pid, signal.SIGCONT)
        assert proc.poll() is None and time.monotonic() < deadline, "no worker process caught mid-task"
        time.sleep(0.005)
    for pid in live:
        os.kill(pid, signal.SIGKILL)  # as the out-of-memory killer would
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    line = err.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, err
    assert "its worker process died (exit code -9, SIGKILL" in line and "rerun the same command" in line, line

    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr
    assert run_cli("verify", str(spec)).returncode == 0


def test_inspect_scans_with_a_bar_and_ingest_takes_the_window_from_its_writes(tmp_path, big_sources):
    """`inspect` reads every voxel for the window range, with its own bar. `ingest` does not
    (issue 16): its first bar is the blocks', and the window it records from the blocks it
    wrote is what `inspect SPEC` then prints without reading the source again."""
    image, labels = big_sources  # 320 MiB of gzip-chunked voxels: a scan of about a second
    code, text = run_in_terminal("inspect", str(labels))
    assert code == 0, text
    assert "scan:" in text and "vox/s" in text and "67.1M/67.1M" in text, text  # 256 x 512 x 512 voxels
    spec = write_spec(tmp_path, image=image, annotation=labels)
    code, text = run_in_terminal("ingest", str(spec))
    assert code == 0, text
    assert "scan:" not in text and "write+verify" in text, text
    code, text = run_in_terminal("inspect", str(spec))
    assert code == 0, text
    assert "scan:" not in text, text
    for path, name in ((image, "image"), (labels, "annotation")):
        with h5py.File(path, "r") as f:
            voxels = f[f"{name}/CUTOUT"][...]
        assert f"window range                     | ({voxels.min()}, {voxels.max()})" in text, text


def test_a_source_whose_size_changed_is_exit_3_naming_both_sizes_and_the_remedy_works(tmp_path):
    """The size is the dataset's: neither a rerun nor --restart may change it (exit 3, not
    the catalog's exit 4), status counts nothing of the old plan, and the printed remedy,
    a new dataset, finishes."""
    rng = np.random.default_rng(3)
    source = write_h5(tmp_path / "src/image.h5", rng.integers(0, 255, (20, 60, 70), dtype=np.uint8))
    spec = write_spec(tmp_path, image=source)
    assert run_cli("ingest", str(spec)).returncode == 0

    grown = rng.integers(0, 255, (24, 60, 70), dtype=np.uint8)
    write_h5(source, grown)
    for args in ([], ["--restart", "image"]):
        result = run_cli("ingest", str(spec), *args)
        assert result.returncode == 3, (args, result.stderr)
        line = result.stderr.strip()
        assert len(line.splitlines()) == 1 and str(source) in line, line
        assert "x70 y60 z20" in line and "x70 y60 z24" in line and "dataset.name" in line, line

    status = run_cli("status", str(spec), "--json")
    assert status.returncode == 0, status.stderr
    image = json.loads(status.stdout)["channels"]["image"]
    assert (image["done"], image["verified"], image["total"]) == (0, 0, 1), image  # the old seal is not this plan's

    spec.write_text(spec.read_text().replace("neurostorm_kat11_scale3", "kat11_grown")
                    .replace('"kat11_scale3"', '"kat11_grown_p"'))
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr
    vol = ts.open({"driver": "neuroglancer_precomputed",
                   "kvstore": {"driver": "file", "path": str(tmp_path / "store/kat11_grown/kat11_grown_p/image")}}).result()
    np.testing.assert_array_equal(vol[..., 0].read().result().transpose(2, 1, 0), grown)


def test_a_store_whose_markers_predate_the_name_tasks_resumes_without_rewriting(tmp_path, big_sources):
    """Markers written before Luigi's groups of blocks were called tasks (`shard{N}`
    folders and seals, `blocks_per_shard` in the manifest and in the spec): after a kill,
    the upgraded ndingest counts them, and its rerun writes only the unmarked blocks."""
    image, labels = big_sources
    spec = write_spec(tmp_path, image=image, ingest=ONE_CHUNK_BLOCKS)
    proc = start_ingest(spec)
    wait_for_markers(tmp_path, proc, at_least=40)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    channel = tmp_path / "store/_markers/neurostorm_kat11_scale3/kat11_scale3/image"
    for folder in sorted((channel / "written/level0").iterdir()):  # as the older version named them
        folder.rename(folder.with_name(folder.name.replace("task", "shard")))
    manifest = json.loads((channel / "manifest.json").read_text())
    manifest["blocks_per_shard"] = manifest.pop("blocks_per_task")
    (channel / "manifest.json").write_text(json.dumps(manifest))
    spec.write_text(spec.read_text().replace("blocks_per_task", "blocks_per_shard"))
    assert list((channel / "written/level0").glob("shard*.done")), "a sealed task, to be counted from its seal"

    status = json.loads(run_cli("status", str(spec), "--json").stdout)["channels"]["image"]
    assert 40 <= status["done"] < status["total"] == 256, status
    marked = {m.stem for m in (channel / "written/level0").glob("shard*/*.json")}
    assert len(marked) == status["done"]
    before = {key: chunk_path(tmp_path, "image", key).stat().st_mtime_ns for key in marked}
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr
    assert "ingest.blocks_per_shard is now called ingest.blocks_per_task" in result.stderr
    assert {key: chunk_path(tmp_path, "image", key).stat().st_mtime_ns for key in marked} == before
    vol = ts.open({"driver": "neuroglancer_precomputed",
                   "kvstore": {"driver": "file", "path": str(tmp_path / VOLUME / "image")}}).result()
    np.testing.assert_array_equal(vol[..., 0].read().result().transpose(2, 1, 0), read_cutout(image))
