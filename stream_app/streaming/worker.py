"""`python -m stream_app worker`: the Faust worker (contract.md §5, docs/streaming.md).

Start-up order: settings → rule data (a malformed rule file stops here with
`FILE:LINE:COLUMN: message` and exit status 2, before anything connects) → engine →
library versions (other versions of faust-streaming, aiokafka or rocksdict than the seam
was checked against stop here, exit status 2, streaming/seam) →
metrics server (`/metrics`, `/healthz` on CHARGECAP_METRICS_ADDR, 127.0.0.1 by default;
`/healthz` answers 503 until partitions are assigned and table recovery is done) → Faust
worker. SIGTERM / SIGINT stop it cleanly (in-flight batch finished, offsets committed).

Logs never carry patient, encounter or record ids or diagnosis codes.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

from stream_app.config import ConfigError, add_settings_arguments, settings_from_args

log = logging.getLogger("stream_app.worker")

# Worker tuning beyond contract.md §6: StreamOptions field, flag, help (the default and
# its type are the field's).
_TUNING = (
    ("partitions", "--partitions", "partitions of the repartition topic / table"),
    ("batch_size", "--batch-size", "max messages per processing batch"),
    ("batch_within", "--batch-within", "seconds to wait to fill a batch"),
    ("stage2_batch_bundles", "--stage2-batch-bundles",
     "max repartition bundles (one stage-1 batch of one partition each) per stage-2 batch"),
    ("stage2_queue_bundles", "--stage2-queue-bundles",
     "repartition bundles stage 2 buffers before pausing its partitions"),
    ("stream_buffer_maxsize", "--stream-buffer",
     "input messages Faust buffers per stream before pausing its partitions"),
    ("session_timeout", "--session-timeout", "Kafka consumer session timeout (s)"),
    ("heartbeat_interval", "--heartbeat-interval", "consumer heartbeat (s)"),
    ("rebalance_timeout", "--rebalance-timeout", "consumer rebalance timeout (s)"),
    ("fetch_min_bytes", "--fetch-min-bytes",
     "while records flow, bytes the broker gathers before answering a fetch (1: at once)"),
    ("fetch_max_wait", "--fetch-max-wait",
     "while records flow, seconds the broker may hold a fetch for --fetch-min-bytes"),
    ("replication_factor", "--replication-factor",
     "replication factor of the internal topics (repartition, table changelog)"),
    ("startup_timeout", "--startup-timeout",
     "seconds to keep retrying the broker at start-up before giving up"),
    ("state_cache", "--state-cache",
     "decoded patient states kept in memory between batches (0: none)"),
    ("malloc_trim_interval", "--malloc-trim-interval",
     "seconds between handing freed heap memory back to the OS (0: never)"),
)
# Tuning values for which 0 means "off" rather than being invalid.
_ZERO_ALLOWED = frozenset({"state_cache", "malloc_trim_interval"})


def _env(name: str) -> str:
    return "CHARGECAP_" + name.upper()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser)
    from stream_app.streaming.app import StreamOptions

    defaults = StreamOptions()
    group = parser.add_argument_group("worker tuning (flag > CHARGECAP_* environment > default)")
    for name, flag, help_text in _TUNING:
        group.add_argument(flag, dest=name, default=None, metavar=name.upper(),
                           help=f"{help_text} [env {_env(name)}, default {getattr(defaults, name)}]")
    group.add_argument("--loglevel", dest="faust_loglevel", default=None,
                       help="Faust worker log level (default: the global --log-level)")


def stream_options(args: argparse.Namespace | None, environ=None):
    from stream_app.streaming.app import StreamOptions

    env = os.environ if environ is None else environ
    values = {}
    defaults = StreamOptions()
    for name, flag, _help in _TUNING:
        typ = type(getattr(defaults, name))
        raw = getattr(args, name, None) if args is not None else None
        source = flag
        if raw is None and env.get(_env(name)):
            raw, source = env[_env(name)], _env(name)
        if raw is None:
            continue
        try:
            values[name] = typ(raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: invalid value {raw!r} for {name}") from exc
        if name in _ZERO_ALLOWED:
            if values[name] < 0:
                raise ConfigError(f"{source}: {name} must be zero or positive")
        elif values[name] <= 0:
            raise ConfigError(f"{source}: {name} must be positive")
    return StreamOptions(**values)


def build(settings, opts):
    """Rule data, engine, metrics and the Faust streams (raises RuleDataError)."""
    from stream_app.adapters.site import load_site_config
    from stream_app.engine import PatientState
    from stream_app.metrics import Metrics
    from stream_app.runtime import build_engine
    from stream_app.streaming.app import ChargecapStreams
    from stream_app.vocabulary import WORKER_INPUT_TOPICS, repartition_topic

    engine = build_engine(settings)
    site = load_site_config(settings.rules_dir)  # raises SiteConfigError
    input_topics = [settings.topic(t) for t in WORKER_INPUT_TOPICS]
    metrics = Metrics(topics=input_topics + [repartition_topic(settings.app_id)])
    return ChargecapStreams(settings, engine, PatientState, metrics, opts, site=site)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    opts = stream_options(args)
    from stream_app.adapters.site import SiteConfigError
    from stream_app.engine import RuleDataError
    from stream_app.streaming.seam import SeamError

    try:
        streams = build(settings, opts)
    except RuleDataError as exc:
        print(f"chargecap worker: invalid rule data: {exc}", file=sys.stderr)
        return 2
    except SiteConfigError as exc:
        print(f"chargecap worker: invalid site configuration: {exc}", file=sys.stderr)
        return 2
    except SeamError as exc:  # library versions the worker was not checked against
        print(f"chargecap worker: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"chargecap worker: cannot load rule data: {exc}", file=sys.stderr)
        return 2

    from stream_app.metrics_server import serve

    try:
        server = serve(streams.metrics, settings.metrics_addr, streams.ready)
    except OSError as exc:
        print(f"chargecap worker: cannot serve metrics on {settings.metrics_addr}: {exc}",
              file=sys.stderr)
        return 2
    log.info("metrics on %s/metrics (topic prefix %r, app id %r, store %s)",
             getattr(server, "url", settings.metrics_addr), settings.topic_prefix,
             settings.app_id, settings.store)
    if str(settings.store).startswith("rocksdb"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)

    import asyncio
    import threading

    from stream_app.streaming.admin import ensure_internal_topics, output_limits

    errors: list[BaseException] = []

    def _setup() -> None:
        # The broker may still be starting (or restarting): retry with backoff for
        # startup_timeout seconds before reporting it, instead of dying at once.
        import time

        deadline = time.monotonic() + opts.startup_timeout
        delay = 1.0
        while True:
            try:
                asyncio.run(ensure_internal_topics(settings, opts))
                streams.set_output_limits(asyncio.run(output_limits(settings)))
                return
            except Exception as exc:  # reported below
                if time.monotonic() + delay > deadline:
                    errors.append(exc)
                    return
                log.warning("broker not ready (%s); retrying in %.0f s", type(exc).__name__, delay)
                time.sleep(delay)
                delay = min(delay * 2, 15.0)

    t = threading.Thread(target=_setup, name="chargecap-setup")
    t.start()
    t.join()
    if errors:
        print(f"chargecap worker: cannot prepare internal topics: {errors[0]}", file=sys.stderr)
        _close(server)
        return 1

    import faust

    from stream_app.streaming.logfilter import rate_limit_kafka_client_logs

    rate_limit_kafka_client_logs()
    from stream_app.streaming import brokerlog

    brokerlog.install(streams.metrics)
    tune_gc()
    from stream_app.streaming.memtrim import MemoryTrimmer

    trimmer = MemoryTrimmer(opts.malloc_trim_interval).start()
    loglevel = getattr(args, "faust_loglevel", None) or getattr(args, "log_level", "INFO")
    worker = faust.Worker(streams.app, loglevel=str(loglevel).lower(), quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return code
    finally:
        streams.stopping = True
        trimmer.stop()
        _close(server)
    return 0


# The worker allocates a short-lived object graph per event and makes few reference
# cycles, yet at Python's default thresholds the collector runs a young collection every
# 700 net allocations and rescans the start-up heap (rule tables, Faust, modules) on
# every full pass. Frozen start-up heap, young collections every 10,000 allocations and
# a full one every ~1M: less worker CPU per event, while the cycles asyncio and the
# Kafka client do make are still freed regularly (higher thresholds, almost never a full
# pass, were no faster and held more memory per open patient-day; docs/performance.md).
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _close(server) -> None:
    for name in ("close", "shutdown", "stop"):
        fn = getattr(server, name, None)
        if callable(fn):
            try:
                fn()
            except Exception:  # a server that fails to close is not worth a crash
                pass
            return


def main(argv=None) -> int:  # pragma: no cover - `python -m stream_app worker` is the entry
    parser = argparse.ArgumentParser(prog="chargecap-worker")
    parser.add_argument("--log-level", default=os.environ.get("CHARGECAP_LOG_LEVEL", "INFO"))
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(args)
    except ConfigError as exc:
        print(f"chargecap worker: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
