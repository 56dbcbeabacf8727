"""The served OpenAPI document is valid, and a property-based run against it (schemathesis,
signed in, bounded) finds no server error and no response the document does not describe."""

from __future__ import annotations

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.queue.pg import create_queue_db, drop_queue_db
from tests.queue.service import QueueService, add_user, ago, alert, charge_line, sign_in, write

PASSWORD = "fuzzing-password-4c1e"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]


@pytest.fixture(scope="module")
def service(pg_server, tmp_path_factory):
    db = create_queue_db(*pg_server)
    write(
        db.dsn,
        alerts=[
            (alert(f"a{i}", 1, queue=q, dollars=float(i), line_id=f"l{i}", sources=(f"e{i}",)), ago(days=i))
            for i, q in enumerate(["coding", "pharmacy", "coding", "compliance"] * 5)
        ],
        lines=[(charge_line(f"l{i}", sources=(f"e{i}",)), ago(days=i)) for i in range(20)],
    )
    add_user(db, "fuzzer", "coding,pharmacy", PASSWORD)
    add_user(db, "other", "coding", PASSWORD + "-other")
    svc = QueueService(tmp_path_factory.mktemp("openapi"), db).start().wait_ready()
    try:
        yield svc
    finally:
        svc.stop()
        drop_queue_db(db)


@pytest.fixture(scope="module")
def signed_in(service):
    return sign_in(service, "fuzzer", PASSWORD)


def test_served_document_is_valid_openapi(service):
    doc = requests.get(service.url("/api/v1/openapi.json"), timeout=10).json()
    validate(doc)
    assert doc["openapi"].startswith("3.")
    # Every route the service has is in the document, and nothing else.
    routes = {
        "/healthz",
        "/metrics",
        "/api/v1/session",
        "/api/v1/queues",
        "/api/v1/queues/{queue}",
        "/api/v1/queues/{queue}/items",
        "/api/v1/queues/{queue}/items.csv",
        "/api/v1/items/{alert_id}",
        "/api/v1/items/{alert_id}/status",
        "/api/v1/items/{alert_id}/assign",
        "/api/v1/items/{alert_id}/notes",
    }
    assert set(doc["paths"]) == routes


def test_api_conforms_to_its_document(service, signed_in):
    """Every operation with bounded generated inputs; failures of all operations reported together.

    Run here rather than through schemathesis' pytest plugin, whose lazy fixtures do not
    work with this pytest."""
    session, csrf = signed_in
    schema = schemathesis.openapi.from_url(service.url("/api/v1/openapi.json"))
    failures, operations, calls = [], [], []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label == "DELETE /api/v1/session":
            continue  # signing out would end the run's own session (test_api covers it)
        operations.append(operation.label)

        @given(case=operation.as_strategy())
        @settings(
            max_examples=20,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            calls.append(case.operation.label)
            case.call_and_validate(session=session, headers={"X-CSRF-Token": csrf}, checks=CHECKS)

        try:
            run()
        except Exception as exc:  # noqa: BLE001 - collected, reported below
            failures.append(f"{operation.label}: {exc}")
    assert len(operations) == 12, operations
    # Operations without inputs have one distinct request; the others many.
    counts = {op: calls.count(op) for op in operations}
    assert all(n >= 1 for n in counts.values()) and sum(counts.values()) >= 150, counts
    assert not failures, "\n\n".join(failures)
