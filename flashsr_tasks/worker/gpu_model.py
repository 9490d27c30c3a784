"""A gpu worker process's model: loaded once, or the worker stops when strict model mode wants it."""
from __future__ import annotations

import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, NoReturn

from flashsr_tasks import config
from flashsr_tasks.broker.queues import GPU_QUEUE
from flashsr_tasks.worker import metrics

if TYPE_CHECKING:  # numpy: not in a worker's main process
    from flashsr_tasks.enhance.enhancers import Enhancer

log = logging.getLogger(__name__)
# Set in a prefork pool process once forked (worker.lifecycle): a strict worker without its
# model then stops the main process too, which would otherwise fork another.
in_forked_pool_process = False


def load_gpu_model() -> Enhancer:
    """The model on the worker's device; the resampler when it cannot load (one warning), or the
    worker's exit in strict model mode (FLASHSR_REQUIRE_MODEL=1)."""
    from flashsr_tasks.enhance.enhancers import ModelRequired, load_enhancer

    try:
        enhancer = load_enhancer(config.worker_device(), config.model_dir())
    except (ModelRequired, ValueError) as exc:  # ValueError: FLASHSR_REQUIRE_MODEL itself is not 1 or 0
        exit_worker(str(exc))
    log.info("gpu worker ready: method=%s device=%s", enhancer.method, enhancer.device)
    metrics.model_loaded(GPU_QUEUE, enhancer.device, enhancer.method == "flashsr")
    return enhancer


def exit_worker(sentence: str) -> NoReturn:
    """Strict model mode: a gpu worker without its model stops at once, visibly to a supervisor
    (status 3, one line on stderr), instead of serving resampled audio or tasks that fail."""
    # sys.__stderr__: Celery redirects sys.stderr into its log
    print(f"flashsr: error: {sentence}", file=sys.__stderr__, flush=True)
    if in_forked_pool_process:
        os.kill(os.getppid(), signal.SIGQUIT)  # the main process's cold shutdown
    metrics.stop()
    os._exit(3)
