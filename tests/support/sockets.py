"""The TCP sockets a process listens on (from /proc) and this machine's addresses."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path


def _proc_net_listeners() -> dict[int, tuple[str, int]]:
    """socket inode -> (address, port) of every listening TCP socket (v4 and v6)."""
    out: dict[int, tuple[str, int]] = {}
    for name, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            local, state, inode = parts[1], parts[3], int(parts[9])
            if state != "0A":  # TCP_LISTEN
                continue
            hex_addr, hex_port = local.split(":")
            raw = bytes.fromhex(hex_addr)
            if v6:
                # four 32-bit words in host (little-endian) order
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                addr = socket.inet_ntop(socket.AF_INET6, raw)
            else:
                addr = socket.inet_ntop(socket.AF_INET, raw[::-1])
            out[inode] = (addr, int(hex_port, 16))
    return out


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of the TCP sockets process `pid` listens on."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    listeners = _proc_net_listeners()
    return {listeners[i] for i in inodes if i in listeners}


def non_loopback_ipv4() -> list[str]:
    """IPv4 addresses of this machine's non-loopback interfaces (may be empty)."""
    found: set[str] = set()
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True,
                             timeout=10).stdout
        for line in out.splitlines():
            parts = line.split()
            if "inet" in parts:
                addr = parts[parts.index("inet") + 1].split("/")[0]
                if not addr.startswith("127."):
                    found.add(addr)
    except (OSError, subprocess.SubprocessError):
        pass
    return sorted(found)
