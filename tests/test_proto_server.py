"""The sans-IO server core: framing, parsing, states, pipelining (RFC 1939, 2449, 5034)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from popbox.proto import events as ev
from popbox.proto.server import ServerConnection
from popbox.proto.types import MsgNo, State


def events_for(data: bytes, *, state: State = State.AUTHORIZATION, chunk: int = 0) -> list[object]:
    """Feed `data` (whole, or `chunk` bytes at a time) and answer every command with +OK."""
    conn = logged_in() if state is State.TRANSACTION else ServerConnection()
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] if chunk else [data]
    out: list[object] = []
    for piece in pieces:
        conn.receive_data(piece)
        while (event := conn.next_event()) is not ev.NEED_DATA:
            out.append(event)
            conn.send(ev.Ok())
    return out


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
    conn.send(ev.Ok())
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
    assert conn.send(ev.Challenge(b"Username:")) == b"+ VXNlcm5hbWU6\r\n"
    conn.receive_data(b"YQ==\r\n")
    assert conn.next_event() == ev.SaslResponse(b"a")
    conn.send(ev.Challenge(b"Password:"))
    conn.receive_data(b"*\r\n")
    assert conn.next_event() == ev.SaslCancel()
    conn.send(ev.Err("cancelled"))
    conn.receive_data(b"YQ==\r\n")
    assert conn.next_event() == ev.Invalid(ev.Problem.UNKNOWN_COMMAND)


def test_sasl_bad_base64_and_long_response() -> None:
    conn = ServerConnection()
    conn.receive_data(b"AUTH PLAIN\r\n")
    conn.next_event()
    conn.send(ev.Challenge(b""))
    conn.receive_data(b"not base64!\r\n")
    assert conn.next_event() == ev.Invalid(ev.Problem.BAD_BASE64, "AUTH")
    conn.send(ev.Err("bad"))
    conn.receive_data(b"AUTH PLAIN\r\n")
    conn.next_event()
    conn.send(ev.Challenge(b""))
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
    assert conn.send(ev.MultiLine("caps", ("TOP", ".odd"))) == b"+OK caps\r\nTOP\r\n..odd\r\n.\r\n"
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
                conn.send(ev.Challenge(b""))
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
    wire = ServerConnection().send(ev.MultiLine("x", tuple(lines)))
    assert wire == b"+OK x\r\n" + expected + b".\r\n"
