"""The memory budget's rules (server/budget.py), without HTTP: the ledger's state machine
by calling it, the waiting by threads with short waits."""
from __future__ import annotations

import threading

import pytest

from ndingest.errors import BodyTooLarge, Busy
from ndingest.server.budget import (MiB, Ledger, MemoryBudget, keep_freed_bytes, post_estimate,
                                    request_bytes, slice_estimate)


def test_a_request_larger_than_the_whole_budget_is_413_naming_both():
    ledger = Ledger(100 * MiB)
    with pytest.raises(BodyTooLarge, match=r"needs about 101 MiB .*budget of 100 MiB") as caught:
        ledger.enqueue(101 * MiB, "xy slice")
    assert caught.value.status == 413 and not ledger.waiting


def test_grants_go_in_arrival_order_and_only_while_they_fit():
    ledger = Ledger(100)
    big, small = ledger.enqueue(80, "a"), ledger.enqueue(10, "b")
    assert not ledger.grant(small)  # not first in line
    assert ledger.grant(big) and ledger.used == 80
    late = ledger.enqueue(30, "c")
    assert ledger.grant(small) and ledger.used == 90
    assert not ledger.grant(late)  # first in line now, but 90 + 30 > 100
    ledger.release(80)
    assert ledger.grant(late) and ledger.used == 40 and not ledger.waiting


def test_a_waiter_that_gives_up_leaves_the_line():
    ledger = Ledger(10)
    first, second = ledger.enqueue(10, "a"), ledger.enqueue(5, "b")
    ledger.cancel(first)
    assert ledger.grant(second) and ledger.used == 5


def test_a_lease_gives_back_on_error_and_once_only():
    budget = MemoryBudget(10)
    with pytest.raises(RuntimeError):
        with budget.lease(10, "a"):
            raise RuntimeError("boom")
    assert budget.ledger.used == 0
    with budget.lease(4, "b") as lease:
        lease.keep()
    assert budget.ledger.used == 4  # kept: the answer gives it back once sent
    lease.release()
    lease.release()
    assert budget.ledger.used == 0


def test_a_waiting_request_runs_when_memory_is_given_back():
    budget = MemoryBudget(10, wait_seconds=10)
    budget.take(8, "first")
    got = threading.Event()
    waiter = threading.Thread(target=lambda: (budget.take(5, "second"), got.set()))
    waiter.start()
    assert not got.wait(0.1)
    budget.give_back(8)
    waiter.join(5)
    assert got.is_set() and budget.ledger.used == 5


def test_a_request_that_waits_too_long_is_503_with_retry_after():
    budget = MemoryBudget(10, wait_seconds=0.05)
    budget.take(8, "first")
    with pytest.raises(Busy, match="waited 0.05 s") as caught:
        budget.take(5, "second")
    assert caught.value.status == 503 and caught.value.retry_after == 1
    assert not budget.ledger.waiting and budget.ledger.used == 8


def test_malloc_kept_heap_counts_against_the_budget():
    assert keep_freed_bytes(1024 * MiB) == 128 * MiB and request_bytes(1024 * MiB) == 768 * MiB
    assert keep_freed_bytes(8192 * MiB) == 256 * MiB  # never more than the light mix needs


def test_estimates_count_what_a_route_holds_at_once():
    assert post_estimate((10, 10, 10), "uint16", 500) == 500 + 1000 * 2 * 4
    assert post_estimate((10, 10, 10), "uint16", None) == 1000 * 2 * 5  # no Content-Length: the voxels' bytes
    # a 4k x 4k uint64 annotation plane: the plane read, three RGB copies, the tiles
    assert slice_estimate(4096 * 4096, 8, pixel_bytes=3) == 4096 * 4096 * 17 + 8 * MiB


def test_serve_memory_and_its_variable_set_the_budget(tmp_path, monkeypatch):
    from ndingest.errors import SpecError
    from ndingest.server import app_from_env, create_app

    assert create_app(tmp_path, memory_mib=512).state.ctx.budget.total == request_bytes(512 * MiB)
    monkeypatch.setenv("NDINGEST_STORE", str(tmp_path))
    monkeypatch.setenv("NDINGEST_MEMORY", "2048")
    monkeypatch.setenv("NDINGEST_MEMORY_WAIT", "0.5")
    budget = app_from_env().state.ctx.budget
    assert budget.total == request_bytes(2048 * MiB) and budget.wait_seconds == 0.5
    monkeypatch.setenv("NDINGEST_MEMORY", "lots")
    with pytest.raises(SpecError, match="NDINGEST_MEMORY='lots'"):
        app_from_env()
    with pytest.raises(SpecError, match="--memory 16: .* at least 64 MiB"):
        create_app(tmp_path, memory_mib=16)
