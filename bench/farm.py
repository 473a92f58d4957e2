"""Phones that wake up when their push arrives: the fake providers' pushes, routed to
:class:`bench.simsip.Phone` objects in one asyncio loop."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Iterable

from bench.simsip import Phone, WakeResult
from testkit.fake_apns import PushRecord
from testkit.fake_fcm import FcmRecord
from testkit.stack import is_call_push, push_data


class Farm:
    """``hook`` is called from the fake's thread for every push (BenchStack.push_hook);
    a call push accepted (200) for one of ``phones`` wakes it after ``delay()`` seconds:
    it re-REGISTERs on a new flow (with the push's wake token if ``use_wake_token``),
    takes the call and sleeps again. Every wake-up's :class:`WakeResult` is kept."""

    def __init__(
        self,
        phones: Iterable[Phone],
        delay: Callable[[], float] = lambda: 0.0,
        use_wake_token: bool = False,
    ) -> None:
        self.by_token = {p.token.lower(): p for p in phones}
        self.delay = delay
        self.use_wake_token = use_wake_token
        self.loop: asyncio.AbstractEventLoop | None = None
        self.push_times: dict[str, float] = {}
        self.waiters: dict[str, asyncio.Future[float]] = {}
        self.awake: set[str] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.results: list[WakeResult] = []
        self.pushes = 0
        self.failed_pushes = 0
        self.skipped_awake = 0
        self.on_result: Callable[[WakeResult], None] | None = None
        self.defer = False
        """True: a push does not wake its phone; it waits in ``deferred`` for wake_deferred()."""
        self.deferred: list[tuple[Phone, str]] = []

    def attach(self) -> None:
        self.loop = asyncio.get_running_loop()

    def detach(self) -> None:
        self.loop = None

    def hook(self, record: PushRecord | FcmRecord, at: float) -> None:
        loop = self.loop
        if loop is None or record.token is None:
            return
        wake_token = push_data(record).get("wake_token", "")
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(
                self._pushed,
                record.token.lower(),
                record.status,
                is_call_push(record),
                wake_token,
                at,
            )

    def expect(self, token: str) -> asyncio.Future[float]:
        """A future for the arrival time of the next push to ``token``."""
        assert self.loop is not None
        fut: asyncio.Future[float] = self.loop.create_future()
        self.waiters[token.lower()] = fut
        return fut

    def _pushed(self, token: str, status: int, call: bool, wake_token: str, at: float) -> None:
        self.pushes += 1
        self.push_times[token] = at
        fut = self.waiters.pop(token, None)
        if fut is not None and not fut.done():
            fut.set_result(at)
        if status != 200:
            self.failed_pushes += 1
            return
        phone = self.by_token.get(token)
        if phone is None or not call:
            return
        if phone.user in self.awake:
            self.skipped_awake += 1
            return
        if self.defer:
            self.deferred.append((phone, wake_token if self.use_wake_token else ""))
            return
        self._start(phone, wake_token if self.use_wake_token else "")

    def _start(self, phone: Phone, wake_token: str) -> None:
        self.awake.add(phone.user)
        task = asyncio.ensure_future(self._wake(phone, wake_token))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _wake(self, phone: Phone, wake_token: str) -> None:
        try:
            delay = self.delay()
            if delay > 0:
                await asyncio.sleep(delay)
            result = await phone.wake(wake_token)
        finally:
            self.awake.discard(phone.user)
        self.results.append(result)
        if self.on_result is not None:
            self.on_result(result)

    async def wake_deferred(self, rate: float) -> int:
        """Wake the phones whose pushes were held back, ``rate`` per second; how many."""
        todo, self.deferred = self.deferred, []
        started = time.monotonic()
        for i, (phone, wake_token) in enumerate(todo):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if phone.user not in self.awake:
                self._start(phone, wake_token)
        return len(todo)

    async def drain(self, timeout: float) -> None:
        """Wait for the wake-ups in progress (at most ``timeout`` s), cancel the rest."""
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
            for task in pending:
                task.cancel()


def uniform(low: float, high: float) -> Callable[[], float]:
    return lambda: random.uniform(low, high)
