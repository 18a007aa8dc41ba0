"""PNG figures of a session and an HTML page with them and the summary (``export --plots``).

Figures (matplotlib, Agg backend: no display needed), time on the x axis in seconds since the
start of the recording, control changes drawn as grey dashed vertical lines (numbered, the
numbers listed under each figure and on the page) and faults as red dotted ones:

``occupancy.png``  one panel per tier: occupancy (% of capacity) per tick, with the high and
                   low watermarks as they were at each moment (they move when changed live);
``hit_ratio.png``  hit ratio per tier, from the state model's series (1 s buckets up to 15
                   minutes of session, 10 s up to 3 hours);
``latency.png``    TTFT and TPOT p50/p99 of the requests, and each tier's get latency
                   p50/p99, from the same series (log scale);
``throughput.png`` requests/s and output tokens/s, from the same series.

The series are the state model's exact per-bucket aggregates (the ones the dashboard draws);
occupancy and watermarks come from the exported ``tier_stats`` rows.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .state import StateModel
from .summary import Summary, render_summary

if TYPE_CHECKING:
    from .export import Tables

__all__ = ["FIGURES", "write_report"]

#: File name and title of each figure.
FIGURES: dict[str, str] = {
    "occupancy.png": "Occupancy per tier, with watermarks",
    "hit_ratio.png": "Hit ratio per tier",
    "latency.png": "Latency percentiles",
    "throughput.png": "Throughput",
}

_COLORS = ("#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22")


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("plots need matplotlib: pip install 'tiertop[export]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _events(tables: Tables) -> tuple[list[tuple[float, str]], list[tuple[float, str]]]:
    """(time, label) of control changes and of faults."""
    ctl = tables.data["control"]
    controls = [(t, f"{c} {tg}: {o} -> {n}") for t, c, tg, o, n in zip(
        ctl["time_s"], ctl["command"], ctl["target"], ctl["old"], ctl["new"], strict=True)]
    flt = tables.data["faults"]
    faults = [(t, f"{tier} {k} {f} {o}->{n}".replace("  ", " ")) for t, k, tier, f, o, n in zip(
        flt["time_s"], flt["kind"], flt["tier"], flt["fault"], flt["old"], flt["new"],
        strict=True)]
    return controls, faults


def _mark_events(axes: Sequence[Any], controls: Sequence[tuple[float, str]],
                 faults: Sequence[tuple[float, str]], label_top: bool = True) -> None:
    for ax in axes:
        for t, _ in controls:
            ax.axvline(t, color="0.45", linestyle="--", linewidth=0.9, zorder=1)
        for t, _ in faults:
            ax.axvline(t, color="#d62728", linestyle=":", linewidth=1.0, zorder=1)
    if label_top and axes:
        ax = axes[0]
        for i, (t, _) in enumerate(controls, 1):
            ax.annotate(str(i), xy=(t, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(2, -10), textcoords="offset points", fontsize=7, color="0.3")


def _legend_note(fig: Any, controls: Sequence[tuple[float, str]],
                 faults: Sequence[tuple[float, str]]) -> float:
    """Write the key to the event lines under the figure; the fraction of its height used."""
    parts = [f"{i}: {label} @ {t:.1f}s" for i, (t, label) in enumerate(controls[:8], 1)]
    if len(controls) > 8:
        parts.append(f"... and {len(controls) - 8} more control changes")
    if faults:
        parts.append(f"red dotted lines: {len(faults)} fault and health events")
    if not parts:
        return 0.0
    lines = textwrap.wrap("grey dashed lines = control changes.  " + ";  ".join(parts),
                          width=170)[:6]
    height_in = fig.get_figheight()
    line_in = 0.13
    fig.text(0.01, 0.008, "\n".join(lines), fontsize=6.5, color="0.3", va="bottom")
    return min(0.35, (len(lines) * line_in + 0.06) / float(height_in))


def _legend_above(ax: Any, ncol: int) -> None:
    """Legend above the axes, right-aligned, out of the data's and the event numbers' way."""
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=ncol, fontsize=7,
              frameon=False, borderaxespad=0.2)


def _shade_faults(ax: Any, t: Any, bad: Any) -> bool:
    """Shade the time spans where ``bad`` holds (a tier degraded, down or with a fault)."""
    shaded = False
    start = None
    for i, flag in enumerate(bad):
        if flag and start is None:
            start = t[i]
        elif not flag and start is not None:
            ax.axvspan(start, t[i], color="#d62728", alpha=0.10, linewidth=0)
            shaded, start = True, None
    if start is not None and len(t):
        ax.axvspan(start, t[-1], color="#d62728", alpha=0.10, linewidth=0)
        shaded = True
    return shaded


def _series(model: StateModel, tier: str | None, metric: str, start: float
            ) -> tuple[Any, Any]:
    times, values = model.series(tier, metric, None)
    keep = times >= start - 1e-9
    return times[keep] - start, values[keep]


def plot_occupancy(tables: Tables, path: Path, tiers: Sequence[str]) -> None:
    plt = _pyplot()
    ts = tables.data["tier_stats"]
    names = [t for t in tiers if t in set(ts["tier"])] or sorted(set(ts["tier"]))
    n = max(1, len(names))
    fig, axes = plt.subplots(n, 1, figsize=(10, 1.9 * n + 1.6), sharex=True, squeeze=False)
    axes = [a[0] for a in axes]
    controls, faults = _events(tables)
    any_shade = False
    for ax, name, color in zip(axes, names, _COLORS * 4, strict=False):
        rows = [i for i, t in enumerate(ts["tier"]) if t == name]
        t = np.array([ts["time_s"][i] for i in rows], dtype=float)
        occ = np.array([np.nan if ts["occupancy"][i] is None else 100 * ts["occupancy"][i]
                        for i in rows], dtype=float)
        high = np.array([100 * ts["high_watermark"][i] for i in rows], dtype=float)
        low = np.array([100 * ts["low_watermark"][i] for i in rows], dtype=float)
        bad = [ts["health"][i] != "ok" or bool(ts["faults"][i]) for i in rows]
        any_shade |= _shade_faults(ax, t, bad)
        ax.plot(t, occ, color=color, linewidth=1.2, label="occupancy")
        ax.step(t, high, where="post", color="#d62728", linestyle="--", linewidth=1.0,
                label="high watermark")
        ax.step(t, low, where="post", color="#ff7f0e", linestyle=":", linewidth=1.2,
                label="low watermark")
        ax.set_ylim(0, 105)
        ax.set_ylabel(f"{name}\n% of capacity", fontsize=8)
        ax.grid(True, alpha=0.25)
    if not names:
        axes[0].text(0.5, 0.5, "no tier statistics in this recording", ha="center",
                     transform=axes[0].transAxes)
    else:
        if any_shade:
            axes[0].axvspan(np.nan, np.nan, color="#d62728", alpha=0.10,
                            label="fault or not ok")
        _legend_above(axes[0], 4)
    axes[0].set_title("Occupancy per tier (% of capacity) with watermarks", loc="left",
                      fontsize=10)
    axes[-1].set_xlabel("session time (s)")
    _mark_events(axes, controls, faults)
    margin = _legend_note(fig, controls, faults)
    fig.tight_layout(rect=(0, margin, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_hit_ratio(model: StateModel, tables: Tables, path: Path, start: float) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.8))
    controls, faults = _events(tables)
    drawn = 0
    for name, color in zip(model.tier_names(), _COLORS * 4, strict=False):
        t, v = _series(model, name, "hit_ratio", start)
        if len(t) and np.isfinite(v).any():
            ax.plot(t, 100 * v, color=color, linewidth=1.1, label=name)
            drawn += 1
    ax.set_ylim(-2, 102)
    ax.set_ylabel("hit ratio (%)")
    ax.set_xlabel("session time (s)")
    step = model.resolution_for(None)
    ax.set_title(f"Hit ratio per tier (hits / gets per {step:g} s bucket)", loc="left",
                 fontsize=10)
    ax.grid(True, alpha=0.25)
    if drawn:
        _legend_above(ax, min(drawn, 6))
    else:
        ax.text(0.5, 0.5, "no gets recorded", ha="center", transform=ax.transAxes)
    _mark_events([ax], controls, faults)
    margin = _legend_note(fig, controls, faults)
    fig.tight_layout(rect=(0, margin, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(model: StateModel, tables: Tables, path: Path, start: float) -> None:
    plt = _pyplot()
    fig, (top, low) = plt.subplots(2, 1, figsize=(10, 6.8), sharex=True)
    controls, faults = _events(tables)
    drawn_top = 0
    for metric, color, style, label in (
        ("ttft_p50_s", "#1f77b4", "-", "TTFT p50"),
        ("ttft_p99_s", "#1f77b4", "--", "TTFT p99"),
        ("tpot_p50_s", "#2ca02c", "-", "TPOT p50"),
        ("tpot_p99_s", "#2ca02c", "--", "TPOT p99"),
    ):
        t, v = _series(model, None, metric, start)
        if len(t) and np.isfinite(v).any():
            top.plot(t, 1e3 * v, color=color, linestyle=style, linewidth=1.0, label=label)
            drawn_top += 1
    top.set_ylabel("request latency (ms)")
    top.set_title("Latency: requests (TTFT, TPOT) and tier gets, p50 and p99", loc="left",
                  fontsize=10)
    if drawn_top:
        top.set_yscale("log")
        _legend_above(top, 4)
    else:
        top.text(0.5, 0.5, "no requests recorded", ha="center", transform=top.transAxes)
    drawn = 0
    for name, color in zip(model.tier_names(), _COLORS * 4, strict=False):
        for metric, style in (("get_p50_s", "-"), ("get_p99_s", "--")):
            t, v = _series(model, name, metric, start)
            if len(t) and np.isfinite(v).any():
                low.plot(t, 1e6 * v, color=color, linestyle=style, linewidth=1.0,
                            label=f"{name} {metric[4:7]}")
                drawn += 1
    low.set_ylabel("tier get latency (us)")
    low.set_xlabel("session time (s)")
    if drawn:
        low.set_yscale("log")
        _legend_above(low, 6)
    else:
        low.text(0.5, 0.5, "no tier latencies recorded", ha="center",
                    transform=low.transAxes)
    for ax in (top, low):
        ax.grid(True, alpha=0.25, which="both")
    _mark_events([top, low], controls, faults)
    margin = _legend_note(fig, controls, faults)
    fig.tight_layout(rect=(0, margin, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_throughput(model: StateModel, tables: Tables, path: Path, start: float) -> None:
    plt = _pyplot()
    fig, (top, low) = plt.subplots(2, 1, figsize=(10, 5.2), sharex=True)
    controls, faults = _events(tables)
    step = model.resolution_for(None)
    t, v = _series(model, None, "request_rate", start)
    top.plot(t, np.nan_to_num(v), color="#1f77b4", linewidth=1.0)
    top.set_ylabel("requests/s")
    top.set_title(f"Throughput (per {step:g} s bucket)", loc="left", fontsize=10)
    t, v = _series(model, None, "tokens_per_s", start)
    low.plot(t, np.nan_to_num(v), color="#2ca02c", linewidth=1.0)
    low.set_ylabel("output tokens/s")
    low.set_xlabel("session time (s)")
    for ax in (top, low):
        ax.grid(True, alpha=0.25)
        ax.set_ylim(bottom=0)
    _mark_events([top, low], controls, faults)
    margin = _legend_note(fig, controls, faults)
    fig.tight_layout(rect=(0, margin, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _summary_html(summary: Summary) -> str:
    out: list[str] = []
    for p in summary.phases:
        s = p.service
        out.append(f"<h3>Phase {html.escape(p.name)}: {p.start_s:g}&ndash;{p.end_s:g} s"
                   f"{'' if p.complete else ' (incomplete)'}</h3>")
        facts = [
            ("requests", s.get("requests")), ("requests/s", s.get("request_rate")),
            ("tokens/s", s.get("tokens_per_s")), ("TTFT p50 (s)", s.get("ttft_p50_s")),
            ("TTFT p99 (s)", s.get("ttft_p99_s")), ("TPOT p50 (s)", s.get("tpot_p50_s")),
            ("TPOT p99 (s)", s.get("tpot_p99_s")), ("migrations", s.get("migrations")),
            ("evictions", s.get("evictions")), ("control changes", s.get("control_changes")),
            ("faults", s.get("faults")),
        ]
        out.append("<table><tr>" + "".join(f"<th>{html.escape(k)}</th>" for k, _ in facts)
                   + "</tr><tr>" + "".join(f"<td>{_fmt(v)}</td>" for _, v in facts)
                   + "</tr></table>")
        cols = ("hit_ratio", "hits", "misses", "evictions", "promotions", "demotions",
                "drops", "occupancy_mean", "occupancy_end", "get_p50_s", "get_p99_s")
        out.append("<table><tr><th>tier</th>" + "".join(f"<th>{c}</th>" for c in cols)
                   + "</tr>")
        for name, t in p.tiers.items():
            out.append(f"<tr><td>{html.escape(name)}</td>"
                       + "".join(f"<td>{_fmt(t.get(c))}</td>" for c in cols) + "</tr>")
        out.append("</table>")
    return "\n".join(out)


def _fmt(value: Any) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "&ndash;"
        if value.is_integer() and abs(value) >= 1:
            return f"{int(value):,}"
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return html.escape(str(value))


def write_report(
    out: Path,
    tables: Tables,
    summary: Summary,
    manifest: Mapping[str, Any],
    model: StateModel,
    start: float,
) -> list[str]:
    """Write ``plots/*.png`` and ``index.html`` into ``out``; the files written (relative)."""
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    tiers = model.tier_names()
    plot_occupancy(tables, plots / "occupancy.png", tiers)
    plot_hit_ratio(model, tables, plots / "hit_ratio.png", start)
    plot_latency(model, tables, plots / "latency.png", start)
    plot_throughput(model, tables, plots / "throughput.png", start)
    files = [f"plots/{name}" for name in FIGURES]
    rec = manifest.get("recording", {})
    controls, faults = _events(tables)
    table_links = " ".join(
        f'<a href="{html.escape(info["file"])}">{html.escape(name)}</a> ({info["rows"]:,} rows)'
        for name, info in manifest.get("tables", {}).items()
    )
    page = [
        "<!doctype html>",
        '<html><head><meta charset="utf-8"><title>tiertop session report</title>',
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1em}td,th{border:1px solid #ccc;"
        "padding:2px 6px;font-size:12px;text-align:right}th{background:#f3f3f3}"
        "td:first-child{text-align:left}img{max-width:100%;border:1px solid #eee}"
        "pre{background:#f7f7f7;padding:.6em;font-size:12px;overflow-x:auto}</style>",
        "</head><body>",
        "<h1>tiertop session report</h1>",
        "<pre>" + html.escape("\n".join(rec.get("description", []))) + "</pre>",
        f"<p>Tables: {table_links}</p>",
        "<h2>Summary</h2>",
        _summary_html(summary),
        "<details><summary>as text</summary><pre>" + html.escape(render_summary(summary))
        + "</pre></details>",
        "<h2>Figures</h2>",
    ]
    for name, title in FIGURES.items():
        page.append(f"<h3>{html.escape(title)}</h3><img src=\"plots/{name}\" "
                    f"alt=\"{html.escape(title)}\">")
    if controls or faults:
        page.append("<h2>Control changes and faults</h2><table><tr><th>#</th><th>time (s)"
                    "</th><th>what</th></tr>")
        for i, (t, label) in enumerate(controls, 1):
            page.append(f"<tr><td>{i}</td><td>{t:.2f}</td><td>{html.escape(label)}</td></tr>")
        for t, label in faults:
            page.append(f"<tr><td>fault</td><td>{t:.2f}</td><td>{html.escape(label)}</td></tr>")
        page.append("</table>")
    page.append("</body></html>")
    (out / "index.html").write_text("\n".join(page) + "\n")
    files.append("index.html")
    return files
