"""Auto-ingest's job slots and queue on real flock files: which job is alive, which is next,
and what `serve --max-jobs` / NDINGEST_MAX_JOBS admit (the server itself: tests/e2e/test_serve_autoingest.py)."""
from __future__ import annotations

import json
import os

import pytest

from ndingest.errors import SpecError
from ndingest.runlock import try_lock
from ndingest.server import max_jobs_from_env
from ndingest.server.autoingest import (FAILED, QUEUED, RUNNING, lock_path, queued_ahead, read_status, slot_path,
                                        take_slot)


def job(store, token: str, project: str, state: str, posted: float) -> dict:
    record = {"state": state, "message": "", "project": project, "token": token, "posted": posted}
    (store / "_jobs" / token).mkdir(parents=True, exist_ok=True)
    (store / "_jobs" / token / "status.json").write_text(json.dumps(record))
    return record


def hold(store, project: str, token: str) -> int:
    """The project's lock, as a job's thread holds it: the fd, the token written in the file."""
    fd = try_lock(lock_path(store, project))
    assert fd is not None
    os.pwrite(fd, token.encode(), 0)
    return fd


def test_slots_are_max_jobs_flocks_under_a_dot_folder_that_free_when_closed(tmp_path):
    first, second = take_slot(tmp_path, 2), take_slot(tmp_path, 2)
    assert None not in (first, second) and take_slot(tmp_path, 2) is None
    assert slot_path(tmp_path, 1) == tmp_path / "_jobs" / ".slots" / "1.lock"  # no token's folder is named so
    os.close(first)
    again = take_slot(tmp_path, 2)
    assert again is not None and take_slot(tmp_path, 3) is not None  # a third slot where three are allowed
    for fd in (second, again):
        os.close(fd)


def test_only_live_queued_jobs_posted_earlier_are_ahead(tmp_path):
    fds = [hold(tmp_path, "p_old", "t_old"), hold(tmp_path, "p_me", "t_me"), hold(tmp_path, "p_new", "t_new")]
    job(tmp_path, "t_old", "p_old", QUEUED, posted=1.0)    # alive, earlier: ahead
    job(tmp_path, "t_dead", "p_dead", QUEUED, posted=0.5)  # its lock free: its server died
    job(tmp_path, "t_stale", "p_me", QUEUED, posted=0.7)   # its project's lock is another token's
    job(tmp_path, "t_run", "p_old", RUNNING, posted=0.1)   # running, not queued
    me = job(tmp_path, "t_me", "p_me", QUEUED, posted=2.0)
    job(tmp_path, "t_new", "p_new", QUEUED, posted=3.0)    # after me
    try:
        assert queued_ahead(tmp_path, me) == 1
    finally:
        for fd in fds:
            os.close(fd)
    assert queued_ahead(tmp_path, me) == 0


def test_a_queued_or_running_job_whose_lock_is_free_reads_failed_post_it_again(tmp_path):
    job(tmp_path, "t_q", "p_q", QUEUED, posted=1.0)
    job(tmp_path, "t_r", "p_r", RUNNING, posted=1.0)
    for token in ("t_q", "t_r"):
        state = read_status(tmp_path, tmp_path / "_jobs" / token)
        assert state["state"] == FAILED and "post the same body again" in state["message"], state
    fd = hold(tmp_path, "p_q", "t_q")
    try:
        assert read_status(tmp_path, tmp_path / "_jobs" / "t_q")["state"] == QUEUED
    finally:
        os.close(fd)


@pytest.mark.parametrize("text, expected", [(None, 2), ("", 2), ("5", 5), (" 1 ", 1)])
def test_ndingest_max_jobs_is_a_whole_number_of_at_least_one(monkeypatch, text, expected):
    if text is None:
        monkeypatch.delenv("NDINGEST_MAX_JOBS", raising=False)
    else:
        monkeypatch.setenv("NDINGEST_MAX_JOBS", text)
    assert max_jobs_from_env() == expected


@pytest.mark.parametrize("text", ["0", "-1", "two", "1.5"])
def test_a_bad_ndingest_max_jobs_is_refused_naming_it(monkeypatch, text):
    monkeypatch.setenv("NDINGEST_MAX_JOBS", text)
    with pytest.raises(SpecError, match="^NDINGEST_MAX_JOBS="):
        max_jobs_from_env()
