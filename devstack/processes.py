"""Processes started and stopped by pid: any program (the demo's), and Relance's own commands
(workers, gateways) with settings (tests, benchmarks)."""
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

from prometheus_client.parser import text_string_to_metric_families

from devstack.localstack import REPO_ROOT, die_with_parent, free_port, tail

RELANCE = str(Path(sys.executable).with_name("relance"))


class ChildProcess:
    """A program in a session (so a process group) of its own, so that Ctrl-C reaches only
    its starter, and started to die with it (``die_with_parent``); its output in a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path,
                 cwd: Path = REPO_ROOT, web_port: int | None = None) -> None:
        self.name, self.argv, self.env, self.log_path, self.cwd = name, argv, env, Path(log_path), cwd
        self.web_port = web_port
        self.process: subprocess.Popen | None = None

    def start(self) -> "ChildProcess":
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=log,
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
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
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

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples (those with these labels) on its ``/metrics``; 0
        while it is not serving yet."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return 0.0
        return sum(sample.value for family in text_string_to_metric_families(text)
                   for sample in family.samples
                   if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))

    def wait_ready(self, timeout: float) -> None:
        """Until ready; raises at once if the process dies, or at the deadline."""
        deadline = time.monotonic() + timeout
        while self.check_alive() and not self.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:g}s:\n{self.log_tail()}")
            time.sleep(0.1)

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)


class RelanceProcess(ChildProcess):
    """A ``relance`` command with RELANCE_* settings, on a free web port.

    The environment's own RELANCE_* variables are left out, so what runs is exactly what
    the caller asked for.
    """

    def __init__(self, log_dir: Path, command: list[str], pythonpath: str | Path | None = None,
                 **settings: object) -> None:
        web_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELANCE_")}
        env.update({f"RELANCE_{k.upper()}": str(v) for k, v in settings.items()})
        env["RELANCE_WEB_PORT"] = str(web_port)
        env.setdefault("RELANCE_REGISTRY", str(REPO_ROOT / "deploy" / "bots.toml"))
        if pythonpath:  # a patched copy of the code (a git worktree) before the installed one
            env["PYTHONPATH"] = str(pythonpath)
        super().__init__(command[0], [RELANCE, *command], env, Path(log_dir) / f"{command[0]}-{web_port}.log",
                         cwd=Path(pythonpath) if pythonpath else REPO_ROOT, web_port=web_port)
        self.command = command


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
