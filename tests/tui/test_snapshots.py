"""Snapshots of the main screens with fixed data (pytest-textual-snapshot).

Update after an intended change with ``pytest tests/tui/test_snapshots.py --snapshot-update``
and look at the report it writes before committing the new SVGs.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from .fakes import applied, fake_session, refused
from .helpers import RecordingApp, fill, step, until


def dashboard(**kwargs: Any) -> tuple[RecordingApp, Any, Any]:
    session, source, script, _ = fake_session(**kwargs)
    source.push(
        script.control("SetWatermarks", "dram", {"dram": {"high": 0.95, "low": 0.85}},
                       {"dram": {"high": 0.9, "low": 0.8}}),
        script.fault("disk", "slow"),
        script.health("remote", "degraded", "memory server slow to answer"),
        *script.run(4),
    )
    # A long refresh period: the snapshot shows what render_now drew, nothing racing it.
    app = RecordingApp(session, refresh_s=30.0, slow_refresh_s=30.0)
    return app, source, script


async def settle(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, RecordingApp)
    await step(app, pilot)
    await pilot.pause()
    app.render_now()
    await pilot.pause()


def test_main_screen(snap_compare: Any) -> None:
    app, _, _ = dashboard()
    assert snap_compare(app, terminal_size=(160, 48), run_before=settle)


def test_main_screen_read_only_small_terminal(snap_compare: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "UTC")  # model mode shows wall-clock times of day
    time.tzset()
    app, _, _ = dashboard(read_only=True, mode="model")
    assert snap_compare(app, terminal_size=(120, 40), run_before=settle)


def test_help_screen(snap_compare: Any) -> None:
    app, _, _ = dashboard()

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(160, 48), run_before=run_before)


def test_form_showing_the_runtime_refusal(snap_compare: Any) -> None:
    message = "high watermark 0.3 would evict 900 blocks from dram; tier is read-only"
    session, _, _, _ = fake_session(
        lambda r: refused("SetWatermarks", "rejected", message)
        if r.command.name == "SetWatermarks" else applied(r.command.name))
    app = RecordingApp(session, refresh_s=30.0, slow_refresh_s=30.0)

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("w")
        await pilot.pause()
        fill(app, high="0.3", low="0.2")
        await pilot.press("enter")
        await until(pilot, lambda: app.last_reply is not None)
        session.model.set_control_rtt(0.0015)  # measured, so it varies: pin it
        for field in app.screen.query(Input):  # a blinking cursor: its phase depends on timing
            field.cursor_blink = False
        app.render_now()
        await pilot.pause()

    assert snap_compare(app, terminal_size=(160, 48), run_before=run_before)


def test_cluster_view(snap_compare: Any) -> None:
    session, source, script, _ = fake_session(
        lambda r: applied("SetDrillDown", "cluster", [], [2]))
    source.push(script.cluster(24, gpus_per_rack=32, faults={5: ["down"]}), *script.run(2),
                script.cluster(24, gpus_per_rack=32, drill=(2,), faults={5: ["down"]}))
    app = RecordingApp(session, refresh_s=30.0, slow_refresh_s=30.0)

    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("g")
        await pilot.pause()
        await pilot.press("right", "right", "tab", "right")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(160, 48), run_before=run_before)
