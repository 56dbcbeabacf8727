"""The only code that touches Faust, aiokafka and rocksdict private names.

The worker changes a few things inside its libraries (docs/streaming.md, "The seam"):
its consumer commits strictly, guards seeks, hands messages to the streams cheaply and
paces fetches (consumer.py); its producer is idempotent and sends whole record batches
(producer.py); its table's RocksDB databases skip RocksDB's log and are read directly
(store.py). All of it is here, behind public functions and classes, so that:

* the worker refuses to start on library versions the seam was not checked against
  (`check_versions`, called by `install_worker_transport`);
* every replacement fails loudly when its target is gone (`patch.replace`,
  `patch.overrides`), instead of setting an attribute nobody reads;
* tests/streaming/test_seam.py checks every name in `surface.NAMES` against the real
  installed classes and the fingerprint of every upstream function the seam copies,
  replaces or wraps (`surface.FINGERPRINTS`).

ruff's private-access rule (SLF001) is enforced everywhere else (pyproject.toml).
"""

from stream_app.streaming.seam.consumer import (
    WorkerConsumer,
    delivery_can_block,
    pace_fetcher,
)
from stream_app.streaming.seam.patch import (
    CHECKED_VERSIONS,
    SeamError,
    check_versions,
    fingerprint,
    installed_versions,
    overrides,
    replace,
    require,
)
from stream_app.streaming.seam.producer import (
    IdempotentProducer,
    kafka_producer,
    new_batch_builder,
)
from stream_app.streaming.seam.store import changelog_is_the_wal, partition_db, set_current_event
from stream_app.streaming.seam.transport import WorkerTransport, install_worker_transport

__all__ = [
    "CHECKED_VERSIONS", "IdempotentProducer", "SeamError", "WorkerConsumer", "WorkerTransport",
    "changelog_is_the_wal", "check_versions", "delivery_can_block", "fingerprint",
    "install_worker_transport", "installed_versions", "kafka_producer", "new_batch_builder",
    "overrides", "pace_fetcher", "partition_db", "replace", "require", "set_current_event",
]
