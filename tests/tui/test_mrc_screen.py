"""The miss-ratio-curve screen (``M``), fed block events from a fake source that make a known
curve: a loop over 80 blocks, so LRU hits (rounds - 1) / rounds of the accesses from 80 blocks
on and none below; the fake runtime's tiers sit at 54, 162 and 597 blocks (cumulative effective
sizes: 64, 128 and 512 blocks at watermarks 0.9/0.8)."""

from __future__ import annotations

from typing import Any

import pytest
from textual.pilot import Pilot
from tiertop.monitor.mrc_feed import FeedChange, MrcFeed, MrcReading
from tiertop.tui.screens.mrc import MrcScreen

from tests.monitor.test_mrc_feed import loop_batches

from .fakes import Script, fake_session
from .helpers import SIZE, RecordingApp, step, until

pytestmark = pytest.mark.asyncio

WHAT_IF_DRAM = ("if dram were twice as large (54 -> 108 blocks), its hit ratio would go from "
                "0.00 to 0.80")


def text(widget: object) -> str:
    return str(widget.render())  # type: ignore[attr-defined]


def loop_app(rounds: int = 5, **kwargs: Any) -> tuple[RecordingApp, Any]:
    session, source, _, _ = fake_session(ticks=4, **kwargs)
    source.push(*loop_batches(80, rounds))
    return RecordingApp(session, refresh_s=30.0, slow_refresh_s=30.0), source


async def open_mrc(app: RecordingApp, pilot: Pilot[Any]) -> MrcScreen:
    await step(app, pilot)
    await pilot.press("M")
    await until(pilot, lambda: isinstance(app.screen, MrcScreen))
    screen = app.screen
    assert isinstance(screen, MrcScreen)
    await pilot.pause()
    return screen


async def test_the_curve_its_tier_marks_and_what_ifs() -> None:
    app, _ = loop_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_mrc(app, pilot)
        head = text(screen.head)
        assert "400 accesses · 400 sampled at rate 1 (every block)" in head
        assert "max hit ratio 0.80" in head and "NOT ENOUGH" not in head
        chart = text(screen.chart)
        assert "┌ dram 0.00" in chart and "┌ remote 0.80" in chart and "disk 0.80" in chart
        assert chart.count("◆") == 3 and " 0.80 ┤" in chart
        assert "blocks 1 " in chart and "bytes 16.0K" in chart
        detail = text(screen.detail)
        assert WHAT_IF_DRAM in detail
        assert "remote   ~108 of 128 blocks = 1.7M (watermarks 0.90/0.80) · all tiers down to " \
               "it 0.80 · its own share 0.80" in detail


async def test_the_curve_follows_the_stream_live() -> None:
    app, source = loop_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_mrc(app, pilot)
        source.push(*loop_batches(80, 5))  # five more passes: 9 of 10 accesses hit
        await step(app, pilot)
        await until(pilot, lambda: "800 accesses" in text(screen.head))  # its own 1 s timer
        assert "max hit ratio 0.90" in text(screen.head)
        assert "┌ remote 0.90" in text(screen.chart)
        assert "its hit ratio would go from 0.00 to 0.90" in text(screen.detail)


async def test_too_little_data_is_said_plainly() -> None:
    session, source, _, _ = fake_session(ticks=4)
    app = RecordingApp(session, refresh_s=30.0, slow_refresh_s=30.0)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_mrc(app, pilot)
        assert "⚠ NOT ENOUGH DATA YET: no block accesses seen" in text(screen.head)
        assert "no block accesses seen yet" in text(screen.chart)
        assert "none yet" in text(screen.detail)
        source.push(*loop_batches(50, 1))
        await step(app, pilot)
        screen.refresh_view()
        assert "⚠ NOT ENOUGH DATA YET: 50 sampled accesses" in text(screen.head)


async def test_a_view_in_model_mode_and_read_only() -> None:
    app, _ = loop_app(read_only=True, mode="model")
    async with app.run_test(size=SIZE) as pilot:
        await step(app, pilot)
        row = next(r for r in app.help_rows() if r.binding_id == "mrc")
        assert row.keys == "M" and row.note == ""  # on, though every control is off
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert "MRC [M]" in titles
        screen = await open_mrc(app, pilot)
        assert WHAT_IF_DRAM in text(screen.detail)


async def test_keys_open_close_and_pause() -> None:
    app, source = loop_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_mrc(app, pilot)
        await pilot.press("p")  # the dashboard's pause freezes this view too
        await until(pilot, lambda: "❚❚ VIEW PAUSED" in text(screen.head))
        source.push(*loop_batches(80, 5))
        await step(app, pilot)
        screen.refresh_view()
        assert "400 accesses" in text(screen.head) and "VIEW PAUSED" in text(screen.head)
        await pilot.press("p")
        await until(pilot, lambda: "PAUSED" not in text(screen.head))
        assert "800 accesses" in text(screen.head)

        await pilot.press("M")  # M again goes back
        await until(pilot, lambda: not isinstance(app.screen, MrcScreen))
        await pilot.press("M", "escape")
        await until(pilot, lambda: not isinstance(app.screen, MrcScreen))


async def test_what_the_feed_did_is_said_where_the_curve_is() -> None:
    app, _ = loop_app()
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_mrc(app, pilot)
        feed = app.session.mrc
        now = app.session.clock()
        with app.session.lock:  # what the feed records when a stream gets too heavy
            feed.paused = True
            feed.changes.append(FeedChange(now - 12, "pause", 0.02, "following 200,000 block "
                                           "events/s took 14% of a core (limit 10%)"))
        screen.refresh_view()
        assert ("⚠ CURVE PAUSED 12 s ago: following 200,000 block events/s took 14% of a core "
                "(limit 10%)") in text(screen.head)
        with app.session.lock:
            feed.paused = False
            feed.changes.append(FeedChange(now - 3, "rate", 0.02, "the stream made it sample "
                                           "100,000 accesses/s (budget 2,000)"))
        screen.refresh_view()
        assert "PAUSED" not in text(screen.head)
        assert ("↓ sampling lowered to 0.02 3 s ago, the curve restarting then: the stream "
                "made it sample 100,000 accesses/s (budget 2,000)") in text(screen.detail)


class AnswerLater:
    """An :class:`~tiertop.monitor.mrc_feed.MrcSource` that has nothing until the test gives it
    a reading (an ingest process that has not answered yet)."""

    def __init__(self) -> None:
        self.latest: MrcReading | None = None
        self.asked = 0

    def reading(self) -> MrcReading | None:
        self.asked += 1
        return self.latest

    def stats(self) -> dict[str, Any]:
        return {}


async def test_it_waits_for_a_source_that_has_not_answered(monkeypatch: pytest.MonkeyPatch) -> None:
    session, _, _, _ = fake_session(ticks=4)
    source = AnswerLater()
    monkeypatch.setattr(session, "mrc", source)
    app = RecordingApp(session, refresh_s=30.0, slow_refresh_s=30.0)
    async with app.run_test(size=SIZE) as pilot:
        screen = await open_mrc(app, pilot)
        assert source.asked and screen.reading is None
        assert "waiting for the curve… nothing received from the feed yet" in text(screen.head)
        assert "reading the curve…" in text(screen.chart)

        feed = MrcFeed(clock=lambda: 0.0)  # what the other process folded and sent
        script = Script()
        feed.fold([script.hello(), *script.tick(), *loop_batches(80, 5)])
        source.latest = feed.reading()
        screen.refresh_view()
        assert screen.reading is source.latest
        head = text(screen.head)
        assert "waiting" not in head and "400 accesses" in head and "max hit ratio 0.80" in head
        assert "┌ dram 0.00" in text(screen.chart)
        assert WHAT_IF_DRAM in text(screen.detail)
