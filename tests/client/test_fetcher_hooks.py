"""The fetcher's hooks for displays and daemons, in this process against a real popbox on
127.0.0.1: a progress display is told the new messages' LIST sizes (RFC 1939 §5) and every
octet that arrives; `stop()` ends a run after the message in flight, DELEs only what was
recorded, and QUIT (RFC 1939 §6) removes just those."""

from __future__ import annotations

from pathlib import Path

from helpers import MailEnv, crlf, running_server
from popbox.client.fetcher import Fetcher, Options, Source
from popbox.client.maildir import Maildir
from popbox.client.state import StateFile

MESSAGES = [f"Subject: {n}\n\nbody {n}\n".encode() * (n + 1) for n in range(5)]


class Recorder:
    def __init__(self) -> None:
        self.begun: list[tuple[int, int]] = []
        self.octets = 0
        self.messages = 0

    def begin(self, messages: int, octets: int) -> None:
        self.begun.append((messages, octets))

    def advance(self, octets: int) -> None:
        self.octets += octets

    def done_message(self) -> None:
        self.messages += 1


def source(port: int) -> Source:
    return Source(server="127.0.0.1", port=port, user="alice", password="secret", tls="none",
                  timeout=10.0)


def delivered(maildir: Path) -> list[bytes]:
    return sorted(p.read_bytes() for p in (maildir / "new").iterdir())


async def test_progress_is_told_sizes_and_octets(env: MailEnv, tmp_path: Path) -> None:
    env.add_user("alice")
    for message in MESSAGES:
        env.put("alice", message)
    state = StateFile(tmp_path / "state.json")
    state.open()
    recorder = Recorder()
    async with running_server(env.config()) as (port, _):
        fetcher = Fetcher(source(port), Maildir(tmp_path / "Maildir"), state,
                          Options(keep=True), progress=recorder)
        fetcher.prepare()
        report = await fetcher.run()
    state.close()
    wire = sum(len(crlf(m)) for m in MESSAGES)
    assert recorder.begun == [(5, wire)]
    assert recorder.octets == wire == report.octets
    assert recorder.messages == 5 == report.delivered == report.new
    assert delivered(tmp_path / "Maildir") == sorted(MESSAGES)


async def test_stop_ends_after_the_message_in_flight(env: MailEnv, tmp_path: Path) -> None:
    env.add_user("alice")
    for message in MESSAGES:
        env.put("alice", message)
    state = StateFile(tmp_path / "state.json")
    state.open()
    maildir = tmp_path / "Maildir"

    class StopAfterTwo(Recorder):
        def done_message(self) -> None:
            super().done_message()
            if self.messages == 2:
                fetcher.stop()

    async with running_server(env.config()) as (port, _):
        fetcher = Fetcher(source(port), Maildir(maildir), state, Options(batch=32),
                          progress=StopAfterTwo())
        fetcher.prepare()
        report = await fetcher.run()
        assert report.stopped
        assert (report.delivered, report.deleted) == (2, 2)
        assert delivered(maildir) == sorted(MESSAGES[:2])
        # QUIT removed exactly the two recorded messages; the next run takes the rest.
        assert sorted(env.messages("alice")) == sorted(MESSAGES[2:])
        fetcher = Fetcher(source(port), Maildir(maildir), state, Options())
        fetcher.prepare()
        report = await fetcher.run()
    state.close()
    assert (report.delivered, report.deleted, report.stopped) == (3, 3, False)
    assert delivered(maildir) == sorted(MESSAGES)
    assert env.messages("alice") == []
