"""APNs BadDeviceToken: the other environment is tried once before a binding is deleted."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from pushd.dispatch import (
    Dispatcher,
    RequestDefaults,
    environment_check_outcome,
    may_be_environment_mixup,
)
from pushd.model import Environment, ProviderName, PushKind, PushRequest, PushResult, Verdict
from pushd.retry import RetryPolicy

TOKEN = "a1" * 32
BAD = PushResult(verdict=Verdict.DELETE_TOKEN, status=400, reason="BadDeviceToken")
GONE = PushResult(verdict=Verdict.DELETE_TOKEN, status=410, reason="Unregistered")
OK = PushResult(verdict=Verdict.DELIVERED, status=200, provider_id="apns-id-1")
BUSY = PushResult(verdict=Verdict.RETRY, status=503, reason="ServiceUnavailable")


class ByEnvironment:
    """An APNs stand-in whose answer depends only on the environment it is sent to."""

    name = ProviderName.APNS

    def __init__(self, production: PushResult, sandbox: PushResult) -> None:
        self.answers = {Environment.PRODUCTION: production, Environment.SANDBOX: sandbox}
        self.sent: list[Environment] = []

    async def send(self, request: PushRequest) -> PushResult:
        self.sent.append(request.environment)
        return self.answers[request.environment]

    async def close(self) -> None:
        pass


def push(provider: str = "apns", deadline: float | None = None) -> dict[str, Any]:
    return {
        "type": "push",
        "id": "p-1",
        "kind": "call",
        "provider": provider,
        "prid": TOKEN,
        "param": "ABCDE12345.com.example.app.voip",
        "deadline": deadline if deadline is not None else time.time() + 5,
    }


def dispatch(provider: ByEnvironment, msg: dict[str, Any]) -> dict[str, Any]:
    async def scenario() -> dict[str, Any]:
        results: list[dict[str, Any]] = []
        dispatcher = Dispatcher(
            {ProviderName.APNS: provider},
            results.append,
            defaults=RequestDefaults(apns_environment=Environment.PRODUCTION),
            policy=RetryPolicy(initial_delay=0.01, max_delay=0.01, jitter=0.0),
        )
        dispatcher.submit(msg)
        assert await dispatcher.drain(5)
        (result,) = results
        return result

    return asyncio.run(scenario())


def test_sandbox_token_sent_to_production_is_delivered_in_sandbox(
    caplog: pytest.LogCaptureFixture,
) -> None:
    apns = ByEnvironment(production=BAD, sandbox=OK)
    with caplog.at_level(logging.WARNING, logger="pushd.dispatch"):
        result = dispatch(apns, push())
    assert apns.sent == [Environment.PRODUCTION, Environment.SANDBOX]
    assert (result["verdict"], result["status"], result["attempts"]) == ("delivered", 200, 2)
    warning = next(
        r.getMessage() for r in caplog.records if "environment is wrong" in r.getMessage()
    )
    assert "sandbox token but was sent to production" in warning
    assert TOKEN not in warning  # shortened, as everywhere in the logs


def test_bad_in_both_environments_deletes_the_token() -> None:
    apns = ByEnvironment(production=BAD, sandbox=BAD)
    result = dispatch(apns, push())
    assert apns.sent == [Environment.PRODUCTION, Environment.SANDBOX]
    assert (result["verdict"], result["reason"], result["attempts"]) == (
        "delete_token",
        "BadDeviceToken",
        2,
    )


def test_apns_dev_pins_sandbox_so_bad_token_is_deleted_at_once() -> None:
    apns = ByEnvironment(production=OK, sandbox=BAD)
    result = dispatch(apns, push(provider="apns.dev"))
    assert apns.sent == [Environment.SANDBOX]
    assert result["verdict"] == "delete_token" and result["attempts"] == 1


def test_unregistered_is_not_an_environment_question() -> None:
    apns = ByEnvironment(production=GONE, sandbox=OK)
    result = dispatch(apns, push())
    assert apns.sent == [Environment.PRODUCTION]
    assert result["verdict"] == "delete_token"


def test_inconclusive_other_environment_keeps_the_binding() -> None:
    apns = ByEnvironment(production=BAD, sandbox=BUSY)
    result = dispatch(apns, push())
    assert apns.sent == [Environment.PRODUCTION, Environment.SANDBOX]  # once, no retry loop
    assert result["verdict"] == "give_up"
    assert result["reason"].startswith("BadDeviceToken; other APNs environment inconclusive")


# -- the pure decisions ------------------------------------------------------------------


def request(**fields: Any) -> PushRequest:
    base: dict[str, Any] = {
        "provider": ProviderName.APNS,
        "token": TOKEN,
        "topic": "com.example.app.voip",
        "kind": PushKind.CALL,
        "deadline": 0.0,
    }
    return PushRequest(**{**base, **fields})


def test_only_unpinned_apns_bad_device_token_is_a_candidate() -> None:
    assert may_be_environment_mixup(request(), BAD)
    assert not may_be_environment_mixup(request(environment_pinned=True), BAD)
    assert not may_be_environment_mixup(request(provider=ProviderName.FCM), BAD)
    assert not may_be_environment_mixup(request(), GONE)
    assert not may_be_environment_mixup(request(), OK)


def test_no_time_for_the_check_gives_up_without_deleting() -> None:
    outcome = environment_check_outcome(BAD, None)
    assert outcome.verdict == Verdict.GIVE_UP and outcome.status == 400
    assert outcome.reason is not None and "no time left" in outcome.reason
