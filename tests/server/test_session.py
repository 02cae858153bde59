"""The server over real sockets on 127.0.0.1 with real Maildirs: RFC 1939 semantics,
RFC 2449 capabilities and response codes, data safety."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re

from helpers import Client, MailEnv, crlf, running_server

MSG1 = b"From: a@example.org\nSubject: one\n\nbody one\n.dotted line\n"
MSG2 = b"From: b@example.org\nSubject: two\n\nline 1\nline 2\nline 3\n"
MSG3 = b"Subject: three\n\nno final newline"



def fill(env: MailEnv) -> None:
    for message in (MSG1, MSG2, MSG3):
        env.put("alice", message)


async def test_greeting_and_login(env: MailEnv) -> None:
    """RFC 1939 §4 greeting, §7 USER/PASS; the login reply counts the maildrop."""
    fill(env)
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        reply = await client.login()
        total = sum(len(crlf(m)) for m in (MSG1, MSG2, MSG3))
        assert reply == f"+OK Logged in. 3 messages ({total} octets).".encode()
        assert await client.cmd("QUIT") == b"+OK Logging out, 0 messages deleted."
        await client.close()


async def test_wrong_password_and_unknown_user_look_the_same(env: MailEnv) -> None:
    """RFC 3206 [AUTH]; no user enumeration: the same reply for both."""
    async with running_server(env.config()) as (port, _):
        replies = []
        for user, password in (("alice", "wrong"), ("nobody", "secret"), ("../etc", "x")):
            client = await Client.connect(port)
            replies.append(await client.login(user, password))
            await client.close()
        assert replies == [b"-ERR [AUTH] Authentication failed."] * 3


async def test_stat_list_uidl_sizes_are_crlf_octets(env: MailEnv) -> None:
    """RFC 1939 §5: STAT, LIST and UIDL; sizes are the octets as sent (CRLF)."""
    fill(env)
    sizes = [len(crlf(m)) for m in (MSG1, MSG2, MSG3)]
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        await client.login()
        assert await client.cmd("STAT") == f"+OK 3 {sum(sizes)}".encode()
        _, lines = await client.multi("LIST")
        assert lines == [f"{i + 1} {s}".encode() for i, s in enumerate(sizes)]
        assert await client.cmd("LIST 2") == f"+OK 2 {sizes[1]}".encode()
        for bad in ("LIST 0", "LIST 4", "LIST 4294967297"):
            assert await client.cmd(bad) == b"-ERR There is no such message."
        assert await client.cmd("LIST -1") == b"-ERR Invalid message number."
        _, uidls = await client.multi("UIDL")
        ids = [line.split(b" ")[1] for line in uidls]
        assert len(set(ids)) == 3
        assert all(re.fullmatch(rb"[\x21-\x7e]{1,70}", uid) for uid in ids)
        assert await client.cmd("UIDL 3") == b"+OK 3 " + ids[2]
        await client.close()


async def test_retr_and_top(env: MailEnv) -> None:
    """RFC 1939 §7: RETR sends the whole message byte-stuffed; TOP n k sends the headers,
    the blank line and k body lines; a message without a final newline is terminated."""
    fill(env)
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        await client.login()
        for n, message in enumerate((MSG1, MSG2, MSG3), start=1):
            assert await client.cmd(f"RETR {n}") == f"+OK {len(crlf(message))} octets".encode()
            assert await client.body() == crlf(message)
        assert (await client.cmd("TOP 2 0")).startswith(b"+OK")
        assert await client.body() == crlf(b"From: b@example.org\nSubject: two\n\n")
        assert (await client.cmd("top 2 2")).startswith(b"+OK")
        assert await client.body() == crlf(b"From: b@example.org\nSubject: two\n\nline 1\nline 2\n")
        assert (await client.cmd("TOP 1 99999999")).startswith(b"+OK")
        assert await client.body() == crlf(MSG1)
        assert await client.cmd("TOP 1") == b"-ERR Invalid arguments for TOP."
        assert await client.cmd("RETR x") == b"-ERR Invalid message number."
        await client.close()


async def test_dele_rset_and_deleted_messages(env: MailEnv) -> None:
    """RFC 1939 §5: a deleted message cannot be listed, retrieved or deleted again;
    numbers never change; RSET unmarks."""
    fill(env)
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        await client.login()
        assert await client.cmd("DELE 2") == b"+OK Message 2 deleted."
        for cmd in ("DELE 2", "RETR 2", "LIST 2", "UIDL 2", "TOP 2 0"):
            assert await client.cmd(cmd) == b"-ERR Message is deleted."
        _, lines = await client.multi("LIST")
        assert [line.split(b" ")[0] for line in lines] == [b"1", b"3"]
        assert (await client.cmd("STAT")).startswith(b"+OK 2 ")
        assert (await client.cmd("RSET")).startswith(b"+OK Maildrop has 3 messages")
        assert (await client.cmd("LIST 2")).startswith(b"+OK 2 ")
        await client.close()


async def test_dele_then_disconnect_deletes_nothing(env: MailEnv) -> None:
    """RFC 1939 §6: only QUIT enters UPDATE; a dropped session changes nothing."""
    fill(env)
    before = env.messages("alice")
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        await client.login()
        for n in (1, 2, 3):
            await client.cmd(f"DELE {n}")
        await client.cmd("RETR 1")
        await client.close()
        # The lock is free again and everything is still there.
        client = await Client.connect(port)
        assert (await client.login()).startswith(b"+OK Logged in. 3 messages")
        await client.close()
    assert env.messages("alice") == before


async def test_dele_quit_deletes_exactly_those(env: MailEnv) -> None:
    """RFC 1939 §6: QUIT removes the messages marked deleted, the rest is untouched."""
    fill(env)
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        await client.login()
        await client.cmd("DELE 1")
        await client.cmd("DELE 3")
        assert await client.cmd("QUIT") == b"+OK Logging out, 2 messages deleted."
        await client.close()
    assert env.messages("alice") == [MSG2]


async def test_retrieved_messages_are_marked_seen_top_is_not(env: MailEnv) -> None:
    """As Dovecot does: RETR'd messages get the Maildir S flag at QUIT; TOP does not."""
    fill(env)
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        await client.login()
        await client.cmd("RETR 1")
        await client.body()
        await client.cmd("TOP 2 0")
        await client.body()
        await client.cmd("QUIT")
        await client.close()
    cur = sorted(p.name for p in (env.maildir("alice") / "cur").iterdir())
    new = sorted(p.name for p in (env.maildir("alice") / "new").iterdir())
    assert len(cur) == 1 and cur[0].endswith(":2,S")
    assert len(new) == 2


async def test_second_session_gets_in_use(env: MailEnv) -> None:
    """RFC 2449 §8.1.1 [IN-USE]: one session per maildrop, answered at once."""
    async with running_server(env.config()) as (port, _):
        first = await Client.connect(port)
        await first.login()
        second = await Client.connect(port)
        assert await second.login() == b"-ERR [IN-USE] Mailbox is locked by another POP3 session."
        await first.cmd("QUIT")
        await first.close()
        third = await Client.connect(port)
        assert (await third.login()).startswith(b"+OK")
        await third.close()
        await second.close()


async def test_pipelining(env: MailEnv) -> None:
    """RFC 2449 §6.6: commands sent in one write are answered in order."""
    fill(env)
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        await client.line()
        client.writer.write(
            b"CAPA\r\nUSER alice\r\nPASS secret\r\nSTAT\r\nRETR 3\r\nNOOP\r\nQUIT\r\n"
        )
        assert (await client.line()).startswith(b"+OK")
        await client.body()
        assert await client.line() == b"+OK"
        assert (await client.line()).startswith(b"+OK Logged in")
        assert (await client.line()).startswith(b"+OK 3 ")
        assert (await client.line()).startswith(b"+OK ")
        assert await client.body() == crlf(MSG3)
        assert await client.line() == b"+OK"
        assert (await client.line()).startswith(b"+OK Logging out")
        await client.close()


async def test_capabilities_depend_on_state(env: MailEnv) -> None:
    """RFC 2449 §5: CAPA in both states; USER and SASL only before login. §6.8: a
    LOGIN-DELAY of 0 is not advertised (it says nothing)."""
    async with running_server(env.config(limits={"login_delay": 0})) as (port, _):
        client = await Client.connect(port)
        await client.line()
        _, before = await client.multi("CAPA")
        for cap in (b"TOP", b"UIDL", b"USER", b"RESP-CODES", b"AUTH-RESP-CODE", b"PIPELINING",
                    b"SASL PLAIN LOGIN", b"EXPIRE NEVER"):
            assert cap in before
        assert not any(line.startswith(b"LOGIN-DELAY") for line in before)
        assert any(line.startswith(b"IMPLEMENTATION popbox") for line in before)
        await client.cmd("USER alice")
        await client.cmd("PASS secret")
        _, after = await client.multi("CAPA")
        assert b"USER" not in after and b"TOP" in after and b"UIDL" in after
        assert not any(line.startswith(b"SASL") for line in after)
        await client.close()


async def test_bad_input_gets_err_and_session_goes_on(env: MailEnv) -> None:
    """Malformed commands, huge lines, NUL bytes, 8-bit bytes: -ERR, never a crash."""
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        await client.login()
        assert await client.cmd(b"") == b"-ERR Empty command."
        assert await client.cmd(b"X" * 100_000) == b"-ERR Command line too long."
        assert await client.cmd(b"RETR \0") == b"-ERR Invalid characters in command."
        assert await client.cmd(b"\xc3\xa9t\xc3\xa9") == b"-ERR Unknown command."
        assert await client.cmd(b"LIST: 1") == b"-ERR Unknown command."
        assert await client.cmd("TOP") == b"-ERR Invalid arguments for TOP."
        assert await client.cmd("USER bob") == b"-ERR USER is not valid in this state."
        assert (await client.cmd("STAT")).startswith(b"+OK")
        await client.close()


async def test_bad_command_budget_before_login(env: MailEnv) -> None:
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        await client.line()
        for _ in range(3):
            assert (await client.cmd("BOGUS")).startswith(b"-ERR")
        assert await client.cmd("BOGUS") == b"-ERR Too many invalid commands, closing."
        assert await client.reader.read() == b""
        await client.close()


async def test_login_timeout(env: MailEnv) -> None:
    """RFC 1939 §3: an idle client is logged out (shorter before login)."""
    async with running_server(env.config(limits={"login_timeout": 0.2})) as (port, _):
        client = await Client.connect(port)
        await client.line()
        assert await client.line() == b"-ERR Disconnected for inactivity."
        assert await client.reader.read() == b""
        await client.close()


async def test_login_deadline_is_not_reset_by_trickling(env: MailEnv) -> None:
    """A client sending a byte now and then cannot hold a slot past `login_timeout`."""
    async with running_server(env.config(limits={"login_timeout": 0.5})) as (port, _):
        client = await Client.connect(port)
        await client.line()
        closed = asyncio.ensure_future(client.line())
        sent = 0
        for byte in b"USER alice-with-a-very-long-name":
            if closed.done():
                break
            client.writer.write(bytes([byte]))
            sent += 1
            await asyncio.wait({closed}, timeout=0.1)
        assert closed.done() and closed.result() == b"-ERR Disconnected for inactivity."
        assert sent < 20
        await client.close()


async def test_apop(env: MailEnv) -> None:
    """RFC 1939 §7: APOP digest = MD5(timestamp + secret); timestamps unique per session."""
    async with running_server(env.config(auth={"apop": True})) as (port, _):
        stamps = []
        for password, expected in (("wrong", b"-ERR [AUTH]"), ("secret", b"+OK Logged in")):
            client = await Client.connect(port)
            greeting = await client.line()
            match = re.search(rb"<\d+\.\d+\.\d+@test\.example>", greeting)
            assert match, greeting
            stamps.append(match.group())
            digest = hashlib.md5(match.group() + password.encode()).hexdigest()
            assert (await client.cmd(f"APOP alice {digest}")).startswith(expected)
            await client.close()
        assert stamps[0] != stamps[1]


async def test_apop_disabled_by_default(env: MailEnv) -> None:
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        greeting = await client.line()
        assert b"<" not in greeting
        digest = "0" * 32
        reply = await client.cmd(f"APOP alice {digest}")
        assert reply == b"-ERR [AUTH] APOP is not enabled on this server."
        await client.close()


async def test_login_delay(env: MailEnv) -> None:
    """RFC 2449 §8.1.2 [LOGIN-DELAY]: a second login within the delay is refused."""
    async with running_server(env.config(limits={"login_delay": 600})) as (port, _):
        client = await Client.connect(port)
        assert (await client.login()).startswith(b"+OK")
        await client.cmd("QUIT")
        await client.close()
        client = await Client.connect(port)
        assert (await client.login()).startswith(b"-ERR [LOGIN-DELAY]")
        await client.close()


async def test_per_user_login_delay(env: MailEnv) -> None:
    """RFC 2449 §6.8: a user's own LOGIN-DELAY (userdb field) is enforced and shown by CAPA
    after login; before login CAPA shows the global value."""
    env.users.write_text("alice:{PLAIN}secret::::::userdb_login_delay=900\n")
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        await client.line()
        _, before = await client.multi("CAPA")
        assert not any(line.startswith(b"LOGIN-DELAY") for line in before)  # 0: nothing
        await client.cmd("USER alice")
        assert (await client.cmd("PASS secret")).startswith(b"+OK")
        _, after = await client.multi("CAPA")
        assert b"LOGIN-DELAY 900" in after
        await client.cmd("QUIT")
        await client.close()
        client = await Client.connect(port)
        assert (await client.login()).startswith(b"-ERR [LOGIN-DELAY]")
        await client.close()


async def test_sasl_plain_and_login(env: MailEnv) -> None:
    """RFC 5034 AUTH with PLAIN (RFC 4616) and LOGIN, with and without initial response."""
    plain = base64.b64encode(b"\0alice\0secret").decode()
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        await client.line()
        assert await client.multi("AUTH") == (b"+OK Mechanisms follow", [b"PLAIN", b"LOGIN"])
        assert (await client.cmd(f"AUTH PLAIN {plain}")).startswith(b"+OK Logged in")
        await client.cmd("QUIT")
        await client.close()

        client = await Client.connect(port)
        await client.line()
        assert await client.cmd("AUTH LOGIN") == b"+ VXNlcm5hbWU6"
        assert await client.cmd(base64.b64encode(b"alice")) == b"+ UGFzc3dvcmQ6"
        assert (await client.cmd(base64.b64encode(b"secret"))).startswith(b"+OK Logged in")
        await client.close()

        client = await Client.connect(port)
        await client.line()
        assert await client.cmd("AUTH PLAIN") == b"+ "
        assert await client.cmd("*") == b"-ERR Authentication cancelled."
        assert await client.cmd("AUTH PLAIN") == b"+ "
        assert await client.cmd("@@@") == b"-ERR Invalid base64 data."
        wrong = base64.b64encode(b"\0alice\0nope").decode()
        assert await client.cmd(f"AUTH PLAIN {wrong}") == b"-ERR [AUTH] Authentication failed."
        await client.close()


async def test_vanished_message(env: MailEnv) -> None:
    """A message removed underneath is -ERR [SYS/PERM] and does not block QUIT."""
    fill(env)
    paths = sorted((env.maildir("alice") / "new").iterdir())
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        await client.login()
        paths[0].unlink()
        reply = await client.cmd("RETR 1")
        assert reply == b"-ERR [SYS/PERM] Message was removed by another agent."
        await client.cmd("DELE 1")
        await client.cmd("DELE 2")
        assert (await client.cmd("QUIT")).startswith(b"+OK")
        await client.close()
    assert env.messages("alice") == [MSG3]


async def test_unusable_maildrop_is_sys_perm(env: MailEnv) -> None:
    env.add_user("broken")
    md = env.maildir("broken")
    for sub in ("cur", "new", "tmp"):
        (md / sub).rmdir()
    md.rmdir()
    md.write_text("not a directory")
    async with running_server(env.config()) as (port, _):
        client = await Client.connect(port)
        assert await client.login("broken") == b"-ERR [SYS/PERM] Mailbox cannot be opened."
        await client.close()


async def test_shutdown_mid_session_deletes_nothing(env: MailEnv) -> None:
    """Server shutdown: sessions get -ERR [SYS/TEMP], nothing is committed."""
    fill(env)
    before = env.messages("alice")
    async with running_server(env.config(limits={"shutdown_grace": 0})) as (port, _):
        client = await Client.connect(port)
        await client.login()
        await client.cmd("DELE 1")
    assert await client.line() == b"-ERR [SYS/TEMP] Server shutting down."
    await client.close()
    assert env.messages("alice") == before
