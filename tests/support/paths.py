"""Where the tests find the repository, the local Kafka scripts and the shared spec."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
KAFKA_SH = REPO / "deploy" / "kafka-local" / "kafka.sh"
KAFKA_DATA = REPO / "deploy" / "kafka-local" / "data"
PROBE = REPO / "deploy" / "kafka-local" / "probe.py"
SPEC_DIR = REPO.parent / "shared" / "spec"
EXAMPLES_DIR = SPEC_DIR / "examples"
