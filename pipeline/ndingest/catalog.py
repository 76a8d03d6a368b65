"""ndstore's data model (dataset, project, token, channel) in SQLAlchemy Core.

Columns carry ndstore's field names. Creating what exists with the same values is a
no-op; with other values it raises `CatalogConflict` naming the field and both values,
and writes nothing. The same tables live in the local store's SQLite file or, when several
hosts share a store, in PostgreSQL by URL (psycopg 3); `SCHEMA_VERSION` says which tables
this code expects, and an older catalog is upgraded step by step when it is written.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.exc import DatabaseError, DBAPIError, IntegrityError, OperationalError

from .blocks import Vec3
from .errors import CatalogConflict, SpecError, StoreError
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


SCHEMA_VERSION = 2  # 1: the four tables above (no version kept); 2: + ndingest_schema
# Its own MetaData: `metadata.create_all` (as the server calls it) must never add an empty
# version table to an old catalog, and `metadata` stays the ndstore model alone.
schema_metadata = sa.MetaData()
schema_table = sa.Table("ndingest_schema", schema_metadata, sa.Column("version", sa.Integer, nullable=False))

SCHEMA_LOCK = "ndingest:schema"  # advisory lock key (PostgreSQL) while tables are created or upgraded
CATALOG_DRIVERS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg", "postgresql+psycopg": "postgresql+psycopg"}


def catalog_url(where: str | Path | sa.URL) -> sa.URL:
    """The SQLAlchemy URL of a catalog named by a SQLite file path or a URL. A plain
    `postgresql://` becomes `postgresql+psycopg://`: SQLAlchemy would pick psycopg2 for it,
    and ndingest installs psycopg 3."""
    if isinstance(where, Path) or (isinstance(where, str) and "://" not in where):
        return sa.URL.create("sqlite", database=str(where))
    url = sa.make_url(where)
    if url.drivername not in CATALOG_DRIVERS or (url.drivername == "sqlite" and not url.database):
        raise SpecError(f"catalog {url.render_as_string(hide_password=True)}: not a catalog URL "
                        f"(postgresql://user:password@host:port/database or sqlite:////path/catalog.sqlite)")
    return url.set(drivername=CATALOG_DRIVERS[url.drivername])


def describe(url: sa.URL) -> str:
    """How messages name a catalog: a SQLite file by its path, a server by its URL as a spec
    writes it (`postgresql://`), without the password."""
    backend = url.get_backend_name()
    return str(url.database) if backend == "sqlite" else url.set(drivername=backend).render_as_string(hide_password=True)


def _where(engine: sa.Engine) -> str:
    return describe(engine.url)


SERVER_CONNECTIONS = 4  # connections a server's pool keeps open between requests


def engine_for(where: str | Path | sa.URL, *, create: bool, pooled: bool = False) -> sa.Engine | None:
    """An engine on the catalog at `where` (a SQLite file's path, or a URL). With `create`
    its tables are created, or an older schema upgraded; without, the schema is only
    checked (a newer one is refused) and nothing is written. None for a SQLite file that
    does not exist when `create` is False, so a read-only check never leaves an empty
    catalog behind.

    `pooled` is for `serve`, a process that never forks workers: it keeps
    SERVER_CONNECTIONS open (more while busy), each checked before use, and names them
    "ndingest serve" in PostgreSQL's pg_stat_activity. A PostgreSQL query then costs
    0.55 ms, not the 4.4 ms of a connection opened for it (SQLite: 0.57 against 1.39 ms
    per token + channel lookup)."""
    url = catalog_url(where)
    sqlite = url.get_backend_name() == "sqlite"
    if sqlite:
        path = Path(str(url.database))
        if not create and not path.exists():
            return None
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
    connect_args = {"timeout": 60} if sqlite else {"connect_timeout": 30}
    if pooled:
        if not sqlite:
            connect_args["application_name"] = "ndingest serve"
        engine = sa.create_engine(url, connect_args=connect_args, pool_size=SERVER_CONNECTIONS, max_overflow=64,
                                  pool_pre_ping=True)
    else:  # NullPool: no connection outlives its use, so nothing leaks into Luigi's forked workers
        engine = sa.create_engine(url, connect_args=connect_args, poolclass=sa.pool.NullPool)
    try:
        if create:
            ensure_schema(engine)
        else:
            check_schema(engine)
    except DBAPIError as exc:
        raise StoreError(f"{describe(url)}: cannot {'create' if create else 'open'} catalog: {exc.orig}") from exc
    return engine


def schema_version(conn: sa.Connection) -> int | None:
    """The catalog's schema version: None for an empty database; 1 for ndstore tables without
    a version table (every catalog from before ndingest kept one)."""
    names = set(sa.inspect(conn).get_table_names())
    if schema_table.name not in names:
        return 1 if names & set(metadata.tables) else None
    version = conn.execute(sa.select(sa.func.max(schema_table.c.version))).scalar()
    if version is None:
        raise StoreError(f"catalog {_where(conn.engine)}: table {schema_table.name} holds no version")
    return int(version)


def _refuse_newer(engine: sa.Engine, version: int | None) -> None:
    if version is not None and version > SCHEMA_VERSION:
        raise StoreError(f"catalog {_where(engine)}: schema version {version} is newer than this ndingest's "
                         f"{SCHEMA_VERSION}; upgrade ndingest to use it")


def check_schema(engine: sa.Engine) -> int | None:
    """The schema version, read without writing; StoreError for one newer than this code.
    An older catalog is read as it is (its four tables are today's), and upgraded only by a
    write (`ensure_schema`)."""
    with engine.connect() as conn:
        version = schema_version(conn)
    _refuse_newer(engine, version)
    return version


def _record_version(conn: sa.Connection, version: int) -> None:
    conn.execute(sa.delete(schema_table))
    conn.execute(sa.insert(schema_table).values(version=version))


def _upgrade_1_to_2(conn: sa.Connection) -> None:
    """Version 2 only starts keeping the version: its table is the whole step."""
    schema_metadata.create_all(conn)


UPGRADES: dict[int, Callable[[sa.Connection], None]] = {1: _upgrade_1_to_2}  # step from version N to N + 1


def ensure_schema(engine: sa.Engine) -> None:
    """Create the tables and the version row of an empty catalog, or upgrade an older one
    one step at a time (each logged), all in one transaction holding the catalog's write
    lock: workers that start together never half-create or double-upgrade it, and a
    failed upgrade leaves the old version whole."""
    if check_schema(engine) == SCHEMA_VERSION:  # the common case takes no write lock
        return
    with _schema_transaction(engine) as conn:
        version = schema_version(conn)
        _refuse_newer(engine, version)
        if version == SCHEMA_VERSION:  # another process did it while we waited
            return
        metadata.create_all(conn)  # checkfirst: only the tables an old catalog lacks
        if version is None:
            schema_metadata.create_all(conn)
            _record_version(conn, SCHEMA_VERSION)
        steps = list(range(version, SCHEMA_VERSION)) if version is not None else []
        for step in steps:
            UPGRADES[step](conn)
            _record_version(conn, step + 1)
    for step in steps:
        logger.info("catalog %s: upgraded schema %d -> %d", _where(engine), step, step + 1)


@contextmanager
def _schema_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A transaction that holds the catalog's write lock from its start: PostgreSQL's DDL is
    transactional and an advisory lock serializes it; SQLite's driver would run each CREATE
    TABLE on its own, so a second engine issues BEGIN IMMEDIATE itself."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(SCHEMA_LOCK))))
            yield conn
        return
    immediate = sa.create_engine(engine.url, connect_args={"timeout": 60}, poolclass=sa.pool.NullPool)

    @sa.event.listens_for(immediate, "connect")
    def _no_driver_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(immediate, "begin")
    def _begin_immediate(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    with immediate.begin() as conn:
        yield conn


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


def _missing_table(exc: DBAPIError) -> bool:
    """A table that does not exist (SQLite's message; PostgreSQL's undefined_table, 42P01)."""
    return getattr(exc.orig, "sqlstate", None) == "42P01" or "no such table" in str(exc.orig)


def _is_busy(engine: sa.Engine, exc: DatabaseError) -> bool:
    """SQLite's "database is locked": another process holds the file. PostgreSQL waits for
    row locks itself and never answers this way."""
    return (engine.dialect.name == "sqlite" and isinstance(exc, OperationalError)
            and ("locked" in str(exc.orig) or "busy" in str(exc.orig)))


def _patiently(engine: sa.Engine, read: Callable[[], T], patience: float) -> T:
    """`read()`, waiting for a busy catalog ("database is locked") up to `patience` seconds,
    then a StoreError: a check is never skipped because another process holds the file."""
    deadline, pause = time.monotonic() + patience, 0.05
    while True:
        try:
            return read()
        except DatabaseError as exc:  # OperationalError ("database is locked") is one
            if not _is_busy(engine, exc):
                raise StoreError(f"catalog {_where(engine)}: {exc.orig}") from exc
            if time.monotonic() >= deadline:
                raise StoreError(f"catalog {_where(engine)}: {exc.orig} for {patience:.0f} s; "
                                 f"another process holds it, rerun when it is done") from exc
            logger.info("catalog %s is locked; checking again in %.2f s", _where(engine), pause)
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
            except DBAPIError as exc:
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
    except DBAPIError as exc:  # tables not created yet, or a busy SQLite file: the task runs and waits
        if isinstance(exc, OperationalError) or _missing_table(exc):
            return False
        raise
    try:
        for row, have in zip(rows, stored):
            if have is None:
                return False
            compare_row(row, have)
    except CatalogConflict:
        return False
    return True


ENSURE_ATTEMPTS = 3


def ensure_rows(engine: sa.Engine, rows: list[Row]) -> None:
    """Create each row, or check it equals what is stored, all in one transaction.

    Processes creating the same rows at once: the later insert fails on the key
    (IntegrityError; PostgreSQL first waits for the earlier transaction to commit), and the
    whole transaction runs again, now comparing with what the other process wrote. An
    IntegrityError that stays is a real constraint failure and rises as the bug it is."""
    for attempt in range(1, ENSURE_ATTEMPTS + 1):
        try:
            with engine.begin() as conn:
                for row in rows:
                    stored = _stored(conn, row)
                    if stored is None:
                        logger.info("catalog: creating %s", row.label)
                        conn.execute(sa.insert(row.table).values(**row.values))
                    else:
                        compare_row(row, stored)
            return
        except IntegrityError:
            if attempt == ENSURE_ATTEMPTS:
                raise
            logger.info("catalog %s: another process created some of these rows first; comparing", _where(engine))
        except OperationalError as exc:
            raise StoreError(f"catalog {_where(engine)}: {exc.orig}") from exc


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


def _update_channel(engine: sa.Engine, project: str, channel: str, **values) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.update(channels)
            .where(channels.c.project == project, channels.c.channel_name == channel)
            .values(**values)
        )


def set_propagate(engine: sa.Engine, project: str, channel: str, state: int) -> None:
    _update_channel(engine, project, channel, propagate=state)


def set_window(engine: sa.Engine, project: str, channel: str, window: tuple[float, float]) -> None:
    """The channel's window range, once an ingest has reduced it from every block."""
    _update_channel(engine, project, channel, startwindow=float(window[0]), endwindow=float(window[1]))


def set_readonly(engine: sa.Engine, project: str, channel: str, readonly: int) -> None:
    """The channel's readonly flag (a channel PATCH to `serve`)."""
    _update_channel(engine, project, channel, readonly=readonly)


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
    """What the pipeline's steps ask of a catalog, whoever keeps it: a SQL database
    (`SqlCatalog`: the local SQLite file, or PostgreSQL) or a server's resource API
    (`remote.RestCatalog`). Rows are `Row`s either way, so the steps build them once and
    never branch on the target."""

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


class SqlCatalog:
    """A catalog in a SQL database, through this module's functions: a SQLite file (path or
    `sqlite:///` URL) or PostgreSQL (`postgresql://` URL). An engine is made per call
    (NullPool), so nothing leaks into Luigi's forked workers; a read never creates a SQLite
    file, nor a table anywhere."""

    def __init__(self, url: str | Path | sa.URL):
        self.url = catalog_url(url)

    @property
    def where(self) -> str:
        return describe(self.url)

    def _engine(self) -> sa.Engine | None:
        return engine_for(self.url, create=False)

    def check_access(self) -> None:
        """A database URL carries its own credentials; no key is asked."""

    def check_rows(self, rows: list[Row]) -> None:
        check_rows(self._engine(), rows)

    def rows_present(self, rows: list[Row]) -> bool:
        return rows_present(self._engine(), rows)

    def ensure_rows(self, rows: list[Row]) -> None:
        ensure_rows(engine_for(self.url, create=True), rows)  # type: ignore[arg-type]

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

    def try_lock(self, name: str) -> "CatalogLock | None":
        """Hold the catalog-wide lock `name`, or None while another session holds it; for
        stores with no local file to lock (runlock's fcntl). A PostgreSQL advisory lock on
        hashtext(name), on a connection of its own kept open (autocommit, so no transaction
        idles) until `release()` or the end of a `with` block. When the holding process
        dies the server ends its session and the lock with it. Take it in the process
        that keeps it: a forked child shares the connection's socket.

        PostgreSQL only: a SQLite catalog is a local file, and its store folder is locked
        with runlock; NotImplementedError there."""
        if self.url.get_backend_name() != "postgresql":
            raise NotImplementedError(f"catalog {self.where}: try_lock needs a PostgreSQL catalog; "
                                      f"lock a local store's folder (runlock) instead")
        engine = sa.create_engine(self.url, connect_args={"connect_timeout": 30}, poolclass=sa.pool.NullPool)
        try:
            conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        except DBAPIError as exc:
            raise StoreError(f"catalog {self.where}: cannot open catalog: {exc.orig}") from exc
        try:
            held = conn.execute(sa.select(sa.func.pg_try_advisory_lock(sa.func.hashtext(name)))).scalar()
        except BaseException:
            conn.close()
            raise
        if not held:
            conn.close()
            return None
        return CatalogLock(conn, name)


class SqliteCatalog(SqlCatalog):
    """The local store's catalog file (`STORE/catalog.sqlite`), named by its path."""

    def __init__(self, path: Path):
        self.path = Path(path)
        super().__init__(self.path)


class CatalogLock:
    """A held `SqlCatalog.try_lock`: `release()`, or leave its `with` block, to free it."""

    def __init__(self, conn: sa.Connection, name: str):
        self.name = name
        self._conn: sa.Connection | None = conn

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            conn.execute(sa.select(sa.func.pg_advisory_unlock(sa.func.hashtext(self.name))))
        finally:
            conn.close()  # ending the session frees the lock even if the unlock failed

    def __enter__(self) -> "CatalogLock":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
