"""`KvPath`: keys in a bucket of moto's S3 server on 127.0.0.1, through tensorstore's s3
kvstore, behaving as the slice of `pathlib.Path` the markers use. What lands in the
bucket is read back with boto3, not with ndingest."""
from __future__ import annotations

import multiprocessing
import pickle

import pytest

from ndingest.errors import SpecError
from ndingest.kvpath import KvPath
from ndingest.urls import is_url


@pytest.fixture
def root(s3_server) -> KvPath:
    return KvPath.from_url(f"s3://{s3_server.new_bucket()}/pre/fix")


def test_a_url_names_its_bucket_and_prefix_and_a_folder_is_not_a_url():
    assert is_url("s3://b/p") and not is_url("/data/store") and not is_url("store")
    with pytest.raises(SpecError, match="s3:///nobucket"):
        KvPath.from_url("s3:///nobucket")


def test_objects_round_trip_and_land_under_the_prefix(root, s3_server):
    (root / "_markers" / "a.json").write_text('{"x": 1}')
    assert (root / "_markers" / "a.json").read_text() == '{"x": 1}'
    assert s3_server.keys(root.bucket.bucket) == ["pre/fix/_markers/a.json"]
    assert str(root / "_markers") == f"s3://{root.bucket.bucket}/pre/fix/_markers"


def test_a_missing_object_is_file_not_found_as_for_a_path(root):
    with pytest.raises(FileNotFoundError):
        (root / "nothing.json").read_bytes()
    with pytest.raises(FileNotFoundError):
        (root / "nothing").names()
    assert not (root / "nothing").exists()
    (root / "nothing.json").unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError):
        (root / "nothing.json").unlink()


def test_folders_list_their_names_once_and_glob_part_by_part(root):
    for key in ("w/level0/task00000/a.json", "w/level0/task00000/b.json", "w/level0/task00001.done",
                "w/level1/task00000/c.json", "wx/other.json"):
        (root / key).write_bytes(b"{}")
    assert (root / "w").names() == ["level0", "level1"]
    assert (root / "w" / "level0").names() == ["task00000", "task00001.done"]
    assert [p.name for p in (root / "w" / "level0").iterdir()] == ["task00000", "task00001.done"]
    assert sorted(p.name for p in (root / "w").glob("level*/task*/*.json")) == ["a.json", "b.json", "c.json"]
    assert sorted(p.name for p in root.rglob("*.json")) == ["a.json", "b.json", "c.json", "other.json"]
    assert (root / "w").is_dir() and (root / "w").exists() and not (root / "w").is_file()
    (root / "w" / "level0").remove_tree()
    assert (root / "w").names() == ["level1"]
    assert (root / "wx" / "other.json").is_file()  # a sibling with the same first letters is kept


def test_names_and_parents_are_those_of_a_posix_path(root):
    path = root / "a" / "b.json"
    assert (path.name, path.parent, path.parent.parent) == ("b.json", root / "a", root)
    assert root.joinpath("a", "b.json") == path and hash(root.joinpath("a", "b.json")) == hash(path)
    assert [str(p) for p in path.parents][:2] == [str(root / "a"), str(root)]


def _child(path: KvPath, queue) -> None:
    path.write_text("from a forked child")
    queue.put(path.read_text())


def test_a_path_pickles_and_works_in_a_worker_process_after_use(root):
    """In a worker started by a fork server, as the runner starts Luigi's workers when the
    store is an object store: tensorstore aborts a plainly forked child that uses it once
    the parent has (its threads do not survive a fork)."""
    (root / "before.txt").write_text("opened in the parent")
    clone = pickle.loads(pickle.dumps(root / "child.txt"))
    ctx = multiprocessing.get_context("forkserver")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(clone, queue))
    proc.start()
    assert queue.get(timeout=30) == "from a forked child"
    proc.join(30)
    assert proc.exitcode == 0 and (root / "child.txt").read_text() == "from a forked child"


def test_a_server_that_is_down_fails_after_the_bounded_retries_naming_the_object(monkeypatch):
    """Retries are bounded (`Bucket.retries`; ~40 s by default, not tensorstore's minutes):
    here three quick ones against a port where nothing listens, then one StoreError line."""
    import socket
    import time

    from ndingest.errors import StoreError
    from ndingest.kvpath import RETRIES, Bucket

    assert RETRIES[0] >= 3  # a throttled server still gets several tries
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")  # keys from the environment: no instance-metadata probe
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bucket = Bucket("down-bucket", f"http://127.0.0.1:{port}", "us-east-1", retries=(3, "0.1s", "0.2s"))
    started = time.monotonic()
    with pytest.raises(StoreError, match=r"s3://down-bucket/pre/marker.json: cannot read: .*retry attempts failed"):
        KvPath(bucket, "pre/marker.json").read_bytes()
    assert time.monotonic() - started < 30
