#!/usr/bin/env python3
"""Checks that a Kafka broker answers a Metadata request (stdlib only, no venv needed).

Usage: probe.py HOST:PORT [TIMEOUT_SECONDS]
Exit 0 when the broker returned metadata naming at least one broker, 1 otherwise.
Sends Metadata v4 (still served by Kafka 4.x) for all topics and reads the broker list.
"""

from __future__ import annotations

import socket
import struct
import sys


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def metadata_brokers(host: str, port: int, timeout: float = 2.0) -> int:
    client_id = b"chargecap-probe"
    # Request header v1: api_key, api_version, correlation_id, client_id (string).
    header = struct.pack(">hhih", 3, 4, 7, len(client_id)) + client_id
    # Metadata v4 body: topics = null (all), allow_auto_topic_creation = false.
    body = struct.pack(">i?", -1, False)
    payload = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        (size,) = struct.unpack(">i", _read_exact(sock, 4))
        resp = _read_exact(sock, size)
    correlation_id, _throttle, n_brokers = struct.unpack(">iii", resp[:12])
    if correlation_id != 7:
        raise ConnectionError("unexpected correlation id")
    return n_brokers


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    host, _, port = argv[1].rpartition(":")
    timeout = float(argv[2]) if len(argv) > 2 else 2.0
    try:
        return 0 if metadata_brokers(host or "127.0.0.1", int(port), timeout) > 0 else 1
    except (OSError, struct.error):
        return 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
