"""flashsr_tasks.broker.kombu_fixes on a real redis-server: what a consumer could not tell Redis
while it was away (messages it held, acknowledgements), it tells it on its first channel once
Redis is back."""
from __future__ import annotations

from pathlib import Path

import pytest
from kombu import Connection, Exchange, Queue

from flashsr_tasks.broker import kombu_fixes
from tests.services import start_redis

pytestmark = pytest.mark.timeout(60)


def test_messages_held_and_acks_cut_by_an_outage_are_settled_once_redis_is_back(tmp_path: Path) -> None:
    kombu_fixes.apply()
    server = start_redis(tmp_path / "redis", aof=True)
    try:
        queue = Queue("q", Exchange("q"), routing_key="q")
        with Connection(server.url) as conn:
            producer = conn.Producer()
            for i in range(3):
                producer.publish({"n": i}, exchange=queue.exchange, routing_key="q", declare=[queue])
        client = server.client()
        conn = Connection(server.url, transport_options={"max_retries": 0})
        channel = conn.channel()
        held = [queue(channel).get(no_ack=False) for _ in range(3)]
        assert all(held) and client.hlen("unacked") == 3 and client.llen("q") == 0
        held[0].ack()  # acknowledged while Redis is up: gone from unacked at once
        server.kill()
        held[1].ack()  # finished during the outage: its acknowledgement cannot go out
        channel.close()  # the lost channel: held[2] cannot go back to the queue
        conn.release()
        assert kombu_fixes.owed() == (1, 1)
        server.restart()
        assert client.hlen("unacked") == 2  # what Redis kept: both would wait for the visibility timeout
        with Connection(server.url) as again:
            again.channel()  # the first channel once Redis answers pays what is owed
        assert kombu_fixes.owed() == (0, 0)
        assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
        assert client.llen("q") == 1  # held[2], back on the queue
        with Connection(server.url) as again:
            assert queue(again.channel()).get(no_ack=True).payload == {"n": 2}
    finally:
        server.stop()
