"""Pilot helpers shared by the dashboard tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Input
from tiertop.tui.app import DashboardApp
from tiertop.tui.screens.forms import FormScreen
from tiertop.tui.session import Session
from tiertop.tui.widgets.tier_panel import TierPanel

SIZE = (160, 48)


class RecordingApp(DashboardApp):  # type: ignore[misc,unused-ignore]
    """The dashboard, keeping every notification it shows."""

    def __init__(self, session: Session, **kwargs: Any) -> None:
        kwargs.setdefault("live", False)
        super().__init__(session, **kwargs)
        self.notes: list[tuple[str, str]] = []

    def notify(self, message: str, *args: Any, **kwargs: Any) -> None:  # type: ignore[override,unused-ignore]
        self.notes.append((str(kwargs.get("severity", "information")), str(message)))
        super().notify(message, *args, **kwargs)


async def until(pilot: Pilot[Any], cond: Callable[[], object], timeout: float = 5.0) -> None:
    """Let the app run until ``cond()`` is true (fail after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.02)


def form(app: DashboardApp) -> FormScreen:
    screen = app.screen
    assert isinstance(screen, FormScreen), f"expected a form, got {type(screen).__name__}"
    return screen


def fill(app: DashboardApp, **values: str) -> None:
    f = form(app)
    for key, value in values.items():
        f.query_one(f"#field-{key}", Input).value = value


def panel_text(app: DashboardApp, tier: str) -> str:
    for panel in app.query(TierPanel):
        if panel.tier_name == tier:
            return str(panel.render())
    raise AssertionError(f"no panel for {tier}")


async def step(app: DashboardApp, pilot: Pilot[Any]) -> None:
    """Fold what the fake source holds and render it."""
    ingest = app.session.ingest
    assert ingest is not None
    ingest.drain()
    app.render_now()
    await pilot.pause()
