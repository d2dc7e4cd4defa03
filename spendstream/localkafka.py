"""A real single-node Kafka (KRaft) on 127.0.0.1, from the official jars, without Docker.

Maven resolves the broker jars once into a cache (a small pom ships with the package);
the storage is formatted once under ``<data_dir>/kafka/data``; ``start`` launches the JVM
detached and waits until the broker answers; ``stop`` ends it with SIGTERM (SIGKILL after
a timeout). Both are idempotent.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

from spendstream.config import Settings
from spendstream.errors import SpendstreamError


def new_cluster_id() -> str:
    """A KRaft cluster id: a UUID in URL-safe base64 (22 characters). Like Kafka's own
    ``Uuid.randomUuid`` it never starts with "-", which the storage tool would read as an
    option (one id in 64 did: the broker then failed to format its storage)."""
    import base64

    while True:
        raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not raw.startswith("-"):
            return raw


class LocalKafkaError(SpendstreamError, RuntimeError):
    """The local broker could not be set up or started; the message says what to do."""


def _deploy_file(name: str) -> Path:
    return Path(str(resources.files("spendstream") / "deploy" / "kafka" / name))


def _port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n  ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class LocalKafka:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = settings.kafka_dir
        self.version = settings.kafka_version
        cache = settings.kafka_jars_dir or self.home
        self.libs = cache / f"libs-{self.version}"
        self.data = self.home / "data"
        self.pid_file = self.home / "broker.pid"
        self.log_file = self.home / "broker.log"
        self.properties = self.home / "server.properties"

    # --- jars --------------------------------------------------------------------------
    @property
    def jars_ready(self) -> bool:
        return (self.libs / ".complete").exists()

    def ensure_jars(self) -> Path:
        """Resolve the broker jars with Maven, once; later calls reuse them."""
        if self.jars_ready:
            return self.libs
        for tool in ("mvn", "java"):
            if shutil.which(tool) is None:
                raise LocalKafkaError(
                    f"'{tool}' is not on PATH: install a JDK (17+) and Maven (e.g. apt-get "
                    "install openjdk-17-jdk-headless maven), or point "
                    "SPENDSTREAM_KAFKA_BOOTSTRAP_SERVERS at an existing Kafka"
                )
        staging = self.libs.with_name(self.libs.name + f".tmp{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        cmd = [
            "mvn", "-q", "-B", "-f", str(_deploy_file("pom.xml")),
            f"-Dkafka.version={self.version}", "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}", "-DincludeScope=runtime",
        ]  # fmt: skip
        try:
            result = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired:
            raise LocalKafkaError(
                "Maven did not finish resolving the Kafka jars in 15 min"
            ) from None
        if result.returncode != 0 or not list(staging.glob("kafka_2.13-*.jar")):
            output = "\n  ".join((result.stdout + result.stderr).strip().splitlines()[-15:])
            raise LocalKafkaError(
                f"Maven could not resolve Apache Kafka {self.version} (is Maven Central "
                f"reachable? is SPENDSTREAM_KAFKA_VERSION right?):\n  {output}"
            )
        (staging / ".complete").write_text(self.version)
        if self.libs.exists():  # another process finished first
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.rename(self.libs)
        return self.libs

    # --- process state -------------------------------------------------------------------
    def pid(self) -> int | None:
        """PID of our broker if it is alive (and really is a Kafka JVM)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if b"kafka.Kafka" in cmdline else None

    def answers(self, timeout: float = 5) -> bool:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.settings.bootstrap_servers, "log_level": 0})
        try:
            admin.list_topics(timeout=timeout)
            return True
        except Exception:
            return False

    def status(self) -> dict[str, Any]:
        pid = self.pid()
        return {
            "running": pid is not None,
            "pid": pid,
            "bootstrap": self.settings.bootstrap_servers,
            "version": self.version,
            "data_dir": str(self.home),
            "jars_ready": self.jars_ready,
        }

    # --- start / stop --------------------------------------------------------------------
    def _write_properties(self) -> None:
        port = self.settings.kafka_local_port
        cport = self.settings.kafka_local_controller_port
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{cport}",
            "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(self.data),
            "num.partitions": str(self.settings.topic_partitions),
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "10",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "min.insync.replicas": "1",
            "default.replication.factor": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.retention.hours": "168",
            "log.segment.bytes": str(256 * 1024 * 1024),
            "log.cleaner.backoff.ms": "5000",
            "num.network.threads": "2",
            "num.io.threads": "4",
        }
        text = "".join(f"{k}={v}\n" for k, v in props.items())
        self.properties.write_text(text)

    def _java(self, *args: str) -> list[str]:
        return [
            "java", "-cp", f"{self.libs}/*",
            f"-Dlog4j.configuration=file:{_deploy_file('log4j.properties')}",
            *args,
        ]  # fmt: skip

    def _format_storage(self) -> None:
        if (self.data / "meta.properties").exists():
            return
        id_file = self.home / "cluster.id"
        if not id_file.exists() or id_file.read_text().startswith("-"):
            id_file.write_text(new_cluster_id())
        cluster_id = id_file.read_text().strip()
        result = subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(self.properties),
                "--ignore-formatted",
            ),  # fmt: skip
            capture_output=True,
            text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise LocalKafkaError(f"formatting KRaft storage failed: {result.stderr.strip()}")

    def start(self, timeout: float = 90) -> str:
        pid = self.pid()
        if pid is not None:
            if self.answers():
                return (
                    f"local Kafka already running (pid {pid}) at {self.settings.bootstrap_servers}"
                )
            return self._wait_ready(pid, timeout)
        for port, var in (
            (self.settings.kafka_local_port, "SPENDSTREAM_KAFKA_LOCAL_PORT"),
            (self.settings.kafka_local_controller_port, "SPENDSTREAM_KAFKA_LOCAL_CONTROLLER_PORT"),
        ):
            if _port_in_use(port):
                raise LocalKafkaError(
                    f"port {port} on 127.0.0.1 is taken by another program; set {var} to a "
                    "free port (or stop that program)"
                )
        self.ensure_jars()
        self.home.mkdir(parents=True, exist_ok=True)
        self.data.mkdir(parents=True, exist_ok=True)
        self._write_properties()
        self._format_storage()
        cmd = [
            "java", f"-Xmx{self.settings.kafka_heap}", f"-Xms{self.settings.kafka_heap}",
            "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
            *shlex.split(self.settings.kafka_jvm_options),
            "-cp", f"{self.libs}/*",
            f"-Dlog4j.configuration=file:{_deploy_file('log4j.properties')}",
            "kafka.Kafka", str(self.properties),
        ]  # fmt: skip
        with self.log_file.open("ab") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.home,
            )  # fmt: skip
        self.pid_file.write_text(str(proc.pid))
        return self._wait_ready(proc.pid, timeout, proc)

    def _wait_ready(
        self, pid: int, timeout: float, proc: subprocess.Popen[bytes] | None = None
    ) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise LocalKafkaError(
                    f"the Kafka broker exited (code {proc.returncode}); last lines of "
                    f"{self.log_file}:\n  {_tail(self.log_file)}"
                )
            if self.answers(timeout=2):
                return (
                    f"local Kafka {self.version} running (pid {pid}) at "
                    f"{self.settings.bootstrap_servers}, data in {self.data}"
                )
            time.sleep(0.5)
        raise LocalKafkaError(
            f"the Kafka broker did not answer within {timeout:.0f}s; last lines of "
            f"{self.log_file}:\n  {_tail(self.log_file)}"
        )

    def stop(self, timeout: float = 30) -> str:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return "local Kafka is not running"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            if _zombie(pid):
                break
            time.sleep(0.2)
        else:
            if Path(f"/proc/{pid}").exists():
                os.killpg(pid, signal.SIGKILL)
        _reap(pid)
        self.pid_file.unlink(missing_ok=True)
        return f"local Kafka stopped (pid {pid})"


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
