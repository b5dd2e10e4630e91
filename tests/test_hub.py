"""The API process's one subscription (`app.hub`), against a real Redis."""

from __future__ import annotations

import os
import signal
import threading
import time

import redis

from app.hub import Hub
from tests.processes import eventually, own_redis, wait_gone

SETTLE_SECONDS = 20.0


def subscribers(client: redis.Redis, channel: str) -> int:
    return dict(client.pubsub_numsub(channel))[channel.encode()]


def test_a_watch_is_woken_by_its_own_channel_only(redis_client):
    """A publish on a watched channel wakes its watch; one on another channel does not."""
    hub = Hub(redis_client)
    with hub.watch("pb:test:a") as a, hub.watch("pb:test:b") as b:
        assert a.live and b.live
        redis_client.publish("pb:test:a", "x")
        assert a.sleep(SETTLE_SECONDS)
        assert not b.sleep(0.3)


def test_channels_nobody_watches_are_unsubscribed_and_the_listener_ends(redis_client):
    """When the last watch of a channel ends the channel is unsubscribed, and with the last
    channel the listener and its connection go."""
    hub = Hub(redis_client)
    with hub.watch("pb:test:one"), hub.watch("pb:test:two"):
        assert subscribers(redis_client, "pb:test:one") == 1
        with hub.watch("pb:test:one"):
            pass
        assert subscribers(redis_client, "pb:test:one") == 1
    eventually(
        lambda: subscribers(redis_client, "pb:test:one") == 0 and hub.watching() == 0,
        timeout_seconds=SETTLE_SECONDS,
        what="the channels are unsubscribed",
    )
    assert subscribers(redis_client, "pb:test:two") == 0
    eventually(
        lambda: hub._listener is None, timeout_seconds=SETTLE_SECONDS, what="the listener ends"
    )


def test_watches_poll_while_redis_is_down_and_hear_again_after_it_restarts(tmp_path):
    """While Redis restarts a watch is not live and its sleeps end at once or soon (its
    waiter re-reads); once Redis is back the channel is subscribed again and heard."""
    with own_redis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
        hub = Hub(client)
        with hub.watch("pb:test:job") as watch:
            assert watch.live
            os.kill(server.running.pid, signal.SIGKILL)
            wait_gone([server.running.pid], SETTLE_SECONDS)
            eventually(lambda: not watch.live, timeout_seconds=SETTLE_SECONDS, what="not live")
            started = time.monotonic()
            assert watch.sleep(30)  # a poll's end counts as a wake
            assert time.monotonic() - started < 25
            server.running = server.embedded.start()  # on the same port, from the same files
            eventually(lambda: watch.live, timeout_seconds=SETTLE_SECONDS, what="live again")
            # Woken once on resubscription (a change meanwhile was not heard): look again.
            watch.sleep(0)
            server.client().publish("pb:test:job", "x")
            assert watch.sleep(SETTLE_SECONDS)
        client.close()


class _SetAsItTimesOut(threading.Event):
    """An event whose wait times out just as it is set: the wait answers False, the flag
    is set (gevent's and the threading module's waits both answer so)."""

    def wait(self, timeout: float | None = None) -> bool:
        self.set()
        return False


def test_a_wake_that_comes_as_a_sleep_times_out_is_not_lost(redis_client):
    """A change heard as a sleep times out (a stream's keep-alive or lease renewal falls due)
    counts as a wake: the sleep says to look again, it is not cleared away unseen."""
    hub = Hub(redis_client)
    with hub.watch("pb:test:late") as watch:
        watch._event = _SetAsItTimesOut()
        assert watch.sleep(0.01)


def test_stop_wakes_every_watch_for_good(redis_client):
    """`stop` (the server is going down) wakes every watch, and later sleeps end at once."""
    hub = Hub(redis_client)
    woken: list[bool] = []
    with hub.watch("pb:test:stop") as watch:
        sleeper = threading.Thread(target=lambda: woken.append(watch.sleep(60)))
        sleeper.start()
        time.sleep(0.2)
        hub.stop()
        sleeper.join(SETTLE_SECONDS)
        assert woken == [True]
        assert hub.stopping and watch.sleep(60)
