"""pushd.apns_h2, the HTTP/2 client side of an APNs connection, against h2's server side.

h2 is an independent HTTP/2 implementation: what it decodes from our bytes, and what we
decode from its bytes, is what a real server would see and send.
"""

from __future__ import annotations

import json
import random

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import DataReceived, PingReceived, RequestReceived, StreamEnded, StreamReset
from h2.settings import SettingCodes
from hpack import Encoder

from pushd import apns_h2
from pushd.apns_h2 import (
    Answer,
    ErrorCode,
    FrameType,
    GoAway,
    H2Client,
    MaxStreamsChanged,
    ProtocolError,
    decode_int,
    decode_wanted,
    encode_int,
    frame,
)

JWT = "bearer eyJhbGciOiJFUzI1NiIsImtpZCI6IkFCQzEyMzQ1NjcifQ." + "x" * 150
AUTHORITY = "api.push.apple.com"


def _headers(n: int) -> list[tuple[str, str]]:
    return [
        ("apns-id", f"00000000-0000-4000-8000-{n:012x}"),
        ("apns-topic", "com.example.app.voip"),
        ("apns-expiration", str(1_700_000_000 + n)),
        ("apns-priority", "10"),
        ("apns-push-type", "voip"),
    ]


def _path(n: int) -> str:
    return f"/3/device/{n:064x}"


class Pair:
    """Our client and an h2 server, bytes handed across by hand."""

    def __init__(self, **server_settings: int) -> None:
        self.client = H2Client(AUTHORITY)
        self.server = H2Connection(H2Configuration(client_side=False))
        self.server.initiate_connection()
        if server_settings:
            self.server.update_settings(
                {getattr(SettingCodes, k): v for k, v in server_settings.items()}
            )
        self.client.preface()
        self.requests: dict[int, list[tuple[bytes, bytes]]] = {}
        self.bodies: dict[int, bytes] = {}
        self.ended: list[int] = []
        self.resets: list[int] = []
        self.client_bytes: list[bytes] = []
        self.auto_ack = True
        """Give received DATA back as window at once (a server that does not: False)."""
        self.events: list[apns_h2.Event] = []
        self.to_server()
        self.to_client()
        self.to_server()

    def to_server(self) -> None:
        wire = self.client.data_to_send()
        self.client_bytes.append(wire)
        for event in self.server.receive_data(wire):
            if isinstance(event, RequestReceived):
                assert event.stream_id is not None
                self.requests[event.stream_id] = list(event.headers or [])
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

    def to_client(self) -> list[apns_h2.Event]:
        events = self.client.receive(self.server.data_to_send())
        self.events += events
        return events

    def request(self, n: int, body: bytes = b'{"aps":{}}') -> int:
        stream_id = self.client.send_request(_path(n), _headers(n), JWT, body)
        self.to_server()
        return stream_id

    def answer(self, stream_id: int, status: int = 200, reason: str | None = None) -> None:
        headers = [(":status", str(status)), ("apns-id", f"id-{stream_id}")]
        if reason is None:
            self.server.send_headers(stream_id, headers, end_stream=True)
        else:
            self.server.send_headers(stream_id, [*headers, ("retry-after", "7")])
            self.server.send_data(stream_id, json.dumps({"reason": reason}).encode(), True)


# -- requests as a server sees them --


def test_a_server_decodes_our_requests_exactly() -> None:
    pair = Pair()
    ids = [pair.request(n) for n in range(3)]

    assert ids == [1, 3, 5]
    for n, stream_id in enumerate(ids):
        expected = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":authority", AUTHORITY.encode()),
            (b":path", _path(n).encode()),
            *((k.encode(), v.encode()) for k, v in _headers(n)),
            (b"authorization", JWT.encode()),
        ]
        assert pair.requests[stream_id] == expected
        assert pair.bodies[stream_id] == b'{"aps":{}}'
    assert pair.ended == ids


def test_the_jwt_goes_out_once_per_connection_then_as_an_index() -> None:
    pair = Pair()
    for n in range(200):
        pair.answer(pair.request(n))
        pair.to_client()

    sent = pair.client_bytes[2:]  # after the preface exchange: one entry per request
    assert JWT.encode() in sent[0]  # plain literal, no Huffman coding
    assert all(JWT.encode()[-40:] not in block for block in sent[1:])
    assert len(sent[199]) < len(sent[0]) - 150
    assert pair.requests[399][-1] == (b"authorization", JWT.encode())


def test_a_new_jwt_replaces_the_indexed_one() -> None:
    pair = Pair()
    pair.request(0)
    newer = JWT[:-5] + "yyyyy"
    stream_id = pair.client.send_request(_path(1), _headers(1), newer, b"{}")
    pair.to_server()
    stream_id2 = pair.client.send_request(_path(2), _headers(2), newer, b"{}")
    pair.to_server()

    assert pair.requests[stream_id][-1] == (b"authorization", newer.encode())
    assert pair.requests[stream_id2][-1] == (b"authorization", newer.encode())


def test_a_server_that_shrinks_its_table_gets_a_size_update_and_no_indexing() -> None:
    pair = Pair(HEADER_TABLE_SIZE=0)
    ids = [pair.request(n) for n in range(3)]

    assert all(pair.requests[i][-1] == (b"authorization", JWT.encode()) for i in ids)
    assert sum(JWT.encode() in block for block in pair.client_bytes[2:]) == 3


def test_a_header_block_over_the_frame_size_is_continued() -> None:
    pair = Pair()
    huge = "bearer " + "z" * 40_000  # over twice the 16 KiB frame size (and the table)
    stream_id = pair.client.send_request(_path(0), _headers(0), huge, b"{}")
    pair.to_server()

    assert pair.requests[stream_id][-1] == (b"authorization", huge.encode())


def test_bodies_wait_for_send_window_and_go_when_it_opens() -> None:
    pair = Pair(INITIAL_WINDOW_SIZE=10)
    first = pair.request(0, body=b"x" * 25)
    second = pair.request(1, body=b"y" * 5)  # fits, but must not overtake the first

    assert first not in pair.bodies and second not in pair.bodies
    pair.server.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 100})
    pair.to_client()
    pair.to_server()

    assert pair.bodies == {first: b"x" * 25, second: b"y" * 5}
    assert pair.ended == [first, second]


def test_bodies_wait_for_connection_window_in_order() -> None:
    """The connection window (65,535 bytes until the server widens it) is shared by all
    streams: bodies beyond it wait, in order, until the server hands window back."""
    pair = Pair()
    pair.auto_ack = False
    body = b"p" * 5_000
    ids = [pair.request(n, body=body) for n in range(20)]  # 100,000 bytes

    assert len(pair.bodies) == 13  # 13 x 5,000 fit in 65,535
    pair.server.acknowledge_received_data(65_000, ids[0])
    pair.to_client()
    pair.to_server()

    assert sorted(pair.bodies) == ids
    assert pair.ended == ids


def test_a_body_over_one_frame_is_refused_before_anything_is_sent() -> None:
    client = H2Client(AUTHORITY)
    client.preface()
    client.data_to_send()

    with pytest.raises(ValueError, match="16384"):
        client.send_request(_path(0), _headers(0), JWT, b"x" * 16_385)
    assert client.data_to_send() == b"" and client.open_streams == 0


def test_reset_stream_tells_the_server_and_drops_a_late_answer() -> None:
    pair = Pair()
    stream_id = pair.request(0)
    pair.client.reset_stream(stream_id)
    pair.to_server()

    assert pair.resets == [stream_id]
    assert pair.client.open_streams == 0


# -- answers --


def test_answers_carry_status_retry_after_and_body() -> None:
    pair = Pair()
    ok, busy = pair.request(0), pair.request(1)
    pair.answer(busy, 429, "TooManyRequests")
    pair.answer(ok)

    events = pair.to_client()

    assert events == [
        Answer(busy, 429, "7", b'{"reason": "TooManyRequests"}'),
        Answer(ok, 200, None, b""),
    ]
    assert pair.client.open_streams == 0


def test_received_data_is_given_back_as_window() -> None:
    """aioapns never did: after one window's worth of error bodies the connection went
    deaf. Ours starts at 16 MiB; 300 answers of 60 KB are more than that."""
    pair = Pair()
    body = b"x" * 60_000
    received = 0
    for n in range(300):
        stream_id = pair.request(n)
        pair.server.send_headers(stream_id, [(":status", "500")])
        for offset in range(0, len(body), 15_000):  # raises without window
            chunk = body[offset : offset + 15_000]
            pair.server.send_data(stream_id, chunk, end_stream=offset + 15_000 >= len(body))
        received += sum(len(e.body) for e in pair.to_client() if isinstance(e, Answer))
        pair.to_server()  # our WINDOW_UPDATEs

    assert received == 300 * len(body)


def test_an_informational_answer_is_skipped() -> None:
    pair = Pair()
    stream_id = pair.request(0)
    pair.server.send_headers(stream_id, [(":status", "100")])
    pair.answer(stream_id, 200)

    assert pair.to_client() == [Answer(stream_id, 200, None, b"")]


def test_settings_are_acknowledged_and_max_streams_reported() -> None:
    pair = Pair()
    pair.server.update_settings({SettingCodes.MAX_CONCURRENT_STREAMS: 1000})

    assert pair.to_client() == [MaxStreamsChanged(1000)]
    pair.to_server()
    assert pair.server.local_settings.max_concurrent_streams == 1000  # h2: applied on ACK


def test_our_settings_forbid_push_and_a_dynamic_table() -> None:
    pair = Pair()

    assert pair.server.remote_settings.enable_push == 0
    assert pair.server.remote_settings.header_table_size == 0
    assert pair.server.remote_settings.max_concurrent_streams == 0


def test_ping_is_answered() -> None:
    pair = Pair()
    pair.server.ping(b"12345678")
    pair.to_client()

    wire = pair.client.data_to_send()
    assert wire == frame(FrameType.PING, 0x1, 0, b"12345678")


def test_our_ping_is_answered_and_the_answer_taken_quietly() -> None:
    pair = Pair()
    pair.client.ping(b"keepaliv")
    wire = pair.client.data_to_send()
    pings = [e for e in pair.server.receive_data(wire) if isinstance(e, PingReceived)]

    assert [p.ping_data for p in pings] == [b"keepaliv"]
    assert pair.to_client() == []  # the ACK: no event, no error


def test_goaway_says_which_streams_were_not_handled() -> None:
    pair = Pair()
    pair.request(0)
    pair.request(1)
    pair.server.close_connection(ErrorCodes.NO_ERROR, b"bye", last_stream_id=1)

    assert pair.to_client() == [GoAway(1, 0, b"bye")]


def test_a_server_reset_is_reported_once() -> None:
    pair = Pair()
    stream_id = pair.request(0)
    pair.server.reset_stream(stream_id, ErrorCodes.REFUSED_STREAM)

    assert pair.to_client() == [apns_h2.StreamReset(stream_id, ErrorCode.REFUSED_STREAM)]
    assert pair.client.open_streams == 0


def test_bytes_may_arrive_one_at_a_time() -> None:
    pair = Pair()
    stream_id = pair.request(0)
    pair.answer(stream_id, 410, "Unregistered")
    wire = pair.server.data_to_send()

    events = [e for byte in wire for e in pair.client.receive(bytes([byte]))]

    assert events == [Answer(stream_id, 410, "7", b'{"reason": "Unregistered"}')]


# -- protocol errors --


def _client() -> H2Client:
    client = H2Client(AUTHORITY)
    client.preface()
    client.send_request(_path(0), _headers(0), JWT, b"{}")
    client.data_to_send()
    return client


@pytest.mark.parametrize(
    ("wire", "code"),
    [
        (frame(FrameType.PUSH_PROMISE, 0x4, 1, b"\x00\x00\x00\x02\x88"), ErrorCode.PROTOCOL_ERROR),
        (b"\x00\x40\x01" + bytes(6), ErrorCode.FRAME_SIZE_ERROR),  # 16385-byte frame
        (frame(FrameType.HEADERS, 0x4, 1, b"\xbe"), ErrorCode.COMPRESSION_ERROR),  # dyn. index
        (frame(FrameType.HEADERS, 0x4, 1, b"\x3f\xe1\x1f"), ErrorCode.COMPRESSION_ERROR),
        (frame(FrameType.DATA, 0x1, 1, b"{}"), ErrorCode.PROTOCOL_ERROR),  # before HEADERS
        (frame(FrameType.HEADERS, 0x5, 1, b"\x84"), ErrorCode.PROTOCOL_ERROR),  # no :status
        (frame(FrameType.SETTINGS, 0, 0, b"\x00\x04"), ErrorCode.FRAME_SIZE_ERROR),
        (frame(FrameType.PING, 0, 1, bytes(8)), ErrorCode.PROTOCOL_ERROR),
        (frame(FrameType.WINDOW_UPDATE, 0, 0, bytes(4)), ErrorCode.PROTOCOL_ERROR),
        (
            frame(FrameType.HEADERS, 0x0, 1, b"\x88") + frame(FrameType.PING, 0, 0, bytes(8)),
            ErrorCode.PROTOCOL_ERROR,  # a header block interrupted
        ),
    ],
    ids=[
        "push-promise",
        "oversized-frame",
        "dynamic-table-index",
        "table-size-update",
        "data-before-headers",
        "no-status",
        "short-settings",
        "ping-on-stream",
        "zero-window-update",
        "interrupted-block",
    ],
)
def test_protocol_errors_name_the_code(wire: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as caught:
        _client().receive(wire)

    assert caught.value.code is code


def test_a_continued_answer_block_is_joined() -> None:
    client = _client()
    block = Encoder().encode([(":status", "503"), ("retry-after", "30")])
    wire = frame(FrameType.HEADERS, 0x1, 1, block[:2]) + frame(
        FrameType.CONTINUATION, 0x4, 1, block[2:]
    )

    assert client.receive(wire) == [Answer(1, 503, "30", b"")]


def test_padding_and_priority_are_stripped() -> None:
    client = _client()
    block = b"\x8d"  # :status 404
    payload = b"\x03" + bytes(5) + block + b"\x00" * 3  # pad length, priority, block, padding
    headers = frame(FrameType.HEADERS, 0x4 | 0x8 | 0x20, 1, payload)
    data = frame(FrameType.DATA, 0x1 | 0x8, 1, b"\x02{}\x00\x00")

    assert client.receive(headers + data) == [Answer(1, 404, None, b"{}")]


# -- HPACK pieces --


@pytest.mark.parametrize("value", [0, 1, 14, 15, 30, 31, 127, 128, 1337, 2**20])
@pytest.mark.parametrize("prefix", [4, 5, 6, 7])
def test_integers_round_trip(value: int, prefix: int) -> None:
    encoded = encode_int(value, prefix)

    assert decode_int(encoded + b"rest", 0, prefix) == (value, len(encoded))


def test_rfc7541_integer_example() -> None:
    assert encode_int(1337, 5) == bytes([0x1F, 0x9A, 0x0A])  # RFC 7541 C.1.2


def test_huffman_coded_names_and_values_are_read() -> None:
    # hpack's encoder Huffman-codes both, and indexes nothing with a 0-size table.
    encoder = Encoder()
    encoder.header_table_size = 0
    block = encoder.encode(
        [(":status", "429"), ("apns-id", "ABC"), ("retry-after", "120"), ("x-other", "1")]
    )

    assert decode_wanted(block) == {b":status": b"429", b"retry-after": b"120"}


# -- robustness --


def test_garbage_from_the_server_raises_only_protocol_errors() -> None:
    """Whatever arrives, the client either makes sense of it or raises ProtocolError
    (which closes the connection with GOAWAY); never anything else."""
    rng = random.Random(8599)
    kinds = [*range(10), 0x42]  # every frame type, and one we do not know
    outcomes = {"events": 0, "protocol_error": 0}
    for _ in range(3000):
        client = _client()
        frames = b""
        for _ in range(rng.randint(1, 4)):
            payload = rng.randbytes(rng.choice([0, 1, 4, 5, 6, 8, 12, 40]))
            if rng.random() < 0.3:  # a plausible header block: :status then junk
                payload = b"\x88" + payload
            kind = rng.choice(kinds)
            stream = rng.choice([0, 1, 3])
            frames += frame(kind, rng.randrange(256), stream, payload)
        try:
            client.receive(frames)
            outcomes["events"] += 1
        except ProtocolError:
            outcomes["protocol_error"] += 1

    assert outcomes["events"] > 100 and outcomes["protocol_error"] > 100
