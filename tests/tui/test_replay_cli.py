"""``tiertop dash --replay`` / ``--record`` and ``tiertop demo --record`` on the command line:
bad files and bad combinations stop before the dashboard with status 2, and a live dashboard
recording a real publisher on loopback writes a file ``tiertop replay --headless`` reads back
to the state the dashboard showed."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from tiertop.main import build_parser, main
from tiertop.monitor.framing import FrameDecoder
from tiertop.monitor.recording import Recording, RecordingWriter
from tiertop.monitor.replay import Replayer
from tiertop.monitor.state import StateModel
from tiertop.runtime.publisher import TelemetryPublisher
from tiertop.tui import dash_cli
from tiertop.tui.app import DashboardApp
from tiertop.tui.replay_record import start_session_recording
from tiertop.tui.replay_status import fmt_position, parse_position

from tests.recording.streams import hello, republish
from tests.recording.streams import session as stream

from .helpers import SIZE, until


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    path = tmp_path / "ok.ttrec"
    with RecordingWriter(path) as writer:
        for r, topic, seq, payload in stream(5.0):
            writer.append(r, topic, seq, payload)
    return path


def test_bad_files_and_combinations_stop_before_the_dashboard(
    recording: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a recording\n")
    cases: list[tuple[list[str], str]] = [
        (["dash", "--replay", str(text)], "not a tiertop recording"),
        (["dash", "--replay", str(tmp_path / "missing.ttrec")], "cannot open"),
        (["dash", "--replay", str(recording), "--record", str(tmp_path / "x.ttrec")],
         "--record and --replay do not go together"),
        (["dash", "--replay", str(recording), "--speed", "100"], "speed must be between"),
        (["dash", "--speed", "4"], "--speed and --paused go with --replay FILE"),
        (["dash", "--paused"], "--speed and --paused go with --replay FILE"),
        (["dash", "--record", str(tmp_path / "no" / "such" / "dir.ttrec")], "--record:"),
        (["dash", "--record", str(text)], "exists and is not a tiertop recording"),
        (["demo", "--record", str(text)], "exists and is not a tiertop recording"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err, (argv, err)
    assert text.read_text() == "not a recording\n"  # never overwritten
    assert not (tmp_path / "x.ttrec").exists()


@pytest.mark.asyncio
async def test_dash_record_writes_what_the_dashboard_folds(tmp_path: Path) -> None:
    """A real publisher, the dashboard's own connection and ingest threads, quit with q."""
    vclock = [0.0]
    pub = TelemetryPublisher("tcp://127.0.0.1:0", "tcp://127.0.0.1:0",
                             clock=lambda: vclock[0], hello=hello(),
                             heartbeat_interval_s=0.05, close_linger_s=0.2)
    path = tmp_path / "dash.ttrec"
    args = build_parser().parse_args(
        ["dash", "--connect", pub.address, "--replay-addr", pub.replay_address,
         "--control", "tcp://127.0.0.1:1", "--record", str(path)])
    session = dash_cli.live_session(args, None)
    errors: list[str] = []
    assert start_session_recording(session, args.record, "tiertop dash", errors.append)
    app = DashboardApp(session)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: session.model.hello is not None, timeout=10)
            decoder = FrameDecoder()
            for _, topic, seq, payload in stream(10.0)[1:]:  # the publisher has its Hello
                message = decoder.decode(topic, seq, payload)
                assert message is not None
                republish(pub, vclock, message)
            assert pub.flush(timeout_s=5.0)
            await until(pilot, lambda: session.model.messages.get("TierStats", 0) == 40,
                        timeout=10)
            await until(pilot, lambda: "● REC dash.ttrec" in str(app.status_line.render()))
            await pilot.press("q")
    finally:
        session.close()
        pub.close()
    assert errors == [] and session.closed
    shown = session.model

    with Recording.open(path) as rec:
        assert rec.complete, rec.issues  # finished cleanly on quit
        assert rec.header["meta"] == {"recorded_by": "tiertop dash"}
        replayer = Replayer(rec)
        replayer.run_until(None)
        # What the dashboard folded, plus the heartbeats that came in the last moments before
        # quitting (recorded as they arrived; the dashboard had stopped folding).
        recorded = dict(replayer.model.messages)
        assert 0 <= recorded.pop("Heartbeat") - shown.messages["Heartbeat"] <= 3
        assert recorded == {k: v for k, v in shown.messages.items() if k != "Heartbeat"}
        assert replayer.model.snapshot()["tiers"] == shown.snapshot()["tiers"]
    summary = headless_summary(path)
    requests = shown.messages["RequestDone"]
    assert summary["phases"][0]["service"]["requests"] == requests == 80
    assert summary["phases"][0]["tiers"]["dram"]["hits"] == 9 * 39  # 40 ticks, 39 deltas


def headless_summary(path: Path) -> dict[str, Any]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["replay", str(path), "--headless", "--json"]) == 0
    summary: dict[str, Any] = json.loads(out.getvalue())
    return summary


def test_a_replay_session_opens_where_the_recording_starts(recording: Path) -> None:
    from tiertop.tui.replay_session import open_replay

    session = open_replay(str(recording), speed=4.0, paused=True)
    try:
        tape = session.tape()
        assert (tape.position_s, tape.speed, tape.playing) == (0.0, 4.0, False)
        assert tape.duration_s == pytest.approx(5.0) and tape.issues == ()
        assert session.model.hello is not None  # the Hello at position 0 is folded
        assert isinstance(session.model, StateModel) and session.model.window_s == 5.0
        assert session.ingest is not None and session.ingest.step(timeout_ms=0) == 0
        time.sleep(0.05)
        assert session.replayer.index == 1  # paused: nothing more
    finally:
        session.close()


def test_positions_are_written_and_read_as_people_do() -> None:
    assert [fmt_position(s) for s in (0.0, 7.34, 90.0, 3723.0)] == [
        "0:00.0", "0:07.3", "1:30.0", "1:02:03"]
    assert parse_position("90", 0.0, 100.0) == 90.0
    assert parse_position("1:30", 0.0, 100.0) == 90.0
    assert parse_position("1:01:30", 0.0, 4000.0) == 3690.0
    assert parse_position("12.5s", 0.0, 100.0) == 12.5
    assert parse_position("+10", 50.0, 100.0) == 60.0
    assert parse_position("-1:00", 70.0, 100.0) == 10.0
    for bad in ("", "later", "1:2:3:4", "-80", "101"):
        with pytest.raises(ValueError):
            parse_position(bad, 70.0, 100.0)
