"""pushd.apns_connection, one APNs connection, against h2's server side in memory.

h2's server is an independent HTTP/2 peer: what it decodes from our bytes is what a real
server would see, and what it sends is what a real server could send. Bytes are handed
across by hand, so every case is exact and needs no socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    DataReceived,
    PingReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
)
from h2.settings import SettingCodes

from pushd.apns_connection import Answer, ApnsConnection, ApnsNoAnswer

JWT = b"bearer eyJhbGciOiJFUzI1NiIsImtpZCI6IkFCQzEyMzQ1NjcifQ." + b"x" * 150
AUTHORITY = "api.push.apple.com"


def _headers(n: int) -> list[tuple[bytes, bytes]]:
    return [
        (b"apns-topic", b"com.example.app.voip"),
        (b"apns-push-type", b"voip"),
        (b"apns-priority", b"10"),
        (b"apns-expiration", b"%d" % (1_700_000_000 + n)),
        (b"authorization", JWT),
    ]


def _path(n: int) -> bytes:
    return b"/3/device/%064x" % n


class Wire:
    """The transport under the connection: records what it writes."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.aborted = self.closing = True


class Pair:
    """Our connection and an h2 server."""

    def __init__(self, keepalive: float = 0.0, ping_timeout: float = 1.0, **settings: int) -> None:
        self.conn = ApnsConnection(
            AUTHORITY, keepalive=keepalive, ping_timeout=ping_timeout, idle_timeout=3600
        )
        self.wire = Wire()
        self.server = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.server.initiate_connection()
        if settings:
            self.server.update_settings({getattr(SettingCodes, k): v for k, v in settings.items()})
        self.requests: dict[int, list[tuple[bytes, bytes]]] = {}
        self.bodies: dict[int, bytes] = {}
        self.ended: list[int] = []
        self.resets: list[int] = []
        self.pings: list[bytes] = []
        self.wire_chunks: list[bytes] = []
        self.auto_ack = True
        """Give received DATA back as window at once (a server that does not: False)."""
        self.conn.connection_made(self.wire)  # type: ignore[arg-type]
        self.to_server()
        self.to_client()
        self.to_server()

    def to_server(self) -> None:
        data = b"".join(self.wire.sent)
        self.wire.sent.clear()
        self.wire_chunks.append(data)
        for event in self.server.receive_data(data):
            if isinstance(event, RequestReceived):
                assert event.stream_id is not None
                self.requests[event.stream_id] = list(event.headers or [])  # type: ignore[arg-type]
            elif isinstance(event, DataReceived):
                assert event.stream_id is not None and event.data is not None
                self.bodies[event.stream_id] = self.bodies.get(event.stream_id, b"") + event.data
                if self.auto_ack:
                    self.server.acknowledge_received_data(
                        event.flow_controlled_length or 0, event.stream_id
                    )
            elif isinstance(event, StreamEnded):
                assert event.stream_id is not None
                self.ended.append(event.stream_id)
            elif isinstance(event, StreamReset):
                assert event.stream_id is not None
                self.resets.append(event.stream_id)
            elif isinstance(event, PingReceived):
                self.pings.append(event.ping_data or b"")

    def to_client(self) -> None:
        data = self.server.data_to_send()
        if data:
            self.conn.data_received(data)

    def answer(
        self,
        stream_id: int,
        status: int = 200,
        reason: str | None = None,
        retry_after: str | None = None,
    ) -> None:
        headers = [(":status", str(status)), ("apns-id", f"id-{stream_id}")]
        if retry_after is not None:
            headers.append(("retry-after", retry_after))
        if reason is None:
            self.server.send_headers(stream_id, headers, end_stream=True)
        else:
            self.server.send_headers(stream_id, headers)
            self.server.send_data(stream_id, json.dumps({"reason": reason}).encode(), True)


async def settle() -> None:
    """Let request tasks run up to their wait, and the coalesced write go out."""
    for _ in range(4):
        await asyncio.sleep(0)


def start(pair: Pair, n: int, body: bytes = b'{"aps":{}}', timeout: float = 5.0) -> Any:
    return asyncio.ensure_future(pair.conn.request(_path(n), _headers(n), body, timeout))


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(scenario())  # type: ignore[arg-type]


# -- requests as a server sees them --


def test_a_server_decodes_our_requests_exactly() -> None:
    async def scenario() -> Pair:
        pair = Pair()
        tasks = [start(pair, n) for n in range(3)]
        await settle()
        pair.to_server()
        for stream_id in (1, 3, 5):
            pair.answer(stream_id)
        pair.to_client()
        answers = await asyncio.gather(*tasks)
        assert [a.status for a in answers] == [200] * 3
        assert [a.apns_id for a in answers] == ["id-1", "id-3", "id-5"]
        return pair

    pair = run(scenario)
    for n, stream_id in enumerate((1, 3, 5)):
        assert pair.requests[stream_id] == [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", AUTHORITY.encode()),
            (b":path", _path(n)),
            *_headers(n),
        ]
        assert pair.bodies[stream_id] == b'{"aps":{}}'
    assert pair.ended == [1, 3, 5]


def test_the_jwt_goes_out_once_per_connection_then_as_an_index() -> None:
    async def scenario() -> Pair:
        pair = Pair()
        for n in range(50):
            task = start(pair, n)
            await settle()
            pair.to_server()
            pair.answer(2 * n + 1)
            pair.to_client()
            await task
        return pair

    pair = run(scenario)
    requests = pair.wire_chunks[2:]  # after the preface exchange: one chunk per request
    assert len(requests) == 50
    # The ~200-byte JWT (~150 Huffman-coded) is in the first request only; later ones
    # refer to the HPACK table entry.
    assert all(len(chunk) < len(requests[0]) - 100 for chunk in requests[1:])
    assert all(pair.requests[2 * n + 1][-1] == (b"authorization", JWT) for n in range(50))


def test_bodies_wait_for_send_window_and_go_in_order_when_it_opens() -> None:
    async def scenario() -> Pair:
        pair = Pair(INITIAL_WINDOW_SIZE=10)
        first = start(pair, 0, body=b"x" * 25)
        second = start(pair, 1, body=b"y" * 5)  # fits, but must not overtake the first
        await settle()
        pair.to_server()
        assert pair.bodies == {}
        pair.server.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 100})
        pair.to_client()
        pair.to_server()
        pair.answer(1)
        pair.answer(3)
        pair.to_client()
        await asyncio.gather(first, second)
        return pair

    pair = run(scenario)
    assert pair.bodies == {1: b"x" * 25, 3: b"y" * 5}
    assert pair.ended == [1, 3]


def test_bodies_wait_for_connection_window_in_order() -> None:
    """The connection window (65,535 bytes until the server widens it) is shared by all
    streams: bodies beyond it wait, in order, until the server hands window back."""

    async def scenario() -> tuple[Pair, list[int]]:
        pair = Pair()
        pair.auto_ack = False
        body = b"p" * 5_000
        tasks = [start(pair, n, body=body) for n in range(20)]  # 100,000 bytes
        await settle()
        pair.to_server()
        assert len(pair.bodies) == 13  # 13 x 5,000 fit in 65,535
        pair.server.acknowledge_received_data(65_000, 1)
        pair.to_client()
        pair.to_server()
        ids = [2 * n + 1 for n in range(20)]
        for stream_id in ids:
            pair.answer(stream_id)
        pair.to_client()
        await asyncio.gather(*tasks)
        return pair, ids

    pair, ids = run(scenario)
    assert sorted(pair.bodies) == ids
    assert pair.ended == ids


# -- answers --


def test_answers_carry_status_apns_id_retry_after_and_body() -> None:
    async def scenario() -> list[Answer]:
        pair = Pair()
        ok, busy = start(pair, 0), start(pair, 1)
        await settle()
        pair.to_server()
        pair.answer(3, 429, "TooManyRequests", retry_after="7")
        pair.answer(1)
        pair.to_client()
        answers = list(await asyncio.gather(ok, busy))
        assert pair.conn.streams == {} and pair.conn.slots.open_streams == 0
        return answers

    assert run(scenario) == [
        Answer(200, "id-1", None, b""),
        Answer(429, "id-3", "7", b'{"reason": "TooManyRequests"}'),
    ]


def test_received_data_is_given_back_as_window() -> None:
    """After one window's worth of error bodies a connection that never handed window
    back could receive nothing more. Ours starts at 16 MiB; 300 answers of 60 KB are
    more than that."""

    async def scenario() -> int:
        pair = Pair()
        body = b"x" * 60_000
        received = 0
        for n in range(300):
            task = start(pair, n)
            await settle()
            pair.to_server()
            stream_id = 2 * n + 1
            pair.server.send_headers(stream_id, [(":status", "500")])
            for offset in range(0, len(body), 15_000):  # raises without window
                chunk = body[offset : offset + 15_000]
                pair.server.send_data(stream_id, chunk, end_stream=offset + 15_000 >= len(body))
            pair.to_client()
            received += len((await task).body)
            pair.to_server()  # our WINDOW_UPDATEs
        return received

    assert run(scenario) == 300 * 60_000


def test_bytes_may_arrive_one_at_a_time() -> None:
    async def scenario() -> Answer:
        pair = Pair()
        task = start(pair, 0)
        await settle()
        pair.to_server()
        pair.answer(1, 410, "Unregistered")
        for byte in pair.server.data_to_send():
            pair.conn.data_received(bytes([byte]))
        answer: Answer = await task
        return answer

    assert run(scenario) == Answer(410, "id-1", None, b'{"reason": "Unregistered"}')


# -- stream slots --


def test_max_concurrent_streams_is_obeyed_and_a_raise_frees_every_slot() -> None:
    """APNs: 1 stream until a valid JWT, then 1000, announced while request 1 is open."""

    async def scenario() -> None:
        pair = Pair(MAX_CONCURRENT_STREAMS=1)
        tasks = [start(pair, n) for n in range(5)]
        await settle()
        pair.to_server()
        assert list(pair.requests) == [1]  # the others wait for a slot
        pair.server.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        pair.to_client()  # request 1 is still open
        await settle()
        pair.to_server()
        assert list(pair.requests) == [1, 3, 5, 7, 9]
        for stream_id in pair.requests:
            pair.answer(stream_id)
        pair.to_client()
        assert [a.status for a in await asyncio.gather(*tasks)] == [200] * 5

    run(scenario)


def test_a_request_not_answered_in_time_is_reset_and_frees_its_slot() -> None:
    async def scenario() -> Pair:
        pair = Pair()
        task = start(pair, 0, timeout=0.05)
        await settle()
        pair.to_server()
        with pytest.raises(ApnsNoAnswer, match="no answer within"):
            await task
        assert pair.conn.slots.open_streams == 0
        pair.to_server()  # the RST_STREAM (a late answer: tests/integration)
        after = start(pair, 1)
        await settle()
        pair.to_server()
        pair.answer(3)
        pair.to_client()
        assert (await after).status == 200
        return pair

    pair = run(scenario)
    assert pair.resets == [1]


def test_a_cancelled_request_is_reset() -> None:
    async def scenario() -> Pair:
        pair = Pair()
        task = start(pair, 0)
        await settle()
        task.cancel()
        await settle()
        pair.to_server()
        assert pair.conn.slots.open_streams == 0
        return pair

    assert run(scenario).resets == [1]


# -- the server ending things --


def test_a_server_reset_fails_only_its_stream() -> None:
    async def scenario() -> None:
        pair = Pair()
        first, second = start(pair, 0), start(pair, 1)
        await settle()
        pair.to_server()
        pair.server.reset_stream(1, ErrorCodes.REFUSED_STREAM)
        pair.answer(3)
        pair.to_client()
        with pytest.raises(ApnsNoAnswer, match="REFUSED_STREAM"):
            await first
        assert (await second).status == 200
        assert pair.conn.usable

    run(scenario)


def test_goaway_fails_the_requests_and_the_connection_takes_no_more() -> None:
    async def scenario() -> None:
        pair = Pair()
        first, second = start(pair, 0), start(pair, 1)
        await settle()
        pair.to_server()
        pair.server.close_connection(ErrorCodes.NO_ERROR, b"bye", last_stream_id=1)
        pair.to_client()
        with pytest.raises(ApnsNoAnswer, match=r"before handling the request \(GOAWAY NO_ERROR"):
            await second
        with pytest.raises(ApnsNoAnswer, match="GOAWAY NO_ERROR"):
            await first
        assert not pair.conn.usable
        assert pair.wire.closing
        with pytest.raises(ApnsNoAnswer, match="closing"):
            await pair.conn.request(_path(2), _headers(2), b"{}", 1.0)

    run(scenario)


def test_connection_lost_fails_requests_in_flight_and_waiting() -> None:
    async def scenario() -> None:
        pair = Pair(MAX_CONCURRENT_STREAMS=1)
        sent, waiting = start(pair, 0), start(pair, 1)
        await settle()
        pair.conn.connection_lost(ConnectionResetError("reset by peer"))
        for task in (sent, waiting):
            with pytest.raises(ApnsNoAnswer, match="reset by peer"):
                await task

    run(scenario)


def test_garbage_from_the_server_fails_the_requests_and_closes() -> None:
    async def scenario() -> None:
        pair = Pair()
        task = start(pair, 0)
        await settle()
        pair.conn.data_received(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + bytes(4))  # window 0
        with pytest.raises(ApnsNoAnswer, match="HTTP/2 error"):
            await task
        assert pair.wire.closing

    run(scenario)


def test_random_frames_end_in_answers_or_no_answer_never_in_a_crash() -> None:
    rng = random.Random(8599)
    outcomes = {"answered": 0, "no_answer": 0, "pending": 0}

    async def one() -> None:
        pair = Pair()
        task = start(pair, 0, timeout=0.001)
        await settle()
        frames = b""
        for _ in range(rng.randint(1, 4)):
            payload = rng.randbytes(rng.choice([0, 1, 4, 5, 6, 8, 12, 40]))
            if rng.random() < 0.3:
                payload = b"\x88" + payload  # a plausible header block: :status 200
            length = len(payload).to_bytes(3, "big")
            kind = rng.choice([*range(10), 0x42])
            stream = rng.choice([0, 1, 3]).to_bytes(4, "big")
            frames += length + bytes((kind, rng.randrange(256))) + stream + payload
        pair.conn.data_received(frames)
        try:
            await asyncio.wait_for(task, 1.0)
            outcomes["answered"] += 1
        except ApnsNoAnswer:
            outcomes["no_answer"] += 1

    async def scenario() -> None:
        for _ in range(500):
            await one()

    run(scenario)
    assert outcomes["no_answer"] > 100


# -- liveness --


def test_a_silent_connection_is_pinged_and_dropped_without_an_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> Pair:
        pair = Pair(keepalive=0.05, ping_timeout=0.1)
        await asyncio.sleep(0.12)
        pair.to_server()
        assert pair.pings == [b"pushgate"]
        pair.to_client()  # the PING's ACK: alive
        assert not pair.wire.aborted
        await asyncio.sleep(0.3)  # the next PING goes unanswered
        return pair

    with caplog.at_level(logging.WARNING, logger="pushd.apns"):
        pair = run(scenario)
    assert pair.wire.aborted
    assert "no answer to a PING within 0.1 s; dropping it" in caplog.text


def test_an_unused_connection_is_closed_after_idle_timeout() -> None:
    async def scenario() -> Pair:
        pair = Pair()
        pair.conn._idle_timeout = 0.05
        pair.conn._rearm(pair.conn.loop.time())
        await asyncio.sleep(0.2)
        return pair

    assert run(scenario).wire.closing
