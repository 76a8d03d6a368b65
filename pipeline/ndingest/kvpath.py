"""Keys in an object store (`s3://bucket/prefix`), as the slice of `pathlib.Path` that the
markers, reports and `info` files use, written through tensorstore's kvstore, the same
one the voxels go through.

So `markers`, `edits` and `steps` keep one code path for a folder and a bucket: a
`KvPath` joins with `/`, reads and writes whole objects, lists the "folder" under it,
and raises `FileNotFoundError` for a missing object, as a `Path` does. Differences it
does not hide: a write is atomic and durable when it returns (an S3 PUT), so there is
nothing to flush and no temp file; there are no empty folders; listing is by prefix.

Settings come from the usual variables: `AWS_ENDPOINT_URL` (any S3-compatible server),
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` (default `us-east-1`).
The opened kvstore is kept per process: Luigi forks its workers, and tensorstore's
handles do not survive a fork.
"""
from __future__ import annotations

import fnmatch
import os
import posixpath
from dataclasses import dataclass, field
from typing import Iterator

from .errors import StoreError
from .urls import store_url_parts

DEFAULT_REGION = "us-east-1"
# A throttled or briefly lost server is retried with backoff, for about 40 s in all; an
# endpoint that is down fails in that time with one line, not after tensorstore's default
# (32 retries up to 32 s apart: many minutes of silence).
RETRIES = (8, "0.5s", "8s")  # max_retries, initial_delay, max_delay
PROBE = ".ndingest-probe"  # a key no store writes (names have no dot): `check_readable` lists only it


@dataclass(frozen=True)
class Bucket:
    """One bucket of one S3-compatible server: what a kvstore spec needs besides the key."""

    bucket: str
    endpoint: str | None
    region: str
    retries: tuple[int, str, str] = RETRIES  # max_retries, initial_delay, max_delay
    _opened: dict = field(default_factory=dict, compare=False, hash=False, repr=False)

    @classmethod
    def from_env(cls, bucket: str) -> "Bucket":
        return cls(bucket, os.environ.get("AWS_ENDPOINT_URL") or None,
                   os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION)

    def __getstate__(self) -> dict:
        return {"bucket": self.bucket, "endpoint": self.endpoint, "region": self.region, "retries": self.retries,
                "_opened": {}}

    def __setstate__(self, state: dict) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)

    def kvstore_spec(self, key: str = "") -> dict:
        """tensorstore's s3 kvstore at `key` (a folder key ends with "/"). Credentials from
        the environment when it has a key id, so no profile file or instance metadata is
        looked for; else the AWS SDK's usual chain."""
        spec = {"driver": "s3", "bucket": self.bucket, "path": key, "aws_region": self.region,
                "context": {"s3_request_retries": dict(zip(("max_retries", "initial_delay", "max_delay"),
                                                           self.retries))}}
        if self.endpoint:
            spec["endpoint"] = self.endpoint
        if os.environ.get("AWS_ACCESS_KEY_ID"):
            spec["aws_credentials"] = {"type": "environment"}
        return spec

    def kvstore(self):
        """The bucket's kvstore at its root, opened once per process."""
        import tensorstore as ts

        pid = os.getpid()
        found = self._opened.get(pid)
        if found is None:
            try:
                found = ts.KvStore.open(self.kvstore_spec()).result()
            except ValueError as exc:
                raise StoreError(f"s3://{self.bucket}: cannot open: {exc}") from exc
            self._opened.clear()
            self._opened[pid] = found
        return found


class KvPath:
    """An object key (or a key prefix, for a "folder") in a bucket."""

    __slots__ = ("bucket", "key")

    def __init__(self, bucket: Bucket, key: str):
        self.bucket = bucket
        self.key = key.strip("/")

    @classmethod
    def from_url(cls, url: str) -> "KvPath":
        """`s3://bucket/prefix`: SpecError naming the URL if it has no bucket."""
        bucket, key = store_url_parts(url)
        return cls(Bucket.from_env(bucket), key)

    # --- names -------------------------------------------------------------------------------
    def __str__(self) -> str:
        return f"s3://{self.bucket.bucket}/{self.key}" if self.key else f"s3://{self.bucket.bucket}"

    def __repr__(self) -> str:
        return f"KvPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KvPath) and (self.bucket.bucket, self.bucket.endpoint, self.key) == \
            (other.bucket.bucket, other.bucket.endpoint, other.key)

    def __hash__(self) -> int:
        return hash((self.bucket.bucket, self.key))

    def __truediv__(self, other: str | os.PathLike) -> "KvPath":
        return KvPath(self.bucket, posixpath.join(self.key, str(other)) if self.key else str(other))

    def joinpath(self, *parts: str) -> "KvPath":
        out = self
        for part in parts:
            out = out / part
        return out

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    @property
    def parent(self) -> "KvPath":
        return KvPath(self.bucket, posixpath.dirname(self.key))

    @property
    def parents(self) -> list["KvPath"]:
        out, here = [], self
        while here.key:
            here = here.parent
            out.append(here)
        return out

    # --- objects -----------------------------------------------------------------------------
    def read_bytes(self) -> bytes:
        try:
            result = self.bucket.kvstore().read(self.key).result()
        except ValueError as exc:
            raise StoreError(f"{self}: cannot read: {exc}") from exc
        if result.state != "value":
            raise FileNotFoundError(2, "no such object", str(self))
        return bytes(result.value)

    def read_range(self, start: int, stop: int | None = None) -> tuple[bytes, int | None]:
        """Bytes [start, stop) of the object in one ranged GET (stop None: to its end; start
        < 0: its last -start bytes), and its whole size when that shows (else None): a
        shard file is read by the range asked, never whole. A range that runs past the end
        is cut at it; FileNotFoundError for a missing object, EOFError when `start` lies at
        or past its end."""
        try:
            result = self.bucket.kvstore().read(self.key, byte_range=slice(start, stop)).result()
        except ValueError as exc:
            if "OUT_OF_RANGE" not in str(exc):
                raise StoreError(f"{self}: cannot read bytes {start}..{stop}: {exc}") from exc
            if stop is None:
                raise EOFError(f"{self}: no byte at {start}") from None
            data, _ = self.read_range(start, None)  # runs past the end: the part before it
            return data, start + len(data)
        if result.state != "value":
            raise FileNotFoundError(2, "no such object", str(self))
        data = bytes(result.value)
        return data, (start + len(data) if stop is None and start >= 0 else None)

    def read_text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.read_bytes().decode(encoding, errors)

    def write_bytes(self, data: bytes) -> int:
        """One PUT: atomic and durable when it returns."""
        try:
            self.bucket.kvstore().write(self.key, bytes(data)).result()
        except ValueError as exc:
            raise StoreError(f"{self}: cannot write: {exc}") from exc
        return len(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> int:
        return self.write_bytes(text.encode(encoding))

    def unlink(self, missing_ok: bool = False) -> None:
        if not missing_ok and not self.is_file():
            raise FileNotFoundError(2, "no such object", str(self))
        try:
            self.bucket.kvstore().write(self.key, None).result()
        except ValueError as exc:
            raise StoreError(f"{self}: cannot delete: {exc}") from exc

    def is_file(self) -> bool:
        try:
            self.read_bytes()
        except FileNotFoundError:
            return False
        return True

    def exists(self) -> bool:
        """An object, or a "folder" holding one."""
        return self.is_file() or bool(self._keys_under())

    def is_dir(self) -> bool:
        return bool(self._keys_under())

    def check_readable(self) -> None:
        """One list request that matches no key of the store (the prefix PROBE, a name the
        layout never writes): StoreError naming the bucket's answer when it is missing or
        cannot be read, without listing what lies under this prefix (millions of keys, maybe)."""
        import tensorstore as ts

        probe = (self / PROBE).key
        try:
            self.bucket.kvstore().list(ts.KvStore.KeyRange(probe, probe + "\x00")).result()
        except ValueError as exc:
            raise StoreError(f"{self}: the bucket cannot be read: {str(exc).split(' [', 1)[0]}") from exc

    def mkdir(self, mode: int = 0o777, parents: bool = False, exist_ok: bool = False) -> None:
        """Nothing to make: a "folder" exists once an object is written under it."""

    # --- folders -----------------------------------------------------------------------------
    def _keys_under(self) -> list[str]:
        """Every key below this "folder", relative to it (one listing)."""
        import tensorstore as ts

        prefix = f"{self.key}/" if self.key else ""
        try:
            found = self.bucket.kvstore().list(ts.KvStore.KeyRange(prefix, _after(prefix))).result()
        except ValueError as exc:
            raise StoreError(f"{self}: cannot list: {exc}") from exc
        return [k.decode()[len(prefix):] for k in found]

    def names(self) -> list[str]:
        """The names right under this "folder" (objects and sub-folders), as `os.listdir`;
        FileNotFoundError when nothing is under it."""
        keys = self._keys_under()
        if not keys:
            raise FileNotFoundError(2, "no such folder", str(self))
        return sorted({k.split("/", 1)[0] for k in keys})

    def iterdir(self) -> Iterator["KvPath"]:
        for name in self.names():
            yield self / name

    def glob(self, pattern: str) -> Iterator["KvPath"]:
        """Objects whose key below this folder matches `pattern`, part by part (no `**`)."""
        parts = pattern.split("/")
        for key in self._keys_under():
            pieces = key.split("/")
            if len(pieces) == len(parts) and all(fnmatch.fnmatchcase(p, q) for p, q in zip(pieces, parts)):
                yield self / key

    def rglob(self, pattern: str) -> Iterator["KvPath"]:
        for key in self._keys_under():
            if fnmatch.fnmatchcase(key.rsplit("/", 1)[-1], pattern):
                yield self / key

    def remove_tree(self) -> None:
        """Every object under this "folder" (`shutil.rmtree`)."""
        import tensorstore as ts

        prefix = f"{self.key}/" if self.key else ""
        try:
            self.bucket.kvstore().delete_range(ts.KvStore.KeyRange(prefix, _after(prefix))).result()
        except ValueError as exc:
            raise StoreError(f"{self}: cannot delete: {exc}") from exc


def _after(prefix: str) -> str:
    """The first key after every key that starts with `prefix` ("" for no limit)."""
    if not prefix:
        return ""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)
