"""Progress off a terminal: what a plain line says and when one is due (pure, clock passed in)."""
from __future__ import annotations

from ndingest.progress import Ticker, format_duration, progress_line


def test_progress_line_says_done_total_percent_rate_and_eta():
    assert progress_line("image write+verify", 130, total=480, unit="blocks", mb_per_s=3.14159, eta_seconds=41.4) == \
        "image write+verify: 130/480 blocks (27 %), 3.1 MB/s, ETA 0:00:41"
    assert format_duration(3 * 3600 + 62) == "3:01:02" and format_duration(None) == "?"


def test_a_line_is_due_at_each_5_percent_and_at_least_once_a_minute():
    ticker = Ticker("image write+verify", 200, now=0.0, bytes_per_unit=2e6)
    assert ticker.update(9, now=1.0) is None  # 4.5 %
    assert ticker.update(10, now=2.0) == "image write+verify: 10/200 blocks (5 %), 10.0 MB/s, ETA 0:00:38"
    assert ticker.update(19, now=3.0) is None
    assert ticker.update(45, now=4.0).startswith("image write+verify: 45/200 blocks (22 %)")  # one line for 3 steps
    assert ticker.update(45, now=63.0) is None  # a minute after the last line, not yet
    stalled = ticker.update(45, now=64.0)
    assert stalled.startswith("image write+verify: 45/200 blocks (22 %), ") and "ETA 0:03:40" in stalled
    assert ticker.finish(200, now=80.0).startswith("image write+verify: 200/200 blocks (100 %)")
    assert ticker.finish(200, now=81.0) is None  # said already


def test_a_resumed_run_counts_its_rate_from_where_it_started():
    ticker = Ticker("image write+verify", 100, now=10.0, done=50, bytes_per_unit=1e6)
    assert ticker.update(52, now=11.0) is None
    assert ticker.update(60, now=12.0) == "image write+verify: 60/100 blocks (60 %), 5.0 MB/s, ETA 0:00:08"
    assert Ticker("x", 10, now=0.0, done=10).finish(10, now=5.0) is None  # nothing to do, nothing said
