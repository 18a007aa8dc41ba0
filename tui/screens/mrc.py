"""The miss-ratio curve screen: what hit ratio each cache size would get, tiers marked on it.

``M`` opens it from the dashboard (a view: it works read-only, in model and simulator mode).
It shows the LRU curve the session's :class:`~tiertop.monitor.mrc_feed.MrcSource` folds from the
block events, each tier's current effective capacity marked on it with the hit ratio of all tiers
down to it, the what-ifs ("if dram were twice as large..."), how many accesses were sampled at
which rate, and says plainly when there is not enough data yet. It takes one
:class:`~tiertop.monitor.mrc_feed.MrcReading` a second, not per message (from a feed beside it,
or the latest one an ingest process sent; until there is one it says it is waiting), and stands
still while the dashboard's view is paused (``p``). Escape (or ``M``) goes back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar, Final

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static
from tiertop.monitor.mrc import TierCapacity
from tiertop.monitor.mrc_feed import MIN_SAMPLED, FeedChange, MrcReading, MrcSource
from tiertop.monitor.mrc_view import MrcView

from ..format import fmt_bytes
from ..palette import Palette
from ..session import Session
from ..widgets.mrc_chart import MrcChart

__all__ = ["MrcScreen", "change_text", "describe", "fmt_ago", "fmt_sampling", "headline",
           "waiting_headline"]

#: What the screen says until its source has a curve to show.
WAITING: Final = "waiting for the curve… nothing received from the feed yet"


def fmt_sampling(rate: float) -> str:
    """``1 (every block)``, ``0.0213 (1 block in 47)``."""
    if rate >= 1:
        return "1 (every block)"
    return f"{rate:.3g} (1 block in {round(1 / rate):,})"


def fmt_ago(seconds: float) -> str:
    """``12 s``, ``3 min``, ``2.5 h``: how long ago, to the precision that matters."""
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def change_text(change: FeedChange, now: float) -> str:
    """What the feed did to the curve, how long ago, and why."""
    ago = fmt_ago(now - change.at)
    if change.kind == "pause":
        return (f"CURVE PAUSED {ago} ago: {change.why}; the dashboard's own figures come first, "
                "it restarts when the stream is lighter")
    if change.kind == "resume":
        return f"⟳ the curve restarted {ago} ago after a pause: {change.why}"
    return (f"↓ sampling lowered to {change.rate:.3g} {ago} ago, the curve restarting then: "
            f"{change.why}")


def _title(palette: Palette, policy: str, frozen: bool) -> Text:
    out = Text(no_wrap=False)
    out.append(" miss-ratio curve ", style=f"bold reverse {palette.primary}")
    out.append(f" {policy.upper()} hit ratio ↑ vs cache size → (log) · Esc back")
    if frozen:
        out.append("  ❚❚ VIEW PAUSED (p)", style=f"bold {palette.warn}")
    return out


def waiting_headline(palette: Palette, *, frozen: bool = False) -> Text:
    """The title, and that there is no curve yet (its source has not answered)."""
    out = _title(palette, "lru", frozen)
    out.append(f"\n{WAITING}", style=f"bold {palette.warn}")
    return out


def headline(view: MrcView, palette: Palette, *, frozen: bool = False,
             paused: FeedChange | None = None, now: float = 0.0) -> Text:
    """What the curve is, how much was sampled at which rate, and whether that is enough."""
    out = _title(palette, view.policy, frozen)
    out.append(f"\n{view.estimated_accesses:,} accesses · {view.sampled:,} sampled at rate "
               f"{fmt_sampling(view.rate)}")
    if view.sampled >= MIN_SAMPLED:
        out.append(f" · max hit ratio {view.max_hit_ratio:.2f}")
    if view.sampled == 0:
        out.append("\n⚠ NOT ENOUGH DATA YET: no block accesses seen; the curve is built from the "
                   "runtime's block events", style=f"bold {palette.warn}")
    elif view.sampled < MIN_SAMPLED:
        out.append(f"\n⚠ NOT ENOUGH DATA YET: {view.sampled:,} sampled accesses, the curve needs "
                   f"about {MIN_SAMPLED} before its shape means much", style=f"bold {palette.warn}")
    if paused is not None:
        out.append(f"\n⚠ {change_text(paused, now)}", style=f"bold {palette.warn}")
    return out


def describe(view: MrcView, tiers: Sequence[TierCapacity], block_bytes: int, max_keys: int,
             change: FeedChange | None, now: float, palette: Palette) -> Text:
    """The what-ifs, each tier's mark in words, and what limits the curve."""
    out = Text()
    out.append("What if", style="bold")
    out.append("  (tiers stack fastest first and behave as one LRU cache of their summed size)\n",
               style=palette.muted)
    for sentence in view.what_ifs:
        out.append(f"  • {sentence}\n")
    if not view.what_ifs:
        out.append("  none yet: needs sampled accesses and the tiers' capacities in blocks\n",
                   style=palette.muted)
    out.append("Tiers on the curve", style="bold")
    out.append("  (each holds (high + low) / 2 of its capacity on average)\n", style=palette.muted)
    watermarks = {t.name: (t.high, t.low) for t in tiers}
    for mark in view.marks:
        out.append(f"  {mark.name:<8} ", style="bold")
        if mark.capacity_blocks <= 0:
            out.append("capacity in blocks unknown: the block size is not announced yet\n",
                       style=palette.muted)
            continue
        high, low = watermarks.get(mark.name, (1.0, 1.0))
        size = f" = {fmt_bytes(mark.effective_blocks * block_bytes)}" if block_bytes else ""
        out.append(f"~{mark.effective_blocks:,} of {mark.capacity_blocks:,} blocks{size} "
                   f"(watermarks {high:.2f}/{low:.2f}) · all tiers down to it "
                   f"{mark.cumulative_hit_ratio:.2f} · its own share {mark.hit_ratio:.2f}\n")
    if not view.marks:
        out.append("  no tiers known yet (they come with the runtime's hello and statistics)\n",
                   style=palette.muted)
    notes = [f"the sample tracks {view.tracked_blocks:,} blocks; beyond {max_keys:,} its rate "
             "drops so that memory stays bounded"]
    if view.rate < 1 and view.sampled:
        notes.append(f"┄ sizes below {view.low_confidence_below:,} blocks: too few sampled "
                     "blocks to trust the curve there (drawn dim)")
    if view.coverage is not None and view.coverage < 0.99:
        notes.append(f"block events revealed {view.coverage:.0%} of the runtime's lookups: a hit "
                     "in the fastest tier moves no block, so the curve is that of the rest")
    if change is not None and change.kind != "pause":  # a pause is in the headline
        notes.append(change_text(change, now))
    out.append("Notes\n", style="bold")
    for note in notes:
        out.append(f"  {note}\n", style=palette.muted)
    out.rstrip()
    return out


class MrcScreen(Screen[None]):
    """The live miss-ratio curve of the session's block accesses."""

    DEFAULT_CSS = """
    MrcScreen #mrc-head { height: auto; background: $panel; padding: 0 1; }
    MrcScreen MrcChart { height: 2fr; min-height: 12; }
    MrcScreen #mrc-detail-box { height: 1fr; min-height: 4; }
    MrcScreen #mrc-detail { padding: 0 1; }
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Dashboard", id="mrc-back"),
    ]

    def __init__(
        self,
        session: Session,
        palette: Palette,
        *,
        frozen: Callable[[], bool] = lambda: False,
        refresh_s: float = 1.0,
    ) -> None:
        super().__init__(id="mrc")
        self.session = session
        self.palette = palette
        self.frozen = frozen
        self.refresh_s = refresh_s
        #: What is shown (kept while the view is frozen); None until the source has a curve.
        self.reading: MrcReading | None = None
        self._frozen_shown = False
        self.head = Static(id="mrc-head")
        self.chart = MrcChart(id="mrc-chart")
        self.detail = Static(id="mrc-detail")

    def compose(self) -> ComposeResult:
        yield self.head
        yield self.chart
        with VerticalScroll(id="mrc-detail-box"):
            yield self.detail
        yield Footer()

    def on_mount(self) -> None:
        self.set_interval(self.refresh_s, self.refresh_view, name="mrc-refresh")
        self.set_interval(0.1, self._follow_pause, name="mrc-pause")
        self.refresh_view()
        self.query_one("#mrc-detail-box").focus()  # arrows and page keys scroll the text

    def _follow_pause(self) -> None:
        """Answer the dashboard's pause key within a tenth of a second, not at the next
        refresh."""
        if self.frozen() != self._frozen_shown:
            self.refresh_view()

    def refresh_view(self) -> None:
        """Take the source's latest reading and redraw (ages are told on the feed's clock, the
        one its changes carry, which may be another process's)."""
        frozen = self._frozen_shown = self.frozen()
        shown = self.reading
        if frozen and shown is not None:
            self.head.update(headline(shown.view, self.palette, frozen=True, paused=shown.paused,
                                      now=shown.at))
            return
        source: MrcSource = self.session.mrc
        reading = source.reading()
        if reading is None:
            self.head.update(waiting_headline(self.palette, frozen=frozen))
            return
        self.reading = reading
        view, now = reading.view, reading.at
        self.head.update(headline(view, self.palette, frozen=frozen, paused=reading.paused,
                                  now=now))
        self.chart.show(view, reading.block_bytes, self.palette)
        self.detail.update(describe(view, reading.tiers, reading.block_bytes, reading.max_keys,
                                    reading.change, now, self.palette))

    def action_back(self) -> None:
        self.app.pop_screen()
