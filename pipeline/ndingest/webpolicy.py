"""What a browser may do with ndingest's HTTP servers (`serve`'s guard and `view`'s file
server share it): which `Host` headers a server answers, which origins it admits besides
its own, and the CORS headers a file's answer carries. Pure: no HTTP framework here.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or name, no port) is this machine only: a loopback
    address, or `localhost`."""
    name = host.strip().strip("[]").rstrip(".").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name or address of a `Host` header, without its port or IPv6 brackets, lower case."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:header.find("]")] if "]" in header else header
    name, colon, port = header.rpartition(":")
    return name if colon and port.isdigit() and name.count(":") == 0 else header


def origin_of(text: str) -> tuple[str, str, int] | None:
    """An origin (`scheme://host[:port]`) as (scheme, host, port), the port filled in; None
    if it is not one (`null`, say)."""
    try:
        parts = urlsplit(text.strip().lower())
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname or port is None:
        return None
    return parts.scheme, parts.hostname, port


@dataclass(frozen=True)
class WebPolicy:
    """`serve`'s settings for browsers: where it is bound (`bound_host`, loopback by
    default), the origins admitted besides its own, and the Host names admitted besides
    loopback ones."""

    bound_host: str = "127.0.0.1"
    allow_origins: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()

    @property
    def loopback(self) -> bool:
        return is_loopback(self.bound_host)

    def origin_allowed(self, origin: str) -> bool:
        mine = origin_of(origin)
        return mine is not None and any(origin_of(o) == mine for o in self.allow_origins)

    def host_refusal(self, host: str | None) -> str | None:
        """Why a request with this `Host` is not answered, or None. A request without Host
        (HTTP/1.0) is answered: browsers always send one."""
        if host is None:
            return None
        allowed = {h.lower() for h in self.allow_hosts}
        if host.strip().lower() in allowed or host_name(host) in allowed:
            return None
        if self.loopback:
            if is_loopback(host_name(host)):
                return None
            return (f"Host {host!r} is not this server's: bound to {self.bound_host}, it answers "
                    "Host localhost or a loopback address (or an --allow-host name)")
        if allowed:
            return f"Host {host!r} is not one this server answers (--allow-host)"
        return None

    def cors_headers(self, *, public: bool, origin: str | None) -> dict[str, str]:
        """The CORS headers of a file's answer: `*` for a public project's (any page's
        neuroglancer may read it), a private one's only to an admitted origin (named back,
        with `Vary: Origin`), else none."""
        if public:
            return {"Access-Control-Allow-Origin": "*"}
        if origin and self.origin_allowed(origin):
            return {"Access-Control-Allow-Origin": origin.strip(), "Vary": "Origin"}
        return {}
