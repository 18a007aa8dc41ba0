"""Per-phase summaries: exact counts from the stream, the same live and on replay, rendered as
a table and as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest
from tiertop.monitor.framing import FrameDecoder
from tiertop.monitor.protocol import FaultEvent, Hello
from tiertop.monitor.recording import RecordingWriter
from tiertop.monitor.replay import Replayer
from tiertop.monitor.state import StateModel
from tiertop.monitor.summary import (
    Phase,
    PhaseSummarizer,
    parse_phases,
    phases_at_controls,
    render_summary,
    summarize_replay,
)

from tests.recording.streams import TIERS, session

PHASES = [Phase("first", 0.0, 30.0), Phase("second", 30.0, 60.0), Phase("late", 50.0, 90.0)]


@pytest.fixture(scope="module")
def path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    p = tmp_path_factory.mktemp("sum") / "s.ttrec"
    with RecordingWriter(p) as writer:
        for r, topic, seq, payload in session(60.0):
            writer.append(r, topic, seq, payload)
    return p


def test_phases_parse_and_refuse_nonsense() -> None:
    assert parse_phases("warmup=0:30, burst=30:90,90:") == [
        Phase("warmup", 0.0, 30.0), Phase("burst", 30.0, 90.0), Phase("phase 3", 90.0, None)]
    assert parse_phases(":10") == [Phase("phase 1", 0.0, 10.0)]
    for bad, why in (("0-30", "START:END"), ("a=x:3", "numbers"), ("5:5", "not after"),
                     ("", "no phases"), ("-3:4", ">= 0")):
        with pytest.raises(ValueError, match=why):
            parse_phases(bad)
    assert phases_at_controls([15.0, 30.0, 30.0, 99.0], 60.0) == [
        Phase("start", 0.0, 15.0), Phase("@15s", 15.0, 30.0), Phase("@30s", 30.0, None)]
    assert phases_at_controls([12.25], 60.0, ["set_watermarks dram: 0.9 -> 0.8"]) == [
        Phase("start", 0.0, 12.25), Phase("@12.2s set_watermarks dram", 12.25, None)]


def test_counts_are_exact_per_phase(path: Path) -> None:
    summary = summarize_replay(Replayer(path), PHASES)
    first, second, late = summary.phases
    assert [p.name for p in summary.phases] == ["first", "second", "late"]
    assert first.complete and second.complete and not late.complete
    assert (first.start_s, first.end_s, second.end_s, late.end_s) == (0.0, 30.0, 60.0, 60.0)
    for name in TIERS:
        # Ticks every 0.25 s add 9 hits, 1 miss, 2 evictions, 1 promotion per tier; the first
        # tick is the baseline.
        t1, t2 = first.tiers[name], second.tiers[name]
        assert (t1["hits"], t1["misses"], t1["evictions"], t1["promotions"]) == (
            9 * 119, 119, 2 * 119, 119)
        assert (t2["hits"], t2["misses"], t2["evictions"]) == (9 * 120, 120, 2 * 120)
        assert t2["hit_ratio"] == pytest.approx(0.9)
        assert 0.5 < t2["occupancy_mean"] < 0.6
        assert t2["get_p50_s"] is not None and t2["get_p99_s"] >= t2["get_p50_s"]
        assert late.tiers[name]["hits"] == 9 * 40
    assert first.service["requests"] == 240 and second.service["requests"] == 240
    assert second.service["request_rate"] == pytest.approx(8.0)
    assert second.service["tokens_per_s"] == pytest.approx(64.0)
    assert 0.019 < second.service["ttft_p50_s"] < 0.03
    assert second.service["migrations"] == 3 * 120
    assert first.service["control_changes"] == 2 and second.service["control_changes"] == 2
    assert first.service["faults"] == 4 and second.service["faults"] == 0
    assert summary.source["mode"] == "sim" and summary.source["tiers"] == list(TIERS)
    assert summary.duration_s == pytest.approx(60.0)


def test_live_and_replay_give_the_same_summary(path: Path) -> None:
    model = StateModel()
    live = PhaseSummarizer(model, PHASES)
    decoder = FrameDecoder()
    for r, topic, seq, payload in session(60.0):
        message = decoder.decode(topic, seq, payload)
        assert message is not None
        if isinstance(message, Hello):  # as the subscriber learns tier names
            decoder.normalizer.add_known(t.name for t in message.tiers)
        live.fold(message, r)
    assert live.finish().as_dict() == summarize_replay(Replayer(path), PHASES).as_dict()


def test_table_and_json_forms(path: Path) -> None:
    summary = summarize_replay(Replayer(path), PHASES)
    text = render_summary(summary)
    assert "phase first: 0-30 s (30.0 s)" in text
    assert "phase late: 50-60 s (10.0 s)  (incomplete" in text
    second = text[text.index("phase second"):]
    row = next(line for line in second.splitlines() if line.strip().startswith("remote"))
    assert "90.0%" in row and "1,080" in row
    data = json.loads(json.dumps(summary.as_dict(), allow_nan=False))
    assert [p["name"] for p in data["phases"]] == ["first", "second", "late"]
    assert data["phases"][1]["tiers"]["dram"]["hits"] == 1080
    whole = summarize_replay(Replayer(path))
    assert [p.name for p in whole.phases] == ["all"] and whole.phases[0].complete
    assert whole.phases[0].service["requests"] == 480


def test_tiers_only_named_by_fault_events_get_no_empty_rows() -> None:
    """The simulator names each rack's pool (``pool@R``) in its fault and health events while
    their traffic is counted under ``pool``: no row for them, but the tiers of the runtime's
    Hello always have one, with or without data."""
    frames = session(10.0, fault_at=None)
    hello_index = 0
    model = StateModel()
    summarizer = PhaseSummarizer(model)
    decoder = FrameDecoder()
    for i, (r, topic, seq, payload) in enumerate(frames):
        message = decoder.decode(topic, seq, payload)
        if i == hello_index:
            assert isinstance(message, Hello)
            message.tiers.append(msgspec.structs.replace(message.tiers[0], name="idle"))
            decoder.normalizer.add_known(t.name for t in message.tiers)  # as a subscriber does
        summarizer.fold(message, r)
        if i == 20:
            summarizer.fold(FaultEvent(tier="pool@3", fault="down", old="inactive",
                                       new="active", reason="injected", clock=model.last_clock
                                       or 0.0, source="test:1", epoch=7), r)
    assert "pool@3" in model.tier_names() and model.tier("pool@3") is not None
    summary = summarizer.finish()
    rows = summary.phases[0].tiers
    assert list(rows) == [*TIERS, "idle"]
    assert rows["idle"]["hits"] == 0 and rows["idle"]["hit_ratio"] is None
    assert summary.phases[0].service["faults"] == 1
    assert "pool@3" not in render_summary(summary)
