"""The HTTP/2 client side of one APNs connection, sans-IO (RFC 9113, HPACK RFC 7541).

APNs asks one thing of HTTP/2: many concurrent ``POST /3/device/<token>`` requests with a
small JSON body, each answered by a ``:status`` (plus ``apns-id``, maybe ``retry-after``)
and, for errors, a small JSON body. h2 handles every case of HTTP/2 in general and costs
about 170 µs of CPU per request here, more than the whole per-push budget of a pushd that
should send 5,000 pushes/s on one core. This module handles that one exchange, and the
connection-level duties any HTTP/2 peer has, in about 20 µs:

* **Sending.** Header blocks are assembled from pre-encoded pieces: no Huffman coding,
  per-push values as literals without indexing, and the provider JWT (the same ~200 bytes
  on every request) inserted once into the HPACK table and then sent as a 1-byte index.
  DATA waits for flow-control window when the server has not granted enough.
* **Receiving.** We announce ``SETTINGS_HEADER_TABLE_SIZE = 0``, so the server's header
  blocks cannot refer to a dynamic table and need no table state here; only the values we
  read (``:status``, ``retry-after``) are ever decoded. Response bodies are collected per
  stream and handed over in one :class:`Answer` when the stream ends.
* **Duties.** SETTINGS and PING are acknowledged, received DATA is given back as window
  (aioapns never did: a connection stopped receiving after ~64 KiB of error bodies),
  GOAWAY and RST_STREAM become events, and a peer that breaks the protocol gets a
  :class:`ProtocolError` carrying the HTTP/2 error code for the GOAWAY.

Not supported, because APNs does not use them: server push (disabled in our SETTINGS),
request bodies over the peer's frame size (APNs payloads are at most 5 KiB; the minimum
frame size is 16 KiB), and priorities (ignored).

The caller writes :meth:`H2Client.data_to_send` to the socket after every call.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_STREAM_ID = 2**31 - 1
DEFAULT_WINDOW = 65_535
MAX_WINDOW = 2**31 - 1
DEFAULT_MAX_FRAME = 16_384
OUR_CONNECTION_WINDOW = 2**24
"""Receive window for the whole connection (16 MiB): answers never wait for it."""
WINDOW_UPDATE_AFTER = 32_768
"""Give received DATA back as window once this much has been consumed."""
HPACK_TABLE_SIZE = 4_096
"""Our encoder's table size (the protocol default) while the server allows it."""


class FrameType(enum.IntEnum):
    DATA = 0x0
    HEADERS = 0x1
    PRIORITY = 0x2
    RST_STREAM = 0x3
    SETTINGS = 0x4
    PUSH_PROMISE = 0x5
    PING = 0x6
    GOAWAY = 0x7
    WINDOW_UPDATE = 0x8
    CONTINUATION = 0x9


class Setting(enum.IntEnum):
    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


class ErrorCode(enum.IntEnum):
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


def error_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"error 0x{code:x}"


_END_STREAM = 0x1
_ACK = 0x1
_END_HEADERS = 0x4
_PADDED = 0x8
_PRIORITY = 0x20


class ProtocolError(Exception):
    """The peer broke HTTP/2; the connection must end with GOAWAY(``code``)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


class StreamIdsExhausted(Exception):
    """This connection has used every client stream id; open a new one."""


# -- events --


@dataclass(slots=True)
class Answer:
    """A complete response: the stream has ended."""

    stream_id: int
    status: int
    retry_after: str | None
    body: bytes


@dataclass(slots=True)
class StreamReset:
    """The server reset a stream (RST_STREAM): it will not answer it."""

    stream_id: int
    error_code: int


@dataclass(slots=True)
class GoAway:
    """The server is closing: streams above ``last_stream_id`` were not processed."""

    last_stream_id: int
    error_code: int
    debug: bytes


@dataclass(slots=True)
class MaxStreamsChanged:
    """The server's SETTINGS_MAX_CONCURRENT_STREAMS (APNs: 1 until a valid JWT, then
    1000)."""

    value: int


Event = Answer | StreamReset | GoAway | MaxStreamsChanged


# -- HPACK pieces --


def encode_int(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """RFC 7541 5.1: ``value`` with an N-bit prefix; ``first`` holds the high bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_str(value: bytes) -> bytes:
    """A string literal without Huffman coding."""
    return encode_int(len(value), 7) + value


def decode_int(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """Returns (value, position after it)."""
    limit = (1 << prefix_bits) - 1
    try:
        value = data[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        while True:
            byte = data[pos]
            pos += 1
            value += (byte & 0x7F) << shift
            if not byte & 0x80:
                return value, pos
            shift += 7
            if shift > 28:
                raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "HPACK integer too large")
    except IndexError:
        raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "HPACK integer cut short") from None


def _raw_str(data: bytes, pos: int) -> tuple[bool, bytes, int]:
    """A string literal as sent: (Huffman-coded?, its octets, position after it)."""
    if pos >= len(data):
        raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "HPACK string missing")
    huffman = bool(data[pos] & 0x80)
    length, pos = decode_int(data, pos, 7)
    end = pos + length
    if end > len(data):
        raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "HPACK string cut short")
    return huffman, data[pos:end], end


def _decoded(huffman: bool, raw: bytes) -> bytes:
    if not huffman:
        return raw
    try:
        return decode_huffman(raw)
    except Exception as exc:  # hpack raises its own HPACKDecodingError
        raise ProtocolError(ErrorCode.COMPRESSION_ERROR, f"bad Huffman string: {exc}") from None


_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
_STATIC: tuple[tuple[bytes, bytes], ...] = HeaderTable.STATIC_TABLE
_WANTED = (b":status", b"retry-after")
# A literal header name may arrive Huffman-coded or plain; the code is canonical, so one
# encoded form per name identifies it without decoding every name.
_NAME_FORMS = {
    (huffman, form): name
    for name in _WANTED
    for huffman, form in ((False, name), (True, _HUFFMAN.encode(name)))
}


def decode_wanted(block: bytes) -> dict[bytes, bytes]:
    """Decode an HPACK header block that uses no dynamic table (we set its size to 0),
    returning only ``:status`` and ``retry-after``. Raises :class:`ProtocolError`."""
    found: dict[bytes, bytes] = {}
    pos, end = 0, len(block)
    while pos < end:
        byte = block[pos]
        if byte & 0x80:  # indexed field
            index, pos = decode_int(block, pos, 7)
            name, value = _static(index)
            if name in _WANTED:
                found[name] = value
            continue
        if byte & 0xE0 == 0x20:  # dynamic table size update: ours may only be 0
            size, pos = decode_int(block, pos, 5)
            if size != 0:
                raise ProtocolError(ErrorCode.COMPRESSION_ERROR, f"table size {size} > 0")
            continue
        # Literal: with incremental indexing (6-bit prefix), without / never (4-bit).
        index, pos = decode_int(block, pos, 6 if byte & 0x40 else 4)
        wanted: bytes | None
        if index:
            wanted = _static(index)[0]
        else:
            huffman, raw_name, pos = _raw_str(block, pos)
            wanted = _NAME_FORMS.get((huffman, raw_name))
        if pos >= end:
            raise ProtocolError(ErrorCode.COMPRESSION_ERROR, "HPACK field without a value")
        huffman, raw, pos = _raw_str(block, pos)
        if wanted in _WANTED:
            assert wanted is not None
            found[wanted] = _decoded(huffman, raw)
    return found


def _static(index: int) -> tuple[bytes, bytes]:
    if not 0 < index <= len(_STATIC):
        # Index 0 is invalid; above 61 is the dynamic table, which we set to size 0.
        raise ProtocolError(ErrorCode.COMPRESSION_ERROR, f"HPACK index {index} not in table")
    return _STATIC[index - 1]


_STATIC_INDEX = {pair: n for n, pair in enumerate(_STATIC, start=1)}
_AUTHORIZATION_NAME = _STATIC_INDEX[(b"authorization", b"")]


# -- frames --


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return (
        len(payload).to_bytes(3, "big")
        + bytes((kind, flags))
        + stream_id.to_bytes(4, "big")
        + payload
    )


def _settings_payload(settings: Iterable[tuple[Setting, int]]) -> bytes:
    return b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in settings)


_SETTINGS_ACK = frame(FrameType.SETTINGS, _ACK, 0)


@dataclass(slots=True)
class _Incoming:
    """A request in flight: what has come back so far."""

    status: int | None = None
    retry_after: str | None = None
    body: bytearray = field(default_factory=bytearray)
    window: int = 0
    """Our receive window for this stream; set from our SETTINGS when the stream opens."""


@dataclass(slots=True)
class _Blocked:
    """A request body waiting for send window."""

    stream_id: int
    body: bytes
    window: int
    """The stream's send window (the connection's is kept on the client)."""


class H2Client:
    """One HTTP/2 client connection to APNs, without I/O."""

    def __init__(self, authority: str) -> None:
        self._out: list[bytes] = []
        self._in = bytearray()
        self._next_stream_id = 1
        self._streams: dict[int, _Incoming] = {}
        # Our receive side.
        self._recv_window = OUR_CONNECTION_WINDOW  # once the preface's WINDOW_UPDATE is out
        self._recv_consumed = 0
        # The server's settings and our send windows.
        self._send_window = DEFAULT_WINDOW
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME
        self._blocked: collections.deque[_Blocked] = collections.deque()
        # Header fragments of a HEADERS frame without END_HEADERS: (stream, parts, ended).
        self._continuing: tuple[int, list[bytes], bool] | None = None
        # HPACK encoder state: the one table entry we use (the authorization value).
        self._table_size = HPACK_TABLE_SIZE
        self._size_update: int | None = None
        self._indexed_auth: bytes | None = None
        self._static_head = (
            b"\x83\x87"  # :method POST, :scheme https (static table 3 and 7)
            + encode_int(_STATIC_INDEX[(b":authority", b"")], 4)
            + encode_str(authority.encode())
        )
        self._path_name = encode_int(_STATIC_INDEX[(b":path", b"/")], 4)
        self._names: dict[str, bytes] = {}

    # -- what goes out --

    def preface(self) -> None:
        """The client connection preface: magic, SETTINGS, and a wide connection window."""
        self._out.append(PREFACE)
        settings = _settings_payload(
            (
                (Setting.HEADER_TABLE_SIZE, 0),
                (Setting.ENABLE_PUSH, 0),
                (Setting.MAX_CONCURRENT_STREAMS, 0),  # the server may not open streams
                (Setting.INITIAL_WINDOW_SIZE, DEFAULT_WINDOW),
            )
        )
        self._out.append(frame(FrameType.SETTINGS, 0, 0, settings))
        self._window_update(0, OUR_CONNECTION_WINDOW - DEFAULT_WINDOW)

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    def send_request(
        self,
        path: str,
        headers: Iterable[tuple[str, str]],
        authorization: str | None,
        body: bytes,
    ) -> int:
        """Open a stream with ``POST path`` and ``body``; returns its id.

        ``headers`` are regular (lower-case) fields after the pseudo-headers; the
        ``authorization`` value is indexed in the HPACK table (it repeats on every request).
        Raises :class:`StreamIdsExhausted` when the connection has no stream id left.
        """
        if len(body) > DEFAULT_MAX_FRAME:  # one DATA frame; APNs' own limit is 5 KiB
            raise ValueError(f"request body of {len(body)} bytes; at most {DEFAULT_MAX_FRAME}")
        stream_id = self._next_stream_id
        if stream_id > MAX_STREAM_ID:
            raise StreamIdsExhausted
        self._next_stream_id += 2
        parts = [self._static_head, self._path_name, encode_str(path.encode())]
        if self._size_update is not None:
            parts.insert(0, encode_int(self._size_update, 5, 0x20))
            self._size_update = None
        names = self._names
        for name, value in headers:
            encoded_name = names.get(name)
            if encoded_name is None:
                encoded_name = names[name] = b"\x00" + encode_str(name.encode())
            parts.append(encoded_name)
            parts.append(encode_str(value.encode()))
        if authorization is not None:
            parts.append(self._authorization(authorization.encode()))
        self._headers_frames(stream_id, b"".join(parts))
        self._streams[stream_id] = _Incoming(window=DEFAULT_WINDOW)
        window = self._peer_initial_window
        if self._blocked or len(body) > min(window, self._send_window):
            self._blocked.append(_Blocked(stream_id, body, window))
            self._flush_blocked()
        else:
            self._send_window -= len(body)
            self._out.append(frame(FrameType.DATA, _END_STREAM, stream_id, body))
        return stream_id

    def ping(self, payload: bytes = bytes(8)) -> None:
        """A PING (8 bytes of payload): the server must answer it, so silence means the
        connection is dead even when TCP has not noticed yet."""
        self._out.append(frame(FrameType.PING, 0, 0, payload[:8].ljust(8, b"\0")))

    def reset_stream(self, stream_id: int, code: ErrorCode = ErrorCode.CANCEL) -> None:
        """Abandon a request: RST_STREAM, and forget it (a late answer is ignored)."""
        if self._streams.pop(stream_id, None) is None:
            return
        self._blocked = collections.deque(b for b in self._blocked if b.stream_id != stream_id)
        self._out.append(frame(FrameType.RST_STREAM, 0, stream_id, code.to_bytes(4, "big")))

    def close(self, code: ErrorCode = ErrorCode.NO_ERROR, debug: str = "") -> None:
        """GOAWAY: we will send nothing more (the caller then closes the socket)."""
        last = 0  # we never accept server-initiated streams
        payload = last.to_bytes(4, "big") + code.to_bytes(4, "big") + debug.encode()[:256]
        self._out.append(frame(FrameType.GOAWAY, 0, 0, payload))

    def _authorization(self, value: bytes) -> bytes:
        if value == self._indexed_auth:
            return b"\xbe"  # dynamic table index 62: the newest entry, always ours
        entry_size = 32 + len(b"authorization") + len(value)
        if entry_size > self._table_size:
            self._indexed_auth = None
            return encode_int(_AUTHORIZATION_NAME, 4, 0x10) + encode_str(value)  # never indexed
        self._indexed_auth = value
        return encode_int(_AUTHORIZATION_NAME, 6, 0x40) + encode_str(value)

    def _headers_frames(self, stream_id: int, block: bytes) -> None:
        size = self._peer_max_frame
        if len(block) <= size:
            self._out.append(frame(FrameType.HEADERS, _END_HEADERS, stream_id, block))
            return
        chunks = [block[i : i + size] for i in range(0, len(block), size)]
        last = len(chunks) - 1
        for n, chunk in enumerate(chunks):
            kind = FrameType.HEADERS if n == 0 else FrameType.CONTINUATION
            self._out.append(frame(kind, _END_HEADERS if n == last else 0, stream_id, chunk))

    def _flush_blocked(self) -> None:
        while self._blocked:
            head = self._blocked[0]
            if len(head.body) > min(head.window, self._send_window):
                return
            self._blocked.popleft()
            self._send_window -= len(head.body)
            self._out.append(frame(FrameType.DATA, _END_STREAM, head.stream_id, head.body))

    def _window_update(self, stream_id: int, increment: int) -> None:
        self._out.append(frame(FrameType.WINDOW_UPDATE, 0, stream_id, increment.to_bytes(4, "big")))

    # -- what comes in --

    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes from the socket; returns what happened. Raises :class:`ProtocolError`."""
        buf = self._in
        buf += data
        events: list[Event] = []
        pos, size = 0, len(buf)
        while size - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if length > DEFAULT_MAX_FRAME:  # we never raise SETTINGS_MAX_FRAME_SIZE
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, f"{length}-byte frame")
            end = pos + 9 + length
            if end > size:
                break
            kind = buf[pos + 3]
            flags = buf[pos + 4]
            stream_id = int.from_bytes(buf[pos + 5 : pos + 9], "big") & MAX_STREAM_ID
            payload = bytes(buf[pos + 9 : end])
            pos = end
            if self._continuing is not None and kind != FrameType.CONTINUATION:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "header block interrupted")
            if kind == FrameType.HEADERS:
                self._on_headers(stream_id, flags, payload, events)
            elif kind == FrameType.DATA:
                self._on_data(stream_id, flags, payload, events)
            else:
                self._on_other(kind, stream_id, flags, payload, events)
        del buf[:pos]
        return events

    def _on_headers(self, stream_id: int, flags: int, payload: bytes, events: list[Event]) -> None:
        if stream_id == 0:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        payload = _unpad(flags, payload)
        if flags & _PRIORITY:
            payload = payload[5:]
        ended = bool(flags & _END_STREAM)
        if flags & _END_HEADERS:
            self._on_header_block(stream_id, payload, ended, events)
        else:
            self._continuing = (stream_id, [payload], ended)

    def _on_continuation(
        self, stream_id: int, flags: int, payload: bytes, events: list[Event]
    ) -> None:
        if self._continuing is None or self._continuing[0] != stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        parts = self._continuing[1]
        parts.append(payload)
        if sum(map(len, parts)) > 4 * DEFAULT_MAX_FRAME:
            raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "header block over 64 KiB")
        if flags & _END_HEADERS:
            ended = self._continuing[2]
            self._continuing = None
            self._on_header_block(stream_id, b"".join(parts), ended, events)

    def _on_header_block(
        self, stream_id: int, block: bytes, ended: bool, events: list[Event]
    ) -> None:
        fields = decode_wanted(block)  # also for streams we forgot: the block must parse
        incoming = self._streams.get(stream_id)
        if incoming is None:
            return
        if incoming.status is None:
            status = fields.get(b":status", b"")
            if not (len(status) == 3 and status.isdigit()):
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"bad :status {status!r}")
            code = int(status)
            if code >= 200:  # 1xx: informational, the real answer follows
                incoming.status = code
                retry_after = fields.get(b"retry-after")
                if retry_after is not None:
                    incoming.retry_after = retry_after.decode("latin-1")
        if ended:
            self._end(stream_id, incoming, events)

    def _on_data(self, stream_id: int, flags: int, payload: bytes, events: list[Event]) -> None:
        if stream_id == 0:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        flow = len(payload)  # padding counts against the window too
        self._recv_window -= flow
        if self._recv_window < 0:
            raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "connection window exceeded")
        self._recv_consumed += flow
        if self._recv_consumed >= WINDOW_UPDATE_AFTER:
            self._window_update(0, self._recv_consumed)
            self._recv_window += self._recv_consumed
            self._recv_consumed = 0
        incoming = self._streams.get(stream_id)
        if incoming is None:
            return  # reset by us, or never ours: the window is given back all the same
        incoming.window -= flow
        if incoming.window < 0:
            raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, f"stream {stream_id} window exceeded")
        if incoming.status is None:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"DATA before HEADERS on {stream_id}")
        incoming.body += _unpad(flags, payload)
        if flags & _END_STREAM:
            self._end(stream_id, incoming, events)

    def _end(self, stream_id: int, incoming: _Incoming, events: list[Event]) -> None:
        del self._streams[stream_id]
        if incoming.status is None:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"stream {stream_id} ended unanswered")
        events.append(
            Answer(stream_id, incoming.status, incoming.retry_after, bytes(incoming.body))
        )

    def _on_other(
        self, kind: int, stream_id: int, flags: int, payload: bytes, events: list[Event]
    ) -> None:
        if kind == FrameType.CONTINUATION:
            self._on_continuation(stream_id, flags, payload, events)
        elif kind == FrameType.SETTINGS:
            _on_connection_frame(kind, stream_id)
            if not flags & _ACK:
                self._on_settings(payload, events)
        elif kind == FrameType.PING:
            _on_connection_frame(kind, stream_id)
            if len(payload) != 8:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "PING is 8 bytes")
            if not flags & _ACK:
                self._out.append(frame(FrameType.PING, _ACK, 0, payload))
        elif kind == FrameType.WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == FrameType.RST_STREAM:
            if len(payload) != 4 or stream_id == 0:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "bad RST_STREAM")
            if self._streams.pop(stream_id, None) is not None:
                self._blocked = collections.deque(
                    b for b in self._blocked if b.stream_id != stream_id
                )
                events.append(StreamReset(stream_id, int.from_bytes(payload, "big")))
        elif kind == FrameType.GOAWAY:
            _on_connection_frame(kind, stream_id)
            if len(payload) < 8:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY under 8 bytes")
            last = int.from_bytes(payload[:4], "big") & MAX_STREAM_ID
            events.append(GoAway(last, int.from_bytes(payload[4:8], "big"), payload[8:]))
        elif kind == FrameType.PUSH_PROMISE:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE, push is disabled")
        # PRIORITY and frame types we do not know: ignored (RFC 9113 5.5).

    def _on_settings(self, payload: bytes, events: list[Event]) -> None:
        if len(payload) % 6:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6")
        for offset in range(0, len(payload), 6):
            key = int.from_bytes(payload[offset : offset + 2], "big")
            value = int.from_bytes(payload[offset + 2 : offset + 6], "big")
            if key == Setting.MAX_CONCURRENT_STREAMS:
                events.append(MaxStreamsChanged(value))
            elif key == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "initial window > 2^31-1")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for blocked in self._blocked:
                    blocked.window += delta
            elif key == Setting.MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value < 2**24:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"max frame size {value}")
                self._peer_max_frame = value
            elif key == Setting.HEADER_TABLE_SIZE:
                size = min(value, HPACK_TABLE_SIZE)
                if size != self._table_size:
                    self._table_size = size
                    self._size_update = size
                    self._indexed_auth = None  # the entry may be evicted: insert it again
            elif key == Setting.ENABLE_PUSH and value > 1:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "ENABLE_PUSH must be 0 or 1")
        self._out.append(_SETTINGS_ACK)
        self._flush_blocked()

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE is 4 bytes")
        increment = int.from_bytes(payload, "big") & MAX_WINDOW
        if stream_id == 0:
            if increment == 0:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "window over 2^31-1")
        else:
            for blocked in self._blocked:
                if blocked.stream_id == stream_id:
                    blocked.window += increment
        self._flush_blocked()


def _on_connection_frame(kind: int, stream_id: int) -> None:
    if stream_id != 0:
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"{FrameType(kind).name} on a stream")


def _unpad(flags: int, payload: bytes) -> bytes:
    if not flags & _PADDED:
        return payload
    if not payload or payload[0] >= len(payload):
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - payload[0]]
