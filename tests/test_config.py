"""Settings: defaults, environment, flags (which win), security from the environment only."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from stream_app.config import (
    ConfigError,
    Settings,
    add_settings_arguments,
    env_var,
    faust_broker_url,
    kafka_bootstrap_servers,
    setting_names,
    settings_from_args,
    split_host_port,
)

CONTRACT_VARS = {
    "CHARGECAP_BROKER": "broker",
    "CHARGECAP_APP_ID": "app_id",
    "CHARGECAP_TOPIC_PREFIX": "topic_prefix",
    "CHARGECAP_TIMEZONE": "timezone",
    "CHARGECAP_SETTLE_SECONDS": "settle_seconds",
    "CHARGECAP_CLOSE_AFTER_SECONDS": "close_after_seconds",
    "CHARGECAP_RETENTION_DAYS": "retention_days",
    "CHARGECAP_DATA_DIR": "data_dir",
    "CHARGECAP_RULES_DIR": "rules_dir",
    "CHARGECAP_METRICS_ADDR": "metrics_addr",
}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    return parser.parse_args(argv)


def test_defaults_match_the_contract():
    s = settings_from_args(parse([]), environ={})
    assert s.broker == "kafka://localhost:9092"
    assert s.app_id == "chargecap"
    assert s.topic_prefix == ""
    assert s.timezone == "UTC"
    assert s.settle_seconds == 900
    assert s.close_after_seconds == 86400
    assert s.retention_days == 30
    assert s.data_dir == Path("./.chargecap")
    assert s.rules_dir is None
    assert s.metrics_addr == "127.0.0.1:9108"
    assert s.store == "rocksdb://"
    assert s.security_protocol == "PLAINTEXT"
    assert s == Settings()
    assert settings_from_args(None, environ={}) == Settings()


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    """The long options a parser offers, as its help lists them."""
    return set(re.findall(r"--[a-z][a-z0-9-]*", parser.format_help()))


def test_every_contract_variable_has_a_flag_and_env():
    for var, name in CONTRACT_VARS.items():
        assert env_var(name) == var
        assert name in setting_names()
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    flags = _flags(parser)
    for name in CONTRACT_VARS.values():
        assert "--" + name.replace("_", "-") in flags
    assert "--store" in flags


def test_environment_overrides_defaults():
    env = {
        "CHARGECAP_BROKER": "kafka://k1:9092,kafka://k2:9093",
        "CHARGECAP_APP_ID": "cc-test",
        "CHARGECAP_TOPIC_PREFIX": "tenant-a.",
        "CHARGECAP_TIMEZONE": "America/Chicago",
        "CHARGECAP_SETTLE_SECONDS": "1.5",
        "CHARGECAP_CLOSE_AFTER_SECONDS": "60",
        "CHARGECAP_RETENTION_DAYS": "2",
        "CHARGECAP_DATA_DIR": "/var/lib/chargecap",
        "CHARGECAP_RULES_DIR": "/etc/chargecap/rules",
        "CHARGECAP_METRICS_ADDR": "0.0.0.0:9200",
        "CHARGECAP_STORE": "memory://",
    }
    s = settings_from_args(parse([]), environ=env)
    assert s.broker == "kafka://k1:9092,kafka://k2:9093"
    assert s.bootstrap_servers == "k1:9092,k2:9093"
    assert s.app_id == "cc-test"
    assert s.topic("billing.charge-lines") == "tenant-a.billing.charge-lines"
    assert s.timezone == "America/Chicago"
    assert s.settle_seconds == 1.5
    assert s.close_after_seconds == 60
    assert s.retention_days == 2
    assert s.data_dir == Path("/var/lib/chargecap")
    assert s.rules_dir == Path("/etc/chargecap/rules")
    assert (s.metrics_host, s.metrics_port) == ("0.0.0.0", 9200)
    assert s.store == "memory://"


def test_flags_win_over_environment():
    env = {"CHARGECAP_BROKER": "kafka://env:1", "CHARGECAP_SETTLE_SECONDS": "5",
           "CHARGECAP_TOPIC_PREFIX": "env."}  # fmt: skip
    args = parse(["--broker", "kafka://flag:2", "--settle-seconds", "7", "--topic-prefix", ""])
    s = settings_from_args(args, environ=env)
    assert s.broker == "kafka://flag:2"
    assert s.settle_seconds == 7
    assert s.topic_prefix == ""  # an explicit empty flag still wins
    assert s.topic("ehr.em-services") == "ehr.em-services"


def test_empty_environment_variable_means_default():
    s = settings_from_args(parse([]), environ={"CHARGECAP_SETTLE_SECONDS": "", "CHARGECAP_APP_ID": ""})
    assert s.settle_seconds == 900
    assert s.app_id == "chargecap"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"CHARGECAP_SETTLE_SECONDS": "soon"}, "CHARGECAP_SETTLE_SECONDS"),
        ({"CHARGECAP_RETENTION_DAYS": "-1"}, "retention_days"),
        ({"CHARGECAP_METRICS_ADDR": "9108"}, "HOST:PORT"),
        ({"CHARGECAP_METRICS_ADDR": "localhost:http"}, "HOST:PORT"),
        ({"CHARGECAP_KAFKA_SECURITY_PROTOCOL": "TLS"}, "SECURITY_PROTOCOL"),
        ({"CHARGECAP_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "SASL_MECHANISM"),
        (
            {"CHARGECAP_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
             "CHARGECAP_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"},
            "SASL_USERNAME",
        ),
    ],
)  # fmt: skip
def test_invalid_values_raise_a_clear_error(env, message):
    with pytest.raises(ConfigError, match=message):
        settings_from_args(parse([]), environ=env)


def test_invalid_flag_value_names_the_flag():
    with pytest.raises(ConfigError, match="--close-after-seconds"):
        settings_from_args(parse(["--close-after-seconds", "x"]), environ={})


def test_security_comes_from_environment_only():
    parser = argparse.ArgumentParser()
    add_settings_arguments(parser)
    flags = " ".join(_flags(parser))
    for word in ("sasl", "password", "security", "ssl", "username"):
        assert word not in flags

    env = {
        "CHARGECAP_KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
        "CHARGECAP_KAFKA_SASL_MECHANISM": "scram-sha-512",
        "CHARGECAP_KAFKA_SASL_USERNAME": "svc-chargecap",
        "CHARGECAP_KAFKA_SASL_PASSWORD": "s3cret",
    }
    s = settings_from_args(parse([]), environ=env)
    assert (s.security_protocol, s.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-512")
    kwargs = s.aiokafka_security_kwargs()
    assert kwargs["security_protocol"] == "SASL_SSL"
    assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
    assert kwargs["sasl_plain_username"] == "svc-chargecap"
    assert kwargs["sasl_plain_password"] == "s3cret"
    assert kwargs["ssl_context"] is not None
    # The password never shows in repr or in the loggable view.
    assert "s3cret" not in repr(s)
    assert s.redacted()["sasl_password"] == "***"
    assert "s3cret" not in str(s.redacted())
    creds = s.faust_credentials()
    assert creds.mechanism.value == "SCRAM-SHA-512"
    assert creds.protocol.value == "SASL_SSL"


def test_plaintext_has_no_credentials():
    s = Settings()
    assert s.aiokafka_security_kwargs() == {"security_protocol": "PLAINTEXT"}
    assert s.faust_credentials() is None
    assert s.ssl_context() is None


def test_ssl_with_ca_file(tmp_path):
    import ssl

    ca = tmp_path / "missing-ca.pem"
    s = Settings(security_protocol="SSL", ssl_cafile=ca)
    with pytest.raises((FileNotFoundError, ssl.SSLError)):
        s.ssl_context()
    s2 = settings_from_args(parse([]), environ={"CHARGECAP_KAFKA_SECURITY_PROTOCOL": "SSL"})
    assert s2.ssl_context() is not None
    assert s2.faust_credentials().protocol.value == "SSL"


@pytest.mark.parametrize(
    "url, expected",
    [
        ("kafka://localhost:9092", "localhost:9092"),
        ("localhost:9092", "localhost:9092"),
        ("kafka://a:1,kafka://b:2", "a:1,b:2"),
        ("kafka://a:1;kafka://b:2", "a:1,b:2"),
        ("kafka://a:1, b:2 ,", "a:1,b:2"),
        ("kafka://broker", "broker:9092"),
        ("kafka://[::1]:9092", "[::1]:9092"),
        ("kafka://k1:9092/", "k1:9092"),
    ],
)
def test_kafka_bootstrap_servers(url, expected):
    assert kafka_bootstrap_servers(url) == expected


@pytest.mark.parametrize("url", ["", "kafka://", " , "])
def test_kafka_bootstrap_servers_rejects_empty(url):
    with pytest.raises(ConfigError):
        kafka_bootstrap_servers(url)


def test_faust_broker_url():
    assert faust_broker_url("a:1,kafka://b:2") == "kafka://a:1;kafka://b:2"


def test_split_host_port():
    assert split_host_port("127.0.0.1:9108") == ("127.0.0.1", 9108)
    assert split_host_port(":9108") == ("0.0.0.0", 9108)
    assert split_host_port("[::1]:9108") == ("::1", 9108)
