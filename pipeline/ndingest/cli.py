"""`ndingest` command line: the only place that prints and picks exit codes.

Exit codes: 0 done; 1 internal error; 2 bad usage or spec; 3 bad or changed source;
4 catalog conflict; 5 verify mismatch; 6 already running; 7 store I/O; 8 remote.
An internal error (a bug) is one line too, naming the log file in `log_dir()` that holds
its traceback (printed instead under --debug). Off a terminal, progress is plain lines.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import shutil
import sys
import threading
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import AlreadyRunning, NdingestError, RemoteError, SpecError, StoreError

logger = logging.getLogger(__name__)


def _print_table(rows: list[tuple[str, str]], title: str | None = None) -> None:
    from .inspection import format_table

    if title:
        print(title)
    print(format_table(rows))


def cmd_sample(args: argparse.Namespace) -> int:
    from .sample import write_sample

    for path in write_sample(Path(args.dir)):
        print(path)
    return 0


def _scan_bar(voxels: int, *, bytes_per_voxel: float = 1.0, stream=None):
    """A terminal bar (rate, ETA) for a window-range scan of `voxels`; off a terminal,
    plain lines on `stream` (stderr: stdout holds inspect's table or JSON)."""
    from tqdm import tqdm

    from .progress import on_terminal

    if voxels and not on_terminal():
        return PlainBar(voxels, label="scan", unit="voxels", bytes_per_unit=bytes_per_voxel,
                        stream=stream or sys.stderr)
    return tqdm(total=voxels, unit="vox", unit_scale=True, desc="scan", disable=None if voxels else True,
                leave=False, **_bar_size())


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspection import source_table, spec_dataset_json, spec_table, summarize
    from .plan import load_plan
    from .sources import open_source
    from .steps import inspect_plan, scan_voxels

    target = args.target
    if target.endswith(".toml"):
        plan = load_plan(target)
        with _scan_bar(scan_voxels(plan), bytes_per_voxel=_voxel_bytes(plan)) as bar:
            summaries = inspect_plan(plan, progress=bar.update)
        if args.json:
            print(json.dumps({"dataset": spec_dataset_json(plan.spec, levels=plan.scaling_levels),
                              "channels": {n: s.to_json() for n, s in summaries.items()}}, indent=1))
            return 0
        for name, summary in summaries.items():
            _print_table(spec_table(plan.spec, name, summary, levels=plan.scaling_levels,
                                    files=plan.channels[name].source.file_listing), title=f"[{name}]")
            print()
        return 0
    source = open_source(target)
    with _scan_bar(source.size_xyz.volume * source.time_points, bytes_per_voxel=source.dtype.itemsize) as bar:
        summary = summarize(source, progress=bar.update)
    if args.json:
        print(json.dumps(summary.to_json(), indent=1))
    else:
        _print_table(source_table(summary, files=source.file_listing))
    return 0


@contextmanager
def run_lock(path: Path) -> Iterator[None]:
    """One local-scheduler run per store and spec: an flock the kernel drops with the process."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StoreError(f"{path}: cannot create lock: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise AlreadyRunning(f"already running on this store and spec (pid {holder}); lock {path}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def _bar_size() -> dict:
    """The terminal's size for tqdm; 100x24 where it reports 0x0 (tqdm would hide the bar)."""
    size = shutil.get_terminal_size((100, 24))
    return {"ncols": size.columns or 100, "nrows": size.lines or 24}


def emit(line: str | None, stream) -> None:
    """Print a progress line with the wall-clock time in front, at once (pipes buffer)."""
    if line is not None:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}", file=stream, flush=True)


class PlainBar:
    """A stand-in for a tqdm bar off a terminal: the same `n`, `total`, `update`, `close`,
    printing a `progress.Ticker`'s lines to `stream`."""

    def __init__(self, total: int, *, label: str, unit: str, bytes_per_unit: float, stream,
                 clock=time.monotonic, initial: int = 0):
        from .progress import Ticker

        self.total, self.n, self.stream, self.clock = total, initial, stream, clock
        self.ticker = Ticker(label, total, now=clock(), done=initial, unit=unit, bytes_per_unit=bytes_per_unit)

    def update(self, k: int = 1) -> None:
        self.n += k
        emit(self.ticker.update(self.n, self.clock()), self.stream)

    def close(self) -> None:
        emit(self.ticker.finish(self.n, self.clock()), self.stream)

    def __enter__(self) -> "PlainBar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _voxel_bytes(plan) -> float:
    """Bytes per voxel of the channels a window-range scan reads (their mean, by volume)."""
    scanned = [cp.source for cp in plan.channels.values() if cp.spec.window_range is None] or \
        [cp.source for cp in plan.channels.values()]
    voxels = sum(s.size_xyz.volume * s.time_points for s in scanned)
    return sum(s.size_xyz.volume * s.time_points * s.dtype.itemsize for s in scanned) / max(voxels, 1)


def _block_bytes(cp) -> float:
    """Mean bytes of one of the channel's blocks (every level and time point)."""
    voxels = sum(lv.extent.shape.volume for lv in cp.levels) * cp.source.time_points
    return voxels * cp.source.dtype.itemsize / max(cp.total_blocks, 1)


class ProgressMonitor:
    """A terminal bar (rate, ETA) fed from the markers, so it counts every worker's blocks.
    Off a terminal, plain lines on stdout per channel instead (see `progress`)."""

    def __init__(self, plan, interval: float = 1.0):
        self.plan, self.interval = plan, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _counts(self) -> tuple[int, int]:
        from .steps import channel_status

        status = channel_status(self.plan)
        return sum(s["done"] + s["verified"] for s in status.values()), sum(2 * s["total"] for s in status.values())

    def _scan(self) -> None:
        """The window-range scan's bar, from the file Inspect updates, until Inspect is done."""
        from tqdm import tqdm

        from . import markers
        from .progress import on_terminal
        from .steps import cached_summaries, scan_progress_path

        if cached_summaries(self.plan) is not None:
            return
        bar = None
        while not self._stop.wait(min(self.interval, 0.2)):
            seen = markers.read_json(scan_progress_path(self.plan))
            if seen is None:  # not started or just ended: only then stat every source file to know
                if cached_summaries(self.plan) is not None:
                    break
                continue
            if bar is None:
                bar = tqdm(total=seen["total"], unit="vox", unit_scale=True, desc="scan", disable=None,
                           **_bar_size()) if on_terminal() else \
                    PlainBar(seen["total"], label="scan", unit="voxels", bytes_per_unit=_voxel_bytes(self.plan),
                             stream=sys.stdout, initial=seen["done"])
            bar.update(seen["done"] - bar.n)
        if bar is not None:
            bar.update(bar.total - bar.n)
            bar.close()

    def _run(self) -> None:
        from tqdm import tqdm

        from .progress import on_terminal

        self._scan()
        if not on_terminal():
            return self._run_plain()
        done, total = self._counts()
        with tqdm(total=total, initial=done, unit="block", desc="write+verify", disable=None, **_bar_size()) as bar:
            while not self._stop.wait(self.interval):
                now, _ = self._counts()
                bar.update(now - bar.n)
            bar.update(self._counts()[0] - bar.n)

    def _run_plain(self) -> None:
        """Per channel, a line at each 5 % of its writes and verifies, and at least once a minute."""
        from .progress import Ticker
        from .steps import channel_status

        def counts() -> dict[str, int]:
            return {name: s["done"] + s["verified"] for name, s in channel_status(self.plan).items()}

        start = counts()
        tickers = {name: Ticker(f"{name} write+verify", 2 * cp.total_blocks, now=time.monotonic(), done=start[name],
                                bytes_per_unit=_block_bytes(cp))
                   for name, cp in self.plan.channels.items()}
        while not self._stop.wait(self.interval):
            for name, done in counts().items():
                emit(tickers[name].update(done, time.monotonic()), sys.stdout)
        for name, done in counts().items():
            emit(tickers[name].finish(done, time.monotonic()), sys.stdout)

    def __enter__(self) -> "ProgressMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


OTHERS_POLL_SECONDS = 2.0


def run_luigi(plan, *, workers: int, scheduler_url: str | None, debug: bool) -> None:
    """Build the DAG through Verify; a failure becomes the error its task recorded."""
    import luigi
    import luigi.rpc

    from .scheduler import IDLE_RESCHEDULE, release_finished
    from .tasks import Verify, recorded_failures

    started = time.time() - 1
    kwargs = {"scheduler_url": scheduler_url} if scheduler_url else {"local_scheduler": True}
    config = luigi.configuration.get_config()
    if not config.has_section("core"):
        config.add_section("core")
    config.set("core", "no_configure_logging", "true")  # ours is set; luigi's would print tracebacks
    if not scheduler_url:  # alone, a failed shard must end the run, not wait for Luigi's retry
        config.set("worker", "keep_alive", "false")
    elif not config.has_option("worker", "max_keep_alive_idle_duration"):
        config.set("worker", "max_keep_alive_idle_duration", IDLE_RESCHEDULE)
    goal = Verify(spec=str(plan.spec.path))
    waited = False
    while True:
        try:
            released = release_finished(scheduler_url, goal.spec) if scheduler_url else []
            if released:
                print(f"ndingest: luigid still showed {len(released)} finished task(s) as running (a run that "
                      f"stopped before it could report them); marked done: {', '.join(released)}", file=sys.stderr)
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
            print("ndingest: other runs on the scheduler hold the remaining shards; waiting for them", file=sys.stderr)
            waited = True
        time.sleep(OTHERS_POLL_SECONDS)
    failures = recorded_failures(plan, since=started)
    if failures:
        first = failures[0]
        if first.get("traceback"):  # not an NdingestError: a bug, which keeps its traceback
            if debug:
                print(first["traceback"], file=sys.stderr)
            where = "" if debug else _traceback_note(f"in task {first['task']}:\n{first['traceback']}")
            raise NdingestError(f"internal error in {first['task']}: "
                                + _one_line(f"{first['type']}: {first['message']}") + where)
        err = NdingestError(first["message"])
        err.exit_code = first["exit_code"]
        raise err
    detail = result.summary_text.strip().splitlines() if debug else []
    raise NdingestError(f"ingest did not finish: luigi status {result.status.name.lower()}"
                        + (f"\n{chr(10).join(detail)}" if detail else "; rerun with --debug for Luigi's summary"))


def cmd_ingest(args: argparse.Namespace) -> int:
    from .plan import load_plan
    from .steps import channel_status, forget_failed_start, new_folders, preflight, restart_channel
    from .verify import report_dir

    plan = load_plan(args.spec)
    if args.restart:
        plan.channel(args.restart)  # a SpecError naming the channels if unknown
    if args.workers < 1:
        raise SpecError(f"--workers {args.workers}: must be at least 1")
    if args.scheduler_url:
        from .scheduler import check_scheduler

        check_scheduler(args.scheduler_url)
    preflight(plan, skip_channel=args.restart)
    created = [] if args.scheduler_url else new_folders(plan)  # under luigid, other runs share them
    try:
        with (run_lock(plan.markers_dir / "ingest.lock") if not args.scheduler_url else _nothing()):
            if args.restart:
                restart_channel(plan, args.restart)
                print(f"restart: dropped the markers of channel {args.restart}; writing it again", file=sys.stderr)
            started = time.monotonic()
            with ProgressMonitor(plan):
                run_luigi(plan, workers=args.workers, scheduler_url=args.scheduler_url, debug=args.debug)
    except BaseException:
        forget_failed_start(plan, created)
        raise
    status = channel_status(plan)
    for name, s in status.items():
        print(f"{name}: {s['done']}/{s['total']} blocks written, {s['verified']}/{s['total']} verified -> {s['volume']}")
    print(f"verify report: {report_dir(plan) / 'verify.csv'}")
    print(f"store: {plan.store.path} (catalog {plan.store.catalog_path.name}); done in {time.monotonic() - started:.1f} s")
    return 0


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def cmd_status(args: argparse.Namespace) -> int:
    from .plan import load_plan
    from .steps import channel_status

    plan = load_plan(args.spec)
    status = channel_status(plan)
    if args.json:
        print(json.dumps({"channels": status}, indent=1))
        return 0
    for name, s in status.items():
        pct = 100 * s["done"] / max(s["total"], 1)
        print(f"{name}: {s['done']}/{s['total']} blocks written ({pct:.0f} %), {s['verified']} verified, "
              f"{s['shards']} shard{'s' if s['shards'] != 1 else ''}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .plan import load_plan
    from .verify import verify_plan

    from .progress import on_terminal

    plan = load_plan(args.spec)
    total = sum(cp.total_blocks for cp in plan.channels.values())
    with (tqdm(total=total, unit="block", desc="verify", disable=None, **_bar_size()) if on_terminal()
          else _ChannelBars(plan, "verify", sys.stdout)) as bar:
        rows, report = verify_plan(plan, resume=False, progress=bar.update)
    print(f"verify: all {len(rows)} blocks equal the source and their markers (report: {report})")
    return 0


class _ChannelBars:
    """Plain progress per channel for a count that runs through the channels in plan order
    (as `verify_plan` does), each channel's clock starting with its first block."""

    def __init__(self, plan, what: str, stream):
        self.channels, self.what, self.stream = list(plan.channels.values()), what, stream
        self.index, self.bar = 0, None

    def update(self, n: int) -> None:
        while n > 0 and self.index < len(self.channels):
            cp = self.channels[self.index]
            if self.bar is None:
                self.bar = PlainBar(cp.total_blocks, label=f"{cp.name} {self.what}", unit="blocks",
                                    bytes_per_unit=_block_bytes(cp), stream=self.stream)
            k = min(n, self.bar.total - self.bar.n)
            self.bar.update(k)
            n -= k
            if self.bar.n >= self.bar.total:
                self.bar.close()
                self.index, self.bar = self.index + 1, None

    def __enter__(self) -> "_ChannelBars":
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _catalog_window(plan, channel: str) -> tuple[float, float]:
    """The window range the catalog holds for `channel` (set by ingest)."""
    from . import catalog

    engine = catalog.engine_for(plan.store.catalog_path, create=False)
    row = catalog.find_channel(engine, plan.spec.project.name, channel) if engine else None
    if row is None:
        raise SpecError(f"{plan.store.catalog_path}: channel {channel} is not in the catalog; run ingest first")
    return (row["startwindow"], row["endwindow"])


def cmd_view(args: argparse.Namespace) -> int:
    from .plan import load_plan
    from .slices import check_time_point
    from .view import open_viewer, screenshot

    plan = load_plan(args.spec)
    for cp in plan.channels.values():
        if cp.spec.type == "timeseries":
            check_time_point(cp, args.t)
    windows = {name: _catalog_window(plan, name) for name in plan.channels}
    viewing = open_viewer(plan, windows, bind=args.bind, port=args.port, t=args.t)
    try:
        if args.screenshot:
            screenshot(viewing, Path(args.screenshot), size=(args.width, args.height))
            print(args.screenshot)
            return 0
        print(f"neuroglancer: {viewing.url}", flush=True)
        print(f"store served at {viewing.server.url} ({', '.join(plan.channels)}); Ctrl-C to stop",
              file=sys.stderr, flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        viewing.close()
    return 0


def cmd_slice(args: argparse.Namespace) -> int:
    from .plan import load_plan
    from .slices import render_slice, write_png

    plan = load_plan(args.spec)
    cp = plan.channel(args.channel)
    picture = render_slice(plan, cp, plane=args.plane, index=args.index, level=args.res, t=args.t,
                           window=_catalog_window(plan, cp.name))
    when = f"_t{args.t}" if cp.spec.type == "timeseries" else ""
    out = Path(args.output or f"{cp.name}_{args.plane}_{args.index}_r{args.res}{when}.png")
    write_png(picture, out)
    print(out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    # --debug before or after the subcommand; the subcommand's copy must not reset the first
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="tracebacks and verbose logs")
    parser = argparse.ArgumentParser(prog="ndingest",
                                     description="Resumable, verified ingest of microscopy volumes (ndstore tutorial).")
    parser.add_argument("--debug", action="store_true", help="tracebacks and verbose logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sample", parents=[common], help="write the tutorial's two cutouts (synthetic)")
    p.add_argument("dir")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("inspect", parents=[common], help="what a source (or every channel of a spec) holds")
    p.add_argument("target", metavar="SOURCE|SPEC")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("ingest", parents=[common], help="run the DAG through Verify (resumable)")
    p.add_argument("spec")
    p.add_argument("--workers", type=int, default=1, metavar="N")
    p.add_argument("--scheduler-url", metavar="URL", help="a luigid to share the work through")
    p.add_argument("--restart", metavar="CHANNEL", help="drop CHANNEL's markers and write it again")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("status", parents=[common], help="blocks done/total per channel")
    p.add_argument("spec")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("verify", parents=[common], help="re-read every block and compare with the source")
    p.add_argument("spec")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("slice", parents=[common], help="one plane of a channel as a PNG")
    p.add_argument("spec")
    p.add_argument("channel")
    p.add_argument("plane", choices=("xy", "xz", "yz"))
    p.add_argument("index", type=int, help="absolute coordinate of the plane at that level")
    p.add_argument("--res", type=int, default=0, metavar="R", help="level (0 = full resolution)")
    p.add_argument("--t", type=int, default=0, metavar="T", help="time point of a time-series channel")
    p.add_argument("-o", "--output", metavar="FILE.png")
    p.set_defaults(func=cmd_slice)

    p = sub.add_parser("view", parents=[common], help="a local neuroglancer on the store, every channel a layer")
    p.add_argument("spec")
    p.add_argument("--bind", default="127.0.0.1", metavar="ADDR", help="address of the viewer and the store server")
    p.add_argument("--port", type=int, default=0, metavar="N", help="viewer port (default: any free one)")
    p.add_argument("--t", type=int, default=0, metavar="T", help="time point of time-series channels")
    p.add_argument("--screenshot", metavar="FILE.png", help="draw once in headless chromium, save, and exit")
    p.add_argument("--width", type=int, default=1000, metavar="PX", help="screenshot width")
    p.add_argument("--height", type=int, default=700, metavar="PX", help="screenshot height")
    p.set_defaults(func=cmd_view)
    return parser


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    for name in ("luigi", "luigi-interface", "luigi.scheduler"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.CRITICAL)
    if not debug:  # e.g. Luigi warns of its own documented [core] rpc-* settings as "not consumed"
        warnings.filterwarnings("ignore", module=r"luigi(\.|$)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.debug)
    try:
        return args.func(args)
    except NdingestError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"ndingest: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ndingest: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    except Exception as exc:  # not an NdingestError: a bug; one line, its traceback in a log file
        if args.debug:
            traceback.print_exc()
        where = "" if args.debug else _traceback_note(traceback.format_exc())
        print(f"ndingest: internal error: {_one_line(f'{type(exc).__name__}: {exc}')}{where}", file=sys.stderr)
        return 1


def log_dir() -> Path:
    """Where internal errors leave their tracebacks: $XDG_STATE_HOME/ndingest, by default
    ~/.local/state/ndingest (there with or without a store, whatever the command)."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "ndingest"


def save_traceback(text: str) -> Path:
    """Write `text` (a traceback) to a new log file in `log_dir()`, or the temp folder if that
    cannot be written; OSError if neither can."""
    import tempfile

    name = f"internal-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    head = f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} ndingest {' '.join(sys.argv[1:])}\n\n"
    fallback = Path(tempfile.gettempdir()) / f"ndingest-{os.getuid()}"
    for folder in (log_dir(), fallback):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(head + text)
            return folder / name
        except OSError:
            if folder == fallback:
                raise
    raise AssertionError("unreachable")


def _traceback_note(text: str) -> str:
    try:
        return f"; traceback in {save_traceback(text)}"
    except OSError as exc:
        return f"; could not save its traceback ({exc}); rerun with --debug to see it"


def _one_line(text: str, limit: int = 400) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


if __name__ == "__main__":
    sys.exit(main())
