"""`popbox probe`'s judgement: what a POP3 server's replies say about how well it follows
RFC 1939, RFC 2449, RFC 2595 and RFC 8314. No sockets here: `popbox.client.prober`
collects the replies (an `Observations`) and `evaluate` turns them into `Check`s.

Each check is a pass, a deviation (the server breaks a rule; `evidence` holds the exact
lines, `workaround` what `popbox fetch` does about it), a warning (allowed, but weak
policy), information, or skipped (nothing to judge it by). The checks:

- the greeting is +OK (RFC 1939 §4); an APOP timestamp is noted (§7);
- TLS (RFC 8314 §4.1): version 1.2 or later, the certificate verifies;
- CAPA (RFC 2449 §5) before and after login, and after STLS; STLS offered on a clear
  connection and not after it (RFC 2595 §4); USER or SASL PLAIN/LOGIN offered in clear
  (RFC 8314 §3: a warning); RESP-CODES (§6.4); EXPIRE and LOGIN-DELAY syntax (§6.7, §6.8);
- STAT against LIST: the count and the sum of the sizes (RFC 1939 §5);
- each sampled message: every line ends CRLF, lines starting "." are stuffed (§3), the LIST
  size is the octets RETR sent once un-stuffed (§11: sizes count CRLF line ends), TOP n 0
  and TOP n k give the headers, the blank line and k body lines, TOP n 99999999 the
  whole message, as fetchmail reads it (§7), the `LIST n` and
  `UIDL n` forms are "+OK n size" and "+OK n uid" (§5, §7);
- UIDL (§7): 1 to 70 characters 0x21-0x7E, unique, the same in another session;
- message 0 and a number past the last one get -ERR (§5);
- a second login while the first session holds the maildrop: -ERR [IN-USE] (RFC 2449
  §8.1.1), or a server that allows it (information).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


class Verdict(enum.StrEnum):
    PASS = "pass"  # noqa: S105 - a verdict, not a password
    DEVIATION = "deviation"
    WARNING = "warning"
    INFO = "info"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    verdict: Verdict
    summary: str
    evidence: tuple[str, ...] = ()
    workaround: str | None = None


@dataclass(frozen=True, slots=True)
class Certificate:
    subject: str
    issuer: str
    not_after: str


@dataclass(frozen=True, slots=True)
class TlsInfo:
    how: str  # "implicit" or "starttls"
    version: str
    cipher: str
    bits: int
    fingerprint: str  # sha256:AB:CD:... of the server's certificate (DER)
    chain: tuple[Certificate, ...]
    verify_error: str | None  # None: the certificate verified


@dataclass(slots=True)
class Reply:
    """A status line (without its line end) and, for a multi-line reply, its lines as
    they came (line ends kept, not un-stuffed, the terminator left out)."""

    status: str
    lines: list[bytes] | None = None
    bare_end: bool = False  # the terminator was "." and a bare LF

    @property
    def ok(self) -> bool:
        return self.status.startswith("+OK")


@dataclass(slots=True)
class Sample:
    """What the probe read about one message."""

    msg: int
    size: int  # from LIST
    retr: Reply
    top0: Reply | None = None
    topk: Reply | None = None
    top_all: Reply | None = None  # TOP n 99999999, fetchmail's way to read without marking
    list_n: str = ""
    uidl_n: str = ""


@dataclass(slots=True)
class Observations:
    host: str
    port: int
    greeting: str = ""
    tls: TlsInfo | None = None
    capa_clear: Reply | None = None  # CAPA on the unencrypted connection
    capa_auth: Reply | None = None  # CAPA before login (after STLS, or on implicit TLS)
    stls: str | None = None  # the reply to STLS
    login: str | None = None  # how the login went ("PLAIN", "-ERR ...")
    logged_in: bool = False
    login_skipped: str | None = None
    capa_trans: Reply | None = None
    stat: str = ""
    list_all: Reply | None = None
    uidl_all: Reply | None = None
    samples: list[Sample] = field(default_factory=list)
    edges: dict[str, str] = field(default_factory=dict)  # "LIST 0": its status line
    concurrent: str | None = None  # the reply to a login while the first session is in
    uidl_again: Reply | None = None  # UIDL in another session
    problems: list[str] = field(default_factory=list)  # what stopped the probe early
    top_lines: int = 2


# --- helpers ---

TOP_ALL = 99999999  # the line count fetchmail sends to read a whole message with TOP
_UIDL_CHARS = re.compile(rb"[\x21-\x7e]{1,70}")


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace").rstrip("\r\n")


def _shown(line: bytes) -> str:
    """A line for the report: what it says, with its line end written out."""
    body = line.rstrip(b"\r\n").decode("utf-8", "backslashreplace")
    return body + ("\\r\\n" if line.endswith(b"\r\n") else "\\n" if line.endswith(b"\n")
                   else "")


def capabilities(reply: Reply | None) -> dict[str, list[str]]:
    if reply is None or not reply.ok or reply.lines is None:
        return {}
    caps: dict[str, list[str]] = {}
    for line in reply.lines:
        name, *args = _text(line).split() or [""]
        if name:
            caps[name.upper()] = args
    return caps


def _crlf(lines: Iterable[bytes]) -> bytes:
    return b"".join(line.rstrip(b"\r\n") + b"\r\n" for line in lines)


def listing(reply: Reply | None) -> list[tuple[str, list[str]]]:
    """The lines of a LIST or UIDL listing: (raw text, its words)."""
    if reply is None or reply.lines is None:
        return []
    return [(_shown(line), _text(line).split()) for line in reply.lines]


def sizes(reply: Reply | None) -> dict[int, int]:
    out: dict[int, int] = {}
    for _, words in listing(reply):
        if len(words) >= 2 and words[0].isdigit() and words[1].isdigit():
            out[int(words[0])] = int(words[1])
    return out


def uidls(reply: Reply | None) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for line in (reply.lines or []) if reply is not None else []:
        words = line.rstrip(b"\r\n").split(b" ")
        if len(words) >= 2 and words[0].isdigit():
            out[int(words[0])] = b" ".join(words[1:])
    return out


def fingerprint(der: bytes) -> str:
    """`sha256:AB:CD:...` of a DER certificate: the form `tls_fingerprint` takes."""
    import hashlib

    digest = hashlib.sha256(der).hexdigest().upper()
    return "sha256:" + ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def _check(name: str, problems: Sequence[str], ok: str, *, evidence: Iterable[str] = (),
           workaround: str | None = None) -> Check:
    if problems:
        return Check(name, Verdict.DEVIATION, "; ".join(problems), tuple(evidence), workaround)
    return Check(name, Verdict.PASS, ok, tuple(evidence))


# --- the checks ---

def evaluate(obs: Observations) -> list[Check]:
    problems = [Check("probe", Verdict.DEVIATION, p) for p in obs.problems]
    if not obs.greeting:
        return problems
    checks = [_greeting(obs)]
    checks += _tls(obs)
    checks += _capa(obs)
    if obs.login is not None or obs.login_skipped is not None:
        checks.append(_login(obs))
    if obs.logged_in:
        checks += _transaction(obs)
    return checks + problems


def _greeting(obs: Observations) -> Check:
    line = obs.greeting
    if not line.startswith("+OK"):
        return Check("greeting", Verdict.DEVIATION, "the greeting is not +OK (RFC 1939 §4)",
                     (line,))
    stamp = re.search(r"<[^<>\s]*@[^<>\s]*>", line)
    note = "; an APOP timestamp" if stamp else "; no APOP timestamp"
    return Check("greeting", Verdict.PASS, "+OK" + note, (line,))


def _tls(obs: Observations) -> list[Check]:
    tls = obs.tls
    if tls is None:
        return [Check("tls", Verdict.WARNING, "the session is not encrypted (RFC 8314 §4.1)",
                      workaround="popbox fetch sends no password in clear to a remote host "
                                 "unless --allow-plaintext")]
    chain = tuple(f"{i}: subject {c.subject}; issuer {c.issuer}; until {c.not_after}"
                  for i, c in enumerate(tls.chain))
    what = f"{tls.version}, {tls.cipher} ({tls.bits} bits), {tls.how}"
    checks = [Check("tls", Verdict.PASS if tls.version in ("TLSv1.2", "TLSv1.3")
                    else Verdict.DEVIATION,
                    what if tls.version in ("TLSv1.2", "TLSv1.3")
                    else f"{what}: older than TLS 1.2 (RFC 8314 §4.1)", chain)]
    if tls.verify_error is None:
        checks.append(Check("certificate", Verdict.PASS, f"verifies; {tls.fingerprint}"))
    else:
        checks.append(Check("certificate", Verdict.DEVIATION,
                            f"does not verify: {tls.verify_error}; {tls.fingerprint}",
                            workaround="popbox fetch refuses it; trust its CA with --cafile"))
    return checks


def _capa(obs: Observations) -> list[Check]:
    checks: list[Check] = []
    first = obs.capa_clear if obs.capa_clear is not None else obs.capa_auth
    if first is None:
        return checks
    if not first.ok:
        checks.append(Check("capa", Verdict.DEVIATION, "no CAPA (RFC 2449 §5)", (first.status,),
                            "popbox fetch assumes USER/PASS, no PIPELINING, no STLS"))
        return checks
    caps = capabilities(first)
    checks.append(Check("capa", Verdict.PASS, "CAPA before login: " + " ".join(sorted(caps)),
                        tuple(_shown(line) for line in first.lines or [])))
    sasl = capabilities(obs.capa_auth).get("SASL") or caps.get("SASL", [])
    checks.append(Check("sasl", Verdict.INFO,
                        "SASL mechanisms: " + (" ".join(sasl) if sasl else "none")))
    if obs.capa_clear is not None:
        checks += _clear(obs, caps)
    return checks + _policy(obs, capabilities(obs.capa_auth) or caps)


def _clear(obs: Observations, caps: dict[str, list[str]]) -> list[Check]:
    checks = []
    if "STLS" not in caps:
        checks.append(Check("stls", Verdict.WARNING,
                            "STLS not offered on the unencrypted port (RFC 2595 §4)",
                            workaround="popbox fetch --tls starttls refuses to go on"))
    elif obs.stls is not None:
        after = capabilities(obs.capa_auth)
        problems = []
        if not obs.stls.startswith("+OK"):
            problems.append("STLS was refused")
        elif obs.capa_auth is not None and "STLS" in after:
            problems.append("STLS still offered after TLS started (RFC 2595 §4)")
        checks.append(_check("stls", problems, "STLS offered, and not after TLS started",
                             evidence=[obs.stls]))
    sasl = {m.upper() for m in caps.get("SASL", [])}
    cleartext = sorted(({"USER"} & caps.keys()) | (sasl & {"PLAIN", "LOGIN"}))
    if cleartext:
        checks.append(Check("cleartext", Verdict.WARNING,
                            f"offers {', '.join(cleartext)} before TLS: a password may cross "
                            "the network in clear (RFC 8314 §3)",
                            workaround="popbox fetch logs in so only over TLS or to loopback "
                                       "(or with --allow-plaintext)"))
    else:
        checks.append(Check("cleartext", Verdict.PASS, "no cleartext login before TLS"))
    return checks


def _policy(obs: Observations, caps: dict[str, list[str]]) -> list[Check]:
    checks = []
    if "RESP-CODES" in caps:
        checks.append(Check("resp-codes", Verdict.PASS, "RESP-CODES announced (RFC 2449 §6.4)"))
    else:
        checks.append(Check("resp-codes", Verdict.DEVIATION,
                            "RESP-CODES not announced (RFC 2449 §6.4): -ERR replies cannot be "
                            "told apart", workaround="popbox fetch treats a login -ERR without "
                                                     "a code as a refused password"))
    for name in ("IMPLEMENTATION", "LOGIN-DELAY", "EXPIRE"):
        if name in caps:
            checks.append(Check(name.lower(), Verdict.INFO, f"{name} {' '.join(caps[name])}"))
    days = capabilities(obs.capa_trans).get("EXPIRE", [""])[0]
    if days.isdigit():
        checks.append(Check("expire-after-login", Verdict.INFO,
                            f"the server removes retrieved mail after {days} day(s)",
                            (f"EXPIRE {days}",),
                            f"popbox fetch's keep_days is cut to {days}; keep cannot hold "
                            "mail longer"))
    checks += _expire(obs, caps)
    return checks


def _expire(obs: Observations, before: dict[str, list[str]]) -> list[Check]:
    problems: list[str] = []
    evidence: list[str] = []
    for state, caps, user_ok in (("before login", before, True),
                                 ("after login", capabilities(obs.capa_trans), False)):
        for name in ("EXPIRE", "LOGIN-DELAY"):
            if name not in caps:
                continue
            args = caps[name]
            good = bool(args) and (args[0].isdigit() or (name == "EXPIRE" and args[0] == "NEVER"))
            if len(args) > 1:
                good = good and user_ok and args[1:] == ["USER"]
            if not good:
                problems.append(f"{name} {state} is malformed (RFC 2449 §6.7, §6.8)")
                evidence.append(f"{state}: " + " ".join([name, *args]))
    if not problems and not any(n in c for c in (before, capabilities(obs.capa_trans))
                                for n in ("EXPIRE", "LOGIN-DELAY")):
        return []
    return [_check("expire-syntax", problems, "EXPIRE and LOGIN-DELAY well formed",
                   evidence=evidence,
                   workaround="popbox fetch ignores an EXPIRE it cannot read")]


def _login(obs: Observations) -> Check:
    if obs.login_skipped is not None:
        return Check("login", Verdict.SKIPPED, obs.login_skipped)
    if obs.logged_in:
        return Check("login", Verdict.PASS, f"logged in with {obs.login}")
    return Check("login", Verdict.INFO, f"the login failed: {obs.login}")


def _transaction(obs: Observations) -> list[Check]:
    checks = []
    if obs.capa_trans is not None:
        checks.append(_check("capa-transaction",
                             [] if obs.capa_trans.ok else ["CAPA refused after login"],
                             "CAPA after login: " + " ".join(sorted(capabilities(obs.capa_trans))),
                             evidence=[obs.capa_trans.status]))
    checks.append(_stat(obs))
    checks.append(_uidl_syntax(obs))
    checks.append(_stability(obs))
    checks += _samples(obs)
    checks.append(_edges(obs))
    checks.append(_concurrent(obs))
    return checks


def _stat(obs: Observations) -> Check:
    words = obs.stat.split()
    problems, evidence = [], [obs.stat]
    listed = sizes(obs.list_all)
    if obs.list_all is None or not obs.list_all.ok:
        return Check("stat-list", Verdict.DEVIATION, "LIST failed",
                     (obs.stat, obs.list_all.status if obs.list_all else ""))
    bad = [text for text, w in listing(obs.list_all)
           if len(w) != 2 or not all(x.isdigit() for x in w)]
    if bad:
        problems.append("LIST lines are not \"n size\" (RFC 1939 §5)")
        evidence += bad[:3]
    if len(words) < 3 or words[0] != "+OK" or not (words[1].isdigit() and words[2].isdigit()):
        problems.append("STAT is not \"+OK count octets\" (RFC 1939 §5)")
    else:
        count, octets = int(words[1]), int(words[2])
        if count != len(listed):
            problems.append(f"STAT counts {count} messages, LIST lists {len(listed)}")
        if octets != sum(listed.values()):
            problems.append(f"STAT says {octets} octets, the LIST sizes add up to "
                            f"{sum(listed.values())}")
    return _check("stat-list", problems, f"STAT agrees with LIST ({len(listed)} messages)",
                  evidence=evidence, workaround="popbox fetch uses LIST and UIDL, never STAT")


def _uidl_syntax(obs: Observations) -> Check:
    reply = obs.uidl_all
    if reply is None or not reply.ok:
        return Check("uidl", Verdict.DEVIATION, "no UIDL (RFC 1939 §7 makes it optional)",
                     (reply.status,) if reply else (),
                     "popbox fetch fetches and deletes; keep and keep_days are refused")
    problems: list[str] = []
    evidence: list[str] = []
    malformed: list[str] = []
    seen: dict[bytes, int] = {}
    for line in reply.lines or []:
        words = line.rstrip(b"\r\n").split(b" ")
        if len(words) != 2 or not words[0].isdigit() or not _UIDL_CHARS.fullmatch(words[1]):
            malformed.append(_shown(line))
            continue
        if words[1] in seen:
            problems.append(f"messages {seen[words[1]]} and {int(words[0])} share a UIDL")
            evidence.append(_shown(line))
        seen.setdefault(words[1], int(words[0]))
    if malformed:
        problems.append(f"{len(malformed)} UIDL lines are not \"n uid\" with 1-70 characters "
                        "0x21-0x7E (RFC 1939 §7 syntax)")
        evidence += malformed
    return _check("uidl", problems, f"{len(seen)} UIDLs, well formed and unique",
                  evidence=evidence[:6],
                  workaround="popbox fetch leaves a message whose UIDL repeats an earlier one "
                             "on the server, and keys its state by the UIDL as sent")


def _stability(obs: Observations) -> Check:
    if obs.uidl_again is None or not obs.uidl_again.ok:
        return Check("uidl-stable", Verdict.SKIPPED, "no second session's UIDL to compare")
    first, again = uidls(obs.uidl_all), uidls(obs.uidl_again)
    changed = [f"message {n}: {_text(first[n])} then {_text(again[n])}"
               for n in sorted(first.keys() & again.keys()) if first[n] != again[n]]
    return _check("uidl-stable", ["UIDLs change between sessions (RFC 1939 §7)"] if changed
                  else [], f"the same {len(first.keys() & again.keys())} UIDLs in another session",
                  evidence=changed[:6],
                  workaround="none: popbox fetch would take a message with a new UIDL for new "
                             "mail and deliver it again")


def _unstuffed(reply: Reply) -> list[bytes]:
    return [line[1:] if line.startswith(b".") else line for line in reply.lines or []]


def _top_expected(lines: list[bytes], k: int) -> list[bytes]:
    """What TOP n k should send, from the message's lines: the headers, the blank line,
    and k lines of the body (RFC 1939 §7)."""
    for i, line in enumerate(lines):
        if line in (b"\r\n", b"\n"):
            return lines[: i + 1 + k]
    return lines


def _read(obs: Observations) -> list[Sample]:
    return [s for s in obs.samples if s.retr.ok]


def _samples(obs: Observations) -> list[Check]:
    if not obs.samples:
        reason = "the maildrop is empty" if not sizes(obs.list_all) else "no message small enough"
        return [Check(name, Verdict.SKIPPED, reason)
                for name in ("crlf", "dot-stuffing", "list-size", "top", "list-n", "uidl-n")]
    return [_line_ends(obs), _stuffing(obs), _sizes(obs), _top(obs), *_forms(obs)]


def _line_ends(obs: Observations) -> Check:
    problems, evidence = [], []
    for s in _read(obs):
        bare = [line for line in s.retr.lines or [] if not line.endswith(b"\r\n")]
        if bare:
            problems.append(f"message {s.msg} has lines not ending CRLF (RFC 1939 §3)")
            evidence.append(_shown(bare[0]))
        if s.retr.bare_end:
            problems.append(f"message {s.msg} ends with \".\" and a bare LF: popbox fetch "
                            "waits for \".\" CRLF and times out")
            evidence.append(".\\n")
    return _check("crlf", problems, f"{len(obs.samples)} messages: every line ends CRLF",
                  evidence=evidence,
                  workaround="popbox fetch takes lines ending in a bare LF as they come "
                             "(Maildir and mbox get LF line ends either way)")


def _stuffing(obs: Observations) -> Check:
    problems, evidence = [], []
    dotted = 0
    for s in _read(obs):
        for line in s.retr.lines or []:
            if line.startswith(b"."):
                dotted += 1
                if not line.startswith(b".."):
                    problems.append(f"message {s.msg} has a line starting \".\" not stuffed "
                                    "(RFC 1939 §3)")
                    evidence.append(_shown(line))
                    break
    if not dotted:
        return Check("dot-stuffing", Verdict.SKIPPED,
                     f"none of the {len(obs.samples)} messages read has a line starting \".\"")
    return _check("dot-stuffing", problems, f"{dotted} lines starting \".\" are stuffed",
                  evidence=evidence,
                  workaround="none: popbox fetch drops the first \".\" of such a line, and a "
                             "line of a single \".\" would end the message early")


def _sizes(obs: Observations) -> Check:
    problems, evidence = [], []
    for s in obs.samples:
        if not s.retr.ok:
            problems.append(f"RETR {s.msg} failed")
            evidence.append(s.retr.status)
            continue
        message = b"".join(_unstuffed(s.retr))
        if s.size != len(message):
            why = (" (it counts LF line ends)"
                   if s.size == len(message.replace(b"\r\n", b"\n")) else "")
            problems.append(f"message {s.msg}: LIST says {s.size} octets, RETR sent "
                            f"{len(message)}{why} (RFC 1939 §11)")
            evidence.append(f"LIST {s.msg}: {s.size}")
    return _check("list-size", problems,
                  f"{len(obs.samples)} messages: LIST sizes are the octets RETR sends",
                  evidence=evidence,
                  workaround="popbox fetch reads each message to its end; only max_size and "
                             "the progress display use LIST sizes")


def _top(obs: Observations) -> Check:
    problems, evidence = [], []
    for s in _read(obs):
        message = _crlf(_unstuffed(s.retr))
        for reply, k in ((s.top0, 0), (s.topk, obs.top_lines), (s.top_all, TOP_ALL)):
            if reply is None:
                continue
            if not reply.ok:
                problems.append(f"TOP {s.msg} {k} refused")
                evidence.append(reply.status)
                continue
            got = _crlf(_unstuffed(reply))
            want = _crlf(_top_expected(_unstuffed(s.retr), k))
            if got != want:
                whole = " (the whole message: k ignored)" if got == message != want else ""
                problems.append(f"TOP {s.msg} {k} sent {len(got)} octets, the headers and {k} "
                                f"lines are {len(want)}{whole} (RFC 1939 §7)")
                evidence.append(f"TOP {s.msg} {k}: {len(reply.lines or [])} lines")
    return _check("top", problems,
                  f"TOP n 0, TOP n {obs.top_lines} and TOP n {TOP_ALL} agree with RETR",
                  evidence=evidence,
                  workaround="popbox fetch uses TOP only for oversize = \"headers\"")


def _forms(obs: Observations) -> list[Check]:
    names = uidls(obs.uidl_all)
    list_problems, list_evidence, uidl_problems, uidl_evidence = [], [], [], []
    for s in obs.samples:
        if s.list_n.split()[:3] != ["+OK", str(s.msg), str(s.size)]:
            list_problems.append(f"LIST {s.msg} is not \"+OK {s.msg} size\" matching the "
                                 "listing (RFC 1939 §5)")
            list_evidence.append(s.list_n)
        words = s.uidl_n.split(" ")
        if s.msg in names and (words[:2] != ["+OK", str(s.msg)]
                               or " ".join(words[2:]).encode() != names[s.msg]):
            uidl_problems.append(f"UIDL {s.msg} is not \"+OK {s.msg} uid\" matching the "
                                 "listing (RFC 1939 §7)")
            uidl_evidence.append(s.uidl_n)
    return [_check("list-n", list_problems, "LIST n answers \"+OK n size\"",
                   evidence=list_evidence,
                   workaround="popbox fetch lists the whole maildrop instead"),
            _check("uidl-n", uidl_problems, "UIDL n answers \"+OK n uid\"",
                   evidence=uidl_evidence,
                   workaround="popbox fetch lists the whole maildrop instead")]


def _edges(obs: Observations) -> Check:
    problems = [f"{command} was accepted (RFC 1939 §5: -ERR)"
                for command, status in obs.edges.items() if status.startswith("+OK")]
    evidence = [f"{command}: {status}" for command, status in obs.edges.items()]
    if not obs.edges:
        return Check("bad-numbers", Verdict.SKIPPED, "not asked")
    return _check("bad-numbers", problems, "message 0 and past the last are refused",
                  evidence=evidence,
                  workaround="popbox fetch asks only for the numbers LIST and UIDL gave")


def _concurrent(obs: Observations) -> Check:
    reply = obs.concurrent
    if reply is None:
        return Check("in-use", Verdict.SKIPPED, "no second login tried")
    if reply.startswith("+OK"):
        return Check("in-use", Verdict.INFO,
                     "a second session may log in while the first holds the maildrop",
                     (reply,))
    if "[IN-USE]" in reply.upper():
        return Check("in-use", Verdict.PASS, "a second login gets -ERR [IN-USE]", (reply,))
    return Check("in-use", Verdict.DEVIATION,
                 "a second login is refused without [IN-USE] (RFC 2449 §8.1.1)", (reply,),
                 "popbox fetch reports it as a login failure, not a busy maildrop")


# --- the report ---

def workarounds(checks: Iterable[Check]) -> list[str]:
    return [f"{c.name}: {c.workaround}" for c in checks
            if c.verdict is Verdict.DEVIATION and c.workaround]


def to_json(obs: Observations, checks: Sequence[Check]) -> dict[str, Any]:
    return {
        "server": {"host": obs.host, "port": obs.port, "greeting": obs.greeting},
        "tls": None if obs.tls is None else asdict(obs.tls),
        "checks": [{"name": c.name, "verdict": str(c.verdict), "summary": c.summary,
                    "evidence": list(c.evidence), "workaround": c.workaround}
                   for c in checks],
        "deviations": sum(c.verdict is Verdict.DEVIATION for c in checks),
    }


def to_text(obs: Observations, checks: Sequence[Check]) -> str:
    out = [f"popbox probe {obs.host}:{obs.port}"]
    for c in checks:
        out.append(f"  {c.verdict.upper():9} {c.name}: {c.summary}")
        out += [f"            {line}" for line in c.evidence[:6]]
    found = workarounds(checks)
    if found:
        out.append("what popbox fetch does about the deviations:")
        out += [f"  {line}" for line in found]
    deviations = sum(c.verdict is Verdict.DEVIATION for c in checks)
    out.append(f"{deviations} deviation{'s' if deviations != 1 else ''}")
    return "\n".join(out)
