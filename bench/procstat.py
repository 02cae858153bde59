"""What the kernel knows about a server's processes: CPU time, memory, listening sockets.

Everything is read from /proc (Linux only), so the harness needs no extra package.

* A server is a process tree: popbox is one process (or a master and its workers),
  Dovecot is a master and all its children (auth, config, log, anvil, stats,
  pop3-login, one pop3 process per session).
* CPU: utime+stime of every live process of the tree plus its cutime+cstime (the times
  of children it has waited for). Dovecot's children are all direct children of the
  master, and the kernel adds a reaped child's times to its parent's cutime/cstime, so
  the sum also covers every pop3 and pop3-login process that has already exited. The
  sum is sampled before and after a run, when the server is quiet.
* Memory: PSS (proportional set size, /proc/PID/smaps_rollup) summed over the tree, so
  pages shared between Dovecot's processes are counted once overall; peak RSS of one
  process from VmHWM in /proc/PID/status, after resetting it by writing "5" to
  /proc/PID/clear_refs.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class ProcStat:
    pid: int
    ppid: int
    comm: str
    state: str
    cpu_ticks: int  # utime + stime + cutime + cstime


def read_stat(pid: int) -> ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # comm is in parentheses and may contain spaces or parentheses: split at the last ")"
    head, _, rest = raw.rpartition(b")")
    comm = head.partition(b"(")[2].decode(errors="replace")
    fields = rest.split()
    # fields[0] is field 3 (state); utime..cstime are fields 14..17
    ticks = sum(int(f) for f in fields[11:15])
    return ProcStat(pid, int(fields[1]), comm, fields[0].decode(), ticks)


def all_stats() -> dict[int, ProcStat]:
    stats: dict[int, ProcStat] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = read_stat(int(entry))
            if st is not None:
                stats[st.pid] = st
    return stats


def tree(root: int, stats: dict[int, ProcStat] | None = None) -> list[ProcStat]:
    """`root` and all its descendants that are alive (zombies included)."""
    stats = all_stats() if stats is None else stats
    children: dict[int, list[int]] = {}
    for st in stats.values():
        children.setdefault(st.ppid, []).append(st.pid)
    out: list[ProcStat] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        found = stats.get(pid)
        if found is None:
            continue
        out.append(found)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(root: int) -> float:
    """CPU seconds used so far by the tree under `root`, exited children included."""
    return sum(st.cpu_ticks for st in tree(root)) / CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def rss_kib(pid: int) -> int:
    return _status_kib(pid, "VmRSS")


def hwm_kib(pid: int) -> int:
    return _status_kib(pid, "VmHWM")


def reset_hwm(pid: int) -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0; needs to own the process or root)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_kib(root: int) -> tuple[int, int]:
    """(PSS summed over the tree in KiB, number of processes)."""
    procs = tree(root)
    return sum(pss_kib(st.pid) for st in procs), len(procs)


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def _tcp_rows() -> list[list[str]]:
    rows: list[list[str]] = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            rows += [line.split() for line in Path(table).read_text().splitlines()[1:]]
    return rows


def serving(pids: list[int], port: int) -> list[int]:
    """Those of `pids` holding an established TCP connection on local port `port`."""
    established = {int(row[9]) for row in _tcp_rows()
                   if row[3] == "01" and int(row[1].split(":")[1], 16) == port}  # 01: ESTAB
    return [pid for pid in pids if _socket_inodes(pid) & established]


def listening_addresses(pids: list[int]) -> list[tuple[str, int]]:
    """The TCP addresses (host, port) the given processes listen on."""
    inodes: set[int] = set()
    for pid in pids:
        inodes |= _socket_inodes(pid)
    found: list[tuple[str, int]] = []
    for parts in _tcp_rows():
        if parts[3] != "0A" or int(parts[9]) not in inodes:  # 0A: LISTEN
            continue
        hexaddr, hexport = parts[1].split(":")
        found.append((_decode_addr(hexaddr, len(hexaddr) == 32), int(hexport, 16)))
    return found


def _decode_addr(hexaddr: str, v6: bool) -> str:
    import ipaddress

    raw = bytes.fromhex(hexaddr)
    # /proc/net/tcp prints each 32-bit word in host (little-endian) byte order
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.IPv6Address(words) if v6 else ipaddress.IPv4Address(words))
