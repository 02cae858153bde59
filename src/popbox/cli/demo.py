"""`popbox demo`: a self-contained setup under one folder (users file, a Maildir with a few
realistic messages, a self-signed certificate), served on 127.0.0.1. Re-running keeps what
is there."""

from __future__ import annotations

import asyncio
from pathlib import Path

from popbox.auth import passwd_file, schemes
from popbox.cli.selfsigned import make_self_signed
from popbox.config import Config, from_dict
from popbox.store.maildir import MaildirStore

MESSAGES = [
    b"""From: Alice <alice@example.org>
To: demo@example.org
Subject: Welcome to popbox
Date: Mon, 02 Nov 2026 09:00:00 +0000
Message-ID: <welcome@example.org>

Hello!

This maildrop is served by popbox. Fetch it with curl, fetchmail or any mail client.
""",
    b"""From: Bob <bob@example.org>
To: demo@example.org
Subject: A line that starts with a dot
Date: Mon, 02 Nov 2026 10:00:00 +0000
Message-ID: <dots@example.org>

The next line starts with a dot, so POP3 byte-stuffs it on the wire:
.hidden
..two dots
.
That lone dot above is part of the message, not its end.
""",
    """From: =?UTF-8?Q?Zo=C3=AB?= <zoe@example.org>
To: demo@example.org
Subject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=
Date: Mon, 02 Nov 2026 11:00:00 +0000
Message-ID: <utf8@example.org>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Grüße aus Zürich — 你好 — ¡hola!
""".encode(),
    b"""From: Carol <carol@example.org>
To: demo@example.org
Subject: Report with an attachment
Date: Mon, 02 Nov 2026 12:00:00 +0000
Message-ID: <multipart@example.org>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="b1"

--b1
Content-Type: text/plain; charset=us-ascii

The report is attached.

--b1
Content-Type: text/csv; name="report.csv"
Content-Disposition: attachment; filename="report.csv"
Content-Transfer-Encoding: base64

bW9udGgsbWVzc2FnZXMKb2N0LDEyCm5vdiwzNAo=

--b1--
""",
]


def prepare(folder: Path, port: int, tls_port: int) -> Config:
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "tls" / "cert.pem", folder / "tls" / "key.pem"
    if not cert.exists() or not key.exists():
        cert.parent.mkdir(exist_ok=True)
        make_self_signed(cert, key)
    users = folder / "users"
    if not users.exists():
        passwd_file.add_user(users, "demo", schemes.make(b"demo", "ARGON2ID"))
    maildir = folder / "mail" / "demo" / "Maildir"
    if not maildir.exists():
        store = MaildirStore()
        for message in MESSAGES:
            result = asyncio.run(store.deliver(str(maildir), message))
            if result is not None:
                raise SystemExit(f"popbox demo: cannot write {maildir}: {result.value}")
    return from_dict({
        # The demo runs as whoever starts it, root included: it only listens on 127.0.0.1.
        "server": {"listen": [f"127.0.0.1:{port}"], "hostname": "popbox.demo",
                   "allow_root": True},
        "tls": {"cert": str(cert), "key": str(key), "implicit": [f"127.0.0.1:{tls_port}"]},
        "auth": {"passwd_file": str(users), "mail_location": str(folder / "mail/{user}/Maildir")},
    })
