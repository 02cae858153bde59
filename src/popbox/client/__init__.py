"""An asyncio POP3 client (RFC 1939, RFC 2449, RFC 2595, RFC 5034) on the sans-IO core in
`popbox.proto.client`, and the delivery side of `popbox fetch`.

    from popbox import client

    async with client.connect("pop.example.org", tls="implicit") as pop:
        await pop.login("alice", password)
        count, octets = await pop.stat()
        message = client.to_lf(await pop.retr(1))
"""

from popbox.client.connection import Capabilities, PopClient, Sink, Tls, connect, open_streams
from popbox.client.crlf import LfConverter, to_lf
from popbox.client.errors import (
    PopAuthError,
    PopClientError,
    PopConnectionError,
    PopError,
    PopInUseError,
    PopLoginDelayError,
    PopPermanentError,
    PopPlaintextRefused,
    PopProtocolError,
    PopTemporaryError,
    PopTimeoutError,
    PopTlsError,
    PopUnsupportedError,
    PopUsageError,
)

__all__ = [
    "Capabilities",
    "LfConverter",
    "PopAuthError",
    "PopClient",
    "PopClientError",
    "PopConnectionError",
    "PopError",
    "PopInUseError",
    "PopLoginDelayError",
    "PopPermanentError",
    "PopPlaintextRefused",
    "PopProtocolError",
    "PopTemporaryError",
    "PopTimeoutError",
    "PopTlsError",
    "PopUnsupportedError",
    "PopUsageError",
    "Sink",
    "Tls",
    "connect",
    "open_streams",
    "to_lf",
]
