"""A throwaway PostgreSQL 15 cluster: initdb in a temp dir, random loopback port.

PostgreSQL refuses to run as root, so when we are root the cluster runs as the
``postgres`` system user that Debian's package creates.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg2

from testkit.procs import free_port, tail, wait_until

PG_BIN = Path("/usr/lib/postgresql/15/bin")
KAMAILIO_SQL = Path("/usr/share/kamailio/postgres")
REPO = Path(__file__).resolve().parent.parent
DB_NAME = "kamailio"
DB_USER = "kamailio"
DB_PASSWORD = "kamailiorw"


@dataclass
class PostgresCluster:
    root: Path
    port: int
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        """Kamailio db_url form."""
        return f"postgres://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{self.port}/{DB_NAME}"

    @property
    def dsn(self) -> str:
        """libpq / psycopg2 form."""
        return (
            f"host=127.0.0.1 port={self.port} dbname={DB_NAME} "
            f"user={DB_USER} password={DB_PASSWORD}"
        )

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return argv

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(self.root, pg.pw_uid, pg.pw_gid)
        log = self.root / "postgres.log"
        if not self.datadir.exists():
            subprocess.run(
                self._as_owner(
                    [
                        str(PG_BIN / "initdb"),
                        "-D",
                        str(self.datadir),
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "-E",
                        "UTF8",
                        "--locale=C.UTF-8",
                        "--no-sync",
                    ]
                ),
                check=True,
                capture_output=True,
            )
        # Logging to a file the cluster owner can write: our own root.
        self._proc = subprocess.Popen(
            self._as_owner(
                [
                    str(PG_BIN / "postgres"),
                    "-D",
                    str(self.datadir),
                    "-p",
                    str(self.port),
                    "-k",
                    str(self.root),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "synchronous_commit=off",
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=log.open("ab"),
            start_new_session=True,
        )
        try:
            wait_until(self._ready, 30, "postgres to accept connections")
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}\n{tail(log)}") from None

    def _ready(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"postgres exited early:\n{tail(self.root / 'postgres.log')}")
        r = subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-q"],
            capture_output=True,
        )
        return r.returncode == 0

    def url_for(self, db: str) -> str:
        """Kamailio db_url of another database of the cluster."""
        return f"postgres://{DB_USER}:{DB_PASSWORD}@127.0.0.1:{self.port}/{db}"

    def dsn_for(self, db: str) -> str:
        return self.dsn.replace(f"dbname={DB_NAME}", f"dbname={db}")

    def create_database(self, db: str) -> None:
        """Another database with Kamailio's tables (idempotent): a second server's own."""
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'", db="postgres")
        if exists == "1":
            return
        self.psql(f"CREATE DATABASE {db} OWNER {DB_USER}", db="postgres", user="postgres")
        for name in ("standard", "usrloc", "auth_db", "msilo"):
            self.psql(file=KAMAILIO_SQL / f"{name}-create.sql", db=db)

    def psql(
        self,
        sql: str | None = None,
        *,
        file: Path | None = None,
        db: str = DB_NAME,
        user: str = DB_USER,
    ) -> str:
        argv = [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            user,
            "-d",
            db,
            "-v",
            "ON_ERROR_STOP=1",
            "-qAt",
        ]
        if file is not None:
            argv += ["-f", str(file)]
        else:
            assert sql is not None
            argv += ["-c", sql]
        r = subprocess.run(
            argv, capture_output=True, text=True, env={**os.environ, "PGPASSWORD": DB_PASSWORD}
        )
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr.strip()}")
        return r.stdout.strip()

    def query(
        self, sql: str, params: tuple[object, ...] = (), db: str = DB_NAME
    ) -> list[tuple[Any, ...]]:
        """Run one parameterised statement as the Kamailio user; rows if it returns any."""
        with psycopg2.connect(self.dsn_for(db)) as conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    def create_schema(self) -> None:
        """Kamailio's own tables (version, location, subscriber, htable) plus ours from sql/."""
        self.psql(
            f"CREATE ROLE {DB_USER} LOGIN PASSWORD '{DB_PASSWORD}'", db="postgres", user="postgres"
        )
        self.psql(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}", db="postgres", user="postgres")
        for name in ("standard", "usrloc", "auth_db", "msilo"):
            self.psql(file=KAMAILIO_SQL / f"{name}-create.sql")
        for path in sorted((REPO / "sql").glob("*-create.sql")):
            self.psql(file=path)

    def create_stock_schema(self) -> None:
        """The extra tables Kamailio's stock configs want (idempotent).

        The KEMI example hard-defines WITH_ACCDB (``acc``, ``missed_calls`` with the extra
        columns its header lists) and WITH_IPAUTH (permissions: ``address``, ``trusted``).
        """
        if self.psql("SELECT to_regclass('acc') IS NOT NULL") == "t":
            return
        from testkit.stock import accdb_columns

        for name in ("acc", "permissions"):
            self.psql(file=KAMAILIO_SQL / f"{name}-create.sql")
        self.psql("\n".join(accdb_columns()))

    def stop(self) -> None:
        from testkit.procs import stop

        stop(self._proc, timeout=10)
        self._proc = None

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(root: Path) -> PostgresCluster:
    """Start a fresh cluster under ``root`` with the schemas loaded."""
    cluster = PostgresCluster(root=root, port=free_port())
    cluster.start()
    cluster.create_schema()
    return cluster
