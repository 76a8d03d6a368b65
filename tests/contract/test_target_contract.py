"""The contract every target keeps (the local store now; the REST target later joins the
`target` fixture's parameters): create a volume, write boxes, read them back in (z, y, x),
refuse a different `info`, and survive pickling into a worker."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from ndingest.blocks import Box, Vec3
from ndingest.errors import CatalogConflict, StoreError
from ndingest.targets import LocalStore, Scale, VolumeRef, precomputed_info

OFFSET, SIZE, CHUNK = Vec3(1000, 2000, 1000), Vec3(300, 200, 40), Vec3(128, 128, 16)
REF = VolumeRef("ds", "pr", "image")


def info(dtype: str = "uint16", channel_type: str = "image") -> dict:
    return precomputed_info(datatype=dtype, channel_type=channel_type,
                            scales=[Scale(resolution_nm=(4.0, 4.0, 40.0), voxel_offset=OFFSET, size=SIZE, chunk=CHUNK)])


@pytest.fixture(params=["local"])
def target(request, tmp_path):
    store = LocalStore(tmp_path / "store")
    store.create_volume(REF, info())
    return store


def block(box: Box, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**16, size=tuple(box.shape)[::-1], dtype=np.uint16)


def test_write_then_read_returns_the_same_zyx_voxels(target):
    box = Box(OFFSET, OFFSET + Vec3(256, 128, 16))
    data = block(box)
    target.write(REF, 0, box, data)
    np.testing.assert_array_equal(target.read(REF, 0, box), data)
    inner = Box(OFFSET + Vec3(5, 7, 3), OFFSET + Vec3(50, 20, 9))
    np.testing.assert_array_equal(target.read(REF, 0, inner), data[3:9, 7:20, 5:50])


def test_edge_boxes_clipped_by_the_volume_round_trip(target):
    box = Box(OFFSET + Vec3(256, 128, 32), OFFSET + SIZE)
    data = block(box, seed=1)
    target.write(REF, 0, box, data)
    np.testing.assert_array_equal(target.read(REF, 0, box), data)


def test_unwritten_voxels_read_as_zero(target):
    box = Box(OFFSET, OFFSET + Vec3(10, 10, 2))
    assert not target.read(REF, 0, box).any()


def test_a_box_outside_the_volume_is_a_store_error(target):
    with pytest.raises(StoreError):
        target.read(REF, 0, Box(Vec3(0, 0, 0), Vec3(10, 10, 10)))


def test_the_same_info_again_is_a_no_op_and_another_is_a_conflict(target):
    target.create_volume(REF, info())
    with pytest.raises(CatalogConflict, match="data_type"):
        target.create_volume(REF, info(dtype="uint8"))
    assert target.info(REF) == info()


def test_target_pickles_into_a_worker_after_use(target):
    box = Box(OFFSET, OFFSET + Vec3(128, 128, 16))
    data = block(box, seed=2)
    target.write(REF, 0, box, data)
    clone = pickle.loads(pickle.dumps(target))
    np.testing.assert_array_equal(clone.read(REF, 0, box), data)


def test_all_zero_chunks_are_stored_as_files(target, tmp_path):
    box = Box(OFFSET, OFFSET + Vec3(128, 128, 16))
    target.write(REF, 0, box, np.zeros(tuple(box.shape)[::-1], np.uint16))
    assert (tmp_path / "store/ds/pr/image/4_4_40" / box.to_key()).is_file()
