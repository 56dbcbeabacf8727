"""docker-compose.yml runs the work queue as the repo's other files expect: PostgreSQL,
migrations before the service, the API published on loopback only, scraped by Prometheus."""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def test_queue_services():
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    s = compose["services"]
    assert s["queue-migrate"]["command"] == ["chargecap", "queue", "migrate"]
    assert s["queue"]["command"] == ["chargecap", "queue", "run"]
    assert s["queue"]["depends_on"]["queue-migrate"]["condition"] == "service_completed_successfully"
    assert s["queue-migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    env = s["queue"]["environment"]
    port = env["CHARGECAP_QUEUE_LISTEN"].rsplit(":", 1)[1]
    assert s["queue"]["ports"] == [f"127.0.0.1:{port}:{port}"]
    # The service connects as its own role, not as the schema owner.
    assert env["CHARGECAP_QUEUE_DSN"].startswith("postgresql://chargecap_queue@postgres:")
    prom = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert jobs["chargecap-queue"]["static_configs"][0]["targets"] == [f"queue:{port}"]
