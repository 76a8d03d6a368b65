"""Cutout formats: every format round-trips every dtype; bad bodies are one-line 400s."""
from __future__ import annotations

import io
import os
import pickle
import zlib

import blosc
import h5py
import numpy as np
import pytest

from ndingest.errors import RequestError
from ndingest.wire.cutouts import FORMATS, decode, encode

DTYPES = ("uint8", "uint16", "uint32", "uint64", "float32")


def cutout(dtype: str, shape=(3, 4, 5), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == "float32":
        return rng.normal(size=shape).astype(dtype)
    return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_format_round_trips_every_dtype(fmt, dtype):
    a = cutout(dtype)
    body, media = encode(fmt, a, channel="image", channel_type="image", datatype=dtype)
    assert isinstance(body, bytes) and media
    back = decode(fmt, body, datatype=dtype, shape=a.shape, channel="image")
    assert back.dtype == a.dtype and back.shape == a.shape
    np.testing.assert_array_equal(back, a)


@pytest.mark.parametrize("fmt", FORMATS)
def test_time_series_cutouts_round_trip_with_their_t_axis(fmt):
    a = cutout("uint16", shape=(2, 3, 4, 5))
    body, _ = encode(fmt, a, channel="ts", channel_type="timeseries", datatype="uint16")
    np.testing.assert_array_equal(decode(fmt, body, datatype="uint16", shape=a.shape, channel="ts"), a)


def test_hdf5_answer_is_ndstores_layout_a_group_named_after_the_channel():
    a = cutout("uint8")
    body, media = encode("hdf5", a, channel="image", channel_type="image", datatype="uint8")
    assert media == "application/x-hdf5"
    with h5py.File(io.BytesIO(body), "r") as f:
        assert list(f) == ["image"]
        np.testing.assert_array_equal(f["image/CUTOUT"][()], a)
        assert f["image/CHANNELTYPE"][()].decode() == "image"
        assert f["image/DATATYPE"][()].decode() == "uint8"


def test_npz_and_blosc_answers_carry_the_leading_channel_axis_as_clients_expect():
    a = cutout("uint16")
    npz, _ = encode("npz", a, channel="c", channel_type="image", datatype="uint16")
    assert np.load(io.BytesIO(zlib.decompress(npz))).shape == (1, *a.shape)
    packed, _ = encode("blosc", a, channel="c", channel_type="image", datatype="uint16")
    np.testing.assert_array_equal(blosc.unpack_array(packed)[0], a)
    raw, _ = encode("raw", a, channel="c", channel_type="image", datatype="uint16")
    assert raw == a.tobytes(order="C")


def hdf5_body(write) -> bytes:
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        write(f)
    return buf.getvalue()


def test_hdf5_post_accepts_a_top_level_cutout_or_the_only_group():
    a = cutout("uint8")
    top = hdf5_body(lambda f: f.create_dataset("CUTOUT", data=a))
    np.testing.assert_array_equal(decode("hdf5", top, datatype="uint8", shape=a.shape, channel="image"), a)
    other = hdf5_body(lambda f: f.create_group("whatever").create_dataset("CUTOUT", data=a))
    np.testing.assert_array_equal(decode("hdf5", other, datatype="uint8", shape=a.shape, channel="image"), a)


def test_hdf5_post_prefers_the_group_named_after_the_channel():
    a, b = cutout("uint8", seed=1), cutout("uint8", seed=2)

    def write(f):
        f.create_group("image").create_dataset("CUTOUT", data=a)
        f.create_group("annotation").create_dataset("CUTOUT", data=b)
    body = hdf5_body(write)
    np.testing.assert_array_equal(decode("hdf5", body, datatype="uint8", shape=a.shape, channel="annotation"), b)
    with pytest.raises(RequestError, match="image, annotation|annotation, image"):
        decode("hdf5", body, datatype="uint8", shape=a.shape, channel="other")


def test_hdf5_post_never_reads_a_file_of_the_server_through_external_storage(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 60)
    body = hdf5_body(lambda f: f.create_group("image").create_dataset(
        "CUTOUT", shape=(3, 4, 5), dtype="uint8", external=[(str(secret), 0, 60)]))
    with pytest.raises(RequestError, match="outside the body"):
        decode("hdf5", body, datatype="uint8", shape=(3, 4, 5), channel="image")


def test_hdf5_post_never_follows_a_link_to_another_file(tmp_path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("CUTOUT", data=cutout("uint8"))
    body = hdf5_body(lambda f: f.create_group("image").__setitem__("CUTOUT", h5py.ExternalLink(str(other), "/CUTOUT")))
    with pytest.raises(RequestError, match="no CUTOUT|not a dataset"):
        decode("hdf5", body, datatype="uint8", shape=(3, 4, 5), channel="image")


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_dtype_is_refused_naming_both(fmt):
    a = cutout("uint16")
    body, _ = encode(fmt, a, channel="image", channel_type="image", datatype="uint16")
    if fmt == "raw":  # raw bytes carry no dtype: a wrong one shows as a wrong length
        with pytest.raises(RequestError, match="bytes"):
            decode(fmt, body, datatype="uint8", shape=a.shape, channel="image")
        return
    with pytest.raises(RequestError, match="uint16.*uint8"):
        decode(fmt, body, datatype="uint8", shape=a.shape, channel="image")


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_shape_is_refused_naming_both(fmt):
    a = cutout("uint8", shape=(3, 4, 5))
    body, _ = encode(fmt, a, channel="image", channel_type="image", datatype="uint8")
    with pytest.raises(RequestError, match="shape|bytes"):
        decode(fmt, body, datatype="uint8", shape=(4, 4, 5), channel="image")
    if fmt != "raw":  # raw bytes carry no shape: only their count can be wrong
        with pytest.raises(RequestError, match="shape"):
            decode(fmt, body, datatype="uint8", shape=(3, 5, 4), channel="image")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("cut", [1, 0.5, 0.0])
def test_truncated_bodies_are_one_line_400s(fmt, cut):
    a = cutout("uint16", shape=(4, 8, 8))
    body, _ = encode(fmt, a, channel="image", channel_type="image", datatype="uint16")
    short = body[: len(body) - 1] if cut == 1 else body[: int(len(body) * cut)]
    with pytest.raises(RequestError) as info:
        decode(fmt, short, datatype="uint16", shape=a.shape, channel="image")
    assert info.value.status == 400 and "\n" not in str(info.value) and str(info.value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_garbage_bodies_are_one_line_400s(fmt):
    garbage = np.random.default_rng(3).integers(0, 256, size=4096, dtype=np.uint8).tobytes()
    with pytest.raises(RequestError) as info:
        decode(fmt, garbage, datatype="uint8", shape=(2, 2, 2), channel="image")
    assert "\n" not in str(info.value)


class RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_blosc_pickle_that_would_run_a_command_is_refused_and_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "ran"
    payload = pickle.dumps(RunsAShellCommand(marker), protocol=protocol)
    body = blosc.compress(payload, typesize=1)
    with pytest.raises(RequestError, match=r"(posix|os)\.system"):
        decode("blosc", body, datatype="uint8", shape=(1, 1, 1), channel="image")
    assert not marker.exists()


def test_a_blosc_pickle_of_another_object_is_refused_naming_its_class():
    body = blosc.compress(pickle.dumps({"a": [1, 2]} | {"f": print}), typesize=1)
    with pytest.raises(RequestError, match="builtins.print"):
        decode("blosc", body, datatype="uint8", shape=(1, 1, 1), channel="image")


def test_a_blosc_pickle_of_plain_data_is_not_an_array():
    body = blosc.compress(pickle.dumps([1, 2, 3]), typesize=1)
    with pytest.raises(RequestError, match="list, not a numpy array"):
        decode("blosc", body, datatype="uint8", shape=(1, 1, 1), channel="image")


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_blosc_pickles_of_every_protocol_numpy_writes_are_accepted(protocol):
    a = cutout("uint32")[np.newaxis]
    body = blosc.compress(pickle.dumps(a, protocol=protocol), typesize=4)
    np.testing.assert_array_equal(decode("blosc", body, datatype="uint32", shape=a.shape[1:]), a[0])


def test_codecs_encode_in_a_pickle_is_refused_for_anything_but_latin1():
    class Inflates:
        def __reduce__(self):
            import _codecs
            return (_codecs.encode, (b"x" * 10, "zlib"))
    body = blosc.compress(pickle.dumps(Inflates(), protocol=2), typesize=1)
    with pytest.raises(RequestError, match="latin1"):
        decode("blosc", body, datatype="uint8", shape=(1, 1, 1))


def test_a_blosc_body_claiming_more_bytes_than_the_box_is_refused_before_inflating():
    a = np.zeros((1, 64, 64, 64), dtype=np.uint8)
    body = blosc.pack_array(a)
    with pytest.raises(RequestError, match="inflates to"):
        decode("blosc", body, datatype="uint8", shape=(2, 2, 2))


def test_an_npz_bomb_is_refused_without_inflating_it_whole():
    body = zlib.compress(b"\0" * (64 << 20))
    with pytest.raises(RequestError, match="inflates past"):
        decode("npz", body, datatype="uint8", shape=(4, 4, 4))


def test_an_npz_holding_a_pickled_object_array_is_refused():
    buf = io.BytesIO()
    np.save(buf, np.array([[[[{"x": 1}]]]], dtype=object), allow_pickle=True)
    with pytest.raises(RequestError, match="npz body"):
        decode("npz", zlib.compress(buf.getvalue()), datatype="uint8", shape=(1, 1, 1))


def test_unknown_format_is_a_400_naming_the_formats():
    with pytest.raises(RequestError, match="hdf5, npz, blosc, raw"):
        decode("tiff", b"", datatype="uint8", shape=(1, 1, 1))
