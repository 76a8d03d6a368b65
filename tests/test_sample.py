"""`ndingest sample`: deterministic synthetic cutouts in ndstore's HDF5 layout (small shapes only)."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from ndingest.sample import (
    ANNOTATION_FILE, IMAGE_FILE, TUTORIAL_SHAPE_ZYX, synthetic_em, synthetic_labels, write_sample,
)
from ndingest.sources import open_source

SHAPE = (20, 30, 40)  # z, y, x


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return synthetic_labels(SHAPE)


@pytest.fixture(scope="module")
def image(labels) -> np.ndarray:
    return synthetic_em(labels)


def text(dataset) -> str:
    value = dataset[()]
    return value.decode() if isinstance(value, bytes) else str(value)


def test_labels_are_deterministic(labels):
    np.testing.assert_array_equal(synthetic_labels(SHAPE), labels)


def test_image_is_deterministic(labels, image):
    np.testing.assert_array_equal(synthetic_em(labels), image)


def test_other_seeds_give_other_volumes(labels, image):
    assert not np.array_equal(synthetic_labels(SHAPE, seed=99), labels)
    assert not np.array_equal(synthetic_em(labels, seed=99), image)


def test_labels_are_uint32_zyx_with_zero_background_and_several_ids(labels):
    assert labels.dtype == np.uint32 and labels.shape == SHAPE
    assert (labels == 0).any()
    ids = np.unique(labels[labels != 0])
    assert len(ids) >= 3


def test_neurite_count_can_be_chosen(labels):
    few = synthetic_labels(SHAPE, neurites=2)
    assert 1 <= len(np.unique(few[few != 0])) <= 2


def test_image_is_uint8_stretched_to_0_254(labels, image):
    assert image.dtype == np.uint8 and image.shape == SHAPE
    assert image.min() == 0 and image.max() == 254


def test_image_is_darker_at_label_edges_than_inside_labels(labels, image):
    edge = np.zeros(SHAPE, bool)
    edge[:, :, 1:] |= np.diff(labels, axis=2) != 0
    edge[:, :, :-1] |= np.diff(labels, axis=2) != 0
    inside = (labels != 0) & ~edge
    assert image[edge].mean() < image[inside].mean()


def test_tutorial_shape_is_x300_y200_z200_in_zyx_order():
    assert TUTORIAL_SHAPE_ZYX == (200, 200, 300)
    assert "1000_1300-2000_2200-1000_1200" in IMAGE_FILE and "1000_1300-2000_2200-1000_1200" in ANNOTATION_FILE


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sample")
    return folder, write_sample(folder, SHAPE)


def test_write_sample_returns_the_image_and_annotation_paths(written):
    folder, paths = written
    assert paths == [folder / IMAGE_FILE, folder / ANNOTATION_FILE]
    assert all(p.is_file() for p in paths)


def test_write_sample_leaves_no_temp_files(written):
    folder, _ = written
    assert sorted(os.listdir(folder)) == sorted([IMAGE_FILE, ANNOTATION_FILE])


@pytest.mark.parametrize("index, group, dtype", [(0, "image", "uint8"), (1, "annotation", "uint32")])
def test_write_sample_uses_ndstores_cutout_layout(written, index, group, dtype):
    _, paths = written
    with h5py.File(paths[index], "r") as f:
        assert list(f) == [group]
        assert set(f[group]) == {"CUTOUT", "CHANNELTYPE", "DATATYPE"}
        cutout = f[group]["CUTOUT"]
        assert cutout.shape == SHAPE and cutout.dtype == np.dtype(dtype)
        assert text(f[group]["CHANNELTYPE"]) == group
        assert text(f[group]["DATATYPE"]) == dtype


def test_write_sample_writes_the_synthetic_volumes(written, labels, image):
    _, paths = written
    with h5py.File(paths[0], "r") as f:
        np.testing.assert_array_equal(f["image/CUTOUT"][()], image)
    with h5py.File(paths[1], "r") as f:
        np.testing.assert_array_equal(f["annotation/CUTOUT"][()], labels)


def test_written_sample_opens_as_a_source_with_x_from_the_last_axis(written):
    _, paths = written
    source = open_source(str(paths[0]))
    assert source.dataset == "/image/CUTOUT"
    assert tuple(source.size_xyz) == (40, 30, 20)


def test_write_sample_again_gives_identical_files(written, tmp_path):
    _, first = written
    again = write_sample(tmp_path, SHAPE)
    for a, b in zip(first, again):
        with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
            group = next(iter(fa))
            np.testing.assert_array_equal(fa[group]["CUTOUT"][()], fb[group]["CUTOUT"][()])
