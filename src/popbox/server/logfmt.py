"""Log formatting for client-controlled text: one token, no spaces, no control bytes."""


def quote(text: str) -> str:
    """A log-safe rendering of `text` (a user name, a mechanism): at most 128 characters."""
    safe = "".join(c if c.isprintable() and c not in ' "\\=' else f"\\x{ord(c):02x}" for c in text)
    return safe[:128] or "-"
