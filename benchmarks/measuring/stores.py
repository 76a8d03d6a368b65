"""Precomputed volumes: opening one with tensorstore (as the server reads it, or as the
hand-written copies write it, in a folder or through tensorstore's s3 kvstore), and what a
run wrote, counted by kind (`Written`: from a folder here, from a bucket in `s3`)."""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the parent never imports tensorstore
    import tensorstore

    from measuring.volumes import Volume


# --- opening a volume ----------------------------------------------------------------------

NO_CACHE = {"cache_pool": {"total_bytes_limit": 0}}  # as the server opens a volume


def open_precomputed(out: Path, context: dict | None = None, *, create_info: dict | None = None,
                     level: int = 0) -> tensorstore.TensorStore:
    """Scale `level` of the precomputed volume in folder `out` (`create_info`: written first,
    the folder made); `context` None is tensorstore's default context."""
    import tensorstore as ts

    if create_info is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "info").write_text(json.dumps(create_info, indent=1))
    spec: dict = {"driver": "neuroglancer_precomputed", "kvstore": {"driver": "file", "path": f"{out}/"},
                  "scale_index": level, "open": True}
    if context is not None:
        spec["context"] = context
    return ts.open(spec).result()


def open_level0(volume: Path):
    """Level 0 of `volume` as `ndingest serve` reads it: no cache pool."""
    return open_precomputed(volume, NO_CACHE)


def read_zyx(handle, box) -> "object":
    """(z, y, x) voxels of box ((x0, x1), (y0, y1), (z0, z1)), as the server reads them."""
    (x0, x1), (y0, y1), (z0, z1) = box
    return handle[x0:x1, y0:y1, z0:z1, 0].read(order="F").result().T


def open_layout(vol: Volume, out: str, *, sharded: bool) -> tensorstore.TensorStore:
    """A fresh precomputed volume at `out` (a folder, or s3://bucket/prefix through
    tensorstore's s3 kvstore as ndingest's `kvpath.Bucket` specifies it), with ndingest's
    `info`; tensorstore's default context."""
    import tensorstore as ts
    from ndingest.kvpath import KvPath
    from ndingest.urls import is_url

    info = vol.info(sharded=sharded)
    if not is_url(out):
        return open_precomputed(Path(out), None, create_info=info)
    folder = KvPath.from_url(out)
    kvstore = folder.bucket.kvstore_spec(folder.key + "/")
    ts.KvStore.open(kvstore).result().write("info", json.dumps(info, indent=1).encode()).result()
    return ts.open({"driver": "neuroglancer_precomputed", "kvstore": kvstore, "scale_index": 0,
                    "open": True}).result()


# --- what a run left: files in a folder, or objects under a bucket prefix ----------------------

LAYOUT_KEYS = ("voxel_offset", "size", "chunk_sizes", "encoding", "sharding")
VOXEL_FILE = re.compile(r"\d+-\d+_\d+-\d+_\d+-\d+|[0-9a-f]+\.shard")  # a chunk key, or a shard file


@dataclass(frozen=True)
class Written:
    """What one run wrote, by kind: voxel files (chunk or shard files, told by name: the
    scale's folder is `32_32_40` for ndingest, `32.0_32.0_40.0` for CloudVolume), ndingest's
    markers (`_markers/`: per-block markers, manifest, lock, inspect) and reports
    (`_reports/`), and the rest (info, catalog)."""

    voxels: int
    markers: int
    reports: int
    other: int
    layout: dict | None  # the info's data type and scale 0's LAYOUT_KEYS; None: no info found


def kind_of(parts: tuple[str, ...]) -> str:
    """The kind of a file, from its path below the store (or copy) folder."""
    if parts[0] == "_markers":
        return "markers"
    if parts[0] == "_reports":
        return "reports"
    return "voxels" if len(parts) >= 2 and VOXEL_FILE.fullmatch(parts[-1]) else "other"


def layout_of(info: dict) -> dict:
    """What two writers of "the same layout" must agree on."""
    scale = info["scales"][0]
    return {"data_type": info["data_type"], **{k: scale.get(k) for k in LAYOUT_KEYS}}


def written_from(paths: list[tuple[str, ...]], layout: dict | None) -> Written:
    kinds = [kind_of(parts) for parts in paths]
    return Written(*(kinds.count(k) for k in ("voxels", "markers", "reports", "other")), layout)


def files_written(folder: Path) -> Written:
    """The files under a local folder, by kind, and the layout its `info` gives."""
    paths = [Path(root, name).relative_to(folder).parts for root, _, names in os.walk(folder) for name in names]
    infos = [folder.joinpath(*parts) for parts in paths if parts[-1] == "info" and kind_of(parts) == "other"]
    return written_from(paths, layout_of(json.loads(infos[0].read_text())) if infos else None)
