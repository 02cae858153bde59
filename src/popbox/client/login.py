"""How the client logs in: which method to use, and the SASL exchange (RFC 5034 §4).

`choose()` is the strategy, a pure function of what CAPA said (RFC 2449 §6.3 USER,
§6.9 SASL): the strongest mechanism offered, SCRAM-SHA-256, SCRAM-SHA-1, CRAM-MD5, PLAIN,
then USER/PASS; a server without CAPA gets RFC 1939's USER/PASS. A method that sends the
password as it is (PLAIN, LOGIN, USER/PASS) is chosen only when `plaintext_ok` (TLS, a
loopback peer, or the caller's explicit consent: RFC 8314 §5 spirit); when it is the
only one, the answer is `PopPlaintextRefused`, never a silent downgrade.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

from popbox.client import errors as er
from popbox.client.channel import Channel
from popbox.proto import events as ev
from popbox.proto.sasl import INFO
from popbox.proto.sasl_client import MECHANISMS, ClientMechanism, SaslClientError

USER_PASS = "USER"  # noqa: S105 - a method's name


def plaintext_refused(what: str, server: str) -> er.PopPlaintextRefused:
    return er.PopPlaintextRefused(
        f"{what} would send the password unencrypted to {server}; "
        "use TLS, or allow plaintext explicitly")


def choose(caps: Mapping[str, Sequence[str]], *, plaintext_ok: bool, server: str) -> str:
    """The SASL mechanism to use, or `USER_PASS`."""
    offered = {m.upper() for m in caps.get("SASL", [])}
    user_pass = "USER" in caps or not caps  # no CAPA at all: RFC 1939 USER/PASS
    for name in MECHANISMS:
        if name in offered and (plaintext_ok or not INFO[name].cleartext):
            return name
    if user_pass and plaintext_ok:
        return USER_PASS
    if user_pass or offered & {"PLAIN", "LOGIN"}:
        raise plaintext_refused("the login", server)
    raise er.PopUnsupportedError("the server offers no login method this client knows")


async def sasl_exchange(channel: Channel, mech: ClientMechanism) -> str:
    """AUTH with `mech` until +OK (its text is returned) or -ERR (raised). A challenge the
    mechanism cannot answer cancels the exchange (RFC 5034 §4: "*")."""
    await channel.send(ev.Auth(mech.name, mech.initial()))
    while True:
        event = await channel.event()
        match event:
            case ev.Continuation(data=challenge):
                try:
                    response = mech.respond(challenge)
                except SaslClientError as exc:
                    await channel.send(ev.SaslCancel())
                    with contextlib.suppress(er.PopError):
                        await channel.status()
                    raise er.PopProtocolError(str(exc)) from None
                await channel.send(ev.SaslResponse(response))
            case ev.Ok(text=text):
                try:
                    mech.finish()
                except SaslClientError as exc:
                    raise channel.broken(er.PopProtocolError(str(exc))) from None
                return text
            case ev.Err():
                raise er.error_for(event, "AUTH")
            case _:
                raise channel.unexpected(event)
