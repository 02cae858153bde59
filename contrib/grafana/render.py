"""Draw the panels of contrib/grafana/popbox.json from a real scrape of a real popbox.

This is popbox's own rendering of the dashboard's panels with matplotlib, not a Grafana
screenshot (no Grafana here). It starts `popbox serve` (two workers, metrics, POP3S with
a throwaway certificate) on 127.0.0.1, drives a bounded load for `--seconds` (logins that
succeed and fail, RETR, DELE, POP3S sessions and failed handshakes, a message removed
mid-session, a second login of a user whose maildrop is in use), scrapes /metrics every
`--interval` seconds, evaluates every panel's expressions over the scrapes
(contrib/grafana/promql.py, with $__rate_interval = `--window`) and draws each panel where
the dashboard's grid puts it.

    pip install '.[dashboard,test]'     # matplotlib; trustme for the certificate
    python contrib/grafana/render.py --seconds 45 --out docs/grafana.png
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent))
import promql

HERE = Path(__file__).resolve().parent
USERS = [f"user{i}" for i in range(1, 7)]


def message(n: int) -> bytes:
    body = "".join(f"line {i} of message {n}, some text to fill it\n" for i in range(40 * n % 400))
    return f"From: load@example.org\nSubject: message {n}\n\n{body}".encode()


class Site:
    def __init__(self, root: Path) -> None:
        import trustme

        self.root = root
        self.counter = 0
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        cert.private_key_pem.write_to_path(str(root / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
        self.client_tls = ssl.create_default_context()
        ca.configure_trust(self.client_tls)
        (root / "users").write_text("".join(f"{u}:{{PLAIN}}pw-{u}::::::\n" for u in USERS))
        for user in USERS:
            for sub in ("cur", "new", "tmp"):
                (self.maildir(user) / sub).mkdir(parents=True)
            for _ in range(8):
                self.deliver(user)
        (root / "popbox.toml").write_text(f"""
[server]
listen = ["127.0.0.1:0"]
workers = 2
allow_root = true
[tls]
cert = "{root}/cert.pem"
key = "{root}/key.pem"
implicit = ["127.0.0.1:0"]
[auth]
passwd_file = "{root}/users"
mail_location = "{root}/mail/{{user}}/Maildir"
[limits]
penalty_exempt = []
penalty_initial = 0.5
penalty_cap = 2.0
[metrics]
listen = "127.0.0.1:0"
[log]
level = "warning"
""")

    def maildir(self, user: str) -> Path:
        return self.root / "mail" / user / "Maildir"

    def deliver(self, user: str) -> None:
        self.counter += 1
        name = f"{1700000000 + self.counter}.M{self.counter}P1.render"
        (self.maildir(user) / "new" / name).write_bytes(message(self.counter))


class Server:
    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "popbox", "serve", "--config",
                                      str(config)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        assert self.proc.stdout is not None
        self.port = self.tls_port = self.metrics_port = 0
        while not (self.port and self.tls_port and self.metrics_port):
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("popbox did not start")
            if found := re.search(r"listening on [\d.]+:(\d+)( \(TLS\))?", line):
                if found.group(2):
                    self.tls_port = int(found.group(1))
                else:
                    self.port = int(found.group(1))
            elif found := re.search(r"metrics on port (\d+)", line):
                self.metrics_port = int(found.group(1))

    def scrape(self) -> promql.Samples:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class Pop:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, port: int, tls: ssl.SSLContext | None = None) -> Pop:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls,
                                                       limit=2**24)
        pop = cls(reader, writer)
        await pop.line()
        return pop

    async def line(self) -> bytes:
        return await asyncio.wait_for(self.reader.readline(), 30)

    async def cmd(self, text: str) -> bytes:
        self.writer.write(text.encode() + b"\r\n")
        return await self.line()

    async def body(self) -> None:
        while await self.line() not in (b".\r\n", b""):
            pass

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class Load:
    """The clients: `busy` of them retrieve mail in a loop; the others come now and then."""

    def __init__(self, site: Site, server: Server, seconds: float) -> None:
        self.site, self.server = site, server
        self.start = time.monotonic()
        self.seconds = seconds
        self.rng = random.Random(1939)

    def running(self) -> bool:
        return time.monotonic() - self.start < self.seconds

    def busy(self) -> int:
        """How many retrieving clients now: a ramp up, a peak, a quieter end."""
        part = (time.monotonic() - self.start) / self.seconds
        return 2 if part < 0.3 else 6 if part < 0.7 else 3

    async def session(self, user: str, *, dele: bool) -> None:
        tls = self.site.client_tls if self.rng.random() < 0.3 else None
        pop = await Pop.connect(self.server.tls_port if tls else self.server.port, tls)
        try:
            await pop.cmd(f"USER {user}")
            if not (await pop.cmd(f"PASS pw-{user}")).startswith(b"+OK"):
                return  # [IN-USE]: another client has this maildrop now
            count = int((await pop.cmd("STAT")).split()[1])
            for n in range(1, min(count, self.rng.randint(1, 4)) + 1):
                if (await pop.cmd(f"RETR {n}")).startswith(b"+OK"):
                    await pop.body()
            if dele and count:
                await pop.cmd("DELE 1")
            await pop.cmd("QUIT")
        finally:
            await pop.close()
        if dele:
            self.site.deliver(user)

    async def retriever(self, index: int) -> None:
        while self.running():
            if index >= self.busy():
                await asyncio.sleep(0.5)
                continue
            await self.session(self.rng.choice(USERS), dele=self.rng.random() < 0.3)
            await asyncio.sleep(self.rng.uniform(0.05, 0.4))

    async def wrong_passwords(self) -> None:
        while self.running():
            pop = await Pop.connect(self.server.port)
            await pop.cmd("USER user1")
            await pop.cmd("PASS guess")  # answered after the penalty
            await pop.close()
            await asyncio.sleep(self.rng.uniform(1, 3))

    async def failed_handshakes(self) -> None:
        while self.running():
            reader, writer = await asyncio.open_connection("127.0.0.1", self.server.tls_port)
            writer.write(b"USER user1\r\n")
            await reader.read()
            writer.close()
            await asyncio.sleep(self.rng.uniform(2, 5))

    async def vanishing_message(self) -> None:
        """Log in, let another agent remove message 1, then RETR it: a store error."""
        while self.running():
            await asyncio.sleep(self.rng.uniform(3, 6))
            user = "user6"
            pop = await Pop.connect(self.server.port)
            try:
                await pop.cmd(f"USER {user}")
                if not (await pop.cmd(f"PASS pw-{user}")).startswith(b"+OK"):
                    continue
                uidl = (await pop.cmd("UIDL 1")).split()
                if len(uidl) == 3:
                    for folder in ("new", "cur"):
                        for path in (self.site.maildir(user) / folder).glob(
                                uidl[2].decode() + "*"):
                            path.unlink()
                    await pop.cmd("RETR 1")
                    self.site.deliver(user)
                await pop.cmd("QUIT")
            finally:
                await pop.close()

    async def run(self) -> None:
        await asyncio.gather(*(self.retriever(i) for i in range(6)), self.wrong_passwords(),
                             self.failed_handshakes(), self.vanishing_message())


async def drive(server: Server, site: Site, seconds: float, interval: float
                ) -> list[promql.Scrape]:
    scrapes: list[promql.Scrape] = []
    load = asyncio.create_task(Load(site, server, seconds).run())
    start = time.monotonic()
    while not load.done():
        scrapes.append((time.monotonic() - start, await asyncio.to_thread(server.scrape)))
        await asyncio.sleep(interval)
    await load
    scrapes.append((time.monotonic() - start, await asyncio.to_thread(server.scrape)))
    return scrapes


def fmt(unit: str):  # type: ignore[no-untyped-def]
    def format_value(value: float, _pos: object = None) -> str:
        if unit == "Bps":
            for size, name in ((2**20, "MiB/s"), (2**10, "KiB/s")):
                if abs(value) >= size:
                    return f"{value / size:.1f} {name}"
            return f"{value:.0f} B/s"
        if unit == "s":
            return f"{value * 1000:.1f} ms" if abs(value) < 1 else f"{value:.1f} s"
        if unit in ("ops", "cps"):
            return f"{value:.2g}/s"
        return f"{value:g}"
    return format_value


def draw(dashboard: dict[str, object], scrapes: list[promql.Scrape], window: float,
         out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    panels = dashboard["panels"]
    assert isinstance(panels, list)
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    fig = plt.figure(figsize=(20, rows * 0.42), facecolor="#111217")
    grid = fig.add_gridspec(rows, 24, hspace=7, wspace=1.2, left=0.04, right=0.99,
                            top=0.93, bottom=0.02)
    fig.suptitle("popbox dashboard (contrib/grafana/popbox.json): popbox's own rendering of "
                 "its panels from a real scrape, not a Grafana screenshot\n"
                 f"(x: seconds since the load started; {len(scrapes)} scrapes, "
                 f"$__rate_interval = {window:g} s)", color="#d8d9da", fontsize=12)
    for panel in panels:
        pos = panel["gridPos"]
        ax = fig.add_subplot(grid[pos["y"]:pos["y"] + pos["h"], pos["x"]:pos["x"] + pos["w"]])
        ax.set_facecolor("#181b1f")
        ax.set_title(panel["title"], color="#d8d9da", fontsize=10, loc="left")
        ax.tick_params(colors="#8e8e8e", labelsize=7)
        for side in ax.spines.values():
            side.set_color("#2c3235")
        ax.grid(color="#2c3235", linewidth=0.5)
        unit = panel["fieldConfig"]["defaults"]["unit"]
        ax.yaxis.set_major_formatter(FuncFormatter(fmt(unit)))
        for target in panel["targets"]:
            for key, points in sorted(promql.evaluate(target["expr"], scrapes, window).items()):
                xs = [t for t, v in points]
                ys = [v for t, v in points]
                ax.plot(xs, ys, linewidth=1.2,
                        label=promql.legend(target["legendFormat"], key) or target["refId"])
        if ax.lines:
            ax.legend(fontsize=6, loc="upper left", facecolor="#181b1f", edgecolor="#2c3235",
                      labelcolor="#d8d9da", ncol=2)
        ax.set_xlim(0, scrapes[-1][0])
        ax.set_ylim(bottom=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80, facecolor=fig.get_facecolor())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=45)
    parser.add_argument("--interval", type=float, default=2.0, help="scrape interval")
    parser.add_argument("--window", type=float, default=8.0, help="$__rate_interval")
    parser.add_argument("--dashboard", type=Path, default=HERE / "popbox.json")
    parser.add_argument("--out", type=Path, default=HERE.parent.parent / "docs" / "grafana.png")
    args = parser.parse_args()
    dashboard = json.loads(args.dashboard.read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            promql.parse(target["expr"])  # before the load: a form it cannot draw stops here
    with tempfile.TemporaryDirectory(prefix="popbox-render-") as folder:
        site = Site(Path(folder))
        server = Server(Path(folder) / "popbox.toml")
        try:
            scrapes = asyncio.run(drive(server, site, args.seconds, args.interval))
        finally:
            server.stop()
    draw(dashboard, scrapes, args.window, args.out)
    print(f"{len(scrapes)} scrapes over {scrapes[-1][0]:.0f} s: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
