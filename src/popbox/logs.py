"""Log output: `[log] format` (text or JSON lines) and `[log] target` (stderr, syslog or
a file that SIGUSR1 reopens, for logrotate).

popbox's own log lines are an event name followed by `key=value` fields whose values
never contain spaces (client-controlled text goes through `server.logfmt.quote`), e.g.
`login failed user=alice mech=USER ip=192.0.2.1 reason=rejected`. The JSON format is the
same line taken apart: one object per line, `{"v": 1, "ts": ..., "level": ..., "pid": ...,
"event": "login failed", "user": "alice", "mech": "USER", "ip": "192.0.2.1",
"reason": "rejected", "msg": <the text line>}`. Values stay strings, exactly as in the
text line; a line that is not in that form (a library's) has only "msg". "v" is the
version of this layout: fields may be added under the same version, never renamed or
retyped. A traceback goes in "exc".

Syslog lines go to /dev/log with facility mail and the tag `popbox[pid]:`, as Dovecot's
do, so the usual mail.log rules file them.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
import time
from typing import TextIO

from popbox.config import LogSection

JSON_VERSION = 1
TEXT_FORMAT = "%(asctime)s popbox[%(process)d]: %(message)s"

_handler: logging.Handler | None = None


def fields(message: str) -> tuple[str, dict[str, str]]:
    """The event name and the `key=value` fields of one of popbox's log lines."""
    words = message.split(" ")
    event: list[str] = []
    found: dict[str, str] = {}
    for word in words:
        key, sep, value = word.partition("=")
        if sep and key.isidentifier():
            found[key] = value
        elif found:  # free text after the fields: not one of ours
            return "", {}
        else:
            event.append(word)
    return " ".join(event), found


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        event, values = fields(message)
        out: dict[str, object] = {
            "v": JSON_VERSION,
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "pid": record.process,
        }
        if event:
            out["event"] = event
        for key, value in values.items():
            out.setdefault(key, value)
        out["msg"] = message
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class ReopenableFileHandler(logging.StreamHandler[TextIO]):
    """Appends to a file; `reopen()` starts writing to whatever file has that name now."""

    def __init__(self, path: str) -> None:
        super().__init__(self._open(path))
        self.path = path

    @staticmethod
    def _open(path: str) -> TextIO:
        return open(path, "a", encoding="utf-8", errors="replace")

    def reopen(self) -> None:
        stream = self._open(self.path)
        old = self.setStream(stream)
        if old is not None:
            old.close()

    def close(self) -> None:
        self.acquire()
        try:
            self.stream.close()
        finally:
            self.release()
        super().close()


def handler_for(section: LogSection) -> logging.Handler:
    """The handler `section` asks for. Raises OSError if the file or /dev/log can't be used."""
    handler: logging.Handler
    if section.target == "stderr":
        handler = logging.StreamHandler(sys.stderr)
        text = logging.Formatter(TEXT_FORMAT)
    elif section.target == "syslog":
        handler = logging.handlers.SysLogHandler(
            "/dev/log", facility=logging.handlers.SysLogHandler.LOG_MAIL)
        text = logging.Formatter("popbox[%(process)d]: %(message)s")
    else:
        handler = ReopenableFileHandler(section.target)
        text = logging.Formatter(TEXT_FORMAT)
    if section.format == "json":
        if section.target == "syslog":
            handler.setFormatter(_Tagged(JsonFormatter()))
        else:
            handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(text)
    return handler


class _Tagged(logging.Formatter):
    """JSON for syslog: the tag first, so the line is still filed under popbox."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return f"popbox[{os.getpid()}]: {self.inner.format(record)}"


def setup(section: LogSection) -> None:
    """Send every log line (popbox's and its libraries') where `section` says, replacing
    what a previous call set up. Raises OSError (the old setup stays) if it cannot."""
    global _handler
    handler = handler_for(section)
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    for other in list(root.handlers):  # e.g. a default stderr handler
        root.removeHandler(other)
    root.addHandler(handler)
    root.setLevel(getattr(logging, section.level.upper()))
    _handler = handler


def configured() -> bool:
    return _handler is not None


def reopen() -> None:
    """SIGUSR1: open the log file again (logrotate has renamed it). Other targets: no-op."""
    if isinstance(_handler, ReopenableFileHandler):
        try:
            _handler.reopen()
        except OSError as exc:
            logging.getLogger("popbox").error("log file %s not reopened: %s",
                                              _handler.path, exc.strerror)
