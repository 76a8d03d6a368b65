"""Two "hosts" under one luigid, writing one volume into a bucket with one PostgreSQL
catalog: separate working folders, each its own copy of the spec, no local file shared.
moto's S3 server, PostgreSQL and luigid all run on 127.0.0.1, started here.

luigid runs with the shipped settings but a short worker_disconnect_delay and retry_delay
(3 s and 1 s instead of 20 s and 20 s), so the task a killed host held is handed out again
within seconds rather than in 40."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psycopg

from conftest import NDINGEST, REPO, run_cli, spec_text, write_h5
from test_luigid import start_luigid, task_list
from test_s3_store import DATASET, cloudvolume

SHAPE = (32, 512, 1024)  # z, y, x: 64 blocks of one 128 x 128 x 16 chunk, 16 tasks of 4


def host_spec(folder: Path, image: Path, bucket: str, catalog: str) -> Path:
    text = spec_text(image=image, store=f"s3://{bucket}/lab/vol", offset=(0, 0, 0),
                     ingest="block_chunks = [1, 1, 1]\nblocks_per_task = 4")
    text = text.replace(f'path = "s3://{bucket}/lab/vol"', f'path = "s3://{bucket}/lab/vol"\ncatalog = "{catalog}"')
    folder.mkdir(parents=True)
    (folder / "spec.toml").write_text(text)
    return folder / "spec.toml"


def test_two_hosts_share_the_tasks_one_is_killed_the_other_finishes_and_a_third_sees_it_verified(
        tmp_path, s3_server, postgres_server):
    bucket, catalog = s3_server.new_bucket(), postgres_server.new_database()
    source = np.random.default_rng(7).integers(0, 256, SHAPE, dtype=np.uint8)
    image = write_h5(tmp_path / "shared-source" / "big.h5", source)  # the file server both hosts read
    config = tmp_path / "luigi.cfg"
    config.write_text((REPO / "configs/luigi.cfg").read_text()
                      .replace("worker_disconnect_delay = 20", "worker_disconnect_delay = 3")
                      .replace("retry_delay = 20", "retry_delay = 1"))
    (tmp_path / "luigid").mkdir()
    luigid, url = start_luigid(Path(sys.executable).parent / "luigid", config, tmp_path / "luigid")
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(config)}
    written = f"lab/vol/_markers/{DATASET}/kat11_scale3/image/written/level0/"
    try:
        hosts = []
        for name in ("host1", "host2"):
            spec = host_spec(tmp_path / name, image, bucket, catalog)
            err = open(tmp_path / name / "run.err", "wb")
            hosts.append(subprocess.Popen([NDINGEST, "ingest", str(spec), "--scheduler-url", url], cwd=spec.parent,
                                          env=env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True))
        deadline = time.monotonic() + 120
        while len([k for k in s3_server.keys(bucket, written) if k.endswith(".json")]) < 12:
            assert all(h.poll() is None for h in hosts), (tmp_path / "host1" / "run.err").read_text()[-2000:]
            assert time.monotonic() < deadline, "no block was marked in 120 s"
            time.sleep(0.2)
        os.killpg(hosts[0].pid, signal.SIGKILL)  # host1 dies mid-task
        hosts[0].wait(30)
        assert hosts[1].wait(240) == 0, (tmp_path / "host2" / "run.err").read_text()[-3000:]
        done = task_list(url, "DONE")
    finally:
        luigid.terminate()
        luigid.wait(10)
    assert sum(1 for name in done if name.startswith("IngestBlock_")) == 16  # one task each, whoever ran it
    assert sum(1 for name in done if name.startswith("Verify_")) == 1
    vol = cloudvolume(bucket, "image", 0)
    np.testing.assert_array_equal(np.asarray(vol[vol.bounds])[..., 0].transpose(2, 1, 0), source)
    with psycopg.connect(catalog) as conn:
        assert conn.execute("select dataset_name from datasets").fetchall() == [(DATASET,)]
    # a third host, with a copy of its own, sees every block verified
    third = host_spec(tmp_path / "host3", image, bucket, catalog)
    status = run_cli("status", str(third), "--json")
    assert status.returncode == 0, status.stderr
    image_status = json.loads(status.stdout)["channels"]["image"]
    assert image_status["done"] == image_status["verified"] == image_status["total"] == 64, image_status
    # the killed host, run again (no luigid now): nothing is missing, nothing is written
    before = s3_server.stamps(bucket)
    time.sleep(1.1)  # S3's times are to the second
    result = run_cli("ingest", str(tmp_path / "host1" / "spec.toml"))
    assert result.returncode == 0, result.stderr
    assert s3_server.stamps(bucket) == before
