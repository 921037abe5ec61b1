"""Pub/sub wake-ups for idle workers and for waiters on finished jobs (Redis driver).

The script that makes jobs available publishes each queue's name on the
store's channel in the same atomic run, so a wake-up follows every committed
change.  One :class:`Listener` per driver holds a dedicated connection in a
daemon thread, subscribed to that channel, and wakes the threads blocked in
:meth:`Listener.wait` for those queues; on a second channel, the script's one
notice per call that finished jobs wakes the threads waiting in
:attr:`Listener.finished` (:mod:`taskharbor.drivers.finished_watches`).
Messages sent while it is not connected are lost, so every waiter is woken
after a (re)connection, and
:meth:`Listener.wait` answers ``None`` at once while it is away (the driver
then polls).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence

import redis

from ..finished_watches import FinishedWatches

RECONNECT_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
"""Waits between reconnection attempts; the last one repeats."""


class Listener:
    """Waits for messages on its channels; reconnects when its connection drops."""

    def __init__(self, client: redis.Redis, channel: str, finished_channel: str) -> None:
        self._client = client
        self._channel = channel
        self._finished_channel = finished_channel
        self.finished = FinishedWatches()
        """The waiters on finished jobs, woken by notices on ``finished_channel``."""
        self._changed = threading.Condition()
        self._generation: dict[str, int] = {}
        self._reconnections = 0
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._pubsub: redis.client.PubSub | None = None
        self._start_lock = threading.Lock()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self, settle: float) -> None:
        """Start the listener thread if needed; wait up to ``settle`` s for it to subscribe."""
        with self._start_lock:
            if self._thread is None and not self._stopping.is_set():
                self._thread = threading.Thread(
                    target=self._run, name=f"taskharbor-listen-{self._channel}", daemon=True
                )
                self._thread.start()
        self._connected.wait(settle)

    def generations(self, queues: Sequence[str]) -> tuple[int, list[int]]:
        """Where the listener stands for ``queues``: compare it after a wait."""
        with self._changed:
            return self._reconnections, [self._generation.get(queue, 0) for queue in queues]

    def wait(self, queues: Sequence[str], seen: tuple[int, list[int]], timeout: float) -> bool:
        """Block until a message for one of ``queues`` arrived since ``seen``, a
        reconnection, or ``timeout`` s; True when woken."""
        with self._changed:
            return self._changed.wait_for(lambda: self.generations_locked(queues) != seen, timeout)

    def generations_locked(self, queues: Sequence[str]) -> tuple[int, list[int]]:
        return self._reconnections, [self._generation.get(queue, 0) for queue in queues]

    def close(self) -> None:
        """Stop the thread and close its connection; safe to call more than once."""
        self._stopping.set()
        pubsub = self._pubsub
        if pubsub is not None:
            with contextlib.suppress(redis.RedisError):
                pubsub.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                pubsub = self._client.pubsub()  # type: ignore[no-untyped-call]
                self._pubsub = pubsub
                pubsub.subscribe(self._channel, self._finished_channel)
                failures = 0
                self._listen(pubsub)
            except (redis.RedisError, OSError, ValueError, AttributeError):
                # A dropped connection, or the pub/sub closed under us by close().
                pass
            self._connected.clear()
            if self._stopping.is_set():
                break
            delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
            failures += 1
            self._stopping.wait(delay)
        self._connected.clear()

    def _listen(self, pubsub: redis.client.PubSub) -> None:
        while not self._stopping.is_set():
            message = pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            kind = message.get("type")
            if kind == "subscribe" and message.get("channel") == self._finished_channel:
                self._on_connected()  # the server confirmed both: nothing is missed from now on
            elif kind == "message" and message.get("channel") == self._finished_channel:
                self.finished.hear(str(message["data"]))
            elif kind == "message":
                self._on_message(str(message["data"]))

    def _on_connected(self) -> None:
        with self._changed:
            self._connected.set()
            self._reconnections += 1
            self._changed.notify_all()
        self.finished.wake_all()

    def _on_message(self, queue: str) -> None:
        with self._changed:
            self._generation[queue] = self._generation.get(queue, 0) + 1
            self._changed.notify_all()
