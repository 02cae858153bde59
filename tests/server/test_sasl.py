"""SASL (RFC 5034): the pure mechanisms against their RFC test vectors, then logins over
real sockets on 127.0.0.1 with client-side implementations (scramp's ScramClient, hmac),
including SCRAM-SHA-256-PLUS with channel binding over real TLS (trustme certificates)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import ssl
from pathlib import Path

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st
from scramp import ScramClient, ScramMechanism  # type: ignore[import-untyped]

from helpers import Client, MailEnv, running_server
from popbox.auth import schemes
from popbox.auth.base import Secret, Verdict
from popbox.auth.passwd_file import PasswdFile
from popbox.proto import sasl
from popbox.proto.hmac_md5 import from_context as hmac_from_context
from popbox.proto.sasl_cram import CramMd5, challenge
from popbox.proto.sasl_scram import Scram

SECRET = b"k" * 32


def scram_credential(mechanism: str, password: str, salt_b64: str, iterations: int) -> bytes:
    """What the passdb would hand over: `iter,salt,storedkey,serverkey`."""
    _, stored, server, _ = ScramMechanism(mechanism).make_auth_info(
        password, iteration_count=iterations, salt=base64.b64decode(salt_b64)
    )
    keys = (base64.b64encode(x).decode() for x in (stored, server))
    return f"{iterations},{salt_b64},{','.join(keys)}".encode()


def cram_context(password: bytes) -> bytes:
    return schemes.make(password, "CRAM-MD5").split("}", 1)[1].encode()


# --- the mechanisms, pure ----------------------------------------------------------------


def test_plain_rfc4616_examples() -> None:
    """RFC 4616 §4: without and with an authorization identity."""
    assert sasl.Plain().start(b"\0tim\0tanstaaftanstaaf") == sasl.Credentials(
        "tim", b"tanstaaftanstaaf", ""
    )
    assert sasl.Plain().start(b"Ursel\0Kurt\0xipj3plmq") == sasl.Credentials(
        "Kurt", b"xipj3plmq", "Ursel"
    )
    assert sasl.Plain().start(None) == sasl.Challenge(b"")
    for bad in (b"", b"\0tim", b"\0\0pw", b"\0tim\0", b"a\0b\0c\0d", b"\0t\xffm\0pw"):
        assert isinstance(sasl.Plain().start(bad), sasl.Failed)


def test_cram_md5_rfc2195_example() -> None:
    """RFC 2195 §2: tim / tanstaaftanstaaf."""
    sent = challenge(1896, 697170952, "postoffice.reston.mci.net")
    assert sent == b"<1896.697170952@postoffice.reston.mci.net>"
    mech = CramMd5(sent)
    assert mech.start(None) == sasl.Challenge(sent)
    assert mech.step(b"tim b913a602c7eda7a495b4e6e7334d3890") == sasl.NeedCredential(
        "tim", "CRAM-MD5"
    )
    assert mech.provide(sasl.StoredCredential(cram_context(b"tanstaaftanstaaf"))) == (
        sasl.Authenticated("tim")
    )


@pytest.mark.parametrize("stored", [cram_context(b"wrong"), None, b"zz" * 32, b"short"])
def test_cram_md5_wrong_password_or_unknown_user_fails_alike(stored: bytes | None) -> None:
    mech = CramMd5(b"<1.2@host>")
    mech.start(None)
    assert mech.step(b"tim b913a602c7eda7a495b4e6e7334d3890") == sasl.NeedCredential(
        "tim", "CRAM-MD5"
    )
    assert mech.provide(sasl.StoredCredential(stored)) == sasl.Failed("wrong digest", "tim")


@pytest.mark.parametrize("response", [b"tim", b"tim 1234", b" " + b"a" * 32, b"\xff " + b"a" * 32])
def test_cram_md5_malformed(response: bytes) -> None:
    mech = CramMd5(b"<1.2@host>")
    mech.start(None)
    assert isinstance(mech.step(response), sasl.Failed)
    assert isinstance(CramMd5(b"<1.2@host>").start(b"tim"), sasl.Failed)  # no initial response


@given(st.binary(max_size=100), st.binary(max_size=300))
def test_hmac_from_stored_context_matches_hmac(key: bytes, message: bytes) -> None:
    """MD5 resumed from Dovecot's stored HMAC states = HMAC-MD5 (RFC 2104), any lengths."""
    expected = hmac.new(key, message, hashlib.md5).digest()
    assert hmac_from_context(bytes.fromhex(cram_context(key).decode()), message) == expected


def run_scram(mech: Scram, first: bytes, credential: bytes | None, final: bytes) -> list[object]:
    steps: list[object] = [mech.start(first)]
    steps.append(mech.provide(sasl.StoredCredential(credential)))
    steps.append(mech.step(final))
    if isinstance(steps[-1], sasl.Challenge):
        steps.append(mech.step(b""))
    return steps


def test_scram_sha1_rfc5802_example() -> None:
    """RFC 5802 §5: user / pencil, with the server nonce of the example."""
    mech = Scram("SCRAM-SHA-1", nonce="3rfcNHYJY1ZVvWVs7j", secret=SECRET)
    nonce = "fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j"
    steps = run_scram(
        mech, b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
        scram_credential("SCRAM-SHA-1", "pencil", "QSXCR+Q6sek8bf92", 4096),
        f"c=biws,r={nonce},p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=".encode(),
    )
    assert steps == [
        sasl.NeedCredential("user", "SCRAM-SHA-1"),
        sasl.Challenge(f"r={nonce},s=QSXCR+Q6sek8bf92,i=4096".encode()),
        sasl.Challenge(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="),
        sasl.Authenticated("user"),
    ]


RFC7677_NONCE = "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC7677_FINAL = (
    f"c=biws,r={RFC7677_NONCE},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=".encode()
)


def test_scram_sha256_rfc7677_example() -> None:
    """RFC 7677 §3: user / pencil."""
    mech = Scram("SCRAM-SHA-256", nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", secret=SECRET)
    steps = run_scram(
        mech, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        scram_credential("SCRAM-SHA-256", "pencil", "W22ZaJ0SNY7soEsUEjb6gQ==", 4096),
        RFC7677_FINAL,
    )
    assert steps == [
        sasl.NeedCredential("user", "SCRAM-SHA-256"),
        sasl.Challenge(f"r={RFC7677_NONCE},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".encode()),
        sasl.Challenge(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
        sasl.Authenticated("user"),
    ]


def test_scram_wrong_password_and_bad_proof_fail_after_the_proof() -> None:
    for credential, final in (
        (scram_credential("SCRAM-SHA-256", "pencil2", "W22ZaJ0SNY7soEsUEjb6gQ==", 4096),
         RFC7677_FINAL),
        (scram_credential("SCRAM-SHA-256", "pencil", "W22ZaJ0SNY7soEsUEjb6gQ==", 4096),
         RFC7677_FINAL.replace(b"p=dHzb", b"p=dHzc")),
    ):
        mech = Scram("SCRAM-SHA-256", nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", secret=SECRET)
        steps = run_scram(mech, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO", credential, final)
        assert isinstance(steps[1], sasl.Challenge)
        assert steps[2] == sasl.Failed("rejected", "user")


def server_first(user: str, secret: bytes = SECRET) -> bytes:
    mech = Scram("SCRAM-SHA-256", nonce="servernonce", secret=secret)
    assert mech.start(f"n,,n={user},r=abc".encode()) == sasl.NeedCredential(user, "SCRAM-SHA-256")
    step = mech.provide(sasl.StoredCredential(None))
    assert isinstance(step, sasl.Challenge)
    return step.data


def test_scram_unknown_user_gets_a_stable_mock() -> None:
    """RFC 5802 §5.1: a made-up but stable salt, a default iteration count, a failure only
    at the end."""
    first = server_first("nobody")
    assert first == server_first("nobody")
    assert re.fullmatch(rb"r=abcservernonce,s=[A-Za-z0-9+/=]{24},i=4096", first)
    assert first != server_first("someone")
    assert first != server_first("nobody", b"other secret" * 3)
    mech = Scram("SCRAM-SHA-256", nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", secret=SECRET)
    steps = run_scram(mech, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO", None, RFC7677_FINAL)
    assert isinstance(steps[1], sasl.Challenge)
    assert steps[2] == sasl.Failed("rejected", "user")


@pytest.mark.parametrize(
    ("name", "first", "plus_offered", "ok"),
    [
        ("SCRAM-SHA-256", b"n,,n=u,r=x", True, True),
        ("SCRAM-SHA-256", b"y,,n=u,r=x", False, True),  # the client could bind; we can't
        ("SCRAM-SHA-256", b"y,,n=u,r=x", True, False),  # RFC 5802 §6: downgrade
        ("SCRAM-SHA-256", b"p=tls-server-end-point,,n=u,r=x", True, False),
        ("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=u,r=x", True, True),
        ("SCRAM-SHA-256-PLUS", b"p=tls-exporter,,n=u,r=x", True, False),
        ("SCRAM-SHA-256-PLUS", b"n,,n=u,r=x", True, False),
        ("SCRAM-SHA-256-PLUS", b"y,,n=u,r=x", True, False),
        ("SCRAM-SHA-256", b"n,a=u,n=u,r=x", True, False),
        ("SCRAM-SHA-256", b"n,,n=u=,r=x", True, False),
        ("SCRAM-SHA-256", b"n,,r=x", True, False),
        ("SCRAM-SHA-256", b"x,,n=u,r=x", True, False),
        ("SCRAM-SHA-256", b"\xff,,n=u,r=x", True, False),
    ],
)
def test_scram_gs2_header_policy(name: str, first: bytes, plus_offered: bool, ok: bool) -> None:
    mech = Scram(name, nonce="n", secret=SECRET, plus_offered=plus_offered,
                 bindings={"tls-server-end-point": b"\x01" * 32})
    step = mech.start(first)
    assert isinstance(step, sasl.NeedCredential if ok else sasl.Failed), step


def test_scram_escaped_user_name() -> None:
    mech = Scram("SCRAM-SHA-1", nonce="n", secret=SECRET)
    assert mech.start(b"n,,n=a=2Cb=3Dc,r=x") == sasl.NeedCredential("a,b=c", "SCRAM-SHA-1")


# --- the passdb's side: credentials() and schemes() ---------------------------------------


async def test_passwd_file_credentials(tmp_path: Path) -> None:
    cram = schemes.make(b"c-pw", "CRAM-MD5")
    scram = schemes.make(b"s-pw", "SCRAM-SHA-256")
    path = tmp_path / "users"
    path.write_text(f"plain:{{PLAIN}}p-pw\ncram:{cram}\nscram:{scram}\n"
                    "locked:{PLAIN}x:::::: nologin\n")
    strict = PasswdFile(path, "/m/{user}")
    derive = PasswdFile(path, "/m/{user}", derive=True, secret=SECRET)

    assert await strict.credentials("cram", "CRAM-MD5") == Secret(cram.split("}")[1].encode())
    stored = Secret(scram.split("}")[1].encode())
    assert await strict.credentials("scram", "SCRAM-SHA-256") == stored
    assert await strict.credentials("plain", "PLAIN") == Secret(b"p-pw")
    for db, user, scheme in ((strict, "plain", "CRAM-MD5"), (strict, "scram", "SCRAM-SHA-1"),
                             (derive, "cram", "SCRAM-SHA-256"), (derive, "nobody", "CRAM-MD5"),
                             (derive, "locked", "SCRAM-SHA-256"), (derive, "../x", "PLAIN")):
        assert await db.credentials(user, scheme) is None, (user, scheme)
    assert await derive.credentials("plain", "CRAM-MD5") == Secret(cram_context(b"p-pw"))
    derived = await derive.credentials("plain", "SCRAM-SHA-256")
    assert isinstance(derived, Secret)
    assert derived == await derive.credentials("plain", "SCRAM-SHA-256")  # a stable salt
    other = PasswdFile(path, "/m/{user}", derive=True, secret=b"other" * 8)
    assert derived != await other.credentials("plain", "SCRAM-SHA-256")
    assert schemes.verify("{SCRAM-SHA-256}" + derived.value.decode(), b"p-pw")

    assert await strict.schemes() == frozenset()  # nothing common to all three users
    path.write_text(f"plain:{{PLAIN}}p-pw\ncram:{cram}\nopen::::::: nopassword\n")
    assert await PasswdFile(path, "/m/{user}").schemes() == frozenset()
    assert await PasswdFile(path, "/m/{user}", derive=True).schemes() == {"CRAM-MD5"}
    path.unlink()
    assert await PasswdFile(path, "/m/{user}").credentials("plain", "PLAIN") is Verdict.TEMPORARY
    assert await PasswdFile(path, "/m/{user}").schemes() == frozenset()


# --- over sockets ------------------------------------------------------------------------


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(reply: bytes) -> bytes:
    assert reply.startswith(b"+ "), reply
    return base64.b64decode(reply[2:])


async def scram_login(
    client: Client, mechanism: str, user: str, password: str, *,
    binding: tuple[str, object] | None = None, initial: bool = True,
    tamper_proof: bool = False,
) -> bytes:
    """A SCRAM login driven by scramp's client; the server's final reply."""
    plain = mechanism.removesuffix("-PLUS")
    scram = ScramClient([mechanism] if binding and mechanism != plain else [plain], user,
                        password, channel_binding=binding)
    first = scram.get_client_first()
    if initial:
        reply = await client.cmd(f"AUTH {mechanism} {b64(first)}")
    else:
        assert await client.cmd(f"AUTH {mechanism}") == b"+ "
        reply = await client.cmd(b64(first))
    if not reply.startswith(b"+ "):
        return reply
    scram.set_server_first(unb64(reply).decode())
    final = scram.get_client_final()
    if tamper_proof:
        final = final[:-6] + ("AAAA==" if not final.endswith("AAAA==") else "BBBB==")
    reply = await client.cmd(b64(final))
    if not reply.startswith(b"+ "):
        return reply
    scram.set_server_final(unb64(reply).decode())  # raises if the server is not genuine
    return await client.cmd("")


async def connect(port: int, local: str | None = None) -> Client:
    if local is None:
        client = await Client.connect(port)
    else:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(local, 0)
        )
        client = Client(reader, writer)
    assert (await client.line()).startswith(b"+OK")
    return client


async def sasl_capability(client: Client) -> list[bytes]:
    _, caps = await client.multi("CAPA")
    lines = [c for c in caps if c.startswith(b"SASL ")]
    return lines[0].split()[1:] if lines else []


@pytest.fixture
def derived(env: MailEnv) -> MailEnv:
    env.settings["auth"] = {"derive_credentials": True}
    return env


async def test_bare_auth_and_capa_list_exactly_what_is_offered(derived: MailEnv) -> None:
    """RFC 5034 §4 / RFC 2449 §6.3: the same list; no -PLUS without TLS; AUTH refuses
    what is not on it."""
    async with running_server(derived.config()) as (port, _):
        client = await connect(port)
        expected = [b"PLAIN", b"LOGIN", b"SCRAM-SHA-256", b"SCRAM-SHA-1", b"CRAM-MD5"]
        assert await client.multi("AUTH") == (b"+OK Mechanisms follow", expected)
        assert await sasl_capability(client) == expected
        for name in ("SCRAM-SHA-256-PLUS", "OAUTHBEARER", "DIGEST-MD5"):
            assert await client.cmd(f"AUTH {name}") == b"-ERR Unsupported authentication mechanism."
        await client.close()


async def test_mechanisms_follow_what_the_passdb_can_serve(env: MailEnv) -> None:
    """A {SCRAM-SHA-256} user: only SCRAM-SHA-256 can be served to everyone, and only
    with derivation on (alice is {PLAIN})."""
    with env.users.open("a") as f:
        f.write(f"bob:{schemes.make(b'bob-pw', 'SCRAM-SHA-256')}::::::\n")
    for sub in ("cur", "new", "tmp"):
        (env.maildir("bob") / sub).mkdir(parents=True)
    config = env.config(auth={"derive_credentials": True,
                              "mechanisms": ["SCRAM-SHA-1", "SCRAM-SHA-256", "PLAIN"]})
    async with running_server(config) as (port, _):
        client = await connect(port)
        assert (await client.multi("AUTH"))[1] == [b"SCRAM-SHA-256", b"PLAIN"]
        assert (await scram_login(client, "SCRAM-SHA-256", "bob", "bob-pw")).startswith(
            b"+OK Logged in"
        )
        await client.close()
    async with running_server(env.config()) as (port, _):
        client = await connect(port)
        assert (await client.multi("AUTH"))[1] == [b"PLAIN", b"LOGIN"]
        await client.close()


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-1"])
@pytest.mark.parametrize("initial", [True, False])
async def test_scram_login(derived: MailEnv, mechanism: str, initial: bool) -> None:
    async with running_server(derived.config()) as (port, _):
        client = await connect(port)
        reply = await scram_login(client, mechanism, "alice", "secret", initial=initial)
        assert reply.startswith(b"+OK Logged in")
        assert (await client.cmd("STAT")).startswith(b"+OK")
        await client.close()


async def test_scram_wrong_password_unknown_user_bad_proof(derived: MailEnv) -> None:
    async with running_server(derived.config()) as (port, _):
        client = await connect(port)
        failed = b"-ERR [AUTH] Authentication failed."
        assert await scram_login(client, "SCRAM-SHA-256", "alice", "wrong") == failed
        assert await scram_login(client, "SCRAM-SHA-256", "nobody", "secret") == failed
        assert await scram_login(client, "SCRAM-SHA-256", "alice", "secret",
                                 tamper_proof=True) == failed
        await client.close()  # three failures end a connection (limits.max_auth_failures)
        client = await connect(port)
        assert (await scram_login(client, "SCRAM-SHA-256", "alice", "secret")).startswith(
            b"+OK Logged in"
        )
        await client.close()


async def test_unknown_user_sees_the_same_salt_each_time(derived: MailEnv) -> None:
    async with running_server(derived.config()) as (port, _):
        firsts = []
        for user in ("nobody", "nobody", "alice", "alice"):
            client = await connect(port)
            reply = await client.cmd(f"AUTH SCRAM-SHA-256 {b64(f'n,,n={user},r=abc')}")
            firsts.append(re.sub(rb"r=[^,]*,", b"", unb64(reply)))
            assert await client.cmd("*") == b"-ERR Authentication cancelled."
            await client.close()
        assert firsts[0] == firsts[1] and firsts[2] == firsts[3]
        assert all(f.endswith(b",i=4096") for f in firsts)


async def test_cram_md5_login(derived: MailEnv) -> None:
    """RFC 2195 with hmac on the client side; a fresh challenge each time."""
    async with running_server(derived.config()) as (port, _):
        seen = set()
        for password, expected in (("wrong", b"-ERR [AUTH]"), ("secret", b"+OK Logged in")):
            client = await connect(port)
            sent = unb64(await client.cmd("AUTH CRAM-MD5"))
            assert re.fullmatch(rb"<\d+\.\d+@test\.example>", sent), sent
            seen.add(sent)
            digest = hmac.new(password.encode(), sent, hashlib.md5).hexdigest()
            assert (await client.cmd(b64(f"alice {digest}"))).startswith(expected)
            await client.close()
        assert len(seen) == 2


async def test_cancel_and_bad_base64_mid_exchange(derived: MailEnv) -> None:
    """RFC 5034 §4: `*` cancels; a line that is not base64 is -ERR; the session goes on."""
    async with running_server(derived.config()) as (port, _):
        client = await connect(port)
        reply = await client.cmd(f"AUTH SCRAM-SHA-256 {b64('n,,n=alice,r=abc')}")
        assert reply.startswith(b"+ ")
        assert await client.cmd("*") == b"-ERR Authentication cancelled."
        assert (await client.cmd("AUTH CRAM-MD5")).startswith(b"+ ")
        assert await client.cmd("not base64!") == b"-ERR Invalid base64 data."
        assert await client.cmd("AUTH SCRAM-SHA-256 ###") == b"-ERR Invalid base64 data."
        assert (await scram_login(client, "SCRAM-SHA-256", "alice", "secret")).startswith(
            b"+OK Logged in"
        )
        await client.close()


async def test_challenge_response_offered_without_tls_to_remote_clients(
    derived: MailEnv,
) -> None:
    """SCRAM and CRAM-MD5 never send the password: offered to a remote client without TLS,
    while USER, PLAIN and LOGIN are not."""
    config = derived.config(auth={"derive_credentials": True, "local_networks": ["127.0.0.1/32"]})
    async with running_server(config) as (port, _):
        client = await connect(port, local="127.0.0.2")
        _, caps = await client.multi("CAPA")
        assert b"USER" not in caps
        assert b"SASL SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5" in caps
        assert (await client.cmd("AUTH PLAIN")).startswith(b"-ERR [AUTH] Plaintext")
        assert (await scram_login(client, "SCRAM-SHA-1", "alice", "secret")).startswith(
            b"+OK Logged in"
        )
        await client.close()


# --- SCRAM-*-PLUS over TLS ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_env(derived: MailEnv, ca: trustme.CA, tmp_path: Path) -> MailEnv:
    issued = ca.issue_cert("localhost", "127.0.0.1")
    (tmp_path / "tls").mkdir()
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    issued.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(pem.bytes() for pem in issued.cert_chain_pems))
    derived.settings["tls"] = {"cert": str(cert), "key": str(key)}
    return derived


async def starttls(client: Client, ca: trustme.CA, maximum: str | None = None) -> ssl.SSLObject:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if maximum == "1.2":
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await client.cmd("STLS") == b"+OK Begin TLS negotiation now."
    await client.writer.start_tls(context, server_hostname="localhost")
    ssl_object = client.writer.get_extra_info("ssl_object")
    assert isinstance(ssl_object, ssl.SSLObject)
    return ssl_object


async def test_plus_is_offered_only_over_tls(tls_env: MailEnv, ca: trustme.CA) -> None:
    async with running_server(tls_env.config()) as (port, _):
        client = await connect(port)
        assert b"SCRAM-SHA-256-PLUS" not in await sasl_capability(client)
        await starttls(client, ca)
        assert await sasl_capability(client) == [
            b"PLAIN", b"LOGIN", b"SCRAM-SHA-256", b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-1",
            b"CRAM-MD5",
        ]
        await client.close()


@pytest.mark.parametrize(
    ("tls", "binding"),
    [("1.3", "tls-server-end-point"), ("1.2", "tls-server-end-point"), ("1.2", "tls-unique")],
)
async def test_scram_plus_with_channel_binding(
    tls_env: MailEnv, ca: trustme.CA, tls: str, binding: str
) -> None:
    """RFC 5802 §6, RFC 5929: the client binds to the TLS channel it sees."""
    async with running_server(tls_env.config()) as (port, _):
        client = await connect(port)
        ssl_object = await starttls(client, ca, maximum=tls)
        assert ssl_object.version() == f"TLSv{tls}"
        reply = await scram_login(client, "SCRAM-SHA-256-PLUS", "alice", "secret",
                                  binding=(binding, ssl_object))
        assert reply.startswith(b"+OK Logged in")
        await client.close()


async def test_tls_unique_is_not_offered_on_tls13(tls_env: MailEnv, ca: trustme.CA) -> None:
    """RFC 9266 §3: no tls-unique with TLS 1.3."""
    async with running_server(tls_env.config()) as (port, _):
        client = await connect(port)
        ssl_object = await starttls(client, ca)
        data = ssl_object.get_channel_binding("tls-unique")
        assert data is not None
        reply = await scram_login(client, "SCRAM-SHA-256-PLUS", "alice", "secret",
                                  binding=("tls-unique", data))
        assert reply == b"-ERR [AUTH] Authentication failed."
        await client.close()


async def test_tampered_channel_binding_fails(tls_env: MailEnv, ca: trustme.CA) -> None:
    """A man in the middle terminating TLS would present other binding data."""
    async with running_server(tls_env.config()) as (port, _):
        client = await connect(port)
        await starttls(client, ca)
        reply = await scram_login(client, "SCRAM-SHA-256-PLUS", "alice", "secret",
                                  binding=("tls-server-end-point", b"\x00" * 32))
        assert reply == b"-ERR [AUTH] Authentication failed."
        await client.close()


async def test_downgrade_to_non_plus_with_y_flag_is_refused(
    tls_env: MailEnv, ca: trustme.CA
) -> None:
    """RFC 5802 §6: we offered -PLUS; a client that can bind but picks SCRAM-SHA-256 says
    `y` (it thinks we cannot bind): someone removed -PLUS from our list on the way."""
    async with running_server(tls_env.config()) as (port, _):
        client = await connect(port)
        ssl_object = await starttls(client, ca)
        reply = await scram_login(client, "SCRAM-SHA-256", "alice", "secret",
                                  binding=("tls-server-end-point", ssl_object))
        assert reply == b"-ERR [AUTH] Authentication failed."
        # Without binding support ("n"), SCRAM-SHA-256 over TLS is fine.
        assert (await scram_login(client, "SCRAM-SHA-256", "alice", "secret")).startswith(
            b"+OK Logged in"
        )
        await client.close()


# --- secrets never reach the log ---------------------------------------------------------


async def test_no_secret_in_the_log(derived: MailEnv, caplog: pytest.LogCaptureFixture) -> None:
    """Passwords and AUTH payloads (which carry them, or proofs) are never logged."""
    caplog.set_level(logging.DEBUG, logger="popbox")
    password = "S3cret-Pa55"
    derived.add_user("carol", password)
    sent: list[str] = []
    async with running_server(derived.config()) as (port, _):
        for attempt in (password, "Wr0ng-Pa55"):
            for payload in (f"\0carol\0{attempt}",):
                client = await connect(port)
                sent.append(b64(payload))
                await client.cmd(f"AUTH PLAIN {sent[-1]}")
                await client.close()
            client = await connect(port)
            await client.cmd("AUTH LOGIN")
            await client.cmd(b64("carol"))
            sent.append(b64(attempt))
            await client.cmd(sent[-1])
            await client.close()
            client = await connect(port)
            await client.cmd("USER carol")
            await client.cmd(f"PASS {attempt}")
            await client.close()
            client = await connect(port)
            await scram_login(client, "SCRAM-SHA-256", "carol", attempt)
            await client.close()
            client = await connect(port)
            sent_challenge = unb64(await client.cmd("AUTH CRAM-MD5"))
            digest = hmac.new(attempt.encode(), sent_challenge, hashlib.md5).hexdigest()
            sent.append(digest)
            await client.cmd(b64(f"carol {digest}"))
            await client.close()
    text = caplog.text
    assert "login ok user=carol mech=SCRAM-SHA-256" in text
    assert "login failed user=carol mech=CRAM-MD5" in text
    for secret in (password, "Wr0ng-Pa55", *sent):
        assert secret not in text
    assert "c=biws" not in text and "n,,n=carol" not in text
