"""kemi/ outside Kamailio, on a stand-in KSR: what the cfg sees, held calls, verdicts."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit import fake_ksr

fake_ksr.install()

from kemi import capacity, held_calls, native, pushd_channel, pushing  # noqa: E402
from kemi.host import KemiHost, NativeHost, Route  # noqa: E402
from pushgate import wire  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ksr() -> Iterator[fake_ksr.FakeKSR]:
    yield fake_ksr.reset()


def cfg_blocks() -> set[str]:
    text = (REPO / "pushgate.cfg").read_text()
    return set(re.findall(r"^(?:failure_|onreply_)?route\[(\w+)\]", text, re.M))


def test_every_route_tm_calls_back_exists_as_a_native_block() -> None:
    # tm crashes Kamailio when a failure route named from Python has no native block.
    host = NativeHost()
    missing = {host.route_name(r) for r in Route} - cfg_blocks()
    assert missing == set()


def test_every_python_exec_of_the_include_has_a_method() -> None:
    text = (REPO / "pushgate.cfg").read_text()
    called = set(re.findall(r'python_exec\("(\w+)"', text))
    assert called and not {c for c in called if not callable(getattr(native.NativeEntry, c, 0))}


def test_kemi_route_names_are_methods_of_the_mixin() -> None:
    from kemi.api import PushgateRoutes

    host = KemiHost()
    assert all(callable(getattr(PushgateRoutes, host.route_name(r), None)) for r in Route)


@pytest.mark.parametrize("outcome", [True, False, None, "yes", 0, RuntimeError("boom")])
def test_python_exec_methods_never_return_zero_or_none(
    ksr: fake_ksr.FakeKSR, monkeypatch: pytest.MonkeyPatch, outcome: object
) -> None:
    # 0 ends the whole cfg script; None poisons the next python_exec of the process.
    entry = native.NativeEntry()

    def step() -> object:
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    for name in ("cancel", "trusted", "register", "registered", "location", "branch", "reply"):
        monkeypatch.setattr(entry.hooks, name, step)
        rc = getattr(entry, name)(None)
        assert rc in (1, -1), (name, rc)
        assert rc == (-1 if outcome is False else 1) or isinstance(outcome, Exception)


def test_a_failing_hook_logs_and_leaves_the_request_to_the_host(
    ksr: fake_ksr.FakeKSR, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = native.NativeEntry()

    def broken() -> bool:
        raise KeyError("x")

    monkeypatch.setattr(entry.hooks, "location", broken)
    assert entry.location(None) == -1  # "not handled": the host's lookup answers
    assert any("pushgate: location:" in text for level, text in ksr.log if level == "err")


def test_native_continuations_are_handed_to_the_cfg_one_by_one(ksr: fake_ksr.FakeKSR) -> None:
    host = NativeHost()
    host.continue_tx(7, 42, Route.RESUME)
    host.continue_tx(8, 43, Route.PUSH_FAILED)
    assert ksr.called("tmx", "t_continue") == []  # never from Python under a native cfg
    assert host.next_continue()
    assert (ksr.pvs["$var(pushgate_tindex)"], ksr.pvs["$var(pushgate_tlabel)"]) == (7, 42)
    assert ksr.pvs["$var(pushgate_troute)"] == "PUSHGATE_RESUME"
    assert host.next_continue()
    assert ksr.pvs["$var(pushgate_troute)"] == "PUSHGATE_PUSH_FAILED"
    assert not host.next_continue()


def test_kemi_host_continues_directly_into_the_mixin_method(ksr: fake_ksr.FakeKSR) -> None:
    KemiHost().continue_tx(3, 4, Route.CANCELLED)
    assert ksr.called("tmx", "t_continue") == [(3, 4, "ksr_pushgate_cancelled")]


HELD = held_calls.Held(aor="alice", uri="sip:alice@example.com", index=5, label=9)
TARGET = {
    "pushed": "1",
    "provider": "apns",
    "prid": "ab",
    "param": "T.b.voip",
    "ruid": "r1",
    "instance": "i",
}


def test_a_held_call_is_found_by_aor_and_call_id_and_claimed_once(
    ksr: fake_ksr.FakeKSR,
) -> None:
    held_calls.hold(HELD, "call-1", 30, [TARGET])
    assert held_calls.held_for_aor("alice") == ["5:9"]
    assert held_calls.for_callid("call-1") == HELD
    assert held_calls.targets(HELD) == [TARGET]
    assert held_calls.claim("5:9")
    assert not held_calls.claim("5:9")  # the REGISTER, CANCEL, verdict and timer race
    assert held_calls.held_for_aor("alice") == []
    held_calls.forget(HELD, "call-1")
    assert held_calls.for_callid("call-1") is None and held_calls.targets(HELD) == []


def test_two_calls_held_for_one_aor_are_kept_apart(ksr: fake_ksr.FakeKSR) -> None:
    other = held_calls.Held(aor="alice", uri=HELD.uri, index=6, label=1)
    held_calls.hold(HELD, "call-1", 30, [TARGET])
    held_calls.hold(other, "call-2", 30, [TARGET])
    assert held_calls.held_for_aor("alice") == ["5:9", "6:1"]
    held_calls.claim("5:9")
    assert held_calls.held_for_aor("alice") == ["6:1"]


def result(verdict: str, n: int = 0) -> wire.Result:
    return wire.Result(
        id=f"5:9:{n}",
        verdict=wire.Verdict(verdict),
        status=410 if verdict == "delete_token" else 200,
        reason=None,
        aor=HELD.uri,
        ruid="r1",
        ms=1.0,
    )


def sent(ksr: fake_ksr.FakeKSR, *push_ids: str) -> None:
    """These pushes went to pushd 3 and wait for its verdict."""
    ksr.tables.setdefault(pushing.OWNER, {}).update(dict.fromkeys(push_ids, "3"))


def test_a_failed_last_push_ends_the_held_call_and_a_dead_token_loses_its_binding(
    ksr: fake_ksr.FakeKSR,
) -> None:
    host = NativeHost()
    held_calls.hold(HELD, "call-1", 30, [TARGET, TARGET])
    sent(ksr, "5:9:0", "5:9:1")
    pushd_channel.on_result(host, "3", result("delete_token", 0))
    assert ksr.called("registrar", "unregister_ruid") == [("location", HELD.uri, "r1")]
    assert not host.pending  # one of two pushes still out: the call waits
    pushd_channel.on_result(host, "3", result("give_up", 1))
    assert list(host.pending) == [(5, 9, Route.PUSH_FAILED)]
    assert not held_calls.claim("5:9")  # taken by the verdict


def test_a_delivered_push_keeps_the_call_held(ksr: fake_ksr.FakeKSR) -> None:
    host = NativeHost()
    held_calls.hold(HELD, "call-1", 30, [TARGET])
    sent(ksr, "5:9:0")
    pushd_channel.on_result(host, "3", result("delivered"))
    assert not host.pending and held_calls.claim("5:9")


def test_a_register_queries_msilo_only_when_something_may_be_stored(
    ksr: fake_ksr.FakeKSR,
) -> None:
    from kemi import messages
    from kemi.settings import Settings

    uri = "sip:alice@example.com"
    messages.deliver_stored(uri)  # first REGISTER since start: look
    messages.deliver_stored(uri)  # nothing stored since: no database query
    assert ksr.called("msilo", "mdump_uri") == [(uri,)]
    messages.still_stored(Settings.from_cfg(), uri)  # a message stored or not taken
    messages.deliver_stored(uri)
    assert ksr.called("msilo", "mdump_uri") == [(uri,), (uri,)]


def test_a_call_is_held_only_while_the_shm_reserve_is_free(ksr: fake_ksr.FakeKSR) -> None:
    reserve = 16 * 2**20
    ksr.pvs["$stat(free_size)"] = 40 * 2**20
    assert not capacity.short_of_shm(reserve)
    ksr.pvs["$stat(free_size)"] = 15 * 2**20
    assert capacity.short_of_shm(reserve)
    assert not capacity.short_of_shm(0)  # PUSHGATE_SHM_RESERVE 0: off
    del ksr.pvs["$stat(free_size)"]
    assert not capacity.short_of_shm(reserve)  # no figure (no kex): never refuse


def test_each_held_call_keeps_room_for_its_wake_up(ksr: fake_ksr.FakeKSR) -> None:
    reserve, per_wake = 16 * 2**20, 25 * 2**10
    ksr.pvs["$stat(free_size)"] = reserve + 3 * per_wake + 1  # room for 3 wake-ups
    for n in range(2):
        held_calls.hold(held_calls.Held("u", "sip:u@h", n, 1), f"c{n}", 30, [TARGET])
    assert held_calls.count() == 2
    assert not capacity.short_of_shm(reserve, per_wake)  # the third call fits
    third = held_calls.Held("v", "sip:v@h", 2, 1)
    held_calls.hold(third, "c2", 30, [TARGET])
    assert capacity.short_of_shm(reserve, per_wake)  # a fourth would not
    # A call leaves the count once, however many of its endings race for it.
    assert held_calls.claim(third.tx_key)
    assert not held_calls.claim(third.tx_key)
    held_calls.forget(third, "c2")
    assert held_calls.count() == 2
    assert not capacity.short_of_shm(reserve, per_wake)
    held_calls.forget(held_calls.Held("u", "sip:u@h", 0, 1), "c0")
    held_calls.forget(held_calls.Held("u", "sip:u@h", 0, 1), "c0")
    held_calls.forget(held_calls.Held("x", "sip:x@h", 9, 9), "never-held")
    assert held_calls.count() == 1
    held_calls.claim("1:1")
    held_calls.claim("1:1")
    assert held_calls.count() == 0  # never below zero


def test_a_refused_call_gets_503_with_retry_after(ksr: fake_ksr.FakeKSR) -> None:
    ksr.pvs["$ci"] = "c1"
    capacity.refuse("alice", "shm")
    headers = [c[0] for c in ksr.called("hdr", "append_to_reply")]
    assert "Retry-After: 30\r\n" in headers
    assert ksr.called("sl", "sl_send_reply") == [(503, "Service Unavailable")]
    assert any("event=hold_refused" in text for _, text in ksr.log)


def test_push_counts_keep_their_window() -> None:
    """pushing.count() gives a key its window as expiry at the first push and then only
    increments it: with htable's default updateexpire=1 every increment would reset the
    expiry to the table's autoexpire (an hour), and a device stays at its limit."""
    cfg = (REPO / "pushgate.cfg").read_text()
    line = next(x for x in cfg.splitlines() if '"pushgate_rate=>' in x and "modparam" in x)
    assert "updateexpire=0" in line
