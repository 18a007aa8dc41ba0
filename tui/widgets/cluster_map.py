"""A heatmap of cells (racks, or the GPUs of a rack) with a keyboard cursor.

Values are fractions 0..1 (None: no data). Few cells are drawn as numbers (``87%``); many as
shades (``··`` none, ``░░ ▒▒ ▓▓ ██`` rising), so the map reads without colour; colour is a second
channel. A cell with a fault carries ``!``. The cursor cell is drawn in reverse video, and the
screen names it in words.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.widget import Widget

from ..palette import Palette

__all__ = ["Cell", "HeatMap", "shade"]

SHADES = ("░", "▒", "▓", "█")


@dataclass(frozen=True, slots=True)
class Cell:
    """One cell: its id (rack or GPU id), value 0..1 or None, and a fault flag."""

    key: int
    value: float | None
    fault: bool = False


def shade(value: float | None) -> str:
    """The shade character of a value (``·`` for none)."""
    if value is None or not math.isfinite(value):
        return "·"
    level = min(int(max(value, 0.0) * len(SHADES)), len(SHADES) - 1)
    return SHADES[level] if value > 0 else " "


class HeatMap(Widget, can_focus=True):
    """Cells in rows; arrows move the cursor, Enter activates the cell under it."""

    DEFAULT_CSS = """
    HeatMap { height: auto; min-height: 1; padding: 0 1; }
    HeatMap:focus { background: $boost; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("left", "move(-1, 0)", "Left", show=False, id="map-left"),
        Binding("right", "move(1, 0)", "Right", show=False, id="map-right"),
        Binding("up", "move(0, -1)", "Up", show=False, id="map-up"),
        Binding("down", "move(0, 1)", "Down", show=False, id="map-down"),
        Binding("enter", "activate", "Drill down", id="map-activate"),
    ]

    class Moved(Message):
        """The cursor moved to ``key``."""

        def __init__(self, heatmap: HeatMap, key: int) -> None:
            super().__init__()
            self.heatmap = heatmap
            self.key = key

    class Activated(Message):
        """Enter on cell ``key``."""

        def __init__(self, heatmap: HeatMap, key: int) -> None:
            super().__init__()
            self.heatmap = heatmap
            self.key = key

    def __init__(self, *, numeric_up_to: int = 64, id: str | None = None) -> None:
        super().__init__(id=id)
        self.cells: list[Cell] = []
        self.cursor = 0
        self.numeric_up_to = numeric_up_to
        self.palette = Palette()
        self._last: tuple[object, ...] | None = None

    # ------------------------------------------------------------------------------ data

    @property
    def numeric(self) -> bool:
        return len(self.cells) <= self.numeric_up_to

    @property
    def cell_width(self) -> int:
        return 5 if self.numeric else 2

    @property
    def columns(self) -> int:
        width = max(self.content_size.width or 80, self.cell_width)
        return max(1, width // self.cell_width)

    def set_cells(self, cells: Sequence[Cell], palette: Palette) -> None:
        key = self.cells[self.cursor].key if self.cells else None
        self.cells = list(cells)
        self.palette = palette
        if key is not None:  # keep the cursor on the same rack/GPU
            for i, c in enumerate(self.cells):
                if c.key == key:
                    self.cursor = i
                    break
        self.cursor = min(self.cursor, max(len(self.cells) - 1, 0))
        state = (tuple(self.cells), self.cursor, palette, self.has_focus)
        if state != self._last:
            self._last = state
            self.refresh(layout=True)

    @property
    def selected(self) -> Cell | None:
        return self.cells[self.cursor] if self.cells else None

    # ---------------------------------------------------------------------------- render

    def _color(self, value: float | None) -> str:
        p = self.palette
        if value is None:
            return p.muted
        return p.ok if value < 0.6 else (p.warn if value < 0.85 else p.bad)

    def render(self) -> Text:
        out = Text(no_wrap=True)
        if not self.cells:
            out.append("no data yet", style=self.palette.muted)
            return out
        cols = self.columns
        for i, cell in enumerate(self.cells):
            if i and i % cols == 0:
                out.append("\n")
            if self.numeric:
                body = "  -" if cell.value is None else f"{round(cell.value * 100):>3}"
                body += "!" if cell.fault else "%"
                body = f"{body:<4} "
            else:
                ch = "!" if cell.fault else shade(cell.value)
                body = ch * 2
            style = self._color(cell.value)
            if i == self.cursor:
                style = f"bold reverse {style}"
            out.append(body, style=style)
        return out

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        cols = max(1, max(width, self.cell_width) // self.cell_width)
        return max(1, math.ceil(len(self.cells) / cols))

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # ---------------------------------------------------------------------------- keys

    def action_move(self, dx: int, dy: int) -> None:
        if not self.cells:
            return
        cols = self.columns
        target = self.cursor + dx + dy * cols
        if 0 <= target < len(self.cells):
            self.cursor = target
            self.refresh()
            self.post_message(self.Moved(self, self.cells[target].key))

    def action_activate(self) -> None:
        if self.cells:
            self.post_message(self.Activated(self, self.cells[self.cursor].key))
