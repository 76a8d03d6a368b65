"""A real `ndingest serve` process on 127.0.0.1 for the server's end-to-end tests.

    with serving(store) as server:            # or serving(store, api_keys=FILE)
        requests.get(f"{server.url}/nd/sd/public_tokens/")

It binds a free port on 127.0.0.1 (never another address), waits until the server
answers, and stops it (SIGTERM, then SIGKILL) on the way out. `server.log()` is what the
process wrote to stderr, for assertion messages.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

NDINGEST = str(Path(sys.executable).parent / "ndingest")
HOST = "127.0.0.1"
START_TIMEOUT = 30.0  # s; a server answers in about 1 s


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """One running `ndingest serve`: its base URL (no trailing slash), process and log file."""

    url: str
    port: int
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)

    def kill(self) -> None:
        """Stop it at once, as a crash would (SIGKILL)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            reply.read()
        return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
        return False


def start_server(store: Path, *, api_keys: Path | None = None, port: int | None = None,
                 args: tuple[str, ...] = (), env: dict | None = None, log_dir: Path | None = None) -> Server:
    """Start `ndingest serve --store STORE` on 127.0.0.1 and wait until it answers."""
    port = port or free_port()
    log_path = Path(log_dir or store.parent) / f"serve-{port}.log"
    command = [NDINGEST, "serve", "--store", str(store), "--host", HOST, "--port", str(port), *args]
    if api_keys is not None:
        command += ["--api-keys", str(api_keys)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    server = Server(f"http://{HOST}:{port}", port, proc, log_path)
    deadline = time.monotonic() + START_TIMEOUT
    while not _answers(f"{server.url}/nd/sd/public_tokens/"):
        if proc.poll() is not None:
            raise RuntimeError(f"ndingest serve exited with {proc.returncode}: {server.log()}")
        if time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"ndingest serve did not answer within {START_TIMEOUT:.0f} s: {server.log()}")
        time.sleep(0.05)
    return server


@contextlib.contextmanager
def serving(store: Path, **kwargs) -> Iterator[Server]:
    """A running server on `store` for the length of the block (see `start_server`)."""
    server = start_server(store, **kwargs)
    try:
        yield server
    finally:
        server.stop()


# --- stores to serve ----------------------------------------------------------------------------
TUTORIAL = ("neurostorm_kat11_scale3", "kat11_scale3")   # dataset, project (= token)
TIMESERIES = ("ts_dataset", "ts_project", "ts_private")  # dataset, project, token (private)
TS_OFFSET = (10, 20, 30)                                 # x, y, z
TS_SHAPE = (3, 20, 40, 50)                               # t, z, y, x


def timeseries_spec(folder: Path) -> tuple[Path, np.ndarray]:
    """A private dataset and token: a time-series channel `frames` (uint16, 3 time points) in `folder`/store."""
    from conftest import write_h5

    data = np.random.default_rng(17).integers(0, 4000, TS_SHAPE, dtype=np.uint16)
    source = write_h5(folder / "frames.h5", data, "frames/CUTOUT")
    spec = folder / "timeseries.toml"
    spec.write_text(f"""
[dataset]
name = "{TIMESERIES[0]}"
offset = [{TS_OFFSET[0]}, {TS_OFFSET[1]}, {TS_OFFSET[2]}]
voxel_resolution = [4.0, 4.0, 40.0]
scaling_option = "zslices"
scaling_levels = 0
public = false

[project]
name = "{TIMESERIES[1]}"
token = "{TIMESERIES[2]}"
public = false

[channels.frames]
type = "timeseries"
source = "{source}"

[store]
path = "store"
""")
    return spec, data


def ingest_store(folder: Path, tutorial_data: Path, *, levels: int = 0, timeseries: bool = False) -> dict:
    """The tutorial's two channels (with `levels` levels above 0), and optionally the private
    time series, ingested by the CLI into `folder`/store: {"store", "spec", "ts_spec", "ts_data"}."""
    from conftest import run_cli, spec_text
    from ndingest.sample import ANNOTATION_FILE, IMAGE_FILE

    folder.mkdir(parents=True, exist_ok=True)
    spec = folder / "tutorial.toml"
    spec.write_text(spec_text(image=tutorial_data / IMAGE_FILE, annotation=tutorial_data / ANNOTATION_FILE)
                    .replace("scaling_levels = 0", f"scaling_levels = {levels}"))
    out = {"store": folder / "store", "spec": spec}
    specs = [spec]
    if timeseries:
        out["ts_spec"], out["ts_data"] = timeseries_spec(folder)
        specs.append(out["ts_spec"])
    for s in specs:
        result = run_cli("ingest", str(s))
        assert result.returncode == 0, result.stderr
    return out
