"""The queue service's own settings: flags win over ``CHARGECAP_QUEUE_*`` variables.

Kafka settings (broker, topic prefix, security) are the worker's (stream_app.config). DSNs
should carry no password: libpq reads it from PGPASSWORD or ~/.pgpass, so it never shows
in a process list.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass

from stream_app.config import ConfigError, split_host_port
from stream_app.vocabulary import WORK_QUEUES

DEFAULT_DSN = "postgresql://chargecap_queue@127.0.0.1:55432/chargecap_queue"
DEFAULT_ADMIN_DSN = "postgresql://postgres@127.0.0.1:55432/chargecap_queue"
DEFAULT_LISTEN = "127.0.0.1:8088"
DEFAULT_SINK_GROUP = "chargecap-queue-sink"

# name -> (flag, env var, type, default, help)
_OPTIONS: dict[str, tuple[str, str, type, object, str]] = {
    "dsn": (
        "--dsn",
        "CHARGECAP_QUEUE_DSN",
        str,
        DEFAULT_DSN,
        "PostgreSQL DSN the service connects with (its own role)",
    ),
    "admin_dsn": (
        "--admin-dsn",
        "CHARGECAP_QUEUE_ADMIN_DSN",
        str,
        DEFAULT_ADMIN_DSN,
        "DSN of the schema owner (migrate, user, audit commands)",
    ),
    "listen": (
        "--listen",
        "CHARGECAP_QUEUE_LISTEN",
        str,
        DEFAULT_LISTEN,
        "host:port of the API and /metrics",
    ),
    "sink_group": (
        "--sink-group",
        "CHARGECAP_QUEUE_SINK_GROUP",
        str,
        DEFAULT_SINK_GROUP,
        "the sink's Kafka consumer group",
    ),
    "session_idle_minutes": (
        "--session-idle-minutes",
        "CHARGECAP_QUEUE_SESSION_IDLE_MINUTES",
        float,
        30.0,
        "a session expires after this long without a request",
    ),
    "session_max_hours": (
        "--session-max-hours",
        "CHARGECAP_QUEUE_SESSION_MAX_HOURS",
        float,
        12.0,
        "a session expires this long after sign-in whatever its use",
    ),
    "trusted_user_header": (
        "--trusted-user-header",
        "CHARGECAP_QUEUE_TRUSTED_USER_HEADER",
        str,
        "",
        "HTTP header an SSO proxy sets to the signed-in user name (only accepted when listening on loopback)",
    ),
    "timezone": (
        "--queue-timezone",
        "CHARGECAP_QUEUE_TIMEZONE",
        str,
        "UTC",
        "zone in which 'resolved today' and the day buckets are counted",
    ),
    "age_limit_hours": (
        "--age-limit-hours",
        "CHARGECAP_QUEUE_AGE_LIMIT_HOURS",
        float,
        72.0,
        "an open item older than this raises the queue's age alert (exported as "
        "chargecap_queue_oldest_item_age_limit_seconds)",
    ),
    "age_limits": (
        "--age-limits",
        "CHARGECAP_QUEUE_AGE_LIMITS",
        str,
        "",
        "per-queue limits in hours overriding --age-limit-hours, e.g. pharmacy=24,coding=48",
    ),
    "prometheus_url": (
        "--prometheus-url",
        "CHARGECAP_QUEUE_PROMETHEUS_URL",
        str,
        "http://127.0.0.1:9090",
        "Prometheus the operations page reads its charts from (HTTP API, server side)",
    ),
    "prometheus_scrape_seconds": (
        "--prometheus-scrape-seconds",
        "CHARGECAP_QUEUE_PROMETHEUS_SCRAPE_SECONDS",
        float,
        15.0,
        "that Prometheus's scrape interval (sets the rate window as Grafana's $__rate_interval does)",
    ),
    "dashboard": (
        "--dashboard",
        "CHARGECAP_QUEUE_DASHBOARD",
        str,
        "",
        "the Grafana dashboard JSON whose queries the operations page runs "
        "(default: deploy/grafana/dashboards/chargecap.json of the source tree)",
    ),
    "cookie_secure": (
        "--cookie-secure",
        "CHARGECAP_QUEUE_COOKIE_SECURE",
        str,
        "auto",
        "Secure flag on the session cookie: auto (when not on loopback), yes, no",
    ),
}


@dataclass(frozen=True)
class QueueSettings:
    dsn: str = DEFAULT_DSN
    admin_dsn: str = DEFAULT_ADMIN_DSN
    listen: str = DEFAULT_LISTEN
    sink_group: str = DEFAULT_SINK_GROUP
    session_idle_minutes: float = 30.0
    session_max_hours: float = 12.0
    trusted_user_header: str = ""
    timezone: str = "UTC"
    cookie_secure: str = "auto"
    prometheus_url: str = "http://127.0.0.1:9090"
    prometheus_scrape_seconds: float = 15.0
    dashboard: str = ""
    age_limit_hours: float = 72.0
    age_limits: str = ""

    def __post_init__(self) -> None:
        self.age_limit_seconds()  # validates
        split_host_port(self.listen)
        if self.session_idle_minutes <= 0 or self.session_max_hours <= 0:
            raise ConfigError("session lifetimes must be positive")
        if self.prometheus_scrape_seconds <= 0:
            raise ConfigError("--prometheus-scrape-seconds must be positive")
        if not self.prometheus_url.startswith(("http://", "https://")):
            raise ConfigError(f"--prometheus-url must be an http(s) URL, got {self.prometheus_url!r}")
        if self.cookie_secure not in ("auto", "yes", "no"):
            raise ConfigError("--cookie-secure must be auto, yes or no")
        if self.trusted_user_header and not self.on_loopback:
            raise ConfigError(
                "--trusted-user-header is only accepted when the service listens on loopback "
                f"(it listens on {self.listen}): anyone reaching it could name any user"
            )

    def age_limit_seconds(self) -> dict[str, float]:
        """Per work queue: the age of the oldest open item above which the age alert fires."""
        limits = {q: self.age_limit_hours * 3600 for q in WORK_QUEUES}
        for part in filter(None, (p.strip() for p in self.age_limits.split(","))):
            queue, _, hours = part.partition("=")
            try:
                value = float(hours)
            except ValueError:
                value = -1.0
            if queue.strip() not in WORK_QUEUES or value <= 0:
                raise ConfigError(
                    f"--age-limits: {part!r} is not QUEUE=HOURS with a work queue of "
                    f"{', '.join(WORK_QUEUES)} and positive hours"
                )
            limits[queue.strip()] = value * 3600
        if self.age_limit_hours <= 0:
            raise ConfigError("--age-limit-hours must be positive")
        return limits

    @property
    def host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.listen)[1]

    @property
    def on_loopback(self) -> bool:
        host = self.host
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    @property
    def secure_cookie(self) -> bool:
        return self.cookie_secure == "yes" or (self.cookie_secure == "auto" and not self.on_loopback)


def add_queue_arguments(parser: argparse.ArgumentParser, *names: str) -> None:
    group = parser.add_argument_group("queue settings (flag > CHARGECAP_QUEUE_* environment > default)")
    for name in names:
        flag, env, _typ, default, help_text = _OPTIONS[name]
        group.add_argument(
            flag,
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{help_text} [env {env}, default {default or 'empty'}]",
        )


def queue_settings_from_args(
    args: argparse.Namespace | None = None, environ: dict[str, str] | None = None
) -> QueueSettings:
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for name, (flag, var, typ, _default, _help) in _OPTIONS.items():
        raw = getattr(args, name, None) if args is not None else None
        source = flag
        if raw is None and env.get(var):
            raw, source = env[var], var
        if raw is None:
            continue
        try:
            values[name] = typ(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: invalid value {raw!r}") from exc
    return QueueSettings(**values)
