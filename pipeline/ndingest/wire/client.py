"""The HTTP client every reader, store and job shares: one retrying `requests.Session`
per process, bounded pools of requests under way, and one-line errors.

`Client` mounts urllib3's `Retry`, which retries connection errors and 5xx with backoff,
POSTs included (a replace-mode cutout POST or a resource POST of the same values is
idempotent), and never a 4xx. An HTTP failure is one `RemoteError` line naming the method,
URL and the server's one-line answer (exit 8); a 409 is a `CatalogConflict` (exit 4). The
key is sent as `Authorization: Token <key>` and never appears in a message.

In a job posted to `serve` (`fetchpolicy.current()` is set), the session's connections
check the address they reached right after connecting (`_PeerChecked`), and bodies are read
through `decoded_pieces`, which counts decoded bytes against a cap.

Here, below the readers and the stores, so that a reader of a server's channel
(`ndstore`) or of slices by URL (`webslices`) does not import the remote target to reach it.
"""
from __future__ import annotations

import logging
import os
import re
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Iterator
from urllib.parse import urlsplit

from .. import fetchpolicy
from ..errors import CatalogConflict, FetchRefused, NdingestError, RemoteError, SourceError

if TYPE_CHECKING:
    import requests

KEY_ENV = "NDINGEST_API_KEY"
RETRIES = 5  # per request; with BACKOFF, about 3 s of waiting for a server that is down
BACKOFF = 0.1  # s; urllib3 waits 0, 2, 4, 8, 16 x this between tries
RETRY_STATUSES = (500, 502, 503, 504)
IN_FLIGHT = 4  # cutout requests under way at once per process: a small bounded pool
SMALL_IN_FLIGHT = 16  # HEADs under way at once: tiny answers, so the link's latency bounds them
TIMEOUT = (10.0, 600.0)  # s to connect, s to wait for an answer (a POST is flushed before it)
UNREACHABLE_SECONDS = 60.0  # after a request ran out of retries, others fail at once this long
DECODE_PIECE = 1 << 20  # bytes read, and at most decompressed, at a time by `decoded_pieces`
ACCEPT_ENCODING = "gzip, deflate"  # what `decoded_pieces` decodes (requests would offer br too)


def one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _reason(exc: Exception) -> str:
    """The OS's words for a connection failure ("Connection refused"), not urllib3's nest."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip()
    if "aborted" in text.lower() or "disconnected" in text.lower() or "reset" in text.lower():
        return "the connection was lost"
    return one_line(text, 120)


class Client:
    """The URL, the key and one retrying session per process (sessions do not survive
    Luigi's fork; pickling drops them, and the key stays out of `repr`).

    Once a request has run out of retries on a server it cannot reach, every request of
    this process fails at once for `UNREACHABLE_SECONDS`: Luigi runs the tasks left after
    a failed one, and each would otherwise spend its own retries on a server that is down.
    """

    def __init__(self, url: str, *, key: str | None = None, retries: int = RETRIES, backoff: float = BACKOFF):
        self.url = url.rstrip("/")
        self.key = key or None
        self.retries, self.backoff = retries, backoff
        self._sessions: dict[int, requests.Session] = {}
        self._unreachable: tuple[float, str] | None = None  # (when, why) the last request gave up

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_sessions": {}, "_unreachable": None}

    def __repr__(self) -> str:
        return f"Client({self.url!r}, key={'set' if self.key else None})"

    @property
    def root(self) -> str:
        """scheme://host:port, where `/precomputed/` is served."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    def session(self) -> "requests.Session":
        import requests
        from requests.adapters import HTTPAdapter
        from urllib3.util.retry import Retry

        pid = os.getpid()
        found = self._sessions.get(pid)
        if found is None:
            retry = Retry(total=self.retries, connect=self.retries, read=self.retries, status=self.retries,
                          other=0, backoff_factor=self.backoff, status_forcelist=RETRY_STATUSES,
                          allowed_methods=frozenset({"HEAD", "GET", "POST", "PUT", "PATCH", "DELETE"}),
                          raise_on_status=False)
            checked = fetchpolicy.current() is not None
            adapter = (checked_adapter() if checked else HTTPAdapter)(
                max_retries=retry, pool_connections=2, pool_maxsize=max(2 * IN_FLIGHT, SMALL_IN_FLIGHT))
            found = requests.Session()
            found.trust_env = not checked  # a job's fetches go straight to the host, through no proxy
            found.headers["Accept-Encoding"] = ACCEPT_ENCODING
            found.mount("http://", adapter)
            found.mount("https://", adapter)
            if self.key:
                found.headers["Authorization"] = f"Token {self.key}"
            self._sessions = {pid: found}
        return found

    def request(self, method: str, url: str, *, expect: tuple[int, ...] = (200,), **kwargs) -> "requests.Response":
        """The server's answer if its status is one of `expect`; else the error it means."""
        import requests

        if self._unreachable is not None and time.monotonic() - self._unreachable[0] < UNREACHABLE_SECONDS:
            raise RemoteError(f"{method} {url}: cannot reach the server at {self.url} ({self._unreachable[1]} "
                              f"{time.monotonic() - self._unreachable[0]:.0f} s ago; not tried again)")
        try:
            reply = self.session().request(method, url, timeout=TIMEOUT, **kwargs)
        except FetchRefused as exc:
            raise FetchRefused(f"{url}: {exc}") from None
        except requests.exceptions.ConnectionError as exc:
            self._unreachable = (time.monotonic(), _reason(exc))
            raise RemoteError(f"{method} {url}: cannot reach the server at {self.url} ({_reason(exc)}, "
                              f"after {self.retries} retries)") from exc
        except requests.exceptions.RequestException as exc:
            raise RemoteError(f"{method} {url}: {type(exc).__name__}: {one_line(str(exc), 200)}") from exc
        if reply.status_code in expect:
            return reply
        raise self.error(method, url, reply)

    def error(self, method: str, url: str, reply: "requests.Response") -> NdingestError:
        status, line = reply.status_code, one_line(reply.text) or reply.reason
        if status == 409:
            return CatalogConflict(f"{self.url}: {line} ({method} {url})")
        if status == 401 and self.key is None:
            return RemoteError(f"{method} {url}: the server at {self.url} wants a key and none was sent; set "
                               f"{KEY_ENV} ({status}: {line})")
        if status == 401 or (status == 403 and "key" in line.lower()):  # not a readonly channel's 403
            return RemoteError(f"{method} {url}: the server at {self.url} refused the key in {KEY_ENV} "
                               f"({status}: {line})")
        return RemoteError(f"{method} {url}: {status} {line}")

    def get_json(self, url: str) -> dict | None:
        """A resource as JSON, or None when the server answers 404."""
        reply = self.request("GET", url, expect=(200, 404))
        if reply.status_code == 404:
            return None
        try:
            return reply.json()
        except ValueError as exc:
            raise RemoteError(f"GET {url}: the answer is not JSON: {one_line(reply.text, 120)}") from exc


def checked_adapter() -> type:
    """requests' HTTPAdapter whose connections check their peer address against this
    process's `fetchpolicy` right after connecting, before a byte is sent: after DNS, so a
    name that resolves elsewhere at connect time (rebinding) is caught, and on every
    connection, so each redirect's hop is too. A refusal is `FetchRefused`, which urllib3
    does not retry (it is no OSError)."""
    from requests.adapters import HTTPAdapter
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    class PeerChecked:
        def _new_conn(self):
            sock = super()._new_conn()
            try:
                policy = fetchpolicy.current() or fetchpolicy.FetchPolicy()
                fetchpolicy.check_peer(policy, self.host, self.port, sock.getpeername()[0])
            except BaseException:
                sock.close()
                raise
            return sock

    class CheckedHTTP(PeerChecked, HTTPConnection):
        pass

    class CheckedHTTPS(PeerChecked, HTTPSConnection):
        pass

    class CheckedHTTPPool(HTTPConnectionPool):
        ConnectionCls = CheckedHTTP

    class CheckedHTTPSPool(HTTPSConnectionPool):
        ConnectionCls = CheckedHTTPS

    class CheckedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": CheckedHTTPPool, "https": CheckedHTTPSPool}

        def proxy_manager_for(self, proxy, **kwargs):
            raise FetchRefused(f"{proxy}: a job posted to serve fetches through no proxy")

    return CheckedAdapter


def decoded_pieces(reply: "requests.Response", url: str, *, cap: int | None) -> Iterator[bytes]:
    """The body of a streamed `reply`, decoded (Content-Encoding gzip, deflate or none), in
    pieces of at most DECODE_PIECE bytes; FetchRefused naming `url` once more than `cap`
    decoded bytes came. Each piece is inflated at most DECODE_PIECE at a time, so a small
    body that inflates to gigabytes stops at the cap instead of filling memory."""
    encoding = reply.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        decoder = None
    elif encoding in ("gzip", "x-gzip", "deflate"):
        decoder = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib, told by the header
    else:
        raise SourceError(f"{url}: Content-Encoding {encoding!r} is not read (gzip, deflate or none)")
    total = 0
    for raw in reply.raw.stream(DECODE_PIECE, decode_content=False):
        for piece in ([raw] if decoder is None else _inflate(decoder, raw, url)):
            total += len(piece)
            if cap is not None and total > cap:
                raise FetchRefused(f"{url}: the answer holds more than {cap:,} bytes (decoded), the cap of a "
                                   f"job posted to serve for it")
            yield piece


def _inflate(decoder, data: bytes, url: str) -> Iterator[bytes]:
    while not decoder.eof:
        try:
            out = decoder.decompress(data, DECODE_PIECE)
        except zlib.error as exc:
            raise SourceError(f"{url}: its compressed body is broken: {exc}") from None
        data = decoder.unconsumed_tail
        if out:
            yield out
        if not data and len(out) < DECODE_PIECE:  # all taken in, and nothing held back
            return


def process_pool(pools: dict[tuple[int, str], ThreadPoolExecutor], name: str,
                 size: int = IN_FLIGHT) -> ThreadPoolExecutor:
    """This process's pool `name` of `size` request threads in `pools` (an object's own
    dict, emptied when it is pickled), made on first use: threads do not survive Luigi's fork."""
    pid = os.getpid()
    if any(key[0] != pid for key in pools):
        pools.clear()  # a parent's threads: gone in this process
    if (pid, name) not in pools:
        pools[(pid, name)] = ThreadPoolExecutor(size, thread_name_prefix=name)
    return pools[(pid, name)]


def quiet_retries() -> None:
    """urllib3 logs every retry as a WARNING; here a retry is expected, and the request that
    finally fails becomes our one line. Under --debug (root logger at DEBUG) they stay."""
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
