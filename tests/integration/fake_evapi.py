"""A stand-in for Kamailio's evapi end of the pushd channel, for pushd's client tests.

It speaks docs/kamailio-pushd-protocol.md from Kamailio's side: checks the hello's
secret (closing the connection on a mismatch, as kamailio.cfg does), answers welcome,
records every message with its connection number (acks apart, in ``acks``: what most
tests wait for is the result), and relays pushes. Runs inside the
test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from pushd.netstring import Decoder, encode
from pushgate import wire

SECRET = "evapi-shared-secret"
TIMEOUT = 5.0


class FakeEvapi:
    """Kamailio's evapi as pushd sees it: checks the hello, welcomes, relays messages."""

    def __init__(self, *, secret: str = SECRET, welcome: bool = True) -> None:
        self.secret = secret
        self.welcome = welcome
        self.port = 0
        self.received: asyncio.Queue[tuple[int, dict[str, Any]]] = asyncio.Queue()
        self.writers: list[asyncio.StreamWriter] = []
        self.acks: list[tuple[int, str]] = []
        """(connection number, push id) of every ack pushd sent."""
        self._server: asyncio.Server | None = None

    async def start(self) -> FakeEvapi:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        """Kamailio goes away: stop listening and drop every connection."""
        assert self._server is not None
        self._server.close()
        self.drop()
        await self._server.wait_closed()

    def drop(self) -> None:
        for w in self.writers:
            w.close()

    def send(self, msg: dict[str, Any]) -> None:
        self.writers[-1].write(encode(msg))

    async def next(self) -> tuple[int, dict[str, Any]]:
        """(connection number, message) of the next message from pushd."""
        async with asyncio.timeout(TIMEOUT):
            return await self.received.get()

    async def nothing_within(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.received.get()
                return False
        return True

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = len(self.writers)
        self.writers.append(writer)
        decoder = Decoder()
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                for msg in decoder.feed(data):
                    if msg.get("type") == "ack":
                        self.acks.append((conn, msg.get("id", "")))
                        continue
                    await self.received.put((conn, msg))
                    if msg.get("type") == "hello":
                        if msg.get("secret") != self.secret:
                            writer.close()  # what kamailio.cfg does on a bad secret
                            return
                        if self.welcome:
                            writer.write(encode(wire.Welcome().message()))
