"""Imports each module named on the command line alone, each in its own forked child.

Run as `python -m tests.support.import_each MODULE...` in a fresh interpreter. The parent
first imports the heavy third-party libraries (so each child starts in milliseconds) but
nothing of `stream_app`; every child then imports exactly one `stream_app` module into an
interpreter where no other project module is loaded, which is what `python -c "import
MODULE"` would do. Prints one JSON line: {module: traceback} for the modules that failed.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback

PRELOAD = ("orjson", "prometheus_client", "aiokafka", "faust", "mode", "rocksdict")


def main(modules: list[str]) -> int:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass  # the child reports it if a module needs it
    assert not any(m == "stream_app" or m.startswith("stream_app.") for m in sys.modules)
    failures: dict[str, str] = {}
    for module in modules:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            os.close(read_fd)
            status = 0
            try:
                importlib.import_module(module)
            except BaseException:  # noqa: BLE001 - report whatever the import raised
                os.write(write_fd, traceback.format_exc().encode())
                status = 1
            os.close(write_fd)
            os._exit(status)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            report = pipe.read().decode(errors="replace")
        _, status = os.waitpid(pid, 0)
        if status != 0:
            failures[module] = report or f"exit status {status}"
    print(json.dumps(failures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
