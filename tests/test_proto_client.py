"""The sans-IO client core (popbox.proto.client) at the bytes level: every reply fed whole,
byte by byte and split at every point; response codes; pipelining; SASL; bounds; a
round trip through the server's own encoder; and the client-side SASL mechanisms against
their RFC test vectors."""

from __future__ import annotations

import base64

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from popbox.proto import events as ev
from popbox.proto.client import (
    MAX_LINE,
    ClientConnection,
    LocalProtocolError,
    apop_timestamp,
    split_code,
)
from popbox.proto.commands import Shape, reply_shape
from popbox.proto.sasl_client import CramMd5, Login, Plain, SaslClientError, Scram, mechanism
from popbox.proto.server import ServerConnection
from popbox.proto.types import MsgNo, State
from popbox.proto.wire import MessageEncoder, wire_size

Event = ev.ServerEvent


def drain(conn: ClientConnection) -> list[Event]:
    out: list[Event] = []
    while not isinstance(event := conn.next_event(), ev.Sentinel):
        out.append(event)
        if isinstance(event, ev.ProtocolError | ev.Closed):
            break
    return out


def feed(conn: ClientConnection, data: bytes, step: int | None = None,
         cuts: list[int] | None = None) -> list[Event]:
    """Feed `data` in pieces of `step` octets (or at the offsets `cuts`), collecting
    events as they come."""
    if cuts is None:
        size = step or max(len(data), 1)
        cuts = list(range(size, len(data), size))
    out: list[Event] = []
    start = 0
    for end in [*cuts, len(data)]:
        conn.receive_data(data[start:end])
        start = end
        out += drain(conn)
    return out


def merged(events: list[Event]) -> list[Event]:
    """Adjacent Data and Lines events joined, so that chunkings compare equal."""
    out: list[Event] = []
    for event in events:
        last = out[-1] if out else None
        if isinstance(event, ev.Data) and isinstance(last, ev.Data):
            out[-1] = ev.Data(last.data + event.data)
        elif isinstance(event, ev.Lines) and isinstance(last, ev.Lines):
            out[-1] = ev.Lines(last.lines + event.lines)
        elif not (isinstance(event, ev.Data) and not event.data):
            out.append(event)
    return out


def logged_in(*commands: ev.Command) -> ClientConnection:
    """A core past the greeting and a USER/PASS login, with `commands` sent."""
    conn = ClientConnection()
    conn.receive_data(b"+OK ready\r\n")
    conn.send(ev.User("alice"))
    conn.send(ev.Pass(b"secret"))
    drain(conn)
    conn.receive_data(b"+OK\r\n+OK logged in\r\n")
    drain(conn)
    assert conn.state is State.TRANSACTION
    for command in commands:
        conn.send(command)
    return conn


def every_chunking(data: bytes, setup: tuple[ev.Command, ...]) -> list[list[Event]]:
    """The events for `data` fed whole, byte by byte, and split once at every offset."""
    results = []
    for cuts in ([], list(range(1, len(data))), *([i] for i in range(1, len(data)))):
        conn = logged_in(*setup)
        results.append(merged(feed(conn, data, cuts=cuts)))
    return results


# --- status lines and response codes ----------------------------------------------------


def test_greeting_and_apop_timestamp() -> None:
    """RFC 1939 §4 greeting; §7 APOP: the timestamp is the `<...@...>` in it."""
    conn = ClientConnection()
    events = feed(conn, b"+OK POP3 server ready <1896.697170952@dbc.mtview.ca.us>\r\n", 1)
    assert events == [ev.Ok("POP3 server ready <1896.697170952@dbc.mtview.ca.us>")]
    assert apop_timestamp(events[0].text) == "<1896.697170952@dbc.mtview.ca.us>"  # type: ignore[union-attr]
    assert apop_timestamp("popbox ready.") is None


@pytest.mark.parametrize(("line", "code", "text"), [
    (b"[IN-USE] Mailbox is locked", "IN-USE", "Mailbox is locked"),
    (b"[AUTH] Authentication failed.", "AUTH", "Authentication failed."),
    (b"[SYS/TEMP] try later", "SYS/TEMP", "try later"),
    (b"[SYS/PERM] gone", "SYS/PERM", "gone"),
    (b"[LOGIN-DELAY] wait", "LOGIN-DELAY", "wait"),
    (b"[SYS/TEMP/QUOTA] hierarchical", "SYS/TEMP/QUOTA", "hierarchical"),
    (b"[X-VENDOR]", "X-VENDOR", ""),
    (b"no code here", None, "no code here"),
    (b"[not a code] text", None, "[not a code] text"),
    (b"[] empty", None, "[] empty"),
    (b"[A//B] bad levels", None, "[A//B] bad levels"),
])
def test_response_codes(line: bytes, code: str | None, text: str) -> None:
    """RFC 2449 §8 (resp-code grammar) and RFC 3206: codes are split off the text;
    brackets that do not follow the grammar stay in the text."""
    assert split_code(line) == (code, text)
    conn = ClientConnection()
    assert feed(conn, b"-ERR " + line + b"\r\n") == [ev.Err(text, code)]


def test_err_to_login_carries_in_use() -> None:
    """RFC 2449 §8.1.1: -ERR [IN-USE] to PASS; the state stays AUTHORIZATION."""
    conn = ClientConnection(greeting=False)
    conn.send(ev.User("alice"))
    conn.send(ev.Pass(b"pw"))
    events = feed(conn, b"+OK\r\n-ERR [IN-USE] Mailbox is locked by another POP3 session.\r\n")
    assert events == [ev.Ok("", command=ev.User("alice")),
                      ev.Err("Mailbox is locked by another POP3 session.", "IN-USE",
                             ev.Pass(b"pw"))]
    assert conn.state is State.AUTHORIZATION


def test_bare_lf_and_case_of_status_indicators() -> None:
    conn = ClientConnection()
    assert feed(conn, b"+ok hi\n") == [ev.Ok("hi")]
    conn.send(ev.Capa())
    assert feed(conn, b"-err\n") == [ev.Err("", command=ev.Capa())]


@pytest.mark.parametrize("garbage", [b"HELLO\r\n", b"+OKAY\r\n", b"-ERROR x\r\n", b"\r\n"])
def test_not_a_reply_is_a_protocol_error(garbage: bytes) -> None:
    conn = ClientConnection()
    events = feed(conn, garbage)
    assert len(events) == 1 and isinstance(events[0], ev.ProtocolError)
    assert isinstance(conn.next_event(), ev.ProtocolError)  # sticky
    with pytest.raises(LocalProtocolError):
        conn.send(ev.Capa())


def test_unsolicited_err_then_close() -> None:
    """A server's notice before it closes (e.g. autologout, RFC 1939 §3) is an ErrReply
    for no command; the close that follows is clean: nothing was outstanding."""
    conn = logged_in()
    events = feed(conn, b"-ERR Disconnected for inactivity.\r\n")
    assert events == [ev.Err("Disconnected for inactivity.")]
    conn.receive_data(b"")
    assert conn.next_event() == ev.Closed(clean=True)


def test_unsolicited_ok_is_a_protocol_error() -> None:
    conn = logged_in()
    assert isinstance(feed(conn, b"+OK surprise\r\n")[0], ev.ProtocolError)


# --- multi-line replies: shape from the command table ------------------------------------


def test_list_and_uidl_shapes() -> None:
    """RFC 1939 §5, §7: LIST and UIDL are multi-line without an argument, one line with."""
    data = (b"+OK 2 messages\r\n1 120\r\n2 200\r\n.\r\n+OK 2 200\r\n"
            b"+OK\r\n1 whqtswO00WBw418f9t5JxYwZ\r\n.\r\n+OK 1 whqtswO00WBw418f9t5JxYwZ\r\n")
    setup = (ev.List(None), ev.List(MsgNo(2)), ev.Uidl(None), ev.Uidl(MsgNo(1)))
    expected = [
        ev.Ok("2 messages", command=ev.List(None), multiline=True),
        ev.Lines(("1 120", "2 200")), ev.End(ev.List(None)),
        ev.Ok("2 200", command=ev.List(MsgNo(2))),
        ev.Ok("", command=ev.Uidl(None), multiline=True),
        ev.Lines(("1 whqtswO00WBw418f9t5JxYwZ",)), ev.End(ev.Uidl(None)),
        ev.Ok("1 whqtswO00WBw418f9t5JxYwZ", command=ev.Uidl(MsgNo(1))),
    ]
    for events in every_chunking(data, setup):
        assert events == expected


def test_err_to_multiline_command_is_one_line() -> None:
    """RFC 2449 §3: -ERR is always a single line, even for RETR, LIST, CAPA."""
    setup = (ev.Retr(MsgNo(9)), ev.List(None), ev.Top(MsgNo(9), 0), ev.Noop())
    data = b"-ERR no such message\r\n-ERR [SYS/TEMP] busy\r\n-ERR no\r\n+OK\r\n"
    for events in every_chunking(data, setup):
        assert events == [ev.Err("no such message", command=ev.Retr(MsgNo(9))),
                          ev.Err("busy", "SYS/TEMP", ev.List(None)),
                          ev.Err("no", command=ev.Top(MsgNo(9), 0)),
                          ev.Ok("", command=ev.Noop())]


def test_capa_and_bare_auth_are_listings() -> None:
    """RFC 2449 §5 CAPA; RFC 5034 §4 / RFC 1734: a bare AUTH lists the mechanisms."""
    conn = ClientConnection(greeting=False)
    conn.send(ev.Capa())
    conn.send(ev.Auth(None))
    data = b"+OK\r\nUSER\r\nSASL PLAIN\r\n.\r\n+OK\r\nPLAIN\r\n..X\r\n.\r\n"
    events = merged(feed(conn, data, 3))
    assert events == [
        ev.Ok("", command=ev.Capa(), multiline=True), ev.Lines(("USER", "SASL PLAIN")),
        ev.End(ev.Capa()),
        ev.Ok("", command=ev.Auth(None), multiline=True), ev.Lines(("PLAIN", ".X")),
        ev.End(ev.Auth(None)),
    ]
    assert conn.state is State.AUTHORIZATION  # a bare AUTH logs nobody in


def test_message_body_stuffing_and_terminator_split_everywhere() -> None:
    """RFC 1939 §3: lines starting with "." are un-stuffed; "." CRLF ends the body, found
    however the data is split; what follows is the next reply."""
    body = b"Subject: x\r\n\r\n..leading dot\r\n...\r\n..\r\nmid . dot\r\n.\r\n"
    data = b"+OK 42 octets\r\n" + body + b"+OK bye\r\n"
    setup = (ev.Retr(MsgNo(1)), ev.Quit())
    expected = [
        ev.Ok("42 octets", command=ev.Retr(MsgNo(1)), multiline=True),
        ev.Data(b"Subject: x\r\n\r\n.leading dot\r\n..\r\n.\r\nmid . dot\r\n"),
        ev.End(ev.Retr(MsgNo(1))),
        ev.Ok("bye", command=ev.Quit()),
    ]
    for events in every_chunking(data, setup):
        assert events == expected


def test_body_edge_cases() -> None:
    """An empty message; a line that is "." followed by a bare CR; a dot not at a line start;
    a message whose last line is all dots."""
    cases = [
        (b".\r\n", b""),
        (b".\rx\r\n.\r\n", b"\rx\r\n"),
        (b"a.\r\n.\r\n", b"a.\r\n"),
        (b"x\r\n....\r\n.\r\n", b"x\r\n...\r\n"),
        (b"\r\n.\r\n", b"\r\n"),
    ]
    for wire, message in cases:
        for events in every_chunking(b"+OK\r\n" + wire, (ev.Top(MsgNo(1), 5),)):
            data = b"".join(e.data for e in events if isinstance(e, ev.Data))
            assert data == message and events[-1] == ev.End(ev.Top(MsgNo(1), 5)), (wire, events)


def test_long_message_lines_stream_without_buffering() -> None:
    """A body is not split into lines: a 4 MB line passes through with at most two octets
    held back."""
    conn = logged_in(ev.Retr(MsgNo(1)))
    conn.receive_data(b"+OK\r\n")
    drain(conn)
    total = 0
    for _ in range(64):
        conn.receive_data(b"x" * 65536)
        for event in drain(conn):
            assert isinstance(event, ev.Data)
            total += len(event.data)
        assert conn.buffered <= 2
    events = feed(conn, b"\r\n.\r\n")
    assert total + sum(len(e.data) for e in events if isinstance(e, ev.Data)) == 4 * 2**20 + 2
    assert events[-1] == ev.End(ev.Retr(MsgNo(1)))


# --- pipelining (RFC 2449 §6.6) ----------------------------------------------------------


def test_pipelined_replies_match_commands_in_order() -> None:
    """Several commands sent at once; the replies in one buffer are matched in order,
    fed whole and byte by byte."""
    commands = (ev.Stat(), ev.List(None), ev.Retr(MsgNo(1)), ev.Uidl(MsgNo(1)),
                ev.Dele(MsgNo(1)), ev.Noop(), ev.Quit())
    data = (b"+OK 1 5\r\n+OK\r\n1 5\r\n.\r\n+OK\r\nabc\r\n.\r\n+OK 1 u1\r\n"
            b"+OK deleted\r\n-ERR [SYS/TEMP] later\r\n+OK bye\r\n")
    for step in (None, 1, 2, 7):
        conn = logged_in(*commands)
        assert conn.outstanding == len(commands)
        events = merged(feed(conn, data, step))
        assert [type(e) for e in events] == [
            ev.Ok, ev.Ok, ev.Lines, ev.End, ev.Ok, ev.Data, ev.End,
            ev.Ok, ev.Ok, ev.Err, ev.Ok]
        answered = [e.command for e in events if isinstance(e, ev.Ok | ev.Err)]
        assert answered == [ev.Stat(), ev.List(None), ev.Retr(MsgNo(1)), ev.Uidl(MsgNo(1)),
                            ev.Dele(MsgNo(1)), ev.Noop(), ev.Quit()]
        assert events[9] == ev.Err("later", "SYS/TEMP", ev.Noop())
        assert conn.state is State.CLOSED and conn.outstanding == 0


def test_pipelined_login_then_transaction_commands() -> None:
    """USER, PASS and STAT in one write: STAT is allowed while the login's reply is
    outstanding (the state is not known yet)."""
    conn = ClientConnection()
    out = conn.send(ev.User("a")) + conn.send(ev.Pass(b"p")) + conn.send(ev.Stat())
    assert out == b"USER a\r\nPASS p\r\nSTAT\r\n"
    events = feed(conn, b"+OK hi\r\n+OK\r\n+OK in\r\n+OK 0 0\r\n")
    assert events[-1] == ev.Ok("0 0", command=ev.Stat()) and conn.state is State.TRANSACTION


# --- SASL (RFC 5034 §4) ------------------------------------------------------------------


def test_sasl_exchange() -> None:
    conn = ClientConnection(greeting=False)
    assert conn.send(ev.Auth("SCRAM-SHA-256", b"n,,n=u,r=x")) == (
        b"AUTH SCRAM-SHA-256 " + base64.b64encode(b"n,,n=u,r=x") + b"\r\n")
    events = feed(conn, b"+ " + base64.b64encode(b"r=xy,s=c2FsdA==,i=4096") + b"\r\n")
    assert events == [ev.Continuation(b"r=xy,s=c2FsdA==,i=4096",
                                      ev.Auth("SCRAM-SHA-256", b"n,,n=u,r=x"))]
    with pytest.raises(LocalProtocolError):
        conn.send(ev.Stat())  # the challenge must be answered first
    assert conn.send(ev.SaslResponse(b"final")) == base64.b64encode(b"final") + b"\r\n"
    assert feed(conn, b"+ dj1zaWc=\r\n") == [ev.Continuation(
        b"v=sig", ev.Auth("SCRAM-SHA-256", b"n,,n=u,r=x"))]
    assert conn.send(ev.SaslResponse(b"")) == b"\r\n"
    assert feed(conn, b"+OK Logged in.\r\n") == [
        ev.Ok("Logged in.", command=ev.Auth("SCRAM-SHA-256", b"n,,n=u,r=x"))]
    assert conn.state is State.TRANSACTION


def test_sasl_cancel_empty_initial_response_and_errors() -> None:
    conn = ClientConnection(greeting=False)
    assert conn.send(ev.Auth("PLAIN", b"")) == b"AUTH PLAIN =\r\n"  # RFC 5034 §4
    assert feed(conn, b"+ \r\n") == [ev.Continuation(b"", ev.Auth("PLAIN", b""))]
    assert conn.send(ev.SaslCancel()) == b"*\r\n"
    assert feed(conn, b"-ERR [AUTH] cancelled\r\n") == [
        ev.Err("cancelled", "AUTH", ev.Auth("PLAIN", b""))]
    with pytest.raises(LocalProtocolError):
        conn.send(ev.SaslResponse(b"x"))  # no challenge outstanding
    conn.send(ev.Auth("LOGIN"))
    assert isinstance(feed(conn, b"+ not base64!\r\n")[0], ev.ProtocolError)


def test_challenge_outside_sasl_is_a_protocol_error() -> None:
    conn = logged_in(ev.Stat())
    assert isinstance(feed(conn, b"+ abcd\r\n")[0], ev.ProtocolError)


# --- bounds, close, STLS -----------------------------------------------------------------


@pytest.mark.parametrize("setup", [(), (ev.List(None),)])
def test_endless_line_is_a_protocol_error_with_bounded_memory(
    setup: tuple[ev.Command, ...],
) -> None:
    """A server that sends a status or listing line without end: a ProtocolError once the
    line passes MAX_LINE octets; the buffer never holds more than that plus one read."""
    conn = logged_in(*setup)
    if setup:
        feed(conn, b"+OK\r\n")
    for _ in range(100):
        conn.receive_data(b"A" * 4096)
        assert conn.buffered <= MAX_LINE + 4096
        events = drain(conn)
        if events:
            break
    assert len(events) == 1 and isinstance(events[0], ev.ProtocolError)
    assert "longer than" in events[0].reason
    conn.receive_data(b"A" * 1_000_000)
    assert conn.buffered == 0 and isinstance(conn.next_event(), ev.ProtocolError)


def test_line_of_exactly_max_line_is_accepted() -> None:
    conn = ClientConnection(max_line=64)
    text = b"x" * (64 - 6)
    assert feed(conn, b"+OK " + text + b"\r\n") == [ev.Ok(text.decode())]
    conn = ClientConnection(max_line=64)
    assert isinstance(feed(conn, b"+OK " + text + b"y\r\n")[0], ev.ProtocolError)


def test_close_mid_reply_is_unclean_and_after_quit_clean() -> None:
    conn = logged_in(ev.Retr(MsgNo(1)))
    events = feed(conn, b"+OK\r\npart of a mess")
    conn.receive_data(b"")
    assert drain(conn)[-1] == ev.Closed(clean=False)
    assert merged(events)[1] == ev.Data(b"part of a mess")
    conn = logged_in(ev.Quit())
    feed(conn, b"+OK bye\r\n")
    conn.receive_data(b"")
    assert conn.next_event() == ev.Closed(clean=True)


def test_data_after_stls_ok_is_refused() -> None:
    """RFC 2595 §4: nothing may follow +OK to STLS before TLS; a server (or someone on the
    path) that sends more gets a ProtocolError, not a reply we would trust later."""
    conn = ClientConnection()
    conn.send(ev.Stls())
    events = feed(conn, b"+OK hi\r\n+OK Begin TLS\r\n+OK injected\r\n")
    assert events[0] == ev.Ok("hi")
    assert isinstance(events[1], ev.ProtocolError)
    conn = ClientConnection()
    conn.send(ev.Stls())
    assert feed(conn, b"+OK hi\r\n+OK Begin TLS\r\n")[-1] == ev.Ok("Begin TLS", command=ev.Stls())
    with pytest.raises(LocalProtocolError):
        conn.send(ev.Capa())
    conn.tls_started()
    assert conn.send(ev.Capa()) == b"CAPA\r\n"


# --- what we send ------------------------------------------------------------------------


def test_encoding_every_command() -> None:
    """RFC 1939 §§5-7, RFC 2449 §5, RFC 2595 §4, RFC 5034 §4."""
    conn = ClientConnection(greeting=False)
    assert conn.send(ev.Capa()) == b"CAPA\r\n"
    assert conn.send(ev.Stls()) == b"STLS\r\n"
    conn = ClientConnection(greeting=False)
    assert conn.send(ev.User("alice smith")) == b"USER alice smith\r\n"
    assert conn.send(ev.Pass(b"pass word")) == b"PASS pass word\r\n"
    assert conn.send(ev.Apop("mrose", "c4c9334bac560ecc979e58001b3e22fb")) == (
        b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n")
    assert conn.send(ev.Auth(None)) == b"AUTH\r\n"
    conn = logged_in()
    expected: dict[ev.Command, bytes] = {
        ev.Stat(): b"STAT", ev.List(None): b"LIST", ev.List(MsgNo(3)): b"LIST 3",
        ev.Uidl(None): b"UIDL", ev.Uidl(MsgNo(4)): b"UIDL 4", ev.Retr(MsgNo(5)): b"RETR 5",
        ev.Top(MsgNo(6), 0): b"TOP 6 0", ev.Dele(MsgNo(7)): b"DELE 7", ev.Noop(): b"NOOP",
        ev.Rset(): b"RSET", ev.Utf8(): b"UTF8", ev.Quit(): b"QUIT",
    }
    for command, line in expected.items():
        assert conn.send(command) == line + b"\r\n"


@pytest.mark.parametrize("command", [
    ev.User("a\r\nDELE 1"), ev.User(""), ev.Pass(b"x\nDELE 1"), ev.Pass(b""),
    ev.Apop("a b", "0" * 32), ev.Auth("PL AIN"), ev.Pass(b"p" * 300),
])
def test_commands_that_would_break_framing_are_refused(command: ev.Command) -> None:
    """No CR, LF or NUL in arguments (command injection); RFC 2449 §4: 255 octets."""
    with pytest.raises(LocalProtocolError):
        ClientConnection(greeting=False).send(command)


def test_nothing_is_pipelined_after_auth_or_stls() -> None:
    """RFC 5034 §4: the line after AUTH answers its challenge; RFC 2595 §4: the client
    must not send anything after STLS until the server answered."""
    for first in (ev.Auth("PLAIN", b"\0u\0p"), ev.Stls()):
        conn = ClientConnection()
        conn.send(first)
        with pytest.raises(LocalProtocolError):
            conn.send(ev.Capa())


def test_commands_in_the_wrong_state_are_refused_locally() -> None:
    """RFC 1939 §3: transaction commands only after login; USER only before."""
    conn = ClientConnection()
    feed(conn, b"+OK\r\n")
    with pytest.raises(LocalProtocolError):
        conn.send(ev.Retr(MsgNo(1)))
    conn = logged_in()
    with pytest.raises(LocalProtocolError):
        conn.send(ev.User("bob"))


@given(st.lists(st.sampled_from([
    ev.Stat(), ev.List(None), ev.List(MsgNo(1)), ev.Uidl(None), ev.Uidl(MsgNo(12)),
    ev.Retr(MsgNo(3)), ev.Top(MsgNo(2), 10), ev.Dele(MsgNo(1)), ev.Noop(), ev.Rset(),
    ev.Capa(), ev.Utf8(),
]), min_size=1, max_size=8))
def test_server_core_parses_what_the_client_core_sends(commands: list[ev.Command]) -> None:
    """The two cores joined in memory: every command the client encodes (pipelined) is
    parsed back by the server core as the same command, in order."""
    client = logged_in()
    server = ServerConnection()
    server.receive_data(b"USER alice\r\n")
    server.next_event()
    server.send(ev.Ok())
    server.receive_data(b"PASS secret\r\n")
    server.next_event()
    server.send(ev.Ok())
    server.receive_data(b"".join(client.send(c) for c in commands))
    parsed = []
    while not isinstance(event := server.next_event(), ev.Sentinel):
        parsed.append(event)
        server.send(ev.Ok())
        if reply_shape(event) in (Shape.LISTING, Shape.MESSAGE):  # type: ignore[arg-type]
            server.send(ev.End())
    assert parsed == commands


# --- round trip through the server's encoder ---------------------------------------------


def expected_on_the_wire(message: bytes) -> bytes:
    """RFC 1939 §3: what the client gets back: CRLF line ends, a final line end."""
    data = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data if not data or data.endswith(b"\r\n") else data + b"\r\n"


@settings(max_examples=300)
@given(
    st.binary(max_size=300) | st.lists(st.sampled_from(
        [b".", b"..", b"\r", b"\n", b"\r\n", b".\r\n", b"x", b"From "]), max_size=40
    ).map(b"".join),
    st.lists(st.integers(min_value=1, max_value=50), max_size=30),
    st.lists(st.integers(min_value=1, max_value=50), max_size=30),
)
@example(b".\r\n", [1], [1])
@example(b"a\r", [], [])
def test_round_trip_through_the_server_encoder(
    message: bytes, store_cuts: list[int], wire_cuts: list[int]
) -> None:
    """For any message bytes: popbox's MessageEncoder (the server side), in any chunking,
    fed to the client core in any chunking, gives back the message with CRLF line ends,
    of exactly the size STAT/LIST report (wire_size); then the next reply."""
    encoder = MessageEncoder()
    wire, start = [], 0
    for size in [*store_cuts, len(message)]:
        wire.append(encoder.feed(message[start : start + size]))
        start += size
    wire.append(encoder.finish())
    data = b"+OK\r\n" + b"".join(wire) + b"+OK 0 0\r\n"
    cuts, offset = [], 0
    for size in wire_cuts:
        offset += size
        if offset < len(data):
            cuts.append(offset)
    conn = logged_in(ev.Retr(MsgNo(1)), ev.Stat())
    events = feed(conn, data, cuts=cuts)
    body = b"".join(e.data for e in events if isinstance(e, ev.Data))
    assert body == expected_on_the_wire(message)
    assert len(body) == wire_size(message)
    assert events[-2:] == [ev.End(ev.Retr(MsgNo(1))), ev.Ok("0 0", command=ev.Stat())]


@settings(max_examples=300)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=64))
def test_arbitrary_server_bytes_never_raise(data: bytes, step: int) -> None:
    """Whatever a hostile server sends, the core returns events; it never raises."""
    pipelined = (ev.User("a"), ev.Pass(b"p"), ev.Retr(MsgNo(1)), ev.List(None), ev.Stat(),
                 ev.Quit())
    for commands in (pipelined, (ev.Auth("PLAIN"),)):
        conn = ClientConnection()
        for command in commands:
            conn.send(command)
        events = feed(conn, data, step)
        conn.receive_data(b"")
        events += drain(conn)
        assert all(isinstance(e, ev.ServerEvent) for e in events)


# --- client-side SASL mechanisms ---------------------------------------------------------


def test_scram_sha_256_rfc7677_example() -> None:
    """RFC 7677 §3: user "user", password "pencil"; the server's signature is verified."""
    mech = Scram("SCRAM-SHA-256", "user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    assert mech.initial() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    assert mech.respond(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                        b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096") == (
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    assert mech.respond(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=") == b""
    mech.finish()


def test_scram_sha_1_rfc5802_example_and_a_forged_server() -> None:
    """RFC 5802 §5; a server that does not know the password cannot forge v=, and one
    that says +OK without proving itself is refused too."""
    server_first = b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096"
    mech = Scram("SCRAM-SHA-1", "user", "pencil", nonce="fyko+d2lbbFgONRv9qkxdawL")
    mech.initial()
    assert mech.respond(server_first) == (
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=")
    assert mech.respond(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=") == b""
    forged = Scram("SCRAM-SHA-1", "user", "pencil", nonce="fyko+d2lbbFgONRv9qkxdawL")
    forged.initial()
    forged.respond(server_first)
    with pytest.raises(SaslClientError):
        forged.respond(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
    silent = Scram("SCRAM-SHA-1", "user", "pencil", nonce="fyko+d2lbbFgONRv9qkxdawL")
    silent.initial()
    silent.respond(server_first)
    with pytest.raises(SaslClientError):
        silent.finish()


def test_cram_md5_rfc2195_example() -> None:
    mech = CramMd5("tim", "tanstaaftanstaaf")
    assert mech.initial() is None
    assert mech.respond(b"<1896.697170952@postoffice.reston.mci.net>") == (
        b"tim b913a602c7eda7a495b4e6e7334d3890")


def test_plain_and_login() -> None:
    """RFC 4616 §2 (PLAIN as the initial response); LOGIN answers two challenges."""
    assert Plain("tim", "tanstaaftanstaaf").initial() == b"\0tim\0tanstaaftanstaaf"
    assert Plain("Kurt", "xipj3plmq", "Ursel").initial() == b"Ursel\0Kurt\0xipj3plmq"
    login = Login("tim", "pw")
    assert login.initial() is None
    assert login.respond(b"Username:") == b"tim"
    assert login.respond(b"Password:") == b"pw"
    with pytest.raises(SaslClientError):
        login.respond(b"More:")
    with pytest.raises(ValueError, match="unsupported"):
        mechanism("GSSAPI", "u", "p")
    assert "pw" not in repr(login) and "xipj3plmq" not in repr(Plain("K", "xipj3plmq"))


# --- what the replies say, bytes in ---------------------------------------------------


def replies_to(command: ev.Command, wire: bytes) -> list[Event]:
    conn = logged_in(command)
    return merged(feed(conn, wire))


def test_stat_and_list_replies_parsed_from_the_wire() -> None:
    """RFC 1939 §5: STAT is "+OK count octets", LIST n "+OK n octets", a LIST listing one
    "n octets" line per message; text after the numbers is allowed and ignored."""
    from popbox.proto.client import listing, numbers

    (ok,) = replies_to(ev.Stat(), b"+OK 2 320 and more\r\n")
    assert isinstance(ok, ev.Ok) and numbers(ok.text) == (2, 320)
    ok, lines, end = replies_to(ev.List(None), b"+OK\r\n1 120\r\n2 200 x\r\n.\r\n")
    assert isinstance(lines, ev.Lines) and end == ev.End(ev.List(None))
    assert listing(list(lines.lines)) == {MsgNo(1): 120, MsgNo(2): 200}
    for bad in ("", "2", "two 300", "2 -3", "2 3x"):
        assert numbers(bad) is None, bad
    assert listing(["1 120", "oops"]) is None


def test_uidl_and_capa_replies_parsed_from_the_wire() -> None:
    """RFC 1939 §7 UIDL lines "n unique-id"; RFC 2449 §5 CAPA: tag and arguments."""
    from popbox.proto.client import capabilities, uidl_line, uidl_listing

    _, lines, _ = replies_to(ev.Uidl(None), b"+OK\r\n1 whqtswO00WBw418f9t5JxYwZ\r\n2 QhdP\r\n.\r\n")
    assert isinstance(lines, ev.Lines)
    assert uidl_listing(list(lines.lines)) == {MsgNo(1): "whqtswO00WBw418f9t5JxYwZ",
                                               MsgNo(2): "QhdP"}
    (ok,) = replies_to(ev.Uidl(MsgNo(2)), b"+OK 2 QhdP\r\n")
    assert isinstance(ok, ev.Ok) and uidl_line(ok.text) == (MsgNo(2), "QhdP")
    assert uidl_line("2") is None and uidl_listing(["x y"]) is None
    conn = ClientConnection(greeting=False)
    conn.send(ev.Capa())
    _, caps, _ = merged(feed(conn, b"+OK\r\ntop\r\nSASL PLAIN SCRAM-SHA-256\r\n\r\n.\r\n"))
    assert isinstance(caps, ev.Lines)
    assert capabilities(list(caps.lines)) == {"TOP": [], "SASL": ["PLAIN", "SCRAM-SHA-256"]}
