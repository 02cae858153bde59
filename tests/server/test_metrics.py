"""Prometheus metrics scraped over real HTTP from `popbox serve` after real POP3 sessions
(RFC 1939 §5-§6: RETR, DELE marks, QUIT commits), with one worker and with two."""

from __future__ import annotations

import poplib

import pytest
from prometheus_client import generate_latest

from helpers import Client, MailEnv, ServerProcess, running_server
from metrics_helpers import metrics_port, scrape, scrape_when_idle, total, value
from popbox.config import ConfigError, from_dict
from popbox.server.observe import COMMAND_SAMPLE

MESSAGES = [b"Subject: one\n\nfirst\n", b"Subject: two\n\nsecond body\n", b"Subject: 3\n\nx\n"]


def octets(message: bytes) -> int:
    return len(message.replace(b"\n", b"\r\n"))


@pytest.mark.parametrize("workers", [1, 2])
def test_counters_move_by_exactly_what_the_sessions_did(env: MailEnv, workers: int) -> None:
    for message in MESSAGES:
        env.put("alice", message)
    config = env.config_file(server={"workers": workers}, metrics={"listen": "127.0.0.1:0"})
    server = ServerProcess(config)
    try:
        port = metrics_port(server)
        before = scrape(port)
        assert value(before, "popbox_logins_total", mechanism="USER", result="ok") == 0
        assert total(before, "popbox_connections_total") == 0

        wrong = poplib.POP3("127.0.0.1", server.port, timeout=10)
        wrong.user("alice")
        with pytest.raises(poplib.error_proto):
            wrong.pass_("wrong")
        wrong.quit()

        pop = poplib.POP3("127.0.0.1", server.port, timeout=10)
        pop.user("alice")
        pop.pass_("secret")
        assert pop.retr(1)[1] == MESSAGES[0].rstrip(b"\n").split(b"\n")
        pop.retr(2)
        pop.dele(1)
        # A second login while the maildrop is held: refused as in use.
        other = poplib.POP3("127.0.0.1", server.port, timeout=10)
        other.user("alice")
        with pytest.raises(poplib.error_proto, match="IN-USE"):
            other.pass_("secret")
        other.quit()
        pop.quit()

        after = scrape_when_idle(port)
    finally:
        server.stop()
    assert len(env.messages("alice")) == 2
    listener = f"127.0.0.1:{server.port}"
    assert value(after, "popbox_connections_total", listener=listener, tls="no") == 3
    assert total(after, "popbox_connections_total") == 3
    assert value(after, "popbox_logins_total", mechanism="USER", result="ok") == 1
    assert value(after, "popbox_logins_total", mechanism="USER", result="rejected") == 1
    assert value(after, "popbox_logins_total", mechanism="USER", result="in-use") == 1
    assert value(after, "popbox_maildrop_in_use_total") == 1
    assert value(after, "popbox_retr_messages_total") == 2
    assert value(after, "popbox_retr_bytes_total") == octets(MESSAGES[0]) + octets(MESSAGES[1])
    assert value(after, "popbox_deleted_messages_total") == 1
    commands = {
        ("USER", "ok"): 3, ("PASS", "ok"): 1, ("PASS", "err"): 2, ("RETR", "ok"): 2,
        ("DELE", "ok"): 1, ("QUIT", "ok"): 3,
    }
    for (command, result), count in commands.items():
        assert value(after, "popbox_commands_total", command=command, result=result) == count
    assert total(after, "popbox_commands_total") == sum(commands.values())
    assert total(after, "popbox_sessions") == 0
    assert total(after, "popbox_store_errors_total") == 0
    assert value(after, "popbox_login_penalty_seconds_count") == 0  # loopback is exempt


def test_metrics_are_off_unless_configured_and_private_by_default(env: MailEnv) -> None:
    server = ServerProcess(env.config_file())
    try:
        assert server.proc.stdout is not None
        client_port = server.port
        assert client_port
    finally:
        log = server.stop()
    assert "metrics" not in log
    with pytest.raises(ConfigError, match="not a loopback address"):
        from_dict(env.config_dict(metrics={"listen": "0.0.0.0:9110"}))
    with pytest.raises(ConfigError, match="not a loopback address"):
        from_dict(env.config_dict(metrics={"listen": ":9110"}))
    allowed = from_dict(env.config_dict(metrics={"listen": "0.0.0.0:9110", "public": True}))
    assert allowed.metrics.listen == "0.0.0.0:9110"
    assert from_dict(env.config_dict(metrics={"listen": "[::1]:9110"})).metrics.public is False


async def test_one_command_in_every_sample_is_timed(env: MailEnv) -> None:
    """popbox_command_seconds times one command in COMMAND_SAMPLE of a session; the first
    session of a process starts with its first command."""
    config = env.config(metrics={"listen": "127.0.0.1:0"})
    noops = 3 * COMMAND_SAMPLE
    async with running_server(config) as (port, ctx):
        client = await Client.connect(port)
        assert (await client.login()).startswith(b"+OK")
        for _ in range(noops):
            assert await client.cmd("NOOP") == b"+OK"
        assert (await client.cmd("QUIT")).startswith(b"+OK")
        await client.close()
        assert await client.reader.read() == b""
        metrics = ctx.observe.metrics
        assert metrics is not None
    text = generate_latest(metrics.registry).decode()
    commands = noops + 3  # USER, PASS, QUIT
    timed = [line for line in text.splitlines() if line.startswith("popbox_command_seconds_count")]
    expected = len(range(1, commands + 1, COMMAND_SAMPLE))  # commands 1, 17, 33, 49
    assert sum(float(line.split()[-1]) for line in timed) == expected == 4
    assert 'popbox_command_seconds_count{command="USER"} 1.0' in text
    noop_count = f'popbox_commands_total{{command="NOOP",result="ok"}} {float(noops)}'
    assert noop_count in text


async def test_a_message_gone_during_the_session_counts_as_a_store_error(env: MailEnv) -> None:
    """RFC 1939 §5: RETR of a message another program removed since login is an -ERR;
    the metrics count it as a store error of kind "gone" and as a failed RETR."""
    env.put("alice", MESSAGES[0])
    env.put("alice", MESSAGES[1])
    config = env.config(metrics={"listen": "127.0.0.1:0"})
    async with running_server(config) as (port, ctx):
        client = await Client.connect(port)
        assert (await client.login()).startswith(b"+OK")
        md = env.maildir("alice")
        first = sorted(list((md / "new").iterdir()) + list((md / "cur").iterdir()))[0]
        first.unlink()
        assert (await client.cmd("RETR 1")).startswith(b"-ERR")
        assert (await client.cmd("QUIT")).startswith(b"+OK")
        await client.close()
        assert await client.reader.read() == b""
        metrics = ctx.observe.metrics
        assert metrics is not None
    text = generate_latest(metrics.registry).decode()
    assert 'popbox_store_errors_total{kind="gone"} 1.0' in text
    assert 'popbox_commands_total{command="RETR",result="err"} 1.0' in text
    assert len(env.messages("alice")) == 1
