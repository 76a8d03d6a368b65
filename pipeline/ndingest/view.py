"""`ndingest view`: the store in a local neuroglancer, every channel of a spec as a layer.

The `neuroglancer` package serves its own client and the viewer state; the spec's channel
folders are served beside it by a small file server (`ChannelFiles`: nothing else of the
store, no listings, `serve`'s Host and CORS rules, the viewer's page admitted so a private
project shows), so the client reads each channel as
`precomputed://http://HOST:PORT/DATASET/PROJECT/CHANNEL`, exactly as it would from a
bucket. Both listen on 127.0.0.1 unless told otherwise.

neuroglancer and selenium are the `view` extra (`pip install 'ndingest[view]'`), not
install requirements: this module imports them first, so on a host without them
`ndingest view` stops with one line saying how to get them (exit 2) before it reads the
spec or the store. Nothing else in the package imports them.
"""
from __future__ import annotations

import functools
import http.server
import io
import os
import re
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .errors import MissingExtra, SpecError, StoreError
from .plan import ChannelPlan, Plan
from .webpolicy import WebPolicy, origin_of

try:
    import neuroglancer
    import selenium  # noqa: F401  (neuroglancer.webdriver drives chromium with it, for --screenshot)
except ImportError as exc:
    raise MissingExtra(f"ndingest view needs the view extra (neuroglancer, selenium), and "
                    f"{exc.name or 'one of them'} cannot be imported: pip install 'ndingest[view]'") from exc

# Debian's chromium, as root and offline (no sandbox, no background connections)
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-dev-shm-usage", "--force-device-scale-factor=1"]


RANGE_RE = re.compile(r"bytes=(\d*)-(\d*)")


class ChannelFiles(http.server.SimpleHTTPRequestHandler):
    """The spec's channel folders and nothing else of the store, quietly, under `serve`'s
    browser rules (`WebPolicy`): a foreign `Host` is 400 (DNS rebinding); a file outside
    the channel folders (the catalog, another project, markers), a folder (no listings),
    a hidden name or a path that resolves elsewhere is 404; CORS is `*` for a public
    project's files, a private one's only to the admitted origins (the viewer's own page).
    A single byte range is answered 206: neuroglancer reads a sharded volume's shard files
    by range (and without it draws nothing). A range it cannot parse gets the whole file
    (200), as HTTP allows; one past the end, 416.

    `channels` maps each served folder (`DATASET/PROJECT/CHANNEL[/tN]`, below `directory`)
    to whether its project is public."""

    def __init__(self, *args, channels: dict[str, bool], policy: WebPolicy, **kwargs):
        self.channels, self.policy, self.cors = channels, policy, {}
        super().__init__(*args, **kwargs)

    def end_headers(self) -> None:
        for name, value in self.cors.items():
            self.send_header(name, value)
        if self.cors:
            self.send_header("Access-Control-Expose-Headers", "Content-Range, Content-Length, Accept-Ranges")
        super().end_headers()

    def served_path(self) -> str | None:
        """The file the request names inside a channel folder; None when it names nothing
        served (a listing included). Sets the answer's CORS first (a 404 of a public
        channel carries `*` too: neuroglancer reads a missing chunk as fill)."""
        path = urllib.parse.unquote(self.path.split("?", 1)[0].split("#", 1)[0])
        parts = path.split("/")[1:]
        for folder, public in self.channels.items():
            depth = folder.count("/") + 1
            if "/".join(parts[:depth]) == folder:
                self.cors = self.policy.cors_headers(public=public, origin=self.headers.get("Origin"))
                inside = parts[depth:]
                if not inside or any(p in ("", ".", "..") or p.startswith(".") or "\\" in p or "\x00" in p
                                     for p in inside):
                    return None
                root = os.path.realpath(os.path.join(self.directory, folder))
                target = os.path.realpath(os.path.join(root, *inside))
                if os.path.commonpath([root, target]) != root or not os.path.isfile(target):
                    return None
                return target
        return None

    def refused(self) -> bool:
        """Answer 400 for a foreign Host; True if so. Starts each request's answer without CORS."""
        self.cors = {}
        why = self.policy.host_refusal(self.headers.get("Host"))
        if why:
            self.send_error(400, why)
        return bool(why)

    def do_OPTIONS(self) -> None:
        """A CORS preflight, which a `Range` header may cause; admitted as the file would be."""
        if self.refused():
            return
        self.served_path()
        self.send_response(204)
        if self.cors:
            self.send_header("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
            self.send_header("Access-Control-Allow-Headers", "Range")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def send_head(self):
        if self.refused():
            return None
        path = self.served_path()
        if path is None:
            self.send_error(404, "no such file")
            return None
        wanted = RANGE_RE.fullmatch((self.headers.get("Range") or "").strip())
        f = open(path, "rb")
        size = os.fstat(f.fileno()).st_size
        if wanted is None:
            self.send_response(200)
            self.send_header("Content-Type", self.guess_type(path))
            self.send_header("Content-Length", str(size))
            self.end_headers()
            return f
        with f:
            first, last = wanted.groups()
            if first == "":  # the last N bytes
                start, end = max(0, size - int(last or 0)), size - 1
            else:
                start, end = int(first), min(int(last), size - 1) if last else size - 1
            if start >= size or start > end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            f.seek(start)
            body = f.read(end - start + 1)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)

    def log_message(self, *args) -> None:
        pass


class StoreServer:
    """The channel folders of a store over HTTP (see `ChannelFiles`), on a thread, until
    `close()`. `channels` maps each folder below `folder` to whether it is public;
    `allow_origins` are the pages that may read the private ones (the viewer's)."""

    def __init__(self, folder: Path, *, channels: dict[str, bool], allow_origins: tuple[str, ...] = (),
                 bind: str = "127.0.0.1", port: int = 0, handler=ChannelFiles):
        policy = WebPolicy(bind, tuple(allow_origins))
        self.httpd = http.server.ThreadingHTTPServer(
            (bind, port), functools.partial(handler, directory=str(folder), channels=dict(channels), policy=policy))
        self.httpd.daemon_threads = True
        host, port = self.httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def layer_for(cp: ChannelPlan, source: str, window: tuple[float, float]):
    """Image channels in grey over their window range; annotation channels as segments."""
    if cp.spec.type == "annotation":
        return neuroglancer.SegmentationLayer(source=source)
    return neuroglancer.ImageLayer(source=source, shader_controls={"normalized": {"range": list(window)}})


@dataclass
class Viewing:
    viewer: object
    server: StoreServer

    @property
    def url(self) -> str:
        return self.viewer.get_viewer_url()

    def close(self) -> None:
        self.server.close()
        neuroglancer.server.stop()


def open_viewer(plan: Plan, windows: dict[str, tuple[float, float]], *, bind: str = "127.0.0.1",
                port: int = 0, t: int = 0) -> Viewing:
    """A neuroglancer viewer on every channel (time point `t`), centred on the dataset."""
    missing = [cp.name for cp in plan.channels.values() if plan.store.info(cp.ref(t)) is None]
    if missing:
        raise SpecError(f"{plan.store.path}: channel {missing[0]} is not in the store; run ingest first")
    neuroglancer.set_server_bind_address(bind, port)
    viewer = neuroglancer.Viewer()
    scheme, host, viewer_port = origin_of(viewer.get_viewer_url())
    public = plan.spec.project.public
    server = StoreServer(plan.store.path, channels={str(cp.ref(t)): public for cp in plan.channels.values()},
                         allow_origins=(f"{scheme}://{host}:{viewer_port}",), bind=bind)
    extent = next(iter(plan.channels.values())).extent
    with viewer.txn() as s:
        s.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm",
                                                    scales=list(plan.spec.dataset.voxel_resolution_nm))
        b, shape = extent.begin, extent.shape
        s.position = [b.x + shape.x // 2, b.y + shape.y // 2, b.z + shape.z // 2 + 0.5]
        s.cross_section_scale = 1
        s.layout = "4panel"
        for cp in plan.channels.values():
            s.layers[cp.name] = layer_for(cp, f"precomputed://{server.url}/{cp.ref(t)}", windows[cp.name])
    return Viewing(viewer, server)


def screenshot(viewing: Viewing, path: Path, *, size: tuple[int, int] = (1000, 700), timeout: float = 60.0) -> None:
    """What the viewer draws, from Debian's headless chromium, as a PNG (for READMEs)."""
    import os

    import neuroglancer.webdriver

    if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
        raise StoreError(f"{CHROMIUM} or {CHROMEDRIVER} is missing: apt-get install chromium chromium-driver")
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must not go online for a driver
    os.environ.setdefault("SE_CHROMEDRIVER", str(CHROMEDRIVER))
    viewer = viewing.viewer
    with viewer.config_state.txn() as s:
        s.viewer_size = list(size)
    with neuroglancer.webdriver.Webdriver(viewer, headless=True, browser="chrome", browser_binary_path=str(CHROMIUM),
                                          extra_command_line_args=CHROMIUM_ARGS, print_logs=False):
        done = threading.Event()
        reply = []
        viewer.async_screenshot(lambda s: (reply.append(s), done.set()))
        if not done.wait(timeout):
            raise StoreError(f"neuroglancer did not finish drawing within {timeout:.0f} s")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(reply[0].screenshot.image)
