"""Where an access token for OAUTHBEARER / XOAUTH2 comes from (RFC 6749 §1.4, RFC 6750).

A `TokenSource` gives the current access token; `renew=True` asks for a new one, which
the fetcher does once when the server refuses a token (it may have been revoked, or have
expired before its stated time).

- `TokenCommand`: a program (an argv list, never run by a shell) that prints an access
  token on its first line, as mpop's `passwordeval` and getmail6's `password_command` do
  for passwords; it is run again to renew. A failure, a timeout or an empty output is a
  `TokenError` whose text never holds what the program printed.
- `popbox.client.oauth.OAuthTokens`: popbox's own OAuth2 client (refresh grant).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol


class TokenError(Exception):
    """No access token could be had (the message never holds a token)."""


class TokenSource(Protocol):
    @property
    def renewable(self) -> bool:
        """Whether `renew=True` can give a different token."""
        ...

    @property
    def two_step(self) -> bool:
        """XOAUTH2's token should answer a challenge, not ride on the AUTH line (the
        provider wants it so: Microsoft 365); known once a token was given."""
        ...

    async def access_token(self, *, renew: bool = False) -> str: ...


class StaticToken:
    """A token given as it is (a script that got one elsewhere); it cannot be renewed."""

    renewable = False
    two_step = False

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "StaticToken(<redacted>)"

    async def access_token(self, *, renew: bool = False) -> str:
        return self._token


async def first_line_of(argv: Sequence[str], *, what: str, timeout: float) -> str:  # noqa: ASYNC109
    """Run `argv` without a shell and return the first line of its standard output.
    Its standard error is inherited (the user sees the program's own complaints)."""
    if not argv:
        raise TokenError(f"{what}: empty command")
    name = argv[0]
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise TokenError(f"{what} {name}: {exc.strerror or exc}") from None
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise TokenError(f"{what} {name} printed nothing within {timeout:g} s") from None
    if proc.returncode != 0:
        raise TokenError(f"{what} {name} exited with status {proc.returncode}")
    lines = out.decode("utf-8", "replace").splitlines()
    if not lines or not lines[0].strip():
        raise TokenError(f"{what} {name} printed nothing")
    return lines[0].strip()


class TokenCommand:
    """`token_command = ["oauth2l", "fetch", "--scope", "mail"]`: its first output line."""

    renewable = True

    def __init__(self, argv: Sequence[str], timeout: float = 60.0,
                 two_step: bool = False) -> None:
        self.two_step = two_step
        self.argv = list(argv)
        self.timeout = timeout
        self._token: str | None = None

    def __repr__(self) -> str:
        return f"TokenCommand({self.argv!r})"

    async def access_token(self, *, renew: bool = False) -> str:
        if self._token is None or renew:
            self._token = await first_line_of(self.argv, what="token_command",
                                              timeout=self.timeout)
        return self._token
