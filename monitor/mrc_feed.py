"""The dashboard's live miss-ratio curve: an MrcTracker fed by the ingest, at a bounded cost.

The tracker (:class:`~tiertop.monitor.mrc.MrcTracker`) folds the same decoded messages as the
state model, in the ingest (a worker thread beside the dashboard, under the session lock, or
the ingest process of :mod:`~tiertop.monitor.ingest_process`), never on the UI thread: the
ingest hands it every batch it polls before folding it into the model
(:meth:`MrcFeed.fold_locked`: at most ``chunk_events`` block events per hold of the lock).

SHARDS costs microseconds per *sampled* access, so the sampling rate decides most of the cost.
The feed starts by sampling every block (rate 1: the exact LRU curve, which the small streams of
``tiertop demo`` need to say anything about tiers of a few dozen blocks; fixed-size SHARDS then
lowers the rate by itself once more than ``max_keys`` blocks were seen). When a stream makes it
sample more than twice ``budget_per_s`` accesses a second, the curve restarts at the rate that
fits the budget, keeping the tiers it knew.

Every block event also costs a fixed scan whatever the rate. When following the stream takes
more than ``cpu_limit`` of a core anyway (a heavy stream: the dashboard's own figures come
first), the curve pauses: block events are counted, not folded, and it restarts once they would
cost less than half the limit. :attr:`MrcFeed.changes` says what happened when and why; the
screen shows it.

The screen reads the feed through :class:`MrcSource`: one :meth:`~MrcSource.reading` call that
returns plain, picklable data (:class:`MrcReading`), so the feed can run here, beside the screen
(replay, tests), or in another process that sends its readings over. It never imports Textual.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from .mrc import DEFAULT_MAX_KEYS, MissRatioCurve, MrcTracker, TierCapacity
from .mrc_view import MrcView, build_view
from .vllm_events import KvEventBatch

__all__ = ["DEFAULT_BUDGET_PER_S", "DEFAULT_CPU_LIMIT", "MAX_CHANGES", "MIN_SAMPLED",
           "FeedChange", "MrcFeed", "MrcReading", "MrcSource"]

#: Sampled accesses a second the feed aims to stay under (a few microseconds each).
DEFAULT_BUDGET_PER_S: Final = 2000.0
#: Over budget by this factor (over at least ``min_window_s``) before the curve restarts.
OVERSHOOT: Final = 2.0
#: Restarts and pauses remembered.
MAX_CHANGES: Final = 64
#: Share of one core the curve may take before it pauses.
DEFAULT_CPU_LIMIT: Final = 0.05
#: Sampled accesses before the curve is more than a rough sketch.
MIN_SAMPLED: Final = 200


@dataclass(frozen=True, slots=True)
class FeedChange:
    """Something the feed did to the curve, and why (for the screen)."""

    at: float  # feed clock
    kind: str  # "rate" (restarted at a lower rate), "pause" or "resume" (restarted)
    rate: float  # the sampling rate from then on
    why: str


@dataclass(frozen=True, slots=True)
class MrcReading:
    """Everything the screen shows of the curve, taken at once: plain data, so that it can
    cross a process boundary (it pickles)."""

    view: MrcView
    tiers: tuple[TierCapacity, ...]
    block_bytes: int
    max_keys: int
    change: FeedChange | None  # the latest
    paused: FeedChange | None  # the pause, while the curve is paused
    at: float  # feed clock when taken


class MrcSource(Protocol):
    """Where the screen gets the curve: a feed beside it, or one in another process."""

    def reading(self) -> MrcReading | None:
        """The latest reading (None: nothing received yet, e.g. the other process has not
        answered)."""
        ...

    def stats(self) -> dict[str, Any]:
        """What the feed did and what it cost (see :meth:`MrcFeed.stats`)."""
        ...


class MrcFeed:
    """Keeps the session's :class:`MrcTracker`, and its cost within a budget.

    Args:
        lock: Held while folding and while taking a reading: the session lock when the ingest
            shares its thread with others (default: a lock of its own).
        clock: Monotonic seconds (the session's).
        budget_per_s: Sampled accesses a second to stay under (None: never lower the rate).
        cpu_limit: Share of one core the curve may take (None: no limit).
        cpu_clock: CPU seconds of the calling thread (the ingest worker's).
        max_keys: Most sampled blocks tracked (fixed-size SHARDS; bounds memory).
        window_s: Span over which rate and cost are judged.
        min_window_s: Shortest span judged (a short burst does not lower the rate).
        chunk_events: Most block events folded per hold of the lock.
        min_rate: Lowest rate a restart picks.
    """

    def __init__(
        self,
        lock: threading.Lock | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        budget_per_s: float | None = DEFAULT_BUDGET_PER_S,
        cpu_limit: float | None = DEFAULT_CPU_LIMIT,
        cpu_clock: Callable[[], float] = time.thread_time,
        max_keys: int = DEFAULT_MAX_KEYS,
        window_s: float = 1.0,
        min_window_s: float = 0.25,
        chunk_events: int = 4096,
        min_rate: float = 1e-4,
    ) -> None:
        self.lock = lock if lock is not None else threading.Lock()
        self.clock = clock
        self.budget_per_s = budget_per_s
        self.cpu_limit = cpu_limit
        self.cpu_clock = cpu_clock
        self.max_keys = max_keys
        self.window_s = window_s
        self.min_window_s = min_window_s
        self.chunk_events = chunk_events
        self.min_rate = min_rate
        self.tracker = MrcTracker(MissRatioCurve(rate=1.0, max_keys=max_keys))
        #: Whether block events are only counted for now (see the module docstring).
        self.paused = False
        #: The latest restarts and pauses, oldest first (a bounded history: it is sent to the
        #: dashboard with every status).
        self.changes: deque[FeedChange] = deque(maxlen=MAX_CHANGES)
        self._cpu_per_event = 0.0  # measured when it paused
        #: Block events seen (folded or, paused, counted), folds that had some, and the CPU
        #: seconds spent, all told.
        self.block_events = 0
        self.event_folds = 0
        self.cpu_s = 0.0
        self._new_window(clock())

    def fold(self, messages: Sequence[Any]) -> None:
        """Fold decoded messages (the caller holds the lock), then keep to the budget."""
        started = self.cpu_clock()
        events = 0
        for m in messages:
            if isinstance(m, KvEventBatch):
                events += len(m.events)
        if self.paused and events:
            self.tracker.fold_many([m for m in messages if not isinstance(m, KvEventBatch)])
        else:
            self.tracker.fold_many(messages)
        spent = self.cpu_clock() - started
        self._window_events += events
        self._window_cpu += spent
        self.block_events += events
        self.event_folds += events > 0
        self.cpu_s += spent
        self._keep_budget()

    def fold_locked(self, messages: Sequence[Any]) -> None:
        """Fold ``messages`` in chunks, taking the lock for each and handing the GIL over
        between them (as the ingest does for the model)."""
        start, n, limit = 0, len(messages), self.chunk_events
        while start < n:
            end, weight = start, 0
            while end < n:  # at most ``limit`` events, or one batch when it alone is heavier
                m = messages[end]
                w = len(m.events) if isinstance(m, KvEventBatch) else 1
                if end > start and weight + w > limit:
                    break
                weight += w
                end += 1
            with self.lock:
                self.fold(messages[start:end])
            start = end
            if start < n:
                time.sleep(0)

    def reading(self, min_sampled: int = MIN_SAMPLED) -> MrcReading:
        """The curve's view and what the screen shows beside it, taken under the lock."""
        with self.lock:
            tracker = self.tracker
            change = self.changes[-1] if self.changes else None
            return MrcReading(
                view=build_view(tracker, min_sampled=min_sampled),
                tiers=tuple(tracker.tiers),
                block_bytes=tracker.block_bytes,
                max_keys=self.max_keys,
                change=change,
                paused=change if self.paused else None,
                at=self.clock(),
            )

    def stats(self) -> dict[str, Any]:
        """What the feed did and what it cost, as plain figures (``tiertop dash --stats-out``)."""
        curve = self.tracker.curve
        return {
            "paused": self.paused,
            "rate": curve.rate,
            "sampled": curve.sampled,
            "block_events": self.block_events,
            "event_folds": self.event_folds,
            "cpu_s": self.cpu_s,
            "ns_per_event": self.cpu_s / self.block_events * 1e9 if self.block_events else None,
            "changes": [{"at": c.at, "kind": c.kind, "rate": c.rate, "why": c.why}
                        for c in self.changes],
        }

    def _new_window(self, now: float) -> None:
        self._window_start, self._window_sampled = now, self.tracker.curve.sampled
        self._window_cpu, self._window_events = 0.0, 0

    def _keep_budget(self) -> None:
        """Judge the window so far: sampling too much restarts at a lower rate (from a quarter
        second on), costing too much CPU pauses (from half a window on: a heavy stream is
        caught early), and a paused feed resumes after a whole window of lighter traffic."""
        now = self.clock()
        elapsed = now - self._window_start
        if elapsed < self.min_window_s:
            return
        rate = self.tracker.curve.rate
        if not self.paused and self.budget_per_s is not None:
            per_s = (self.tracker.curve.sampled - self._window_sampled) / elapsed
            if per_s > self.budget_per_s * OVERSHOOT:
                self._restart(rate * self.budget_per_s / per_s, now, "rate",
                              f"the stream made it sample {per_s:,.0f} accesses/s (budget "
                              f"{self.budget_per_s:,.0f})")
                return
        limit = self.cpu_limit
        if limit is not None and elapsed >= self.window_s / 2:
            share, events_per_s = self._window_cpu / elapsed, self._window_events / elapsed
            if not self.paused and share > limit:
                self.paused = True
                self._cpu_per_event = share / max(events_per_s, 1.0)
                self.changes.append(FeedChange(
                    now, "pause", rate, f"following {events_per_s:,.0f} block events/s took "
                    f"{share:.0%} of a core (limit {limit:.0%})"))
                self._new_window(now)
                return
            if (self.paused and elapsed >= self.window_s
                    and events_per_s * self._cpu_per_event < limit / 2):
                self._restart(rate, now, "resume", f"block events calmed down to "
                              f"{events_per_s:,.0f}/s")
                return
        if elapsed >= self.window_s:
            self._new_window(now)

    def _restart(self, rate: float, now: float, kind: str, why: str) -> None:
        old = self.tracker
        new_rate = max(rate, self.min_rate)
        tracker = MrcTracker(MissRatioCurve(rate=new_rate, max_keys=self.max_keys),
                             tier_order=old.tier_order)
        if old.block_bytes:
            tracker.set_tiers(old.tiers, old.block_bytes)
        self.changes.append(FeedChange(now, kind, new_rate, why))
        self.tracker = tracker
        self.paused = False
        self._new_window(now)
