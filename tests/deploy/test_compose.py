"""docker-compose.yml cannot run here (no Docker): check it against deploy/ statically."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.support.paths import REPO

COMPOSE = REPO / "docker-compose.yml"
PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
DOCKERFILE = REPO / "deploy" / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def services(compose: dict) -> dict:
    return compose["services"]


def env_of(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def host_mounts(service: dict) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def published_ports(service: dict) -> dict[int, int]:
    """container port → host port."""
    out = {}
    for port in service.get("ports", []):
        host, container = str(port).rsplit(":", 1)
        out[int(container)] = int(host.rsplit(":", 1)[-1])
    return out


def test_expected_services(compose):
    assert {"kafka", "worker", "prometheus", "grafana"} <= set(services(compose))


def test_images_are_pinned(compose):
    for name, service in services(compose).items():
        image = service.get("image")
        if "build" in service and image is None:
            continue
        assert image, f"{name} has neither image nor build"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and "/" not in tag, f"{name}: image {image!r} has no tag"
        assert tag != "latest", f"{name}: image {image!r} is not pinned"
        assert re.search(r"\d", tag), f"{name}: tag {tag!r} names no version"


def test_official_images_and_major_versions(compose):
    s = services(compose)
    assert re.fullmatch(r"apache/kafka:4\.\d+\.\d+", s["kafka"]["image"])
    assert re.fullmatch(r"prom/prometheus:v3\.\d+\.\d+", s["prometheus"]["image"])
    assert re.fullmatch(r"grafana/grafana:11\.\d+\.\d+", s["grafana"]["image"])


def test_every_service_has_a_healthcheck_or_is_one_shot(compose):
    for name, service in services(compose).items():
        if service.get("restart") == "no":
            continue
        assert "test" in service.get("healthcheck", {}), f"{name} has no healthcheck"


def test_mounted_host_paths_exist(compose):
    seen = 0
    for name, service in services(compose).items():
        for source, _target in host_mounts(service):
            assert (REPO / source).exists(), f"{name} mounts {source}, which is not in the repo"
            seen += 1
    assert seen >= 4


def test_prometheus_and_grafana_mount_the_deploy_files(compose):
    s = services(compose)
    prom = dict(host_mounts(s["prometheus"]))
    assert prom["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert prom["./deploy/prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"
    graf = dict(host_mounts(s["grafana"]))
    assert graf["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    assert graf["./deploy/grafana/dashboards"] == "/var/lib/grafana/dashboards"
    for rel in (
        "deploy/grafana/provisioning/datasources/datasource.yml",
        "deploy/grafana/provisioning/dashboards/dashboards.yml",
        "deploy/grafana/dashboards/chargecap.json",
    ):
        assert (REPO / rel).is_file(), rel


def test_worker_builds_from_the_dockerfile(compose):
    for name in ("worker", "topics"):
        build = services(compose)[name]["build"]
        assert (REPO / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    assert DOCKERFILE.is_file()


def test_dockerfile_is_pinned_and_installs_the_lock():
    text = DOCKERFILE.read_text()
    base = re.search(r"^FROM\s+(\S+)", text, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), base
    assert "--require-hashes -r requirements.lock" in text
    assert re.search(r'CMD \["chargecap", "worker"\]', text)
    for copied in re.findall(r"^COPY\s+(\S+)", text, re.M):
        assert (REPO / copied).exists(), copied


def test_worker_environment_and_ports(compose):
    s = services(compose)
    worker = s["worker"]
    env = env_of(worker)
    host, port = env["CHARGECAP_METRICS_ADDR"].rsplit(":", 1)
    assert host == "0.0.0.0", "in a container /metrics must bind every interface"
    assert published_ports(worker)[int(port)] == int(port)
    assert int(port) == 9108
    # The broker URL names the kafka service and one of its listeners.
    broker = env["CHARGECAP_BROKER"]
    match = re.fullmatch(r"kafka://kafka:(\d+)", broker)
    assert match, broker
    kafka_env = env_of(s["kafka"])
    assert f"PLAINTEXT://kafka:{match.group(1)}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(worker["healthcheck"]["test"])
    assert f":{port}/healthz" in " ".join(worker["healthcheck"]["test"])
    # Every setting of contract.md §6 that the container needs is given explicitly.
    for var in ("CHARGECAP_BROKER", "CHARGECAP_APP_ID", "CHARGECAP_DATA_DIR"):
        assert var in env


def test_kafka_is_kraft_single_node(compose):
    env = env_of(services(compose)["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert "zookeeper" not in COMPOSE.read_text().lower()


def test_prometheus_scrapes_the_worker_service():
    assert PROMETHEUS_YML.is_file(), "deploy/prometheus/prometheus.yml is missing"
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    compose = yaml.safe_load(COMPOSE.read_text())
    worker_port = env_of(compose["services"]["worker"])["CHARGECAP_METRICS_ADDR"].rsplit(":")[1]
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert f"worker:{worker_port}" in targets
    # Rule files named by prometheus.yml are the ones mounted beside it.
    mounted = {Path(t).name for _, t in host_mounts(compose["services"]["prometheus"])}
    for rule_file in config.get("rule_files", []):
        assert Path(rule_file).name in mounted, rule_file


def test_grafana_datasource_points_at_the_prometheus_service(compose):
    ds = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/datasource.yml").read_text())
    urls = [d["url"] for d in ds["datasources"]]
    port = next(iter(published_ports(services(compose)["prometheus"])))
    assert f"http://prometheus:{port}" in urls
    dashboards = yaml.safe_load((REPO / "deploy/grafana/provisioning/dashboards/dashboards.yml").read_text())
    paths = [p["options"]["path"] for p in dashboards["providers"]]
    assert "/var/lib/grafana/dashboards" in paths
