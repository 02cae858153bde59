"""Scraping popbox's /metrics over HTTP, parsed with prometheus-client's own parser."""

from __future__ import annotations

import re
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from helpers import ServerProcess

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_port(server: ServerProcess) -> int:
    """The port announced after the POP3 listeners ("popbox: metrics on port N")."""
    assert server.proc.stdout is not None
    line = server.proc.stdout.readline()
    match = re.search(r"metrics on port (\d+)", line)
    assert match, line
    return int(match.group(1))


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


def scrape_when_idle(port: int, timeout: float = 10) -> Samples:
    """Scrape once every session has logged out (the counts are folded in at logout)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if total(samples, "popbox_sessions") == 0 or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def scrape_until(port: int, name: str, wanted: float, timeout: float = 10, **labels: str
                 ) -> Samples:
    """Scrape until the sample `name{labels}` reaches `wanted` (or the timeout passes:
    the caller's assertion then says what it was)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if value(samples, name, **labels) >= wanted or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)
