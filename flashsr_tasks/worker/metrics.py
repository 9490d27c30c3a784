"""A worker's Prometheus metrics and the HTTP server that serves them (FLASHSR_METRICS_PORT).

Off (the default): every hook here is a no-op and prometheus_client is never imported. On: the
worker's main process serves all its processes' metrics (prometheus_client's multiprocess mode).
Names, labels and the port rule: docs/metrics.md.
"""
from __future__ import annotations

import atexit
import errno
import glob
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence

from flashsr_tasks import config
from flashsr_tasks.broker.queues import GPU_QUEUE, BrokerUnreachable, queue_lengths
from flashsr_tasks.model import observers

if TYPE_CHECKING:
    from celery import Celery

    from flashsr_tasks.manifest.records import Outcome

log = logging.getLogger(__name__)

# A taken port: the next ones are tried, up to this many in all (PORT .. PORT+9).
PORT_TRIES = 10
# The broker's queue lengths are sampled this often, in the main process.
QUEUE_SAMPLE_S = 5.0
# A worker's multiprocess folder, in the temporary folder: flashsr-metrics-<main pid>-<random>.
FOLDER_PREFIX = "flashsr-metrics-"
NO_METHOD = "none"  # the method label of a file that nothing ran on (skipped, unselected, refused)

FILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
ROW_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)
STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WorkerMetrics:
    """The metric objects, built once in the main process (pool processes inherit them). The
    model's (batch rows, stage times, GPU memory, model loaded) only on a worker of the gpu queue."""

    def __init__(self, model: bool) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        # registry=None: the server collects them from the multiprocess files, not from a registry
        self.files = Counter("flashsr_files", "Files this worker finished, by what became of them.",
                             ["queue", "method", "outcome"], registry=None)
        self.audio_seconds = Counter("flashsr_audio_seconds", "Seconds of input audio enhanced.",
                                     ["queue", "method"], registry=None)
        self.file_seconds = Histogram("flashsr_file_seconds", "Each file's time in the worker, in seconds.",
                                      ["queue", "method"], buckets=FILE_BUCKETS, registry=None)
        self.in_flight = Gauge("flashsr_tasks_in_flight", "Files being worked on now.",
                               ["queue"], multiprocess_mode="livesum", registry=None)
        self.queue_messages = Gauge("flashsr_queue_messages", "Messages waiting on the broker's queue.",
                                    ["queue"], multiprocess_mode="livemostrecent", registry=None)
        if not model:
            return
        self.model_loaded = Gauge("flashsr_model_loaded", "1: the model serves this worker; 0: it resamples instead.",
                                  ["queue", "device"], multiprocess_mode="livemin", registry=None)
        self.batch_rows = Histogram("flashsr_batch_rows", "Rows (windows x channels) per forward pass of the model.",
                                    buckets=ROW_BUCKETS, registry=None)
        self.stage_seconds = Histogram("flashsr_model_stage_seconds", "Time of each stage of a forward pass.",
                                       ["stage"], buckets=STAGE_BUCKETS, registry=None)
        self.gpu_bytes = Gauge("flashsr_gpu_memory_bytes", "CUDA memory held by the worker's model processes.",
                               ["kind"], multiprocess_mode="livesum", registry=None)
        observers.set_observer(self)

    def start_at_zero(self, queues: Sequence[str]) -> None:
        """Every series a file can count in, at 0 from the start: rate() and increase() miss the
        first counts of a series that appears mid-window (the alert on failures would)."""
        methods = ("flashsr", "resample") if GPU_QUEUE in queues else ("resample",)
        for queue in queues:
            for method in methods:
                self.audio_seconds.labels(queue, method)
                for outcome in ("enhanced", "failed"):
                    self.files.labels(queue, method, outcome)
            for outcome in ("skipped", "unselected", "failed"):
                self.files.labels(queue, NO_METHOD, outcome)

    # the model observer (flashsr_tasks.model.observers)
    def batch(self, rows: int, seconds: float) -> None:
        self.batch_rows.observe(rows)

    def stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds.labels(stage).observe(seconds)

    def gpu_memory(self, allocated: int, reserved: int) -> None:
        self.gpu_bytes.labels("allocated").set(allocated)
        self.gpu_bytes.labels("reserved").set(reserved)


_metrics: Optional[WorkerMetrics] = None
_port: Optional[int] = None
_directory: Optional[str] = None
_server: Any = None
_main_pid = 0  # the worker's main process: only it stops the server and removes the folder


def port() -> Optional[int]:
    """The port this worker serves metrics on (None: off, or no free port was found)."""
    return _port


def start(queues: Sequence[str], app: Optional[Celery] = None) -> Optional[int]:
    """In the worker's main process, before the pool forks: when FLASHSR_METRICS_PORT is set, make
    a fresh multiprocess folder, build the metrics, serve them on the first free port from the
    setting, and sample the broker's queue lengths. Returns the port (None: off)."""
    global _metrics, _port, _directory, _server, _main_pid
    wanted = config.metrics_port()
    if wanted is None or _metrics is not None:
        return _port
    _main_pid = os.getpid()
    _remove_folders_of_dead_workers()
    _directory = tempfile.mkdtemp(prefix=f"{FOLDER_PREFIX}{_main_pid}-")
    config.export_prometheus_multiproc_dir(_directory)
    # prometheus_client picks its value class when first imported, and celery's command line may
    # have imported it already (Flower's plugin does): pick again, now that the folder is set.
    from prometheus_client import values

    values.ValueClass = values.get_value_class()
    _metrics = WorkerMetrics(model=GPU_QUEUE in queues)
    _metrics.start_at_zero(queues)
    atexit.register(stop)
    _server, _port = _serve(wanted)
    if _port is None:
        log.warning("no free port for the metrics in %d-%d; this worker serves none", wanted, wanted + PORT_TRIES - 1)
        _metrics = None
        observers.set_observer(None)
        stop()
    elif app is not None:
        threading.Thread(target=_sample_queues, args=(str(app.conf.broker_url), list(queues)), name="flashsr-queue-sampler",
                         daemon=True).start()
    return _port


def _remove_folders_of_dead_workers() -> None:
    """The multiprocess folders of workers on this host that were killed outright (SIGKILL)."""
    for folder in glob.glob(os.path.join(tempfile.gettempdir(), f"{FOLDER_PREFIX}*-*")):
        pid = os.path.basename(folder)[len(FOLDER_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _serve(first: int) -> tuple[Any, Optional[int]]:
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    registry.register(_LiveProcessesCollector(_directory or ""))
    for candidate in range(first, min(first + PORT_TRIES, 65536)):
        try:
            server, _ = start_http_server(candidate, addr="0.0.0.0", registry=registry)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                continue
            raise
        return server, candidate
    return None, None


class _LiveProcessesCollector:
    """prometheus_client's MultiProcessCollector, after forgetting the live gauges of pool
    processes that died without saying so (killed: no worker_process_shutdown)."""

    _PID = re.compile(r"_(\d+)\.db$")

    def __init__(self, directory: str) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self._directory = directory
        self._collector = MultiProcessCollector(None, path=directory)

    def collect(self) -> Any:
        from prometheus_client.multiprocess import mark_process_dead

        for path in glob.glob(os.path.join(self._directory, "gauge_live*.db")):
            match = self._PID.search(path)
            if match and not _alive(int(match.group(1))):
                mark_process_dead(int(match.group(1)), self._directory)
        return self._collector.collect()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def in_pool_process() -> None:
    """In a prefork pool process once forked: let go of the inherited listening socket (only
    the main process answers scrapes)."""
    if _server is not None:
        try:
            _server.socket.close()
        except OSError:
            pass


def pool_process_exits(pid: int) -> None:
    """A pool process's end: its live gauges (in flight, model loaded, GPU memory) stop counting."""
    if _metrics is not None and _directory:
        from prometheus_client.multiprocess import mark_process_dead

        mark_process_dead(pid, _directory)


def stop() -> None:
    """The main process's end: stop serving and remove the multiprocess folder."""
    global _server
    if _server is not None and os.getpid() == _main_pid:
        try:
            _server.shutdown()
            _server.server_close()
        except OSError:
            pass
        _server = None
    if _directory and os.getpid() == _main_pid:
        shutil.rmtree(_directory, ignore_errors=True)


# ---------------------------------------------------------------------------- hooks


def model_loaded(queue: str, device: str, loaded: bool) -> None:
    """A gpu worker process's model load finished: the model serves (1) or the resampler (0)."""
    if _metrics is not None and hasattr(_metrics, "model_loaded"):
        _metrics.model_loaded.labels(queue, device).set(1 if loaded else 0)


def task_started(queue: str) -> float:
    """A file's task begins; returns the clock for `task_finished`."""
    if _metrics is not None:
        _metrics.in_flight.labels(queue).inc()
    return time.perf_counter()


def task_finished(queue: str, started: float, outcome: Optional[Outcome]) -> None:
    """A file's task ends: its outcome (None: it raised, counted as failed) and its time."""
    if _metrics is None:
        return
    seconds = time.perf_counter() - started
    _metrics.in_flight.labels(queue).dec()
    record: Any = (outcome.get("record") if outcome is not None else None) or {}
    kind = outcome["outcome"] if outcome is not None else "failed"
    method = (record.get("method") or NO_METHOD) if kind in ("enhanced", "failed") else NO_METHOD
    _metrics.files.labels(queue, method, kind).inc()
    _metrics.file_seconds.labels(queue, method).observe(seconds)
    if kind == "enhanced" and isinstance(record.get("duration_s"), (int, float)):
        _metrics.audio_seconds.labels(queue, method).inc(record["duration_s"])


# ---------------------------------------------------------------------------- the broker's queues


def _sample_queues(broker: str, queues: list[str]) -> None:
    """Every QUEUE_SAMPLE_S: each queue's length (broker.queues: Redis list lengths, RabbitMQ's
    message count). While the broker is away the last values stay."""
    while True:
        try:
            lengths = queue_lengths(broker, queues)
        except BrokerUnreachable:
            log.debug("could not sample the queue lengths", exc_info=True)
        else:
            for queue, length in lengths.items():
                assert _metrics is not None
                _metrics.queue_messages.labels(queue).set(length)
        time.sleep(QUEUE_SAMPLE_S)
