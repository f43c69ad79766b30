"""Relance processes (workers, gateways), started with settings and stopped by pid (tests, benchmarks)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

from devstack.localstack import REPO_ROOT, die_with_parent, free_port

RELANCE = str(Path(sys.executable).with_name("relance"))


class RelanceProcess:
    """A ``relance`` command in its own process group, with RELANCE_* settings and a log file.

    The environment's own RELANCE_* variables are left out, so what runs is exactly what
    the caller asked for.
    """

    def __init__(self, log_dir: Path, command: list[str], pythonpath: str | Path | None = None,
                 **settings: object) -> None:
        self.web_port = free_port()
        self.command = command
        self.log_path = Path(log_dir) / f"{command[0]}-{self.web_port}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RELANCE_")}
        self.env.update({f"RELANCE_{k.upper()}": str(v) for k, v in settings.items()})
        self.env["RELANCE_WEB_PORT"] = str(self.web_port)
        self.env.setdefault("RELANCE_REGISTRY", str(REPO_ROOT / "deploy" / "bots.toml"))
        if pythonpath:  # a patched copy of the code (a git worktree) before the installed one
            self.env["PYTHONPATH"] = str(pythonpath)
        self.cwd = Path(pythonpath) if pythonpath else REPO_ROOT
        self.process: subprocess.Popen | None = None

    def start(self) -> "RelanceProcess":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([RELANCE, *self.command], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True, cwd=self.cwd,
                                            preexec_fn=die_with_parent)
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> bool:
        """True while running; a dead process raises at once, with the end of its log."""
        if not self.alive:
            raise RuntimeError(f"{self.command[0]} exited with {self.process.returncode}:\n{self.log_tail()}")
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

    def ready(self) -> bool:
        """``/health/ready`` on its web port answers 200."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/health/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float) -> None:
        """Until ready; raises at once if the process dies, or at the deadline."""
        deadline = time.monotonic() + timeout
        while self.check_alive() and not self.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.command[0]} not ready after {timeout:g}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class WorkerProcess(RelanceProcess):
    """``relance worker`` running ``roles``."""

    def __init__(self, log_dir: Path, roles: list[str], pythonpath: str | Path | None = None,
                 **settings: object) -> None:
        command = ["worker", "--loglevel", "info"] + [word for role in roles for word in ("--role", role)]
        super().__init__(log_dir, command, pythonpath, **settings)
        self.roles = roles


class GatewayProcess(RelanceProcess):
    """``relance gateway``, on a free webhooks port unless ``gateway_port`` is given."""

    def __init__(self, log_dir: Path, pythonpath: str | Path | None = None, **settings: object) -> None:
        settings.setdefault("gateway_port", free_port())
        super().__init__(log_dir, ["gateway", "--loglevel", "info"], pythonpath, **settings)
        self.gateway_port = int(settings["gateway_port"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"


@contextlib.contextmanager
def running(workers: list[RelanceProcess]) -> Iterator[list[RelanceProcess]]:
    """Start the processes; always stop them, by pid."""
    try:
        for worker in workers:
            worker.start()
        yield workers
    finally:
        for worker in workers:
            worker.stop()
