"""The patient-state table's RocksDB databases, and Faust's current-event context.

Faust keeps one RocksDB database per table partition and writes every change twice: to
RocksDB (with RocksDB's own write-ahead log) and to the table's changelog topic, which
is what a worker recovers from. RocksDB's log therefore only duplicates the changelog:
after a crash, a database written without it comes back as a *prefix* of its writes (the
memtables flushed so far; one column family, flushed in order), and that prefix includes
Faust's "changelog offset persisted" key as it was at the same point, so recovery reads
the changelog from there and restores the rest (Kafka Streams disables RocksDB's log for
the same reason). A clean stop flushes the memtables. Without the log a state write
costs about half as much and no disk write (docs/performance.md).

Stage 2 also reads and writes the databases directly: it always knows the partition of
the key it touches, so Faust's per-call current-event lookup and key index are not
needed (`partition_db`). With the memory store it goes through the table, which takes
the partition from Faust's current event (`set_current_event`).
"""

from __future__ import annotations

import weakref

from faust import streams as faust_streams
from faust.stores.rocksdb import Store as RocksDBStore

from stream_app.streaming.seam.patch import replace, require


def _is_rocksdict_store(store) -> bool:
    return isinstance(store, RocksDBStore) and store.use_rocksdict


def changelog_is_the_wal(store) -> bool:
    """Open every partition database of a Faust RocksDB store without RocksDB's write-ahead
    log (all writes: Faust's own, recovery batches, persisted offsets and stage 2's).
    Must run before the first database is opened. False (nothing changed) for other
    stores (`memory://`)."""
    if not _is_rocksdict_store(store):
        return False
    require(store, "_dbs")
    if store._dbs:
        raise RuntimeError("changelog_is_the_wal: a partition database is already open")
    from rocksdict import WriteOptions

    open_db = store._open_for_partition

    def open_without_wal(partition: int):
        db = open_db(partition)
        opts = WriteOptions()
        opts.disable_wal = True
        db.set_write_options(opts)
        return db

    replace(store, "_open_for_partition", open_without_wal)
    return True


def partition_db(store, partition: int):
    """The RocksDB database of one partition (opened on first use), or None when the
    store is not RocksDB."""
    if not _is_rocksdict_store(store):
        return None
    return store._db_for_partition(partition)


def set_current_event(event) -> None:
    """Make `event` Faust's current event (tables take the partition from it)."""
    faust_streams._current_event.set(weakref.ref(event))
