"""One HTTP/2 connection to APNs: asyncio I/O and stream bookkeeping around h2.

h2 (python-hyper) does the protocol: framing, HPACK, stream states, flow-control
accounting, SETTINGS and PING acknowledgements. This module does what h2 leaves to its
user, for the one exchange APNs asks for (many concurrent ``POST /3/device/<token>``
requests, each answered by a status, a few headers and maybe a small JSON body):

* **Stream slots.** At most ``MAX_CONCURRENT_STREAMS`` requests in flight, whatever the
  server last said (APNs: 1 until a request carried a valid JWT, then 1000, announced
  while that first request is still open); further requests wait in order
  (:class:`StreamSlots`).
* **Flow control.** Received DATA is handed back as window at once, so error bodies can
  never stall the connection; a request body waits for send window when the server has
  not granted enough.
* **Endings.** A request not answered in time is reset (RST_STREAM) and its slot freed;
  a stream the server resets fails alone; GOAWAY fails the requests it concerns and the
  connection takes no new ones. h2 reads nothing after a GOAWAY (its documented
  behaviour: "no further action may be taken on the connection"), so requests the server
  had accepted are failed too, and the dispatcher retries them on another connection.
* **Liveness.** A connection silent for ``keepalive`` seconds is PINGed; no byte back
  within ``ping_timeout`` and it is dropped, so a connection that died quietly (NAT,
  firewall) is replaced before a call's push finds it. One unused for ``idle_timeout``
  is closed.

Requests leave in few writes: those made in one loop turn are coalesced (at most
:data:`FLUSH_EVERY` per write, so the server starts on them while the rest are built).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import NoAvailableStreamIDError, ProtocolError
from h2.settings import SettingCodes
from hpack import NeverIndexedHeaderTuple

log = logging.getLogger("pushd.apns")
# hpack logs every header it encodes or decodes at DEBUG: the JWT and device tokens
# among them. Never let a debug log level turn that on.
logging.getLogger("hpack").setLevel(logging.WARNING)

Header = tuple[bytes, bytes]

FLUSH_EVERY = 8
"""Requests coalesced into one write at most."""
RECEIVE_WINDOW = 2**24
"""Our connection-level receive window (16 MiB): answers never wait for it."""
INITIAL_STREAMS = 1000
"""Stream slots until the server's SETTINGS say otherwise (HTTP/2's default is
unlimited; APNs announces its own at once)."""

_H2_CONFIG = H2Configuration(
    client_side=True,
    header_encoding=None,
    # Our headers are built from fixed lower-case names; APNs' answers are only read
    # for :status, apns-id, retry-after and the body. h2's per-header checks both ways
    # cost ~50,000 instructions per request (bench/README.md).
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
)


class ApnsNoAnswer(Exception):
    """APNs will not answer this request (stream reset, connection closed or going away,
    broken HTTP/2, timeout); the message says why. Worth a retry on another connection."""


@dataclass(slots=True)
class Answer:
    """APNs' complete answer to one request."""

    status: int
    apns_id: str | None
    retry_after: str | None
    body: bytes


class StreamSlots:
    """Requests a connection may have in flight: ``bound - open``, with a bound that can
    move while streams run.

    The bound is whatever the server last said; a slot freed goes to the longest waiter
    (it is handed over, so a newcomer cannot take it first).
    """

    def __init__(self, bound: int) -> None:
        self._bound = bound
        self._open = 0
        self._queue: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def bound(self) -> int:
        return self._bound

    @bound.setter
    def bound(self, new_bound: int) -> None:
        self._bound = max(new_bound, 0)
        self._wake()

    @property
    def open_streams(self) -> int:
        return self._open

    @property
    def waiting(self) -> int:
        return len(self._queue)

    @property
    def is_busy(self) -> bool:
        return self._open >= self._bound or bool(self._queue)

    async def acquire(self) -> None:
        """Wait for a free slot."""
        if self._queue or self._open >= self._bound:
            waiter = asyncio.get_running_loop().create_future()
            self._queue.append(waiter)
            try:
                await waiter  # on success, _wake has counted the slot as ours
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self.release()  # handed a slot, then cancelled before using it
                elif waiter in self._queue:
                    self._queue.remove(waiter)
                raise
        else:
            self._open += 1

    def release(self) -> None:
        """A stream ended."""
        self._open = max(self._open - 1, 0)
        self._wake()

    def destroy(self, exc: Exception) -> None:
        """The connection is gone: fail every waiter."""
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                waiter.set_exception(exc)

    def _wake(self) -> None:
        while self._queue and self._open < self._bound:
            waiter = self._queue.popleft()
            if not waiter.done():
                self._open += 1
                waiter.set_result(None)


@dataclass(slots=True)
class _Stream:
    """A request in flight."""

    future: asyncio.Future[Answer]
    timer: asyncio.TimerHandle
    """Gives up when no answer came in time."""
    status: int = 0
    apns_id: str | None = None
    retry_after: str | None = None
    body: bytearray = field(default_factory=bytearray)


class ApnsConnection(asyncio.Protocol):
    """One client connection to APNs (give it to ``loop.create_connection``)."""

    def __init__(
        self,
        authority: str,
        *,
        keepalive: float,
        ping_timeout: float,
        idle_timeout: float,
        on_lost: Callable[[ApnsConnection], None] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.h2 = H2Connection(_H2_CONFIG)
        self.slots = StreamSlots(INITIAL_STREAMS)
        self.streams: dict[int, _Stream] = {}
        """Requests in flight, by stream id."""
        self._head: list[Header] = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
        ]
        self.authority = authority
        self._keepalive = keepalive
        self._ping_timeout = ping_timeout
        self._idle_timeout = idle_timeout
        self._on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.going_away = False
        self.lost = False
        self._blocked: collections.deque[tuple[int, bytes]] = collections.deque()
        """Request bodies waiting for send window, in order."""
        self._flush_scheduled = False
        self._unflushed = 0
        self._last_request = self._last_heard = self.loop.time()
        self._ping_sent: float | None = None
        """When our unanswered PING went out; None when none is outstanding."""
        self._timer: asyncio.TimerHandle | None = None

    @property
    def usable(self) -> bool:
        """Takes new requests (open, not going away)."""
        return not self.going_away and not self.lost and self.transport is not None

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)
        self.h2.initiate_connection()
        self.h2.update_settings({SettingCodes.ENABLE_PUSH: 0})
        self.h2.increment_flow_control_window(RECEIVE_WINDOW - 65_535)
        self._write()
        self._arm_timer(self.loop.time())

    def data_received(self, data: bytes) -> None:
        self._last_heard = self.loop.time()
        if self._ping_sent is not None:  # any byte proves the connection alive
            self._ping_sent = None
            self._rearm(self._last_heard)  # the next PING is due a keepalive from now
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:
            why = f"HTTP/2 error from APNs ({type(exc).__name__}: {exc})"
            if self.going_away:  # h2 reads nothing after GOAWAY; the requests already failed
                why = "data after GOAWAY"
            else:
                log.warning("APNs connection to %s: %s; closing it", self.authority, why)
            self._fail_streams(lambda _: True, why)
            self.close()
            return
        for event in events:
            kind = type(event)
            if kind is ResponseReceived:
                self._on_response(cast("ResponseReceived", event))
            elif kind is DataReceived:
                self._on_data(cast("DataReceived", event))
            elif kind is StreamEnded:
                self._on_end(cast("StreamEnded", event).stream_id)
            elif kind is RemoteSettingsChanged:
                self._on_settings(cast("RemoteSettingsChanged", event))
            elif kind is WindowUpdated:
                self._send_blocked()
            elif kind is StreamReset:
                reset = cast("StreamReset", event)
                self._fail_streams(
                    (reset.stream_id or 0).__eq__,
                    f"stream reset by APNs ({_error_name(reset.error_code)})",
                )
            elif kind is ConnectionTerminated:
                self._on_goaway(cast("ConnectionTerminated", event))
        self._write()
        if self.going_away and not self.streams:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self._timer is not None:
            self._timer.cancel()
        if self._on_lost is not None:
            self._on_lost(self)  # the pool forgets this connection
        why = f"connection lost before the answer ({exc})" if exc else "connection closed"
        self.slots.destroy(ApnsNoAnswer(why))  # first: the slots freed below go to nobody
        self._fail_streams(lambda _: True, why)

    # -- requests --

    async def request(
        self, path: bytes, headers: Sequence[Header], body: bytes, timeout: float
    ) -> Answer:
        """``POST path`` with ``headers`` (regular fields after the pseudo-headers) and
        ``body``; the answer, or :class:`ApnsNoAnswer` within ``timeout`` seconds."""
        await self.slots.acquire()
        try:
            if not self.usable:
                raise ApnsNoAnswer("connection closing before the request went out")
            stream_id = self.h2.get_next_available_stream_id()
            self.h2.send_headers(
                stream_id, [*self._head, NeverIndexedHeaderTuple(b":path", path), *headers]
            )
            self._send_body(stream_id, body)
        except NoAvailableStreamIDError:
            self.slots.release()
            self.going_away = True  # every stream id used: the pool opens another
            raise ApnsNoAnswer("connection has used all its stream ids") from None
        except ProtocolError as exc:  # h2 refused to send (a state we did not foresee)
            self.slots.release()
            raise ApnsNoAnswer(
                f"HTTP/2 error before sending ({type(exc).__name__}: {exc})"
            ) from None
        except BaseException:
            self.slots.release()
            raise
        self._last_request = self.loop.time()
        future: asyncio.Future[Answer] = self.loop.create_future()
        # A timer per stream, not asyncio.timeout around the wait: a third of the cost.
        timer = self.loop.call_later(timeout, self._expire, stream_id, timeout)
        self.streams[stream_id] = _Stream(future, timer)
        self._unflushed += 1
        if self._unflushed >= FLUSH_EVERY:
            self._write()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        try:
            return await future
        except asyncio.CancelledError:
            self._abandon(stream_id)
            raise

    def ping(self) -> None:
        """Send a PING now; :meth:`data_received` clears it on any byte back."""
        self.h2.ping(b"pushgate")
        self._ping_sent = self.loop.time()
        self._write()
        self._rearm(self._ping_sent)

    def close(self) -> None:
        """GOAWAY and close; requests in flight fail as the connection goes."""
        self.going_away = True
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(ProtocolError):  # already closed on the HTTP/2 level
                self.h2.close_connection()
            self._write()
            self.transport.close()

    def _send_body(self, stream_id: int, body: bytes) -> None:
        if self._blocked or len(body) > self.h2.local_flow_control_window(stream_id):
            self._blocked.append((stream_id, body))  # after earlier bodies, in order
            self._send_blocked()
        else:
            self.h2.send_data(stream_id, body, end_stream=True)

    def _send_blocked(self) -> None:
        while self._blocked:
            stream_id, body = self._blocked[0]
            if len(body) > self.h2.local_flow_control_window(stream_id):
                return
            self._blocked.popleft()
            self.h2.send_data(stream_id, body, end_stream=True)

    def _expire(self, stream_id: int, timeout: float) -> None:
        stream = self._abandon(stream_id)
        if stream is not None and not stream.future.done():
            stream.future.set_exception(ApnsNoAnswer(f"no answer within {timeout:.1f} s"))

    def _abandon(self, stream_id: int) -> _Stream | None:
        """Give up on a request: tell the server (RST_STREAM) and free its slot now."""
        stream = self._take(stream_id)
        if stream is not None and self.usable:
            with contextlib.suppress(ProtocolError):  # the stream closed meanwhile
                self.h2.reset_stream(stream_id, ErrorCodes.CANCEL)
            self._write()
        return stream

    def _take(self, stream_id: int) -> _Stream | None:
        """The request on ``stream_id`` is over (answered, failed or abandoned): forget it,
        stop its timer and free its slot. None if it was already over."""
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            stream.timer.cancel()
            self.slots.release()
            if self._blocked:  # its body may still wait for window: it never goes now
                self._blocked = collections.deque(b for b in self._blocked if b[0] != stream_id)
        return stream

    def _fail_streams(self, which: Callable[[int], bool], why: str) -> None:
        for stream_id in [s for s in self.streams if which(s)]:
            stream = self._take(stream_id)
            if stream is not None and not stream.future.done():
                stream.future.set_exception(ApnsNoAnswer(why))

    # -- what comes back --

    def _on_response(self, event: ResponseReceived) -> None:
        stream = self.streams.get(event.stream_id or 0)
        if stream is None:
            return
        for name, value in cast("list[tuple[bytes, bytes]]", event.headers or []):
            if name == b":status":
                stream.status = int(value) if value.isdigit() else 0
            elif name == b"apns-id":
                stream.apns_id = value.decode("ascii", "replace")
            elif name == b"retry-after":
                stream.retry_after = value.decode("latin-1")

    def _on_data(self, event: DataReceived) -> None:
        stream_id = event.stream_id or 0
        if event.flow_controlled_length:  # handed back at once: answers never stall
            self.h2.acknowledge_received_data(event.flow_controlled_length, stream_id)
        stream = self.streams.get(stream_id)
        if stream is not None and event.data:
            stream.body += event.data

    def _on_end(self, stream_id: int) -> None:
        stream = self._take(stream_id)
        if stream is None or stream.future.done():
            return
        if not 100 <= stream.status <= 599:
            stream.future.set_exception(ApnsNoAnswer("answer without a valid :status"))
            return
        stream.future.set_result(
            Answer(stream.status, stream.apns_id, stream.retry_after, bytes(stream.body))
        )

    def _on_settings(self, event: RemoteSettingsChanged) -> None:
        changed = event.changed_settings.get(SettingCodes.MAX_CONCURRENT_STREAMS)
        if changed is not None and changed.new_value is not None:
            self.slots.bound = changed.new_value
        self._send_blocked()  # INITIAL_WINDOW_SIZE may have grown

    def _on_goaway(self, event: ConnectionTerminated) -> None:
        self.going_away = True
        why = _error_name(event.error_code)
        debug = (event.additional_data or b"").decode("utf-8", "replace")[:200]
        level = logging.INFO if event.error_code == ErrorCodes.NO_ERROR else logging.WARNING
        log.log(
            level, "APNs is closing a connection (GOAWAY %s%s)", why, f": {debug}" if debug else ""
        )
        self.slots.destroy(ApnsNoAnswer(f"connection closing (GOAWAY {why})"))
        last = event.last_stream_id or 0
        self._fail_streams(
            lambda stream_id: stream_id > last,
            f"APNs closed the connection before handling the request (GOAWAY {why})",
        )
        # h2 reads no answer after a GOAWAY: the accepted ones are lost with it.
        self._fail_streams(
            lambda _: True, f"APNs closed the connection before answering (GOAWAY {why})"
        )

    # -- writes and timers --

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._write()

    def _write(self) -> None:
        self._unflushed = 0
        out = self.h2.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def _check_idle(self) -> None:
        """One timer per connection: a silent peer is PINGed, one that does not answer is
        dropped, an unused connection closed."""
        self._timer = None
        now = self.loop.time()
        if self._ping_sent is not None and now - self._ping_sent >= self._ping_timeout:
            log.warning(
                "APNs connection to %s: no answer to a PING within %g s; dropping it",
                self.authority,
                self._ping_timeout,
            )
            if self.transport is not None:
                self.transport.abort()  # a TLS goodbye would only wait on the dead peer
            return
        if not self.streams and now - self._last_request >= self._idle_timeout:
            log.debug("APNs connection to %s idle; closing it", self.authority)
            self.close()
            return
        silent = now - self._last_heard
        if self._keepalive and self._ping_sent is None and silent >= self._keepalive:
            self.ping()
            return
        self._arm_timer(now)

    def _rearm(self, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._arm_timer(now)

    def _arm_timer(self, now: float) -> None:
        if self.lost:
            return
        due = [self._last_request + self._idle_timeout]
        if self._ping_sent is not None:
            due.append(self._ping_sent + self._ping_timeout)
        elif self._keepalive:
            due.append(self._last_heard + self._keepalive)
        self._timer = self.loop.call_later(max(min(due) - now, 0.05), self._check_idle)


def _error_name(code: int | None) -> str:
    try:
        return ErrorCodes(code or 0).name
    except ValueError:
        return f"error 0x{code:x}"
