"""Settings of chargecap (contract.md §6).

Every non-secret setting has a command-line flag and a ``CHARGECAP_*`` environment
variable; flags win over the environment, the environment over the defaults. Kafka
security settings (protocol, SASL, TLS files) come from the environment only, so that
secrets never appear in a process list or shell history.
"""

from __future__ import annotations

import argparse
import os
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENV_PREFIX = "CHARGECAP_"

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN")

class ConfigError(ValueError):
    """A setting has an invalid value; the message names the flag/variable."""


@dataclass(frozen=True)
class Settings:
    # contract.md §6
    broker: str = "kafka://localhost:9092"
    app_id: str = "chargecap"
    topic_prefix: str = ""
    timezone: str = "UTC"
    settle_seconds: float = 900.0
    close_after_seconds: float = 86400.0
    retention_days: float = 30.0
    data_dir: Path = Path("./.chargecap")
    rules_dir: Path | None = None  # None = rule data shipped in the package
    # PFS locality 'MAC-LOCALITY' (e.g. '01112-05') whose GPCIs adjust the Medicare PFS
    # allowance (needs pfs_gpci.csv in rules_dir); empty = national (docs/rule-data.md).
    pfs_locality: str = ""
    metrics_addr: str = "127.0.0.1:9108"
    # Faust table store: rocksdb:// in production, memory:// for tests.
    store: str = "rocksdb://"
    # Worker tuning.
    tick_seconds: float = 5.0  # how often the worker checks settle/close timers
    max_message_bytes: int = 1_048_576  # larger input values are dead-lettered (TOO_LARGE)
    # Kafka security (environment only, never flags).
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    def __post_init__(self) -> None:
        if self.pfs_locality and not re.fullmatch(r"\d{5}-\d{2}", self.pfs_locality):
            raise ConfigError(
                f"{ENV_PREFIX}PFS_LOCALITY must be MAC-LOCALITY as in pfs_gpci.csv "
                f"(e.g. 01112-05), not {self.pfs_locality!r}"
            )
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                f"{ENV_PREFIX}KAFKA_SECURITY_PROTOCOL must be one of "
                f"{', '.join(SECURITY_PROTOCOLS)}, not {self.security_protocol!r}"
            )
        if self.security_protocol.startswith("SASL_"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ConfigError(
                    f"{ENV_PREFIX}KAFKA_SASL_MECHANISM must be one of "
                    f"{', '.join(SASL_MECHANISMS)} when the protocol is {self.security_protocol}"
                )
            if not self.sasl_username or self.sasl_password is None:
                raise ConfigError(
                    f"{ENV_PREFIX}KAFKA_SASL_USERNAME and {ENV_PREFIX}KAFKA_SASL_PASSWORD "
                    f"are required when the protocol is {self.security_protocol}"
                )
        for name in ("settle_seconds", "close_after_seconds", "retention_days"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")
        if self.tick_seconds <= 0:
            raise ConfigError("tick_seconds must be positive")
        split_host_port(self.metrics_addr)  # validates

    # -- derived values -------------------------------------------------------------
    def topic(self, name: str) -> str:
        """The configured (prefixed) name of a topic of contract.md §1."""
        return f"{self.topic_prefix}{name}"

    @property
    def bootstrap_servers(self) -> str:
        """``host:port[,host:port…]`` for aiokafka (no ``kafka://``)."""
        return kafka_bootstrap_servers(self.broker)

    @property
    def metrics_host(self) -> str:
        return split_host_port(self.metrics_addr)[0]

    @property
    def metrics_port(self) -> int:
        return split_host_port(self.metrics_addr)[1]

    def ssl_context(self) -> ssl.SSLContext | None:
        """A TLS context for SSL/SASL_SSL, else None."""
        if self.security_protocol not in ("SSL", "SASL_SSL"):
            return None
        ctx = ssl.create_default_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        if self.ssl_certfile:
            ctx.load_cert_chain(str(self.ssl_certfile), str(self.ssl_keyfile) if self.ssl_keyfile else None)
        return ctx

    def aiokafka_security_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for aiokafka producers, consumers and admin clients."""
        kwargs: dict[str, Any] = {"security_protocol": self.security_protocol}
        ctx = self.ssl_context()
        if ctx is not None:
            kwargs["ssl_context"] = ctx
        if self.security_protocol.startswith("SASL_"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        return kwargs

    def faust_credentials(self) -> Any:
        """A ``faust`` credentials object for ``broker_credentials``, or None."""
        if self.security_protocol == "PLAINTEXT":
            return None
        import faust  # lazy: faust is slow to import

        ctx = self.ssl_context()
        if self.security_protocol == "SSL":
            return faust.SSLCredentials(ctx)
        # SASL_SSL when a TLS context is given, SASL_PLAINTEXT otherwise.
        return faust.SASLCredentials(
            username=self.sasl_username,
            password=self.sasl_password,
            ssl_context=ctx,
            mechanism=self.sasl_mechanism,
        )

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict safe to log (the SASL password masked)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if out["sasl_password"] is not None:
            out["sasl_password"] = "***"
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in out.items()}


def kafka_bootstrap_servers(broker_url: str) -> str:
    """``kafka://h1:9092,kafka://h2:9092`` or ``kafka://h1:9092;h2`` → ``h1:9092,h2:9092``.

    Accepts bare ``host:port`` too; a host without a port gets 9092.
    """
    servers = []
    for part in broker_url.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        if "://" in part:
            part = part.split("://", 1)[1]
        part = part.rstrip("/")
        if not part:
            continue
        if part.startswith("["):  # [ipv6]:port
            if "]:" not in part:
                part = f"{part}:9092"
        elif ":" not in part:
            part = f"{part}:9092"
        servers.append(part)
    if not servers:
        raise ConfigError(f"no Kafka bootstrap server in {broker_url!r}")
    return ",".join(servers)


def faust_broker_url(broker_url: str) -> str:
    """The broker setting as Faust wants it: ``kafka://h1:9092;h2:9092``."""
    return ";".join(f"kafka://{s}" for s in kafka_bootstrap_servers(broker_url).split(","))


def split_host_port(addr: str) -> tuple[str, int]:
    """``127.0.0.1:9108`` / ``:9108`` / ``[::1]:9108`` → (host, port)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"metrics address must be HOST:PORT, not {addr!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


# -- flags and environment -------------------------------------------------------------

# name, flag, type, help. The variable is CHARGECAP_<NAME upper-cased>.
_OPTIONS: tuple[tuple[str, str, Any, str], ...] = (
    ("broker", "--broker", str, "Kafka bootstrap URL(s), comma-separated"),
    ("app_id", "--app-id", str, "Faust app id (consumer group, internal-topic prefix)"),
    ("topic_prefix", "--topic-prefix", str, "prepended to every topic name"),
    ("timezone", "--timezone", str, "facility time zone when a record names none"),
    ("settle_seconds", "--settle-seconds", float, "wait before MISSING_NDC opens"),
    ("close_after_seconds", "--close-after-seconds", float, "close a day this long after it"),
    ("retention_days", "--retention-days", float, "keep state this long after close"),
    ("data_dir", "--data-dir", Path, "table store directory"),
    ("rules_dir", "--rules-dir", Path, "operator's own rule files (default: packaged)"),
    ("pfs_locality", "--pfs-locality", str, "PFS locality MAC-LOCALITY for GPCIs (empty: national)"),
    ("metrics_addr", "--metrics-addr", str, "HOST:PORT for /metrics and /healthz"),
    ("store", "--store", str, "Faust table store URL (rocksdb:// or memory://)"),
    ("tick_seconds", "--tick-seconds", float, "timer resolution of the worker"),
    ("max_message_bytes", "--max-message-bytes", int, "larger input values are dead letters"),
)

# field name → environment variable (security: environment only).
_SECURITY_ENV = {
    "security_protocol": "CHARGECAP_KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "CHARGECAP_KAFKA_SASL_MECHANISM",
    "sasl_username": "CHARGECAP_KAFKA_SASL_USERNAME",
    "sasl_password": "CHARGECAP_KAFKA_SASL_PASSWORD",
    "ssl_cafile": "CHARGECAP_KAFKA_SSL_CAFILE",
    "ssl_certfile": "CHARGECAP_KAFKA_SSL_CERTFILE",
    "ssl_keyfile": "CHARGECAP_KAFKA_SSL_KEYFILE",
}


def env_var(name: str) -> str:
    """The environment variable of a setting field."""
    return _SECURITY_ENV.get(name, ENV_PREFIX + name.upper())


def setting_names() -> list[str]:
    """Names of the settings that have a flag."""
    return [name for name, *_ in _OPTIONS]


def add_settings_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per non-secret setting; unset flags stay None (env/default apply)."""
    group = parser.add_argument_group("settings (flag > CHARGECAP_* environment > default)")
    defaults = Settings()
    for name, flag, _type, help_text in _OPTIONS:
        default = getattr(defaults, name)
        shown = "packaged data" if default is None else (default if default != "" else "empty")
        group.add_argument(
            flag,
            dest=name,
            default=None,
            metavar=name.upper(),
            help=f"{help_text} [env {env_var(name)}, default {shown}]",
        )


def _convert(name: str, raw: str, typ: Any, source: str) -> Any:
    try:
        if typ is Path:
            return Path(raw) if raw != "" else None
        return typ(raw)
    except ValueError as exc:
        raise ConfigError(f"{source}: invalid value {raw!r} for {name}") from exc


def settings_from_args(
    args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from flags (if given), then the environment, then defaults."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for name, flag, typ, _help in _OPTIONS:
        flag_value = getattr(args, name, None) if args is not None else None
        if flag_value is not None:
            values[name] = _convert(name, str(flag_value), typ, flag)
            continue
        var = env_var(name)
        if var in env:
            raw = env[var]
            if raw == "" and name != "topic_prefix":
                continue  # an empty variable means "not set" (except the prefix)
            values[name] = _convert(name, raw, typ, var)
    for name, var in _SECURITY_ENV.items():
        raw = env.get(var)
        if raw is None or raw == "":
            continue
        if name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            values[name] = Path(raw)
        elif name in ("security_protocol", "sasl_mechanism"):
            values[name] = raw.strip().upper()
        else:
            values[name] = raw
    if values.get("rules_dir") is None:
        values.pop("rules_dir", None)
    if values.get("data_dir") is None:
        values.pop("data_dir", None)
    return Settings(**values)
