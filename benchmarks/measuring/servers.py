"""Servers the benchmarks start and talk to: `ndingest serve` on 127.0.0.1 (`Served`), a
server that does no work (`Canned`: bodies from memory, over HTTP and over a bare socket),
a throwaway PostgreSQL (as the tests start it); whole processes timed by wall clock; and
the URLs and decoders of the server's cutouts."""
from __future__ import annotations

import argparse
import io
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from measuring import NDINGEST, PYTHON

HOST = "127.0.0.1"
TOKEN = "serve_bench"  # serve.py's dataset, project and token


# --- the servers ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Served:
    """One `ndingest serve` process on 127.0.0.1; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, store: Path, log: Path, *args: str):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen([NDINGEST, "serve", "--store", str(store), "--host", HOST,
                                          "--port", str(self.port), *args], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"ndingest serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/nd/sd/public_tokens/", timeout=2) as reply:
                reply.read()
            return True
        except urllib.error.HTTPError:
            return True
        except OSError:
            return False

    def peak_rss_mib(self) -> float | None:
        """The server process's peak resident memory so far (Linux), None once it has ended."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
        except OSError:
            return None
        kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
        return None if kib is None else kib / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)


class Canned:
    """A server that does no work: `--step canned` in a process of its own, answering
    `GET /N` with the N-th body of `bodies` from memory in one write. What ndio's client
    gets from it is the most any server of this format can give that client. On
    `wire_port`, no HTTP: each 4-byte index read is answered with that body, bare.
    `script`: the benchmark whose `--step canned` calls `step_canned`."""

    def __init__(self, bodies: list[bytes], folder: Path, script: Path):
        folder.mkdir()
        for i, body in enumerate(bodies):
            (folder / str(i)).write_bytes(body)
        self.port, self.wire_port = free_port(), free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.proc = subprocess.Popen([PYTHON, str(script), "--step", "canned",
                                      "--bodies", str(folder), "--url", self.url, "--wire-port", str(self.wire_port)])
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                socket.create_connection((HOST, self.wire_port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    sys.exit("the canned-body server did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(15)


def step_canned(args: argparse.Namespace) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    folder = Path(args.bodies)
    bodies = {f"/{p.name}": p.read_bytes() for p in folder.iterdir()}

    def wire() -> None:
        listener = socket.create_server((HOST, args.wire_port))
        while True:
            conn, _ = listener.accept()
            with conn:
                while len(head := conn.recv(4, socket.MSG_WAITALL)) == 4:
                    conn.sendall(bodies[f"/{struct.unpack('<I', head)[0]}"])

    threading.Thread(target=wire, daemon=True).start()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn

        def do_GET(self) -> None:
            body = bodies[self.path]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args) -> None:
            pass

    port = int(args.url.rsplit(":", 1)[1])
    ThreadingHTTPServer((HOST, port), Handler).serve_forever()


def run_timed(argv: list[str], cwd: Path, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """A whole process's wall time (after a sync, so earlier writeback is not its cost)."""
    os.sync()
    started = time.perf_counter()
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - started, proc


def ingest_ok(argv: list[str], cwd: Path) -> float:
    seconds, proc = run_timed(argv, cwd)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout}{proc.stderr[-5000:]}")
    return seconds


def grid_boxes(shape_zyx: tuple[int, int, int], side: int) -> list:
    z, y, x = shape_zyx
    sz = min(side, z)
    return [((x0, x0 + side), (y0, y0 + side), (z0, z0 + sz))
            for z0 in range(0, z - sz + 1, sz) for y0 in range(0, y - side + 1, side)
            for x0 in range(0, x - side + 1, side)]


def cutout_url(base: str, channel: str, fmt: str, box) -> str:
    (x0, x1), (y0, y1), (z0, z1) = box
    return f"{base}/nd/sd/{TOKEN}/{channel}/{fmt}/0/{x0},{x1}/{y0},{y1}/{z0},{z1}/"


def decode(fmt: str, body: bytes, box):
    import blosc
    import numpy as np

    if fmt == "blosc":
        return blosc.unpack_array(body)[0]
    if fmt == "npz":
        return np.load(io.BytesIO(zlib.decompress(body)), allow_pickle=False)[0]
    (x0, x1), (y0, y1), (z0, z1) = box
    return np.frombuffer(body, dtype=np.uint8).reshape(z1 - z0, y1 - y0, x1 - x0)


def start_postgresql():
    """A throwaway PostgreSQL on 127.0.0.1, as the tests start it (tests/postgres.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
    import postgres

    reason = postgres.unavailable_reason()
    if reason:
        sys.exit(f"{reason} (or pass --no-postgresql)")
    return postgres.start_server()
