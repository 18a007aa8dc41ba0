"""Plain-text and JSON renderings of a :class:`~tiertop.monitor.state.StateModel` for
``tiertop watch`` (and anything else that wants a compact, script-friendly view).

:func:`watch_record` picks what the watch view shows into one plain dict with stable keys (the
``--json`` line); :func:`render_table` lays the same dict out as a ``top -b``-like table, so the
text and JSON modes always show the same numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

from .state import StateModel

__all__ = [
    "TIER_FIELDS",
    "fmt_bytes",
    "fmt_duration",
    "fmt_name_span",
    "fmt_rate",
    "render_table",
    "watch_record",
]

#: Keys of every tier object in a watch record, in order.
TIER_FIELDS: Final = (
    "name",
    "kind",
    "health",
    "faults",
    "emulated",
    "disabled",
    "used_bytes",
    "used_blocks",
    "capacity_bytes",
    "occupancy",
    "high_watermark",
    "low_watermark",
    "policy",
    "hit_ratio",
    "evictions_per_s",
    "promotions_per_s",
    "demotions_per_s",
    "drops_per_s",
    "bytes_in_per_s",
    "bytes_out_per_s",
    "get_p50_s",
    "get_p99_s",
)


def watch_record(
    model: StateModel, now: float | None = None, window_s: float | None = None
) -> dict[str, Any]:
    """What ``tiertop watch`` shows, as plain data with stable keys.

    Args:
        model: The state model.
        now: The caller's clock, the one its ``received_at`` values use (for the age).
        window_s: Window of rates and percentiles (default: the model's).

    Returns:
        ``{"source", "mode", "epoch", "clock", "age_s", "stale", "messages", "gaps",
        "recovered", "unrecovered", "dropped_messages", "dropped_events", "restarts",
        "control_rtt_s", "window_s", "service": {...}, "tiers": [{...}, ...],
        "other_tiers": [...]}``: ``tiers`` those with data
        (:meth:`~tiertop.monitor.state.StateModel.tier_has_data`), ``other_tiers`` the names
        only a fault or health event gave; undefined values are None.
    """
    window = model.window_s if window_s is None else window_s
    health = model.source_health(now)
    svc_window = model.service_window(window)
    stats = model.stats
    seen_requests = model.messages.get("RequestDone", 0) > 0
    request_rate = svc_window["request_rate"]
    tokens_per_s = svc_window["tokens_per_s"]
    if not seen_requests and stats is not None:  # no per-request messages: the runtime's own
        request_rate, tokens_per_s = stats.request_rate, stats.tokens_per_s
    service = {
        "request_rate": request_rate,
        "tokens_per_s": tokens_per_s,
        "queue_depth": stats.queue_depth if stats is not None else None,
        "in_flight": stats.requests_in_flight if stats is not None else None,
        "paused": stats.paused if stats is not None else None,
        "ttft_p50_s": svc_window["ttft_p50_s"],
        "ttft_p99_s": svc_window["ttft_p99_s"],
        "tpot_p50_s": svc_window["tpot_p50_s"],
        "tpot_p99_s": svc_window["tpot_p99_s"],
        "prefix_hit_ratio": svc_window["prefix_hit_ratio"],
        "recomputed_share": svc_window["recomputed_share"],
        "placement_policy": stats.placement_policy if stats is not None else "",
        "promotion_policy": stats.promotion_policy if stats is not None else "",
    }
    tiers: list[dict[str, Any]] = []
    other_tiers: list[str] = []
    for name in model.tier_names():
        tier = model.tier(name)
        assert tier is not None
        if not model.tier_has_data(name):
            other_tiers.append(name)
            continue
        w = model.tier_window(name, window)
        s = tier.sample
        info = tier.info
        tiers.append(
            {
                "name": name,
                "kind": tier.kind,
                "health": tier.health,
                "faults": list(tier.faults),
                "emulated": info.emulated if info is not None else False,
                "disabled": info.disabled if info is not None else False,
                "used_bytes": s.used_bytes if s is not None else None,
                "used_blocks": (
                    s.used_blocks if s is not None
                    else (tier.resident_blocks if tier.resident_blocks else None)
                ),
                "capacity_bytes": tier.capacity_bytes or None,
                "occupancy": tier.occupancy,
                "high_watermark": s.high_watermark if s is not None else None,
                "low_watermark": s.low_watermark if s is not None else None,
                "policy": s.eviction_policy if s is not None else "",
                "hit_ratio": w["hit_ratio"],
                "evictions_per_s": w["evictions_per_s"],
                "promotions_per_s": w["promotions_per_s"],
                "demotions_per_s": w["demotions_per_s"],
                "drops_per_s": w["drops_per_s"],
                "bytes_in_per_s": w["bytes_in_per_s"],
                "bytes_out_per_s": w["bytes_out_per_s"],
                "get_p50_s": w["get_p50_s"],
                "get_p99_s": w["get_p99_s"],
            }
        )
    age = health["age_s"]
    return {
        "source": health["source"],
        "mode": health["mode"],
        "epoch": health["epoch"],
        "clock": model.last_clock,
        "age_s": age,
        "stale": health["stale"],
        "messages": health["messages"],
        "gaps": health["gaps"],
        "recovered": health["recovered"],
        "unrecovered": health["unrecovered"],
        "dropped_messages": health["dropped_messages"],
        "dropped_events": health["dropped_events"],
        "restarts": health["restarts"],
        "control_rtt_s": health["control_rtt_s"],
        "window_s": window,
        "service": service,
        "tiers": tiers,
        "other_tiers": other_tiers,
    }


# ---------------------------------------------------------------------------------- formatting

_DASH: Final = "-"


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def fmt_bytes(n: Any) -> str:
    """``1.5G``, ``512K``, ``17B``; ``-`` when unknown."""
    if not _finite(n):
        return _DASH
    value = float(n)
    for unit in ("B", "K", "M", "G", "T", "P"):
        if abs(value) < 1024.0 or unit == "P":
            if unit == "B":
                return f"{int(value)}B"
            return f"{value:.1f}{unit}" if abs(value) < 100 else f"{value:.0f}{unit}"
        value /= 1024.0
    return _DASH  # pragma: no cover - the loop always returns


def fmt_duration(seconds: Any) -> str:
    """``850ns``, ``12.3us``, ``4.56ms``, ``1.20s``; ``-`` when unknown."""
    if not _finite(seconds):
        return _DASH
    s = float(seconds)
    if s == 0:
        return "0"
    if s < 1e-6:
        return f"{s * 1e9:.0f}ns"
    if s < 1e-3:
        return f"{s * 1e6:.1f}us"
    if s < 1.0:
        return f"{s * 1e3:.2f}ms"
    return f"{s:.2f}s"


def fmt_name_span(names: Sequence[str]) -> str:
    """``a``, ``a, b`` or ``first … last``: enough to recognise 160 rack pools by."""
    return ", ".join(names) if len(names) <= 2 else f"{names[0]} … {names[-1]}"


def fmt_rate(x: Any) -> str:
    """A per-second figure with a magnitude suffix (``12.5``, ``3.4k``, ``1.2M``)."""
    if not _finite(x):
        return _DASH
    v = float(x)
    if abs(v) >= 1e6:
        return f"{v / 1e6:.1f}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:.1f}k"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.1f}"


def _pct(x: Any) -> str:
    return f"{float(x) * 100:.1f}" if _finite(x) else _DASH


def _wm(hi: Any, lo: Any) -> str:
    if not (_finite(hi) and _finite(lo)):
        return _DASH
    return f"{float(hi):.2f}/{float(lo):.2f}"


_COLUMNS: Final = (
    ("TIER", 10, "<"),
    ("KIND", 7, "<"),
    ("HEALTH", 14, "<"),
    ("USED/CAP", 15, ">"),
    ("OCC%", 6, ">"),
    ("HI/LO", 9, ">"),
    ("POLICY", 8, "<"),
    ("HIT%", 6, ">"),
    ("EVICT/s", 8, ">"),
    ("PROMO/s", 8, ">"),
    ("DEMOT/s", 8, ">"),
    ("GETp50", 8, ">"),
    ("GETp99", 8, ">"),
)


def _row(cells: list[str]) -> str:
    parts = []
    for (_, width, align), cell in zip(_COLUMNS, cells, strict=True):
        if len(cell) > width:
            cell = cell[: width - 1] + "~"
        parts.append(f"{cell:{align}{width}}")
    return " ".join(parts).rstrip()


def render_table(record: dict[str, Any], address: str = "") -> str:
    """The watch view as text: two header lines, then one row per tier (no trailing
    newline)."""
    age = record["age_s"]
    age_text = f"{age:.1f}s" if _finite(age) else _DASH
    stale = " STALE" if record["stale"] else ""
    rtt = record["control_rtt_s"]
    epoch = record["epoch"]
    source = record["source"] or address or "?"
    line1 = (
        f"tiertop  {source}  mode {record['mode'] or '?'}  "
        f"epoch {epoch if epoch is not None else '-'}  age {age_text}{stale}  "
        f"msgs {record['messages']}  gaps {record['gaps']} (lost {record['unrecovered']})  "
        f"drops {record['dropped_messages']}  restarts {record['restarts']}"
        + (f"  rtt {fmt_duration(rtt)}" if _finite(rtt) else "")
    )
    svc = record["service"]
    queue = svc["queue_depth"]
    paused = "  PAUSED" if svc["paused"] else ""
    line2 = (
        f"service  req {fmt_rate(svc['request_rate'])}/s  tok {fmt_rate(svc['tokens_per_s'])}/s  "
        f"queue {queue if queue is not None else '-'}  "
        f"ttft p50 {fmt_duration(svc['ttft_p50_s'])} p99 {fmt_duration(svc['ttft_p99_s'])}  "
        f"tpot p50 {fmt_duration(svc['tpot_p50_s'])} p99 {fmt_duration(svc['tpot_p99_s'])}  "
        f"prefix hit {_pct(svc['prefix_hit_ratio'])}%  window {record['window_s']:g}s{paused}"
    )
    lines = [line1, line2, _row([name for name, _, _ in _COLUMNS])]
    for t in record["tiers"]:
        health = t["health"] or "?"
        if t["faults"]:
            health += "+" + ",".join(t["faults"])
        if t["disabled"]:
            health = "disabled"
        kind = t["kind"] or "?"
        if t["emulated"]:
            kind += "*"
        used = t["used_bytes"]
        cap = t["capacity_bytes"]
        if used is None and t["used_blocks"] is not None:
            used_cap = f"{t['used_blocks']} blk"
        else:
            used_cap = f"{fmt_bytes(used)}/{fmt_bytes(cap)}"
        lines.append(
            _row(
                [
                    t["name"],
                    kind,
                    health,
                    used_cap,
                    _pct(t["occupancy"]),
                    _wm(t["high_watermark"], t["low_watermark"]),
                    t["policy"] or _DASH,
                    _pct(t["hit_ratio"]),
                    fmt_rate(t["evictions_per_s"]),
                    fmt_rate(t["promotions_per_s"]),
                    fmt_rate(t["demotions_per_s"]),
                    fmt_duration(t["get_p50_s"]),
                    fmt_duration(t["get_p99_s"]),
                ]
            )
        )
    other = record.get("other_tiers") or []
    if other:
        lines.append(f"+{len(other)} tiers known only from fault events "
                     f"({fmt_name_span(other)})")
    return "\n".join(lines)
