"""TLS with real third-party tools: curl, `openssl s_client`, fetchmail and sslscan
against `popbox serve` in a child process, on 127.0.0.1 only.

The certificates come from trustme: a root CA, an intermediate CA and a leaf for
`localhost` and `127.0.0.1`. The server's chain file holds the leaf and the
intermediate; the tools trust only the root (written to a CA file), so every
successful verification also shows that popbox sends the whole chain.

What is checked:
- STLS (RFC 2595 §4) and implicit TLS (RFC 8314 §3.3) fetch the right bytes with curl
  and fetchmail, with certificate verification on; `curl --ssl-reqd` refuses a server
  that offers no STLS.
- `openssl s_client`: a POP3 session over STLS; TLS 1.1 is refused, TLS 1.2 and 1.3
  work (RFC 8996, RFC 8314 §4.1); client-initiated renegotiation is refused.
- An sslscan audit of the defaults (RFC 9325 / BCP 195): only TLS 1.2 and 1.3, only
  forward-secret AEAD suites, no compression (a raw ClientHello: sslscan cannot test it
  with Debian's OpenSSL), no insecure renegotiation, our certificate.
- A handshake that stalls is cut off after `tls.handshake_timeout`.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.x509.oid import NameOID

from helpers import MailEnv, ServerProcess, crlf, lf_terminated, server_process

TOOL_TIMEOUT = 60

MESSAGES = [
    b"From: a@example.org\nTo: alice@example.org\nSubject: plain\n\nHello over TLS.\n",
    b"From: b@example.org\nSubject: dots\n\n.starts with a dot\n..two dots\n.\nend\n",
    "From: c@example.org\nSubject: =?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\nMIME-Version: 1.0\n"
    "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 8bit\n\n"
    "Grüße aus Zürich — 你好\n".encode(),
    b"From: d@example.org\nSubject: no final newline\n\nlast line without a line end",
]




def require(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} is not installed: run scripts/install-peers"
    return path


def run(args: list[str], *, stdin: bytes = b"", env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(args, input=stdin, capture_output=True, timeout=TOOL_TIMEOUT,
                          env=env, check=False)


@dataclass
class Pki:
    """A root CA (the only thing the clients trust), the server's chain and key files."""

    ca_file: Path
    chain_file: Path
    key_file: Path
    leaf_pem: bytes
    intermediate_pem: bytes

    @property
    def intermediate_ou(self) -> str:
        """The intermediate's unique OU (trustme's "Testing CA #...")."""
        cert = x509.load_pem_x509_certificate(self.intermediate_pem)
        value = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value
        return value if isinstance(value, str) else value.decode()


def make_pki(folder: Path, key_type: trustme.KeyType = trustme.KeyType.ECDSA) -> Pki:
    root = trustme.CA(key_type=key_type)
    intermediate = root.create_child_ca(key_type=key_type)
    # fetchmail 6.4 insists on a subject CommonName in the leaf ("Server name not
    # specified in certificate!"); trustme leaves it out unless asked.
    leaf = intermediate.issue_cert("localhost", "127.0.0.1", common_name="localhost",
                                   key_type=key_type)
    folder.mkdir(parents=True, exist_ok=True)
    ca_file, chain_file, key_file = folder / "ca.pem", folder / "chain.pem", folder / "key.pem"
    root.cert_pem.write_to_path(str(ca_file))
    chain_file.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key_file))
    assert len(leaf.cert_chain_pems) == 2  # leaf + intermediate; the root is not sent
    return Pki(ca_file, chain_file, key_file, leaf.cert_chain_pems[0].bytes(),
               leaf.cert_chain_pems[1].bytes())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_config(env: MailEnv, pki: Pki, **tls: object) -> Path:
    return env.config_file(tls={"cert": str(pki.chain_file), "key": str(pki.key_file),
                                "implicit": ["127.0.0.1:0"], **tls})


@pytest.fixture
def tls_server(env: MailEnv, pki: Pki) -> Iterator[ServerProcess]:
    """popbox with STLS on `server.port` and implicit TLS on `server.tls_port`."""
    for message in MESSAGES:
        env.put("alice", message)
    with server_process(tls_config(env, pki)) as server:
        assert server.tls_port is not None
        yield server


def pem_blocks(text: bytes) -> list[bytes]:
    """The PEM certificates in `text`, normalised (one block each, ending in a newline)."""
    return [block + b"\n" for block in re.findall(
        rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", text, re.DOTALL)]


# --- curl ---


def curl(url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    return run([require("curl"), "-sS", "-v", "--max-time", "30", "--user", "alice:secret",
                *args, url])


def test_curl_stls_and_implicit_tls(env: MailEnv, tls_server: ServerProcess, pki: Pki) -> None:
    """curl verifies the chain against the root CA and the IP address in the certificate,
    and fetches every message byte for byte (CRLF) over STLS (`--ssl-reqd` on pop3://)
    and over implicit TLS (pop3s://)."""
    for n, message in enumerate(MESSAGES, start=1):
        stls = curl(f"pop3://127.0.0.1:{tls_server.port}/{n}", "--ssl-reqd",
                    "--cacert", str(pki.ca_file))
        assert stls.returncode == 0, stls.stderr.decode(errors="replace")
        assert stls.stdout == crlf(message)
        assert b"> STLS" in stls.stderr
        assert re.search(rb"SSL connection using TLSv1\.[23]", stls.stderr), stls.stderr
        implicit = curl(f"pop3s://127.0.0.1:{tls_server.tls_port}/{n}",
                        "--cacert", str(pki.ca_file))
        assert implicit.returncode == 0, implicit.stderr.decode(errors="replace")
        assert implicit.stdout == crlf(message)
        assert b"> STLS" not in implicit.stderr
    assert env.messages("alice") == MESSAGES


def test_curl_verification_is_real(tls_server: ServerProcess) -> None:
    """Without our CA (only the system store) curl refuses the certificate: exit 60,
    CURLE_PEER_FAILED_VERIFICATION, on both ports."""
    for url, args in ((f"pop3://127.0.0.1:{tls_server.port}/1", ["--ssl-reqd"]),
                      (f"pop3s://127.0.0.1:{tls_server.tls_port}/1", [])):
        result = curl(url, *args)
        assert result.returncode == 60, result.stderr.decode(errors="replace")
        assert result.stdout == b""


def test_curl_ssl_reqd_refused_by_a_plain_server(env: MailEnv, pki: Pki) -> None:
    """A server without TLS offers no STLS: `curl --ssl-reqd` gives up before sending the
    password, with exit 64 (CURLE_USE_SSL_FAILED, "Requested SSL level failed")."""
    env.put("alice", MESSAGES[0])
    with server_process(env.config_file()) as server:
        assert server.tls_port is None
        result = curl(f"pop3://127.0.0.1:{server.port}/1", "--ssl-reqd",
                      "--cacert", str(pki.ca_file))
        assert result.returncode == 64, result.stderr.decode(errors="replace")
        assert result.stdout == b""
        assert b"> USER" not in result.stderr and b"> AUTH" not in result.stderr
    assert env.messages("alice") == [MESSAGES[0]]


# --- openssl s_client ---


def s_client(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return run([require("openssl"), "s_client", *args], stdin=stdin)


def test_s_client_starttls_session(tls_server: ServerProcess, pki: Pki) -> None:
    """`openssl s_client -starttls pop3` reads the greeting, sends STLS, verifies the
    chain (root CA file, IP address 127.0.0.1) and then the whole POP3 session runs
    over TLS: USER, PASS, STAT, QUIT, each answered +OK."""
    port = str(tls_server.port)
    result = s_client(
        "-starttls", "pop3", "-connect", f"127.0.0.1:{port}", "-CAfile", str(pki.ca_file),
        "-verify_return_error", "-verify_ip", "127.0.0.1", "-quiet",
        stdin=b"USER alice\r\nPASS secret\r\nSTAT\r\nQUIT\r\n",
    )
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 0, err
    assert "verify return:1" in err and "verify error" not in err, err
    size = sum(len(crlf(m)) for m in MESSAGES)
    lines = result.stdout.split(b"\r\n")
    assert lines[0] == b"+OK"
    assert lines[1].startswith(b"+OK Logged in.")
    assert lines[2] == f"+OK {len(MESSAGES)} {size}".encode()
    assert lines[3].startswith(b"+OK Logging out")


def test_s_client_refuses_a_certificate_from_another_ca(tls_server: ServerProcess,
                                                        tmp_path: Path) -> None:
    """The verification above is real: with some other root CA the handshake fails
    (`-verify_return_error`) and nothing is sent."""
    other = make_pki(tmp_path / "other")
    result = s_client("-starttls", "pop3", "-connect", f"127.0.0.1:{tls_server.port}",
                      "-CAfile", str(other.ca_file), "-verify_return_error", "-quiet",
                      stdin=b"USER alice\r\nQUIT\r\n")
    assert result.returncode != 0
    assert b"unable to get local issuer certificate" in result.stderr, result.stderr
    assert b"+OK" not in result.stdout


def test_s_client_shows_our_chain(tls_server: ServerProcess, pki: Pki) -> None:
    """On both ports the server sends exactly our leaf and intermediate, in order."""
    for args in (["-starttls", "pop3", "-connect", f"127.0.0.1:{tls_server.port}"],
                 ["-connect", f"127.0.0.1:{tls_server.tls_port}"]):
        result = s_client(*args, "-showcerts", "-CAfile", str(pki.ca_file),
                          "-verify_return_error", stdin=b"QUIT\r\n")
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        assert pem_blocks(result.stdout) == [pki.leaf_pem, pki.intermediate_pem]
        assert b"Verify return code: 0 (ok)" in result.stdout


@pytest.mark.parametrize("version", ["1_2", "1_3"])
def test_s_client_tls12_and_tls13_accepted(
    tls_server: ServerProcess, pki: Pki, version: str
) -> None:
    result = s_client("-connect", f"127.0.0.1:{tls_server.tls_port}", f"-tls{version}",
                      "-CAfile", str(pki.ca_file), "-verify_return_error", "-brief",
                      "-ign_eof", stdin=b"CAPA\r\nQUIT\r\n")
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 0, err
    assert f"Protocol version: TLSv{version.replace('_', '.')}" in err, err
    assert "Verification: OK" in err, err
    assert result.stdout.startswith(b"+OK popbox ready.\r\n+OK")
    assert b"\r\nUSER\r\n" in result.stdout and b"STLS" not in result.stdout


def test_s_client_tls11_refused(tls_server: ServerProcess, pki: Pki) -> None:
    """A client that offers only TLS 1.1 (at security level 0, so nothing on the client
    side stops it) sends its ClientHello and gets no ServerHello: no session."""
    result = s_client("-connect", f"127.0.0.1:{tls_server.tls_port}", "-tls1_1",
                      "-cipher", "DEFAULT:@SECLEVEL=0", "-CAfile", str(pki.ca_file), "-msg",
                      stdin=b"QUIT\r\n")
    assert result.returncode != 0
    assert re.search(rb">>> TLS 1\.1, Handshake \[length \w+\], ClientHello", result.stdout), \
        result.stdout
    assert b"ServerHello" not in result.stdout
    assert b"+OK" not in result.stdout
    assert b"no peer certificate available" in result.stdout


def test_s_client_renegotiation_refused(tls_server: ServerProcess, pki: Pki) -> None:
    """TLS 1.2: the server announces RFC 5746 secure renegotiation but refuses a
    renegotiation the client starts (`R` in s_client; a DoS lever): the client gets a
    no_renegotiation alert and the session ends."""
    proc = subprocess.Popen(
        [require("openssl"), "s_client", "-connect", f"127.0.0.1:{tls_server.tls_port}",
         "-tls1_2", "-CAfile", str(pki.ca_file), "-verify_return_error"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdin is not None and proc.stdout is not None
        # Wait for the greeting: the handshake is over before `R` is typed.
        deadline = time.monotonic() + 20
        seen = b""
        while b"+OK popbox ready." not in seen and time.monotonic() < deadline:
            chunk = proc.stdout.readline()
            if not chunk:
                break
            seen += chunk
        assert b"+OK popbox ready." in seen, seen
        proc.stdin.write(b"R\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=TOOL_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert b"Secure Renegotiation IS supported" in seen
    assert b"RENEGOTIATING" in seen + out + err
    assert b"no renegotiation" in err, err
    assert proc.returncode != 0


# --- fetchmail ---


def run_fetchmail(home: Path, port: int, pki: Pki, *, implicit: bool
                  ) -> tuple[subprocess.CompletedProcess[str], list[bytes]]:
    """Poll once with fetchmail 6.4 and return the run and what its MDA got, in order.

    `sslproto 'TLS1.2+'` demands TLS 1.2 or newer. With `ssl` fetchmail speaks TLS from
    the first byte (implicit TLS); without it `sslproto` means "upgrade with STLS or give
    up" (fetchmail(1), --sslproto). `sslcertck` with `sslcertfile` verifies the chain
    against our root CA only (the default CA store is not loaded). fetchmail 6.4 checks
    the poll name against the certificate's DNS names and CommonName only, never an IP
    address SAN ("hostname mismatch" for 127.0.0.1), so `sslcommonname localhost` names
    the DNS name it must find instead.
    """
    out = home / "delivered"
    out.mkdir(exist_ok=True)
    mda = home / "mda.sh"
    mda.write_text('#!/bin/sh\nn=$(ls "$1" | wc -l)\nexec cat > "$1/$(printf %04d "$n")"\n')
    mda.chmod(0o755)
    rc = home / "fetchmailrc"
    rc.write_text(
        "set invisible\n"
        f"poll 127.0.0.1 service {port} protocol pop3 uidl\n"
        '  user "alice" password "secret" no rewrite\n'
        f"  {'ssl ' if implicit else ''}sslproto 'TLS1.2+' sslcertck\n"
        f'  sslcertfile "{pki.ca_file}" sslcommonname localhost\n'
        f'  mda "{mda} {out}"\n'
    )
    rc.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FETCHMAIL")}
    env["HOME"] = str(home)
    before = len(list(out.iterdir()))
    result = subprocess.run(
        [require("fetchmail"), "-f", str(rc), "--nodetach", "--nosyslog", "-v"],
        capture_output=True, text=True, timeout=TOOL_TIMEOUT, env=env, check=False,
    )
    return result, [p.read_bytes() for p in sorted(out.iterdir())][before:]


@pytest.mark.parametrize("implicit", [True, False], ids=["implicit", "stls"])
def test_fetchmail_over_tls(env: MailEnv, tls_server: ServerProcess, pki: Pki, tmp_path: Path,
                            implicit: bool) -> None:
    """fetchmail fetches and deletes every message over verified TLS: implicit TLS on the
    POP3S port, or STLS on the plain port. The MDA gets the messages byte for byte (LF)
    and the maildrop is empty afterwards."""
    home = tmp_path / "home"
    home.mkdir()
    port = tls_server.tls_port if implicit else tls_server.port
    assert port is not None
    result, delivered = run_fetchmail(home, port, pki, implicit=implicit)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert delivered == [lf_terminated(m) for m in MESSAGES]
    assert env.messages("alice") == []
    assert ("POP3> STLS" in log) != implicit, log
    assert re.search(r"SSL/TLS: using protocol TLSv1\.[23]", log), log
    assert "certificate verification failed" not in log.lower(), log


def test_fetchmail_sslproto_refuses_a_plain_server(env: MailEnv, pki: Pki, tmp_path: Path
                                                   ) -> None:
    """`sslproto 'TLS1.2+'` without `ssl` demands STLS: against a server that offers
    none, fetchmail tries STLS anyway, gets -ERR and gives up without logging in (exit 2,
    a socket/TLS error); nothing is fetched or deleted."""
    env.put("alice", MESSAGES[0])
    home = tmp_path / "home"
    home.mkdir()
    with server_process(env.config_file()) as server:
        result, delivered = run_fetchmail(home, server.port, pki, implicit=False)
    log = result.stdout + result.stderr
    assert result.returncode == 2, log
    assert "POP3> STLS" in log and "upgrade to TLS failed" in log, log
    assert delivered == []
    assert "POP3> PASS" not in log and "POP3> USER" not in log, log
    assert env.messages("alice") == [MESSAGES[0]]


# --- sslscan audit ---


TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                "TLS_CHACHA20_POLY1305_SHA256"}
TLS12_SUITE = re.compile(r"ECDHE-(ECDSA|RSA)-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)")
WEAK = ("CBC", "RC4", "DES", "NULL", "EXP", "ANON", "ADH", "AECDH", "MD5", "PSK", "SRP",
        "CAMELLIA", "ARIA", "SEED", "IDEA")


def sslscan(port: int, folder: Path, *extra: str) -> tuple[ET.Element, str]:
    """Run sslscan 2 against 127.0.0.1:port; return its XML report and its text output."""
    report = folder / f"sslscan-{port}.xml"
    result = run([require("sslscan"), "--no-colour", "--show-certificate",
                  f"--xml={report}", *extra, f"127.0.0.1:{port}"])
    text = result.stdout.decode(errors="replace")
    assert result.returncode == 0, text + result.stderr.decode(errors="replace")
    # The XML is sslscan's report on our own server, written to our own tmp folder.
    test = ET.parse(report).getroot().find("ssltest")  # noqa: S314
    assert test is not None, report.read_text()
    return test, text


def client_hello_offering_deflate() -> bytes:
    """A TLS 1.2 ClientHello that offers DEFLATE compression (RFC 3749) before null."""
    suites = [0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9, 0xCCA8, 0x00FF]

    def ext(kind: int, data: bytes) -> bytes:
        return struct.pack("!HH", kind, len(data)) + data

    def u16s(values: list[int]) -> bytes:
        return struct.pack(f"!H{len(values)}H", 2 * len(values), *values)

    extensions = (
        ext(0x000A, u16s([0x001D, 0x0017, 0x0018]))                       # supported_groups
        + ext(0x000B, b"\x01\x00")                                        # ec_point_formats
        + ext(0x000D, u16s([0x0403, 0x0503, 0x0804, 0x0805, 0x0401, 0x0501]))  # sig algs
    )
    body = (b"\x03\x03" + os.urandom(32) + b"\x00" + u16s(suites)
            + b"\x02\x01\x00" + struct.pack("!H", len(extensions)) + extensions)
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(handshake)) + handshake


def server_hello_compression(port: int) -> tuple[int, int]:
    """Send the ClientHello above; return the ServerHello's cipher suite and compression
    method."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(client_hello_offering_deflate())
        data = b""
        while len(data) < 5 + 4 + 2 + 32 + 1:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {data!r}"
            data += chunk
        assert data[0] == 0x16 and data[5] == 0x02, f"no ServerHello: {data[:16]!r}"
        assert data[9:11] == b"\x03\x03", "ServerHello is not TLS 1.2"
        sid_len = data[43]
        while len(data) < 44 + sid_len + 3:
            chunk = sock.recv(65536)
            assert chunk
            data += chunk
        offset = 44 + sid_len
        cipher, compression = struct.unpack("!HB", data[offset:offset + 3])
        return cipher, compression


@pytest.mark.parametrize("key_type", [trustme.KeyType.ECDSA, trustme.KeyType.RSA],
                         ids=["ecdsa", "rsa"])
@pytest.mark.parametrize("mode", ["implicit", "stls"])
def test_sslscan_audit(env: MailEnv, tmp_path: Path, key_type: trustme.KeyType, mode: str
                       ) -> None:
    """The TLS defaults, as sslscan sees them (RFC 9325 §4, RFC 8996, RFC 8314 §4.1):

    - SSLv2, SSLv3, TLS 1.0 and 1.1 disabled; TLS 1.2 and TLS 1.3 enabled;
    - every accepted suite is a TLS 1.3 suite or ECDHE (forward secrecy) with AES-GCM or
      ChaCha20-Poly1305 (AEAD): no CBC, RC4, 3DES, NULL, EXPORT, anonymous or static RSA;
    - the server picks the suite (sslscan finds one preferred suite per version);
    - no insecure renegotiation; not vulnerable to Heartbleed;
    - no TLS compression (CRIME): Debian's OpenSSL has no zlib, so sslscan cannot test
      it; a raw ClientHello that offers DEFLATE (on the POP3S port, the same context
      as STLS) gets a ServerHello choosing null and an ECDHE suite;
    - the leaf certificate is ours, issued by our intermediate.
    """
    pki = make_pki(tmp_path / "pki", key_type)
    with server_process(tls_config(env, pki)) as server:
        assert server.tls_port is not None
        if mode == "implicit":
            report, text = sslscan(server.tls_port, tmp_path)
        else:
            report, text = sslscan(server.port, tmp_path, "--starttls-pop3")
        cipher, compression = server_hello_compression(server.tls_port)
    protocols = {f"{p.get('type')}{p.get('version')}": p.get("enabled")
                 for p in report.iter("protocol")}
    assert protocols == {"ssl2": "0", "ssl3": "0", "tls1.0": "0", "tls1.1": "0",
                         "tls1.2": "1", "tls1.3": "1"}, text

    ciphers = [(c.get("status"), c.get("sslversion"), c.get("cipher") or "", c.attrib)
               for c in report.iter("cipher")]
    assert {version for _, version, _, _ in ciphers} == {"TLSv1.2", "TLSv1.3"}, text
    for status, version, name, attrib in ciphers:
        assert status in ("preferred", "accepted"), attrib
        if version == "TLSv1.3":
            assert name in TLS13_SUITES, attrib
        else:
            assert TLS12_SUITE.fullmatch(name), attrib
            assert ("ECDSA" if key_type == trustme.KeyType.ECDSA else "-RSA-") in name
            assert attrib.get("curve") and int(attrib.get("ecdhebits", "0")) >= 253, attrib
        assert not any(weak in name.upper() for weak in WEAK), attrib
        assert int(attrib.get("bits", "0")) >= 128, attrib
        assert attrib.get("strength") in ("strong", "acceptable"), attrib
    for version in ("TLSv1.2", "TLSv1.3"):
        preferred = [name for status, v, name, _ in ciphers
                     if v == version and status == "preferred"]
        assert len(preferred) == 1, text
    assert len([c for c in ciphers if c[1] == "TLSv1.2"]) == 3, text

    for reneg in report.iter("renegotiation"):
        assert not (reneg.get("supported") == "1" and reneg.get("secure") != "1"), text
    assert "Insecure session renegotiation supported" not in text
    assert all(h.get("vulnerable") == "0" for h in report.iter("heartbleed")), text
    for comp in report.iter("compression"):   # only when sslscan could test it
        assert comp.get("supported") == "0", text
    assert compression == 0, "the server chose TLS compression"
    assert TLS12_SUITE.fullmatch(
        {0xC02B: "ECDHE-ECDSA-AES128-GCM-SHA256", 0xC02F: "ECDHE-RSA-AES128-GCM-SHA256",
         0xC02C: "ECDHE-ECDSA-AES256-GCM-SHA384", 0xC030: "ECDHE-RSA-AES256-GCM-SHA384",
         0xCCA9: "ECDHE-ECDSA-CHACHA20-POLY1305", 0xCCA8: "ECDHE-RSA-CHACHA20-POLY1305",
         }.get(cipher, hex(cipher)))

    blobs = [b.text or "" for b in report.iter("certificate-blob")]
    assert [pem_blocks(blob.strip().encode() + b"\n") for blob in blobs] == [[pki.leaf_pem]]
    short = report.find("certificates/certificate[@type='short']")
    assert short is not None, text
    assert short.findtext("subject") == "localhost"
    assert short.findtext("altnames") == "DNS:localhost, IP Address:127.0.0.1"
    assert f"/OU={pki.intermediate_ou}" in (short.findtext("issuer") or ""), text
    assert short.findtext("self-signed") == "false"
    assert short.findtext("expired") == "false"


# --- handshake timeout ---


@pytest.mark.parametrize("partial", [False, True], ids=["silent", "half-hello"])
@pytest.mark.parametrize("mode", ["implicit", "stls"])
def test_stalled_handshake_is_cut_off(env: MailEnv, pki: Pki, mode: str, partial: bool
                                      ) -> None:
    """`tls.handshake_timeout = 0.5`: a client that connects to the POP3S port (or says
    STLS and gets +OK) and then sends nothing, or half a ClientHello, is disconnected
    after about half a second, long before the login timeout (60 s)."""
    hello = client_hello_offering_deflate()
    with server_process(tls_config(env, pki, handshake_timeout=0.5)) as server:
        port = server.tls_port if mode == "implicit" else server.port
        assert port is not None
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            if mode == "stls":
                assert sock.recv(1024).startswith(b"+OK")
                sock.sendall(b"STLS\r\n")
                assert sock.recv(1024) == b"+OK Begin TLS negotiation now.\r\n"
            if partial:
                sock.sendall(hello[: len(hello) // 2])
            start = time.monotonic()
            try:
                data = sock.recv(1024)
            except ConnectionResetError:
                data = b""
            elapsed = time.monotonic() - start
        assert data == b"", data
        assert 0.3 < elapsed < 5, elapsed
        # The server is still fine afterwards.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            assert sock.recv(1024).startswith(b"+OK")
