"""The event log: evictions, migrations, control changes, faults, health, restarts; filtered."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input

from ..frame import EventFilter, EventLine, EventsFrame
from ..palette import Palette
from .text_lines import TextLines

__all__ = ["KIND_LABELS", "EventLog", "events_text"]

#: Each kind with a symbol, so kinds read without colour.
KIND_LABELS = {
    "promote": "↑ promote",
    "demote": "↓ demote",
    "drop": "✕ drop",
    "control": "⚙ control",
    "fault": "⚡ fault",
    "health": "⚠ health",
    "restart": "⟳ restart",
    "resync": "⟳ resync",
}


def events_text(frame: EventsFrame, p: Palette, width: int = 60) -> Text:
    out = Text(no_wrap=True, overflow="ellipsis")
    if not frame.lines and not frame.pinned:
        out.append("no events" + (" match the filter" if frame.filter.active else " yet"),
                   style=p.muted)
        return out
    role = {"control": p.primary, "fault": p.bad, "health": p.warn, "restart": p.warn,
            "resync": p.muted, "drop": p.warn}
    first = True
    for line in frame.pinned:
        if not first:
            out.append("\n")
        first = False
        _line(out, line, p, role)
    if frame.pinned:
        rule = "─ latest changes above · all events below "
        out.append("\n" + rule + "─" * max(0, width - len(rule)), style=p.muted)
    for line in frame.lines:
        if not first:
            out.append("\n")
        first = False
        _line(out, line, p, role)
    return out


def _line(out: Text, line: EventLine, p: Palette, role: dict[str, str]) -> None:
    out.append(line.when, style=p.muted)
    out.append(f" {KIND_LABELS.get(line.kind, line.kind):<10} ",
               style=f"bold {role[line.kind]}" if line.kind in role else "")
    out.append(line.text)


class EventLog(Vertical):
    """The log, newest at the bottom, with a filter field (``/`` focuses it)."""

    DEFAULT_CSS = """
    EventLog {
        border: round $panel-lighten-2;
        border-title-style: bold;
        height: 1fr;
        padding: 0 1;
    }
    EventLog > Input {
        height: 1;
        border: none;
        padding: 0 1;
        background: $boost;
    }
    EventLog > Input:focus { background: $primary-background; }
    EventLog > #event-lines { height: 1fr; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "leave", "Back to the dashboard", show=False, id="events-leave"),
    ]

    class FilterChanged(Message):
        """The user changed the filter."""

        def __init__(self, flt: EventFilter) -> None:
            super().__init__()
            self.filter = flt

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.filter = EventFilter()
        self._title = "events"
        self.border_title = self._title
        self._input = Input(placeholder="/ filter: fault · kind:control · tier:dram · any text",
                            id="event-filter")
        self._lines = TextLines(id="event-lines")

    def compose(self) -> ComposeResult:
        yield self._input
        yield self._lines

    @property
    def visible_lines(self) -> int:
        """How many lines fit."""
        return max(1, self._lines.content_size.height or 10)

    def show(self, frame: EventsFrame, palette: Palette) -> None:
        body = events_text(frame, palette, self._lines.content_size.width or 60)
        title = f"events · {frame.matching:,}"
        if frame.filter.active:
            title += f" of {frame.total:,} · {frame.filter.describe()}"
        if title != self._title:  # setting it repaints the whole log
            self._title = self.border_title = title
        self._lines.set_text(body)

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.filter = EventFilter.parse(event.value).with_moves_hidden(self.filter.hide_moves)
        self.post_message(self.FilterChanged(self.filter))

    def toggle_moves(self) -> bool:
        """Hide or show block moves; returns True when they are now hidden."""
        self.filter = self.filter.with_moves_hidden(not self.filter.hide_moves)
        self.post_message(self.FilterChanged(self.filter))
        return self.filter.hide_moves

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.action_leave()

    def action_leave(self) -> None:
        self.screen.set_focus(None)

    def focus_filter(self) -> None:
        self._input.focus()
