"""`ndingest verify` and a rerun of `ingest` on a store edited through `ndingest serve`.

A cutout POST changes blocks the ingest wrote: verify names them as edited since the
ingest (when, by which key) rather than as mismatches, still checks every other block,
and a rerun of the ingest does not claim the levels built (propagate) while they are
stale.
"""
from __future__ import annotations

import csv
import io
import sqlite3
import time
import zlib

import numpy as np
import requests

from conftest import run_cli
from ndingest.blocks import Box, Vec3
from ndingest.edits import record_edit
from ndingest.server.keys import key_id
from serving import TUTORIAL, ingest_store, serving

KEY = "an-editor-key"


def npz(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array[np.newaxis])
    return zlib.compress(buf.getvalue())


def report(store) -> list[dict]:
    path = store / "_reports" / TUTORIAL[0] / TUTORIAL[1] / "verify.csv"
    return list(csv.DictReader(path.open()))


def propagate(store, channel: str) -> int:
    db = sqlite3.connect(store / "catalog.sqlite")
    try:
        return db.execute("select propagate from channels where channel_name = ?", (channel,)).fetchone()[0]
    finally:
        db.close()


def test_verify_reports_posted_blocks_as_edited_and_still_checks_the_rest(tmp_path, tutorial_data):
    made = ingest_store(tmp_path / "s", tutorial_data, levels=1)
    store, spec = made["store"], made["spec"]
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# editors\n{KEY}  the editor\n")
    with serving(store, api_keys=keys) as server:
        box = "1000,1064/2000,2064/1000,1016"  # one corner of the volume: x, y, z
        reply = requests.post(f"{server.url}/nd/sd/{TUTORIAL[1]}/image/npz/0/{box}/",
                              data=npz(np.full((16, 64, 64), 7, np.uint8)), headers={"Authorization": f"Token {KEY}"},
                              timeout=60)
        assert reply.status_code == 200, reply.text
    assert propagate(store, "image") == 0

    result = run_cli("verify", str(spec))
    assert result.returncode == 0, result.stderr
    assert "changed by cutout POSTs" in result.stdout, result.stdout
    rows = report(store)
    edited = [r for r in rows if r["status"] == "edited since ingest"]
    assert edited and {r["channel"] for r in edited} == {"image"}
    assert {r["level"] for r in edited} == {"0", "1"}  # the block and the stale level above it
    assert all("by key the editor" in r["detail"] for r in edited), edited[0]["detail"]  # the key's name
    assert not any(key_id(KEY) in r["detail"] for r in rows)
    assert KEY not in "".join(r["detail"] for r in rows)
    assert all(r["status"] == "ok" for r in rows if r not in edited)

    result = run_cli("ingest", str(spec))  # a rerun: done, but the edited channel's levels stay stale
    assert result.returncode == 0, result.stderr
    assert (propagate(store, "image"), propagate(store, "annotation")) == (0, 2)

    # a block no POST touched, corrupted on disk: still a mismatch
    volume = store / TUTORIAL[0] / TUTORIAL[1] / "annotation" / "32_32_40"
    chunk = sorted(volume.iterdir())[-1]
    raw = bytearray(chunk.read_bytes())
    raw[-5] ^= 0x3C
    chunk.write_bytes(bytes(raw))
    result = run_cli("verify", str(spec))
    assert result.returncode == 5, result.stderr
    assert "annotation t0 level0" in result.stderr and "differs from source" in result.stderr, result.stderr


def test_a_post_older_than_the_blocks_marker_excuses_no_mismatch(tmp_path, tutorial_data):
    """An edit made before the block was written (an ingest's own replace POST, or one
    before `--restart`) does not explain a block that differs; one made after does."""
    made = ingest_store(tmp_path / "s", tutorial_data)
    store, spec = made["store"], made["spec"]
    channel_markers = store / "_markers" / TUTORIAL[0] / TUTORIAL[1] / "image"
    everywhere = Box(Vec3(0, 0, 0), Vec3(10**6, 10**6, 10**6))
    record_edit(channel_markers, [everywhere], key_id="0ldc0ffe", when=time.time() - 3600)
    chunk = sorted((store / TUTORIAL[0] / TUTORIAL[1] / "image" / "32_32_40").iterdir())[0]
    raw = bytearray(chunk.read_bytes())
    raw[100] ^= 0x5A
    chunk.write_bytes(bytes(raw))

    result = run_cli("verify", str(spec))
    assert result.returncode == 5, result.stdout + result.stderr
    assert "image t0 level0" in result.stderr and "differs from source" in result.stderr, result.stderr
    assert not [r for r in report(store) if r["status"] == "edited since ingest"]

    record_edit(channel_markers, [everywhere], key_id="5eccfee5")  # now: after every marker
    result = run_cli("verify", str(spec))
    assert result.returncode == 0, result.stderr
    edited = [r for r in report(store) if r["status"] == "edited since ingest"]
    assert len(edited) == 1 and "5eccfee5" in edited[0]["detail"], edited
