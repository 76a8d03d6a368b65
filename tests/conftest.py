"""Shared fixtures: generated sources, spec files and a CLI runner (a real subprocess)."""
from __future__ import annotations

import atexit
import os
import pty
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest

from ndingest.sample import ANNOTATION_FILE, IMAGE_FILE, write_sample

NDINGEST = str(Path(sys.executable).parent / "ndingest")
LUIGI = str(Path(sys.executable).parent / "luigi")
REPO = Path(__file__).resolve().parent.parent
# slices read by URL are staged here, not in the machine's temp folder; every process the
# tests start (CLI, servers, their ingest jobs) inherits it
SLICE_CACHE = Path(tempfile.mkdtemp(prefix="ndingest-test-slices-"))
os.environ["NDINGEST_SLICE_CACHE"] = str(SLICE_CACHE)
atexit.register(shutil.rmtree, SLICE_CACHE, True)  # in pytest-xdist's controller and workers alike


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> Run:
    """`ndingest ARGS` as a user runs it, in its own process."""
    proc = subprocess.run([NDINGEST, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    return Run(proc.returncode, proc.stdout, proc.stderr)


def run_in_terminal(*args: str) -> tuple[int, str]:
    """`ndingest ARGS` with a terminal as its stdout and stderr, as a user sees it."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(NDINGEST, [NDINGEST, *args])
    output = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def spec_text(*, image: Path | str, annotation: Path | str | None = None, store: str = "store",
              dataset: str = "neurostorm_kat11_scale3", project: str = "kat11_scale3",
              offset=(1000, 2000, 1000), resolution=(32.0, 32.0, 40.0), image_type: str = "image",
              extra_dataset: str = "", ingest: str = "", image_extra: str = "") -> str:
    text = f"""
[dataset]
name = "{dataset}"
offset = [{offset[0]}, {offset[1]}, {offset[2]}]
voxel_resolution = [{resolution[0]}, {resolution[1]}, {resolution[2]}]
scaling_option = "zslices"
scaling_levels = 0
{extra_dataset}

[project]
name = "{project}"
token = "{project}"
public = true

[channels.image]
type = "{image_type}"
source = "{image}"
{image_extra}
"""
    if annotation is not None:
        text += f"""
[channels.annotation]
type = "annotation"
source = "{annotation}"
"""
    text += f'\n[store]\npath = "{store}"\n'
    if ingest:
        text += f"\n[ingest]\n{ingest}\n"
    return text


def write_spec(folder: Path, name: str = "spec.toml", **kwargs) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(spec_text(**kwargs))
    return path


@pytest.fixture(scope="session")
def tutorial_data(tmp_path_factory) -> Path:
    """The tutorial's two cutouts, written once by `ndingest sample`'s code."""
    folder = tmp_path_factory.mktemp("tutorial-data")
    write_sample(folder)
    return folder


def ingest_tutorial(folder: Path, data: Path) -> tuple[Path, Run]:
    """Both tutorial channels ingested into `folder`/store by the CLI: (spec, the run)."""
    spec = write_spec(folder, image=data / IMAGE_FILE, annotation=data / ANNOTATION_FILE)
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr
    return spec, result


@pytest.fixture
def tutorial_spec(tmp_path, tutorial_data) -> Path:
    return write_spec(tmp_path, image=tutorial_data / IMAGE_FILE, annotation=tutorial_data / ANNOTATION_FILE)


def read_cutout(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        group = next(iter(f))
        return f[group]["CUTOUT"][()]


def written_markers(folder: Path, level: int = 0) -> list[Path]:
    root = folder / "store/_markers"
    return list(root.rglob(f"written/level{level}/*/*.json")) if root.exists() else []


def wait_for_markers(folder: Path, proc: subprocess.Popen, at_least: int = 1, level: int = 0,
                     timeout: float = 120) -> None:
    """Until the running ingest `proc` has marked `at_least` blocks of `level` (to kill it mid-run)."""
    deadline = time.monotonic() + timeout
    while len(written_markers(folder, level)) < at_least:
        assert proc.poll() is None, f"ingest ended before it could be interrupted: {proc.communicate()}"
        assert time.monotonic() < deadline, "no block was written in time"
        time.sleep(0.005)


def write_h5(path: Path, data: np.ndarray, dataset: str = "image/CUTOUT") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset(dataset, data=data, chunks=True, compression="gzip")
    return path


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime_ns) of every file under `folder`: what a rerun must not touch."""
    out = {}
    for p in folder.rglob("*"):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(folder))] = (st.st_ino, st.st_mtime_ns)
    return out


@pytest.fixture(scope="session")
def postgres_server():
    """One throwaway PostgreSQL server for the session (tests/postgres.py); skipped, with how
    to get one, where none can run."""
    import postgres

    reason = postgres.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    server = postgres.start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A plain postgresql:// URL of a new empty database, one per test."""
    return postgres_server.new_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_catalog_url(request, tmp_path) -> str:
    """A catalog URL on each engine: a new SQLite file, then a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.sqlite'}"
    return request.getfixturevalue("postgres_url")


def pytest_collection_modifyitems(config, items):
    """Where no PostgreSQL can run, its tests are skipped by a mark, so `-ra` folds them
    into one line per file saying how to get it."""
    import postgres

    reason = postgres.unavailable_reason()
    if reason is None:
        return
    for item in items:
        params = getattr(item, "callspec", None)
        if "postgres_server" in item.fixturenames or (params and params.params.get("any_catalog_url") == "postgresql"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3-compatible server on 127.0.0.1 for the session, the usual AWS variables
    pointing at it (the CLI's subprocesses inherit them); each test makes its own bucket."""
    import s3

    if s3.moto_server_bin() is None:
        pytest.skip("moto's S3 server is not installed: pip install 'moto[server]'")
    server = s3.start(tmp_path_factory.mktemp("moto") / "moto.log")
    before = s3.point_env_at(server)
    try:
        yield server
    finally:
        s3.restore_env(before)
        server.proc.terminate()
        server.proc.wait(10)
