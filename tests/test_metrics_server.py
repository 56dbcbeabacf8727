"""Unit tests of stream_app.metrics_server: the address syntax, `/metrics` and `/healthz`
answers, the loopback default and releasing the port."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from stream_app.metrics import Metrics
from stream_app.metrics_server import parse_addr, serve


@pytest.mark.parametrize(
    "addr, expected",
    [
        ("127.0.0.1:9108", ("127.0.0.1", 9108)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        (":9108", ("0.0.0.0", 9108)),
        ("9108", ("127.0.0.1", 9108)),
        ("[::1]:9108", ("::1", 9108)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_addr(addr, expected):
    assert parse_addr(addr) == expected


@pytest.mark.parametrize("addr", ["host:port", "[::1]9108", "1.2.3.4:70000"])
def test_parse_addr_rejects(addr):
    with pytest.raises(ValueError):
        parse_addr(addr)


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers.get("Content-Type", "")


def test_server_metrics_and_healthz():
    m = Metrics()
    m.consumed("ehr.em-services", 2)
    m.observe_latency("alert", 0.2)
    state = {"ready": False}
    srv = serve(m, "127.0.0.1:0", ready=lambda: state["ready"])
    try:
        assert srv.host == "127.0.0.1" and srv.port > 0
        status, body, _ = get(f"{srv.url}/healthz")
        assert (status, body.strip()) == (503, "not ready")
        state["ready"] = True
        status, body, _ = get(f"{srv.url}/healthz")
        assert (status, body.strip()) == (200, "ready")
        status, body, ctype = get(f"{srv.url}/metrics")
        assert status == 200
        assert ctype.startswith("text/plain")
        names = {f.name for f in text_string_to_metric_families(body)}
        assert "chargecap_events_consumed" in names
        assert "chargecap_decision_latency_seconds" in names
        assert get(f"{srv.url}/nope")[0] == 404
    finally:
        srv.close()


def test_healthz_not_ready_when_probe_raises():
    def boom() -> bool:
        raise RuntimeError("x")

    srv = serve(Metrics(), "127.0.0.1:0", ready=boom)
    try:
        assert get(f"{srv.url}/healthz")[0] == 503
    finally:
        srv.close()


def test_default_address_is_loopback():
    import errno
    import inspect

    assert inspect.signature(serve).parameters["addr"].default == "127.0.0.1:9108"
    try:
        srv = serve(Metrics())  # the real default, when 9108 is free on this machine
    except OSError as e:
        assert e.errno == errno.EADDRINUSE
        return
    try:
        assert (srv.host, srv.port) == ("127.0.0.1", 9108)
        assert get(f"{srv.url}/healthz")[0] == 200  # ready=None means always ready
    finally:
        srv.close()


def test_close_releases_the_port():
    srv = serve(Metrics(), "127.0.0.1:0")
    port = srv.port
    srv.close()
    srv2 = serve(Metrics(), f"127.0.0.1:{port}")
    srv2.close()
