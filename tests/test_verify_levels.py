"""Verify of levels 0 and 1 in one pass over level 0 (issue 16), against a real store.

Every level-1 block is checked against its level-0 blocks as the store holds them, each
read once; the rows, markers and seals are those a level-by-level verify writes.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import run_cli, write_h5, write_spec
from ndingest import markers
from ndingest.plan import load_plan
from ndingest.verify import OK, OK_EARLIER, nested_children, verify_plan, verify_task

SHAPE_ZYX = (40, 520, 600)  # level 0: 5 x 5 x 3 blocks of 128x128x16, level 1: 3 x 3 x 3


def ingested(tmp_path, offset=(0, 0, 0), levels: int = 2):
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, size=SHAPE_ZYX, dtype=np.uint8)
    labels = (rng.integers(0, 3, size=SHAPE_ZYX, dtype=np.uint32) * 7)
    spec = write_spec(tmp_path, image=write_h5(tmp_path / "img.h5", image),
                      annotation=write_h5(tmp_path / "lab.h5", labels, "annotation/CUTOUT"),
                      dataset="pyr", project="pyr", offset=offset, ingest="block_chunks = [1, 1, 1]")
    spec.write_text(spec.read_text().replace("scaling_levels = 0", f"scaling_levels = {levels}"))
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr
    return spec


def level_by_level(plan) -> list[dict]:
    """The rows of verifying each task of each level on its own (the unfused way)."""
    return [row for cp in plan.channels.values() for lv in cp.levels for s in lv.tasks
            for row in verify_task(plan, cp, s, level=lv.level, resume=False)]


def strip(rows: list[dict]) -> list[tuple]:
    return [(r["channel"], r["t"], r["level"], r["block"], r["status"], r["checksum_store"]) for r in rows]


def test_each_level_1_block_has_the_level_0_blocks_that_tile_its_children(tmp_path):
    plan = load_plan(ingested(tmp_path))
    cp = plan.channel("image")
    children = nested_children(plan, cp)
    assert children is not None and len(children) == 27
    level0 = [b for s in cp.levels[0].tasks for b in s.blocks]
    assert sorted(b.to_key() for kids in children.values() for b in kids) == sorted(b.to_key() for b in level0)
    assert all(len(kids) in (1, 2, 4) for kids in children.values())


def test_an_odd_offset_on_a_halved_axis_does_not_nest(tmp_path):
    plan = load_plan(ingested(tmp_path, offset=(1, 0, 0), levels=1))
    assert nested_children(plan, plan.channel("image")) is None
    assert verify_plan(plan, resume=False)[0]  # and verify still checks every block, level by level


def test_one_pass_gives_the_rows_of_verifying_level_by_level(tmp_path):
    plan = load_plan(ingested(tmp_path))
    rows, _ = verify_plan(plan, resume=False)
    assert all(r["status"] == OK for r in rows)
    assert strip(rows) == strip(level_by_level(plan))
    assert len(rows) == sum(cp.total_blocks for cp in plan.channels.values())


@pytest.mark.parametrize("level, status", [(0, "differs from source"), (1, "differs from the level below")])
def test_a_corrupt_chunk_is_found_at_its_level(tmp_path, level, status):
    spec = ingested(tmp_path)
    plan = load_plan(spec)
    cp = plan.channel("image")
    volume = plan.store.volume_dir(cp.ref(0))
    key = json.loads((volume / "info").read_text())["scales"][level]["key"]
    chunk = sorted((volume / key).iterdir())[4]  # one chunk per block (block_chunks = [1, 1, 1])
    raw = bytearray(chunk.read_bytes())
    raw[100] ^= 0x5A  # one voxel: its mean at level 1 moves too
    chunk.write_bytes(bytes(raw))
    result = run_cli("verify", str(spec))
    assert result.returncode == 5, result.stderr
    assert f"image t0 level{level} {chunk.name}: {status}" in result.stderr, result.stderr
    # and the block above, built from it, no longer equals the reduction of what the store holds
    assert "verify failed for 2 of" in result.stderr and f"level{level + 1}" in result.stderr, result.stderr


def test_a_resumed_verify_checks_only_the_blocks_not_marked_and_marks_them(tmp_path):
    plan = load_plan(ingested(tmp_path))
    cp = plan.channel("image")
    first, _ = verify_plan(plan, resume=True)  # the ingest verified every block already
    assert all(r["status"] == OK_EARLIER for r in first)
    forgotten = []
    for level in (0, 1):
        task = cp.levels[level].tasks[0]
        directory = markers.task_dir(cp.markers_dir, markers.VERIFIED, level, task)
        markers.sealed_path(directory).unlink()
        for box in task.blocks[:3]:
            (directory / f"{box.to_key()}{markers.SUFFIX}").unlink()
            forgotten.append((level, box.to_key()))
    again, _ = verify_plan(plan, resume=True)
    redone = {(r["level"], r["block"]) for r in again if r["channel"] == "image" and r["status"] == OK}
    assert redone == set(forgotten)
    assert all(r["status"] == OK_EARLIER for r in again if (r["level"], r["block"]) not in redone
               or r["channel"] != "image")
    for level in (0, 1):
        for task in cp.levels[level].tasks:
            assert markers.task_complete(markers.task_dir(cp.markers_dir, markers.VERIFIED, level, task), task)
            assert markers.sealed_path(markers.task_dir(cp.markers_dir, markers.VERIFIED, level, task)).exists()
