"""Worker metrics (FLASHSR_METRICS_PORT) on real parts: a real Prometheus scraping a real prefork
cpu worker through a distributed run, two workers on one host, a gpu worker with and without its
model; and the model path's batch rows and stage times through the real Batcher."""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flashsr_tasks.model import observers
from flashsr_tasks.model.staged_forward import STAGES
from flashsr_tasks.worker.metrics import FOLDER_PREFIX, PORT_TRIES, WorkerMetrics
from orchestrator_hooks import FlashSRExtension
from tests.prometheus_server import prometheus_missing, start_prometheus
from tests.services import free_port, start_worker, worker_env
from tests.test_distributed import _blocked_on, calls, hanging_source, records, wait_for
from tests.test_monitoring import dashboard_and_alert_expressions
from tests.test_rabbitmq import vhost  # noqa: F401  (the fixture)

REPO = Path(__file__).resolve().parent.parent
READY = re.compile(r"flashsr: worker ready: taking tasks from queue (\S+); metrics on port (\d+)")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def samples(text: str) -> list[Any]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def metrics_folders(worker: Any) -> list[str]:
    """The worker's prometheus_client multiprocess folder(s), named after its main process."""
    return glob.glob(os.path.join(tempfile.gettempdir(), f"{FOLDER_PREFIX}{worker.process.pid}-*"))


def ready_port(worker: Any, timeout: float = 30) -> int:
    wait_for(lambda: READY.search(worker.log_text()) is not None, timeout, "the ready line with the metrics port")
    match = READY.search(worker.log_text())
    assert match is not None
    return int(match.group(2))


@pytest.mark.celery
def test_prometheus_counts_a_distributed_run_on_a_prefork_worker(tmp_path, redis_server, workers):
    skip = prometheus_missing()
    if skip:
        pytest.skip(skip)
    wanted = free_port()
    worker = workers("cpu", concurrency=2, FLASHSR_METRICS_PORT=str(wanted))
    port = ready_port(worker)
    assert port == wanted
    prometheus = start_prometheus(tmp_path / "prometheus", [f"127.0.0.1:{port}"])
    try:
        prometheus.wait_for('up{job="flashsr-workers"}', 1, timeout=30)
        root = tmp_path / "stage"
        names = calls(root, 20)
        result = subprocess.run(
            [sys.executable, "-m", "orchestrator_hooks", "--input", str(root), "--device", "cpu", "--json"],
            capture_output=True, text=True, cwd=REPO, timeout=180,
            env={**os.environ, "FLASHSR_BROKER_URL": redis_server.url})
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["enhanced"] == 20
        seconds = sum(r["duration_s"] for r in records(root).values())
        assert seconds == pytest.approx(10.0)

        # both pool processes did some of the files; Prometheus sees them as one worker
        prometheus.wait_for('sum(flashsr_files_total{outcome="enhanced"})', 20, timeout=30)
        assert prometheus.value('sum(flashsr_files_total{outcome="enhanced",method="resample",queue="cpu"})') == 20
        assert prometheus.value("sum(flashsr_audio_seconds_total)") == pytest.approx(seconds)
        assert prometheus.value('sum(flashsr_file_seconds_count{queue="cpu",method="resample"})') == 20
        assert prometheus.query('flashsr_tasks_in_flight{queue="cpu"}')
        assert prometheus.query('flashsr_queue_messages{queue="cpu"}')
        # a cpu worker exports nothing of the model
        assert not prometheus.query('{__name__=~"flashsr_(model_loaded|batch_rows.*|model_stage.*|gpu_.*)"}')

        # no label value names a file, a folder or the host, on /metrics or in Prometheus
        series = prometheus.api("series", **{"match[]": '{__name__=~"flashsr_.+"}'})
        values = {v for s in series for k, v in s.items() if k not in ("__name__", "instance", "job")}
        values |= {v for s in samples(scrape(port)) for v in s.labels.values()}
        assert values, "no labels at all"
        for value in values:
            assert not any(Path(name).stem in value for name in names), value
            assert str(tmp_path) not in value and "/" not in value and ".wav" not in value, value

        # every expression of the shipped dashboard and alert rules runs on what a real run exports
        for expr in dashboard_and_alert_expressions():
            prometheus.query(expr)  # AssertionError with Prometheus' message on any error
        assert prometheus.value('sum(rate(flashsr_audio_seconds_total[1m]))') > 0
    finally:
        prometheus.stop()
    assert worker.process.poll() is None


@pytest.mark.celery
def test_a_second_worker_on_the_host_takes_the_next_free_port(tmp_path, redis_server, workers):
    wanted = free_port()
    first = workers("cpu", FLASHSR_METRICS_PORT=str(wanted))
    second = workers("cpu", FLASHSR_METRICS_PORT=str(wanted))
    assert ready_port(first) == wanted
    taken = ready_port(second)
    assert wanted < taken < wanted + PORT_TRIES
    # each serves its own process's metrics on its own port
    root = tmp_path / "stage"
    calls(root, 4)
    assert FlashSRExtension(root, device="cpu", broker=redis_server.url, progress=False).run().enhanced == 4

    def finished(port: int) -> float:
        return sum(s.value for s in samples(scrape(port)) if s.name == "flashsr_files_total")

    wait_for(lambda: finished(wanted) + finished(taken) == 4, 20, "both workers' counts to add up to the run")
    # a stopped prefork worker leaves no multiprocess folder behind
    assert len(metrics_folders(first)) == 1
    first.stop()
    assert metrics_folders(first) == []


@pytest.mark.celery
def test_a_bad_port_setting_is_one_warning_and_the_worker_works_on(tmp_path, redis_server, workers):
    worker = workers("cpu", FLASHSR_METRICS_PORT="ninety")
    wait_for(lambda: "flashsr: worker ready" in worker.log_text(), 30, "the ready line")
    log = worker.log_text()
    assert "flashsr: warning: no metrics: FLASHSR_METRICS_PORT must be a whole number, not 'ninety'" in log
    assert "metrics on port" not in log and "Traceback" not in log
    root = tmp_path / "stage"
    calls(root, 2)
    assert FlashSRExtension(root, device="cpu", broker=redis_server.url, progress=False).run().enhanced == 2


def _queue_messages(port: int) -> float:
    found = [s.value for s in samples(scrape(port)) if s.name == "flashsr_queue_messages" and s.labels == {"queue": "cpu"}]
    return found[0] if found else float("nan")


@pytest.mark.celery
@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_the_queue_length_is_sampled_from_either_broker(broker, tmp_path, redis_server, request, monkeypatch):
    """One busy worker process (held on a FIFO), files waiting behind it: the worker's
    flashsr_queue_messages shows them (Redis: LLEN; RabbitMQ: a passive declare)."""
    url = redis_server.url
    env = {"FLASHSR_METRICS_PORT": str(free_port()), "FLASHSR_CPU_PREFETCH": "1", "FLASHSR_SHUTDOWN_GRACE": "1"}
    if broker == "rabbitmq":
        url = request.getfixturevalue("vhost").url
        env["FLASHSR_RESULT_BACKEND"] = redis_server.url
        monkeypatch.setenv("FLASHSR_RESULT_BACKEND", redis_server.url)
    worker = start_worker("cpu", url, tmp_path, 1, env=worker_env(url, **env))
    try:
        port = ready_port(worker)
        root = tmp_path / "stage"
        fifo = hanging_source(root, "a_hang.wav")  # sent first: it holds the one pool process
        calls(root, 5)
        FlashSRExtension(root, device="cpu", broker=url, wait=False, progress=False).run()
        wait_for(lambda: any(_blocked_on(p, fifo) for p in worker.pool_pids()), 60, "the first task to start")
        wait_for(lambda: _queue_messages(port) == 5, 20, "flashsr_queue_messages to show the 5 waiting files")
        in_flight = [s.value for s in samples(scrape(port)) if s.name == "flashsr_tasks_in_flight"]
        assert in_flight == [1]
    finally:
        worker.stop()


@pytest.mark.celery
def test_a_killed_pool_process_stops_counting_in_flight(tmp_path, redis_server, workers):
    """SIGKILL (the OOM killer) gives no worker_process_shutdown: the scrape finds the process dead."""
    worker = workers("cpu", FLASHSR_METRICS_PORT=str(free_port()), FLASHSR_SHUTDOWN_GRACE="1")
    port = ready_port(worker)
    root = tmp_path / "stage"
    fifo = hanging_source(root, "hang.wav")
    FlashSRExtension(root, device="cpu", broker=redis_server.url, wait=False, progress=False).run()

    def in_flight() -> float:
        return sum(s.value for s in samples(scrape(port)) if s.name == "flashsr_tasks_in_flight")

    wait_for(lambda: any(_blocked_on(p, fifo) for p in worker.pool_pids()), 60, "the task to start")
    first = worker.pool_pids()
    wait_for(lambda: in_flight() == 1, 10, "one task in flight")
    os.kill(first[0], signal.SIGKILL)
    # the task is redone at once by the pool's new process, on the same FIFO
    wait_for(lambda: any(_blocked_on(p, fifo) for p in worker.pool_pids() if p not in first), 60,
             "the task to be redone in a new pool process")
    wait_for(lambda: in_flight() == 1, 10, "the dead process's task to stop counting")


def _model_loaded(port: int) -> list[Any]:
    try:
        return [s for s in samples(scrape(port)) if s.name == "flashsr_model_loaded"]
    except OSError:
        return []


def _gpu_worker(workers: Any, model_dir: Path) -> tuple[Any, int]:
    worker = workers("gpu", concurrency=2, extra_args=("--pool", "threads"), FLASHSR_METRICS_PORT=str(free_port()),
                     FLASHSR_DEVICE="cpu", FLASHSR_MODEL_DIR=str(model_dir), HF_HUB_OFFLINE="1")
    return worker, ready_port(worker)


@pytest.mark.celery
def test_a_gpu_worker_without_weights_says_it_resamples(tmp_path, workers):
    empty = tmp_path / "no-weights"
    empty.mkdir()
    worker, port = _gpu_worker(workers, empty)
    wait_for(lambda: bool(_model_loaded(port)), 60, "flashsr_model_loaded on /metrics")
    [loaded] = _model_loaded(port)
    assert loaded.labels == {"queue": "gpu", "device": "cpu"} and loaded.value == 0
    assert "FlashSR model unavailable" in worker.log_text()
    # nor does a threads-pool worker (it ends through flashsr's own SIGTERM hand-back)
    assert len(metrics_folders(worker)) == 1
    worker.stop()
    assert metrics_folders(worker) == []


@pytest.mark.celery
@pytest.mark.model
def test_a_gpu_worker_with_its_model_says_it_is_loaded(workers, random_model_dir):
    worker, port = _gpu_worker(workers, random_model_dir)
    wait_for(lambda: bool(_model_loaded(port)), 600, "the model load to finish")
    [loaded] = _model_loaded(port)
    assert loaded.labels == {"queue": "gpu", "device": "cpu"} and loaded.value == 1, worker.log_text()[-2000:]
    # nothing enhanced yet: the model's histograms are there, empty
    text = scrape(port)
    assert "flashsr_batch_rows_count 0.0" in text


# ---------------------------------------------------------------------------- the model path, in-process


@pytest.fixture
def worker_metrics() -> Iterator[WorkerMetrics]:
    """The worker's metric objects in this (single) process, registered as the model observer."""
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    metrics = WorkerMetrics(model=True)
    try:
        yield metrics
    finally:
        observers.set_observer(None)


def _value(metric: Any, name: str, **labels: str) -> float:
    return sum(s.value for family in metric.collect() for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


STAGE_S = {"vae_encode": 0.004, "unet": 0.012, "vae_decode": 0.002, "vocoder": 0.02}


class _StandInStages:
    """The four stages of a forward pass, each a known wait and the identity (a test double of
    the model's network for the timing arithmetic; the real network has its own tests)."""

    def __init__(self, *_: Any, **__: Any) -> None:
        pass

    def forward(self, rows: Any, timer: Any) -> Any:
        for stage in STAGES:
            with timer(stage):
                time.sleep(STAGE_S[stage])
        return rows


def test_batch_rows_and_stage_times_reach_the_worker_metrics(worker_metrics, monkeypatch):
    pytest.importorskip("torch")
    import torch

    from flashsr_tasks.model import flashsr

    monkeypatch.setattr(flashsr, "StagedForward", _StandInStages)
    enhancer = flashsr.FlashSREnhancer(None, torch.device("cpu"), "stand-in", batch_size=3, lowpass=False,
                                       autocast="off", max_wait_s=0.05)
    try:
        # two channels of 12 s at 48 kHz: windows of both share the batches
        audio = np.random.default_rng(0).standard_normal((12 * 48000, 2)).astype(np.float32) * 0.1
        out = enhancer.enhance(audio, 48000)
        assert out.shape == audio.shape
    finally:
        enhancer.close()
    stats = enhancer.stats
    assert stats.batches >= 2 and stats.rows > stats.batches  # more than one row in some pass
    batch_rows = worker_metrics.batch_rows
    assert _value(batch_rows, "flashsr_batch_rows_count") == stats.batches
    assert _value(batch_rows, "flashsr_batch_rows_sum") == stats.rows
    assert _value(batch_rows, "flashsr_batch_rows_bucket", le="3.0") == stats.batches  # at most batch_size rows
    for stage, wait in STAGE_S.items():
        assert _value(worker_metrics.stage_seconds, "flashsr_model_stage_seconds_count", stage=stage) == stats.batches
        total = _value(worker_metrics.stage_seconds, "flashsr_model_stage_seconds_sum", stage=stage)
        assert wait * stats.batches <= total < (wait + 0.05) * stats.batches + 0.2, (stage, total)


def test_no_observer_no_timing(monkeypatch):
    """Without a registered observer (an in-process run, a worker without a metrics port) the model
    path creates no stage clock."""
    pytest.importorskip("torch")
    import torch

    from flashsr_tasks.model import flashsr

    assert observers.current() is None
    monkeypatch.setattr(flashsr, "StagedForward", _StandInStages)
    enhancer = flashsr.FlashSREnhancer(None, torch.device("cpu"), "stand-in", batch_size=2, lowpass=False,
                                       autocast="off")
    launched = enhancer.launch_rows(np.zeros((2, 16), dtype=np.float32))
    assert launched.clock is None
    enhancer.finish_rows(launched)
