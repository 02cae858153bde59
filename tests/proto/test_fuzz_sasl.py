"""Every SASL mechanism, fed arbitrary client responses and arbitrary database answers,
ends in a challenge, a request, success or failure — never an exception (RFC 5034 §4:
bad input gets -ERR and the session goes on)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from popbox.proto import sasl
from popbox.proto.sasl_cram import CramMd5
from popbox.proto.sasl_oauth import OAuthBearer, XOAuth2
from popbox.proto.sasl_scram import Scram

FACTORIES = {
    "PLAIN": lambda: sasl.Plain(),
    "LOGIN": lambda: sasl.Login(),
    "CRAM-MD5": lambda: CramMd5(b"<1.2@host>"),
    "OAUTHBEARER": lambda: OAuthBearer("mail", None),
    "XOAUTH2": lambda: XOAuth2(),
    **{
        name: (lambda name=name: Scram(name, nonce="n0nce", secret=b"s" * 32,
                                      bindings={"tls-server-end-point": b"x" * 32},
                                      plus_offered=True))
        for name in ("SCRAM-SHA-1", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS")
    },
}

answers = st.one_of(
    st.builds(sasl.StoredCredential, st.none() | st.binary(max_size=120)),
    st.builds(sasl.TokenOwner, st.none() | st.text(max_size=20)),
)
responses = st.binary(max_size=200) | st.sampled_from([
    b"n,,n=alice,r=abc", b"y,,n=alice,r=abc", b"p=tls-server-end-point,,n=a,r=b",
    b"\0alice\0secret", b"alice 0123456789abcdef0123456789abcdef",
    b"n,a=alice,\x01auth=Bearer tok\x01\x01", b"user=alice\x01auth=Bearer tok\x01\x01",
    b"c=biws,r=abcn0nce,p=AAAA", b"\x01",
])


@settings(max_examples=400)
@given(st.sampled_from(sorted(FACTORIES)), st.none() | responses,
       st.lists(st.one_of(responses, answers), max_size=6))
def test_mechanisms_never_raise(name: str, initial: bytes | None, inputs: list[object]) -> None:
    mech = FACTORIES[name]()
    step = mech.start(initial)
    for item in inputs:
        assert isinstance(step, sasl.Challenge | sasl.Credentials | sasl.NeedCredential
                          | sasl.NeedToken | sasl.Authenticated | sasl.Failed)
        if isinstance(step, sasl.Failed | sasl.Authenticated | sasl.Credentials):
            return
        if isinstance(step, sasl.NeedCredential | sasl.NeedToken):
            answer = item if isinstance(item, sasl.StoredCredential | sasl.TokenOwner) else (
                sasl.StoredCredential(None) if isinstance(step, sasl.NeedCredential)
                else sasl.TokenOwner(None))
            step = mech.provide(answer)
        else:
            step = mech.step(item if isinstance(item, bytes) else b"")
