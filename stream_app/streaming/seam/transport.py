"""The Faust transport the worker runs on: Faust's aiokafka transport with the worker's
consumer and producer classes (Faust's `Transport.Consumer` / `Transport.Producer`
extension points)."""

from __future__ import annotations

from faust.transport.drivers import aiokafka as faust_aiokafka

from stream_app.streaming.seam.consumer import WorkerConsumer
from stream_app.streaming.seam.patch import check_versions, require
from stream_app.streaming.seam.producer import IdempotentProducer


class WorkerTransport(faust_aiokafka.Transport):
    Consumer = WorkerConsumer
    Producer = IdempotentProducer

    # Read by the consumer and its thread when they are created.
    commits = None  # commits.StrictCommits
    pace = None  # fetchpace.FetchPace


def install_worker_transport(app, *, commits=None, pace=None) -> WorkerTransport:
    """Give a new Faust app (transport not created yet) the worker's transport. Refuses
    library versions the seam was not checked against."""
    check_versions()
    require(app, "_transport")
    if app._transport is not None:
        raise RuntimeError("install_worker_transport: the app's transport already exists")
    transport = WorkerTransport(app.conf.broker_consumer, app)
    transport.commits = commits
    transport.pace = pace
    app.transport = transport
    return transport
