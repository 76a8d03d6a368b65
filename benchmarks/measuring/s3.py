"""S3 for the benchmarks: moto's server (`moto_server`, started by the benchmark on
127.0.0.1, its request log kept), the environment its children need, the requests a run
made (counted in moto's log), and (`step_objects`, in a child with boto3) the objects a
run wrote under a prefix, counted by kind, then deleted."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from measuring import BIN, Measured, measure_synced
from measuring.stores import kind_of, layout_of, written_from

HOST = "127.0.0.1"
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # werkzeug colours the line of every status but 200
REQUEST = re.compile(r'"(GET|PUT|POST|DELETE|HEAD) ')
METHODS = ("PUT", "GET", "HEAD", "POST", "DELETE")


def moto_server_bin() -> str | None:
    found = BIN / "moto_server"
    return str(found) if found.exists() else shutil.which("moto_server")


@dataclass
class Moto:
    """moto's S3 server on 127.0.0.1 (as tests/s3.py starts it). werkzeug logs one line per
    request to its stderr, kept in `log`; a run's requests are the lines logged meanwhile."""

    proc: subprocess.Popen
    port: int
    log: Path

    @classmethod
    def launch(cls, workdir: Path) -> "Moto":
        """Start it; it takes a few seconds to listen (`wait_ready`), meanwhile the local steps run."""
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        spool = workdir / "moto-tmp"  # where moto spills objects over 5 MiB (shard files): removed with workdir
        spool.mkdir()
        log = workdir / "moto.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([moto_server_bin(), "-H", HOST, "-p", str(port)], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, "TMPDIR": str(spool)})
        return cls(proc, port, log)

    def create_bucket(self, bucket: str, timeout: float = 30.0) -> None:
        """Make `bucket` once moto answers: a plain, unsigned `PUT /bucket` (moto checks no
        signature), so the parent needs no boto3 and no child to wait for it."""
        request = (f"PUT /{bucket} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
                   f"Content-Length: 0\r\nConnection: close\r\n\r\n")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((HOST, self.port), timeout=5) as conn:
                    conn.sendall(request.encode())
                    answer = conn.recv(4096).decode(errors="replace")
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"moto_server did not start:\n{self.log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.1)
        if not answer.startswith("HTTP/1.1 200"):
            sys.exit(f"moto_server: cannot make bucket {bucket}: {answer[:500]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @property
    def env(self) -> dict[str, str]:
        """What the children need to reach it (tensorstore's s3 kvstore, boto3)."""
        return {"AWS_ENDPOINT_URL": f"http://{HOST}:{self.port}", "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}

    def log_size(self) -> int:
        """The log's length once it stops growing (moto logs a request as it answers it)."""
        size = self.log.stat().st_size
        while True:
            time.sleep(0.05)
            now = self.log.stat().st_size
            if now == size:
                return size
            size = now

    def requests_since(self, offset: int) -> dict[str, int]:
        """Request lines logged after `offset`, by method."""
        end = self.log_size()
        with open(self.log, "rb") as f:
            f.seek(offset)
            text = ANSI.sub("", f.read(end - offset).decode(errors="replace"))
        found = REQUEST.findall(text)
        return {m: found.count(m) for m in METHODS}


@contextmanager
def environment(values: dict[str, str]):
    """`values` in os.environ, so the children started meanwhile inherit them; then as before."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def s3_client():
    import boto3

    return boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name=os.environ["AWS_REGION"],
                        aws_access_key_id=os.environ["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=os.environ["AWS_SECRET_ACCESS_KEY"])


def step_objects(urls: str, *, delete: bool) -> None:
    """Count, with boto3, the objects under each s3://bucket/prefix of comma-separated `urls`
    by kind (`Written`), read the layout from the `info` among them, and with `delete` remove
    them all (moto keeps objects in memory or its spool folder: a GiB a run)."""
    client = s3_client()
    found = []
    for url in urls.split(","):
        bucket, prefix = url.removeprefix("s3://").split("/", 1)
        keys, token = [], None
        while True:
            page = client.list_objects_v2(Bucket=bucket, Prefix=prefix + "/",
                                          **({"ContinuationToken": token} if token else {}))
            keys += [o["Key"] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                break
            token = page["NextContinuationToken"]
        relative = [tuple(k[len(prefix) + 1:].split("/")) for k in keys]
        infos = [k for k, parts in zip(keys, relative) if kind_of(parts) == "other" and parts[-1] == "info"]
        layout = layout_of(json.loads(client.get_object(Bucket=bucket, Key=infos[0])["Body"].read())) if infos else None
        found.append(asdict(written_from(relative, layout)))
        if delete:
            for start in range(0, len(keys), 1000):
                client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in keys[start:start + 1000]],
                                                             "Quiet": True})
    print(json.dumps(found))


def measure_requests(moto: Moto, argv: list[str], cwd: Path) -> tuple[Measured, dict[str, int]]:
    start = moto.log_size()
    measured = measure_synced(argv, cwd)
    return measured, moto.requests_since(start)
