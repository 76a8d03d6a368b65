"""Nothing outside the store is read on a request's behalf: auto-ingest jobs posted to a real
`ndingest serve` on 127.0.0.1, one server with no --allow-files or --fetch-from (`plain`) and
one with both (`allowing`), on one store; sources on an `http.server` thread on 127.0.0.1.
No other address is dialled: the private and link-local ranges are `test_fetchpolicy`'s, as
a unit, as are a slice file linking out of --allow-files and a virtual HDF5 dataset (the
same code in the test's process, under the policy a job gets)."""
from __future__ import annotations

import functools
import gzip
import http.server
import io
import json
import threading
import time
import zlib

import h5py
import numpy as np
import pytest
import requests

from ndingest.cli import main
from serving import HOST, serving

SHAPE = (4, 8, 8)  # z, y, x of every volume here: 256 voxels
SECRET = bytes(range(256))  # what no job may publish
BOMB = gzip.compress(b"\0" * (32 << 20), compresslevel=9)  # 32 MiB of zeros in about 32 KiB
POLL_TIMEOUT = 60.0


class Files(http.server.SimpleHTTPRequestHandler):
    """A folder over HTTP; any path under /bomb/ answers BOMB as Content-Encoding gzip."""

    def _bomb_headers(self) -> bool:
        if not self.path.startswith("/bomb/"):
            return False
        self.send_response(200)
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(BOMB)))
        self.end_headers()
        return True

    def do_HEAD(self):
        if not self._bomb_headers():
            super().do_HEAD()

    def do_GET(self):
        if self._bomb_headers():
            self.wfile.write(BOMB)
        else:
            super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def where(tmp_path_factory):
    """Folders: `allowed` (--allow-files), `outside` (the secret), `web` (served over HTTP)."""
    root = tmp_path_factory.mktemp("fetchsafe")
    folders = {name: root / name for name in ("allowed", "outside", "web", "store")}
    for folder in folders.values():
        folder.mkdir()
    (folders["outside"] / "secret.bin").write_bytes(SECRET)
    return folders


@pytest.fixture(scope="module")
def web(where):
    server = http.server.ThreadingHTTPServer((HOST, 0), functools.partial(Files, directory=str(where["web"])))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://{HOST}:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def plain(where):
    with serving(where["store"]) as server:
        yield server.url


@pytest.fixture(scope="module")
def allowing(where, plain):
    with serving(where["store"], args=("--allow-files", str(where["allowed"])),
                 env={"NDINGEST_FETCH_FROM": f"localhost, {HOST}"}) as server:
        yield server.url


def body(project: str, data_url: str, *, file_format: str = "HDF5", file_type: str = "h5") -> dict:
    return {"dataset": {"dataset_name": f"{project}_ds", "imagesize": [SHAPE[2], SHAPE[1], SHAPE[0]],
                        "voxelres": [4.0, 4.0, 40.0], "offset": [0, 0, 0], "scalinglevels": 0, "scaling": 0},
            "project": {"project_name": project, "token_name": project, "public": 1}, "metadata": "",
            "channels": {"em": {"channel_name": "em", "channel_type": "image", "datatype": "uint8",
                                "data_url": data_url, "file_format": file_format, "file_type": file_type}}}


def post(base: str, job: dict) -> requests.Response:
    return requests.post(f"{base}/nd/sd/autoIngest/", data=json.dumps(job), timeout=30)


def finished(base: str, project: str) -> dict:
    deadline = time.monotonic() + POLL_TIMEOUT
    while True:
        reply = requests.get(f"{base}/nd/sd/autoIngest/{project}/", timeout=30)
        assert reply.status_code == 200, reply.text
        if reply.json()["state"] != "running":
            return reply.json()
        assert time.monotonic() < deadline, reply.json()
        time.sleep(0.2)


def published(base: str, project: str) -> bool:
    return requests.get(f"{base}/nd/sd/{project}/info/", timeout=30).status_code != 404


def cutout(base: str, project: str) -> np.ndarray:
    z, y, x = SHAPE
    reply = requests.get(f"{base}/nd/sd/{project}/em/npz/0/0,{x}/0,{y}/0,{z}/", timeout=30)
    assert reply.status_code == 200, reply.text
    return np.load(io.BytesIO(zlib.decompress(reply.content)))[0]


def volume(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, SHAPE, dtype=np.uint8)


def external_h5(path, secret) -> None:
    """A CUTOUT whose voxels are `secret`'s bytes: HDF5 external storage."""
    with h5py.File(path, "w") as f:
        f.create_dataset("em/CUTOUT", shape=SHAPE, dtype=np.uint8, external=[(str(secret), 0, len(SECRET))])


# --- the jobs: posted all at once, so their subprocesses run side by side --------------------------
def make_sources(where, web: str) -> dict[str, tuple[str, dict]]:
    """{project: (the server that gets it, its body)}; each project's test checks its end."""
    with h5py.File(where["web"] / "loop.h5", "w") as f:
        f.create_dataset("em/CUTOUT", data=volume(4))
    with h5py.File(where["web"] / "big.h5", "w") as f:
        f.create_dataset("em/CUTOUT", data=volume(5))  # 256 bytes declared: the cap is 512 + 1 MiB
        f.create_dataset("padding", data=np.random.default_rng(6).integers(0, 256, 2 << 20, dtype=np.uint8))
    external_h5(where["web"] / "external.h5", where["outside"] / "secret.bin")
    return {
        "fs_loop_plain": ("plain", body("fs_loop_plain", f"{web}/loop.h5")),
        "fs_loop_allowed": ("allowing", body("fs_loop_allowed", f"{web}/loop.h5")),
        "fs_big": ("allowing", body("fs_big", f"{web}/big.h5")),
        "fs_bomb": ("allowing", body("fs_bomb", f"{web}/bomb", file_format="SLICE", file_type="tif")),
        "fs_external": ("allowing", body("fs_external", f"{web}/external.h5")),
    }


@pytest.fixture(scope="module")
def jobs(where, web, plain, allowing) -> dict[str, dict]:
    """{project: its final state} of every job of `make_sources`, each posted (200) to its server."""
    servers = {"plain": plain, "allowing": allowing}
    posted = make_sources(where, web)
    for project, (server, job) in posted.items():
        reply = post(servers[server], job)
        assert reply.status_code == 200, (project, reply.text)
    return {project: finished(servers[server], project) for project, (server, _) in posted.items()}


def assert_failed(jobs: dict, base: str, project: str, line: str) -> None:
    state = jobs[project]
    assert state["state"] == "failed" and line in state["message"], state
    assert not published(base, project)


# --- file:// --------------------------------------------------------------------------------------
def test_a_file_url_outside_allow_files_is_400_naming_it_and_nothing_is_served(where, plain, allowing):
    secret = where["outside"] / "secret.h5"
    with h5py.File(secret, "w") as f:
        f.create_dataset("em/CUTOUT", data=np.frombuffer(SECRET, np.uint8).reshape(SHAPE))
    (where["allowed"] / "link.h5").symlink_to(secret)
    cases = [(plain, "fs_file_plain", secret.as_uri()), (allowing, "fs_file_out", secret.as_uri()),
             (allowing, "fs_file_link", (where["allowed"] / "link.h5").as_uri()),
             (allowing, "fs_file_dots", (where["allowed"].as_uri() + "/../outside/secret.h5")),
             (allowing, "fs_file_nul", (where["allowed"].as_uri() + "/a%00b.h5"))]
    for base, project, url in cases:
        reply = post(base, body(project, url))
        assert reply.status_code == 400, (url, reply.text)
        assert reply.text.count("\n") == 1 and reply.text.startswith("autoIngest: channels.em.data_url"), reply.text
        assert url in reply.text and "--allow-files" in reply.text, reply.text
        assert requests.get(f"{base}/nd/sd/autoIngest/{project}/", timeout=30).status_code == 404
        assert not published(base, project)


# --- addresses and caps ---------------------------------------------------------------------------
def test_an_http_job_from_loopback_fails_without_fetch_from_and_runs_with_it(jobs, web, plain, allowing):
    assert_failed(jobs, plain, "fs_loop_plain", f"{web}/loop.h5: 127.0.0.1:")
    assert "is 127.0.0.1, a loopback address" in jobs["fs_loop_plain"]["message"]
    assert jobs["fs_loop_allowed"]["state"] == "done", jobs["fs_loop_allowed"]
    assert np.array_equal(cutout(allowing, "fs_loop_allowed"), volume(4))


def test_a_download_over_its_cap_fails_naming_the_url_and_nothing_is_published(jobs, web, allowing):
    assert_failed(jobs, allowing, "fs_big", f"{web}/big.h5: the answer holds more than 1,049,088 bytes (decoded)")


def test_a_gzip_bomb_slice_fails_at_its_cap(jobs, web, allowing):
    # a page of 8 x 8 uint8: 2 x 64 + 1 MiB, counted as the body inflates
    assert_failed(jobs, allowing, "fs_bomb",
                  f"{web}/bomb/fs_bomb/em/0000.tif: the answer holds more than 1,048,704 bytes (decoded)")


# --- HDF5 stored in other files -------------------------------------------------------------------
def test_an_external_storage_hdf5_fails_naming_the_dataset_and_nothing_of_the_secret_is_served(jobs, allowing):
    assert_failed(jobs, allowing, "fs_external", "/em/CUTOUT: its voxels are stored in other files")
    assert requests.get(f"{allowing}/nd/sd/fs_external/em/npz/0/0,8/0,8/0,4/", timeout=30).status_code == 404


def test_inspect_reads_an_external_storage_hdf5_and_names_the_file_it_points_at(where, capsys):
    source = where["allowed"] / "external.h5"
    external_h5(source, where["outside"] / "secret.bin")
    assert main(["inspect", str(source), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["x_size"] == SHAPE[2]  # from the CLI, still readable
    assert f"{source}:/em/CUTOUT reads its voxels from other files: {where['outside'] / 'secret.bin'}" in err
