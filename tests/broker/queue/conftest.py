from tests.queue.pg import pg_server, queue_db  # noqa: F401 - fixtures
