"""The decision engine's public API: records in, decisions out (contract.md §2-§4).

Replay, the worker, the tests and the benchmarks import from here and nowhere deeper.
The engine is pure: no Kafka, Faust, clock or file I/O; time is passed in, and rule data
arrives loaded (stream_app/rules/loader.py reads the files).
"""

from stream_app.engine.decisions import Decision, EngineSettings, Outcome
from stream_app.engine.engine import Engine
from stream_app.engine.normalise import (
    icd10cm_shaped,
    ndc_to_11,
    normalize_route,
    npi_check_digit,
    npi_valid,
    service_date,
    zone,
)
from stream_app.engine.parse import parse_record
from stream_app.engine.records import (
    Administration,
    DeadLetter,
    Dispense,
    Drug,
    EMService,
    InputRecord,
)
from stream_app.engine.ruledata import (
    BillingUnit,
    Derivation,
    FrequencyLimit,
    Gpci,
    Mue,
    OppsPayment,
    PayerProfile,
    PfsRvu,
    PriceFactor,
    ReasonInfo,
    RuleDataError,
    RuleSet,
)
from stream_app.engine.state import LAYOUT as STATE_LAYOUT
from stream_app.engine.state import PatientState

__all__ = [
    "STATE_LAYOUT", "Administration", "BillingUnit", "DeadLetter", "Decision", "Derivation",
    "Dispense", "Drug", "EMService", "Engine", "EngineSettings", "FrequencyLimit",
    "Gpci", "InputRecord", "Mue", "OppsPayment", "Outcome", "PatientState", "PayerProfile",
    "PfsRvu", "PriceFactor", "ReasonInfo",
    "RuleDataError", "RuleSet", "icd10cm_shaped", "ndc_to_11", "normalize_route",
    "npi_check_digit", "npi_valid", "parse_record", "service_date", "zone",
]
