"""`ndingest serve`'s read routes, against a real server process on 127.0.0.1.

One store per module (the tutorial's channels with a level above 0, and a private time
series), one server without keys and one with a key file. Every answer is checked against
the SOURCE read with h5py (not through ndingest), or against `ndingest slice`.
"""
from __future__ import annotations

import io
import time
import zlib

import h5py
import numpy as np
import pytest
import requests
from PIL import Image

from conftest import read_cutout, run_cli
from ndingest.sample import ANNOTATION_FILE, IMAGE_FILE
from serving import TIMESERIES, TS_OFFSET, TS_SHAPE, ingest_store, serving

TUTORIAL_HDF5 = "/ocp/ca/kat11_scale3/image/hdf5/0/1000,1300/2000,2200/1000,1200/"
TUTORIAL_XY = "/ocp/ca/kat11_scale3/image/xy/0/1000,1300/2000,2200/1100/"
KEY = "s3cret-key-for-tests"
TS_TOKEN = TIMESERIES[2]


@pytest.fixture(scope="module")
def store(tmp_path_factory, tutorial_data):
    return ingest_store(tmp_path_factory.mktemp("serve-reads"), tutorial_data, levels=1, timeseries=True)


@pytest.fixture(scope="module")
def server(store):
    with serving(store["store"]) as running:
        yield running


@pytest.fixture(scope="module")
def url(server):
    return server.url


@pytest.fixture(scope="module")
def keyed_url(store, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# test keys\n\n  {KEY}  \n")
    with serving(store["store"], api_keys=keys) as server:
        yield server.url


@pytest.fixture(scope="module")
def image(tutorial_data):
    return read_cutout(tutorial_data / IMAGE_FILE)  # (z, y, x) uint8, offset (1000, 2000, 1000)


def get(url: str, **kwargs) -> requests.Response:
    return requests.get(url, timeout=30, **kwargs)


def test_tutorial_hdf5_url_answers_the_source_cutout_in_zyx(url, image):
    reply = get(url + TUTORIAL_HDF5)
    assert reply.status_code == 200, reply.text
    with h5py.File(io.BytesIO(reply.content), "r") as f:
        assert list(f) == ["image"]
        cutout = f["image"]["CUTOUT"][()]
        assert f["image"]["CHANNELTYPE"][()].decode() == "image"
        assert f["image"]["DATATYPE"][()].decode() == "uint8"
    assert cutout.shape == (200, 200, 300) and cutout.dtype == np.uint8
    np.testing.assert_array_equal(cutout, image)


def test_tutorial_xy_url_answers_the_png_ndingest_slice_draws(url, store, tmp_path):
    reply = get(url + TUTORIAL_XY)
    assert reply.status_code == 200 and reply.headers["content-type"] == "image/png"
    out = tmp_path / "slice.png"
    result = run_cli("slice", str(store["spec"]), "image", "xy", "1100", "-o", str(out))
    assert result.returncode == 0, result.stderr
    served = np.asarray(Image.open(io.BytesIO(reply.content)))
    drawn = np.asarray(Image.open(out))
    assert served.shape == (200, 300)
    np.testing.assert_array_equal(served, drawn)
    assert reply.content == out.read_bytes()


def test_annotation_xz_slice_is_coloured_as_ndingest_slice_colours_it(url, store, tmp_path):
    reply = get(url + "/nd/sd/kat11_scale3/annotation/xz/0/1000,1300/2100/1000,1200/")
    assert reply.status_code == 200, reply.text
    out = tmp_path / "annotation.png"
    assert run_cli("slice", str(store["spec"]), "annotation", "xz", "2100", "-o", str(out)).returncode == 0
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(reply.content))), np.asarray(Image.open(out)))


def test_yz_slice_of_a_sub_box_is_that_part_of_the_plane(url, image):
    reply = get(url + "/nd/sd/kat11_scale3/image/yz/0/1010/2050,2150/1020,1100")  # no trailing slash
    assert reply.status_code == 200, reply.text
    pixels = np.asarray(Image.open(io.BytesIO(reply.content)))
    lo, hi = get(url + "/nd/sd/kat11_scale3/info/").json()["channels"]["image"]["windowrange"]
    expected = np.clip(np.floor((image[20:100, 50:150, 10].astype(float) - lo) * 255 / (hi - lo) + 0.5), 0, 255)
    np.testing.assert_array_equal(pixels, expected.astype(np.uint8))


@pytest.mark.parametrize("prefix", ["/nd/sd", "/ocp/ca"])
def test_each_format_decodes_with_numpy_and_blosc_to_the_source(url, image, prefix):
    box = "1030,1100/2010,2090/1040,1057"
    expected = image[40:57, 10:90, 30:100]
    npz = get(f"{url}{prefix}/kat11_scale3/image/npz/0/{box}/")
    assert npz.status_code == 200, npz.text
    array = np.load(io.BytesIO(zlib.decompress(npz.content)), allow_pickle=False)
    assert array.shape == (1, *expected.shape)
    np.testing.assert_array_equal(array[0], expected)

    import blosc

    packed = get(f"{url}{prefix}/kat11_scale3/image/blosc/0/{box}/")
    assert packed.status_code == 200, packed.text
    array = blosc.unpack_array(packed.content)
    assert array.shape == (1, *expected.shape) and array.dtype == np.uint8
    np.testing.assert_array_equal(array[0], expected)

    raw = get(f"{url}{prefix}/kat11_scale3/image/raw/0/{box}")
    assert raw.status_code == 200, raw.text
    np.testing.assert_array_equal(np.frombuffer(raw.content, np.uint8).reshape(expected.shape), expected)


def test_annotation_cutout_keeps_uint32_labels(url, tutorial_data):
    labels = read_cutout(tutorial_data / ANNOTATION_FILE)
    reply = get(url + "/nd/sd/kat11_scale3/annotation/npz/0/1000,1300/2000,2200/1100,1116/")
    array = np.load(io.BytesIO(zlib.decompress(reply.content)), allow_pickle=False)
    assert array.dtype == np.uint32
    np.testing.assert_array_equal(array[0], labels[100:116])


def test_ndio_time_range_0_1_on_a_plain_channel_answers_zyx(url, image):
    """ndio's get_cutout appends `0,1` for every channel and reads (z, y, x) back."""
    reply = get(url + "/nd/sd/kat11_scale3/image/hdf5/0/1000,1010/2000,2010/1000,1004/0,1")
    assert reply.status_code == 200, reply.text
    with h5py.File(io.BytesIO(reply.content), "r") as f:
        np.testing.assert_array_equal(f["image"]["CUTOUT"][()], image[:4, :10, :10])


def test_level_1_cutout_is_the_rounded_mean_of_2x2_source_voxels(url, image):
    # level 1 of a zslices dataset: x and y halve, z stays (offset 1000, 2000 -> 500, 1000)
    reply = get(url + "/nd/sd/kat11_scale3/image/npz/1/500,650/1000,1100/1000,1010/")
    assert reply.status_code == 200, reply.text
    served = np.load(io.BytesIO(zlib.decompress(reply.content)), allow_pickle=False)[0]
    block = image[:10].astype(np.int64)
    sums = block[:, 0::2, 0::2] + block[:, 1::2, 0::2] + block[:, 0::2, 1::2] + block[:, 1::2, 1::2]
    np.testing.assert_array_equal(served, ((sums + 2) // 4).astype(np.uint8))


def test_level_1_slice_has_the_level_1_size(url):
    reply = get(url + "/nd/sd/kat11_scale3/image/xy/1/500,650/1000,1100/1100/")
    assert reply.status_code == 200, reply.text
    assert Image.open(io.BytesIO(reply.content)).size == (150, 100)


def test_project_info_is_shaped_as_ndstore_and_ndio_read_it(url):
    info = get(url + "/ocp/ca/kat11_scale3/info/").json()
    ds = info["dataset"]
    assert ds["description"] == "neurostorm_kat11_scale3"
    assert ds["scaling"] == "zslices" and ds["scalinglevels"] == 1 and ds["resolutions"] == [0, 1]
    assert ds["imagesize"] == {"0": [300, 200, 200], "1": [150, 100, 200]}
    assert ds["offset"] == {"0": [1000, 2000, 1000], "1": [500, 1000, 1000]}
    assert ds["voxelres"] == {"0": [32.0, 32.0, 40.0], "1": [64.0, 64.0, 40.0]}
    assert ds["cube_dimension"] == {"0": [128, 128, 16], "1": [128, 128, 16]}  # 40 / 64 > 0.5
    assert ds["timerange"] == [0, 0]
    assert info["project"]["name"] == "kat11_scale3"
    image = info["channels"]["image"]
    assert image["channel_type"] == "image" and image["datatype"] == "uint8"
    assert image["readonly"] == 0 and image["propagate"] == 2 and image["timerange"] == [0, 0]
    assert len(image["windowrange"]) == 2
    assert info["channels"]["annotation"]["datatype"] == "uint32"


def test_public_tokens_and_datasets_list_only_public_ones(url):
    assert get(url + "/nd/sd/public_tokens/").json() == ["kat11_scale3"]
    assert get(url + "/ocp/ca/public_datasets").json() == ["neurostorm_kat11_scale3"]


def test_time_range_of_a_time_series_answers_tzyx(url, store):
    data = store["ts_data"]  # (t, z, y, x)
    x0, y0, z0 = TS_OFFSET
    box = f"{x0 + 5},{x0 + 45}/{y0},{y0 + 40}/{z0 + 2},{z0 + 12}"
    reply = get(f"{url}/nd/sd/{TS_TOKEN}/frames/npz/0/{box}/1,3/")
    assert reply.status_code == 200, reply.text
    array = np.load(io.BytesIO(zlib.decompress(reply.content)), allow_pickle=False)
    assert array.shape == (1, 2, 10, 40, 40)
    np.testing.assert_array_equal(array[0], data[1:3, 2:12, :, 5:45])
    hdf5 = get(f"{url}/nd/sd/{TS_TOKEN}/frames/hdf5/0/{box}/0,3")
    with h5py.File(io.BytesIO(hdf5.content), "r") as f:
        np.testing.assert_array_equal(f["frames"]["CUTOUT"][()], data[:, 2:12, :, 5:45])
    info = get(f"{url}/nd/sd/{TS_TOKEN}/info/").json()
    assert info["channels"]["frames"]["timerange"] == [0, TS_SHAPE[0] - 1]


def test_time_series_slice_picks_its_time_point(url, store):
    data = store["ts_data"]
    x0, y0, z0 = TS_OFFSET
    reply = get(f"{url}/nd/sd/{TS_TOKEN}/frames/xy/0/{x0},{x0 + 50}/{y0},{y0 + 40}/{z0 + 3}/2/")
    assert reply.status_code == 200, reply.text
    pixels = np.asarray(Image.open(io.BytesIO(reply.content)))
    info = get(f"{url}/nd/sd/{TS_TOKEN}/info/").json()
    lo, hi = info["channels"]["frames"]["windowrange"]
    expected = np.clip(np.floor((data[2, 3].astype(float) - lo) * 255 / (hi - lo) + 0.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(pixels, expected)


@pytest.mark.parametrize("path, status, words", [
    ("/nd/sd/nosuchtoken/image/hdf5/0/1000,1300/2000,2200/1000,1200/", 404, "nosuchtoken"),
    ("/nd/sd/kat11_scale3/nosuchchannel/raw/0/1000,1300/2000,2200/1000,1200/", 404, "nosuchchannel"),
    ("/nd/sd/nosuchtoken/info/", 404, "nosuchtoken"),
    ("/ocp/ca/kat11_scale3/image/hdf5/0/999,1300/2000,2200/1000,1200/", 400, "x range 999,1300"),
    ("/ocp/ca/kat11_scale3/image/raw/0/1000,1300/2000,2201/1000,1200/", 400, "y range"),
    ("/ocp/ca/kat11_scale3/image/raw/0/1000,1300/2000,2200/1100,1100/", 400, "z range"),
    ("/ocp/ca/kat11_scale3/image/raw/1/1000,1300/2000,2200/1000,1200/", 400, "level 1"),
    ("/ocp/ca/kat11_scale3/image/raw/2/1000,1300/2000,2200/1000,1200/", 400, "resolution 2"),
    ("/ocp/ca/kat11_scale3/image/tiff/0/1000,1300/2000,2200/1000,1200/", 400, "tiff"),
    ("/ocp/ca/kat11_scale3/image/raw/0/1000,13x0/2000,2200/1000,1200/", 400, "13x0"),
    ("/ocp/ca/kat11_scale3/image/raw/0/1000/2000,2200/1000,1200/", 400, "x range"),
    ("/ocp/ca/kat11_scale3/image/raw/zero/1000,1300/2000,2200/1000,1200/", 400, "zero"),
    ("/ocp/ca/kat11_scale3/image/xy/0/1000,1300/2000,2200/1200/", 400, "z = 1200"),
    ("/ocp/ca/kat11_scale3/image/xy/0/1000,1300/2000,2200/11.5/", 400, "11.5"),
    (f"/nd/sd/{TS_TOKEN}/frames/raw/0/10,60/20,60/30,50/2,4/", 400, "time range 2,4"),
])
def test_bad_requests_get_their_status_and_one_line(url, path, status, words):
    reply = get(url + path)
    assert reply.status_code == status, (path, reply.text)
    assert reply.headers["content-type"].startswith("text/plain")
    assert words in reply.text and reply.text.count("\n") == 1, reply.text
    assert "Traceback" not in reply.text


def test_without_keys_a_private_token_reads_openly(url):
    assert get(f"{url}/nd/sd/{TS_TOKEN}/info/").status_code == 200


@pytest.mark.parametrize("path", [
    f"/nd/sd/{TS_TOKEN}/info/",
    f"/nd/sd/{TS_TOKEN}/frames/raw/0/10,60/20,60/30,50/",
    f"/ocp/ca/{TS_TOKEN}/frames/xy/0/10,60/20,60/31/",
])
def test_with_keys_a_private_token_needs_the_key(keyed_url, path):
    none = get(keyed_url + path)
    assert none.status_code == 401, none.text
    assert "Traceback" not in none.text and KEY not in none.text
    assert get(keyed_url + path, headers={"Authorization": "Token "}).status_code == 401
    wrong = get(keyed_url + path, headers={"Authorization": "Token not-the-key"})
    assert wrong.status_code == 403, wrong.text
    assert get(keyed_url + path, headers={"Authorization": f"Token {KEY}"}).status_code == 200


def test_with_keys_public_tokens_still_read_without_a_key(keyed_url, image):
    reply = get(keyed_url + "/nd/sd/kat11_scale3/image/raw/0/1000,1010/2000,2010/1000,1001/")
    assert reply.status_code == 200
    np.testing.assert_array_equal(np.frombuffer(reply.content, np.uint8).reshape(1, 10, 10), image[:1, :10, :10])
    assert get(keyed_url + "/nd/sd/public_tokens/").json() == ["kat11_scale3"]


def test_a_broken_volume_is_a_500_with_one_generic_line_and_the_traceback_only_in_the_log(store, server, url):
    info = store["store"] / "neurostorm_kat11_scale3/kat11_scale3/annotation/info"
    kept = info.read_bytes()
    info.write_text("{ not json")
    try:
        reply = get(url + "/nd/sd/kat11_scale3/annotation/raw/0/1000,1010/2000,2010/1000,1001/")
    finally:
        info.write_bytes(kept)
    assert reply.status_code == 500
    assert reply.text.count("\n") == 1 and "Traceback" not in reply.text and "json" not in reply.text.lower()
    deadline = time.monotonic() + 5  # uvicorn logs the traceback just after it sent the answer
    while "Traceback" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Traceback" in server.log() and "JSONDecodeError" in server.log()
    assert get(url + "/nd/sd/kat11_scale3/annotation/raw/0/1000,1010/2000,2010/1000,1001/").status_code == 200


def test_serve_without_its_store_folder_is_one_line_and_exit_2(tmp_path):
    result = run_cli("serve", "--store", str(tmp_path / "nothere"), "--port", "1")
    assert result.returncode == 2
    assert result.stderr.startswith("ndingest: error: ") and result.stderr.count("\n") == 1
    assert "nothere" in result.stderr


def test_serve_with_an_unreadable_keys_file_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "store").mkdir()
    for keys in (tmp_path / "missing.txt", tmp_path):
        result = run_cli("serve", "--store", str(tmp_path / "store"), "--port", "1", "--api-keys", str(keys))
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("ndingest: error: ") and result.stderr.count("\n") == 1
    empty = tmp_path / "empty.txt"
    empty.write_text("# no key here\n\n")
    result = run_cli("serve", "--store", str(tmp_path / "store"), "--port", "1", "--api-keys", str(empty))
    assert result.returncode == 2 and "holds no key" in result.stderr and result.stderr.count("\n") == 1


def test_serve_on_a_port_in_use_is_one_line_and_exit_2(server, store):
    result = run_cli("serve", "--store", str(store["store"]), "--port", str(server.port), timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("ndingest: error: ") and result.stderr.count("\n") == 1
    assert str(server.port) in result.stderr


def test_serve_told_to_listen_beyond_this_machine_without_keys_warns(server, store, tmp_path):
    """The warning, from the real CLI, without ever listening beyond 127.0.0.1: the port
    is taken on 127.0.0.1 by the running server, so the bind on 0.0.0.0 is refused."""
    result = run_cli("serve", "--store", str(store["store"]), "--host", "0.0.0.0", "--port", str(server.port),
                     timeout=30)
    assert result.returncode == 2, result.stderr
    warning, error = result.stderr.splitlines()
    assert warning.endswith("on 0.0.0.0 without --api-keys: anyone who can reach it may write"), warning
    assert error.startswith("ndingest: error: --host 0.0.0.0") and "cannot listen there" in error
    (tmp_path / "keys.txt").write_text("a-key\n")
    result = run_cli("serve", "--store", str(store["store"]), "--host", "0.0.0.0", "--port", str(server.port),
                     "--api-keys", str(tmp_path / "keys.txt"), timeout=30)
    assert result.returncode == 2 and "warning" not in result.stderr and result.stderr.count("\n") == 1
