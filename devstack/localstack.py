"""A real Kafka broker and a real Redis server on this machine, without Docker.

Kafka runs as a one-node KRaft broker+controller from jars that Maven fetches once from
Maven Central (Apache's download site is out of reach here) into
``${RELANCE_CACHE:-~/.cache/relance}/kafka-<version>/libs``. Both servers run as detached
children in their own process group and are tracked by pid files in a state folder, so
``relance broker up`` can return and ``relance broker down`` stop them later, by pid.

``python -m devstack.localstack fetch`` fetches the Kafka jars (the bootstrap script uses it).
"""
from __future__ import annotations

import base64
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from devstack.secure import KAFKA_USER, REDIS_RIGHTS, REDIS_USER, SCRAM_MECHANISM, SecureFiles
from foundation.settings import SettingError, Settings
from streams.admin import list_topics, run_sync
from streams.kafkaclient import PLAINTEXT, KafkaSecurity
from streams.redisclient import redis_options

__all__ = [
    "KAFKA_VERSION", "StackError", "KafkaBroker", "RedisServer", "LocalStack", "ServiceStatus",
    "fetch_kafka", "free_port",
]

# Newest Kafka on Maven Central that faust-streaming 0.15.3 + aiokafka 0.14 work against
# (tests/test_localstack.py proves it). Keep in step with deploy/kafka/pom.xml.
KAFKA_VERSION = "4.4.0"
PR_SET_PDEATHSIG = 1  # linux/prctl.h
REPO_ROOT = Path(__file__).resolve().parent.parent
KAFKA_POM = REPO_ROOT / "deploy" / "kafka" / "pom.xml"
INSTALL_JAVA = "apt-get install openjdk-17-jre-headless maven"
INSTALL_REDIS = "apt-get install redis-server"

class StackError(RuntimeError):
    """A local server could not be fetched, started or reached; the message says why."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    address: str
    pid: int | None  # None: not running

    @property
    def running(self) -> bool:
        return self.pid is not None

    def __str__(self) -> str:
        state = f"running, pid {self.pid}" if self.running else "stopped"
        return f"{self.name:<12} {self.address:<22} {state}"


# -- small helpers -------------------------------------------------------------------------

def cache_dir() -> Path:
    return Path(os.environ.get("RELANCE_CACHE") or "~/.cache/relance").expanduser()


def require_program(program: str, install: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise StackError(f"{program} is not installed; install it with: {install}")
    return path


_PORTS = random.SystemRandom()  # not the seeded global one: parallel test processes must not draw alike
_LISTEN_LOW = 10_000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A TCP port nothing listens on right now, below the kernel's ephemeral range: a port
    the kernel picks is one it also hands to outgoing connections (every Kafka client
    makes many), which can take it between this check and the server's bind, and then
    the broker does not start (seen with test processes running in parallel)."""
    high = _ephemeral_low() - 1
    if high <= _LISTEN_LOW:
        with socket.socket() as sock:  # no room below it: the kernel's pick
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    while True:
        port = _PORTS.randint(_LISTEN_LOW, high - 1)  # and the next one, for a pair
        if _bindable(port):
            return port


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} does not exist)"


def pid_alive(pid: int) -> bool:
    """True while the process runs; reaps it if it is our own exited child."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass  # not our child (started by an earlier `relance broker up`)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie whose parent has not reaped it yet is as good as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return True


def process_start_time(pid: int) -> str:
    """When the process started, in clock ticks since boot: a pid plus this names one process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]
    except (FileNotFoundError, IndexError):
        return ""


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM, wait up to timeout for a clean shutdown, then SIGKILL."""
    if not pid_alive(pid):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)


def die_with_parent() -> None:
    """In a child, before exec: the kernel sends it SIGTERM when the process that started it
    dies, however that one ends (SIGKILL included). Tests and the demo start their servers
    and workers so; nothing they start can outlive them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


class _Server:
    """A server process in a session of its own, tracked by a pid file in the state folder."""

    name = "server"

    def __init__(self, state_dir: Path | str, port: int, outlive_parent: bool = False) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.port = port
        # `relance broker up` leaves its servers running; tests and the demo tie theirs to themselves.
        self.outlive_parent = outlive_parent
        self.pid_file = self.state_dir / f"{self.name}.pid"
        self.log_file = self.state_dir / f"{self.name}.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def pid(self) -> int | None:
        """The recorded pid if that very process still runs, else None."""
        try:
            pid, started = self.pid_file.read_text().split()
        except (FileNotFoundError, ValueError):
            return None
        # The start time guards against pid reuse (after a reboot, say): same pid, other program.
        if pid_alive(int(pid)) and process_start_time(int(pid)) == started:
            return int(pid)
        return None

    def status(self) -> ServiceStatus:
        return ServiceStatus(self.name, self.address, self.pid())

    def stop(self, timeout: float = 20.0) -> None:
        pid = self.pid()
        if pid is not None:
            stop_pid(pid, timeout)
        self.pid_file.unlink(missing_ok=True)

    def start(self, timeout: float = 60.0) -> None:
        if self.pid() is not None:
            self.wait_ready(timeout)  # already running (an earlier `up`): just make sure
            return
        if port_in_use(self.port):
            raise StackError(f"{self.name}: port {self.port} is in use by another process")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        command = self.prepare()
        with open(self.log_file, "ab") as log:
            # Own session (and so process group): Ctrl-C in the terminal that ran `up`
            # must not stop the server; only `down` (by pid) does.
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.state_dir, start_new_session=True,
                preexec_fn=None if self.outlive_parent else die_with_parent,
            )
        self.pid_file.write_text(f"{process.pid} {process_start_time(process.pid)}\n")
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise StackError(
                    f"{self.name} exited during start-up; last lines of {self.log_file}:\n"
                    + tail(self.log_file))
            try:
                self.probe()
                return
            except Exception as exc:  # not ready yet: the probe's error says why
                last_error = exc
            time.sleep(0.2)
        raise StackError(
            f"{self.name} on {self.address} not ready after {timeout:.0f}s ({last_error!r}); "
            f"last lines of {self.log_file}:\n{tail(self.log_file)}")

    def prepare(self) -> list[str]:
        """Write config files; return the command line."""
        raise NotImplementedError

    def probe(self) -> None:
        """Raise unless the server answers a real client request."""
        raise NotImplementedError


# -- Kafka ---------------------------------------------------------------------------------

def fetch_kafka(version: str = KAFKA_VERSION, quiet: bool = False) -> Path:
    """The folder of the Kafka jars, fetched with Maven on first use (a stamp marks done)."""
    home = cache_dir() / f"kafka-{version}"
    libs, stamp = home / "libs", home / "fetched.stamp"
    if stamp.exists():
        return libs
    require_program("java", INSTALL_JAVA)
    mvn = require_program("mvn", INSTALL_JAVA)
    say = (lambda _: None) if quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    say(f"Fetching Kafka {version} jars from Maven Central into {libs} (once; about a minute)")
    partial = home / "libs.partial"  # a fetch cut short never looks complete
    shutil.rmtree(partial, ignore_errors=True)
    command = [mvn, "-B", "-f", str(KAFKA_POM), f"-Dkafka.version={version}",
               "dependency:copy-dependencies", f"-DoutputDirectory={partial}"]
    output: list[str] = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as mvn_process:
        for line in mvn_process.stdout:  # type: ignore[union-attr]
            output.append(line.rstrip())
            if "Downloaded from" in line and ".jar (" in line:  # one line per jar
                say("  downloaded " + line.split(".jar (")[0].rsplit("/", 1)[-1] + ".jar")
    if mvn_process.returncode != 0:
        raise StackError(f"mvn could not fetch Kafka {version}:\n" + "\n".join(output[-30:]))
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    stamp.write_text(f"{version}\n")
    say(f"Kafka {version}: {len(list(libs.glob('*.jar')))} jars in {libs}")
    return libs


LOG4J2_CONFIG = """\
# Written by devstack.localstack: a log a person can read; noisy internals at WARN.
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d{HH:mm:ss.SSS}] %-5p %m (%c{1})%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.config.name = org.apache.kafka.common.config
logger.config.level = warn
logger.utils.name = org.apache.kafka.common.utils
logger.utils.level = warn
logger.statechange.name = state.change.logger
logger.statechange.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.metadata.name = org.apache.kafka.metadata
logger.metadata.level = warn
"""


class KafkaBroker(_Server):
    """A one-node Kafka (KRaft, broker+controller) on 127.0.0.1.

    With ``secure``, clients get a SASL_SSL listener only (SCRAM users stored at format
    time, the certificate of ``secure``); the controller and the broker's own inter-broker
    listener stay plaintext, on loopback.
    """

    name = "kafka"

    def __init__(self, state_dir: Path | str, port: int = 19092, controller_port: int | None = None,
                 version: str = KAFKA_VERSION, outlive_parent: bool = False,
                 secure: SecureFiles | None = None) -> None:
        super().__init__(state_dir, port, outlive_parent)
        self.controller_port = controller_port or port + 1
        self.version = version
        self.secure = secure
        self.mode_file = self.state_dir / "kafka-mode"  # how the data was formatted: secure or plaintext
        self.config_file = self.state_dir / "kafka.properties"
        self.data_dir = self.state_dir / "kafka-data"

    @property
    def bootstrap(self) -> str:
        return self.address

    @property
    def security(self) -> KafkaSecurity:
        if self.secure is None:
            return PLAINTEXT
        return KafkaSecurity(protocol="SASL_SSL", mechanism=SCRAM_MECHANISM, username=KAFKA_USER,
                             password=self.secure.kafka_password, ca_file=str(self.secure.ca_file))

    @property
    def mode(self) -> str:
        return "plaintext" if self.secure is None else "secure"

    def status(self) -> ServiceStatus:
        return ServiceStatus(f"kafka {self.version}", self.address, self.pid())

    def prepare(self) -> list[str]:
        java = require_program("java", INSTALL_JAVA)
        classpath = f"{fetch_kafka(self.version)}/*"
        if port_in_use(self.controller_port):
            raise StackError(f"kafka: controller port {self.controller_port} is in use")
        log4j = self.state_dir / "kafka-log4j2.properties"
        log4j.write_text(LOG4J2_CONFIG)
        self.config_file.write_text(self._config())
        jvm = [java, "-Xmx512m", "-cp", classpath, f"-Dlog4j2.configurationFile={log4j}"]
        formatted = (self.data_dir / "meta.properties").exists()
        if formatted and self.mode_file.exists() and self.mode_file.read_text().strip() != self.mode:
            raise StackError(f"kafka: the data in {self.data_dir} was made {self.mode_file.read_text().strip()}, "
                             f"not {self.mode}; stop the stack and remove {self.state_dir} to start over")
        if not formatted:  # format once; a JVM start is slow
            # Static controller.quorum.voters in the config, so no --standalone here.
            # Kafka's own id format; passed as --cluster-id=ID, since one in 64 starts with "-".
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            users = [] if self.secure is None else [  # SCRAM users live in the metadata log
                "--add-scram", f"{SCRAM_MECHANISM}=[name={KAFKA_USER},password={self.secure.kafka_password}]"]
            formatting = subprocess.run(
                jvm + ["kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                       "-c", str(self.config_file), "--ignore-formatted", *users],
                capture_output=True, text=True)
            if formatting.returncode != 0:
                raise StackError("kafka storage format failed:\n"
                                 + (formatting.stdout + formatting.stderr)[-3000:])
            self.mode_file.write_text(self.mode + "\n")
        return jvm + ["kafka.Kafka", str(self.config_file)]

    def _listeners(self) -> str:
        c = self.controller_port
        if self.secure is None:
            return f"""\
listeners=PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{c}
advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
"""
        internal = free_port()
        files = self.secure
        return f"""\
# Clients: SASL_SSL only (SCRAM users from format time); a client certificate is checked if one is shown.
listeners=SASL_SSL://127.0.0.1:{self.port},INTERNAL://127.0.0.1:{internal},CONTROLLER://127.0.0.1:{c}
advertised.listeners=SASL_SSL://127.0.0.1:{self.port},INTERNAL://127.0.0.1:{internal}
inter.broker.listener.name=INTERNAL
listener.security.protocol.map=SASL_SSL:SASL_SSL,INTERNAL:PLAINTEXT,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms={SCRAM_MECHANISM}
listener.name.sasl_ssl.{SCRAM_MECHANISM.lower()}.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.certificate.chain={_property_pem(files.server_cert)}
ssl.keystore.key={_property_pem(files.server_key)}
ssl.truststore.type=PEM
ssl.truststore.certificates={_property_pem(files.ca_file)}
ssl.client.auth=requested
"""

    def _config(self) -> str:
        c = self.controller_port
        return f"""\
# Written by devstack.localstack: one node is both broker and KRaft controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{c}
{self._listeners()}controller.listener.names=CONTROLLER
log.dirs={self.data_dir}
# One node: every internal topic has one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
# Fewer offset partitions than the default 50: the first consumer group comes up faster.
offsets.topic.num.partitions=8
# Consumer groups (and so tests) start at once instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0
# Topics come from the catalog (streams/topics.py), never from a typo in a client.
auto.create.topics.enable=false
num.partitions=1
"""

    def probe(self) -> None:
        if not port_in_use(self.port):  # spares the log aiokafka's "Unable connect" errors
            raise StackError("port not open yet")
        run_sync(lambda: list_topics(self.bootstrap, self.security))


def _property_pem(path: Path) -> str:
    """A PEM file as one Java properties value (its line breaks escaped)."""
    return path.read_text().strip().replace("\n", "\\n")


# -- Redis ---------------------------------------------------------------------------------

class RedisServer(_Server):
    """redis-server with a generated config: append-only persistence, data in the state folder.
    With ``secure``: TLS only (the certificate of ``secure``), and one ACL user with a password."""

    name = "redis"

    def __init__(self, state_dir: Path | str, port: int, outlive_parent: bool = False,
                 secure: SecureFiles | None = None) -> None:
        super().__init__(state_dir, port, outlive_parent)
        self.secure = secure

    @property
    def url(self) -> str:
        return f"{'redis' if self.secure is None else 'rediss'}://127.0.0.1:{self.port}/0"

    def client_options(self) -> dict:
        """What a client needs beside the URL (user, password, CA)."""
        if self.secure is None:
            return {}
        return redis_options(Settings(redis_url=self.url, redis_username=REDIS_USER,
                                      redis_password=self.secure.redis_password,
                                      redis_ca_file=str(self.secure.ca_file)))

    def _listening(self) -> str:
        if self.secure is None:
            return f"port {self.port}\n"
        files = self.secure
        return (f"port 0\ntls-port {self.port}\ntls-cert-file {files.server_cert}\n"
                f"tls-key-file {files.server_key}\ntls-ca-cert-file {files.ca_file}\ntls-auth-clients optional\n"
                f"user default off\nuser {REDIS_USER} on >{files.redis_password} {REDIS_RIGHTS}\n")

    def prepare(self) -> list[str]:
        redis_server = require_program("redis-server", INSTALL_REDIS)
        data = self.state_dir / "redis-data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.state_dir / "redis.conf"
        config.write_text(
            "# Written by devstack.localstack, configured as production should be (README, Redis):\n"
            "# every write in the append-only file before it is acknowledged, flushed to disk each\n"
            "# second, and no key ever evicted (a lost ledger field would let a follow-up go twice).\n"
            f"{self._listening()}bind 127.0.0.1\ndir {data}\n"
            'save ""\nappendonly yes\nappendfsync everysec\nmaxmemory-policy noeviction\n'
            'daemonize no\nlogfile ""\n')
        return [redis_server, str(config)]

    def probe(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=2, socket_connect_timeout=2, **self.client_options())
        try:
            client.ping()
        finally:
            client.close()


# -- both ----------------------------------------------------------------------------------

class LocalStack:
    """Kafka and Redis together, sharing one state folder."""

    def __init__(self, state_dir: Path | str, kafka_port: int = 19092, redis_port: int = 16379,
                 controller_port: int | None = None, outlive_parent: bool = False, secure: bool = False) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.secure = SecureFiles(self.state_dir / "tls").ensure() if secure else None
        self.kafka = KafkaBroker(self.state_dir, kafka_port, controller_port, outlive_parent=outlive_parent,
                                 secure=self.secure)
        self.redis = RedisServer(self.state_dir, redis_port, outlive_parent, secure=self.secure)

    def client_settings(self) -> dict[str, str]:
        """The settings a client of this stack needs (secrets as ``*_file`` paths)."""
        if self.secure is None:
            return {"broker": self.bootstrap, "redis_url": self.redis_url}
        return self.secure.client_settings(self.bootstrap, self.redis_url)

    @classmethod
    def of(cls, settings: Settings, state_dir: Path | str, outlive_parent: bool = False,
           secure: bool = False) -> "LocalStack":
        """The stack the settings point at: Kafka and Redis on their ports of 127.0.0.1."""
        host, _, kafka_port = settings.broker.split(",")[0].rpartition(":")
        redis = urlsplit(settings.redis_url)
        for name, address in (("broker", host), ("redis_url", redis.hostname)):
            if address not in ("127.0.0.1", "localhost"):
                raise SettingError(f"setting {name}: the local stack listens on 127.0.0.1, not {address}")
        if not kafka_port.isdigit():
            raise SettingError(f"setting broker: {settings.broker!r} is not host:port")
        return cls(state_dir, kafka_port=int(kafka_port), redis_port=redis.port or 6379, outlive_parent=outlive_parent,
                   secure=secure)

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def redis_url(self) -> str:
        return self.redis.url

    def start(self, timeout: float = 90.0) -> None:
        try:
            self.redis.start(timeout=min(timeout, 20))
            self.kafka.start(timeout=timeout)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        errors = []
        for server in (self.kafka, self.redis):  # try both, even if one fails
            try:
                server.stop()
            except Exception as exc:
                errors.append(f"{server.name}: {exc}")
        if errors:
            raise StackError("; ".join(errors))

    def status(self) -> list[ServiceStatus]:
        return [self.kafka.status(), self.redis.status()]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["fetch"]:
        print("usage: python -m devstack.localstack fetch   (fetch the Kafka jars once)",
              file=sys.stderr)
        return 2
    try:
        print(fetch_kafka())
    except StackError as exc:
        print(f"relance: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())


def redis_db_url(redis_url: str, index: int, flush: bool) -> str:
    """The URL of db ``index`` of that Redis, emptied first if ``flush`` (only a Redis we own)."""
    url = redis_url.rsplit("/", 1)[0] + f"/{index % 16}"
    if flush:
        import redis
        client = redis.Redis.from_url(url)
        try:
            client.flushdb()
        finally:
            client.close()
    return url
