"""A server as a source: `ndstore://host:port/TOKEN/CHANNEL`, against a real `ndingest serve`.

The tutorial is ingested (level 0 and 1) into a store, that store is served on 127.0.0.1,
and a second spec whose channels read from the server is ingested into a new store. Both
stores are read with tensorstore alone (never ndingest's readers) and must be equal at
every level. The tutorial's offset (1000, 2000, 1000) is not zero, so a source read at the
wrong coordinates would fail (400) or differ.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import requests
import tensorstore as ts

from conftest import read_cutout, run_cli, spec_text
from ndingest.blocks import Box, Vec3
from ndingest.errors import SourceError
from ndingest.sample import IMAGE_FILE
from serving import TIMESERIES, TS_OFFSET, TUTORIAL, free_port, ingest_store, serving

DATASET, TOKEN = TUTORIAL


@pytest.fixture(scope="module")
def first(tmp_path_factory, tutorial_data):
    return ingest_store(tmp_path_factory.mktemp("ndstore-source"), tutorial_data, levels=1, timeseries=True)


@pytest.fixture(scope="module")
def server(first):
    with serving(first["store"]) as running:
        yield running


def server_spec(folder: Path, *, image: str, annotation: str | None = None, levels: int = 1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "from-server.toml"
    spec.write_text(spec_text(image=image, annotation=annotation, store="store2")
                    .replace("scaling_levels = 0", f"scaling_levels = {levels}"))
    return spec


def read_level(store: Path, channel: str, level: int, *, parts: tuple[str, str] = (DATASET, TOKEN)
               ) -> tuple[np.ndarray, list[int]]:
    """(the level's voxels as (z, y, x), its voxel_offset), read by tensorstore alone."""
    folder = store.joinpath(*parts, channel)
    volume = ts.open({"driver": "neuroglancer_precomputed", "scale_index": level,
                      "kvstore": {"driver": "file", "path": f"{folder}/"}}).result()
    info = json.loads((folder / "info").read_text())
    return np.asarray(volume[..., 0].read().result()).transpose(2, 1, 0), info["scales"][level]["voxel_offset"]


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_an_ingest_from_a_server_equals_the_served_store_at_every_level(first, server, tmp_path):
    base = f"ndstore://127.0.0.1:{server.port}/{TOKEN}"
    spec = server_spec(tmp_path, image=f"{base}/image", annotation=f"{base}/annotation")
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr + server.log()
    for channel in ("image", "annotation"):
        for level in (0, 1):
            want, want_offset = read_level(first["store"], channel, level)
            got, got_offset = read_level(tmp_path / "store2", channel, level)
            assert got_offset == want_offset
            assert got.dtype == want.dtype and got.shape == want.shape, (channel, level)
            assert np.array_equal(got, want), (channel, level)
    rerun = run_cli("ingest", str(spec))  # the manifest's fingerprint of a server source is stable
    assert rerun.returncode == 0, rerun.stderr


def test_inspect_of_a_plain_http_url_reads_sizes_datatype_and_window_from_the_info(server):
    url = f"{server.url}/nd/sd/{TOKEN}/image/"
    info = requests.get(f"{server.url}/nd/sd/{TOKEN}/info/", timeout=30).json()
    result = run_cli("inspect", url, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["x_size"], summary["y_size"], summary["z_size"]) == (300, 200, 200)
    assert summary["datatype"] == "uint8" and summary["axes"] == "zyx"
    assert summary["time_range"] == [0, 0]
    assert summary["window_range"] == info["channels"]["image"]["windowrange"] != [0, 0]


def test_inspect_spec_fills_the_table_from_the_server(server, tmp_path):
    spec = server_spec(tmp_path, image=f"ndstore://127.0.0.1:{server.port}/{TOKEN}/image")
    result = run_cli("inspect", str(spec))
    assert result.returncode == 0, result.stderr
    assert f"http://127.0.0.1:{server.port}/nd/sd/{TOKEN}/image/" in result.stdout
    assert "x size" in result.stdout and "| 300" in result.stdout
    assert "window range" in result.stdout and "(not scanned)" not in result.stdout


def test_the_source_reads_absolute_cutouts_in_slabs_and_pickles(server, tutorial_data, monkeypatch):
    from ndingest import ndstore
    from ndingest.sources import open_source

    image = read_cutout(tutorial_data / IMAGE_FILE)  # (z, y, x), offset (1000, 2000, 1000)
    source = open_source(f"ndstore://127.0.0.1:{server.port}/{TOKEN}/image")
    assert source.shape_tzyx == (1, 200, 200, 300) and source.dtype == np.uint8
    assert source.offset_xyz == Vec3(1000, 2000, 1000)
    box = Box(Vec3(5, 7, 3), Vec3(70, 90, 40))  # source coordinates, from 0
    assert np.array_equal(source.read(box), image[3:40, 7:90, 5:70])
    monkeypatch.setattr(ndstore, "PIECE_BYTES", 65 * 83 * 4)  # 4 z planes a request, several in flight
    again = pickle.loads(pickle.dumps(source))
    assert np.array_equal(again.read(box), image[3:40, 7:90, 5:70])
    assert again.fingerprint() == source.fingerprint()
    with pytest.raises(SourceError, match="outside the source"):
        source.read(Box(Vec3(0, 0, 0), Vec3(301, 1, 1)))


def test_a_wrong_channel_name_is_exit_3_naming_the_url(server, tmp_path):
    url = f"ndstore://127.0.0.1:{server.port}/{TOKEN}/nosuchchannel"
    result = run_cli("ingest", str(server_spec(tmp_path, image=url, levels=0)))
    assert result.returncode == 3, result.stderr
    line = one_line(result.stderr)
    assert f"http://127.0.0.1:{server.port}/nd/sd/{TOKEN}/nosuchchannel/" in line
    assert "image" in line and "annotation" in line  # the channels that exist


def test_a_wrong_token_is_exit_3_naming_the_url(server, tmp_path):
    result = run_cli("inspect", f"ndstore://127.0.0.1:{server.port}/nosuchtoken/image", "--json")
    assert result.returncode == 3, result.stderr
    assert f"127.0.0.1:{server.port}/nd/sd/nosuchtoken/info/" in one_line(result.stderr)


def test_a_server_that_is_not_running_is_one_line_without_traceback(tmp_path):
    port = free_port()  # nothing listens there: as a server that was stopped
    result = run_cli("ingest", str(server_spec(tmp_path, image=f"ndstore://127.0.0.1:{port}/{TOKEN}/image",
                                               levels=0)))
    assert result.returncode in (3, 8), result.stderr
    line = one_line(result.stderr)
    assert f"127.0.0.1:{port}" in line and "cannot reach" in line


def test_a_private_time_series_is_read_with_the_key_time_point_by_time_point(first, tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("k3y-for-tests\n")
    dataset, project, token = TIMESERIES
    with serving(first["store"], api_keys=keys) as keyed:
        url = f"ndstore://127.0.0.1:{keyed.port}/{token}/frames"
        spec = tmp_path / "ts.toml"
        spec.write_text(first["ts_spec"].read_text().replace(f'source = "{first["ts_spec"].parent / "frames.h5"}"',
                                                             f'source = "{url}"').replace('"store"', '"store2"'))
        assert url in spec.read_text()
        refused = run_cli("inspect", url, "--json")
        assert refused.returncode == 3 and "NDINGEST_API_KEY" in one_line(refused.stderr)
        result = run_cli("ingest", str(spec), env={"NDINGEST_API_KEY": "k3y-for-tests"})
        assert result.returncode == 0, result.stderr + keyed.log()
    data = first["ts_data"]  # (t, z, y, x)
    for t in range(data.shape[0]):
        got, offset = read_level(tmp_path / "store2", f"t{t}", 0, parts=(dataset, project, "frames"))
        assert offset == list(TS_OFFSET) and np.array_equal(got, data[t]), t


@pytest.mark.parametrize("text, api, token, channel", [
    ("ndstore://h:8080/tok/chan", "http://h:8080/nd/sd", "tok", "chan"),
    ("ndstore://h:8080/tok/chan/", "http://h:8080/nd/sd", "tok", "chan"),
    ("http://h:8080/nd/sd/tok/chan/", "http://h:8080/nd/sd", "tok", "chan"),
    ("https://h/prefix/ocp/ca/tok/chan", "https://h/prefix/ocp/ca", "tok", "chan"),
])
def test_a_source_url_names_the_server_token_and_channel(text, api, token, channel):
    from ndingest.ndstore import parse_address

    address = parse_address(text)
    assert (address.api, address.token, address.channel) == (api, token, channel)


@pytest.mark.parametrize("text", ["ndstore://h:8080/tok", "http://h:8080/tok/chan/", "ndstore://h/a/b/c"])
def test_a_url_that_names_no_channel_is_a_source_error(text):
    from ndingest.ndstore import parse_address

    with pytest.raises(SourceError, match="not an ndstore channel"):
        parse_address(text)


def test_a_spec_that_places_the_dataset_elsewhere_than_the_server_is_exit_2_naming_both(server, tmp_path):
    """The server says where its voxels lie; a spec that says otherwise is refused before
    anything is written, rather than ingesting them at the spec's offset or resolution."""
    url = f"ndstore://127.0.0.1:{server.port}/{TOKEN}/image"
    spec = server_spec(tmp_path / "offset", image=url, levels=0)
    spec.write_text(spec.read_text().replace("offset = [1000, 2000, 1000]", "offset = [0, 0, 0]"))
    result = run_cli("ingest", str(spec))
    assert result.returncode == 2, result.stderr
    assert "dataset.offset = [0, 0, 0]" in one_line(result.stderr) and "[1000, 2000, 1000]" in result.stderr
    spec = server_spec(tmp_path / "resolution", image=url, levels=0)
    spec.write_text(spec.read_text().replace("voxel_resolution = [32.0, 32.0, 40.0]",
                                             "voxel_resolution = [8.0, 8.0, 40.0]"))
    result = run_cli("ingest", str(spec))
    assert result.returncode == 2, result.stderr
    assert "dataset.voxel_resolution" in one_line(result.stderr) and "32.0" in result.stderr
    assert not (tmp_path / "offset" / "store2").exists() and not (tmp_path / "resolution" / "store2").exists()


def test_a_cutout_posted_to_the_source_after_ingest_stops_the_rerun_until_restart(tutorial_data, tmp_path):
    import blosc

    own = ingest_store(tmp_path / "own", tutorial_data)  # this test changes its server's voxels
    with serving(own["store"]) as running:
        spec = server_spec(tmp_path / "copy", image=f"ndstore://127.0.0.1:{running.port}/{TOKEN}/image", levels=0)
        assert run_cli("ingest", str(spec)).returncode == 0
        rerun = run_cli("ingest", str(spec))  # nothing changed: nothing to say
        assert rerun.returncode == 0, rerun.stderr
        patch = np.full((4, 8, 16), 7, np.uint8)  # z, y, x at the tutorial's absolute corner
        url = f"{running.url}/nd/sd/{TOKEN}/image/blosc/0/1000,1016/2000,2008/1000,1004/"
        assert requests.post(url, data=blosc.pack_array(patch[np.newaxis]), timeout=60).status_code == 200
        changed = run_cli("ingest", str(spec))
        assert changed.returncode == 3, changed.stderr
        line = one_line(changed.stderr)
        assert f"/nd/sd/{TOKEN}/image/" in line and "changed" in line and "--restart image" in line, line
        restarted = run_cli("ingest", str(spec), "--restart", "image")
        assert restarted.returncode == 0, restarted.stderr + running.log()
        manifest = next((tmp_path / "copy" / "store2" / "_markers").rglob("image/manifest.json"))
        older = json.loads(manifest.read_text())  # as the release before `edits` wrote it
        del older["source"][0]["edits"]
        manifest.write_text(json.dumps(older))
        upgraded = run_cli("ingest", str(spec))
        assert upgraded.returncode == 0, upgraded.stderr
    want, _ = read_level(own["store"], "image", 0)
    got, _ = read_level(tmp_path / "copy" / "store2", "image", 0)
    assert np.array_equal(want[:4, :8, :16], patch) and np.array_equal(got, want)
