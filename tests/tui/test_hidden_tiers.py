"""Tiers only fault or health events name (the simulator's rack pools, ``pool@R``) get no tier
panel, only a line under the last one; a tier that later gets data gets its panel."""

from __future__ import annotations

from typing import Any

import pytest
from tiertop.monitor.protocol import FaultEvent, HealthChange, TierSample, TierStats
from tiertop.monitor.state import StateModel
from tiertop.monitor.vllm_events import BlockStored, KvEventBatch
from tiertop.tui.frame import HiddenTiers, build_frame
from tiertop.tui.palette import Palette
from tiertop.tui.screens.confirm import ConfirmScreen
from tiertop.tui.session import Session
from tiertop.tui.widgets.tier_panel import TierPanel, hidden_tiers_text

from .fakes import Script, fake_session
from .helpers import SIZE, RecordingApp, panel_text, step, until

POOLS = [f"pool@{r}" for r in range(5)]


def fault(script: Script, tier: str, kind: str = "slow") -> FaultEvent:
    """A fault event on a tier the Hello does not list (Script.fault only knows its own)."""
    return FaultEvent(**script._env("tt.faults"), tier=tier, fault=kind, old="inactive",
                      new="active", reason="injected", duration_s=10.0)


def health(script: Script, tier: str, new: str) -> HealthChange:
    return HealthChange(**script._env("tt.faults"), tier=tier, old="ok", new=new,
                        reason="slow injected")


def stats_naming(script: Script, tier: str) -> TierStats:
    """A tick whose samples are the script's tiers plus ``tier``."""
    tick = next(m for m in script.tick() if isinstance(m, TierStats))
    extra = TierSample(name=tier, used_bytes=1 << 20, used_blocks=64, capacity_bytes=4 << 20)
    return TierStats(**script._env("tt.stats"), tick=tick.tick + 1, interval_s=0.5,
                     tiers=[*tick.tiers, extra])


def fed_session() -> tuple[Session, Script]:
    """A session whose model holds the script's Hello (three tiers) and a few ticks."""
    script = Script()
    model = StateModel(window_s=5.0)
    model.fold_many([script.hello(), *script.run(4)])
    return Session(model=model, clock=lambda: 10_000.0), script


def pool_faults(script: Script) -> list[Any]:
    """Faults on five rack pools, three of them degraded and one down by now."""
    return [*(fault(script, p) for p in POOLS), health(script, "pool@0", "degraded"),
            health(script, "pool@1", "degraded"), health(script, "pool@2", "degraded"),
            health(script, "pool@2", "down"), health(script, "pool@3", "degraded")]


def test_tiers_only_faults_name_get_no_panel_but_are_counted() -> None:
    session, script = fed_session()
    session.model.fold_many(pool_faults(script))
    frame = build_frame(session, 10_000.0, 0)

    assert [t.name for t in frame.tiers] == ["dram", "remote", "disk"]
    assert [t.index for t in frame.tiers] == [0, 1, 2]
    assert frame.hidden == HiddenTiers(tuple(POOLS), down=1, degraded=3, faulted=1)
    assert [t.hidden_below for t in frame.tiers] == [None, None, frame.hidden]
    events = [e.tier for e in session.model.events(kinds=("fault", "health"))]
    assert set(events) == set(POOLS)  # the event log keeps them

    line = hidden_tiers_text(frame.hidden, Palette()).plain
    assert line == ("+5 tiers known only from fault events (pool@0 … pool@4) · ✖ 1 down"
                    " · ⚠ 3 degraded · ⚡ 1 with faults · see the event log")


def test_a_tier_gets_its_panel_once_it_has_data() -> None:
    session, script = fed_session()
    model = session.model
    model.fold_many(pool_faults(script))
    model.fold(stats_naming(script, "pool@4"))
    frame = build_frame(session, 10_000.0, 0)
    assert [t.name for t in frame.tiers] == ["dram", "remote", "disk", "pool@4"]
    assert frame.hidden.names == ("pool@0", "pool@1", "pool@2", "pool@3")
    assert frame.tiers[-1].used_blocks == 64 and frame.tiers[-1].hidden_below == frame.hidden

    model.fold(KvEventBatch(topic="kv-events", seq=0, ts=script.t, tiers=["pool@1"], events=[
        BlockStored([7, 8], None, [], 0, None, "pool@1", None)]))
    frame = build_frame(session, 10_000.0, 0)
    assert "pool@1" in [t.name for t in frame.tiers]  # block events are data too
    assert frame.hidden.names == ("pool@0", "pool@2", "pool@3")


def test_without_a_hello_every_tier_keeps_its_panel() -> None:
    """As in the headless summary: a source without a Hello (a real engine) lists no tiers, so
    none is left out for being missing from it."""
    script = Script()
    model = StateModel(window_s=5.0)
    model.fold_many([fault(script, "pool@0"), fault(script, "pool@1")])
    frame = build_frame(Session(model=model, clock=lambda: 10_000.0), 10_000.0, 0)
    assert [t.name for t in frame.tiers] == ["pool@0", "pool@1"]
    assert frame.hidden == HiddenTiers() and frame.tiers[-1].hidden_below is None


def test_hidden_tier_names_read_as_a_list_or_a_span() -> None:
    p = Palette()
    assert "(pool@7) · see" in hidden_tiers_text(HiddenTiers(("pool@7",)), p).plain
    two = hidden_tiers_text(HiddenTiers(("pool@1", "pool@2"), degraded=2), p).plain
    assert two.startswith("+2 tiers known only from fault events (pool@1, pool@2) · ⚠ 2")


@pytest.mark.asyncio
async def test_the_last_panel_carries_the_line_and_the_service_panel_names_only_panels() -> None:
    session, source, script, _ = fake_session(ticks=8)
    app = RecordingApp(session, refresh_s=1.0)
    async with app.run_test(size=SIZE) as pilot:
        source.push(*pool_faults(script))
        await step(app, pilot)
        panels = list(app.query(TierPanel))
        assert [p.tier_name for p in panels] == ["dram", "remote", "disk"]
        assert "+5 tiers known only from fault events" in panel_text(app, "disk")
        assert "known only" not in panel_text(app, "dram")
        assert panels[-1].has_class("-hidden-below") and panels[-1].size.height == 7  # 6 + the line
        assert "pool@" not in str(app.service_panel.render())

        source.push(stats_naming(script, "pool@4"))
        await step(app, pilot)
        panels = list(app.query(TierPanel))
        assert [p.tier_name for p in panels] == ["dram", "remote", "disk", "pool@4"]
        assert "known only" not in panel_text(app, "disk")
        assert [p.has_class("-hidden-below") for p in panels] == [False, False, False, True]
        assert "+4 tiers known only" in panel_text(app, "pool@4")

        source.push(stats_naming(script, "pool@1"))  # named before pool@4: mounted before it
        await step(app, pilot)
        panels = list(app.query(TierPanel))
        assert [p.tier_name for p in panels] == ["dram", "remote", "disk", "pool@1", "pool@4"]
        assert "+3 tiers known only" in panel_text(app, "pool@4")


@pytest.mark.asyncio
async def test_clearing_faults_names_the_faults_of_tiers_without_a_panel() -> None:
    session, source, script, _ = fake_session(ticks=8)
    app = RecordingApp(session, refresh_s=1.0)
    async with app.run_test(size=SIZE) as pilot:
        source.push(fault(script, "pool@3", "down"))
        await step(app, pilot)
        assert [p.tier_name for p in app.query(TierPanel)] == ["dram", "remote", "disk"]
        await pilot.press("F")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        question = str(app.screen.query_one("#confirm-question").render())
        assert "pool@3: down" in question
        await pilot.press("n")
