"""Third-party POP3 clients driven as child processes: fetchmail polling once into an MDA
script, getmail6 into a Maildir (as `nobody` when run as root), and the check that a tool
is installed."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

TOOL_TIMEOUT = 60


def require(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is not installed: run scripts/install-peers"
    return path


def run_fetchmail(home: Path, port: int, *, keep: bool, password: str = "secret"
                  ) -> tuple[subprocess.CompletedProcess[str], list[bytes]]:
    """Poll once with fetchmail; return the run and the messages its MDA got, in order.

    The MDA is a shell script that writes stdin to the next numbered file in
    `home/delivered` (fetchmail runs it once per message, one after the other).
    `sslproto ''` stops fetchmail 6.4 from insisting on STLS (the server allows plaintext
    on loopback and offers no STLS here); `set invisible` and `no rewrite` keep it from
    editing headers; `uidl` makes it track UIDLs in `home/.fetchids` (RFC 1939 §7).
    """
    out = home / "delivered"
    out.mkdir(exist_ok=True)
    mda = home / "mda.sh"
    if not mda.exists():
        mda.write_text(
            "#!/bin/sh\n"
            'n=$(ls "$1" | wc -l)\n'
            'exec cat > "$1/$(printf %04d "$n")"\n'
        )
        mda.chmod(0o755)
    rc = home / "fetchmailrc"
    rc.write_text(
        "set invisible\n"
        f"poll 127.0.0.1 service {port} protocol pop3 uidl\n"
        f'  user "alice" password "{password}" sslproto \'\' no rewrite\n'
        f'  mda "{mda} {out}"{" keep" if keep else ""}\n'
    )
    rc.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FETCHMAIL")}
    env["HOME"] = str(home)
    before = len(list(out.iterdir()))
    result = subprocess.run(
        [require("fetchmail"), "-f", str(rc), "--nodetach", "--nosyslog", "-v"],
        capture_output=True, text=True, timeout=TOOL_TIMEOUT, env=env, check=False,
    )
    delivered = [p.read_bytes() for p in sorted(out.iterdir())][before:]
    return result, delivered


@pytest.fixture
def getmail_dest(tmp_path: Path) -> Iterator[tuple[Path, str | None]]:
    """An empty destination Maildir and the user getmail delivers as.

    getmail refuses to deliver as root; as root the Maildir is made in a fresh directory
    under the system temp dir (pytest's tmp_path is not reachable for other users),
    owned by `nobody`, and getmail is told to deliver as `nobody`.
    """
    if os.geteuid() != 0:
        dest = tmp_path / "dest"
        for sub in ("cur", "new", "tmp"):
            (dest / sub).mkdir(parents=True)
        yield dest, None
        return
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="popbox-getmail-"))
    try:
        dest = base / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (dest / sub).mkdir(parents=True)
        for path in (base, dest, *(dest / sub for sub in ("cur", "new", "tmp"))):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        yield dest, "nobody"
    finally:
        shutil.rmtree(base)


def run_getmail(getmaildir: Path, port: int, dest: tuple[Path, str | None], *, delete: bool
                ) -> tuple[subprocess.CompletedProcess[str], list[bytes]]:
    """Run getmail once; return the run and the messages it newly wrote to dest/new,
    each with getmail's Return-Path line checked and removed."""
    path, user = dest
    getmaildir.mkdir(exist_ok=True)
    rc = getmaildir / "getmailrc"
    rc.write_text(
        "[retriever]\n"
        "type = SimplePOP3Retriever\n"
        "server = 127.0.0.1\n"
        f"port = {port}\n"
        "username = alice\n"
        "password = secret\n"
        "\n[destination]\n"
        "type = Maildir\n"
        f"path = {path}/\n"
        + (f"user = {user}\n" if user else "")
        + "\n[options]\n"
        f"delete = {str(delete).lower()}\n"
        "read_all = false\n"
        "delivered_to = false\n"
        "received = false\n"
    )
    before = {p.name for p in (path / "new").iterdir()}
    result = subprocess.run(
        [require("getmail"), "--getmaildir", str(getmaildir), "--rcfile", str(rc)],
        capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False,
    )
    delivered = []
    for p in sorted((path / "new").iterdir()):
        if p.name in before:
            continue
        data = p.read_bytes()
        first, _, rest = data.partition(b"\n")
        assert first == b"Return-Path: <unknown>", data[:200]
        delivered.append(rest)
    return result, delivered
