"""``chargecap queue …``: migrate, serve (API), sink, run (both), user, audit.

The schema owner's DSN (``--admin-dsn``) is used by migrate, user and audit; the service
(serve, sink, run) connects with ``--dsn``, a login role that is a member of
chargecap_queue_service and has only the grants of the migrations.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import getpass
import json
import logging
import signal
import sys

import psycopg

from stream_app.config import ConfigError, add_settings_arguments, settings_from_args
from stream_app.queue.settings import add_queue_arguments, queue_settings_from_args

log = logging.getLogger(__name__)

EXIT_SCHEMA = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="queue_command", metavar="QUEUE_COMMAND")
    sub.required = True

    p = sub.add_parser("migrate", help="apply the schema migrations (idempotent)")
    add_queue_arguments(p, "admin_dsn")
    p.add_argument(
        "--grant-to",
        default="chargecap_queue",
        help="comma-separated login roles the service connects as (default chargecap_queue)",
    )

    for name, help_text in (
        ("serve", "run the JSON API (and /metrics)"),
        ("sink", "run the sink: alerts and charge lines from Kafka into PostgreSQL"),
        ("run", "run the sink and the API in one process"),
    ):
        p = sub.add_parser(name, help=help_text)
        add_queue_arguments(
            p,
            "dsn",
            "listen",
            "session_idle_minutes",
            "session_max_hours",
            "trusted_user_header",
            "timezone",
            "cookie_secure",
            "sink_group",
            "age_limit_hours",
            "age_limits",
            "prometheus_url",
            "prometheus_scrape_seconds",
            "dashboard",
        )
        add_settings_arguments(p)

    p = sub.add_parser("user", help="manage users: user add NAME --queues coding,pharmacy")
    usub = p.add_subparsers(dest="user_command", metavar="USER_COMMAND")
    usub.required = True
    a = usub.add_parser(
        "add",
        help="add a user or change one's password and queues (password from a prompt "
        "or one line of standard input)",
    )
    a.add_argument("name")
    a.add_argument("--queues", required=True, help="comma-separated work queues")
    a.add_argument(
        "--sso-only",
        action="store_true",
        help="no password: the user signs in only through the trusted SSO header",
    )
    add_queue_arguments(a, "admin_dsn")
    d = usub.add_parser("disable", help="disable a user and end their sessions")
    d.add_argument("name")
    add_queue_arguments(d, "admin_dsn")
    ls = usub.add_parser("list", help="list users and their queues")
    add_queue_arguments(ls, "admin_dsn")

    p = sub.add_parser("audit", help="query the access audit (who viewed or did what, when)")
    p.add_argument("--user", help="only this user")
    p.add_argument("--item", help="only this alert id")
    p.add_argument(
        "--action",
        help="only this action (view_item, view_list, export_csv, assign, set_status, "
        "add_note, sign_in, sign_in_failed, denied, …)",
    )
    p.add_argument("--since", help="ISO date or date-time")
    p.add_argument("--until", help="ISO date or date-time (exclusive)")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    add_queue_arguments(p, "admin_dsn")


def run(args: argparse.Namespace) -> int:
    command = args.queue_command
    try:
        if command == "migrate":
            return _migrate(args)
        if command == "user":
            return _user(args)
        if command == "audit":
            return _audit(args)
    except psycopg.OperationalError as exc:
        print(f"chargecap queue {command}: cannot connect to PostgreSQL: {exc}", file=sys.stderr)
        return 2
    except psycopg.Error as exc:
        print(f"chargecap queue {command}: {exc.diag.message_primary or exc}", file=sys.stderr)
        return 2
    return asyncio.run(_serve(args, api=command in ("serve", "run"), sink=command in ("sink", "run")))


def _migrate(args: argparse.Namespace) -> int:
    from stream_app.queue.schema import SchemaError, latest_version, migrate

    qs = queue_settings_from_args(args)
    logins = [r.strip() for r in args.grant_to.split(",") if r.strip()]
    try:
        applied = migrate(qs.admin_dsn, logins)
    except SchemaError as exc:
        print(f"chargecap queue migrate: {exc}", file=sys.stderr)
        return EXIT_SCHEMA
    print(f"schema at version {latest_version()}; applied: {', '.join(applied) or 'nothing (up to date)'}")
    return 0


def _read_password(name: str) -> str:
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != first:
            raise ConfigError("the passwords differ")
        return first
    line = sys.stdin.readline()
    return line.rstrip("\r\n")


def _user(args: argparse.Namespace) -> int:
    from stream_app.queue import auth

    qs = queue_settings_from_args(args)
    with psycopg.connect(qs.admin_dsn) as conn:
        if args.user_command == "add":
            queues = [q.strip() for q in args.queues.split(",") if q.strip()]
            try:
                password = None if args.sso_only else _read_password(args.name)
                auth.add_user(conn, args.name, password, queues)
            except auth.UserError as exc:
                print(f"chargecap queue user add: {exc}", file=sys.stderr)
                return 2
            print(f"user {args.name}: queues {', '.join(sorted(set(queues)))}")
        elif args.user_command == "disable":
            n = conn.execute(
                "UPDATE queue_user SET disabled = true WHERE username = %s", (args.name,)
            ).rowcount
            conn.execute("DELETE FROM user_session WHERE username = %s", (args.name,))
            if not n:
                print(f"no user {args.name}", file=sys.stderr)
                return 1
            print(f"user {args.name} disabled")
        else:
            for name, queues, disabled, sso in conn.execute(
                "SELECT username, queues, disabled, password_hash IS NULL FROM queue_user ORDER BY username"
            ):
                flags = " (disabled)" if disabled else ""
                flags += " (SSO only)" if sso else ""
                print(f"{name}\t{','.join(queues)}{flags}")
    return 0


def _audit(args: argparse.Namespace) -> int:
    qs = queue_settings_from_args(args)
    where, params = [], []
    for col, value in (
        ("username = %s", args.user),
        ("alert_id = %s", args.item),
        ("action = %s", args.action),
        ("at >= %s", args.since),
        ("at < %s", args.until),
    ):
        if value:
            where.append(col)
            params.append(value)
    query = (
        "SELECT audit_id, at, username, action, alert_id, work_queue, detail FROM access_audit"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY at, audit_id LIMIT %s"
    )
    with psycopg.connect(qs.admin_dsn) as conn:
        try:
            rows = conn.execute(query, (*params, args.limit)).fetchall()
        except psycopg.errors.DataError as exc:
            print(f"chargecap queue audit: {exc.diag.message_primary}", file=sys.stderr)
            return 2
    out = [
        {
            "audit_id": r[0],
            "at": r[1].isoformat(),
            "username": r[2],
            "action": r[3],
            "alert_id": r[4],
            "work_queue": r[5],
            "detail": r[6],
        }
        for r in rows
    ]
    if args.format == "json":
        for row in out:
            print(json.dumps(row, sort_keys=True))
    elif args.format == "csv":
        w = csv.writer(sys.stdout)
        w.writerow(["audit_id", "at", "username", "action", "alert_id", "work_queue", "detail"])
        for row in out:
            w.writerow([*list(row.values())[:-1], json.dumps(row["detail"], sort_keys=True)])
    else:
        for row in out:
            print(
                f"{row['at']}  {row['username']:<16} {row['action']:<16} {row['work_queue'] or '-':<22} "
                f"{row['alert_id'] or '-'}  {json.dumps(row['detail'], sort_keys=True)}"
            )
    return 0


async def _serve(args: argparse.Namespace, *, api: bool, sink: bool) -> int:
    from aiohttp import web
    from psycopg_pool import AsyncConnectionPool

    from stream_app.queue.metrics import QueueMetrics
    from stream_app.queue.schema import SchemaError, check_schema
    from stream_app.queue.service import build_service_app
    from stream_app.queue.sink import Sink

    qs = queue_settings_from_args(args)
    settings = settings_from_args(args)
    metrics = QueueMetrics()
    metrics.set_age_limits(qs.age_limit_seconds())
    try:
        conn = await psycopg.AsyncConnection.connect(qs.dsn)
        try:
            version = await check_schema(conn)
        finally:
            await conn.close()
    except SchemaError as exc:
        print(f"chargecap queue: refusing to start: {exc}", file=sys.stderr)
        return EXIT_SCHEMA
    except psycopg.OperationalError as exc:
        print(f"chargecap queue: cannot connect to PostgreSQL: {exc}", file=sys.stderr)
        return 2
    log.info("queue: schema version %d", version)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    # Autocommit: each statement stands alone unless a handler opens a transaction, so an
    # audit row of a refused request is kept although the request then fails.
    pool = AsyncConnectionPool(qs.dsn, min_size=1, max_size=10, open=False, kwargs={"autocommit": True})
    await pool.open()
    runner = None
    tasks: list[asyncio.Task] = []
    the_sink = Sink(settings, qs.dsn, qs.sink_group, metrics) if sink else None
    try:
        app = build_service_app(qs, pool, metrics) if api else _metrics_only_app(pool, metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, qs.host, qs.port)
        await site.start()
        log.info("queue: listening on http://%s:%d", qs.host, qs.port)
        if the_sink is not None:
            tasks.append(asyncio.create_task(the_sink.run(), name="sink"))
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not waiter and t.exception() is not None:
                log.error("queue: %s stopped: %r", t.get_name(), t.exception())
                return 1
        if the_sink is not None:
            the_sink.stop()
        for t in tasks:
            try:
                await asyncio.wait_for(t, 30)
            except (TimeoutError, asyncio.CancelledError):
                t.cancel()
        return 0
    finally:
        if runner is not None:
            await runner.cleanup()
        await pool.close()


def _metrics_only_app(pool, metrics):
    """The sink alone still serves /metrics and /healthz (no API, nothing to sign in to)."""
    from aiohttp import web

    from stream_app.queue.api import METRICS, POOL, healthz, metrics_endpoint

    app = web.Application()
    app[POOL] = pool
    app[METRICS] = metrics
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/metrics", metrics_endpoint, allow_head=False)
    return app
