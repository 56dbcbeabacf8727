"""`make demo` / `python -m stream_app demo`: the whole pipeline on the local Kafka.

Applies the topics (under a fresh prefix, so every run starts clean), starts the worker as
a subprocess (RocksDB store in a temporary directory, short settle/close times), feeds
the synthetic generator for `--duration` seconds at `--rate` messages/s with a one-line
live display read from the worker's `/metrics`, waits for the patient-days to close,
prints a summary and shuts down everything it started (also on Ctrl-C).

Nothing printed carries patient, encounter or record ids.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from stream_app.config import add_settings_arguments, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=60.0,
                        help="seconds of input to feed (default 60)")
    parser.add_argument("--rate", type=float, default=200.0,
                        help="input messages per second (default 200)")
    parser.add_argument("--seed", type=int, default=2025, help="generator seed")
    parser.add_argument("--format", choices=("canonical", "fhir", "hl7v2"), default="canonical",
                        help="input as canonical records (default), FHIR R4 Bundles on "
                             "ehr.fhir or HL7 v2 messages on ehr.hl7v2 (records the format "
                             "cannot carry stay canonical)")
    parser.add_argument("--malformed-rate", type=float, default=0.01,
                        help="share of malformed messages (default 0.01)")
    parser.add_argument("--demo-settle", type=float, default=5.0,
                        help="settle seconds for the demo worker (default 5)")
    parser.add_argument("--keep-running", action="store_true",
                        help="leave the worker running after the summary until Ctrl-C")
    parser.add_argument("--queue-dsn", default=os.environ.get("CHARGECAP_QUEUE_DSN", ""),
                        help="also run the work queue service (sink, API, pages) on this "
                             "PostgreSQL DSN, with a demo user (make demo sets it)")
    parser.add_argument("--queue-admin-dsn", default=os.environ.get("CHARGECAP_QUEUE_ADMIN_DSN", ""),
                        help="schema owner's DSN for migrating the queue's database")
    add_settings_arguments(parser)


# ----------------------------------------------------------------------------- metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url: str) -> dict:
    """The worker's metrics as {name: [(labels, value)]} (empty when unreachable)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict = defaultdict(list)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name].append((s.labels, s.value))
    return out


def total(m: dict, name: str, **labels) -> float:
    return sum(v for lb, v in m.get(name, ()) if all(lb.get(k) == x for k, x in labels.items()))


def by_label(m: dict, name: str, label: str, **labels) -> dict[str, float]:
    acc: dict[str, float] = defaultdict(float)
    for lb, v in m.get(name, ()):
        if all(lb.get(k) == x for k, x in labels.items()):
            acc[lb.get(label, "")] += v
    return dict(acc)


def quantile(m: dict, name: str, q: float, **labels) -> float | None:
    buckets: dict[float, float] = defaultdict(float)
    for lb, v in m.get(name + "_bucket", ()):
        if all(lb.get(k) == x for k, x in labels.items()):
            buckets[float(lb["le"])] += v
    if not buckets:
        return None
    items = sorted(buckets.items())
    n = items[-1][1]
    if n <= 0:
        return None
    for le, c in items:
        if c >= q * n:
            return le
    return items[-1][0]


def progress_line(m: dict, elapsed: float, sent: int) -> str:
    alerts = by_label(m, "chargecap_alerts_emitted_total", "reason_code", state="open")
    top = sorted(((v, k) for k, v in alerts.items() if v > 0), reverse=True)[:5]
    top_s = " ".join(f"{k}:{int(v)}" for v, k in top) or "-"
    return (f"{elapsed:5.0f}s sent {sent:>6} | in {int(total(m, 'chargecap_events_consumed_total')):>6}"
            f" | lines {int(total(m, 'chargecap_charge_lines_emitted_total', state='active')):>6}"
            f" | dead {int(total(m, 'chargecap_events_dead_lettered_total')):>4}"
            f" | at risk ${total(m, 'chargecap_revenue_at_risk_dollars'):>10,.2f}"
            f" | alerts {top_s}")


def summary(m: dict, url: str, elapsed: float) -> str:
    rows = [
        ("events consumed", f"{int(total(m, 'chargecap_events_consumed_total')):,}"),
        ("dead letters", f"{int(total(m, 'chargecap_events_dead_lettered_total')):,}"),
        ("duplicates ignored", f"{int(total(m, 'chargecap_duplicate_events_total')):,}"),
        ("late events", f"{int(total(m, 'chargecap_late_events_total')):,}"),
        ("charge lines emitted (active)",
         f"{int(total(m, 'chargecap_charge_lines_emitted_total', state='active')):,}"),
        ("charge lines emitted (void)",
         f"{int(total(m, 'chargecap_charge_lines_emitted_total', state='void')):,}"),
        ("alerts emitted (open)",
         f"{int(total(m, 'chargecap_alerts_emitted_total', state='open')):,}"),
        ("alerts emitted (resolved)",
         f"{int(total(m, 'chargecap_alerts_emitted_total', state='resolved')):,}"),
        ("expected reimbursement",
         f"${total(m, 'chargecap_expected_reimbursement_dollars_total'):,.2f}"),
        ("revenue at risk (open alerts)",
         f"${total(m, 'chargecap_revenue_at_risk_dollars'):,.2f}"),
        ("open patient-days", f"{int(total(m, 'chargecap_open_patient_days')):,}"),
    ]
    for oc in ("charge_line", "alert"):
        p50 = quantile(m, "chargecap_decision_latency_seconds", 0.5, outcome=oc)
        p99 = quantile(m, "chargecap_decision_latency_seconds", 0.99, outcome=oc)
        if p50 is not None:
            rows.append((f"latency {oc} p50 / p99 (<=)", f"{p50:g}s / {p99:g}s"))
    w = max(len(r[0]) for r in rows)
    out = [f"\nchargecap demo summary ({elapsed:.0f}s)", "-" * (w + 20)]
    out += [f"{k:<{w}}  {v:>16}" for k, v in rows]
    risk = by_label(m, "chargecap_revenue_at_risk_dollars", "reason_code")
    alerts = by_label(m, "chargecap_alerts_emitted_total", "reason_code", state="open")
    top = sorted(((v, k) for k, v in alerts.items() if v > 0), reverse=True)[:10]
    if top:
        out += ["", f"{'alerts by reason (open emissions)':<34} {'count':>7} {'at risk now':>14}"]
        out += [f"{k:<34} {int(v):>7} {risk.get(k, 0.0):>14,.2f}" for v, k in top]
    out += ["", f"metrics (while the worker runs): {url}"]
    return "\n".join(out)


# ----------------------------------------------------------------------------- feeding


async def _feed(bootstrap: str, messages, rate: float, duration: float, url: str,
                security: dict, tty: bool) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5,
                                max_request_size=4 * 1024 * 1024, **security)
    await producer.start()
    sent = 0
    start = time.monotonic()
    last_show = 0.0
    try:
        while sent < len(messages):
            elapsed = time.monotonic() - start
            due = len(messages) if elapsed >= duration else \
                min(len(messages), int((elapsed + 0.1) * rate))
            futs = []
            for topic, key, value in messages[sent:due]:
                if isinstance(key, str):
                    key = key.encode()
                futs.append(await producer.send(topic, value, key=key))
            if futs:
                await asyncio.gather(*futs)
            sent = max(sent, due)
            if time.monotonic() - last_show >= 0.5:
                last_show = time.monotonic()
                m = await asyncio.to_thread(scrape, url)
                _show(progress_line(m, elapsed, sent), tty)
            await asyncio.sleep(0.1)
    finally:
        await producer.stop()
    return sent


def _show(line: str, tty: bool) -> None:
    if tty:
        width = shutil.get_terminal_size((120, 20)).columns
        sys.stdout.write("\r" + line[: width - 1].ljust(width - 1))
    else:
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


# ----------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    from stream_app.devtools.generate import generate_stream
    from stream_app.devtools.generate.formats import encode_messages
    from stream_app.topics import apply_topics

    settings = settings_from_args(args)
    stamp = time.strftime("%Y%m%d%H%M%S")
    prefix = settings.topic_prefix or f"demo-{stamp}."
    app_id = f"chargecap-demo-{stamp}"
    bootstrap = settings.bootstrap_servers
    security = settings.aiokafka_security_kwargs()
    tty = sys.stdout.isatty()

    print(f"chargecap demo: broker {bootstrap}, topic prefix {prefix!r}")
    print("applying topics ...", flush=True)
    asyncio.run(apply_topics(bootstrap, prefix, client_kwargs=security))

    n = max(1, int(args.rate * args.duration))
    fmt = getattr(args, "format", "canonical")
    print(f"generating {n:,} messages (seed {args.seed}, {fmt}) ...", flush=True)
    stream = generate_stream(args.seed, records=n, malformed_rate=args.malformed_rate,
                             topic_prefix=prefix)
    messages = encode_messages(stream, fmt, prefix)[:n]

    data_dir = Path(tempfile.mkdtemp(prefix="chargecap-demo-"))
    site_args: list[str] = []
    if fmt == "hl7v2":
        # the site rows that map the generated facility, place and plan codes back
        from stream_app.devtools.generate.hl7v2 import write_site

        site_args = ["--rules-dir", str(write_site(data_dir / "site"))]
    port = _free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    log_path = data_dir / "worker.log"
    cmd = [sys.executable, "-m", "stream_app", "worker", "--broker", settings.broker,
           "--app-id", app_id, "--topic-prefix", prefix, "--data-dir", str(data_dir / "data"),
           "--store", "rocksdb://", "--settle-seconds", str(args.demo_settle),
           "--close-after-seconds", "0", "--tick-seconds", "1",
           "--metrics-addr", f"127.0.0.1:{port}", *site_args]
    print(f"starting the worker (log {log_path}) ...", flush=True)
    log_file = open(log_path, "wb")  # noqa: SIM115
    worker = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"},
                              start_new_session=True)
    started = time.monotonic()
    rc = 0
    queue = None
    try:
        if not _wait_ready(worker, port, 90):
            print(f"the worker did not become ready; last log lines:\n{_tail(log_path)}",
                  file=sys.stderr)
            return 1
        print(f"worker ready; metrics at {url}")
        if args.queue_dsn:
            queue = _start_queue(args, settings, prefix, stamp, data_dir)
            if queue is not None:
                print(f"work queue: {queue[1]}  user demo  password {queue[2]}", flush=True)
        print(f"feeding {n:,} messages over {args.duration:g}s (Ctrl-C stops) ...", flush=True)
        sent = asyncio.run(_feed(bootstrap, messages, args.rate, args.duration, url, security,
                                 tty))
        # let everything be consumed and the last patient-days settle and close
        wait_until = time.monotonic() + args.demo_settle + 30
        while time.monotonic() < wait_until:
            m = scrape(url)
            _show(progress_line(m, time.monotonic() - started, sent), tty)
            if (m and total(m, "chargecap_events_consumed_total") >= sent
                    and total(m, "chargecap_open_patient_days") == 0):
                time.sleep(1.0)  # the closing re-emissions of the last tick
                break
            time.sleep(0.5)
        if tty:
            print()
        print(summary(scrape(url), url, time.monotonic() - started))
        if args.keep_running:
            print("worker still running; Ctrl-C to stop", flush=True)
            while worker.poll() is None:
                time.sleep(1)
    except KeyboardInterrupt:
        print("\ninterrupted; shutting down ...", file=sys.stderr)
        rc = 130
    finally:
        if queue is not None:
            _stop(queue[0])
        code = _stop(worker)
        log_file.close()
        if code not in (0, None) and rc == 0:
            print(f"worker exited with {code}; log kept at {log_path}", file=sys.stderr)
            rc = 1
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
        print("demo stopped (worker shut down, temporary data removed)" if rc == 0
              else "demo stopped")
    return rc


def _start_queue(args, settings, prefix: str, stamp: str, data_dir: Path):
    """Migrates the queue's database, makes the demo user, starts `chargecap queue run`;
    (process, URL, password) or None when it cannot."""
    import secrets

    from stream_app.vocabulary import WORK_QUEUES

    base = [sys.executable, "-m", "stream_app", "queue"]
    admin = ["--admin-dsn", args.queue_admin_dsn] if args.queue_admin_dsn else []
    done = subprocess.run([*base, "migrate", *admin], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        print(f"queue: migrate failed: {done.stderr.strip()}", file=sys.stderr)
        return None
    password = secrets.token_urlsafe(12)
    done = subprocess.run([*base, "user", "add", "demo", "--queues", ",".join(WORK_QUEUES), *admin],
                          input=password + "\n", capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        print(f"queue: adding the demo user failed: {done.stderr.strip()}", file=sys.stderr)
        return None
    port = _free_port()
    log = open(data_dir / "queue.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [*base, "run", "--dsn", args.queue_dsn, "--listen", f"127.0.0.1:{port}",
         "--broker", settings.broker, "--topic-prefix", prefix, "--sink-group", f"demo-sink-{stamp}"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + "healthz", timeout=1):
                return proc, url, password
        except OSError:
            time.sleep(0.3)
    print(f"queue: the service did not start; log:\n{_tail(data_dir / 'queue.log')}", file=sys.stderr)
    _stop(proc)
    return None


def _wait_ready(worker: subprocess.Popen, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def _stop(worker: subprocess.Popen) -> int | None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            return worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            return worker.wait(30)
    return worker.returncode


def _tail(path: Path, n: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""
