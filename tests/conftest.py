from __future__ import annotations

from typing import Callable, Iterator

import pytest

from tests.model_fixtures import random_model_dir  # noqa: F401  (a session fixture, registered once here)
from tests.services import RedisServer, Worker, start_redis, start_worker, worker_env


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server on a free loopback port, for one test."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def workers(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Worker]]:
    """Start real celery workers on the test's Redis: `workers("cpu", concurrency=2, FLASHSR_X="y")`."""
    started: list[Worker] = []
    logdir = tmp_path_factory.mktemp("worker-logs")

    def start(queue: str, concurrency: int = 1, extra_args: tuple[str, ...] = (), **env: str) -> Worker:
        worker = start_worker(queue, redis_server.url, logdir, concurrency,
                              env=worker_env(redis_server.url, **env), extra_args=extra_args)
        started.append(worker)
        return worker

    try:
        yield start
    finally:
        for worker in started:
            worker.stop()
