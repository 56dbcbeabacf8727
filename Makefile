# chargecap — every entry point a developer or CI needs. `make test` and `make demo`
# bootstrap everything themselves (venv, locked dependencies, Kafka jars, Prometheus).
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

PYTHON_BOOT ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
KAFKA := deploy/kafka-local/kafka.sh
KAFKA_PORT ?= 9092
export KAFKA_PORT
# The three-node cluster (cluster fault tests): brokers on KAFKA_CLUSTER_PORT..+2,
# controllers on +100..+102.
KAFKA_CLUSTER := deploy/kafka-local/cluster.sh
KAFKA_CLUSTER_PORT ?= 19092
export KAFKA_CLUSTER_PORT
PG := deploy/postgres-local/pg.sh
PG_PORT ?= 55432
export PG_PORT
PYTEST_ARGS ?=

.PHONY: help bootstrap venv install lock kafka-fetch kafka-up kafka-down kafka-status \
        kafka-cluster-up kafka-cluster-down kafka-cluster-status \
        prometheus lint test demo bench bench-replay bench-failover topics \
        pg-install pg-up pg-down pg-status chromium bench-report

help:
	@echo "make demo          start Kafka, apply topics, run the end-to-end demo"
	@echo "                   (DEMO_ARGS=\"--format fhir\" or hl7v2: on EHR-format input)"
	@echo "make test          venv + locked deps + Kafka + ruff + the whole test suite"
	@echo "make lint          ruff check"
	@echo "make kafka-up      start the local Kafka on 127.0.0.1:\$$KAFKA_PORT (default 9092)"
	@echo "make kafka-down    stop it (only the process kafka-up started)"
	@echo "make kafka-cluster-up    three KRaft nodes on 127.0.0.1:\$$KAFKA_CLUSTER_PORT..+2 (default 19092)"
	@echo "make kafka-cluster-down  stop them (only the processes kafka-cluster-up started)"
	@echo "make kafka-fetch   resolve the Kafka jars from Maven Central"
	@echo "make pg-up         start the local PostgreSQL on 127.0.0.1:\$$PG_PORT (default 55432), print DSNs"
	@echo "make pg-down       stop it (only the server pg-up started)"
	@echo "make lock          refresh requirements.lock from pyproject.toml"
	@echo "make bench | bench-replay | bench-failover | bench-report"

$(PY):
	command -v $(PYTHON_BOOT) >/dev/null 2>&1 || { echo "$(PYTHON_BOOT) not found; install Python 3.11: apt-get update && apt-get install -y python3.11 python3.11-venv"; exit 1; }
	$(PYTHON_BOOT) -m venv $(VENV)

venv: $(PY)

# Installs exactly what requirements.lock pins (hash-checked), then the project itself.
install: $(PY)
	$(PY) -m pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e .

bootstrap: install kafka-fetch

# Regenerates requirements.lock (runtime + dev extras, with hashes) from pyproject.toml.
lock: $(PY)
	$(PY) -m pip install -q --disable-pip-version-check pip-tools
	$(PY) -m piptools compile --quiet --generate-hashes --allow-unsafe --strip-extras \
	  --no-emit-find-links --extra dev --output-file requirements.lock pyproject.toml

kafka-fetch:
	$(KAFKA) fetch

kafka-up: kafka-fetch
	$(KAFKA) up

kafka-down:
	$(KAFKA) down

kafka-status:
	$(KAFKA) status

kafka-cluster-up: kafka-fetch
	$(KAFKA_CLUSTER) up

kafka-cluster-down:
	$(KAFKA_CLUSTER) down

kafka-cluster-status:
	$(KAFKA_CLUSTER) status

# Debian's postgresql package for the work-queue service; the tests' fixture starts the
# server itself (tests/queue/postgres.py), as the Kafka fixture does.
pg-install:
	$(PG) install

pg-up:
	$(PG) up

pg-down:
	$(PG) down

pg-status:
	$(PG) status

prometheus:
	command -v promtool >/dev/null 2>&1 || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus)

# Debian's Chromium (the report's PDF and its browser tests; no browser download),
# poppler-utils (pdfinfo/pdftotext in those tests) and the DejaVu fonts the charts name.
chromium:
	command -v chromium >/dev/null 2>&1 && command -v pdftotext >/dev/null 2>&1 \
	  && [ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] \
	  || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
	      chromium poppler-utils fonts-dejavu-core)

lint: $(PY)
	$(VENV)/bin/ruff check stream_app tests

topics: install kafka-up
	$(PY) -m stream_app topics apply --broker kafka://127.0.0.1:$(KAFKA_PORT)

# pytest's exit code 5 ("no tests collected") fails this target, as any non-zero does.
test: bootstrap prometheus pg-install chromium
	$(VENV)/bin/ruff check stream_app tests
	$(VENV)/bin/pytest -ra $(PYTEST_ARGS)

# Also the work queue (PostgreSQL, sink, API and pages) with a demo user, printed at start.
demo: bootstrap kafka-up pg-up
	$(PY) -m stream_app topics apply --broker kafka://127.0.0.1:$(KAFKA_PORT)
	CHARGECAP_BROKER=kafka://127.0.0.1:$(KAFKA_PORT) \
	  CHARGECAP_QUEUE_DSN=postgresql://chargecap_queue@127.0.0.1:$(PG_PORT)/chargecap_queue \
	  CHARGECAP_QUEUE_ADMIN_DSN=postgresql://postgres@127.0.0.1:$(PG_PORT)/chargecap_queue \
	  $(PY) -m stream_app demo $(DEMO_ARGS)

bench: install pg-install chromium
	$(PY) benchmarks/bench.py
	$(PY) benchmarks/queue_bench.py
	$(PY) benchmarks/report_bench.py

# The audit report alone: 30 days over 1,000,000 charge lines (docs/performance.md).
bench-report: install chromium
	$(PY) benchmarks/report_bench.py

bench-replay: install
	$(PY) benchmarks/bench_replay.py

# Decision stall during a partition-leader failover on the three-node cluster.
bench-failover: install kafka-fetch
	$(PY) benchmarks/bench_failover.py
