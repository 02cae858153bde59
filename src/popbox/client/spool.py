"""A message held on disk between its download and its hand-over to a program or a
server (`popbox.client.mda`, `popbox.client.smtp_client`).

The message is written, as it arrives, to an anonymous temporary file (`O_TMPFILE` where
the file system has it: nothing is left behind by a crash) in the state file's spool
folder, so a message of any size takes bounded memory. Only a complete message is handed
over: a download cut short never reaches an MDA or an MTA as a truncated message, and the
POP3 conversation never waits on a slow recipient mid-message.

`lf=True` keeps LF line ends (how an MTA hands a message to an MDA); otherwise the CRLF
line ends of POP3 (RFC 1939 §3) are kept, as SMTP and LMTP send them.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from popbox.client.crlf import LfConverter, to_lf

HEAD = 64 * 1024  # octets of a message read to find its headers


class SpoolWriter:
    """`write` pieces (CRLF, as POP3 sends them); `finish` hands the complete message to
    `deliver` (its file, positioned at the start); `abort` drops it."""

    def __init__(self, spool_dir: Path, deliver: Callable[[BinaryIO], None], *,
                 lf: bool) -> None:
        self._file: BinaryIO = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115
        self._deliver = deliver
        self._lf = LfConverter() if lf else None

    def write(self, data: bytes) -> None:
        self._file.write(self._lf.feed(data) if self._lf is not None else data)

    def finish(self) -> None:
        try:
            if self._lf is not None:
                self._file.write(self._lf.finish())
            self._file.flush()
            self._file.seek(0)
            self._deliver(self._file)
        finally:
            self._file.close()

    def abort(self) -> None:
        self._file.close()


def headers(file: BinaryIO) -> bytes:
    """The start of the message in `file` up to its first empty line (at most `HEAD`
    octets), with LF line ends; the file is put back at its start."""
    head = to_lf(file.read(HEAD))
    file.seek(0)
    return head.partition(b"\n\n")[0]
