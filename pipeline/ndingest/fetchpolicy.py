"""What a job posted to `serve` may read: the folders of `file://` URLs, the addresses an
http(s) fetch may reach, and how many bytes a download may hold. Pure checks, no network.

`serve` runs each auto-ingest job as an `ndingest ingest` subprocess. The policy travels to
it, and to the Luigi workers it forks, in one environment variable, NDINGEST_JOB_POLICY
(this module's `FetchPolicy` as JSON), which the server sets in the subprocess's
environment only: an environment is inherited by every process of the job, needs no file
a job could overwrite, and is never read from a request. Unset (the CLI's `ingest
ND.json`, any spec): nothing is restricted, the user owns the machine. Set, even to `{}`:

- a `file://` source is read only if its path, symlinks resolved, lies inside one of
  `allow_files` (`serve --allow-files DIR`; the job's own `sources/` folder is added);
- an http(s) fetch connects only to a public address, or to one `fetch_from` allows
  (`serve --fetch-from HOST[:PORT]`). The address is the socket's peer, checked right after
  it connects (`wire.client`), so a DNS answer that changes between a check and the
  connect (rebinding) cannot slip past, and each redirect's connection is checked anew;
- a downloaded HDF5 file holds at most `volume_cap` of its channel's declared size, a slice
  body `slice_bytes`, counted after decompression (a gzip bomb stops at the cap);
- an HDF5 dataset whose voxels live in other files (external storage, virtual sources) is
  refused (`sources`).
"""
from __future__ import annotations

import functools
import ipaddress
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import FetchRefused, SpecError

ENV = "NDINGEST_JOB_POLICY"
SLACK_BYTES = 1 << 20  # added to each cap: headers, an HDF5 file's metadata, a TIFF's tags


@dataclass(frozen=True)
class FetchPolicy:
    allow_files: tuple[str, ...] = ()  # folders, resolved
    fetch_from: tuple[str, ...] = ()  # HOST or HOST:PORT (HOST an address, a network or a name)
    slice_bytes: int | None = None  # one slice body, decoded (a download's cap is its channel's: `ndjson`)

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    def with_files(self, *folders: str | os.PathLike) -> "FetchPolicy":
        return FetchPolicy(self.allow_files + tuple(str(Path(f).resolve()) for f in folders), self.fetch_from,
                           self.slice_bytes)

    def with_slice_bytes(self, slice_bytes: int | None) -> "FetchPolicy":
        return FetchPolicy(self.allow_files, self.fetch_from, slice_bytes)


def make_policy(allow_files=(), fetch_from=()) -> FetchPolicy:
    """The policy of `serve --allow-files … --fetch-from …`; SpecError naming a bad item."""
    folders = []
    for item in allow_files:
        path = Path(item).expanduser()
        if not path.is_dir():
            raise SpecError(f"--allow-files {item}: no such folder")
        folders.append(str(path.resolve()))
    for item in fetch_from:
        host_port(item)
    return FetchPolicy(tuple(folders), tuple(fetch_from))


@functools.lru_cache(maxsize=4)
def _parse(text: str) -> FetchPolicy:
    try:
        found = json.loads(text)
        return FetchPolicy(tuple(found.get("allow_files", ())), tuple(found.get("fetch_from", ())),
                           found.get("slice_bytes"))
    except (ValueError, AttributeError, TypeError):
        # a policy that cannot be read restricts everything rather than nothing
        return FetchPolicy()


def current() -> FetchPolicy | None:
    """This process's policy: None outside a job posted to `serve`."""
    text = os.environ.get(ENV)
    return None if text is None else _parse(text)


# --- addresses ----------------------------------------------------------------------------------
NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_refusal(address: str) -> str | None:
    """Why `address` (an IP address, from a socket) is not a public one, or None if it is:
    loopback, link-local, private, multicast, unspecified, reserved or otherwise not
    global. An IPv6 address that carries an IPv4 one (mapped, 6to4, NAT64) is judged by
    the IPv4 address it reaches."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6:
        inner = ip.ipv4_mapped or ip.sixtofour or (
            ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in NAT64 else None)
        if inner is not None:
            ip = inner
    for name, test in (("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback),
                       ("link-local", ip.is_link_local), ("multicast", ip.is_multicast),
                       ("reserved", ip.is_reserved), ("private", ip.is_private)):
        if test:
            return name
    return None if ip.is_global else "not global"


def host_port(item: str) -> tuple[str, int | None]:
    """`HOST[:PORT]` (an IPv6 address in brackets when a port follows); SpecError otherwise."""
    text = item.strip()
    host, port = text, None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else (None if not rest else "bad")
    elif text.count(":") == 1:
        host, port = text.split(":")
    host = host.lower().rstrip(".")
    if not _is_host(host) or (port is not None and not (port.isdigit() and 0 < int(port) < 65536)):
        raise SpecError(f"--fetch-from {item}: not HOST or HOST:PORT (an IPv6 address as [ADDR]:PORT)")
    return host, None if port is None else int(port)


HOSTNAME_RE = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*")


def _is_host(text: str) -> bool:
    """A host name, an IP address or a network (10.0.0.0/8)."""
    try:
        ipaddress.ip_network(text, strict=False)
        return True
    except ValueError:
        return bool(HOSTNAME_RE.fullmatch(text))


def _host_matches(allowed: str, host: str, peer: str) -> bool:
    if allowed == host.lower().rstrip("."):
        return True
    try:
        return ipaddress.ip_address(peer.split("%", 1)[0]) in ipaddress.ip_network(allowed, strict=False)
    except ValueError:  # a name: only the URL's own name matches it
        return False


def check_peer(policy: FetchPolicy, host: str, port: int, peer: str) -> None:
    """FetchRefused unless the address a connection reached (`peer`, for the URL's `host`
    and `port`) is public or `policy.fetch_from` allows it."""
    why = address_refusal(peer)
    if why is None:
        return
    for item in policy.fetch_from:
        allowed, allowed_port = host_port(item)
        if _host_matches(allowed, host, peer) and allowed_port in (None, port):
            return
    raise FetchRefused(f"{host}:{port} is {peer}, a {why} address: a job posted to serve fetches from it only "
                       f"if serve --fetch-from (NDINGEST_FETCH_FROM) names it")


# --- files and bytes ----------------------------------------------------------------------------
def is_inside(path: str | os.PathLike, folders) -> bool:
    """Whether `path`, every symlink resolved, lies in one of `folders` (resolved too); a path
    that cannot be resolved (a NUL byte in it) lies nowhere."""
    try:
        real = Path(os.path.realpath(path))
    except (ValueError, OSError):
        return False
    return any(real == Path(f) or Path(f) in real.parents for f in (os.path.realpath(f) for f in folders))


def check_file(path: str | os.PathLike, what: str | None = None) -> None:
    """In a job posted to `serve`, FetchRefused unless `path` lies in an allowed folder
    (`what` names it in the message: the URL, else the path)."""
    policy = current()
    if policy is not None and not is_inside(path, policy.allow_files):
        raise FetchRefused(f"{what or path}: outside the folders serve --allow-files (NDINGEST_ALLOW_FILES) "
                           f"allows ({', '.join(policy.allow_files) or 'none'})")


def volume_cap(voxel_bytes: int) -> int:
    """What a download of a volume of `voxel_bytes` may hold: twice that (a chunked HDF5
    stores its edge chunks whole) plus SLACK_BYTES."""
    return 2 * voxel_bytes + SLACK_BYTES
