"""The queue service's web application: the JSON API (api.py) and the HTML pages built on
its handlers (pages.py), assembled here so neither module imports the other's caller."""

from __future__ import annotations

from aiohttp import web
from psycopg_pool import AsyncConnectionPool

from stream_app.queue import pages
from stream_app.queue.api import build_app
from stream_app.queue.metrics import QueueMetrics
from stream_app.queue.settings import QueueSettings


def build_service_app(settings: QueueSettings, pool: AsyncConnectionPool,
                      metrics: QueueMetrics) -> web.Application:
    app = build_app(settings, pool, metrics)
    pages.add_routes(app)
    return app
