"""The dashboard's plain parts: text building blocks, the ingest, the launcher, the commands, and
the import boundaries (tui never reaches into the runtime or the tier library)."""

from __future__ import annotations

import ast
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.text import Text
from textual.app import App, ComposeResult
from textual.geometry import Region
from tiertop.monitor.state import StateModel
from tiertop.monitor.vllm_events import BlockStored, KvEventBatch
from tiertop.tui.format import (
    compact,
    occupancy_cells,
    parse_bytes,
    parse_fraction,
    resample,
    sparkline,
)
from tiertop.tui.frame import EventFilter, build_status, time_label
from tiertop.tui.ingest import ERROR_SHOWN_S, Ingest
from tiertop.tui.launcher import RuntimeExited, RuntimeProcess
from tiertop.tui.options import load_keymap
from tiertop.tui.palette import Palette
from tiertop.tui.replay_status import RecordStatus, ReplayStatus, Tape
from tiertop.tui.screens.help import LEGEND
from tiertop.tui.session import Session
from tiertop.tui.widgets.status_line import status_text
from tiertop.tui.widgets.text_lines import TextLines, split_lines

from .fakes import FakeSource, Script

TUI = Path(__file__).resolve().parents[2] / "tui"


# ------------------------------------------------------------------------------------ format


def test_occupancy_bar_marks_watermarks_with_letters() -> None:
    cells = occupancy_cells(0.55, 20, low=0.8, high=0.9)
    text = "".join(c for c, _ in cells)
    assert text[16] == "L" and text[18] == "H"
    assert text.count("█") == 11 and cells[16][1] == "mark"
    full = occupancy_cells(1.0, 10, low=0.5, high=0.5)
    assert "".join(c for c, _ in full) == "█████H████"  # same cell: H wins, on the fill
    assert full[5][1] == "mark-fill"
    assert "".join(c for c, _ in occupancy_cells(None, 4, None, None)) == "░░░░"


def test_sparkline_scales_and_shows_gaps() -> None:
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([1.0, math.nan, 1.0]) == "█ █"
    assert sparkline([0.5], lo=0.0, hi=1.0) in ("▄", "▅")
    assert sparkline([]) == ""


def test_resample_bins_by_time_and_fills_only_small_holes() -> None:
    t = np.arange(10, dtype=float)
    v = np.arange(10, dtype=float)
    out = resample(t, v, 5, 0.0, 10.0)
    assert list(out) == [0.5, 2.5, 4.5, 6.5, 8.5]
    sparse = resample(np.array([0.0, 9.0]), np.array([1.0, 2.0]), 10, 0.0, 10.0)
    assert np.isnan(sparse[6])  # a long silence stays a gap
    dense = resample(np.arange(5.0), np.ones(5), 10, 0.0, 5.0)
    assert np.isfinite(dense[:9]).all()  # rounding holes between near points are filled
    assert np.isnan(resample(np.zeros(0), np.zeros(0), 3, 0, 1)).all()


def test_value_parsing_for_forms() -> None:
    assert parse_bytes("4MiB") == 4 << 20
    assert parse_bytes("512K") == 512 << 10
    assert parse_bytes("1.5GB") == 1_500_000_000
    assert parse_bytes(" 65536 ") == 65536
    for bad in ("", "MiB", "4 parsecs", "0", "-1K"):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    assert parse_fraction("90%", "high") == pytest.approx(0.9)
    assert parse_fraction(".5", "high") == 0.5
    with pytest.raises(ValueError, match="high: 'x' is not a number"):
        parse_fraction("x", "high")
    assert compact({"dram": {"high": 0.5, "low": 0.4}}) == "dram: high=0.5 low=0.4"
    assert compact(None) == "-"


def test_event_filter_parses_what_the_user_types() -> None:
    f = EventFilter.parse("kind:fault,health tier:dram slow disk")
    assert f.kinds == ("fault", "health") and f.tier == "dram" and f.text == "slow disk"
    assert EventFilter.parse("control").kinds == ("control",)
    hidden = EventFilter().with_moves_hidden(True)
    kinds = hidden.wanted_kinds()
    assert kinds is not None and "demote" not in kinds and "fault" in kinds
    assert EventFilter().wanted_kinds() is None
    assert time_label(12.34, "sim").strip() == "12.3s"


def test_help_legend_explains_the_replay_and_record_badges() -> None:
    """Each badge the status line writes for a replay or a recording is in the help's legend."""
    model = StateModel()
    script = Script()
    model.fold_many([script.hello(), *script.run(2)])
    status = build_status(Session(model=model), 10_000.0, "1m", False)
    tapes: list[tuple[Tape, tuple[str, ...]]] = [
        (ReplayStatus("r.ttrec", 83.4, 300.0, 4.0, True, False), ("▶ REPLAY", "×4 playing")),
        (ReplayStatus("r.ttrec", 83.4, 300.0, 4.0, False, False, issues=("truncated",)),
         ("❚❚ REPLAY", "⚠ damaged file: readable part only")),
        (ReplayStatus("r.ttrec", 83.4, 300.0, 4.0, True, False, behind=True), ("catching up",)),
        (RecordStatus("/tmp/s.ttrec", 1_250_000), ("● REC",)),
        (RecordStatus("/tmp/s.ttrec", 1_250_000, error="disk full"), ("✖ REC stopped",)),
    ]
    for tape, badges in tapes:
        line = status_text(status, Palette(), None, tape).plain
        for badge in badges:
            assert badge in line and badge in LEGEND, badge


def test_keymap_files(tmp_path: Path) -> None:
    good = tmp_path / "keys.toml"
    good.write_text('[keys]\nset-watermarks = "W"\nquit = "ctrl+q,q"\n')
    assert load_keymap(str(good)) == {"set-watermarks": "W", "quit": "ctrl+q,q"}
    bad = tmp_path / "bad.toml"
    bad.write_text("quit = 3\n")
    with pytest.raises(ValueError, match="quit must be a string"):
        load_keymap(str(bad))
    with pytest.raises(ValueError, match="keymap"):
        load_keymap(str(tmp_path / "missing.toml"))


def test_split_lines_cuts_text_into_styled_pieces() -> None:
    text = Text("a ")
    text.append("b", style="bold").append("\nc\n").append("d", style="red")
    assert split_lines(text) == [(("a ", ""), ("b", "bold")), (("c", ""),), (("d", "red"),)]
    assert split_lines(Text("")) == [()]
    nested = Text("abc")
    nested.stylize("bold", 0, 3)
    nested.stylize("red", 1, 2)
    assert split_lines(nested) is None  # overlapping styles: Rich resolves them


class LinesApp(App[None]):
    def compose(self) -> ComposeResult:
        yield TextLines(id="lines")


@pytest.mark.asyncio
async def test_text_lines_render_and_repaint_only_what_changed() -> None:
    app = LinesApp()
    async with app.run_test(size=(20, 5)) as pilot:
        lines = app.query_one(TextLines)
        lines.set_text(Text("one\ntwo\nthree"))
        await pilot.pause()
        first, second = lines.render_line(0), lines.render_line(1)
        assert first.text == "one".ljust(20) and second.text == "two".ljust(20)
        repainted: list[tuple[Region, ...]] = []
        refresh = lines.refresh

        def spy(*regions: Region, **kwargs: bool) -> TextLines:
            repainted.append(regions)
            return refresh(*regions, **kwargs)

        lines.refresh = spy  # type: ignore[method-assign]
        lines.set_text(Text("one\nTWO\nthree"))
        assert repainted == [(Region(0, 1, 20, 1),)]
        await pilot.pause()
        assert lines.render_line(0) is first  # the same strip: not rendered again
        assert lines.render_line(1).text == "TWO".ljust(20)

        styled = Text("x" * 30)
        styled.stylize("bold", 0, 2)
        lines.set_text(styled)
        await pilot.pause()
        strip = lines.render_line(0)
        assert strip.text == "x" * 19 + "…"  # too long: cut with an ellipsis
        head = next(iter(strip))
        assert head.text == "xx" and head.style is not None and head.style.bold
        assert str(lines.render()) == "x" * 30  # what tests and mouse selection read


# ------------------------------------------------------------------------------------ ingest


class CountingLock:
    """A lock that counts how often it was taken, and checks it is free between takes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.taken = 0

    def __enter__(self) -> None:
        self._lock.acquire()
        self.taken += 1

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_ingest_folds_in_bounded_chunks_releasing_the_lock() -> None:
    script = Script()
    source = FakeSource()
    batches = [KvEventBatch(topic="kv-events", seq=i, ts=1000.0 + i, tiers=["dram"] * 1000,
                            events=[
        BlockStored(block_hashes=[i * 1000 + j], parent_block_hash=None, token_ids=[],
                    block_size=16, lora_id=None, medium="dram", lora_name=None)
        for j in range(1000)
    ]) for i in range(10)]
    source.push(script.hello(), *batches)
    model = StateModel()
    lock = CountingLock()
    ingest = Ingest(model, lock, source, chunk_weight=2500, max_messages=100)  # type: ignore[arg-type,unused-ignore]
    assert ingest.step() == 11
    # Hello + 10 x 1001-weight batches in chunks of at most 2500: 5 holds, plus the counters.
    assert lock.taken == 6
    tier = model.tier("dram")
    assert tier is not None and tier.resident_blocks == 10_000
    assert ingest.folded == 11 and source.pending == type(source.pending)()


def test_ingest_thread_starts_stops_and_closes_the_source() -> None:
    script = Script()
    source = FakeSource()
    messages = [script.hello(), *script.run(3)]
    source.push(*messages)
    ingest = Ingest(StateModel(), threading.Lock(), source)
    ingest.start()
    deadline = time.monotonic() + 5
    while ingest.folded < len(messages) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ingest.folded == len(messages) and ingest.running
    ingest.stop()
    assert not ingest.running and source.closed


class FailingOnce(FakeSource):
    """A source whose first poll fails (an ingest process that died and is being replaced)."""

    def poll(self, max_messages: int = 1000, timeout_ms: float = 0) -> list[Any]:
        if self.polls == 0:
            self.polls += 1
            raise RuntimeError("the ingest process exited (code -9)")
        return super().poll(max_messages, timeout_ms)


def test_an_ingest_error_is_shown_until_data_flows_again_for_a_while() -> None:
    script = Script()
    source = FailingOnce()
    now = [100.0]
    ingest = Ingest(StateModel(), threading.Lock(), source, clock=lambda: now[0])
    assert not ingest.guarded_step(timeout_ms=0)
    assert ingest.last_error == "RuntimeError: the ingest process exited (code -9)"
    source.push(script.hello())
    assert ingest.guarded_step(timeout_ms=0) and ingest.folded == 1
    assert ingest.last_error  # data again, but just now: the user still gets to read it
    now[0] += ERROR_SHOWN_S
    assert ingest.guarded_step(timeout_ms=0) and ingest.last_error  # nothing came: kept
    source.push(*script.run(1))
    assert ingest.guarded_step(timeout_ms=0) and ingest.last_error == ""


# ---------------------------------------------------------------------------------- launcher

CHILD = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    # A grandchild that ignores SIGTERM, like a stuck helper process.
    subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
    print("telemetry: tcp://127.0.0.1:1", flush=True)
    print("control: tcp://127.0.0.1:2", flush=True)
    print("replay: tcp://127.0.0.1:3", flush=True)
    time.sleep(60)
""")


def test_launcher_reads_addresses_and_leaves_nothing_behind() -> None:
    rt = RuntimeProcess([], argv=[sys.executable, "-c", CHILD])
    try:
        addresses = rt.wait_addresses(timeout_s=30)
        assert addresses == {"telemetry": "tcp://127.0.0.1:1", "control": "tcp://127.0.0.1:2",
                             "replay": "tcp://127.0.0.1:3"}
        time.sleep(0.3)
        assert len(rt._group_alive()) == 2
    finally:
        rt.stop(timeout_s=5)
    assert rt._group_alive() == []
    assert not rt.dir.exists()


def test_launcher_reports_an_early_exit_with_the_log() -> None:
    rt = RuntimeProcess([], argv=[sys.executable, "-c",
                                  "import sys; print('no model here'); sys.exit(3)"])
    try:
        with pytest.raises(RuntimeExited, match=r"status 3(.|\n)*no model here"):
            rt.wait_addresses(timeout_s=30)
    finally:
        assert rt.stop() == 3
    assert not rt.dir.exists()


# ------------------------------------------------------------------------------- boundaries


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_tui_never_imports_the_runtime_or_the_tier_library() -> None:
    files = sorted(TUI.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        for name in _imports(path):
            assert not name.startswith(("tiertop.runtime", "tiertop.tiers")), (path, name)
            if name.startswith("tiertop."):
                assert name.startswith(("tiertop.monitor", "tiertop.main")), (path, name)


def test_the_command_line_stays_textual_free_until_a_dashboard_runs() -> None:
    code = ("import sys; from tiertop.main import build_parser; build_parser(); "
            "print('textual' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env={**os.environ})
    assert out.stdout.strip() == "False", out.stderr


def test_dash_and_demo_refuse_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from tiertop.main import main

    assert main(["dash", "--client-key", "k"]) == 2
    assert "--client-key and --server-key go together" in capsys.readouterr().err
    assert main(["demo", "--rate", "0"]) == 2
    assert "--rate must be > 0" in capsys.readouterr().err
    assert main(["dash", "--keymap", "/nonexistent/keys.toml"]) == 2
    assert "keymap /nonexistent/keys.toml" in capsys.readouterr().err


def test_demo_starts_small_tiers_or_the_rack_simulator_on_free_ports() -> None:
    import argparse

    from tiertop.main import SUBCOMMANDS
    from tiertop.tui.demo_cli import runtime_args

    model = runtime_args(argparse.Namespace(sim=False, tier=None, rate=6.0))
    assert model[0] == "run" and model.count("--tier") == 3
    assert "dram:1MiB" in model and "remote:2MiB" in model and "disk:8MiB" in model
    sim = runtime_args(argparse.Namespace(sim=True, tier=None, rate=6.0))
    assert sim[:3] == ["sim", "--preset", "rack"]
    for args in (model, sim):
        for flag in ("--publish", "--control", "--replay"):
            assert args[args.index(flag) + 1] == "tcp://127.0.0.1:0"
    assert "sim" in SUBCOMMANDS and "demo" in SUBCOMMANDS and "dash" in SUBCOMMANDS


def test_the_record_summary_names_every_part_and_what_a_dead_child_may_have_lost() -> None:
    from types import SimpleNamespace

    from tiertop.monitor.recorder import RecorderCounters
    from tiertop.monitor.recording import WriterStats

    def counters(records: int) -> RecorderCounters:
        return RecorderCounters(received=records, queue_dropped=0, uncaptured=0,
                                writer=WriterStats(records=records, file_bytes=100 * records),
                                subscriber=None, error="")

    session = Session()
    assert session.record_summary() is None and session.tape() is None
    session.record_to("/r/x.ttrec")
    assert session.record_summary() == (
        "nothing recorded to /r/x.ttrec: the dashboard never connected")
    session.live = SimpleNamespace(  # type: ignore[assignment]
        record_parts=[("/r/x.ttrec", counters(5)), ("/r/x.part2.ttrec", counters(7))],
        restarts=1, fatal="", record_path="/r/x.part2.ttrec",
        recorder_counters=lambda: counters(7))
    lines = (session.record_summary() or "").splitlines()
    assert lines == [
        "recorded 5 messages to /r/x.ttrec (500 bytes, 0 keyframes); up to its last complete "
        "chunk (its ingest process died)",
        "recorded 7 messages to /r/x.part2.ttrec (700 bytes, 0 keyframes)",
        "the ingest process was replaced once: the recording is in 2 files (replay them in order)",
    ]
    tape = session.tape()
    assert tape is not None and (tape.path, tape.file_bytes) == ("/r/x.part2.ttrec", 700)
