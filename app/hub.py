"""One Redis subscription per API process, shared by every request that waits for news.

Long-polls, job event streams and the partner feed all sleep until something
they watch changes. Each of them watches a few channels (a job's, a
partner's); the hub keeps one connection per process subscribed to exactly
the channels someone watches, and sets the watchers' events when a message
arrives. A process hears only what its own waiters wait for, never every
job's news.

The listener (a thread; a greenlet under the gevent server) owns the reading
side of the connection; a new watch sends its SUBSCRIBE itself and waits for
the confirmation, so a change published after `watch` returns is heard.
Channels nobody watches any more are unsubscribed about once a second, and
the listener ends with the last of them.

While the connection is down (Redis restarting) watchers re-read every
`FALLBACK_POLL_SECONDS` instead; when a channel is subscribed again its
watchers are woken once, so no change made meanwhile is missed. Through
Sentinel, the connection is made to the primary it names, and made again when
it names another (a failover). `stop` wakes
every watcher for good: the server is going down, streams end.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis

log = logging.getLogger(__name__)

FALLBACK_POLL_SECONDS = 1.0
# A watch waits this long for its subscription to be confirmed, then polls instead.
CONFIRM_SECONDS = 1.0
SWEEP_SECONDS = 1.0
RECONNECT_MAX_SECONDS = 5.0


class _Channel:
    """A subscribed channel: its watches, and whether the server confirmed it."""

    __slots__ = ("confirmed", "pending", "resubscribed", "watches")

    def __init__(self) -> None:
        self.watches: set[Watch] = set()
        self.confirmed = threading.Event()
        # SUBSCRIBEs sent and not yet confirmed.
        self.pending = 0
        # Subscribed again after the connection was lost: wake its watches on confirmation.
        self.resubscribed = False


class Watch:
    """What one waiter holds: `set` wakes it, `sleep` waits to be woken."""

    def __init__(self, hub: Hub, channels: tuple[str, ...]) -> None:
        self._hub = hub
        self.channels = channels
        self._event = threading.Event()

    def set(self) -> None:
        """Wake the waiter (a message arrived, the client hung up, the server stops)."""
        self._event.set()

    @property
    def live(self) -> bool:
        """Whether every channel is subscribed now (else changes may go unheard)."""
        return self._hub.confirmed(self.channels)

    def sleep(self, seconds: float) -> bool:
        """Wait up to `seconds` to be woken; True if the waiter should look again.

        While a channel is not subscribed the wait is at most
        `FALLBACK_POLL_SECONDS`, and its end counts as a wake.
        """
        if self._hub.stopping:
            return True
        live = self.live
        if not live:
            seconds = min(seconds, FALLBACK_POLL_SECONDS)
        self._event.wait(max(0.0, seconds))
        # The flag, not wait()'s answer: a wait that timed out answers False even when
        # the event was set before the waiter ran again, and clearing it then would lose
        # that wake. Cleared only when seen set: a set after this look stays for the next.
        woken = self._event.is_set()
        if woken:
            self._event.clear()
        return woken or not live or self._hub.stopping


class Hub:
    """The subscriptions of one API process."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._channels: dict[str, _Channel] = {}
        self._conn: Any = None
        self._listener: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def stopping(self) -> bool:
        """Whether the server is going down (waits and streams end)."""
        return self._stopping.is_set()

    def stop(self) -> None:
        """Wake every watcher for good: the process is stopping."""
        self._stopping.set()
        self._wake(None)

    @contextlib.contextmanager
    def watch(self, *channels: str) -> Iterator[Watch]:
        """A watch on `channels`, subscribed (when Redis answers within `CONFIRM_SECONDS`)
        before it is returned: read what you wait for after entering, and a change
        between the read and the sleep is not missed."""
        watch = Watch(self, channels)
        new: list[str] = []
        with self._lock:
            for name in channels:
                channel = self._channels.get(name)
                if channel is None:
                    channel = self._channels[name] = _Channel()
                    new.append(name)
                channel.watches.add(watch)
            self._start()
            conn = self._conn
        try:
            if new and conn is not None:
                self._subscribe(conn, new)
            deadline = time.monotonic() + CONFIRM_SECONDS
            for name in channels:
                left = deadline - time.monotonic()
                if left <= 0 or not self._channels[name].confirmed.wait(left):
                    break
            yield watch
        finally:
            with self._lock:
                for name in channels:
                    channel = self._channels.get(name)
                    if channel is not None:
                        channel.watches.discard(watch)

    def confirmed(self, channels: tuple[str, ...]) -> bool:
        with self._lock:
            for name in channels:
                channel = self._channels.get(name)
                if channel is None or not channel.confirmed.is_set():
                    return False
            return True

    def watching(self) -> int:
        """How many channels the process is subscribed to (or about to be)."""
        with self._lock:
            return len(self._channels)

    def _subscribe(self, conn: Any, names: list[str]) -> None:
        with self._lock:
            if self._conn is not conn:
                return  # a new connection subscribes every channel itself
            for name in names:
                channel = self._channels.get(name)
                if channel is not None:
                    channel.pending += 1
        try:
            with self._send_lock:
                conn.send_command("SUBSCRIBE", *names, check_health=False)
        except (redis.RedisError, OSError) as exc:
            # The listener sees the broken connection too and subscribes everything again.
            log.debug("SUBSCRIBE failed (%s); the listener will resubscribe", exc)

    def _start(self) -> None:
        """Start the listener if none runs (called with the lock held)."""
        if self._listener is None or not self._listener.is_alive():
            self._listener = threading.Thread(target=self._listen, name="hub", daemon=True)
            self._listener.start()

    def _listen(self) -> None:
        pause = 0.1
        lost = False
        while True:
            conn = None
            try:
                conn = self._connect()
                with self._lock:
                    if not self._channels:
                        self._listener = None
                        return
                    names = list(self._channels)
                    for channel in self._channels.values():
                        channel.pending = 0
                        channel.resubscribed = lost
                    self._conn = conn
                self._subscribe(conn, names)
                pause = 0.1
                if not self._serve(conn):
                    return
            except (redis.RedisError, OSError) as exc:
                with self._lock:
                    self._conn = None
                    for channel in self._channels.values():
                        channel.confirmed.clear()
                if not lost:
                    log.warning("waits lost their subscription (%s); polling", exc)
                lost = True
                # Watchers now poll; they are woken to start doing so.
                self._wake(None)
                time.sleep(pause)
                pause = min(pause * 2, RECONNECT_MAX_SECONDS)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.disconnect()

    def _connect(self) -> Any:
        pool = self.redis.connection_pool
        kwargs = {**pool.connection_kwargs, "health_check_interval": 0}
        conn = pool.connection_class(**kwargs)
        conn.connect()
        return conn

    def _serve(self, conn: Any) -> bool:
        """Read the connection until nobody watches anything (False) or it breaks (raises)."""
        swept = time.monotonic()
        while True:
            if conn.can_read(timeout=SWEEP_SECONDS):
                self._handle(conn.read_response())
            if time.monotonic() - swept >= SWEEP_SECONDS:
                swept = time.monotonic()
                if not self._sweep(conn):
                    return False
                self._check_primary(conn)

    def _check_primary(self, conn: Any) -> None:
        """ConnectionError if Sentinel names another primary than the one `conn` reads:
        changes are published there now (`postback.sentinel`)."""
        check = getattr(self.redis.connection_pool, "check_primary", None)
        primary = check() if check is not None else None
        if primary is not None and (conn.host, conn.port) != primary:
            raise redis.ConnectionError("the primary moved; subscribing on the new one")

    def _handle(self, reply: Any) -> None:
        if not isinstance(reply, list) or len(reply) < 3:
            return
        kind, name = reply[0], reply[1].decode()
        if kind == b"message":
            self._wake(name)
        elif kind == b"subscribe":
            with self._lock:
                channel = self._channels.get(name)
                if channel is None:
                    return
                channel.pending = max(0, channel.pending - 1)
                if channel.pending:
                    return
                channel.confirmed.set()
                woken = list(channel.watches) if channel.resubscribed else []
                channel.resubscribed = False
            # Changes made while it was not subscribed were not heard: look again.
            for watch in woken:
                watch.set()

    def _sweep(self, conn: Any) -> bool:
        """Unsubscribe the confirmed channels nobody watches; False once none is left."""
        with self._lock:
            idle = [
                name
                for name, channel in self._channels.items()
                if not channel.watches and not channel.pending and channel.confirmed.is_set()
            ]
            for name in idle:
                del self._channels[name]
            if not self._channels:
                self._conn = None
                self._listener = None
                return False
        if idle:
            with self._send_lock:
                conn.send_command("UNSUBSCRIBE", *idle, check_health=False)
        return True

    def _wake(self, name: str | None) -> None:
        with self._lock:
            if name is None:
                watches = [
                    watch for channel in self._channels.values() for watch in channel.watches
                ]
            else:
                channel = self._channels.get(name)
                watches = list(channel.watches) if channel is not None else []
        for watch in watches:
            watch.set()
