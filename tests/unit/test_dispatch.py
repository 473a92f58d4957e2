"""build_request (pure) and the Dispatcher's retry/verdict logic against scripted providers."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

import pytest

from pushd.apns_errors import classify_apns
from pushd.dispatch import BadPush, Dispatcher, RequestDefaults, build_request
from pushd.fcm_errors import classify_fcm
from pushd.model import (
    Environment,
    ProviderName,
    PushKind,
    PushRequest,
    PushResult,
    Verdict,
)
from pushd.retry import RetryPolicy

T = TypeVar("T")

VOIP_TOKEN = "a1" * 32
REMOTE_TOKEN = "b2" * 32
FCM_TOKEN = "dXNlcjpBUEE5MWJ" + "x" * 40
PROD = RequestDefaults()
FAST = RetryPolicy(initial_delay=0.01, max_delay=0.05, multiplier=2.0, jitter=0.0)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def push(**fields: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {
        "type": "push",
        "id": "p-1",
        "kind": "call",
        "provider": "apns",
        "prid": VOIP_TOKEN,
        "param": "ABCDE12345.com.example.app.voip",
        "aor": "sip:alice@example.com",
        "ruid": "ruid-1",
        "instance": "<urn:uuid:1>",
        "deadline": time.time() + 5.0,
        "data": {"call_id": "c1", "caller": "sip:bob@example.com"},
    }
    msg.update(fields)
    return {k: v for k, v in msg.items() if v is not _DROP}


_DROP = object()


# -- build_request ----------------------------------------------------------------------------


def test_apns_call_uses_voip_token_and_topic() -> None:
    req = build_request(push(deadline=1000.5), PROD)
    assert req == PushRequest(
        provider=ProviderName.APNS,
        token=VOIP_TOKEN,
        topic="com.example.app.voip",
        kind=PushKind.CALL,
        deadline=1000.5,
        data={"call_id": "c1", "caller": "sip:bob@example.com"},
        environment=Environment.PRODUCTION,
    )


@pytest.mark.parametrize("kind", ["message", "cancel", "missed", "refresh"])
def test_apns_other_kinds_use_the_bundle_topic(kind: str) -> None:
    req = build_request(push(kind=kind, param="ABCDE12345.com.example.app"), PROD)
    assert req.topic == "com.example.app" and req.kind == PushKind(kind)


def test_apns_dev_means_sandbox_whatever_the_default() -> None:
    assert build_request(push(provider="apns.dev"), PROD).environment == Environment.SANDBOX


def test_apns_prod_pins_production_even_when_the_default_is_sandbox() -> None:
    sandbox = RequestDefaults(apns_environment=Environment.SANDBOX)
    request = build_request(push(provider="apns.prod"), sandbox)
    assert request.environment == Environment.PRODUCTION and request.environment_pinned


def test_plain_apns_follows_the_configured_environment() -> None:
    sandbox = RequestDefaults(apns_environment=Environment.SANDBOX)
    assert build_request(push(), sandbox).environment == Environment.SANDBOX
    assert build_request(push(), PROD).environment == Environment.PRODUCTION


def test_linphone_multi_token_prid() -> None:
    msg = push(
        prid=f"{REMOTE_TOKEN}:remote&{VOIP_TOKEN}:voip",
        param="ABCDE12345.org.linphone.phone.remote&voip",
    )
    call = build_request(msg, PROD)
    assert (call.token, call.topic) == (VOIP_TOKEN, "org.linphone.phone.voip")
    message = build_request({**msg, "kind": "message"}, PROD)
    assert (message.token, message.topic) == (REMOTE_TOKEN, "org.linphone.phone")


def test_fcm_topic_is_the_project_id() -> None:
    req = build_request(push(provider="fcm", prid=FCM_TOKEN, param="my-project-42"), PROD)
    assert req.provider == ProviderName.FCM
    assert (req.token, req.topic, req.environment) == (
        FCM_TOKEN,
        "my-project-42",
        Environment.PRODUCTION,
    )


def test_missing_data_is_empty() -> None:
    assert build_request(push(data=_DROP), PROD).data == {}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"kind": "ring"}, "kind"),
        ({"kind": _DROP}, "kind"),
        ({"deadline": _DROP}, "deadline"),
        ({"deadline": "soon"}, "deadline"),
        ({"deadline": True}, "deadline"),
        # JSON from evapi may say Infinity / NaN (Python's json accepts both): an endless
        # retry loop, and APNs' int(deadline) would raise on every attempt.
        ({"deadline": float("inf")}, "deadline"),
        ({"deadline": float("nan")}, "deadline"),
        # An integer too big for a float: float() raised OverflowError, the push task
        # crashed and no result went back (found by tests/unit/test_hostile_wire.py).
        ({"deadline": 10**400}, "deadline"),
        ({"provider": "gcm"}, "provider"),
        ({"provider": _DROP, "prid": _DROP}, "provider"),
        ({"provider": _DROP}, "provider"),
        ({"prid": "not-hex!"}, "prid"),
        ({"prid": 1234}, "prid"),
        ({"prid": _DROP}, "prid"),
        ({"param": _DROP}, "param"),
        ({"param": "nodots"}, "param"),
        ({"provider": "fcm", "prid": FCM_TOKEN, "param": "Bad_Project"}, "param"),
        ({"provider": "fcm", "prid": "bad token!", "param": "my-project"}, "prid"),
        ({"data": ["a"]}, "data"),
        ({"data": {"n": 1}}, "data.n"),
    ],
)
def test_bad_fields_are_named(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(BadPush) as info:
        build_request(push(**fields), PROD)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


# -- Dispatcher -------------------------------------------------------------------------------

Step = PushResult | Callable[[], Awaitable[PushResult]]


class Scripted:
    """A Provider answering from a script; the last step repeats."""

    def __init__(self, name: ProviderName, steps: Sequence[Step]) -> None:
        self.name = name
        self.steps = list(steps)
        self.sends: list[tuple[float, PushRequest]] = []
        self.closed = False

    async def send(self, request: PushRequest) -> PushResult:
        self.sends.append((time.monotonic(), request))
        step = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        return step if isinstance(step, PushResult) else await step()

    async def close(self) -> None:
        self.closed = True


OK = PushResult(verdict=Verdict.DELIVERED, status=200, provider_id="apns-id-1")
RETRY_503 = PushResult(verdict=Verdict.RETRY, status=503, reason="ServiceUnavailable")
GONE = PushResult(verdict=Verdict.DELETE_TOKEN, status=410, reason="Unregistered")
NOT_FOR_TOPIC = PushResult(
    verdict=Verdict.CONFIG_ERROR,
    status=400,
    reason="DeviceTokenNotForTopic",
    hint=classify_apns(400, "DeviceTokenNotForTopic", topic="com.example.app.voip").hint,
)


def make(
    steps: Sequence[Step], name: ProviderName = ProviderName.APNS, **kw: Any
) -> tuple[Dispatcher, Scripted, list[dict[str, Any]]]:
    provider = Scripted(name, steps)
    results: list[dict[str, Any]] = []
    kw.setdefault("policy", FAST)
    dispatcher = Dispatcher({name: provider}, results.append, rng=random.Random(0), **kw)
    return dispatcher, provider, results


async def dispatch(dispatcher: Dispatcher, *msgs: dict[str, Any]) -> None:
    for msg in msgs:
        dispatcher.submit(msg)
    assert await dispatcher.drain(5.0)


def test_delivered_result_message() -> None:
    d, provider, results = make([OK])
    run(dispatch(d, push()))
    (result,) = results
    ms = result.pop("ms")
    assert result == {
        "type": "result",
        "id": "p-1",
        "verdict": "delivered",
        "status": 200,
        "reason": None,
        "aor": "sip:alice@example.com",
        "ruid": "ruid-1",
        "attempts": 1,
    }
    assert isinstance(ms, float) and 0 <= ms < 1000
    assert provider.sends[0][1].topic == "com.example.app.voip"
    assert d.metrics.value("pushd_pushes_total", provider="apns", verdict="delivered") == 1
    assert d.metrics.value("pushd_push_seconds_count", provider="apns") == 1


def test_retry_then_success() -> None:
    d, provider, results = make([RETRY_503, RETRY_503, OK])
    run(dispatch(d, push()))
    assert results[0]["verdict"] == "delivered" and results[0]["attempts"] == 3
    assert len(provider.sends) == 3
    assert d.metrics.value("pushd_push_attempts_total", provider="apns", verdict="retry") == 2


def test_retry_after_is_honoured() -> None:
    slow_down = PushResult(
        verdict=Verdict.RETRY, status=429, reason="TooManyRequests", retry_after=0.15
    )
    d, provider, results = make([slow_down, OK])
    run(dispatch(d, push()))
    assert results[0]["verdict"] == "delivered"
    (t1, _), (t2, _) = provider.sends
    assert t2 - t1 >= 0.15


def test_deadline_stops_retries_and_keeps_the_last_reason() -> None:
    d, provider, results = make([RETRY_503])
    started = time.monotonic()
    run(dispatch(d, push(deadline=time.time() + 0.3)))
    elapsed = time.monotonic() - started
    (result,) = results
    assert result["verdict"] == "give_up"
    assert (result["status"], result["reason"]) == (503, "ServiceUnavailable")
    assert 2 <= result["attempts"] == len(provider.sends) <= 12
    assert elapsed < 0.3
    assert d.metrics.value("pushd_pushes_total", provider="apns", verdict="give_up") == 1


def test_retry_after_beyond_the_deadline_gives_up_at_once() -> None:
    later = PushResult(verdict=Verdict.RETRY, status=429, reason="TooManyRequests", retry_after=60)
    d, _provider, results = make([later])
    started = time.monotonic()
    run(dispatch(d, push(deadline=time.time() + 2.0)))
    assert time.monotonic() - started < 0.5
    assert results[0]["verdict"] == "give_up" and results[0]["attempts"] == 1
    assert results[0]["reason"] == "TooManyRequests"


def test_deadline_already_past_sends_nothing() -> None:
    d, provider, results = make([OK])
    run(dispatch(d, push(deadline=time.time() - 1)))
    assert provider.sends == []
    assert results[0]["verdict"] == "give_up" and results[0]["attempts"] == 0


def test_delete_token_passes_through_without_retry() -> None:
    d, _provider, results = make([GONE])
    run(dispatch(d, push()))
    assert results[0]["verdict"] == "delete_token"
    assert (results[0]["status"], results[0]["reason"], results[0]["attempts"]) == (
        410,
        "Unregistered",
        1,
    )
    assert results[0]["ruid"] == "ruid-1"


def test_config_error_is_logged_once_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    other = PushResult(
        verdict=Verdict.CONFIG_ERROR,
        status=403,
        reason="InvalidProviderToken",
        hint=classify_apns(403, "InvalidProviderToken").hint,
    )
    d, _provider, results = make([NOT_FOR_TOPIC, NOT_FOR_TOPIC, NOT_FOR_TOPIC, other])
    with caplog.at_level(logging.ERROR, logger="pushd.dispatch"):
        run(dispatch(d, push(id="1"), push(id="2"), push(id="3")))
        run(dispatch(d, push(id="4")))
    assert [r["verdict"] for r in results] == ["config_error"] * 4
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "DeviceTokenNotForTopic" in errors[0].getMessage()
    assert NOT_FOR_TOPIC.hint is not None
    assert NOT_FOR_TOPIC.hint in errors[0].getMessage()  # the classifier's hint, verbatim
    assert "'com.example.app.voip'" in errors[0].getMessage()
    assert "key_id" in errors[1].getMessage()
    assert (
        d.metrics.value(
            "pushd_config_errors_total", provider="apns", reason="DeviceTokenNotForTopic"
        )
        == 3
    )


def test_fcm_config_error_logs_one_error_line_with_the_classifier_hint(
    caplog: pytest.LogCaptureFixture,
) -> None:
    verdict = classify_fcm(
        403,
        {
            "error": {
                "status": "PERMISSION_DENIED",
                "details": [
                    {
                        "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                        "errorCode": "SENDER_ID_MISMATCH",
                    }
                ],
            }
        },
        None,
    )
    mismatch = PushResult(
        verdict=verdict.verdict, status=403, reason=verdict.reason, hint=verdict.hint
    )
    d, _provider, results = make([mismatch], name=ProviderName.FCM)
    fcm_push = {"provider": "fcm", "prid": FCM_TOKEN, "param": "my-project"}
    with caplog.at_level(logging.DEBUG, logger="pushd"):
        run(dispatch(d, push(id="1", **fcm_push), push(id="2", **fcm_push)))
    assert [r["verdict"] for r in results] == ["config_error"] * 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "SENDER_ID_MISMATCH" in errors[0]
    assert "another Firebase project" in errors[0]


def test_config_error_without_a_hint_gets_a_generic_one(caplog: pytest.LogCaptureFixture) -> None:
    bare = PushResult(verdict=Verdict.CONFIG_ERROR, status=403, reason="SomethingNew")
    d, _provider, _results = make([bare])
    with caplog.at_level(logging.ERROR, logger="pushd.dispatch"):
        run(dispatch(d, push()))
    [error] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "SomethingNew -- check the apns section of the pushd config" in error


def test_delivered_pushes_log_at_debug_failures_at_warning_all_are_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    d, _provider, results = make([OK, GONE])
    with caplog.at_level(logging.DEBUG, logger="pushd.dispatch"):
        run(dispatch(d, push(id="ok")))
        run(dispatch(d, push(id="gone")))
    assert [r["verdict"] for r in results] == ["delivered", "delete_token"]
    lines = {r.getMessage().split(":")[0]: r.levelno for r in caplog.records}
    assert lines[f"push 'ok' apns call {VOIP_TOKEN[:8]}…(64)"] == logging.DEBUG
    assert lines[f"push 'gone' apns call {VOIP_TOKEN[:8]}…(64)"] == logging.WARNING
    assert d.metrics.value("pushd_pushes_total", provider="apns", verdict="delivered") == 1
    assert d.metrics.value("pushd_pushes_total", provider="apns", verdict="delete_token") == 1


def test_at_info_a_delivered_push_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    d, _provider, results = make([OK])
    with caplog.at_level(logging.INFO, logger="pushd.dispatch"):
        run(dispatch(d, push()))
    assert results[0]["verdict"] == "delivered"
    assert [r for r in caplog.records if r.name == "pushd.dispatch"] == []


def test_unconfigured_provider_gives_up_at_once() -> None:
    d, provider, results = make([OK])  # apns only
    run(dispatch(d, push(provider="fcm", prid=FCM_TOKEN, param="my-project")))
    assert results[0]["verdict"] == "give_up"
    assert results[0]["reason"] == "provider fcm not configured"
    assert results[0]["attempts"] == 0 and provider.sends == []


def test_bad_push_is_answered_with_the_field() -> None:
    d, provider, results = make([OK])
    run(dispatch(d, push(prid="zz")))
    assert results[0]["verdict"] == "give_up" and results[0]["id"] == "p-1"
    assert results[0]["reason"].startswith("bad push: prid: ")
    assert provider.sends == []


def test_push_without_id_gets_no_result(caplog: pytest.LogCaptureFixture) -> None:
    d, _provider, results = make([OK])
    with caplog.at_level(logging.WARNING, logger="pushd.dispatch"):
        run(dispatch(d, push(id=_DROP)))
    assert results == [] and "no result" in caplog.text


def test_hung_provider_is_cut_at_the_deadline() -> None:
    async def hang() -> PushResult:
        await asyncio.sleep(60)
        return OK

    d, _provider, results = make([hang])
    started = time.monotonic()
    run(dispatch(d, push(deadline=time.time() + 0.2)))
    assert time.monotonic() - started < 1.0
    assert results[0]["verdict"] == "give_up" and results[0]["reason"] == "timeout"


def test_provider_exception_is_retried_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    async def boom() -> PushResult:
        raise RuntimeError("bug")

    d, _provider, results = make([boom, OK])
    with caplog.at_level(logging.ERROR):
        run(dispatch(d, push()))
    assert results[0]["verdict"] == "delivered" and results[0]["attempts"] == 2
    assert "raised instead of returning" in caplog.text


def test_flood_is_refused_beyond_max_in_flight() -> None:
    async def scenario() -> list[dict[str, Any]]:
        gate = asyncio.Event()

        async def wait_gate() -> PushResult:
            await gate.wait()
            return OK

        d, _provider, results = make([wait_gate], max_in_flight=2)
        for i in range(3):
            d.submit(push(id=str(i)))
        assert d.in_flight == 2
        assert [(r["id"], r["verdict"]) for r in results] == [("2", "give_up")]
        assert results[0]["reason"].startswith("overloaded")
        gate.set()
        assert await d.drain(1.0)
        return results

    results = run(scenario())
    assert sorted(r["verdict"] for r in results) == ["delivered", "delivered", "give_up"]


def test_stopping_refuses_new_and_cancels_running_pushes() -> None:
    async def scenario() -> list[dict[str, Any]]:
        async def forever() -> PushResult:
            await asyncio.sleep(60)
            return OK

        d, _provider, results = make([forever])
        d.submit(push(id="running"))
        await asyncio.sleep(0.01)
        d.stop_accepting()
        d.submit(push(id="late"))
        assert not await d.drain(0.05)
        await d.cancel_all()
        assert d.in_flight == 0
        return results

    results = {r["id"]: r for r in run(scenario())}
    assert results["late"]["reason"] == "pushd is stopping"
    assert results["running"]["verdict"] == "give_up"
    assert "stopped" in results["running"]["reason"]


def test_tokens_are_truncated_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    d, _provider, _results = make([OK, GONE])
    with caplog.at_level(logging.DEBUG, logger="pushd.dispatch"):  # delivered logs at DEBUG
        run(dispatch(d, push(id="1"), push(id="2")))
    assert VOIP_TOKEN[:8] in caplog.text and VOIP_TOKEN not in caplog.text
