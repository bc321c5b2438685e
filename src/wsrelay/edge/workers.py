"""``--workers N``: N relay processes sharing the public port with SO_REUSEPORT.

The parent creates what the workers must share (the per-agent capacity table, so
``max_sessions`` stays exact for the whole relay; a private directory for the Unix
sockets through which worker 0 gathers the others' metrics, telemetry/metrics_group.py),
forks the workers, forwards SIGTERM, SIGINT and SIGHUP to them, and exits when they have
all exited: 0 when each did.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
from typing import Callable

from ..admission.capacity import SharedCapacity

log = logging.getLogger("wsrelay.workers")


def run_workers(count: int, run_one: Callable[[SharedCapacity, int, str], int]) -> int:
    capacity = SharedCapacity()
    metrics_dir = tempfile.mkdtemp(prefix="wsrelay-metrics-")      # mode 0700: this user's only
    children: list[int] = []
    for index in range(count):
        pid = os.fork()
        if pid == 0:                               # the worker
            status = 1
            try:
                status = run_one(capacity, index, metrics_dir)
            except BaseException:                  # pragma: no cover - logged, then exit
                log.exception("worker %d failed", index)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        children.append(pid)
    log.info("started %d workers: %s", count, children)

    def forward(signum, frame):
        for child in children:
            try:
                os.kill(child, signum)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    status = 0
    for child in children:
        while True:
            try:
                _, code = os.waitpid(child, 0)
                break
            except InterruptedError:     # pragma: no cover - PEP 475 retries for us
                continue
        if os.waitstatus_to_exitcode(code) != 0:
            status = 1
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return status
