"""Slices read by URL pattern (`webslices`), from a real HTTP server on 127.0.0.1 that
counts requests and can answer 503 a given number of times first; pages written by
tifffile and PIL, the readers nobody here controls."""
from __future__ import annotations

import collections
import functools
import http.server
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from ndingest import webslices
from ndingest.blocks import Box, Vec3
from ndingest.cli import main
from ndingest.errors import SourceError, SpecError
from ndingest.spec import parse_spec
from ndingest.webslices import WebSliceSource

HOST = "127.0.0.1"
LOCK = threading.Lock()


class Handler(http.server.SimpleHTTPRequestHandler):
    """Files of `directory`; GETs counted per path; `fail[path]` 503s before the file."""

    gets: collections.Counter
    fail: dict

    def do_GET(self):
        self.gets[self.path] += 1
        if self.fail.get(self.path, 0) > 0:
            self.fail[self.path] -= 1
            self.send_error(503, "busy")
            return
        if self.fail.get(("cut", self.path), 0) > 0:  # headers promise more than the body holds
            self.fail[("cut", self.path)] -= 1
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"II*\x00" + bytes(100))
            self.close_connection = True
            return
        super().do_GET()

    def do_HEAD(self):
        self.gets["HEAD " + self.path] += 1
        if self.fail.get("no HEAD"):
            self.send_error(501, "HEAD not supported")
            return
        if self.fail.get("HEAD latency"):  # a far server: count the HEADs under way at once
            with LOCK:
                self.gets["HEADs now"] += 1
                self.gets["HEADs at once"] = max(self.gets["HEADs at once"], self.gets["HEADs now"])
            time.sleep(self.fail["HEAD latency"])
            with LOCK:
                self.gets["HEADs now"] -= 1
        super().do_HEAD()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """(base URL, folder, GET counter, fail table) of a threading HTTP server on 127.0.0.1."""
    folder = tmp_path / "files"
    folder.mkdir()
    gets, fail = collections.Counter(), {}
    handler = type("H", (Handler,), {"gets": gets, "fail": fail})
    httpd = http.server.ThreadingHTTPServer((HOST, 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://{HOST}:{httpd.server_address[1]}", folder, gets, fail
    httpd.shutdown()
    httpd.server_close()


def write_stack(folder: Path, data: np.ndarray, ext: str, first: int = 0, sub: str = "em") -> None:
    (folder / sub).mkdir(parents=True, exist_ok=True)
    for i, page in enumerate(data):
        path = folder / sub / f"{first + i:04d}.{ext}"
        Image.fromarray(page).save(path) if ext == "png" else tifffile.imwrite(path, page)


@pytest.mark.parametrize("ext, dtype", [("png", np.uint8), ("png", np.uint16), ("tif", np.uint16),
                                        ("tif", np.float32)])
def test_slices_over_http_read_as_the_pages_written(server, ext, dtype):
    base, folder, _, _ = server
    data = (np.random.default_rng(0).random((5, 33, 47)) * 60000).astype(dtype)
    write_stack(folder, data, ext, first=100)
    source = WebSliceSource(f"{base}/em/{{z:04d}}.{ext}", (100, 105))
    assert source.shape_tzyx == (1, 5, 33, 47) and source.dtype == np.dtype(dtype)
    assert np.array_equal(source.read(source.extent), data)
    box = Box(Vec3(3, 4, 1), Vec3(40, 30, 4))
    assert np.array_equal(source.read(box), data[1:4, 4:30, 3:40])


def test_blocks_of_one_slab_fetch_each_slice_once(server):
    base, folder, gets, _ = server
    data = np.random.default_rng(1).integers(0, 255, (4, 64, 64), dtype=np.uint8)
    write_stack(folder, data, "png")
    source = WebSliceSource(f"{base}/em/{{z:04d}}.png", (0, 4))
    for y in (0, 32):
        for x in (0, 32):  # x fastest, as inside a task
            box = Box(Vec3(x, y, 0), Vec3(x + 32, y + 32, 4))
            assert np.array_equal(source.read(box), data[:, y:y + 32, x:x + 32])
    assert {path: n for path, n in gets.items() if not path.startswith("HEAD ")} == {
        f"/em/{z:04d}.png": 1 for z in range(4)}
    again = WebSliceSource(f"{base}/em/{{z:04d}}.png", (0, 4))  # another process of the run: staged already
    assert np.array_equal(again.read(again.extent), data)
    assert sum(n for path, n in gets.items() if not path.startswith("HEAD ")) == 4


def test_a_5xx_is_retried_and_a_missing_slice_names_its_url(server):
    base, folder, gets, fail = server
    data = np.random.default_rng(2).integers(0, 255, (3, 8, 9), dtype=np.uint8)
    write_stack(folder, data, "tif")
    source = WebSliceSource(f"{base}/em/{{z:04d}}.tif", (0, 3))
    fail["/em/0002.tif"] = 2
    assert np.array_equal(source.read(source.extent), data)
    assert gets["/em/0002.tif"] == 3 and fail["/em/0002.tif"] == 0
    (folder / "em" / "0001.tif").unlink()
    with pytest.raises(SourceError, match=f"^{base}/em/0001.tif: 404"):  # every file is looked at on open
        WebSliceSource(f"{base}/em/{{z:04d}}.tif", (0, 3))


def test_a_body_cut_off_is_fetched_again_and_one_always_cut_is_one_line(server, tmp_path):
    base, folder, gets, fail = server
    data = np.random.default_rng(6).integers(0, 255, (2, 8, 9), dtype=np.uint8)
    write_stack(folder, data, "tif")
    source = WebSliceSource(f"{base}/em/{{z:04d}}.tif", (0, 2))
    fail[("cut", "/em/0001.tif")] = 1
    assert np.array_equal(source.read(source.extent), data)
    assert gets["/em/0001.tif"] == 2
    fail[("cut", "/em/0000.tif")] = webslices.BODY_TRIES
    with pytest.raises(SourceError, match=f"0000.tif: the answer broke off {webslices.BODY_TRIES} times"):
        WebSliceSource(f"{base}/em/{{z:04d}}.tif", (0, 2), cache_dir=tmp_path / "not-staged-yet")


def test_a_slice_of_another_shape_or_colour_is_refused_naming_it(server):
    base, folder, _, _ = server
    data = np.random.default_rng(3).integers(0, 255, (3, 8, 9), dtype=np.uint8)
    write_stack(folder, data, "png")
    Image.fromarray(data[2][:, :5]).save(folder / "em" / "0002.png")
    source = WebSliceSource(f"{base}/em/{{z:04d}}.png", (0, 3))
    assert np.array_equal(source.read(Box(Vec3(0, 0, 0), Vec3(9, 8, 2))), data[:2])
    with pytest.raises(SourceError, match="0002.png: page is y 8 x 5 uint8, the first .* y 8 x 9 uint8"):
        source.read(source.extent)
    Image.fromarray(np.stack([data[0]] * 3, axis=-1)).save(folder / "em" / "0000.png")
    with pytest.raises(SourceError, match="0000.png: PNG mode RGB is not one gray channel"):
        WebSliceSource(f"{base}/em/{{z:04d}}.png", (0, 3))
    (folder / "em" / "0000.png").write_bytes(b"not an image")
    with pytest.raises(SourceError, match="0000.png: not a readable TIFF or PNG slice"):
        WebSliceSource(f"{base}/em/{{z:04d}}.png", (0, 3))


def test_a_time_series_reads_its_t_field(server):
    base, folder, _, _ = server
    data = np.random.default_rng(4).integers(0, 4000, (2, 3, 8, 9), dtype=np.uint16)
    for t in range(2):
        write_stack(folder, data[t], "tif", first=7, sub=f"ts/time{t + 1:04d}")
    source = WebSliceSource(f"{base}/ts/time{{t:04d}}/{{z:04d}}.tif", (7, 10), (1, 3))
    assert source.shape_tzyx == (2, 3, 8, 9) and source.axes == "tzyx"
    for t in range(2):
        assert np.array_equal(source.read(source.extent, t), data[t])


def test_the_fingerprint_changes_with_a_file(server, monkeypatch):
    base, folder, _, fail = server
    data = np.random.default_rng(5).integers(0, 255, (2, 8, 9), dtype=np.uint8)
    write_stack(folder, data, "png")
    source = WebSliceSource(f"{base}/em/{{z:04d}}.png", (0, 2))
    before = source.fingerprint()
    assert [f["path"] for f in before] == [f"{base}/em/0000.png", f"{base}/em/0001.png"]
    Image.fromarray(data[0][::-1]).save(folder / "em" / "0001.png")  # same size; Last-Modified in seconds:
    later = (folder / "em" / "0001.png").stat().st_mtime + 5
    os.utime(folder / "em" / "0001.png", (later, later))  # a rewrite in another second
    assert source.fingerprint() == before  # taken once per FINGERPRINT_SECONDS
    monkeypatch.setattr(webslices, "FINGERPRINT_SECONDS", 0.0)
    after = source.fingerprint()
    assert after != before
    fail["no HEAD"] = True  # a server that answers HEAD 501: the headers of a GET instead
    assert source.fingerprint() == after


def test_the_fingerprint_asks_many_heads_at_once(server):
    """A HEAD is tiny, so a far server's latency bounds the fingerprint: 1000 HEADs at 20 ms
    took 6.4 s four at a time, 1.9 s sixteen at a time (a server in another process)."""
    from ndingest.wire.client import IN_FLIGHT, SMALL_IN_FLIGHT

    base, folder, gets, fail = server
    write_stack(folder, np.ones((48, 4, 4), dtype=np.uint8), "png")
    source = WebSliceSource(f"{base}/em/{{z:04d}}.png", (0, 48))
    fail["HEAD latency"] = 0.05
    source._stamp = None  # the next call takes the fingerprint again
    assert len(source.fingerprint()) == 48
    assert IN_FLIGHT < gets["HEADs at once"] <= SMALL_IN_FLIGHT, gets["HEADs at once"]


def slice_spec(source: str, ranges: str, z_offset: int = 0) -> str:
    """A spec of one image channel read from the slice pattern `source`; `ranges` are its
    TOML lines (z_range, t_range)."""
    return f"""
[dataset]
name = "d"
offset = [0, 0, {z_offset}]
voxel_resolution = [4.0, 4.0, 40.0]
[project]
name = "p"
[channels.em]
type = "image"
source = "{source}"
{ranges}
[store]
path = "store"
"""


def test_a_pattern_goes_with_z_range_in_a_spec(tmp_path, capsys):
    text = slice_spec("http://127.0.0.1:9/em/{z:04d}.png", "%s")
    spec = parse_spec(text % "z_range = [3, 9]", tmp_path / "s.toml")
    assert spec.channels["em"].z_range == (3, 9) and spec.channels["em"].t_range is None
    for extra, message in (("", "is a slice pattern; channels.em.z_range"),
                           ("z_range = [9, 3]", "z_range = \\[9, 3\\] must be \\[first, stop\\)"),
                           ("z_range = [0, 3]\nt_range = [0, 2]", None)):
        if message is None:  # a t_range without a {t} field: refused when the source opens
            with pytest.raises(SourceError, match="a \\{t\\} field and t_range go together"):
                webslices.check_pattern(spec.channels["em"].source, (0, 3), (0, 2))
            continue
        with pytest.raises(SpecError, match=message):
            parse_spec(text % extra, tmp_path / "s.toml")
    with pytest.raises(SpecError, match="z_range applies to a slice pattern source"):
        parse_spec((text % "z_range = [0, 3]").replace("{z:04d}.png", "a.h5"), tmp_path / "s.toml")
    assert main(["inspect", "http://127.0.0.1:9/em/{z:04d}.png"]) == 3
    assert "needs z_range" in capsys.readouterr().err


def test_a_forked_worker_uses_the_fingerprint_its_run_took(server, monkeypatch):
    base, folder, gets, _ = server
    write_stack(folder, np.zeros((3, 4, 5), np.uint8), "tif")
    source = WebSliceSource(f"{base}/em/{{z:04d}}.tif", (0, 3))
    taken = source.fingerprint()
    monkeypatch.setattr(webslices, "FINGERPRINT_SECONDS", 0.0)  # this process would take it again
    heads = sum(n for key, n in gets.items() if key.startswith("HEAD "))
    assert heads == 3
    pid = os.fork()
    if pid == 0:  # a Luigi worker's task, forked from the run
        os._exit(0 if source.fingerprint() == taken else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sum(n for key, n in gets.items() if key.startswith("HEAD ")) == heads  # not a HEAD more
    source.fingerprint()
    assert sum(n for key, n in gets.items() if key.startswith("HEAD ")) == 2 * heads


def test_staged_slices_stay_within_their_limit_and_a_new_version_is_fetched_again(server, tmp_path, monkeypatch):
    base, folder, gets, _ = server
    data = np.random.default_rng(7).integers(0, 255, (8, 16, 16), dtype=np.uint8)
    write_stack(folder, data, "png")
    monkeypatch.setattr(webslices, "SLICE_CACHE_BYTES", 0)  # only what the block in hand needs
    monkeypatch.setattr(webslices, "FETCH_BYTES", 1)  # one slice in memory at a time
    source = WebSliceSource(f"{base}/em/{{z:04d}}.png", (0, 8), cache_dir=tmp_path / "staged")
    lower, upper = Box(Vec3(0, 0, 0), Vec3(16, 16, 4)), Box(Vec3(0, 0, 4), Vec3(16, 16, 8))
    assert np.array_equal(source.read(lower), data[:4]) and np.array_equal(source.read(upper), data[4:])
    staged = sorted((tmp_path / "staged").glob("*.tif"))
    killed, writing = tmp_path / "staged" / ".killed.part", tmp_path / "staged" / ".writing.part"
    killed.write_bytes(b"half a slice"), writing.write_bytes(b"half a slice")
    os.utime(killed, (time.time() - 2 * webslices.STALE_PART_SECONDS,) * 2)
    assert len(staged) <= 8 and sum(p.stat().st_size for p in staged) <= 2 * 4 * 16 * 16 + 8 * 1024
    assert all(tifffile.TiffFile(p).pages[0].compression == 1 for p in staged)  # raw: rows read alone
    assert np.array_equal(source.read(lower), data[:4])
    assert not killed.exists() and writing.exists()  # a killed writer's temp file goes, one at work stays
    assert gets["/em/0000.png"] == 2 and gets["/em/0007.png"] == 1  # the lower slab was dropped, then fetched
    Image.fromarray(data[6][::-1]).save(folder / "em" / "0006.png")
    later = (folder / "em" / "0006.png").stat().st_mtime + 5
    os.utime(folder / "em" / "0006.png", (later, later))
    monkeypatch.setattr(webslices, "FINGERPRINT_SECONDS", 0.0)
    assert np.array_equal(source.read(upper)[2], data[6][::-1])  # a new version: not the staged old one


def test_a_folder_that_cannot_hold_staged_slices_is_one_line_naming_it(server, tmp_path):
    base, folder, _, _ = server
    write_stack(folder, np.zeros((2, 4, 5), np.uint8), "tif")
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SourceError, match="a_file/x: cannot stage a slice there .* set NDINGEST_SLICE_CACHE"):
        WebSliceSource(f"{base}/em/{{z:04d}}.tif", (0, 2), cache_dir=tmp_path / "a_file" / "x")


def test_a_local_png_stack_by_relative_pattern_ingests_as_written(tmp_path):
    import tensorstore as ts

    data = np.random.default_rng(8).integers(0, 65535, (5, 20, 30), dtype=np.uint16)
    write_stack(tmp_path / "my slices", data, "png", first=10)  # a space in the path: quoted in the URL
    spec = tmp_path / "spec.toml"
    spec.write_text(slice_spec("my slices/em/{z:04d}.png", "z_range = [10, 15]", z_offset=10))
    assert parse_spec(spec.read_text(), spec).channels["em"].source.startswith("file:///")
    assert main(["ingest", str(spec)]) == 0
    volume = ts.open({"driver": "neuroglancer_precomputed", "scale_index": 0,
                      "kvstore": {"driver": "file", "path": f"{tmp_path}/store/d/p/em/"}}).result()
    assert np.array_equal(np.asarray(volume[..., 0].read().result()).transpose(2, 1, 0), data)


def test_a_specs_slices_stage_beside_it_not_in_the_temp_folder_and_go_once_verified(server, tmp_path, monkeypatch):
    """Without NDINGEST_SLICE_CACHE a spec's slices stage in `.ndingest/staged/` beside it
    (the temp folder is often a tmpfs, i.e. RAM), and a finished ingest removes them."""
    base, folder, gets, _ = server
    data = np.random.default_rng(9).integers(0, 255, (4, 12, 10), dtype=np.uint8)
    write_stack(folder, data, "png")
    work = tmp_path / "work"
    work.mkdir()
    spec = work / "spec.toml"
    pattern = f"{base}/em/{{z:04d}}.png"
    spec.write_text(slice_spec(pattern, "z_range = [0, 4]"))
    monkeypatch.delenv("NDINGEST_SLICE_CACHE")
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "temp"))  # the temp folder, watched
    (tmp_path / "temp").mkdir()
    staged = work / ".ndingest" / "staged"
    assert webslices.default_cache_dir(pattern, spec).parent == staged
    assert webslices.default_cache_dir(pattern).parent == tmp_path / "temp" / f"ndingest-slices-{os.getuid()}"
    monkeypatch.setattr(webslices, "drop_staged", lambda spec: None)  # to look at them before they go
    assert main(["ingest", str(spec)]) == 0
    assert len(list(staged.rglob("*.tif"))) == 4  # a page per slice
    assert not list((tmp_path / "temp").iterdir())
    monkeypatch.undo()
    monkeypatch.delenv("NDINGEST_SLICE_CACHE")
    assert main(["ingest", str(spec)]) == 0  # a finished ingest drops them
    assert not staged.exists()
    import tensorstore as ts

    volume = ts.open({"driver": "neuroglancer_precomputed", "scale_index": 0,
                      "kvstore": {"driver": "file", "path": f"{work}/store/d/p/em/"}}).result()
    assert np.array_equal(np.asarray(volume[..., 0].read().result()).transpose(2, 1, 0), data)
    assert main(["verify", str(spec)]) == 0  # verify stages what it reads again, and says it is right
    assert sum(gets.values()) >= 8  # each slice fetched for the ingest and again for that verify


def test_slices_staged_in_the_folder_ndingest_slice_cache_names_are_kept(server, tmp_path, monkeypatch):
    base, folder, _, _ = server
    write_stack(folder, np.ones((2, 8, 8), dtype=np.uint8), "png")
    spec = tmp_path / "spec.toml"
    spec.write_text(slice_spec(f"{base}/em/{{z:04d}}.png", "z_range = [0, 2]"))
    monkeypatch.setenv("NDINGEST_SLICE_CACHE", str(tmp_path / "cache"))
    assert main(["ingest", str(spec)]) == 0
    assert len(list((tmp_path / "cache").rglob("*.tif"))) == 2  # the user's cache, theirs to keep
    assert not (tmp_path / ".ndingest").exists()


def test_a_file_pattern_with_a_nul_byte_is_one_line_naming_it():
    with pytest.raises(SourceError, match=r"file:///tmp/a%00b/\{z:04d\}.tif: a file URL's path holds no NUL byte"):
        webslices.check_pattern("file:///tmp/a%00b/{z:04d}.tif", (0, 2), None)
