"""The decision engine's public API: records in, decisions out (contract.md §2-§4).

Replay, the worker, the tests and the benchmarks import from here and nowhere deeper.
The engine is pure: no Kafka, Faust, clock or file I/O; time is passed in.
"""

from stream_app.engine.core import Engine
from stream_app.engine.engine import Decision, EngineSettings, Outcome
from stream_app.engine.records import (
    Administration,
    DeadLetter,
    Dispense,
    Drug,
    EMService,
    InputRecord,
    parse_record,
)
from stream_app.engine.ruledata import RuleDataError, RuleSet
from stream_app.engine.state import LAYOUT as STATE_LAYOUT
from stream_app.engine.state import PatientState

__all__ = [
    "Administration", "DeadLetter", "Decision", "Dispense", "Drug", "EMService", "Engine",
    "EngineSettings", "InputRecord", "Outcome", "PatientState", "RuleDataError", "RuleSet",
    "STATE_LAYOUT", "parse_record",
]
