"""pushd.apns_connection's stream slots: per connection, with a bound that can move."""

from __future__ import annotations

import asyncio

import pytest

from pushd.apns_connection import ApnsNoAnswer, StreamSlots


async def _take(slots: StreamSlots, count: int) -> None:
    for _ in range(count):
        await slots.acquire()


def test_a_bound_raised_while_a_stream_is_open_frees_all_its_slots() -> None:
    """APNs: 1 stream until a valid JWT, then 1000, announced while request 1 is open."""

    async def run() -> tuple[int, bool]:
        slots = StreamSlots(1000)
        await slots.acquire()  # the first request goes out before the server's SETTINGS
        slots.bound = 1
        assert slots.is_busy
        slots.bound = 1000  # the JWT was valid; its answer is still pending
        await asyncio.wait_for(_take(slots, 999), 1.0)
        return slots.open_streams, slots.is_busy

    open_streams, busy = asyncio.run(run())

    assert open_streams == 1000
    assert busy


def test_a_lowered_bound_holds_new_streams_until_enough_have_ended() -> None:
    async def run() -> list[str]:
        slots = StreamSlots(10)
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
        slots = StreamSlots(1)
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
        slots = StreamSlots(1)
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
        slots = StreamSlots(1)
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
        slots = StreamSlots(1)
        await slots.acquire()
        waiter = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0)
        slots.destroy(ApnsNoAnswer("gone"))
        with pytest.raises(ApnsNoAnswer):
            await waiter

    asyncio.run(run())
