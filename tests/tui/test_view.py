"""What the dashboard shows and how the view is steered: zoom, pause-view, tier selection, the
event filter, the requests table, severity in words, help, palette, keymap, themes, connection
states. Fed by hand from a fake source."""

from __future__ import annotations

import msgspec
import pytest
from textual.widgets import Input
from tiertop.tui.app import ACTIONS
from tiertop.tui.palette import Palette
from tiertop.tui.screens.forms import FormScreen
from tiertop.tui.screens.help import HelpScreen
from tiertop.tui.session import Session

from .fakes import FakeSource, Script, fake_session
from .helpers import SIZE, RecordingApp, panel_text, step, until

pytestmark = pytest.mark.asyncio


def status(app: RecordingApp) -> str:
    return str(app.status_line.render())


def events(app: RecordingApp) -> str:
    return str(app.event_log._lines.render())


async def test_zoom_pause_view_and_collection_going_on() -> None:
    session, source, script, _ = fake_session()
    app = RecordingApp(session, refresh_s=1.0)
    async with app.run_test(size=SIZE) as pilot:
        assert "zoom 1m" in status(app)
        for label in ("5m", "15m", "all", "1m"):
            await pilot.press("z")
            assert f"zoom {label}" in status(app)
            # The panels were redrawn over the new window by the same key, not a frame later.
            assert app.frame is not None and app.frame.status.zoom == label
        await pilot.press("Z")
        assert "zoom all" in status(app)

        await pilot.press("p")
        assert "VIEW PAUSED" in status(app) and "still collecting" in status(app)
        frozen_panel = panel_text(app, "dram")
        msgs_before = session.model.source_health()["messages"]
        script.tier("dram").high = 0.6
        source.push(*script.run(6))
        await step(app, pilot)
        assert panel_text(app, "dram") == frozen_panel  # the view holds still
        msgs_after = session.model.source_health()["messages"]
        assert msgs_after > msgs_before
        assert f"msgs {msgs_after:,}" in status(app)  # the status line shows it collecting
        await pilot.press("p")
        app.render_now()
        assert "VIEW PAUSED" not in status(app)
        assert "hi 0.60" in panel_text(app, "dram")


async def test_render_timers_wait_while_a_key_is_answered(
        monkeypatch: pytest.MonkeyPatch) -> None:
    session, _, _, _ = fake_session()
    app = RecordingApp(session, refresh_s=1.0)
    async with app.run_test(size=SIZE) as pilot:
        answered: list[bool] = []
        key_answered = app._key_answered
        monkeypatch.setattr(app, "_key_answered",
                            lambda: (answered.append(app.answering_key), key_answered())[-1])
        await pilot.press("z")
        await until(pilot, lambda: bool(answered))
        assert answered == [True] and not app.answering_key  # set by the key, cleared after

        ticks: list[str] = []
        app.answering_key = True
        app._on_timer(lambda: ticks.append("refresh"))
        assert ticks == []  # not while the answer is on its way
        await until(pilot, lambda: ticks == ["refresh"])  # right after it
        app.answering_key = False
        app._on_timer(lambda: ticks.append("refresh"))
        assert ticks == ["refresh", "refresh"]


async def test_event_filter_and_moves_toggle() -> None:
    session, source, script, _ = fake_session()
    app = RecordingApp(session, refresh_s=1.0)
    async with app.run_test(size=SIZE) as pilot:
        source.push(script.fault("disk", "slow"), script.health("remote", "down", "no answer"),
                    *script.run(2))
        await step(app, pilot)
        assert "↓ demote" in events(app)
        await pilot.press("slash")
        assert isinstance(app.focused, Input)
        await pilot.press(*"fault")
        await until(pilot, lambda: "↓ demote" not in events(app))
        assert "⚡ fault" in events(app) and "fault slow on disk" in events(app)
        assert "kind fault" in str(app.event_log.border_title)
        await pilot.press("escape")
        assert app.focused is None
        await pilot.press("w")  # keys reach the dashboard again, not the filter field
        await until(pilot, lambda: isinstance(app.screen, FormScreen))
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, FormScreen))

        app.event_log._input.value = "tier:remote"
        await until(pilot, lambda: "⚠ health" in events(app))
        assert "remote health ok -> down" in events(app)
        app.event_log._input.value = ""
        await pilot.press("m")
        await until(pilot, lambda: "moves hidden" in str(app.event_log.border_title))
        assert "promote" not in events(app) and "⚡ fault" in events(app)
        await pilot.press("m")
        await until(pilot, lambda: "↑ promote" in events(app))


async def test_requests_table_is_updated_in_place() -> None:
    session, source, script, _ = fake_session(ticks=4)
    app = RecordingApp(session, refresh_s=1.0)
    async with app.run_test(size=SIZE) as pilot:
        table = app.requests_table
        n = len(table.lines)
        assert table.row_of(f"req-{script.request_no:05d}") == 0  # newest first
        assert table.row_of("req-00001") == n - 1
        again = msgspec.structs.replace(script.request(), request_id="req-00001", ttft_s=1.5)
        script.request_no -= 1
        source.push(again)
        await step(app, pilot)
        assert len(table.lines) == n  # the same request again: no new row
        assert table.updates_in_place == 1
        assert table.row_of("req-00001") == 0  # it finished last: now the newest
        assert table.cell("req-00001", "ttft") == "1.50s"
        shown = str(table.render()).splitlines()
        assert shown[0].startswith("done") and "req-00001" in shown[1] and "1.50s" in shown[1]
        source.push(script.request())
        await step(app, pilot)
        assert len(table.lines) == n + 1
        for _ in range(80):  # the newest that fit, of the newest kept
            source.push(script.request())
        await step(app, pilot)
        assert len(table.lines) == 60
        assert len(str(table.render()).splitlines()) == table.visible_rows + 1
        assert table.row_of(f"req-{script.request_no:05d}") == 0


async def test_severity_is_written_not_only_coloured() -> None:
    session, source, script, _ = fake_session()
    app = RecordingApp(session, refresh_s=1.0)
    async with app.run_test(size=SIZE) as pilot:
        assert app.query("TierPanel")[1].border_subtitle == "OK"
        source.push(script.health("remote", "down", "memory server gone"),
                    script.fault("disk", "slow"), script.health("disk", "degraded", "slow"))
        await step(app, pilot)
        remote, disk = app.query("TierPanel")[1], app.query("TierPanel")[2]
        assert remote.border_subtitle == "✖ DOWN: memory server gone"
        assert remote.has_class("-down")
        assert str(disk.border_subtitle).startswith("⚠ DEGRADED: slow")
        assert "⚡ fault slow" in str(disk.border_subtitle)
        assert "EMULATED" in panel_text(app, "disk")
        script.tier("dram").fill = 0.95  # occupancy above the high watermark
        source.push(*script.run(1))
        await step(app, pilot)
        assert "⚠ above high" in panel_text(app, "dram")
        assert "● LIVE" in status(app)
        source.stale = True
        await step(app, pilot)
        assert "⚠ STALE" in status(app)


async def test_help_lists_every_binding_id_and_a_remapped_key_works() -> None:
    session, _, _, _ = fake_session()
    app = RecordingApp(session, refresh_s=1.0, keymap={"set-watermarks": "W"})
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        screen = app.screen
        assert isinstance(screen, HelpScreen)
        rows = {r.binding_id: r for r in screen.rows}
        for action in ACTIONS:
            assert action.binding.id in rows
        assert rows["set-watermarks"].keys == "W"
        assert rows["set-sim-speed"].note == ""  # sim mode: on
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))
        await pilot.press("w")
        await pilot.pause()
        assert not isinstance(app.screen, FormScreen)
        await pilot.press("W")
        await until(pilot, lambda: isinstance(app.screen, FormScreen))


async def test_palette_commands_follow_what_is_enabled() -> None:
    session, _, _, _ = fake_session(mode="model")
    app = RecordingApp(session, refresh_s=1.0)
    async with app.run_test(size=SIZE):
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Watermarks [w]" in titles and "Pause/resume [P]" in titles
        assert not any(t.startswith("Speed") for t in titles)  # model mode: no sim speed
        assert app.check_action("sim_speed", ()) is None
    ro, _, _, _ = fake_session(read_only=True)
    app = RecordingApp(ro, refresh_s=1.0)
    async with app.run_test(size=SIZE):
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "Controls are off" in titles
        assert "Watermarks [w]" not in titles and "Zoom [z]" in titles


async def test_theme_change_recolours_the_panels() -> None:
    session, _, _, _ = fake_session()
    app = RecordingApp(session, refresh_s=1.0, theme_name="nord")
    async with app.run_test(size=SIZE) as pilot:
        nord = app.palette
        assert app.theme == "nord" and nord != Palette()
        app.theme = "textual-light"
        await pilot.pause()
        assert app.palette != nord


async def test_connection_states_show_in_the_status_line() -> None:
    def never(session: Session) -> None:
        raise TimeoutError("the runtime printed no addresses within 1 s")

    app = RecordingApp(Session(attach=never, target="tcp://127.0.0.1:9"), refresh_s=1.0)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: "✖ ERROR" in status(app))
        assert "printed no addresses" in status(app)
        assert any(sev == "error" for sev, _ in app.notes)

    source = FakeSource()

    def attach(session: Session) -> None:
        session.attach_source(source)

    app = RecordingApp(Session(attach=attach, target="tcp://127.0.0.1:9"), refresh_s=1.0)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.session.ingest is not None)
        app.render_now()
        assert "… CONNECTING" in status(app) and "waiting for telemetry" in status(app)
        script = Script()
        source.push(script.hello(), *script.run(3))
        await step(app, pilot)
        assert "● LIVE" in status(app) and "rt:4242" in status(app)
        assert len(app.query("TierPanel")) == 3


async def test_changes_stay_in_sight_above_a_flood_of_moves() -> None:
    session, source, script, _ = fake_session(max_events=60)
    app = RecordingApp(session, refresh_s=1.0)
    async with app.run_test(size=SIZE) as pilot:
        source.push(script.fault("disk", "slow"))
        await step(app, pilot)
        source.push(*script.run(40))  # 80 moves after it: the model's log (60) forgets it
        await step(app, pilot)
        assert not session.model.events(kinds="fault")
        lines = events(app).splitlines()
        assert "⚡ fault" in lines[0] and "fault slow on disk" in lines[0]
        rule = next(i for i, line in enumerate(lines) if "latest changes above" in line)
        assert all("fault" not in line for line in lines[rule + 1:])
        assert "↓ demote" in lines[-1] or "↑ promote" in lines[-1]
        await pilot.press("m")  # moves hidden: a filter shows the model's log as it is
        await until(pilot, lambda: "latest changes above" not in events(app))
