"""From a Kamailio ``push`` message to a ``result`` message: validation, retries, verdict.

:func:`build_request` is pure: the raw RFC 8599 values from the Contact become a typed
:class:`~pushd.model.PushRequest` (token, topic, environment) or a :class:`BadPush`
naming the field. :class:`Dispatcher` runs one task per push: attempt, and on RETRY
back off (never sooner than Retry-After) while another attempt can still start before
the push's deadline. Whatever happens, exactly one ``result`` goes back per push that
carried an ``id``; RETRY never leaves pushd (it becomes GIVE_UP with the last reason).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from pushd.apns_errors import is_environment_mixup_candidate
from pushd.logs import short_token
from pushd.metrics import Metrics
from pushd.model import (
    Environment,
    Provider,
    ProviderName,
    PushKind,
    PushRequest,
    PushResult,
    Verdict,
)
from pushd.retry import RetryPolicy, fits_deadline, next_delay
from pushgate import pn_params, wire

log = logging.getLogger("pushd.dispatch")

ResultSink = Callable[[dict[str, Any]], None]
"""Where result messages go (``wire.Result.message()``: the Kamailio link's queue, an
HTTP API request, the refresher). Must not block."""

# pn_params names the RFC 8599 parameter; Kamailio's message names the JSON field.
_PN_FIELD = {"pn-provider": "provider", "pn-prid": "prid", "pn-param": "param"}


class BadPush(wire.WireError):
    """A push message field is missing or malformed; ``field`` names it."""


@dataclass(frozen=True, kw_only=True)
class RequestDefaults:
    """What the config decides for requests that do not say it themselves."""

    apns_environment: Environment = Environment.PRODUCTION
    """Environment for plain ``apns`` (``apns.dev`` always means sandbox)."""


def parse_push(msg: Mapping[str, Any] | wire.Push) -> wire.Push:
    """A push message as received (or already typed). Raises :class:`BadPush`."""
    if isinstance(msg, wire.Push):
        return msg
    try:
        return wire.parse_push(msg)
    except wire.WireError as exc:
        raise BadPush(exc.field, exc.reason) from None


def build_request(msg: Mapping[str, Any] | wire.Push, defaults: RequestDefaults) -> PushRequest:
    """Validate one ``push`` message into a request. Raises :class:`BadPush`."""
    push = parse_push(msg)
    pn = {}
    for name, fieldname in _PN_FIELD.items():
        value = getattr(push, fieldname)
        if value:
            pn[name] = value
    try:
        params = pn_params.parse(pn)
    except pn_params.PnError as exc:
        raise BadPush(_PN_FIELD.get(exc.param, exc.param), exc.reason) from exc
    if params is None:
        raise BadPush("provider", "missing")
    kind, deadline, data = push.kind, push.deadline, dict(push.data)
    if params.provider == ProviderName.APNS:
        # Calls go to PushKit (VoIP token, <bundle>.voip); the rest are user-visible alerts.
        service = "voip" if kind == PushKind.CALL else "remote"
        if params.environment_pinned:
            env = Environment.SANDBOX if params.sandbox else Environment.PRODUCTION
        else:
            env = defaults.apns_environment
        return PushRequest(
            provider=ProviderName.APNS,
            token=params.token_for(service),
            topic=params.apns_topic(service),
            kind=kind,
            deadline=deadline,
            data=data,
            environment=env,
            environment_pinned=params.environment_pinned,
        )
    if params.provider == ProviderName.WEBPUSH:
        return PushRequest(
            provider=ProviderName.WEBPUSH,
            token=params.prid,  # the push subscription URI (RFC 8599 §12)
            topic="",
            kind=kind,
            deadline=float(deadline),
            data=data,
        )
    return PushRequest(
        provider=ProviderName.FCM,
        token=params.prid,
        topic=params.param,  # the Firebase project ID
        kind=kind,
        deadline=deadline,
        data=data,
    )


class Dispatcher:
    """Runs pushes concurrently (bounded) and reports one result per push."""

    def __init__(
        self,
        providers: Mapping[ProviderName, Provider],
        send_result: ResultSink,
        *,
        defaults: RequestDefaults | None = None,
        policy: RetryPolicy | None = None,
        metrics: Metrics | None = None,
        max_in_flight: int = 1000,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._providers = dict(providers)
        self._send_result = send_result
        self._defaults = defaults or RequestDefaults()
        self._policy = policy or RetryPolicy()
        self.metrics = metrics or Metrics()
        self.metrics.in_flight.set_function(lambda: len(self._tasks))
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting = True
        self._config_errors_seen: set[tuple[str, str]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    def submit(self, msg: Mapping[str, Any] | wire.Push, sink: ResultSink | None = None) -> None:
        """Start working on one ``push`` (as received, or typed); returns at once, never raises.

        The result goes to ``sink`` when given (the HTTP API waits on its own pushes),
        else to the sink the dispatcher was built with (Kamailio).
        """
        started = time.monotonic()
        out = sink or self._send_result
        if not self._accepting:
            self._finish(msg, "unknown", _give_up("pushd is stopping"), 0, started, out)
            return
        # A flood must not turn into unbounded tasks: refuse at once instead of queueing,
        # so Kamailio can fail the call now rather than after the SIP timer.
        if len(self._tasks) >= self._max_in_flight:
            reason = f"overloaded: {len(self._tasks)} pushes in flight"
            self._finish(msg, "unknown", _give_up(reason), 0, started, out)
            return
        task = asyncio.get_running_loop().create_task(self._run(msg, started, out))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def stop_accepting(self) -> None:
        """Answer every later push with give_up at once (used while shutting down)."""
        self._accepting = False

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for in-flight pushes; True when none is left."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        return not self._tasks

    async def cancel_all(self) -> None:
        """Cancel what is still running; each cancelled push still reports give_up."""
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("push task crashed", exc_info=task.exception())

    async def _run(
        self, msg: Mapping[str, Any] | wire.Push, started: float, sink: ResultSink
    ) -> None:
        label, attempts = "unknown", 0
        try:
            msg = push = parse_push(msg)
            provider_name = _provider_name(push.provider)
            if provider_name is not None:
                label = provider_name.value
                if provider_name not in self._providers:
                    # Checked before the token so an unconfigured provider says just that.
                    result = _give_up(f"provider {label} not configured")
                    self._finish(push, label, result, 0, started, sink)
                    return
            request = build_request(push, self._defaults)
            provider = self._providers[request.provider]
            result, attempts = await self._attempt_until_deadline(provider, request, push.id)
        except BadPush as exc:
            result = _give_up(f"bad push: {exc}")
        except asyncio.CancelledError:
            stopped = _give_up("pushd stopped before the push completed")
            self._finish(msg, label, stopped, 0, started, sink)
            raise
        self._finish(msg, label, result, attempts, started, sink)

    async def _attempt_until_deadline(
        self, provider: Provider, request: PushRequest, push_id: str
    ) -> tuple[PushResult, int]:
        attempt = 0
        last: PushResult | None = None
        while True:
            now = self._clock()
            if now >= request.deadline:
                if last is None:
                    return _give_up("deadline passed before the first attempt"), attempt
                return replace(last, verdict=Verdict.GIVE_UP), attempt
            attempt += 1
            result = await self._attempt(provider, request, request.deadline - now)
            m = self.metrics
            m.child(m.attempts_total, request.provider, result.verdict).inc()
            if result.verdict != Verdict.RETRY:
                if may_be_environment_mixup(request, result):
                    return await self._try_other_environment(provider, request, result, attempt)
                return result, attempt
            last = result
            delay = next_delay(attempt, result.retry_after, self._policy, self._rng)
            if not fits_deadline(self._clock(), delay, request.deadline):
                return replace(result, verdict=Verdict.GIVE_UP), attempt
            log.debug(
                "push %s attempt %d: retry in %.3fs (%s)",
                push_id[:80],
                attempt,
                delay,
                result.reason,
            )
            await asyncio.sleep(delay)

    async def _try_other_environment(
        self, provider: Provider, request: PushRequest, first: PushResult, attempts: int
    ) -> tuple[PushResult, int]:
        """One attempt in the other APNs environment before a BadDeviceToken deletes the binding."""
        other = replace(request, environment=_other(request.environment))
        budget = request.deadline - self._clock()
        if budget <= 0:
            return environment_check_outcome(first, None), attempts
        second = await self._attempt(provider, other, budget)
        m = self.metrics
        m.child(m.attempts_total, request.provider, second.verdict).inc()
        if second.verdict == Verdict.DELIVERED:
            # The push got through, but every later one will pay a failed attempt first.
            log.warning(
                "APNs token %s is a %s token but was sent to %s: the binding's environment is "
                "wrong (app build vs pn-provider apns/apns.dev, or apns.environment)",
                short_token(request.token),
                other.environment,
                request.environment,
            )
        return environment_check_outcome(first, second), attempts + 1

    async def _attempt(self, provider: Provider, request: PushRequest, budget: float) -> PushResult:
        try:
            # A hung provider must not outlive the push: past the deadline it is useless.
            async with asyncio.timeout(budget):
                return await provider.send(request)
        except TimeoutError:
            return PushResult(verdict=Verdict.RETRY, reason="timeout")
        except Exception as exc:
            # Providers promise not to raise; if one does, treat it as transient but say so.
            log.exception("%s provider raised instead of returning a result", request.provider)
            return PushResult(verdict=Verdict.RETRY, reason=f"internal error: {exc!r}")

    def _finish(
        self,
        msg: Mapping[str, Any] | wire.Push,
        label: str,
        result: PushResult,
        attempts: int,
        started: float,
        sink: ResultSink,
    ) -> None:
        elapsed = time.monotonic() - started
        verdict = Verdict.GIVE_UP if result.verdict == Verdict.RETRY else result.verdict
        m = self.metrics
        m.child(m.pushes_total, label, verdict).inc()
        m.child(m.push_seconds, label).observe(elapsed)
        if verdict == Verdict.CONFIG_ERROR:
            self._config_error(label, result)
        echo = msg if isinstance(msg, wire.Push) else _Echo.of(msg)
        # Delivered pushes are the bulk and the metrics count them: DEBUG, or one INFO line
        # per push (formatted, filtered, written, flushed) costs a busy pushd 10-15 % CPU.
        # Failures stay WARNING. The check first spares building the arguments.
        level = logging.DEBUG if verdict == Verdict.DELIVERED else logging.WARNING
        if log.isEnabledFor(level):
            log.log(
                level,
                "push %r %s %s %s: %s status=%s reason=%s attempts=%d %.1fms",
                echo.id[:80],
                label,
                echo.kind,
                short_token(echo.prid),
                verdict.value,
                result.status,
                result.reason,
                attempts,
                elapsed * 1000,
            )
        if not echo.id:
            log.warning("push without an id: no result can be sent back")
            return
        answer = wire.Result(
            id=echo.id,
            verdict=verdict,
            status=result.status,
            reason=result.reason,
            aor=echo.aor,
            ruid=echo.ruid,
            attempts=attempts,
            ms=round(elapsed * 1000, 1),
        )
        sink(answer.message())

    def _config_error(self, label: str, result: PushResult) -> None:
        reason = result.reason
        self.metrics.config_errors_total.labels(label, reason or "").inc()  # rare: no cache
        key = (label, reason or "")
        if key in self._config_errors_seen:
            return
        self._config_errors_seen.add(key)
        # The hint comes from the provider's classifier (apns_errors / fcm_errors), the one
        # place that knows what each reason means; the generic sentence is a safety net.
        hint = result.hint or f"check the {label} section of the pushd config and its credentials"
        # Loud once: every later push would repeat it, and the counter keeps the tally.
        log.error(
            "CONFIGURATION ERROR from %s: %s -- %s (repeats are counted, not logged)",
            label,
            reason,
            hint,
        )


def may_be_environment_mixup(request: PushRequest, result: PushResult) -> bool:
    """Should this answer be checked in the other APNs environment before deleting?"""
    return (
        request.provider == ProviderName.APNS
        and not request.environment_pinned
        and result.verdict == Verdict.DELETE_TOKEN
        and is_environment_mixup_candidate(result.status, result.reason)
    )


def environment_check_outcome(first: PushResult, second: PushResult | None) -> PushResult:
    """The verdict once the other environment answered ``second`` (None: no time to ask).

    Deleting a binding is not undoable, so only a token both environments reject goes;
    anything inconclusive gives up on this push and keeps the binding.
    """
    if second is None:
        return replace(
            first,
            verdict=Verdict.GIVE_UP,
            reason=f"{first.reason}; no time left to try the other APNs environment",
        )
    if second.verdict == Verdict.DELIVERED:
        return second
    if second.verdict == Verdict.DELETE_TOKEN:
        return first  # dead in both: BadDeviceToken from the binding's own environment
    return replace(
        second,
        verdict=Verdict.GIVE_UP,
        reason=f"{first.reason}; other APNs environment inconclusive: {second.reason}",
    )


def _other(environment: Environment) -> Environment:
    if environment == Environment.PRODUCTION:
        return Environment.SANDBOX
    return Environment.PRODUCTION


def _give_up(reason: str) -> PushResult:
    return PushResult(verdict=Verdict.GIVE_UP, reason=reason)


def _provider_name(raw: object) -> ProviderName | None:
    if not isinstance(raw, str):
        return None
    try:
        name, _sandbox = pn_params.normalise_provider(raw)
    except pn_params.PnError:
        return None  # build_request will name the problem
    return ProviderName(name)


@dataclass(frozen=True)
class _Echo:
    """What a result echoes of a push that could not be parsed: its string fields only."""

    id: str
    kind: str
    prid: str
    aor: str
    ruid: str

    @classmethod
    def of(cls, msg: Mapping[str, Any]) -> _Echo:
        def text(name: str) -> str:
            value = msg.get(name)
            return value if isinstance(value, str) else ""

        return cls(text("id"), text("kind"), text("prid"), text("aor"), text("ruid"))
