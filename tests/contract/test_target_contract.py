"""The contract every target keeps: the local store (in a folder, and in a bucket of moto's
S3 server on 127.0.0.1) and the REST target (`remote`, over a real `ndingest serve` on
127.0.0.1, one per module): create a volume, write boxes, read them back in (z, y, x),
refuse a different `info`, and survive pickling into a worker."""
from __future__ import annotations

import pickle
import sys
import time
from pathlib import Path

import blosc
import numpy as np
import pytest
import requests

from ndingest.blocks import Box, Vec3
from ndingest.catalog import channel_row, dataset_row, project_rows
from ndingest.edits import record_edit
from ndingest.errors import CatalogConflict, RemoteError, StoreError
from ndingest.kvpath import KvPath
from ndingest.markers import channel_dir
from ndingest.remote import Client, RemoteStore, RestCatalog
from ndingest.spec import ChannelSpec, DatasetSpec, ProjectSpec
from ndingest.targets import LocalStore, Scale, VolumeRef, precomputed_info

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))  # the e2e tests' server helper
from serving import serving  # noqa: E402

OFFSET, SIZE, CHUNK = Vec3(1000, 2000, 1000), Vec3(300, 200, 40), Vec3(128, 128, 16)
REF = VolumeRef("ds", "pr", "image")


def info(dtype: str = "uint16", channel_type: str = "image") -> dict:
    return precomputed_info(datatype=dtype, channel_type=channel_type,
                            scales=[Scale(resolution_nm=(4.0, 4.0, 40.0), voxel_offset=OFFSET, size=SIZE, chunk=CHUNK)])


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("contract-remote") / "store"
    store.mkdir()
    with serving(store) as running:
        yield running, store


def fresh_remote_volume(url: str) -> RemoteStore:
    """REF's channel made anew through the resource API, so each test starts from an
    empty volume (the server makes it with the channel, from the dataset row)."""
    client = Client(url + "/nd")
    rest = RestCatalog(client, dataset=REF.dataset, project=REF.project, token="tk", probe_channel=REF.channel)
    dataset = DatasetSpec(REF.dataset, OFFSET, (4.0, 4.0, 40.0), "zslices", 0)
    rest.ensure_rows([dataset_row(dataset, size_xyz=SIZE, levels=0),
                      *project_rows(ProjectSpec(REF.project, "tk"), dataset=REF.dataset)])
    rest.delete_channel(REF.project, REF.channel)
    rest.ensure_rows([channel_row(ChannelSpec(REF.channel, "image", "unused", "uint16"), project=REF.project,
                                  datatype="uint16", time_range=(0, 0), window=(0.0, 0.0), default=True)])
    return RemoteStore(client, token="tk")


@pytest.fixture(params=["local", "s3", "remote"])
def target(request, tmp_path):
    if request.param == "remote":
        store = fresh_remote_volume(request.getfixturevalue("server")[0].url)
    elif request.param == "s3":  # the local store's layout under a bucket's prefix (moto on 127.0.0.1)
        store = LocalStore(KvPath.from_url(f"s3://{request.getfixturevalue('s3_server').new_bucket()}/lab/store"))
    else:
        store = LocalStore(tmp_path / "store")
    store.create_volume(REF, info())
    return store


@pytest.fixture
def volume_folder(target, request, tmp_path) -> Path:
    """Where the target keeps REF's volume on disk (the server's store for a remote one)."""
    if isinstance(target, LocalStore):  # a folder, or a bucket's prefix
        return target.volume_dir(REF)
    return request.getfixturevalue("server")[1].joinpath(*REF.parts)


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


def test_a_box_outside_the_volume_is_an_error_naming_the_box(target):
    kind = StoreError if isinstance(target, LocalStore) else RemoteError  # exit 7, or 8 (the server's 400)
    with pytest.raises(kind, match=r"0-10_0-10_0-10|0,10/0,10/0,10"):
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


def test_all_zero_chunks_are_stored_as_files(target, volume_folder):
    box = Box(OFFSET, OFFSET + Vec3(128, 128, 16))
    target.write(REF, 0, box, np.zeros(tuple(box.shape)[::-1], np.uint16))
    assert (volume_folder / "4_4_40" / box.to_key()).is_file()


def test_a_write_overwrites_every_voxel_zeros_included(target):
    box = Box(OFFSET, OFFSET + Vec3(128, 128, 16))
    target.write(REF, 0, box, block(box, seed=3))
    target.write(REF, 0, box, np.zeros(tuple(box.shape)[::-1], np.uint16))
    assert not target.read(REF, 0, box).any()


def test_several_writes_in_flight_all_land(target):
    boxes = [Box(OFFSET + Vec3(0, 0, z0), OFFSET + Vec3(128, 128, z1)) for z0, z1 in ((0, 16), (16, 32), (32, 40))]
    pending = [target.start_write(REF, 0, box, block(box, seed=10 + i)) for i, box in enumerate(boxes)]
    for p in pending:
        p.wait()
    target.flush()
    for i, box in enumerate(boxes):
        np.testing.assert_array_equal(target.read(REF, 0, box), block(box, seed=10 + i))


def test_edits_list_the_cutout_posts_made_to_a_channel_oldest_first(target, request):
    """A user's POST through `ndingest serve` (for the local store, the record the server
    writes beside its markers); `verify` reads them to tell edits from corruption."""
    assert target.edits(REF) == []
    boxes = [Box(OFFSET, OFFSET + Vec3(64, 64, 16)), Box(OFFSET + Vec3(64, 0, 0), OFFSET + Vec3(128, 64, 16))]
    started = time.time()
    for box in boxes:
        if isinstance(target, LocalStore):
            record_edit(channel_dir(target.path, REF.dataset, REF.project, REF.channel), [box], key_id=None)
        else:
            url = request.getfixturevalue("server")[0].url
            b, e = box.begin, box.end
            reply = requests.post(f"{url}/nd/sd/tk/{REF.channel}/blosc/0/{b.x},{e.x}/{b.y},{e.y}/{b.z},{e.z}/",
                                  data=blosc.pack_array(np.ones((1, 16, 64, 64), np.uint16)), timeout=30)
            assert reply.status_code == 200, reply.text
    edits = target.edits(REF)
    assert [e.boxes for e in edits] == [(box,) for box in boxes]
    assert all(started <= e.when <= time.time() and e.mode == "overwrite" and e.key_id is None for e in edits)
    assert edits[0].when <= edits[1].when
