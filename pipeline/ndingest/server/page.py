"""`GET /`: one small HTML page over the store, for a person with a browser.

Datasets, their projects, tokens and channels with sizes; an xy thumbnail per channel (the
slice route at the middle z of the top level); and a neuroglancer link per project whose
layers are this server's `precomputed://` routes. Every name is escaped. With a key file,
private tokens are only counted, not shown (a browser's <img> sends no key).
"""
from __future__ import annotations

import html
import json
import logging
import urllib.parse

from starlette.requests import Request
from starlette.responses import HTMLResponse

from .. import catalog
from .context import ChannelView, ServerContext, TokenView

logger = logging.getLogger(__name__)

NEUROGLANCER = "https://neuroglancer-demo.appspot.com/"  # any neuroglancer client; state in the URL fragment
THUMBNAIL_PX = 160

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
img.thumb { max-width: 160px; max-height: 160px; image-rendering: pixelated; }
code { font-size: 0.9em; }
"""


def thumbnail_url(channel: ChannelView) -> str:
    """The xy slice route at the middle z of the channel's top level (few voxels to read)."""
    level = channel.levels[-1]
    e = level.extent
    z = (e.begin.z + e.end.z - 1) // 2
    t = f"{channel.time_range[0]}/" if channel.is_timeseries else ""
    return (f"/nd/sd/{_q(channel.token.name)}/{_q(channel.name)}/xy/{level.level}/"
            f"{e.begin.x},{e.end.x}/{e.begin.y},{e.end.y}/{z}/{t}")


def _q(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def precomputed_source(base: str, channel: ChannelView) -> str:
    ref = channel.ref()
    return "precomputed://" + base + "/precomputed/" + "/".join(_q(p) for p in ref.parts)


def neuroglancer_url(base: str, token: TokenView, channels: list[ChannelView]) -> str:
    """A neuroglancer link with one layer per channel, centred on the dataset (as `view` does)."""
    ds = token.dataset
    res = [float(ds[f"{a}voxelres"]) for a in "xyz"]
    centre = [int(ds[f"{a}offset"]) + int(ds[f"{a}imagesize"]) // 2 for a in "xyz"]
    layers = []
    for c in channels:
        layer = {"type": "segmentation" if c.channel_type == "annotation" else "image",
                 "source": precomputed_source(base, c), "name": c.name}
        if c.channel_type != "annotation":
            layer["shaderControls"] = {"normalized": {"range": list(c.window)}}
        layers.append(layer)
    state = {
        "dimensions": {axis: [r * 1e-9, "m"] for axis, r in zip("xyz", res)},
        "position": [centre[0], centre[1], centre[2] + 0.5],
        "crossSectionScale": 1,
        "layers": layers,
        "layout": "4panel",
    }
    return NEUROGLANCER + "#!" + urllib.parse.quote(json.dumps(state, separators=(",", ":")), safe="")


def _size(channel: ChannelView) -> str:
    shape = channel.levels[0].extent.shape
    t0, t1 = channel.time_range
    times = f" × {t1 - t0 + 1} time points" if channel.is_timeseries else ""
    return f"{shape.x} × {shape.y} × {shape.z}{times}"


def channel_row_html(channel: ChannelView) -> str:
    e = html.escape
    thumb = thumbnail_url(channel)
    return (f"<tr><td>{e(channel.name)}</td><td>{e(channel.channel_type)}</td><td>{e(channel.datatype)}</td>"
            f"<td>{e(_size(channel))}</td><td>{len(channel.levels)}</td>"
            f"<td><a href=\"{e(thumb)}\"><img class=\"thumb\" alt=\"{e(channel.name)} xy\" "
            f"src=\"{e(thumb)}\"></a></td></tr>")


def token_html(ctx: ServerContext, base: str, token: TokenView) -> str:
    e = html.escape
    channels = ctx.channels(token)
    rows = "".join(channel_row_html(c) for c in channels)
    link = (f"<a class=\"neuroglancer\" href=\"{e(neuroglancer_url(base, token, channels))}\">open in neuroglancer</a>"
            if channels else "no channels yet")
    access = "public" if token.public else "private"
    return (f"<h3>project {e(token.project_name)} — token <code>{e(token.name)}</code> ({access})</h3>"
            f"<p>{link} · <a href=\"/nd/sd/{e(_q(token.name))}/info/\">project info (JSON)</a></p>"
            f"<table><tr><th>channel</th><th>type</th><th>datatype</th><th>size x × y × z</th><th>levels</th>"
            f"<th>xy</th></tr>{rows}</table>")


def page_html(ctx: ServerContext, base: str) -> str:
    e = html.escape
    datasets = sorted(ctx.rows(catalog.datasets), key=lambda r: r["dataset_name"])
    tokens = sorted(ctx.rows(catalog.tokens), key=lambda r: r["token_name"])
    parts = []
    for ds in datasets:
        if ctx.keyring is not None and not ds["public"]:
            parts.append("<h2>a private dataset</h2>")
            continue
        size = " × ".join(str(ds[f"{a}imagesize"]) for a in "xyz")
        offset = ", ".join(str(ds[f"{a}offset"]) for a in "xyz")
        res = " × ".join(f"{ds[f'{a}voxelres']:g}" for a in "xyz")
        parts.append(f"<h2>dataset {e(ds['dataset_name'])}</h2><p>{e(size)} voxels at offset ({e(offset)}), "
                     f"{e(res)} nm, levels 0..{int(ds['scalinglevels'])}</p>")
        for tk in tokens:
            try:
                view = ctx.token(tk["token_name"])
            except Exception:  # a dangling token: show the rest
                logger.warning("token %s cannot be opened", tk["token_name"], exc_info=True)
                continue
            if view.dataset_name != ds["dataset_name"]:
                continue
            if view.public or ctx.keyring is None:
                parts.append(token_html(ctx, base, view))
            else:  # with keys, a private token's names and thumbnails are for key holders only
                parts.append("<p>a private token (its reads need a key)</p>")
    body = "".join(parts) or f"<p>The store {e(str(ctx.store))} holds no dataset yet.</p>"
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>ndingest serve</title>"
            f"<style>{STYLE}</style></head><body><h1>ndingest serve</h1>{body}</body></html>")


def routes(ctx: ServerContext) -> list:
    from starlette.routing import Route

    def index(request: Request) -> HTMLResponse:
        base = str(request.base_url).rstrip("/")
        return HTMLResponse(page_html(ctx, base))

    return [Route("/", index, methods=["GET"])]
