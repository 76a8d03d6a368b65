"""A store in a bucket (`[store] path = "s3://bucket/prefix"`) with its catalog in
PostgreSQL: moto's S3 server and a real PostgreSQL on 127.0.0.1, started by the tests.

What lands in the bucket is read with CloudVolume and boto3, never with ndingest's
readers; the catalog's rows with psycopg."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest

from conftest import NDINGEST, run_cli, spec_text, write_h5
from ndingest.sample import ANNOTATION_FILE, IMAGE_FILE

DATASET, PROJECT = "neurostorm_kat11_scale3", "kat11_scale3"


def s3_spec(folder, data, bucket: str, catalog: str, *, levels: int = 1, name: str = "spec.toml"):
    text = spec_text(image=data / IMAGE_FILE, annotation=data / ANNOTATION_FILE, store=f"s3://{bucket}/lab/vol")
    text = text.replace("scaling_levels = 0", f"scaling_levels = {levels}") + f'catalog = "{catalog}"\n'
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def load_cutout(path) -> np.ndarray:
    import h5py

    with h5py.File(path, "r") as f:
        return f[next(iter(f))]["CUTOUT"][()]


def cloudvolume(bucket: str, channel: str, level: int):
    from cloudvolume import CloudVolume

    return CloudVolume(f"s3://{bucket}/lab/vol/{DATASET}/{PROJECT}/{channel}", mip=level, parallel=1,
                       progress=False, secrets={"AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
                                                "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"]})


@pytest.fixture(scope="module")
def ingested(s3_server, postgres_server, tutorial_data, tmp_path_factory) -> dict:
    bucket = s3_server.new_bucket()
    catalog = postgres_server.new_database()
    folder = tmp_path_factory.mktemp("s3-ingest")
    spec = s3_spec(folder / "host1", tutorial_data, bucket, catalog)
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr
    return {"bucket": bucket, "catalog": catalog, "spec": spec, "folder": folder, "run": result}


def test_every_level_in_the_bucket_reads_bit_exact_through_cloudvolume(ingested, tutorial_data):
    for channel, name in (("image", IMAGE_FILE), ("annotation", ANNOTATION_FILE)):
        source = load_cutout(tutorial_data / name)  # (z, y, x)
        vol = cloudvolume(ingested["bucket"], channel, 0)
        got = np.asarray(vol[vol.bounds])[..., 0].transpose(2, 1, 0)
        np.testing.assert_array_equal(got, source)
        assert cloudvolume(ingested["bucket"], channel, 1).bounds.size3().z == source.shape[0]


def test_markers_report_and_volumes_are_objects_under_the_prefix_and_nothing_local(ingested, s3_server):
    keys = s3_server.keys(ingested["bucket"])
    assert all(k.startswith("lab/vol/") for k in keys)
    assert any(k.startswith(f"lab/vol/_markers/{DATASET}/{PROJECT}/image/written/level0/") for k in keys)
    assert any(k.startswith(f"lab/vol/_markers/{DATASET}/{PROJECT}/annotation/verified/level1/") for k in keys)
    assert f"lab/vol/_reports/{DATASET}/{PROJECT}/verify.csv" in keys
    assert f"lab/vol/{DATASET}/{PROJECT}/image/info" in keys
    assert sorted(p.name for p in ingested["spec"].parent.iterdir()) == ["spec.toml"]  # no local store, no .ndingest


def test_the_catalog_rows_are_in_postgresql(ingested):
    import psycopg

    with psycopg.connect(ingested["catalog"]) as conn:
        assert conn.execute("select dataset_name from datasets").fetchall() == [(DATASET,)]
        assert sorted(conn.execute("select channel_name, propagate from channels").fetchall()) == [
            ("annotation", 2), ("image", 2)]


def test_another_host_with_its_own_copy_sees_it_done_and_a_rerun_writes_nothing(ingested, tutorial_data, s3_server):
    other = s3_spec(ingested["folder"] / "host2", tutorial_data, ingested["bucket"], ingested["catalog"],
                    name="copy.toml")
    status = run_cli("status", str(other), "--json")
    assert status.returncode == 0, status.stderr
    channels = json.loads(status.stdout)["channels"]
    assert set(channels) == {"image", "annotation"}
    assert all(c["done"] == c["total"] == c["verified"] == 12 for c in channels.values()), channels
    before = s3_server.stamps(ingested["bucket"])
    time.sleep(1.1)  # S3's times are to the second
    result = run_cli("ingest", str(other))
    assert result.returncode == 0, result.stderr
    assert s3_server.stamps(ingested["bucket"]) == before


def test_a_second_run_while_one_holds_the_catalog_lock_is_exit_6(ingested, tutorial_data):
    from ndingest.catalog import SqlCatalog

    held = SqlCatalog(ingested["catalog"]).try_lock(
        f"ndingest ingest s3://{ingested['bucket']}/lab/vol/_markers/{DATASET}/{PROJECT}")
    assert held is not None
    try:
        result = run_cli("ingest", str(ingested["spec"]))
        assert result.returncode == 6, result.stderr
        assert "already running" in result.stderr and "catalog" in result.stderr
    finally:
        held.release()


def test_workers_in_processes_and_a_run_killed_mid_ingest_resumes_rewriting_nothing_marked(
        s3_server, postgres_server, tmp_path):
    """--workers 2 (Luigi's worker processes, started by a fork server since the parent has
    used tensorstore), killed with SIGKILL once some blocks are marked; the rerun keeps every
    marked block as it was and finishes the volume bit-exact."""
    bucket, catalog = s3_server.new_bucket(), postgres_server.new_database()
    source = np.random.default_rng(5).integers(0, 256, (32, 512, 1024), dtype=np.uint8)
    image = write_h5(tmp_path / "big.h5", source)
    text = spec_text(image=image, store=f"s3://{bucket}/lab/vol", offset=(0, 0, 0),
                     ingest="block_chunks = [1, 1, 1]\nblocks_per_task = 4")
    text = text.replace(f'path = "s3://{bucket}/lab/vol"', f'path = "s3://{bucket}/lab/vol"\ncatalog = "{catalog}"')
    spec = tmp_path / "spec.toml"
    spec.write_text(text)
    written = f"lab/vol/_markers/{DATASET}/{PROJECT}/image/written/level0/"
    with open(tmp_path / "run1.err", "wb") as err:
        run = subprocess.Popen([NDINGEST, "ingest", str(spec), "--workers", "2"], stdout=subprocess.DEVNULL,
                               stderr=err, start_new_session=True)
    deadline = time.monotonic() + 120
    while len([k for k in s3_server.keys(bucket, written) if k.endswith(".json")]) < 12:
        assert run.poll() is None, (tmp_path / "run1.err").read_text()[-3000:]
        assert time.monotonic() < deadline, "no block was marked in 120 s"
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait(30)
    marked = {k: t for k, t in s3_server.stamps(bucket).items() if k.startswith(written) and k.endswith(".json")}
    assert 12 <= len(marked) < 64
    time.sleep(1.1)  # S3's times are to the second

    result = run_cli("ingest", str(spec), "--workers", "2")
    assert result.returncode == 0, result.stderr
    after = s3_server.stamps(bucket)
    assert {k: after[k] for k in marked} == marked  # the marked blocks were not written again
    assert len([k for k in after if k.startswith(written) and k.endswith(".json")]) == 64
    vol = cloudvolume(bucket, "image", 0)
    np.testing.assert_array_equal(np.asarray(vol[vol.bounds])[..., 0].transpose(2, 1, 0), source)
