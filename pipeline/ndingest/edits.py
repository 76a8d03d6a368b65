"""The record of cutout POSTs, so `verify` tells edited blocks from corrupt ones.

Layout, beside the channel's ingest markers (`markers.channel_dir`)::

    STORE/_markers/DATASET/PROJECT/CHANNEL/edits/
        {time_ns}-{pid}-{random}.json     one per accepted POST: boxes, time points, key name
        latest                            the name of the newest record (a stamp a level
                                          rebuild compares, to notice POSTs made meanwhile)

A record is written (durably) before the POST's first voxel, so every voxel a client
changed is covered by some record, a POST that failed half-way included (its record only
over-reports). Records name a key by its name in the server's keys file (`KEY NAME`), or
not at all; never by the key. Records written before names (`"key"`: the first 8 hex digits
of the key's SHA-256) are still read, and that id is never listed by the server.
"""
from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from .blocks import Box, Vec3
from .errors import StoreError
from .markers import atomic_write, listdir, read_json, write_json

logger = logging.getLogger(__name__)

EDITS = "edits"
LATEST = "latest"
SUFFIX = ".json"


@dataclass(frozen=True)
class Edit:
    """One accepted POST: level-0 `boxes` (absolute, exact), at time points `times` (None
    for a channel that is not a time series), when (seconds since the epoch), by which key:
    `key_name` (its name in the keys file) or, in records written before names, `key_id`."""

    boxes: tuple[Box, ...]
    times: tuple[int, ...] | None
    when: float
    key_id: str | None
    mode: str
    level: int = 0
    key_name: str | None = None

    @property
    def by(self) -> str | None:
        """What names the key that made it, if anything does."""
        return self.key_name or self.key_id

    def touches(self, box: Box, *, level: int, factors: Vec3, t: int | None = None) -> bool:
        """Whether this edit changed any voxel of `box` at `level` (of time point `t`):
        its level-0 boxes are projected up the way levels are built (floor of the begin,
        ceil of the end per halved axis), so a rebuilt upper level counts as edited too."""
        if self.times is not None and t is not None and t not in self.times:
            return False
        if level < self.level:
            return False
        scale = [f ** (level - self.level) for f in factors]
        for edited in self.boxes:
            lo = Vec3(*(b // s for b, s in zip(edited.begin, scale)))
            hi = Vec3(*(-(-e // s) for e, s in zip(edited.end, scale)))
            if not Box(lo, hi).intersect(box).is_empty:
                return True
        return False

    def to_record(self) -> dict:
        """The record's JSON fields, as its file keeps them (`key`: an old record's key id)."""
        record = {"boxes": [b.to_key() for b in self.boxes],
                  "times": list(self.times) if self.times is not None else None,
                  "when": self.when, "key": self.key_id, "mode": self.mode, "level": self.level}
        if self.key_name is not None:
            record["key_name"] = self.key_name
        return record

    def to_listing(self) -> dict:
        """What `GET {token}/{channel}/edits/` shows: no key material, only the key's name
        (`key` and `key_name`; null when the keys file gives it none)."""
        return {**self.to_record(), "key": self.key_name, "key_name": self.key_name}

    @classmethod
    def from_record(cls, record: dict, *, where: str) -> "Edit":
        """An edit from its record; StoreError naming `where` if it is not one."""
        try:
            return cls(
                boxes=tuple(Box.from_key(k) for k in record["boxes"]),
                times=tuple(int(t) for t in record["times"]) if record.get("times") is not None else None,
                when=float(record["when"]), mode=str(record.get("mode", "overwrite")),
                level=int(record.get("level", 0)),
                # a listing's `key` is the name (it has `key_name`); a file's is an old key id
                key_id=None if "key_name" in record else record.get("key"), key_name=record.get("key_name"),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"{where}: not an edit record: {exc}") from exc


def made_after(edits: list[Edit], when: float | None) -> list[Edit]:
    """The edits made after `when` (a block's marker time), so a POST the block was
    written over since (an ingest's own, or one before `--restart`) excuses nothing;
    all of them when the time is unknown."""
    return list(edits) if when is None else [e for e in edits if e.when > when]


def edits_dir(channel_markers: Path) -> Path:
    return channel_markers / EDITS


def record_edit(channel_markers: Path, boxes: list[Box], *, key_id: str | None = None, key_name: str | None = None,
                when: float | None = None, times: list[int] | None = None, mode: str = "overwrite",
                durable: bool = False) -> Path:
    """Write one edit record and point `latest` at it; returns the record's path.

    `durable=False` leaves the fsync to the caller's one flush per POST (with the voxels)."""
    when = time.time() if when is None else when
    name = f"{time.time_ns():020d}-{os.getpid()}-{secrets.token_hex(4)}"
    path = edits_dir(channel_markers) / f"{name}{SUFFIX}"
    edit = Edit(boxes=tuple(boxes), times=tuple(times) if times is not None else None, when=when,
                key_id=key_id, mode=mode, key_name=key_name)
    write_json(path, edit.to_record(), durable=durable)
    atomic_write(edits_dir(channel_markers) / LATEST, name.encode(), durable=durable)
    logger.info("edit %s: %d box(es) by key %s", name, len(boxes), edit.by or "(none)")
    return path


def latest_edit(channel_markers: Path) -> str | None:
    """The name of the newest record, or None before the first POST."""
    try:
        return (edits_dir(channel_markers) / LATEST).read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"{edits_dir(channel_markers) / LATEST}: unreadable: {exc.strerror or exc}") from exc


def read_edits(channel_markers: Path) -> list[Edit]:
    """Every edit of one channel, oldest first (one listing, one small read per POST)."""
    folder = edits_dir(channel_markers)
    try:
        names = sorted(n for n in listdir(folder) if n.endswith(SUFFIX) and not n.startswith("."))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        record = read_json(folder / name)
        if record is None:  # removed meanwhile
            continue
        out.append(Edit.from_record(record, where=str(folder / name)))
    return out
