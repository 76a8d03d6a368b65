"""channellock: ingests share a channel, serve's writes share it, the two exclude each
other, and a delete waits for writes and is refused during an ingest. Real flocks on
files in tmp_path, across threads and one child process."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ndingest.channellock import ChannelGate, ingest_holding
from ndingest.errors import ChannelGone, StateConflict

JOB = "the ingest of /specs/cells.toml (pid 4242)"


def in_thread(target) -> tuple[threading.Thread, dict]:
    """Enter the context manager `target()` makes, in a thread, and stay in it (the dict
    keeps it, and gets the exception if entering raised)."""
    out: dict = {}

    def run():
        try:
            out["held"] = target()
            out["held"].__enter__()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            out["error"] = exc
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_ingests_share_a_channel_and_serve_writes_and_deletes_are_409_naming_the_job(tmp_path):
    folder = tmp_path / "_markers" / "ds" / "pr" / "ch"
    with ingest_holding([folder], job=JOB), ingest_holding([folder], job=JOB), ChannelGate(folder, "ch") as gate:
        for attempt in (lambda: gate.writing(doing="post to it").__enter__(), lambda: gate.deleting().__enter__()):
            with pytest.raises(StateConflict, match=r"channel 'ch' is in use by the ingest of /specs/cells.toml"):
                attempt()
    with ChannelGate(folder, "ch") as gate:
        with gate.writing():
            pass
        with gate.deleting():
            pass


def test_an_ingest_in_another_process_shares_the_lock(tmp_path):
    folder = tmp_path / "ch"
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from ndingest.channellock import ingest_holding\n"
         f"with ingest_holding([Path({str(folder)!r})], job='child'):\n    print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with ingest_holding([folder], job=JOB):  # shared: no wait
            pass
        with ChannelGate(folder, "ch") as gate, pytest.raises(StateConflict, match="in use by"):
            gate.writing().__enter__()
    finally:
        child.communicate("", timeout=30)
    assert child.returncode == 0
    with ChannelGate(folder, "ch") as gate, gate.writing():  # the lock went with the process
        pass


def test_writes_share_the_channel_and_a_delete_waits_for_them(tmp_path):
    folder = tmp_path / "ch"
    with ChannelGate(folder, "ch") as a, ChannelGate(folder, "ch") as b, ChannelGate(folder, "ch") as d:
        with a.writing(), b.writing():  # two writes at once
            deleting, out = in_thread(d.deleting)
            deleting.join(0.3)
            assert deleting.is_alive(), "the delete went ahead of writes under way"
        deleting.join(10)
        assert "error" not in out and not deleting.is_alive()
        out["held"].__exit__(None, None, None)


def test_a_write_that_waited_for_a_delete_finds_the_channel_gone(tmp_path):
    folder = tmp_path / "ch"
    with ChannelGate(folder, "ch") as d, ChannelGate(folder, "ch") as w:
        with d.deleting():
            folder.rename(tmp_path / "trash")
            writing, out = in_thread(w.writing)
            writing.join(0.2)
        writing.join(10)
    assert isinstance(out.get("error"), ChannelGone)


def test_an_ingest_waits_for_writes_under_way_then_refuses_new_ones(tmp_path):
    folder = tmp_path / "ch"
    with ChannelGate(folder, "ch") as gate:
        with gate.writing():
            ingest, out = in_thread(lambda: ingest_holding([folder], job=JOB))
            ingest.join(0.3)
            assert ingest.is_alive(), "the ingest began while a write was under way"
        ingest.join(10)
        assert "error" not in out
        with pytest.raises(StateConflict, match="cells.toml"):
            gate.writing().__enter__()


def test_an_ingest_that_waited_for_a_delete_locks_the_new_folder(tmp_path: Path):
    folder = tmp_path / "ch"
    with ChannelGate(folder, "ch") as d:
        with d.deleting():
            folder.rename(tmp_path / "trash")
            ingest, out = in_thread(lambda: ingest_holding([folder], job=JOB))
            ingest.join(0.2)
        ingest.join(10)
    assert "error" not in out and (folder / "ingest.lock").exists()
    with ChannelGate(folder, "ch") as gate, pytest.raises(StateConflict, match="cells.toml"):
        gate.writing().__enter__()


def test_writers_checking_at_once_never_find_the_channel_in_use(tmp_path):
    """A writer's check takes ingest.lock for an instant; the next writer's check must not
    find it held (it once was, between the probe's release and the check's own)."""
    folder = tmp_path / "_markers" / "ds" / "pr" / "ch"
    refused: list[Exception] = []

    def write_many():
        with ChannelGate(folder, "ch") as gate:
            for _ in range(400):
                try:
                    with gate.writing(doing="post to it"):
                        pass
                except StateConflict as exc:
                    refused.append(exc)

    threads = [threading.Thread(target=write_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert refused == []
