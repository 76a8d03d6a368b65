"""API keys for `serve --api-keys FILE`: load them, check a request's `Authorization`.

A key is never logged or echoed; what names it in logs and edit records is its key id,
the first 8 hex digits of its SHA-256. Keys are compared in constant time, against every
key of the ring with no early exit, so timing tells nothing about which key came close.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import Forbidden, SpecError, Unauthorized

logger = logging.getLogger(__name__)

SCHEME = "token"


def key_id(key: str) -> str:
    """What names a key where the key itself must not appear."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def parse_keys(text: str) -> list[str]:
    """One key per line, stripped; blank lines and `#` comments are skipped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


@dataclass(frozen=True)
class KeyRing:
    """The keys a server accepts (as bytes, for `hmac.compare_digest`)."""

    keys: tuple[bytes, ...]

    @classmethod
    def load(cls, path: Path) -> "KeyRing":
        """The ring of the keys file; SpecError when it cannot be read or holds no key."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"--api-keys {path}: cannot read the keys file: "
                            f"{getattr(exc, 'strerror', None) or exc}") from exc
        keys = parse_keys(text)
        if not keys:
            raise SpecError(f"--api-keys {path}: holds no key (one key per line; blank lines and # comments "
                            f"are skipped)")
        logger.info("api keys: %d loaded from %s (ids %s)", len(keys), path, ", ".join(key_id(k) for k in keys))
        return cls(tuple(k.encode() for k in keys))

    def check(self, authorization: str | None) -> str:
        """The key id of the `Token <key>` in an `Authorization` header; Unauthorized (401)
        without one or with an empty key, Forbidden (403) for a key not in the ring."""
        if not authorization or not authorization.strip():
            raise Unauthorized("this request needs a key: send the header 'Authorization: Token <key>'")
        scheme, _, given = authorization.strip().partition(" ")
        if scheme.lower() != SCHEME:
            raise Unauthorized("the Authorization header must read 'Token <key>'")
        given = given.strip()
        if not given:
            raise Unauthorized("the Authorization header holds an empty key: send 'Token <key>'")
        wanted = given.encode()
        match = False
        for key in self.keys:  # every key, no early exit
            match |= hmac.compare_digest(key, wanted)
        if not match:
            raise Forbidden("the key sent is not one this server accepts")
        return key_id(given)
