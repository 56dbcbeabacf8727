"""Helpers for the integration tests of observability and privacy.

* `Worker`: `python -m stream_app worker` as a subprocess (its own app id, topic prefix
  and metrics port), stdout and stderr captured to separate files.
* `produce`: sends generated (topic, key, value) messages to the real broker (idempotent
  producer, so a broker restart by another test cannot duplicate input).
* `Prometheus`: a real Prometheus server (the Debian package) scraping 127.0.0.1 targets
  every second, queried through its HTTP API.
* `run_replay`: `python -m stream_app replay` over the same input, for the expected values.
* `listening_sockets`: the TCP sockets a process listens on, from /proc.
* `wait_until`: polling with a deadline and a readable failure.

Every address here is 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import orjson

from tests.streaming.harness import terminate

REPO = Path(__file__).resolve().parents[2]
ALERTS_YML = REPO / "deploy" / "prometheus" / "alerts.yml"
ENSURE_PROMETHEUS = REPO / "deploy" / "prometheus" / "ensure-prometheus.sh"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "chargecap.json"

Message = tuple[str, "bytes | None", bytes]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5,
               detail: Callable[[], str] | None = None) -> Any:
    """Calls `check` until it returns a truthy value (returned) or `timeout` s pass."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - report the last one on timeout
            last_exc = exc
        if time.monotonic() >= deadline:
            extra = f"\nlast error: {last_exc!r}" if last_exc else ""
            more = f"\n{detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{extra}{more}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# --------------------------------------------------------------------------- the worker


class Worker:
    """The worker as a subprocess with test-friendly timers (settle 1 s, close at once).

    `metrics_port=None` starts it without `--metrics-addr` (its default applies);
    `env` entries with value None are removed from the child's environment.
    """

    def __init__(self, tmp_path: Path, broker_url: str, app_id: str, prefix: str, *,
                 metrics_port: int | None | bool = True, log_level: str = "INFO",
                 env: dict[str, str | None] | None = None, extra: Iterable[str] = (),
                 name: str = "worker") -> None:
        self.tmp_path = Path(tmp_path)
        self.port = free_port() if metrics_port is True else (metrics_port or 9108)
        self.stdout_path = self.tmp_path / f"{name}.stdout.log"
        self.stderr_path = self.tmp_path / f"{name}.stderr.log"
        self.args = [
            # `--log-level=X` (one word): `--log-level X worker` is not recognised by the CLI.
            sys.executable, "-m", "stream_app", f"--log-level={log_level}", "worker",
            "--broker", broker_url, "--app-id", app_id, "--topic-prefix", prefix,
            "--store", "memory://", "--data-dir", str(self.tmp_path / f"{name}-data"),
            "--settle-seconds", "1", "--close-after-seconds", "0", "--tick-seconds", "1",
            "--session-timeout", "10", "--heartbeat-interval", "1", "--rebalance-timeout", "10",
            *extra,
        ]
        if metrics_port is not None and metrics_port is not False:
            self.args += ["--metrics-addr", f"127.0.0.1:{self.port}"]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for k, v in (env or {}).items():
            if v is None:
                self.env.pop(k, None)
            else:
                self.env[k] = v
        self.proc: subprocess.Popen | None = None
        self._files: list = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Worker:
        out = open(self.stdout_path, "wb")  # noqa: SIM115 - closed in stop()
        err = open(self.stderr_path, "wb")  # noqa: SIM115
        self._files = [out, err]
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=self.env, stdout=out, stderr=err)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ready(self) -> bool:
        try:
            return http_get(self.url("/healthz"), timeout=1)[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 60.0) -> None:
        def check() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.tail()}")
            return self.ready()

        try:
            wait_until(check, timeout, "the worker's /healthz to answer 200", interval=0.2,
                       detail=self.tail)
        except AssertionError:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited with {self.proc.returncode}:\n{self.tail()}") from None
            raise

    def metrics_text(self) -> str:
        status, body = http_get(self.url("/metrics"))
        assert status == 200, f"/metrics answered {status}"
        return body.decode()

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (then SIGKILL after `timeout`); returns the exit status."""
        if self.proc is None:
            return None
        terminate(self.proc, timeout)
        for f in self._files:
            f.close()
        self._files = []
        return self.proc.returncode

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in (self.stdout_path, self.stderr_path)
                         if p.exists())

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.logs().splitlines()[-n:])


# --------------------------------------------------------------------------- Kafka


async def produce(bootstrap: str, messages: list[Message], *, chunk: int = 500,
                  pause: float = 0.0) -> None:
    """Sends the messages in order, `chunk` at a time, waiting for each chunk's acks."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, enable_idempotence=True,
                                max_request_size=4 * 1024 * 1024, request_timeout_ms=60000)
    await producer.start()
    try:
        for i in range(0, len(messages), chunk):
            futures = [await producer.send(t, v, key=k) for t, k, v in messages[i:i + chunk]]
            await asyncio.gather(*futures)
            if pause:
                await asyncio.sleep(pause)
    finally:
        await producer.stop()


def message_counts(messages: list[Message]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for topic, _k, _v in messages:
        counts[topic] = counts.get(topic, 0) + 1
    return counts


# --------------------------------------------------------------------------- replay


def run_replay(tmp_path: Path, messages: list[Message], *, log_level: str = "INFO"
               ) -> tuple[list[dict], str]:
    """Runs `python -m stream_app replay` over the message values (NDJSON, send order) with
    the worker's timers. Returns (the alerts of alerts.ndjson, replay's stdout+stderr)."""
    path = Path(tmp_path) / "replay-input.ndjson"
    out = Path(tmp_path) / "replay-out"
    with open(path, "wb") as f:
        for _t, _k, v in messages:
            if b"\n" not in v and b"\r" not in v:
                f.write(v + b"\n")
    done = subprocess.run(
        [sys.executable, "-m", "stream_app", f"--log-level={log_level}", "replay", str(path),
         "--out", str(out), "--settle-seconds", "1", "--close-after-seconds", "0"],
        cwd=REPO, capture_output=True, timeout=120,
    )
    logs = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"replay failed ({done.returncode}):\n{logs}"
    alerts = [orjson.loads(line) for line in (out / "alerts.ndjson").read_bytes().splitlines()
              if line.strip()]
    return alerts, logs


# --------------------------------------------------------------------------- Prometheus


def ensure_prometheus() -> tuple[str | None, str]:
    """(path of the `prometheus` binary, ""), installing the Debian package when absent
    (deploy/prometheus/ensure-prometheus.sh); (None, why) when it cannot be had."""
    found = shutil.which("prometheus")
    if found:
        return found, ""
    why = "prometheus not found and deploy/prometheus/ensure-prometheus.sh is missing"
    if ENSURE_PROMETHEUS.exists():
        done = subprocess.run(["sh", str(ENSURE_PROMETHEUS)], capture_output=True, text=True,
                              timeout=900)
        why = (done.stderr.strip().splitlines() or ["ensure-prometheus.sh failed"])[-1]
    found = shutil.which("prometheus")
    return (found, "") if found else (None, why)


class Prometheus:
    """A throw-away Prometheus server: 1 s scrape and evaluation interval, loopback only."""

    def __init__(self, tmp_path: Path, targets: list[str], *, rule_files: Iterable[Path] = (),
                 job: str = "chargecap", binary: str = "prometheus") -> None:
        self.dir = Path(tmp_path) / "prometheus"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.binary = binary
        self.log_path = self.dir / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                       "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{
                "job_name": job,
                "scrape_interval": "1s",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": targets}],
            }],
        }
        # JSON is YAML.
        self.config_path = self.dir / "prometheus.yml"
        self.config_path.write_text(json.dumps(config, indent=2))
        self.proc: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout: float = 30.0) -> Prometheus:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([
            self.binary, f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1h",
        ], stdout=self._log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                return http_get(self.url("/-/ready"), timeout=1)[0] == 200
            except OSError:
                return False

        wait_until(ready, timeout, "Prometheus to be ready", interval=0.2, detail=self.tail)
        return self

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        status, body = http_get(self.url(f"/api/v1/{path}") + (f"?{query}" if query else ""))
        data = json.loads(body)
        if status != 200 or data.get("status") != "success":
            raise PromQLError(f"{path} {params}: HTTP {status}: {data.get('error', body[:300])}")
        return data["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant query; the result vector (a scalar result becomes one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] == "vector":
            return data["result"]
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        raise PromQLError(f"{expr}: unexpected result type {data['resultType']}")

    def value(self, expr: str) -> float | None:
        """The single value of `expr` (None when the vector is empty)."""
        result = self.query(expr)
        if not result:
            return None
        assert len(result) == 1, f"{expr}: {len(result)} series, expected one"
        return float(result[0]["value"][1])

    def by(self, expr: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(expr)}

    def targets_up(self) -> bool:
        active = self.api("targets")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None


class PromQLError(AssertionError):
    pass


# --------------------------------------------------------------------------- exposition


def exposition_series(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(sample name, labels, value) of every sample of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, dict(s.labels), s.value)
            for fam in text_string_to_metric_families(text) for s in fam.samples]


# --------------------------------------------------------------------------- sockets


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
