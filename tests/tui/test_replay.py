"""``tiertop dash --replay``: a real recording written here, replayed through the dashboard with
Pilot on a hand-moved play clock. Every replay key is checked against a :class:`Replayer` doing
the same thing on its own; runtime controls refuse and say why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input
from tiertop.monitor.commands import Snapshot
from tiertop.monitor.protocol import ControlChange, TierStats
from tiertop.monitor.recording import Recording, RecordingWriter
from tiertop.monitor.replay import Replayer
from tiertop.monitor.state import StateModel
from tiertop.tui.app import ACTIONS, CONTROL_ACTIONS
from tiertop.tui.replay_seek import SeekScreen
from tiertop.tui.replay_session import REPLAY_CONTROLS_OFF, ReplaySession
from tiertop.tui.replay_status import fmt_position
from tiertop.tui.screens.confirm import ConfirmScreen
from tiertop.tui.screens.forms import FormScreen

from tests.recording.streams import session as stream

from .fakes import fake_session
from .helpers import SIZE, RecordingApp, panel_text, until

pytestmark = pytest.mark.asyncio

SECONDS = 60.0  # 4 ticks a second, a watermark change every 15 s, a fault from 20 to 30 s


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "session.ttrec"
    writer = RecordingWriter(path, keyframe_ratio=0.5, keyframe_min_interval_s=3.0,
                             keyframe_min_bytes=4096)
    for r, topic, seq, payload in stream(SECONDS):
        writer.append(r, topic, seq, payload)
    writer.close()
    return path


class Clock:
    """The play clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def replay_app(path: Path, clock: Clock, paused: bool = True) -> tuple[RecordingApp, ReplaySession]:
    replayer = Replayer(path, model=StateModel(window_s=5.0), clock=clock)
    session = ReplaySession(replayer, path=str(path), paused=paused)
    return RecordingApp(session, refresh_s=1.0), session


def status(app: RecordingApp) -> str:
    return str(app.status_line.render())


def tick(session: ReplaySession) -> int:
    stats = session.model.stats
    return stats.tick if stats is not None else -1


def reference(path: Path) -> Replayer:
    """A replayer of its own, to compare the dashboard's with."""
    r = Replayer(path, model=StateModel(window_s=5.0))
    r.seek(0.0)
    return r


def state(model: StateModel) -> dict[str, Any]:
    snap = model.snapshot(series=True)
    snap.pop("connection")
    return dict(snap)


async def settle(app: RecordingApp, pilot: Any) -> None:
    """Let the ingest take everything due, and draw it."""
    session = app.session
    assert isinstance(session, ReplaySession) and session.ingest is not None
    while True:
        folded = session.source.folded
        session.ingest.step()
        if session.source.folded == folded:
            break
    app.render_now()
    await pilot.pause()


async def test_play_advances_the_view_and_pause_freezes_it(recording: Path) -> None:
    clock = Clock()
    app, session = replay_app(recording, clock)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert "❚❚ REPLAY" in status(app) and "0:00.0/1:00.0 ×1 paused" in status(app)
        assert tick(session) == -1  # only the Hello is at position 0
        clock.now = 5.0
        await settle(app, pilot)
        assert tick(session) == -1  # paused: the clock moving changes nothing

        await pilot.press("space")
        clock.now = 7.0
        app.render_now()  # the clock moved, nothing folded yet: the status says so
        assert "0:00.0/1:00.0 ×1 playing, catching up" in status(app)
        await settle(app, pilot)
        assert session.replayer.playing
        assert tick(session) == 8  # 2 s at 4 ticks a second
        assert "▶ REPLAY" in status(app) and "0:02.0/1:00.0 ×1 playing" in status(app)
        assert "age" not in status(app).split("\n")[0]  # a replayed message's age says nothing
        first = panel_text(app, "dram")
        clock.now = 9.0
        await settle(app, pilot)
        assert tick(session) == 16
        assert panel_text(app, "dram") != first

        await pilot.press("space")
        frozen = (session.replayer.index, panel_text(app, "dram"))
        clock.now = 20.0
        await settle(app, pilot)
        assert (session.replayer.index, panel_text(app, "dram")) == frozen
        assert "0:04.0/1:00.0 ×1 paused" in status(app)


async def test_step_moves_one_tick(recording: Path) -> None:
    clock = Clock()
    app, session = replay_app(recording, clock)
    ref = reference(recording)
    async with app.run_test(size=SIZE) as pilot:
        for expected in (1, 2, 3):
            await pilot.press("full_stop")
            stepped = ref.step_tick()
            assert isinstance(stepped[-1], TierStats) and stepped[-1].tick == expected
            assert tick(session) == expected
            assert session.replayer.index == ref.index
        assert not session.replayer.playing
        assert f"{fmt_position(ref.position_s)}/1:00.0 ×1 paused" in status(app)


async def test_speed_steps_and_limits(recording: Path) -> None:
    clock = Clock()
    app, session = replay_app(recording, clock)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("greater_than_sign")
        assert session.replayer.speed == 2.0 and "×2 paused" in status(app)
        await pilot.press("space")
        clock.now = 3.0
        await settle(app, pilot)
        assert tick(session) == 24  # 3 s at ×2
        for _ in range(3):
            await pilot.press("less_than_sign")
        assert session.replayer.speed == 0.25 and "×0.25 playing" in status(app)
        await pilot.press("less_than_sign")
        assert session.replayer.speed == 0.25
        assert any("speed stays ×0.25" in text for _, text in app.notes)
        for _ in range(9):
            await pilot.press("greater_than_sign")
        assert session.replayer.speed == 64.0 and "×64 playing" in status(app)


async def test_seek_by_and_to_a_typed_time(recording: Path) -> None:
    clock = Clock()
    app, session = replay_app(recording, clock)
    ref = reference(recording)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("right", "right")
        ref.seek(20.0)
        assert session.replayer.index == ref.index and tick(session) == 80
        assert "0:20.0/1:00.0" in status(app)
        await pilot.press("left")
        ref.seek(10.0)
        assert session.replayer.index == ref.index and tick(session) == 40

        await pilot.press("j")
        await until(pilot, lambda: isinstance(app.screen, SeekScreen))
        field = app.screen.query_one("#seek-time", Input)
        assert field.value == "0:10.0"
        for bad, why in (("2:00", "outside the recording"), ("soon", "not a time"),
                         ("1:75", "up to 59")):
            field.value = bad
            await pilot.press("enter")
            assert isinstance(app.screen, SeekScreen)
            assert why in app.screen.error
        field.value = "0:45.1"
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, SeekScreen))
        ref.seek(45.1)
        assert session.replayer.index == ref.index
        assert state(session.model) == state(ref.model)
        assert "0:45.1/1:00.0" in status(app)  # where it was asked to go, not the record before

        await pilot.press("j")
        await until(pilot, lambda: isinstance(app.screen, SeekScreen))
        app.screen.query_one("#seek-time", Input).value = "-40"
        await pilot.press("enter")
        await until(pilot, lambda: not isinstance(app.screen, SeekScreen))
        assert "0:05.1/1:00.0" in status(app) and tick(session) == 20


async def test_seek_to_the_next_and_previous_control_change(recording: Path) -> None:
    clock = Clock()
    app, session = replay_app(recording, clock)
    ref = reference(recording)
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(2):
            await pilot.press("n")
            entry = ref.seek_next_control()
            assert entry is not None and session.replayer.index == ref.index
        change = session.model.events(kinds="control")[-1].item
        assert isinstance(change, ControlChange) and change.request_id == "q120"
        assert any(text.startswith("0:30.0") and "set_watermarks" in text
                   for _, text in app.notes)
        await pilot.press("full_stop")  # the tick right after it reports the new watermark
        assert "hi 0.80" in panel_text(app, "dram")  # the second change: 0.9 -> 0.85 -> 0.8
        ref.step_tick()
        # Back: first to just past the change the position is after (like a player's
        # previous chapter), then to the one before it.
        for request_id, high in (("q120", "0.85"), ("q60", "0.90")):
            await pilot.press("N")
            assert ref.seek_prev_control() is not None and session.replayer.index == ref.index
            change = session.model.events(kinds="control")[-1].item
            assert isinstance(change, ControlChange) and change.request_id == request_id
            assert f"hi {high}" in panel_text(app, "dram")  # going back shows the earlier state
        await pilot.press("N")
        assert any("no control change before" in text for _, text in app.notes)
        assert session.replayer.index == ref.index


async def test_the_miss_ratio_curve_follows_the_replay(recording: Path) -> None:
    """Fed what the replayer folds; a jump (back, or through a keyframe) starts a new curve."""
    clock = Clock()
    app, session = replay_app(recording, clock)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("space")
        clock.now = 5.0
        await settle(app, pilot)
        feed = session.mrc
        seen = feed.tracker.events
        assert seen == 2 * 40  # two block events per request, 40 requests in 5 s
        assert feed.tracker.block_bytes == 4096  # it knows the tiers from the Hello
        await pilot.press("full_stop")
        assert session.mrc is feed and feed.tracker.events > seen  # stepping goes on
        await pilot.press("left")
        assert session.mrc is not feed and session.mrc.tracker.events == 0
        assert session.mrc.tracker.block_bytes == 4096
        await pilot.press("space")  # the step paused it
        clock.now = 7.0
        await settle(app, pilot)
        assert session.mrc.tracker.events > 0


async def test_runtime_controls_are_off_and_say_why(recording: Path) -> None:
    app, session = replay_app(recording, Clock())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press(*["full_stop"] * 3)
        assert REPLAY_CONTROLS_OFF in status(app)
        for action in CONTROL_ACTIONS:  # off, and out of the footer: room for the replay keys
            assert app.check_action(action, ()) is False, action
        assert app.check_action("resync", ()) is None
        for key in ("w", "c", "e", "o", "l", "P", "f", "F", "x", "X", "r"):
            await pilot.press(key)
            await pilot.pause()
            assert not isinstance(app.screen, FormScreen | ConfirmScreen), key
        rows = {row.binding_id: row for row in app.help_rows()}
        assert rows["set-watermarks"].note == REPLAY_CONTROLS_OFF
        assert rows["resync"].note == REPLAY_CONTROLS_OFF
        assert rows["replay-play-pause"].note == ""
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Controls are off" in titles and "Play/pause [space]" in titles
        # Even a command that reaches the controller goes nowhere (the recorded Hello may name
        # the recorded runtime's control address).
        assert session.controller.resolved_address() is None
        outcome = session.controller.send([Snapshot()])
        assert not outcome.ok and outcome.text == REPLAY_CONTROLS_OFF


async def test_replay_keys_are_off_in_a_live_dashboard() -> None:
    session, _, _, transport = fake_session()
    app = RecordingApp(session)
    async with app.run_test(size=SIZE) as pilot:
        replay_ids = [a.binding.id for a in ACTIONS if a.group == "Replay"]
        assert len(replay_ids) == 9
        rows = {row.binding_id: row for row in app.help_rows()}
        for bid in replay_ids:
            assert rows[bid].note.startswith("replay only"), bid
        for key in ("space", "full_stop", "n", "j"):
            await pilot.press(key)
            await pilot.pause()
        assert not isinstance(app.screen, SeekScreen)
        assert "REPLAY" not in status(app)
        assert transport.sent == []


async def test_a_truncated_recording_plays_its_readable_part_and_says_so(
    recording: Path, tmp_path: Path
) -> None:
    data = recording.read_bytes()
    with Recording.open(recording) as rec:
        last = rec.chunks[-1]
    cut = tmp_path / "cut.ttrec"
    cut.write_bytes(data[: last.body_offset + last.body_len // 2])
    app, session = replay_app(cut, Clock())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        assert any(severity == "warning" and "truncated" in text for severity, text in app.notes)
        assert "damaged file: readable part only" in status(app)
        await pilot.press("j")
        await until(pilot, lambda: isinstance(app.screen, SeekScreen))
        app.screen.query_one("#seek-time", Input).value = "1:00"
        await pilot.press("enter")
        assert isinstance(app.screen, SeekScreen)  # past the readable part
        assert "outside the recording" in app.screen.error
        await pilot.press("escape")
        duration = session.replayer.duration_s
        assert duration < SECONDS
        session.seek_to(duration)
        assert session.replayer.at_end

