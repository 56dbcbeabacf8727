"""Builds the engine a command runs: settings in, rule data loaded, an `Engine` out.

The engine itself does no file I/O; `replay`, the worker and the tools get theirs here, so
all of them decide with the same rules and settings.
"""

from __future__ import annotations

from stream_app.config import Settings
from stream_app.engine import Engine, EngineSettings
from stream_app.rules import load_rules


def build_engine(settings: Settings) -> Engine:
    """Raises RuleDataError naming file, line and column when the rule data is bad."""
    rules = load_rules(settings.rules_dir, pfs_locality=settings.pfs_locality or None)
    return Engine(rules, EngineSettings(settings.settle_seconds, settings.close_after_seconds,
                                        settings.retention_days, settings.timezone))
