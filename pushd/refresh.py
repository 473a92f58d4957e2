"""Binding refresh by push (RFC 8599 §5.5): wake a device shortly before its binding expires.

Kamailio's usrloc writes every binding through to PostgreSQL (``db_mode=1``), so the
``location`` table is the registrar's view. Every ``interval`` seconds :class:`Refresher`
reads the push bindings that expire within ``lead`` seconds, :func:`due_refreshes`
decides which of them get a push now, and each one goes through the ordinary
:class:`~pushd.dispatch.Dispatcher` path as a ``refresh`` push (APNs background push,
FCM data message) whose deadline is the binding's expiry. The app answers it with a
REGISTER, which gives the binding a new lifetime.

Rules (the planner is pure, so they are unit-tested without a database):

* only while the binding is alive: ``now < expires <= now + lead``; a row that is gone
  (removed, ``expires=0``) or expired at query time is never pushed;
* at most one push per binding lifetime, keyed by ``(ruid, expires)``: a REGISTER
  refresh moves ``expires``, and only then may the binding be pushed again. The key is
  claimed in the ``pushgate_refresh`` table (sql/pushgate-create.sql) before the push:
  with several pushd on one database, one of them sends it. A claim is a lease: marked
  sent once the provider's final verdict is in (renewed each cycle while the push is
  retried), else any pushd may take it again after ``refresh.lease`` seconds, so a pushd
  killed between claim and push loses no refresh;
* never in the first half of a lifetime (the lead shrinks to ``lifetime / 2``), so a
  binding shorter than the lead cannot turn into a push -> REGISTER -> push loop;
* valid pn-* params only, and for APNs only bindings with a regular (non-VoIP) token:
  a background push cannot go to a PushKit token, and a VoIP push that reports no call
  breaks Apple's PushKit rules (see docs/refresh.md).

Results stay in pushd, except ``delete_token``: that one goes to Kamailio with the
binding's ``aor``/``ruid`` (and an id ``none:<n>``: no held transaction waits for it), so
Kamailio removes the dead binding as it does for a call push.

``+sip.pnsreg`` (the UA refreshes on its own) is not recoverable from the table: usrloc
keeps the Contact URI, not its header parameters, so every push binding is refreshed.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from pushd.config import Config, RefreshConfig, Secret
from pushd.dispatch import ResultSink
from pushd.model import PushKind, Verdict
from pushgate import pn_params, wire
from pushgate.pn_params import PushParams, apns_has_regular_token

log = logging.getLogger("pushd.refresh")

RFC_MIN_LEAD = 120.0
"""RFC 8599 §5.5: push "at least 120 seconds before the binding expires" (RECOMMENDED)."""
ROW_LIMIT = 10_000
"""Rows read per cycle (soonest expiry first); the rest are seen by the next cycles."""
STATEMENT_TIMEOUT_MS = 10_000
CONNECT_DEFAULTS: Mapping[str, str] = {
    "connect_timeout": "5",
    "application_name": "pushd-refresh",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
}
"""libpq settings pushd uses unless the DSN gives its own: a dead database must fail a
cycle within seconds, not hold the worker thread for the kernel's TCP timeout."""
STOP_WAIT = 2.0
"""Seconds stop() waits for a query in progress (after cancelling it)."""


# -- the planner (pure) ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class BindingRow:
    """One usrloc binding as read from the ``location`` table."""

    aor: str
    """``sip:<username>@<domain>``: what Kamailio's ``unregister_ruid`` takes."""
    ruid: str
    contact: str
    """The Contact URI as registered (pn-* params included)."""
    expires: float
    """Epoch seconds when the binding lapses."""
    last_modified: float
    """Epoch seconds of the REGISTER that set this lifetime."""
    instance: str = ""


RefreshKey = tuple[str, int]
"""(ruid, expires): one binding lifetime."""


class Skip(enum.StrEnum):
    """Why a binding gets no refresh push now."""

    EXPIRED = "expired"
    NO_PUSH = "no_push_params"
    BAD_PUSH = "bad_push_params"
    VOIP_ONLY = "apns_voip_only"
    ALREADY_SENT = "already_sent"
    NOT_DUE = "not_due"


@dataclass(frozen=True, kw_only=True)
class DueRefresh:
    """A binding to push now, with its validated push params."""

    row: BindingRow
    push: PushParams

    @property
    def key(self) -> RefreshKey:
        return refresh_key(self.row)


def refresh_key(row: BindingRow) -> RefreshKey:
    return (row.ruid, int(row.expires))


def effective_lead(row: BindingRow, lead: float) -> float:
    """``lead``, but never more than half the binding's lifetime (no push->REGISTER loop)."""
    lifetime = row.expires - row.last_modified
    if lifetime <= 0:  # last_modified unknown or nonsense: plain lead
        return lead
    return min(lead, lifetime / 2)


def classify(
    row: BindingRow, now: float, lead: float, already_sent: Collection[RefreshKey]
) -> DueRefresh | Skip:
    """Push ``row`` now (a :class:`DueRefresh`), or why not (a :class:`Skip`)."""
    if row.expires <= now:
        return Skip.EXPIRED
    try:
        push = pn_params.parse_uri(row.contact)
    except pn_params.PnError:
        return Skip.BAD_PUSH
    if push is None:
        return Skip.NO_PUSH
    if push.provider == "apns" and not apns_has_regular_token(push):
        return Skip.VOIP_ONLY
    if refresh_key(row) in already_sent:
        return Skip.ALREADY_SENT
    if row.expires - now > effective_lead(row, lead):
        return Skip.NOT_DUE
    return DueRefresh(row=row, push=push)


def due_refreshes(
    rows: Iterable[BindingRow], now: float, lead: float, already_sent: Collection[RefreshKey]
) -> list[DueRefresh]:
    """The bindings that need a refresh push now, soonest expiry first, one per lifetime."""
    out: list[DueRefresh] = []
    seen: set[RefreshKey] = set()
    for row in sorted(rows, key=lambda r: (r.expires, r.ruid)):
        decision = classify(row, now, lead, already_sent)
        if isinstance(decision, DueRefresh) and decision.key not in seen:
            seen.add(decision.key)
            out.append(decision)
    return out


def push_message(item: DueRefresh, number: int) -> wire.Push:
    """The ``push`` for the dispatcher (the message Kamailio sends; no held call)."""
    row, push = item.row, item.push
    return wire.Push(
        id=str(wire.PushId(tx=None, n=number)),
        kind=PushKind.REFRESH,
        provider=push.raw_provider,
        prid=push.prid,
        param=push.param,
        aor=row.aor,
        ruid=row.ruid,
        instance=row.instance,
        # Useless once the binding is gone; also APNs expiration and FCM ttl.
        deadline=row.expires,
        data={"kind": PushKind.REFRESH.value, "aor": row.aor},
    )


# -- the database (blocking; runs in the refresher's worker thread) --------------------------


class DatabaseUnavailable(Exception):
    """Reading the location table failed; the message is safe to log (no DSN, no password)."""


class SchemaTooOld(Exception):
    """``pushgate_refresh`` is missing or older than this pushd (its ``version`` row): the
    operator must load or upgrade it. The message names the table and the file to run."""


TABLE = "pushgate_refresh"
SCHEMA_VERSION = 2
"""``pushgate_refresh``'s ``version`` row this code needs (sql/pushgate-create.sql).
2: a claim is a lease (``sent``)."""


class BindingSource(Protocol):
    """Where push bindings come from. ``fetch`` and ``close`` may block."""

    def fetch(self, now: float, horizon: float) -> list[BindingRow]:
        """Push bindings with ``now < expires <= horizon`` (epoch seconds)."""
        ...

    def claim(self, keys: Sequence[RefreshKey], by: str, lease: float) -> set[RefreshKey]:
        """Of these binding lifetimes, the ones this pushd (``by``) may push: never claimed,
        or claimed and neither sent nor renewed for ``lease`` seconds; atomic against any
        other pushd claiming them at once."""
        ...

    def settle(self, sent: Sequence[RefreshKey], held: Sequence[RefreshKey], by: str) -> None:
        """Mark ``sent`` lifetimes pushed (a final verdict came); renew this pushd's lease
        on the ``held`` ones (pushes still being retried)."""
        ...

    def check_schema(self) -> None:
        """Raise :class:`SchemaTooOld` if the claims table is missing or too old."""
        ...

    def cancel(self) -> None:
        """Abort a ``fetch`` or ``claim`` running in another thread (thread-safe, no block)."""
        ...

    def close(self) -> None: ...


_SELECT = """
SELECT username, domain, ruid, contact, expires, last_modified, instance
  FROM location
 WHERE contact ILIKE %(pattern)s
   AND expires > %(now)s
   AND expires <= %(horizon)s
 ORDER BY expires, ruid
 LIMIT %(limit)s
"""


# One row per binding: its lifetime last claimed, and whether it went out. A lifetime
# already there is taken (no row back) unless its claim lapsed: not sent and not renewed
# for the lease (its pushd died). A new lifetime (the binding re-registered) replaces it.
# Concurrent claims of one ruid queue on the primary key, and the second sees the first's
# row: one winner. Lease times are the database's clock, the same for every pushd.
_CLAIM = """
INSERT INTO pushgate_refresh AS r (ruid, expires, claimed_by, claimed_at, sent)
SELECT k.ruid, k.expires, %(by)s, LOCALTIMESTAMP, 0
  FROM unnest(%(ruids)s::varchar[], %(expires)s::bigint[]) AS k(ruid, expires)
    ON CONFLICT (ruid) DO UPDATE
   SET expires = EXCLUDED.expires, claimed_by = EXCLUDED.claimed_by,
       claimed_at = EXCLUDED.claimed_at, sent = 0
 WHERE r.expires <> EXCLUDED.expires
    OR (r.sent = 0 AND r.claimed_at < LOCALTIMESTAMP - make_interval(secs => %(lease)s))
RETURNING r.ruid, r.expires
"""
_SENT = """
UPDATE pushgate_refresh AS r SET sent = 1
  FROM unnest(%(ruids)s::varchar[], %(expires)s::bigint[]) AS k(ruid, expires)
 WHERE r.ruid = k.ruid AND r.expires = k.expires
"""
_RENEW = """
UPDATE pushgate_refresh AS r SET claimed_at = LOCALTIMESTAMP
  FROM unnest(%(ruids)s::varchar[], %(expires)s::bigint[]) AS k(ruid, expires)
 WHERE r.ruid = k.ruid AND r.expires = k.expires AND r.claimed_by = %(by)s AND r.sent = 0
"""
_VERSION = "SELECT table_version FROM version WHERE table_name = %(table)s"
# Rows of bindings gone for a day (their lifetime long over) are dropped as claims go by.
_FORGET = "DELETE FROM pushgate_refresh WHERE expires < %(before)s"
FORGET_AFTER = 86400


def to_db_time(epoch: float) -> datetime:
    """Epoch -> the naive local time Kamailio writes (``localtime_r`` in srdb1's db_ut.c)."""
    return datetime.fromtimestamp(epoch)


def from_db_time(value: datetime) -> float:
    """A ``timestamp without time zone`` Kamailio wrote -> epoch (srdb1 reads with mktime)."""
    return value.timestamp()  # naive: local time, as mktime; aware: exact


class LocationTable:
    """usrloc's ``location`` table over one psycopg2 connection, reopened after any error."""

    def __init__(self, dsn: Secret, *, row_limit: int = ROW_LIMIT) -> None:
        self._dsn = dsn
        self._row_limit = row_limit
        self._conn: psycopg2.extensions.connection | None = None

    def fetch(self, now: float, horizon: float) -> list[BindingRow]:
        try:
            conn = self._connection()
            with conn.cursor() as cur:
                cur.execute(
                    _SELECT,
                    {
                        "pattern": "%pn-prid=%",
                        "now": to_db_time(now),
                        "horizon": to_db_time(horizon),
                        "limit": self._row_limit,
                    },
                )
                rows = cur.fetchall()
        except psycopg2.Error as exc:
            self.close()
            raise DatabaseUnavailable(self._describe(exc)) from None
        return [_binding(row) for row in rows]

    def claim(self, keys: Sequence[RefreshKey], by: str, lease: float) -> set[RefreshKey]:
        wanted = dict(keys)  # one lifetime per ruid (ON CONFLICT touches a row once)
        if not wanted:
            return set()
        claim = {"by": by, "lease": lease, **_columns(wanted.items())}
        forget = {"before": int(time.time()) - FORGET_AFTER}
        rows = self._write([(_CLAIM, claim), (_FORGET, forget)])
        return {(str(ruid), int(expires)) for ruid, expires in rows}

    def settle(self, sent: Sequence[RefreshKey], held: Sequence[RefreshKey], by: str) -> None:
        statements: list[tuple[str, dict[str, Any]]] = []
        if sent:
            statements.append((_SENT, _columns(sent)))
        if held:
            statements.append((_RENEW, {"by": by, **_columns(held)}))
        if statements:
            self._write(statements)

    def check_schema(self) -> None:
        try:
            self._connection()
        except psycopg2.Error as exc:
            self.close()
            raise DatabaseUnavailable(self._describe(exc)) from None

    def _write(self, statements: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Any]:
        """Run ``statements`` in one transaction; the rows the first one returned."""
        try:
            conn = self._connection()
            with conn.cursor() as cur:
                # The session is read-only (the location table is Kamailio's): this one
                # transaction writes our own table.
                cur.execute("BEGIN READ WRITE")
                try:
                    rows: list[Any] = []
                    for n, (sql, params) in enumerate(statements):
                        cur.execute(sql, params)
                        if n == 0 and cur.description is not None:
                            rows = cur.fetchall()
                    cur.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(psycopg2.Error):
                        cur.execute("ROLLBACK")
                    raise
        except psycopg2.errors.UndefinedTable:
            self.close()
            raise DatabaseUnavailable(
                f"no {TABLE} table: load sql/pushgate-create.sql into the database"
            ) from None
        except psycopg2.Error as exc:
            self.close()
            raise DatabaseUnavailable(self._describe(exc)) from None
        return rows

    def cancel(self) -> None:
        conn = self._conn
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg2.Error):
                conn.cancel()

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg2.Error):
                conn.close()

    def _connection(self) -> psycopg2.extensions.connection:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        try:
            dsn = self._dsn.reveal()
            given = psycopg2.extensions.parse_dsn(dsn)
        except OSError as exc:
            raise DatabaseUnavailable(f"cannot read the DSN file: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise DatabaseUnavailable("the DSN file is not UTF-8") from None
        except psycopg2.Error:
            # Its message quotes the DSN, password and all.
            raise DatabaseUnavailable("refresh.database is not a valid DSN") from None
        extra: dict[str, Any] = {k: v for k, v in CONNECT_DEFAULTS.items() if k not in given}
        conn: psycopg2.extensions.connection = psycopg2.connect(dsn, **extra)
        try:
            conn.set_session(readonly=True, autocommit=True)
            with conn.cursor() as cur:
                cur.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
                # Checked on every (re)connection: the table may have been loaded or
                # upgraded meanwhile, and an old one must not be written the new way.
                cur.execute(_VERSION, {"table": TABLE})
                found = cur.fetchone()
        except psycopg2.Error:
            conn.close()
            raise
        if found is None or int(found[0]) < SCHEMA_VERSION:
            conn.close()
            raise SchemaTooOld(schema_problem(None if found is None else int(found[0])))
        self._conn = conn
        return conn

    def _describe(self, exc: psycopg2.Error) -> str:
        text = (str(exc).strip().splitlines() or [""])[0]
        return f"{type(exc).__name__}: {redact_dsn(text, self._dsn)}"


def schema_problem(version: int | None) -> str:
    """What is wrong with the claims table, and the command that fixes it."""
    if version is None:
        return (
            f"table {TABLE} is not in the database (no row for it in table version): "
            "load sql/pushgate-create.sql into the database"
        )
    return (
        f"table {TABLE} has schema version {version}, this pushd needs {SCHEMA_VERSION}: "
        "run sql/pushgate-upgrade-2.sql on the database (docs/refresh.md)"
    )


def _columns(keys: Iterable[RefreshKey]) -> dict[str, list[Any]]:
    """Binding lifetimes as the two arrays the statements unnest."""
    pairs = list(keys)
    return {"ruids": [k[0] for k in pairs], "expires": [k[1] for k in pairs]}


def redact_dsn(text: str, dsn: Secret) -> str:
    """``text`` with the DSN and its password replaced by ``***``."""
    for secret in dsn_secrets(dsn):
        text = text.replace(secret, "***")
    return text


def dsn_secrets(dsn: Secret) -> list[str]:
    """The strings a log line must never show: the DSN itself and its password."""
    try:
        value = dsn.reveal()
    except (OSError, UnicodeDecodeError):
        return []
    out = [value]
    with contextlib.suppress(psycopg2.Error):
        password = psycopg2.extensions.parse_dsn(value).get("password")
        if password:
            out.append(password)
    return [s for s in out if s]


def _binding(row: tuple[Any, ...]) -> BindingRow:
    username, domain, ruid, contact, expires, last_modified, instance = row
    aor = f"sip:{username}@{domain}" if domain else f"sip:{username}"
    return BindingRow(
        aor=aor,
        ruid=str(ruid),
        contact=str(contact),
        expires=from_db_time(expires),
        last_modified=from_db_time(last_modified),
        instance=str(instance or ""),
    )


# -- the loop ----------------------------------------------------------------------------------

Submit = Callable[[wire.Push, ResultSink], None]
"""``Dispatcher.submit``: start one push, its result goes to the given sink."""


class Refresher:
    """Every ``interval`` seconds: read due push bindings, submit a refresh push for each."""

    def __init__(
        self,
        settings: RefreshConfig,
        submit: Submit,
        report: ResultSink,
        *,
        source: BindingSource | None = None,
        max_in_flight: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``report`` gets the ``delete_token`` results (Kamailio's queue); ``max_in_flight``
        caps refresh pushes at once so a backlog never crowds out call pushes."""
        self.interval = settings.interval
        self.lead = settings.lead
        self.lease = settings.lease
        self._submit = submit
        self._report = report
        self._source = source if source is not None else LocationTable(settings.database)
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pushd-refresh")
        self._pending: asyncio.Future[list[BindingRow]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._sent: dict[RefreshKey, float] = {}
        self._holding: dict[str, RefreshKey] = {}
        """Push id -> the lifetime it refreshes: claimed, no final verdict yet."""
        self._done: set[RefreshKey] = set()
        """Lifetimes with a final verdict, not yet marked sent in the table."""
        self._settling: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self.in_flight = 0
        self.submitted_total = 0
        self._down_since: float | None = None
        self._failures = 0
        self._stopped = False
        self.name = f"{socket.gethostname()[:40]}:{os.getpid()}"
        """Who claims refreshes in pushgate_refresh (diagnostics)."""
        self.lost_claims = 0
        """Due refreshes another pushd claimed first."""

    # -- lifecycle --

    async def check_schema(self) -> None:
        """Raise :class:`SchemaTooOld` if the claims table is missing or older than this
        code; an unreachable database is only logged (the cycles retry)."""
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._source.check_schema)
        except DatabaseUnavailable as exc:
            log.warning("binding refresh: schema not checked at start (%s)", exc)

    def start(self) -> None:
        """Run :meth:`run` as a task of the running loop."""
        self._task = asyncio.get_running_loop().create_task(self.run(), name="refresh")
        log.info("binding refresh on: every %gs, push %gs before expiry", self.interval, self.lead)

    async def run(self) -> None:
        """Cycle until cancelled; a cycle never raises."""
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("refresh cycle failed")
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        """Stop cycling, abort a query in progress, close the connection (idempotent)."""
        if self._stopped:
            return
        self._stopped = True
        for task in (self._task, self._settling):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = self._settling = None
        pending = self._pending
        if pending is not None and not pending.done():
            self._source.cancel()
            await asyncio.wait({pending}, timeout=STOP_WAIT)
        loop = asyncio.get_running_loop()
        closing = loop.run_in_executor(self._executor, self._source.close)
        await asyncio.wait({closing}, timeout=STOP_WAIT)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- one cycle --

    async def run_once(self) -> int:
        """Read, plan, submit; returns how many refresh pushes were submitted."""
        started = self._clock()
        try:
            await self._settle()
            rows = await self._fetch(started, started + self.lead)
        except DatabaseUnavailable as exc:
            self._outage(str(exc), None)
            return 0
        except SchemaTooOld as exc:
            self._outage(str(exc), None, logging.ERROR)
            return 0
        except Exception as exc:  # a bug, not an outage: say it with the traceback
            self._outage(f"{type(exc).__name__}: {exc}", exc)
            return 0
        self._back()
        # Plan with the time after the query: a row that lapsed meanwhile is not pushed.
        now = max(started, self._clock())
        self._sent = {key: exp for key, exp in self._sent.items() if exp > now}
        due = due_refreshes(rows, now, self.lead, self._sent)
        batch = due[: max(0, self._max_in_flight - self.in_flight)]
        if len(batch) < len(due):
            log.info(
                "refresh: %d pushes in flight, %d due bindings wait for the next cycle",
                self.in_flight,
                len(due) - len(batch),
            )
        try:
            claimed = await self._claim([item.key for item in batch]) if batch else set()
        except DatabaseUnavailable as exc:
            self._outage(str(exc), None)
            return 0
        except SchemaTooOld as exc:
            self._outage(str(exc), None, logging.ERROR)
            return 0
        submitted = 0
        for item in batch:
            if item.key in claimed:
                self._send(item)
                submitted += 1
            else:
                # Another pushd's: not ours to send, unless its lease lapses (it died).
                self._sent[item.key] = min(item.row.expires, now + self.lease)
                self.lost_claims += 1
        log.debug("refresh cycle: %d rows, %d due, %d submitted", len(rows), len(due), submitted)
        return submitted

    async def _fetch(self, now: float, horizon: float) -> list[BindingRow]:
        loop = asyncio.get_running_loop()
        pending = loop.run_in_executor(self._executor, self._source.fetch, now, horizon)
        self._pending = pending
        # Shielded: cancelling the cycle must not forget a thread still using the connection.
        return await asyncio.shield(pending)

    async def _claim(self, keys: list[RefreshKey]) -> set[RefreshKey]:
        loop = asyncio.get_running_loop()
        pending = loop.run_in_executor(
            self._executor, self._source.claim, keys, self.name, self.lease
        )
        return await asyncio.shield(pending)

    async def _settle(self) -> None:
        """Tell the table which claims went out and which are still being pushed."""
        sent, held = sorted(self._done), sorted(set(self._holding.values()))
        if not sent and not held:
            return
        loop = asyncio.get_running_loop()
        pending = loop.run_in_executor(self._executor, self._source.settle, sent, held, self.name)
        await asyncio.shield(pending)
        self._done.difference_update(sent)

    async def _settle_now(self) -> None:
        """After a verdict: mark it sent at once (a pushd that dies later must not leave
        it to be pushed again); a failure leaves it to the next cycle."""
        try:
            while self._done:  # verdicts that came while a settle ran go next
                await self._settle()
        except (DatabaseUnavailable, SchemaTooOld) as exc:
            log.debug("refresh: claims not settled yet (%s); next cycle", exc)

    def _mark_sent(self, key: RefreshKey) -> None:
        self._done.add(key)
        if self._stopped or (self._settling is not None and not self._settling.done()):
            return  # the next cycle (or the running settle's successor) takes it
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._settling = loop.create_task(self._settle_now(), name="refresh-settle")

    def _send(self, item: DueRefresh) -> None:
        self._sent[item.key] = item.row.expires
        self.in_flight += 1
        self.submitted_total += 1
        msg = push_message(item, next(self._ids))
        self._holding[msg.id] = item.key
        log.debug(
            "refresh push %s for %s ruid=%s: binding expires in %.0fs",
            msg.id,
            item.row.aor,
            item.row.ruid,
            item.row.expires - self._clock(),
        )
        self._submit(msg, self._on_result)

    def _on_result(self, result: dict[str, Any]) -> None:
        self.in_flight = max(0, self.in_flight - 1)
        # Every result is final (delivered, or refused for good): the lifetime is done.
        key = self._holding.pop(str(result.get("id")), None)
        if key is not None:
            self._mark_sent(key)
        if result.get("verdict") != Verdict.DELETE_TOKEN.value:
            return  # the dispatcher logged it; Kamailio has no transaction waiting for it
        log.info(
            "refresh push %s: token is dead, asking kamailio to remove %s ruid=%s",
            result.get("id"),
            result.get("aor"),
            result.get("ruid"),
        )
        self._report(result)

    def _outage(self, reason: str, exc: Exception | None, level: int = logging.WARNING) -> None:
        self._failures += 1
        if self._down_since is not None:
            log.debug("refresh: database still unavailable: %s", reason)
            return
        self._down_since = self._clock()
        log.log(
            logging.ERROR if exc is not None else level,
            "binding refresh paused: cannot read the location table (%s); "
            "retrying every %gs, logged again once it is back",
            reason,
            self.interval,
            exc_info=exc,
        )

    def _back(self) -> None:
        if self._down_since is None:
            return
        log.warning(
            "binding refresh resumed: location table readable again after %.0fs (%d failed cycles)",
            self._clock() - self._down_since,
            self._failures,
        )
        self._down_since = None
        self._failures = 0


async def start_refresher(config: Config, submit: Submit, report: ResultSink) -> Refresher | None:
    """The daemon's refresher, started; None when the config has none (or it is disabled).
    Raises :class:`SchemaTooOld` (pushd refuses to start) when the claims table is missing
    or older than this code."""
    settings = config.refresh
    if settings is None or not settings.enabled:
        return None
    # A quarter of the dispatcher's capacity at most: calls must find room.
    cap = max(1, config.limits.max_in_flight // 4)
    refresher = Refresher(settings, submit, report, max_in_flight=cap)
    try:
        await refresher.check_schema()
    except SchemaTooOld:
        await refresher.stop()
        raise
    refresher.start()
    return refresher
