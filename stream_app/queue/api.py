"""The queue's JSON API on aiohttp (Faust already brings it; one async stack with the sink).

Every route but ``/healthz``, ``/metrics``, ``/api/v1/openapi.json`` and signing in needs a
signed-in user (401 otherwise); a user reads and acts only on the queues they belong to
(403 otherwise, also for an alert id of another queue); every state-changing request
carries the session's CSRF token (403 otherwise). Every view of an item, of a list, every
export and every action is written to ``access_audit`` in the same transaction as what it
records. The OpenAPI document (openapi.py) describes exactly these routes.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import re
import traceback
from datetime import date, datetime, timedelta

import orjson
import psycopg
from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from stream_app.queue import auth, store
from stream_app.queue.metrics import QueueMetrics
from stream_app.queue.openapi import openapi_document
from stream_app.queue.settings import QueueSettings
from stream_app.vocabulary import PAYER_CLASSES, REASON_CODES, WORK_QUEUES

log = logging.getLogger(__name__)

COOKIE = "chargecap_session"
CSRF_HEADER = "X-CSRF-Token"
API = "/api/v1"
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", f"{API}/openapi.json"),
    ("POST", f"{API}/session"),
}
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}
MAX_PAGE = 10_000
MAX_PAGE_SIZE = 500
ID_MAX = 200
_NPI = re.compile(r"^\d{10}$")

# The HTML pages (pages.py) signing in and their static files are public too.
PUBLIC_PAGES = {("GET", "/sign-in"), ("POST", "/sign-in")}
STATIC = "/static/"

POOL = web.AppKey("pool", AsyncConnectionPool)
SETTINGS = web.AppKey("settings", QueueSettings)
METRICS = web.AppKey("metrics", QueueMetrics)
# Renders an error as an HTML page for the pages' routes: (request, status, message) -> Response.
ERROR_PAGE = web.AppKey("error_page", object)


def is_page(request: web.Request) -> bool:
    """A route of the HTML pages (not the JSON API, health or metrics)."""
    path = request.path
    return not (
        path.startswith((API, STATIC, "/live/"))
        or path in ("/healthz", "/metrics", "/operations/data")
    )


def _page_error(request: web.Request, status: int, message: str) -> web.Response | None:
    render = request.app.get(ERROR_PAGE)
    return render(request, status, message) if render is not None and is_page(request) else None


def _json(data, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def _error(status: int, message: str, field: str | None = None, headers: dict | None = None) -> web.Response:
    body = {"error": message}
    if field:
        body["field"] = field
    return _json(body, status, headers)


class BadRequest(Exception):
    def __init__(self, message: str, field: str | None = None, status: int = 400):
        super().__init__(message)
        self.field = field
        self.status = status


# ------------------------------------------------------------------------ middleware


@web.middleware
async def errors_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except BadRequest as exc:
        return _page_error(request, exc.status, str(exc)) or _error(exc.status, str(exc), exc.field)
    except web.HTTPException as exc:
        if exc.status >= 400 and (page := _page_error(request, exc.status, exc.reason)) is not None:
            return page
        if exc.status >= 400 and exc.content_type != "application/json":
            return _error(
                exc.status, exc.reason, headers={k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            )
        raise
    except Exception as exc:
        # The exception's type and where it was raised, not its message: a database error
        # can quote the values it refused, and those may carry PHI.
        log.error(
            "queue api: internal error %s on %s %s\n%s",
            type(exc).__name__,
            request.method,
            request.match_info.route.resource and request.match_info.route.resource.canonical,
            "".join(traceback.format_tb(exc.__traceback__)),
        )
        return _page_error(request, 500, "internal error") or _error(500, "internal error")


@web.middleware
async def auth_middleware(request: web.Request, handler):
    route = request.match_info.route
    canonical = route.resource.canonical if route.resource is not None else request.path
    if (
        (request.method, canonical) in PUBLIC
        or (request.method, canonical) in PUBLIC_PAGES
        or request.path.startswith(STATIC)
        or route.resource is None
    ):
        return await handler(request)
    settings = request.app[SETTINGS]
    idle = timedelta(minutes=settings.session_idle_minutes)
    max_age = timedelta(hours=settings.session_max_hours)
    new_session = None
    async with request.app[POOL].connection() as conn:
        session = None
        token = request.cookies.get(COOKIE)
        if token:
            session = await auth.resume_session(conn, token, idle, max_age)
        sso_name = request.headers.get(settings.trusted_user_header) if settings.trusted_user_header else None
        if sso_name is not None and (session is None or session.user.username != sso_name):
            # The proxy vouches for the name; a session gives it a CSRF token like any other.
            user = await auth.load_user(conn, sso_name)
            session = None
            if user is not None:
                new_session = session = await auth.create_session(conn, user, idle)
                await store.audit(conn, user.username, "sign_in_sso")
    if session is None:
        if is_page(request):
            # A page sends the browser to the sign-in form, and back here afterwards.
            target = request.rel_url.path_qs if request.method == "GET" else "/"
            raise web.HTTPSeeOther(request.app.router["sign_in_form"].url_for().with_query(next=target))
        return _error(401, "sign in first", headers={"WWW-Authenticate": 'Cookie realm="chargecap-queue"'})
    if request.method in STATE_CHANGING:
        given = request.headers.get(CSRF_HEADER)
        if given is None and request.content_type == "application/x-www-form-urlencoded":
            given = (await request.post()).get("csrf_token")
        if not auth.csrf_matches(session.csrf_token, given if isinstance(given, str) else None):
            await store_audit_refusal(request, session)
            return _page_error(request, 403, "This form was refused: it did not carry this session's "
                               "security token. Reload the page and try again.") or _error(
                403, "missing or wrong CSRF token")
    request["session"] = session
    response = await handler(request)
    if new_session is not None:
        _set_cookie(response, request.app[SETTINGS], new_session)
    return response


@web.middleware
async def headers_middleware(request: web.Request, handler):
    response = await handler(request)
    # PHI must not be kept by browsers or proxies.
    response.headers.setdefault("Cache-Control", "no-store")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    response.headers.setdefault("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
    return response


async def store_audit_refusal(request: web.Request, session: auth.Session) -> None:
    async with request.app[POOL].connection() as conn:
        await store.audit(conn, session.user.username, "csrf_refused", detail={"path": request.path[:200]})


def set_session_cookie(response: web.StreamResponse, settings: QueueSettings, session: auth.Session) -> None:
    _set_cookie(response, settings, session)


def _set_cookie(response: web.StreamResponse, settings: QueueSettings, session: auth.Session) -> None:
    response.set_cookie(
        COOKIE,
        session.token,
        httponly=True,
        samesite="Strict",
        secure=settings.secure_cookie,
        path="/",
        max_age=int(settings.session_max_hours * 3600),
    )


# ------------------------------------------------------------------------ parameter parsing


def _opt(request: web.Request, name: str, max_len: int = 100) -> str | None:
    v = request.query.get(name)
    if v is None or v == "":
        return None
    if len(v) > max_len:
        raise BadRequest(f"{name} is too long", name)
    if "\x00" in v:
        raise BadRequest(f"{name} must not contain NUL characters", name)
    return v


def _choice(request: web.Request, name: str, allowed, default=None):
    v = _opt(request, name)
    if v is None:
        return default
    if v not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)}", name)
    return v


def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    v = _opt(request, name, 10)
    if v is None:
        return default
    if not v.isdigit() or not lo <= int(v) <= hi:
        raise BadRequest(f"{name} must be an integer from {lo} to {hi}", name)
    return int(v)


def _date(request: web.Request, name: str) -> date | None:
    v = _opt(request, name, 10)
    if v is None:
        return None
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", v):
            raise ValueError
        return date.fromisoformat(v)
    except ValueError as exc:
        raise BadRequest(f"{name} must be a date YYYY-MM-DD", name) from exc


def _datetime(request: web.Request, name: str) -> datetime | None:
    v = _opt(request, name, 40)
    if v is None:
        return None
    try:
        parsed = datetime.fromisoformat(v.replace("Z", "+00:00"))
        if parsed.tzinfo is None or "T" not in v:
            raise ValueError
        return parsed
    except ValueError as exc:
        raise BadRequest(f"{name} must be an RFC 3339 date-time with an offset", name) from exc


def list_query(request: web.Request, queue: str, *, paged: bool = True) -> store.ListQuery:
    npi = _opt(request, "rendering_npi", 10)
    if npi is not None and not _NPI.match(npi):
        raise BadRequest("rendering_npi must be 10 digits", "rendering_npi")
    return store.ListQuery(
        queue=queue,
        reason_code=_choice(request, "reason_code", REASON_CODES),
        payer_class=_choice(request, "payer_class", PAYER_CLASSES),
        rendering_npi=npi,
        service_date_from=_date(request, "service_date_from"),
        service_date_to=_date(request, "service_date_to"),
        status=_choice(request, "status", store.STATUS_FILTERS, "active"),
        assignee=_opt(request, "assignee", auth.USERNAME_MAX),
        changed_since=_datetime(request, "changed_since"),
        search=_opt(request, "search", ID_MAX),
        sort=_choice(request, "sort", store.SORTS, "dollars_at_risk"),
        order=_choice(request, "order", store.ORDERS),
        page=_int(request, "page", 1, 1, MAX_PAGE) if paged else 1,
        page_size=_int(request, "page_size", 50, 1, MAX_PAGE_SIZE) if paged else MAX_PAGE_SIZE,
    )


async def _json_body(request: web.Request) -> dict:
    if request.content_type != "application/json":
        raise BadRequest("the body must be application/json")
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise BadRequest("the body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    return body


def session_of(request: web.Request) -> auth.Session:
    return request["session"]


def queue_of_path(request: web.Request) -> str:
    queue = request.match_info["queue"]
    if queue not in WORK_QUEUES:
        raise BadRequest(f"no work queue {queue!r}", "queue", status=404)
    if queue not in session_of(request).user.queues:
        raise BadRequest(f"you are not a member of the {queue} queue", "queue", status=403)
    return queue


async def item_of_path(conn, request: web.Request) -> tuple[str, str]:
    alert_id = request.match_info["alert_id"]
    if len(alert_id) > ID_MAX or "\x00" in alert_id:
        raise BadRequest("no such item", "alert_id", status=404)
    queue = await store.item_queue(conn, alert_id)
    if queue is None:
        raise BadRequest("no such item", "alert_id", status=404)
    if queue not in session_of(request).user.queues:
        await store.audit(conn, session_of(request).user.username, "denied", alert_id, queue)
        raise BadRequest("this item belongs to a queue you are not a member of", "alert_id", status=403)
    return alert_id, queue


# ------------------------------------------------------------------------ handlers


async def healthz(request: web.Request) -> web.Response:
    try:
        async with request.app[POOL].connection() as conn:
            await conn.execute("SELECT 1")
    except psycopg.Error:
        return _json({"status": "database unavailable"}, 503)
    return _json({"status": "ok"})


async def metrics_endpoint(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    async with request.app[POOL].connection() as conn:
        rows, oldest, dollars = await store.queue_stats(conn)
    m.set_queue_stats(rows, oldest, dollars)
    return web.Response(
        body=m.exposition(),
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def openapi(request: web.Request) -> web.Response:
    return _json(openapi_document())


def _session_body(session: auth.Session) -> dict:
    return {
        "username": session.user.username,
        "queues": list(session.user.queues),
        "csrf_token": session.csrf_token,
        "expires_at": session.expires_at.isoformat(),
    }


class SignInRefused(Exception):
    def __init__(self, status: int, message: str, headers: dict):
        super().__init__(message)
        self.status = status
        self.headers = headers


def check_credentials(username, password) -> tuple[str, str]:
    if not isinstance(username, str) or not isinstance(password, str) or not username or not password:
        raise BadRequest("username and password are required strings", status=422)
    if len(username) > auth.USERNAME_MAX or len(password) > 1024:
        raise BadRequest("username or password too long", status=422)
    if "\x00" in username or "\x00" in password:
        raise BadRequest("username and password must not contain NUL characters", status=422)
    return username, password


async def open_session(request: web.Request, username: str, password: str) -> auth.Session:
    """Throttling, password check, the new session and its audit row; SignInRefused if not."""
    settings = request.app[SETTINGS]
    async with request.app[POOL].connection() as conn:
        wait = await auth.locked_for(conn, username)
        if wait > 0:
            await store.audit(conn, username, "sign_in_throttled")
            raise SignInRefused(
                429,
                "too many failed sign-ins; try again later",
                {"Retry-After": str(max(1, math.ceil(wait)))},
            )
        user = await auth.verify_login(conn, username, password)
        if user is None:
            await store.audit(conn, username, "sign_in_failed")
            raise SignInRefused(
                401, "wrong user name or password", {"WWW-Authenticate": 'Cookie realm="chargecap-queue"'}
            )
        session = await auth.create_session(conn, user, timedelta(minutes=settings.session_idle_minutes))
        await store.audit(conn, user.username, "sign_in")
    return session


async def close_session(request: web.Request, response: web.StreamResponse) -> None:
    async with request.app[POOL].connection() as conn:
        token = request.cookies.get(COOKIE)
        if token:
            await auth.end_session(conn, token)
        await store.audit(conn, session_of(request).user.username, "sign_out")
    response.del_cookie(COOKIE, path="/")


async def sign_in(request: web.Request) -> web.Response:
    body = await _json_body(request)
    username, password = check_credentials(body.get("username"), body.get("password"))
    try:
        session = await open_session(request, username, password)
    except SignInRefused as exc:
        return _error(exc.status, str(exc), headers=exc.headers)
    response = _json(_session_body(session))
    _set_cookie(response, request.app[SETTINGS], session)
    return response


async def who_am_i(request: web.Request) -> web.Response:
    return _json(_session_body(session_of(request)))


async def sign_out(request: web.Request) -> web.Response:
    response = web.Response(status=204)
    await close_session(request, response)
    return response


async def queues_overview(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS]
    today = store.today_start(settings.timezone)
    async with request.app[POOL].connection() as conn:
        out = [await store.overview(conn, q, today) for q in session_of(request).user.queues]
    return _json({"queues": out})


async def queue_overview(request: web.Request) -> web.Response:
    queue = queue_of_path(request)
    async with request.app[POOL].connection() as conn:
        return _json(await store.overview(conn, queue, store.today_start(request.app[SETTINGS].timezone)))


def filters_for_audit(q: store.ListQuery) -> dict:
    return {
        k: (v.isoformat() if isinstance(v, date | datetime) else v)
        for k, v in q.__dict__.items()
        if v is not None and k != "queue"
    }


async def queue_items(request: web.Request) -> web.Response:
    queue = queue_of_path(request)
    q = list_query(request, queue)
    async with request.app[POOL].connection() as conn:
        result = await store.list_items(conn, q)
        await store.audit(
            conn,
            session_of(request).user.username,
            "view_list",
            queue=queue,
            detail={**filters_for_audit(q), "returned": len(result["items"])},
        )
    return _json(result)


CSV_COLUMNS = (
    "alert_id",
    "work_queue",
    "reason_code",
    "severity",
    "status",
    "assignee",
    "payer_class",
    "rendering_npi",
    "service_date",
    "code",
    "revenue_at_risk",
    "age_days",
    "first_seen_at",
    "message",
)


def _csv_cell(v) -> str:
    s = "" if v is None else str(v)
    # Spreadsheets run cells that start with these as formulas (CSV injection).
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


async def queue_items_csv(request: web.Request) -> web.StreamResponse:
    queue = queue_of_path(request)
    q = list_query(request, queue, paged=False)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    n = 0
    async with request.app[POOL].connection() as conn:
        async for row in store.iter_items_for_csv(conn, q):
            row["age_days"] = round(row["age_seconds"] / 86400, 2)
            writer.writerow([_csv_cell(row[c]) for c in CSV_COLUMNS])
            n += 1
        await store.audit(
            conn,
            session_of(request).user.username,
            "export_csv",
            queue=queue,
            detail={**filters_for_audit(q), "rows": n},
        )
    return web.Response(
        text=buf.getvalue(),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="chargecap-{queue}.csv"'},
    )


async def get_item(request: web.Request) -> web.Response:
    async with request.app[POOL].connection() as conn:
        alert_id, queue = await item_of_path(conn, request)
        async with conn.transaction():
            data = await store.item(conn, alert_id)
            await store.audit(conn, session_of(request).user.username, "view_item", alert_id, queue)
    return _json(data)


async def change_status(request: web.Request, status) -> dict:
    """Sets the workflow status of the item of the path; its workflow afterwards."""
    if status not in store.WORKFLOW_STATUSES:
        raise BadRequest(f"status must be one of {', '.join(store.WORKFLOW_STATUSES)}", "status", 422)
    user = session_of(request).user.username
    async with request.app[POOL].connection() as conn:
        alert_id, queue = await item_of_path(conn, request)
        async with conn.transaction():
            await store.set_workflow(conn, alert_id, user, status=status)
            await store.audit(conn, user, "set_status", alert_id, queue, {"status": status})
            return await store.workflow(conn, alert_id)


async def change_assignee(request: web.Request, assignee) -> dict:
    """Assigns the item of the path (None unassigns); its workflow afterwards."""
    if assignee is not None and (
        not isinstance(assignee, str) or not 1 <= len(assignee) <= auth.USERNAME_MAX or "\x00" in assignee
    ):
        raise BadRequest("assignee must be a user name or null", "assignee", 422)
    user = session_of(request).user.username
    async with request.app[POOL].connection() as conn:
        alert_id, queue = await item_of_path(conn, request)
        if assignee is not None and not await store.user_may_hold(conn, assignee, queue):
            raise BadRequest(f"{assignee!r} is not a member of the {queue} queue", "assignee", 422)
        async with conn.transaction():
            await store.set_workflow(conn, alert_id, user, assignee=assignee, set_assignee=True)
            await store.audit(conn, user, "assign", alert_id, queue, {"assignee": assignee})
            return await store.workflow(conn, alert_id)


async def write_note(request: web.Request, text) -> dict:
    """Adds a note to the item of the path; the note."""
    if not isinstance(text, str) or not text.strip() or len(text) > store.NOTE_MAX:
        raise BadRequest(
            f"body must be a non-empty string of at most {store.NOTE_MAX} characters", "body", 422
        )
    if "\x00" in text:
        raise BadRequest("body must not contain NUL characters", "body", 422)
    user = session_of(request).user.username
    async with request.app[POOL].connection() as conn:
        alert_id, queue = await item_of_path(conn, request)
        async with conn.transaction():
            note = await store.add_note(conn, alert_id, user, text)
            await store.audit(conn, user, "add_note", alert_id, queue, {"note_id": note["note_id"]})
    return note


async def set_status(request: web.Request) -> web.Response:
    body = await _json_body(request)
    return _json(await change_status(request, body.get("status")))


async def assign(request: web.Request) -> web.Response:
    body = await _json_body(request)
    if "assignee" not in body:
        raise BadRequest("assignee is required (a user name, or null to unassign)", "assignee", 422)
    return _json(await change_assignee(request, body["assignee"]))


async def add_note(request: web.Request) -> web.Response:
    body = await _json_body(request)
    return _json(await write_note(request, body.get("body")), 201)


def build_app(settings: QueueSettings, pool: AsyncConnectionPool, metrics: QueueMetrics) -> web.Application:
    app = web.Application(
        middlewares=[headers_middleware, errors_middleware, auth_middleware], client_max_size=64 * 1024
    )
    app[POOL] = pool
    app[SETTINGS] = settings
    app[METRICS] = metrics
    r = app.router
    r.add_get("/healthz", healthz, allow_head=False)
    r.add_get("/metrics", metrics_endpoint, allow_head=False)
    r.add_get(f"{API}/openapi.json", openapi, allow_head=False)
    r.add_post(f"{API}/session", sign_in)
    r.add_get(f"{API}/session", who_am_i, allow_head=False)
    r.add_delete(f"{API}/session", sign_out)
    r.add_get(f"{API}/queues", queues_overview, allow_head=False)
    r.add_get(f"{API}/queues/{{queue}}", queue_overview, allow_head=False)
    r.add_get(f"{API}/queues/{{queue}}/items", queue_items, allow_head=False)
    r.add_get(f"{API}/queues/{{queue}}/items.csv", queue_items_csv, allow_head=False)
    r.add_get(f"{API}/items/{{alert_id}}", get_item, allow_head=False)
    r.add_post(f"{API}/items/{{alert_id}}/status", set_status)
    r.add_post(f"{API}/items/{{alert_id}}/assign", assign)
    r.add_post(f"{API}/items/{{alert_id}}/notes", add_note)
    return app
