"""A throwaway PostgreSQL server for tests: Debian's binaries, run as the `postgres` user.

Debian's `initdb` refuses root, so a root test run starts the server through `runuser -u
postgres`; the cluster lives in a temp folder owned by postgres (pytest's own temp folders
are root-only), in memory (/dev/shm) where there is one, since a CREATE DATABASE per test
is ten times faster there; it listens on 127.0.0.1 and a unix socket in that folder only,
trusts every local connection, and skips durability (fsync off): it is thrown away at the end.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HOW_TO_GET_IT = "PostgreSQL tests need Debian's server: apt-get install postgresql (and root or the postgres user)"


def find_bin_dir() -> Path | None:
    """The newest installed /usr/lib/postgresql/*/bin holding initdb, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: tuple(int(n) for n in Path(p).parts[-3].split(".") if n.isdigit()))
    return Path(found[-1]).parent if found else None


def unavailable_reason() -> str | None:
    """Why no server can be started here (one line), or None when it can."""
    if find_bin_dir() is None:
        return HOW_TO_GET_IT
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return HOW_TO_GET_IT
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != "postgres":
        return HOW_TO_GET_IT
    return None


def _as_postgres(*cmd: str) -> list[str]:
    """`cmd` run as the postgres user: through runuser when we are root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    root: Path
    port: int
    bin_dir: Path
    started_seconds: float = 0.0
    _databases: int = 0

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        """A plain `postgresql://` URL, as a user writes it in a spec."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database (its URL), so every test starts from nothing."""
        import psycopg

        self._databases += 1
        name = f"test_{os.getpid()}_{self._databases}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(_as_postgres(str(self.bin_dir / "pg_ctl"), "stop", "-D", str(self.data_dir), "-m", "fast"),
                       capture_output=True, timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def start_server() -> PostgresServer:
    """initdb and start a server on a free 127.0.0.1 port (about 1 s); RuntimeError with
    PostgreSQL's own output if either fails, so a broken install is an error, not a skip."""
    started = time.monotonic()
    bin_dir = find_bin_dir()
    assert bin_dir is not None, HOW_TO_GET_IT
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    root = Path(tempfile.mkdtemp(prefix="ndingest-pg-", dir=shm))
    pg = pwd.getpwnam("postgres")
    os.chown(root, pg.pw_uid, pg.pw_gid)
    server = PostgresServer(root=root, port=_free_port(), bin_dir=bin_dir)
    try:
        subprocess.run(_as_postgres(str(bin_dir / "initdb"), "-D", str(server.data_dir), "-U", "postgres",
                                    "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"),
                       check=True, capture_output=True, text=True, timeout=120)
        options = (f"-c listen_addresses=127.0.0.1 -p {server.port} -k {root} -c fsync=off "
                   f"-c synchronous_commit=off -c full_page_writes=off -c shared_buffers=16MB")
        subprocess.run(_as_postgres(str(bin_dir / "pg_ctl"), "start", "-w", "-t", "60", "-D", str(server.data_dir),
                                    "-l", str(root / "server.log"), "-o", options),
                       check=True, capture_output=True, text=True, timeout=120)
    except subprocess.CalledProcessError as exc:
        log = root / "server.log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        server.stop()
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr or exc.stdout} {tail}") from exc
    server.started_seconds = time.monotonic() - started
    return server
