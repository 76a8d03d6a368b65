"""ndstore's auto-ingest JSON (ndio's `NDIngest`) → a spec: `ndingest.ndjson`, without a server."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from ndingest.cli import main
from ndingest.errors import RequestError, SpecError
from ndingest.ndjson import (download, is_nd_json, job_dir, load_nd_json, pack_time_series, parse_job,
                             prepare_job, source_files, spec_path, spec_text, write_spec)
from ndingest.spec import RESERVED_NAMES, parse_spec


def body(channels=None, **dataset) -> dict:
    """A body as ndio's `nd_json` writes it (x offset = z offset, as its path check needs)."""
    ds = {"dataset_name": "nd_ds", "imagesize": [8, 6, 3], "voxelres": [4.0, 4.0, 40.0], "offset": [2, 0, 2],
          "scalinglevels": 0, "scaling": 0, **dataset}
    return {"dataset": ds, "project": {"project_name": "nd_pr", "token_name": "nd_tk", "public": 1},
            "metadata": "",
            "channels": channels or {"em": {"channel_name": "em", "datatype": "uint8", "channel_type": "image",
                                            "data_url": "http://127.0.0.1:9/files", "file_format": "SLICE",
                                            "file_type": "tif"}}}


def test_a_body_becomes_a_job_with_every_field():
    job = parse_job(json.dumps(body()))
    assert (job.dataset, job.project, job.token, job.public) == ("nd_ds", "nd_pr", "nd_tk", True)
    assert (job.size, job.offset, job.resolution, job.levels, job.scaling) == (
        (8, 6, 3), (2, 0, 2), (4.0, 4.0, 40.0), 0, "zslices")
    assert [c.name for c in job.channels] == ["em"] and job.channels[0].data_url == "http://127.0.0.1:9/files"


def test_ndios_output_json_python_repr_reads_as_the_same_job():
    assert parse_job(str(body())) == parse_job(json.dumps(body()))  # single quotes: ndio's `str(data)`


def test_a_python_literal_never_runs_code():
    with pytest.raises(RequestError, match="neither JSON nor a Python literal"):
        load_nd_json("__import__('os').system('echo no')")


@pytest.mark.parametrize("edit, field", [
    ({"dataset_name": "_jobs"}, "dataset.dataset_name"),
    ({"imagesize": [8, 6]}, "dataset.imagesize"),
    ({"timerange": [0, 1]}, None),  # ignored without a timeseries channel
])
def test_dataset_fields_are_checked_by_name(edit, field):
    if field is None:
        assert parse_job(json.dumps(body(**edit))).time_points == 1
        return
    with pytest.raises(RequestError, match=f"^nd.json: {field}"):
        parse_job(json.dumps(body(**edit)), where="nd.json")


def test_jobs_is_a_reserved_name_for_specs_too(tmp_path):
    assert "_jobs" in RESERVED_NAMES
    text = spec_text(parse_job(json.dumps(body())), tmp_path / "store").replace('name = "nd_ds"', 'name = "_Jobs"')
    with pytest.raises(SpecError, match="reserved"):
        parse_spec(text, tmp_path / "spec.toml")


def test_slices_are_numbered_from_the_z_offset_and_png_is_kept_as_tiff():
    job = parse_job(json.dumps(body()))
    assert source_files(job, job.channels[0]) == [
        (f"http://127.0.0.1:9/files/nd_tk/em/{z:04d}.tif", f"em/{z:04d}.tif") for z in (2, 3, 4)]
    png = body({"em": {**body()["channels"]["em"], "file_type": "png"}})
    job = parse_job(json.dumps(png))
    assert source_files(job, job.channels[0])[0] == ("http://127.0.0.1:9/files/nd_tk/em/0002.png", "em/0002.tif")


def timeseries_body(timerange=(0, 1)):
    channel = {"channel_name": "ts", "datatype": "uint16", "channel_type": "timeseries",
               "data_url": "http://127.0.0.1:9/files", "file_format": "SLICE", "file_type": "tif"}
    return body({"ts": channel}, timerange=list(timerange))


def test_a_time_series_reads_time_folders_and_needs_a_timerange_from_zero():
    job = parse_job(json.dumps(timeseries_body()))
    files = source_files(job, job.channels[0])
    assert job.time_points == 2 and len(files) == 6
    assert files[3] == ("http://127.0.0.1:9/files/nd_tk/ts/time0001/0002.tif", "ts/time0001/0002.tif")
    for bad in ({k: v for k, v in timeseries_body()["dataset"].items() if k != "timerange"},
                timeseries_body((1, 2))["dataset"]):
        with pytest.raises(RequestError, match="dataset.timerange"):
            parse_job(json.dumps({**timeseries_body(), "dataset": bad}))


def test_the_spec_names_the_fetched_sources_under_the_store(tmp_path):
    store = tmp_path / "store"
    job = parse_job(json.dumps(body()))
    spec = parse_spec(spec_text(job, store), spec_path(store, job.token))
    assert spec_path(store, "nd_tk") == store / "_jobs" / "nd_tk.toml"
    assert spec.channels["em"].source == str(store.resolve() / "_jobs" / "nd_tk" / "sources" / "em" / "*.tif")
    assert str(spec.store.path) == str(store.resolve())
    job = parse_job(json.dumps(timeseries_body()))
    spec = parse_spec(spec_text(job, store), spec_path(store, job.token))
    assert spec.channels["ts"].source.endswith("sources/ts.h5:/CUTOUT") and spec.channels["ts"].axes == "tzyx"


def test_is_nd_json_by_extension_or_by_content(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "nd.txt").write_text(str(body()))
    (tmp_path / "s.toml").write_text(str(body()))
    (tmp_path / "other").write_text("[dataset]\n")
    assert [is_nd_json(tmp_path / n) for n in ("a.json", "nd.txt", "s.toml", "other")] == [True, True, False, False]


def test_a_png_slice_is_fetched_as_a_tiff_page_and_a_time_series_packed_as_tzyx(tmp_path):
    page = np.arange(48, dtype=np.uint8).reshape(6, 8)
    Image.fromarray(page).save(tmp_path / "p.png")
    download((tmp_path / "p.png").as_uri(), tmp_path / "got" / "p.tif")
    assert np.array_equal(tifffile.imread(tmp_path / "got" / "p.tif"), page)

    job = parse_job(json.dumps(timeseries_body()))
    sources = tmp_path / "sources"
    data = np.random.default_rng(0).integers(0, 65535, (2, 3, 6, 8), dtype=np.uint16)
    for (_, local), pg in zip(source_files(job, job.channels[0]), data.reshape(6, 6, 8)):
        (sources / local).parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(sources / local, pg)
    pack_time_series(job, job.channels[0], sources)
    import h5py

    with h5py.File(sources / "ts.h5", "r") as f:
        assert np.array_equal(f["CUTOUT"][()], data)


def test_prepare_job_fetches_file_urls_and_refuses_another_size(tmp_path):
    files = tmp_path / "files"
    data = np.random.default_rng(1).integers(0, 255, (3, 6, 8), dtype=np.uint8)
    for z, pg in zip((2, 3, 4), data):
        (files / "nd_tk" / "em").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(files / "nd_tk" / "em" / f"{z:04d}.tif", pg)
    channel = {**body()["channels"]["em"], "data_url": files.as_uri()}
    store = tmp_path / "store"
    spec = prepare_job(store, parse_job(json.dumps(body({"em": channel}))))
    assert spec == store / "_jobs" / "nd_tk.toml" and spec.exists()
    assert sorted(p.name for p in (job_dir(store, "nd_tk") / "sources" / "em").iterdir()) == [
        "0002.tif", "0003.tif", "0004.tif"]
    with pytest.raises(RequestError, match="dataset.imagesize"):
        prepare_job(tmp_path / "store2", parse_job(json.dumps(body({"em": channel}, imagesize=[8, 7, 3]))))


def test_ingest_wants_store_for_nd_json_and_refuses_it_for_a_toml_spec(tmp_path, capsys):
    (tmp_path / "nd.json").write_text(json.dumps(body()))
    (tmp_path / "s.toml").write_text("[dataset]\n")
    assert main(["ingest", str(tmp_path / "nd.json")]) == 2
    assert main(["ingest", str(tmp_path / "s.toml"), "--store", str(tmp_path / "store")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "needs --store" in lines[0] and "--store is for ND.json only" in lines[1], lines


def test_status_of_a_job_spec_before_its_sources_are_fetched_says_so(tmp_path, capsys):
    store = tmp_path / "store"
    spec = write_spec(store, parse_job(json.dumps(body())))
    assert main(["status", str(spec)]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "still being fetched" in err and "0 files" in err, err


def test_status_of_a_running_job_still_fetching_is_its_progress_not_an_error(tmp_path, capsys):
    store = tmp_path / "store"
    spec = write_spec(store, parse_job(json.dumps(body())))
    (spec.parent / spec.stem).mkdir(parents=True, exist_ok=True)
    (spec.parent / spec.stem / "status.json").write_text(json.dumps({"state": "running", "message": "fetching"}))
    assert main(["status", str(spec)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fetching: ") and "0 files" in out, out
    assert main(["status", str(spec), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["channels"] == {}
    (spec.parent / spec.stem / "status.json").write_text(json.dumps({"state": "failed", "message": "404"}))
    assert main(["status", str(spec)]) == 3  # a failed fetch stays an error
