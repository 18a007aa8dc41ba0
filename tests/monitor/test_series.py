"""Multi-resolution ring buffers: bucketing, windows, bounded memory, exact downsampling."""

from __future__ import annotations

import numpy as np
import pytest
from tiertop.monitor.series import DEFAULT_RESOLUTIONS, MultiResolutionRing, Resolution

SMALL = (Resolution(1.0, 10), Resolution(5.0, 6), Resolution(30.0, 4))


def test_a_value_at_t_belongs_to_the_bucket_ending_at_or_after_t() -> None:
    ring = MultiResolutionRing((2,), SMALL)
    ring.add(0.5, np.array([1.0, 0.0]))
    ring.add(1.0, np.array([2.0, 0.0]))  # (0, 1]: same bucket as 0.5
    ring.add(1.01, np.array([4.0, 1.0]))  # (1, 2]
    ring.add(3.0, np.array([8.0, 0.0]))  # (2, 3]; (1, 2] closes
    ends, rows = ring.level_rows(0)
    assert ends.tolist() == [1.0, 2.0]
    assert rows[:, 0].tolist() == [3.0, 4.0]
    partial = ring.partial(0)
    assert partial is not None and partial.tolist() == [8.0, 0.0]

    win = ring.window(None, level=0)
    assert win.ends.tolist() == [1.0, 2.0, 3.0]
    assert win.times.tolist() == [1.0, 2.0, 3.0]
    assert win.rows[:, 0].tolist() == [3.0, 4.0, 8.0]


def test_the_partial_row_is_labelled_with_the_latest_time() -> None:
    ring = MultiResolutionRing((1,), SMALL)
    ring.add(0.2, np.array([1.0]))
    ring.add(0.7, np.array([1.0]))
    win = ring.window(5.0)
    assert win.ends.tolist() == [1.0]
    assert win.times.tolist() == [0.7]
    assert win.rows.tolist() == [[2.0]]


def test_earlier_times_land_in_the_bucket_in_progress() -> None:
    ring = MultiResolutionRing((1,), SMALL)
    ring.add(5.5, np.array([1.0]))
    ring.add(3.0, np.array([10.0]))  # a skewed clock: never reopens the past
    assert ring.latest == 5.5
    assert ring.level_count(0) == 0
    partial = ring.partial(0)
    assert partial is not None and partial.tolist() == [11.0]


def test_window_selects_rows_ending_less_than_window_before_the_end() -> None:
    ring = MultiResolutionRing((1,), SMALL)
    for t in range(1, 9):
        ring.add(float(t), np.array([float(t)]))
    win = ring.window(3.0)  # latest 8: buckets ending 6, 7 and 8 (partial)
    assert win.ends.tolist() == [6.0, 7.0, 8.0]
    assert win.rows[:, 0].tolist() == [6.0, 7.0, 8.0]
    win = ring.window(3.0, end=6.0)  # another reference time: ends > 3
    assert win.ends.tolist() == [4.0, 5.0, 6.0, 7.0, 8.0]


def test_level_for_picks_the_finest_level_that_covers_the_window() -> None:
    ring = MultiResolutionRing((1,), DEFAULT_RESOLUTIONS)
    assert ring.level_for(60) == 0
    assert ring.level_for(900) == 0
    assert ring.level_for(901) == 1
    assert ring.level_for(3 * 3600) == 1
    assert ring.level_for(2 * 86400) == 2
    assert ring.level_for(30 * 86400) == 2  # nothing covers it: the coarsest
    ring.add(0.0, np.array([1.0]))
    ring.add(1000.0, np.array([1.0]))
    assert ring.level_for(None) == 1  # "all" = the data seen so far


def test_bad_resolutions_are_refused() -> None:
    with pytest.raises(ValueError):
        MultiResolutionRing((1,), ())
    with pytest.raises(ValueError):
        MultiResolutionRing((1,), (Resolution(10.0, 5), Resolution(1.0, 5)))
    with pytest.raises(ValueError):
        MultiResolutionRing((1,), (Resolution(1.0, 5), Resolution(2.5, 5)))
    with pytest.raises(ValueError):
        MultiResolutionRing((1,), (Resolution(1.0, 0),))


def test_days_of_data_stay_in_fixed_memory_and_downsample_exactly() -> None:
    ring = MultiResolutionRing((2, 3), SMALL)
    nbytes = ring.nbytes
    rng = np.random.default_rng(7)
    n = 6 * 3600 // 2  # six hours of a tick every 2 s: every level wraps many times
    values = rng.integers(0, 100, size=(n, 2, 3)).astype(np.float64)
    times = 2.0 * np.arange(1, n + 1)
    for t, v in zip(times, values, strict=True):
        ring.add(float(t), v)
    assert ring.nbytes == nbytes
    for level, res in enumerate(SMALL):
        ends, rows = ring.level_rows(level)
        assert len(ends) == res.capacity == ring.level_count(level)
        # Buckets with no value are not stored: 1 s buckets are 2 s apart, coarser contiguous.
        assert np.all(np.diff(ends) == max(res.step_s, 2.0))
        # Each stored row is exactly the sum of the values whose time falls in its bucket.
        for end, row in zip(ends, rows, strict=True):
            mask = (times > end - res.step_s) & (times <= end)
            np.testing.assert_array_equal(row, values[mask].sum(axis=0))


def test_coarse_rows_are_the_sums_of_the_fine_rows_they_cover() -> None:
    ring = MultiResolutionRing((1,), DEFAULT_RESOLUTIONS)
    rng = np.random.default_rng(3)
    t = 0.0
    while t < 2 * 3600:
        t += float(rng.uniform(0.05, 0.6))
        ring.add(t, np.array([float(rng.integers(0, 10))]))
    fine_ends, fine = ring.level_rows(0)
    coarse_ends, coarse = ring.level_rows(1)
    checked = 0
    for end, row in zip(coarse_ends, coarse, strict=True):
        if end - 10.0 < fine_ends[0] - 1.0:
            continue  # the fine level no longer holds all of it
        mask = (fine_ends > end - 10.0) & (fine_ends <= end)
        assert row[0] == fine[mask, 0].sum()
        checked += 1
    assert checked >= 80


def test_grow_keeps_the_data() -> None:
    ring = MultiResolutionRing((1, 2), SMALL)
    ring.add(0.5, np.array([[1.0, 2.0]]))
    ring.add(1.5, np.array([[3.0, 4.0]]))
    ring.grow((3, 2))
    assert ring.shape == (3, 2)
    ring.add(1.7, np.array([[0.0, 0.0], [5.0, 6.0], [0.0, 0.0]]))
    win = ring.window(None, level=0)
    assert win.rows.shape == (2, 3, 2)
    assert win.rows[0].tolist() == [[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]]
    assert win.rows[1].tolist() == [[3.0, 4.0], [5.0, 6.0], [0.0, 0.0]]
    with pytest.raises(ValueError):
        ring.grow((2, 2))


def test_digest_tells_equal_rings_from_different_ones() -> None:
    a = MultiResolutionRing((1,), SMALL)
    b = MultiResolutionRing((1,), SMALL)
    for ring in (a, b):
        for t in range(40):
            ring.add(t * 0.7, np.array([float(t % 5)]))
    assert a.digest() == b.digest()
    b.add(40 * 0.7, np.array([1.0]))
    assert a.digest() != b.digest()
