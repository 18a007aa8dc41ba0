"""Snapshots of the miss-ratio-curve screen with fixed data (the loop of
:mod:`tests.tui.test_mrc_screen`), wide and at 80x24.

Update after an intended change with ``pytest tests/tui/test_mrc_snapshots.py
--snapshot-update`` and look at the report it writes before committing the new SVGs.
"""

from __future__ import annotations

from typing import Any

from textual.pilot import Pilot

from .helpers import RecordingApp
from .test_mrc_screen import loop_app, open_mrc


def test_mrc_screen_wide(snap_compare: Any) -> None:
    app, _ = loop_app()
    assert snap_compare(app, terminal_size=(160, 48), run_before=open_for_snapshot)


def test_mrc_screen_80x24(snap_compare: Any) -> None:
    app, _ = loop_app()
    assert snap_compare(app, terminal_size=(80, 24), run_before=open_for_snapshot)


async def open_for_snapshot(pilot: Pilot[Any]) -> None:
    app = pilot.app
    assert isinstance(app, RecordingApp)
    await open_mrc(app, pilot)
