"""ndstore's data model (dataset, project, token, channel) in SQLAlchemy Core.

Columns carry ndstore's field names. Creating what exists with the same values is a
no-op; with other values it raises `CatalogConflict` naming the field and both values,
and writes nothing.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError

from .blocks import Vec3
from .errors import CatalogConflict, StoreError
from .spec import ChannelSpec, DatasetSpec, ProjectSpec

logger = logging.getLogger(__name__)
T = TypeVar("T")

SCALING_CODES = {"zslices": 0, "isotropic": 1}
PROPAGATE_NOT, PROPAGATE_UNDER_WAY, PROPAGATE_DONE = 0, 1, 2

metadata = sa.MetaData()

datasets = sa.Table(
    "datasets", metadata,
    sa.Column("dataset_name", sa.String(255), primary_key=True),
    *(sa.Column(f"{a}imagesize", sa.Integer, nullable=False) for a in "xyz"),
    *(sa.Column(f"{a}offset", sa.Integer, nullable=False) for a in "xyz"),
    *(sa.Column(f"{a}voxelres", sa.Float, nullable=False) for a in "xyz"),
    sa.Column("scalingoption", sa.Integer, nullable=False),
    sa.Column("scalinglevels", sa.Integer, nullable=False),
    sa.Column("public", sa.Integer, nullable=False),
    sa.CheckConstraint("xoffset >= 0 AND yoffset >= 0 AND zoffset >= 0", name="offset_nonnegative"),
    sa.CheckConstraint("ximagesize > 0 AND yimagesize > 0 AND zimagesize > 0", name="size_positive"),
    sa.CheckConstraint("scalingoption IN (0, 1)", name="scalingoption_known"),
)

projects = sa.Table(
    "projects", metadata,
    sa.Column("project_name", sa.String(255), primary_key=True),
    sa.Column("dataset", sa.String(255), sa.ForeignKey("datasets.dataset_name"), nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("kvengine", sa.String(255), nullable=False),
    sa.Column("mdengine", sa.String(255), nullable=False),
    sa.Column("public", sa.Integer, nullable=False),
)

tokens = sa.Table(
    "tokens", metadata,
    sa.Column("token_name", sa.String(255), primary_key=True),
    sa.Column("project", sa.String(255), sa.ForeignKey("projects.project_name"), nullable=False),
    sa.Column("public", sa.Integer, nullable=False),
)

channels = sa.Table(
    "channels", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project", sa.String(255), sa.ForeignKey("projects.project_name"), nullable=False),
    sa.Column("channel_name", sa.String(255), nullable=False),
    sa.Column("channel_type", sa.String(32), nullable=False),
    sa.Column("channel_datatype", sa.String(32), nullable=False),
    sa.Column("resolution", sa.Integer, nullable=False),
    sa.Column("propagate", sa.Integer, nullable=False),
    sa.Column("readonly", sa.Integer, nullable=False),
    sa.Column("starttime", sa.Integer, nullable=False),
    sa.Column("endtime", sa.Integer, nullable=False),
    sa.Column("startwindow", sa.Float, nullable=False),
    sa.Column("endwindow", sa.Float, nullable=False),
    sa.Column("default", sa.Integer, nullable=False),
    sa.UniqueConstraint("project", "channel_name", name="channel_unique_in_project"),
    sa.CheckConstraint("channel_type IN ('image', 'annotation', 'timeseries')", name="channel_type_known"),
    sa.CheckConstraint(
        "channel_datatype IN ('uint8', 'uint16', 'uint32', 'uint64', 'float32')", name="channel_datatype_known"
    ),
    sa.CheckConstraint("propagate IN (0, 1, 2)", name="propagate_known"),
    sa.CheckConstraint("starttime <= endtime", name="time_range_ordered"),
)


@dataclass(frozen=True)
class Row:
    """One catalog entry to create: its table, key columns and every value."""

    table: sa.Table
    key: tuple[str, ...]
    values: dict[str, Any]
    kind: str
    ignore: tuple[str, ...] = ()  # state, not identity: never a conflict

    @property
    def label(self) -> str:
        return f"{self.kind} {'/'.join(str(self.values[k]) for k in self.key)!r}"


def engine_for(path: Path, *, create: bool) -> sa.Engine | None:
    """SQLite engine on `path`; None when the file does not exist and `create` is False,
    so a read-only check never leaves an empty catalog behind."""
    if not create and not path.exists():
        return None
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    # NullPool: no connection outlives its use, so nothing leaks into Luigi's forked workers
    engine = sa.create_engine(f"sqlite:///{path}", connect_args={"timeout": 60}, poolclass=sa.pool.NullPool)
    if create:
        try:
            metadata.create_all(engine)
        except OperationalError as exc:
            raise StoreError(f"{path}: cannot create catalog: {exc.orig}") from exc
    return engine


def _stored(conn: sa.Connection, row: Row) -> dict | None:
    where = sa.and_(*(row.table.c[k] == row.values[k] for k in row.key))
    found = conn.execute(sa.select(row.table).where(where)).mappings().first()
    return dict(found) if found else None


def compare_row(row: Row, stored: dict) -> None:
    """CatalogConflict naming the first field `stored` holds with another value than `row`
    (fields in `row.ignore` are state, never compared)."""
    for field, wanted in row.values.items():
        if field in row.ignore:
            continue
        have = stored[field]
        if have != wanted and not (isinstance(have, float) and isinstance(wanted, (int, float)) and float(wanted) == have):
            raise CatalogConflict(
                f"{row.label} already exists with {field} = {have!r}; the spec asks for {wanted!r}"
            )


LOCKED_RETRY_SECONDS = 60.0


def _missing_table(exc: OperationalError) -> bool:
    return "no such table" in str(exc.orig)


def _patiently(engine: sa.Engine, read: Callable[[], T], patience: float) -> T:
    """`read()`, waiting for a busy catalog ("database is locked") up to `patience` seconds,
    then a StoreError: a check is never skipped because another process holds the file."""
    deadline, pause = time.monotonic() + patience, 0.05
    while True:
        try:
            return read()
        except DatabaseError as exc:  # OperationalError ("database is locked") is one
            if not isinstance(exc, OperationalError) or not ("locked" in str(exc.orig) or "busy" in str(exc.orig)):
                raise StoreError(f"catalog {engine.url.database}: {exc.orig}") from exc
            if time.monotonic() >= deadline:
                raise StoreError(f"catalog {engine.url.database}: {exc.orig} for {patience:.0f} s; "
                                 f"another process holds it, rerun when it is done") from exc
            logger.info("catalog %s is locked; checking again in %.2f s", engine.url.database, pause)
            time.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
            pause = min(pause * 2, 1.0)


def check_rows(engine: sa.Engine | None, rows: list[Row], *, patience: float = LOCKED_RETRY_SECONDS) -> None:
    """Raise CatalogConflict for the first row that exists with other values; writes nothing.

    A busy catalog is waited for (`_patiently`). Only a missing table (a catalog from
    before that table existed) counts as nothing stored."""
    if engine is None:
        return
    stored = _patiently(engine, lambda: _stored_rows(engine, rows), patience)
    for row, have in zip(rows, stored):
        if have is not None:
            compare_row(row, have)


def _stored_rows(engine: sa.Engine, rows: list[Row]) -> list[dict | None]:
    """What the catalog holds for each row; None where the row, or its whole table, is absent."""
    out: list[dict | None] = []
    with engine.connect() as conn:
        for row in rows:
            try:
                out.append(_stored(conn, row))
            except OperationalError as exc:
                if not _missing_table(exc):
                    raise
                conn.rollback()
                out.append(None)
    return out


def rows_present(engine: sa.Engine | None, rows: list[Row]) -> bool:
    """True when every row is stored with these values; a conflict counts as absent, so
    the task that would create it runs and raises it."""
    if engine is None:
        return False
    try:
        with engine.connect() as conn:
            stored = [_stored(conn, row) for row in rows]
    except OperationalError:  # tables not created yet
        return False
    try:
        for row, have in zip(rows, stored):
            if have is None:
                return False
            compare_row(row, have)
    except CatalogConflict:
        return False
    return True


def ensure_rows(engine: sa.Engine, rows: list[Row]) -> None:
    """Create each row, or check it equals what is stored, all in one transaction."""
    try:
        with engine.begin() as conn:
            for row in rows:
                stored = _stored(conn, row)
                if stored is None:
                    logger.info("catalog: creating %s", row.label)
                    conn.execute(sa.insert(row.table).values(**row.values))
                else:
                    compare_row(row, stored)
    except IntegrityError:  # another process created it first: compare with theirs
        with engine.connect() as conn:
            for row in rows:
                stored = _stored(conn, row)
                if stored is None:
                    raise
                compare_row(row, stored)
    except OperationalError as exc:
        raise StoreError(f"catalog {engine.url.database}: {exc.orig}") from exc


def find_channel(engine: sa.Engine | None, project: str, channel: str, *,
                 patience: float = LOCKED_RETRY_SECONDS) -> dict | None:
    """The channel row, or None (no catalog, no table or no such row); a busy catalog is
    waited for, never taken for an empty one."""
    if engine is None:
        return None
    row = Row(channels, ("project", "channel_name"), {"project": project, "channel_name": channel}, "channel")
    return _patiently(engine, lambda: _stored_rows(engine, [row])[0], patience)


def find_dataset(engine: sa.Engine | None, name: str, *, patience: float = LOCKED_RETRY_SECONDS) -> dict | None:
    """The dataset row named `name`, or None (no catalog, no table or no such row); a busy
    catalog is waited for, never taken for an empty one."""
    if engine is None:
        return None
    dataset = Row(datasets, ("dataset_name",), {"dataset_name": name}, "dataset")
    return _patiently(engine, lambda: _stored_rows(engine, [dataset])[0], patience)


def set_propagate(engine: sa.Engine, project: str, channel: str, state: int) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(channels)
            .where(channels.c.project == project, channels.c.channel_name == channel)
            .values(propagate=state)
        )


def set_window(engine: sa.Engine, project: str, channel: str, window: tuple[float, float]) -> None:
    """The channel's window range, once an ingest has reduced it from every block."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(channels)
            .where(channels.c.project == project, channels.c.channel_name == channel)
            .values(startwindow=float(window[0]), endwindow=float(window[1]))
        )


def dataset_row(dataset: DatasetSpec, *, size_xyz: Vec3, levels: int) -> Row:
    res = dataset.voxel_resolution_nm
    values = {
        "dataset_name": dataset.name,
        **{f"{a}imagesize": v for a, v in zip("xyz", size_xyz)},
        **{f"{a}offset": v for a, v in zip("xyz", dataset.offset_xyz)},
        **{f"{a}voxelres": v for a, v in zip("xyz", res)},
        "scalingoption": SCALING_CODES[dataset.scaling_option],
        "scalinglevels": levels,
        "public": int(dataset.public),
    }
    return Row(datasets, ("dataset_name",), values, "dataset")


def project_rows(project: ProjectSpec, *, dataset: str) -> list[Row]:
    """The project and its token: ndstore reaches a project only through a token."""
    return [
        Row(projects, ("project_name",), {
            "project_name": project.name, "dataset": dataset, "host": "localhost",
            "kvengine": "precomputed", "mdengine": "sqlite", "public": int(project.public),
        }, "project"),
        Row(tokens, ("token_name",), {
            "token_name": project.token, "project": project.name, "public": int(project.public),
        }, "token"),
    ]


def channel_row(
    channel: ChannelSpec, *, project: str, datatype: str, time_range: tuple[int, int],
    window: tuple[float, float], default: bool,
) -> Row:
    values = {
        "project": project, "channel_name": channel.name, "channel_type": channel.type,
        "channel_datatype": datatype, "resolution": 0, "propagate": PROPAGATE_NOT,
        "readonly": int(channel.readonly), "starttime": time_range[0], "endtime": time_range[1],
        "startwindow": float(window[0]), "endwindow": float(window[1]), "default": int(default),
    }
    return Row(channels, ("project", "channel_name"), values, "channel", ignore=("propagate",))


def delete_channel(engine: sa.Engine | None, project: str, channel: str) -> None:
    if engine is None:
        return
    with engine.begin() as conn:
        conn.execute(sa.delete(channels).where(channels.c.project == project, channels.c.channel_name == channel))


class Catalog(Protocol):
    """What the pipeline's steps ask of a catalog, whoever keeps it: the local SQLite file
    (`SqliteCatalog`) or a server's resource API (`remote.RestCatalog`). Rows are `Row`s
    either way, so the steps build them once and never branch on the target."""

    where: str  # names the catalog in messages

    def check_access(self) -> None: ...
    def check_rows(self, rows: list[Row]) -> None: ...
    def rows_present(self, rows: list[Row]) -> bool: ...
    def ensure_rows(self, rows: list[Row]) -> None: ...
    def find_dataset(self, name: str) -> dict | None: ...
    def find_channel(self, project: str, channel: str) -> dict | None: ...
    def set_window(self, project: str, channel: str, window: tuple[float, float]) -> None: ...
    def set_propagate(self, project: str, channel: str, state: int) -> None: ...
    def delete_channel(self, project: str, channel: str) -> None: ...


class SqliteCatalog:
    """The local store's catalog file, through this module's functions. An engine is made
    per call (NullPool), so nothing leaks into Luigi's forked workers; a read never
    creates the file."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def where(self) -> str:
        return str(self.path)

    def _engine(self) -> sa.Engine | None:
        return engine_for(self.path, create=False)

    def check_access(self) -> None:
        """A local file needs no key."""

    def check_rows(self, rows: list[Row]) -> None:
        check_rows(self._engine(), rows)

    def rows_present(self, rows: list[Row]) -> bool:
        return rows_present(self._engine(), rows)

    def ensure_rows(self, rows: list[Row]) -> None:
        ensure_rows(engine_for(self.path, create=True), rows)  # type: ignore[arg-type]

    def find_dataset(self, name: str) -> dict | None:
        return find_dataset(self._engine(), name)

    def find_channel(self, project: str, channel: str) -> dict | None:
        return find_channel(self._engine(), project, channel)

    def set_window(self, project: str, channel: str, window: tuple[float, float]) -> None:
        set_window(self._engine(), project, channel, window)  # type: ignore[arg-type]

    def set_propagate(self, project: str, channel: str, state: int) -> None:
        engine = self._engine()
        if engine is not None:
            set_propagate(engine, project, channel, state)

    def delete_channel(self, project: str, channel: str) -> None:
        delete_channel(self._engine(), project, channel)
