"""Coverage-guided fuzzing of popbox's sans-IO core with atheris (libFuzzer).

    .venv/bin/pip install atheris
    .venv/bin/python fuzz/fuzz_popbox.py -max_total_time=300 [corpus_dir]

One input drives, by its first byte, one of: the POP3 server core (fed in pieces, in both
states, answering every event), the PROXY protocol parser, the message encoder with TOP,
or a SASL mechanism exchange. Anything but a clean run is a finding: the core may only
produce events, never raise; and the compiled wire kernel, where it was built, must give
the same bytes as the Python one.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from popbox.proto import _native, proxy, sasl, wire
    from popbox.proto import events as ev
    from popbox.proto.commands import Shape, reply_shape
    from popbox.proto.sasl_cram import CramMd5
    from popbox.proto.sasl_oauth import OAuthBearer, XOAuth2
    from popbox.proto.sasl_scram import Scram
    from popbox.proto.server import ServerConnection
    from popbox.proto.types import State
    from popbox.proto.wire import MessageEncoder, SizeCounter, TopFilter


def server_core(fdp: atheris.FuzzedDataProvider) -> None:
    conn = ServerConnection()
    if fdp.ConsumeBool():
        conn.receive_data(b"USER a\r\nPASS b\r\n")
        for _ in range(2):
            conn.next_event()
            conn.send(ev.Ok())
    while fdp.remaining_bytes():
        conn.receive_data(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 600)))
        while (event := conn.next_event()) is not ev.NEED_DATA:
            assert event is not ev.PAUSED
            if isinstance(event, ev.Auth) and event.mechanism and fdp.ConsumeBool():
                conn.send(ev.Continuation(b""))
            elif fdp.ConsumeBool():
                conn.send(ev.Err("no"))
            else:
                conn.send(ev.Ok())
                multi = (Shape.LISTING, Shape.MESSAGE)
                if isinstance(event, ev.Command) and reply_shape(event) in multi:
                    conn.send(ev.End())
            if conn.state is State.CLOSED:
                return


def encoding(fdp: atheris.FuzzedDataProvider) -> None:
    lines = fdp.ConsumeIntInRange(0, 5)
    start = fdp.ConsumeBool()
    message = fdp.ConsumeBytes(fdp.remaining_bytes())
    for flag in (False, True):
        assert wire.kernel.encode(message, start, flag) == _native.encode(message, start, flag)
    assert wire.kernel.octets(message) == _native.octets(message)
    assert wire.kernel.to_lf(message) == _native.to_lf(message)
    assert wire.kernel.unstuff(message, start) == _native.unstuff(message, start)
    encoder, counter, top = MessageEncoder(), SizeCounter(), TopFilter(lines)
    out = b"".join(encoder.feed(top.feed(message[i : i + 7])) for i in range(0, len(message), 7))
    out += encoder.finish()
    assert out.endswith(b".\r\n")
    counter.feed(message)
    assert counter.finish() >= 0


def mechanism(fdp: atheris.FuzzedDataProvider) -> None:
    name = fdp.PickValueInList(["PLAIN", "LOGIN", "CRAM", "OAUTHBEARER", "XOAUTH2", "SCRAM"])
    mech: sasl.Mechanism = {
        "PLAIN": sasl.Plain, "LOGIN": sasl.Login,
        "CRAM": lambda: CramMd5(b"<1.2@h>"), "OAUTHBEARER": OAuthBearer, "XOAUTH2": XOAuth2,
        "SCRAM": lambda: Scram("SCRAM-SHA-256-PLUS", nonce="n", secret=b"s" * 32,
                               bindings={"tls-server-end-point": b"x"}, plus_offered=True),
    }[name]()
    step = mech.start(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200)) or None)
    for _ in range(6):
        if isinstance(step, sasl.NeedCredential):
            step = mech.provide(sasl.StoredCredential(fdp.ConsumeBytes(80) or None))
        elif isinstance(step, sasl.NeedToken):
            step = mech.provide(sasl.TokenOwner(fdp.ConsumeUnicode(10) or None))
        elif isinstance(step, sasl.Challenge):
            step = mech.step(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 200)))
        else:
            return


def test_one(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    match fdp.ConsumeIntInRange(0, 3):
        case 0:
            server_core(fdp)
        case 1:
            proxy.parse(fdp.ConsumeBytes(fdp.remaining_bytes()))
        case 2:
            encoding(fdp)
        case _:
            mechanism(fdp)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one)
    atheris.Fuzz()
