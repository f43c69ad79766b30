"""A worker process whose stop is bounded, whatever the broker and Redis are doing.

Faust stops a worker on SIGTERM by stopping every service in turn, and a service waiting
on a broker that is gone can wait for ever (issue 14 saw one still running 60 s after
the signal). On the first SIGTERM or SIGINT a watchdog thread starts: if the orderly stop
has not ended the process within the grace period, it exits at once. What was not flushed
is left to the partitions' next owner, exactly as after a crash, which the stages are
built to survive.
"""
from __future__ import annotations

import logging
import os
import threading

import faust

log = logging.getLogger("relance.worker")

FORCED_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process the signal ended


class BoundedWorker(faust.Worker):
    def __init__(self, *args, grace: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.grace = grace
        self._watchdog: threading.Timer | None = None

    def _on_sigterm(self) -> None:
        self._arm_watchdog("SIGTERM")
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._arm_watchdog("SIGINT")
        super()._on_sigint()

    def _arm_watchdog(self, signal_name: str) -> None:
        if self._watchdog is not None:
            return
        log.info("%s: stopping, at most %.1f s", signal_name, self.grace)
        self._watchdog = threading.Timer(self.grace, self._exit_now)
        self._watchdog.daemon = True
        self._watchdog.start()

    def _exit_now(self) -> None:
        log.warning("the stop took longer than its %.1f s grace period: exiting now", self.grace)
        logging.shutdown()
        os._exit(FORCED_EXIT_CODE)
