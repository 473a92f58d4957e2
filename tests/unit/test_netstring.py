"""Netstring codec: framing, incremental decoding, and every way a stream can be broken."""

from __future__ import annotations

import pytest

from pushd.netstring import MAX_SIZE, Decoder, NetstringError, encode


def test_encode_is_compact_json_in_a_netstring() -> None:
    assert encode({"type": "hello", "n": 1}) == b'22:{"type":"hello","n":1},'


def test_encode_writes_ascii_as_both_ends_of_the_channel_do() -> None:
    # pushgate.wire.encode: non-ASCII (and a lone surrogate) as \u escapes.
    assert encode({"a": "é", "b": "\udcff"}) == b'27:{"a":"\\u00e9","b":"\\udcff"},'


def test_decoder_counts_bytes_not_characters() -> None:
    assert Decoder().feed(b'10:{"a":"\xc3\xa9"},') == [{"a": "é"}]


def test_roundtrip_of_several_frames_in_one_feed() -> None:
    msgs = [{"type": "push", "id": str(i), "data": {"k": "v" * i}} for i in range(5)]
    assert Decoder().feed(b"".join(encode(m) for m in msgs)) == msgs


def test_byte_by_byte_feeding() -> None:
    msg = {"type": "result", "id": "x", "ms": 1.5, "reason": None}
    frame = encode(msg)
    dec = Decoder()
    out = []
    for i in range(len(frame)):
        out += dec.feed(frame[i : i + 1])
    assert out == [msg]
    assert dec.buffered == 0


def test_partial_frame_is_kept_for_the_next_feed() -> None:
    dec = Decoder()
    frame = encode({"a": "b"})
    assert dec.feed(frame + frame[:5]) == [{"a": "b"}]
    assert dec.buffered == 5
    assert dec.feed(frame[5:]) == [{"a": "b"}]


def test_frame_of_exactly_max_size_is_accepted() -> None:
    payload = b'{"a":"' + b"x" * (MAX_SIZE - 8) + b'"}'
    assert len(payload) == MAX_SIZE
    assert Decoder().feed(b"%d:%s," % (len(payload), payload)) == [{"a": "x" * (MAX_SIZE - 8)}]


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"abc:{},", "bad netstring length prefix"),
        (b"x", "bad netstring length prefix"),
        (b":{},", "bad netstring length prefix"),
        (b"-1:{},", "bad netstring length prefix"),
        (b"02:{},", "leading zero"),
        (b"2:{};", "terminator is b';'"),
        (b"%d:" % (MAX_SIZE + 1), "exceeds the 65536 byte limit"),
        (b"9999999", "exceeds the 65536 byte limit"),
        (b"4:null,", "JSON NoneType, not an object"),
        (b"2:[],", "JSON list, not an object"),
        (b"3:{x},", "not UTF-8 JSON"),
        (b"2:\xff\xfe,", "not UTF-8 JSON"),
    ],
)
def test_malformed_streams_raise_clear_errors(data: bytes, words: str) -> None:
    with pytest.raises(NetstringError) as info:
        Decoder().feed(data)
    assert words in str(info.value)


def test_oversized_length_is_refused_before_the_payload_arrives() -> None:
    with pytest.raises(NetstringError):
        Decoder().feed(b"70000:")


def test_decoder_stays_broken_after_an_error() -> None:
    dec = Decoder()
    with pytest.raises(NetstringError):
        dec.feed(b"2:{};")
    with pytest.raises(NetstringError):
        dec.feed(encode({"a": "b"}))


def test_encode_refuses_oversized_messages() -> None:
    with pytest.raises(NetstringError, match="exceeds"):
        encode({"a": "x" * MAX_SIZE})


def test_custom_max_size() -> None:
    dec = Decoder(max_size=10)
    assert dec.feed(b"2:{},") == [{}]
    with pytest.raises(NetstringError, match="exceeds the 10 byte limit"):
        dec.feed(b"11:")


# Found by tests/unit/test_hostile_wire.py: errors other than NetstringError escaped the
# decoder (the read loop then died with "internal error" instead of a protocol error).
@pytest.mark.parametrize(
    "payload",
    [b"[" * 5000, b'{"a":' + b"1" * 5000 + b"}", b'{"a":"\xed\xb3\xbf"}'],
    ids=["nested-too-deeply", "5000-digit-number", "encoded-surrogate"],
)
def test_json_python_cannot_read_is_a_netstring_error(payload: bytes) -> None:
    with pytest.raises(NetstringError):
        Decoder().feed(b"%d:%s," % (len(payload), payload))


def test_a_lone_surrogate_echoed_back_is_encoded_as_its_json_escape() -> None:
    # A result echoes the push's aor: "\udcff" arrived as a JSON escape and has no UTF-8.
    frame = encode({"aor": "sip:\udcff@d"})
    assert frame == b'22:{"aor":"sip:\\udcff@d"},'
    assert Decoder().feed(frame) == [{"aor": "sip:\udcff@d"}]
