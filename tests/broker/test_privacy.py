"""Patient data stays out of logs and metrics; endpoints and Kafka security (issue 7,
"Security and privacy"; docs/security.md).

* `test_logs_and_metric_labels_carry_no_phi` (integration): a full generated run through
  the worker at INFO (malformed input, amendments, withdrawals, redeliveries; every day
  settled and closed) with stdout/stderr captured, and `replay` over the same input with
  its output captured. No patient, encounter, record or order id and no diagnosis code of
  the input appears in any log; no label value of the live /metrics equals one, and every
  label value is from its bounded set.
* `test_metrics_bind_loopback_by_default_and_faust_web_is_off` (integration): a worker
  started without `--metrics-addr` and without CHARGECAP_METRICS_ADDR listens on
  127.0.0.1:9108 and nothing else (no Faust web server on 6066), and is not reachable
  through a non-loopback address of this machine.
* The Kafka security tests (unit, no broker): SASL_SSL/SCRAM and SSL settings from the
  environment reach the Faust app's `broker_credentials` and the aiokafka client
  configuration Faust derives from them; the password shows in no repr, no redacted view,
  no log line, and no command has a flag for it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from stream_app.config import SASL_MECHANISMS, settings_from_args
from stream_app.devtools.generate import generate_stream
from stream_app.metrics import (
    ALERT_STATES,
    CODE_FAMILIES,
    ERROR_CODES,
    LINE_STATES,
    OUTCOMES,
    PAYER_CLASSES,
    REASON_CODES,
    SEVERITIES,
    WORK_QUEUES,
)
from stream_app.vocabulary import WORKER_INPUT_TOPICS
from tests.support.paths import REPO
from tests.support.prometheus import exposition_series
from tests.support.sockets import listening_sockets, non_loopback_ipv4
from tests.support.worker import WorkerProcess as Worker
from tests.support.worker import free_port, produce, run_replay, wait_until

ID_FIELDS = ("patient_id", "encounter_id", "record_id", "order_id")
SECRET = "s3cr3t-Pa55word-7f9c2e"  # a password no log line could contain by chance
ID_TOKENS = re.compile(r"[A-Za-z0-9_\-]+")  # ids are letters, digits and dashes
CODE_TOKENS = re.compile(r"[A-Za-z0-9.]+")  # diagnosis codes: letters, digits, one dot


# --------------------------------------------------------------------------- PHI sets


def phi_of(stream) -> tuple[set[str], set[str]]:
    """(ids, diagnosis codes) of every input message: the valid records and the
    malformed messages that are JSON objects (their ids are PHI too)."""
    ids: set[str] = set()
    codes: set[str] = set()

    def take(rec: dict) -> None:
        for f in ID_FIELDS:
            v = rec.get(f)
            if isinstance(v, str) and v:
                ids.add(v)
        dx = rec.get("diagnosis_codes")
        if isinstance(dx, list):
            codes.update(c for c in dx if isinstance(c, str) and c)

    for rec in stream.events:
        take(rec)
    for _t, _k, value in stream.messages:
        try:
            rec = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            take(rec)
    return ids, codes


def phi_found(text: str, ids: set[str], codes: set[str]) -> list[str]:
    """The ids and diagnosis codes that occur in `text`, ids as whole [A-Za-z0-9_-] tokens,
    codes as whole [A-Za-z0-9.] tokens (so `Z23` does not match inside `Z23.1` or `AZ231`)."""
    id_tokens = set(ID_TOKENS.findall(text))
    code_tokens = {t.strip(".") for t in CODE_TOKENS.findall(text)}
    return sorted(ids & id_tokens) + sorted(codes & code_tokens)


def test_phi_finder_finds_planted_values():
    ids, codes = {"pt-ab12-0000001", "enc-ab12-00000002"}, {"Z23", "E11.9"}
    assert phi_found("nothing here: Z23.1 AZ231 E11.90 pt-ab12-00000011", ids, codes) == []
    text = "x key=b'pt-ab12-0000001' /enc-ab12-00000002: dx Z23, [E11.9]."
    assert phi_found(text, ids, codes) == ["enc-ab12-00000002", "pt-ab12-0000001", "E11.9", "Z23"]


# --------------------------------------------------------------------------- logs, labels


def allowed_label_values(prefix: str, app_id: str) -> dict[str, set[str] | None]:
    inputs = {prefix + t for t in WORKER_INPUT_TOPICS}
    return {
        "topic": inputs | {f"{app_id}-patient-records", "other"},
        "error_code": set(ERROR_CODES) | {"other"},
        "code_family": set(CODE_FAMILIES),
        "state": set(LINE_STATES) | set(ALERT_STATES),
        "severity": set(SEVERITIES),
        "work_queue": set(WORK_QUEUES) | {"other"},
        "reason_code": set(REASON_CODES) | {"other"},
        "payer_class": set(PAYER_CLASSES) | {"unknown"},
        "outcome": set(OUTCOMES),
        "partition": None,  # a partition number
        "le": None,  # a bucket bound
    }


@pytest.mark.integration
async def test_logs_and_metric_labels_carry_no_phi(kafka_bootstrap, kafka_broker_url,
                                                   kafka_topics, tmp_path):
    prefix = kafka_topics
    app_id = f"{prefix}app"
    stream = generate_stream(4242, records=2000, malformed_rate=0.04, amend_rate=0.1,
                             withdraw_rate=0.03, redeliver_rate=0.05, topic_prefix=prefix)
    assert stream.stats["amendment"] and stream.stats["withdrawal"] and stream.malformed
    messages = stream.messages
    ids, codes = phi_of(stream)
    assert len(ids) > 1000 and len(codes) > 10

    worker = Worker(tmp_path, kafka_broker_url, app_id, prefix, log_level="INFO").start()
    try:
        await asyncio.to_thread(worker.wait_ready, 90)
        await produce(kafka_bootstrap, messages, chunk=500)

        def done() -> bool:
            series = exposition_series(worker.metrics_text())
            consumed = sum(v for n, _l, v in series if n == "chargecap_events_consumed_total")
            open_days = sum(v for n, _l, v in series if n == "chargecap_open_patient_days")
            return consumed == len(messages) and open_days == 0

        await asyncio.to_thread(wait_until, done, 120, "every message consumed and every day "
                                "closed", detail=worker.tail)
        await asyncio.sleep(2)  # the close re-emission and a lag update after it
        text = await asyncio.to_thread(worker.metrics_text)
    finally:
        rc = await asyncio.to_thread(worker.stop)
    assert rc == 0, worker.tail()

    # (b) metric labels: never an id or diagnosis, always from the bounded sets
    series = exposition_series(text)
    label_values = {(k, v) for _n, labels, _v in series for k, v in labels.items()}
    assert label_values
    leaked = sorted((k, v) for k, v in label_values if v in ids or v in codes)
    assert not leaked, f"metric label values equal to input ids/diagnoses: {leaked[:10]}"
    allowed = allowed_label_values(prefix, app_id)
    for k, v in sorted(label_values):
        assert k in allowed, f"unexpected label {k}={v!r}"
        if allowed[k] is None:
            assert re.fullmatch(r"\+Inf|[0-9.e+-]+", v), f"{k}={v!r}"
        else:
            assert v in allowed[k], f"label {k}={v!r} is outside its bounded set"

    # (a) logs: the worker's stdout and stderr, then replay's over the same input
    logs = worker.logs()
    assert "recovery complete" in logs, "the worker's INFO log was not captured"
    found = phi_found(logs, ids, codes)
    assert not found, f"worker logs contain input ids/diagnoses: {found[:10]}"
    _alerts, replay_logs = await asyncio.to_thread(run_replay, tmp_path, messages)
    assert "replay:" in replay_logs
    found = phi_found(replay_logs, ids, codes)
    assert not found, f"replay output contains input ids/diagnoses: {found[:10]}"


# --------------------------------------------------------------------------- bind address

DEFAULT_METRICS_PORT = 9108


def _port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.integration
async def test_metrics_bind_loopback_by_default_and_faust_web_is_off(kafka_broker_url,
                                                                     kafka_topics, tmp_path):
    prefix = kafka_topics
    try:
        await asyncio.to_thread(wait_until, lambda: not _port_in_use(DEFAULT_METRICS_PORT), 20,
                                "port 9108 to be free")
    except AssertionError:
        pytest.skip("another process listens on 127.0.0.1:9108, the default metrics port")
    worker = Worker(tmp_path, kafka_broker_url, f"{prefix}app", prefix, metrics_port=None,
                    env={"CHARGECAP_METRICS_ADDR": None})
    assert not any(a.startswith("--metrics-addr") for a in worker.args)
    worker.start()
    try:
        await asyncio.to_thread(worker.wait_ready, 90)  # Faust fully started
        sockets = listening_sockets(worker.pid)
        assert sockets == {("127.0.0.1", DEFAULT_METRICS_PORT)}, (
            f"the worker listens on {sorted(sockets)}; expected only 127.0.0.1:9108")
        assert all(port != 6066 for _a, port in sockets)  # Faust's web server is off
        others = non_loopback_ipv4()
        for addr in others:
            with pytest.raises(OSError), socket.create_connection(
                    (addr, DEFAULT_METRICS_PORT), timeout=2):
                pass
        print(f"\nworker listens on {sorted(sockets)}; refused on {others or 'no other address'}")
    finally:
        rc = await asyncio.to_thread(worker.stop)
    assert rc == 0, worker.tail()


# --------------------------------------------------------------------------- Kafka security


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(CA file, client certificate, client key): a throw-away self-signed certificate."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    if shutil.which("openssl"):
        done = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
             "-out", str(cert), "-days", "1", "-subj", "/CN=chargecap-test-ca"],
            capture_output=True, timeout=60)
        if done.returncode == 0:
            return cert, cert, key
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if not bundle.exists():
        pytest.skip("neither openssl nor a system CA bundle to build a TLS context from")
    return bundle, None, None


def _sasl_env(monkeypatch, cafile: Path, certfile: Path | None = None,
              keyfile: Path | None = None, mechanism: str = "SCRAM-SHA-512") -> None:
    for var in ("CHARGECAP_KAFKA_SSL_CERTFILE", "CHARGECAP_KAFKA_SSL_KEYFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CHARGECAP_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("CHARGECAP_KAFKA_SASL_MECHANISM", mechanism)
    monkeypatch.setenv("CHARGECAP_KAFKA_SASL_USERNAME", "chargecap-svc")
    monkeypatch.setenv("CHARGECAP_KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.setenv("CHARGECAP_KAFKA_SSL_CAFILE", str(cafile))
    if certfile:
        monkeypatch.setenv("CHARGECAP_KAFKA_SSL_CERTFILE", str(certfile))
    if keyfile:
        monkeypatch.setenv("CHARGECAP_KAFKA_SSL_KEYFILE", str(keyfile))


def _build_app(settings):
    from stream_app.streaming.app import StreamOptions, build_faust_app

    return build_faust_app(settings, StreamOptions())


def test_sasl_ssl_scram_settings_reach_the_faust_app(monkeypatch, tls_files, caplog):
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    cafile, certfile, keyfile = tls_files
    _sasl_env(monkeypatch, cafile, certfile, keyfile)
    caplog.set_level(logging.DEBUG)
    settings = settings_from_args(None)
    app = _build_app(settings)

    creds = app.conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.mechanism.value == "SCRAM-SHA-512"
    assert creds.username == "chargecap-svc"
    assert creds.password == SECRET
    assert isinstance(creds.ssl_context, ssl.SSLContext)
    assert creds.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert creds.ssl_context.check_hostname
    if certfile is not None:
        # the CA file was loaded into the context (our throw-away CA is in its store)
        assert any(c.get("subject") == ((("commonName", "chargecap-test-ca"),),)
                   for c in creds.ssl_context.get_ca_certs())
    # what Faust hands to aiokafka's consumer and producer
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_username"] == "chargecap-svc"
    assert auth["sasl_plain_password"] == SECRET
    assert auth["ssl_context"] is creds.ssl_context
    # the same for the plain aiokafka clients (topics apply, generate --produce)
    kw = settings.aiokafka_security_kwargs()
    assert kw["security_protocol"] == "SASL_SSL" and kw["sasl_mechanism"] == "SCRAM-SHA-512"

    # the password: in no repr, no redacted view, no log record
    shown = [repr(settings), str(settings), repr(settings.redacted()), str(settings.redacted()),
             repr(creds), str(creds), repr(app.conf.broker_credentials)]
    for s in shown:
        assert SECRET not in s
    assert settings.redacted()["sasl_password"] == "***"
    assert settings.redacted()["sasl_username"] == "chargecap-svc"
    assert all(SECRET not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("mechanism", SASL_MECHANISMS)
def test_every_sasl_mechanism_reaches_the_app(monkeypatch, tls_files, mechanism):
    import faust

    _sasl_env(monkeypatch, tls_files[0], mechanism=mechanism)
    creds = _build_app(settings_from_args(None)).conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.mechanism.value == mechanism


def test_sasl_plaintext_and_ssl_only(monkeypatch, tls_files):
    import faust
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    monkeypatch.setenv("CHARGECAP_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("CHARGECAP_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("CHARGECAP_KAFKA_SASL_USERNAME", "u")
    monkeypatch.setenv("CHARGECAP_KAFKA_SASL_PASSWORD", SECRET)
    monkeypatch.delenv("CHARGECAP_KAFKA_SSL_CAFILE", raising=False)
    creds = _build_app(settings_from_args(None)).conf.broker_credentials
    assert isinstance(creds, faust.SASLCredentials) and creds.ssl_context is None
    assert credentials_to_aiokafka_auth(creds)["security_protocol"] == "SASL_PLAINTEXT"

    for var in ("SASL_MECHANISM", "SASL_USERNAME", "SASL_PASSWORD"):
        monkeypatch.delenv(f"CHARGECAP_KAFKA_{var}")
    monkeypatch.setenv("CHARGECAP_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("CHARGECAP_KAFKA_SSL_CAFILE", str(tls_files[0]))
    if tls_files[1] is not None:
        monkeypatch.setenv("CHARGECAP_KAFKA_SSL_CERTFILE", str(tls_files[1]))
        monkeypatch.setenv("CHARGECAP_KAFKA_SSL_KEYFILE", str(tls_files[2]))
    creds = _build_app(settings_from_args(None)).conf.broker_credentials
    assert isinstance(creds, faust.SSLCredentials)
    auth = credentials_to_aiokafka_auth(creds)
    assert auth["security_protocol"] == "SSL" and isinstance(auth["ssl_context"], ssl.SSLContext)

    monkeypatch.setenv("CHARGECAP_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    assert _build_app(settings_from_args(None)).conf.broker_credentials is None


def _help(*argv: str) -> str:
    done = subprocess.run([sys.executable, "-m", "stream_app", *argv, "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_no_command_line_flag_for_kafka_secrets():
    from stream_app.cli import COMMANDS

    texts = {"chargecap": _help()}
    for command in COMMANDS:
        texts[command] = _help(command)
    texts["topics apply"] = _help("topics", "apply")
    for name, text in texts.items():
        flags = set(re.findall(r"--[a-z][a-z0-9-]*", text))
        bad = sorted(f for f in flags if re.search(r"pass|secret|sasl|ssl|cred|token|key", f))
        assert not bad, f"`{name} --help` offers {bad}"
        assert "password" not in text.lower(), f"`{name} --help` mentions a password"
    # and argparse refuses such a flag rather than taking it
    done = subprocess.run([sys.executable, "-m", "stream_app", "worker", "--sasl-password", SECRET],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unrecognized arguments" in done.stderr


def test_worker_with_sasl_ssl_never_logs_the_password(tls_files, tmp_path):
    """The worker started with SASL_SSL settings at DEBUG against a closed loopback port (no
    broker: it tries to connect, then gives up or keeps trying) logs nothing containing the
    password."""
    port = free_port()
    worker = Worker(tmp_path, f"kafka://127.0.0.1:{port}", "secret-test", "secret-test.",
                    log_level="DEBUG", env={
                        "CHARGECAP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                        "CHARGECAP_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
                        "CHARGECAP_KAFKA_SASL_USERNAME": "chargecap-svc",
                        "CHARGECAP_KAFKA_SASL_PASSWORD": SECRET,
                        "CHARGECAP_KAFKA_SSL_CAFILE": str(tls_files[0]),
                        "CHARGECAP_KAFKA_SSL_CERTFILE": None,
                        "CHARGECAP_KAFKA_SSL_KEYFILE": None,
                    })
    assert all(SECRET not in a for a in worker.args)
    worker.start()
    try:
        wait_until(lambda: worker.proc.poll() is not None
                   or f"127.0.0.1:{port}" in worker.logs(), 30,
                   "the worker to try the broker", detail=worker.tail)
        time.sleep(3)  # a few more connection attempts, if it keeps trying
    finally:
        worker.stop(timeout=20)
    logs = worker.logs()
    assert f"127.0.0.1:{port}" in logs, logs  # it got as far as connecting
    assert SECRET not in logs
