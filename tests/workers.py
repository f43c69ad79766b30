"""Relance worker processes for integration tests: started with settings, stopped by pid."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from relance.localstack import free_port

RELANCE = str(Path(sys.executable).with_name("relance"))


class WorkerProcess:
    """``relance worker`` in its own process group, its output kept in a log file."""

    def __init__(self, log_dir: Path, roles: list[str], **settings: object) -> None:
        self.web_port = free_port()
        self.log_path = Path(log_dir) / f"worker-{self.web_port}.log"
        self.env = dict(os.environ)
        self.env.update({f"RELANCE_{k.upper()}": str(v) for k, v in settings.items()})
        self.env["RELANCE_WEB_PORT"] = str(self.web_port)
        self.roles = roles
        self.process: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        args = [RELANCE, "worker", "--loglevel", "info"]
        for role in self.roles:
            args += ["--role", role]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> bool:
        """True while running; a dead worker fails the test at once, with its log."""
        if not self.alive:
            raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.log_tail()}")
        return True

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed."""
        if self.alive:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 30) -> None:
        if not self.alive:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"
