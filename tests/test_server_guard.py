"""`ndingest.server.guard`'s parsing and policy, as units: what the e2e tests
(tests/e2e/test_serve_websafe.py) cannot reach from 127.0.0.1, such as a server bound off
loopback, whose Host rule is `--allow-host` alone."""
from __future__ import annotations

import pytest

from ndingest.server.guard import WebPolicy, host_name, is_loopback, origin_of, split_list


@pytest.mark.parametrize("header, name", [
    ("localhost:8080", "localhost"), ("127.0.0.1", "127.0.0.1"), ("[::1]:8080", "::1"), ("[::1]", "::1"),
    ("Lab.Example:80", "lab.example"), ("evil.example", "evil.example"),
])
def test_host_name_drops_the_port_and_brackets(header, name):
    assert host_name(header) == name


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.1", True), ("::1", True), ("[::1]", True), ("localhost", True), ("LOCALHOST.", True),
    ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("127.0.0.1.evil.example", False), ("lab", False),
])
def test_is_loopback(host, loopback):
    assert is_loopback(host) == loopback


def test_origins_compare_with_their_default_ports():
    assert origin_of("http://a.example") == origin_of("HTTP://A.example:80/") == ("http", "a.example", 80)
    assert origin_of("https://a.example") == ("https", "a.example", 443)
    assert origin_of("null") is None and origin_of("") is None and origin_of("http://a:notaport") is None
    policy = WebPolicy(allow_origins=("https://ng.example",))
    assert policy.origin_allowed("https://ng.example:443") and not policy.origin_allowed("http://ng.example")


def test_allow_lists_split_on_commas_and_spaces():
    assert split_list(" http://a, http://b  http://c,,") == ("http://a", "http://b", "http://c")
    assert split_list(None) == () and split_list("") == ()


def test_off_loopback_any_host_unless_allow_host_lists_the_only_ones():
    assert WebPolicy("0.0.0.0").host_refusal("anything.example:8080") is None
    lab = WebPolicy("0.0.0.0", allow_hosts=("lab.example",))
    assert lab.host_refusal("lab.example:8080") is None and lab.host_refusal("LAB.example") is None
    assert "--allow-host" in lab.host_refusal("localhost:8080") and lab.host_refusal("10.1.2.3") is not None
    local = WebPolicy("127.0.0.1", allow_hosts=("lab.example",))
    assert local.host_refusal("localhost:1") is None and local.host_refusal("lab.example") is None
    assert local.host_refusal("evil.example") is not None
    assert local.host_refusal(None) is None  # HTTP/1.0 without Host: no browser sends that
