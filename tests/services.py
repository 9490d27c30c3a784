"""Real services for the tests: a private redis-server on a free loopback port and real
`celery worker` subprocesses, each stopped by PID."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import psutil
import redis

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen
    password: Optional[str] = None
    args: Sequence[str] = ()  # the command line, to start it again on the same port (restart)

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def stop(self) -> None:
        stop_process(self.process)

    def kill(self) -> None:
        """SIGKILL: a crash, no chance to save anything (with AOF, what was fsynced survives)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(5)

    def restart(self, timeout: float = 20) -> None:
        """Start it again on the same port, from what its folder holds (empty without persistence)."""
        self.kill()
        self.process = subprocess.Popen(list(self.args), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_until_up(self, timeout)


def start_redis(workdir: Path, password: Optional[str] = None, extra: Sequence[str] = (),
                aof: bool = False) -> RedisServer:
    """`aof`: append-only file on, fsynced every second, as docker-compose.yml runs it."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server); the tests need a real one")
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes" if aof else "no", "--appendfsync", "everysec",
            "--dir", str(workdir), "--maxmemory-policy", "noeviction", *extra]
    if password:
        args += ["--requirepass", password]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    server = RedisServer(port=port, process=process, password=password, args=args)
    _wait_until_up(server, 10)
    return server


def _wait_until_up(server: RedisServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if server.client().ping():
                return
        except redis.exceptions.ConnectionError:  # refused, or still loading its AOF
            pass
        if server.process.poll() is not None or time.monotonic() > deadline:
            stop_process(server.process)
            raise RuntimeError(f"redis-server did not start on port {server.port}")
        time.sleep(0.05)


@dataclass
class Worker:
    process: subprocess.Popen
    log: Path
    name: str

    def pool_pids(self) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(self.process.pid).children()]
        except psutil.NoSuchProcess:
            return []

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL the whole worker, pool included: a crashed host."""
        kill_tree(self.process.pid)

    def stop(self) -> None:
        stop_process(self.process)


def worker_env(broker: str, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLASHSR_")}
    env.update(FLASHSR_BROKER_URL=broker, PYTHONUNBUFFERED="1")
    env.update(overrides)
    return env


def start_worker(
    queue: str, broker: str, logdir: Path, concurrency: int = 1, env: Optional[dict[str, str]] = None,
    extra_args: Sequence[str] = (), ready_timeout: float = 60, wrap: Optional[Callable[[list[str]], list[str]]] = None,
) -> Worker:
    """`celery -A flashsr_tasks worker -Q <queue>` as written in the README, waiting until it is ready.
    `wrap`: the command as it is to be started (inside a memory limit: tests.cgroups)."""
    name = f"{queue}-{free_port()}@localhost"
    log = logdir / f"worker-{name}.log"
    cmd = [sys.executable, "-m", "celery", "-A", "flashsr_tasks", "worker", "-Q", queue, "-n", name,
           "--concurrency", str(concurrency), "--loglevel", "INFO", "--without-gossip", "--without-mingle",
           *extra_args]
    if wrap is not None:
        cmd = wrap(cmd)
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, cwd=REPO, env=env or worker_env(broker), stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    worker = Worker(process=process, log=log, name=name)
    deadline = time.monotonic() + ready_timeout
    while "ready." not in worker.log_text():
        if process.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            raise RuntimeError(f"celery worker did not become ready:\n{worker.log_text()[-3000:]}")
        time.sleep(0.1)
    return worker


def stop_process(process: subprocess.Popen, timeout: float = 15) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_tree(process.pid)
        process.wait(5)


def kill_tree(pid: int) -> None:
    try:
        parent = psutil.Process(pid)
        victims = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in victims:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=5)


@dataclass
class RabbitVhost:
    """A vhost of its own on the machine's RabbitMQ (127.0.0.1:5672, guest/guest)."""
    name: str

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:5672/{self.name}"

    def delete(self) -> None:
        subprocess.run(["rabbitmqctl", "delete_vhost", self.name], capture_output=True, timeout=60)


def make_rabbit_vhost() -> RabbitVhost:
    """Raises RuntimeError (the caller skips, loudly) when rabbitmqctl is absent."""
    if shutil.which("rabbitmqctl") is None:
        raise RuntimeError("rabbitmqctl is not installed (apt-get install rabbitmq-server)")
    vhost = RabbitVhost(name=f"flashsr-test-{os.getpid()}-{free_port()}")
    for args in (["add_vhost", vhost.name], ["set_permissions", "-p", vhost.name, "guest", ".*", ".*", ".*"]):
        subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=60)
    return vhost
