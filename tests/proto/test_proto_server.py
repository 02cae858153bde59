"""The sans-IO server core: framing, parsing, states, pipelining (RFC 1939, 2449, 5034)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popbox.proto import events as ev
from popbox.proto.commands import Shape, reply_shape
from popbox.proto.server import ServerConnection
from popbox.proto.types import MsgNo, State
from popbox.proto.wire import to_wire, wire_size


def events_for(data: bytes, *, state: State = State.AUTHORIZATION, chunk: int = 0) -> list[object]:
    """Feed `data` (whole, or `chunk` bytes at a time) and answer every command with +OK."""
    conn = logged_in() if state is State.TRANSACTION else ServerConnection()
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
    out: list[object] = []
    for piece in pieces:
        conn.receive_data(piece)
        while (event := conn.next_event()) is not ev.NEED_DATA:
            out.append(event)
            answer_ok(conn, event)
    return out


def answer_ok(conn: ServerConnection, event: object) -> None:
    """+OK, and the end of the multi-line reply when the command's shape has one."""
    conn.send(ev.Ok())
    if isinstance(event, ev.Command) and reply_shape(event) in (Shape.LISTING, Shape.MESSAGE):
        conn.send(ev.End())


def listing(text: str, lines: tuple[str, ...]) -> bytes:
    """The bytes of a listing answering CAPA: +OK, the lines, the end."""
    conn = ServerConnection()
    conn.receive_data(b"CAPA\r\n")
    assert conn.next_event() == ev.Capa()
    return conn.send(ev.Ok(text)) + conn.send(ev.Lines(lines)) + conn.send(ev.End())


def logged_in() -> ServerConnection:
    conn = ServerConnection()
    conn.receive_data(b"USER a\r\nPASS b\r\n")
    for _ in range(2):
        assert isinstance(conn.next_event(), ev.User | ev.Pass)
        conn.send(ev.Ok())
    assert conn.state is State.TRANSACTION
    return conn


def one(line: bytes, state: State = State.TRANSACTION) -> object:
    (event,) = events_for(line, state=state)
    return event


TRANSACTION_CASES = [
    (b"STAT\r\n", ev.Stat()),
    (b"stat\r\n", ev.Stat()),
    (b"LIST\r\n", ev.List(None)),
    (b"LIST 1\r\n", ev.List(MsgNo(1))),
    (b"list 4294967297\r\n", ev.List(MsgNo(4294967297))),
    (b"LIST 0\r\n", ev.List(MsgNo(0))),
    (b"LIST -1\r\n", ev.Invalid(ev.Problem.BAD_MESSAGE_NUMBER, "LIST")),
    (b"LIST 1 2\r\n", ev.Invalid(ev.Problem.BAD_ARGUMENTS, "LIST")),
    (b"RETR x\r\n", ev.Invalid(ev.Problem.BAD_MESSAGE_NUMBER, "RETR")),
    (b"RETR\r\n", ev.Invalid(ev.Problem.BAD_ARGUMENTS, "RETR")),
    (b"RETR 2\r\n", ev.Retr(MsgNo(2))),
    (b"TOP 1\r\n", ev.Invalid(ev.Problem.BAD_ARGUMENTS, "TOP")),
    (b"TOP\r\n", ev.Invalid(ev.Problem.BAD_ARGUMENTS, "TOP")),
    (b"TOP 1 -1\r\n", ev.Invalid(ev.Problem.BAD_ARGUMENTS, "TOP")),
    (b"TOP 1 0\r\n", ev.Top(MsgNo(1), 0)),
    (b"TOP 1 99999999\r\n", ev.Top(MsgNo(1), 99999999)),
    (b"DELE 3\r\n", ev.Dele(MsgNo(3))),
    (b"NOOP extra\r\n", ev.Invalid(ev.Problem.BAD_ARGUMENTS, "NOOP")),
    (b"UIDL\n", ev.Uidl(None)),
    (b"UIDL 7\r\n", ev.Uidl(MsgNo(7))),
    (b"RSET\r\n", ev.Rset()),
    (b"\r\n", ev.Invalid(ev.Problem.EMPTY_LINE)),
    (b"   \r\n", ev.Invalid(ev.Problem.EMPTY_LINE)),
    (b"XYZZY\r\n", ev.Invalid(ev.Problem.UNKNOWN_COMMAND, "XYZZY")),
    (b"LI:ST\r\n", ev.Invalid(ev.Problem.UNKNOWN_COMMAND)),
    (b"RETR 1\0\r\n", ev.Invalid(ev.Problem.BAD_CHARACTERS, "RETR")),
    (b"\xff\xfe\r\n", ev.Invalid(ev.Problem.UNKNOWN_COMMAND)),
    (b"USER x\r\n", ev.Invalid(ev.Problem.WRONG_STATE, "USER")),
    (b"CAPA\r\n", ev.Capa()),
]


@pytest.mark.parametrize(("line", "expected"), TRANSACTION_CASES)
@pytest.mark.parametrize("chunk", [0, 1])
def test_transaction_parsing(line: bytes, expected: object, chunk: int) -> None:
    """RFC 1939 §5 commands and their argument grammar, whole and byte by byte."""
    (event,) = events_for(line, state=State.TRANSACTION, chunk=chunk)
    assert event == expected


AUTHORIZATION_CASES = [
    (b"USER alice\r\n", ev.User("alice")),
    (b"user alice@example.org\r\n", ev.User("alice@example.org")),
    (b"APOP mrose c4c9334bac560ecc979e58001b3e22fb\r\n",
     ev.Apop("mrose", "c4c9334bac560ecc979e58001b3e22fb")),
    (b"APOP mrose short\r\n", ev.Invalid(ev.Problem.BAD_ARGUMENTS, "APOP")),
    (b"STAT\r\n", ev.Invalid(ev.Problem.WRONG_STATE, "STAT")),
    (b"TOP\r\n", ev.Invalid(ev.Problem.WRONG_STATE, "TOP")),
    (b"PASS secret\r\n", ev.Invalid(ev.Problem.PASS_WITHOUT_USER, "PASS")),
    (b"AUTH\r\n", ev.Auth(None)),
    (b"AUTH plain\r\n", ev.Auth("PLAIN")),
    (b"AUTH PLAIN AGEAYg==\r\n", ev.Auth("PLAIN", b"\0a\0b")),
    (b"AUTH PLAIN =\r\n", ev.Auth("PLAIN", b"")),
    (b"AUTH PLAIN !!!\r\n", ev.Invalid(ev.Problem.BAD_BASE64, "AUTH")),
    (b"STLS\r\n", ev.Stls()),
    (b"QUIT\r\n", ev.Quit()),
]


@pytest.mark.parametrize(("line", "expected"), AUTHORIZATION_CASES)
@pytest.mark.parametrize("chunk", [0, 1])
def test_authorization_parsing(line: bytes, expected: object, chunk: int) -> None:
    """RFC 1939 §4 and §7, RFC 5034 §4 (AUTH), RFC 2595 §4 (STLS)."""
    (event,) = events_for(line, chunk=chunk)
    assert event == expected


def test_pass_keeps_spaces_and_needs_user_first() -> None:
    """RFC 1939 §7: PASS has one argument, so spaces are part of the password."""
    events = events_for(b"USER a\r\nPASS  two words \r\n")
    assert events[1] == ev.Pass(b" two words ")


def test_pass_after_another_command_is_refused() -> None:
    events = events_for(b"USER a\r\nCAPA\r\nPASS x\r\n")
    assert events[2] == ev.Invalid(ev.Problem.PASS_WITHOUT_USER, "PASS")


def test_pass_repr_hides_secret() -> None:
    assert "hunter2" not in repr(ev.Pass(b"hunter2"))


def test_state_moves_only_on_success() -> None:
    conn = ServerConnection()
    conn.receive_data(b"USER a\r\nPASS b\r\n")
    conn.next_event()
    conn.send(ev.Ok())
    conn.next_event()
    conn.send(ev.Err("no"))
    assert conn.state is State.AUTHORIZATION
    conn.receive_data(b"QUIT\r\n")
    assert conn.next_event() == ev.Quit()
    conn.send(ev.Ok())
    assert conn.state is State.CLOSED


def test_quit_in_transaction_enters_update() -> None:
    """RFC 1939 §6: QUIT in TRANSACTION enters UPDATE; the reply ends the session."""
    conn = logged_in()
    conn.receive_data(b"QUIT\r\n")
    assert conn.next_event() == ev.Quit()
    assert conn.state is State.UPDATE
    assert conn.send(ev.Ok("bye")) == b"+OK bye\r\n"
    assert conn.state is State.CLOSED


def test_pipelined_commands_wait_for_each_reply() -> None:
    """RFC 2449 §6.6: all buffered commands are answered in order, one reply each."""
    conn = logged_in()
    conn.receive_data(b"STAT\r\nLIST\r\nNOOP\r\nQUI")
    assert conn.next_event() == ev.Stat()
    assert conn.next_event() is ev.PAUSED
    conn.send(ev.Ok())
    assert conn.next_event() == ev.List(None)
    answer_ok(conn, ev.List(None))
    assert conn.next_event() == ev.Noop()
    conn.send(ev.Ok())
    assert conn.next_event() is ev.NEED_DATA
    conn.receive_data(b"T\r\n")
    assert conn.next_event() == ev.Quit()


def test_long_line_rejected_and_session_goes_on() -> None:
    """RFC 2449 §4: 255 octets accepted; longer is -ERR, and the next command works."""
    ok_line = b"USER " + b"a" * 248 + b"\r\n"
    assert len(ok_line) == 255
    assert events_for(ok_line) == [ev.User("a" * 248)]
    events = events_for(b"USER " + b"a" * 249 + b"\r\nQUIT\r\n")
    assert events == [ev.Invalid(ev.Problem.LINE_TOO_LONG, "USER"), ev.Quit()]


@pytest.mark.parametrize("chunk", [0, 1000, 4096])
def test_huge_line_is_never_buffered(chunk: int) -> None:
    conn = ServerConnection()
    huge = b"X" * 1_000_000
    for i in range(0, len(huge), chunk or len(huge)):
        conn.receive_data(huge[i : i + (chunk or len(huge))])
        assert conn.buffered <= 8192
    conn.receive_data(b"\r\nCAPA\r\n")
    events = []
    while (event := conn.next_event()) is not ev.NEED_DATA:
        events.append(event)
        conn.send(ev.Err("x"))
    assert events == [ev.Invalid(ev.Problem.LINE_TOO_LONG), ev.Capa()]


def test_sasl_exchange() -> None:
    """RFC 5034 §4: challenges, base64 responses, `*` cancels."""
    conn = ServerConnection()
    conn.receive_data(b"AUTH LOGIN\r\n")
    assert conn.next_event() == ev.Auth("LOGIN")
    assert conn.send(ev.Continuation(b"Username:")) == b"+ VXNlcm5hbWU6\r\n"
    conn.receive_data(b"YQ==\r\n")
    assert conn.next_event() == ev.SaslResponse(b"a")
    conn.send(ev.Continuation(b"Password:"))
    conn.receive_data(b"*\r\n")
    assert conn.next_event() == ev.SaslCancel()
    conn.send(ev.Err("cancelled"))
    conn.receive_data(b"YQ==\r\n")
    assert conn.next_event() == ev.Invalid(ev.Problem.UNKNOWN_COMMAND)


def test_sasl_bad_base64_and_long_response() -> None:
    conn = ServerConnection()
    conn.receive_data(b"AUTH PLAIN\r\n")
    conn.next_event()
    conn.send(ev.Continuation(b""))
    conn.receive_data(b"not base64!\r\n")
    assert conn.next_event() == ev.Invalid(ev.Problem.BAD_BASE64, "AUTH")
    conn.send(ev.Err("bad"))
    conn.receive_data(b"AUTH PLAIN\r\n")
    conn.next_event()
    conn.send(ev.Continuation(b""))
    long = b"QUFB" * 1000  # 4000 octets: longer than a command line, fine for SASL
    conn.receive_data(long + b"\r\n")
    assert conn.next_event() == ev.SaslResponse(b"AAA" * 1000)


def test_stls_discards_pipelined_plaintext() -> None:
    """RFC 2595 §4 / CVE-2011-0411: nothing sent after STLS is executed."""
    conn = ServerConnection()
    conn.receive_data(b"STLS\r\nCAPA\r\nUSER evil\r\n")
    assert conn.next_event() == ev.Stls()
    conn.send(ev.Ok("Begin TLS negotiation"))
    assert conn.next_event() is ev.NEED_DATA
    conn.receive_data(b"CAPA\r\n")
    assert conn.next_event() == ev.Capa()


def test_eof() -> None:
    conn = ServerConnection()
    conn.receive_data(b"NOOP")
    conn.receive_data(b"")
    assert conn.next_event() == ev.ConnectionClosed()
    assert conn.state is State.CLOSED


def test_reply_bytes() -> None:
    from popbox.proto.types import RespCode

    conn = ServerConnection()
    assert conn.send(ev.Err("locked", RespCode.IN_USE)) == b"-ERR [IN-USE] locked\r\n"
    assert listing("caps", ("TOP", ".odd")) == b"+OK caps\r\nTOP\r\n..odd\r\n.\r\n"
    assert conn.send(ev.Ok("a\r\nb")) == b"+OK a  b\r\n"


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=300), max_size=8), st.booleans())
def test_never_raises_on_arbitrary_bytes(pieces: list[bytes], logged: bool) -> None:
    """Whatever arrives, the core produces events, never an exception."""
    conn = logged_in() if logged else ServerConnection()
    for piece in [*pieces, b""]:
        conn.receive_data(piece)
        while (event := conn.next_event()) not in (ev.NEED_DATA,):
            assert event is not ev.PAUSED
            if isinstance(event, ev.Auth) and event.mechanism:
                conn.send(ev.Continuation(b""))
            else:
                conn.send(ev.Err("no"))
            if conn.state is State.CLOSED:
                break


def test_apop_digest_rfc1939_example() -> None:
    """RFC 1939 §7: the example APOP exchange."""
    from popbox.proto import apop

    stamp = "<1896.697170952@dbc.mtview.ca.us>"
    assert apop.digest(stamp, b"tanstaaf") == "c4c9334bac560ecc979e58001b3e22fb"
    assert apop.matches(stamp, b"tanstaaf", "C4C9334BAC560ECC979E58001B3E22FB")
    assert not apop.matches(stamp, b"tanstaaF", "c4c9334bac560ecc979e58001b3e22fb")


@given(st.lists(st.text(alphabet=st.sampled_from("a.\r\n é"), max_size=6), max_size=6))
def test_multiline_fast_path_matches_line_by_line(lines: list[str]) -> None:
    """Each line cleaned of line breaks and byte-stuffed (RFC 1939 §3), however it is built."""
    expected = b""
    for line in lines:
        raw = line.replace("\r", " ").replace("\n", " ").encode()
        expected += (b"." + raw if raw.startswith(b".") else raw) + b"\r\n"
    wire = listing("x", tuple(lines))
    assert wire == b"+OK x\r\n" + expected + b".\r\n"


def test_table_names_each_commands_verb_shape_and_capability() -> None:
    """RFC 2449 §§3, 5: the table gives each command's verb and reply shape; CAPA lists
    the capabilities of the commands offered, before-login ones only before login."""
    from popbox.proto import commands

    assert commands.verb(ev.Top(MsgNo(1), 0)) == "TOP"
    assert commands.verb(ev.SaslCancel()) == "AUTH"
    assert commands.reply_shape(ev.List(None)) is Shape.LISTING
    assert commands.reply_shape(ev.List(MsgNo(1))) is Shape.SINGLE
    assert commands.reply_shape(ev.Auth(None)) is Shape.LISTING
    assert commands.reply_shape(ev.Auth("PLAIN")) is Shape.SASL
    assert commands.reply_shape(ev.Retr(MsgNo(1))) is Shape.MESSAGE
    offered = {"TOP": "", "UIDL": "", "UTF8": "USER", "USER": "", "SASL": "PLAIN LOGIN"}
    assert commands.capabilities(State.AUTHORIZATION, offered) == [
        "TOP", "UIDL", "UTF8 USER", "USER", "SASL PLAIN LOGIN"]
    assert commands.capabilities(State.TRANSACTION, offered) == ["TOP", "UIDL", "UTF8 USER"]
    assert commands.capabilities(State.AUTHORIZATION, {"TOP": ""}) == ["TOP"]


def test_one_transition_table_for_both_roles() -> None:
    """RFC 1939 §3: +OK to PASS/APOP/AUTH enters TRANSACTION, any reply to QUIT ends the
    conversation, QUIT received in TRANSACTION is the UPDATE state; nothing else moves."""
    from popbox.proto import state

    a, t = State.AUTHORIZATION, State.TRANSACTION
    assert state.after_reply(a, ev.Pass(b"x"), ok=True) is t
    assert state.after_reply(a, ev.Pass(b"x"), ok=False) is a
    assert state.after_reply(a, ev.SaslResponse(b""), ok=True) is t
    assert state.after_reply(t, ev.Quit(), ok=False) is State.CLOSED
    assert state.after_reply(t, ev.Stat(), ok=True) is t
    assert state.after_reply(a, None, ok=True) is a
    assert state.on_receive(t, ev.Quit()) is State.UPDATE
    assert state.on_receive(a, ev.Quit()) is a


def test_a_bare_auth_listing_does_not_log_in() -> None:
    """RFC 5034 §4 and the RFC 1734 probe: +OK, mechanisms, "." leaves AUTHORIZATION."""
    conn = ServerConnection()
    conn.receive_data(b"AUTH\r\n")
    assert conn.next_event() == ev.Auth(None)
    wire = conn.send(ev.Ok()) + conn.send(ev.Lines(("PLAIN",))) + conn.send(ev.End())
    assert wire == b"+OK\r\nPLAIN\r\n.\r\n"
    assert conn.state is State.AUTHORIZATION


def test_message_body_is_framed_by_the_core() -> None:
    """RFC 1939 §3: after +OK to RETR, stored pieces come out with CRLF line ends and
    leading dots doubled, then the terminator; the next command waits until End."""
    conn = logged_in()
    conn.receive_data(b"RETR 1\r\nNOOP\r\n")
    assert conn.next_event() == ev.Retr(MsgNo(1))
    wire = conn.send(ev.Ok("12 octets")) + conn.send(ev.Data(b".a\nb\r"))
    assert conn.next_event() is ev.PAUSED
    wire += conn.send(ev.Data(b"\nc")) + conn.send(ev.End())
    assert wire == b"+OK 12 octets\r\n..a\r\nb\r\nc\r\n.\r\n"
    assert conn.next_event() == ev.Noop()


def pending_retr(no_nuls: bool) -> ServerConnection:
    """A connection logged in, with "RETR 1" pending and "NOOP" after it."""
    conn = ServerConnection(no_nuls=no_nuls)
    conn.receive_data(b"USER a\r\nPASS b\r\nRETR 1\r\nNOOP\r\n")
    for _ in range(2):
        conn.next_event()
        conn.send(ev.Ok())
    assert conn.next_event() == ev.Retr(MsgNo(1))
    return conn


@settings(max_examples=200)
@given(st.lists(st.sampled_from([b".", b"\r", b"\n", b"a", b"\0", b".."]), max_size=30).map(
    b"".join), st.booleans())
def test_a_message_sent_whole_is_the_same_bytes(data: bytes, no_nuls: bool) -> None:
    """A message read whole goes out in one piece (`send_message`): the same bytes as +OK,
    Data and End, and the next command comes after it. A wrong size sends nothing and
    leaves RETR pending, to be answered with -ERR."""
    size = wire_size(data)
    stepwise = pending_retr(no_nuls)
    expected = (stepwise.send(ev.Ok(f"{size} octets")) + stepwise.send(ev.Data(data))
                + stepwise.send(ev.End()))
    conn = pending_retr(no_nuls)
    assert conn.send_message(f"{size} octets", data, size) == expected
    assert conn.next_event() == ev.Noop()
    wrong = pending_retr(no_nuls)
    assert wrong.send_message("x", data, size + 1) is None
    assert wrong.next_event() is ev.PAUSED
    assert wrong.send(ev.Err("changed")) == b"-ERR changed\r\n"
    assert wrong.next_event() == ev.Noop()


@settings(max_examples=200)
@given(st.lists(st.sampled_from([b".", b"\r", b"\n", b"a", b"\0", b".."]), max_size=30).map(
    b"".join), st.booleans())
def test_a_message_held_in_wire_form_is_the_same_bytes(data: bytes, no_nuls: bool) -> None:
    """A message held in wire form (RFC 1939 §3: CRLF line ends, byte-stuffed) goes out in
    one piece (`send_wire`): the same bytes as +OK, Data(wire=True) and End, ended with a
    line end where the wire form lacks one, and the next command comes after it."""
    wire = to_wire(data)
    for held in (wire, wire.removesuffix(b"\r\n")):
        stepwise = pending_retr(no_nuls)
        expected = (stepwise.send(ev.Ok("n octets")) + stepwise.send(ev.Data(held, True))
                    + stepwise.send(ev.End()))
        conn = pending_retr(no_nuls)
        assert conn.send_wire("n octets", held) == expected
        assert expected.endswith(b"\r\n.\r\n")
        assert conn.next_event() == ev.Noop()


def test_a_message_in_wire_form_answers_only_retr() -> None:
    conn = logged_in()
    with pytest.raises(ev.LocalProtocolError):
        conn.send_wire("1 octets", b"x\r\n")
    conn.receive_data(b"TOP 1 0\r\nRETR 1\r\n")
    conn.next_event()
    with pytest.raises(ev.LocalProtocolError):  # TOP is not a whole message
        conn.send_wire("1 octets", b"x\r\n")
    conn.send(ev.Err("no"))
    conn.next_event()
    conn.send(ev.Ok("3 octets"))
    with pytest.raises(ev.LocalProtocolError):  # a body already open
        conn.send_wire("3 octets", b"x\r\n")


def test_a_command_line_parsed_before_means_the_same_in_every_state() -> None:
    """A TRANSACTION line another connection has already sent ("RETR 1") is the same
    command again after login, and still refused before login or with a bad number."""
    first = logged_in()
    first.receive_data(b"RETR 1\r\nDELE 2\r\n")
    assert first.next_event() == ev.Retr(MsgNo(1))
    again = ServerConnection()
    again.receive_data(b"RETR 1\r\n")
    assert again.next_event() == ev.Invalid(ev.Problem.WRONG_STATE, "RETR")
    second = logged_in()
    second.receive_data(b"RETR 1\r\nRETR x\r\nRETR 1\r\n")
    assert second.next_event() == ev.Retr(MsgNo(1))
    assert second.next_event() is ev.PAUSED
    second.send(ev.Err("no"))
    assert second.next_event() == ev.Invalid(ev.Problem.BAD_MESSAGE_NUMBER, "RETR")
    second.send(ev.Err("bad"))
    assert second.next_event() == ev.Retr(MsgNo(1))


def test_a_whole_message_answers_only_retr_or_top() -> None:
    conn = logged_in()
    with pytest.raises(ev.LocalProtocolError):
        conn.send_message("1 octets", b"x", 3)
    conn.receive_data(b"STAT\r\nRETR 1\r\n")
    conn.next_event()
    with pytest.raises(ev.LocalProtocolError):
        conn.send_message("1 octets", b"x", 3)
    conn.send(ev.Ok("1 3"))
    conn.next_event()
    conn.send(ev.Ok("3 octets"))
    with pytest.raises(ev.LocalProtocolError):  # a body already open
        conn.send_message("3 octets", b"x", 3)


def test_no_nuls_workaround_in_message_bodies() -> None:
    """Dovecot's outlook-no-nuls: NUL octets in a body are sent as 0x80."""
    conn = ServerConnection(no_nuls=True)
    conn.receive_data(b"USER a\r\nPASS b\r\nTOP 1 0\r\n")
    for _ in range(2):
        conn.next_event()
        conn.send(ev.Ok())
    assert conn.next_event() == ev.Top(MsgNo(1), 0)
    conn.send(ev.Ok())
    assert conn.send(ev.Data(b"a\0b\n")) + conn.send(ev.End()) == b"a\x80b\r\n.\r\n"


def test_wire_form_pieces_go_out_unchanged() -> None:
    """RFC 1939 §3: a body a store keeps in wire form (CRLF, stuffed, a final CRLF) is
    sent as it is and terminated; only the NUL workaround still applies to it."""
    conn = ServerConnection(no_nuls=True)
    conn.receive_data(b"USER a\r\nPASS b\r\nRETR 1\r\n")
    for _ in range(2):
        conn.next_event()
        conn.send(ev.Ok())
    assert conn.next_event() == ev.Retr(MsgNo(1))
    sent = conn.send(ev.Ok("9 octets"))
    sent += conn.send(ev.Data(b"..a\r", wire=True)) + conn.send(ev.Data(b"\n\0\r\n", wire=True))
    assert sent + conn.send(ev.End()) == b"+OK 9 octets\r\n..a\r\n\x80\r\n.\r\n"


def test_replies_out_of_place_are_local_errors() -> None:
    """A body piece without +OK to RETR, a status line inside a body or a listing: the
    caller broke the protocol, and the core says so instead of sending it."""
    conn = logged_in()
    with pytest.raises(ev.LocalProtocolError):
        conn.send(ev.Data(b"x"))
    conn.receive_data(b"RETR 1\r\nLIST\r\n")
    conn.next_event()
    conn.send(ev.Ok())
    with pytest.raises(ev.LocalProtocolError):
        conn.send(ev.Ok())
    with pytest.raises(ev.LocalProtocolError):
        conn.send(ev.Lines(("1 2",)))
    conn.send(ev.End())
    conn.next_event()
    conn.send(ev.Ok())
    with pytest.raises(ev.LocalProtocolError):
        conn.send(ev.Data(b"x"))
