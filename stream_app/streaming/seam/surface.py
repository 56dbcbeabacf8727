"""Every library name the seam touches, and the fingerprints of the upstream functions it
copies, replaces or wraps, as checked against CHECKED_VERSIONS (patch.py).

tests/streaming/test_seam.py checks each name against the real installed classes and
each fingerprint against the installed source: a library upgrade that changes any of
them fails the test, and the seam must be read against the new code before the pins in
pyproject.toml and CHECKED_VERSIONS move.
"""

from __future__ import annotations

# (module, class or None for a module attribute, attribute, where: "class" or "instance")
NAMES: tuple[tuple[str, str | None, str, str], ...] = (
    # strict commits (consumer.py WorkerConsumer)
    ("faust.transport.consumer", "Consumer", "_new_offset", "class"),
    ("faust.transport.consumer", "Consumer", "_add_gap", "class"),
    ("faust.transport.consumer", "Consumer", "_filter_committable_offsets", "class"),
    ("faust.transport.consumer", "Consumer", "_acked", "instance"),
    ("faust.transport.consumer", "Consumer", "_acked_index", "instance"),
    ("faust.transport.consumer", "Consumer", "_committed_offset", "instance"),
    # delivery fast path (consumer.py WorkerConsumer._drain_messages, delivery_can_block)
    ("faust.transport.consumer", "Consumer", "_drain_messages", "class"),
    ("faust.transport.consumer", "Consumer", "_read_offset", "instance"),
    ("faust.transport.consumer", "Consumer", "_commit_every", "instance"),
    ("faust.transport.consumer", "Consumer", "_n_acked", "instance"),
    ("faust.transport.consumer", None, "CONSUMER_FETCHING", "module"),
    ("faust.transport.conductor", "Conductor", "_tp_to_callback_lock", "instance"),
    ("faust.transport.conductor", "Conductor", "_topics", "instance"),
    ("faust.channels", "Channel", "_queue", "instance"),
    ("mode", "Service", "_stopped", "instance"),
    # consumer thread and fetch pacing (consumer.py)
    ("faust.transport.drivers.aiokafka", "Consumer", "_new_consumer_thread", "class"),
    ("faust.transport.drivers.aiokafka", "AIOKafkaConsumerThread",
     "_create_worker_consumer", "class"),
    ("aiokafka.consumer.consumer", "AIOKafkaConsumer", "_fetcher", "instance"),
    ("aiokafka.consumer.fetcher", "Fetcher", "_proc_fetch_request", "class"),
    ("aiokafka.consumer.fetcher", "Fetcher", "_fetch_min_bytes", "instance"),
    ("aiokafka.consumer.fetcher", "Fetcher", "_fetch_max_wait_ms", "instance"),
    # idempotent producer and batched sends (producer.py)
    ("faust.transport.drivers.aiokafka", "Producer", "_settings_extra", "class"),
    ("faust.transport.drivers.aiokafka", "Producer", "_ensure_producer", "class"),
    ("aiokafka.producer.producer", "AIOKafkaProducer", "_message_accumulator", "instance"),
    ("aiokafka.producer.message_accumulator", "MessageAccumulator", "_batch_size",
     "instance"),
    ("aiokafka.producer.message_accumulator", "MessageAccumulator", "_compression_type",
     "instance"),
    # transport (transport.py)
    ("faust.app.base", "App", "_transport", "instance"),
    # table store and current event (store.py)
    ("faust.stores.rocksdb", "Store", "_dbs", "instance"),
    ("faust.stores.rocksdb", "Store", "_open_for_partition", "class"),
    ("faust.stores.rocksdb", "Store", "_db_for_partition", "class"),
    ("faust.streams", None, "_current_event", "module"),
)

# "module:qualname" -> sha256 of inspect.getsource (patch.fingerprint)
FINGERPRINTS: dict[str, str] = {
    # replaced
    "faust.transport.consumer:Consumer._new_offset":
        "1d2c7ea89a7ad4f1a216c1d51936e569162cd66bd56f889e13fd29c910b58eb0",
    "faust.transport.consumer:Consumer._add_gap":
        "4df2573ded7c1c2cde04dc6bde6d4480cb5875ef565256e56966b585ae39b1c1",
    "faust.transport.drivers.aiokafka:Consumer._new_consumer_thread":
        "0870ec53dea75083995e3565c0f0a25a1c63ecceaeb238e92e2585e3623af5a9",
    "faust.transport.drivers.aiokafka:Producer._settings_extra":
        "a4c7bc41b63822236e4c9be1c49437d091f58c1b3a983eecabb7362a819aa8bd",
    # copied with the fast path added
    "faust.transport.consumer:Consumer._drain_messages":
        "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417",
    # wrapped (the wrapper relies on what they do)
    "faust.transport.consumer:Consumer.getmany":
        "4b168d84882a70d6e3e2f9804430a63b92f8fd117d3187cbb4aeb54305bda34e",
    "faust.transport.consumer:Consumer.perform_seek":
        "0e8c130ff4b0afd82c0be9c5fd831316e10febc62c94032833911096e156d7c6",
    "faust.transport.consumer:Consumer.seek":
        "b86a9fe05f956b30cf299c787b6787c6e0349cbf1ae556f2456a1e97b15dbb22",
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer":
        "c2701bfc3e6f6cad95c2be36d6a255a86e2c57d18d36cc1082b5fb5c482d99d7",
    "aiokafka.consumer.fetcher:Fetcher._proc_fetch_request":
        "59bf948fff47eed580671971252454daa614df479733f3bedfefe95bc4d8ad30",
    "faust.stores.rocksdb:Store._open_for_partition":
        "1dc4e0113d67379dd61c0a396fa92636577d5fc6be60d4312253fa566080377b",
    "faust.streams:Stream.take_events":
        "607d48aead118ba8ea868718a0df87de1c5fcecd10ec542c659b448796728e08",
}
