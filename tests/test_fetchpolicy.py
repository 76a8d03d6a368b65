"""What a job posted to `serve` may read (`fetchpolicy`): the address classifier as a unit
(no address is dialled), and the connect-time check and the decoded-bytes cap of
`wire.client` against a real HTTP server on 127.0.0.1, reached as 127.0.0.1 and as
`localhost` only."""
from __future__ import annotations

import gzip
import http.server
import os
import threading

import h5py
import numpy as np
import pytest
import tifffile

from ndingest import fetchpolicy
from ndingest.errors import FetchRefused, SpecError
from ndingest.fetchpolicy import FetchPolicy, address_refusal, check_peer, host_port, is_inside
from ndingest.sources import open_source
from ndingest.webslices import WebSliceSource
from ndingest.wire.client import Client, decoded_pieces

HOST = "127.0.0.1"
BOMB = gzip.compress(b"\0" * (64 << 20), compresslevel=9)  # 64 MiB of zeros in about 64 KiB


@pytest.mark.parametrize("address, why", [
    ("127.0.0.1", "loopback"), ("127.255.1.2", "loopback"), ("::1", "loopback"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("172.31.255.254", "private"),
    ("192.168.1.1", "private"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"), ("fc00::1", "private"), ("fd12:3456::1", "private"),
    ("224.0.0.1", "multicast"), ("239.255.255.250", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("240.0.0.1", "reserved"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:10.0.0.1", "private"), ("::ffff:169.254.169.254", "link-local"),
    ("2002:7f00:1::", "loopback"), ("64:ff9b::a9fe:a9fe", "link-local"), ("100.64.0.1", "not global"),
])
def test_non_public_addresses_are_refused_by_name(address, why):
    assert address_refusal(address) == why


@pytest.mark.parametrize("address", ["8.8.8.8", "1.1.1.1", "93.184.216.34", "172.32.0.1", "2606:4700::1111",
                                     "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address):
    assert address_refusal(address) is None


@pytest.mark.parametrize("item, parsed", [
    ("127.0.0.1", ("127.0.0.1", None)), ("127.0.0.1:8000", ("127.0.0.1", 8000)), ("LocalHost.", ("localhost", None)),
    ("[::1]:80", ("::1", 80)), ("::1", ("::1", None)), ("10.0.0.0/8", ("10.0.0.0/8", None)),
])
def test_fetch_from_items_are_host_and_optional_port(item, parsed):
    assert host_port(item) == parsed


@pytest.mark.parametrize("item", ["", ":80", "host:0", "host:http", "[::1]x"])
def test_a_bad_fetch_from_item_is_a_spec_error(item):
    with pytest.raises(SpecError, match="--fetch-from"):
        host_port(item)


def test_fetch_from_allows_by_address_network_or_the_urls_own_name_and_port():
    refused = FetchPolicy()
    with pytest.raises(FetchRefused, match=r"127\.0\.0\.1, a loopback address.*--fetch-from"):
        check_peer(refused, "localhost", 8000, "127.0.0.1")
    check_peer(refused, "example.org", 443, "93.184.216.34")  # public: no flag needed
    for allowed in ("127.0.0.1", "127.0.0.1:8000", "127.0.0.0/8", "localhost", "localhost:8000"):
        check_peer(FetchPolicy(fetch_from=(allowed,)), "localhost", 8000, "127.0.0.1")
    for other in ("127.0.0.1:8001", "10.0.0.0/8", "otherhost"):
        with pytest.raises(FetchRefused):
            check_peer(FetchPolicy(fetch_from=(other,)), "localhost", 8000, "127.0.0.1")


def test_a_symlink_out_of_an_allowed_folder_is_outside(tmp_path):
    allowed, elsewhere = tmp_path / "allowed", tmp_path / "elsewhere"
    (allowed / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "secret.h5").write_bytes(b"secret")
    (allowed / "sub" / "data.h5").write_bytes(b"data")
    (allowed / "link.h5").symlink_to(elsewhere / "secret.h5")
    (allowed / "linked_folder").symlink_to(elsewhere)
    assert is_inside(allowed / "sub" / "data.h5", [str(allowed)])
    assert is_inside(allowed / "sub" / "not_yet_there.tif", [str(allowed)])
    assert not is_inside(allowed / "link.h5", [str(allowed)])
    assert not is_inside(allowed / "linked_folder" / "secret.h5", [str(allowed)])
    assert not is_inside(allowed / ".." / "elsewhere" / "secret.h5", [str(allowed)])
    assert not is_inside(tmp_path / "allowed_not", [str(allowed)])  # a sibling sharing the prefix
    assert not is_inside(str(allowed / "a\0b"), [str(allowed)])  # file:///…%00…: no 500, just outside


def test_the_policy_round_trips_through_its_environment_variable(monkeypatch):
    policy = FetchPolicy(allow_files=("/data",), fetch_from=("127.0.0.1",), slice_bytes=123)
    monkeypatch.setenv(fetchpolicy.ENV, policy.to_env())
    assert fetchpolicy.current() == policy
    monkeypatch.setenv(fetchpolicy.ENV, "not json")
    assert fetchpolicy.current() == FetchPolicy()  # unreadable: everything restricted
    monkeypatch.delenv(fetchpolicy.ENV)
    assert fetchpolicy.current() is None  # the CLI: nothing restricted


# --- the connect-time check and the cap, against a real server on 127.0.0.1 ---------------------
class Handler(http.server.BaseHTTPRequestHandler):
    """/ok: 5 bytes; /bomb: BOMB as Content-Encoding gzip; /hop/PORT: a redirect to that port's /ok."""

    def do_GET(self):
        if self.path.startswith("/hop/"):
            self.send_response(302)
            self.send_header("Location", f"http://{HOST}:{self.path.rsplit('/', 1)[1]}/ok")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body, gzipped = (BOMB, True) if self.path == "/bomb" else (b"hello", False)
        self.send_response(200)
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def ports():
    servers = [http.server.ThreadingHTTPServer((HOST, 0), Handler) for _ in range(2)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield [s.server_address[1] for s in servers]
    for server in servers:
        server.shutdown()
        server.server_close()


def get(url: str) -> bytes:
    client = Client(url, retries=0)
    with client.request("GET", url, stream=True) as reply:
        return b"".join(decoded_pieces(reply, url, cap=fetchpolicy.current().slice_bytes))


def test_a_job_refuses_loopback_by_address_and_by_name_at_connect_time(ports, monkeypatch):
    monkeypatch.setenv(fetchpolicy.ENV, FetchPolicy().to_env())
    for url in (f"http://{HOST}:{ports[0]}/ok", f"http://localhost:{ports[0]}/ok",
                f"https://localhost:{ports[0]}/ok"):  # https: refused before the TLS handshake
        with pytest.raises(FetchRefused, match=rf"^{url}: .*loopback address"):
            get(url)


def test_fetch_from_lets_a_job_reach_a_loopback_host_but_a_redirect_to_another_port_is_checked_again(
        ports, monkeypatch):
    monkeypatch.setenv(fetchpolicy.ENV, FetchPolicy(fetch_from=(f"{HOST}:{ports[0]}",)).to_env())
    assert get(f"http://{HOST}:{ports[0]}/ok") == b"hello"
    with pytest.raises(FetchRefused, match=f"{HOST}:{ports[1]} is {HOST}, a loopback address"):
        get(f"http://{HOST}:{ports[0]}/hop/{ports[1]}")
    monkeypatch.setenv(fetchpolicy.ENV, FetchPolicy(fetch_from=(HOST,)).to_env())
    assert get(f"http://{HOST}:{ports[0]}/hop/{ports[1]}") == b"hello"


def test_a_gzip_bomb_stops_at_the_cap_counted_after_decompression(ports, monkeypatch):
    monkeypatch.setenv(fetchpolicy.ENV, FetchPolicy(fetch_from=(HOST,), slice_bytes=3 << 20).to_env())
    url = f"http://{HOST}:{ports[0]}/bomb"
    with pytest.raises(FetchRefused, match=rf"^{url}: the answer holds more than 3,145,728 bytes \(decoded\)"):
        get(url)


def test_without_a_policy_every_address_is_fetched_and_nothing_is_capped(ports, monkeypatch):
    monkeypatch.delenv(fetchpolicy.ENV, raising=False)
    url = f"http://localhost:{ports[0]}/bomb"
    client = Client(url, retries=0)
    with client.request("GET", url, stream=True) as reply:
        assert sum(len(piece) for piece in decoded_pieces(reply, url, cap=None)) == 64 << 20
    assert os.environ.get(fetchpolicy.ENV) is None


def test_serve_flags_name_a_folder_that_is_not_there_or_a_bad_host(tmp_path):
    with pytest.raises(SpecError, match=r"--allow-files .*nothing_here: no such folder"):
        fetchpolicy.make_policy([str(tmp_path / "nothing_here")], [])
    with pytest.raises(SpecError, match="--fetch-from host:port:80"):
        fetchpolicy.make_policy([], ["host:port:80"])
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    assert fetchpolicy.make_policy([str(link)], ["localhost:80"]) == FetchPolicy((str(tmp_path),), ("localhost:80",))


# --- files a job reads, in this process under the policy a job's subprocess gets -----------------
def test_in_a_job_a_slice_file_linking_out_of_the_allowed_folders_is_refused_naming_it(tmp_path, monkeypatch):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    outside.mkdir()
    pages = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    for z, page in enumerate(pages):
        path = allowed / "em" / f"{z:04d}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(outside / path.name if z == 2 else path, page)
    (allowed / "em" / "0002.tif").symlink_to(outside / "0002.tif")
    pattern = (allowed / "em").as_uri() + "/{z:04d}.tif"
    monkeypatch.setenv(fetchpolicy.ENV, FetchPolicy(allow_files=(str(allowed),)).to_env())
    with pytest.raises(FetchRefused, match=r"/em/0002\.tif: outside the folders serve --allow-files"):
        WebSliceSource(pattern, (0, 3), cache_dir=tmp_path / "staged")
    monkeypatch.delenv(fetchpolicy.ENV)  # the CLI: the user's own link is followed
    source = WebSliceSource(pattern, (0, 3), cache_dir=tmp_path / "staged")
    assert np.array_equal(source.read(source.extent), pages)


def test_in_a_job_a_virtual_or_external_hdf5_dataset_is_refused_naming_it(tmp_path, monkeypatch):
    secret = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.create_dataset("secret", data=secret)
    (tmp_path / "raw.bin").write_bytes(secret.tobytes())
    layout = h5py.VirtualLayout(shape=secret.shape, dtype=np.uint8)
    layout[:] = h5py.VirtualSource(str(tmp_path / "other.h5"), "secret", shape=secret.shape)
    with h5py.File(tmp_path / "virtual.h5", "w") as f:
        f.create_virtual_dataset("em/CUTOUT", layout)
    with h5py.File(tmp_path / "external.h5", "w") as f:
        f.create_dataset("em/CUTOUT", shape=secret.shape, dtype=np.uint8, external=[(str(tmp_path / "raw.bin"), 0, 24)])
    for name, other in (("virtual.h5", "other.h5"), ("external.h5", "raw.bin")):
        monkeypatch.setenv(fetchpolicy.ENV, FetchPolicy(allow_files=(str(tmp_path),)).to_env())
        with pytest.raises(FetchRefused, match=rf"{name}:/em/CUTOUT: its voxels are stored in other files "
                                               rf"\(.*{other}\)"):
            open_source(str(tmp_path / name))
        monkeypatch.delenv(fetchpolicy.ENV)  # the CLI reads them
        source = open_source(str(tmp_path / name))
        assert np.array_equal(source.read(source.extent), secret)
