"""Per-phase summaries of a session: what ``tiertop play`` and ``tiertop replay --headless`` print.

A phase is a named time range of the session (seconds from its start). For each phase the
summary gives, per tier: hits, misses and the hit ratio, evictions, promotions, demotions and
drops (migrations), bytes in and out, mean and final occupancy, and get latency percentiles;
and for the runtime: requests and failures, throughput (requests/s, tokens/s), TTFT and TPOT
percentiles, the share of prompt tokens restored from the tiers, control changes and faults.

Everything comes from the messages folded into a :class:`~tiertop.monitor.state.StateModel`, so a
live run and a replay of its recording give the same summary:

* counts (hits, evictions, requests...) are sums over the phase of the differences of the
  cumulative counters in consecutive ``TierStats`` (and of ``RequestDone`` weighted by
  ``1 / sample_rate``), taken as the messages are folded (:meth:`PhaseSummarizer.note`): exact,
  and a lost message loses no count; a runtime restart starts new baselines, as in the model;
* ratios are ratios of those counts;
* percentiles, mean occupancy and latency means are the state model's window aggregates
  (:meth:`~tiertop.monitor.state.StateModel.tier_window`,
  :meth:`~tiertop.monitor.state.StateModel.service_window`) over the phase, taken when the
  session reaches the phase's end: exact to the series resolution (1 s buckets for phases up to
  15 minutes, 10 s up to 3 hours).

Drive it like this (the replayer and the headless player do)::

    summarizer = PhaseSummarizer(model, phases)
    for message in stream:               # in the order they are folded
        model.fold(message)
        summarizer.note(message)
        summarizer.observe()             # opens/closes phases whose boundary the session passed
    summary = summarizer.finish()

``observe`` closes a phase once the session time reaches its end; to cut exactly at the
boundary, stop folding at :meth:`PhaseSummarizer.next_boundary` and call ``observe`` there
(:func:`summarize_replay` does).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from .protocol import ControlChange, FaultEvent, HealthChange, RequestDone, Snapshot, TierStats
from .state import StateModel

if TYPE_CHECKING:
    from .replay import Replayer

__all__ = [
    "Phase",
    "PhaseResult",
    "PhaseSummarizer",
    "Summary",
    "parse_phases",
    "phases_at_controls",
    "render_summary",
    "summarize_replay",
]

COUNTERS: Final = ("hits", "misses", "puts", "promotions", "demotions", "drops", "evictions",
                   "deletes", "bytes_in", "bytes_out", "errors", "corrupt")


@dataclass(frozen=True, slots=True)
class Phase:
    """A named time range: seconds from the start of the session.

    Attributes:
        name: Label.
        start_s: Start (inclusive).
        end_s: End (None: the end of the session).
    """

    name: str
    start_s: float
    end_s: float | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.start_s) or self.start_s < 0:
            raise ValueError(f"phase {self.name!r}: start must be a number >= 0")
        if self.end_s is not None and not self.end_s > self.start_s:
            raise ValueError(f"phase {self.name!r}: end {self.end_s:g} is not after start "
                             f"{self.start_s:g}")


_PHASE_RE = re.compile(r"^(?:(?P<name>[^=]+)=)?(?P<start>[^:]*):(?P<end>[^:]*)$")


def parse_phases(text: str) -> list[Phase]:
    """Phases from ``"NAME=START:END,..."`` (seconds; the name is optional, an empty START is
    0 and an empty END the end of the session), e.g. ``"warmup=0:30,burst=30:90,90:"``.

    Raises:
        ValueError: A part that is not ``[NAME=]START:END`` with numbers.
    """
    phases: list[Phase] = []
    for n, part in enumerate((p.strip() for p in text.split(",") if p.strip()), 1):
        m = _PHASE_RE.match(part)
        if m is None:
            raise ValueError(f"phase {part!r}: expected [NAME=]START:END (seconds)")
        try:
            start = float(m["start"]) if m["start"].strip() else 0.0
            end = float(m["end"]) if m["end"].strip() else None
        except ValueError:
            raise ValueError(f"phase {part!r}: START and END must be numbers of seconds") from None
        name = (m["name"] or "").strip() or f"phase {n}"
        phases.append(Phase(name, start, end))
    if not phases:
        raise ValueError("no phases given")
    return phases


def phases_at_controls(
    times_s: Sequence[float], duration_s: float, labels: Sequence[str] | None = None
) -> list[Phase]:
    """Phases split at the given times (e.g. control changes, seconds from the start): before
    the first, between consecutive ones, after the last. Each phase after the first is named
    by its start time and, when ``labels`` are given, the label of the change that starts it
    (up to its first colon)."""
    named: dict[float, str] = {}
    for i, t in enumerate(times_s):
        if 0.0 < t < duration_s and t not in named:
            label = labels[i].split(":", 1)[0].strip() if labels is not None else ""
            named[t] = f"@{_t(t)}s {label}".rstrip()
    cuts = sorted(named)
    edges = [0.0, *cuts]
    out: list[Phase] = []
    for i, start in enumerate(edges):
        end = edges[i + 1] if i + 1 < len(edges) else None
        out.append(Phase(named[start] if i else "start", start, end))
    return out


def _t(seconds: float) -> str:
    """Seconds with at most one decimal: ``30``, ``16.2``."""
    return f"{seconds:.1f}".rstrip("0").rstrip(".")


# ------------------------------------------------------------------------------------ results


@dataclass(slots=True)
class PhaseResult:
    """The summary of one phase (plain data; :meth:`as_dict` for JSON).

    Attributes:
        name: Phase name.
        start_s: Start, seconds from the session start.
        end_s: Where it ended (its end, or the end of the data when that came first).
        complete: False when the data ended before the phase's end.
        tiers: Per tier (fastest first; a tier the runtime's Hello does not list and that
            has no data in the phase, e.g. a rack pool only named by fault events, is left
            out): ``hits``, ``misses``, ``hit_ratio``, ``evictions``,
            ``promotions``, ``demotions``, ``drops``, ``puts``, ``bytes_in``, ``bytes_out``,
            ``errors``, ``corrupt`` (counts over the phase), ``occupancy_mean``,
            ``occupancy_end`` (fractions), ``used_bytes_end``, ``capacity_bytes_end``,
            ``get_p50_s``, ``get_p99_s``, ``get_mean_s`` (seconds; None without samples).
        service: ``requests``, ``failed``, ``output_tokens`` (counts, weighted by sample rate),
            ``request_rate``, ``tokens_per_s`` (per second of the phase), ``ttft_p50_s``,
            ``ttft_p99_s``, ``tpot_p50_s``, ``tpot_p99_s``, ``e2e_mean_s`` (seconds),
            ``prefix_hit_ratio``, ``restored_share``, ``recomputed_share`` (fractions),
            ``migrations`` (promotions + demotions over all tiers), ``evictions``,
            ``control_changes``, ``faults``.
    """

    name: str
    start_s: float
    end_s: float
    complete: bool
    tiers: dict[str, dict[str, Any]] = field(default_factory=dict)
    service: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end_s - self.start_s)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "start_s": self.start_s,
            "end_s": self.end_s,
            "duration_s": self.duration_s,
            "complete": self.complete,
            "tiers": {k: dict(v) for k, v in self.tiers.items()},
            "service": dict(self.service),
        }


@dataclass(slots=True)
class Summary:
    """Every phase of a session, plus who ran it.

    Attributes:
        phases: One result per phase, in the order given.
        source: ``mode``, ``source``, ``model``, ``tiers`` of the runtime.
        duration_s: Session time covered by the data.
        info: Free-form facts the caller adds (the recording's path, issues...).
    """

    phases: list[PhaseResult]
    source: dict[str, Any]
    duration_s: float
    info: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """Plain data (NaN-free: undefined values are None)."""
        return {
            "source": dict(self.source),
            "duration_s": self.duration_s,
            "info": dict(self.info),
            "phases": [p.as_dict() for p in self.phases],
        }


def _clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


@dataclass(slots=True)
class _Open:
    phase: Phase
    restarts: int
    counts: dict[str, dict[str, float]] = field(default_factory=dict)
    requests: float = 0.0
    failed: float = 0.0
    output_tokens: float = 0.0
    controls: int = 0
    faults: int = 0


class PhaseSummarizer:
    """Builds a :class:`Summary` while messages are folded into ``model`` (see the module
    docstring for how to drive it).

    Args:
        model: The state model the messages are folded into.
        phases: The phases (default: one phase ``"all"`` over the whole session).
        origin: Session time (absolute, the model's timeline) of second 0 (default: the
            model's first time when :meth:`observe` first sees data).
    """

    def __init__(
        self,
        model: StateModel,
        phases: Sequence[Phase] | None = None,
        origin: float | None = None,
    ) -> None:
        self.model = model
        self.phases = list(phases) if phases else [Phase("all", 0.0, None)]
        self.origin = origin
        self._open: dict[int, _Open] = {}
        self._done: dict[int, PhaseResult] = {}
        self._started: set[int] = set()
        self._prev: dict[str, tuple[int, ...]] = {}
        self._last_tick: tuple[int, float] | None = None
        self._position: float | None = None  # the furthest position observed
        for i, phase in enumerate(self.phases):  # phases from 0 take everything from the start
            if phase.start_s <= 0.0:
                self._started.add(i)
                self._open[i] = _Open(phase, model.restarts)

    # -------------------------------------------------------------------------- driving

    def fold(self, message: Any, received_at: float | None = None) -> None:
        """Fold one message into the model, note it and observe (the live convenience)."""
        self.model.fold(message, received_at)
        self.note(message)
        self.observe()

    def note(self, message: Any) -> None:
        """Count what one message (already folded) adds to the open phases."""
        if isinstance(message, TierStats):
            self._note_stats(message)
        elif isinstance(message, Snapshot):
            if message.stats is not None:
                self._note_stats(message.stats)
        elif isinstance(message, RequestDone):
            w = 1.0 / message.sample_rate if message.sample_rate > 0 else 1.0
            for o in self._open.values():
                o.requests += w
                if message.error:
                    o.failed += w
                else:
                    o.output_tokens += message.output_tokens * w
        elif isinstance(message, ControlChange):
            for o in self._open.values():
                o.controls += 1
        elif isinstance(message, FaultEvent | HealthChange):
            for o in self._open.values():
                o.faults += 1

    def _note_stats(self, m: TierStats) -> None:
        last = self._last_tick
        if last is not None and m.tick <= last[0] and m.clock <= last[1]:
            return  # folded before (the model ignores it too)
        self._last_tick = (m.tick, m.clock)
        prev = self._prev
        now = {s.name: tuple(getattr(s, k) for k in COUNTERS) for s in m.tiers}
        deltas: dict[str, tuple[int, ...]] = {}
        backwards = False
        for name, cur in now.items():
            before = prev.get(name)
            if before is None:
                continue
            d = tuple(a - b for a, b in zip(cur, before, strict=True))
            if min(d) < 0:
                backwards = True
                break
            deltas[name] = d
        prev.update(now)
        if backwards:
            return  # a restart: these are the new baselines
        for o in self._open.values():
            for name, d in deltas.items():
                acc = o.counts.setdefault(name, dict.fromkeys(COUNTERS, 0.0))
                for k, v in zip(COUNTERS, d, strict=True):
                    acc[k] += v

    def now_s(self) -> float | None:
        """The session's position in seconds from the origin (None before any data)."""
        latest = self.model.latest_time
        if latest is None:
            return None
        if self.origin is None:
            self.origin = self.model.first_time if self.model.first_time is not None else latest
        return latest - self.origin

    def observe(self, position_s: float | None = None) -> None:
        """Open the phases whose start the session reached; close those whose end it
        reached.

        Args:
            position_s: Where the session is, seconds from the origin, when the caller knows
                better than the last folded message (a replay stopped at a boundary with no
                record left at or before it). Default: the model's latest time.
        """
        now = self.now_s()
        if position_s is not None:
            now = position_s if now is None else max(now, position_s)
        if now is None:
            return
        if self._position is not None:
            now = max(now, self._position)
        self._position = now
        for i, phase in enumerate(self.phases):
            if i in self._done:
                continue
            if i not in self._started and phase.start_s <= now:
                self._started.add(i)
                self._open[i] = _Open(phase, self.model.restarts)
            if i in self._open and phase.end_s is not None and phase.end_s <= now:
                self._close(i, phase.end_s, complete=True)

    def next_boundary(self) -> float | None:
        """The next phase start or end not reached yet, seconds from the origin (None: no
        more). A driver that stops folding there and calls :meth:`observe` cuts exactly."""
        now = self._position if self._position is not None else self.now_s()
        pending = []
        for i, phase in enumerate(self.phases):
            if i in self._done:
                continue
            if i not in self._started:
                pending.append(phase.start_s)
            if phase.end_s is not None:
                pending.append(phase.end_s)
        later = [b for b in pending if now is None or b > now]
        return min(later) if later else None

    def finish(self) -> Summary:
        """Close what is still open at the current position; the summary (phases that never
        started come out empty, marked incomplete)."""
        now = self.now_s()
        now = 0.0 if now is None else now
        if self._position is not None:
            now = max(now, self._position)
        for i, phase in enumerate(self.phases):
            if i in self._done:
                continue
            if i not in self._open:
                self._open[i] = _Open(phase, self.model.restarts)
                self._close(i, max(phase.start_s, now), complete=False, empty=True)
                continue
            end = phase.end_s
            complete = end is None or end <= now + 1e-9
            self._close(i, now if end is None else min(end, now), complete=complete)
        hello = self.model.hello
        source = {
            "source": self.model.source,
            "mode": self.model.mode,
            "model": hello.topology.model if hello is not None else "",
            "tiers": self.model.tier_names(),
        }
        return Summary(
            phases=[self._done[i] for i in range(len(self.phases))],
            source=source,
            duration_s=max(0.0, now),
        )

    # ----------------------------------------------------------------------------- closing

    def _close(self, i: int, end_s: float, *, complete: bool, empty: bool = False) -> None:
        o = self._open.pop(i)
        phase = o.phase
        model = self.model
        span = max(end_s - phase.start_s, 0.0)
        window = span if span > 0 else None
        result = PhaseResult(phase.name, phase.start_s, end_s, complete)
        migrations = 0.0
        evictions = 0.0
        for name in model.tier_names():
            if not model.tier_has_data(name):
                continue  # only a fault or health event named it: an empty row says nothing
            c = o.counts.get(name, dict.fromkeys(COUNTERS, 0.0))
            w = model.tier_window(name, window) if not empty and window else {}
            tier = model.tier(name)
            s = tier.sample if tier is not None else None
            row: dict[str, Any] = {k: int(v) for k, v in c.items()}
            row["hit_ratio"] = _ratio(c["hits"], c["hits"] + c["misses"])
            row["occupancy_mean"] = w.get("occupancy")
            row["occupancy_end"] = tier.occupancy if tier is not None and not empty else None
            row["used_bytes_end"] = s.used_bytes if s is not None and not empty else None
            row["capacity_bytes_end"] = tier.capacity_bytes if tier is not None else None
            row["get_p50_s"] = w.get("get_p50_s")
            row["get_p99_s"] = w.get("get_p99_s")
            row["get_mean_s"] = w.get("get_mean_s")
            row = {k: _clean(v) for k, v in row.items()}
            result.tiers[name] = row
            migrations += c["promotions"] + c["demotions"]
            evictions += c["evictions"]
        sw: Mapping[str, Any] = model.service_window(window) if not empty and window else {}
        service: dict[str, Any] = {
            "requests": round(o.requests, 6),
            "failed": round(o.failed, 6),
            "output_tokens": round(o.output_tokens, 6),
            "request_rate": o.requests / span if span > 0 else None,
            "tokens_per_s": o.output_tokens / span if span > 0 else None,
            "ttft_p50_s": sw.get("ttft_p50_s"),
            "ttft_p99_s": sw.get("ttft_p99_s"),
            "tpot_p50_s": sw.get("tpot_p50_s"),
            "tpot_p99_s": sw.get("tpot_p99_s"),
            "e2e_mean_s": sw.get("e2e_mean_s"),
            "prefix_hit_ratio": sw.get("prefix_hit_ratio"),
            "restored_share": sw.get("restored_share"),
            "recomputed_share": sw.get("recomputed_share"),
            "migrations": int(migrations),
            "evictions": int(evictions),
            "control_changes": o.controls,
            "faults": o.faults,
            "restarts": model.restarts - o.restarts,
        }
        result.service = {k: _clean(v) for k, v in service.items()}
        self._done[i] = result


# ----------------------------------------------------------------------------------- drivers


def summarize_replay(replayer: Replayer, phases: Sequence[Phase] | None = None) -> Summary:
    """Replay from the current position to the end as fast as possible, cutting exactly at
    phase boundaries; the summary (positions are seconds from the recording's start)."""
    summarizer = PhaseSummarizer(replayer.model, phases, origin=replayer.start_time)

    def listener(message: Any, record: Any) -> None:
        summarizer.note(message)

    replayer.listeners.append(listener)
    try:
        while True:
            boundary = summarizer.next_boundary()
            if boundary is None or boundary > replayer.duration_s:
                break
            replayer.run_until(boundary)
            summarizer.observe(boundary)  # every record at or before it is folded
        replayer.run_until(None)
        summarizer.observe()
    finally:
        replayer.listeners.remove(listener)
    summary = summarizer.finish()
    summary.duration_s = replayer.duration_s
    return summary


# ---------------------------------------------------------------------------------- rendering


def _pct(x: Any) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _secs(x: Any) -> str:
    if x is None:
        return "-"
    if x >= 1.0:
        return f"{x:.2f}s"
    if x >= 1e-3:
        return f"{x * 1e3:.1f}ms"
    return f"{x * 1e6:.0f}us"


def _num(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and not x.is_integer():
        return f"{x:,.1f}"
    return f"{int(x):,}"


def _rate(x: Any) -> str:
    return "-" if x is None else f"{x:,.1f}"


def _bytes(x: Any) -> str:
    if x is None:
        return "-"
    v = float(x)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(v) < 1024 or unit == "GiB":
            return f"{v:.0f}{unit}" if unit == "B" else f"{v:.1f}{unit}"
        v /= 1024
    return f"{v:.1f}TiB"


TIER_COLUMNS: Final = (
    ("tier", "tier", str),
    ("hit", "hit_ratio", _pct),
    ("hits", "hits", _num),
    ("misses", "misses", _num),
    ("evict", "evictions", _num),
    ("promo", "promotions", _num),
    ("demo", "demotions", _num),
    ("drops", "drops", _num),
    ("in", "bytes_in", _bytes),
    ("occ avg", "occupancy_mean", _pct),
    ("occ end", "occupancy_end", _pct),
    ("get p50", "get_p50_s", _secs),
    ("get p99", "get_p99_s", _secs),
)


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    rows = [list(r) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*headers), *(fmt.format(*r) for r in rows)]


def render_summary(summary: Summary) -> str:
    """The summary as text: per phase, one line of runtime figures and a table of tiers."""
    lines: list[str] = []
    src = summary.source
    head = f"{src.get('mode') or '?'} mode"
    if src.get("model"):
        head += f", {src['model']}"
    if src.get("source"):
        head += f", source {src['source']}"
    lines.append(f"{head}; {summary.duration_s:.1f} s of session time")
    for p in summary.phases:
        s = p.service
        status = "" if p.complete else "  (incomplete: the data ended first)"
        lines.append("")
        lines.append(f"phase {p.name}: {_t(p.start_s)}-{_t(p.end_s)} s ({p.duration_s:.1f} s)"
                     f"{status}")
        lines.append(
            f"  requests {_num(s.get('requests'))} ({_rate(s.get('request_rate'))}/s, "
            f"{_num(s.get('failed'))} failed), tokens {_rate(s.get('tokens_per_s'))}/s, "
            f"TTFT p50 {_secs(s.get('ttft_p50_s'))} p99 {_secs(s.get('ttft_p99_s'))}, "
            f"TPOT p50 {_secs(s.get('tpot_p50_s'))} p99 {_secs(s.get('tpot_p99_s'))}")
        lines.append(
            f"  prefix hit {_pct(s.get('prefix_hit_ratio'))}, restored "
            f"{_pct(s.get('restored_share'))}, migrations {_num(s.get('migrations'))}, "
            f"evictions {_num(s.get('evictions'))}, control changes "
            f"{_num(s.get('control_changes'))}, faults {_num(s.get('faults'))}"
            + (f", restarts {s['restarts']}" if s.get("restarts") else ""))
        rows = [
            [name] + [fn(t.get(key)) for _, key, fn in TIER_COLUMNS[1:]]  # type: ignore[operator]
            for name, t in p.tiers.items()
        ]
        lines += ["  " + line for line in _table([h for h, _, _ in TIER_COLUMNS], rows)]
    for key, value in summary.info.items():
        if key == "issues":
            lines += [f"warning: {issue}" for issue in value]
    return "\n".join(lines)
