"""moto's S3-compatible server on 127.0.0.1, started by the tests themselves (`moto[server]`).

One server per test session; each test that needs a bucket makes its own. The usual
variables (`AWS_ENDPOINT_URL`, keys, region) point at it for the whole session, so the
CLI's subprocesses inherit them."""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT = 30.0


@dataclass
class S3Server:
    endpoint: str
    proc: subprocess.Popen
    log: Path | None = None  # moto's output: a line per request it answered

    def requests_since(self, mark: int, contains: str) -> int:
        """Requests logged after line `mark` (`len(self.lines())` taken before) whose line holds `contains`."""
        return sum(contains in line for line in self.lines()[mark:])

    def lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines() if self.log else []

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def new_bucket(self, stem: str = "ndingest") -> str:
        name = f"{stem}-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under `prefix`, read by boto3 (not by ndingest)."""
        out, token = [], None
        while True:
            page = self.client().list_objects_v2(Bucket=bucket, Prefix=prefix,
                                                 **({"ContinuationToken": token} if token else {}))
            out += [o["Key"] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]


    def stamps(self, bucket: str) -> dict[str, str]:
        """Every object's key and last-modified time: what a rerun must leave alone."""
        out, token = {}, None
        while True:
            page = self.client().list_objects_v2(Bucket=bucket, **({"ContinuationToken": token} if token else {}))
            out.update({o["Key"]: str(o["LastModified"]) for o in page.get("Contents", [])})
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]


def moto_server_bin() -> str | None:
    found = Path(sys.executable).parent / "moto_server"
    return str(found) if found.exists() else shutil.which("moto_server")


def start(log: Path) -> S3Server:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    with open(log, "wb") as out:
        proc = subprocess.Popen([moto_server_bin(), "-H", HOST, "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://{HOST}:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
    return S3Server(endpoint, proc, log)


ENV = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_SESSION_TOKEN")


def point_env_at(server: S3Server) -> dict:
    """Set the usual variables to `server`; returns what they were."""
    before = {k: os.environ.get(k) for k in ENV}
    os.environ.update({"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                       "AWS_SESSION_TOKEN": ""})  # CloudFiles reads it whenever a key id is set
    return before


def restore_env(before: dict) -> None:
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
