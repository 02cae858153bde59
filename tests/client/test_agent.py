"""Runs of several accounts in this process against a real popbox on 127.0.0.1: at most
`max_parallel` at once, accounts sharing a state file wait for each other instead of
failing on its lock, each run's outcome and last run are recorded, and the exit status of
a run of several accounts is the most severe of theirs."""

from __future__ import annotations

from pathlib import Path

from helpers import MailEnv, running_server
from popbox.client import accounts as ac
from popbox.client.agent import Outcome, Runner, last_run, overall, run_all


def account(name: str, port: int, user: str, tmp_path: Path, **keys: object) -> ac.Account:
    config = ac.AccountConfig.model_validate({
        "server": "127.0.0.1", "port": port, "tls": "none", "user": user,
        "password": "secret", "maildir": tmp_path / f"Maildir-{name}", **keys})
    return ac.Account(name, config, config.state or tmp_path / "state" / f"{name}.json")


def test_the_most_severe_status_wins() -> None:
    assert overall([]) == overall([0, 0]) == 0
    assert overall([0, 75, 74]) == 74
    assert overall([75, 77, 69, 76]) == 77
    assert overall([78, 64, 77]) == 64
    assert overall([77, 78]) == 78
    assert overall([75, 65]) == 65 and overall([65, 74]) == 74


async def test_parallel_runs_are_bounded_and_share_state_files(env: MailEnv,
                                                               tmp_path: Path) -> None:
    users = [f"u{n}" for n in range(5)]
    for user in users:
        env.add_user(user)
        for n in range(3):
            env.put(user, f"Subject: {user} {n}\n\nbody\n".encode())
    shared = tmp_path / "shared.json"
    active = peak = 0

    class Counting:
        def begin(self, messages: int, octets: int) -> None:
            nonlocal active, peak
            active += 1
            peak = max(peak, active)

        def advance(self, octets: int) -> None:
            pass

        def done_message(self) -> None:
            pass

    finished: list[Outcome] = []

    def done(outcome: Outcome) -> None:
        nonlocal active
        active -= 1
        finished.append(outcome)

    async with running_server(env.config()) as (port, _):
        chosen = [account(user, port, user, tmp_path, state=shared) if n < 2 else
                  account(user, port, user, tmp_path) for n, user in enumerate(users)]
        runner = Runner(progress=lambda a: Counting())
        outcomes = await run_all(runner, chosen, 2, done)
    assert peak == 2 and active == 0
    assert [o.status for o in outcomes] == [0] * 5, [o.error for o in outcomes]
    assert {o.account.name for o in finished} == set(users)
    assert all(o.report.delivered == 3 and o.report.deleted == 3 for o in outcomes)
    for a in chosen:
        run = last_run(a)
        assert run is not None and (run.status, run.result, run.delivered) == (0, "ok", 3)
        assert len(list((tmp_path / f"Maildir-{a.name}" / "new").iterdir())) == 3


async def test_a_failed_run_is_remembered(env: MailEnv, tmp_path: Path) -> None:
    env.add_user("alice")
    async with running_server(env.config()) as (port, _):
        bad = account("bad", port, "alice", tmp_path, password="wrong")
        outcome = await Runner().run(bad)
    assert outcome.status == 77 and outcome.error is not None
    assert "[AUTH]" in outcome.error
    run = last_run(bad)
    assert run is not None and run.status == 77 and run.result == outcome.error
    assert outcome.as_json()["error"] == {"status": 77, "class": "EX_NOPERM",
                                          "message": outcome.error}


async def test_an_mda_account_runs_and_a_refusal_is_65(env: MailEnv, tmp_path: Path) -> None:
    """An account with `mda` delivers through the program (its stdin, RFC 5322 text with LF
    line ends) and DELEs what it took; when the program refuses a message for good (exit 1),
    the run's status is 65 (EX_DATAERR), the message stays on the server and the reason
    is in the notes."""
    env.add_user("alice")
    env.put("alice", b"Subject: one\n\nx\n")
    out = tmp_path / "delivered"
    async with running_server(env.config()) as (port, _):
        def account(name: str, argv: list[str]) -> ac.Account:
            return ac.Account(name, ac.AccountConfig.model_validate({
                "server": "127.0.0.1", "port": port, "tls": "none", "user": "alice",
                "password": "secret", "mda": argv}), tmp_path / f"{name}.json")

        refused = await Runner().run(account("refuse", ["/bin/sh", "-c",
                                                        "cat >/dev/null; echo no >&2; exit 1"]))
        assert refused is not None and refused.status == 65
        assert refused.report.failed == 1 and refused.report.notes
        assert refused.as_json()["error"]["class"] == "EX_DATAERR"
        assert env.messages("alice") == [b"Subject: one\n\nx\n"]
        taken = await Runner().run(account("take", ["/bin/sh", "-c", f"cat > {out}"]))
    assert taken is not None and taken.status == 0 and taken.error is None
    assert taken.report.delivered == 1 and taken.report.deleted == 1
    assert out.read_bytes() == b"Subject: one\n\nx\n"
    assert env.messages("alice") == []
