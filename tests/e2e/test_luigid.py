"""A real luigid on 127.0.0.1: the ingest runs through it and reports per-shard progress."""
from __future__ import annotations

import json
import os
import pty
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import requests

from conftest import NDINGEST, run_cli, write_spec
from ndingest.sample import ANNOTATION_FILE, IMAGE_FILE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def luigid(tmp_path):
    port = free_port()
    (tmp_path / "luigid-log").mkdir()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "luigid"), "--address", "127.0.0.1", "--port", str(port),
         "--state-path", str(tmp_path / "luigid.state"), "--logdir", str(tmp_path / "luigid-log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(f"{url}/api/task_list", params={"data": "{}"}, timeout=1)
            break
        except requests.ConnectionError:
            assert proc.poll() is None and time.monotonic() < deadline, "luigid did not start"
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def task_list(url: str, status: str) -> dict:
    data = json.dumps({"status": status, "upstream_status": "", "search": ""})
    return requests.get(f"{url}/api/task_list", params={"data": data}, timeout=5).json()["response"]


def test_ingest_through_luigid_reports_progress_and_status_per_shard(tmp_path, tutorial_data, luigid):
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE, annotation=tutorial_data / ANNOTATION_FILE,
                      ingest="block_chunks = [1, 1, 4]\nblocks_per_shard = 5")
    result = run_cli("ingest", str(spec), "--scheduler-url", luigid)
    assert result.returncode == 0, result.stderr
    done = task_list(luigid, "DONE")
    families = sorted({t["name"] for t in done.values()})
    assert families == ["CreateChannels", "CreateDataset", "CreateProject", "IngestBlock", "Inspect", "Verify"]
    shards = [t for t in done.values() if t["name"] == "IngestBlock"]
    assert len(shards) == 2 * 5  # 3 x 2 x 4 = 24 blocks of 128x128x64 per channel, 5 per shard
    for shard in shards:
        assert shard["progress_percentage"] == 100
        assert shard["status_message"].endswith("blocks written")
    verify = next(t for t in done.values() if t["name"] == "Verify")
    assert verify["status_message"] == "48/48 blocks verified"


def test_terminal_shows_a_progress_bar_with_rate_and_eta(tmp_path, tutorial_data):
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE, ingest="block_chunks = [1, 1, 1]")
    pid, fd = pty.fork()
    if pid == 0:  # the child runs ndingest with a terminal, as a user would
        os.execv(NDINGEST, [NDINGEST, "ingest", str(spec)])
    output = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    text = output.decode(errors="replace")
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert "write+verify" in text and "156/156" in text  # 78 blocks written + 78 verified
    assert "block/s" in text or "s/block" in text  # the rate
    assert "<" in text  # tqdm's "elapsed<remaining" ETA
