"""Ingest: drain a telemetry source into the state model, in bounded batches, under a lock.

The dashboard never folds messages on its UI thread and never updates a widget per message: a
worker thread (:meth:`Ingest.start`) polls the source, folds what it got into the
:class:`~tiertop.monitor.state.StateModel` while holding the shared lock, and lets go of the lock
between chunks so the render timer never waits long for it. Tests step it by hand with
:meth:`Ingest.step` and a fake source instead of a thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tiertop.monitor.protocol import TierMoves
from tiertop.monitor.state import StateModel
from tiertop.monitor.vllm_events import KvEventBatch

__all__ = ["ERROR_SHOWN_S", "Ingest", "Source"]

#: Seconds an ingest error stays on screen once data flows again (a replaced ingest process).
ERROR_SHOWN_S = 10.0

log = logging.getLogger(__name__)


class Source(Protocol):
    """What the ingest reads: :class:`~tiertop.monitor.subscriber.TelemetrySubscriber`'s shape."""

    def poll(self, max_messages: int = 1000, timeout_ms: float = 0) -> list[Any]:
        """Up to ``max_messages`` decoded messages, waiting at most ``timeout_ms``."""
        ...

    def counters(self) -> Any:
        """Cumulative counters (a dataclass or a mapping of name to int)."""
        ...

    @property
    def stale(self) -> bool: ...

    @property
    def in_sync(self) -> bool: ...

    def close(self) -> None: ...


def _weight(message: Any) -> int:
    """Rough cost of folding one message, in block events or moves."""
    if isinstance(message, KvEventBatch):
        return len(message.events) + 1
    if isinstance(message, TierMoves):
        return len(message.moves) + 1
    return 1


class Ingest:
    """Folds what a source delivers into a model.

    Args:
        model: The state model (read by the renderer under ``lock``).
        lock: Held while folding; the renderer holds it while reading the model.
        source: Where messages come from (a subscriber, or a fake one in tests).
        clock: Monotonic seconds, for ``received_at`` (the status line's message age).
        max_messages: Most messages taken from the source per poll.
        chunk_weight: Most block events (or moves) folded per hold of the lock; the lock is
            released and taken again between chunks.
        also_fold: Handed every polled batch before the model folds it (the session's live
            miss-ratio curve, which takes the lock itself).
    """

    def __init__(
        self,
        model: StateModel,
        lock: threading.Lock,
        source: Source,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_messages: int = 2000,
        chunk_weight: int = 4096,
        also_fold: Callable[[Sequence[Any]], None] | None = None,
    ) -> None:
        self.model = model
        self.lock = lock
        self.source = source
        self.clock = clock
        self.max_messages = max_messages
        self.chunk_weight = chunk_weight
        self.also_fold = also_fold
        #: Messages folded so far.
        self.folded = 0
        #: Batches taken from the source so far.
        self.batches = 0
        #: The last error the worker thread met (it keeps going), "" when none or when data
        #: has flowed again for a while since.
        self.last_error = ""
        self._error_at = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def step(self, timeout_ms: float = 0.0) -> int:
        """Take one batch from the source and fold it; returns the number of messages."""
        messages = self.source.poll(self.max_messages, timeout_ms)
        now = self.clock()
        if messages:
            self.batches += 1
            if self.also_fold is not None:
                self.also_fold(messages)
            self._fold(messages, now)
        counters = self.source.counters()
        stale, in_sync = self.source.stale, self.source.in_sync
        with self.lock:
            self.model.update_connection(counters, stale=stale, in_sync=in_sync)
        return len(messages)

    def _fold(self, messages: Sequence[Any], now: float) -> None:
        model, lock, limit = self.model, self.lock, self.chunk_weight
        start = 0
        n = len(messages)
        while start < n:
            end, weight = start, 0
            while end < n:  # at most ``limit``, or one message when it alone is heavier
                w = _weight(messages[end])
                if end > start and weight + w > limit:
                    break
                weight += w
                end += 1
            with lock:
                model.fold_many(messages[start:end], received_at=now)
            self.folded += end - start
            start = end
            if start < n:
                time.sleep(0)  # hand the GIL to the UI thread between chunks

    def drain(self, limit: int = 100) -> int:
        """Step until the source has nothing ready (at most ``limit`` batches)."""
        total = 0
        for _ in range(limit):
            got = self.step()
            total += got
            if not got:
                break
        return total

    # ------------------------------------------------------------------------------ thread

    def start(self) -> None:
        """Run :meth:`step` in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="tiertop-ingest", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.guarded_step():
                self._stop.wait(0.1)

    def guarded_step(self, timeout_ms: float = 100) -> bool:
        """:meth:`step`, keeping the dashboard alive when it fails: the error is shown
        (:attr:`last_error`) until data flows again and it has been up ``ERROR_SHOWN_S``.
        False when it failed."""
        try:
            got = self.step(timeout_ms=timeout_ms)
        except Exception as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._error_at = self.clock()
            log.exception("ingest step failed")
            return False
        if got and self.last_error and self.clock() - self._error_at >= ERROR_SHOWN_S:
            self.last_error = ""
        return True

    def stop(self, close: bool = True) -> None:
        """Stop the thread (waits for the current step) and close the source."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if close:
            self.source.close()
