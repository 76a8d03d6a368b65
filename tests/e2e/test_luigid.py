"""A real luigid on 127.0.0.1: the ingest runs through it and reports per-task progress."""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import NDINGEST, REPO, run_cli, run_in_terminal, wait_for_markers, write_h5, write_spec
from ndingest.sample import ANNOTATION_FILE, IMAGE_FILE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_luigid(luigid_bin: Path, config: Path, folder: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """luigid as the README starts it (state file, log folder), on 127.0.0.1, once it answers."""
    port = port or free_port()
    (folder / "luigid-log").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [str(luigid_bin), "--address", "127.0.0.1", "--port", str(port),
         "--state-path", str(folder / "luigid.state"), "--logdir", str(folder / "luigid-log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "LUIGI_CONFIG_PATH": str(config)})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(f"{url}/api/task_list", params={"data": "{}"}, timeout=1)
            return proc, url
        except requests.ConnectionError:
            assert proc.poll() is None and time.monotonic() < deadline, "luigid did not start"
            time.sleep(0.1)


def shipped_config_with(folder: Path, **scheduler: float) -> Path:
    """configs/luigi.cfg as shipped, with the given [scheduler] values changed (a test
    proves what ndingest does, never how long luigid's own timers take)."""
    text = (REPO / "configs/luigi.cfg").read_text()
    for key, value in scheduler.items():
        text, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, flags=re.M)
        assert n == 1, key
    config = folder / "luigi-test.cfg"
    config.write_text(text)
    return config


@pytest.fixture
def luigid(tmp_path):
    """luigid from the project's environment, with the shipped configs/luigi.cfg."""
    proc, url = start_luigid(Path(sys.executable).parent / "luigid", REPO / "configs/luigi.cfg", tmp_path)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def task_list(url: str, status: str) -> dict:
    data = json.dumps({"status": status, "upstream_status": "", "search": ""})
    return requests.get(f"{url}/api/task_list", params={"data": data}, timeout=5).json()["response"]


def test_ingest_through_luigid_reports_progress_and_status_per_task(tmp_path, tutorial_data, luigid):
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE, annotation=tutorial_data / ANNOTATION_FILE,
                      ingest="block_chunks = [1, 1, 4]\nblocks_per_task = 5")
    result = run_cli("ingest", str(spec), "--scheduler-url", luigid)
    assert result.returncode == 0, result.stderr
    done = task_list(luigid, "DONE")
    families = sorted({t["name"] for t in done.values()})
    assert families == ["CreateChannels", "CreateDataset", "CreateProject", "IngestBlock", "Inspect", "Verify"]
    tasks = [t for t in done.values() if t["name"] == "IngestBlock"]
    assert len(tasks) == 2 * 5  # 3 x 2 x 4 = 24 blocks of 128x128x64 per channel, 5 per task
    for task in tasks:
        assert task["progress_percentage"] == 100
        assert task["status_message"].endswith("blocks written")
    verify = next(t for t in done.values() if t["name"] == "Verify")
    assert verify["status_message"] == "48/48 blocks verified"


def blocks_written(log: str, family: str) -> list[int]:
    """What each `family` task run of a worker's log says it wrote ("...: wrote N blocks")."""
    return [int(n) for n in re.findall(rf"{family}_\S+: wrote (\d+) blocks", log)]


def test_concurrent_runs_share_the_tasks_and_write_each_block_once(tmp_path, luigid):
    """Three runs, two of them "other hosts" with their own copy of the spec in a folder of
    their own (tasks are known by the spec's content and store, not its path)."""
    # 1024 x 1024 x 96 uint8 in 128 x 128 x 16 blocks: 384 blocks in 96 tasks, some seconds of work for
    # one run, so the others (started at the same time, polling luigid every 1-2 s) join in
    source = write_h5(tmp_path / "big.h5", np.random.default_rng(0).integers(0, 256, (96, 1024, 1024), dtype=np.uint8))
    spec = write_spec(tmp_path, image=source, ingest="block_chunks = [1, 1, 1]\nblocks_per_task = 4",
                      store=str(tmp_path / "store"))
    copies = [write_spec(tmp_path / f"host{i}", name=f"copy{i}.toml", image=source, store=str(tmp_path / "store"),
                         ingest="block_chunks = [1, 1, 1]\nblocks_per_task = 4") for i in (1, 2)]
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(REPO / "configs/luigi.cfg")}
    runs = []
    for i, (path, extra) in enumerate(((spec, []), (copies[0], ["--workers", "2"]), (copies[1], []))):
        out, err = (open(tmp_path / f"run{i}.{kind}", "w+") for kind in ("out", "err"))  # pipes would fill up
        runs.append((subprocess.Popen([NDINGEST, "ingest", str(path), "--scheduler-url", luigid, "--debug", *extra],
                                      stdout=out, stderr=err, text=True, env=env, cwd=path.parent), out, err))
    logs = []
    for run, out_file, err_file in runs:
        run.wait(timeout=600)
        out, err = (f.seek(0) or f.read() for f in (out_file, err_file))
        out_file.close(), err_file.close()
        assert run.returncode == 0, err[-3000:]
        # each returns only once the whole ingest is verified, not when it ran out of tasks to take
        assert "verified" in out and "done in" in out, out
        logs.append(err)
    status = json.loads(subprocess.run([NDINGEST, "status", str(spec), "--json"], capture_output=True,
                                       text=True, check=True).stdout)["channels"]
    for channel in status.values():
        assert channel["done"] == channel["total"] == channel["verified"] > 0
    # Luigi may hand a finished task out again (a run that saw it pending re-adds it), but
    # that run finds every block marked: each block is written exactly once, by some run.
    written = [blocks_written(log, "IngestBlock") for log in logs]
    assert sum(map(sum, written)) == 384, written
    assert sum(1 for w in written if sum(w) > 0) > 1, written  # shared, not run by one alone
    writers = {json.loads(m.read_text())["pid"] for m in (tmp_path / "store/_markers").rglob("written/**/*.json")}
    assert len(writers) > 1
    done = task_list(luigid, "DONE")  # one task per task in luigid, whichever copy of the spec added it
    assert sum(1 for name in done if name.startswith("IngestBlock_")) == 96, sorted(done)[:5]
    assert sum(1 for name in done if name.startswith("Verify_")) == 1


def test_terminal_shows_a_progress_bar_with_rate_and_eta(tmp_path, tutorial_data):
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE, ingest="block_chunks = [1, 1, 1]")
    code, text = run_in_terminal("ingest", str(spec))
    assert code == 0, text
    assert "write+verify" in text and "156/156" in text  # 78 blocks written + 78 verified
    assert "block/s" in text or "s/block" in text  # the rate
    assert "<" in text  # tqdm's "elapsed<remaining" ETA


@pytest.fixture(scope="module")
def history_luigid_bin(tmp_path_factory) -> Path:
    """luigid in its own environment with SQLAlchemy 1.4, as the README sets it up for task history."""
    venv = tmp_path_factory.mktemp("luigid-venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin/pip"), "install", "-q", "luigi>=3.5", "sqlalchemy>=1.4,<2"], check=True,
                   capture_output=True)
    return venv / "bin/luigid"


def test_luigid_with_task_history_records_every_task_of_an_ingest(tmp_path, tutorial_data, history_luigid_bin):
    config = tmp_path / "luigi.cfg"  # configs/luigi.cfg with history on, as the README says
    history = tmp_path / "luigi-task-history.db"
    shipped = (REPO / "configs/luigi.cfg").read_text()
    assert "record_task_history = false" in shipped
    config.write_text(shipped.replace("record_task_history = false", "record_task_history = true")
                      + f"\n[task_history]\ndb_connection = sqlite:///{history}\n")
    proc, url = start_luigid(history_luigid_bin, config, tmp_path)
    try:
        spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE, annotation=tutorial_data / ANNOTATION_FILE)
        result = run_cli("ingest", str(spec), "--scheduler-url", url)
        assert result.returncode == 0, result.stderr
        page = requests.get(f"{url}/history", timeout=5)
        assert page.status_code == 200 and "IngestBlock" in page.text
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    with sqlite3.connect(history) as db:
        done = dict(db.execute("SELECT t.name, count(*) FROM tasks t JOIN task_events e ON e.task_id = t.id "
                               "WHERE e.event_name = 'DONE' GROUP BY t.name").fetchall())
    assert done == {"Inspect": 1, "CreateDataset": 1, "CreateProject": 1, "CreateChannels": 1, "IngestBlock": 2,
                    "Verify": 1}


def test_the_shipped_luigi_cfg_hands_a_dead_runs_task_out_again_within_a_minute():
    """A task held by a dead run is failed once its worker has been silent for
    worker_disconnect_delay, checked at every get_work (prune_on_get_work), and handed out
    again after retry_delay: the settings, not luigid's 60 s prune ticks, bound the wait."""
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO / "configs/luigi.cfg")
    scheduler = config["scheduler"]
    assert scheduler.getboolean("prune_on_get_work")
    assert scheduler.getfloat("worker_disconnect_delay") + scheduler.getfloat("retry_delay") < 60
    assert scheduler.getint("retry_count") >= 1


def test_after_a_crash_of_run_and_luigid_the_rerun_finishes(tmp_path):
    """The reboot story under luigid: the run is killed mid-task, luigid stops (its state
    file still shows that task running), luigid comes back, the same command finishes.
    The shipped settings with luigid's two delays cut from 20 s to 2 s (the test above
    holds the shipped values to their bound)."""
    source = write_h5(tmp_path / "big.h5", np.random.default_rng(1).integers(0, 256, (128, 1024, 1024), dtype=np.uint8))
    spec = write_spec(tmp_path, image=source, ingest="block_chunks = [1, 1, 1]\nblocks_per_task = 64")
    luigid_bin = Path(sys.executable).parent / "luigid"
    config = shipped_config_with(tmp_path, worker_disconnect_delay=2, retry_delay=2)
    proc, url = start_luigid(luigid_bin, config, tmp_path)
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(config)}
    run = subprocess.Popen([NDINGEST, "ingest", str(spec), "--scheduler-url", url], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_markers(tmp_path, run, at_least=70)  # past the first task of 64
    run.kill()
    run.wait()
    proc.terminate()  # luigid writes its state file on the way down
    proc.wait(timeout=10)
    assert (tmp_path / "luigid.state").exists()
    status = json.loads(run_cli("status", str(spec), "--json").stdout)["channels"]["image"]
    assert 0 < status["done"] < status["total"] == 512, status

    proc, url = start_luigid(luigid_bin, config, tmp_path, port=int(url.rsplit(":", 1)[1]))
    try:
        result = run_cli("ingest", str(spec), "--scheduler-url", url, env=env, timeout=300)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert result.returncode == 0, result.stderr
    assert "512/512 verified" in result.stdout


def test_a_finished_task_luigid_still_shows_running_for_a_dead_run_is_released(tmp_path, tutorial_data):
    """A reboot between a task's last marker and the run telling luigid: luigid (or its
    state file) keeps the finished task RUNNING under a dead worker, and ignores a new
    run's DONE for it. Luigi would fail it after the worker is pruned, then leave it pending
    with nobody to run it: the rerun waited for ever (CI, stop 12). It must finish at once:
    here luigid would prune the dead worker only after an hour, so the rerun finishes
    within its 120 s only if ndingest releases the task itself."""
    from luigi.rpc import RemoteScheduler
    from ndingest.plan import load_plan
    from ndingest.tasks import IngestBlock
    from ndingest.verify import report_dir

    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE)
    assert run_cli("ingest", str(spec)).returncode == 0
    (report_dir(load_plan(spec)) / "verify.csv").unlink()  # the run died before Verify
    task = IngestBlock(spec=str(spec), channel="image", index=0)
    assert task.complete()
    # what the dead run's worker last told luigid, word for word: it started the task
    config = shipped_config_with(tmp_path, worker_disconnect_delay=3600)
    proc, luigid = start_luigid(Path(sys.executable).parent / "luigid", config, tmp_path)
    try:
        RemoteScheduler(luigid).add_task(worker="Worker(salt=0, host=rebooted, pid=1)", task_id=task.task_id,
                                         status="RUNNING", family=task.task_family, params=task.to_str_params())
        result = run_cli("ingest", str(spec), "--scheduler-url", luigid, timeout=120,
                         env={"LUIGI_CONFIG_PATH": str(config)})  # keep_alive, as the README says
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert result.returncode == 0, result.stderr
    assert f"marked done: {task.task_id}" in result.stderr
    status = json.loads(run_cli("status", str(spec), "--json").stdout)["channels"]["image"]
    assert status["done"] == status["verified"] == status["total"] > 0, status
    assert (report_dir(load_plan(spec)) / "verify.csv").exists()


def test_an_unreachable_scheduler_is_one_line_and_exit_8_at_once(tmp_path, tutorial_data):
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = tmp_path / "luigi.cfg"  # Luigi's own retries would take hours: one try is ndingest's
    config.write_text((REPO / "configs/luigi.cfg").read_text().replace("[core]\n", "[core]\nrpc-retry-wait = 3600\n", 1))
    result = run_cli("ingest", str(spec), "--scheduler-url", url, timeout=120, env={"LUIGI_CONFIG_PATH": str(config)})
    assert result.returncode == 8, result.stderr
    assert result.stderr.strip() == (f"ndingest: error: --scheduler-url {url}: cannot reach luigid "
                                      f"(connection refused); start it, or run without --scheduler-url")
    assert not (tmp_path / "store").exists()  # nothing written


def test_losing_luigid_mid_run_is_exit_8_and_a_rerun_alone_finishes(tmp_path):
    source = write_h5(tmp_path / "big.h5", np.random.default_rng(2).integers(0, 256, (128, 1024, 1024), dtype=np.uint8))
    spec = write_spec(tmp_path, image=source, ingest="block_chunks = [1, 1, 1]\nblocks_per_task = 16")
    config = tmp_path / "luigi.cfg"  # the shipped settings, with Luigi's RPC retries cut to seconds
    config.write_text((REPO / "configs/luigi.cfg").read_text().replace("[core]\n", "[core]\nrpc-retry-attempts = 2\n"
                                                                        "rpc-retry-wait = 1\n", 1))
    proc, url = start_luigid(Path(sys.executable).parent / "luigid", config, tmp_path)
    env = {**os.environ, "LUIGI_CONFIG_PATH": str(config)}
    run = subprocess.Popen([NDINGEST, "ingest", str(spec), "--scheduler-url", url], env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_markers(tmp_path, run, at_least=20)
    proc.kill()
    proc.wait()
    _, err = run.communicate(timeout=120)
    assert run.returncode == 8, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"--scheduler-url {url}: lost luigid mid-run" in err and "rerun" in err

    result = run_cli("ingest", str(spec))  # the same store, alone: continues from the markers
    assert result.returncode == 0, result.stderr
    assert "512/512 verified" in result.stdout
