"""The miss-ratio-curve chart: the curve where the hit ratios are, tier marks at their sizes
with labels and points (no colour needed), size axis in blocks and bytes, thin sizes dashed."""

from __future__ import annotations

import dataclasses
import math

from tiertop.monitor.mrc import MissRatioCurve, MrcTracker, TierCapacity
from tiertop.monitor.mrc_view import MrcView, build_view
from tiertop.tui.palette import Palette
from tiertop.tui.widgets.mrc_chart import GUTTER, chart_grid, chart_text

from tests.monitor.test_mrc_feed import loop_batches

TIERS = [TierCapacity("dram", 64, 0.9, 0.8), TierCapacity("remote", 128, 0.9, 0.8),
         TierCapacity("disk", 512, 0.9, 0.8)]


def loop_view(blocks: int = 80, rounds: int = 5) -> MrcView:
    """LRU hit ratio 0 below ``blocks`` blocks, (rounds - 1) / rounds from there; tiers at 54,
    162 and 597 blocks (cumulative effective sizes)."""
    tracker = MrcTracker(MissRatioCurve(rate=1.0, max_keys=None))
    tracker.fold_many(loop_batches(blocks, rounds))
    tracker.set_tiers(TIERS, block_bytes=16384)
    return build_view(tracker)


def column(view: MrcView, blocks: float, width: int) -> int:
    """The plot column of a size (as the chart maps it)."""
    lo, hi = math.log(view.points[0].blocks), math.log(view.points[-1].blocks)
    plot_w = width - GUTTER - 1
    return GUTTER + min(int((math.log(blocks) - lo) / (hi - lo) * plot_w), plot_w - 1)


def braille(ch: str) -> bool:
    return 0x2800 < ord(ch) <= 0x28FF


def test_the_curve_steps_where_the_loop_fits() -> None:
    view = loop_view()
    width, height = 100, 20
    grid = chart_grid(view, width, height, block_bytes=16384)
    lines = grid.lines()
    band, plot_h = 3, height - 3 - 1 - 2  # three tier labels; axis, blocks and bytes rows
    bottom, top = band + plot_h - 1, band
    assert lines[top].startswith(" 0.80 ┤") and lines[bottom].startswith(" 0.00 ┤")
    small, large = column(view, 30, width), column(view, 120, width)
    assert braille(lines[bottom][small]) and not braille(lines[top][small])
    assert braille(lines[top][large]) and not braille(lines[bottom][large])


def test_each_tier_is_marked_at_its_size_with_its_hit_ratio() -> None:
    view = loop_view()
    width, height = 100, 20
    lines = chart_grid(view, width, height, block_bytes=16384).lines()
    assert "┌ dram 0.00" in lines[0]
    assert "┌ remote 0.80" in lines[1]
    assert "disk 0.80" in lines[2]
    axis = lines[height - 3]
    points = (height - 4, 3, 3)  # the plot rows of 0.00 (dram) and 0.80 (remote, disk)
    for k, (mark, row, corner) in enumerate(zip(view.marks, points, "┌┌┐", strict=True)):
        cx = column(view, mark.cumulative_blocks, width)
        assert axis[cx] == "┴", mark.name
        assert lines[row][cx] == "◆", mark.name
        assert lines[k][cx] == corner, mark.name  # its label's corner sits on its line


def test_the_size_axis_reads_in_blocks_and_bytes() -> None:
    view = loop_view()
    lines = chart_grid(view, 100, 20, block_bytes=16384).lines()
    blocks, size = lines[-2], lines[-1]
    assert blocks.startswith("blocks 1 ") and size.startswith(" bytes 16.0K ")
    assert " 64 " in blocks and " 1.0M " in size  # 64 blocks of 16 KiB
    no_bytes = chart_grid(view, 100, 20, block_bytes=0).lines()
    assert no_bytes[-1].startswith("blocks 1 ")


def test_thin_sizes_are_dashed_when_sampling() -> None:
    exact = loop_view()
    assert "┄" not in chart_grid(exact, 100, 20).lines()[-2]  # rate 1: nothing is shaky
    sampled = dataclasses.replace(exact, rate=0.5, low_confidence_below=200)
    grid = chart_grid(sampled, 100, 20)
    axis = grid.lines()[-2]
    assert axis[column(sampled, 100, 100)] == "┄" and axis[column(sampled, 400, 100)] == "─"
    assert "dim" in grid.roles[3] and "curve" in grid.roles[3]  # the 0.8 row: dim, then not


def test_no_data_and_small_sizes_say_so_or_still_draw() -> None:
    empty = MrcTracker(MissRatioCurve(rate=1.0, max_keys=None))
    text = chart_text(build_view(empty), 80, 12, 0, Palette()).plain
    assert "no block accesses seen yet" in text
    assert chart_text(None, 80, 12, 0, Palette()).plain == "reading the curve…"
    tiny = chart_grid(loop_view(), 40, 6).lines()  # no room for labels: the curve stays
    assert any(braille(ch) for line in tiny for ch in line)
    assert not any("dram" in line for line in tiny)
