"""deploy/kafka-local/kafka.sh: up is idempotent, down stops only its own process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.kafka import broker_answers
from tests.support.paths import KAFKA_SH

DATA = KAFKA_SH.parent / "data"


def free_port_pair() -> int:
    """A port p with p and p+1 free (broker and controller listeners)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def run(command: str, port: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "KAFKA_PORT": str(port)}
    return subprocess.run(
        ["bash", str(KAFKA_SH), command], env=env, capture_output=True, text=True, timeout=300
    )


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2]
    except (OSError, IndexError):
        return "Z"


@pytest.mark.integration
def test_up_up_down_leaves_nothing_behind():
    port = free_port_pair()
    pidfile = DATA / str(port) / "kafka.pid"
    try:
        first = run("up", port)
        assert first.returncode == 0, first.stderr + first.stdout
        assert first.stdout.strip().splitlines()[-1] == f"127.0.0.1:{port}"
        pid = int(pidfile.read_text())
        assert alive(pid)
        assert broker_answers(f"127.0.0.1:{port}")

        second = run("up", port)
        assert second.returncode == 0, second.stderr
        assert "already running" in second.stdout
        assert int(pidfile.read_text()) == pid  # no second broker

        status = run("status", port)
        assert status.returncode == 0 and f"pid {pid}" in status.stdout

        down = run("down", port)
        assert down.returncode == 0, down.stderr
        assert not alive(pid)
        assert not pidfile.exists()
        assert not broker_answers(f"127.0.0.1:{port}", timeout=1)

        again = run("down", port)
        assert again.returncode == 0 and "nothing to stop" in again.stdout
        assert run("status", port).returncode == 3
    finally:
        run("down", port)
        shutil.rmtree(DATA / str(port), ignore_errors=True)


def test_unknown_command_prints_usage():
    result = subprocess.run(["bash", str(KAFKA_SH), "frob"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage" in result.stderr


def test_missing_java_is_one_clear_line(tmp_path):
    port = free_port_pair()
    # A PATH with python3 and coreutils but no java.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("python3", "bash", "cat", "grep", "tr", "mkdir", "mv", "rm", "dirname", "sleep"):
        found = shutil.which(tool)
        if found:
            (bin_dir / tool).symlink_to(found)
    env = {"PATH": str(bin_dir), "KAFKA_PORT": str(port), "HOME": str(tmp_path)}
    result = subprocess.run(
        [str(bin_dir / "bash"), str(KAFKA_SH), "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "java not found" in lines[0] and "apt-get install -y openjdk-17-jre-headless" in lines[0]
    shutil.rmtree(DATA / str(port), ignore_errors=True)
