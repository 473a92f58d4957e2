"""Binding refresh against a real PostgreSQL holding Kamailio's ``location`` table.

Rows are written the way usrloc (db_mode=1) writes them: Kamailio's own schema, times as
local ``timestamp without time zone``. The refresh pushes go through the real Dispatcher
and ApnsProvider to the fake APNs on 127.0.0.1. The cluster is this module's own (one
test stops and restarts it), in a temp dir removed at the end.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from pushd import config as config_mod
from pushd.apns import ApnsProvider
from pushd.app import PushDaemon
from pushd.config import RefreshConfig, Secret
from pushd.dispatch import Dispatcher, RequestDefaults
from pushd.model import Environment, ProviderName
from pushd.provider_settings import ApnsSettings
from pushd.refresh import Refresher
from testkit.certs import TestPki, make_test_pki
from testkit.fake_apns import FakeApnsThread, client_settings
from testkit.postgres import PG_BIN, PostgresCluster, start_cluster
from testkit.stack import REPO, world_readable_tempdir
from tests.integration.fake_evapi import SECRET, FakeEvapi

pytestmark = pytest.mark.integration

BUNDLE = "com.example.app"
PARAM = "TEAMID1234.com.example.app"


def token(n: int) -> str:
    return f"{n:02x}" * 32


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    root = world_readable_tempdir("pushgate-refresh-pg-")
    try:
        pg = start_cluster(root / "cluster")
        try:
            yield pg
        finally:
            pg.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def db(cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    execute(cluster, "DELETE FROM location; DELETE FROM pushgate_refresh")
    yield cluster
    execute(cluster, "DELETE FROM location; DELETE FROM pushgate_refresh")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"), bundle=BUNDLE)


@pytest.fixture
def fake_apns(pki: TestPki) -> Iterator[FakeApnsThread]:
    with FakeApnsThread(pki) as fake:
        yield fake


# -- helpers ----------------------------------------------------------------------------------


def execute(cluster: PostgresCluster, sql: str, params: Any = None) -> None:
    conn = psycopg2.connect(cluster.dsn, connect_timeout=5)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql, params)
    finally:
        conn.close()


def kamailio_time(epoch: float) -> str:
    """What srdb1 writes for a time_t: localtime_r + "%Y-%m-%d %H:%M:%S"."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def insert_binding(
    cluster: PostgresCluster,
    user: str,
    contact: str,
    *,
    expires_in: float,
    lifetime: float = 600,
    ruid: str | None = None,
) -> str:
    """One row as usrloc's db_insert_ucontact writes it after a REGISTER."""
    now = time.time()
    ruid = ruid or f"uloc-{uuid.uuid4().hex[:8]}-{user}"
    expires = now + expires_in
    execute(
        cluster,
        """
        INSERT INTO location (ruid, username, domain, contact, received, path, expires, q,
            callid, cseq, last_modified, flags, cflags, user_agent, socket, methods,
            instance, reg_id, server_id, connection_id, keepalive, partition)
        VALUES (%s, %s, %s, %s, %s, NULL, %s, -1, %s, 2, %s, 0, 0, %s, %s, 8191,
            %s, 1, 0, 7, 1, 0)
        """,
        (
            ruid,
            user,
            "example.com",
            contact,
            "sip:127.0.0.1:40000;transport=tcp",
            kamailio_time(expires),
            f"reg-{ruid}",
            kamailio_time(expires - lifetime),
            "TestPhone/1.0",
            "tcp:127.0.0.1:5060",
            f"<urn:uuid:{uuid.uuid4()}>",
        ),
    )
    return ruid


def renew(cluster: PostgresCluster, ruid: str, *, expires_in: float, lifetime: float) -> None:
    """A REGISTER refresh: usrloc's db_update_ucontact moves expires and last_modified."""
    expires = time.time() + expires_in
    execute(
        cluster,
        "UPDATE location SET expires = %s, last_modified = %s, cseq = cseq + 1 WHERE ruid = %s",
        (kamailio_time(expires), kamailio_time(expires - lifetime), ruid),
    )


def apns_contact(user: str, prid: str, param: str = PARAM, provider: str = "apns") -> str:
    return (
        f"sip:{user}@127.0.0.1:40000;transport=tcp;ob"
        f";pn-provider={provider};pn-prid={prid};pn-param={param}"
    )


def run(coro: Coroutine[Any, Any, None]) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(60):
            await coro

    asyncio.run(guarded())


def apns_settings(pki: TestPki, port: int) -> ApnsSettings:
    return client_settings(pki, port, default_environment=Environment.SANDBOX)


class Wiring:
    """Real ApnsProvider + Dispatcher + Refresher; results for Kamailio land in ``kamailio``."""

    def __init__(
        self, cluster: PostgresCluster, pki: TestPki, apns_port: int, lease: float = 60
    ) -> None:
        self.kamailio: list[dict[str, Any]] = []
        self.provider = ApnsProvider(apns_settings(pki, apns_port))
        self.dispatcher = Dispatcher(
            {ProviderName.APNS: self.provider},
            self.kamailio.append,
            defaults=RequestDefaults(apns_environment=Environment.SANDBOX),
        )
        settings = RefreshConfig(database=Secret(cluster.dsn), interval=30, lead=150, lease=lease)
        self.refresher = Refresher(settings, self.dispatcher.submit, self.kamailio.append)

    async def cycle(self) -> int:
        """One refresh cycle, then wait until its pushes have their verdicts."""
        submitted = await self.refresher.run_once()
        assert await self.dispatcher.drain(10)
        return submitted

    async def close(self) -> None:
        await self.refresher.stop()
        await self.provider.close()


def pg_fast_stop(cluster: PostgresCluster) -> None:
    """Stop the server now, dropping client connections (SIGTERM would wait for them)."""
    argv = [str(PG_BIN / "pg_ctl"), "-D", str(cluster.datadir), "-m", "fast", "-w", "stop"]
    subprocess.run(cluster._as_owner(argv), check=True, capture_output=True, timeout=30)
    cluster.stop()  # reaps the process


# -- tests ------------------------------------------------------------------------------------


def test_one_refresh_push_per_binding_lifetime(
    db: PostgresCluster, pki: TestPki, fake_apns: FakeApnsThread
) -> None:
    remote, voip = token(0xA1), token(0xA2)
    due = insert_binding(
        db,
        "alice",
        apns_contact("alice", f"{remote}:remote&{voip}:voip", f"{PARAM}.remote&voip"),
        expires_in=100,
    )
    insert_binding(db, "bob", apns_contact("bob", token(0xB1)), expires_in=1000)
    insert_binding(db, "carol", apns_contact("carol", token(0xC1)), expires_in=-10)
    insert_binding(db, "dave", "sip:dave@127.0.0.1:40001;transport=tcp", expires_in=100)
    insert_binding(db, "erin", apns_contact("erin", token(0xE1), f"{PARAM}.voip"), expires_in=90)

    async def scenario() -> None:
        wiring = Wiring(db, pki, fake_apns.port)
        try:
            assert await wiring.cycle() == 1
            pushes = fake_apns.pushes
            assert len(pushes) == 1
            push = pushes[0]
            assert push.token == remote  # the regular token, not the PushKit one
            assert push.status == 200
            assert push.push_type == "background"
            assert push.priority == 5
            assert push.topic == BUNDLE
            assert push.payload is not None
            assert push.payload["aps"] == {"content-available": 1}
            assert push.payload["aor"] == "sip:alice@example.com"
            # apns-expiration is the binding's expiry: useless after it.
            assert push.expiration is not None
            assert abs(push.expiration - (time.time() + 100)) < 5
            assert wiring.kamailio == []  # delivered: nothing for Kamailio

            # Same lifetime: nothing more.
            assert await wiring.cycle() == 0
            assert len(fake_apns.pushes) == 1

            # alice re-registers (new lifetime, due again later): one more push.
            renew(db, due, expires_in=110, lifetime=600)
            assert await wiring.cycle() == 1
            assert [p.token for p in fake_apns.pushes] == [remote, remote]

            # Another lifetime, but the binding is removed (REGISTER expires=0) first.
            renew(db, due, expires_in=120, lifetime=600)
            execute(db, "DELETE FROM location WHERE ruid = %s", (due,))
            assert await wiring.cycle() == 0
            assert len(fake_apns.pushes) == 2
        finally:
            await wiring.close()

    run(scenario())


def test_two_pushd_on_one_database_send_each_refresh_once(
    db: PostgresCluster, pki: TestPki, fake_apns: FakeApnsThread
) -> None:
    n = 40
    ruids = [
        insert_binding(db, f"u{i:02d}", apns_contact(f"u{i:02d}", token(i + 1)), expires_in=100)
        for i in range(n)
    ]

    async def scenario() -> None:
        one, two = Wiring(db, pki, fake_apns.port), Wiring(db, pki, fake_apns.port)
        two.refresher.name = "second-pushd"
        try:
            # Both cycles at once, each from its own connection: the claims race in SQL.
            got = await asyncio.gather(one.cycle(), two.cycle())
            assert sum(got) == n, got
            assert sorted(p.token for p in fake_apns.pushes) == sorted(
                token(i + 1) for i in range(n)
            )
            assert one.refresher.lost_claims + two.refresher.lost_claims == n
            assert await one.cycle() == 0 and await two.cycle() == 0
            # A new lifetime (re-REGISTER) is pushed once more, by one of them.
            renew(db, ruids[0], expires_in=110, lifetime=600)
            assert sum(await asyncio.gather(one.cycle(), two.cycle())) == 1
            assert len(fake_apns.pushes) == n + 1
        finally:
            await one.close()
            await two.close()

    run(scenario())


def query(cluster: PostgresCluster, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(cluster.dsn, connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall())
    finally:
        conn.close()


def test_a_claim_whose_pushd_died_before_pushing_is_pushed_by_another_after_the_lease(
    db: PostgresCluster, pki: TestPki, fake_apns: FakeApnsThread
) -> None:
    lease = 2.0
    ruid = insert_binding(db, "kim", apns_contact("kim", token(0x4B)), expires_in=100)
    settings = RefreshConfig(database=Secret(db.dsn), interval=30, lead=150, lease=lease)
    # Claims, then "dies": its pushes never leave (no provider call, no verdict).
    dead = Refresher(settings, lambda msg, sink: None, lambda result: None)
    dead.name = "dead-pushd"

    async def scenario() -> None:
        live = Wiring(db, pki, fake_apns.port, lease=lease)
        try:
            assert await dead.run_once() == 1
            claimed = time.monotonic()
            assert await live.cycle() == 0  # the lease runs
            # Cycles (bounded) until the lease lapses and the live pushd takes it.
            while time.monotonic() - claimed < lease + 10:
                if await live.cycle():
                    break
                await asyncio.sleep(0.2)
            taken = time.monotonic() - claimed
            assert [p.token for p in fake_apns.pushes] == [token(0x4B)]
            assert taken >= lease - 0.5, taken  # not before the lease (database's clock)
            print(f"claim taken again {taken:.2f} s after it was made (lease {lease:g} s)")
            # Delivered: marked sent right after the verdict; nobody takes it again.
            deadline = time.monotonic() + 5
            while query(db, "SELECT sent FROM pushgate_refresh WHERE ruid = %s", (ruid,)) != [(1,)]:
                assert time.monotonic() < deadline, "never marked sent"
                await asyncio.sleep(0.05)
            claimed_by = query(
                db, "SELECT claimed_by FROM pushgate_refresh WHERE ruid = %s", (ruid,)
            )
            assert claimed_by == [(live.refresher.name,)]
            await asyncio.sleep(lease + 0.5)  # a whole lease after it went out
            third = Wiring(db, pki, fake_apns.port, lease=lease)
            try:
                assert await third.cycle() == 0
            finally:
                await third.close()
            assert len(fake_apns.pushes) == 1
        finally:
            await live.close()
            await dead.stop()

    run(scenario())


@pytest.mark.parametrize(
    ("version", "words"),
    [("1", "has schema version 1, this pushd needs 2"), (None, "load sql/pushgate-create.sql")],
)
def test_pushd_refuses_to_start_on_an_old_claims_table(
    tmp_path: Path, db: PostgresCluster, pki: TestPki, version: str | None, words: str
) -> None:
    """An old (or missing) pushgate_refresh version row: pushd exits, naming the table."""
    if version is None:
        execute(db, "DELETE FROM version WHERE table_name = 'pushgate_refresh'")
    else:
        execute(
            db,
            "UPDATE version SET table_version = %s WHERE table_name = 'pushgate_refresh'",
            (version,),
        )
    try:
        (tmp_path / "usrloc.dsn").write_text(db.dsn + "\n")
        (tmp_path / "usrloc.dsn").chmod(0o600)
        path = tmp_path / "pushd.yaml"
        path.write_text(
            textwrap.dedent(
                f"""
                kamailio:
                  evapi: 127.0.0.1:9
                  secret: {SECRET}
                apns:
                  key_file: {pki.apns_key}
                  key_id: {pki.key_id}
                  team_id: {pki.team_id}
                  environment: sandbox
                refresh:
                  database_file: usrloc.dsn
                """
            )
        )
        path.chmod(0o600)
        done = subprocess.run(
            [sys.executable, "-m", "pushd", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
    finally:
        execute(
            db,
            "INSERT INTO version (table_name, table_version) SELECT 'pushgate_refresh', 2"
            " WHERE NOT EXISTS (SELECT 1 FROM version WHERE table_name = 'pushgate_refresh')",
        )
        execute(db, "UPDATE version SET table_version = 2 WHERE table_name = 'pushgate_refresh'")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "cannot start" in done.stderr and "table pushgate_refresh" in done.stderr
    assert words in done.stderr
    assert "pushd ready" not in done.stderr and "Traceback" not in done.stderr


def test_the_upgrade_file_brings_a_version_1_table_to_version_2(db: PostgresCluster) -> None:
    """sql/pushgate-upgrade-2.sql on a version 1 table: its rows count as sent (pushed
    under version 1), new claims start unsent, the version row says 2."""
    execute(db, "ALTER TABLE pushgate_refresh DROP COLUMN sent")
    execute(db, "UPDATE version SET table_version = 1 WHERE table_name = 'pushgate_refresh'")
    execute(db, "INSERT INTO pushgate_refresh (ruid, expires) VALUES ('old', 1)")
    try:
        db.psql(file=REPO / "sql" / "pushgate-upgrade-2.sql")
        execute(db, "INSERT INTO pushgate_refresh (ruid, expires) VALUES ('new', 2)")
        rows = query(db, "SELECT ruid, sent FROM pushgate_refresh ORDER BY ruid")
        assert rows == [("new", 0), ("old", 1)]
        version = "SELECT table_version FROM version WHERE table_name = 'pushgate_refresh'"
        assert query(db, version) == [(2,)]
    finally:
        execute(
            db,
            "ALTER TABLE pushgate_refresh"
            " ADD COLUMN IF NOT EXISTS sent SMALLINT DEFAULT 0 NOT NULL",
        )
        execute(db, "UPDATE version SET table_version = 2 WHERE table_name = 'pushgate_refresh'")


def test_claims_without_the_table_pause_the_refresher_with_a_clear_reason(
    db: PostgresCluster, pki: TestPki, fake_apns: FakeApnsThread, caplog: pytest.LogCaptureFixture
) -> None:
    insert_binding(db, "zoe", apns_contact("zoe", token(0x5A)), expires_in=100)
    execute(db, "ALTER TABLE pushgate_refresh RENAME TO pushgate_refresh_away")

    async def scenario() -> None:
        wiring = Wiring(db, pki, fake_apns.port)
        try:
            with caplog.at_level(logging.WARNING, logger="pushd.refresh"):
                assert await wiring.cycle() == 0
            assert fake_apns.pushes == []
        finally:
            await wiring.close()

    try:
        run(scenario())
    finally:
        execute(db, "ALTER TABLE pushgate_refresh_away RENAME TO pushgate_refresh")
    assert "load sql/pushgate-create.sql" in caplog.text


def test_dead_token_is_reported_for_removal(
    db: PostgresCluster, pki: TestPki, fake_apns: FakeApnsThread
) -> None:
    dead = token(0xD1)
    fake_apns.script(dead, 410, "Unregistered")
    ruid = insert_binding(db, "frank", apns_contact("frank", dead), expires_in=60)

    async def scenario() -> None:
        wiring = Wiring(db, pki, fake_apns.port)
        try:
            assert await wiring.cycle() == 1
        finally:
            await wiring.close()
        assert len(wiring.kamailio) == 1
        result = wiring.kamailio[0]
        assert result["verdict"] == "delete_token"
        assert result["aor"] == "sip:frank@example.com"
        assert result["ruid"] == ruid
        assert str(result["id"]).startswith("none:")

    run(scenario())


def test_database_outage_is_logged_once_and_survived(
    db: PostgresCluster, pki: TestPki, fake_apns: FakeApnsThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pushd.refresh")
    insert_binding(db, "gina", apns_contact("gina", token(0x61)), expires_in=1000)

    async def scenario() -> None:
        wiring = Wiring(db, pki, fake_apns.port)
        try:
            assert await wiring.cycle() == 0  # connected, nothing due
            await asyncio.to_thread(pg_fast_stop, db)
            for _ in range(3):
                assert await wiring.cycle() == 0
            await asyncio.to_thread(db.start)
            insert_binding(db, "hank", apns_contact("hank", token(0x62)), expires_in=80)
            assert await wiring.cycle() == 1
        finally:
            await wiring.close()

    run(scenario())
    assert [p.token for p in fake_apns.pushes] == [token(0x62)]
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 2, loud
    assert "paused" in loud[0] and "resumed" in loud[1] and "3 failed" in loud[1]
    assert "kamailiorw" not in caplog.text  # the DSN's password


def test_daemon_runs_the_refresher_from_its_config(
    tmp_path: Path, db: PostgresCluster, pki: TestPki, fake_apns: FakeApnsThread
) -> None:
    """pushd.yaml ``refresh`` -> PushDaemon refreshes; only delete_token reaches Kamailio."""
    dead, alive = token(0x71), token(0x72)
    fake_apns.script(dead, 410, "Unregistered")
    dead_ruid = insert_binding(db, "ivan", apns_contact("ivan", dead), expires_in=70)
    insert_binding(db, "judy", apns_contact("judy", alive), expires_in=70)

    async def scenario() -> None:
        server = await FakeEvapi().start()
        dsn_file = tmp_path / "usrloc.dsn"
        dsn_file.write_text(db.dsn + "\n")
        dsn_file.chmod(0o600)
        path = tmp_path / "pushd.yaml"
        path.write_text(
            textwrap.dedent(
                f"""
                kamailio:
                  evapi: 127.0.0.1:{server.port}
                  secret: {SECRET}
                  reconnect_max_delay: 0.2
                apns:
                  key_file: {pki.apns_key}
                  key_id: {pki.key_id}
                  team_id: {pki.team_id}
                  environment: sandbox
                  host: localhost
                  port: {fake_apns.port}
                  ca_file: {pki.ca_cert}
                  timeout: 3
                limits: {{shutdown_grace: 1}}
                refresh:
                  database_file: usrloc.dsn
                  interval: 1
                """
            )
        )
        path.chmod(0o600)
        daemon = PushDaemon(config_mod.load(path))
        await daemon.start()
        try:
            assert (await server.next())[1]["type"] == "hello"
            _, msg = await server.next()
            assert msg["type"] == "result"
            assert msg["verdict"] == "delete_token"
            assert msg["ruid"] == dead_ruid and msg["aor"] == "sip:ivan@example.com"
            assert str(msg["id"]).startswith("none:")
            # judy's push was delivered: no result for it, and no second push for anyone.
            assert await server.nothing_within(2.5)
        finally:
            await daemon.stop()
            await server.stop()

    run(scenario())
    assert sorted(p.token for p in fake_apns.pushes) == sorted([dead, alive])
    assert {p.push_type for p in fake_apns.pushes} == {"background"}
