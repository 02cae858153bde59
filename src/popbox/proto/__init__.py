"""Sans-IO POP3 core: bytes in, events out, bytes from events. No sockets, files or clocks."""
