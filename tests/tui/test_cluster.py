"""The cluster view, fed hand-built ClusterStats: racks as a heatmap, drill into a rack (the
SetDrillDown command), its GPUs, metrics, faults written as ``!``."""

from __future__ import annotations

import pytest
from tiertop.monitor.commands import SetDrillDown
from tiertop.tui.screens.cluster import ClusterScreen

from .fakes import applied, fake_session, sent_commands
from .helpers import SIZE, RecordingApp, step, until

pytestmark = pytest.mark.asyncio


def text(widget: object) -> str:
    return str(widget.render())  # type: ignore[attr-defined]


async def test_racks_drill_down_gpus_and_metrics() -> None:
    session, source, script, transport = fake_session(
        lambda r: applied("SetDrillDown", "cluster", [], r.command.racks))
    app = RecordingApp(session, refresh_s=1.0)
    async with app.run_test(size=SIZE) as pilot:
        source.push(script.cluster(12, faults={3: ["down"]}), *script.run(1),
                    script.cluster(12, faults={3: ["down"]}))
        await step(app, pilot)
        await pilot.press("g")
        await until(pilot, lambda: isinstance(app.screen, ClusterScreen))
        screen = app.screen
        assert isinstance(screen, ClusterScreen)
        assert len(screen.rack_map.cells) == 12
        racks = text(screen.rack_map)
        assert "  5%" in racks and " 15%" in racks  # few racks: numbers, not only colour
        assert "!" in racks  # rack 3's pool is down
        assert "12 racks · 96 GPUs" in text(screen.head)
        assert "occupancy hbm" in text(screen.head)
        await pilot.press("right", "right", "right")
        detail = text(screen.detail)
        assert "rack 3" in detail and "⚡ fault on the pool: down" in detail
        assert "hit ratio 53.0%" in detail

        await pilot.press("enter")
        await until(pilot, lambda: app.last_reply is not None)
        assert sent_commands(transport) == [SetDrillDown([3])]
        assert "asked for rack 3" in text(screen.gpu_title)
        source.push(*script.run(1), script.cluster(12, drill=(3,)))
        await step(app, pilot)
        screen.refresh_view()
        assert len(screen.gpu_map.cells) == 8
        assert "GPUs of rack 3 · 8" in text(screen.gpu_title)
        await pilot.press("tab", "right")
        assert screen.gpu_map.has_focus
        assert "GPU 25" in text(screen.detail) and "colocated" in text(screen.detail)

        for label in ("occupancy pool", "hit ratio", "load", "occupancy hbm"):
            await pilot.press("m")
            assert label in text(screen.head)
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, ClusterScreen))


async def test_many_racks_are_drawn_as_shades_and_other_runtimes_have_no_cluster() -> None:
    session, source, script, _ = fake_session()
    app = RecordingApp(session, refresh_s=1.0)
    async with app.run_test(size=SIZE) as pilot:
        source.push(script.cluster(160, gpus_per_rack=64))
        await step(app, pilot)
        await pilot.press("g")
        await until(pilot, lambda: isinstance(app.screen, ClusterScreen))
        screen = app.screen
        assert isinstance(screen, ClusterScreen)
        racks = text(screen.rack_map)
        assert "%" not in racks and "░░" in racks and "██" in racks
        assert "160 racks · 10,240 GPUs" in text(screen.head)
    model_session, _, _, _ = fake_session(mode="model")
    app = RecordingApp(model_session, refresh_s=1.0)
    async with app.run_test(size=SIZE):
        assert app.check_action("cluster", ()) is None
