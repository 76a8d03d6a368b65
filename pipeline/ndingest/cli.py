"""`ndingest` command line, only the face: parse, call, print, pick the exit code.

The work is elsewhere: `runner` runs an ingest (preflight, run lock, Luigi), `progress`
draws bars or plain lines, `steps` the catalog and status.

Exit codes: 0 done; 1 internal error; 2 bad usage or spec; 3 bad or changed source;
4 catalog conflict; 5 verify mismatch; 6 already running; 7 store I/O; 8 remote.
An internal error (a bug) is one line too, naming the log file in `log_dir()` that holds
its traceback (printed instead under --debug). Off a terminal, progress is plain lines.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
import traceback
import warnings
from pathlib import Path

from . import malloc
from .errors import InternalError, NdingestError

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


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspection import linked_file_notes, source_table, spec_dataset_json, spec_table, summarize
    from .plan import load_plan
    from .progress import scan_bar, voxel_bytes
    from .sources import open_source
    from .steps import inspect_plan, scan_voxels

    target = args.target
    if target.endswith(".toml"):
        plan = load_plan(target)
        with scan_bar(scan_voxels(plan), bytes_per_voxel=voxel_bytes(plan)) as bar:
            summaries = inspect_plan(plan, scan=True, progress=bar.update)
        for line in (n for c in plan.channels.values() for n in linked_file_notes(c.source)):
            _say(line)
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
    for line in linked_file_notes(source):
        _say(line)
    with scan_bar(source.size_xyz.volume * source.time_points, bytes_per_voxel=source.dtype.itemsize) as bar:
        summary = summarize(source, progress=bar.update)
    if args.json:
        print(json.dumps(summary.to_json(), indent=1))
    else:
        _print_table(source_table(summary, files=source.file_listing))
    return 0


def _say(line: str) -> None:
    print(f"ndingest: {line}", file=sys.stderr, flush=True)


def cmd_ingest(args: argparse.Namespace) -> int:
    from .plan import load_plan
    from .progress import ProgressMonitor
    from .runner import ingest
    from .steps import channel_status
    from .verify import report_dir

    started = time.monotonic()
    plan = load_plan(_ingest_spec(args))
    ingest(plan, workers=args.workers, scheduler_url=args.scheduler_url, restart=args.restart, debug=args.debug,
           say=_say, monitor=ProgressMonitor)
    status = channel_status(plan)
    for name, s in status.items():
        print(f"{name}: {s['done']}/{s['total']} blocks written, {s['verified']}/{s['total']} verified -> {s['volume']}")
    print(f"verify report: {report_dir(plan) / 'verify.csv'}")
    took = time.monotonic() - started
    if plan.spec.store.url is not None:
        print(f"server: {plan.store.path} (markers and reports in {plan.state_dir}); done in {took:.1f} s")
    else:
        where = plan.store.catalog_path.name if plan.spec.store.catalog is None else plan.catalog.where
        print(f"store: {plan.store.path} (catalog {where}); done in {took:.1f} s")
    return 0


def _ingest_spec(args: argparse.Namespace) -> str:
    """The spec `ingest` runs: SPEC itself, or for ND.json (ndstore's auto-ingest body) the
    spec written to STORE/_jobs/TOKEN.toml (an http(s) HDF5 source fetched under STORE/_jobs/TOKEN/
    first; slices are read where they are)."""
    from .errors import SpecError, StoreError
    from .ndjson import is_nd_json, parse_job, prepare_job

    if not is_nd_json(args.spec):
        if args.store is not None:
            raise SpecError(f"--store {args.store}: a TOML spec names its store itself ([store] path); "
                            f"--store is for ND.json only")
        return args.spec
    if args.store is None:
        raise SpecError(f"{args.spec}: an ND.json (auto-ingest body) needs --store DIR")
    try:
        raw = Path(args.spec).read_bytes()
    except OSError as exc:
        raise SpecError(f"{args.spec}: cannot read it: {exc.strerror or exc}") from None
    job = parse_job(raw, where=str(args.spec))
    store = Path(args.store)
    try:
        store.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"--store {store}: cannot make it: {exc.strerror or exc}") from None
    spec = prepare_job(store, job, say=_say)
    _say(f"spec: {spec}")
    return str(spec)


def cmd_status(args: argparse.Namespace) -> int:
    from .errors import SourceError
    from .ndjson import fetching_note, job_running
    from .plan import load_plan
    from .steps import channel_status

    try:
        plan = load_plan(args.spec)
    except SourceError as exc:  # an auto-ingest job's spec before its HDF5 source is fetched
        note = fetching_note(Path(args.spec), exc)
        if note is None:
            raise
        if not job_running(Path(args.spec)):
            raise SourceError(f"{exc} ({note})") from None
        if args.json:  # a running job that is still fetching: progress, not an error
            print(json.dumps({"channels": {}, "fetching": note}, indent=1))
        else:
            print(f"fetching: {note}")
        return 0
    status = channel_status(plan)
    if args.json:
        print(json.dumps({"channels": status}, indent=1))
        return 0
    for name, s in status.items():
        pct = 100 * s["done"] / max(s["total"], 1)
        print(f"{name}: {s['done']}/{s['total']} blocks written ({pct:.0f} %), {s['verified']} verified, "
              f"{s['tasks']} task{'s' if s['tasks'] != 1 else ''}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .errors import StoreError
    from .plan import load_plan
    from .planning import human_bytes, plan_report, report_lines, warning_lines

    report = plan_report(load_plan(args.spec))
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print("\n".join(report_lines(report)))
    sys.stdout.flush()
    if args.strict and not report.fits:
        raise StoreError(report.unwritable or f"{human_bytes(report.left_bytes)} to write but "
                         f"{human_bytes(report.free_bytes or 0)} free in {report.free_where} (--strict)")
    for line in warning_lines(report):
        _say(line)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .plan import load_plan
    from .progress import verify_bar
    from .verify import verify_plan

    plan = load_plan(args.spec)
    with verify_bar(plan) as bar:
        rows, report = verify_plan(plan, resume=False, progress=bar.update)
    from .verify import EDITED

    edited = sum(r["status"] == EDITED for r in rows)
    if edited:
        print(f"verify: {len(rows) - edited} blocks equal the source and their markers; {edited} were changed by "
              f"cutout POSTs to `ndingest serve` since the ingest (which and by whom: report {report})")
    else:
        print(f"verify: all {len(rows)} blocks equal the source and their markers (report: {report})")
    return 0


def cmd_view(args: argparse.Namespace) -> int:
    from .plan import load_plan
    from .steps import catalog_window
    from .slices import check_time_point
    from .view import open_viewer, screenshot

    plan = load_plan(args.spec)
    for cp in plan.channels.values():
        if cp.spec.type == "timeseries":
            check_time_point(cp, args.t)
    windows = {name: catalog_window(plan, name) for name in plan.channels}
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
    from .steps import catalog_window
    from .slices import render_slice, write_png

    plan = load_plan(args.spec)
    cp = plan.channel(args.channel)
    picture = render_slice(plan, cp, plane=args.plane, index=args.index, level=args.res, t=args.t,
                           window=catalog_window(plan, cp.name))
    when = f"_t{args.t}" if cp.spec.type == "timeseries" else ""
    out = Path(args.output or f"{cp.name}_{args.plane}_{args.index}_r{args.res}{when}.png")
    write_png(picture, out)
    print(out)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import bind, budget, create_app, exposure_warning, max_jobs_from_env, run, store_at
    from .server.guard import is_loopback, split_list

    store = store_at(args.store, "--store ")
    # each flag adds to its NDINGEST_ variable (the one uvicorn's factory reads)
    allow_origins = split_list(os.environ.get("NDINGEST_ALLOW_ORIGIN")) + tuple(args.allow_origin)
    allow_hosts = split_list(os.environ.get("NDINGEST_ALLOW_HOST")) + tuple(args.allow_host)
    allow_files = split_list(os.environ.get("NDINGEST_ALLOW_FILES")) + tuple(args.allow_files)
    fetch_from = split_list(os.environ.get("NDINGEST_FETCH_FROM")) + tuple(args.fetch_from)
    app = create_app(store, api_keys=Path(args.api_keys) if args.api_keys else None, catalog_url=args.catalog,
                     bound_host=args.host, allow_origins=allow_origins, allow_hosts=allow_hosts,
                     allow_files=allow_files, fetch_from=fetch_from,
                     max_jobs=args.max_jobs or max_jobs_from_env(),
                     memory_mib=args.memory if args.memory is not None else budget.memory_from_env(os.environ),
                     memory_wait=budget.wait_from_env(os.environ))
    warning = exposure_warning(args.host, has_keys=args.api_keys is not None)
    beyond = not is_loopback(args.host)
    if warning and beyond:  # before the bind: said even when the address turns out to be taken
        _say(f"warning: serving {store} {warning}")
    sock = bind(args.host, args.port)
    if warning and not beyond:  # this machine only: said once it listens
        _say(f"note: serving {store} {warning}")
    print(f"ndingest serve: {store} on http://{args.host}:{sock.getsockname()[1]}/ (Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    run(app, sock, debug=args.debug)
    return 0


def _at_least_one(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return int(text)


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
    p.add_argument("spec", metavar="SPEC|ND.json")
    p.add_argument("--store", metavar="DIR",
                   help="for ND.json (ndstore's auto-ingest body): the local store; its spec goes to DIR/_jobs/TOKEN.toml")
    p.add_argument("--workers", type=int, default=1, metavar="N")
    p.add_argument("--scheduler-url", metavar="URL", help="a luigid to share the work through")
    p.add_argument("--restart", metavar="CHANNEL", help="drop CHANNEL's markers and write it again")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("status", parents=[common], help="blocks done/total per channel")
    p.add_argument("spec")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("plan", parents=[common],
                       help="what an ingest will cost (blocks, bytes, files, free space, time); writes nothing")
    p.add_argument("spec")
    p.add_argument("--json", action="store_true")
    p.add_argument("--strict", action="store_true", help="exit 7 when what is left to write does not fit")
    p.set_defaults(func=cmd_plan)

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

    p = sub.add_parser("serve", parents=[common], help="an ndstore-compatible HTTP server over a store")
    p.add_argument("--store", required=True, metavar="DIR")
    p.add_argument("--host", default="127.0.0.1", metavar="H", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, metavar="P")
    p.add_argument("--api-keys", metavar="FILE", help="keys that may write and read private tokens, one a line")
    p.add_argument("--catalog", metavar="URL", help="the store's catalog when it is not STORE/catalog.sqlite "
                                                   "(postgresql://…, as the spec's store.catalog)")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (scheme://host[:port]) whose pages may write here and read private "
                        "projects' precomputed files (repeatable; also NDINGEST_ALLOW_ORIGIN)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a Host name answered besides localhost and loopback addresses; off loopback, "
                        "the only names answered (repeatable; also NDINGEST_ALLOW_HOST)")
    p.add_argument("--allow-files", action="append", default=[], metavar="DIR",
                   help="a folder whose files auto-ingest jobs may read by file:// URL (repeatable; also "
                        "NDINGEST_ALLOW_FILES; default: none)")
    p.add_argument("--fetch-from", action="append", default=[], metavar="HOST[:PORT]",
                   help="a loopback, private or link-local host auto-ingest jobs may fetch from (repeatable; "
                        "also NDINGEST_FETCH_FROM; default: public addresses only)")
    p.add_argument("--max-jobs", type=_at_least_one, metavar="N",
                   help="auto-ingest jobs running at once on the store, across worker processes; the rest "
                        "queue (default 2, or NDINGEST_MAX_JOBS)")
    p.add_argument("--memory", type=int, metavar="MiB",
                   help="this process's memory budget for requests' voxels and malloc's kept heap "
                        "(default 1024; also NDINGEST_MEMORY): larger requests are 413, the rest wait "
                        "their turn, a 503 after 30 s")
    p.set_defaults(func=cmd_serve)
    return parser


def _configure_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    for name in ("luigi", "luigi-interface", "luigi.scheduler"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.CRITICAL)
    if not debug:  # e.g. Luigi warns of its own documented [core] rpc-* settings as "not consumed"
        warnings.filterwarnings("ignore", module=r"luigi(\.|$)")


def main(argv: list[str] | None = None) -> int:
    malloc.few_arenas()
    args = build_parser().parse_args(argv)
    _configure_logging(args.debug)
    try:
        return args.func(args)
    except InternalError as exc:  # a bug in a task: one line, the task's traceback in a log file
        if args.debug:
            print(exc.traceback, file=sys.stderr)
        where = "" if args.debug else _traceback_note(exc.traceback)
        print(f"ndingest: error: {_one_line(str(exc))}{where}", file=sys.stderr)
        return exc.exit_code
    except NdingestError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"ndingest: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("ndingest: interrupted; rerun the same command to continue", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ndingest inspect … | head`: the reader left, as with any Unix tool
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's flush at exit must not fail too
        return 141  # 128 + SIGPIPE, what a shell reports for a tool its pipe closed
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
