"""What ndingest's own output says, read by the benchmarks: the write phase of an ingest
from its `--debug` log, and the blocks written and verified from the lines it ends with."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from datetime import datetime

from measuring import Measured

LOG_TIME = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) "
LUIGI_TASK = re.compile(LOG_TIME + r"luigi-interface \w+: .*\b(running|done)\s+IngestBlock\(", re.M)
SHARD_LINE = re.compile(LOG_TIME + r"ndingest\.tasks INFO: IngestBlock_\S+: wrote (\d+) blocks "
                        r"\((\d+) already marked\), ([0-9.]+) MB in ([0-9.]+) s$", re.M)


@dataclass
class WritePhase:
    span_seconds: float  # Luigi's first `running IngestBlock` to its last `done IngestBlock`
    shard_seconds: float  # the sum of ndingest's per-shard `in S s` (0.1 s resolution each)
    shards: int
    blocks: int


def write_phase(log: str) -> WritePhase:
    def at(stamp: str) -> float:
        return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()

    events = [(at(stamp), what) for stamp, what in LUIGI_TASK.findall(log)]
    shards = SHARD_LINE.findall(log)
    starts = [t for t, what in events if what == "running"]
    ends = [t for t, what in events if what == "done"]
    if not starts or not ends or not shards:
        sys.exit("could not find the IngestBlock lines in the ingest's --debug log; has its format changed?")
    return WritePhase(max(ends) - min(starts), sum(float(s[4]) for s in shards), len(shards),
                      sum(int(s[1]) for s in shards))


INGEST_SAYS = re.compile(r"^image: (\d+)/(\d+) blocks written, (\d+)/(\d+) verified", re.M)


def ingest_status(m: Measured) -> dict[str, int]:
    """The image channel's blocks done, verified and in total, as `ndingest ingest` prints them
    at its end (`steps.channel_status`, what `ndingest status` prints; no process more to run)."""
    found = INGEST_SAYS.search(m.stdout)
    if not found:
        sys.exit(f"could not find `image: D/T blocks written, V/T verified` in ndingest ingest's output; "
                 f"has its format changed?\n{m.stdout[-2000:]}")
    done, total, verified, _ = (int(g) for g in found.groups())
    return {"done": done, "verified": verified, "total": total}
