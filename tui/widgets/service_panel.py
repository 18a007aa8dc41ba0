"""Workload and service: request rate, queue, tokens/s, TTFT/TPOT, where prompt KV came from."""

from __future__ import annotations

from rich.text import Text

from ..format import fmt_bytes, fmt_duration, fmt_pct, fmt_rate, resample, sparkline
from ..frame import Series, ServiceFrame
from ..palette import Palette
from .text_lines import TextLines

__all__ = ["SHARE_CHARS", "ServicePanel", "service_text"]

#: Fill characters of the prompt-source bar, one per tier (fastest first), then recompute:
#: the legend names each, so the bar reads without colour.
SHARE_CHARS = ("█", "▓", "▒", "▚", "▞", "▤", "▥", "▦")
RECOMPUTE_CHAR = "░"


def _spark(s: Series, width: int, lo: float | None = None) -> str:
    return sparkline(resample(s.times, s.values, max(0, width), s.start, s.end), lo=lo)


def service_text(f: ServiceFrame, tiers: list[str], width: int, p: Palette) -> Text:
    """The panel body for ``width`` columns."""
    width = max(width, 40)
    out = Text(no_wrap=True, overflow="ellipsis")
    col = 9 + 17  # label + figure column; the sparkline fills the rest

    def row(label: str, figure: str, series: Series | None, lo: float | None = 0.0) -> None:
        out.append(f"{label:<9}", style=p.muted)
        out.append(f"{figure:<{col - 9}}", style="bold")
        if series is not None:
            out.append(_spark(series, width - col, lo), style=p.primary)
        out.append("\n")

    row("requests", f"{fmt_rate(f.request_rate)}/s", f.request_series)
    row("tokens", f"{fmt_rate(f.tokens_per_s)}/s", f.tokens_series)
    queue = "-" if f.queue_depth is None else str(f.queue_depth)
    flight = "-" if f.in_flight is None else str(f.in_flight)
    row("queue", f"{queue}  run {flight}", f.queue_series)
    row("TTFT", f"{fmt_duration(f.ttft_p50_s)}/{fmt_duration(f.ttft_p99_s)}", f.ttft_series)
    row("TPOT", f"{fmt_duration(f.tpot_p50_s)}/{fmt_duration(f.tpot_p99_s)}", f.tpot_series)

    # Where prompt tokens came from, over the figures' window.
    shares = [(name, f.restored_share_by_tier.get(name, 0.0)) for name in tiers]
    shares += [(n, v) for n, v in f.restored_share_by_tier.items() if n not in tiers]
    recompute = f.recomputed_share
    bar_w = max(10, width - 9)
    out.append(f"{'prompt':<9}", style=p.muted)
    if recompute is None and not any(v for _, v in shares):
        out.append("no requests in the window", style=p.muted)
        out.append("\n\n")
    else:
        cells = 0
        for i, (_, share) in enumerate(shares):
            n = round(share * bar_w)
            out.append(SHARE_CHARS[i % len(SHARE_CHARS)] * n, style=p.fill if i % 2 == 0
                       else p.primary)
            cells += n
        out.append(RECOMPUTE_CHAR * max(0, bar_w - cells), style=p.empty)
        out.append("\n")
        out.append(" " * 9)
        for i, (name, share) in enumerate(shares):
            out.append(f"{SHARE_CHARS[i % len(SHARE_CHARS)]} {name} {fmt_pct(share, 0)}  ")
        out.append(f"{RECOMPUTE_CHAR} recompute {fmt_pct(recompute, 0)}")
        out.append("\n")

    out.append(f"{'policy':<9}", style=p.muted)
    out.append(f"placement {f.placement_policy or '-'}  promotion {f.promotion_policy or '-'}")
    out.append("\n")
    out.append(f"{'prefix':<9}", style=p.muted)
    out.append(f"hit {fmt_pct(f.prefix_hit_ratio)}")
    if f.rss_bytes:
        out.append(f"  runtime rss {fmt_bytes(f.rss_bytes)}")
    if f.paused:
        out.append("  ❚❚ WORKLOAD PAUSED", style=f"bold {p.warn}")
    elif f.paused is not None:
        out.append("  ▶ workload running", style=p.ok)
    return out


class ServicePanel(TextLines):
    """The service panel."""

    DEFAULT_CSS = """
    ServicePanel {
        height: 11;
        border: round $panel-lighten-2;
        border-title-style: bold;
        padding: 0 1;
    }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._args: tuple[ServiceFrame, list[str], Palette] | None = None
        self.set_titles("service")

    def show(self, frame: ServiceFrame, tiers: list[str], palette: Palette) -> None:
        self._args = (frame, tiers, palette)
        self._render_now()

    def _render_now(self) -> None:
        if self._args is None:
            return
        frame, tiers, palette = self._args
        body = service_text(frame, tiers, self.content_size.width or 60, palette)
        title = "service"
        if frame.mode:
            title += f" · {frame.mode}"
        if frame.model_name:
            title += f" · {frame.model_name}"
        self.set_titles(title, "TTFT/TPOT p50/p99 · history: p99")
        self.set_text(body)

    def on_resize(self) -> None:
        self._render_now()
