"""The orchestrator's connection to the broker: which queue a run uses, reaching the broker in
seconds or saying why not, and the watchdog's view into a Redis broker."""
from __future__ import annotations

from typing import Any, Optional

from flashsr_tasks.broker.queues import CPU_QUEUE, GPU_QUEUE
from orchestrator_hooks.distributed.outage import BrokerLost, first_line
from orchestrator_hooks.distributed.watchdog import RedisMessages

# Connecting to and hearing from Redis: a server that accepts connections but never answers
# is an error within this long, not a hang.
SOCKET_TIMEOUT_S = 5


def queue_for(device: str) -> str:
    return GPU_QUEUE if device.startswith("cuda") else CPU_QUEUE


def broker_messages(broker: str, queue: str) -> Optional[RedisMessages]:
    """The watchdog's view into a Redis broker; None for brokers that cannot be looked into."""
    if broker.split("://", 1)[0] not in ("redis", "rediss"):
        return None
    import redis

    client = redis.Redis.from_url(broker, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S)
    return RedisMessages(client, queue)


def check_reachable(app: Any, shown: str) -> None:
    """Fail in seconds with one sentence, before Celery's own retry loops (20 s of log lines)."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=2, interval_start=0.2, interval_step=0.5, timeout=SOCKET_TIMEOUT_S)
        client = getattr(app.backend, "client", None)  # the Redis result backend
        if client is not None:
            client.ping()
    except Exception as exc:
        raise BrokerLost(f"cannot reach the broker at {shown} ({first_line(exc)})") from None
