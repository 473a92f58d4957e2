"""A small asyncio SIP toolkit for the load benchmarks: many phones and callers in one loop.

Not a SIP stack: just enough of RFC 3261 for Pushgate's wake path against our Kamailio on
loopback, with timestamps (``time.perf_counter``) at every step that matters.

* :class:`Phone`: an RFC 5626 + RFC 8599 phone over TCP. ``register()`` sends a REGISTER
  on a new connection (digest answered if challenged, or a wake token presented); with
  ``stay=False`` it closes the connection after the 200: the phone sleeps, its flow is
  dead. ``wake()`` is what a pushed phone does: connect, REGISTER, then answer the INVITE
  that Kamailio relays over that flow (180 + 200, or a final decline), take the ACK and
  BYE, and go back to sleep (close) when the call is over.
* :class:`Caller`: one UDP socket placing many INVITEs, with RFC 3261 retransmissions
  (timer A until a provisional, BYE until a final), hop-by-hop ACK for a failure,
  end-to-end ACK through the Record-Route set for a 200, then BYE after ``talk`` s.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

DOMAIN = "pushgate.test"
T1 = 0.5
TIMER_B = 32.0
_COMPACT = {
    "v": "via",
    "f": "from",
    "t": "to",
    "i": "call-id",
    "m": "contact",
    "l": "content-length",
    "c": "content-type",
    "k": "supported",
}
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}{next(_ids)}x{random.getrandbits(40):010x}"


# ----- messages -----
@dataclass
class Msg:
    first: str
    headers: list[tuple[str, str]]
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return not self.first.startswith("SIP/2.0 ")

    @property
    def method(self) -> str:
        return self.first.split(" ", 1)[0] if self.is_request else self.cseq_method

    @property
    def status(self) -> int:
        return int(self.first.split(" ", 2)[1]) if not self.is_request else 0

    def get(self, name: str, default: str = "") -> str:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default

    def all(self, name: str) -> list[str]:
        name = name.lower()
        out: list[str] = []
        for k, v in self.headers:
            if k == name:
                out.extend(split_commas(v) if name in ("via", "record-route", "route") else [v])
        return out

    @property
    def call_id(self) -> str:
        return self.get("call-id")

    @property
    def cseq_method(self) -> str:
        return self.get("cseq").split()[-1].upper() if self.get("cseq") else ""

    @property
    def cseq_num(self) -> int:
        return int(self.get("cseq").split()[0]) if self.get("cseq") else 0


def split_commas(value: str) -> list[str]:
    out, depth, start = [], 0, 0
    for i, ch in enumerate(value):
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(value[start:i].strip())
            start = i + 1
    out.append(value[start:].strip())
    return [v for v in out if v]


def parse(data: bytes) -> Msg:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("utf-8", "replace").split("\r\n")
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:
            k, v = headers[-1]
            headers[-1] = (k, v + " " + line.strip())
            continue
        name, _, value = line.partition(":")
        name = name.strip().lower()
        headers.append((_COMPACT.get(name, name), value.strip()))
    return Msg(lines[0], headers, body)


def build(first: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    text = first + "\r\n"
    text += "".join(f"{k}: {v}\r\n" for k, v in headers)
    text += f"Content-Length: {len(body)}\r\n\r\n"
    return text.encode() + body


def tag_of(value: str) -> str:
    for part in value.split(";")[1:]:
        k, _, v = part.partition("=")
        if k.strip().lower() == "tag":
            return v.strip()
    return ""


def uri_in(value: str) -> str:
    """The URI of a name-addr (``<sip:...>;params``) or of an addr-spec."""
    if "<" in value:
        return value.split("<", 1)[1].split(">", 1)[0]
    return value.split(";", 1)[0].strip()


def response_to(req: Msg, status: int, reason: str, to_tag: str = "", extra=(), body=b"") -> bytes:
    headers = [("Via", v) for v in req.all("via")]
    headers += [("From", req.get("from"))]
    to = req.get("to")
    if to_tag and not tag_of(to):
        to += f";tag={to_tag}"
    headers += [("To", to), ("Call-ID", req.call_id), ("CSeq", req.get("cseq"))]
    headers += [("Record-Route", rr) for rr in req.all("record-route")]
    headers += list(extra)
    return build(f"SIP/2.0 {status} {reason}", headers, body)


class StreamReader:
    """SIP messages out of a TCP byte stream (Content-Length framing, CRLF keep-alives)."""

    def __init__(self) -> None:
        self.buf = b""
        self.pending: list[Msg] = []

    def feed(self, data: bytes) -> list[Msg]:
        self.buf += data
        out = self.pending
        while True:
            self.buf = self.buf.lstrip(b"\r\n")
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return out
            head = self.buf[:end].decode("utf-8", "replace")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() in ("content-length", "l"):
                    length = int(value.strip() or 0)
            total = end + 4 + length
            if len(self.buf) < total:
                return out
            out.append(parse(self.buf[:total]))
            self.buf = self.buf[total:]


def digest(auth_header: str, method: str, uri: str, user: str, password: str) -> str:
    fields = {}
    for part in split_commas(auth_header.split(" ", 1)[1]):
        k, _, v = part.partition("=")
        fields[k.strip().lower()] = v.strip().strip('"')
    realm, nonce = fields.get("realm", ""), fields.get("nonce", "")
    ha1 = hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()
    ha2 = hashlib.md5(f"{method}:{uri}".encode()).hexdigest()
    qop = fields.get("qop", "")
    if "auth" in qop.split(","):
        cnonce, nc = f"{random.getrandbits(32):08x}", "00000001"
        resp = hashlib.md5(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}".encode()).hexdigest()
        extra = f', qop=auth, nc={nc}, cnonce="{cnonce}"'
    else:
        resp = hashlib.md5(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
        extra = ""
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{resp}", algorithm=MD5{extra}'
    )


# ----- phones -----
@dataclass
class WakeResult:
    """One wake-up of a phone: perf_counter times, and how the call went."""

    user: str
    register_sent: float = 0.0
    registered: float = 0.0
    invite: float = 0.0
    """The relayed INVITE arrived on the new flow (0: it never did)."""
    call_id: str = ""
    ended: float = 0.0
    error: str = ""


@dataclass
class Phone:
    user: str
    token: str
    instance: str
    kam_port: int
    password: str = "secret1"
    param: str = "ABCDE12345.com.example.app.voip"
    answer: str = "answer"
    """What to do with the relayed INVITE: ``answer`` (180, 200, then ACK and BYE),
    ``decline`` (603 at once)."""
    ring_s: float = 0.0
    expires: int = 3600
    linger: float = 0.5
    """Seconds the flow stays open after the call before the phone sleeps again."""
    cseq: int = 0
    call_id: str = field(default_factory=lambda: new_id("reg"))

    def contact(self, local: str) -> str:
        return (
            f"<sip:{self.user}@{local};transport=tcp;ob;pn-provider=apns;pn-prid={self.token};"
            f'pn-param={self.param}>;+sip.instance="<urn:uuid:{self.instance}>";reg-id=1'
        )

    def _register_msg(self, local: str, extra: list[tuple[str, str]]) -> bytes:
        self.cseq += 1
        return build(
            f"REGISTER sip:{DOMAIN} SIP/2.0",
            [
                ("Via", f"SIP/2.0/TCP {local};branch={new_id('z9hG4bK')};rport"),
                ("Max-Forwards", "70"),
                ("From", f"<sip:{self.user}@{DOMAIN}>;tag={self.instance[:8]}"),
                ("To", f"<sip:{self.user}@{DOMAIN}>"),
                ("Call-ID", self.call_id),
                ("CSeq", f"{self.cseq} REGISTER"),
                ("Contact", self.contact(local)),
                ("Supported", "path, outbound, gruu"),
                ("Expires", str(self.expires)),
                ("User-Agent", "pushgate-bench"),
                *extra,
            ],
        )

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.kam_port)
        host, port = writer.get_extra_info("sockname")[:2]
        return reader, writer, f"{host}:{port}"

    async def _next(
        self, reader: asyncio.StreamReader, parser: StreamReader, timeout: float
    ) -> Msg:
        deadline = time.monotonic() + timeout
        while not parser.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no SIP message")
            data = await asyncio.wait_for(reader.read(65536), left)
            if not data:
                raise ConnectionError("connection closed by Kamailio")
            parser.feed(data)
        return parser.pending.pop(0)

    async def _do_register(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        parser: StreamReader,
        local: str,
        wake_token: str,
        result: WakeResult | None,
        timeout: float,
    ) -> None:
        extra = [("Pushgate-Wake", wake_token)] if wake_token else []
        msg = self._register_msg(local, extra)
        if result is not None:
            result.register_sent = time.perf_counter()
        writer.write(msg)
        for _ in range(3):
            reply = await self._next(reader, parser, timeout)
            if reply.is_request:
                continue
            if reply.status == 401:
                auth = digest(
                    reply.get("www-authenticate"),
                    "REGISTER",
                    f"sip:{DOMAIN}",
                    self.user,
                    self.password,
                )
                writer.write(self._register_msg(local, [("Authorization", auth)]))
                continue
            if reply.status != 200:
                raise RuntimeError(f"REGISTER {self.user}: {reply.first}")
            if result is not None:
                result.registered = time.perf_counter()
            return
        raise RuntimeError(f"REGISTER {self.user}: no 200")

    async def register(self, timeout: float = 10.0) -> WakeResult:
        """REGISTER on a new connection (digest answered), then close it: the phone is
        asleep. ``register_sent`` is when the connection was asked for."""
        result = WakeResult(self.user, register_sent=time.perf_counter())
        reader, writer, local = await self._open()
        try:
            await self._do_register(reader, writer, StreamReader(), local, "", None, timeout)
            result.registered = time.perf_counter()
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        return result

    async def wake(self, wake_token: str = "", timeout: float = 15.0) -> WakeResult:
        """What a pushed phone does: REGISTER on a new flow, take the call, sleep again."""
        result = WakeResult(self.user)
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer, local = await self._open()
            parser = StreamReader()
            await self._do_register(reader, writer, parser, local, wake_token, result, timeout)
            await self._take_call(reader, writer, parser, local, result, timeout)
        except (OSError, TimeoutError, RuntimeError, ConnectionError, ValueError) as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        return result

    async def _take_call(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        parser: StreamReader,
        local: str,
        result: WakeResult,
        timeout: float,
    ) -> None:
        invite = None
        while invite is None:
            msg = await self._next(reader, parser, timeout)
            if msg.is_request and msg.method == "INVITE":
                invite = msg
                result.invite = time.perf_counter()
                result.call_id = msg.call_id
        tag = new_id("pt")
        contact = [("Contact", f"<sip:{self.user}@{local};transport=tcp;ob>")]
        if self.answer == "decline":
            writer.write(response_to(invite, 603, "Decline", tag))
            result.ended = time.perf_counter()
            await asyncio.sleep(self.linger)
            return
        writer.write(response_to(invite, 180, "Ringing", tag, contact))
        if self.ring_s:
            await asyncio.sleep(self.ring_s)
        sdp = (
            b"v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio 9 RTP/AVP 0\r\n"
        )
        ok = response_to(
            invite, 200, "OK", tag, [*contact, ("Content-Type", "application/sdp")], sdp
        )
        writer.write(ok)
        # Until the BYE (2xx retransmitted until the ACK comes, as a UAS does).
        deadline = time.monotonic() + timeout + 60
        next_retx, interval = time.monotonic() + T1, T1
        acked = False
        while time.monotonic() < deadline:
            try:
                msg = await self._next(reader, parser, min(interval, 5.0))
            except TimeoutError:
                if not acked and time.monotonic() >= next_retx:
                    writer.write(ok)
                    interval = min(interval * 2, 4.0)
                    next_retx = time.monotonic() + interval
                continue
            if not msg.is_request:
                continue
            if msg.method == "ACK":
                acked = True
            elif msg.method == "BYE":
                writer.write(response_to(msg, 200, "OK"))
                result.ended = time.perf_counter()
                await asyncio.sleep(self.linger)
                return
            elif msg.method == "CANCEL":
                writer.write(response_to(msg, 200, "OK"))
                writer.write(response_to(invite, 487, "Request Terminated", tag))
                result.ended = time.perf_counter()
                result.error = "cancelled"
                await asyncio.sleep(self.linger)
                return
            elif msg.method != "INVITE":
                writer.write(response_to(msg, 200, "OK"))
        raise TimeoutError("no BYE")


# ----- callers -----
@dataclass
class Call:
    callee: str
    call_id: str
    branch: str
    from_tag: str
    invite: bytes
    sent: float = 0.0
    provisional: float = 0.0
    final_at: float = 0.0
    status: int = 0
    reason_header: str = ""
    done: asyncio.Future[Call] | None = None
    talk: float = 0.0
    to_header: str = ""
    routes: list[str] = field(default_factory=list)
    remote_target: str = ""
    bye: bytes = b""
    bye_final: int = 0
    retx_task: asyncio.Task[None] | None = None


class Caller(asyncio.DatagramProtocol):
    """Places INVITEs over one UDP socket; ``call()`` returns when the call is over."""

    def __init__(self, kam_port: int, user: str = "bob", domain: str = "caller.example") -> None:
        self.kam = ("127.0.0.1", kam_port)
        self.user = user
        self.domain = domain
        self.transport: asyncio.DatagramTransport | None = None
        self.local = ""
        self.calls: dict[str, Call] = {}
        self.on_final: Callable[[Call], None] | None = None

    async def start(self) -> Caller:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        host, port = transport.get_extra_info("sockname")[:2]
        self.local = f"{host}:{port}"
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError):
            import socket

            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    def close(self) -> None:
        for call in self.calls.values():
            if call.retx_task is not None:
                call.retx_task.cancel()
        if self.transport is not None:
            self.transport.close()

    def _send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data, self.kam)

    def place(self, callee: str, talk: float = 0.2) -> Call:
        """Send an INVITE to ``callee``@pushgate.test; ``call.done`` resolves at the end."""
        call_id, branch, tag = new_id("call"), new_id("z9hG4bK"), new_id("ct")
        sdp = (
            b"v=0\r\no=bob 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            b"m=audio 9 RTP/AVP 0\r\n"
        )
        invite = build(
            f"INVITE sip:{callee}@{DOMAIN} SIP/2.0",
            [
                ("Via", f"SIP/2.0/UDP {self.local};branch={branch};rport"),
                ("Max-Forwards", "70"),
                ("From", f'"Bob" <sip:{self.user}@{self.domain}>;tag={tag}'),
                ("To", f"<sip:{callee}@{DOMAIN}>"),
                ("Call-ID", call_id),
                ("CSeq", "1 INVITE"),
                ("Contact", f"<sip:{self.user}@{self.local}>"),
                ("Content-Type", "application/sdp"),
            ],
            sdp,
        )
        call = Call(callee, call_id, branch, tag, invite, talk=talk)
        call.done = asyncio.get_running_loop().create_future()
        self.calls[call_id] = call
        call.sent = time.perf_counter()
        self._send(invite)
        call.retx_task = asyncio.ensure_future(self._retransmit_invite(call))
        return call

    async def _retransmit_invite(self, call: Call) -> None:
        interval, waited = T1, 0.0
        while not call.provisional and not call.status and waited < TIMER_B:
            await asyncio.sleep(interval)
            waited += interval
            if call.provisional or call.status:
                return
            self._send(call.invite)
            interval = min(interval * 2, 4.0)
        if not call.provisional and not call.status:
            self._finish(call, 408)

    def _finish(self, call: Call, status: int = 0) -> None:
        if status and not call.status:
            call.status = status
        if call.done is not None and not call.done.done():
            call.done.set_result(call)
        self.calls.pop(call.call_id, None)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        msg = parse(data)
        call = self.calls.get(msg.call_id)
        if call is None:
            return
        if msg.is_request:
            # In-dialog requests from the phone side (none expected): answer 200.
            self._send(response_to(msg, 200, "OK"))
            return
        if msg.cseq_method == "INVITE":
            self._invite_response(call, msg)
        elif msg.cseq_method == "BYE" and msg.status >= 200:
            call.bye_final = msg.status
            self._finish(call)

    def _invite_response(self, call: Call, msg: Msg) -> None:
        now = time.perf_counter()
        if msg.status < 200:
            if not call.provisional:
                call.provisional = now
            return
        if not call.status:
            call.status = msg.status
            call.final_at = now
            call.reason_header = msg.get("reason")
            call.to_header = msg.get("to")
            if self.on_final is not None:
                self.on_final(call)
        if msg.status >= 300:
            self._send(self._ack(call, msg, hop=True))
            self._finish(call)
            return
        # 2xx (also a retransmission of it): ACK end to end.
        if not call.remote_target:
            call.routes = list(reversed(msg.all("record-route")))
            call.remote_target = uri_in(msg.get("contact"))
            asyncio.get_running_loop().call_later(call.talk, self._hang_up, call)
        self._send(self._ack(call, msg, hop=False))

    def _ack(self, call: Call, msg: Msg, hop: bool) -> bytes:
        if hop:
            first = f"ACK sip:{call.callee}@{DOMAIN} SIP/2.0"
            branch, routes = call.branch, []
        else:
            first = f"ACK {call.remote_target} SIP/2.0"
            branch, routes = new_id("z9hG4bK"), call.routes
        return build(
            first,
            [
                ("Via", f"SIP/2.0/UDP {self.local};branch={branch};rport"),
                *[("Route", r) for r in routes],
                ("Max-Forwards", "70"),
                ("From", f'"Bob" <sip:{self.user}@{self.domain}>;tag={call.from_tag}'),
                ("To", msg.get("to")),
                ("Call-ID", call.call_id),
                ("CSeq", "1 ACK"),
            ],
        )

    def _hang_up(self, call: Call) -> None:
        if call.call_id not in self.calls:
            return
        call.bye = build(
            f"BYE {call.remote_target} SIP/2.0",
            [
                ("Via", f"SIP/2.0/UDP {self.local};branch={new_id('z9hG4bK')};rport"),
                *[("Route", r) for r in call.routes],
                ("Max-Forwards", "70"),
                ("From", f'"Bob" <sip:{self.user}@{self.domain}>;tag={call.from_tag}'),
                ("To", call.to_header),
                ("Call-ID", call.call_id),
                ("CSeq", "2 BYE"),
            ],
        )
        self._send(call.bye)
        call.retx_task = asyncio.ensure_future(self._retransmit_bye(call))

    async def _retransmit_bye(self, call: Call) -> None:
        interval, waited = T1, 0.0
        while call.call_id in self.calls and waited < TIMER_B:
            await asyncio.sleep(interval)
            waited += interval
            if call.call_id not in self.calls:
                return
            self._send(call.bye)
            interval = min(interval * 2, 4.0)
        if call.call_id in self.calls:
            call.bye_final = 408
            self._finish(call)
