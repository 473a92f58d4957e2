"""Several pushd on one Kamailio (kemi/pushing.py, kemi/pushd_channel.py): each push goes
to one of them, a pushd that closes or stops acking hands its pushes to another, and the
first verdict on a push wins."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.unit import fake_ksr

fake_ksr.install()

from kemi import held_calls, pushd_channel, pushing  # noqa: E402
from kemi.host import NativeHost, Route  # noqa: E402
from kemi.settings import Settings  # noqa: E402
from pushgate import wire  # noqa: E402
from pushgate.decision import Binding  # noqa: E402

HELD = held_calls.Held(aor="alice", uri="sip:alice@example.com", index=5, label=9)


def target(n: int) -> dict[str, str]:
    return {
        "pushed": "1",
        "provider": "apns",
        "prid": f"{n:064x}",
        "param": "ABCDE12345.com.example.app.voip",
        "ruid": f"r{n}",
        "instance": f"<urn:uuid:00000000-0000-4000-8000-{n:012d}>",
    }


@pytest.fixture
def ksr() -> fake_ksr.FakeKSR:
    ksr = fake_ksr.reset()
    ksr.pvs.update({"$def(PUSHGATE_SECRET)": "s3cret", "$ci": "call-1", "$fu": "sip:bob@b"})
    return ksr


def hello(ksr: fake_ksr.FakeKSR, conidx: str, version: int = wire.VERSION) -> None:
    event(ksr, conidx, wire.Hello(secret="s3cret", agent="t", version=version).message())


def event(ksr: fake_ksr.FakeKSR, conidx: str, message: dict[str, Any] | None) -> None:
    ksr.pvs["$evapi(conidx)"] = conidx
    if message is None:
        pushd_channel.on_event(Settings.from_cfg(), NativeHost(), "evapi:connection-closed")
        return
    ksr.pvs["$evapi(msg)"] = wire.encode(message)
    pushd_channel.on_event(Settings.from_cfg(), NativeHost(), "evapi:message-received")


def pushes(ksr: fake_ksr.FakeKSR) -> list[tuple[str, str]]:
    """(push id, evapi tag) of every push unicast so far."""
    out = []
    for text, tag in ksr.called("evapi", "relay_unicast"):
        msg = wire.decode(text)
        if msg["type"] == "push":
            out.append((msg["id"], tag))
    return out


def events(ksr: fake_ksr.FakeKSR, name: str) -> list[str]:
    return [text for level, text in ksr.log if f"event={name} " in text]


def call(ksr: fake_ksr.FakeKSR, n: int) -> None:
    targets = [target(i) for i in range(n)]
    held_calls.hold(HELD, "call-1", 30, targets)
    pushing.send_calls(Settings.from_cfg(), HELD, targets)


def test_each_push_goes_to_one_pushd_and_they_share_the_pushes(ksr: fake_ksr.FakeKSR) -> None:
    hello(ksr, "1")
    hello(ksr, "2")
    call(ksr, 8)
    sent = pushes(ksr)
    assert sorted(i for i, _ in sent) == [f"5:9:{n}" for n in range(8)]  # once each
    assert {tag for _, tag in sent} == {"pushd1", "pushd2"}
    assert ksr.called("evapi", "relay_multicast") == []


def test_a_closed_pushd_hands_its_unanswered_pushes_to_another_at_once(
    ksr: fake_ksr.FakeKSR,
) -> None:
    hello(ksr, "1")
    hello(ksr, "2")
    call(ksr, 8)
    on_1 = sorted(i for i, tag in pushes(ksr) if tag == "pushd1")
    answered = on_1[0]
    event(ksr, "1", wire.Result(id=answered, verdict=wire.Verdict.DELIVERED).message())
    before = len(pushes(ksr))
    event(ksr, "1", None)
    moved = pushes(ksr)[before:]
    assert sorted(i for i, _ in moved) == on_1[1:]  # not the answered one
    assert {tag for _, tag in moved} == {"pushd2"}
    assert events(ksr, "push_resent") and f"count={len(on_1) - 1}" in events(ksr, "push_resent")[0]


def test_a_pushd_that_stops_acking_is_passed_over_and_its_pushes_taken_over(
    ksr: fake_ksr.FakeKSR,
) -> None:
    hello(ksr, "1")
    hello(ksr, "2")
    call(ksr, 8)
    on = {tag: sorted(i for i, t in pushes(ksr) if t == tag) for tag in ("pushd1", "pushd2")}
    for push_id in on["pushd2"]:
        event(ksr, "2", wire.Ack(id=push_id).message())
    pushing.ack_timer()  # within ACK_WAIT: nothing happens
    assert len(pushes(ksr)) == 8
    for push_id in ksr.tables[pushing.UNACKED]:
        ksr.tables[pushing.UNACKED][push_id] = f"{time.time() - pushing.ACK_WAIT - 0.1:.3f}"
    pushing.ack_timer()
    moved = pushes(ksr)[8:]
    assert sorted(i for i, _ in moved) == on["pushd1"]
    assert {tag for _, tag in moved} == {"pushd2"}
    assert len(events(ksr, "pushd_hung")) == 1
    assert len(events(ksr, "push_taken_over")) == len(on["pushd1"])
    # New pushes pass the hung one over...
    held = held_calls.Held(aor="bob", uri="sip:bob@example.com", index=6, label=1)
    held_calls.hold(held, "call-2", 30, [target(20)])
    pushing.send_calls(Settings.from_cfg(), held, [target(20), target(21), target(22)])
    assert {tag for _, tag in pushes(ksr)[len(on["pushd1"]) + 8 :]} == {"pushd2"}
    # ...until it speaks again (SIGCONT): its ack brings it back.
    event(ksr, "1", wire.Ack(id=on["pushd1"][0]).message())
    assert len(events(ksr, "pushd_resumed")) == 1
    assert pushing.choose("x", avoid="2") == "1"


def test_the_first_verdict_wins_and_a_late_one_is_counted_and_dropped(
    ksr: fake_ksr.FakeKSR,
) -> None:
    hello(ksr, "1")
    hello(ksr, "2")
    targets = [target(0)]
    held_calls.hold(HELD, "call-1", 30, targets)
    pushing.send_calls(Settings.from_cfg(), HELD, targets)
    ((push_id, first),) = pushes(ksr)
    other = "1" if first == "pushd2" else "2"
    event(ksr, other, wire.Result(id=push_id, verdict=wire.Verdict.DELIVERED).message())
    gone = wire.Result(id=push_id, verdict=wire.Verdict.DELETE_TOKEN, aor=HELD.uri, ruid="r0")
    event(ksr, first[-1], gone.message())
    assert len(events(ksr, "push_result_late")) == 1
    assert ksr.called("registrar", "unregister_ruid") == []  # the first word stood


def test_a_pushd_without_acks_is_never_taken_for_hung(ksr: fake_ksr.FakeKSR) -> None:
    hello(ksr, "1", version=2)
    call(ksr, 2)
    assert len(pushes(ksr)) == 2 and not ksr.tables.get(pushing.UNACKED)


def test_with_every_pushd_gone_a_push_waits_for_the_next_one(ksr: fake_ksr.FakeKSR) -> None:
    hello(ksr, "1")
    call(ksr, 2)
    event(ksr, "1", None)
    assert len(pushes(ksr)) == 2  # nobody to give them to
    hello(ksr, "4")
    assert sorted(pushes(ksr)[2:]) == [("5:9:0", "pushd4"), ("5:9:1", "pushd4")]
    host = NativeHost()
    for n in range(2):
        ksr.pvs["$evapi(conidx)"] = "4"
        pushd_channel.on_result(
            host, "4", wire.Result(id=f"5:9:{n}", verdict=wire.Verdict.GIVE_UP, ruid=f"r{n}")
        )
    assert list(host.pending) == [(5, 9, Route.PUSH_FAILED)]


def test_a_malformed_ack_is_named_and_changes_nothing(ksr: fake_ksr.FakeKSR) -> None:
    hello(ksr, "1")
    call(ksr, 1)
    event(ksr, "1", {"type": "ack", "id": "5:9:00"})  # not the id Kamailio wrote
    assert any("id: expected" in text for level, text in ksr.log if level == "err")
    assert list(ksr.tables[pushing.UNACKED]) == ["5:9:0"]  # still waits for its ack
    assert ksr.called("evapi", "close") == []  # an authenticated pushd keeps its link


# -- cancel / missed-call notices ---------------------------------------------------------


def asleep(n: int) -> list[Binding]:
    return [
        Binding(
            ruid=t["ruid"],
            uri="sip:a@192.0.2.1",
            instance=t["instance"],
            transport="tcp",
            alive=False,
            push=None,
        )
        for t in (target(i) for i in range(n))
    ]


def notify(ksr: fake_ksr.FakeKSR, monkeypatch: pytest.MonkeyPatch, n: int) -> list[str]:
    """The call ends (cancelled) with its n pushed devices asleep: the notices' ids."""
    monkeypatch.setattr(pushing.ksr_bindings, "fetch", lambda aor: ("alice", asleep(n)))
    before = len(pushes(ksr))
    pushing.send_notices(Settings.from_cfg(), HELD, wire.PushKind.CANCEL)
    return [i for i, _ in pushes(ksr)[before:]]


def kinds(ksr: fake_ksr.FakeKSR, since: int) -> list[tuple[str, str, str]]:
    """(id, kind, tag) of the pushes unicast after the first ``since``."""
    out = []
    for text, tag in ksr.called("evapi", "relay_unicast"):
        msg = wire.decode(text)
        if msg["type"] == "push":
            out.append((msg["id"], msg["kind"], tag))
    return out[since:]


def test_notices_of_a_closed_pushd_go_to_another_at_once_and_only_them(
    ksr: fake_ksr.FakeKSR, monkeypatch: pytest.MonkeyPatch
) -> None:
    hello(ksr, "1")
    hello(ksr, "2")
    call(ksr, 8)  # call pushes 5:9:0..7, none answered yet
    pending = len(ksr.tables[held_calls.PENDING])
    notices = notify(ksr, monkeypatch, 8)
    # Numbered after the call's pushes: each keeps its own holder and verdict.
    assert sorted(notices) == sorted(f"5:9:{n}" for n in range(8, 16))
    on_1 = sorted(i for i, tag in pushes(ksr)[8:] if tag == "pushd1")
    assert on_1, "no notice hashed to pushd1 (8 ids): nothing tested"
    before = len(pushes(ksr))
    event(ksr, "1", None)
    moved = kinds(ksr, before)
    # Its notices, to the other pushd; not the cancelled call's VoIP pushes.
    assert sorted(i for i, _, _ in moved) == on_1
    assert {(k, tag) for _, k, tag in moved} == {("cancel", "pushd2")}
    assert f"count={len(on_1)}" in events(ksr, "push_resent")[0]
    # Re-sending held nothing: no call's outstanding push count changed.
    assert len(ksr.tables[held_calls.PENDING]) == pending


def test_a_notice_not_acked_is_taken_over_after_the_ack_wait(
    ksr: fake_ksr.FakeKSR, monkeypatch: pytest.MonkeyPatch
) -> None:
    hello(ksr, "1")
    hello(ksr, "2")
    call(ksr, 8)
    for n in range(8):  # every call push answered: only the notices are in flight
        holder = "1" if (f"5:9:{n}", "pushd1") in pushes(ksr) else "2"
        event(ksr, holder, wire.Result(id=f"5:9:{n}", verdict=wire.Verdict.DELIVERED).message())
    assert not ksr.tables[pushing.OUTBOX]
    notices = notify(ksr, monkeypatch, 8)
    assert set(ksr.tables[pushing.OUTBOX]) == set(notices)
    on = {tag: sorted(i for i, t in pushes(ksr)[8:] if t == tag) for tag in ("pushd1", "pushd2")}
    assert on["pushd1"] and on["pushd2"], on
    for push_id in on["pushd2"]:
        event(ksr, "2", wire.Ack(id=push_id).message())
    for push_id in ksr.tables[pushing.UNACKED]:
        ksr.tables[pushing.UNACKED][push_id] = f"{time.time() - pushing.ACK_WAIT - 0.1:.3f}"
    before = len(pushes(ksr))
    pushing.ack_timer()
    moved = kinds(ksr, before)
    assert sorted(i for i, _, _ in moved) == on["pushd1"]
    assert {(k, tag) for _, k, tag in moved} == {("cancel", "pushd2")}
    assert len(events(ksr, "push_taken_over")) == len(on["pushd1"])
    # Their verdicts end them: nothing is left to re-send.
    for push_id in notices:
        event(ksr, "2", wire.Result(id=push_id, verdict=wire.Verdict.DELIVERED).message())
    assert not ksr.tables[pushing.OUTBOX]


def test_a_notice_past_its_ttl_is_not_sent_again(
    ksr: fake_ksr.FakeKSR, monkeypatch: pytest.MonkeyPatch
) -> None:
    hello(ksr, "1")
    hello(ksr, "2")
    call(ksr, 8)
    notify(ksr, monkeypatch, 8)
    ttl = Settings.from_cfg().notice_ttl
    later = time.time() + ttl + 1
    monkeypatch.setattr(pushing.time, "time", lambda: later)
    before = len(pushes(ksr))
    event(ksr, "1", None)
    assert pushes(ksr)[before:] == []
