"""pushd.apns' fixes to aioapns' HTTP/2 layer: stream slots and HPACK encoding."""

from __future__ import annotations

import asyncio

import pytest
from aioapns.exceptions import ConnectionClosed
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import RequestReceived

from pushd.apns import _h2_connection, _StreamSlots

JWT = "bearer eyJhbGciOiJFUzI1NiIsImtpZCI6IkFCQzEyMzQ1NjcifQ." + "x" * 150


# -- stream slots --


async def _take(slots: _StreamSlots, count: int) -> list[int]:
    return [await slots.acquire() for _ in range(count)]


def test_a_bound_raised_while_a_stream_is_open_frees_all_its_slots() -> None:
    """APNs: 1 stream until a valid JWT, then 1000, announced while request 1 is open."""

    async def run() -> tuple[int, bool]:
        slots = _StreamSlots(1000)
        await slots.acquire()  # the first request goes out before the server's SETTINGS
        slots.bound = 1
        assert slots.is_busy
        slots.bound = 1000  # the JWT was valid; its answer is still pending
        # aioapns 4.0 leaves 1 free slot here (2 once the first stream ends).
        ids = await asyncio.wait_for(_take(slots, 999), 1.0)
        return len(set(ids)), slots.is_busy

    distinct, busy = asyncio.run(run())

    assert distinct == 999
    assert busy


def test_a_lowered_bound_holds_new_streams_until_enough_have_ended() -> None:
    async def run() -> list[str]:
        slots = _StreamSlots(10)
        await _take(slots, 5)
        slots.bound = 2  # 5 open, 2 allowed: 4 must end before the next may start
        events: list[str] = []

        async def late() -> None:
            await slots.acquire()
            events.append("acquired")

        task = asyncio.create_task(late())
        for n in range(4):
            await asyncio.sleep(0)
            events.append(f"end {n + 1}")
            slots.release()
        await asyncio.wait_for(task, 1.0)
        return events

    assert asyncio.run(run()) == ["end 1", "end 2", "end 3", "end 4", "acquired"]


def test_waiters_get_freed_slots_in_order_and_newcomers_queue_behind_them() -> None:
    async def run() -> list[str]:
        slots = _StreamSlots(1)
        await slots.acquire()
        order: list[str] = []

        async def want(name: str) -> None:
            await slots.acquire()
            order.append(name)

        first = asyncio.create_task(want("first"))
        second = asyncio.create_task(want("second"))
        await asyncio.sleep(0)
        slots.release()  # handed to "first": a newcomer must not take it
        newcomer = asyncio.create_task(want("newcomer"))
        await asyncio.sleep(0)
        await first
        slots.release()
        await second
        slots.release()
        await newcomer
        return order

    assert asyncio.run(run()) == ["first", "second", "newcomer"]


def test_a_cancelled_waiter_gives_back_a_slot_it_was_handed() -> None:
    async def run() -> tuple[int, bool]:
        slots = _StreamSlots(1)
        await slots.acquire()
        waiter = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0)
        slots.release()  # the slot is handed to the waiter ...
        waiter.cancel()  # ... which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return slots.open_streams, slots.is_busy

    assert asyncio.run(run()) == (0, False)


def test_a_cancelled_waiter_leaves_the_queue() -> None:
    async def run() -> int:
        slots = _StreamSlots(1)
        await slots.acquire()
        waiter = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        slots.release()
        await asyncio.wait_for(slots.acquire(), 1.0)  # not blocked by the dead waiter
        return slots.open_streams

    assert asyncio.run(run()) == 1


def test_destroy_fails_the_waiters() -> None:
    async def run() -> None:
        slots = _StreamSlots(1)
        await slots.acquire()
        waiter = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0)
        slots.destroy(ConnectionClosed("gone"))
        with pytest.raises(ConnectionClosed):
            await waiter

    asyncio.run(run())


def test_stream_ids_are_odd_and_increasing() -> None:
    async def run() -> list[int]:
        return await _take(_StreamSlots(10), 3)

    assert asyncio.run(run()) == [1, 3, 5]


# -- HPACK --


def _request_headers(n: int) -> list[tuple[str, str]]:
    """What aioapns sends: lower-case str headers, one new device token and apns-id each."""
    return [
        (":method", "POST"),
        (":scheme", "https"),
        (":path", f"/3/device/{n:064x}"),
        ("host", "api.push.apple.com"),
        ("apns-id", f"00000000-0000-4000-8000-{n:012x}"),
        ("apns-topic", "com.example.app.voip"),
        ("apns-expiration", str(1_700_000_000 + n)),
        ("apns-priority", "10"),
        ("apns-push-type", "voip"),
        ("authorization", JWT),
    ]


def _exchange(count: int) -> tuple[list[bytes], list[list[tuple[bytes, bytes]]]]:
    """Send ``count`` requests from our client connection to a stock h2 server."""
    client = _h2_connection()
    server = H2Connection(H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    blocks, received = [], []
    for n in range(count):
        client.send_headers(2 * n + 1, _request_headers(n), end_stream=True)
        wire = client.data_to_send()
        blocks.append(wire)
        events = [e for e in server.receive_data(wire) if isinstance(e, RequestReceived)]
        received.append(list(events[0].headers or []))
        server.send_headers(2 * n + 1, [(":status", "200")], end_stream=True)
        client.receive_data(server.data_to_send())
    return blocks, received


def test_a_stock_server_decodes_our_headers_unchanged() -> None:
    _blocks, received = _exchange(3)

    for n, headers in enumerate(received):
        assert headers == [(k.encode(), v.encode()) for k, v in _request_headers(n)]


def test_the_jwt_is_sent_once_per_connection_without_huffman() -> None:
    blocks, _received = _exchange(200)

    assert JWT.encode() in blocks[0]  # a plain literal: no Huffman coding
    # Afterwards an index, also after 200 pushes to other devices: per-push headers are
    # never indexed, so they do not push the JWT out of the table.
    assert all(JWT.encode()[-40:] not in block for block in blocks[1:])
    assert f"{199:064x}".encode() in blocks[199]  # per-push values stay literal
    assert len(blocks[199]) < len(blocks[0]) - 150
