"""The POP3 session states (RFC 1939 §3) and every transition, in one table for both roles.

Both cores move through the same states on the same replies, so neither hard-codes a
transition; each asks `after_reply(state, command, ok)` once the status line that
completes `command` has been sent (server) or read (client):

- AUTHORIZATION: +OK to PASS, APOP or an AUTH exchange (the AUTH command on the client
  side, its last SASL response on the server side) enters TRANSACTION (RFC 1939 §§4, 7;
  RFC 5034 §4). A bare AUTH only lists mechanisms: its reply is a listing and never
  moves the state (`commands.reply_shape`).
- QUIT: any reply ends the conversation (CLOSED). Received in TRANSACTION, the server
  is in UPDATE until it answers (RFC 1939 §6): `on_receive`.

Only the server core sees UPDATE; the client goes from TRANSACTION to CLOSED.
"""

from __future__ import annotations

from popbox.proto import events as ev
from popbox.proto.types import State

_A, _T, _U, _C = State.AUTHORIZATION, State.TRANSACTION, State.UPDATE, State.CLOSED

Moves = tuple[tuple[State, State], ...]  # (from, to) pairs

# Keyed by the command's class, then searched by identity: hashing a State would call
# Enum.__hash__, a Python function, for every command; a class hashes in C. Commands not
# named here never move the state.
_QUIT: Moves = ((_A, _C), (_T, _C), (_U, _C))
ON_OK: dict[type, Moves] = {
    ev.Pass: ((_A, _T),),
    ev.Apop: ((_A, _T),),
    ev.Auth: ((_A, _T),),
    ev.SaslResponse: ((_A, _T),),
    ev.Quit: _QUIT,
}
"""The state after +OK to a command."""
ON_ERR: dict[type, Moves] = {ev.Quit: _QUIT}
"""The state after -ERR to a command."""
ON_RECEIVE: dict[type, Moves] = {ev.Quit: ((_T, _U),)}
"""The server's state as soon as it has received a command, before answering it."""

STATE_CHANGERS: tuple[type, ...] = tuple({**ON_OK, **ON_ERR})
"""Commands whose reply may move the state: what follows them cannot be checked yet."""


def _move(moves: Moves | None, state: State) -> State:
    if moves is not None:
        for before, after in moves:
            if before is state:
                return after
    return state


def after_reply(state: State, command: ev.Command | None, ok: bool) -> State:
    """The state once the status line that completes `command` is on the wire."""
    return _move((ON_OK if ok else ON_ERR).get(type(command)), state)


def on_receive(state: State, command: ev.Command) -> State:
    """The server's state once it has received `command`, before answering it."""
    return _move(ON_RECEIVE.get(type(command)), state)
