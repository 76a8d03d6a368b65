"""Property test: random small volumes, in every input format, ingest bit-exact.

Each example writes a volume with the format's own library (h5py, tifffile, zarr,
tensorstore for N5, never ndingest's readers), ingests it with `ndingest ingest` in a
subprocess into a fresh folder, and reads the store back through CloudVolume at the
dataset offset. Sizes, offsets, dtypes, axis orders, chunkings and value patterns vary;
one test per format family, each at most 12 examples (hand-picked ones included: every
writer, layout, naming and dtype at least once, whatever the draws), as an ingest is a process
of its own (1.5-4 s; zarr and N5 more, through tensorstore's reader process). Shrinking is off: a failing example is printed
as drawn, and shrinking would cost an ingest per step.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from itertools import permutations
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from conftest import run_cli, write_spec

DATASET, PROJECT = "prop", "prop"
DTYPES = ("uint8", "uint16", "uint32", "uint64", "float32")
AXES = tuple("".join(p) for p in permutations("zyx"))
ODD_OFFSETS = (0, 1, 3, 17, 63, 64, 65, 127, 1000, 2049)

SETTINGS = dict(deadline=None, derandomize=True, database=None, print_blob=False,
                phases=(Phase.explicit, Phase.generate),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example, HealthCheck.function_scoped_fixture])


@dataclass(frozen=True)
class Case:
    """One drawn input: where it lives, what it holds, and how the spec describes it."""

    format: str            # hdf5 | tiff_stack | tiff_multipage | zarr | n5
    variant: str           # format detail: hdf5 layout, tiff writer, zarr version
    shape_zyx: tuple[int, int, int]
    dtype: str
    channel_type: str      # image | annotation
    axes: str              # storage order of the source's axes, slowest first
    declare_axes: bool     # write `axes = ...` in the spec even when it is "zyx"
    offset_xyz: tuple[int, int, int]
    scaling: str           # zslices (128x128x16 chunks) | isotropic (64^3)
    pattern: str           # random | sparse | constant | zeros (| nonfinite: float32 only, not drawn)
    chunks: tuple[int, int, int]  # the source's own chunking (hdf5 chunked, zarr, n5), in storage order
    declare_datatype: bool
    seed: int


def volume(case: Case) -> np.ndarray:
    """The (z, y, x) voxels of `case`, deterministic from its seed."""
    rng = np.random.default_rng(case.seed)
    dtype = np.dtype(case.dtype)
    shape = case.shape_zyx
    if case.pattern == "zeros":
        return np.zeros(shape, dtype)
    if dtype.kind == "f":
        specials = np.array([0.0, -0.0, 1.0, -1.0, np.finfo(np.float32).max, np.finfo(np.float32).min,
                             np.finfo(np.float32).tiny, 1e-45, 0.5, 2.5], dtype=np.float32)
        if case.pattern == "constant":
            return np.full(shape, specials[case.seed % len(specials)], dtype)
        if case.pattern == "nonfinite":  # NaN (a quiet one with a payload too) and both infinities
            values = rng.standard_normal(shape).astype(np.float32)
            odd_bits = np.array([0x7FC00000, 0x7FC00001, 0xFFC00000, 0x7F800000, 0xFF800000], np.uint32)
            pick = rng.random(shape) < 0.1
            values[pick] = rng.choice(odd_bits, size=int(pick.sum())).view(np.float32)
            values.flat[:2] = (np.nan, np.inf)
            return values
        values = (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 6, size=shape)).astype(np.float32)
        pick = rng.random(shape) < 0.05
        values[pick] = rng.choice(specials, size=int(pick.sum()))
        if case.pattern == "sparse":
            values[rng.random(shape) < 0.9] = 0
        return values
    top = np.iinfo(dtype).max
    if case.pattern == "constant":
        return np.full(shape, (top, 1, top // 2)[case.seed % 3], dtype)
    values = rng.integers(0, top, size=shape, dtype=dtype, endpoint=True)
    values.flat[: min(values.size, 2)] = (top, 0)[: min(values.size, 2)]  # both extremes present
    if case.pattern == "sparse":  # labels: a few ids, the largest included, mostly background
        labels = np.array([1, 2, 7, top, top - 1], dtype=dtype)
        values = np.where(rng.random(shape) < 0.2, rng.choice(labels, size=shape), 0).astype(dtype)
    return values


def stored_order(data_zyx: np.ndarray, axes: str) -> np.ndarray:
    """`data_zyx` laid out with its axes in the order `axes` (slowest first), C-contiguous."""
    return np.ascontiguousarray(np.transpose(data_zyx, ["zyx".index(a) for a in axes]))


def write_source(case: Case, folder: Path, data_zyx: np.ndarray) -> str:
    """Write the case's source under `folder` with the format's own library; the spec's `source`."""
    data = stored_order(data_zyx, case.axes)
    chunks = tuple(min(c, s) for c, s in zip(case.chunks, data.shape))
    if case.format == "hdf5":
        path = folder / "vol.h5"
        name = {"cutout": "image/CUTOUT", "plain": "vol", "named": "deep/group/vol",
                "contiguous": "image/CUTOUT", "unwritten": "image/CUTOUT"}[case.variant]
        with h5py.File(path, "w") as f:
            if case.variant == "unwritten":  # created with its shape, never written: all fill value
                assert not data.any()
                f.create_dataset(name, shape=data.shape, dtype=data.dtype, chunks=chunks)
            elif case.variant == "contiguous":
                f.create_dataset(name, data=data)
            else:
                f.create_dataset(name, data=data, chunks=chunks, compression="gzip")
            if case.variant == "named":  # a decoy array the explicit path must steer around
                f.create_dataset("decoy/vol", data=np.zeros((2, 2, 2), np.uint8))
        return f"{path}:/{name}" if case.variant == "named" else str(path)
    if case.format == "tiff_stack":
        (folder / "pages").mkdir()
        compression = "zlib" if case.variant.endswith("zlib") else None
        for z, plane in enumerate(data):
            # "unpadded" names (slice_2 before slice_10) need the natural sort DESIGN.md promises
            name = f"slice_{z}.tif" if case.variant.startswith("unpadded") else f"slice_{z:04d}.tif"
            tifffile.imwrite(folder / "pages" / name, plane, photometric="minisblack", compression=compression)
        return str(folder / "pages/*.tif")
    if case.format == "tiff_multipage":
        path = folder / "vol.tif"
        if case.variant == "imwrite":
            tifffile.imwrite(path, data, photometric="minisblack")
        elif case.variant == "imwrite_zlib":
            tifffile.imwrite(path, data, photometric="minisblack", compression="zlib")
        else:  # page by page, as acquisition software writes: one series per page
            with tifffile.TiffWriter(path) as tif:
                for plane in data:
                    tif.write(plane, photometric="minisblack")
        return str(path)
    if case.format == "zarr":
        import zarr

        # zarr, like tensorstore for N5, writes no chunk equal to the fill value: an all-zero
        # volume is metadata alone, as real sparse label arrays are
        path = folder / "vol.zarr"
        array = zarr.create_array(store=str(path), shape=data.shape, chunks=chunks, dtype=data.dtype,
                                  zarr_format=int(case.variant[-1]), fill_value=0)
        array[...] = data
        return str(path)
    if case.format == "n5":
        import tensorstore as ts

        # N5 lists its dimensions fastest first (a Java tool writes [x, y, z] for a zyx volume), and
        # tensorstore keeps that order: dimension 0 is the fastest in each block. `axes` names the
        # dimensions slowest first, as for HDF5 and zarr, so the array goes in reversed.
        path = folder / "vol.n5"
        store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": str(path)},
                         "metadata": {"dimensions": list(data.shape[::-1]), "blockSize": list(chunks[::-1]),
                                      "dataType": case.dtype, "compression": {"type": case.variant}}},
                        create=True).result()
        store.write(data.T).result()
        return str(path)
    raise AssertionError(case.format)


def open_back(store: Path):
    """The ingested channel through CloudVolume (one process, no missing chunks filled)."""
    from cloudvolume import CloudVolume

    return CloudVolume(f"file://{store}/{DATASET}/{PROJECT}/image", mip=0, parallel=1, fill_missing=False,
                       progress=False)


def check_ingest(case: Case, base: pytest.TempPathFactory) -> None:
    """Write, ingest and read back `case` in a fresh folder of `base`, removed once it passes."""
    folder = base.mktemp(f"{case.format}-")
    _check_ingest(case, folder)
    shutil.rmtree(folder)


def _check_ingest(case: Case, folder: Path) -> None:
    data = volume(case)
    source = write_source(case, folder, data)
    extra = []
    if case.declare_axes or case.axes != "zyx":
        extra.append(f'axes = "{case.axes}"')
    if case.declare_datatype:
        extra.append(f'datatype = "{case.dtype}"')
    spec = write_spec(folder, image=source, dataset=DATASET, project=PROJECT, offset=case.offset_xyz,
                      image_type=case.channel_type, image_extra="\n".join(extra))
    if case.scaling == "isotropic":
        spec.write_text(spec.read_text().replace('scaling_option = "zslices"', 'scaling_option = "isotropic"'))
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, (case, result.stderr)

    vol = open_back(folder / "store")
    (z, y, x), (ox, oy, oz) = case.shape_zyx, case.offset_xyz
    info = vol.info
    assert (info["data_type"], info["num_channels"]) == (case.dtype, 1)
    assert info["type"] == ("segmentation" if case.channel_type == "annotation" else "image")
    assert info["scales"][0]["voxel_offset"] == [ox, oy, oz]
    assert info["scales"][0]["size"] == [x, y, z], "stored size (x, y, z) differs from the source's"
    cut = np.asarray(vol[ox:ox + x, oy:oy + y, oz:oz + z])
    assert cut.shape == (x, y, z, 1) and cut.dtype == data.dtype
    stored = cut[..., 0].transpose(2, 1, 0)
    # bit-exact: compare the bits, so -0.0, subnormals and NaN payloads count too
    bits = f"u{data.dtype.itemsize}"
    mismatch = np.argwhere(stored.view(bits) != data.view(bits))
    assert mismatch.size == 0, (f"{len(mismatch)} voxels differ, first at (z, y, x) {tuple(mismatch[0])}: "
                                f"stored {stored[tuple(mismatch[0])]!r}, source {data[tuple(mismatch[0])]!r}")


@st.composite
def cases(draw, fmt: str, variants: tuple[str, ...], permuted_axes: bool) -> Case:
    dtype = draw(st.sampled_from(DTYPES))
    annotation = dtype != "float32" and draw(st.booleans())
    shape = (draw(st.integers(1, 40)), draw(st.integers(1, 70)), draw(st.integers(1, 90)))
    offset = tuple(draw(st.sampled_from(ODD_OFFSETS) | st.integers(0, 5000)) for _ in range(3))
    axes = draw(st.sampled_from(AXES)) if permuted_axes else "zyx"
    chunks = tuple(draw(st.integers(1, 32)) for _ in range(3))
    return Case(
        format=fmt, variant=draw(st.sampled_from(variants)), shape_zyx=shape, dtype=dtype,
        channel_type="annotation" if annotation else "image", axes=axes, declare_axes=draw(st.booleans()),
        offset_xyz=offset, scaling=draw(st.sampled_from(("zslices", "isotropic"))),
        pattern=draw(st.sampled_from(("random", "random", "sparse", "constant", "zeros"))),
        chunks=chunks, declare_datatype=draw(st.booleans()), seed=draw(st.integers(0, 2**32 - 1)),
    )


def odd(fmt: str, variant: str, *, axes: str, dtype: str, channel_type: str = "image") -> Case:
    """A hand-picked case: odd sizes and the odd offsets 3 and 17, across a 64-voxel chunk edge."""
    return Case(format=fmt, variant=variant, shape_zyx=(17, 37, 71), dtype=dtype, channel_type=channel_type,
                axes=axes, declare_axes=True, offset_xyz=(3, 17, 3), scaling="isotropic", pattern="random",
                chunks=(5, 7, 11), declare_datatype=False, seed=17)


@settings(max_examples=8, **SETTINGS)
@example(case=odd("hdf5", "cutout", axes="xzy", dtype="uint16"))
@example(case=replace(odd("hdf5", "plain", axes="zyx", dtype="uint64", channel_type="annotation"), pattern="sparse"))
@given(case=cases("hdf5", ("cutout", "plain", "named", "contiguous"), permuted_axes=True))
def test_hdf5_ingests_bit_exact(tmp_path_factory, case):
    check_ingest(case, tmp_path_factory)


TIFF_EXAMPLES = (  # each writer and naming at least once, whatever the draws
    odd("tiff_stack", "padded", axes="zyx", dtype="uint32", channel_type="annotation"),
    replace(odd("tiff_stack", "unpadded", axes="zyx", dtype="uint16"), shape_zyx=(12, 9, 10)),  # slice_10 after 9
    replace(odd("tiff_stack", "padded_zlib", axes="zyx", dtype="float32"), offset_xyz=(17, 3, 17)),
    replace(odd("tiff_multipage", "page_by_page", axes="zyx", dtype="uint64", channel_type="annotation"),
            pattern="sparse"),
    replace(odd("tiff_multipage", "imwrite_zlib", axes="zyx", dtype="uint8"), scaling="zslices"),
)


@settings(max_examples=7, **SETTINGS)
@example(case=TIFF_EXAMPLES[0])
@example(case=TIFF_EXAMPLES[1])
@example(case=TIFF_EXAMPLES[2])
@example(case=TIFF_EXAMPLES[3])
@example(case=TIFF_EXAMPLES[4])
@given(case=st.one_of(
    cases("tiff_stack", ("padded", "padded_zlib", "unpadded"), permuted_axes=False),
    cases("tiff_multipage", ("imwrite", "imwrite_zlib", "page_by_page"), permuted_axes=False),
))
def test_tiff_ingests_bit_exact(tmp_path_factory, case):
    check_ingest(case, tmp_path_factory)


@settings(max_examples=6, **SETTINGS)
@example(case=odd("zarr", "zarr2", axes="yxz", dtype="float32"))
@example(case=replace(odd("zarr", "zarr3", axes="zxy", dtype="uint64", channel_type="annotation"), scaling="zslices"))
@example(case=replace(odd("zarr", "zarr3", axes="zyx", dtype="uint16"), declare_axes=False, offset_xyz=(17, 3, 17)))
@given(case=cases("zarr", ("zarr2", "zarr3"), permuted_axes=True))
def test_zarr_ingests_bit_exact(tmp_path_factory, case):
    check_ingest(case, tmp_path_factory)


@settings(max_examples=5, **SETTINGS)
@example(case=odd("n5", "gzip", axes="xyz", dtype="uint64", channel_type="annotation"))
@example(case=replace(odd("n5", "raw", axes="yzx", dtype="float32"), pattern="constant"))
@example(case=replace(odd("n5", "raw", axes="zyx", dtype="uint16"), declare_axes=False, offset_xyz=(17, 3, 17)))
@given(case=cases("n5", ("gzip", "raw"), permuted_axes=True))
def test_n5_ingests_bit_exact(tmp_path_factory, case):
    check_ingest(case, tmp_path_factory)


@pytest.mark.parametrize("fmt, variant, axes", [("hdf5", "cutout", "zyx"), ("zarr", "zarr3", "xzy")])
def test_float32_nan_and_infinity_ingest_bit_exact(tmp_path_factory, fmt, variant, axes):
    """Voxels a float32 volume may hold (deconvolution, ratios): stored as they are, bit for bit."""
    check_ingest(replace(odd(fmt, variant, axes=axes, dtype="float32"), pattern="nonfinite"), tmp_path_factory)


@pytest.mark.parametrize("fmt, variant", [("hdf5", "unwritten"), ("zarr", "zarr2"), ("zarr", "zarr3"), ("n5", "gzip")])
def test_a_small_array_without_a_stored_chunk_ingests_as_zeros(tmp_path_factory, fmt, variant):
    """An empty label volume: HDF5 never written, or zarr/N5 whose writers skip chunks equal
    to the fill value. Legal and common; only an absurd size with no data is refused."""
    case = replace(odd(fmt, variant, axes="zyx", dtype="uint32", channel_type="annotation"), pattern="zeros")
    check_ingest(case, tmp_path_factory)
