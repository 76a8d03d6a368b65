"""A corpus of broken sources: each one refused with one clear line, exit 3.

Every broken file is written here with its format's own library (h5py, tifffile, zarr)
or by hand, then given to `ndingest inspect FILE` and to `ndingest ingest SPEC`, where
SPEC is a second spec (another dataset and project) pointed at a store that already holds
a good ingest. The contract (DESIGN.md, CLI): one line on stderr starting
`ndingest: error: ` that names the file, no traceback, exit 3 (bad source).

What headers tell (every file's and page's, checked before anything is written) leaves
the store exactly as it was: no file or folder added, none replaced or modified
(catalog.sqlite included). What only the voxels tell (a corrupt chunk) is found by the
write, the one pass over the source before verify (issue 16: no pass of its own for the
window range): the run stops at that block with nothing of it marked, the good ingest
untouched, and once the file is mended the same command finishes.
"""
from __future__ import annotations

import json
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import tifffile
from cloudvolume import CloudVolume

from conftest import run_cli, snapshot, write_h5, write_spec

BAD_SOURCE = 3
TIMEOUT = 45  # a source that claims 10^12 voxels must be refused, not scanned


@dataclass
class Broken:
    source: str                 # the spec's `source` and inspect's argument
    names: tuple[str, ...]      # what the error line must name (the offending file)
    not_in_line: tuple[str, ...] = field(default=())  # wording that would mean the wrong refusal


def hdf5_bytes(path: Path, contiguous: bool) -> bytes:
    data = np.random.default_rng(1).integers(0, 65535, size=(20, 30, 40), dtype=np.uint16)
    with h5py.File(path, "w") as f:
        if contiguous:
            f.create_dataset("image/CUTOUT", data=data)
        else:
            f.create_dataset("image/CUTOUT", data=data, chunks=(8, 8, 8), compression="gzip")
    return path.read_bytes()


def truncated_hdf5_chunked(d: Path) -> Broken:
    path = d / "truncated.h5"
    whole = hdf5_bytes(path, contiguous=False)
    path.write_bytes(whole[: len(whole) // 2])
    return Broken(str(path), ("truncated.h5",))


def truncated_hdf5_contiguous(d: Path) -> Broken:
    path = d / "truncated_contiguous.h5"
    whole = hdf5_bytes(path, contiguous=True)
    path.write_bytes(whole[: len(whole) // 2])
    return Broken(str(path), ("truncated_contiguous.h5",))


def wrong_magic_h5(d: Path) -> Broken:
    path = d / "random.h5"
    path.write_bytes(np.random.default_rng(2).integers(0, 256, size=8192, dtype=np.uint8).tobytes())
    return Broken(str(path), ("random.h5",))


def empty_h5(d: Path) -> Broken:
    path = d / "empty.h5"
    path.write_bytes(b"")
    return Broken(str(path), ("empty.h5",))


def empty_tif(d: Path) -> Broken:
    path = d / "empty.tif"
    path.write_bytes(b"")
    return Broken(str(path), ("empty.tif",))


def hdf5_claims_1e12_chunked(d: Path) -> Broken:
    """10^12 uint8 voxels declared, chunked, not one chunk written: a 2 kB file."""
    path = d / "huge_chunked.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image/CUTOUT", shape=(10000, 10000, 10000), dtype=np.uint8, chunks=(64, 64, 64))
    return Broken(str(path), ("huge_chunked.h5",))


def hdf5_claims_1e12_contiguous_truncated(d: Path) -> Broken:
    """10^12 uint8 voxels, contiguous: its 1 TB (sparse) file cut to its first 4 kB."""
    path = d / "huge_contiguous.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("image/CUTOUT", shape=(10000, 10000, 10000), dtype=np.uint8)
        ds[-1, -1, -1] = 1  # allocates the contiguous storage: a sparse file of 10^12 bytes
    with open(path, "r+b") as f:
        f.truncate(4096)
    return Broken(str(path), ("huge_contiguous.h5",))


def zarr_claims_1e12(version: int) -> Callable[[Path], Broken]:
    def make(d: Path) -> Broken:
        import zarr

        path = d / f"huge_v{version}.zarr"
        zarr.create_array(store=str(path), shape=(10000, 10000, 10000), chunks=(64, 64, 64), dtype="uint8",
                          zarr_format=version, fill_value=0)
        # a zarr folder refused as "a folder" would pass for the wrong reason
        return Broken(str(path), (path.name,), not_in_line=("is a folder",))
    return make


def tiff_stack(d: Path, odd_page: Callable[[Path], None], n: int = 6, odd: int = 3) -> Broken:
    """A stack of `n` good uint8 pages (12, 16) whose page `odd` is written by `odd_page`."""
    (d / "pages").mkdir()
    rng = np.random.default_rng(4)
    for z in range(n):
        path = d / f"pages/slice_{z:04d}.tif"
        if z == odd:
            odd_page(path)
        else:
            tifffile.imwrite(path, rng.integers(0, 255, size=(12, 16), dtype=np.uint8), photometric="minisblack")
    return Broken(str(d / "pages/*.tif"), (f"slice_{odd:04d}.tif",))


def tiff_stack_mixed_dtypes(d: Path) -> Broken:
    return tiff_stack(d, lambda p: tifffile.imwrite(p, np.full((12, 16), 300, np.uint16), photometric="minisblack"))


def tiff_stack_rgb_page(d: Path) -> Broken:
    return tiff_stack(d, lambda p: tifffile.imwrite(p, np.zeros((12, 16, 3), np.uint8), photometric="rgb"))


def tiff_stack_shapes_differ(d: Path) -> Broken:
    return tiff_stack(d, lambda p: tifffile.imwrite(p, np.zeros((12, 17), np.uint8), photometric="minisblack"))


def tiff_rgb_single(d: Path) -> Broken:
    path = d / "rgb.tif"
    tifffile.imwrite(path, np.random.default_rng(5).integers(0, 255, size=(24, 32, 3), dtype=np.uint8),
                     photometric="rgb")
    return Broken(str(path), ("rgb.tif",))


def tiff_multipage_shapes_differ(d: Path) -> Broken:
    """Pages written one by one, as acquisition software does; the third is one column wider."""
    path = d / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for z in range(5):
            tif.write(np.full((12, 17 if z == 2 else 16), z, np.uint8), photometric="minisblack")
    return Broken(str(path), ("pages.tif",))


def hdf5_compound(d: Path) -> Broken:
    path = d / "compound.h5"
    kind = np.dtype([("a", np.uint8), ("b", np.float32)])
    with h5py.File(path, "w") as f:
        f.create_dataset("image/CUTOUT", data=np.zeros((4, 5, 6), kind))
    return Broken(str(path), ("compound.h5",))


def hdf5_zero_size(d: Path) -> Broken:
    path = d / "zero_size.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image/CUTOUT", shape=(0, 10, 10), dtype=np.uint8)
    return Broken(str(path), ("zero_size.h5",))


def hdf5_strings_vlen(d: Path) -> Broken:
    path = d / "strings.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image/CUTOUT", data=np.full((2, 3, 4), "voxel", dtype=object), dtype=h5py.string_dtype())
    return Broken(str(path), ("strings.h5",))


def hdf5_strings_fixed(d: Path) -> Broken:
    path = d / "fixed_strings.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("image/CUTOUT", data=np.full((2, 3, 4), b"vox", dtype="S3"))
    return Broken(str(path), ("fixed_strings.h5",))


def tiff_stack_empty_page(d: Path) -> Broken:
    """A copy that failed half way: one page of the stack is 0 bytes."""
    return tiff_stack(d, lambda p: p.write_bytes(b""))


def tiff_stack_truncated_page(d: Path) -> Broken:
    """One page cut in half: its header reads, its pixels do not."""
    def cut(p: Path) -> None:
        tifffile.imwrite(p, np.full((12, 16), 9, np.uint8), photometric="minisblack")
        whole = p.read_bytes()
        p.write_bytes(whole[: len(whole) - 100])
    return tiff_stack(d, cut)


def hdf5_corrupt_chunk(d: Path) -> Broken:
    """Every header intact, one gzip chunk in the middle overwritten: only reading the voxels tells."""
    path = d / "corrupt_chunk.h5"
    hdf5_bytes(path, contiguous=False)
    with h5py.File(path, "r") as f:
        ds = f["image/CUTOUT"]
        info = ds.id.get_chunk_info(ds.id.get_num_chunks() // 2)
    with open(path, "r+b") as f:
        f.seek(info.byte_offset)
        f.write(b"\xff" * info.size)
    return Broken(str(path), ("corrupt_chunk.h5",))


def zarr_corrupt_chunk(d: Path) -> Broken:
    import zarr

    path = d / "corrupt.zarr"
    array = zarr.create_array(store=str(path), shape=(20, 30, 40), chunks=(8, 8, 8), dtype="uint16", zarr_format=2,
                              fill_value=0)
    array[...] = np.random.default_rng(6).integers(0, 65535, size=(20, 30, 40), dtype=np.uint16)
    (path / "1.1.1").write_bytes(b"not a compressed chunk" * 10)
    return Broken(str(path), ("corrupt.zarr",))


def zarr_empty_folder(d: Path) -> Broken:
    path = d / "empty.zarr"
    path.mkdir()
    return Broken(str(path), ("empty.zarr",))


def n5_claims_1e12(d: Path) -> Broken:
    import tensorstore as ts

    path = d / "huge.n5"
    ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(path)},
             "metadata": {"dimensions": [10000, 10000, 10000], "blockSize": [64, 64, 64], "dataType": "uint8",
                          "compression": {"type": "gzip"}}}, create=True).result()
    return Broken(str(path), ("huge.n5",), not_in_line=("is a folder",))


CORPUS = {
    "truncated-hdf5-chunked": truncated_hdf5_chunked,
    "truncated-hdf5-contiguous": truncated_hdf5_contiguous,
    "wrong-magic-h5": wrong_magic_h5,
    "empty-h5": empty_h5,
    "empty-tif": empty_tif,
    "hdf5-claims-1e12-chunked-no-data": hdf5_claims_1e12_chunked,
    "hdf5-claims-1e12-contiguous-truncated": hdf5_claims_1e12_contiguous_truncated,
    "zarr2-claims-1e12-no-chunk": zarr_claims_1e12(2),
    "zarr3-claims-1e12-no-chunk": zarr_claims_1e12(3),
    "tiff-stack-mixed-uint8-uint16": tiff_stack_mixed_dtypes,
    "tiff-stack-rgb-page": tiff_stack_rgb_page,
    "tiff-stack-page-shapes-differ": tiff_stack_shapes_differ,
    "tiff-rgb-single-file": tiff_rgb_single,
    "tiff-multipage-page-shapes-differ": tiff_multipage_shapes_differ,
    "hdf5-compound-dtype": hdf5_compound,
    "hdf5-zero-size": hdf5_zero_size,
    "hdf5-vlen-strings": hdf5_strings_vlen,
    "hdf5-fixed-strings": hdf5_strings_fixed,
    "tiff-stack-empty-page": tiff_stack_empty_page,
    "tiff-stack-truncated-page": tiff_stack_truncated_page,
    "zarr-empty-folder": zarr_empty_folder,
    "n5-claims-1e12-no-block": n5_claims_1e12,
}


# Headers whole, voxels not: only reading them tells. Each with how to mend the file.
CORRUPT_DATA = {
    "hdf5-corrupt-chunk": hdf5_corrupt_chunk,
    "zarr-corrupt-chunk": zarr_corrupt_chunk,
}


def mend(broken: Broken) -> np.ndarray:
    """Write the broken source again whole (new voxels, same shape); returns them (z, y, x)."""
    data = np.random.default_rng(9).integers(1, 65535, size=(20, 30, 40), dtype=np.uint16)
    if broken.source.endswith(".zarr"):
        import zarr

        zarr.open_array(broken.source, mode="r+")[...] = data
    else:
        with h5py.File(broken.source, "w") as f:
            f.create_dataset("image/CUTOUT", data=data, chunks=(8, 8, 8), compression="gzip")
    return data


def run(*args: str):
    try:
        return run_cli(*args, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"`ndingest {' '.join(args)}` still ran after {TIMEOUT} s (a bad source must be refused, "
                    f"not read)")


def assert_refused(result, broken: Broken) -> None:
    """One line on stderr, `ndingest: error: ` naming the file, no traceback, exit 3."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert result.returncode == BAD_SOURCE, (result.returncode, result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ndingest: error: "), lines[0]
    for name in broken.names:
        assert name in lines[0], (name, lines[0])
    for wording in broken.not_in_line:
        assert wording not in lines[0], (wording, lines[0])


def tree(folder: Path) -> tuple[dict, list[str]]:
    """Every file's (inode, mtime) and every folder under `folder`: nothing may appear or change."""
    return snapshot(folder), sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_dir())


def assert_unchanged(store: Path, before: tuple[dict, list[str]]) -> None:
    (files, folders), (files_now, folders_now) = before, tree(store)
    changes = {
        "added": sorted(set(files_now) - set(files)) + sorted(set(folders_now) - set(folders)),
        "removed": sorted(set(files) - set(files_now)) + sorted(set(folders) - set(folders_now)),
        "modified": sorted(p for p in set(files) & set(files_now) if files[p] != files_now[p]),
    }
    assert not any(changes.values()), f"the refused ingest changed the store: {changes}"


@pytest.fixture
def good_store(tmp_path) -> Path:
    """A store that already holds one good, verified ingest."""
    good = tmp_path / "good"
    source = write_h5(good / "good.h5", np.random.default_rng(0).integers(0, 255, (10, 20, 24), dtype=np.uint8))
    spec = write_spec(good, image=source, dataset="good_ds", project="good_pr", offset=(3, 17, 5))
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr
    return good / "store"


@pytest.mark.parametrize("make", [*CORPUS.values(), *CORRUPT_DATA.values()], ids=[*CORPUS, *CORRUPT_DATA])
def test_inspect_refuses_the_file(tmp_path, make):
    broken = make(tmp_path)
    assert_refused(run("inspect", broken.source), broken)


@pytest.mark.parametrize("make", CORPUS.values(), ids=CORPUS.keys())
def test_ingest_refuses_the_file_and_leaves_the_store_as_it_was(tmp_path, good_store, make):
    bad = tmp_path / "bad"
    bad.mkdir()
    broken = make(bad)
    before = tree(good_store)
    assert "catalog.sqlite" in before[0]
    spec = write_spec(bad, image=broken.source, dataset="broken_ds", project="broken_pr", store=str(good_store))
    assert_refused(run("ingest", str(spec)), broken)
    assert_unchanged(good_store, before)


def catalog_rows(store: Path) -> dict[str, list[tuple]]:
    db = sqlite3.connect(store / "catalog.sqlite")
    try:
        return {table: sorted(db.execute(f"select * from {table}").fetchall())
                for table in ("datasets", "projects", "tokens", "channels")}
    finally:
        db.close()


@pytest.mark.parametrize("make", CORRUPT_DATA.values(), ids=CORRUPT_DATA.keys())
def test_ingest_stops_at_a_corrupt_chunk_marks_nothing_of_it_and_finishes_once_mended(tmp_path, good_store, make):
    bad = tmp_path / "bad"
    bad.mkdir()
    broken = make(bad)
    files, _ = tree(good_store)
    good_rows = catalog_rows(good_store)
    spec = write_spec(bad, image=broken.source, dataset="broken_ds", project="broken_pr", store=str(good_store))
    assert_refused(run("ingest", str(spec)), broken)

    now, _ = tree(good_store)
    touched = sorted(p for p in files if p != "catalog.sqlite" and now.get(p) != files[p])
    assert not touched, f"the refused ingest changed the good ingest's files: {touched}"
    rows = catalog_rows(good_store)
    assert all(set(good_rows[t]) <= set(rows[t]) for t in good_rows), "the good ingest's catalog rows changed"
    assert not [p for p in now if "broken_pr/image/" in p and "/written/" in p], "a block of the bad source was marked"
    status = json.loads(run("status", str(spec), "--json").stdout)
    assert status["channels"]["image"]["done"] == 0

    data = mend(broken)
    result = run("ingest", str(spec))
    assert result.returncode == 0, result.stderr
    stored = CloudVolume(f"file://{good_store}/broken_ds/broken_pr/image", mip=0, parallel=1, progress=False,
                         fill_missing=False)
    assert np.array_equal(np.asarray(stored[:, :, :])[..., 0].T, data)
    assert all(set(good_rows[t]) <= set(catalog_rows(good_store)[t]) for t in good_rows)


@pytest.mark.parametrize("dtype", ["int16", "float64"])
def test_ingest_refuses_a_datatype_ndstore_does_not_store_and_leaves_the_store(tmp_path, good_store, dtype):
    """inspect may describe it; ingest must not cast it (DESIGN: an error, never a cast)."""
    source = write_h5(tmp_path / "bad" / f"{dtype}.h5", np.ones((4, 5, 6), dtype))
    before = tree(good_store)
    spec = write_spec(tmp_path / "bad", image=source, dataset="broken_ds", project="broken_pr", store=str(good_store))
    assert_refused(run("ingest", str(spec)), Broken(str(source), (f"{dtype}.h5", dtype)))
    assert_unchanged(good_store, before)
