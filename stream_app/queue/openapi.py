"""The OpenAPI 3.1 document of the queue API, served at /api/v1/openapi.json.

Written by hand beside api.py and checked against the running service by a property-based
run (tests/queue/test_openapi.py): every status code, header and body the service sends
must be described here.
"""

from __future__ import annotations

from stream_app.queue import store
from stream_app.vocabulary import ALERT_STATES, LINE_STATES, PAYER_CLASSES, REASON_CODES, WORK_QUEUES

_NULLABLE_STR = {"type": ["string", "null"]}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
}


def _resp(
    description: str,
    schema_ref: str | None = None,
    headers: dict | None = None,
    media: str = "application/json",
) -> dict:
    out: dict = {"description": description}
    if schema_ref is not None:
        out["content"] = {media: {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}
    if headers:
        out["headers"] = headers
    return out


_E400 = _resp("A query parameter or the body is malformed", "Error")
_E401 = _resp(
    "Not signed in, or the session expired", "Error", {"WWW-Authenticate": {"schema": {"type": "string"}}}
)
_E403 = _resp("Not a member of the item's or the path's queue, or a missing or wrong CSRF token", "Error")
_E404 = _resp("No such queue or item", "Error")
_E405 = _resp("Method not allowed on this path", "Error", {"Allow": {"schema": {"type": "string"}}})
_E413 = _resp("Body too large", "Error")
_E422 = _resp("The body is well-formed but its values are not acceptable", "Error")

_CSRF = {
    "name": "X-CSRF-Token",
    "in": "header",
    "required": True,
    "description": "The csrf_token of the session (POST /api/v1/session, GET /api/v1/session)",
    "schema": {"type": "string"},
}
_QUEUE = {
    "name": "queue",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "enum": list(WORK_QUEUES)},
}
_ALERT_ID = {"name": "alert_id", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}


def _q(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_FILTERS = [
    _q("reason_code", {"type": "string", "enum": list(REASON_CODES)}, "only this reason code"),
    _q("payer_class", {"type": "string", "enum": list(PAYER_CLASSES)}, "only this payer class"),
    _q(
        "rendering_npi",
        {"type": "string", "pattern": r"^\d{10}$"},
        "only alerts whose charge line has this rendering NPI",
    ),
    _q("service_date_from", {"type": "string", "format": "date"}, "service date on or after"),
    _q("service_date_to", {"type": "string", "format": "date"}, "service date on or before"),
    _q(
        "status",
        {"type": "string", "enum": list(store.STATUS_FILTERS), "default": "active"},
        "active = every open alert (the default); all = open and resolved; or one status",
    ),
    _q("assignee", {"type": "string", "minLength": 1, "maxLength": 64}, "only items assigned to this user"),
    _q(
        "search",
        {"type": "string", "minLength": 1, "maxLength": 200},
        "an alert id, patient id or encounter id (exact)",
    ),
    _q(
        "changed_since",
        {"type": "string", "format": "date-time"},
        "only items with a new engine revision or a workflow change at or after this instant "
        "(RFC 3339 with offset): what a hospital's own work-queue system polls for",
    ),
    _q(
        "sort",
        {"type": "string", "enum": list(store.SORTS), "default": "dollars_at_risk"},
        "dollars_at_risk (most first) or age (oldest first)",
    ),
    _q("order", {"type": "string", "enum": list(store.ORDERS)}, "reverse the sort's default direction"),
]
_PAGING = [
    _q("page", {"type": "integer", "minimum": 1, "maximum": 10000, "default": 1}, "1-based page"),
    _q("page_size", {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}, "items per page"),
]

_WORKFLOW = {
    "type": "object",
    "required": ["engine_state", "status", "workflow_status", "assignee", "updated_at", "updated_by"],
    "properties": {
        "engine_state": {"type": "string", "enum": list(ALERT_STATES)},
        "status": {"type": "string", "enum": list(store.DISPLAY_STATUSES)},
        "workflow_status": {"type": "string", "enum": list(store.WORKFLOW_STATUSES)},
        "assignee": _NULLABLE_STR,
        "updated_at": {"type": ["string", "null"], "format": "date-time"},
        "updated_by": _NULLABLE_STR,
    },
}

_LIST_ITEM = {
    "type": "object",
    "required": [
        "alert_id",
        "work_queue",
        "reason_code",
        "severity",
        "payer_class",
        "service_date",
        "code",
        "revenue_at_risk",
        "engine_state",
        "status",
        "workflow_status",
        "assignee",
        "rendering_npi",
        "first_seen_at",
        "updated_at",
        "resolved_at",
        "age_seconds",
        "message",
    ],
    "properties": {
        "alert_id": {"type": "string"},
        "work_queue": {"type": "string", "enum": list(WORK_QUEUES)},
        "reason_code": {"type": "string"},
        "severity": _NULLABLE_STR,
        "payer_class": _NULLABLE_STR,
        "service_date": {"type": ["string", "null"], "format": "date"},
        "code": _NULLABLE_STR,
        "revenue_at_risk": {"type": "number"},
        "engine_state": {"type": "string", "enum": list(ALERT_STATES)},
        "status": {"type": "string", "enum": list(store.DISPLAY_STATUSES)},
        "workflow_status": {"type": "string", "enum": list(store.WORKFLOW_STATUSES)},
        "assignee": _NULLABLE_STR,
        "rendering_npi": _NULLABLE_STR,
        "first_seen_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "resolved_at": {"type": ["string", "null"], "format": "date-time"},
        "age_seconds": {"type": "number", "minimum": 0},
        "message": _NULLABLE_STR,
    },
}

_OVERVIEW = {
    "type": "object",
    "required": [
        "queue",
        "open_items",
        "dollars_at_risk",
        "oldest_item",
        "aging",
        "done_still_failing",
        "resolved_today",
    ],
    "properties": {
        "queue": {"type": "string", "enum": list(WORK_QUEUES)},
        "open_items": {"type": "integer", "minimum": 0},
        "dollars_at_risk": {"type": "number"},
        "oldest_item": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["alert_id", "first_seen_at", "age_seconds"],
                    "properties": {
                        "alert_id": {"type": "string"},
                        "first_seen_at": {"type": "string", "format": "date-time"},
                        "age_seconds": {"type": "number", "minimum": 0},
                    },
                },
            ]
        },
        "aging": {
            "type": "object",
            "required": ["lt_1d", "d1_3", "d3_7", "gt_7d"],
            "description": "open items by age: <1 day, 1-3 days, 3-7 days, >7 days",
            "properties": {k: {"type": "integer", "minimum": 0} for k in ("lt_1d", "d1_3", "d3_7", "gt_7d")},
        },
        "done_still_failing": {"type": "integer", "minimum": 0},
        "resolved_today": {"type": "integer", "minimum": 0},
    },
}

_NOTE = {
    "type": "object",
    "required": ["note_id", "author", "body", "created_at"],
    "properties": {
        "note_id": {"type": "integer"},
        "author": {"type": "string"},
        "body": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
    },
}

_ITEM = {
    "type": "object",
    "required": [
        "alert_id",
        "revision",
        "engine_state",
        "final",
        "reason_code",
        "severity",
        "work_queue",
        "message",
        "suggested_fix",
        "predicted_denial",
        "patient_id",
        "encounter_id",
        "service_date",
        "payer_class",
        "code",
        "line_id",
        "revenue_at_risk",
        "source_event_ids",
        "details",
        "first_seen_at",
        "updated_at",
        "resolved_at",
        "age_seconds",
        "workflow",
        "charge_lines",
        "revisions",
        "notes",
    ],
    "properties": {
        "alert_id": {"type": "string"},
        "revision": {"type": "integer"},
        "engine_state": {"type": "string", "enum": list(ALERT_STATES)},
        "final": {"type": "boolean"},
        "reason_code": {"type": "string"},
        "severity": _NULLABLE_STR,
        "work_queue": {"type": "string", "enum": list(WORK_QUEUES)},
        "message": _NULLABLE_STR,
        "suggested_fix": _NULLABLE_STR,
        "predicted_denial": {
            "type": "object",
            "required": ["carc", "rarc"],
            "properties": {"carc": _NULLABLE_STR, "rarc": _NULLABLE_STR},
        },
        "patient_id": _NULLABLE_STR,
        "encounter_id": _NULLABLE_STR,
        "service_date": _NULLABLE_STR,
        "payer_class": _NULLABLE_STR,
        "code": _NULLABLE_STR,
        "line_id": _NULLABLE_STR,
        "revenue_at_risk": {"type": ["number", "null"]},
        "source_event_ids": {"type": "array", "items": {"type": "string"}},
        "details": {"type": "object"},
        "first_seen_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "resolved_at": {"type": ["string", "null"], "format": "date-time"},
        "age_seconds": {"type": "number", "minimum": 0},
        "workflow": {"$ref": "#/components/schemas/Workflow"},
        "charge_lines": {
            "type": "array",
            "description": "the charge lines it holds (contract §3 records)",
            "items": {
                "type": "object",
                "required": ["line_id", "revision", "state"],
                "properties": {
                    "line_id": {"type": "string"},
                    "revision": {"type": "integer"},
                    "state": {"type": "string", "enum": list(LINE_STATES)},
                },
            },
        },
        "revisions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["revision", "state", "at", "severity", "revenue_at_risk", "final", "message"],
                "properties": {
                    "revision": {"type": "integer"},
                    "state": {"type": "string", "enum": list(ALERT_STATES)},
                    "at": {"type": "string", "format": "date-time"},
                    "severity": _NULLABLE_STR,
                    "revenue_at_risk": {"type": ["number", "null"]},
                    "final": {"type": "boolean"},
                    "message": _NULLABLE_STR,
                },
            },
        },
        "notes": {"type": "array", "items": {"$ref": "#/components/schemas/Note"}},
    },
}

_SESSION = {
    "type": "object",
    "required": ["username", "queues", "csrf_token", "expires_at"],
    "properties": {
        "username": {"type": "string"},
        "queues": {"type": "array", "items": {"type": "string", "enum": list(WORK_QUEUES)}},
        "csrf_token": {"type": "string"},
        "expires_at": {"type": "string", "format": "date-time"},
    },
}


def _json_body(schema: dict) -> dict:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def openapi_document() -> dict:
    auth_errors = {"401": _E401, "405": _E405}
    item_errors = {**auth_errors, "403": _E403, "404": _E404}
    action_errors = {**item_errors, "400": _E400, "413": _E413, "422": _E422}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chargecap work queue",
            "version": "1",
            "description": "Correction alerts as work items: overview, lists, items and workflow "
            "actions. Sign in with POST /api/v1/session; send the session cookie with "
            "every call and the session's csrf_token as X-CSRF-Token on every POST and "
            "DELETE. docs/work-queue.md explains the data model and the statuses.",
        },
        "servers": [{"url": "/"}],
        "security": [{"session": []}],
        "paths": {
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "security": [],
                    "summary": "Whether the service reaches its database",
                    "responses": {
                        "200": _resp("Healthy", "Health"),
                        "503": _resp("The database does not answer", "Health"),
                        "405": _E405,
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "security": [],
                    "summary": "Prometheus metrics (docs/work-queue.md, Metrics); no ids in labels",
                    "responses": {
                        "200": {
                            "description": "The Prometheus text format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "405": _E405,
                    },
                }
            },
            "/api/v1/session": {
                "post": {
                    "operationId": "signIn",
                    "security": [],
                    "summary": "Sign in",
                    "requestBody": _json_body(
                        {
                            "type": "object",
                            "required": ["username", "password"],
                            "properties": {"username": {"type": "string"}, "password": {"type": "string"}},
                        }
                    ),
                    "responses": {
                        "200": _resp(
                            "Signed in; the session cookie is set",
                            "Session",
                            {"Set-Cookie": {"schema": {"type": "string"}}},
                        ),
                        "400": _E400,
                        "401": _E401,
                        "405": _E405,
                        "413": _E413,
                        "422": _E422,
                        "429": _resp(
                            "Too many failed sign-ins for this name",
                            "Error",
                            {"Retry-After": {"schema": {"type": "string"}}},
                        ),
                    },
                },
                "get": {
                    "operationId": "currentSession",
                    "summary": "The signed-in user, queues and CSRF token",
                    "responses": {"200": _resp("The session", "Session"), **auth_errors},
                },
                "delete": {
                    "operationId": "signOut",
                    "summary": "Sign out",
                    "parameters": [_CSRF],
                    "responses": {"204": {"description": "Signed out"}, **auth_errors, "403": _E403},
                },
            },
            "/api/v1/queues": {
                "get": {
                    "operationId": "listQueues",
                    "summary": "Overview of every queue the user belongs to",
                    "responses": {"200": _resp("Overviews", "QueueOverviews"), **auth_errors},
                }
            },
            "/api/v1/queues/{queue}": {
                "get": {
                    "operationId": "getQueue",
                    "summary": "One queue's overview",
                    "parameters": [_QUEUE],
                    "responses": {"200": _resp("Overview", "QueueOverview"), **item_errors, "400": _E400},
                }
            },
            "/api/v1/queues/{queue}/items": {
                "get": {
                    "operationId": "listItems",
                    "summary": "A queue's items, filtered, sorted, paginated",
                    "parameters": [_QUEUE, *_FILTERS, *_PAGING],
                    "responses": {"200": _resp("A page of items", "ItemPage"), **item_errors, "400": _E400},
                }
            },
            "/api/v1/queues/{queue}/items.csv": {
                "get": {
                    "operationId": "exportItems",
                    "summary": f"The filtered, sorted list as CSV (at most {store.CSV_MAX_ROWS} rows)",
                    "parameters": [_QUEUE, *_FILTERS],
                    "responses": {
                        "200": {
                            "description": "CSV with a header row",
                            "headers": {"Content-Disposition": {"schema": {"type": "string"}}},
                            "content": {"text/csv": {"schema": {"type": "string"}}},
                        },
                        **item_errors,
                        "400": _E400,
                    },
                }
            },
            "/api/v1/items/{alert_id}": {
                "get": {
                    "operationId": "getItem",
                    "summary": "One item (recorded in the access audit)",
                    "parameters": [_ALERT_ID],
                    "responses": {"200": _resp("The item", "Item"), **item_errors},
                }
            },
            "/api/v1/items/{alert_id}/status": {
                "post": {
                    "operationId": "setStatus",
                    "summary": "Set the workflow status",
                    "parameters": [_ALERT_ID, _CSRF],
                    "requestBody": _json_body(
                        {
                            "type": "object",
                            "required": ["status"],
                            "properties": {
                                "status": {"type": "string", "enum": list(store.WORKFLOW_STATUSES)}
                            },
                        }
                    ),
                    "responses": {"200": _resp("The workflow now", "Workflow"), **action_errors},
                }
            },
            "/api/v1/items/{alert_id}/assign": {
                "post": {
                    "operationId": "assignItem",
                    "summary": "Assign to a member of the queue (null: unassign)",
                    "parameters": [_ALERT_ID, _CSRF],
                    "requestBody": _json_body(
                        {
                            "type": "object",
                            "required": ["assignee"],
                            "properties": {
                                "assignee": {"type": ["string", "null"], "minLength": 1, "maxLength": 64}
                            },
                        }
                    ),
                    "responses": {"200": _resp("The workflow now", "Workflow"), **action_errors},
                }
            },
            "/api/v1/items/{alert_id}/notes": {
                "post": {
                    "operationId": "addNote",
                    "summary": "Add a note",
                    "parameters": [_ALERT_ID, _CSRF],
                    "requestBody": _json_body(
                        {
                            "type": "object",
                            "required": ["body"],
                            "properties": {
                                "body": {"type": "string", "minLength": 1, "maxLength": store.NOTE_MAX}
                            },
                        }
                    ),
                    "responses": {"201": _resp("The note", "Note"), **action_errors},
                }
            },
        },
        "components": {
            "securitySchemes": {"session": {"type": "apiKey", "in": "cookie", "name": "chargecap_session"}},
            "schemas": {
                "Error": _ERROR,
                "Health": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"type": "string"}},
                },
                "Session": _SESSION,
                "QueueOverview": _OVERVIEW,
                "QueueOverviews": {
                    "type": "object",
                    "required": ["queues"],
                    "properties": {
                        "queues": {"type": "array", "items": {"$ref": "#/components/schemas/QueueOverview"}}
                    },
                },
                "ItemPage": {
                    "type": "object",
                    "required": ["queue", "total", "page", "page_size", "items"],
                    "properties": {
                        "queue": {"type": "string"},
                        "total": {"type": "integer", "minimum": 0},
                        "page": {"type": "integer"},
                        "page_size": {"type": "integer"},
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/ListItem"}},
                    },
                },
                "ListItem": _LIST_ITEM,
                "Item": _ITEM,
                "Workflow": _WORKFLOW,
                "Note": _NOTE,
            },
        },
    }
