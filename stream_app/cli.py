"""``chargecap`` / ``python -m stream_app``: one subcommand per module, imported lazily.

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``. Only
the chosen command's module is imported (Faust is slow to import). A module may add the
settings flags itself (``stream_app.config.add_settings_arguments``); if it does not, they
are added here, so ``settings_from_args(args)`` always works in ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from stream_app.config import ConfigError, add_settings_arguments

# command → (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "worker": ("stream_app.streaming.worker", "run the Faust worker against Kafka"),
    "topics": ("stream_app.topics", "create/update the topics of topics/ (topics apply)"),
    "replay": ("stream_app.replay", "run the engine over NDJSON files, write the decisions"),
    "generate": ("stream_app.devtools.generate", "write or produce a synthetic EHR event stream"),
    "demo": ("stream_app.devtools.demo", "end-to-end demo on the local Kafka"),
    "rules": ("stream_app.cms.command", "rule data: import CMS quarterly files (rules import)"),
    "queue": ("stream_app.queue.cli", "the billing work queue: migrate, serve, sink, user, audit"),
    "report": ("stream_app.report.command", "charge-capture audit report (HTML/PDF) for a period"),
}

EXIT_UNAVAILABLE = 2


class CommandUnavailable(Exception):
    pass


def _import_command(module_name: str) -> ModuleType:
    """Imports a command module; CommandUnavailable only when that module itself is absent.

    An ImportError raised *inside* an existing module (a missing dependency, a typo)
    propagates unchanged.
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        # The module, or the package that should contain it, does not exist.
        if missing == module_name or module_name.startswith(missing + "."):
            if missing and missing != "stream_app":
                raise CommandUnavailable(module_name) from exc
        raise


_GLOBAL_OPTIONS_WITH_VALUE = frozenset({"--log-level"})


def _find_command(argv: Sequence[str]) -> str | None:
    skip = False
    for arg in argv:
        if skip:  # the value of a global option given as two words (--log-level INFO)
            skip = False
            continue
        if arg in COMMANDS:
            return arg
        if arg in _GLOBAL_OPTIONS_WITH_VALUE:
            skip = True
            continue
        if not arg.startswith("-"):
            return None  # an unknown command: argparse reports it
    return None


def build_parser(selected: str | None = None) -> tuple[argparse.ArgumentParser, ModuleType | None]:
    parser = argparse.ArgumentParser(
        prog="chargecap",
        description="Real-time charge-capture validator for injection and infusion billing.",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("CHARGECAP_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING, ERROR [env CHARGECAP_LOG_LEVEL, default INFO]",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    module = None
    for name, (module_name, help_text) in COMMANDS.items():
        cmd_parser = sub.add_parser(name, help=help_text, description=help_text)
        if name == selected:
            module = _import_command(module_name)
            module.add_arguments(cmd_parser)
            if not _has_settings_flags(cmd_parser):
                add_settings_arguments(cmd_parser)
    return parser, module


def _has_settings_flags(parser: argparse.ArgumentParser) -> bool:
    if "--broker" in parser._option_string_actions:  # noqa: SLF001 - argparse has no API
        return True
    # Sub-subcommands (topics apply) carry the flags themselves.
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)  # noqa: SLF001


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    selected = _find_command(argv)
    try:
        parser, module = build_parser(selected)
    except CommandUnavailable as exc:
        print(f"`{selected}` is not available yet: {exc.args[0]} missing", file=sys.stderr)
        return EXIT_UNAVAILABLE
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    assert module is not None  # argparse exits when no valid command was given
    try:
        result = module.run(args)
    except ConfigError as exc:
        print(f"chargecap {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0 if result is None else int(result)
