"""One dispatcher replica in a process of its own: ``python -m benchmarks.sim.replica SETTINGS_JSON [--wait]``.

Builds the real ``Context`` from the settings in the file (a shared PostgreSQL ``database_url``, the simulated
servers, the template folder, the object store), starts its pool, prints ``ready`` and starts its dispatcher
(placement, claims, runners, leases); with ``--wait`` only once a line comes on its stdin (so several replicas
begin together). It runs until its stdin closes or it gets SIGTERM, then stops cleanly. Several of them share
one queue: the benchmark's ``--replicas`` and the replicas integration test.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path

from orchestrator.bootstrap import Context
from orchestrator.settings import Settings


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings(**json.loads(Path(args[0]).read_text()))
    signal.signal(signal.SIGTERM, _stop)
    ctx = Context(settings)
    try:
        ctx.start_pool()
        print("ready", flush=True)
        if "--wait" in args and not sys.stdin.readline():
            return
        ctx.start_dispatcher()
        done = threading.Event()
        threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
        done.wait()
    finally:
        ctx.close()


def _stop(*_: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    main()
