"""One tier: occupancy bar with its watermarks, sizes, health, rates, fetch latency; under the
last panel, a line for the tiers left without one (see :class:`~tiertop.tui.frame.HiddenTiers`).
"""

from __future__ import annotations

from rich.text import Text
from textual.message import Message

from ..format import (
    fmt_bytes,
    fmt_duration,
    fmt_name_span,
    fmt_pct,
    fmt_rate,
    occupancy_cells,
    resample,
    sparkline,
)
from ..frame import HiddenTiers, TierFrame
from ..palette import SEVERITY_SYMBOLS, Palette
from .text_lines import TextLines

__all__ = ["TierPanel", "health_label", "hidden_tiers_text", "tier_text"]


def health_label(t: TierFrame) -> str:
    """The tier's state in words: ``OK``, ``⚠ DEGRADED: why``, ``✖ DOWN: why``, faults."""
    if t.disabled:
        return "DISABLED"
    label = SEVERITY_SYMBOLS.get(t.health, f"⚠ {t.health.upper()}")
    if t.health != "ok" and t.health_reason:
        label += f": {t.health_reason}"
    if t.faults:
        label += "  ⚡ fault " + ",".join(t.faults)
    return label


def hidden_tiers_text(h: HiddenTiers, p: Palette) -> Text:
    """``+160 tiers known only from fault events (pool@0 … pool@159) · ⚠ 3 degraded ·
    see the event log``: how many, which, the worst state of each, in words and symbols."""
    n = len(h.names)
    out = Text(no_wrap=True, overflow="ellipsis")
    out.append(f"+{n} tier{'s' if n != 1 else ''}", style="bold")
    out.append(f" known only from fault events ({fmt_name_span(h.names)})", style=p.muted)
    down, degraded = SEVERITY_SYMBOLS["down"].split(), SEVERITY_SYMBOLS["degraded"].split()
    for count, (symbol, word), style in ((h.down, down, p.bad), (h.degraded, degraded, p.warn),
                                         (h.faulted, ("⚡", "with faults"), p.warn)):
        if count:
            out.append(" · ", style=p.muted)
            out.append(f"{symbol} {count} {word.lower()}", style=f"bold {style}")
    out.append(" · see the event log", style=p.muted)
    return out


def _rate(x: float | None, unit: str = "/s") -> str:
    return f"{fmt_rate(x)}{unit}"


def tier_text(t: TierFrame, width: int, p: Palette) -> Text:
    """The panel body for ``width`` columns."""
    width = max(width, 30)
    w = t.window
    out = Text(no_wrap=True, overflow="ellipsis")

    # Line 1: the bar with H/L marks, fill, bytes.
    used = fmt_bytes(t.used_bytes)
    cap = fmt_bytes(t.capacity_bytes or None)
    tail = f" {fmt_pct(t.occupancy):>6}  {used}/{cap}"
    bar_w = max(10, width - len(tail) - 2)
    over = (t.occupancy is not None and t.high is not None and t.occupancy > t.high + 1e-9)
    fill_style = p.bad if t.health == "down" else (p.warn if over else p.fill)
    out.append("▕", style=p.muted)
    styles = {"fill": fill_style, "empty": p.empty, "mark-fill": f"bold reverse {fill_style}",
              "mark": f"bold {p.accent}"}
    run, run_role = "", ""
    for ch, role in occupancy_cells(t.occupancy, bar_w, t.low, t.high):
        if role != run_role and run:  # one span per run of cells alike (rendering is per span)
            out.append(run, style=styles[run_role])
            run = ""
        run += ch
        run_role = role
    if run:
        out.append(run, style=styles[run_role])
    out.append("▏", style=p.muted)
    out.append(tail)
    out.append("\n")

    # Line 2: settings and the hit ratio.
    hi = f"{t.high:.2f}" if t.high is not None else "-"
    lo = f"{t.low:.2f}" if t.low is not None else "-"
    blocks = f"{t.used_blocks:,}" if t.used_blocks is not None else "-"
    out.append("hi ", style=p.muted).append(hi, style="bold")
    out.append("  lo ", style=p.muted).append(lo, style="bold")
    out.append("  blocks ", style=p.muted).append(blocks)
    out.append("  policy ", style=p.muted).append(t.policy or "-", style="bold")
    out.append("  hit ", style=p.muted).append(fmt_pct(w.get("hit_ratio")), style="bold")
    if over:
        out.append("  ⚠ above high", style=f"bold {p.warn}")
    errors = w.get("errors_per_s")
    if errors:
        out.append(f"  ⚠ {fmt_rate(errors)} errors/s", style=f"bold {p.bad}")
    out.append("\n")

    # Line 3: movement rates.
    out.append("evict ", style=p.muted).append(_rate(w.get("evictions_per_s")))
    out.append("  promote ", style=p.muted).append(_rate(w.get("promotions_per_s")))
    out.append("  demote ", style=p.muted).append(_rate(w.get("demotions_per_s")))
    out.append("  drop ", style=p.muted).append(_rate(w.get("drops_per_s")))
    out.append("  in ", style=p.muted).append(f"{fmt_bytes(w.get('bytes_in_per_s'))}/s")
    out.append("  out ", style=p.muted).append(f"{fmt_bytes(w.get('bytes_out_per_s'))}/s")
    out.append("\n")

    # Line 4: fetch latency with its p99 history.
    head = (f"get p50 {fmt_duration(w.get('get_p50_s')):>7}  "
            f"p99 {fmt_duration(w.get('get_p99_s')):>7}  ")
    peak = t.p99_series.peak()
    peak_txt = f" ≤{fmt_duration(peak)}" if peak is not None else ""
    spark_w = max(0, width - len(head) - len(peak_txt))
    s = t.p99_series
    out.append(head[:3], style=p.muted).append(head[3:])
    out.append(sparkline(resample(s.times, s.values, spark_w, s.start, s.end)), style=p.primary)
    out.append(peak_txt, style=p.muted)
    out.append("\n")

    # Line 5: occupancy history, 0..100%.
    s = t.occupancy_series
    label = "occupancy 0-100% "
    out.append(label, style=p.muted)
    out.append(
        sparkline(resample(s.times, s.values, max(0, width - len(label)), s.start, s.end),
                  lo=0.0, hi=1.0),
        style=p.fill,
    )
    out.append("\n")

    # Line 6: what the tier really is.
    what = t.description or t.kind or "?"
    if t.emulated:
        what = "EMULATED" + (f" ({t.fallback_reason})" if t.fallback_reason else "") + " · " + what
    if t.tier_read_only:
        what = "read-only · " + what
    out.append(what, style=p.muted)
    return out


class TierPanel(TextLines):
    """A tier's panel. Click it (or press its number) to make it the tier controls act on."""

    DEFAULT_CSS = """
    TierPanel {
        height: 8;
        border: round $panel-lighten-2;
        border-title-color: $text;
        border-title-style: bold;
        border-subtitle-color: $text;
        padding: 0 1;
    }
    TierPanel.-selected { border: heavy $accent; }
    TierPanel.-degraded { border-subtitle-color: $text-warning; }
    TierPanel.-down { border: heavy $error; border-subtitle-color: $text-error; }
    TierPanel.-hidden-below { height: 9; }
    """

    class Selected(Message):
        """The user clicked the panel of tier ``index``."""

        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    def __init__(self, index: int, name: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.index = index
        self.tier_name = name
        self.frame: TierFrame | None = None
        self._palette = Palette()
        self.selected = False

    def show(self, frame: TierFrame, palette: Palette, selected: bool) -> None:
        """Render ``frame`` (does nothing when nothing visible changed)."""
        self.frame = frame
        self._palette = palette
        self.index = frame.index
        self.selected = selected
        self._render_now()

    def _render_now(self) -> None:
        t = self.frame
        if t is None:
            return
        width = self.content_size.width or 80
        body = tier_text(t, width, self._palette)
        if t.hidden_below is not None:
            body.append("\n").append_text(hidden_tiers_text(t.hidden_below, self._palette))
        marker = "▶ " if self.selected else ""
        title = f"{marker}{t.index + 1} {t.name} · {t.kind or '?'}"
        self.set_titles(title, health_label(t))
        self.set_class(self.selected, "-selected")
        self.set_class(t.health == "degraded" or bool(t.faults), "-degraded")
        self.set_class(t.health == "down", "-down")
        self.set_class(t.hidden_below is not None, "-hidden-below")
        self.set_text(body)

    def on_resize(self) -> None:
        self._render_now()

    def on_click(self) -> None:
        self.post_message(self.Selected(self.index))
