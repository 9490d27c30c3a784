"""Messages waiting on the broker's queues, for whoever watches a fleet (`flashsr-status`): a
Redis broker's list lengths (every priority list kombu keeps for a queue), a RabbitMQ queue's
message count from a passive `queue_declare`. Messages a worker has taken and not yet
acknowledged are not waiting and not counted.

Short timeouts: an unreachable broker is one sentence (`BrokerUnreachable`) within seconds.
Both sides use it (`flashsr-status`, the workers' metrics); it imports neither celery nor numpy.
"""
from __future__ import annotations

from typing import Sequence

TIMEOUT_S = 3.0
GPU_QUEUE = "gpu"
CPU_QUEUE = "cpu"
QUEUES = (GPU_QUEUE, CPU_QUEUE)
# kombu's Redis transport keeps a queue's messages of priority step N > 0 in "<queue>\x06\x16N"
# (orchestrator_hooks.distributed.watchdog reads the same lists).
PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)
_NOT_FOUND = 404  # AMQP's reply to a passive declare of a queue that was never declared


class BrokerUnreachable(Exception):
    """The queues could not be counted; the message is one sentence for the user."""


def shown_url(broker: str) -> str:
    """The broker's URL without its password, as a message may show it."""
    from kombu.utils.url import maybe_sanitize_url

    return str(maybe_sanitize_url(broker))


def queue_lengths(broker: str, queues: Sequence[str], timeout_s: float = TIMEOUT_S) -> dict[str, int]:
    """Messages waiting on each of `queues`, by name; raises BrokerUnreachable within about
    `timeout_s` (per connection attempt) when the broker does not answer."""
    scheme = broker.split("://", 1)[0].lower()
    try:
        if scheme in ("redis", "rediss"):
            return _redis_lengths(broker, queues, timeout_s)
        if scheme in ("amqp", "amqps", "pyamqp"):
            return _amqp_lengths(broker, queues, timeout_s)
    except Exception as exc:
        raise BrokerUnreachable(
            f"the broker at {shown_url(broker)} could not be reached within {timeout_s:g} s "
            f"({_first_line(exc)}), so the messages waiting on its queues are unknown") from None
    raise BrokerUnreachable(f"cannot count the messages waiting on a {scheme}:// broker (redis:// or amqp:// only)")


def _redis_lengths(broker: str, queues: Sequence[str], timeout_s: float) -> dict[str, int]:
    import redis

    client = redis.Redis.from_url(broker, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        with client.pipeline(transaction=False) as pipe:
            for queue in queues:
                for key in (queue, *(f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS)):
                    pipe.llen(key)
            lengths = pipe.execute()
    finally:
        client.close()
    per_queue = 1 + len(PRIORITY_STEPS)
    return {queue: sum(lengths[i * per_queue:(i + 1) * per_queue]) for i, queue in enumerate(queues)}


def _amqp_lengths(broker: str, queues: Sequence[str], timeout_s: float) -> dict[str, int]:
    from kombu import Connection

    counts: dict[str, int] = {}
    with Connection(broker, connect_timeout=timeout_s,
                    transport_options={"read_timeout": timeout_s, "write_timeout": timeout_s}) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout_s)
        for queue in queues:
            channel = conn.channel()
            try:
                counts[queue] = int(channel.queue_declare(queue=queue, passive=True).message_count)
            except conn.channel_errors as exc:
                if getattr(exc, "code", None) != _NOT_FOUND:
                    raise
                counts[queue] = 0  # never declared: no worker or run has used it yet
            finally:
                try:
                    channel.close()
                except Exception:
                    pass  # the server closes a channel after NOT_FOUND itself
    return counts


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
