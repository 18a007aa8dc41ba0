"""The help screen (``?`` / F1): every binding with its id, and how to read the panels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

__all__ = ["LEGEND", "HelpRow", "HelpScreen"]


@dataclass(frozen=True, slots=True)
class HelpRow:
    """One binding as the help shows it."""

    keys: str
    description: str
    binding_id: str
    group: str
    note: str = ""  # why it is disabled now ("" when it is enabled)


LEGEND = """\
[b]Reading the dashboard[/b]
  Tier bar    ▕████L███▌░░H░░▏  fill = occupancy; [b]L[/b] and [b]H[/b] mark the low and high \
watermarks.
              Above H the tier evicts (or demotes) down to L; "⚠ above high" says it in words.
  Health      OK · ⚠ DEGRADED · ✖ DOWN · ⚡ fault NAME · EMULATED (what stands in for absent \
hardware).
  Figures     rates, hit ratio and p50/p99 are over the last 5 s; sparklines span the zoom \
window (z).
  Prompt bar  where prompt tokens' KV came from: one fill character per tier, ░ = recomputed.
  Events      ↑ promote  ↓ demote  ✕ drop  ⚙ control  ⚡ fault  ⚠ health  ⟳ restart/resync.
  Status      ● LIVE · … CONNECTING · ⚠ STALE (no message for 3 s) · ❚❚ VIEW PAUSED · ✖ ERROR;
              gaps = messages missed, lost = not recovered by replay, drops = counted by the
              runtime's publisher, rtt = last control round trip.
  Replay      ▶ REPLAY 1:23.4/5:00.0 ×4 playing (position/length, speed) · ❚❚ REPLAY: paused;
              "catching up": the dashboard folds slower than the speed asks (the view lags).
              ⚠ damaged file: readable part only = the file is cut short or partly corrupt;
              what could be read plays (the warning at open says what is missing).
  Recording   ● REC FILE 1.2M = --record is writing FILE (size so far) · ✖ REC stopped: why.
  Panels      "+N tiers known only from fault events": only fault/health events name them (e.g.
              rack pools, pool@R), so no panel; ✖ ⚠ ⚡ count those down, degraded, with faults.

[b]Controls[/b] send a command to the runtime; forms check values before sending, destructive
actions ask first, and the reply (applied, or the runtime's own error) shows in the form, a
notification and the status line. Every change also appears in the event log (⚙ control).

[b]Remapping[/b]: --keymap FILE (TOML, "binding-id" = "key[,key]", e.g. set-watermarks = "W").
The command palette (ctrl+p) lists every action too; themes: t, or the palette's "Theme".
"""


class HelpScreen(ModalScreen[None]):
    """Bindings and legend; Escape, ``q``, ``?`` or F1 closes it."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 110; height: 90%;
        border: heavy $accent; background: $surface; padding: 0 1;
    }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark,f1", "close", "Close help", id="help-close"),
    ]

    def __init__(self, rows: list[HelpRow]) -> None:
        super().__init__(id="help")
        self.rows = rows

    def compose(self) -> ComposeResult:
        table = Table(box=None, expand=True, pad_edge=False, show_edge=False)
        table.add_column("key", style="bold", no_wrap=True, min_width=10)
        table.add_column("action", ratio=3)
        table.add_column("binding id", style="dim", no_wrap=True)
        group = None
        for row in self.rows:
            if row.group != group:
                group = row.group
                table.add_row(Text(group, style="bold underline"), "", "")
            action = Text(row.description)
            if row.note:
                action.append(f"  (off: {row.note})", style="dim italic")
            table.add_row(row.keys, action, row.binding_id)
        with VerticalScroll():
            yield Static(Text.from_markup("[b]tiertop · keys[/b]   Esc closes\n"))
            yield Static(table, id="help-bindings")
            yield Static(Text.from_markup("\n" + LEGEND), id="help-legend")

    def action_close(self) -> None:
        self.dismiss(None)
