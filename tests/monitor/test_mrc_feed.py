"""The dashboard's miss-ratio-curve feed: folded from what the ingest polls, under the session
lock in bounded chunks, restarted at a lower sampling rate when a stream samples too much, paused
while following it costs too much CPU; read by the screen in one picklable reading."""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
from collections.abc import Iterable
from typing import Any

import pytest
from tiertop.monitor.mrc_feed import MAX_CHANGES, FeedChange, MrcFeed, MrcReading, MrcSource
from tiertop.monitor.vllm_events import BlockStored, KvEventBatch

from tests.tui.fakes import Script


def stored(keys: Iterable[int], tier: str = "dram", seq: int = 0) -> KvEventBatch:
    """One batch: each block (re)stored in ``tier``: an access of the block."""
    events: list[Any] = [
        BlockStored(block_hashes=[k], parent_block_hash=None, token_ids=[], block_size=16,
                    lora_id=None, medium=tier, lora_name=None)
        for k in keys
    ]
    return KvEventBatch(topic="kv-events", seq=seq, ts=0.0, events=events,
                        tiers=[tier] * len(events))


def loop_batches(blocks: int, rounds: int, tier: str = "dram") -> list[KvEventBatch]:
    """``rounds`` passes over the same ``blocks`` blocks: an LRU cache of ``blocks`` or more hits
    every pass but the first, a smaller one nothing."""
    return [stored(range(1000, 1000 + blocks), tier, seq=r) for r in range(rounds)]


class FakeCpu:
    """A thread CPU clock that advances ``per_call`` each time it is read (so each fold, read
    before and after, costs ``per_call``)."""

    def __init__(self, per_call: float = 0.0) -> None:
        self.per_call = per_call
        self.t = 0.0

    def __call__(self) -> float:
        self.t += self.per_call
        return self.t


class CountingLock:
    """A lock that counts how often it was taken."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.holds = 0

    def __enter__(self) -> None:
        self.lock.acquire()
        self.holds += 1

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_folding_takes_the_lock_per_chunk_of_events() -> None:
    lock = CountingLock()
    feed = MrcFeed(lock, clock=lambda: 0.0, chunk_events=100)  # type: ignore[arg-type]
    feed.fold_locked([stored(range(i * 60, i * 60 + 60), seq=i) for i in range(5)])
    assert lock.holds == 5  # 60 + 60 > 100: one batch per hold
    feed.fold_locked([stored(range(1000, 1300))])
    assert lock.holds == 6  # a batch heavier than a chunk goes whole
    assert feed.tracker.curve.sampled == 600


def test_a_heavy_stream_restarts_the_curve_within_budget_keeping_the_tiers() -> None:
    now = [0.0]
    feed = MrcFeed(threading.Lock(), clock=lambda: now[0], budget_per_s=2000, cpu_clock=FakeCpu())
    script = Script()
    feed.fold([script.hello(), *script.tick()])
    tiers = feed.tracker.tiers
    assert [t.name for t in tiers] == ["dram", "remote", "disk"]

    for i in range(10):  # 1,000 new blocks every 50 ms: 20,000 sampled accesses a second
        now[0] += 0.05
        feed.fold([stored(range(i * 1000, i * 1000 + 1000), seq=i)])

    assert len(feed.changes) == 1  # after 250 ms (a shorter burst is no reason)
    change = feed.changes[0]
    assert change.kind == "rate" and change.at == pytest.approx(0.25)
    assert change.rate == pytest.approx(0.1)  # 2,000 of 20,000 a second
    assert change.why == "the stream made it sample 20,000 accesses/s (budget 2,000)"
    tracker = feed.tracker
    assert tracker.curve.rate == pytest.approx(0.1)
    assert 0 < tracker.curve.sampled < 1000  # ~10 % of the 5,000 accesses since
    assert tracker.tiers == tiers and tracker.block_bytes == 16384


def test_a_light_stream_keeps_sampling_every_block() -> None:
    now = [0.0]
    feed = MrcFeed(threading.Lock(), clock=lambda: now[0], cpu_clock=FakeCpu(0.0001))
    for i in range(40):  # 100 accesses every 100 ms for 4 s
        now[0] += 0.1
        feed.fold([stored(range(100), seq=i)])
    assert not feed.changes and feed.tracker.curve.rate == 1.0
    assert feed.tracker.curve.sampled == 4000


def test_without_a_budget_the_rate_stays() -> None:
    now = [0.0]
    feed = MrcFeed(threading.Lock(), clock=lambda: now[0], budget_per_s=None, cpu_limit=None,
                   cpu_clock=FakeCpu(0.5))
    for i in range(10):
        now[0] += 0.05
        feed.fold([stored(range(i * 1000, i * 1000 + 1000), seq=i)])
    assert not feed.changes and feed.tracker.curve.sampled == 10_000


def test_a_stream_too_costly_to_follow_pauses_the_curve_until_it_calms_down() -> None:
    now = [0.0]
    cpu = FakeCpu()
    feed = MrcFeed(threading.Lock(), clock=lambda: now[0], budget_per_s=None, cpu_clock=cpu)
    script = Script()
    feed.fold([script.hello(), *script.tick()])
    cpu.per_call = 0.02  # 20 ms of CPU a fold, ten folds a second: 20 % of a core
    for i in range(10):  # 1,000 block events every 100 ms
        now[0] = (i + 1) / 10
        feed.fold([stored(range(1000), seq=i)])
    assert feed.paused
    change = feed.changes[-1]
    assert change.kind == "pause" and change.at == pytest.approx(0.5)  # caught in half a window
    assert change.why == "following 10,000 block events/s took 20% of a core (limit 5%)"
    sampled = feed.tracker.curve.sampled
    cpu.per_call = 0.0
    for i in range(10):  # still heavy: counted, not folded
        now[0] = (i + 11) / 10
        feed.fold([stored(range(1000), seq=10 + i), *script.tick()])
    assert feed.paused and feed.tracker.curve.sampled == sampled
    for i in range(20):  # 1,000 events/s would cost 2 % (20 us each): under half the limit (2.5 %)
        now[0] = (i + 21) / 10
        feed.fold([stored(range(100), seq=20 + i)])
    assert not feed.paused
    resumed = feed.changes[-1]
    assert resumed.kind == "resume" and resumed.rate == 1.0
    assert resumed.at == pytest.approx(3.5)  # after a whole window of light traffic
    assert resumed.why == "block events calmed down to 1,000/s"
    assert feed.tracker.curve.sampled == 500  # a fresh curve: the five folds since
    assert [t.name for t in feed.tracker.tiers] == ["dram", "remote", "disk"]


def test_the_feed_says_what_it_did_and_what_it_cost() -> None:
    """``tiertop dash --stats-out`` reports it: whether the curve paused, and CPU per event."""
    now = [0.0]
    feed = MrcFeed(threading.Lock(), clock=lambda: now[0], budget_per_s=None,
                   cpu_clock=FakeCpu(0.02))
    assert feed.stats()["ns_per_event"] is None
    for i in range(10):  # 1,000 block events every 100 ms, 20 ms of CPU each
        now[0] = (i + 1) / 10
        feed.fold([stored(range(1000), seq=i)])
    stats = feed.stats()
    assert stats["paused"] and stats["block_events"] == 10_000
    assert stats["cpu_s"] == pytest.approx(0.2)
    assert stats["ns_per_event"] == pytest.approx(20_000)
    assert [c["kind"] for c in stats["changes"]] == ["pause"]
    assert stats["changes"][0]["why"] == feed.changes[0].why
    assert stats["rate"] == 1.0 and stats["sampled"] == 5000  # the five folds before the pause


def test_a_reading_is_what_the_screen_shows_and_it_pickles() -> None:
    """It crosses a process boundary: an ingest process sends it to the dashboard."""
    now = [7.0]
    feed = MrcFeed(clock=lambda: now[0], cpu_clock=FakeCpu())  # a lock of its own
    script = Script()
    feed.fold([script.hello(), *script.tick(), *loop_batches(80, 5)])
    feed.paused = True
    feed.changes.append(FeedChange(5.0, "pause", 1.0, "too heavy"))

    reading = feed.reading()
    assert not feed.lock.locked()
    assert reading.at == 7.0 and reading.max_keys == feed.max_keys
    assert reading.view.sampled == 400 and reading.view.max_hit_ratio == pytest.approx(0.8)
    assert [t.name for t in reading.tiers] == ["dram", "remote", "disk"]
    assert reading.block_bytes == 16384
    assert reading.change is reading.paused is feed.changes[-1]
    assert reading.view.marks and reading.view.what_ifs  # tiers and what-ifs travel too

    copy = pickle.loads(pickle.dumps(reading))
    assert isinstance(copy, MrcReading) and copy == reading and copy.view == reading.view

    feed.paused = False
    resumed = feed.reading()
    assert resumed.paused is None and resumed.change == reading.change


def test_the_warm_up_threshold_is_the_readers_choice() -> None:
    feed = MrcFeed(clock=lambda: 0.0, cpu_clock=FakeCpu())
    feed.fold(loop_batches(50, 1))
    assert feed.reading().view.status.startswith("warming up: 50 sampled")
    assert feed.reading(min_sampled=10).view.status.startswith("50 accesses")


def test_a_feed_is_an_mrc_source() -> None:
    source: MrcSource = MrcFeed(clock=lambda: 0.0)
    assert source.reading() is not None and source.stats()["sampled"] == 0


def test_the_feed_runs_without_the_dashboard() -> None:
    """An ingest process imports it: no Textual, nothing from ``tiertop.tui``."""
    code = ("import sys, tiertop.monitor.mrc_feed; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'textual' "
            "or m.startswith('tiertop.tui')); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_history_of_changes_is_bounded() -> None:
    """It goes to the dashboard with every status: it must not grow for ever."""
    feed = MrcFeed(threading.Lock(), clock=lambda: 0.0)
    for i in range(MAX_CHANGES + 10):
        feed.changes.append(FeedChange(float(i), "rate", 0.5, "test"))
    assert len(feed.stats()["changes"]) == MAX_CHANGES
    assert feed.changes[0].at == 10.0
