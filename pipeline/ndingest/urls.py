"""What a store or source text names, told by its URL alone: no I/O, no other module.

Here, below the spec, so that the spec can check a `[store] path` or a channel's `source`
without importing the store (`kvpath`) or the reader (`webslices`) that opens it.
"""
from __future__ import annotations

import os
from urllib.parse import urlsplit

from .errors import SpecError

STORE_SCHEMES = ("s3",)  # object stores a store path may name (`kvpath`)
SLICE_SCHEMES = ("http", "https", "file")  # where slices by URL pattern are read (`webslices`)


def is_url(text: str | os.PathLike) -> bool:
    """Whether a store path names an object store rather than a folder."""
    return isinstance(text, str) and urlsplit(text).scheme in STORE_SCHEMES


def store_url_parts(url: str) -> tuple[str, str]:
    """(bucket, key) of `s3://bucket/prefix`, the key without its outer slashes;
    SpecError naming the URL if it has no bucket."""
    parts = urlsplit(url)
    if parts.scheme not in STORE_SCHEMES or not parts.netloc:
        raise SpecError(f"{url}: not an object store URL (s3://bucket/prefix)")
    return parts.netloc, parts.path.strip("/")


def store_url(url: str) -> str:
    """`url` as `KvPath` prints it (no trailing slash): the one spelling of a bucket store."""
    bucket, key = store_url_parts(url)
    return f"s3://{bucket}/{key}" if key else f"s3://{bucket}"


def names_web_slices(source: str) -> bool:
    """Whether `source` is a URL pattern of slices (`{z...}` in an http(s) or file URL)."""
    return urlsplit(source).scheme in SLICE_SCHEMES and "{z" in source
