"""The HTTP/2 connections to one APNs environment: up to ``max_connections``, opened on
demand over TLS, kept while they work.

A request goes to the first connection with a free stream slot; when none has one, a new
connection is opened while the pool is below its size, else the request queues on the
least loaded connection. APNs lets a new connection carry one stream until a request with
a valid JWT went through, so a burst right after start opens several connections, which
then each carry up to 1000 streams.
"""

from __future__ import annotations

import asyncio
import logging
import ssl

from pushd.apns_connection import ApnsConnection, ApnsNoAnswer

log = logging.getLogger("pushd.apns")


class ApnsPool:
    """Connections to ``host``:``port``, each naming ``authority`` in its requests."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        authority: str,
        tls: ssl.SSLContext,
        max_connections: int,
        connect_timeout: float,
        keepalive: float,
        idle_timeout: float,
    ) -> None:
        self.host = host
        self.port = port
        self.authority = authority
        """Apple's host for this environment, named in every request (``:authority``) even
        when ``host`` is a stand-in, as curl's ``--connect-to`` would."""
        self._tls = tls
        self._max = max_connections
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive
        self._idle_timeout = idle_timeout
        self.connections: list[ApnsConnection] = []
        self._connecting: set[asyncio.Task[ApnsConnection]] = set()
        self.last_connect_error: str | None = None

    async def connection(self) -> ApnsConnection:
        """A connection to send on: one with a free slot, a new one, or the least loaded
        (its slots then queue the request). Raises :class:`ApnsNoAnswer` if none can be
        opened."""
        for connection in self.connections:
            if connection.usable and not connection.slots.is_busy:
                return connection
        if len(self.connections) + len(self._connecting) < self._max:
            task = asyncio.ensure_future(self._connect())
            self._connecting.add(task)
            task.add_done_callback(self._connecting.discard)
            return await asyncio.shield(task)  # a cancelled push leaves the connect running
        usable = [c for c in self.connections if c.usable]
        if usable:
            return min(usable, key=lambda c: c.slots.open_streams + c.slots.waiting)
        # Only connects under way: share the first one's outcome.
        return await asyncio.shield(next(iter(self._connecting)))

    async def _connect(self) -> ApnsConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    self._new_connection, self.host, self.port, ssl=self._tls
                )
        except (OSError, TimeoutError) as exc:
            cause = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self.last_connect_error = cause
            raise ApnsNoAnswer(f"cannot connect: {cause}") from None
        if connection.lost:
            raise ApnsNoAnswer("connection closed right after it was opened")
        self.last_connect_error = None
        self.connections.append(connection)
        return connection

    def _new_connection(self) -> ApnsConnection:
        return ApnsConnection(
            self.authority,
            keepalive=self._keepalive,
            ping_timeout=self._connect_timeout,
            idle_timeout=self._idle_timeout,
            on_lost=self._forget,
        )

    def _forget(self, connection: ApnsConnection) -> None:
        if connection in self.connections:
            self.connections.remove(connection)

    def close(self) -> None:
        for task in list(self._connecting):
            task.cancel()
        for connection in list(self.connections):
            connection.close()
