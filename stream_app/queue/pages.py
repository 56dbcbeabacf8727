"""The pages billers and leads work in, server-rendered by the queue service (Jinja2).

They sit behind the API's own middlewares (api.py): the same session cookie, the same
per-queue authorisation, the same CSRF check (a ``csrf_token`` field in every form) and the
same access audit; every read and action calls the API's functions and store.py's queries.
Pages are never cached (``Cache-Control: no-store``, set for every response), so after
signing out the back button shows the sign-in form, not an item.

Live updates: a page that shows alerts carries the URL of a change marker (``/live/…``, no
PHI); a small script polls it every two seconds and, when it moves, re-reads the page and
swaps its ``data-live`` regions (never the forms being typed in).
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from urllib.parse import urlencode

import jinja2
import orjson
from aiohttp import web

from stream_app.queue import api, operations, store
from stream_app.vocabulary import PAYER_CLASSES, REASON_CODES, WORK_QUEUES

WEB = Path(__file__).resolve().parent / "web"
# Only the service's own files: no inline script or style, nothing from elsewhere.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
TEMPLATES = web.AppKey("templates", jinja2.Environment)
DASHBOARD = web.AppKey("dashboard", object)
LIST_FIELDS = (
    "reason_code",
    "payer_class",
    "rendering_npi",
    "service_date_from",
    "service_date_to",
    "status",
    "assignee",
    "search",
    "sort",
    "order",
    "page_size",
)
PAGE_SIZES = (25, 50, 100, 200)
HOURS = operations.WINDOWS_HOURS


def _money(v) -> str:
    return "—" if v is None else f"${float(v):,.2f}"


def _age(seconds) -> str:
    if seconds is None:
        return "—"
    s = int(seconds)
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d} d {h} h"
    if h:
        return f"{h} h {m} min"
    return f"{m} min" if m else f"{s} s"


def _words(v) -> str:
    return "" if v is None else str(v).replace("_", " ")


def _static_url(name: str) -> str:
    # The content's hash in the URL: a new release is never served from an old cache.
    data = (WEB / "static" / name).read_bytes()
    return f"/static/{name}?v={hashlib.sha256(data).hexdigest()[:12]}"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(WEB / "templates"),
        autoescape=jinja2.select_autoescape(["html"], default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(money=_money, age=_age, words=_words)
    env.globals["static"] = functools.cache(_static_url)
    return env


def render(request: web.Request, template: str, status: int = 200, **context) -> web.Response:
    session = request.get("session")
    html = (
        request.app[TEMPLATES]
        .get_template(template)
        .render(
            user=session.user if session else None,
            csrf_token=session.csrf_token if session else "",
            path=request.path,
            **context,
        )
    )
    return web.Response(
        text=html,
        status=status,
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": PAGE_CSP},
    )


def error_page(request: web.Request, status: int, message: str) -> web.Response:
    titles = {403: "Not allowed", 404: "Not found", 422: "Not accepted", 429: "Too many attempts"}
    return render(
        request,
        "error.html",
        status=status,
        status_code=status,
        title=titles.get(status, "Something went wrong"),
        message=message,
    )


# ----------------------------------------------------------------------- sign-in / out


def redirect(location) -> web.Response:
    return web.Response(status=303, headers={"Location": str(location)})


def _safe_next(value: str | None) -> str:
    # Only a path of this service: never an open redirect to another site.
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/queues"
    return value


async def home(request: web.Request) -> web.Response:
    return redirect("/queues")


async def sign_in_form(request: web.Request) -> web.Response:
    return render(
        request, "sign_in.html", next=_safe_next(request.query.get("next")), error=None, username=""
    )


async def sign_in_post(request: web.Request) -> web.Response:
    # No session yet, so no CSRF token: a cross-site form is refused by its origin (the
    # session cookie is SameSite=Strict besides). Browsers send Sec-Fetch-Site; with
    # "Referrer-Policy: no-referrer" a same-site form's Origin is "null".
    site = request.headers.get("Sec-Fetch-Site")
    origin = request.headers.get("Origin")
    if (site is not None and site not in ("same-origin", "none")) or (
        origin not in (None, "null") and origin != f"{request.scheme}://{request.host}"
    ):
        return error_page(request, 403, "Sign-in forms are only accepted from this site.")
    form = await request.post()
    target = _safe_next(form.get("next"))
    username = form.get("username")
    try:
        username, password = api.check_credentials(username, form.get("password"))
        session = await api.open_session(request, username, password)
    except (api.BadRequest, api.SignInRefused) as exc:
        status = getattr(exc, "status", 401)
        response = render(
            request,
            "sign_in.html",
            status=401 if status == 422 else status,
            next=target,
            error=str(exc),
            username=username if isinstance(username, str) else "",
        )
        if isinstance(exc, api.SignInRefused):
            response.headers.update({k: v for k, v in exc.headers.items() if k == "Retry-After"})
        return response
    response = redirect(target)
    api.set_session_cookie(response, request.app[api.SETTINGS], session)
    return response


async def sign_out(request: web.Request) -> web.Response:
    response = redirect("/sign-in")
    await api.close_session(request, response)
    return response


# ----------------------------------------------------------------------------- pages


async def overview(request: web.Request) -> web.Response:
    session = api.session_of(request)
    today = store.today_start(request.app[api.SETTINGS].timezone)
    async with request.app[api.POOL].connection() as conn:
        queues = [await store.overview(conn, q, today) for q in session.user.queues]
        marker = await store.change_marker(conn, session.user.queues)
        await store.audit(conn, session.user.username, "view_overview")
    return render(
        request,
        "overview.html",
        queues=queues,
        live_url="/live/queues",
        marker=marker,
        timezone=request.app[api.SETTINGS].timezone,
    )


def _list_form(request: web.Request) -> dict:
    return {k: request.query.get(k, "") for k in LIST_FIELDS}


async def queue_list(request: web.Request) -> web.Response:
    queue = api.queue_of_path(request)
    q = api.list_query(request, queue)
    session = api.session_of(request)
    async with request.app[api.POOL].connection() as conn:
        result = await store.list_items(conn, q)
        marker = await store.change_marker(conn, (queue,))
        await store.audit(
            conn,
            session.user.username,
            "view_list",
            queue=queue,
            detail={**api.filters_for_audit(q), "returned": len(result["items"]), "via": "page"},
        )
    filters = {k: v for k, v in _list_form(request).items() if v}
    pages = max(1, -(-result["total"] // q.page_size))

    def page_url(n: int) -> str:
        return f"/queues/{queue}?" + urlencode({**filters, "page": n})

    return render(
        request,
        "list.html",
        queue=queue,
        result=result,
        form=_list_form(request),
        query=q,
        pages=pages,
        prev_url=page_url(q.page - 1) if q.page > 1 else None,
        next_url=page_url(q.page + 1) if q.page < pages else None,
        csv_url=f"{api.API}/queues/{queue}/items.csv" + ("?" + urlencode(filters) if filters else ""),
        reason_codes=REASON_CODES,
        payer_classes=PAYER_CLASSES,
        statuses=store.STATUS_FILTERS,
        sorts=store.SORTS,
        page_sizes=PAGE_SIZES,
        live_url=f"/live/queues?queue={queue}",
        marker=marker,
    )


async def item_page(request: web.Request) -> web.Response:
    session = api.session_of(request)
    async with request.app[api.POOL].connection() as conn:
        alert_id, queue = await api.item_of_path(conn, request)
        async with conn.transaction():
            data = await store.item(conn, alert_id)
            marker = await store.item_change_marker(conn, alert_id)
            await store.audit(conn, session.user.username, "view_item", alert_id, queue, {"via": "page"})
    return render(
        request,
        "item.html",
        item=data,
        queue=queue,
        statuses=store.WORKFLOW_STATUSES,
        live_url=f"/live/items/{alert_id}",
        marker=marker,
        notice=request.query.get("done"),
    )


_DONE = {"assign": "Assignment saved.", "status": "Status saved.", "note": "Note added."}


def _back_to_item(request: web.Request, done: str) -> web.Response:
    alert_id = request.match_info["alert_id"]
    return redirect(request.app.router["item_page"].url_for(alert_id=alert_id).with_query(done=done))


async def item_assign(request: web.Request) -> web.Response:
    form = await request.post()
    assignee = form.get("assignee")
    if form.get("action") == "me":
        assignee = api.session_of(request).user.username
    elif form.get("action") == "unassign" or assignee == "":
        assignee = None
    await api.change_assignee(request, assignee)
    return _back_to_item(request, "assign")


async def item_status(request: web.Request) -> web.Response:
    form = await request.post()
    await api.change_status(request, form.get("status"))
    return _back_to_item(request, "status")


async def item_note(request: web.Request) -> web.Response:
    form = await request.post()
    await api.write_note(request, form.get("body"))
    return _back_to_item(request, "note")


# ------------------------------------------------------------------------------ live


def _marker(marker: str) -> web.Response:
    return web.Response(body=orjson.dumps({"marker": marker}), content_type="application/json")


async def live_queues(request: web.Request) -> web.Response:
    session = api.session_of(request)
    queue = request.query.get("queue")
    if queue is not None:
        if queue not in WORK_QUEUES or queue not in session.user.queues:
            return web.Response(
                status=403, body=b'{"error":"not your queue"}', content_type="application/json"
            )
        queues = (queue,)
    else:
        queues = session.user.queues
    async with request.app[api.POOL].connection() as conn:
        return _marker(await store.change_marker(conn, queues))


async def live_item(request: web.Request) -> web.Response:
    async with request.app[api.POOL].connection() as conn:
        alert_id, _ = await api.item_of_path(conn, request)
        return _marker(await store.item_change_marker(conn, alert_id))


# ------------------------------------------------------------------------ operations


def _hours(request: web.Request) -> int:
    raw = request.query.get("hours", "3")
    if not raw.isdigit() or int(raw) not in HOURS:
        raise api.BadRequest(f"hours must be one of {', '.join(map(str, HOURS))}", "hours")
    return int(raw)


async def operations_page(request: web.Request) -> web.Response:
    hours = _hours(request)
    async with request.app[api.POOL].connection() as conn:
        await store.audit(conn, api.session_of(request).user.username, "view_operations")
    return render(
        request,
        "operations.html",
        hours=hours,
        hours_choices=HOURS,
        charts=operations.CHARTS,
        prometheus_url=request.app[api.SETTINGS].prometheus_url,
    )


async def operations_data(request: web.Request) -> web.Response:
    settings = request.app[api.SETTINGS]
    try:
        dashboard = request.app[DASHBOARD] or operations.load_dashboard(settings.dashboard)
    except operations.DashboardError as exc:
        return web.Response(
            body=orjson.dumps({"charts": [], "errors": [str(exc)]}), content_type="application/json"
        )
    data = await operations.chart_data(
        settings.prometheus_url, dashboard, _hours(request), settings.prometheus_scrape_seconds
    )
    return web.Response(body=orjson.dumps(data), content_type="application/json")


# ------------------------------------------------------------------------------ routes


def add_routes(app: web.Application) -> None:
    app[TEMPLATES] = environment()
    app[api.ERROR_PAGE] = error_page
    try:
        app[DASHBOARD] = operations.load_dashboard(app[api.SETTINGS].dashboard)
    except operations.DashboardError:
        app[DASHBOARD] = None  # reported on the operations page itself
    r = app.router
    r.add_get("/", home, allow_head=False)
    r.add_get("/sign-in", sign_in_form, name="sign_in_form", allow_head=False)
    r.add_post("/sign-in", sign_in_post)
    r.add_post("/sign-out", sign_out)
    r.add_get("/queues", overview, allow_head=False)
    r.add_get("/queues/{queue}", queue_list, allow_head=False)
    r.add_get("/items/{alert_id}", item_page, name="item_page", allow_head=False)
    r.add_post("/items/{alert_id}/assign", item_assign)
    r.add_post("/items/{alert_id}/status", item_status)
    r.add_post("/items/{alert_id}/notes", item_note)
    r.add_get("/live/queues", live_queues, allow_head=False)
    r.add_get("/live/items/{alert_id}", live_item, allow_head=False)
    r.add_get("/operations", operations_page, allow_head=False)
    r.add_get("/operations/data", operations_data, allow_head=False)
    r.add_static("/static/", WEB / "static")
