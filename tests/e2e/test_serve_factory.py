"""`uvicorn ndingest.server:app_from_env --factory --workers 2`, the supported way to run a
shared server with several worker processes: the store and keys come from the environment."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import requests

from serving import HOST, Server, free_port

KEY = "factory-test-key"


def start_uvicorn(env: dict, log_path) -> Server:
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "ndingest.server:app_from_env", "--factory",
                                 "--workers", "2", "--host", HOST, "--port", str(port), "--log-level", "warning"],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    return Server(f"http://{HOST}:{port}", port, proc, log_path)


def wait_for(server: Server) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"{server.url}/nd/sd/public_tokens/", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        assert server.proc.poll() is None and time.monotonic() < deadline, server.log()
        time.sleep(0.1)


def test_the_factory_serves_the_store_and_keys_named_by_the_environment(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# the lab's key\n{KEY}\n")
    server = start_uvicorn({"NDINGEST_STORE": str(store), "NDINGEST_API_KEYS": str(keys)}, tmp_path / "uvicorn.log")
    try:
        wait_for(server)
        dataset = {"ximagesize": 64, "yimagesize": 64, "zimagesize": 16, "xvoxelres": 4.0, "yvoxelres": 4.0,
                   "zvoxelres": 40.0, "scalingoption": 0, "scalinglevels": 0, "public": 1}
        url = f"{server.url}/nd/resource/dataset/factory_ds/"
        assert requests.post(url, json=dataset, timeout=30).status_code == 401
        reply = requests.post(url, json=dataset, headers={"Authorization": f"Token {KEY}"}, timeout=30)
        assert reply.status_code == 201, reply.text
        assert (store / "catalog.sqlite").exists()
        assert requests.get(url, timeout=30).json()["ximagesize"] == 64
    finally:
        server.stop()


def test_without_ndingest_store_the_factory_refuses_to_start_naming_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NDINGEST_STORE"}
    proc = subprocess.run([sys.executable, "-m", "uvicorn", "ndingest.server:app_from_env", "--factory", "--host", HOST,
                           "--port", str(free_port())], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode != 0
    assert "NDINGEST_STORE" in proc.stderr, proc.stderr[-2000:]
