"""The blocking facade (popbox.client.sync) against popbox serving from a child process:
the same commands as the asyncio client and poplib (RFC 1939 §5, §7), typed errors, QUIT
on a clean exit and none after an exception (RFC 1939 §6: nothing deleted), and a clear
refusal inside a running event loop."""

from __future__ import annotations

import io
import poplib
from collections.abc import Iterator

import pytest

from helpers import MailEnv, ServerProcess, crlf, server_process
from popbox import client
from popbox.client import sync

MESSAGES = [
    b"Subject: one\n\nfirst\n.dot line\n",
    b"Subject: two\n\n" + b"".join(b"line %d\n" % i for i in range(2000)),
]
TIMEOUT = 10.0


@pytest.fixture
def server(env: MailEnv) -> Iterator[ServerProcess]:
    for message in MESSAGES:
        env.put("alice", message)
    with server_process(env.config_file()) as proc:
        yield proc


def test_same_answers_as_poplib(server: ServerProcess) -> None:
    """STAT, LIST, UIDL, RETR, TOP, piecewise RETR: what poplib gets, without asyncio."""
    old = poplib.POP3("127.0.0.1", server.port, timeout=TIMEOUT)
    old.user("alice")
    old.pass_("secret")
    expected_uidl = [line.decode().split() for line in old.uidl()[1]]
    expected_top = b"\r\n".join(old.top(1, 0)[1]) + b"\r\n"
    old.quit()
    with sync.connect("127.0.0.1", server.port, tls="none", timeout=TIMEOUT) as pop:
        assert pop.greeting and not pop.secure
        assert pop.login("alice", "secret") in ("SCRAM-SHA-256", "USER", "PLAIN")
        assert pop.stat() == (2, sum(len(crlf(m)) for m in MESSAGES))
        assert pop.list() == {1: len(crlf(MESSAGES[0])), 2: len(crlf(MESSAGES[1]))}
        assert pop.list(2) == len(crlf(MESSAGES[1]))
        assert [[str(n), u] for n, u in pop.uidl().items()] == expected_uidl
        assert pop.uidl(1) == expected_uidl[0][1]
        assert pop.retr(1) == crlf(MESSAGES[0])
        assert b"".join(pop.retr_iter(2)) == crlf(MESSAGES[1])
        sink = io.BytesIO()
        assert pop.retr_to(2, sink) == len(crlf(MESSAGES[1]))
        assert pop.top(1, 0) == expected_top
        assert "UIDL" in pop.capa()
        pop.noop()
        pop.dele(1)
        pop.rset()  # undoes the DELE
        assert pop.list(1) == len(crlf(MESSAGES[0]))
    assert pop.closed
    with pytest.raises(client.PopConnectionError, match="closed"):
        pop.stat()


def test_dele_committed_by_quit_not_by_an_exception(server: ServerProcess, env: MailEnv
                                                    ) -> None:
    """DELE then an exception in the block: no QUIT, nothing deleted. DELE then a clean
    exit: QUIT, the message is gone."""
    with pytest.raises(KeyError), sync.connect("127.0.0.1", server.port, tls="none",
                                               timeout=TIMEOUT) as pop:
        pop.login("alice", "secret")
        pop.dele(1)
        raise KeyError("the script failed")
    assert pop.closed
    assert len(env.messages("alice")) == 2
    with sync.connect("127.0.0.1", server.port, tls="none", timeout=TIMEOUT) as pop:
        pop.login("alice", "secret")
        pop.dele_many([1])
    with sync.connect("127.0.0.1", server.port, tls="none", timeout=TIMEOUT) as pop:
        pop.login("alice", "secret")
        assert pop.stat()[0] == 1


def test_typed_errors(server: ServerProcess) -> None:
    """A wrong password is a PopAuthError, a message past the end a PopError, a closed
    port a PopConnectionError: the asyncio client's exceptions."""
    with sync.connect("127.0.0.1", server.port, tls="none", timeout=TIMEOUT) as pop:
        with pytest.raises(client.PopAuthError):
            pop.user_pass("alice", "wrong")
        pop.login("alice", "secret")
        with pytest.raises(client.PopError) as info:
            pop.retr(99)
        assert not isinstance(info.value, client.PopAuthError)
        assert pop.stat()[0] == 2  # the session goes on after -ERR
    server.stop()
    with pytest.raises(client.PopConnectionError):
        sync.connect("127.0.0.1", server.port, tls="none", timeout=TIMEOUT)


def test_leaving_retr_iter_early_closes(server: ServerProcess, env: MailEnv) -> None:
    """Stopping a piecewise RETR half way drops the connection (the rest of the message
    is still coming) and the block's end sends no QUIT."""
    with sync.connect("127.0.0.1", server.port, tls="none", timeout=TIMEOUT) as pop:
        pop.login("alice", "secret")
        pop.dele(1)
        for _ in pop.retr_iter(2):
            break
        assert pop.closed
    assert len(env.messages("alice")) == 2


async def test_refused_inside_an_event_loop(server: ServerProcess) -> None:
    """In a coroutine the blocking client would stall the loop: a clear error instead."""
    with pytest.raises(sync.SyncInLoopError, match="event loop"):
        sync.connect("127.0.0.1", server.port, tls="none", timeout=TIMEOUT)
