"""The Prometheus configuration and alerting rules, checked with the real `promtool`.

promtool comes from the Debian package `prometheus`; `make test` installs it first with
deploy/prometheus/ensure-prometheus.sh. Without it these tests fail (not skip): the rules
are part of the product and must be checked.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from stream_app.metrics import Metrics
from tests.support.paths import REPO
from tests.support.prometheus import EXPECTED_ALERTS

ROOT = REPO
PROM = ROOT / "deploy" / "prometheus"



@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: run deploy/prometheus/ensure-prometheus.sh "
            "(installs the Debian package 'prometheus'), then re-run the tests",
            pytrace=False,
        )
    return path


def run(promtool: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool, *args],
        cwd=ROOT,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_rules(promtool):
    r = run(promtool, "check", "rules", "deploy/prometheus/alerts.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(EXPECTED_ALERTS)} rules found" in r.stdout


def test_check_config(promtool):
    r = run(promtool, "check", "config", "deploy/prometheus/prometheus.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_rule_unit_tests(promtool):
    r = run(promtool, "test", "rules", "deploy/prometheus/alerts_test.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_exposition_passes_promtool_lint(promtool):
    """`promtool check metrics` on the worker's exposition. Its only complaint is about the
    contract's name `chargecap_open_patient_days` ("days" read as a time unit; it is a count
    of patient-days), which contract.md §7 fixes."""
    m = Metrics()
    m.consumed("ehr.em-services")
    m.observe_line("medicare", 0.2, 10)
    m.observe_latency("alert", 0.1)
    m.track_alert("a", state="open", payer_class="medicare", reason_code="INVALID_NPI", dollars=3)
    m.set_consumer_lag("ehr.em-services", 0, 1)
    m.broker_error("1", "node_not_ready")
    r = run(promtool, "check", "metrics", stdin=m.exposition().decode())
    problems = [
        line
        for line in (r.stdout + r.stderr).splitlines()
        if line.strip() and not line.startswith("chargecap_open_patient_days ")
    ]
    assert problems == [], problems


def test_every_alert_is_present_labelled_and_tested():
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert set(alerts) == EXPECTED_ALERTS
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
        assert "for" in rule, name
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())
    firing, quiet = set(), set()
    for t in tests["tests"]:
        for art in t.get("alert_rule_test", []):
            (firing if art.get("exp_alerts") else quiet).add(art["alertname"])
    assert firing == EXPECTED_ALERTS, "every alert needs a firing test case"
    assert quiet == EXPECTED_ALERTS, "every alert needs a not-firing test case"


def test_scrape_config_targets_the_worker():
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    assert cfg["rule_files"] == ["alerts.yml"]
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    job = jobs["chargecap"]
    assert job["scrape_interval"] == "15s"
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets == ["worker:9108"]


def test_ensure_script_is_executable():
    script = PROM / "ensure-prometheus.sh"
    assert script.stat().st_mode & 0o111
    r = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_dashboard_promql_parses(promtool, tmp_path):
    """Every PromQL expression of the Grafana dashboard is valid PromQL: each is wrapped in
    a recording rule (Grafana's $__ variables replaced by a duration) and checked."""
    import json
    import re

    dash = json.loads((ROOT / "deploy/grafana/dashboards/chargecap.json").read_text())
    exprs = [
        re.sub(r"\$__(rate_interval|interval|range)\b", "5m", t["expr"])
        for p in dash["panels"]
        for t in p.get("targets", [])
    ]
    assert exprs
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"dashboard:expr_{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    r = run(promtool, "check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in r.stdout
