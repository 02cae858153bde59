"""RFC 6856: LANG (§3) lists and selects response languages, UTF8 (§2) makes USER/PASS
UTF-8 ("UTF8 USER"), and a client that did not say UTF8 gets no 8-bit header octets
(§2.1), at the size LIST promised. Whole sessions on a real Maildir and users file."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import MailEnv, crlf
from memory_transport import MemoryTransport, memory_session
from popbox.backends import build
from popbox.proto import events as ev
from popbox.proto.commands import parse_command, reply_shape
from popbox.proto.headers import HeaderGuard, ascii_header
from popbox.proto.types import State
from popbox.proto.wire import TopFilter
from popbox.server import replies
from popbox.server.context import ServerContext
from popbox.store.base import Failure

UTF8_MESSAGE = "Subject: Grüße\nFrom: Jörg <j@example.org>\n\nBody: Grüße\n".encode()


def context(env: MailEnv, **sections: dict[str, object]) -> ServerContext:
    config = env.config(**sections)
    return ServerContext.create(config, build(config))


async def ask(client: MemoryTransport, line: bytes, *, multi: bool = False) -> bytes:
    client.send(line)
    return await client.reply(multi=multi)


async def login(client: MemoryTransport, password: bytes = b"secret") -> bytes:
    assert await ask(client, b"USER alice") == b"+OK\r\n"
    return await ask(client, b"PASS " + password)


async def test_lang_lists_and_selects_with_fallback(env: MailEnv) -> None:
    """RFC 6856 §3: LANG without argument lists tag and name; LANG tag selects (case
    ignored, "de-AT" falls back to "de", "*" is the default); an unknown language is
    -ERR in the current language; response codes and STAT stay as they are."""
    env.put("alice", b"Subject: x\n\nx\n")
    async with memory_session(context(env)) as client:
        capa = await ask(client, b"CAPA", multi=True)
        assert b"\r\nLANG\r\n" in capa
        assert await ask(client, b"LANG", multi=True) == (
            b"+OK Language listing follows\r\nen English\r\ni-default Default language\r\n"
            b"de Deutsch\r\n.\r\n")
        assert await ask(client, b"LANG de") == (
            b"-ERR This language needs UTF-8: send UTF8 first.\r\n")
        assert await ask(client, b"UTF8") == b"+OK UTF8 enabled\r\n"
        assert await ask(client, b"LANG DE-at") == "+OK Sprache geändert.\r\n".encode()
        assert await ask(client, b"FROB") == b"-ERR Unbekannter Befehl.\r\n"
        assert await ask(client, b"LANG fr") == (
            "-ERR Diese Sprache wird nicht unterstützt.\r\n".encode())
        assert await ask(client, b"LANG e_n") == "-ERR Ungültige Argumente für LANG.\r\n".encode()
        assert await login(client, b"wrong") == (
            b"-ERR [AUTH] Authentifizierung fehlgeschlagen.\r\n")
        assert (await login(client)).startswith(b"+OK Logged in. 1 messages")
        assert await ask(client, b"STAT") == b"+OK 1 %d\r\n" % len(crlf(b"Subject: x\n\nx\n"))
        assert await ask(client, b"RETR 2") == b"-ERR Diese Nachricht gibt es nicht.\r\n"
        assert b"\r\nLANG\r\n" in await ask(client, b"CAPA", multi=True)
        assert await ask(client, b"LANG *") == b"+OK Language changed.\r\n"
        assert await ask(client, b"RETR 2") == b"-ERR There is no such message.\r\n"
        assert await ask(client, b"LANG en") == b"+OK Language changed.\r\n"


def test_lang_grammar_in_the_command_table() -> None:
    """RFC 6856 §3: LANG is legal in both states; with an argument its reply is one line,
    without it a listing (what the client core expects)."""
    for state in (State.AUTHORIZATION, State.TRANSACTION):
        assert parse_command(b"LANG", state) == ev.Lang(None)
        assert parse_command(b"lang en-US", state) == ev.Lang("en-US")
    assert reply_shape(ev.Lang(None)).value == "listing"
    assert reply_shape(ev.Lang("de")).value == "single"
    assert isinstance(parse_command(b"LANG en de", State.AUTHORIZATION), ev.Invalid)


def test_every_error_text_has_a_translation() -> None:
    """The one replies module holds every -ERR text; each has its German text, so a
    session in German never falls back to English for an error."""
    texts = {v.text for v in vars(replies).values() if isinstance(v, ev.Err)}
    texts |= {replies.problem(p, "LIST").text for p in ev.Problem}
    texts |= {replies.problem(ev.Problem.BAD_ARGUMENTS, "").text}
    texts |= {replies.failure(f).text for f in Failure}
    texts -= {replies.LANG_NEEDS_UTF8.text}  # said before a non-ASCII language is chosen
    missing = sorted(t for t in texts if replies.translate(t, "de") == t)
    assert missing == []


async def test_utf8_password_after_utf8(env: MailEnv) -> None:
    """RFC 6856 §2 "UTF8 USER": after UTF8 the password is UTF-8, prepared with SASLprep
    (RFC 4013), so a decomposed "ä" matches the stored composed one; octets that are not
    UTF-8 are refused. Before UTF8 the octets are compared as sent."""
    env.users.write_text("alice:{PLAIN}pässwörd::::::\n")
    decomposed = "pa\u0308sswo\u0308rd".encode()
    async with memory_session(context(env)) as client:
        assert await login(client, decomposed) == b"-ERR [AUTH] Authentication failed.\r\n"
        assert (await login(client, "pässwörd".encode())).startswith(b"+OK Logged in.")
    async with memory_session(context(env)) as client:
        assert await ask(client, b"UTF8") == b"+OK UTF8 enabled\r\n"
        assert await login(client, b"p\xe4sswd") == b"-ERR [AUTH] Authentication failed.\r\n"
        assert (await login(client, decomposed)).startswith(b"+OK Logged in.")


@pytest.mark.parametrize("utf8", [False, True])
async def test_8bit_headers_for_clients_with_and_without_utf8(env: MailEnv, utf8: bool) -> None:
    """RFC 6856 §2.1: without UTF8 the header's 8-bit octets arrive as "?" (one for
    one, so RETR sends exactly the size LIST gave) and the body is untouched; after UTF8
    (here in the TRANSACTION state, as Outlook sends it) the message is sent as stored."""
    env.put("alice", UTF8_MESSAGE)
    size = len(crlf(UTF8_MESSAGE))
    async with memory_session(context(env)) as client:
        await login(client)
        if utf8:
            assert await ask(client, b"UTF8") == b"+OK UTF8 enabled\r\n"
        assert await ask(client, b"LIST 1") == b"+OK 1 %d\r\n" % size
        retr = await ask(client, b"RETR 1", multi=True)
        top = await ask(client, b"TOP 1 0", multi=True)
    body = retr.split(b"\r\n", 1)[1].removesuffix(b".\r\n")
    assert len(body) == size
    if utf8:
        assert body == crlf(UTF8_MESSAGE)
    else:
        assert body.isascii() is False  # the body's "Grüße" is kept
        head, _, rest = body.partition(b"\r\n\r\n")
        assert head == b"Subject: Gr????e\r\nFrom: J??rg <j@example.org>"
        assert rest == "Body: Grüße\r\n".encode()
        assert top.endswith(b"\r\nFrom: J??rg <j@example.org>\r\n\r\n.\r\n")
    assert env.messages("alice") == [UTF8_MESSAGE]  # the store keeps it as it came


async def test_8bit_headers_workaround_sends_them_as_stored(env: MailEnv) -> None:
    """`server.workarounds = ["8bit-headers"]`: for old clients that expect raw headers."""
    env.put("alice", UTF8_MESSAGE)
    async with memory_session(context(env, server={"workarounds": ["8bit-headers"]})) as client:
        await login(client)
        retr = await ask(client, b"RETR 1", multi=True)
    assert retr.split(b"\r\n", 1)[1] == crlf(UTF8_MESSAGE) + b".\r\n"


@pytest.mark.parametrize(("message", "header_end"), [
    (UTF8_MESSAGE, UTF8_MESSAGE.index(b"\n\n") + 2),
    (UTF8_MESSAGE.replace(b"\n", b"\r\n"), UTF8_MESSAGE.replace(b"\n", b"\r\n").index(
        b"\r\n\r\n") + 4),
    ("Subject: nur Kopf ä\nX: ö".encode(), None),  # no empty line: all header
    ("\nö body only".encode(), 1),  # an empty first line: no header at all
])
def test_header_guard_whole_and_byte_by_byte(message: bytes, header_end: int | None) -> None:
    """The sans-IO guard gives the same bytes however the message is cut, changes only
    octets above 0x7F before the first empty line, and never the length."""
    whole = HeaderGuard().feed(message)
    guard = HeaderGuard()
    pieces = b"".join(guard.feed(message[i : i + 1]) for i in range(len(message)))
    assert pieces == whole and len(whole) == len(message)
    end = len(message) if header_end is None else header_end
    assert whole[:end].isascii() and whole[end:] == message[end:]
    assert whole != message or message[:end].isascii()


@given(st.binary(max_size=40).map(lambda b: bytes(b"\n\r a\xc3"[x % 5] for x in b)),
       st.integers(min_value=0, max_value=40))
def test_header_guard_any_cut_is_the_same(message: bytes, cut: int) -> None:
    """Property: feeding a message in two pieces cut anywhere gives the whole's result,
    and the header section ends where TOP's does (RFC 1939 §7: the first empty line)."""
    whole = HeaderGuard().feed(message)
    guard = HeaderGuard()
    assert guard.feed(message[:cut]) + guard.feed(message[cut:]) == whole
    if ascii_header(message[:cut]):  # the shortcut is taken only where the guard is a no-op
        assert HeaderGuard().feed(message[:cut]) == message[:cut] and not guard.active
    top = TopFilter(0).feed(message)
    assert whole[: len(top)].isascii() and whole[len(top):] == message[len(top):]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
@pytest.mark.parametrize("at", [8191, 8192, 8193, 8194, 65536, 65537, 65538, 70000])
def test_header_guard_finds_a_late_empty_line(newline: bytes, at: int) -> None:
    """A header section that ends far into the first chunk (around the places where the
    search for the empty line widens), LF or CRLF, the body after it with no empty line:
    the guard changes the octets above 0x7F before the empty line only, and the
    shortcut is taken only where it changes nothing."""
    line = b"X-Long: \xc3\xa4" + b"a" * 60 + newline
    head = (line * (at // len(line) + 1))[:at - len(newline) - 1] + b"b" + newline
    assert len(head) == at  # the empty line's first "\n" is at at - 1
    body = ("k\xf6rper " * 5000).encode("latin-1").replace(b" ", newline)
    message = head + newline + body
    end = len(head) + len(newline)
    whole = HeaderGuard().feed(message)
    assert len(whole) == len(message) and whole[:end].isascii() and whole[end:] == body
    assert not ascii_header(message)
    plain = head.replace(b"\xc3\xa4", b"ae") + newline + body
    assert ascii_header(plain) and HeaderGuard().feed(plain) == plain
