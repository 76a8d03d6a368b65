"""The Luigi DAG, as thin declarations over `steps`, `ingest` and `verify`.

    Inspect -> CreateDataset -> CreateProject -> CreateChannels -> IngestBlock(task)*
        -> Downsample(level, task)* -> Verify          (a local store)
        -> Propagate(channel)* -> Verify                (a server builds the levels itself)

Parameters are the spec path and small integers, so any process or host rebuilds the
same tasks; a task is identified by the spec's content and where it writes, never by the
path (`spec_identity`), so hosts with their own copies of a spec share the work. `complete()` reads markers and the catalog and never writes.
Run the Luigi way: `luigi --module ndingest.tasks Verify --spec S.toml --local-scheduler`.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import signal
import time
import traceback
from pathlib import Path

import luigi

from . import markers, steps
from .errors import NdingestError
from .ingest import TaskResult, write_task
from .luigiconf import luigi_defaults
from .plan import Plan, load_plan
from .spec import load_spec
from .verify import report_dir, verify_plan

logger = logging.getLogger(__name__)

luigi_defaults()  # retcodes and friends where no luigi.cfg sets them: the Luigi way has no other hook


def spec_identity(spec_path: str) -> str:
    """What a task is known by instead of the spec's path: a hash of the spec's content
    and of where it writes (its store, resolved, and catalog), so hosts with their own copy
    of one spec share one luigid's tasks, and two specs that write apart never do."""
    spec = load_spec(spec_path)
    stat = spec.path.stat()
    return _identity(spec.path, stat.st_mtime_ns, stat.st_size, spec.store.url or str(spec.store.path),
                     spec.store.catalog or "")


@functools.lru_cache(maxsize=32)
def _identity(path: Path, mtime_ns: int, size: int, store: str, catalog: str) -> str:
    digest = hashlib.sha256(path.read_bytes())
    digest.update(f"\0{store}\0{catalog}".encode())
    return digest.hexdigest()[:20]


class SpecTask(luigi.Task):
    """A step of one spec's ingest; records why it failed for the `ndingest` CLI.

    The spec's path is not part of a task's identity (`significant=False`): `spec_id`
    (`spec_identity`, filled in when not given) is."""

    spec = luigi.Parameter(description="path of the spec file (TOML)", significant=False)
    spec_id = luigi.Parameter(default="", description="the spec's identity (filled in from the spec file)")

    @classmethod
    def get_param_values(cls, params, args, kwargs):
        values = super().get_param_values(params, args, kwargs)
        named = dict(values)
        if not named.get("spec_id"):
            named["spec_id"] = spec_identity(named["spec"])
        return [(name, named[name]) for name, _ in values]

    @property
    def plan(self) -> Plan:
        return load_plan(self.spec)

    def on_failure(self, exception: BaseException) -> str:
        code = exception.exit_code if isinstance(exception, NdingestError) else 1
        self.record_failure(code, str(exception), type(exception).__name__,
                            None if isinstance(exception, NdingestError) else traceback.format_exc())
        return super().on_failure(exception)

    def record_failure(self, code: int, message: str, kind: str, trace: str | None) -> None:
        try:
            markers.write_json(steps.failures_dir(self.plan) / f"{self.task_id}.json", {
                "exit_code": code, "message": message, "type": kind, "time": time.time(), "pid": os.getpid(),
                "task": self.task_id, "traceback": trace})
        except Exception:  # the spec itself may be what failed; luigi still reports it
            logger.debug("could not record failure of %s", self.task_id, exc_info=True)

    def _report(self, result: TaskResult) -> None:
        """One log line per task: what this process wrote (a rerun of a task writes 0)."""
        logger.info("%s: wrote %d blocks (%d already marked), %.1f MB in %.1f s", self.task_id, result.written,
                    result.skipped, result.bytes / 1e6, result.seconds)

    def _progress(self, done: int, total: int, what: str) -> None:
        """The luigid UI's per-task progress, at most about once a second."""
        now = time.monotonic()
        if done == total or now - getattr(self, "_last_progress", 0.0) >= 1.0:
            self._last_progress = now
            self.set_progress_percentage(round(100 * done / max(total, 1), 1))
            self.set_status_message(f"{done}/{total} {what}")


@SpecTask.event_handler(luigi.Event.PROCESS_FAILURE)
def _worker_process_died(task: SpecTask, error_msg: str) -> None:
    """With --workers N, Luigi runs each task in a child process; when one dies (killed, out
    of memory) no on_failure runs in it, so its parent records why, for the CLI."""
    code = re.search(r"exit code (-?\d+)", error_msg)
    how = f"exit code {code.group(1)}" if code else "no exit code"
    if code and int(code.group(1)) < 0:
        how += f", {signal.Signals(-int(code.group(1))).name}, e.g. from the out-of-memory killer"
    task.record_failure(1, f"{task.task_id}: its worker process died ({how}); the blocks it finished are kept, "
                           f"rerun the same command to continue", "WorkerDied", None)


class Inspect(SpecTask):
    """Read what each source's headers tell (sizes, dtype, time range; every file and page
    checked) and check the catalog for conflicts; writes `inspect.json` in the store's
    markers. No voxel is read: window ranges come from the blocks as they are written."""

    def complete(self) -> bool:
        return steps.cached_summaries(self.plan) is not None

    def run(self) -> None:
        steps.record_inspection(self.plan, steps.inspect_plan(self.plan, scan=False))


class CreateDataset(SpecTask):
    def requires(self):
        return Inspect(spec=self.spec)

    def complete(self) -> bool:
        return steps.in_catalog(self.plan, [steps.catalog_entries(self.plan, None).dataset])

    def run(self) -> None:
        steps.add_to_catalog(self.plan, [steps.catalog_entries(self.plan, None).dataset])


class CreateProject(SpecTask):
    """The project and its token."""

    def requires(self):
        return CreateDataset(spec=self.spec)

    def complete(self) -> bool:
        return steps.in_catalog(self.plan, steps.catalog_entries(self.plan, None).project)

    def run(self) -> None:
        steps.add_to_catalog(self.plan, steps.catalog_entries(self.plan, None).project)


class CreateChannels(SpecTask):
    """Channel rows and one precomputed volume per channel (per time point). Needs Inspect
    directly too: after a --restart the dataset and project are complete, so Luigi would
    not look below them for the dropped inspection."""

    def requires(self):
        return [CreateProject(spec=self.spec), Inspect(spec=self.spec)]

    def complete(self) -> bool:
        return steps.channels_ready(self.plan)

    def run(self) -> None:
        steps.create_channels(self.plan)


class IngestBlock(SpecTask):
    """One task of blocks of one channel (the design card's name: never one block per
    task, since Luigi's scheduler is quadratic in the task count)."""

    channel = luigi.Parameter()
    index = luigi.IntParameter(description="the task's number within its channel's level")

    def requires(self):
        return CreateChannels(spec=self.spec)

    def _task(self):
        cp = self.plan.channel(self.channel)
        return cp, cp.tasks[self.index]

    def complete(self) -> bool:
        cp, task = self._task()
        return markers.task_complete(markers.task_dir(cp.markers_dir, markers.WRITTEN, 0, task), task)

    def run(self) -> None:
        cp, task = self._task()
        self._report(write_task(self.plan, cp, task, progress=lambda d, n: self._progress(d, n, "blocks written")))


class Downsample(SpecTask):
    """One task of blocks of `level` >= 1, each reduced from the level below (ndstore's
    "propagate"): needs every task of that level first."""

    channel = luigi.Parameter()
    level = luigi.IntParameter()
    index = luigi.IntParameter(description="the task's number within its channel's level")

    def requires(self):
        below = self.plan.channel(self.channel).levels[self.level - 1]
        if self.level == 1:
            return [IngestBlock(spec=self.spec, channel=self.channel, index=s.index) for s in below.tasks]
        return [Downsample(spec=self.spec, channel=self.channel, level=self.level - 1, index=s.index)
                for s in below.tasks]

    def _task(self):
        cp = self.plan.channel(self.channel)
        return cp, cp.levels[self.level].tasks[self.index]

    def complete(self) -> bool:
        cp, task = self._task()
        return markers.task_complete(markers.task_dir(cp.markers_dir, markers.WRITTEN, self.level, task), task)

    def run(self) -> None:
        cp, task = self._task()
        steps.mark_propagating(self.plan, self.channel)
        self._report(write_task(self.plan, cp, task, level=self.level,
                                 progress=lambda d, n: self._progress(d, n, f"level {self.level} blocks written")))


class Propagate(SpecTask):
    """A server's levels of one channel (ndstore's propagate): once every level-0 task is
    written, setPropagate/1/ and wait for getPropagate 2. Replaces Downsample for targets
    that build levels themselves; runs with no level above 0 too, so the server's channel
    says propagated (2) as a local ingest's catalog does."""

    channel = luigi.Parameter()

    def requires(self):
        return [IngestBlock(spec=self.spec, channel=self.channel, index=s.index)
                for s in self.plan.channel(self.channel).tasks]

    def complete(self) -> bool:
        cp = self.plan.channel(self.channel)
        written = all(markers.task_complete(markers.task_dir(cp.markers_dir, markers.WRITTEN, 0, s), s)
                      for s in cp.tasks)
        return written and steps.levels_built(self.plan, self.channel)

    def run(self) -> None:
        self.set_status_message("the server is building the levels")
        steps.build_levels(self.plan, self.channel)


def top_level_tasks(spec: str, plan: Plan) -> list[luigi.Task]:
    """The tasks of each channel's highest level (level 0 when there is no hierarchy), or
    each channel's Propagate when the target builds the levels."""
    if plan.store.builds_levels:
        return [Propagate(spec=spec, channel=name) for name in plan.channels]
    tasks: list[luigi.Task] = []
    for name, cp in plan.channels.items():
        top = cp.levels[-1]
        if top.level == 0:
            tasks += [IngestBlock(spec=spec, channel=name, index=s.index) for s in top.tasks]
        else:
            tasks += [Downsample(spec=spec, channel=name, level=top.level, index=s.index) for s in top.tasks]
    return tasks


class Verify(SpecTask):
    """Record the window ranges reduced from the written blocks, re-read every block of
    every level, compare with the source (level 0) or the level below (level r) and with
    the markers, write the report, then mark the channels propagated. Verified blocks are marked, so rerunning a finished ingest reads nothing."""

    def requires(self):
        return top_level_tasks(self.spec, self.plan)

    def complete(self) -> bool:
        plan = self.plan
        done = all(markers.task_complete(markers.task_dir(cp.markers_dir, markers.VERIFIED, lv.level, s), s)
                   for cp in plan.channels.values() for lv in cp.levels for s in lv.tasks)
        return done and (report_dir(plan) / "verify.csv").exists() and steps.all_propagated(plan)

    def run(self) -> None:
        total = sum(cp.total_blocks for cp in self.plan.channels.values())
        done = 0

        def progress(n: int) -> None:
            nonlocal done
            done += n
            self._progress(done, total, "blocks verified")

        steps.record_windows(self.plan)
        verify_plan(self.plan, resume=True, progress=progress)
        steps.mark_propagated(self.plan)


def recorded_failures(plan: Plan, since: float) -> list[dict]:
    """Failures tasks recorded at or after `since`, oldest first."""
    directory = steps.failures_dir(plan)
    found = []
    for path in sorted(directory.glob("*.json")) if directory.exists() else []:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if record.get("time", 0) >= since:
            found.append(record)
    return sorted(found, key=lambda r: r["time"])
