"""Delivery over LMTP (RFC 2033) into a mail store (Dovecot, Cyrus, `popbox lmtp`), or over
SMTP (RFC 5321) to the local MTA, as fetchmail does by default.

The conversation is the standard library's `smtplib` (`LMTP` for LHLO and Unix sockets,
`SMTP` for EHLO/HELO), run in a worker thread by the fetcher. One connection serves the
whole run: opened for the first message, RSET (RFC 5321 §4.1.1.5) before each later one,
QUIT at the end (`close`). Each message is spooled first (`popbox.client.spool`), so a
transaction starts only for a complete message and never waits on the POP3 server. Then:

- `MAIL FROM:<Return-Path of the message>` (`<>` without one), with `BODY=8BITMIME`
  (RFC 6152) and `SIZE=` (RFC 1870) when the server offers them, and `SMTPUTF8` (RFC 6531)
  when it offers it and an address needs it;
- `RCPT TO:<recipient>`: the account's configured recipient, else its user;
- `DATA`: the message streamed from the spool with CRLF line ends and a dot doubled at the
  start of a line (RFC 5321 §4.5.2), ended by `<CRLF>.<CRLF>`; for LMTP, the reply is the
  recipient's own (RFC 2033 §4.2: one reply per accepted recipient; there is one).

Reply classes (RFC 5321 §4.2.1): 2xx delivered (the fetcher records the message at once);
4xx `DeliveryDeferred` (the message stays on the server, the run ends, the next run tries
again); 5xx `DeliveryFailed` (that message stays on the server and is reported, the run
goes on). A dropped connection or a timeout is `DeliveryDeferred`. A kill of `popbox
fetch` between the final 250 and the record delivers that message again on the next run:
LMTP and SMTP delivery is at least once.
"""

from __future__ import annotations

import contextlib
import os
import smtplib
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from popbox.client.fetcher import DeliveryDeferred, DeliveryFailed
from popbox.client.spool import SpoolWriter, headers
from popbox.client.state import Journal
from popbox.proto.wire import MessageEncoder
from popbox.store.mbox_format import envelope_sender

TIMEOUT = 300.0  # seconds per command and reply (RFC 5321 §4.5.3.2 asks for minutes)
PIECE = 1 << 16


def parse_address(address: str, *, default_port: int) -> tuple[str, int]:
    """"host:port", "[v6]:port", or a host alone (the default port)."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.removeprefix(":")
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:
        host, port = address, ""
    if not host:
        raise ValueError(f"no host in {address!r}")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {address!r}")
    return host, int(port)


def _classify(code: int, text: bytes, what: str) -> None:
    """Nothing for 2xx; the exception for the others."""
    if 200 <= code < 300:
        return
    reply = f"{what}: {code} {text.decode('utf-8', 'replace').strip()}".rstrip()
    if 500 <= code < 600:
        raise DeliveryFailed(reply)
    raise DeliveryDeferred(reply)


class SmtpDestination:
    """`lmtp=True`: an LMTP server at "host:port" or a Unix socket path; else an SMTP
    server at "host:port" (port 25 when left out)."""

    records_each = True

    def __init__(self, address: str, recipient: str, spool_dir: Path, *, lmtp: bool,
                 timeout: float = TIMEOUT) -> None:
        self.lmtp = lmtp
        self.kind = "LMTP" if lmtp else "SMTP"
        self.address = address
        if lmtp and address.startswith("/"):
            self._where: tuple[str, int] = (address, 0)
        else:
            self._where = parse_address(address, default_port=24 if lmtp else 25)
        if not recipient:
            raise ValueError("no recipient")
        self.recipient = recipient
        self.spool_dir = spool_dir
        self.timeout = timeout
        self._conn: smtplib.SMTP | None = None
        self._used = False

    def open(self) -> None:
        self.spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def has(self, key: str) -> bool:
        return False  # a server cannot be asked what it was given: the state decides

    def writer(self, key: str, uidl: str) -> SpoolWriter:
        return SpoolWriter(self.spool_dir, self._send, lf=False)

    def commit(self, uidls: Sequence[str], journal: Journal) -> None:
        journal.record(list(uidls))

    def close(self) -> None:
        """QUIT, if a connection is open."""
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                conn.quit()
            conn.close()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def _connect(self) -> smtplib.SMTP:
        host, port = self._where
        local = socket.gethostname() or "localhost"
        conn: smtplib.SMTP
        if self.lmtp:
            conn = smtplib.LMTP(local_hostname=local, timeout=self.timeout)
        else:
            conn = smtplib.SMTP(local_hostname=local, timeout=self.timeout)
        try:
            code, text = conn.connect(host, port)
            _classify(code, text, f"{self.kind} greeting")
            conn.ehlo_or_helo_if_needed()
        except BaseException:
            conn.close()
            raise
        return conn

    def _session(self) -> smtplib.SMTP:
        if self._conn is not None and self._used:
            try:
                code, text = self._conn.rset()
                _classify(code, text, "RSET")
            except (smtplib.SMTPServerDisconnected, DeliveryDeferred):
                self._drop()  # the server hung up between messages: start again
        if self._conn is None:
            self._conn = self._connect()
        self._used = True
        return self._conn

    def _send(self, message: BinaryIO) -> None:
        try:
            self._transaction(message)
        except (smtplib.SMTPServerDisconnected, smtplib.SMTPResponseException,
                smtplib.SMTPHeloError, OSError) as exc:
            self._drop()
            raise DeliveryDeferred(f"{self.kind} {self.address}: {exc}") from None
        except smtplib.SMTPException as exc:
            raise DeliveryDeferred(f"{self.kind} {self.address}: {exc}") from None

    def _transaction(self, message: BinaryIO) -> None:
        conn = self._session()
        sender = envelope_sender(headers(message))
        sender = "" if sender == "MAILER-DAEMON" else sender
        options: list[str] = []
        if conn.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")
        if conn.has_extn("size"):
            options.append(f"SIZE={os.fstat(message.fileno()).st_size}")
        if not (sender + self.recipient).isascii():
            if not conn.has_extn("smtputf8"):
                raise DeliveryFailed(f"{self.kind} {self.address} does not offer SMTPUTF8, "
                                     f"which the address {self.recipient!r} needs")
            options.append("SMTPUTF8")
        code, text = conn.mail(sender, options)
        _classify(code, text, "MAIL FROM")
        code, text = conn.rcpt(self.recipient)
        _classify(code, text, f"RCPT TO:<{self.recipient}>")
        code, text = conn.docmd("DATA")
        if code != 354:
            _classify(code if code >= 400 else 451, text, "DATA")
        encoder = MessageEncoder()
        while piece := message.read(PIECE):
            conn.send(encoder.feed(piece))
        conn.send(encoder.finish())
        code, text = conn.getreply()
        _classify(code, text, "end of DATA")
