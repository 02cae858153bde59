"""LMTP (RFC 2033): mail in, into any popbox store."""
