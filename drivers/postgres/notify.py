"""LISTEN/NOTIFY wake-ups for idle workers and for waiters on finished jobs.

Statements that make jobs available announce their queues on the schema's
channel (``pg_notify`` inside the same transaction, so a wake-up is sent only
if the jobs are committed).  One :class:`Listener` per driver holds a
dedicated autocommit connection in a daemon thread, LISTENs on the channel,
and wakes the threads blocked in :meth:`Listener.wait` for those queues.  With a
second channel, the statements that finish jobs send one notice per call
(:mod:`taskharbor.drivers.finished_watches`), which wakes the threads waiting
in :attr:`Listener.finished` for those jobs.

A dropped connection (server restart, ``pg_terminate_backend``, a network
cut) is reconnected with backoff; every waiter is woken after a reconnection,
because notifications sent while the listener was away are lost.  While the
listener is not connected, :meth:`Listener.wait` returns ``None`` at once and
the driver polls instead.

The thread sleeps in one ``select`` on the connection's socket and on a
socket pair that :meth:`Listener.close` rings: no timer wakes it while idle,
and closing does not wait for a polling slice to run out.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from collections.abc import Sequence

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from ..finished_watches import FinishedWatches

RECONNECT_DELAYS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
"""Waits between reconnection attempts; the last one repeats."""


class Listener:
    """Waits for notifications on its channels; reconnects when its connection drops."""

    def __init__(self, conninfo: str, channel: str, finished_channel: str) -> None:
        self._conninfo = conninfo
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
        self._bell: tuple[socket.socket, socket.socket] | None = None
        """A socket pair: :meth:`close` rings one end, the thread hears the other."""
        self._start_lock = threading.Lock()

    @property
    def connected(self) -> bool:
        """Whether the listener is LISTENing now (else notifications may be missed)."""
        return self._connected.is_set()

    def start(self, settle: float) -> None:
        """Start the listener thread if needed; wait up to ``settle`` s for it to connect."""
        with self._start_lock:
            if self._thread is None:
                self._bell = socket.socketpair()
                heard = self._bell[1]
                self._thread = threading.Thread(
                    target=self._run,
                    args=(heard,),
                    name=f"taskharbor-listen-{self._channel}",
                    daemon=True,
                )
                self._thread.start()
        self._connected.wait(settle)

    def wait(self, queues: Sequence[str], timeout: float) -> bool | None:
        """Block until a notification for one of ``queues`` or ``timeout`` s.

        True when woken, False on timeout, None at once when not connected.
        """
        with self._changed:
            if not self.connected:
                return None
            seen = [self._generation.get(queue, 0) for queue in queues]
            reconnections = self._reconnections

            def woken() -> bool:
                current = [self._generation.get(queue, 0) for queue in queues]
                return current != seen or self._reconnections != reconnections

            return self._changed.wait_for(woken, timeout)

    def close(self) -> None:
        """Stop the thread and close its connection; safe to call more than once."""
        self._stopping.set()
        with self._start_lock:
            bell, self._bell = self._bell, None
        if bell is not None:
            bell[0].send(b"\0")
        if self._thread is not None:
            self._thread.join()
        for end in bell or ():
            end.close()

    def _run(self, heard: socket.socket) -> None:
        """The thread: listen, and reconnect after a failure, until :meth:`close`."""
        failures = 0
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(
                        sql.SQL("LISTEN {}; LISTEN {}").format(
                            sql.Identifier(self._channel), sql.Identifier(self._finished_channel)
                        )
                    )
                    failures = 0
                    self._on_connected()
                    self._listen(conn, heard)
            except psycopg.Error:
                self._connected.clear()
                delay = RECONNECT_DELAYS[min(failures, len(RECONNECT_DELAYS) - 1)]
                failures += 1
                self._stopping.wait(delay)
        self._connected.clear()

    def _listen(self, conn: psycopg.Connection[TupleRow], heard: socket.socket) -> None:
        """Hand on notifications until :meth:`close` rings; a dropped connection raises.

        ``notifies(timeout=0)`` takes what has arrived without blocking (the
        first call also what came in with the LISTEN's reply); the thread then
        sleeps until the server sends more, the connection breaks, or the bell.
        """
        with selectors.DefaultSelector() as selector:
            selector.register(conn.fileno(), selectors.EVENT_READ)
            selector.register(heard, selectors.EVENT_READ)
            while not self._stopping.is_set():
                for note in conn.notifies(timeout=0):
                    if note.channel == self._finished_channel:
                        self.finished.hear(note.payload)
                    else:
                        self._on_notify(note.payload)
                selector.select()

    def _on_connected(self) -> None:
        with self._changed:
            self._connected.set()
            self._reconnections += 1
            self._changed.notify_all()
        self.finished.wake_all()

    def _on_notify(self, queue: str) -> None:
        with self._changed:
            self._generation[queue] = self._generation.get(queue, 0) + 1
            self._changed.notify_all()


def sleep_until(deadline: float, step: float) -> float:
    """Sleep at most ``step`` s without passing ``deadline``; returns the time left after."""
    left = deadline - time.monotonic()
    if left > 0:
        time.sleep(min(step, left))
    return deadline - time.monotonic()
