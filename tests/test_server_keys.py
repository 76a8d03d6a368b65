"""The key ring: the keys file's rules, 401 vs 403, key ids, and keys never in a log."""
from __future__ import annotations

import hashlib
import logging

import pytest

from ndingest.errors import Forbidden, SpecError, Unauthorized
from ndingest.server.keys import Holder, KeyRing, key_id, parse_keys, parse_named_keys


def ring(tmp_path, text: str) -> KeyRing:
    path = tmp_path / "keys"
    path.write_text(text)
    return KeyRing.load(path)


def test_keys_file_is_one_key_a_line_stripped_without_blanks_or_comments():
    assert parse_keys("  alpha  \n\n# a comment\n   # indented comment\nbeta\t\n") == ["alpha", "beta"]


def test_a_listed_key_is_accepted_and_named_by_its_sha256_prefix(tmp_path):
    keys = ring(tmp_path, "alpha\nbeta\n")
    assert keys.check("Token beta") == hashlib.sha256(b"beta").hexdigest()[:8] == key_id("beta")
    assert keys.check("token  alpha ") == key_id("alpha")


@pytest.mark.parametrize("header", [None, "", "   ", "Token", "Token ", "Token    "])
def test_no_key_or_an_empty_one_is_401(tmp_path, header):
    with pytest.raises(Unauthorized) as info:
        ring(tmp_path, "alpha\n").check(header)
    assert info.value.status == 401


def test_another_scheme_is_401(tmp_path):
    with pytest.raises(Unauthorized):
        ring(tmp_path, "alpha\n").check("Bearer alpha")


@pytest.mark.parametrize("header", ["Token alphA", "Token alpha2", "Token # a comment", "Token alph"])
def test_a_wrong_key_is_403_and_the_message_never_holds_it(tmp_path, header):
    with pytest.raises(Forbidden) as info:
        ring(tmp_path, "alpha\n# a comment\n").check(header)
    assert info.value.status == 403
    assert header.split(" ", 1)[1] not in str(info.value)


def test_an_empty_or_comment_only_keys_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match="holds no key"):
        ring(tmp_path, "\n  \n# only a comment\n")


def test_an_unreadable_keys_file_is_a_spec_error_naming_it(tmp_path):
    with pytest.raises(SpecError, match="nope"):
        KeyRing.load(tmp_path / "nope")


def test_keys_are_never_logged(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    keys = ring(tmp_path, "sup3r-secret\n")
    keys.check("Token sup3r-secret")
    with pytest.raises(Forbidden):
        keys.check("Token 0ther-secret")
    assert caplog.records  # loading is logged, by key id
    assert "sup3r-secret" not in caplog.text and "0ther-secret" not in caplog.text
    assert key_id("sup3r-secret") in caplog.text


@pytest.mark.parametrize("host, has_keys, loopback", [
    ("127.0.0.1", False, True), ("localhost", False, True), ("::1", False, True),
    ("0.0.0.0", False, False), ("192.168.1.20", False, False), ("lab-server", False, False), ("::", False, False),
])
def test_serve_says_what_is_open_wherever_it_listens_without_keys(host, has_keys, loopback):
    """Loopback without keys is open to this machine's users and programs (not web pages);
    off loopback, to anyone, and plain http gives browsers no Sec-Fetch-Site to refuse a
    page's GET setPropagate by (issue 28: loopback without keys was called safe)."""
    from ndingest.server import exposure_warning

    warning = exposure_warning(host, has_keys=has_keys)
    assert warning is not None and host in warning and "--api-keys" in warning
    if loopback:
        assert "this machine may write" in warning and "web pages may not" in warning
    else:
        assert "anyone who can reach it may write" in warning
        assert "Sec-Fetch-Site" in warning and "setPropagate" in warning


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "lab-server"])
def test_serve_warns_of_nothing_with_keys(host):
    from ndingest.server import exposure_warning

    assert exposure_warning(host, has_keys=True) is None


def test_a_keys_line_is_key_or_key_and_name_whitespace_between():
    text = "alpha\n  beta   Bea Smith \n# gamma not-a-key\n\ndelta\tops\n"
    assert parse_named_keys(text) == [("alpha", None), ("beta", "Bea Smith"), ("delta", "ops")]
    assert parse_keys(text) == ["alpha", "beta", "delta"]


def test_a_valid_key_is_known_by_its_name_and_a_nameless_one_by_none(tmp_path):
    keys = ring(tmp_path, "alpha ann\nbeta\ngamma   gus\n")
    assert keys.holder("Token alpha") == Holder(key_id("alpha"), "ann")
    assert keys.holder("Token gamma") == Holder(key_id("gamma"), "gus")
    assert keys.holder("Token beta") == Holder(key_id("beta"), None)
    with pytest.raises(Forbidden):
        keys.holder("Token alpha ann")  # the name is not part of the key
