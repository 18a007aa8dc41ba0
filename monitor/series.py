"""Fixed-size, multi-resolution ring buffers of additive rows, for dashboards open for days.

A :class:`MultiResolutionRing` keeps the same data at several resolutions (by default 1 s points
for 15 minutes, 10 s points for 3 hours, 60 s points for 2 days). What it stores is not derived
values (rates, ratios, percentiles) but the *additive raw quantities* they come from: counter
deltas, the seconds they span, sums of gauge samples and their count, histogram counts. Adding
is therefore exact at every resolution: a 10 s point holds the sum of what its ten 1 s points
hold, and a rate, ratio or percentile derived from it is the true aggregate over those 10 s
(not an average of averages). The state model derives the values on query.

Each row is a numpy array of a fixed shape (``(tiers, columns)`` for tier data, ``(columns,)``
for service data). All storage is preallocated at construction (and when the first axis grows),
so memory does not grow with time: see :attr:`MultiResolutionRing.nbytes`.

Time is in seconds on the caller's timeline. A value added at time ``t`` belongs to the bucket
``(k * step, (k + 1) * step]`` (a tick at ``t`` reports what happened up to ``t``); a bucket is
labelled by its end. The bucket in progress is kept in an accumulator and is returned by queries
as the last, partial row. Buckets in which nothing was added are not stored: rows are irregular
in time when the stream was silent, and their times say so.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_RESOLUTIONS",
    "MultiResolutionRing",
    "Resolution",
    "RingWindow",
]

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Resolution:
    """One resolution level: points ``step_s`` apart, the last ``capacity`` of them kept."""

    step_s: float
    capacity: int

    @property
    def span_s(self) -> float:
        """Seconds of history this level holds when full."""
        return self.step_s * self.capacity


#: 1 s points for 15 minutes, 10 s points for 3 hours, 60 s points for 2 days.
DEFAULT_RESOLUTIONS: Final[tuple[Resolution, ...]] = (
    Resolution(1.0, 900),
    Resolution(10.0, 1080),
    Resolution(60.0, 2880),
)


@dataclass(frozen=True, slots=True)
class RingWindow:
    """Rows of one level that fall in a query window, oldest first.

    Attributes:
        step_s: The level's resolution in seconds.
        ends: End of each row's bucket (``(k + 1) * step``).
        times: Time label of each row: the bucket end, or for the partial last row the time of
            the latest value added (never later than that).
        rows: The raw rows, shape ``(n, *row_shape)``.
    """

    step_s: float
    ends: FloatArray
    times: FloatArray
    rows: FloatArray

    def __len__(self) -> int:
        return int(self.ends.shape[0])


class _Level:
    __slots__ = ("acc", "capacity", "count", "cur", "head", "rows", "step", "times")

    def __init__(self, resolution: Resolution, shape: tuple[int, ...]) -> None:
        if resolution.step_s <= 0 or resolution.capacity < 1:
            raise ValueError(f"bad resolution {resolution}")
        self.step = float(resolution.step_s)
        self.capacity = int(resolution.capacity)
        self.times: FloatArray = np.zeros(self.capacity, dtype=np.float64)
        self.rows: FloatArray = np.zeros((self.capacity, *shape), dtype=np.float64)
        self.acc: FloatArray = np.zeros(shape, dtype=np.float64)
        self.head = 0  # next slot to write
        self.count = 0  # rows stored (<= capacity)
        self.cur: int | None = None  # index of the bucket in the accumulator

    def bucket(self, t: float) -> int:
        # (k*step, (k+1)*step] -> k
        return math.ceil(t / self.step) - 1

    def close(self) -> None:
        assert self.cur is not None
        head = self.head
        self.rows[head] = self.acc
        self.times[head] = (self.cur + 1) * self.step
        self.head = (head + 1) % self.capacity
        if self.count < self.capacity:
            self.count += 1
        self.acc[...] = 0.0
        self.cur = None

    def ordered(self) -> tuple[FloatArray, FloatArray]:
        """Stored (ends, rows), oldest first (views when not wrapped)."""
        if self.count < self.capacity:
            return self.times[: self.count], self.rows[: self.count]
        h = self.head
        if h == 0:
            return self.times, self.rows
        return (
            np.concatenate((self.times[h:], self.times[:h])),
            np.concatenate((self.rows[h:], self.rows[:h])),
        )

    def tail_from(self, min_end: float) -> tuple[FloatArray, FloatArray]:
        """Stored rows whose end is greater than ``min_end``, oldest first."""
        n, head = self.count, self.head
        if n < self.capacity or head == 0:
            ends = self.times[:n]
            i = int(np.searchsorted(ends, min_end, side="right"))
            return ends[i:], self.rows[i:n]
        newer = self.times[:head]  # the newest rows, after the wrap
        if newer[0] > min_end:
            older = self.times[head:]
            i = int(np.searchsorted(older, min_end, side="right"))
            return (
                np.concatenate((older[i:], newer)),
                np.concatenate((self.rows[head + i :], self.rows[:head])),
            )
        i = int(np.searchsorted(newer, min_end, side="right"))
        return newer[i:], self.rows[i:head]


class MultiResolutionRing:
    """The same additive rows kept at several resolutions, in fixed memory.

    Args:
        shape: Shape of one row (e.g. ``(n_tiers, n_columns)``).
        resolutions: Levels, finest first; each step a whole multiple of the one before (so a
            coarse bucket is exactly a run of fine ones).
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        resolutions: tuple[Resolution, ...] = DEFAULT_RESOLUTIONS,
    ) -> None:
        if not resolutions:
            raise ValueError("at least one resolution is needed")
        steps = [r.step_s for r in resolutions]
        for finer, coarser in itertools.pairwise(steps):
            ratio = coarser / finer
            if ratio < 2 - 1e-9 or abs(ratio - round(ratio)) > 1e-9:
                raise ValueError(
                    "resolutions must be finest first, each step a whole multiple (>= 2) of "
                    f"the one before: {steps}"
                )
        self.shape = tuple(shape)
        self.resolutions = tuple(resolutions)
        self._levels = [_Level(r, self.shape) for r in resolutions]
        self._fine = self._levels[0]
        #: Time of the latest value added (None: nothing yet).
        self.latest: float | None = None
        #: Time of the first value added (None: nothing yet).
        self.first: float | None = None

    # ------------------------------------------------------------------------------- writing

    def advance(self, t: float) -> None:
        """Move to the bucket of time ``t``, closing buckets that ended.

        Time never goes back: a value for an earlier time is added to the current bucket
        (small clock skews between topics land in the bucket in progress).
        """
        latest = self.latest
        if latest is None:
            self.first = self.latest = t
        elif t > latest:
            self.latest = t
        else:
            t = latest
        fine = self._fine
        k = fine.bucket(t)
        if k == fine.cur:
            return
        for level in self._levels:
            k = level.bucket(t)
            cur = level.cur
            if cur is None:
                level.cur = k
            elif k > cur:
                level.close()
                level.cur = k

    def add(self, t: float, raw: FloatArray) -> None:
        """Add a whole row (same shape as a row) at time ``t``."""
        self.advance(t)
        for level in self._levels:
            level.acc += raw

    def add_at(self, t: float, index: tuple[int, ...] | int, value: float) -> None:
        """Add ``value`` to one element of the row at time ``t``."""
        self.advance(t)
        for level in self._levels:
            level.acc[index] += value

    def add_many(
        self, t: float, index: tuple[npt.NDArray[np.intp], ...], values: FloatArray
    ) -> None:
        """Add ``values`` to the elements ``index`` (a numpy fancy index, no repeats) at ``t``."""
        self.advance(t)
        for level in self._levels:
            level.acc[index] += values

    def grow(self, shape: tuple[int, ...]) -> None:
        """Enlarge the row shape (each axis at least as large); existing data is kept."""
        shape = tuple(shape)
        if len(shape) != len(self.shape) or any(
            a < b for a, b in zip(shape, self.shape, strict=True)
        ):
            raise ValueError(f"cannot shrink {self.shape} to {shape}")
        if shape == self.shape:
            return
        sl = tuple(slice(0, n) for n in self.shape)
        for level in self._levels:
            rows = np.zeros((level.capacity, *shape), dtype=np.float64)
            rows[(slice(None), *sl)] = level.rows
            level.rows = rows
            acc = np.zeros(shape, dtype=np.float64)
            acc[sl] = level.acc
            level.acc = acc
        self.shape = shape

    # ------------------------------------------------------------------------------- reading

    def level_for(self, window_s: float | None) -> int:
        """Index of the finest level whose history covers ``window_s`` seconds (None: all
        the data seen so far); the coarsest when none does."""
        if window_s is None:
            if self.first is None or self.latest is None:
                return 0
            window_s = self.latest - self.first
        for i, r in enumerate(self.resolutions):
            if r.span_s >= window_s:
                return i
        return len(self.resolutions) - 1

    def window(
        self, window_s: float | None, level: int | None = None, end: float | None = None
    ) -> RingWindow:
        """Rows of the chosen level (default: :meth:`level_for`) whose bucket ends less than
        ``window_s`` before ``end`` (default :attr:`latest`), including the partial bucket in
        progress; every stored row when ``window_s`` is None."""
        index = self.level_for(window_s) if level is None else level
        lv = self._levels[index]
        latest = self.latest
        if latest is None:
            empty = np.zeros(0, dtype=np.float64)
            return RingWindow(lv.step, empty, empty, np.zeros((0, *self.shape)))
        if window_s is None:
            ends, rows = lv.ordered()
        else:
            ref = latest if end is None else end
            ends, rows = lv.tail_from(ref - window_s + 1e-9)
        if lv.cur is not None:
            ends = np.append(ends, (lv.cur + 1) * lv.step)
            rows = np.concatenate((rows, lv.acc[np.newaxis]))
        times = np.minimum(ends, latest)
        return RingWindow(lv.step, ends, times, rows)

    def level_rows(self, level: int) -> tuple[FloatArray, FloatArray]:
        """Every stored (closed) row of a level, oldest first: (bucket ends, rows)."""
        ends, rows = self._levels[level].ordered()
        return ends.copy(), rows.copy()

    def level_count(self, level: int) -> int:
        """Closed rows stored in a level (at most its capacity)."""
        return self._levels[level].count

    def partial(self, level: int) -> FloatArray | None:
        """The accumulator of a level's bucket in progress (None when there is none)."""
        lv = self._levels[level]
        return None if lv.cur is None else lv.acc.copy()

    @property
    def nbytes(self) -> int:
        """Bytes of numpy storage held (fixed for a given row shape)."""
        return sum(lv.rows.nbytes + lv.times.nbytes + lv.acc.nbytes for lv in self._levels)

    def digest(self) -> list[tuple[float, int, float | None, str]]:
        """Per level: (step, closed rows stored, last bucket end, a hash of the stored rows
        in order and of the bucket in progress): for comparing rings for equality cheaply."""
        out: list[tuple[float, int, float | None, str]] = []
        for lv in self._levels:
            h = hashlib.sha1(usedforsecurity=False)
            ends, rows = lv.ordered()
            h.update(np.ascontiguousarray(ends).data)
            h.update(np.ascontiguousarray(rows).data)
            if lv.cur is not None:
                h.update(np.array([lv.cur], dtype=np.int64).data)
                h.update(lv.acc.data)
            last = float(ends[-1]) if len(ends) else None
            out.append((lv.step, lv.count, last, h.hexdigest()))
        return out
