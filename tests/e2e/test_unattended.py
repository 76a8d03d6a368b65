"""Runs nobody watches (cron, pipes, luigid): plain progress lines, and a bug is one line
naming a log file that holds its traceback."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from conftest import run_cli, write_h5, write_spec
from ndingest.progress import PlainBar
from ndingest.sample import IMAGE_FILE

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (?P<label>\w+) (?P<what>write\+verify|verify): "
                  r"(?P<done>\d+)/(?P<total>\d+) blocks \((?P<pct>\d+) %\), (?P<mb>[\d.]+) MB/s, "
                  r"ETA (?P<eta>\d+:\d\d:\d\d|\?)$")


# --- the CLI's stand-in for a bar -----------------------------------------------------------

def test_plain_bar_prints_time_stamped_lines_without_terminal_control(tmp_path):
    out = tmp_path / "out.txt"
    clock = iter([0.0, 1.0, 2.0, 3.0]).__next__
    with out.open("w") as stream, PlainBar(4, label="scan", unit="voxels", bytes_per_unit=1.0, stream=stream,
                                           clock=clock) as bar:
        bar.update(2)
        bar.update(2)
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and lines[-1].endswith("scan: 4/4 voxels (100 %), 0.0 MB/s, ETA 0:00:00")


# --- through the CLI, with pipes as cron gives them ------------------------------------------

def _channel_lines(text: str, what: str) -> dict[str, list[re.Match]]:
    found: dict[str, list[re.Match]] = {}
    for line in text.splitlines():
        m = LINE.match(line)
        if m and m["what"] == what:
            found.setdefault(m["label"], []).append(m)
    return found


def test_ingest_and_verify_off_a_terminal_print_plain_progress_per_channel(tmp_path):
    rng = np.random.default_rng(14)
    image = write_h5(tmp_path / "img.h5", rng.integers(0, 256, (96, 512, 512), dtype=np.uint8))
    labels = write_h5(tmp_path / "lab.h5", rng.integers(0, 4, (96, 512, 512), dtype=np.uint8), "annotation/CUTOUT")
    spec = write_spec(tmp_path, image=image, annotation=labels, ingest="block_chunks = [1, 1, 1]\nblocks_per_task = 1")
    result = run_cli("ingest", str(spec))
    assert result.returncode == 0, result.stderr
    for text in (result.stdout, result.stderr):
        assert "\r" not in text and "\x1b" not in text
    lines = _channel_lines(result.stdout, "write+verify")
    assert set(lines) == {"image", "annotation"}, result.stdout
    for name, found in lines.items():
        total = 2 * 4 * 4 * 6  # written and verified, 4 x 4 x 6 blocks of 128 x 128 x 16
        assert len(found) >= 2, result.stdout  # several lines, not one at the end
        assert all(int(m["total"]) == total for m in found)
        assert [int(m["done"]) for m in found] == sorted(int(m["done"]) for m in found)
        assert found[-1]["done"] == str(total) and found[-1]["pct"] == "100"
        assert any(float(m["mb"]) > 0 and m["eta"] != "?" for m in found)
    assert "image: 96/96 blocks written, 96/96 verified" in result.stdout

    checked = run_cli("verify", str(spec))
    assert checked.returncode == 0, checked.stderr
    assert "\r" not in checked.stdout + checked.stderr and "\x1b" not in checked.stdout + checked.stderr
    lines = _channel_lines(checked.stdout, "verify")
    assert set(lines) == {"image", "annotation"}, checked.stdout
    assert all(found[-1]["done"] == found[-1]["total"] == "96" for found in lines.values())


def test_inspect_off_a_terminal_reports_the_scan_on_stderr_and_keeps_stdout_json(tmp_path):
    source = write_h5(tmp_path / "big.h5", np.random.default_rng(3).integers(0, 256, (64, 512, 512), dtype=np.uint8))
    result = run_cli("inspect", str(source), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["window_range"] == [0, 255]
    scan = [line for line in result.stderr.splitlines() if " scan: " in line]
    assert scan, result.stderr
    assert re.search(r"scan: 16777216/16777216 voxels \(100 %\), [\d.]+ MB/s, ETA 0:00:00$", scan[-1]), scan
    assert "\r" not in result.stderr and "\x1b" not in result.stderr


# --- internal errors -----------------------------------------------------------------------

def _cli_with(patch: str, *args: str, state: Path) -> subprocess.CompletedProcess:
    """`ndingest ARGS` in a Python that first replaces one function with a buggy one (a bug
    we can aim at the CLI's edge; nothing in ndingest itself is mocked)."""
    code = textwrap.dedent(f"""
        import sys
        import ndingest.cli, ndingest.steps
        {patch}
        sys.argv = ["ndingest", *{list(args)!r}]
        sys.exit(ndingest.cli.main(sys.argv[1:]))
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "XDG_STATE_HOME": str(state)})


def _logged(stderr: str, state: Path) -> str:
    match = re.search(r"; traceback in (\S+\.log)$", stderr.strip())
    assert match, stderr
    log = Path(match[1])
    assert log.parent == state / "ndingest", log
    return log.read_text()


def test_a_bug_is_one_line_naming_the_log_that_holds_its_traceback(tmp_path, tutorial_data):
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE)
    boom = "ndingest.cli.cmd_status = lambda args: 1 // 0"
    result = _cli_with(boom, "status", str(spec), state=tmp_path / "state")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("ndingest: internal error: ZeroDivisionError: integer division or modulo by zero; ")
    log = _logged(result.stderr, tmp_path / "state")
    assert "Traceback (most recent call last)" in log and "ZeroDivisionError" in log and "status" in log

    debug = _cli_with(boom, "status", str(spec), "--debug", state=tmp_path / "state2")
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("ndingest: internal error: ZeroDivisionError")


def test_a_bug_inside_a_task_is_one_line_naming_the_log_too(tmp_path, tutorial_data):
    spec = write_spec(tmp_path, image=tutorial_data / IMAGE_FILE)
    boom = "def boom(plan):\n    raise KeyError('no such thing')\nndingest.steps.create_channels = boom"
    boom = boom.replace("\n", "\n        ")  # inside the dedented program
    result = _cli_with(boom, "ingest", str(spec), state=tmp_path / "state")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("ndingest: error: internal error in CreateChannels") and "KeyError" in lines[0]
    log = _logged(result.stderr, tmp_path / "state")
    assert "Traceback (most recent call last)" in log and "in boom" in log and "no such thing" in log

    debug = _cli_with(boom, "ingest", str(spec), "--debug", state=tmp_path / "state2")
    assert debug.returncode == 1 and "in boom" in debug.stderr and "Traceback" in debug.stderr


def test_a_reader_that_left_the_pipe_is_no_internal_error(tmp_path):
    """`ndingest inspect … | head -1`: the reader is gone before the table is printed."""
    source = write_h5(tmp_path / "v.h5", np.zeros((4, 5, 6), np.uint8))
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as closed:
        proc = subprocess.run([sys.executable, "-m", "ndingest.cli", "inspect", str(source), "--json"],
                              stdout=closed, stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 141, proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
