"""Helpers shared by the tests: paths, Kafka clean-up, the worker harness, Prometheus.

Imported as ordinary modules (`from tests.support.worker import WorkerProcess`);
`tests/conftest.py` holds fixtures only.
"""
