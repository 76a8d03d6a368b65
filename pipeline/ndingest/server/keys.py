"""API keys for `serve --api-keys FILE`: load them, check a request's `Authorization`.

The keys file holds one `KEY` or `KEY NAME` a line (whitespace between; blank lines and
`#` lines are skipped). A key is never logged, echoed or recorded: logs name it by its key
id, the first 8 hex digits of its SHA-256; edit records (and `GET .../edits/`) by its NAME,
when the file gives one, else not at all. Keys are compared in constant time, against
every key of the ring with no early exit, so timing tells nothing about which key came close.
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
    """What names a key in logs, where the key itself must not appear."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def parse_named_keys(text: str) -> list[tuple[str, str | None]]:
    """(KEY, NAME or None) of each `KEY` or `KEY NAME` line; blank lines and `#` comments
    are skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 1)
        out.append((parts[0], parts[1].strip() if len(parts) > 1 else None))
    return out


def parse_keys(text: str) -> list[str]:
    """The keys of a keys file, without their names."""
    return [key for key, _ in parse_named_keys(text)]


@dataclass(frozen=True)
class Holder:
    """Who sent a valid key: its id (for logs) and its name in the keys file (for edit
    records), or None when the file gives it none."""

    id: str
    name: str | None


@dataclass(frozen=True)
class KeyRing:
    """The keys a server accepts (as bytes, for `hmac.compare_digest`), with their names."""

    keys: tuple[bytes, ...]
    names: tuple[str | None, ...] = ()

    @classmethod
    def load(cls, path: Path) -> "KeyRing":
        """The ring of the keys file; SpecError when it cannot be read or holds no key."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"--api-keys {path}: cannot read the keys file: "
                            f"{getattr(exc, 'strerror', None) or exc}") from exc
        named = parse_named_keys(text)
        if not named:
            raise SpecError(f"--api-keys {path}: holds no key (one KEY or KEY NAME per line; blank lines and "
                            f"# comments are skipped)")
        logger.info("api keys: %d loaded from %s (ids %s)", len(named), path,
                    ", ".join(key_id(k) for k, _ in named))
        return cls(tuple(k.encode() for k, _ in named), tuple(n for _, n in named))

    def check(self, authorization: str | None) -> str:
        """The key id of the `Token <key>` in an `Authorization` header (see `holder`)."""
        return self.holder(authorization).id

    def holder(self, authorization: str | None) -> Holder:
        """Who sent the `Token <key>` of an `Authorization` header; Unauthorized (401)
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
        match, name = False, None
        names = self.names or (None,) * len(self.keys)
        for key, key_name in zip(self.keys, names):  # every key, no early exit
            same = hmac.compare_digest(key, wanted)
            match |= same
            name = key_name if same else name
        if not match:
            raise Forbidden("the key sent is not one this server accepts")
        return Holder(key_id(given), name)
