"""The billing work queue: the engine's alerts and lines in PostgreSQL (sink), the people's
workflow beside them, a JSON API with sign-in, per-queue access and an access audit.

A separate process from the worker (`chargecap queue …`, cli.py). docs/work-queue.md has
the data model, the workflow states and the API.
"""
