"""Lines of Rich text drawn through Textual's line API, redrawing only the lines that changed.

A ``Static`` turns its whole text into strips again on every update (Rich text → Content →
wrapped, formatted lines), and the screen repaints all of it. The dashboard's panels change a
few times a second while a heavy message stream competes for the same interpreter lock, so that
work showed as the UI thread's largest cost (and the tail of its key-to-screen latency).

:class:`TextLines` cuts the text into lines of ``(text, style)`` pieces in one pass, keeps one
strip per distinct line, and repaints only the lines that differ from what is on screen: a line
that reads as before is neither rendered nor repainted again, and a log that scrolls by one line
renders only the new one.
"""

from __future__ import annotations

from collections.abc import Iterator

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style, StyleType
from rich.text import Text
from textual.geometry import Region, Size
from textual.selection import Selection
from textual.strip import Strip
from textual.widget import Widget

__all__ = ["Line", "TextLines", "split_lines"]

#: One line: its pieces of text, each with the style of its span ("" for none).
Line = tuple[tuple[str, StyleType], ...]


def split_lines(text: Text) -> list[Line] | None:
    """``text`` cut at its newlines into pieces, or None when its spans overlap or it has a
    style of its own (then only Rich can say what each character looks like)."""
    if text.style:
        return None
    plain = text.plain
    lines: list[Line] = []
    pieces: list[tuple[str, StyleType]] = []

    def add(chunk: str, style: StyleType) -> None:
        nonlocal pieces
        first, *rest = chunk.split("\n")
        if first:
            pieces.append((first, style))
        for part in rest:
            lines.append(tuple(pieces))
            pieces = [(part, style)] if part else []

    pos = 0
    for start, end, style in sorted(text.spans):
        if start < pos:
            return None
        if start > pos:
            add(plain[pos:start], "")
        if end > start:
            add(plain[start:end], style)
        pos = max(pos, end)
    add(plain[pos:], "")
    lines.append(tuple(pieces))
    return lines


class TextLines(Widget):
    """Shows :class:`~rich.text.Text`, one strip per line; lines longer than the widget end in
    ``…`` (the dashboard's text never wraps).

    ``render()`` returns the text, as a ``Static``'s does (tests read it; a mouse selection is
    drawn through it too).
    """

    DEFAULT_CSS = """
    TextLines { height: auto; text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self._text = Text()
        self._lines: list[Line] = []
        self._strips: dict[Line, Strip] = {}
        self._styles: dict[StyleType, Style] = {}
        self._strips_for: tuple[int, Style] | None = None  # (width, base style) they fit
        self._titles: tuple[str | None, str | None] = (None, None)

    # ------------------------------------------------------------------------------ data

    def set_text(self, text: Text) -> None:
        """Show ``text``; repaints only the lines that differ from what is shown."""
        lines = split_lines(text)
        if lines is None:  # overlapping styles: let Rich resolve them, line by line
            lines = [tuple((seg.text, seg.style or "") for seg in line.render(self.app.console))
                     for line in text.split("\n", allow_blank=True)]
        old = self._lines
        self._text, self._lines = text, lines
        if len(lines) != len(old):
            self.refresh(layout=True)
            return
        width = self.size.width
        changed = [Region(0, y, width, 1) for y, line in enumerate(lines) if line != old[y]]
        if changed:
            self.refresh(*changed)

    def set_titles(self, title: str | None, subtitle: str | None = None) -> None:
        """Set the border's title and subtitle, each only when it changed (setting one
        repaints the whole widget)."""
        old_title, old_subtitle = self._titles
        self._titles = (title, subtitle)
        if title != old_title:
            self.border_title = title
        if subtitle != old_subtitle:
            self.border_subtitle = subtitle

    # ---------------------------------------------------------------------------- render

    def render(self) -> Text:
        return self._text

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._lines)

    def render_line(self, y: int) -> Strip:
        if self.text_selection is not None:  # drawn the Static way, with the selection
            return super().render_line(y)
        width = self.size.width
        base = self.visual_style.rich_style
        if self._strips_for != (width, base):
            self._strips_for = (width, base)
            self._strips, self._styles = {}, {}
        if y >= len(self._lines):
            return Strip.blank(width, base)
        line = self._lines[y]
        strip = self._strips.get(line)
        if strip is None:
            if len(self._strips) > 4 * max(len(self._lines), 16):  # keep what is shown
                shown = set(self._lines)
                self._strips = {k: s for k, s in self._strips.items() if k in shown}
            strip = self._strips[line] = self._strip(line, width, base)
        return strip

    def _strip(self, line: Line, width: int, base: Style) -> Strip:
        length = sum(cell_len(text) for text, _ in line)
        if length > width:  # cut, with an ellipsis, the way Rich does
            text = Text.assemble(*line)
            text.truncate(width, overflow="ellipsis")
            line = tuple((seg.text, seg.style or "") for seg in text.render(self.app.console))
            length = width
        segments = list(self._segments(line, base))
        return Strip(segments, length).extend_cell_length(width, base)

    def _segments(self, line: Line, base: Style) -> Iterator[Segment]:
        styles = self._styles
        for text, style in line:
            resolved = styles.get(style)
            if resolved is None:
                resolved = styles[style] = base + self.app.console.get_style(
                    style, default=Style.null())
            yield Segment(text, resolved)

    def selection_updated(self, selection: Selection | None) -> None:
        self._strips_for = None
        super().selection_updated(selection)

    def notify_style_update(self) -> None:
        self._strips_for = None
        super().notify_style_update()
