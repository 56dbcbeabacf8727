"""A throw-away Prometheus server for the live tests, and parsing of a text exposition.

* `ensure_prometheus`: the `prometheus` binary, installing the Debian package when absent.
* `Prometheus`: scrapes 127.0.0.1 targets every second, queried through its HTTP API.
* `exposition_series`: the samples of a `/metrics` text.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tests.support.paths import REPO
from tests.support.worker import free_port, http_get, wait_until

ALERTS_YML = REPO / "deploy" / "prometheus" / "alerts.yml"
ENSURE_PROMETHEUS = REPO / "deploy" / "prometheus" / "ensure-prometheus.sh"
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "chargecap.json"


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


def exposition_series(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(sample name, labels, value) of every sample of a Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    return [(s.name, dict(s.labels), s.value)
            for fam in text_string_to_metric_families(text) for s in fam.samples]


def exposition_families(text: str) -> set[str]:
    """Every series name a Prometheus text exposition declares (# TYPE lines), samples
    or not: counters with `_total`, histograms with `_bucket`, `_sum` and `_count`."""
    names: set[str] = set()
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[:2] == ["#", "TYPE"]:
            name, kind = parts[2], parts[3]
            names.add(name)
            if kind == "counter" and not name.endswith("_total"):
                names.add(name + "_total")
            if kind == "histogram":
                names.update({name + "_bucket", name + "_sum", name + "_count"})
    return names


# Every alerting rule of deploy/prometheus/alerts.yml (promtool and the live test check it).
EXPECTED_ALERTS = frozenset({
    "ChargecapWorkerDown",
    "ChargecapConsumerLagGrowing",
    "ChargecapDeadLetterRateHigh",
    "ChargecapRevenueAtRiskHigh",
    "ChargecapDecisionLatencyHigh",
    "ChargecapBrokerErrorsPersist",
    "ChargecapQueueOldestItemTooOld",
})
