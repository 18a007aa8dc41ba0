"""Replay: equals live (a real publisher and subscriber on loopback), seeking through keyframes
equals playing from the start, and the play controls (pause, step, speed, control changes)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from tiertop.monitor.framing import FrameDecoder
from tiertop.monitor.protocol import ControlChange, Snapshot, TierStats
from tiertop.monitor.recorder import Recorder, RecordingSubscriber
from tiertop.monitor.recording import Recording, RecordingWriter
from tiertop.monitor.replay import MAX_SPEED, MIN_SPEED, Replayer
from tiertop.monitor.state import StateModel
from tiertop.runtime.publisher import TelemetryPublisher

from tests.recording.streams import hello, republish, session


def state(model: StateModel) -> dict[str, Any]:
    snap = model.snapshot()
    snap.pop("connection")
    return dict(snap)


def test_replay_equals_live_through_a_real_publisher_and_subscriber(tmp_path: Path) -> None:
    """A dashboard-like reader folds what its subscriber delivers and records the same frames
    (Recorder.write); replaying the file reaches the live state exactly."""
    vclock = [0.0]
    pub = TelemetryPublisher("tcp://127.0.0.1:0", "tcp://127.0.0.1:0",
                             clock=lambda: vclock[0], hello=hello(),
                             heartbeat_interval_s=0.05, close_linger_s=0.2)
    sub = RecordingSubscriber(pub.address, pub.replay_address)
    path = tmp_path / "live.ttrec"
    recorder = Recorder(path).start()
    live = StateModel()
    delivered: dict[str, int] = {}

    def pump(timeout_ms: float) -> None:
        messages = sub.poll(2000, timeout_ms)
        if messages:
            now = time.time()
            live.fold_many(messages, received_at=now)
            recorder.write(sub.take_frames(), received_at=now)
            for m in messages:
                delivered[type(m).__name__] = delivered.get(type(m).__name__, 0) + 1

    try:
        deadline = time.monotonic() + 10
        while live.hello is None and time.monotonic() < deadline:
            pump(50)
        assert live.hello is not None, "the subscriber never joined"
        decoder = FrameDecoder()
        frames = session(20.0)[1:]  # the publisher sends its own Hello
        for k, (_, topic, seq, payload) in enumerate(frames):
            message = decoder.decode(topic, seq, payload)
            assert message is not None
            republish(pub, vclock, message)
            if k % 40 == 0:
                pump(5)
        assert pub.flush(timeout_s=5.0)
        expected = {"TierStats": 80, "RequestDone": 160, "KvEventBatch": 160, "TierMoves": 20,
                    "ControlChange": 1, "FaultEvent": 1, "HealthChange": 1}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(
            delivered.get(k, 0) < n for k, n in expected.items()
        ):
            pump(20)
        pump(100)
        recorder.stop()
    finally:
        sub.close()
        pub.close()

    assert all(delivered.get(k) == n for k, n in expected.items()), delivered
    assert delivered.get("Snapshot") == 1  # joined through a snapshot, as dashboards do
    assert sub.uncaptured == 0
    counters = recorder.counters()
    assert counters.records == sum(delivered.values()) and counters.error == ""

    with Recording.open(path) as rec:
        assert rec.complete
        replayer = Replayer(rec)
        assert replayer.run_until(None) == sum(delivered.values())
        assert state(replayer.model) == state(live)
        assert replayer.model.messages == live.messages
        snapshot = next(r for r in rec.iter_records() if r.topic == b"tt.snapshot")
        assert snapshot.index < 3


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rec") / "seek.ttrec"
    writer = RecordingWriter(path, keyframe_ratio=0.5, keyframe_min_interval_s=3.0,
                             keyframe_min_bytes=4096)
    for r, topic, seq, payload in session(120.0):
        writer.append(r, topic, seq, payload)
    writer.close()
    assert writer.stats.keyframes >= 10
    return path


def test_seeking_through_keyframes_equals_playing_from_the_start(recording: Path) -> None:
    fast = Replayer(recording)
    slow = Replayer(recording, use_keyframes=False)
    model = fast.model
    for target in (100.0, 70.0, 110.0, 65.3, 30.0, 119.9, 0.0, 90.0, 61.0, 10.0, 119.0):
        fast.seek(target)
        slow.seek(target)
        assert fast.index == slow.index
        assert fast.position_s == pytest.approx(slow.position_s)
        assert fast.position_s <= target + 1e-9
        assert state(fast.model) == state(slow.model), target
        ref = Replayer(recording, use_keyframes=False)  # from the start, never seeking back
        ref.run_until(target)
        assert state(ref.model) == state(fast.model), target
    assert fast.keyframes_restored >= 3
    assert fast.model is model  # the dashboard may hold on to it
    assert fast.issues == []


def test_play_pause_step_and_speed_follow_the_clock(recording: Path) -> None:
    now = [0.0]
    r = Replayer(recording, clock=lambda: now[0])
    assert r.duration_s == pytest.approx(120.0) and not r.playing and r.position_s == 0.0
    r.speed = 4.0
    r.play()
    now[0] = 2.0
    n = r.update()
    assert n > 0 and 7.5 <= r.position_s <= 8.0
    nxt = next(rec for rec in r.recording.iter_records(r.index))
    assert nxt.t - r.start_time > 8.0  # nothing due was left behind
    r.pause()
    now[0] = 10.0
    assert r.update() == 0 and r.position_s <= 8.0
    r.play()
    now[0] = 11.0
    r.update()
    assert 11.5 <= r.position_s <= 12.0  # 4 s more at 4x, from where it paused

    index = r.index
    stepped = r.step(5)
    assert len(stepped) == 5 and r.index == index + 5 and not r.playing

    assert r.faster() == 8.0 and r.slower() == 4.0
    r.speed = MAX_SPEED
    assert r.faster() == MAX_SPEED
    r.speed = MIN_SPEED
    assert r.slower() == MIN_SPEED
    for bad in (0.1, 100.0):
        with pytest.raises(ValueError, match="speed"):
            r.speed = bad

    r.speed = 64.0
    r.play()
    now[0] += 1000.0
    r.update(max_messages=1_000_000)
    assert r.at_end and not r.playing and r.position_s == pytest.approx(120.0)


def test_seek_to_the_next_and_previous_control_change(recording: Path) -> None:
    r = Replayer(recording)
    controls = r.controls
    assert [round(r.position_of(e)) for e in controls] == [15, 30, 45, 60, 75, 90, 105, 120]
    r.seek(20.0)
    entry = r.seek_next_control()
    assert entry is controls[1]
    last = r.model.events(kinds="control")[-1]
    assert isinstance(last.item, ControlChange) and last.item.request_id == "q120"
    assert r.model.stats is not None and r.model.stats.tick == 119  # just past the change
    assert r.seek_prev_control() is controls[0]
    assert r.model.events(kinds="control")[-1].item.request_id == "q60"
    assert r.seek_prev_control() is None  # nothing before the first
    r.seek(119.99)
    assert r.seek_next_control() is controls[-1]
    assert r.seek_next_control() is None
    faults = r.recording.index
    assert any(e.kind == "fault" for e in faults)
    r.seek(0.0)
    assert r.seek_next_control(kinds=("fault",)) is not None
    assert r.model.tier("remote") is not None
    assert r.model.tier("remote").faults == ["slow"]  # type: ignore[union-attr]


def test_listeners_see_every_folded_message_in_order(recording: Path) -> None:
    seen: list[int] = []
    r = Replayer(recording, listeners=[lambda message, record: seen.append(record.index)])
    r.run_until(10.0)
    assert seen == list(range(len(seen))) and len(seen) == r.index
    stats = [m for m, _ in r.iter_messages(20.0) if isinstance(m, TierStats | Snapshot)]
    assert len(stats) == 40


def test_step_a_tick_and_play_from_where_a_seek_asked(recording: Path) -> None:
    now = [0.0]
    r = Replayer(recording, clock=lambda: now[0])
    stepped = r.step_tick()
    assert isinstance(stepped[-1], TierStats) and stepped[-1].tick == 1
    assert not any(isinstance(m, TierStats) for m in stepped[:-1])
    assert r.step_tick()[-1].tick == 2  # type: ignore[attr-defined]

    r.seek(45.1)
    assert 45.0 < r.position_s < 45.1  # the last record at or before it
    assert r.target_s == pytest.approx(45.1)  # where it was asked to go
    r.play()
    now[0] = 0.2
    assert r.behind  # due by the clock, not folded yet
    r.update()
    assert not r.behind and r.model.stats is not None and r.model.stats.tick == 181
    assert r.target_s == pytest.approx(45.3)  # played on from 45.1, not from 45.0
    r.step_tick()
    assert r.target_s == r.position_s  # a fold forgets the asked position
