"""popbox: a POP3 server (Maildir or PostgreSQL, TLS, SASL, LMTP delivery)."""

__version__ = "0.1.0"
