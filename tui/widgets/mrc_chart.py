"""A text plot of the miss-ratio curve: hit ratio against cache size on a log axis, tiers marked.

The curve is drawn in braille (2 x 4 dots a cell), so it reads at 80x24 and gains detail at
160x48. Each tier's mark is a dotted line (``┊``) at its cumulative effective size, a ``◆`` where
it meets the curve, and a label above the plot (``dram 0.41``: the hit ratio of all tiers down
to it) joined to the line by a corner, so marks read without colour; colour is a second channel.
The size axis is in blocks, and in bytes too when the block size is known. Sizes the sample
cannot resolve yet (below ``low_confidence_below`` when sampling) are drawn dim, their axis
dashed (``┄``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
from rich.text import Text
from textual.widget import Widget
from tiertop.monitor.mrc_view import MrcView, TierMark

from ..format import fmt_bytes
from ..palette import Palette

__all__ = ["Grid", "MrcChart", "chart_grid", "chart_text"]

#: Braille dot bits by column (0, 1) and row (0 = top .. 3).
_DOTS: Final = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
_BRAILLE: Final = 0x2800
#: Left of the plot: ``" 0.50 ┤"``.
GUTTER: Final = 7
MIN_PLOT_ROWS: Final = 3
#: Tier colours after the theme's accent and success colours (a second channel only).
_VIOLET: Final = "#C678DD"
_CYAN: Final = "#56B6C2"


@dataclass
class Grid:
    """Characters and their roles (``curve``, ``dim``, ``axis``, ``mark-N``…), row by row."""

    chars: list[list[str]]
    roles: list[list[str]]

    @staticmethod
    def blank(width: int, height: int) -> Grid:
        return Grid([[" "] * width for _ in range(height)], [[""] * width for _ in range(height)])

    def put(self, row: int, col: int, text: str, role: str) -> None:
        line, roles = self.chars[row], self.roles[row]
        for i, ch in enumerate(text):
            if 0 <= col + i < len(line):
                line[col + i] = ch
                roles[col + i] = role

    def lines(self) -> list[str]:
        return ["".join(line) for line in self.chars]


def _nice_top(view: MrcView) -> float:
    """Top of the hit-ratio axis: the highest value rounded up to a tenth (at most 1)."""
    high = max([p.hit_ratio for p in view.points] + [m.cumulative_hit_ratio for m in view.marks]
               + [0.05])
    return min(1.0, math.ceil(high * 10 - 1e-9) / 10)


def chart_grid(view: MrcView, width: int, height: int, block_bytes: int = 0) -> Grid:
    """The chart as a grid of ``width`` x ``height`` cells (see the module docstring)."""
    grid = Grid.blank(max(width, 0), max(height, 0))
    plot_w = width - GUTTER - 1
    if view.sampled == 0 or not view.points or plot_w < 8:
        note = "no block accesses seen yet" if view.sampled == 0 else "too narrow to draw"
        if height:
            grid.put(height // 2, max(0, (width - len(note)) // 2), note, "muted")
        return grid
    marks = [m for m in view.marks if m.cumulative_blocks > 0]
    axis_rows = 2 if block_bytes else 1
    band = len(marks)
    if height - band - 1 - axis_rows < MIN_PLOT_ROWS:
        axis_rows = 1
    if height - band - 1 - axis_rows < MIN_PLOT_ROWS:
        band = 0  # labels give way to the curve; the screen lists the tiers in words
    plot_h = height - band - 1 - axis_rows
    if plot_h < 2:
        grid.put(0, 0, "too small to draw", "muted")
        return grid

    sizes = np.array([max(p.blocks, 1) for p in view.points], dtype=np.float64)
    hits = np.array([p.hit_ratio for p in view.points], dtype=np.float64)
    lo, hi = math.log(sizes[0]), math.log(max(sizes[-1], sizes[0] * 2))
    top = _nice_top(view)
    dots_y = 4 * plot_h

    def col_of(blocks: float) -> int:
        x = (math.log(max(blocks, 1e-9)) - lo) / (hi - lo) * plot_w
        return min(max(int(x), 0), plot_w - 1)

    def dot_row(value: float) -> int:  # 0 = bottom
        return min(max(round(value / top * (dots_y - 1)), 0), dots_y - 1)

    shaky = view.low_confidence_below if view.rate < 1 else 0  # rate 1: exact, nothing shaky
    x0 = GUTTER
    y0 = band

    # The curve, in braille: one dot column per half cell, joined vertically.
    sub = np.arange(2 * plot_w, dtype=np.float64)
    at = lo + (hi - lo) * (sub + 0.5) / (2 * plot_w)
    ys = np.interp(at, np.log(sizes), hits)
    cells = np.zeros((plot_h, plot_w), dtype=np.int64)
    prev: int | None = None
    for j, y in enumerate(ys):
        r = dot_row(float(y))
        if prev is None or prev == r:
            rows = range(r, r + 1)
        else:  # a jump: fill the dots between the previous column's and this one's
            rows = range(prev + 1, r + 1) if r > prev else range(r, prev)
        for rr in rows:
            cells[plot_h - 1 - rr // 4, j // 2] |= _DOTS[j % 2][3 - rr % 4]
        prev = r
    for cy in range(plot_h):
        for cx in range(plot_w):
            if cells[cy, cx]:
                dim = math.exp(lo + (hi - lo) * (cx + 1) / plot_w) < shaky
                grid.put(y0 + cy, x0 + cx, chr(_BRAILLE + int(cells[cy, cx])),
                         "dim" if dim else "curve")

    # The y axis.
    for cy in range(plot_h):
        grid.put(y0 + cy, 0, " " * (GUTTER - 1) + "│", "axis")
    for value in (top, top / 2, 0.0):
        cy = plot_h - 1 - dot_row(value) // 4
        grid.put(y0 + cy, 0, f"{value:>5.2f} ┤", "axis")

    # The size axis: dashed where the sample is thin, ticks at powers of two.
    axis_y = y0 + plot_h
    grid.put(axis_y, 0, " " * (GUTTER - 1) + "└", "axis")
    for cx in range(plot_w):
        thin = math.exp(lo + (hi - lo) * (cx + 1) / plot_w) < shaky
        grid.put(axis_y, x0 + cx, "┄" if thin else "─", "dim" if thin else "axis")
    _ticks(grid, axis_y, x0, plot_w, lo, hi, block_bytes if axis_rows == 2 else 0, col_of)

    # Tier marks: line, point on the curve, label in the band above.
    for k, mark in enumerate(marks):
        role = f"mark-{k}"
        cx = col_of(mark.cumulative_blocks)
        point = plot_h - 1 - dot_row(mark.cumulative_hit_ratio) // 4
        for cy in range(plot_h):
            if cy == point:
                grid.put(y0 + cy, x0 + cx, "◆", role)
            elif not cells[cy, cx]:
                grid.put(y0 + cy, x0 + cx, "┊", role)
        grid.put(axis_y, x0 + cx, "┴", role)
        if band:
            _label(grid, k, band, x0, cx, plot_w, mark, role)
    return grid


def _label(grid: Grid, row: int, band: int, x0: int, cx: int, plot_w: int, mark: TierMark,
           role: str) -> None:
    """``┌ dram 0.41`` (or ``dram 0.41 ┐`` near the right edge) on the mark's band row, and
    ``│`` below it down to the plot."""
    text = f"{mark.name} {mark.cumulative_hit_ratio:.2f}"
    if cx + 2 + len(text) <= plot_w:
        grid.put(row, x0 + cx, "┌ " + text, role)
    else:
        grid.put(row, x0 + cx - len(text) - 1, text + " ┐", role)
    for r in range(row + 1, band):
        if grid.chars[r][x0 + cx] == " ":
            grid.put(r, x0 + cx, "│", role)


def _ticks(grid: Grid, axis_y: int, x0: int, plot_w: int, lo: float, hi: float,
           block_bytes: int, col_of: Callable[[float], int]) -> None:
    """Powers of two under the axis, evenly thinned to fit: blocks, and bytes below."""
    first, last = math.ceil(lo / math.log(2) - 1e-9), math.floor(hi / math.log(2) + 1e-9)
    exponents = list(range(first, last + 1))
    if not exponents:
        return
    width = max(len(f"{2 ** k:,}") for k in exponents)
    if block_bytes:
        width = max(width, max(len(fmt_bytes(2 ** k * block_bytes)) for k in exponents))
    per_doubling = plot_w / max((hi - lo) / math.log(2), 1e-9)
    step = max(1, math.ceil((width + 2) / per_doubling))
    grid.put(axis_y + 1, 0, f"{'blocks':>{GUTTER - 1}} ", "axis")
    if block_bytes:
        grid.put(axis_y + 2, 0, f"{'bytes':>{GUTTER - 1}} ", "axis")
    for k in exponents:
        if k % step:
            continue
        cx = col_of(2.0 ** k)
        blocks = f"{2 ** k:,}"
        if cx + len(blocks) > plot_w:
            continue
        if grid.chars[axis_y][x0 + cx] in "─┄":
            grid.put(axis_y, x0 + cx, "┬", "axis")
        grid.put(axis_y + 1, x0 + cx, blocks, "axis")
        if block_bytes:
            grid.put(axis_y + 2, x0 + cx, fmt_bytes(2 ** k * block_bytes), "axis")


def _style(role: str, palette: Palette) -> str:
    mark_styles = (palette.accent, palette.ok, _VIOLET, _CYAN)
    if role.startswith("mark-"):
        return f"bold {mark_styles[int(role[5:]) % len(mark_styles)]}"
    return {"curve": f"bold {palette.fill}", "dim": palette.muted, "axis": palette.muted,
            "muted": palette.muted}.get(role, "")


def chart_text(view: MrcView | None, width: int, height: int, block_bytes: int,
               palette: Palette) -> Text:
    """The chart as Rich text (a note when there is no view yet)."""
    if view is None:
        return Text("reading the curve…", style=palette.muted)
    grid = chart_grid(view, width, height, block_bytes)
    out = Text(no_wrap=True, overflow="crop")
    for i, (chars, roles) in enumerate(zip(grid.chars, grid.roles, strict=True)):
        if i:
            out.append("\n")
        start = 0
        for j in range(1, len(chars) + 1):
            if j == len(chars) or roles[j] != roles[start]:
                out.append("".join(chars[start:j]), style=_style(roles[start], palette))
                start = j
    return out


class MrcChart(Widget):
    """The curve of an :class:`MrcView`, redrawn to the widget's size."""

    DEFAULT_CSS = """
    MrcChart { height: 1fr; min-height: 10; padding: 0 1; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.view: MrcView | None = None
        self.block_bytes = 0
        self.palette = Palette()

    def show(self, view: MrcView, block_bytes: int, palette: Palette) -> None:
        self.view, self.block_bytes, self.palette = view, block_bytes, palette
        self.refresh()

    def render(self) -> Text:
        size = self.content_size
        return chart_text(self.view, size.width, size.height, self.block_bytes, self.palette)
