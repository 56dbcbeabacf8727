"""Derivation: records of one patient -> each day's lines, alerts and holds (derive/evaluator.py)."""

from stream_app.engine.derive.evaluator import Evaluator
from stream_app.engine.derive.model import Alert, DayView, Line, alert_key, line_key

__all__ = ["Alert", "DayView", "Evaluator", "Line", "alert_key", "line_key"]
