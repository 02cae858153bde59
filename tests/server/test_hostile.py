"""Slow and hostile clients (bounded in count and time, 127.0.0.1 only): 500 connections
that trickle bytes and 500 that request a 20 MB message and never read it. A normal
session still completes, and the server's memory stays bounded: a client that does not
read is paused by backpressure, not buffered."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

from helpers import Client, MailEnv, ServerProcess
from popbox.proto.wire import wire_size

SLOW = 500
STUCK = 500
BIG = 20 * 1024 * 1024
RSS_BOUND_MB = 300  # stated in the README's Security section


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def big_message() -> bytes:
    line = b"x" * 76 + b"\n"
    body = line * (BIG // len(line))
    return b"Subject: big\n\n" + body


async def open_small_buffer(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)  # keep kernel buffers small
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=sock)


async def test_slowloris_and_non_readers(env: MailEnv) -> None:
    message = big_message()
    first = env.put("alice", message)
    name = f"{first.name},S={len(message)},W={wire_size(message)}"
    os.rename(first, first.with_name(name))
    source = first.with_name(name)
    for i in range(STUCK):
        md = env.add_user(f"u{i}")
        os.link(source, md / "new" / name)
    env.add_user("normal")
    env.put("normal", b"Subject: hello\n\njust a normal message\n")
    config = env.config_file(limits={"max_connections_per_ip": 2000, "login_timeout": 120})
    server = ServerProcess(config)
    writers: list[asyncio.StreamWriter] = []
    try:
        baseline = rss_mb(server.proc.pid)
        for _ in range(SLOW):  # slowloris: a greeting read, then half a command
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writers.append(writer)
            writer.write(b"US")
        for i in range(STUCK):
            _, writer = await open_small_buffer(server.port)
            writers.append(writer)
            writer.write(f"USER u{i}\r\nPASS secret\r\nRETR 1\r\n".encode())
        client = await Client.connect(server.port)
        assert (await client.login("normal")).startswith(b"+OK Logged in. 1 messages")
        assert (await client.cmd("RETR 1")).startswith(b"+OK")
        assert await client.body() == b"Subject: hello\r\n\r\njust a normal message\r\n"
        assert (await client.cmd("QUIT")).startswith(b"+OK")
        await client.close()
        grown = rss_mb(server.proc.pid) - baseline
        print(f"server RSS: baseline {baseline:.0f} MB, grown by {grown:.0f} MB "
              f"with {SLOW} slow + {STUCK} non-reading clients")
        assert rss_mb(server.proc.pid) < RSS_BOUND_MB
    finally:
        for writer in writers:
            writer.transport.abort()
        server.stop()
