"""Run an ingest: preflight, the run lock, the channels' locks, `--restart`, and Luigi's
DAG through Verify.

`ingest()` is what `ndingest ingest` starts (and what a server will start): the CLI only
parses, prints and picks the exit code. Luigi's global configuration is `luigiconf`'s.
"""
from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, ExitStack, nullcontext
from pathlib import Path
from typing import Callable

from .errors import InternalError, NdingestError, RemoteError, SpecError
from .luigiconf import luigi_run_settings
from .plan import Plan

logger = logging.getLogger(__name__)

Say = Callable[[str], None]  # one line for the user: what a run did on its own account

OTHERS_POLL_SECONDS = 2.0


def run_luigi(plan: Plan, *, workers: int, scheduler_url: str | None, debug: bool, say: Say) -> None:
    """Build the DAG through Verify; a failure becomes the error its task recorded."""
    import luigi
    import luigi.rpc

    from .scheduler import release_finished
    from .tasks import Verify, recorded_failures

    started = time.time() - 1
    kwargs = {"scheduler_url": scheduler_url} if scheduler_url else {"local_scheduler": True}
    luigi_run_settings(scheduler_url)
    _start_workers_clean(plan, workers)
    goal = Verify(spec=str(plan.spec.path))
    waited = False
    while True:
        try:
            released = release_finished(scheduler_url, goal.spec, goal.spec_id) if scheduler_url else []
            if released:
                say(f"luigid still showed {len(released)} finished task(s) as running (a run that "
                    f"stopped before it could report them); marked done: {', '.join(released)}")
            result = luigi.build([goal], workers=workers, detailed_summary=True, **kwargs)
        except luigi.rpc.RPCError as exc:  # luigid went away mid-run, after Luigi's retries
            raise RemoteError(f"--scheduler-url {scheduler_url}: lost luigid mid-run ({exc}); finished blocks "
                              f"are kept, rerun the same command to continue") from exc
        if result.status.name not in ("SUCCESS", "SUCCESS_WITH_RETRY", "NOT_RUN"):
            break
        if goal.complete():
            return
        if not scheduler_url or recorded_failures(plan, since=started):
            break
        # luigid gave the rest to other runs (Luigi calls that success, or "not granted run
        # permission" when they finished in between): wait, and take over what they leave.
        if not waited:
            say("other runs on the scheduler hold the remaining tasks; waiting for them")
            waited = True
        time.sleep(OTHERS_POLL_SECONDS)
    failures = recorded_failures(plan, since=started)
    if failures:
        first = failures[0]
        if first.get("traceback"):  # not an NdingestError: a bug, which keeps its traceback
            raise InternalError(f"internal error in {first['task']}: {first['type']}: {first['message']}",
                                traceback=f"in task {first['task']}:\n{first['traceback']}")
        err = NdingestError(first["message"])
        err.exit_code = first["exit_code"]
        raise err
    detail = result.summary_text.strip().splitlines() if debug else []
    raise NdingestError(f"ingest did not finish: luigi status {result.status.name.lower()}"
                        + (f"\n{chr(10).join(detail)}" if detail else "; rerun with --debug for Luigi's summary"))


def _run_lock(plan: Plan) -> AbstractContextManager:
    """A local-scheduler run's lock: a file in the store's markers, or for an object store
    (no folder to lock) one held in its catalog."""
    from .kvpath import KvPath
    from .runlock import catalog_lock, run_lock
    from .steps import lock_path

    if isinstance(plan.state_dir, KvPath):
        return catalog_lock(plan.catalog, f"ndingest ingest {plan.markers_dir}")
    return run_lock(lock_path(plan))


def _channel_locks(plan: Plan, names) -> AbstractContextManager:
    """Each channel's ingest lock (`channellock`), shared with other ingests, held for the
    whole run (its levels too), so `serve` on the same store refuses writes and deletes of
    these channels meanwhile (409 naming this job). Luigi's forked workers inherit it, and
    it goes with the process. Only a local folder store: a server takes its own locks for
    what we post, and a bucket is read-only to `serve`."""
    from .channellock import ingest_holding
    from .targets import LocalStore

    if not isinstance(plan.store, LocalStore) or not isinstance(plan.store.path, Path):
        return nullcontext()
    job = f"the ingest of {plan.spec.path}"  # no pid: a rerun leaves the markers folder as it was
    return ingest_holding([plan.channel(name).markers_dir for name in names], job=job)


def _start_workers_clean(plan: Plan, workers: int) -> None:
    """Luigi forks its worker processes; once this process has used tensorstore (an object
    store's markers are read through it), a forked child that uses it aborts. Such runs
    start their workers from a fork server instead, which has imported but not used it."""
    import multiprocessing

    from .kvpath import KvPath

    if workers > 1 and isinstance(plan.state_dir, KvPath):
        multiprocessing.set_forkserver_preload(["ndingest.tasks"])
        multiprocessing.set_start_method("forkserver", force=True)


def ingest(plan: Plan, *, workers: int = 1, scheduler_url: str | None = None, restart: str | None = None,
           debug: bool = False, say: Say = logger.info,
           monitor: Callable[[Plan], AbstractContextManager] | None = None) -> None:
    """Inspect, register, write, build the levels and verify, resumably; raises the
    NdingestError of the first failure. Every check that writes nothing runs first; a
    run refused before Inspect finished leaves the store as it was. `monitor(plan)`
    wraps the run (the CLI's progress bars)."""
    from .scheduler import check_scheduler
    from .steps import forget_failed_start, new_folders, preflight, restart_channel
    from .webslices import drop_staged

    if restart:
        plan.channel(restart)  # a SpecError naming the channels if unknown
    if workers < 1:
        raise SpecError(f"--workers {workers}: must be at least 1")
    if scheduler_url:
        check_scheduler(scheduler_url)
    preflight(plan, skip_channel=restart)
    created = [] if scheduler_url else new_folders(plan)  # under luigid, other runs share them
    try:
        with nullcontext() if scheduler_url else _run_lock(plan), ExitStack() as held:
            held.enter_context(_channel_locks(plan, plan.channels))
            if restart:
                restart_channel(plan, restart)
                say(f"restart: dropped the markers of channel {restart}; writing it again")
                held.enter_context(_channel_locks(plan, [restart]))  # its lock files went with its markers
            with monitor(plan) if monitor else nullcontext():
                run_luigi(plan, workers=workers, scheduler_url=scheduler_url, debug=debug, say=say)
    except BaseException:
        forget_failed_start(plan, created)
        raise
    drop_staged(plan.spec)  # slices staged by URL: every block is written and verified
