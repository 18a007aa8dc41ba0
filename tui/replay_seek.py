"""The seek form of a replay: type a time, Enter goes there, a bad time is explained in place."""

from __future__ import annotations

from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from .replay_status import fmt_position, parse_position

__all__ = ["SeekScreen"]


class SeekScreen(ModalScreen[float | None]):
    """Asks for a position; dismissed with it (seconds from the start), or None on Escape.

    Args:
        position_s: Where the replay is (the field starts with it; ``+S``/``-S`` move from it).
        duration_s: Length of the recording (the largest position accepted).
    """

    DEFAULT_CSS = """
    SeekScreen { align: center middle; }
    SeekScreen > Vertical {
        width: 64; height: auto; padding: 1 2;
        border: heavy $accent; background: $surface;
    }
    SeekScreen #seek-title { text-style: bold; }
    SeekScreen #seek-note { color: $text-muted; margin-bottom: 1; }
    SeekScreen #seek-error { color: $text-error; text-style: bold; height: auto; }
    SeekScreen #seek-status { color: $text-muted; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", id="seek-cancel"),
    ]

    def __init__(self, position_s: float, duration_s: float) -> None:
        super().__init__(id="seek")
        self.position_s = position_s
        self.duration_s = duration_s
        #: The last error shown ("" when none), for tests.
        self.error = ""

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Seek to a time", id="seek-title")
            yield Static(
                f"now {fmt_position(self.position_s)} of {fmt_position(self.duration_s)}. "
                "Seconds (90), m:ss (1:30) or h:mm:ss from the start; +S or -S from here.",
                id="seek-note")
            yield Input(value=fmt_position(self.position_s), id="seek-time",
                        select_on_focus=True)
            yield Static("", id="seek-error")
            yield Static("Enter seeks · Esc cancels", id="seek-status")

    def on_mount(self) -> None:
        self.query_one("#seek-time", Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        try:
            target = parse_position(event.value, self.position_s, self.duration_s)
        except ValueError as exc:
            self.error = str(exc)
            self.query_one("#seek-error", Static).update(f"✖ {exc}")
            return
        self.dismiss(target)

    def action_cancel(self) -> None:
        self.dismiss(None)
