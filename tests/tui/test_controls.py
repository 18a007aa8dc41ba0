"""Every control of the dashboard, driven with Pilot against a fake source and a MockTransport:
the key sends the right command, an applied reply is shown and the view follows the telemetry,
a refusal is shown where the user is looking and nothing else changes."""

from __future__ import annotations

from typing import Any

import pytest
from textual.widgets import Input
from tiertop.monitor.commands import (
    ClearAll,
    ClearFaults,
    ClearTier,
    InjectFault,
    Pause,
    Resume,
    SetCapacity,
    SetEvictionPolicy,
    SetPlacementPolicy,
    SetPromotionPolicy,
    SetSimSpeed,
    SetWatermarks,
    SetWorkload,
    Snapshot,
)
from tiertop.tui.app import CONTROL_ACTIONS
from tiertop.tui.screens.confirm import ConfirmScreen
from tiertop.tui.screens.forms import FormScreen

from .fakes import applied, fake_session, refused, sent_commands
from .helpers import SIZE, RecordingApp, fill, form, panel_text, step, until

pytestmark = pytest.mark.asyncio


def model_state(app: RecordingApp) -> dict[str, Any]:
    with app.session.lock:
        state: dict[str, Any] = app.session.model.snapshot(series=True)
    return state


# (key, form values or None, confirm with "y"?, expected commands)
CONTROLS: list[tuple[str, dict[str, str] | None, bool, list[Any]]] = [
    ("w", {"high": "0.5", "low": "40%"}, False, [SetWatermarks("dram", 0.5, 0.4)]),
    ("c", {"capacity": "512KiB"}, False, [SetCapacity("dram", 512 * 1024)]),
    ("e", {"policy": "s3fifo", "options": "small_ratio=0.1"}, False,
     [SetEvictionPolicy("dram", "s3fifo", {"small_ratio": 0.1})]),
    ("o", {"placement": "spill", "promotion": "never"}, False,
     [SetPlacementPolicy("spill"), SetPromotionPolicy("never")]),
    ("l", {"rate": "12", "prompt_len_mean": "64"}, False,
     [SetWorkload(rate=12.0, prompt_len_mean=64.0)]),
    ("f", {"tier": "kind:disk", "kind": "slow", "duration": "5", "delay_ms": "20"}, True,
     [InjectFault("kind:disk", "slow", 5.0, 0.02)]),
    ("s", {"factor": "50"}, False, [SetSimSpeed(50.0)]),
    ("P", None, False, [Pause()]),
    ("x", None, True, [ClearTier("dram")]),
    ("X", None, True, [ClearAll()]),
    ("F", None, True, [ClearFaults()]),
    ("r", None, False, [Snapshot()]),
]


async def test_each_control_sends_its_command_and_shows_the_reply() -> None:
    session, _, _, transport = fake_session()
    app = RecordingApp(session, refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        for key, values, confirm, expected in CONTROLS:
            what = f"key {key} ({type(expected[0]).__name__})"
            transport.sent.clear()
            app.last_reply = None
            app.notes.clear()
            await pilot.press(key)
            if values is not None:
                await until(pilot, lambda: isinstance(app.screen, FormScreen))
                fill(app, **values)
                await pilot.press("enter")
            if confirm:
                await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
                assert transport.sent == [], what  # nothing goes before the answer
                await pilot.press("y")
            await until(pilot, lambda: app.last_reply is not None)
            assert sent_commands(transport) == expected, what
            assert app.last_reply is not None and app.last_reply[0], (what, app.last_reply)
            await until(pilot, lambda: not isinstance(app.screen, FormScreen | ConfirmScreen))
            assert any(sev == "information" and "✔" in text for sev, text in app.notes), what
            assert "last: ✔" in str(app.status_line.render()), what


async def test_watermark_change_typed_on_the_keyboard_shows_up_in_the_panel() -> None:
    old = {"dram": {"high": 0.9, "low": 0.8}}
    new = {"dram": {"high": 0.5, "low": 0.4}}
    session, source, script, transport = fake_session(
        lambda r: applied("SetWatermarks", "dram", old, new))
    app = RecordingApp(session)
    async with app.run_test(size=SIZE) as pilot:
        assert "hi 0.90  lo 0.80" in panel_text(app, "dram")
        await pilot.press("w")
        await until(pilot, lambda: isinstance(app.screen, FormScreen))
        await pilot.press("tab", *"0.5", "tab", *"0.4", "enter")  # fields select on focus
        await until(pilot, lambda: app.last_reply is not None)
        assert sent_commands(transport) == [SetWatermarks("dram", 0.5, 0.4)]
        assert app.last_reply == (True, app.last_reply[1])
        assert "SetWatermarks dram: high=0.9 low=0.8 → high=0.5 low=0.4" in app.last_reply[1]
        # The runtime publishes the change and the next ticks carry the new watermarks.
        script.tier("dram").high, script.tier("dram").low = 0.5, 0.4
        source.push(script.control("SetWatermarks", "dram", old, new), *script.run(2))
        await step(app, pilot)
        text = panel_text(app, "dram")
        assert "hi 0.50  lo 0.40" in text
        bar = text.splitlines()[0]
        assert bar.index("L") < bar.index("H") < len(bar) // 2 + 5  # marks moved to 40%/50%
        await until(pilot, lambda: "SetWatermarks dram: high=0.9 low=0.8 → high=0.5 low=0.4"
                    in str(app.query_one("#event-lines").render()))


async def test_a_refusal_is_shown_in_the_form_and_nothing_else_changes() -> None:
    message = "capacity 9 GiB is above what dram can hold (1 GiB)"
    session, _, _, transport = fake_session(
        lambda r: refused("SetCapacity", "rejected", message))
    app = RecordingApp(session)
    async with app.run_test(size=SIZE) as pilot:
        before = model_state(app)
        panel_before = panel_text(app, "dram")
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, FormScreen))
        fill(app, capacity="9GiB")
        await pilot.press("enter")
        await until(pilot, lambda: form(app).error)
        assert message in form(app).error and "[rejected]" in form(app).error
        assert isinstance(app.screen, FormScreen)  # still open, where the user is looking
        assert any(sev == "error" and message in text for sev, text in app.notes)
        assert app.last_reply is not None and not app.last_reply[0]
        assert sent_commands(transport) == [SetCapacity("dram", 9 << 30)]  # once, no retry
        app.render_now()
        after = model_state(app)
        for section in ("tiers", "service", "events", "requests", "series"):
            assert after[section] == before[section]
        assert panel_text(app, "dram") == panel_before
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, FormScreen))
        assert len(transport.sent) == 1


INVALID: list[tuple[str, dict[str, str], str]] = [
    ("w", {"high": "1.5", "low": "0.2"}, "high watermark 1.5 for tier dram is outside 0..1"),
    ("w", {"high": "0.3", "low": "0.6"}, "low watermark 0.6 for tier dram is above"),
    ("w", {"high": "lots"}, "high watermark: 'lots' is not a number"),
    ("c", {"capacity": "-3MiB"}, "is not a size"),
    ("f", {"kind": "melt"}, "unknown fault kind 'melt'"),
    ("f", {"kind": "down", "delay_ms": "5"}, "delay_s applies to slow faults only"),
    ("l", {}, "nothing to change"),
    ("e", {"options": "oops"}, "expected key=value"),
]


async def test_invalid_values_are_refused_in_the_form_before_sending() -> None:
    session, _, _, transport = fake_session()
    app = RecordingApp(session, refresh_s=0.5)
    async with app.run_test(size=SIZE) as pilot:
        for key, values, why in INVALID:
            await pilot.press(key)
            await until(pilot, lambda: isinstance(app.screen, FormScreen))
            fill(app, **values)
            await pilot.press("enter")
            await until(pilot, lambda: form(app).error)
            assert why in form(app).error and "not sent" in form(app).error, (key, values)
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, FormScreen))
        assert transport.sent == []
        assert app.last_reply is None


async def test_no_answer_is_reported_as_such() -> None:
    session, _, _, transport = fake_session(lambda r: None)
    app = RecordingApp(session)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("P")
        await until(pilot, lambda: app.last_reply is not None, timeout=5)
        assert app.last_reply is not None and not app.last_reply[0]
        assert "no reply to Pause" in app.last_reply[1]
        assert any(sev == "error" and "no reply" in text for sev, text in app.notes)
        assert len(transport.sent) == 1


async def test_cancelling_a_confirmation_sends_nothing() -> None:
    session, _, _, transport = fake_session()
    app = RecordingApp(session)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("X")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        await pilot.press("f")
        await until(pilot, lambda: isinstance(app.screen, FormScreen))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, FormScreen))
        assert "cancelled" in str(form(app).query_one("#form-status").render())
        assert transport.sent == []


async def test_pause_key_resumes_a_paused_workload() -> None:
    session, source, script, transport = fake_session()
    app = RecordingApp(session)
    async with app.run_test(size=SIZE) as pilot:
        script.paused = True
        source.push(*script.run(2))
        await step(app, pilot)
        assert "WORKLOAD PAUSED" in str(app.query_one("#service").render())
        await pilot.press("P")
        await until(pilot, lambda: app.last_reply is not None)
        assert sent_commands(transport) == [Resume()]


async def test_controls_act_on_the_selected_tier() -> None:
    session, _, _, transport = fake_session()
    app = RecordingApp(session)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("right_square_bracket", "right_square_bracket")  # -> disk
        assert app.selected_tier() is not None and app.selected_tier().name == "disk"
        assert "▶ 3 disk" in str(app.query("TierPanel")[2].border_title)
        await pilot.click("#tier-0-dram")  # the mouse works too
        await pilot.pause()
        assert app.selected == 0
        await pilot.press("left_square_bracket")  # wraps to the last tier
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "tier disk" in str(app.screen.query_one("#confirm-question").render())
        await pilot.press("y")
        await until(pilot, lambda: app.last_reply is not None)
        assert sent_commands(transport) == [ClearTier("disk")]


async def test_read_only_disables_every_control_and_says_so() -> None:
    session, _, _, transport = fake_session(read_only=True)
    app = RecordingApp(session)
    async with app.run_test(size=SIZE) as pilot:
        status = str(app.status_line.render())
        assert "READ-ONLY" in status and "--read-only" in status
        for action in CONTROL_ACTIONS:
            assert app.check_action(action, ()) is None, action
        for key in ("w", "c", "e", "o", "l", "P", "f", "F", "x", "X", "s"):
            await pilot.press(key)
            await pilot.pause()
            assert not isinstance(app.screen, FormScreen | ConfirmScreen), key
        assert transport.sent == []
        # Even a command that reaches the controller is refused locally.
        outcome = session.controller.send([Pause()])
        assert not outcome.ok and outcome.error_code == "read_only"
        assert transport.sent == []
        # The view still works.
        await pilot.press("z")
        assert "zoom 5m" in str(app.status_line.render())


async def test_an_applied_change_updates_the_status_rtt() -> None:
    session, _, _, _ = fake_session()
    app = RecordingApp(session)
    async with app.run_test(size=SIZE) as pilot:
        assert "rtt -" in str(app.status_line.render())
        await pilot.press("r")
        await until(pilot, lambda: app.last_reply is not None)
        app.render_now()
        assert session.model.control_rtt_s is not None
        assert "rtt -" not in str(app.status_line.render())


async def test_forms_start_from_current_values() -> None:
    session, _, _, _ = fake_session()
    app = RecordingApp(session)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, FormScreen))
        f = form(app)
        assert f.query_one("#field-tier", Input).value == "dram"
        assert f.query_one("#field-capacity", Input).value == "1MiB"
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, FormScreen))
        await pilot.press("o")
        await until(pilot, lambda: isinstance(app.screen, FormScreen))
        assert form(app).query_one("#field-placement", Input).value == "top"
        assert form(app).query_one("#field-promotion", Input).value == "on-hit"
