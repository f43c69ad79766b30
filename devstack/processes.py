"""Relance worker processes, started with settings and stopped by pid (tests, benchmarks)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Iterator

import orjson

from devstack.localstack import REPO_ROOT, die_with_parent, free_port

RELANCE = str(Path(sys.executable).with_name("relance"))


def worker_ready(port: int) -> bool:
    """A worker's ``/health`` says it is ready (it joined its groups and can work)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return bool(orjson.loads(response.read()).get("ready"))
    except (OSError, ValueError):
        return False


class WorkerProcess:
    """``relance worker`` in its own process group, with RELANCE_* settings and a log file.

    The environment's own RELANCE_* variables are left out, so what runs is exactly what
    the caller asked for.
    """

    def __init__(self, log_dir: Path, roles: list[str], pythonpath: str | Path | None = None,
                 **settings: object) -> None:
        self.web_port = free_port()
        self.log_path = Path(log_dir) / f"worker-{self.web_port}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RELANCE_")}
        self.env.update({f"RELANCE_{k.upper()}": str(v) for k, v in settings.items()})
        self.env["RELANCE_WEB_PORT"] = str(self.web_port)
        self.env.setdefault("RELANCE_REGISTRY", str(REPO_ROOT / "deploy" / "bots.toml"))
        if pythonpath:  # a patched copy of the code (a git worktree) before the installed one
            self.env["PYTHONPATH"] = str(pythonpath)
        self.cwd = Path(pythonpath) if pythonpath else REPO_ROOT
        self.roles = roles
        self.process: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        args = [RELANCE, "worker", "--loglevel", "info"]
        for role in self.roles:
            args += ["--role", role]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True, cwd=self.cwd, preexec_fn=die_with_parent)
        return self

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> bool:
        """True while running; a dead worker raises at once, with the end of its log."""
        if not self.alive:
            raise RuntimeError(f"worker exited with {self.process.returncode}:\n{self.log_tail()}")
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


@contextlib.contextmanager
def running(workers: list[WorkerProcess]) -> Iterator[list[WorkerProcess]]:
    """Start the workers; always stop them, by pid."""
    try:
        for worker in workers:
            worker.start()
        yield workers
    finally:
        for worker in workers:
            worker.stop()
