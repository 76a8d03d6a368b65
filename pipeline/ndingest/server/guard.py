"""What keeps a web page from using `serve` (a browser can reach 127.0.0.1 too), before any
route runs:

- `Guard`, on every request:
  - Host: bound to a loopback address, the `Host` header must name a loopback address or
    `localhost` (any port) or an `--allow-host` name, else 400, so a DNS-rebinding page
    (its own name resolving to 127.0.0.1) cannot read or write. Bound elsewhere, the
    `--allow-host` names, when given, are the only Hosts answered.
  - writes (every method but GET, HEAD, OPTIONS, and the GET `setPropagate`): an `Origin`
    other than the server's own (scheme://Host of the request) or an `--allow-origin` one is
    403; without Origin, `Sec-Fetch-Site: cross-site` or `same-site` is 403 (an `<img>` GET
    sends no Origin, but does send that). ndio, requests and curl send neither.
  - the Content-Types a plain HTML form may send (`text/plain`,
    `application/x-www-form-urlencoded`, `multipart/form-data`) are 415 on writes: JSON routes
    take `application/json` or none, cutout POSTs binary bodies.
- `Cors`, under `/precomputed/`: `Access-Control-Allow-Origin: *` only for public projects
  (neuroglancer on any page reads them); a private project's files answer CORS only to an
  `--allow-origin` origin (named back, with `Vary: Origin`), preflights alike.

Every refusal is one text/plain line naming what was refused.
"""
from __future__ import annotations

from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..webpolicy import WebPolicy, host_name, is_loopback, origin_of  # noqa: F401  (is_loopback: serve's warning)

READS = frozenset({"GET", "HEAD", "OPTIONS"})
WRITES_BY_GET = frozenset({"setPropagate"})  # path segments of GETs that change state
FORM_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})

PRECOMPUTED = "/precomputed/"
CORS_HEADERS = {
    "Access-Control-Expose-Headers": "Content-Range, Content-Length, Accept-Ranges, ETag, Last-Modified",
}
PREFLIGHT_HEADERS = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "GET, HEAD, OPTIONS",
    "Access-Control-Allow-Headers": "Range, If-Range, Authorization, Content-Type, Cache-Control",
    "Access-Control-Max-Age": "86400",
}


def split_list(text: str | None) -> tuple[str, ...]:
    """An `NDINGEST_ALLOW_…` variable's items: comma- or space-separated."""
    return tuple(item for item in (text or "").replace(",", " ").split() if item)


def _write(scope: Scope) -> bool:
    return scope["method"] not in READS or bool(WRITES_BY_GET.intersection(scope["path"].split("/")))


class Guard:
    """The Host, Origin, Sec-Fetch-Site and Content-Type checks (see the module's doc)."""

    def __init__(self, app: ASGIApp, policy: WebPolicy):
        self.app, self.policy = app, policy

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        headers = Headers(scope=scope)
        host = headers.get("host")
        why = self.policy.host_refusal(host)
        if why:
            return 400, why
        if not _write(scope):
            return None
        what = f"{scope['method']} {scope['path']}"
        origin = headers.get("origin")
        if origin is not None:
            own = origin_of(f"{scope.get('scheme', 'http')}://{host}") if host else None
            theirs = origin_of(origin)
            if theirs is None or (theirs != own and not self.policy.origin_allowed(origin)):
                return 403, (f"{what}: Origin {origin!r} may not write here (only this server's own "
                             "origin or an --allow-origin one)")
        else:
            site = headers.get("sec-fetch-site", "").strip().lower()
            if site in ("cross-site", "same-site"):
                return 403, f"{what}: sent by a {site} web page (Sec-Fetch-Site), which may not write here"
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in FORM_TYPES:
            return 415, (f"{what}: Content-Type {kind} (a web form's) is refused; send application/json, "
                         "a cutout's binary body, or no Content-Type")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = self.refusal(scope)
            if refused:
                status, line = refused
                await PlainTextResponse(" ".join(line.split()) + "\n", status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Cors:
    """CORS under `/precomputed/`: `*` for a public project's files (errors too: a missing
    chunk's 404 is read as fill), only an `--allow-origin` origin for a private one's;
    OPTIONS preflights answered here, before routing (they need no channel).
    `is_public(project)` says which."""

    def __init__(self, app: ASGIApp, is_public, policy: WebPolicy, prefix: str = PRECOMPUTED):
        self.app, self.is_public, self.policy, self.prefix = app, is_public, policy, prefix

    def allow_origin(self, scope: Scope) -> dict[str, str]:
        """The Access-Control-Allow-Origin header (and Vary) this request's answer carries."""
        parts = scope["path"][len(self.prefix):].split("/")
        project = parts[1] if len(parts) > 1 else ""
        try:
            public = bool(project) and self.is_public(project)
        except Exception:  # no catalog yet, say: not public
            public = False
        return self.policy.cors_headers(public=public, origin=Headers(scope=scope).get("origin"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        allow = self.allow_origin(scope)
        if scope["method"] == "OPTIONS" and "access-control-request-method" in Headers(scope=scope):
            await Response(status_code=204, headers={**PREFLIGHT_HEADERS, **allow} if allow else {})(
                scope, receive, send)
            return
        if not allow:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in {**CORS_HEADERS, **allow}.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_cors)
