"""`ndingest serve --store s3://bucket/prefix --catalog postgresql://…`: a bucket store,
served read-only. moto's S3 server and a real PostgreSQL on 127.0.0.1, started by the
tests; the tutorial ingested into the bucket by the CLI. Answers are judged with h5py,
PIL and CloudVolume (over the server's precomputed route), never with ndingest's readers."""
from __future__ import annotations

import io

import h5py
import numpy as np
import pytest
import requests
from PIL import Image

from conftest import read_cutout, run_cli
from ndingest.sample import IMAGE_FILE
from serving import TUTORIAL, serving
from test_s3_store import s3_spec

DATASET, TOKEN = TUTORIAL
OFFSET = (1000, 2000, 1000)  # x, y, z: the tutorial's dataset offset


@pytest.fixture(scope="module")
def bucket_store(s3_server, postgres_server, tutorial_data, tmp_path_factory) -> dict:
    bucket = s3_server.new_bucket()
    catalog = postgres_server.new_database()
    folder = tmp_path_factory.mktemp("serve-bucket")
    spec = s3_spec(folder, tutorial_data, bucket, catalog)
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr
    return {"store": f"s3://{bucket}/lab/vol", "catalog": catalog, "folder": folder, "spec": spec}


@pytest.fixture(scope="module")
def server(bucket_store):
    with serving(bucket_store["store"], args=("--catalog", bucket_store["catalog"]),
                 log_dir=bucket_store["folder"]) as running:
        yield running


def test_the_tutorials_cutout_and_slice_come_from_the_bucket(server, bucket_store, tutorial_data, tmp_path):
    assert TOKEN in requests.get(f"{server.url}/nd/sd/public_tokens/", timeout=30).json()
    reply = requests.get(f"{server.url}/ocp/ca/{TOKEN}/image/hdf5/0/1000,1300/2000,2200/1000,1200/", timeout=60)
    assert reply.status_code == 200, reply.text + server.log()
    with h5py.File(io.BytesIO(reply.content), "r") as f:
        assert np.array_equal(f["image"]["CUTOUT"][()], read_cutout(tutorial_data / IMAGE_FILE))
    png = requests.get(f"{server.url}/ocp/ca/{TOKEN}/image/xy/0/1000,1300/2000,2200/1100/", timeout=60)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png", png.text
    out = tmp_path / "slice.png"
    drawn = run_cli("slice", str(bucket_store["spec"]), "image", "xy", "1100", "-o", str(out))
    assert drawn.returncode == 0, drawn.stderr
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))), np.asarray(Image.open(out)))


def test_cloudvolume_reads_the_bucket_through_the_precomputed_route(server, tutorial_data):
    from cloudvolume import CloudVolume

    vol = CloudVolume(f"precomputed://{server.url}/precomputed/{DATASET}/{TOKEN}/image", mip=0, parallel=1,
                      progress=False)
    x, y, z = OFFSET
    cutout = np.asarray(vol[x:x + 300, y:y + 200, z:z + 200])[..., 0]  # x, y, z
    assert np.array_equal(cutout.transpose(2, 1, 0), read_cutout(tutorial_data / IMAGE_FILE))


def test_byte_ranges_of_an_object_are_206_and_a_bad_one_416(server):
    base = f"{server.url}/precomputed/{DATASET}/{TOKEN}/image/info"
    whole = requests.get(base, timeout=30)
    assert whole.status_code == 200 and whole.headers["access-control-allow-origin"] == "*"
    assert whole.json()["type"] == "image"
    part = requests.get(base, headers={"Range": "bytes=2-9"}, timeout=30)
    assert part.status_code == 206 and part.content == whole.content[2:10]
    # only the range is read from the bucket, so the object's size is not known: `*` (RFC 9110 14.4)
    assert part.headers["content-range"] == "bytes 2-9/*"
    rest = requests.get(base, headers={"Range": "bytes=5-"}, timeout=30)  # read to the end: the size shows
    assert rest.status_code == 206 and rest.content == whole.content[5:]
    assert rest.headers["content-range"] == f"bytes 5-{len(whole.content) - 1}/{len(whole.content)}"
    tail = requests.get(base, headers={"Range": "bytes=-5"}, timeout=30)
    assert tail.status_code == 206 and tail.content == whole.content[-5:]
    assert tail.headers["content-range"] == f"bytes {len(whole.content) - 5}-{len(whole.content) - 1}/{len(whole.content)}"
    beyond = requests.get(base, headers={"Range": f"bytes={len(whole.content)}-"}, timeout=30)
    assert beyond.status_code == 416
    past = requests.get(base, headers={"Range": f"bytes={len(whole.content) - 3}-{len(whole.content) + 99}"}, timeout=30)
    assert past.status_code == 206 and past.content == whole.content[-3:]  # cut at the end, as RFC 9110 says
    assert requests.get(base.replace("/info", "/no-such-object"), timeout=30).status_code == 404
    assert requests.get(base.replace("/info", "/../../catalog"), timeout=30).status_code == 404


def test_a_range_of_a_large_object_is_all_that_is_read_from_the_bucket(server, s3_server, bucket_store):
    """A shard file of 24 MiB: a chunk's range of it is one ranged GET (moto answers 206),
    never the whole object (a 200), and the answer is those bytes; the whole object, asked
    without a Range, is read a piece at a time, never whole."""
    bucket, prefix = bucket_store["store"].split("/", 3)[2:]
    blob = np.random.default_rng(3).integers(0, 256, 24 << 20, dtype=np.uint8).tobytes()
    key = f"{prefix}/{DATASET}/{TOKEN}/image/shards/big.shard"
    s3_server.client().put_object(Bucket=bucket, Key=key, Body=blob)
    mark = len(s3_server.lines())
    url = f"{server.url}/precomputed/{DATASET}/{TOKEN}/image/shards/big.shard"
    part = requests.get(url, headers={"Range": "bytes=12000000-12065535"}, timeout=30)
    assert part.status_code == 206 and part.content == blob[12000000:12065536], part.text
    assert part.headers["content-range"] == "bytes 12000000-12065535/*"
    gets = [line for line in s3_server.lines()[mark:] if f"GET /{bucket}/{key}" in line]
    assert gets and all('" 206' in line for line in gets), gets
    mark = len(s3_server.lines())
    whole = requests.get(url, timeout=60)  # no Range: streamed from ranged reads of 8 MiB
    assert whole.status_code == 200 and whole.content == blob
    gets = [line for line in s3_server.lines()[mark:] if f"GET /{bucket}/{key}" in line]
    assert sum('" 206' in line for line in gets) >= 3 and not any('" 200' in line for line in gets), gets


@pytest.mark.parametrize("method, path", [
    ("POST", f"/nd/sd/{TOKEN}/image/npz/0/1000,1010/2000,2010/1000,1001/"),
    ("POST", f"/nd/sd/{TOKEN}/createChannel/"),
    ("DELETE", f"/nd/resource/dataset/{DATASET}/"),
    ("GET", f"/nd/sd/{TOKEN}/image/setPropagate/1/"),
    ("GET", f"/ocp/ca/{TOKEN}/image/setPropagate/1"),  # the trailing slash is optional
    ("GET", f"/nd/sd/{TOKEN}/autoIngest/"),
])
def test_every_write_is_501_naming_the_bucket(server, bucket_store, method, path):
    reply = requests.request(method, f"{server.url}{path}", data=b"x", timeout=30)
    assert reply.status_code == 501, reply.text
    assert bucket_store["store"] in reply.text and "read-only" in reply.text and reply.text.count("\n") == 1


def test_the_page_lists_the_bucket_stores_project(server):
    page = requests.get(f"{server.url}/", timeout=60)
    assert page.status_code == 200 and TOKEN in page.text and DATASET in page.text
    edits = requests.get(f"{server.url}/nd/sd/{TOKEN}/image/edits/", timeout=30)
    assert edits.status_code == 200 and edits.json() == [], edits.text  # nothing was ever POSTed to it
    propagate = requests.get(f"{server.url}/nd/sd/{TOKEN}/image/getPropagate/", timeout=30)
    assert propagate.status_code == 200 and propagate.text == "2", propagate.text  # a read: answered


def test_a_bucket_store_without_a_database_catalog_is_one_line(s3_server, bucket_store):
    result = run_cli("serve", "--store", bucket_store["store"], "--port", "0")
    assert result.returncode == 2 and "catalog is a database; give its postgresql:// URL" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    missing = run_cli("serve", "--store", "s3://no-such-bucket-here/nothing", "--catalog", bucket_store["catalog"],
                      "--port", "0")
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr
    assert "s3://no-such-bucket-here/nothing: the bucket cannot be read: NOT_FOUND: NoSuchBucket" in missing.stderr
    assert missing.stderr.count("\n") == 1, missing.stderr


def test_serve_on_a_bucket_lists_none_of_its_keys_at_start(s3_server, bucket_store, tmp_path):
    """store_at listed every key under the prefix (in each uvicorn worker) to see that one
    was there; now one request that can match no key checks the bucket (moto's log), and an
    empty prefix is served as an empty store."""
    bucket, prefix = bucket_store["store"].split("/", 3)[2:]
    mark = len(s3_server.lines())
    with serving(bucket_store["store"], args=("--catalog", bucket_store["catalog"]), log_dir=tmp_path):
        pass
    lists = [line for line in s3_server.lines()[mark:] if f"GET /{bucket}/?" in line and "list-type" in line]
    assert lists and all(f"prefix={prefix}/.ndingest-probe " in line for line in lists), lists
    empty = f"s3://{s3_server.new_bucket()}/nothing"
    with serving(empty, args=("--catalog", bucket_store["catalog"]), log_dir=tmp_path) as server:
        assert requests.get(f"{server.url}/nd/sd/public_tokens/", timeout=30).status_code == 200


def test_uvicorns_app_factory_serves_a_bucket_read_only(bucket_store, monkeypatch):
    from ndingest.errors import SpecError
    from ndingest.server import app_from_env

    monkeypatch.setenv("NDINGEST_STORE", bucket_store["store"])
    monkeypatch.delenv("NDINGEST_CATALOG", raising=False)
    with pytest.raises(SpecError, match="NDINGEST_CATALOG"):
        app_from_env()
    monkeypatch.setenv("NDINGEST_CATALOG", bucket_store["catalog"])
    assert app_from_env().state.ctx.read_only


def test_a_cutout_reads_the_volumes_info_from_the_bucket_at_most_every_few_seconds(server, s3_server, bucket_store):
    """Each use of `info` was a GET: 3.2 per cutout. Read once per BUCKET_INFO_SECONDS now
    (5 cutouts: 16 GETs of info before, 0.4 a cutout after, counted in moto's log)."""
    mark = len(s3_server.lines())
    for _ in range(5):
        reply = requests.get(f"{server.url}/nd/sd/{TOKEN}/image/npz/0/1000,1064/2000,2064/1000,1016/", timeout=30)
        assert reply.status_code == 200, reply.text
    bucket = bucket_store["store"].split("/")[2]
    assert s3_server.requests_since(mark, f"GET /{bucket}/") >= 5  # the chunks: moto logs what it answered
    assert s3_server.requests_since(mark, "/image/info ") <= 3


def test_getpropagate_while_the_catalog_says_building_answers_1(server, bucket_store):
    """A pipeline on another host building the levels (propagate 1): the server reads it,
    and starts no builder of its own (a bucket has no build lock; it was a 500)."""
    import sqlalchemy as sa

    from ndingest import catalog

    engine = catalog.engine_for(bucket_store["catalog"], create=False)
    where = catalog.channels.c.channel_name == "image"
    try:
        with engine.begin() as conn:
            conn.execute(sa.update(catalog.channels).where(where).values(propagate=catalog.PROPAGATE_UNDER_WAY))
        for _ in range(2):
            reply = requests.get(f"{server.url}/nd/sd/{TOKEN}/image/getPropagate/", timeout=30)
            assert reply.status_code == 200 and reply.text == "1", reply.text + server.log()
    finally:
        with engine.begin() as conn:
            conn.execute(sa.update(catalog.channels).where(where).values(propagate=catalog.PROPAGATE_DONE))
        engine.dispose()
