"""popbox: a POP3 server, client library and fetch tool."""

__version__ = "0.1.0"
