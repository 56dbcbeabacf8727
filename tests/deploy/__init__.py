"""Tests of the deployment files: Grafana dashboard, Prometheus rules, docker compose."""
