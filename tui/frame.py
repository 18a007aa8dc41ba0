"""What one refresh of the dashboard shows, read from the state model in one go.

The render timer takes the session lock, calls the builders here (plain data out: numbers,
strings, numpy arrays the model already copied), lets go of the lock, and only then turns the
frame into widgets' text. Nothing here knows a widget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from tiertop.monitor.protocol import MODE_SIM, ControlChange, TierMove
from tiertop.monitor.state import EVENT_KINDS, EventRecord, StateModel, TierState

from .format import compact, fmt_bytes, fmt_duration, unwrap
from .session import Session

__all__ = [
    "MOVE_KINDS",
    "RATE_WINDOW_S",
    "ZOOMS",
    "ChangeLog",
    "EventFilter",
    "EventLine",
    "EventsFrame",
    "Frame",
    "HiddenTiers",
    "RequestLine",
    "Series",
    "ServiceFrame",
    "StatusFrame",
    "TierFrame",
    "build_events",
    "build_frame",
    "build_requests",
    "time_label",
]

FloatArray = npt.NDArray[np.float64]

#: Zoom levels of the history (sparklines): label and seconds (None: everything kept).
ZOOMS: Final[tuple[tuple[str, float | None], ...]] = (
    ("1m", 60.0), ("5m", 300.0), ("15m", 900.0), ("all", None),
)
#: Event kinds that are block movements (the ``m`` key hides them).
MOVE_KINDS: Final = ("promote", "demote", "drop")
_CHANGE_KINDS: Final = tuple(k for k in EVENT_KINDS if k not in MOVE_KINDS)
#: Window of the figures shown as "now" (rates, ratios, percentiles), seconds.
RATE_WINDOW_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class Series:
    """One metric over the zoom window: times (timeline seconds) and values, and the span."""

    times: FloatArray
    values: FloatArray
    start: float
    end: float

    @staticmethod
    def empty() -> Series:
        z = np.zeros(0)
        return Series(z, z, 0.0, 0.0)

    def latest(self) -> float | None:
        ok = self.values[np.isfinite(self.values)]
        return float(ok[-1]) if ok.size else None

    def peak(self) -> float | None:
        ok = self.values[np.isfinite(self.values)]
        return float(ok.max()) if ok.size else None


@dataclass(frozen=True, slots=True)
class HiddenTiers:
    """Tiers left without a panel: only fault or health events named them (the simulator's
    per-rack pools, ``pool@R``, whose traffic the ``pool`` panel shows). An empty panel each
    would say nothing and bury the others; their events stay in the event log.

    Attributes:
        names: The tiers, in the model's order.
        down: Of them, how many are down now.
        degraded: How many are degraded (and not down).
        faulted: How many have an active fault but are healthy.
    """

    names: tuple[str, ...] = ()
    down: int = 0
    degraded: int = 0
    faulted: int = 0


@dataclass(frozen=True, slots=True)
class TierFrame:
    """One tier panel's data (the last panel also carries the tiers left without one)."""

    index: int
    name: str
    kind: str
    description: str
    emulated: bool
    fallback_reason: str
    disabled: bool
    tier_read_only: bool
    capacity_bytes: int
    max_capacity_bytes: int | None
    used_bytes: int | None
    used_blocks: int | None
    occupancy: float | None
    high: float | None
    low: float | None
    policy: str
    health: str
    health_reason: str
    faults: tuple[str, ...]
    window: dict[str, float | None]
    occupancy_series: Series
    p99_series: Series
    hidden_below: HiddenTiers | None = None


@dataclass(frozen=True, slots=True)
class ServiceFrame:
    """The service panel's data."""

    mode: str
    model_name: str
    request_rate: float | None
    tokens_per_s: float | None
    queue_depth: int | None
    in_flight: int | None
    paused: bool | None
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    tpot_p50_s: float | None
    tpot_p99_s: float | None
    prefix_hit_ratio: float | None
    recomputed_share: float | None
    restored_share_by_tier: dict[str, float]
    placement_policy: str
    promotion_policy: str
    rss_bytes: int | None
    request_series: Series
    tokens_series: Series
    ttft_series: Series
    tpot_series: Series
    queue_series: Series


@dataclass(frozen=True, slots=True)
class StatusFrame:
    """The status line's data."""

    target: str
    source: str
    mode: str
    epoch: int | None
    speed: float | None
    clock: float | None
    age_s: float | None
    stale: bool
    in_sync: bool | None
    messages: int
    gaps: int
    recovered: int
    unrecovered: int
    dropped: int
    restarts: int
    rtt_s: float | None
    zoom: str
    frozen: bool
    controls_off: str
    note: str
    error: str
    has_data: bool


@dataclass(frozen=True, slots=True)
class Frame:
    status: StatusFrame
    tiers: list[TierFrame]
    service: ServiceFrame
    hidden: HiddenTiers = field(default_factory=HiddenTiers)


def _series(model: StateModel, tier: str | None, metric: str, window: float | None) -> Series:
    times, values = model.series(tier, metric, window)
    if len(times) == 0:
        return Series.empty()
    end = float(times[-1])
    if window is None:
        start = model.first_time if model.first_time is not None else float(times[0])
    else:
        start = end - window
    return Series(times, values, start, end)


def _status(session: Session, now: float, zoom: str, frozen: bool) -> StatusFrame:
    model = session.model
    h = model.source_health(now)
    hello = model.hello
    return StatusFrame(
        target=session.target,
        source=h["source"],
        mode=h["mode"],
        epoch=h["epoch"],
        speed=hello.speed if hello is not None else None,
        clock=model.last_clock,
        age_s=h["age_s"],
        stale=bool(h["stale"]) and model.has_data,
        in_sync=h["in_sync"],
        messages=h["messages"],
        gaps=h["gaps"],
        recovered=h["recovered"],
        unrecovered=h["unrecovered"],
        dropped=h["dropped_messages"],
        restarts=h["restarts"],
        rtt_s=h["control_rtt_s"],
        zoom=zoom,
        frozen=frozen,
        controls_off=session.controls_disabled(),
        note=session.note,
        error=session.error or (
            f"ingest: {session.ingest.last_error}"
            if session.ingest is not None and session.ingest.last_error else ""
        ),
        has_data=model.has_data,
    )


_PANEL_MESSAGES: Final = ("Hello", "TierStats", "RequestDone", "Snapshot", "HealthChange",
                          "FaultEvent", "ControlChange")
_EVENT_MESSAGES: Final = ("TierMoves", "ControlChange", "FaultEvent", "HealthChange",
                          "Snapshot")


def _panel_tiers(model: StateModel) -> tuple[list[str], HiddenTiers]:
    """The tiers that get a panel, and those left without one (all of them get a panel when
    none has data: a note needs a panel to sit in)."""
    shown: list[str] = []
    hidden: list[TierState] = []
    for name in model.tier_names():
        tier = model.tier(name)
        if tier is None or model.tier_has_data(name):
            shown.append(name)
        else:
            hidden.append(tier)
    if not shown:
        return model.tier_names(), HiddenTiers()
    down = sum(t.health == "down" for t in hidden)
    degraded = sum(t.health == "degraded" for t in hidden)
    faulted = sum(t.health == "ok" and bool(t.faults) for t in hidden)
    return shown, HiddenTiers(tuple(t.name for t in hidden), down, degraded, faulted)


def data_versions(session: Session) -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """Counters that change when what the panels, the event log or the requests table show
    may have changed: a refresh skips reading the model again while they stay the same."""
    model = session.model
    with session.lock:
        counts = model.messages
        panels = (*(counts.get(k, 0) for k in _PANEL_MESSAGES), model.restarts)
        if model.stats is None:  # a source without TierStats: block events are the occupancy
            panels += (counts.get("KvEventBatch", 0),)
        events = (*(counts.get(k, 0) for k in _EVENT_MESSAGES), model.restarts)
        return panels, events, counts.get("RequestDone", 0)


def build_status(session: Session, now: float, zoom: str, frozen: bool) -> StatusFrame:
    """The status line alone (cheap; also used while the view is frozen)."""
    with session.lock:
        return _status(session, now, zoom, frozen)


def build_frame(session: Session, now: float, zoom: int, frozen: bool = False) -> Frame:
    """Everything the fast refresh shows (status, tier panels, service panel)."""
    label, window = ZOOMS[zoom % len(ZOOMS)]
    model = session.model
    with session.lock:
        status = _status(session, now, label, frozen)
        names, hidden = _panel_tiers(model)
        tiers: list[TierFrame] = []
        for i, name in enumerate(names):
            view = model.tier_view(name, RATE_WINDOW_S)
            counters = view["counters"]
            tiers.append(TierFrame(
                index=i,
                name=name,
                kind=view["kind"],
                description=view["description"],
                emulated=view["emulated"],
                fallback_reason=view["fallback_reason"],
                disabled=view["disabled"],
                tier_read_only=view["read_only"],
                capacity_bytes=view["capacity_bytes"],
                max_capacity_bytes=view["max_capacity_bytes"],
                used_bytes=view["used_bytes"],
                used_blocks=(view["used_blocks"] if view["used_blocks"] is not None
                             else (view["resident_blocks"] or None)),
                occupancy=view["occupancy"],
                high=view["high_watermark"],
                low=view["low_watermark"],
                policy=view["eviction_policy"],
                health=view["health"],
                health_reason=view["health_reason"],
                faults=tuple(view["faults"]),
                window={**view["window"], "errors_total": counters.get("errors"),
                        "corrupt_total": counters.get("corrupt")},
                occupancy_series=_series(model, name, "occupancy", window),
                p99_series=_series(model, name, "get_p99_s", window),
                hidden_below=hidden if hidden.names and i == len(names) - 1 else None,
            ))
        sv = model.service_view(RATE_WINDOW_S)
        latest: dict[str, Any] = sv["latest"]
        win: dict[str, Any] = sv["window"]
        seen_requests = model.messages.get("RequestDone", 0) > 0
        request_rate, tokens_per_s = win["request_rate"], win["tokens_per_s"]
        if not seen_requests and latest:  # no per-request messages: the runtime's own figures
            request_rate, tokens_per_s = latest["request_rate"], latest["tokens_per_s"]
        hello = model.hello
        service = ServiceFrame(
            mode=hello.mode if hello is not None else "",
            model_name=hello.topology.model.split(":")[0] if hello is not None else "",
            request_rate=request_rate,
            tokens_per_s=tokens_per_s,
            queue_depth=latest.get("queue_depth"),
            in_flight=latest.get("requests_in_flight"),
            paused=latest.get("paused"),
            ttft_p50_s=win["ttft_p50_s"],
            ttft_p99_s=win["ttft_p99_s"],
            tpot_p50_s=win["tpot_p50_s"],
            tpot_p99_s=win["tpot_p99_s"],
            prefix_hit_ratio=win["prefix_hit_ratio"],
            recomputed_share=win["recomputed_share"],
            restored_share_by_tier=dict(win["restored_share_by_tier"]),
            placement_policy=latest.get("placement_policy", ""),
            promotion_policy=latest.get("promotion_policy", ""),
            rss_bytes=latest.get("rss_bytes") or None,
            request_series=_series(model, None, "request_rate", window),
            tokens_series=_series(model, None, "tokens_per_s", window),
            ttft_series=_series(model, None, "ttft_p99_s", window),
            tpot_series=_series(model, None, "tpot_p99_s", window),
            queue_series=_series(model, None, "queue_depth", window),
        )
    return Frame(status, tiers, service, hidden)


# ------------------------------------------------------------------------------------- events


def time_label(clock: float, mode: str) -> str:
    """A message clock for a log line: local wall time in model mode, virtual seconds in sim."""
    if mode == MODE_SIM or clock < 1e8:  # virtual seconds (no wall clock is that small)
        return f"{clock:>9.1f}s"
    whole = math.floor(clock)
    return time.strftime("%H:%M:%S", time.localtime(whole)) + f".{int((clock - whole) * 10)}"


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What the event log keeps: kinds, a tier and text (all optional).

    Parsed from what the user types: ``kind:fault`` (or a kind name alone, e.g. ``fault``),
    ``tier:dram``, and any other words as text to look for.
    """

    kinds: tuple[str, ...] = ()
    tier: str | None = None
    text: str = ""
    hide_moves: bool = False

    @staticmethod
    def parse(typed: str) -> EventFilter:
        kinds: list[str] = []
        tier: str | None = None
        words: list[str] = []
        for word in typed.split():
            low = word.lower()
            if low.startswith("kind:"):
                kinds += [k for k in low[5:].split(",") if k]
            elif low.startswith("tier:"):
                tier = word[5:] or None
            elif low in EVENT_KINDS:
                kinds.append(low)
            else:
                words.append(word)
        return EventFilter(tuple(kinds), tier, " ".join(words))

    def with_moves_hidden(self, hide: bool) -> EventFilter:
        return EventFilter(self.kinds, self.tier, self.text, hide)

    @property
    def active(self) -> bool:
        return bool(self.kinds or self.tier or self.text or self.hide_moves)

    def wanted_kinds(self) -> tuple[str, ...] | None:
        """Kinds to ask the model for (None: all)."""
        if self.kinds:
            kinds = self.kinds
        elif self.hide_moves:
            kinds = EVENT_KINDS
        else:
            return None
        return tuple(k for k in kinds if not (self.hide_moves and k in MOVE_KINDS))

    def describe(self) -> str:
        parts = []
        if self.hide_moves:
            parts.append("moves hidden")
        if self.kinds:
            parts.append("kind " + ",".join(self.kinds))
        if self.tier:
            parts.append(f"tier {self.tier}")
        if self.text:
            parts.append(f"text {self.text!r}")
        return " · ".join(parts) or "all"


@dataclass(frozen=True, slots=True)
class EventLine:
    index: int
    when: str
    kind: str
    tier: str
    text: str


@dataclass(frozen=True, slots=True)
class EventsFrame:
    """The log's lines (oldest first), and above them the latest changes (control, faults,
    health, restarts) when block moves would have pushed them out of sight."""

    lines: list[EventLine]
    matching: int
    total: int
    filter: EventFilter = field(default_factory=EventFilter)
    pinned: list[EventLine] = field(default_factory=list)


#: Changes kept in sight above a log full of block moves.
PINNED_CHANGES: Final = 3


def _event_text(e: EventRecord) -> str:
    """The entry's text, without repeating its kind (the log shows that in its own column)."""
    item = e.item
    if isinstance(item, TierMove):
        dest = f" → {item.to_tier}" if item.to_tier else ""
        why = f" ({item.reason})" if item.reason else ""
        sampled = f" [1 in {1 / e.sample_rate:g}]" if e.sample_rate < 1.0 else ""
        return (f"{item.from_tier}{dest} {fmt_bytes(item.nbytes)} "
                f"{fmt_duration(item.latency_s)} #{item.key:x}{why}{sampled}")
    if isinstance(item, ControlChange):
        by = f"  by {item.by}" if item.by else ""
        old, new = unwrap(item.old, item.target), unwrap(item.new, item.target)
        return f"{item.command} {item.target}: {compact(old)} → {compact(new)}{by}"
    return str(e.text)


def _line(e: EventRecord, mode: str) -> EventLine:
    return EventLine(e.index, time_label(e.clock, mode), e.kind, e.tier, _event_text(e))


class ChangeLog:
    """The latest changes (control, faults, health, restarts, resyncs), kept apart from the
    model's event log, where a flood of block moves pushes them out within seconds."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self.records: list[EventRecord] = []

    def update(self, model: StateModel) -> None:
        """Take the changes the model logged since the last call (hold the session lock)."""
        last = self.records[-1].index if self.records else -1
        new = [e for e in model.events(kinds=_CHANGE_KINDS) if e.index > last]
        if new:
            self.records = (self.records + new)[-self.size:]


def build_events(
    session: Session, flt: EventFilter, limit: int, changes: ChangeLog | None = None
) -> EventsFrame:
    """The newest ``limit`` entries of the event log that pass ``flt`` (oldest first); with
    ``changes``, the latest changes older than those lines are pinned above them."""
    model = session.model
    with session.lock:
        mode = model.mode
        matched = model.events(
            kinds=flt.wanted_kinds(), tier=flt.tier, text=flt.text or None
        )
        total = len(model.events()) if flt.active else len(matched)
        pinned: list[EventLine] = []
        if changes is not None:
            changes.update(model)
            if not flt.active and limit > 2 * PINNED_CHANGES:
                tail = matched[-limit:]
                first_shown = tail[0].index if tail else 1 << 62
                older = [e for e in changes.records if e.index < first_shown][-PINNED_CHANGES:]
                if older:
                    pinned = [_line(e, mode) for e in older]
                    limit -= len(pinned) + 1  # and a rule under them
        lines = [_line(e, mode) for e in matched[-limit:]] if limit > 0 else []
    return EventsFrame(lines, len(matched), total, flt, pinned)


# ----------------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class RequestLine:
    """One row of the requests table (``cells`` in column order)."""

    key: str
    time: float
    cells: tuple[str, ...]


def build_requests(session: Session, limit: int) -> list[RequestLine]:
    """The newest ``limit`` requests, newest first, formatted."""
    model = session.model
    with session.lock:
        mode = model.mode
        rows = model.requests()[-limit:]
        out: list[RequestLine] = []
        for r in reversed(rows):
            restored = r.restored_tokens
            status = "ok" if not r.error else f"✖ {r.error}"
            out.append(RequestLine(r.request_id, r.time, (
                time_label(r.clock, mode).strip(),
                r.request_id,
                r.conversation_id or "-",
                r.served_by,
                fmt_duration(r.ttft_s) if not r.error else "-",
                fmt_duration(r.tpot_s) if not r.error and r.output_tokens > 1 else "-",
                fmt_duration(r.e2e_s) if not r.error else "-",
                f"{r.prompt_tokens} {restored}/{r.recomputed_tokens}",
                str(r.output_tokens),
                status,
            )))
    return out
