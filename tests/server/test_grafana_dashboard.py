"""contrib/grafana/popbox.json: a valid Grafana dashboard model whose every PromQL
expression names only metrics a real popbox exposes (a scrape of `popbox serve` with two
workers after sessions that move every counter the dashboard draws), and the PromQL subset
contrib/grafana/render.py evaluates them with."""

from __future__ import annotations

import importlib.util
import json
import math
import poplib
import re
import socket
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trustme

from helpers import MailEnv, ServerProcess
from metrics_helpers import metrics_port, scrape_until
from tls_helpers import client_context, tls_files

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "contrib" / "grafana" / "popbox.json"
FUNCTIONS = {"sum", "rate", "histogram_quantile", "by"}


def load_promql() -> ModuleType:
    spec = importlib.util.spec_from_file_location("promql", DASHBOARD.parent / "promql.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["promql"] = module
    spec.loader.exec_module(module)
    return module


def metric_names(expr: str) -> set[str]:
    """The metric names in a PromQL expression: identifiers that are not functions,
    keywords, `by (...)` labels, `[$__rate_interval]` or numbers."""
    stripped = re.sub(r"\bby \([^)]*\)", " ", expr)
    stripped = re.sub(r"\[[^\]]*\]", " ", stripped)
    stripped = re.sub(r"\{[^}]*\}", " ", stripped)
    names = set()
    for match in re.finditer(r"(?<![\w$.])[a-zA-Z_:][a-zA-Z0-9_:]*", stripped):
        if not stripped[match.end():].lstrip().startswith("("):
            names.add(match.group())
    return names - FUNCTIONS


def expressions() -> list[str]:
    model = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in model["panels"] for target in panel["targets"]]


def test_the_dashboard_is_a_grafana_model() -> None:
    model = json.loads(DASHBOARD.read_text())
    assert model["title"] == "popbox" and model["uid"] and isinstance(model["schemaVersion"],
                                                                        int)
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in model["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in model["panels"]:
        assert panel["type"] == "timeseries" and panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        mine = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not mine & cells, f"{panel['title']} overlaps another panel"
        cells |= mine
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        for target in panel["targets"]:
            assert target["expr"] and target["datasource"] == panel["datasource"]
    titles = " ".join(panel["title"].lower() for panel in model["panels"])
    for subject in ("sessions", "logins", "retr", "latency", "penalt", "tls", "store errors"):
        assert subject in titles


def test_the_name_checker_finds_names_and_only_names() -> None:
    assert metric_names('histogram_quantile(0.9, sum by (le, command) '
                        '(rate(popbox_command_seconds_bucket[$__rate_interval])))') == {
                            "popbox_command_seconds_bucket"}
    assert metric_names("sum by (state) (popbox_sessions)") == {"popbox_sessions"}
    assert metric_names('rate(a_total{x="y"}[5m]) / rate(b_total[5m])') == {"a_total",
                                                                             "b_total"}


def test_every_expression_names_a_metric_a_real_scrape_exposes(env: MailEnv,
                                                                tmp_path: Path) -> None:
    ca = trustme.CA()
    cert, key = tls_files(ca, tmp_path / "tls")
    env.put("alice", b"Subject: one\n\nfirst\n")
    gone = env.put("alice", b"Subject: two\n\nsecond\n")
    config = env.config_file(
        server={"workers": 2}, metrics={"listen": "127.0.0.1:0"},
        limits={"penalty_exempt": [], "penalty_initial": 0.1, "penalty_cap": 0.1},
        tls={"cert": cert, "key": key, "implicit": ["127.0.0.1:0"]})
    server = ServerProcess(config)
    try:
        port = metrics_port(server)
        assert server.tls_port is not None
        wrong = poplib.POP3("127.0.0.1", server.port, timeout=10)
        wrong.user("alice")
        with pytest.raises(poplib.error_proto):
            wrong.pass_("wrong")  # a penalty
        wrong.quit()
        with socket.create_connection(("127.0.0.1", server.tls_port), timeout=10) as sock:
            sock.sendall(b"not TLS\r\n")  # a failed handshake
            while sock.recv(4096):
                pass
        pop = poplib.POP3_SSL("127.0.0.1", server.tls_port, context=client_context(ca),
                              timeout=10)
        pop.user("alice")
        pop.pass_("secret")
        other = poplib.POP3("127.0.0.1", server.port, timeout=10)
        other.user("alice")
        with pytest.raises(poplib.error_proto, match="IN-USE"):
            other.pass_("secret")
        other.quit()
        pop.retr(1)
        gone.unlink()  # removed by another agent during the session: a store error
        with pytest.raises(poplib.error_proto):
            pop.retr(2)
        pop.dele(1)
        pop.quit()
        samples = scrape_until(port, "popbox_deleted_messages_total", 1)
    finally:
        server.stop()
    exposed = {name for name, _ in samples}
    for name in ("popbox_deleted_messages_total", "popbox_store_errors_total",
                 "popbox_login_penalty_seconds_count", "popbox_tls_handshakes_total"):
        assert name in exposed, name
    for expr in expressions():
        names = metric_names(expr)
        assert names, expr
        assert names <= exposed, (expr, names - exposed)


def test_the_renderer_reads_every_expression_and_evaluates_them_like_prometheus() -> None:
    promql = load_promql()
    for expr in expressions():
        assert promql.metric_of(expr) in metric_names(expr)
    with pytest.raises(ValueError):
        promql.parse("increase(popbox_logins_total[5m])")
    # Prometheus' interpolation: rank 0.5 * 10 = 5 falls in (0.1, 0.5] holding 4..8.
    buckets = [(0.1, 4.0), (0.5, 8.0), (1.0, 10.0), (math.inf, 10.0)]
    assert promql.quantile(0.5, buckets) == pytest.approx(0.1 + 0.4 * (5 - 4) / (8 - 4))
    assert promql.quantile(0.2, buckets) == pytest.approx(0.05)  # lowest bucket from 0
    assert math.isnan(promql.quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]))
    name = "popbox_command_seconds_bucket"
    scrapes = [
        (0.0, {(name, frozenset({("le", "0.1")})): 0.0, (name, frozenset({("le", "1.0")})): 0.0,
               (name, frozenset({("le", "+Inf")})): 0.0}),
        (10.0, {(name, frozenset({("le", "0.1")})): 10.0,
                (name, frozenset({("le", "1.0")})): 20.0,
                (name, frozenset({("le", "+Inf")})): 20.0}),
    ]
    quantile = promql.evaluate(
        f"histogram_quantile(0.75, sum by (le) (rate({name}[$__rate_interval])))", scrapes, 10)
    assert quantile == {(): [(10.0, pytest.approx(0.1 + 0.9 * 0.5))]}
    rate = promql.evaluate(f"rate({name}[$__rate_interval])", scrapes, 10)
    assert rate == {(): [(10.0, pytest.approx(5.0))]}  # (10 + 20 + 20) / 10 s
