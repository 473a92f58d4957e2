"""The channel contract: what one end writes, the other end reads as meant.

Each message is produced by the real code of one side and read by the real code of the
other: Kamailio's side (``kemi/``, on the stand-in KSR) relays pushes and welcomes through
``KSR.evapi``; pushd's side (``pushd.kamailio_link``, ``pushd.dispatch``,
``pushd.refresh``) writes netstring frames. evapi strips or adds the frame in between; the
tests do the same. A hypothesis property closes the loop for any field values.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.unit import fake_ksr

fake_ksr.install()

from kemi import held_calls, messages, pushd_channel, pushing  # noqa: E402
from kemi.host import NativeHost, Route  # noqa: E402
from kemi.settings import Settings  # noqa: E402
from pushd import netstring  # noqa: E402
from pushd.dispatch import Dispatcher, RequestDefaults, build_request  # noqa: E402
from pushd.kamailio_link import KamailioLink  # noqa: E402
from pushd.model import ProviderName, PushRequest, PushResult, Verdict  # noqa: E402
from pushd.refresh import BindingRow, due_refreshes  # noqa: E402
from pushd.refresh import push_message as refresh_push  # noqa: E402
from pushgate import wire  # noqa: E402
from pushgate.decision import Binding  # noqa: E402
from pushgate.pn_params import parse_uri  # noqa: E402
from tests.unit import hostile  # noqa: E402

SECRET = "contract-secret"
TOKEN = "0f" * 32
NOW = time.time()
HELD = held_calls.Held(aor="alice", uri="sip:alice@example.com", index=5, label=9)
TARGET = {
    "pushed": "1",
    "provider": "apns",
    "prid": TOKEN,
    "param": "ABCDE12345.com.example.app.voip",
    "ruid": "r1",
    "instance": "<urn:uuid:00000000-0000-4000-8000-000000000001>",
}


@pytest.fixture
def ksr() -> fake_ksr.FakeKSR:
    ksr = fake_ksr.reset()
    ksr.pvs.update({"$def(PUSHGATE_SECRET)": SECRET, "$ci": "call-1", "$fu": "sip:bob@b"})
    return ksr


def relayed(ksr: fake_ksr.FakeKSR, function: str) -> list[dict[str, Any]]:
    """What kemi handed to evapi, as pushd's decoder reads it after evapi framed it."""
    out: list[dict[str, Any]] = []
    for text, _tag in ksr.called("evapi", function):
        payload = text.encode()
        out += netstring.Decoder().feed(b"%d:%s," % (len(payload), payload))
    return out


def connected(ksr: fake_ksr.FakeKSR, conidx: str = "3") -> None:
    """pushd ``conidx`` said hello (protocol 3: it acks)."""
    ksr.tables.setdefault(pushing.PUSHD, {}).update(
        {"c" + conidx: 1, "a" + conidx: 1, "live": conidx, "all": conidx}
    )


def to_kamailio(ksr: fake_ksr.FakeKSR, frame: bytes, conidx: str = "3") -> None:
    """One frame pushd wrote, through evapi (which strips the netstring) into kemi."""
    length, _, rest = frame.partition(b":")
    assert rest[int(length)] == ord(",")
    ksr.pvs["$evapi(conidx)"] = conidx
    ksr.pvs["$evapi(msg)"] = rest[: int(length)].decode()
    pushd_channel.on_event(Settings.from_cfg(), NativeHost(), "evapi:message-received")


class Answering:
    """A provider that answers every push with one result."""

    name = ProviderName.APNS

    def __init__(self, result: PushResult) -> None:
        self.result = result
        self.requests: list[PushRequest] = []

    async def send(self, request: PushRequest) -> PushResult:
        self.requests.append(request)
        return self.result

    async def close(self) -> None:
        return None


def dispatch(
    msgs: list[dict[str, Any]] | list[wire.Push], result: PushResult
) -> tuple[list[PushRequest], list[bytes]]:
    """pushd's dispatcher on these pushes: the requests providers got, the frames written."""
    provider = Answering(result)
    frames: list[bytes] = []

    async def run() -> None:
        dispatcher = Dispatcher(
            {ProviderName.APNS: provider},
            lambda m: frames.append(netstring.encode(m)),
            rng=random.Random(0),
        )
        for msg in msgs:
            dispatcher.submit(msg)
        assert await dispatcher.drain(5.0)

    asyncio.run(run())
    return provider.requests, frames


# -- hello and welcome --------------------------------------------------------------------------


def test_pushds_hello_is_accepted_by_kamailio_and_its_welcome_read_by_pushd(
    ksr: fake_ksr.FakeKSR,
) -> None:
    async def first_frame() -> bytes:
        got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b":")
            got.set_result(head + await reader.readexactly(int(head[:-1]) + 1))
            writer.close()

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        link = KamailioLink(host="127.0.0.1", port=port, secret=SECRET, on_push=lambda m: None)
        task = asyncio.create_task(link.run())
        try:
            async with asyncio.timeout(5):
                return await got
        finally:
            await link.close(0)
            await task
            server.close()

    hello = asyncio.run(first_frame())
    ksr.tables[pushing.PUSHD] = {"c9": 1}  # another pushd is up: no outbox to resend
    to_kamailio(ksr, hello)
    assert ksr.called("evapi", "set_tag") == [("pushd3",)]  # its own: pushes go to one
    assert ksr.called("evapi", "close") == []
    (welcome,) = relayed(ksr, "relay_unicast")
    assert wire.parse_welcome(welcome) == wire.Welcome(version=wire.VERSION)
    assert welcome["type"] == wire.MessageType.WELCOME


def test_a_hello_with_another_secret_is_refused(ksr: fake_ksr.FakeKSR) -> None:
    to_kamailio(ksr, netstring.encode(wire.Hello(secret="guess", agent="x").message()))
    assert ksr.called("evapi", "close") == [()]
    assert ksr.called("evapi", "set_tag") == []


# -- Kamailio -> pushd: pushes ------------------------------------------------------------------


def test_kamailios_call_pushes_are_read_by_pushd_and_its_results_end_the_call(
    ksr: fake_ksr.FakeKSR,
) -> None:
    settings = Settings.from_cfg()
    targets = [TARGET, {**TARGET, "ruid": "r2"}]
    held_calls.hold(HELD, "call-1", 30, targets)
    connected(ksr)
    pushing.send_calls(settings, HELD, targets)
    pushes = relayed(ksr, "relay_unicast")
    assert [tag for _, tag in ksr.called("evapi", "relay_unicast")] == ["pushd3", "pushd3"]
    assert [p["id"] for p in pushes] == ["5:9:0", "5:9:1"]
    gone = PushResult(verdict=Verdict.DELETE_TOKEN, status=410, reason="Unregistered")
    requests, frames = dispatch(pushes, gone)
    assert [r.token for r in requests] == [TOKEN, TOKEN]
    assert {r.topic for r in requests} == {"com.example.app.voip"}
    assert all(r.data["call_id"] == "call-1" for r in requests)
    host = NativeHost()
    for frame in frames:
        ksr.pvs["$evapi(conidx)"] = "3"
        ksr.tables.setdefault(pushing.PUSHD, {})["c3"] = 1  # the hello came first
        length, _, rest = frame.partition(b":")
        ksr.pvs["$evapi(msg)"] = rest[: int(length)].decode()
        pushd_channel.on_event(settings, host, "evapi:message-received")
    # Both tokens dead: both bindings go, and the call ends now, not at the deadline.
    assert ksr.called("registrar", "unregister_ruid") == [
        ("location", HELD.uri, "r1"),
        ("location", HELD.uri, "r2"),
    ]
    assert list(host.pending) == [(5, 9, Route.PUSH_FAILED)]
    assert ksr.tables.get(pushing.OUTBOX) == {}  # answered: nothing left to resend


def test_a_stored_message_notice_has_no_held_call_and_its_result_touches_none(
    ksr: fake_ksr.FakeKSR,
) -> None:
    ksr.method = "MESSAGE"
    binding = Binding(
        uri="sip:alice@10.0.0.1", ruid="r1", instance=TARGET["instance"], alive=False,
        transport="tcp", push=parse_uri(
            f"sip:alice@10.0.0.1;pn-provider=apns;pn-prid={TOKEN};"
            "pn-param=ABCDE12345.com.example.app.voip"
        ),
    )  # fmt: skip
    connected(ksr)
    messages.store(Settings.from_cfg(), "alice", HELD.uri, (binding,))
    (push,) = relayed(ksr, "relay_unicast")
    assert push["id"] == "none:0" and push["kind"] == "message"
    held_calls.hold(HELD, "call-1", 30, [TARGET])  # a call held meanwhile stays held
    gone = PushResult(verdict=Verdict.GIVE_UP, reason="DeviceTokenNotForTopic")
    (request,), (frame,) = dispatch([push], gone)
    assert request.kind == wire.PushKind.MESSAGE and request.topic == "com.example.app"
    ksr.tables.setdefault(pushing.PUSHD, {})["c3"] = 1
    host = NativeHost()
    to_kamailio(ksr, frame)
    assert not host.pending and held_calls.claim(HELD.tx_key)


# -- pushd -> Kamailio: results of pushd's own pushes ------------------------------------------


def test_a_refresh_push_with_a_dead_token_removes_the_binding_and_nothing_else(
    ksr: fake_ksr.FakeKSR,
) -> None:
    now = time.time()  # the push's deadline is the binding's expiry: a real time ahead
    row = BindingRow(
        aor=HELD.uri, ruid="r7", expires=now + 60, last_modified=now - 3000,
        contact=f"sip:a@h;pn-provider=fcm;pn-prid=tok-{TOKEN};pn-param=my-project",
    )  # fmt: skip
    (due,) = due_refreshes([row], now, 600, set())
    push = refresh_push(due, 4)
    assert push.id == "none:4"
    provider = Answering(PushResult(verdict=Verdict.DELETE_TOKEN, status=404))
    provider.name = ProviderName.FCM
    frames: list[bytes] = []

    async def run() -> None:
        d = Dispatcher({ProviderName.FCM: provider}, lambda m: frames.append(netstring.encode(m)))
        d.submit(push)
        assert await d.drain(5)

    asyncio.run(run())
    held_calls.hold(HELD, "call-1", 30, [TARGET])
    ksr.tables.setdefault(pushing.PUSHD, {})["c3"] = 1
    to_kamailio(ksr, frames[0])
    assert ksr.called("registrar", "unregister_ruid") == [("location", HELD.uri, "r7")]
    assert held_calls.claim(HELD.tx_key)  # the held call with tx 5:9 was not touched


def test_a_version_1_peers_fake_hold_id_still_reads_as_no_held_call() -> None:
    assert wire.PushId.parse("0:0:17") == wire.PushId(tx=None, n=17)
    assert str(wire.PushId(tx=None, n=17)) == "none:17"


# -- any values (hypothesis) --------------------------------------------------------------------

texts = st.text(max_size=300)
short_texts = st.text(min_size=1, max_size=60)


@hostile.cases(300)
@given(
    index=st.integers(0, 2**32 - 1),
    label=st.integers(0, 2**32 - 1),
    n=st.integers(0, 2**16),
    held=st.booleans(),
    kind=st.sampled_from(list(wire.PushKind)),
    provider=st.sampled_from(["apns", "apns.dev", "fcm"]),
    prid=short_texts,
    param=short_texts,
    aor=texts,
    ruid=texts,
    instance=texts,
    deadline=st.floats(0, 1e11),
    data=st.dictionaries(st.text(max_size=20), texts, max_size=5),
)
def test_any_push_kamailio_writes_is_the_push_pushd_reads(
    index: int,
    label: int,
    n: int,
    held: bool,
    kind: wire.PushKind,
    provider: str,
    prid: str,
    param: str,
    aor: str,
    ruid: str,
    instance: str,
    deadline: float,
    data: dict[str, str],
) -> None:
    assume((index, label) != (0, 0))  # version 1's "no held call"
    push_id = wire.PushId(tx=wire.Tx(index, label) if held else None, n=n)
    fields = dict(provider=provider, prid=prid, param=param, aor=aor, ruid=ruid)
    text = wire.push_message(
        push_id=push_id, kind=kind, instance=instance, deadline=deadline, data=data, **fields
    )
    payload = text.encode()
    (msg,) = netstring.Decoder().feed(b"%d:%s," % (len(payload), payload))
    push = wire.parse_push(msg)
    assert push == wire.Push(
        id=str(push_id),
        kind=kind,
        instance=instance[: wire.MAX_TEXT],
        deadline=round(deadline, 3),
        data={k: v[: wire.MAX_TEXT] for k, v in data.items()},
        **fields,
    )
    assert wire.PushId.parse(push.id) == push_id
    try:
        build_request(msg, RequestDefaults())
    except wire.WireError as exc:
        assert exc.field in ("provider", "prid", "param"), exc  # pn-* meaning, not shape


@hostile.cases(300)
@given(
    push_id=st.builds(
        wire.PushId,
        tx=st.none() | st.builds(wire.Tx, st.integers(1, 2**32 - 1), st.integers(0, 2**32 - 1)),
        n=st.integers(0, 2**16),
    ),
    verdict=st.sampled_from(sorted(wire.FINAL_VERDICTS)),
    status=st.none() | st.integers(100, 599),
    reason=st.none() | texts,
    aor=texts,
    ruid=texts,
    attempts=st.integers(0, 100),
    ms=st.floats(0, 1e9).map(lambda x: round(x, 1)),
)
def test_any_result_pushd_writes_is_the_result_kamailio_reads(
    push_id: wire.PushId,
    verdict: wire.Verdict,
    status: int | None,
    reason: str | None,
    aor: str,
    ruid: str,
    attempts: int,
    ms: float,
) -> None:
    result = wire.Result(
        id=str(push_id), verdict=verdict, status=status, reason=reason,
        aor=aor, ruid=ruid, attempts=attempts, ms=ms,
    )  # fmt: skip
    frame = netstring.encode(result.message())
    length, _, rest = frame.partition(b":")
    read = wire.parse_result(wire.decode(rest[: int(length)].decode()))
    assert read == result
    assert wire.PushId.parse(read.id) == push_id
