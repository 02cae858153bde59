"""`popbox lmtp` serves popbox_lmtp_deliveries_total at `[lmtp] metrics_listen`, counted
per recipient (RFC 2033 §4.2: one reply for each after DATA)."""

from __future__ import annotations

import smtplib

from helpers import MailEnv
from metrics_helpers import metrics_port, scrape, value
from pg import LmtpProcess


def test_deliveries_are_counted_by_result(env: MailEnv) -> None:
    env.add_user("bob")
    config = env.config_file(lmtp={
        "listen": ["127.0.0.1:0"], "strip_domain": True, "max_message_size": 2048,
        "metrics_listen": "127.0.0.1:0"})
    lmtp = LmtpProcess(config)
    try:
        port = metrics_port(lmtp)  # type: ignore[arg-type]
        assert value(scrape(port), "popbox_lmtp_deliveries_total", result="delivered") == 0
        client = smtplib.LMTP("127.0.0.1", lmtp.port)
        for rcpt in ("alice@example.org", "bob@example.org"):  # smtplib reads one reply
            assert client.sendmail("s@example.org", [rcpt], b"Subject: hi\r\n\r\nyo\r\n") == {}
        # No SIZE parameter: the size is only known once the data is in.
        assert client.mail("s@example.org")[0] == 250
        assert client.rcpt("alice@example.org")[0] == 250
        assert client.data(b"x" * 4096) == (552, b"5.3.4 Message too big for system")
        client.quit()
        samples = scrape(port)
    finally:
        lmtp.stop()
    assert value(samples, "popbox_lmtp_deliveries_total", result="delivered") == 2
    assert value(samples, "popbox_lmtp_deliveries_total", result="too-big") == 1
    assert len(env.messages("alice")) == 1 and len(env.messages("bob")) == 1
