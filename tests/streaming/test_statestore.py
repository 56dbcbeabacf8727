"""seam/store.py: the patient-state table's RocksDB databases skip RocksDB's write-ahead log
(the changelog topic is the log) and come back after a crash as a prefix of their writes,
persisted changelog offset included. Real Faust RocksDB stores in a tmp dir, no Kafka."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import faust
import pytest

from stream_app.streaming.app import ROCKSDB_OPTIONS
from stream_app.streaming.seam import changelog_is_the_wal, partition_db

REPO = Path(__file__).resolve().parents[2]


def _store(datadir: Path, store: str = "rocksdb://"):
    app = faust.App("statestore-test", broker="kafka://127.0.0.1:1", store=store,
                    datadir=str(datadir), autodiscover=False, web_enabled=False)
    table = app.Table("patient-state", partitions=2, key_type=bytes, value_type=bytes,
                      options=dict(ROCKSDB_OPTIONS) if store.startswith("rocksdb") else None)
    return table.data


def _wal_bytes(datadir: Path) -> int:
    return sum(f.stat().st_size for f in datadir.rglob("*.log") if f.parent.name.endswith(".db"))


def test_writes_skip_the_rocksdb_log_and_read_back(tmp_path):
    store = _store(tmp_path)
    assert changelog_is_the_wal(store) is True
    db = partition_db(store, 1)
    for i in range(200):
        db.put(b"p%04d" % i, b"x" * 1000)
    store.set_persisted_offset(faust.types.TP("t", 1), 199)  # Faust's own write, same db
    db.delete(b"p0007")
    assert db.get(b"p0003") == b"x" * 1000
    assert db.get(b"p0007") is None and db.get(b"missing") is None
    assert store.persisted_offset(faust.types.TP("t", 1)) == 199
    assert partition_db(store, 1) is db  # one database per partition
    assert _wal_bytes(tmp_path) == 0


def test_without_the_change_rocksdb_logs_every_write(tmp_path):
    # the control for the test above: the same writes do reach RocksDB's log by default
    store = _store(tmp_path)
    db = partition_db(store, 1)
    for i in range(200):
        db.put(b"p%04d" % i, b"x" * 1000)
    assert _wal_bytes(tmp_path) > 200 * 1000


def test_must_run_before_a_database_is_opened(tmp_path):
    store = _store(tmp_path)
    partition_db(store, 0)
    with pytest.raises(RuntimeError):
        changelog_is_the_wal(store)


def test_memory_store_is_left_alone(tmp_path):
    store = _store(tmp_path, "memory://")
    assert changelog_is_the_wal(store) is False
    assert partition_db(store, 0) is None


_CRASHING_WRITER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {repo!r})
    from tests.streaming.test_statestore import _store
    from stream_app.streaming.seam import changelog_is_the_wal, partition_db
    import faust
    store = _store(__import__("pathlib").Path({datadir!r}))
    changelog_is_the_wal(store)
    db = partition_db(store, 0)
    tp = faust.types.TP("changelog", 0)
    for batch in range(400):  # ~4 MB: more than a 2 MB memtable, so some of it is flushed
        for i in range(10):
            db.put(b"p%05d" % (batch * 10 + i), os.urandom(500) * 2)
        store.set_persisted_offset(tp, batch)  # as stage 2 does after each batch
    os._exit(0)  # a crash: no close, no flush of the memtable in use
""")


def test_a_crash_leaves_a_prefix_with_its_persisted_offset(tmp_path):
    code = _CRASHING_WRITER.format(repo=str(REPO), datadir=str(tmp_path))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)
    store = _store(tmp_path)
    db = partition_db(store, 0)
    offset = store.persisted_offset(faust.types.TP("changelog", 0))
    keys = sorted(k for k in db.keys() if k.startswith(b"p"))
    assert keys, "the flushed memtables survived"
    assert len(keys) < 4000, "the memtable in use at the crash was lost (no log)"
    # a prefix: the first n keys, nothing after a gap
    assert keys == [b"p%05d" % i for i in range(len(keys))]
    # the persisted offset never claims more than survived: recovery re-reads the
    # changelog from offset + 1 and restores the rest
    assert offset is not None
    assert (offset + 1) * 10 <= len(keys)
