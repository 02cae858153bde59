"""How the client logs in: which method to use, and the SASL exchange (RFC 5034 §4).

`choose()` is the strategy, a pure function of what CAPA said (RFC 2449 §6.3 USER,
§6.9 SASL): the strongest mechanism offered, SCRAM-SHA-256, SCRAM-SHA-1, CRAM-MD5, PLAIN,
then USER/PASS; a server without CAPA gets RFC 1939's USER/PASS. A method that sends the
password as it is (PLAIN, LOGIN, USER/PASS) is chosen only when `plaintext_ok` (TLS, a
loopback peer, or the caller's explicit consent: RFC 8314 §5 spirit); when it is the
only one, the answer is `PopPlaintextRefused`, never a silent downgrade. With an access
token (`bearer=True`) OAUTHBEARER (RFC 7628) comes first, then XOAUTH2; a bearer token is
as good as a password to whoever sees it, so the same rule about plaintext applies.

An initial response goes on the AUTH line only when the line fits in 255 octets (RFC 5034
§4, RFC 2449 §4); otherwise AUTH names the mechanism alone and the response answers the
server's empty challenge (RFC 4422 §5). A refused bearer token's JSON error (RFC 7628
§3.2.2) is part of the `PopAuthError` raised.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

from popbox.client import errors as er
from popbox.client.channel import Channel
from popbox.proto import events as ev
from popbox.proto.client import encode
from popbox.proto.commands import MAX_COMMAND_LINE
from popbox.proto.sasl import INFO
from popbox.proto.sasl_client import (
    BEARER_MECHANISMS,
    MECHANISMS,
    ClientMechanism,
    SaslClientError,
)

USER_PASS = "USER"  # noqa: S105 - a method's name


def plaintext_refused(what: str, server: str) -> er.PopPlaintextRefused:
    return er.PopPlaintextRefused(
        f"{what} would send the password unencrypted to {server}; "
        "use TLS, or allow plaintext explicitly")


def choose(caps: Mapping[str, Sequence[str]], *, plaintext_ok: bool, server: str,
           bearer: bool = False, password: bool = True) -> str:
    """The SASL mechanism to use, or `USER_PASS`. `bearer`: an access token is at hand;
    `password`: a password is too (without one only a bearer mechanism will do)."""
    offered = {m.upper() for m in caps.get("SASL", [])}
    user_pass = password and ("USER" in caps or not caps)  # no CAPA: RFC 1939 USER/PASS
    names = (BEARER_MECHANISMS if bearer else ()) + (MECHANISMS if password else ())
    for name in names:
        if name in offered and (plaintext_ok or not INFO[name].cleartext):
            return name
    if user_pass and plaintext_ok:
        return USER_PASS
    if user_pass or offered & set(names) - {"SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5"}:
        raise plaintext_refused("the login", server)
    if bearer and not password:
        raise er.PopUnsupportedError(
            "the server offers neither OAUTHBEARER nor XOAUTH2 for the access token")
    raise er.PopUnsupportedError("the server offers no login method this client knows")


async def sasl_exchange(channel: Channel, mech: ClientMechanism) -> str:
    """AUTH with `mech` until +OK (its text is returned) or -ERR (raised). A challenge the
    mechanism cannot answer cancels the exchange (RFC 5034 §4: "*")."""
    held = mech.initial()
    if held is not None and len(encode(ev.Auth(mech.name, held))) <= MAX_COMMAND_LINE:
        await channel.send(ev.Auth(mech.name, held))
        held = None
    else:
        await channel.send(ev.Auth(mech.name, None))
    while True:
        event = await channel.event()
        match event:
            case ev.Continuation(data=b"") if held is not None:
                await channel.send(ev.SaslResponse(held))
                held = None
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
                failure = er.error_for(event, "AUTH")
                if mech.server_error is not None:
                    failure = type(failure)(f"{failure.text} (the server said: "
                                            f"{mech.server_error})", failure.code, "AUTH")
                raise failure
            case _:
                raise channel.unexpected(event)
