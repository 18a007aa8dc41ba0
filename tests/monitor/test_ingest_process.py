"""The ingest process over real sockets: what it hands over folds into the same state as the
stream itself; a dead child is replaced; a recording is finished; a lost parent ends it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from tiertop.monitor import ingest_process
from tiertop.monitor.ingest_process import IngestProcess, IngestProcessDied, IngestSpec
from tiertop.monitor.protocol import Hello, TierInfo, TierSample, TierStats
from tiertop.monitor.recording import Recording
from tiertop.monitor.replay import Replayer
from tiertop.monitor.residency import BlockDigest
from tiertop.monitor.state import StateModel
from tiertop.monitor.subscriber import TelemetrySubscriber
from tiertop.monitor.vllm_events import AllBlocksCleared, BlockRemoved, BlockStored, KvEvent
from tiertop.runtime.publisher import TelemetryPublisher

TIERS = ("dram", "remote", "disk")
HELLO = Hello(mode="sim", tiers=[TierInfo(name=t, kind=t, capacity_bytes=1 << 20) for t in TIERS])


def publisher(closers: list[Callable[[], None]], clock: list[float]) -> TelemetryPublisher:
    pub = TelemetryPublisher("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", hello=HELLO,
                             clock=lambda: clock[0], heartbeat_interval_s=0.05,
                             close_linger_s=0.2)
    closers.append(pub.close)
    return pub


def ingest(closers: list[Callable[[], None]], pub: TelemetryPublisher,
           **spec: Any) -> IngestProcess:
    source = IngestProcess(IngestSpec(pub.address, pub.replay_address, **spec))
    closers.append(source.close)
    return source


def drain_into(model: StateModel, source: IngestProcess | TelemetrySubscriber,
               done: Callable[[], bool], timeout_s: float = 20.0) -> list[Any]:
    got: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"timed out; folded {model.messages}"
        messages = source.poll(1000, timeout_ms=50)
        model.fold_many(messages)
        got += messages
    return got


def random_batches(rng: random.Random, n: int) -> Iterator[list[KvEvent]]:
    """Stores, removes (some of blocks never stored) and now and then a clear."""
    resident: dict[str, list[int]] = {t: [] for t in TIERS}
    for _ in range(n):
        events: list[KvEvent] = []
        for _ in range(rng.randint(1, 40)):
            tier = rng.choice(TIERS)
            if rng.random() < 0.6:
                keys = [rng.randrange(3000) for _ in range(rng.randint(1, 4))]
                resident[tier] += keys
                events.append(BlockStored(keys, None, [], 16, None, tier, None))
            elif resident[tier]:
                keys = rng.sample(resident[tier], min(3, len(resident[tier])))
                events.append(BlockRemoved([*keys, rng.randrange(10_000, 20_000)], tier))
        if rng.random() < 0.01:
            events.append(AllBlocksCleared())
        yield events


def stats(tick: int, clock: float) -> TierStats:
    return TierStats(tick=tick, clock=clock, interval_s=0.1, tiers=[
        TierSample(name=t, used_bytes=1000 * tick, used_blocks=tick, capacity_bytes=1 << 20,
                   hits=tick, misses=1) for t in TIERS])


def test_digests_fold_into_the_state_the_stream_itself_gives(
    closers: list[Callable[[], None]],
) -> None:
    """The dashboard's model, fed digests from the child, agrees with a model fed the raw
    batches by a subscriber of its own: resident blocks per tier, block-event counts, windowed
    stores and removals."""
    clock = [100.0]
    pub = publisher(closers, clock)
    source = ingest(closers, pub)
    subscriber = TelemetrySubscriber(pub.address, pub.replay_address)
    closers.append(subscriber.close)
    direct = StateModel()
    model = StateModel()
    drain_into(model, source, lambda: model.hello is not None)
    drain_into(direct, subscriber, lambda: direct.hello is not None)
    rng = random.Random(5)
    sent: list[tuple[list[KvEvent], float]] = []
    tick = 0
    for i, events in enumerate(random_batches(rng, 600)):
        clock[0] = 100.0 + i * 0.01  # 6 s of source time: digests cross second boundaries
        pub.kv_events(events)
        sent.append((events, clock[0]))
        if i % 25 == 0:
            tick += 1
            pub.publish(stats(tick, clock[0]))
    assert pub.flush(timeout_s=5.0)
    got = drain_into(model, source, lambda: model.messages.get("TierStats", 0) == tick)
    assert any(isinstance(m, BlockDigest) and m.batches > 1 for m in got)  # runs were digested
    assert not any(type(m).__name__ == "KvEventBatch" for m in got)

    drain_into(direct, subscriber, lambda: direct.messages.get("TierStats", 0) == tick)
    assert model.messages["KvEventBatch"] == len(sent) == direct.messages["KvEventBatch"]
    assert source.counters().events == sum(len(e) for e, _ in sent)
    for name in TIERS:
        assert model.tier(name).resident_blocks == direct.tier(name).resident_blocks, name
        mine, theirs = model.tier_window(name, 1e6), direct.tier_window(name, 1e6)
        for figure in ("blocks_stored_per_s", "blocks_removed_per_s"):
            assert theirs[figure] and mine[figure] == pytest.approx(theirs[figure]), figure


def test_a_dead_child_is_replaced_and_counts_carry_on(closers: list[Callable[[], None]]) -> None:
    clock = [10.0]
    pub = publisher(closers, clock)
    source = ingest(closers, pub)
    model = StateModel()
    drain_into(model, source, lambda: "Heartbeat" in model.messages)  # it has joined
    for tick in range(1, 6):
        clock[0] += 1
        pub.publish(stats(tick, clock[0]))
    drain_into(model, source, lambda: model.messages.get("TierStats", 0) == 5)
    before = source.counters().delivered
    child = source._proc
    assert child is not None and child.pid is not None
    os.kill(child.pid, signal.SIGKILL)
    with pytest.raises(IngestProcessDied, match=r"exited \(code -9\); started a new one"):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            source.poll(100, timeout_ms=50)
    assert source.restarts == 1
    for tick in range(6, 40):  # the new child joins late: a snapshot, then the live stream
        clock[0] += 1
        pub.publish(stats(tick, clock[0]))
        model.fold_many(source.poll(100, timeout_ms=50))
    drain_into(model, source, lambda: model.stats is not None and model.stats.tick == 39)
    assert source.counters().delivered > before  # counted on from the first child's figures
    assert model.tier("dram").sample is not None and model.tier("dram").sample.hits == 39


def test_an_unreachable_endpoint_is_said_once_and_not_retried(
    closers: list[Callable[[], None]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    source = IngestProcess(IngestSpec("not-an-endpoint"))
    closers.append(source.close)
    with pytest.raises(IngestProcessDied, match="cannot receive telemetry"):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            source.poll(10, timeout_ms=50)
    assert source.fatal and source.restarts == 0
    slept: list[float] = []
    monkeypatch.setattr(ingest_process.time, "sleep", slept.append)
    assert source.poll(10, timeout_ms=100) == []  # nothing more, no new child...
    assert slept == [0.1]  # ...and the ingest thread waits as asked instead of spinning


def test_the_child_records_what_it_hands_over(
    closers: list[Callable[[], None]], tmp_path: Path,
) -> None:
    clock = [50.0]
    pub = publisher(closers, clock)
    path = tmp_path / "x.ttrec"
    source = ingest(closers, pub, record_path=str(path), record_meta={"recorded_by": "test"})
    model = StateModel()
    drain_into(model, source, lambda: "Heartbeat" in model.messages)
    for tick in range(1, 21):
        clock[0] += 0.5
        pub.kv_events([BlockStored([tick], None, [], 16, None, "dram", None)])
        pub.publish(stats(tick, clock[0]))
    drain_into(model, source, lambda: model.messages.get("TierStats", 0) == 20)
    source.close()
    counters = source.recorder_counters()
    assert counters is not None and counters.error == "" and counters.file_bytes > 0
    with Recording.open(path) as rec:
        assert rec.complete, rec.issues
        assert rec.header["meta"] == {"recorded_by": "test"}
        replayer = Replayer(rec)
        replayer.run_until(None)
    assert replayer.model.messages["TierStats"] == 20
    assert replayer.model.messages["KvEventBatch"] == 20


def test_the_curve_is_sent_while_someone_reads_it(closers: list[Callable[[], None]]) -> None:
    clock = [1.0]
    pub = publisher(closers, clock)
    source = ingest(closers, pub)
    assert source.mrc.reading() is None  # nothing yet; asking marks it wanted
    model = StateModel()
    drain_into(model, source, lambda: "Heartbeat" in model.messages)
    rng = random.Random(1)
    for i in range(300):
        clock[0] = 1.0 + i * 0.01
        pub.kv_events([BlockStored([rng.randrange(50)], None, [], 16, None, "dram", None)])
    assert pub.flush(timeout_s=5.0)
    deadline = time.monotonic() + 20
    while (reading := source.mrc.reading()) is None or reading.view.sampled < 300:
        assert time.monotonic() < deadline
        source.poll(1000, timeout_ms=50)
    assert reading.view.sampled == 300
    assert source.mrc.stats()["block_events"] == 300


def test_the_child_finishes_the_recording_when_its_parent_is_killed(
    closers: list[Callable[[], None]], tmp_path: Path,
) -> None:
    clock = [5.0]
    pub = publisher(closers, clock)
    path = tmp_path / "orphan.ttrec"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from tiertop.monitor.ingest_process import IngestProcess, IngestSpec
        source = IngestProcess(IngestSpec({pub.address!r}, {pub.replay_address!r},
                                          record_path={str(path)!r}))
        while not source.poll(1000, timeout_ms=100):
            pass  # joined once the first heartbeat is through
        print("up", flush=True)
        while True:
            source.poll(1000, timeout_ms=100)
    """)], stdout=subprocess.PIPE, text=True)
    closers.append(lambda: parent.kill())
    assert parent.stdout is not None and parent.stdout.readline() == "up\n"
    for tick in range(1, 11):
        clock[0] += 1
        pub.publish(stats(tick, clock[0]))
    assert pub.flush(timeout_s=5.0)
    deadline = time.monotonic() + 20
    while not (children := psutil.Process(parent.pid).children()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(1.0)  # let it take the stream in
    parent.kill()
    parent.wait(10)
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, "the ingest process outlived its dashboard"
    with Recording.open(path) as rec:
        assert rec.complete, rec.issues
        replayer = Replayer(rec)
        replayer.run_until(None)
    assert replayer.model.messages["TierStats"] == 10


def test_the_child_reads_a_curve_runtime_with_the_dashboards_keys(tmp_path: Path) -> None:
    from tests.monitor.test_curve_telemetry import keys

    server, alice, mallory = keys(tmp_path)
    with TelemetryPublisher("tcp://127.0.0.1:0", "tcp://127.0.0.1:0", hello=HELLO,
                            curve=server, heartbeat_interval_s=0.05) as pub:
        good = IngestProcess(IngestSpec(pub.address, pub.replay_address, curve=alice))
        bad = IngestProcess(IngestSpec(pub.address, pub.replay_address, curve=mallory))
        try:
            model = StateModel()
            drain_into(model, good, lambda: model.hello is not None)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                assert bad.poll(100, timeout_ms=50) == []
            assert bad.counters().received == 0
        finally:
            good.close()
            bad.close()


def test_a_replaced_child_records_to_a_new_part_and_keeps_the_first(
    closers: list[Callable[[], None]], tmp_path: Path,
) -> None:
    clock = [50.0]
    pub = publisher(closers, clock)
    path = tmp_path / "x.ttrec"
    source = ingest(closers, pub, record_path=str(path))
    model = StateModel()
    drain_into(model, source, lambda: "Heartbeat" in model.messages)
    for tick in range(1, 11):
        clock[0] += 0.5
        pub.publish(stats(tick, clock[0]))
    drain_into(model, source, lambda: model.messages.get("TierStats", 0) == 10)
    counters = source.recorder_counters()
    assert counters is not None
    written = counters.writer.chunks
    # SIGKILL loses the chunk being filled (the recorder's documented crash behaviour): kill
    # once the ticks are in a complete chunk, to show the part is kept, not overwritten.
    drain_into(model, source, lambda: (c := source.recorder_counters()) is not None
               and c.writer.chunks > written)
    child = source._proc
    assert child is not None
    os.kill(child.pid, signal.SIGKILL)
    with pytest.raises(IngestProcessDied):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            source.poll(100, timeout_ms=50)
    drain_into(model, source, lambda: source.in_sync and "Heartbeat" in model.messages
               and source.counters().received > 10)
    for tick in range(11, 16):
        clock[0] += 0.5
        pub.publish(stats(tick, clock[0]))
    drain_into(model, source, lambda: model.messages.get("TierStats", 0) >= 15)
    source.close()
    second = tmp_path / "x.part2.ttrec"
    assert [p for p, _ in source.record_parts] == [str(path), str(second)]
    assert source.record_path == str(second)
    with Recording.open(path) as rec:  # the dead child's part: readable, nothing lost
        replayer = Replayer(rec)
        replayer.run_until(None)
    assert replayer.model.messages["TierStats"] == 10
    with Recording.open(second) as rec:
        assert rec.complete, rec.issues
        replayer = Replayer(rec)
        replayer.run_until(None)
    assert replayer.model.messages["TierStats"] == 5


def test_a_child_that_fails_on_a_bug_says_what_it_was(closers: list[Callable[[], None]]) -> None:
    clock = [1.0]
    pub = publisher(closers, clock)
    # A spec the child trips over once messages come (a stand-in for a bug in its loop).
    source = ingest(closers, pub, flush_s="soon")
    with pytest.raises(IngestProcessDied, match=r"exited \(TypeError: .*str.*\); started"):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            source.poll(100, timeout_ms=50)
    assert source.crash.startswith("Traceback") and "in run" in source.crash
