"""Choosing the store by the location's type (Dovecot's `mail_location` syntax):
`mbox:PATH` per user (`userdb_mail=`) next to Maildir users, in one running server, and
RFC 1939 sessions on both (STAT, RETR, DELE, QUIT)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import Client, MailEnv, crlf, running_server
from popbox.backends import build
from popbox.config import ConfigError, load
from popbox.proto.wire import wire_size
from popbox.store.maildir import MaildirStore
from popbox.store.mbox import MboxStore
from popbox.store.memory import MemoryStore
from popbox.store.routing import LocationRouter

MESSAGE = b"Subject: hi\n\nFrom the start\nbye\n"


async def test_router_picks_by_prefix() -> None:
    mbox, maildir, memory = MemoryStore(), MemoryStore(), MemoryStore()
    router = LocationRouter(memory, {"mbox": mbox, "maildir": maildir})
    assert router.pick("mbox:/var/mail/alice") == (mbox, "/var/mail/alice")
    assert router.pick("maildir:/srv/x") == (maildir, "/srv/x")
    assert router.pick("/srv/plain") == (memory, "/srv/plain")
    assert router.pick("sdbox:/srv/y") == (memory, "sdbox:/srv/y")  # unknown: unchanged
    assert await router.deliver("mbox:/var/mail/alice", MESSAGE) is None
    assert mbox.contents("/var/mail/alice")[0][1] == MESSAGE


async def test_userdb_mail_mbox_next_to_maildir_users(env: MailEnv, tmp_path: Path) -> None:
    """bob's userdb_mail=mbox:... is served from his spool (the `>From` quoting undone,
    the CRLF size), alice stays in her Maildir; bob's DELE and QUIT empty his spool."""
    spool = tmp_path / "var-mail" / "bob"
    spool.parent.mkdir()
    with env.users.open("a") as f:
        f.write(f"bob:{{PLAIN}}secret::::::userdb_mail=mbox:{spool}\n")
    assert await MboxStore().deliver(str(spool), MESSAGE) is None
    assert await MaildirStore().deliver(str(env.maildir("alice")), b"Subject: a\n\nalice\n") is None
    assert b">From the start" in spool.read_bytes()
    async with running_server(env.config()) as (port, _):
        bob = await Client.connect(port)
        assert (await bob.login("bob")).startswith(b"+OK")
        assert await bob.cmd("STAT") == b"+OK 1 %d" % wire_size(MESSAGE)
        status, lines = await bob.multi("RETR 1")
        assert status.startswith(b"+OK")
        assert b"\r\n".join(lines) + b"\r\n" == crlf(MESSAGE)
        alice = await Client.connect(port)
        assert (await alice.login("alice")).startswith(b"+OK")
        assert (await alice.cmd("STAT")).startswith(b"+OK 1 ")
        assert (await bob.cmd("DELE 1")).startswith(b"+OK")
        assert (await bob.cmd("QUIT")).startswith(b"+OK")
        assert (await alice.cmd("QUIT")).startswith(b"+OK")
        await bob.close()
        await alice.close()
    assert spool.read_bytes() == b""
    assert len(env.messages("alice")) == 1


def test_mbox_settings_are_checked_and_resolved(tmp_path: Path) -> None:
    """The store.mbox_* keys: a lock method listed twice or an unknown one is a
    configuration error; a relative index folder is relative to the file's folder, one
    starting with "~" is kept for the process that uses it (each user's home)."""
    good = tmp_path / "popbox.toml"
    good.write_text('[store]\nmbox_format = "mboxo"\nmbox_lock = ["fcntl", "dotlock"]\n'
                    'mbox_index_dir = "index"\n')
    config = load(good)
    assert config.store.mbox_lock == ["fcntl", "dotlock"]
    assert config.store.mbox_index_dir == tmp_path / "index"
    store = build(config).store.by_type["mbox"]  # the router's store for mbox: locations
    assert (store.fmt, store.locks, store.index_dir) == ("mboxo", ("fcntl", "dotlock"),
                                                         str(tmp_path / "index"))
    for bad in ('mbox_lock = ["fcntl", "fcntl"]', 'mbox_lock = ["lockf"]',
                'mbox_format = "mboxcl"', "mbox_lock_timeout = 0"):
        path = tmp_path / "bad.toml"
        path.write_text(f"[store]\n{bad}\n")
        with pytest.raises(ConfigError, match=r"store\.mbox_"):
            load(path)
    home = tmp_path / "home.toml"
    home.write_text('[store]\nmbox_index_dir = "~/.popbox-mbox"\n'
                    'mail_privileged_group = "mail"\n')
    config = load(home)  # "~" stays for the process that uses it: each user's home
    assert config.store.mbox_index_dir == Path("~/.popbox-mbox")
    assert config.store.mail_privileged_group == "mail"
    assert build(config).store.by_type["mbox"].index_dir == "~/.popbox-mbox"
