"""The benchmark's mail: a deterministic corpus written the way Postfix writes it.

Everything comes from one seeded `random.Random`, so two runs with the same scale and
seed write byte-identical messages under identical names (only the {SHA512-CRYPT}
salts differ: they come from popbox's own hashing code, as a real users file would).

Layout under `root`::

    users                      the passwd-file both servers read (Dovecot's format)
    pristine/<user>/Maildir/   the mail; each server gets its own hard-linked copy
    expected.json              user -> [messages, octets]: STAT as both servers must say it

Messages are stored with LF line ends in ``new/`` under Postfix-style names
(``<sec>.V<dev>I<inode>M<usec>.<host>``, no ``,S=``/``,W=`` size hints), so both
servers have to read a file once to learn its size. Some body lines start with "." (a
lone ".", "..", ".signature"): they are byte-stuffed on the wire.

Users (all with password ``pw``):

* ``plainNNN`` / ``cryptNNN``: the login benchmark, {PLAIN} and {SHA512-CRYPT} (5000
  rounds, Dovecot's default) - a handful of messages of the realistic size mix;
* ``r10kNN`` / ``r1mNN``: RETR throughput, messages of about 10 KB / 1 MB;
* ``idleNNNNN``: idle sessions, one small message each;
* ``big``: the large maildrop (100,000 messages in full mode) for STAT/UIDL latency;
* ``huge``: one message of 100 MB for memory growth during RETR.
"""

from __future__ import annotations

import bisect
import json
import os
import random
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from popbox.auth import schemes

PASSWORD = "pw"  # noqa: S105 - every benchmark user has it
KIB = 1024
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Scale:
    """How much mail to write. The three presets are in bench.run."""

    login_users: int  # per password scheme
    login_msgs: int
    retr_users: int  # per message size
    r10k_msgs: int
    r1m_msgs: int
    idle_users: int
    big_msgs: int
    huge_bytes: int
    mixed_users: int = 0  # for the mixed sessions (bench.load's "mixed" job)
    mixed_msgs: int = 0
    quit_msgs: int = 0  # the one "quit" maildrop: ~10 KB messages (the QUIT figures)


@dataclass(frozen=True, slots=True)
class Corpus:
    root: Path
    scale: Scale
    expected: dict[str, tuple[int, int]]  # user -> (messages, octets as sent)

    @property
    def users_file(self) -> Path:
        return self.root / "users"

    @property
    def pristine(self) -> Path:
        return self.root / "pristine"

    def users(self, prefix: str, count: int | None = None) -> list[str]:
        names = sorted(u for u in self.expected if u.startswith(prefix))
        return names if count is None else names[:count]


# --- text ---------------------------------------------------------------------------------


class _Text:
    """A few MB of deterministic text lines; messages are line-aligned slices of it."""

    def __init__(self, rng: random.Random, size: int = 4 * MIB) -> None:
        syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "qu", "ph",
                     "an", "el", "or", "us", "ix", "ber", "tal", "gon", "wex", "ly", "st"]
        words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4)))
                 for _ in range(3000)]
        dotted = [b".", b"..", b".signature follows", b"...and so on", b". indented"]
        lines: list[bytes] = []
        total = 0
        while total < size:
            if rng.random() < 0.02:
                line = rng.choice(dotted)
            elif rng.random() < 0.06:
                line = b""
            else:
                n = rng.randint(3, 13)
                line = " ".join(rng.choice(words) for _ in range(n)).encode()[:76]
            lines.append(line + b"\n")
            total += len(line) + 1
        self.data = b"".join(lines) * 2  # doubled, so any slice up to `size` fits
        self.half = len(self.data) // 2
        self.starts: list[int] = []
        pos = 0
        for line in lines * 2:
            self.starts.append(pos)
            pos += len(line)

    def body(self, rng: random.Random, size: int) -> bytes:
        """About `size` bytes of whole lines (slices repeat for sizes beyond the buffer)."""
        out: list[bytes] = []
        while size > 0:
            i = rng.randrange(len(self.starts) // 2)
            start = self.starts[i]
            want = min(size, self.half)
            j = bisect.bisect_left(self.starts, start + want)
            end = self.starts[j] if j < len(self.starts) else len(self.data)
            out.append(self.data[start:end])
            size -= end - start
        return b"".join(out)


class _Writer:
    def __init__(self, root: Path, rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.text = _Text(rng)
        self.clock = 1_700_000_000
        self.serial = 0

    def maildir(self, user: str) -> Path:
        md = self.root / user / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (md / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        return md

    def message(self, user: str, body_size: int) -> bytes:
        rng = self.rng
        self.serial += 1
        subject = b" ".join(self.text.body(rng, 40).split()[:6]).decode()
        headers = (
            f"Return-Path: <sender{rng.randrange(1000)}@example.net>\n"
            f"Received: from mx{rng.randrange(9)}.example.net"
            f" (mx.example.net [192.0.2.{rng.randrange(1, 255)}])\n"
            f"\tby mail.example.org (Postfix) with ESMTPS id {rng.getrandbits(40):X}\n"
            f"\tfor <{user}@example.org>; Tue, 14 Nov 2023 22:13:20 +0000 (UTC)\n"
            f"From: Sender {rng.randrange(1000)} <sender@example.net>\n"
            f"To: {user}@example.org\n"
            f"Subject: {subject}\n"
            f"Date: Tue, 14 Nov 2023 22:13:20 +0000\n"
            f"Message-ID: <{self.serial}.{rng.getrandbits(48):x}@example.net>\n"
            "MIME-Version: 1.0\n"
            "Content-Type: text/plain; charset=utf-8\n"
            "\n"
        ).encode()
        return headers + self.text.body(rng, max(body_size - len(headers), 1))

    def write(self, md: Path, data: bytes) -> int:
        """Deliver like Postfix's local(8): LF line ends into new/. Returns the wire size."""
        self.clock += 1
        rng = self.rng
        name = (f"{self.clock}.Vfd01I{rng.getrandbits(32):x}M{rng.randrange(1_000_000)}"
                ".mail.example.org")
        fd = os.open(md / "new" / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        return len(data) + data.count(b"\n")  # LF -> CRLF; every message ends with LF


def mixed_size(rng: random.Random) -> int:
    """Mostly 2-20 KB (log-uniform), a 3% tail of 100 KB - 2 MB."""
    if rng.random() < 0.97:
        return int(2 * KIB * 10 ** rng.random())
    return int(100 * KIB * 20 ** rng.random())


def generate(root: Path, scale: Scale, seed: int = 1939) -> Corpus:
    """Write the corpus under `root` (which must not exist yet)."""
    rng = random.Random(seed)
    root.mkdir(parents=True)
    writer = _Writer(root / "pristine", rng)
    expected: dict[str, tuple[int, int]] = {}
    lines: list[str] = []
    crypt_cost = schemes.Cost(crypt_rounds=5000)  # Dovecot's (and glibc's) default

    def fill(user: str, sizes: list[int], password: str) -> None:
        md = writer.maildir(user)
        octets = sum(writer.write(md, writer.message(user, s)) for s in sizes)
        expected[user] = (len(sizes), octets)
        lines.append(f"{user}:{password}::::::")

    for scheme, prefix in (("PLAIN", "plain"), ("SHA512-CRYPT", "crypt")):
        for i in range(scale.login_users):
            stored = (f"{{PLAIN}}{PASSWORD}" if scheme == "PLAIN"
                      else schemes.make(PASSWORD.encode(), scheme, cost=crypt_cost))
            fill(f"{prefix}{i:03d}", [mixed_size(rng) for _ in range(scale.login_msgs)], stored)
    plain = f"{{PLAIN}}{PASSWORD}"
    for i in range(scale.retr_users):
        fill(f"r10k{i:02d}", [rng.randint(9 * KIB, 11 * KIB) for _ in range(scale.r10k_msgs)],
             plain)
        fill(f"r1m{i:02d}", [rng.randint(900 * KIB, 1100 * KIB) for _ in range(scale.r1m_msgs)],
             plain)
    for i in range(scale.idle_users):
        fill(f"idle{i:05d}", [int(2 * KIB * 10 ** rng.random())], plain)
    fill("big", [int(2 * KIB * 10 ** rng.random()) for _ in range(scale.big_msgs)], plain)
    fill("huge", [scale.huge_bytes], plain)
    # after every earlier user, so that adding these changes none of the mail above
    for i in range(scale.mixed_users):
        fill(f"mix{i:03d}", [mixed_size(rng) for _ in range(scale.mixed_msgs)], plain)
    if scale.quit_msgs:
        fill("quit", [rng.randint(9 * KIB, 11 * KIB) for _ in range(scale.quit_msgs)], plain)

    (root / "users").write_text("\n".join(lines) + "\n")
    (root / "expected.json").write_text(json.dumps(
        {"scale": asdict(scale), "seed": seed, "expected": expected}, indent=0))
    return Corpus(root, scale, expected)


def clone(src: Path, dst: Path, owner: int | None = None, skip: tuple[str, ...] = ()) -> None:
    """A copy of a mail tree made of hard links (message files are never written in place:
    servers only rename and unlink them). Directories are new, owned by `owner`; top-level
    entries named in `skip` are left out."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        target = dst if rel == "." else dst / rel
        target.mkdir(mode=0o700, exist_ok=True, parents=True)
        if owner is not None:
            os.chown(target, owner, owner)
        for name in filenames:
            os.link(os.path.join(dirpath, name), target / name)
        if rel == ".":
            dirnames[:] = [d for d in dirnames if d not in skip]
        dirnames.sort()


def remove_tree(path: Path) -> None:
    """rm -rf: about three times faster than shutil.rmtree on a few 100,000 files."""
    if path.exists():
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], check=False,
                       timeout=600)
        shutil.rmtree(path, ignore_errors=True)  # in case rm was not there


def reset_maildir(corpus: Corpus, tree: Path, user: str, owner: int | None = None) -> None:
    """Put `user`'s maildir in `tree` back to its pristine state: no caches, no index, every
    message in new/ as delivered - the state before the first login ever."""
    target = tree / user
    remove_tree(target)
    clone(corpus.pristine / user, target, owner)
