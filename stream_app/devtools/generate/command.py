"""The `generate` command: flags and `run`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter
from typing import Any

from stream_app.config import add_settings_arguments, settings_from_args
from stream_app.devtools.generate.errors import ERROR_KINDS
from stream_app.devtools.generate.formats import CANONICAL, FORMATS, HL7V2, encode_messages
from stream_app.devtools.generate.output import produce, write_formatted, write_ndjson
from stream_app.devtools.generate.stream import GeneratedStream, generate_stream


def _parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, weight = part.partition("=")
        if name.strip() not in ERROR_KINDS:
            raise argparse.ArgumentTypeError(
                f"unknown error kind {name.strip()!r}; known: {', '.join(ERROR_KINDS)}")
        try:
            mix[name.strip()] = float(weight) if sep else 1.0
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"bad weight in {part!r}") from exc
    return mix


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `generate` (and the broker/topic-prefix settings of config.py)."""
    g = parser.add_argument_group("stream")
    g.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    g.add_argument("--patients", type=int, default=200, help="number of patients (200)")
    g.add_argument("--records", type=int, default=None, metavar="N",
                   help="instead of --patients: add patients until about N records")
    g.add_argument("--days", type=int, default=3, help="service days (3)")
    g.add_argument("--start-date", default="2025-03-10", help="first service date")
    g.add_argument("--error-rate", type=_fraction, default=0.15,
                   help="share of encounters with an injected problem (0.15)")
    g.add_argument("--error-mix", type=_parse_mix, default=None, metavar="KIND=W,...",
                   help="relative weight per error kind (default: equal); kinds: "
                        + ", ".join(ERROR_KINDS))
    g.add_argument("--amend-rate", type=_fraction, default=0.05)
    g.add_argument("--withdraw-rate", type=_fraction, default=0.02)
    g.add_argument("--redeliver-rate", type=_fraction, default=0.03)
    g.add_argument("--fix-rate", type=_fraction, default=0.2,
                   help="share of injected problems fixed later by an amendment")
    g.add_argument("--shuffle-window", type=int, default=20,
                   help="out-of-order arrival within this many positions (20)")
    g.add_argument("--malformed-rate", type=_fraction, default=0.0,
                   help="chance of a malformed message after each record (0)")
    o = parser.add_argument_group("output")
    o.add_argument("--format", choices=FORMATS, default=CANONICAL,
                   help="canonical records (default), FHIR R4 Bundles (to ehr.fhir) or HL7 "
                        "v2 messages (to ehr.hl7v2); records the format cannot carry stay "
                        "canonical (docs/fhir.md, docs/hl7v2.md)")
    o.add_argument("--site-dir", default=None, metavar="DIR",
                   help="with --format hl7v2: write the site configuration that maps the "
                        "generated facility, place and plan codes back (give it to the worker "
                        "or replay as --rules-dir)")
    o.add_argument("--out", default="-", metavar="FILE",
                   help="NDJSON file of the records in arrival order ('-' = stdout); with "
                        "--format fhir one Bundle per line (canonical lines mixed in), with "
                        "--format hl7v2 the messages, and the records HL7 v2 cannot carry "
                        "in FILE.canonical.ndjson")
    o.add_argument("--include-malformed", action="store_true",
                   help="also write malformed messages to the NDJSON output")
    o.add_argument("--produce", action="store_true", help="send to Kafka instead of NDJSON")
    o.add_argument("--rate", type=float, default=0.0, metavar="EVENTS_PER_SEC",
                   help="messages per second when producing (0 = as fast as possible)")
    o.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                   help="stop producing after this long")
    o.add_argument("--summary", action="store_true",
                   help="print counts by kind to stderr (no ids)")
    add_settings_arguments(parser)


def _settings(args: argparse.Namespace) -> tuple[str, str, dict[str, Any]]:
    """(bootstrap servers, topic prefix, aiokafka security kwargs) from flags/env."""
    s = settings_from_args(args)
    return s.bootstrap_servers, s.topic_prefix, s.aiokafka_security_kwargs()


def stream_from_args(args: argparse.Namespace, topic_prefix: str = "") -> GeneratedStream:
    return generate_stream(
        args.seed, args.patients, args.days, args.start_date, args.error_rate,
        args.error_mix, args.amend_rate, args.withdraw_rate, args.redeliver_rate,
        args.shuffle_window, args.malformed_rate, records=args.records,
        fix_rate=args.fix_rate, topic_prefix=topic_prefix)


def _print_summary(stats: Counter, out=None) -> None:
    out = out or sys.stderr
    for name in sorted(stats):
        print(f"  {name:45s} {stats[name]:>9d}", file=out)


def run(args: argparse.Namespace) -> int:
    """The `generate` command. Exit status 0 on success, 2 on bad arguments."""
    prefix = ""
    security: dict[str, Any] = {}
    bootstrap = ""
    fmt = getattr(args, "format", CANONICAL)
    if fmt == HL7V2 and not args.produce and args.out == "-":
        print("generate: --format hl7v2 writes to a file (--out FILE)", file=sys.stderr)
        return 2
    try:
        if args.produce:
            bootstrap, prefix, security = _settings(args)
        stream = stream_from_args(args, prefix)
        messages = [] if fmt == CANONICAL else encode_messages(
            stream, fmt, prefix, malformed=args.produce or args.include_malformed)
    except ValueError as exc:  # includes config.ConfigError
        print(f"generate: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "site_dir", None):
        from stream_app.devtools.generate.hl7v2 import write_site

        write_site(args.site_dir)
    if args.produce:
        try:
            if fmt == CANONICAL:
                messages = stream.messages
            sent = asyncio.run(produce(messages, bootstrap, rate=args.rate,
                                       duration=args.duration, producer_kwargs=security))
        except KeyboardInterrupt:
            print("generate: interrupted", file=sys.stderr)
            return 130
        except Exception as exc:  # noqa: BLE001 - one line, never a traceback with data
            print(f"generate: producing failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(f"generate: produced {sent} of {len(messages)} messages", file=sys.stderr)
    else:
        try:
            if fmt == CANONICAL:
                write_ndjson(stream, args.out, args.include_malformed)
            else:
                write_formatted(messages, fmt, args.out)
        except BrokenPipeError:  # e.g. `generate | head`: not an error
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            return 0
    if args.summary:
        _print_summary(stream.stats)
    return 0
