"""Builds the engine a command runs: settings in, rules loaded from disk, an `Engine` out.

The engine itself does no file I/O; `replay`, the worker and the tools get theirs here, so
all of them decide with the same rules and settings.
"""

from __future__ import annotations

from stream_app.config import Settings
from stream_app.engine import Engine, EngineSettings, RuleSet
from stream_app.engine.derive import Derivation


def build_engine(settings: Settings) -> Engine:
    rules = RuleSet.load(settings.rules_dir)
    return Engine(rules, EngineSettings(settings.settle_seconds, settings.close_after_seconds,
                                        settings.retention_days, settings.timezone),
                  Derivation.load(settings.rules_dir))
