"""ndstore's auto-ingest JSON (ndio's `NDIngest`) → a spec: `ndingest.ndjson`, without a server."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorstore as ts
import tifffile
from PIL import Image

from ndingest import webslices
from ndingest.cli import main
from ndingest.errors import RequestError, SpecError
from ndingest.ndjson import (MAX_TIME_POINTS, is_nd_json, job_dir, load_nd_json, parse_job, prepare_job,
                             spec_path, spec_text, write_spec)
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


@pytest.mark.parametrize("edit, field", [
    ({"imagesize": [10**23, 1, 1]}, "dataset.imagesize"),
    ({"imagesize": [1e23, 1, 1]}, "dataset.imagesize"),
    ({"imagesize": [1 << 40, 6, 3]}, "dataset.imagesize"),
    ({"offset": [0, 0, 1 << 40]}, "dataset.offset"),
    ({"voxelres": [4.0, 1e300, 40.0]}, "dataset.voxelres"),
    ({"voxelres": [4.0, float("nan"), 40.0]}, "dataset.voxelres"),
    ({"voxelres": [4.0, float("inf"), 40.0]}, "dataset.voxelres"),
    ({"scalinglevels": 10**30}, "dataset.scalinglevels"),
])
def test_numbers_past_their_bound_are_refused_naming_the_field(edit, field):
    with pytest.raises(RequestError, match=f"^autoIngest: {field} = "):
        parse_job(json.dumps(body(**edit)))
    assert parse_job(json.dumps(body(imagesize=[(1 << 40) - 1, 6, 3]))).size[0] == (1 << 40) - 1  # the last one in


def test_a_window_and_a_time_series_past_their_bounds_are_refused():
    em = {**body()["channels"]["em"], "windowrange": [0, float("inf")]}
    with pytest.raises(RequestError, match="channels.em.windowrange"):
        parse_job(json.dumps(body({"em": em})))
    with pytest.raises(RequestError, match="dataset.timerange = .* below 2\\^20"):
        parse_job(json.dumps(timeseries_body((0, MAX_TIME_POINTS))))
    assert parse_job(json.dumps(timeseries_body((0, MAX_TIME_POINTS - 1)))).time_points == MAX_TIME_POINTS


def test_jobs_is_a_reserved_name_for_specs_too(tmp_path):
    assert "_jobs" in RESERVED_NAMES
    text = spec_text(parse_job(json.dumps(body())), tmp_path / "store").replace('name = "nd_ds"', 'name = "_Jobs"')
    with pytest.raises(SpecError, match="reserved"):
        parse_spec(text, tmp_path / "spec.toml")


def test_slices_are_a_url_pattern_numbered_from_the_z_offset(tmp_path):
    store = tmp_path / "store"
    for ext in ("tif", "png"):
        job = parse_job(json.dumps(body({"em": {**body()["channels"]["em"], "file_type": ext}})))
        spec = parse_spec(spec_text(job, store), spec_path(store, job.token))
        em = spec.channels["em"]
        assert (em.source, em.z_range, em.t_range) == (f"http://127.0.0.1:9/files/nd_tk/em/{{z:04d}}.{ext}",
                                                      (2, 5), None)


def timeseries_body(timerange=(0, 1)):
    channel = {"channel_name": "ts", "datatype": "uint16", "channel_type": "timeseries",
               "data_url": "http://127.0.0.1:9/files", "file_format": "SLICE", "file_type": "tif"}
    return body({"ts": channel}, timerange=list(timerange))


def test_a_time_series_reads_time_folders_and_needs_a_timerange_from_zero(tmp_path):
    job = parse_job(json.dumps(timeseries_body()))
    spec = parse_spec(spec_text(job, tmp_path / "store"), spec_path(tmp_path / "store", job.token))
    ts = spec.channels["ts"]
    assert job.time_points == 2
    assert (ts.source, ts.z_range, ts.t_range) == ("http://127.0.0.1:9/files/nd_tk/ts/time{t:04d}/{z:04d}.tif",
                                                   (2, 5), (0, 2))
    for bad in ({k: v for k, v in timeseries_body()["dataset"].items() if k != "timerange"},
                timeseries_body((1, 2))["dataset"]):
        with pytest.raises(RequestError, match="dataset.timerange"):
            parse_job(json.dumps({**timeseries_body(), "dataset": bad}))


def hdf5_channel(url: str) -> dict:
    return {"channel_name": "anno", "datatype": "uint32", "channel_type": "annotation", "data_url": url,
            "file_format": "HDF5", "file_type": "h5"}


def test_only_an_http_hdf5_source_is_fetched_under_the_store(tmp_path):
    store = tmp_path / "store"
    job = parse_job(json.dumps(body({"anno": hdf5_channel("http://127.0.0.1:9/a.h5")})))
    spec = parse_spec(spec_text(job, store), spec_path(store, job.token))
    assert spec_path(store, "nd_tk") == store / "_jobs" / "nd_tk.toml"
    assert spec.channels["anno"].source == str(store.resolve() / "_jobs" / "nd_tk" / "sources" / "anno.h5")
    assert str(spec.store.path) == str(store.resolve())
    local = tmp_path / "here" / "a.h5"
    job = parse_job(json.dumps(body({"anno": hdf5_channel(local.as_uri())})))
    assert parse_spec(spec_text(job, store), spec_path(store, job.token)).channels["anno"].source == str(local)


def test_is_nd_json_by_extension_or_by_content(tmp_path):
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / "nd.txt").write_text(str(body()))
    (tmp_path / "s.toml").write_text(str(body()))
    (tmp_path / "other").write_text("[dataset]\n")
    assert [is_nd_json(tmp_path / n) for n in ("a.json", "nd.txt", "s.toml", "other")] == [True, True, False, False]


def test_prepare_job_reads_file_url_slices_in_place_and_refuses_another_size(tmp_path, monkeypatch):
    files = tmp_path / "files"
    data = np.random.default_rng(1).integers(0, 255, (3, 6, 8), dtype=np.uint8)
    for z, pg in zip((2, 3, 4), data):
        (files / "nd_tk" / "em").mkdir(parents=True, exist_ok=True)
        Image.fromarray(pg).save(files / "nd_tk" / "em" / f"{z:04d}.png")
    channel = {**body()["channels"]["em"], "data_url": files.as_uri(), "file_type": "png"}
    store = tmp_path / "store"
    monkeypatch.delenv("NDINGEST_SLICE_CACHE")  # then a job's slices are staged in its folder, in the store
    spec = prepare_job(store, parse_job(json.dumps(body({"em": channel}))))
    assert spec == store / "_jobs" / "nd_tk.toml" and spec.exists()
    assert not (job_dir(store, "nd_tk") / "sources").exists()  # nothing copied
    staged = job_dir(store, "nd_tk") / "staged"
    assert len(list(staged.rglob("*.tif"))) == 1  # the first slice, staged by the size check
    monkeypatch.setattr(webslices, "drop_staged", lambda spec: None)  # to look at them before they go
    assert main(["ingest", str(spec)]) == 0
    assert len(list(staged.rglob("*.tif"))) == 3  # a page per slice
    monkeypatch.undo()
    monkeypatch.delenv("NDINGEST_SLICE_CACHE")  # (undo set it again)
    assert main(["ingest", str(spec)]) == 0  # a finished job drops them
    assert not staged.exists()
    volume = ts.open({"driver": "neuroglancer_precomputed", "scale_index": 0,
                      "kvstore": {"driver": "file", "path": f"{store}/nd_ds/nd_pr/em/"}}).result()
    assert np.array_equal(np.asarray(volume[..., 0].read().result()).transpose(2, 1, 0), data)
    with pytest.raises(RequestError, match="dataset.imagesize"):
        prepare_job(tmp_path / "store2", parse_job(json.dumps(body({"em": channel}, imagesize=[8, 7, 3]))))


def test_a_slice_unlike_the_first_stops_the_ingest_naming_its_url(tmp_path, capsys):
    files = tmp_path / "files" / "nd_tk" / "em"
    files.mkdir(parents=True)
    data = np.random.default_rng(2).integers(0, 255, (3, 6, 8), dtype=np.uint8)
    for z, pg in zip((2, 3, 4), data):
        tifffile.imwrite(files / f"{z:04d}.tif", pg if z != 4 else pg[:3, :4])
    channel = {**body()["channels"]["em"], "data_url": (tmp_path / "files").as_uri()}
    spec = prepare_job(tmp_path / "store", parse_job(json.dumps(body({"em": channel}))))  # reads the first only
    assert main(["ingest", str(spec)]) == 3
    err = capsys.readouterr().err
    assert "0004.tif: page is y 3 x 4 uint8, the first" in err, err


def test_ingest_wants_store_for_nd_json_and_refuses_it_for_a_toml_spec(tmp_path, capsys):
    (tmp_path / "nd.json").write_text(json.dumps(body()))
    (tmp_path / "s.toml").write_text("[dataset]\n")
    assert main(["ingest", str(tmp_path / "nd.json")]) == 2
    assert main(["ingest", str(tmp_path / "s.toml"), "--store", str(tmp_path / "store")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "needs --store" in lines[0] and "--store is for ND.json only" in lines[1], lines


def test_status_of_a_job_spec_before_its_sources_are_fetched_says_so(tmp_path, capsys):
    store = tmp_path / "store"
    spec = write_spec(store, parse_job(json.dumps(body({"anno": hdf5_channel("http://127.0.0.1:9/a.h5")}))))
    assert main(["status", str(spec)]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "still being fetched" in err and "0 files" in err, err


def test_status_of_a_running_job_still_fetching_is_its_progress_not_an_error(tmp_path, capsys):
    store = tmp_path / "store"
    spec = write_spec(store, parse_job(json.dumps(body({"anno": hdf5_channel("http://127.0.0.1:9/a.h5")}))))
    (spec.parent / spec.stem).mkdir(parents=True, exist_ok=True)
    (spec.parent / spec.stem / "status.json").write_text(json.dumps({"state": "running", "message": "fetching"}))
    assert main(["status", str(spec)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("fetching: ") and "0 files" in out, out
    assert main(["status", str(spec), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["channels"] == {}
    (spec.parent / spec.stem / "status.json").write_text(json.dumps({"state": "failed", "message": "404"}))
    assert main(["status", str(spec)]) == 3  # a failed fetch stays an error


def test_status_of_a_slice_job_whose_server_is_down_is_that_error_not_a_fetch(tmp_path, capsys):
    store = tmp_path / "store"
    spec = write_spec(store, parse_job(json.dumps(body())))  # slices at 127.0.0.1:9: nothing listens
    (spec.parent / spec.stem).mkdir(parents=True, exist_ok=True)
    (spec.parent / spec.stem / "status.json").write_text(json.dumps({"state": "running", "message": ""}))
    assert main(["status", str(spec)]) == 3
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "http://127.0.0.1:9/files/nd_tk/em/0002.tif" in err, err
    assert "still being fetched" not in err


def test_a_jobs_caps_are_twice_its_declared_sizes_plus_a_mebibyte():
    from ndingest.fetchpolicy import FetchPolicy
    from ndingest.ndjson import declared_bytes, job_policy

    job = parse_job(json.dumps(body({
        "em": {"channel_name": "em", "datatype": "uint8", "channel_type": "image",
               "data_url": "http://127.0.0.1:9/files", "file_format": "SLICE", "file_type": "tif"},
        "big": {"channel_name": "big", "datatype": "uint64", "channel_type": "image",
                "data_url": "http://127.0.0.1:9/big.h5", "file_format": "HDF5", "file_type": "h5"}})))
    assert [declared_bytes(job, c) for c in job.channels] == [8 * 6 * 3, 8 * 6 * 3 * 8]
    assert job_policy(job, FetchPolicy(fetch_from=("x",))) == FetchPolicy(fetch_from=("x",),
                                                                          slice_bytes=2 * 8 * 6 + (1 << 20))


def test_a_file_url_is_refused_outside_the_allowed_folders_symlinks_resolved(tmp_path):
    from ndingest.fetchpolicy import FetchPolicy
    from ndingest.ndjson import refuse_files

    (tmp_path / "allowed").mkdir()
    (tmp_path / "allowed" / "out").symlink_to(tmp_path)
    policy = FetchPolicy(allow_files=(str(tmp_path / "allowed"),))
    for url, refused in (((tmp_path / "allowed" / "a.h5").as_uri(), False), ((tmp_path / "a.h5").as_uri(), True),
                         ((tmp_path / "allowed" / "out" / "a.h5").as_uri(), True),
                         ("http://127.0.0.1:9/a.h5", False)):  # addresses are checked at connect time
        job = parse_job(json.dumps(body({"anno": hdf5_channel(url)})))
        if refused:
            with pytest.raises(RequestError, match=r"channels\.anno\.data_url = .*a\.h5'.*--allow-files"):
                refuse_files(job, policy)
        else:
            refuse_files(job, policy)
