"""pushd's end of the evapi channel: connect to Kamailio, say hello, relay push/result.

The link is a client that never gives up: when Kamailio is down or restarts, it
reconnects with capped exponential backoff and logs the outage once (not once per
attempt). Results produced while disconnected wait in a bounded queue and go out after
the next welcome; beyond the bound the oldest are dropped, since Kamailio has long
failed those calls anyway. Nothing here blocks the loop: ``send_result`` only appends,
and pushes are handed to a synchronous callback that must only schedule work.

Every push is acked as soon as it is read (Kamailio takes the pushes of a pushd that
stops reading over, see docs/kamailio-pushd-protocol.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from importlib import metadata
from typing import Any

from pushd.metrics import Metrics
from pushd.netstring import Decoder, NetstringError, encode
from pushd.retry import RetryPolicy, next_delay
from pushgate import wire

log = logging.getLogger("pushd.link")

_READ_SIZE = 65536


def _agent() -> str:
    try:
        return f"pushd/{metadata.version('pushgate')}"
    except metadata.PackageNotFoundError:
        return "pushd/0.0.0"


class KamailioLink:
    """One long-lived evapi client connection, re-established whenever it drops."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        secret: str | Callable[[], str],
        on_push: Callable[[dict[str, Any]], None],
        reconnect_max_delay: float = 5.0,
        queue_size: int = 10000,
        connect_timeout: float = 5.0,
        welcome_timeout: float = 2.0,
        metrics: Metrics | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.host = host
        self.port = port
        # A callable so a secret_file is re-read on every connect (rotation without restart).
        self._secret = secret if callable(secret) else (lambda: secret)
        self._on_push = on_push
        self._policy = RetryPolicy(
            initial_delay=min(0.1, reconnect_max_delay),
            max_delay=reconnect_max_delay,
            multiplier=2.0,
            jitter=0.1,
        )
        self._queue: deque[dict[str, Any]] = deque()
        self._queue_size = queue_size
        self._connect_timeout = connect_timeout
        self._welcome_timeout = welcome_timeout
        self._metrics = metrics or Metrics()
        self._rng = rng or random.Random()
        self._stop = asyncio.Event()
        self._wakeup = asyncio.Event()  # queue got something, or we got authenticated
        self._idle = asyncio.Event()  # queue empty and everything written was drained
        self._welcomed = asyncio.Event()
        self._outage_logged: set[str] = set()
        self._outage_since: float | None = None
        self._overflow_logged = False
        self.connections = 0
        """Successful TCP connects so far (tests and diagnostics)."""

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def authenticated(self) -> bool:
        """Kamailio accepted our hello on the current connection."""
        return self._welcomed.is_set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def wait_authenticated(self, timeout: float | None = None) -> None:
        async with asyncio.timeout(timeout):
            await self._welcomed.wait()

    def send_result(self, msg: dict[str, Any]) -> None:
        """Queue one message for Kamailio; never blocks, never raises."""
        if len(self._queue) >= self._queue_size:
            self._queue.popleft()
            self._metrics.results_dropped_total.inc()
            if not self._overflow_logged:
                self._overflow_logged = True
                log.warning(
                    "result queue full (%d): dropping the oldest results until kamailio is back",
                    self._queue_size,
                )
        self._queue.append(msg)
        self._idle.clear()
        self._wakeup.set()

    async def run(self) -> None:
        """Connect, serve, reconnect, until :meth:`close`."""
        failures = 0
        while not self._stop.is_set():
            if failures:
                await self._pause(next_delay(failures, None, self._policy, self._rng))
                if self._stop.is_set():
                    break
            try:
                secret = self._secret()
            except Exception as exc:  # an unreadable secret_file must not kill the link
                failures += 1
                self._outage("secret", f"cannot read the evapi secret: {exc}")
                continue
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port), self._connect_timeout
                )
            except (OSError, TimeoutError) as exc:
                failures += 1
                self._outage("connect", f"cannot connect to kamailio evapi {self.address}: {exc}")
                continue
            self.connections += 1
            welcomed = await self._session(reader, writer, secret)
            failures = 0 if welcomed else failures + 1
            if not welcomed and not self._stop.is_set():
                # Connected, then closed before any welcome: almost always a secret mismatch.
                self._outage(
                    "rejected",
                    f"kamailio {self.address} closed the connection without a welcome; "
                    "does kamailio.secret match PUSHGATE_SECRET in kamailio.cfg (pushgate.cfg)?",
                )
        if self._queue:
            log.warning("%d results not delivered to kamailio (stopping)", len(self._queue))
            self._metrics.results_dropped_total.inc(amount=len(self._queue))
            self._queue.clear()

    async def close(self, flush_timeout: float = 1.0) -> None:
        """Send what is queued (if connected, up to ``flush_timeout`` s), then disconnect.

        Ends :meth:`run`; the caller awaits the run task afterwards.
        """
        if self.authenticated and (self._queue or not self._idle.is_set()):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), flush_timeout)
        self._stop.set()

    # -- one connection ------------------------------------------------------------------

    async def _session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, secret: str
    ) -> bool:
        """Serve one connection until it drops or we stop; True if Kamailio welcomed us."""
        writer.write(encode(wire.Hello(secret=secret, agent=_agent()).message()))
        tasks = {
            asyncio.create_task(self._read_loop(reader), name="evapi-read"),
            asyncio.create_task(self._write_loop(writer), name="evapi-write"),
            asyncio.create_task(self._stop.wait(), name="evapi-stop"),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            was_welcomed = self._welcomed.is_set()
            self._welcomed.clear()
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)
        reason = _end_reason(done)
        if reason is not None and was_welcomed:
            self._outage("lost", f"connection to kamailio {self.address} lost: {reason}")
        return was_welcomed

    async def _read_loop(self, reader: asyncio.StreamReader) -> str:
        decoder = Decoder()
        while True:
            try:
                data = await reader.read(_READ_SIZE)
            except OSError as exc:
                return f"read failed: {exc}"
            if not data:
                return "closed by kamailio"
            try:
                messages = decoder.feed(data)
            except NetstringError as exc:
                log.error("protocol error from kamailio, reconnecting: %s", exc)
                return f"protocol error: {exc}"
            for msg in messages:
                self._handle(msg)

    def _handle(self, msg: dict[str, Any]) -> None:
        kind = msg.get("type")
        if kind == wire.MessageType.WELCOME:
            try:
                version = wire.parse_welcome(msg).version
            except wire.WireError as exc:
                log.warning("kamailio's welcome is malformed (%s); taking it as one", exc)
            else:
                if version != wire.VERSION:
                    log.warning(
                        "kamailio speaks channel protocol version %d, pushd %d",
                        version,
                        wire.VERSION,
                    )
            self._authenticate()
        elif kind == wire.MessageType.PUSH:
            # Kamailio sends pushes only to connections it tagged after our hello, so a
            # push is as good as a welcome (covers a lost or absent welcome).
            self._authenticate()
            push_id = msg.get("id")
            if isinstance(push_id, str) and push_id:
                # Read, so not hung: Kamailio gives pushes nobody acks to another pushd.
                self.send_result(wire.Ack(id=push_id).message())
            try:
                self._on_push(msg)
            except Exception:
                log.exception("push handler failed for id %r", msg.get("id"))
        else:
            log.debug("ignoring message of type %r from kamailio", kind)

    def _authenticate(self) -> None:
        if not self._welcomed.is_set():
            self._welcomed.set()
            self._connected_again()
            self._wakeup.set()

    async def _write_loop(self, writer: asyncio.StreamWriter) -> str:
        try:
            await writer.drain()  # the hello
            try:
                async with asyncio.timeout(self._welcome_timeout):
                    await self._welcomed.wait()
            except TimeoutError:
                # Kamailio closes a connection with a bad secret at once; one still open is
                # accepted, its welcome was just sent elsewhere (evapi unicasts by tag).
                log.warning(
                    "no welcome from kamailio %s within %gs; assuming the hello was accepted",
                    self.address,
                    self._welcome_timeout,
                )
                self._authenticate()
            while True:
                if self._welcomed.is_set() and self._queue:
                    while self._queue:
                        msg = self._queue.popleft()
                        try:
                            writer.write(encode(msg))
                        except NetstringError as exc:
                            log.error("dropping result %r: %s", msg.get("id"), exc)
                    await writer.drain()
                    continue
                if not self._queue:
                    self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
        except OSError as exc:
            return f"write failed: {exc}"

    # -- outages ---------------------------------------------------------------------------

    def _outage(self, kind: str, message: str) -> None:
        """Log each kind of trouble once per outage; the rest goes to debug."""
        if self._outage_since is None:
            self._outage_since = time.monotonic()
        if kind in self._outage_logged:
            log.debug("%s", message)
            return
        self._outage_logged.add(kind)
        log.warning("%s (retrying, backoff up to %gs)", message, self._policy.max_delay)

    def _connected_again(self) -> None:
        if self._outage_since is not None:
            log.info(
                "connected to kamailio %s again after %.1fs",
                self.address,
                time.monotonic() - self._outage_since,
            )
        else:
            log.info("connected to kamailio %s", self.address)
        self._outage_since = None
        self._outage_logged.clear()
        self._overflow_logged = False

    async def _pause(self, delay: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)


def _end_reason(done: set[asyncio.Task[Any]]) -> str | None:
    """Why a session ended: the read/write loop's reason, None when we were stopping."""
    for task in done:
        exc = task.exception()
        if exc is not None:
            log.error("evapi %s task failed", task.get_name(), exc_info=exc)
            return f"internal error: {exc!r}"
        result = task.result()
        if isinstance(result, str):
            return result
    return None
