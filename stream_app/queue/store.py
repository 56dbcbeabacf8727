"""The API's reads and workflow actions on PostgreSQL, each with its access-audit row.

The engine's state (``alert.state``) stays authoritative; the people's workflow status is
beside it. What a person sees as an item's status (``status``):

* the engine resolved it → ``resolved_by_correction`` (it leaves the active list);
* open, and a person marked it done → ``done_still_failing``;
* open otherwise → the workflow status (``new``, ``in_progress``, ``waiting_*``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

WORKFLOW_STATUSES = ("new", "in_progress", "waiting_clinician", "waiting_pharmacy", "waiting_payer", "done")
DISPLAY_STATUSES = (
    "new",
    "in_progress",
    "waiting_clinician",
    "waiting_pharmacy",
    "waiting_payer",
    "done_still_failing",
    "resolved_by_correction",
)
STATUS_FILTERS = ("active", "all", *DISPLAY_STATUSES)
SORTS = ("dollars_at_risk", "age")
ORDERS = ("asc", "desc")
NOTE_MAX = 4000
CSV_MAX_ROWS = 100_000

_DISPLAY = sql.SQL(
    "CASE WHEN a.state = 'resolved' THEN 'resolved_by_correction' "
    "WHEN w.status = 'done' THEN 'done_still_failing' ELSE coalesce(w.status, 'new') END"
)


@dataclass(frozen=True)
class ListQuery:
    queue: str
    reason_code: str | None = None
    payer_class: str | None = None
    rendering_npi: str | None = None
    service_date_from: date | None = None
    service_date_to: date | None = None
    status: str = "active"
    assignee: str | None = None
    changed_since: datetime | None = None
    search: str | None = None
    sort: str = "dollars_at_risk"
    order: str | None = None
    page: int = 1
    page_size: int = 50


async def audit(
    conn: psycopg.AsyncConnection,
    username: str,
    action: str,
    alert_id: str | None = None,
    queue: str | None = None,
    detail: dict | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO access_audit (username, action, alert_id, work_queue, detail) "
        "VALUES (%s, %s, %s, %s, %s)",
        (username, action, alert_id, queue, Jsonb(detail or {})),
    )


def _iso(v: Any) -> Any:
    if isinstance(v, datetime | date):
        return v.isoformat()
    return v


async def overview(conn: psycopg.AsyncConnection, queue: str, today_start: datetime) -> dict:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        """SELECT count(*) AS open_items,
             coalesce(sum(revenue_at_risk), 0)::float8 AS dollars_at_risk,
             count(*) FILTER (WHERE first_seen_at > now() - interval '1 day') AS lt_1d,
             count(*) FILTER (WHERE first_seen_at <= now() - interval '1 day'
                                AND first_seen_at > now() - interval '3 days') AS d1_3,
             count(*) FILTER (WHERE first_seen_at <= now() - interval '3 days'
                                AND first_seen_at > now() - interval '7 days') AS d3_7,
             count(*) FILTER (WHERE first_seen_at <= now() - interval '7 days') AS gt_7d
           FROM alert WHERE work_queue = %s AND state = 'open'""",
        (queue,),
    )
    agg = await cur.fetchone()
    # Few items are marked done: join from those rather than from every open alert.
    await cur.execute(
        """SELECT count(*) AS n FROM alert_workflow w JOIN alert a USING (alert_id)
           WHERE w.status = 'done' AND a.work_queue = %s AND a.state = 'open'""",
        (queue,),
    )
    agg["done_still_failing"] = (await cur.fetchone())["n"]
    await cur.execute(
        """SELECT alert_id, first_seen_at, extract(epoch FROM now() - first_seen_at)::float8 AS age_seconds
           FROM alert WHERE work_queue = %s AND state = 'open'
           ORDER BY first_seen_at, alert_id LIMIT 1""",
        (queue,),
    )
    oldest = await cur.fetchone()
    await cur.execute(
        "SELECT count(*) AS n FROM alert WHERE work_queue = %s AND state = 'resolved' AND resolved_at >= %s",
        (queue, today_start),
    )
    resolved_today = (await cur.fetchone())["n"]
    return {
        "queue": queue,
        "open_items": agg["open_items"],
        "dollars_at_risk": round(agg["dollars_at_risk"], 2),
        "oldest_item": None
        if oldest is None
        else {
            "alert_id": oldest["alert_id"],
            "first_seen_at": oldest["first_seen_at"].isoformat(),
            "age_seconds": max(oldest["age_seconds"], 0.0),
        },
        "aging": {"lt_1d": agg["lt_1d"], "d1_3": agg["d1_3"], "d3_7": agg["d3_7"], "gt_7d": agg["gt_7d"]},
        "done_still_failing": agg["done_still_failing"],
        "resolved_today": resolved_today,
    }


def _where(q: ListQuery) -> tuple[sql.Composable, dict, bool]:
    """WHERE clause, parameters, and whether it needs the charge_line join."""
    parts = [sql.SQL("a.work_queue = %(queue)s")]
    params: dict[str, Any] = {"queue": q.queue}
    needs_line = False
    if q.reason_code:
        parts.append(sql.SQL("a.reason_code = %(reason_code)s"))
        params["reason_code"] = q.reason_code
    if q.payer_class:
        parts.append(sql.SQL("a.payer_class = %(payer_class)s"))
        params["payer_class"] = q.payer_class
    if q.rendering_npi:
        parts.append(sql.SQL("l.rendering_npi = %(rendering_npi)s"))
        params["rendering_npi"] = q.rendering_npi
        needs_line = True
    if q.service_date_from:
        parts.append(sql.SQL("a.service_date >= %(date_from)s"))
        params["date_from"] = q.service_date_from
    if q.service_date_to:
        parts.append(sql.SQL("a.service_date <= %(date_to)s"))
        params["date_to"] = q.service_date_to
    if q.assignee:
        parts.append(sql.SQL("w.assignee = %(assignee)s"))
        params["assignee"] = q.assignee
    if q.search:
        parts.append(
            sql.SQL(
                "(a.alert_id = %(search)s OR a.payload->>'patient_id' = %(search)s"
                " OR a.payload->>'encounter_id' = %(search)s)"
            )
        )
        params["search"] = q.search
    if q.changed_since:
        # A new engine revision or a person's change: what a hospital's own system polls for.
        parts.append(sql.SQL("(a.updated_at >= %(changed_since)s OR w.updated_at >= %(changed_since)s)"))
        params["changed_since"] = q.changed_since
    status = q.status
    if status == "active":
        parts.append(sql.SQL("a.state = 'open'"))
    elif status == "resolved_by_correction":
        parts.append(sql.SQL("a.state = 'resolved'"))
    elif status == "done_still_failing":
        parts.append(sql.SQL("a.state = 'open' AND w.status = 'done'"))
    elif status == "new":
        parts.append(sql.SQL("a.state = 'open' AND coalesce(w.status, 'new') = 'new'"))
    elif status != "all":
        parts.append(sql.SQL("a.state = 'open' AND w.status = %(wf_status)s"))
        params["wf_status"] = status
    return sql.SQL(" AND ").join(parts), params, needs_line


def _order(q: ListQuery) -> sql.Composable:
    if q.sort == "age":
        direction = sql.SQL("DESC" if q.order == "desc" else "ASC")  # oldest first by default
        return sql.SQL("a.first_seen_at {d}, a.alert_id {d}").format(d=direction)
    direction = sql.SQL("ASC" if q.order == "asc" else "DESC")  # most dollars first by default
    return sql.SQL("a.revenue_at_risk {d}, a.alert_id {d}").format(d=direction)


_LIST_COLUMNS = sql.SQL(
    """a.alert_id, a.work_queue, a.reason_code, a.severity, a.payer_class, a.service_date, a.code,
       a.revenue_at_risk::float8 AS revenue_at_risk, a.state AS engine_state, {display} AS status,
       w.status AS workflow_status, w.assignee, l.rendering_npi, a.first_seen_at, a.updated_at,
       a.resolved_at, extract(epoch FROM now() - a.first_seen_at)::float8 AS age_seconds,
       a.payload->>'message' AS message"""
).format(display=_DISPLAY)


def _list_row(r: dict) -> dict:
    return {
        "alert_id": r["alert_id"],
        "work_queue": r["work_queue"],
        "reason_code": r["reason_code"],
        "severity": r["severity"],
        "payer_class": r["payer_class"],
        "service_date": _iso(r["service_date"]),
        "code": r["code"],
        "revenue_at_risk": r["revenue_at_risk"],
        "engine_state": r["engine_state"],
        "status": r["status"],
        "workflow_status": r["workflow_status"] or "new",
        "assignee": r["assignee"],
        "rendering_npi": r["rendering_npi"],
        "first_seen_at": r["first_seen_at"].isoformat(),
        "updated_at": r["updated_at"].isoformat(),
        "resolved_at": _iso(r["resolved_at"]),
        "age_seconds": max(r["age_seconds"], 0.0),
        "message": r["message"],
    }


async def list_items(conn: psycopg.AsyncConnection, q: ListQuery) -> dict:
    where, params, needs_line = _where(q)
    needs_workflow = re.search(r"\bw\.", where.as_string(None)) is not None
    cur = conn.cursor(row_factory=dict_row)
    joins = sql.SQL(" ").join(
        [
            sql.SQL("LEFT JOIN alert_workflow w USING (alert_id)") if needs_workflow else sql.SQL(""),
            sql.SQL("LEFT JOIN charge_line l ON l.line_id = a.line_id") if needs_line else sql.SQL(""),
        ]
    )
    await cur.execute(
        sql.SQL("SELECT count(*) AS n FROM alert a {j} WHERE {w}").format(j=joins, w=where), params
    )
    total = (await cur.fetchone())["n"]
    params = {**params, "limit": q.page_size, "offset": (q.page - 1) * q.page_size}
    # The page's keys first (on the index of the sort, joining only what the filters
    # need), then the page's rows with everything shown: a deep page does not join the
    # rows it skips.
    await cur.execute(
        sql.SQL(
            """WITH page AS (
                 SELECT a.alert_id FROM alert a {j} WHERE {w}
                 ORDER BY {o} LIMIT %(limit)s OFFSET %(offset)s)
               SELECT {cols} FROM page JOIN alert a USING (alert_id)
               LEFT JOIN alert_workflow w USING (alert_id)
               LEFT JOIN charge_line l ON l.line_id = a.line_id
               ORDER BY {o}"""
        ).format(cols=_LIST_COLUMNS, j=joins, w=where, o=_order(q)),
        params,
    )
    items = [_list_row(r) for r in await cur.fetchall()]
    return {"queue": q.queue, "total": total, "page": q.page, "page_size": q.page_size, "items": items}


async def iter_items_for_csv(conn: psycopg.AsyncConnection, q: ListQuery):
    where, params, _ = _where(q)
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        sql.SQL(
            """SELECT {cols} FROM alert a LEFT JOIN alert_workflow w USING (alert_id)
           LEFT JOIN charge_line l ON l.line_id = a.line_id
           WHERE {w} ORDER BY {o} LIMIT %(limit)s"""
        ).format(cols=_LIST_COLUMNS, w=where, o=_order(q)),
        {**params, "limit": CSV_MAX_ROWS},
    )
    async for r in cur:
        yield _list_row(r)


async def item_queue(conn: psycopg.AsyncConnection, alert_id: str) -> str | None:
    cur = await conn.execute("SELECT work_queue FROM alert WHERE alert_id = %s", (alert_id,))
    row = await cur.fetchone()
    return row[0] if row else None


async def workflow(conn: psycopg.AsyncConnection, alert_id: str) -> dict:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"""SELECT a.state AS engine_state, {_DISPLAY.as_string(None)} AS status,
                   coalesce(w.status, 'new') AS workflow_status, w.assignee, w.updated_at, w.updated_by
            FROM alert a LEFT JOIN alert_workflow w USING (alert_id) WHERE a.alert_id = %s""",
        (alert_id,),
    )
    r = await cur.fetchone()
    return {
        "engine_state": r["engine_state"],
        "status": r["status"],
        "workflow_status": r["workflow_status"],
        "assignee": r["assignee"],
        "updated_at": _iso(r["updated_at"]),
        "updated_by": r["updated_by"],
    }


async def notes(conn: psycopg.AsyncConnection, alert_id: str) -> list[dict]:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT note_id, author, body, created_at FROM alert_note WHERE alert_id = %s "
        "ORDER BY created_at, note_id",
        (alert_id,),
    )
    return [
        {
            "note_id": r["note_id"],
            "author": r["author"],
            "body": r["body"],
            "created_at": r["created_at"].isoformat(),
        }
        for r in await cur.fetchall()
    ]


async def item(conn: psycopg.AsyncConnection, alert_id: str) -> dict:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        """SELECT alert_id, revision, state, payload, first_seen_at, updated_at, resolved_at,
                  extract(epoch FROM now() - first_seen_at)::float8 AS age_seconds
           FROM alert WHERE alert_id = %s""",
        (alert_id,),
    )
    a = await cur.fetchone()
    p = a["payload"]
    await cur.execute(
        "SELECT revision, state, kafka_ts, payload FROM alert_revision WHERE alert_id = %s ORDER BY revision",
        (alert_id,),
    )
    revisions = [
        {
            "revision": r["revision"],
            "state": r["state"],
            "at": r["kafka_ts"].isoformat(),
            "severity": r["payload"].get("severity"),
            "revenue_at_risk": r["payload"].get("revenue_at_risk"),
            "final": bool(r["payload"].get("final", False)),
            "message": r["payload"].get("message"),
        }
        for r in await cur.fetchall()
    ]
    await cur.execute(
        """SELECT payload FROM charge_line
           WHERE line_id = %(line_id)s OR source_event_ids && %(sources)s::text[]
           ORDER BY line_id""",
        {"line_id": p.get("line_id"), "sources": list(p.get("source_event_ids") or [])},
    )
    lines = [r["payload"] for r in await cur.fetchall()]
    denial = p.get("predicted_denial") or {}
    return {
        "alert_id": a["alert_id"],
        "revision": a["revision"],
        "engine_state": a["state"],
        "final": bool(p.get("final", False)),
        "reason_code": p.get("reason_code"),
        "severity": p.get("severity"),
        "work_queue": p.get("work_queue"),
        "message": p.get("message"),
        "suggested_fix": p.get("suggested_fix"),
        "predicted_denial": {"carc": denial.get("carc"), "rarc": denial.get("rarc")},
        "patient_id": p.get("patient_id"),
        "encounter_id": p.get("encounter_id"),
        "service_date": p.get("service_date"),
        "payer_class": p.get("payer_class"),
        "code": p.get("code"),
        "line_id": p.get("line_id"),
        "revenue_at_risk": p.get("revenue_at_risk"),
        "source_event_ids": list(p.get("source_event_ids") or []),
        "details": p.get("details") or {},
        "first_seen_at": a["first_seen_at"].isoformat(),
        "updated_at": a["updated_at"].isoformat(),
        "resolved_at": _iso(a["resolved_at"]),
        "age_seconds": max(a["age_seconds"], 0.0),
        "workflow": await workflow(conn, alert_id),
        "charge_lines": lines,
        "revisions": revisions,
        "notes": await notes(conn, alert_id),
    }


async def set_workflow(
    conn: psycopg.AsyncConnection,
    alert_id: str,
    by: str,
    *,
    status: str | None = None,
    assignee: str | None = None,
    set_assignee: bool = False,
) -> None:
    await conn.execute(
        """INSERT INTO alert_workflow AS w (alert_id, status, assignee, updated_at, updated_by)
           VALUES (%(id)s, coalesce(%(status)s, CASE WHEN %(assignee)s::text IS NOT NULL
                                                    THEN 'in_progress' ELSE 'new' END),
                   %(assignee)s, now(), %(by)s)
           ON CONFLICT (alert_id) DO UPDATE SET
             status = coalesce(%(status)s,
                               CASE WHEN w.status = 'new' AND %(assignee)s::text IS NOT NULL
                                    THEN 'in_progress' ELSE w.status END),
             assignee = CASE WHEN %(set_assignee)s THEN %(assignee)s ELSE w.assignee END,
             updated_at = now(), updated_by = %(by)s""",
        {
            "id": alert_id,
            "status": status,
            "assignee": assignee if set_assignee else None,
            "set_assignee": set_assignee,
            "by": by,
        },
    )


async def add_note(conn: psycopg.AsyncConnection, alert_id: str, author: str, body: str) -> dict:
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "INSERT INTO alert_note (alert_id, author, body) VALUES (%s, %s, %s) "
        "RETURNING note_id, author, body, created_at",
        (alert_id, author, body),
    )
    r = await cur.fetchone()
    return {
        "note_id": r["note_id"],
        "author": r["author"],
        "body": r["body"],
        "created_at": r["created_at"].isoformat(),
    }


async def user_may_hold(conn: psycopg.AsyncConnection, username: str, queue: str) -> bool:
    cur = await conn.execute(
        "SELECT 1 FROM queue_user WHERE username = %s AND NOT disabled AND %s = ANY(queues)",
        (username, queue),
    )
    return await cur.fetchone() is not None


async def queue_stats(conn: psycopg.AsyncConnection) -> tuple[list[tuple[str, str, int]], dict, dict]:
    cur = await conn.execute(
        f"""SELECT a.work_queue, {_DISPLAY.as_string(None)}, count(*) FROM alert a
            LEFT JOIN alert_workflow w USING (alert_id) WHERE a.state = 'open' GROUP BY 1, 2"""
    )
    rows = [(q, s, n) for q, s, n in await cur.fetchall()]
    cur = await conn.execute(
        """SELECT work_queue, greatest(extract(epoch FROM now() - min(first_seen_at)), 0)::float8,
                  sum(revenue_at_risk)::float8
           FROM alert WHERE state = 'open' GROUP BY 1"""
    )
    oldest, dollars = {}, {}
    for q, age, usd in await cur.fetchall():
        oldest[q], dollars[q] = age, usd
    return rows, oldest, dollars


def today_start(tz_name: str) -> datetime:
    from zoneinfo import ZoneInfo

    now = datetime.now(ZoneInfo(tz_name))
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


async def change_marker(conn: psycopg.AsyncConnection, queues: tuple[str, ...]) -> str:
    """A token that changes whenever an alert of these queues, its workflow or its notes
    change: the live pages poll it (it carries no PHI) and re-read only when it moves."""
    cur = await conn.execute(
        """SELECT (SELECT count(*) FROM alert WHERE work_queue = ANY(%(q)s)),
                  (SELECT max(updated_at) FROM alert WHERE work_queue = ANY(%(q)s)),
                  (SELECT max(w.updated_at) FROM alert_workflow w JOIN alert a USING (alert_id)
                    WHERE a.work_queue = ANY(%(q)s)),
                  (SELECT max(n.note_id) FROM alert_note n JOIN alert a USING (alert_id)
                    WHERE a.work_queue = ANY(%(q)s))""",
        {"q": list(queues)},
    )
    return "|".join("" if v is None else str(v) for v in await cur.fetchone())


async def item_change_marker(conn: psycopg.AsyncConnection, alert_id: str) -> str:
    """As change_marker, for one item."""
    cur = await conn.execute(
        """SELECT a.revision, a.updated_at, w.updated_at,
                  (SELECT max(note_id) FROM alert_note WHERE alert_id = a.alert_id)
           FROM alert a LEFT JOIN alert_workflow w USING (alert_id) WHERE a.alert_id = %s""",
        (alert_id,),
    )
    row = await cur.fetchone()
    return "|".join("" if v is None else str(v) for v in (row or ()))
