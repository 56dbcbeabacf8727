"""Access to the patient-state table from inside stage 2, one partition at a time.

With the RocksDB store, stage 2 reads and writes the partition's database directly
(seam.partition_db): it always knows the partition of the key it touches. With the
memory store it goes through the Faust table, which takes the partition from Faust's
*current event*; a batch mixes partitions, so the current event is set to one of this
partition's events before every access. Either way every write is also collected as a
changelog message; the caller produces them for the whole batch at once and waits for
their acknowledgement before the batch's outputs are produced (docs/streaming.md,
"crash safety").
"""

from __future__ import annotations

from stream_app.streaming.processor import TableAccess
from stream_app.streaming.seam import partition_db, set_current_event


class PartitionTable(TableAccess):
    __slots__ = ("table", "partition", "event", "changelog", "topic", "db")

    def __init__(self, table, partition: int, event, changelog: list):
        self.table, self.partition, self.event, self.changelog = table, partition, event, changelog
        self.topic = table.changelog_topic_name
        self.db = partition_db(table.data, partition)  # None: not RocksDB

    def activate(self) -> None:
        set_current_event(self.event)

    def get(self, key: bytes) -> bytes | None:
        if self.db is not None:
            return self.db.get(key)
        self.activate()
        try:
            return self.table.data[key]
        except KeyError:
            return None

    def set(self, key: bytes, value: bytes) -> None:
        if self.db is not None:
            self.db.put(key, value)
        else:
            self.activate()
            self.table.data[key] = value
        self.changelog.append((self.topic, self.partition, key, value, None))

    def delete(self, key: bytes) -> None:
        if self.db is not None:
            self.db.delete(key)
        else:
            self.activate()
            try:
                del self.table.data[key]
            except KeyError:
                pass
        self.changelog.append((self.topic, self.partition, key, None, None))
