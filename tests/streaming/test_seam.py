"""The seam (stream_app/streaming/seam) against the REAL installed Faust, aiokafka and
rocksdict: every private name it touches exists, every upstream function it copies,
replaces or wraps is the code it was checked against, the versions are the pinned ones,
and the two changes that guard correctness (strict commits, idempotent producer) are
in effect through Faust's own call paths. No stand-ins for library classes here."""

from __future__ import annotations

import importlib
import inspect
import re
import tomllib
from pathlib import Path

import faust
import pytest
from faust.types import TP, Message
from faust.types import tuples as faust_tuples

from stream_app.config import Settings
from stream_app.streaming.commits import StrictCommits
from stream_app.streaming.fetchpace import FetchPace
from stream_app.streaming.seam import (
    CHECKED_VERSIONS,
    IdempotentProducer,
    SeamError,
    WorkerConsumer,
    check_versions,
    delivery_can_block,
    fingerprint,
    install_worker_transport,
    installed_versions,
    overrides,
    replace,
)
from stream_app.streaming.seam.surface import FINGERPRINTS, NAMES
from stream_app.streaming.seekguard import SeekGuarded

REPO = Path(__file__).resolve().parents[2]


def _resolve(module: str, qualname: str):
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _assigns_on_self(cls: type, name: str) -> bool:
    """Whether the source of `cls` or a base class assigns or declares `self.<name>` /
    `<name>:` (instance attributes a class object does not show)."""
    pattern = re.compile(rf"(self\.{re.escape(name)}\s*(:[^=\n]*)?=|^\s+{re.escape(name)}\s*:)",
                         re.M)
    for klass in cls.__mro__:
        if klass is object:
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        if pattern.search(source):
            return True
    return False


def _app(tmp_path, audit=None, pace=None):
    app = faust.App("seam-test", broker="kafka://127.0.0.1:1", store="memory://",
                    datadir=str(tmp_path), autodiscover=False, web_enabled=False)

    async def no_audit(tp, start, stop):
        return None

    commits = StrictCommits(audit or no_audit)
    install_worker_transport(app, commits=commits, pace=pace)
    return app, commits


# ---------------------------------------------------------------------- versions


def test_the_installed_versions_are_the_checked_ones_and_the_pinned_ones():
    assert installed_versions() == dict(CHECKED_VERSIONS)
    check_versions()
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(re.match(r"([A-Za-z0-9_.-]+)==([^\s;]+)", d).groups() for d in deps
                if "==" in d)
    for name, version in CHECKED_VERSIONS.items():
        assert pins.get(name) == version, f"pyproject.toml must pin {name}=={version}"


def test_other_versions_are_refused_with_a_message_naming_both():
    installed = {**CHECKED_VERSIONS, "aiokafka": "0.15.1"}
    with pytest.raises(SeamError) as info:
        check_versions(installed)
    text = str(info.value)
    assert "aiokafka 0.15.1" in text and "aiokafka==0.14.0" in text
    with pytest.raises(SeamError, match="rocksdict not installed"):
        check_versions({**CHECKED_VERSIONS, "rocksdict": None})


def test_the_worker_app_refuses_unchecked_versions(monkeypatch, tmp_path):
    from stream_app.streaming import seam
    from stream_app.streaming.app import StreamOptions, build_worker_app

    monkeypatch.setattr(seam.patch, "installed_versions",
                        lambda names=None: {**CHECKED_VERSIONS, "faust-streaming": "0.16.0"})
    with pytest.raises(SeamError, match="faust-streaming 0.16.0"):
        build_worker_app(Settings(broker="kafka://127.0.0.1:1", store="memory://",
                                  data_dir=tmp_path), StreamOptions())


def test_the_worker_command_refuses_unchecked_versions_with_a_clear_message(
        monkeypatch, tmp_path, capsys):
    import argparse

    from stream_app.streaming import seam, worker

    monkeypatch.setattr(seam.patch, "installed_versions",
                        lambda names=None: {**CHECKED_VERSIONS, "aiokafka": "0.15.0"})
    parser = argparse.ArgumentParser()
    worker.add_arguments(parser)
    args = parser.parse_args(["--broker", "kafka://127.0.0.1:1", "--store", "memory://",
                              "--metrics-addr", "127.0.0.1:0", "--data-dir", str(tmp_path)])
    assert worker.run(args) == 2
    err = capsys.readouterr().err
    assert "aiokafka 0.15.0" in err and "aiokafka==0.14.0" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------- surface


@pytest.mark.parametrize("module,cls,name,where", NAMES,
                         ids=[f"{c or m}.{n}" for m, c, n, _w in NAMES])
def test_every_name_the_seam_touches_exists(module, cls, name, where):
    mod = importlib.import_module(module)
    if where == "module":
        assert hasattr(mod, name)
        return
    klass = getattr(mod, cls)
    if where == "class":
        assert name in dir(klass), f"{module}.{cls}.{name} is gone"
    else:
        assert _assigns_on_self(klass, name), f"{module}.{cls} no longer sets {name}"


@pytest.mark.parametrize("target", sorted(FINGERPRINTS))
def test_upstream_code_the_seam_copies_replaces_or_wraps_is_unchanged(target):
    module, qualname = target.split(":")
    assert fingerprint(_resolve(module, qualname)) == FINGERPRINTS[target], (
        f"{target} changed upstream: read the seam against it again")


def test_the_real_instances_have_the_instance_attributes(tmp_path):
    app, _ = _app(tmp_path)
    consumer = app.consumer
    for name in ("_acked", "_acked_index", "_committed_offset", "_read_offset",
                 "_commit_every", "_n_acked", "_stopped"):
        assert hasattr(consumer, name), name
    for name in ("_tp_to_callback_lock", "_topics"):
        assert hasattr(app.topics, name), name
    assert hasattr(app.channel(), "_queue")


# ---------------------------------------------------------------------- checked replacement


def test_a_replacement_of_a_missing_attribute_fails_and_creates_nothing():
    class Upstream:
        def _renamed_later(self):
            return 1

    obj = Upstream()
    with pytest.raises(SeamError, match="_old_name"):
        replace(obj, "_old_name", lambda: 2)
    assert not hasattr(obj, "_old_name")
    assert replace(obj, "_renamed_later", lambda: 2)() == 1


def test_an_override_of_a_method_the_base_no_longer_has_fails_at_class_creation():
    class Base:
        def _new(self):
            return 1

    with pytest.raises(SeamError, match="_old"):
        @overrides(Base, "_old")
        class Sub(Base):
            def _old(self):
                return 2


# ---------------------------------------------------------------------- strict commits


async def test_strict_commits_decide_what_fausts_commit_path_commits(tmp_path):
    """Faust's `_filter_committable_offsets` (what its commit calls) must come to the
    strict decision: with offset 26 never acknowledged, nothing is committed where
    Faust's own rule would commit 30. Fails if Faust stops calling `_new_offset`."""
    audits = []

    async def audit(tp, start, stop):
        audits.append((start, stop))
        return None

    app, commits = _app(tmp_path, audit=audit)
    consumer = app.consumer
    assert isinstance(consumer, WorkerConsumer)
    assert consumer.strict_commits is commits
    tp = TP("ehr.em-services", 0)
    consumer._committed_offset[tp] = 26
    app.topics.acks_enabled_for = lambda topic: True
    for offset in (27, 28, 29):
        msg = Message(tp.topic, tp.partition, offset, 0.0, 0, None, b"k", b"v", None, tp=tp)
        assert consumer.ack(msg)
    assert consumer.acked_offsets(tp) == [27, 28, 29]
    assert consumer.committed_offset(tp) == 26
    # Faust's own rule would cross the missing offset 26:
    from faust.transport.consumer import Consumer as FaustConsumer

    assert FaustConsumer._new_offset(consumer, tp) == 30
    consumer._committed_offset[tp] = 26
    for offset in (27, 28, 29):
        consumer._acked[tp].append(offset)
        consumer._acked_index[tp].add(offset)
    assert consumer._filter_committable_offsets([tp]) == {}
    for task in list(commits.tasks):
        await task
    assert audits == [(26, 30)]


async def test_faust_gap_tracking_is_switched_off(tmp_path):
    app, _ = _app(tmp_path)
    consumer = app.consumer
    tp = TP("ehr.em-services", 0)
    consumer._committed_offset[tp] = 26
    assert await consumer._add_gap(tp, 27, 30) is None
    assert not consumer._gap[tp]


def test_seeks_are_guarded_on_the_real_consumer(tmp_path):
    app, _ = _app(tmp_path)
    consumer = app.consumer
    mro = type(consumer).__mro__
    assert mro.index(SeekGuarded) < mro.index(faust.transport.consumer.Consumer)
    assert type(consumer).getmany is SeekGuarded.getmany
    assert not consumer.seek_lock.locked()


# ---------------------------------------------------------------------- producer


async def test_the_producer_is_idempotent_with_acks_all_without_exactly_once(tmp_path):
    """Retries after a broker failure must not duplicate outputs (equal revisions). Goes
    through Faust's own `_new_producer`: fails if Faust stops asking `_settings_extra`."""
    app, _ = _app(tmp_path)
    assert isinstance(app.producer, IdempotentProducer)
    producer = app.producer._new_producer()
    assert producer._txn_manager is not None  # idempotence on: sequence numbers
    assert producer._sender._acks == -1  # all in-sync replicas
    assert app.conf.processing_guarantee.value == "at_least_once"


# ---------------------------------------------------------------------- consumer details


async def test_the_worker_consumer_is_paced_once_started(monkeypatch, tmp_path):
    """Fetch pacing reaches the aiokafka consumer Faust builds, and the fetcher it creates
    at start."""
    import aiokafka

    class Fetcher:
        def __init__(self):
            self._fetch_min_bytes, self._fetch_max_wait_ms = 1, 1500

        async def _proc_fetch_request(self, assignment, node_id, request):
            return True

    async def fake_start(self):  # aiokafka's start() connects, then creates the fetcher
        self._fetcher = Fetcher()

    monkeypatch.setattr(aiokafka.AIOKafkaConsumer, "start", fake_start)
    app, _ = _app(tmp_path, pace=FetchPace(32768, 0.015))
    thread = app.consumer._thread
    consumer = thread._create_worker_consumer(thread.transport)
    try:
        await consumer.start()
        fetcher = consumer._fetcher
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (1, 1500)
        await fetcher._proc_fetch_request(None, 0, None)  # brought records
        assert (fetcher._fetch_min_bytes, fetcher._fetch_max_wait_ms) == (32768, 15)
    finally:
        await consumer._client.close()


def test_the_fast_path_check_reads_the_real_app(tmp_path):
    app, _ = _app(tmp_path)
    app.flow_control.resume()
    assert delivery_can_block(app) is False
    app.flow_control.suspend()
    assert delivery_can_block(app) is True


def test_faust_message_still_has_the_fields_stage_1_reads():
    fields = inspect.signature(faust_tuples.Message.__init__).parameters
    for name in ("topic", "partition", "offset", "timestamp", "headers", "key", "value"):
        assert name in fields
