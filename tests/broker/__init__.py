"""Tests that need the real Kafka broker (and, for the live metrics test, Prometheus)."""
