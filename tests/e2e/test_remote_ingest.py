"""`ndingest ingest` into a server (`[store] url = "http://127.0.0.1:PORT/nd"`), against real
`ndingest serve` processes on 127.0.0.1.

What the server stores is read with tensorstore straight from its store folder (never
through ndingest's readers) and compared with the source, and its levels with a local
ingest of the same spec and with a plain numpy reduction. POSTs are counted from the
server's edit records (one per accepted cutout POST).
"""
from __future__ import annotations

import csv
import sqlite3
import subprocess
import time
from pathlib import Path

import blosc
import h5py
import numpy as np
import pytest
import requests
import tensorstore as ts

from conftest import NDINGEST, run_cli, spec_text, write_h5
from ndingest.sample import ANNOTATION_FILE, IMAGE_FILE
from ndingest.server.keys import key_id
from serving import free_port, serving, start_server
from test_serve_propagate import reference_level

KEY = "remote-ingest-key-0123"
DATASET, PROJECT = "neurostorm_kat11_scale3", "kat11_scale3"


def remote_spec(folder: Path, url: str | None, data: Path, *, levels: int = 1, **kwargs) -> Path:
    """The tutorial's spec with `levels` levels, into the server at `url` (None: a local store)."""
    text = spec_text(image=data / IMAGE_FILE, annotation=data / ANNOTATION_FILE,
                     store="unused" if url else "store", **kwargs)
    text = text.replace("scaling_levels = 0", f"scaling_levels = {levels}")
    if url:
        text = text.replace('path = "unused"', f'url = "{url}/nd"')
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "spec.toml").write_text(text)
    return folder / "spec.toml"


def read_volume(store: Path, channel: str, level: int, *, dataset: str = DATASET, project: str = PROJECT) -> np.ndarray:
    """A level of a precomputed volume in `store`, (z, y, x), read by tensorstore alone."""
    volume = ts.open({"driver": "neuroglancer_precomputed", "scale_index": level,
                      "kvstore": {"driver": "file", "path": f"{store / dataset / project / channel}/"}}).result()
    return np.asarray(volume[..., 0].read().result()).transpose(2, 1, 0)


def source(data: Path, name: str) -> np.ndarray:
    with h5py.File(data / name, "r") as f:
        group = next(iter(f))
        return f[group]["CUTOUT"][()]


def edits(store: Path, channel: str, *, dataset: str = DATASET, project: str = PROJECT) -> int:
    """Cutout POSTs the server accepted for `channel` (one edit record each)."""
    folder = store / "_markers" / dataset / project / channel / "edits"
    return len(list(folder.glob("*.json"))) if folder.exists() else 0


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    """A server with a keys file, on an empty store: (server, its store folder)."""
    folder = tmp_path_factory.mktemp("remote-ingest")
    (folder / "store").mkdir()
    (folder / "keys.txt").write_text(f"# the test's key\n{KEY} ingester\n")
    with serving(folder / "store", api_keys=folder / "keys.txt") as server:
        yield server, folder / "store"


@pytest.fixture(scope="module")
def ingested(keyed, tutorial_data, tmp_path_factory) -> dict:
    """The tutorial (1 level above 0) ingested into the server, and into a local store."""
    server, store = keyed
    folder = tmp_path_factory.mktemp("remote-spec")
    spec = remote_spec(folder / "remote", server.url, tutorial_data)
    result = run_cli("ingest", str(spec), env={"NDINGEST_API_KEY": KEY})
    assert result.returncode == 0, result.stderr + server.log()
    local = remote_spec(folder / "local", None, tutorial_data)
    assert run_cli("ingest", str(local)).returncode == 0
    return {"spec": spec, "local": folder / "local" / "store", "store": store, "server": server, "run": result}


def test_level_0_on_the_server_equals_the_source(ingested, tutorial_data):
    for channel, name in (("image", IMAGE_FILE), ("annotation", ANNOTATION_FILE)):
        np.testing.assert_array_equal(read_volume(ingested["store"], channel, 0), source(tutorial_data, name))


def test_the_levels_the_server_built_equal_a_local_ingests_and_the_rule(ingested, tutorial_data):
    for channel, name in (("image", IMAGE_FILE), ("annotation", ANNOTATION_FILE)):
        level1 = read_volume(ingested["store"], channel, 1)
        np.testing.assert_array_equal(level1, read_volume(ingested["local"], channel, 1))
        np.testing.assert_array_equal(level1, reference_level(source(tutorial_data, name), (1000, 2000),
                                                              channel_type=channel))


def test_markers_and_the_report_live_beside_the_spec_one_folder_per_server(ingested):
    here = ingested["spec"].parent / ".ndingest" / f"127.0.0.1_{ingested['server'].port}_nd"
    written = list((here / "_markers" / DATASET / PROJECT).rglob("written/level0/*/*.json"))
    assert len(written) == 2 * 8  # 2 x 1 x 4 blocks of 256 x 256 x 64 per channel
    assert (here / "_reports" / DATASET / PROJECT / "verify.csv").is_file()
    assert not list(ingested["store"].rglob("written")), "no ingest marker may land in the server's store"
    assert f"server: {ingested['server'].url}/nd (markers and reports in {here})" in ingested["run"].stdout


def test_the_window_range_and_propagate_reach_the_servers_channels(ingested):
    base = f"{ingested['server'].url}/nd"
    info = requests.get(f"{base}/sd/{PROJECT}/info/", timeout=30).json()
    with sqlite3.connect(ingested["local"] / "catalog.sqlite") as db:
        local = {name: [lo, hi] for name, lo, hi in db.execute("SELECT channel_name, startwindow, endwindow FROM channels")}
    for channel in ("image", "annotation"):
        row = requests.get(f"{base}/resource/dataset/{DATASET}/project/{PROJECT}/channel/{channel}/", timeout=30).json()
        assert [row["startwindow"], row["endwindow"]] == local[channel] != [0.0, 0.0]
        assert info["channels"][channel]["windowrange"] == local[channel]
        assert row["propagate"] == 2
        assert requests.get(f"{base}/sd/{PROJECT}/{channel}/getPropagate/", timeout=30).text == "2"


def test_a_rerun_of_a_finished_ingest_posts_nothing(ingested):
    before = edits(ingested["store"], "image") + edits(ingested["store"], "annotation")
    result = run_cli("ingest", str(ingested["spec"]), env={"NDINGEST_API_KEY": KEY})
    assert result.returncode == 0, result.stderr
    assert edits(ingested["store"], "image") + edits(ingested["store"], "annotation") == before


def test_other_values_than_the_servers_stop_the_run_naming_the_field(ingested, tutorial_data, tmp_path):
    spec = remote_spec(tmp_path, ingested["server"].url, tutorial_data, resolution=(16.0, 32.0, 40.0))
    result = run_cli("ingest", str(spec), env={"NDINGEST_API_KEY": KEY})
    assert result.returncode == 4
    assert "xvoxelres" in one_line(result.stderr)


def test_a_wrong_key_fails_before_anything_moves_naming_the_server(keyed, tutorial_data, tmp_path):
    server, store = keyed
    spec = remote_spec(tmp_path, server.url, tutorial_data, dataset="wrong_key_ds", project="wrong_key_pr")
    result = run_cli("ingest", str(spec), env={"NDINGEST_API_KEY": "not-the-key-4567"})
    assert result.returncode == 8
    line = one_line(result.stderr)
    assert line.startswith("ndingest: error: ") and f"{server.url}/nd" in line and "refused the key" in line
    assert "not-the-key-4567" not in result.stderr + result.stdout and KEY not in result.stderr
    # asked with the key: without one, a keyed server answers a missing name as a private one (401)
    made = requests.get(f"{server.url}/nd/resource/dataset/wrong_key_ds/", timeout=30,
                        headers={"Authorization": f"Token {KEY}"})
    assert made.status_code == 404
    assert not (store / "wrong_key_ds").exists()


def test_no_key_for_a_server_with_keys_says_to_set_one(keyed, tutorial_data, tmp_path):
    server, _ = keyed
    spec = remote_spec(tmp_path, server.url, tutorial_data, dataset="no_key_ds", project="no_key_pr")
    result = run_cli("ingest", str(spec), env={"NDINGEST_API_KEY": ""})
    assert result.returncode == 8
    assert "NDINGEST_API_KEY" in one_line(result.stderr)


def test_a_server_that_is_down_is_exit_8_naming_its_url(tutorial_data, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    spec = remote_spec(tmp_path, url, tutorial_data)
    result = run_cli("ingest", str(spec), env={"NDINGEST_API_KEY": KEY})
    assert result.returncode == 8
    line = one_line(result.stderr)
    assert f"{url}/nd" in line and "cannot reach the server" in line


def test_restart_of_a_channel_on_a_server_erases_labels_posted_since(ingested, tutorial_data):
    base, labels = f"{ingested['server'].url}/nd", source(tutorial_data, ANNOTATION_FILE)
    box = "1000,1064/2000,2064/1000,1016"
    stray = np.full((1, 16, 64, 64), 4242, labels.dtype)
    reply = requests.post(f"{base}/sd/{PROJECT}/annotation/blosc/0/{box}/", data=blosc.pack_array(stray),
                          headers={"Authorization": f"Token {KEY}"}, timeout=30)
    assert reply.status_code == 200 and (read_volume(ingested["store"], "annotation", 0) == 4242).any()
    result = run_cli("ingest", str(ingested["spec"]), "--restart", "annotation", env={"NDINGEST_API_KEY": KEY})
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(read_volume(ingested["store"], "annotation", 0), labels)
    assert edits(ingested["store"], "annotation") == 8  # the channel made anew, and every block posted once


def test_verify_of_a_server_names_blocks_posted_since_as_edited_and_still_finds_a_corrupt_chunk(ingested):
    """The server's edit records reach a remote verify: a user's POST after the ingest is
    "edited since ingest" (levels 0 and the stale 1 above it), while a chunk corrupted on
    the server's disk still differs, though the ingest's own replace POSTs touched it."""
    base, store, spec = f"{ingested['server'].url}/nd", ingested["store"], ingested["spec"]
    box = "1000,1064/2000,2064/1000,1016"
    reply = requests.post(f"{base}/sd/{PROJECT}/image/blosc/0/{box}/",
                          data=blosc.pack_array(np.full((1, 16, 64, 64), 7, np.uint8)),
                          headers={"Authorization": f"Token {KEY}"}, timeout=30)
    assert reply.status_code == 200, reply.text
    result = run_cli("verify", str(spec), env={"NDINGEST_API_KEY": KEY})
    assert result.returncode == 0, result.stdout + result.stderr
    here = spec.parent / ".ndingest" / f"127.0.0.1_{ingested['server'].port}_nd"
    rows = list(csv.DictReader((here / "_reports" / DATASET / PROJECT / "verify.csv").open()))
    edited = [r for r in rows if r["status"] == "edited since ingest"]
    assert {(r["channel"], r["level"]) for r in edited} == {("image", "0"), ("image", "1")}, edited
    assert all("by key ingester" in r["detail"] and key_id(KEY) not in r["detail"] for r in edited)  # its name
    assert all(r["status"] == "ok" for r in rows if r not in edited)

    chunk = sorted((store / DATASET / PROJECT / "annotation" / "32_32_40").iterdir())[-1]
    raw = bytearray(chunk.read_bytes())
    raw[-5] ^= 0x3C
    chunk.write_bytes(bytes(raw))
    result = run_cli("verify", str(spec), env={"NDINGEST_API_KEY": KEY})
    assert result.returncode == 5, result.stdout + result.stderr
    assert "annotation t0 level0" in result.stderr and "differs from source" in result.stderr, result.stderr


# --- a server killed mid-ingest --------------------------------------------------------------------
SHAPE = (64, 512, 1024)  # z, y, x: 128 blocks of one 128 x 128 x 16 chunk each, 8 per task


def big_spec(folder: Path, url: str) -> tuple[Path, np.ndarray]:
    data = np.random.default_rng(29).integers(0, 60000, SHAPE, dtype=np.uint16)
    data[:, :, :300] = 7  # some blocks compress well, some do not
    write_h5(folder / "big.h5", data)
    spec = folder / "big.toml"
    spec.write_text(f"""
[dataset]
name = "big_ds"
offset = [0, 0, 0]
voxel_resolution = [8.0, 8.0, 40.0]
scaling_levels = 1

[project]
name = "big_pr"

[channels.image]
type = "image"
source = "{folder / 'big.h5'}"

[store]
url = "{url}/nd"

[ingest]
block_chunks = [1, 1, 1]
blocks_per_task = 8
""")
    return spec, data


def test_a_server_killed_mid_ingest_then_restarted_finishes_bit_exact_rewriting_only_unmarked_blocks(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    port = free_port()
    server = start_server(store, port=port)
    try:
        spec, data = big_spec(tmp_path, server.url)
        markers = tmp_path / ".ndingest" / f"127.0.0.1_{port}_nd" / "_markers"
        proc = subprocess.Popen([NDINGEST, "ingest", str(spec)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 120
        while len(list(markers.rglob("written/level0/*/*.json"))) < 8:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.002)
        server.kill()
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 8, stderr
        assert f"{server.url}/nd" in one_line(stderr)

        marked = len(list(markers.rglob("written/level0/*/*.json")))
        assert 8 <= marked < 128, "the kill came too late to leave blocks unwritten"
        posted = edits(store, "image", dataset="big_ds", project="big_pr")
        server = start_server(store, port=port)
        result = run_cli("ingest", str(spec))
        assert result.returncode == 0, result.stderr + server.log()
        assert edits(store, "image", dataset="big_ds", project="big_pr") - posted == 128 - marked

        np.testing.assert_array_equal(read_volume(store, "image", 0, dataset="big_ds", project="big_pr"), data)
        np.testing.assert_array_equal(read_volume(store, "image", 1, dataset="big_ds", project="big_pr"),
                                      reference_level(data, (0, 0), channel_type="image"))
    finally:
        server.stop()
