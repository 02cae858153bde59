"""The few PromQL forms the popbox dashboard uses, evaluated over scrapes popbox's own
renderer took (render.py). Not a PromQL engine: an expression in any other form is an
error, so a dashboard change that this cannot draw is noticed, not drawn wrong.

    rate(M[$__rate_interval])
    sum by (L, ...) (rate(M[$__rate_interval]))
    sum by (L, ...) (M)
    histogram_quantile(Q, sum by (le[, L ...]) (rate(M_bucket[$__rate_interval])))

`rate` is Prometheus' idea without its extrapolation: the increase between the newest
scrape at least `window` seconds old and the current one, divided by the time between
them. `histogram_quantile` interpolates linearly inside the bucket the rank falls in,
as Prometheus does (the lowest bucket from 0; a rank in the +Inf bucket gives the largest
finite bound; no observations give NaN).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]
Scrape = tuple[float, Samples]  # when (seconds), what
Series = dict[tuple[tuple[str, str], ...], list[tuple[float, float]]]

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
RATE = rf"rate\((?P<metric>{NAME})\[\$__rate_interval\]\)"
BY = r"sum by \((?P<by>[a-z_, ]*)\)"
FORMS = {
    "rate": re.compile(rf"^{RATE}$"),
    "sum_rate": re.compile(rf"^{BY} \({RATE}\)$"),
    "sum": re.compile(rf"^{BY} \((?P<metric>{NAME})\)$"),
    "quantile": re.compile(rf"^histogram_quantile\((?P<q>[0-9.]+), {BY} \({RATE}\)\)$"),
}


def parse(expr: str) -> tuple[str, re.Match[str]]:
    for form, pattern in FORMS.items():
        match = pattern.match(expr)
        if match:
            return form, match
    raise ValueError(f"not a form this renderer draws: {expr!r}")


def metric_of(expr: str) -> str:
    return parse(expr)[1]["metric"]


def _instant(samples: Samples, metric: str) -> dict[Labels, float]:
    return {labels: value for (name, labels), value in samples.items() if name == metric}


def _rates(scrapes: Sequence[Scrape], i: int, metric: str, window: float
           ) -> dict[Labels, float] | None:
    now, current = scrapes[i]
    older = [j for j in range(i) if scrapes[j][0] <= now - window]
    if not older:
        return None
    then, past = scrapes[older[-1]]
    before = _instant(past, metric)
    return {labels: (value - before.get(labels, 0.0)) / (now - then)
            for labels, value in _instant(current, metric).items()}


def _group(values: dict[Labels, float], by: Sequence[str]) -> dict[tuple[tuple[str, str], ...],
                                                                  float]:
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for labels, value in values.items():
        found = dict(labels)
        key = tuple((name, found.get(name, "")) for name in by)
        out[key] = out.get(key, 0.0) + value
    return out


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over (upper bound, cumulative count) pairs."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return math.nan
    total = ordered[-1][1]
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return ordered[-1][0]


def evaluate(expr: str, scrapes: Sequence[Scrape], window: float) -> Series:
    """One line per label set: (time, value) at every scrape where it has a value."""
    form, match = parse(expr)
    metric = match["metric"]
    by = [name.strip() for name in (match.groupdict().get("by") or "").split(",") if name.strip()]
    series: Series = {}
    for i, (when, samples) in enumerate(scrapes):
        if form == "sum":
            grouped = _group(_instant(samples, metric), by)
        else:
            rates = _rates(scrapes, i, metric, window)
            if rates is None:
                continue
            if form == "rate":
                grouped = {(): sum(rates.values())} if rates else {}
            elif form == "sum_rate":
                grouped = _group(rates, by)
            else:
                keep = [name for name in by if name != "le"]
                per: dict[tuple[tuple[str, str], ...], list[tuple[float, float]]] = {}
                for key, value in _group(rates, ["le", *keep]).items():
                    per.setdefault(key[1:], []).append((float(key[0][1]), value))
                grouped = {key: quantile(float(match["q"]), pairs) for key, pairs in per.items()}
        for key, value in grouped.items():
            series.setdefault(key, []).append((when, value))
    return series


def legend(template: str, key: tuple[tuple[str, str], ...]) -> str:
    values = dict(key)
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values.get(m.group(1), ""), template)
