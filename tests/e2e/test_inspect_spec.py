"""`inspect SPEC --json` carries the tutorial table's dataset rows, not only the channels."""
from __future__ import annotations

import json

from conftest import run_cli, write_spec
from ndingest.sample import ANNOTATION_FILE, IMAGE_FILE


def test_inspect_spec_json_has_the_dataset_rows_of_the_text_table(tmp_path, tutorial_data):
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE, annotation=tutorial_data / ANNOTATION_FILE,
                      resolution=(32.0, 32.0, 40.0))
    spec.write_text(spec.read_text().replace("scaling_levels = 0", 'scaling_levels = "auto"'))
    result = run_cli("inspect", str(spec), "--json")
    assert result.returncode == 0, result.stderr
    table = json.loads(result.stdout)
    assert table["dataset"] == {
        "name": "neurostorm_kat11_scale3", "x_offset": 1000, "y_offset": 2000, "z_offset": 1000,
        "x_voxel_resolution": 32.0, "y_voxel_resolution": 32.0, "z_voxel_resolution": 40.0,
        "scaling_option": "zslices", "scaling_levels": 3, "scaling_levels_auto": True,
    }
    text = run_cli("inspect", str(spec)).stdout
    assert any(line.startswith("scaling levels ") and line.endswith("| 3 (auto)") for line in text.splitlines())
    # the channels' keys are still there, as before
    assert set(table["channels"]) == {"image", "annotation"}
    assert table["channels"]["image"]["x_size"] == 300 and table["channels"]["image"]["z_size"] == 200
    assert not (tmp_path / "store").exists()
