"""Binding refresh: the pure planner, the push it builds, the Refresher loop with a fake
table, the DSN handling and the ``refresh`` config section."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import textwrap
import time
from collections.abc import Coroutine, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from pushd import apns_message, config
from pushd.config import ConfigError, RefreshConfig, Secret
from pushd.dispatch import Dispatcher, RequestDefaults, build_request
from pushd.model import PushKind, PushRequest, PushResult, Verdict
from pushd.refresh import (
    BindingRow,
    DatabaseUnavailable,
    DueRefresh,
    LocationTable,
    Refresher,
    RefreshKey,
    Skip,
    classify,
    dsn_secrets,
    due_refreshes,
    effective_lead,
    from_db_time,
    push_message,
    redact_dsn,
    refresh_key,
    to_db_time,
)

NOW = 1_800_000_000.0
LEAD = 150.0
TOKEN = "ab" * 32
VOIP_TOKEN = "cd" * 32
APNS = (
    f"sip:alice@10.0.0.1:5060;pn-provider=apns;pn-prid={TOKEN};pn-param=TEAMID1234.com.example.app"
)
LINPHONE = (
    "sip:alice@10.0.0.1:5060;transport=tcp;pn-provider=apns.dev"
    f";pn-prid={TOKEN}:remote&{VOIP_TOKEN}:voip;pn-param=TEAMID1234.com.example.app.remote&voip"
)
VOIP_ONLY = (
    f"sip:alice@10.0.0.1;pn-provider=apns;pn-prid={VOIP_TOKEN}"
    ";pn-param=TEAMID1234.com.example.app.voip"
)
FCM = "sip:bob@10.0.0.2;pn-provider=fcm;pn-prid=fcm-token:APA91bxyz123;pn-param=pushgate-test"
PLAIN = "sip:carol@10.0.0.3:5060;transport=tcp"
DSN = "host=127.0.0.1 port=5432 dbname=kamailio user=pushd password=pa55-word-xyz"


def row(
    contact: str = APNS,
    *,
    expires_in: float = 100.0,
    lifetime: float = 600.0,
    ruid: str = "ruid-1",
    aor: str = "sip:alice@example.com",
) -> BindingRow:
    expires = NOW + expires_in
    return BindingRow(
        aor=aor,
        ruid=ruid,
        contact=contact,
        expires=expires,
        last_modified=expires - lifetime,
        instance="<urn:uuid:00000000-0000-0000-0000-000000000001>",
    )


# -- planner ----------------------------------------------------------------------------------


def test_due_binding_is_pushed() -> None:
    due = due_refreshes([row()], NOW, LEAD, set())
    assert len(due) == 1
    assert due[0].row.ruid == "ruid-1"
    assert due[0].push.prid == TOKEN


def test_not_yet_due() -> None:
    assert classify(row(expires_in=1000), NOW, LEAD, set()) is Skip.NOT_DUE
    assert due_refreshes([row(expires_in=150.5)], NOW, LEAD, set()) == []


def test_lead_boundary_is_due() -> None:
    assert isinstance(classify(row(expires_in=150), NOW, LEAD, set()), DueRefresh)


def test_expired_binding_is_never_pushed() -> None:
    assert classify(row(expires_in=-10), NOW, LEAD, set()) is Skip.EXPIRED
    assert classify(row(expires_in=0), NOW, LEAD, set()) is Skip.EXPIRED


def test_binding_without_push_params() -> None:
    assert classify(row(PLAIN), NOW, LEAD, set()) is Skip.NO_PUSH


def test_binding_with_broken_push_params() -> None:
    bad = "sip:alice@h;pn-provider=apns;pn-prid=not-hex;pn-param=TEAMID1234.com.example.app"
    assert classify(row(bad), NOW, LEAD, set()) is Skip.BAD_PUSH
    unknown = "sip:alice@h;pn-provider=webpush;pn-prid=x;pn-param=y"
    assert classify(row(unknown), NOW, LEAD, set()) is Skip.BAD_PUSH


def test_already_sent_for_this_lifetime() -> None:
    r = row()
    assert classify(r, NOW, LEAD, {refresh_key(r)}) is Skip.ALREADY_SENT
    # A REGISTER refresh moved expires: a new lifetime, pushed again when due.
    renewed = row(expires_in=101)
    assert isinstance(classify(renewed, NOW, LEAD, {refresh_key(r)}), DueRefresh)


def test_removed_binding_is_not_pushed() -> None:
    """A binding removed (expires=0, row deleted) is simply absent from the snapshot."""
    sent = {refresh_key(row(ruid="other"))}
    assert due_refreshes([], NOW, LEAD, sent) == []
    assert [d.row.ruid for d in due_refreshes([row(ruid="kept")], NOW, LEAD, sent)] == ["kept"]


def test_apns_voip_only_binding_is_skipped() -> None:
    assert classify(row(VOIP_ONLY), NOW, LEAD, set()) is Skip.VOIP_ONLY


def test_linphone_binding_uses_its_remote_token() -> None:
    (due,) = due_refreshes([row(LINPHONE)], NOW, LEAD, set())
    request = build_request(push_message(due, 1), RequestDefaults())
    assert request.token == TOKEN
    assert request.topic == "com.example.app"


def test_fcm_binding_is_due() -> None:
    (due,) = due_refreshes([row(FCM)], NOW, LEAD, set())
    assert due.push.provider == "fcm"


def test_short_binding_waits_for_half_its_lifetime() -> None:
    """lifetime 150 s < lead: pushing at once would loop push -> REGISTER -> push."""
    fresh = row(expires_in=140, lifetime=150)
    assert effective_lead(fresh, LEAD) == 75
    assert classify(fresh, NOW, LEAD, set()) is Skip.NOT_DUE
    assert isinstance(classify(row(expires_in=75, lifetime=150), NOW, LEAD, set()), DueRefresh)
    # Long bindings keep the full lead; an unknown last_modified does too.
    assert effective_lead(row(lifetime=3600), LEAD) == LEAD
    assert effective_lead(row(lifetime=-5), LEAD) == LEAD


def test_order_and_one_push_per_lifetime() -> None:
    rows = [
        row(expires_in=90, ruid="b"),
        row(expires_in=30, ruid="a"),
        row(expires_in=30, ruid="a"),  # same lifetime twice in one snapshot
        row(PLAIN, expires_in=20, ruid="p"),
        row(expires_in=-1, ruid="x"),
    ]
    assert [d.row.ruid for d in due_refreshes(rows, NOW, LEAD, set())] == ["a", "b"]


def test_push_message_goes_through_the_dispatcher_validation() -> None:
    (due,) = due_refreshes([row()], NOW, LEAD, set())
    msg = push_message(due, 7)
    assert msg.id == "none:7"
    assert msg.kind == "refresh"
    assert msg.aor == "sip:alice@example.com"
    assert msg.ruid == "ruid-1"
    assert msg.deadline == NOW + 100
    request = build_request(msg, RequestDefaults())
    assert request.kind is PushKind.REFRESH
    assert request.deadline == NOW + 100
    message = apns_message.build_message(request, NOW)
    assert message.push_type is apns_message.ApnsPushType.BACKGROUND
    assert message.priority == apns_message.PRIORITY_POWER_SAVING
    assert message.topic == "com.example.app"
    assert message.expiration - int(NOW) == 100  # seconds to live
    assert message.payload["aps"] == {"content-available": 1}


# -- the loop with a fake table ---------------------------------------------------------------


class FakeTable:
    """A BindingSource over a list, filtering like the SQL does."""

    def __init__(self) -> None:
        self.rows: list[BindingRow] = []
        self.error: Exception | None = None
        self.queries = 0
        self.closed = False
        self.claims: dict[str, tuple[int, str]] = {}
        """pushgate_refresh: ruid -> (expires, claimed_by)."""
        self.sent: set[RefreshKey] = set()
        self.claimed_at: dict[str, float] = {}
        self.now = NOW
        """The database's clock (leases)."""
        self.settled: list[tuple[list[RefreshKey], list[RefreshKey]]] = []

    def claim(self, keys: Sequence[RefreshKey], by: str, lease: float) -> set[RefreshKey]:
        if self.error is not None:
            raise self.error
        won = set()
        for ruid, expires in keys:
            held = self.claims.get(ruid, (None, ""))[0] == expires
            lapsed = (ruid, expires) not in self.sent and (
                self.claimed_at.get(ruid, self.now) < self.now - lease
            )
            if not held or lapsed:
                self.claims[ruid] = (expires, by)
                self.claimed_at[ruid] = self.now
                self.sent.discard((ruid, expires))
                won.add((ruid, expires))
        return won

    def settle(self, sent: Sequence[RefreshKey], held: Sequence[RefreshKey], by: str) -> None:
        if self.error is not None:
            raise self.error
        self.settled.append((list(sent), list(held)))
        self.sent.update(sent)
        for ruid, expires in held:
            if self.claims.get(ruid) == (expires, by):
                self.claimed_at[ruid] = self.now

    def check_schema(self) -> None:
        pass

    def fetch(self, now: float, horizon: float) -> list[BindingRow]:
        self.queries += 1
        if self.error is not None:
            raise self.error
        return [r for r in self.rows if "pn-prid=" in r.contact and now < r.expires <= horizon]

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def run(coro: Coroutine[Any, Any, None]) -> None:
    async def guarded() -> None:
        async with asyncio.timeout(10):
            await coro

    asyncio.run(guarded())


SETTINGS = RefreshConfig(database=Secret(DSN), interval=30, lead=LEAD)


def make(
    table: FakeTable, clock: Clock | None = None, **kwargs: Any
) -> tuple[Refresher, list[tuple[dict[str, Any], Any]], list[dict[str, Any]], Clock]:
    submitted: list[tuple[dict[str, Any], Any]] = []
    reported: list[dict[str, Any]] = []
    clock = clock or Clock()
    refresher = Refresher(
        SETTINGS,
        lambda msg, sink: submitted.append((msg.message(), sink)),
        reported.append,
        source=table,
        clock=clock,
        **kwargs,
    )
    return refresher, submitted, reported, clock


def result(msg: dict[str, Any], verdict: Verdict) -> dict[str, Any]:
    return {
        "type": "result",
        "id": msg["id"],
        "verdict": verdict.value,
        "aor": msg["aor"],
        "ruid": msg["ruid"],
    }


def test_refresher_pushes_once_per_lifetime() -> None:
    table = FakeTable()
    table.rows = [row(), row(expires_in=1000, ruid="later"), row(PLAIN, ruid="plain")]
    refresher, submitted, reported, clock = make(table)

    async def scenario() -> None:
        assert await refresher.run_once() == 1
        assert await refresher.run_once() == 0
        msg, sink = submitted[0]
        assert msg["ruid"] == "ruid-1" and msg["kind"] == "refresh"
        sink(result(msg, Verdict.DELIVERED))
        assert reported == []  # Kamailio waits for nothing
        # The phone re-registered: same ruid, new lifetime; due again later.
        table.rows[0] = row(expires_in=700)
        clock.now += 560
        assert await refresher.run_once() == 1
        assert submitted[1][0]["id"] != msg["id"]
        await refresher.stop()
        await refresher.stop()  # idempotent
        assert table.closed

    run(scenario())


def test_two_refreshers_on_one_table_push_each_lifetime_once() -> None:
    table = FakeTable()
    table.rows = [row(), row(ruid="ruid-2"), row(ruid="ruid-3")]
    one, _, _, clock = make(table)
    two, sent_two, _, _ = make(table, clock)
    two.name = "other:2"

    async def scenario() -> None:
        assert await one.run_once() == 3
        assert await two.run_once() == 0  # all claimed by the first
        assert two.lost_claims == 3
        table.rows[1] = row(ruid="ruid-2", expires_in=700)  # re-registered: new lifetime
        clock.now += 560
        assert await two.run_once() == 1
        assert await one.run_once() == 0
        assert [m["ruid"] for m, _ in sent_two] == ["ruid-2"]
        assert table.claims["ruid-2"][1] == "other:2"
        await one.stop()
        await two.stop()

    run(scenario())


def test_a_claim_never_confirmed_is_taken_again_after_the_lease() -> None:
    """A pushd killed between claim and push: another sends it once the lease lapses."""
    table = FakeTable()
    table.rows = [row(expires_in=140)]
    dead, dead_sent, _, clock = make(table)
    live, live_sent, _, _ = make(table, clock)
    live.name = "live:2"

    async def scenario() -> None:
        assert await dead.run_once() == 1  # claimed; no verdict will ever come
        assert await live.run_once() == 0  # the lease runs
        for seconds in (30, SETTINGS.lease - 30 + 1):
            clock.now += seconds
            table.now += seconds
            got = await live.run_once()
        assert got == 1, "not taken again after the lease"
        assert [m["ruid"] for m, _ in live_sent] == ["ruid-1"] == [m["ruid"] for m, _ in dead_sent]
        assert table.claims["ruid-1"] == (int(NOW + 140), "live:2")
        # Its verdict marks it sent: nobody takes it again.
        msg, sink = live_sent[0]
        sink(result(msg, Verdict.DELIVERED))
        await asyncio.sleep(0)  # the settle runs at once, not at the next cycle
        await asyncio.sleep(0.05)
        assert (("ruid-1", int(NOW + 140))) in table.sent
        await live.stop()
        await dead.stop()

    run(scenario())


def test_a_sent_claim_or_one_still_retried_is_not_taken_again() -> None:
    table = FakeTable()
    table.rows = [row(expires_in=140, ruid="done"), row(expires_in=140, ruid="retried")]
    one, sent_one, _, clock = make(table)
    two, sent_two, _, _ = make(table, clock)
    two.name = "other:2"

    async def scenario() -> None:
        assert await one.run_once() == 2
        for msg, sink in sent_one:
            if msg["ruid"] == "done":
                sink(result(msg, Verdict.DELIVERED))
        # "retried" is still being pushed: each cycle of its pushd renews the lease.
        for _ in range(4):
            clock.now += 25
            table.now += 25
            assert await one.run_once() == 0
            assert await two.run_once() == 0
        assert sent_two == []
        assert any(("retried", int(NOW + 140)) in held for _, held in table.settled)
        await one.stop()
        await two.stop()

    run(scenario())


def test_removed_row_stops_pushes() -> None:
    table = FakeTable()
    table.rows = [row()]
    refresher, submitted, _, _ = make(table)

    async def scenario() -> None:
        table.rows = []  # REGISTER expires=0: usrloc deleted the row
        assert await refresher.run_once() == 0
        await refresher.stop()

    run(scenario())
    assert submitted == []


def test_delete_token_goes_to_kamailio() -> None:
    table = FakeTable()
    table.rows = [row()]
    refresher, submitted, reported, _ = make(table)

    async def scenario() -> None:
        await refresher.run_once()
        msg, sink = submitted[0]
        sink(result(msg, Verdict.DELETE_TOKEN))
        await refresher.stop()

    run(scenario())
    assert len(reported) == 1
    assert reported[0]["verdict"] == "delete_token"
    assert reported[0]["aor"] == "sip:alice@example.com"
    assert reported[0]["ruid"] == "ruid-1"
    assert reported[0]["id"].startswith("none:")
    assert refresher.in_flight == 0


def test_in_flight_cap_leaves_the_rest_for_the_next_cycle() -> None:
    table = FakeTable()
    table.rows = [row(expires_in=50 + i, ruid=f"r{i}") for i in range(5)]
    refresher, submitted, _, _ = make(table, max_in_flight=2)

    async def scenario() -> None:
        assert await refresher.run_once() == 2
        assert await refresher.run_once() == 0  # still 2 in flight
        for msg, sink in submitted[:2]:
            sink(result(msg, Verdict.DELIVERED))
        assert await refresher.run_once() == 2
        await refresher.stop()

    run(scenario())
    assert [m["ruid"] for m, _ in submitted] == ["r0", "r1", "r2", "r3"]


def test_database_outage_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    table = FakeTable()
    table.rows = [row()]
    refresher, submitted, _, clock = make(table)
    caplog.set_level(logging.DEBUG, logger="pushd.refresh")

    async def scenario() -> None:
        table.error = DatabaseUnavailable("OperationalError: connection refused")
        for _ in range(4):
            assert await refresher.run_once() == 0
            clock.now += 1
        table.error = None
        assert await refresher.run_once() == 1
        assert await refresher.run_once() == 0
        await refresher.stop()

    run(scenario())
    assert len(submitted) == 1
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(loud) == 2, [r.getMessage() for r in loud]
    assert "paused" in loud[0].getMessage() and "connection refused" in loud[0].getMessage()
    assert "resumed" in loud[1].getMessage() and "4 failed" in loud[1].getMessage()


def test_unexpected_error_is_logged_with_traceback_and_the_loop_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = FakeTable()
    table.error = KeyError("boom")
    refresher, _, _, _ = make(table)

    async def scenario() -> None:
        assert await refresher.run_once() == 0
        assert await refresher.run_once() == 0
        await refresher.stop()

    run(scenario())
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is not None


def test_run_loop_cycles_and_stops_promptly() -> None:
    table = FakeTable()
    table.rows = [row()]
    settings = RefreshConfig(database=Secret(DSN), interval=1, lead=LEAD)
    submitted: list[Any] = []
    refresher = Refresher(
        settings, lambda m, s: submitted.append(m), lambda r: None, source=table, clock=Clock()
    )

    async def scenario() -> None:
        refresher.start()
        await asyncio.sleep(0.2)
        assert table.queries == 1  # the first cycle runs at once
        started = time.monotonic()
        await refresher.stop()
        assert time.monotonic() - started < 1

    run(scenario())
    assert len(submitted) == 1


class OneShotProvider:
    def __init__(self, verdict: Verdict) -> None:
        self.verdict = verdict
        self.requests: list[PushRequest] = []

    async def send(self, request: PushRequest) -> PushResult:
        self.requests.append(request)
        status = 410 if self.verdict is Verdict.DELETE_TOKEN else 200
        return PushResult(verdict=self.verdict, status=status)

    async def close(self) -> None:
        pass


def test_through_the_real_dispatcher() -> None:
    """Only delete_token reaches the Kamailio sink; the call-result sink sees nothing else."""
    table = FakeTable()
    table.rows = [row(), row(FCM, ruid="fcm-1", aor="sip:bob@example.com")]
    apns_provider = OneShotProvider(Verdict.DELETE_TOKEN)
    fcm_provider = OneShotProvider(Verdict.DELIVERED)
    to_kamailio: list[dict[str, Any]] = []

    async def scenario() -> None:
        from pushd.model import ProviderName

        dispatcher = Dispatcher(
            {ProviderName.APNS: apns_provider, ProviderName.FCM: fcm_provider},
            to_kamailio.append,
        )
        refresher = Refresher(
            SETTINGS, dispatcher.submit, to_kamailio.append, source=table, clock=time.time
        )
        # Real time: place the rows relative to now.
        now = time.time()
        table.rows = [
            BindingRow(**{**r.__dict__, "expires": now + 100, "last_modified": now - 500})
            for r in table.rows
        ]
        assert await refresher.run_once() == 2
        assert await dispatcher.drain(5)
        await refresher.stop()

    run(scenario())
    assert [r.kind for r in apns_provider.requests] == [PushKind.REFRESH]
    assert [r.kind for r in fcm_provider.requests] == [PushKind.REFRESH]
    assert [(m["verdict"], m["ruid"]) for m in to_kamailio] == [("delete_token", "ruid-1")]


# -- the database edge ------------------------------------------------------------------------


@pytest.fixture
def berlin() -> Iterator[None]:
    if not Path("/usr/share/zoneinfo/Europe/Berlin").exists():
        pytest.skip("no tzdata")
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Europe/Berlin"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_db_times_are_kamailio_local_time(berlin: None) -> None:
    epoch = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC
    assert to_db_time(epoch) == datetime(2027, 1, 15, 9, 0, 0)  # CET, as localtime_r
    assert from_db_time(datetime(2027, 1, 15, 9, 0, 0)) == epoch  # as mktime
    summer = 1_790_000_000.0
    assert from_db_time(to_db_time(summer)) == summer


def test_dsn_password_is_redacted() -> None:
    secret = Secret(DSN)
    assert "pa55-word-xyz" in dsn_secrets(secret)
    text = f"could not connect with {DSN} (password pa55-word-xyz)"
    assert "pa55-word-xyz" not in redact_dsn(text, secret)
    url = Secret("postgresql://pushd:url-secret-99@127.0.0.1:5432/kamailio")
    assert "url-secret-99" in dsn_secrets(url)
    assert dsn_secrets(Secret(file=Path("/nonexistent/dsn"))) == []


def test_invalid_dsn_fails_without_quoting_it() -> None:
    table = LocationTable(Secret("host=127.0.0.1 password=hunter2-secret bogus"))
    with pytest.raises(DatabaseUnavailable) as info:
        table.fetch(NOW, NOW + LEAD)
    assert "hunter2" not in str(info.value)


def test_unreachable_database_is_an_outage_not_a_crash() -> None:
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    table = LocationTable(
        Secret(f"host=127.0.0.1 port={port} dbname=x user=u password=hunter2-secret")
    )
    with pytest.raises(DatabaseUnavailable) as info:
        table.fetch(NOW, NOW + LEAD)
    assert "OperationalError" in str(info.value)
    assert "hunter2" not in str(info.value)
    table.close()


# -- config -----------------------------------------------------------------------------------

BASE = """
kamailio:
  secret: s3cret-value
fcm:
  service_account_file: sa.json
"""


def parse(extra: str, tmp_path: Path) -> config.Config:
    return config.parse(yaml.safe_load(BASE + textwrap.dedent(extra)), base_dir=tmp_path)


def test_config_defaults(tmp_path: Path) -> None:
    cfg = parse(f"refresh:\n  database: '{DSN}'\n", tmp_path)
    assert cfg.refresh is not None
    assert cfg.refresh.interval == 30 and cfg.refresh.lead == 150 and cfg.refresh.enabled
    assert cfg.refresh.lease == 60
    assert cfg.refresh.database.reveal() == DSN
    assert "pa55" not in repr(cfg.refresh) and "pa55" not in cfg.summary()
    assert "refresh=every 30s lead 150s" in cfg.summary()
    assert parse("", tmp_path).refresh is None


def test_config_lease_spans_two_cycles_by_default(tmp_path: Path) -> None:
    cfg = parse(f"refresh:\n  database: '{DSN}'\n  interval: 50\n  lead: 300\n", tmp_path)
    assert cfg.refresh is not None and cfg.refresh.lease == 100
    assert "lease 100s" in cfg.summary()


def test_config_dsn_file_relative_to_the_config(tmp_path: Path) -> None:
    cfg = parse("refresh:\n  database_file: usrloc.dsn\n  enabled: false\n", tmp_path)
    assert cfg.refresh is not None and not cfg.refresh.enabled
    assert cfg.refresh.database.file == tmp_path / "usrloc.dsn"


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        ("interval: 30\n", "refresh.database", "required"),
        (f"database: '{DSN}'\n  database_file: x\n", "refresh.database", "not both"),
        (f"database: '{DSN}'\n  lead: 100\n", "refresh.lead", "[120"),
        (
            f"database: '{DSN}'\n  lead: 150\n  interval: 200\n",
            "refresh.interval",
            "< refresh.lead",
        ),
        (f"database: '{DSN}'\n  interval: 0\n", "refresh.interval", "[1"),
        (f"database: '{DSN}'\n  interval: 40\n  lease: 60\n", "refresh.lease", "2 x"),
        (f"database: '{DSN}'\n  lease: 1\n", "refresh.lease", "[2"),
        (f"database: '{DSN}'\n  enabled: 'yes'\n", "refresh.enabled", "true or false"),
        (f"database: '{DSN}'\n  table: location\n", "refresh.table", "unknown key"),
        ("database: 'host=x password=hunter2-secret junk'\n", "refresh.database", "libpq"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, body: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse("refresh:\n  " + body, tmp_path)
    assert info.value.key == key
    assert words in info.value.message
    assert "hunter2" not in str(info.value)


def test_config_warns_when_the_push_may_come_late(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    parse(f"refresh:\n  database: '{DSN}'\n  lead: 130\n  interval: 30\n", tmp_path)
    assert any("120" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def check_refresh_files(tmp_path: Path, section: dict[str, Any]) -> RefreshConfig:
    """The refresh section parsed with file checks on (the rest of a config needs real
    provider credentials, which these tests do not care about)."""
    path = tmp_path / "pushd.yaml"
    parser = config._Parser(str(path), tmp_path, check_files=True)
    return parser.refresh(config._Section(str(path), "refresh", section), path)


def test_config_checks_the_dsn_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConfigError) as info:
        check_refresh_files(tmp_path, {"database_file": "missing.dsn"})
    assert info.value.key == "refresh.database_file"
    assert "not found" in info.value.message
    (tmp_path / "bad.dsn").write_text("host=x password=hunter2-secret junk\n")
    with pytest.raises(ConfigError) as info:
        check_refresh_files(tmp_path, {"database_file": "bad.dsn"})
    assert "hunter2" not in str(info.value)
    good = tmp_path / "good.dsn"
    good.write_text(DSN + "\n")
    good.chmod(0o644)
    cfg = check_refresh_files(tmp_path, {"database_file": "good.dsn"})
    assert cfg.database.reveal() == DSN
    assert any("readable by group/others" in r.getMessage() for r in caplog.records)


def test_example_documents_every_refresh_key() -> None:
    text = (Path(__file__).resolve().parents[2] / "pushd" / "pushd.example.yaml").read_text()
    assert "\nrefresh:\n" in text
    for name in ("database_file", "database", "interval", "lead", "lease", "enabled"):
        assert f"  {name}:" in text or f"  # {name}:" in text
