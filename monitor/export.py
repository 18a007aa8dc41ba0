"""Turning a recording into tables (CSV, JSON lines, Parquet) and, with plots, a report.

:func:`export_recording` replays a recording once (through the same decode-and-fold path as
every replay, so the per-phase summary it writes is the one ``tiertop replay --headless``
prints) and collects one row per message of interest into the tables of :data:`TABLES`:

``tier_stats``   one row per tier per ``TierStats`` tick: occupancy, settings, cumulative
                 counters, and the interval's hit ratio and latency percentiles;
``service``      one row per tick: queue, throughput, prefix hits, memory, publisher drops;
``block_events`` one row per block event (``BlockStored``/``BlockRemoved``/``AllBlocksCleared``);
``moves``        one row per reported promotion, demotion or drop;
``requests``     one row per finished request;
``control``      one row per applied control change;
``faults``       one row per fault injected/cleared and per tier health change;
``marks``        one row per mark in the recording's index.

Every table starts with ``time_s`` (session time in seconds since the recording's start: the
axis of the summary's phases and of the plots), ``clock`` (the message's own clock as sent:
unix seconds in model mode, virtual seconds in sim mode) and ``received_at`` (unix seconds,
when the recorder received it). Column names, types and units are declared once in
:data:`TABLES` and documented in ``docs/export-schema.md``. Undefined values are empty (CSV),
``null`` (JSON lines) or null (Parquet).

The output directory gets ``TABLE.csv|jsonl|parquet`` per table, ``summary.json`` (the
per-phase summary), ``manifest.json`` (the recording, the tables with their row counts and
schema), and with plots ``plots/*.png`` and ``index.html`` (see :mod:`tiertop.monitor.plots`).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from tiertop.tiers.stats import percentile_of_counts

from .framing import Decoded
from .protocol import (
    ControlChange,
    FaultEvent,
    HealthChange,
    RequestDone,
    Snapshot,
    TierMoves,
    TierStats,
)
from .recording import Record, Recording
from .replay import Replayer
from .state import RECOMPUTE
from .summary import Phase, Summary
from .vllm_events import AllBlocksCleared, BlockRemoved, BlockStored, KvEventBatch

__all__ = [
    "FORMATS",
    "TABLES",
    "TABLE_ROWS",
    "Column",
    "ExportResult",
    "Tables",
    "collect_tables",
    "export_recording",
    "schema_markdown",
]

FORMATS: Final = ("csv", "jsonl", "parquet")


@dataclass(frozen=True, slots=True)
class Column:
    """One column of an exported table.

    Attributes:
        name: Column name.
        type: ``"float"``, ``"int"``, ``"str"`` or ``"bool"`` (Parquet: float64, int64, string,
            bool).
        unit: Unit (``"s"``, ``"bytes"``, ``"count"``, ``"fraction"``, ``"1/s"``...; ``""``
            for labels).
        description: What it is.
    """

    name: str
    type: str
    unit: str
    description: str


def _c(name: str, type_: str, unit: str, description: str) -> Column:
    return Column(name, type_, unit, description)


_TIME: Final = (
    _c("time_s", "float", "s", "session time since the start of the recording (the state "
       "model's timeline: message clocks, continued across restarts)"),
    _c("clock", "float", "s", "the message's own clock: unix seconds (model mode) or virtual "
       "seconds (sim mode)"),
    _c("received_at", "float", "s", "unix time the recorder received the message"),
)

_TIER_COUNTERS: Final = (
    ("hits", "gets that found the block"),
    ("misses", "gets that did not"),
    ("puts", "blocks stored"),
    ("promotions", "blocks moved up out of this tier"),
    ("demotions", "blocks moved down out of this tier"),
    ("drops", "blocks dropped without being kept below"),
    ("evictions", "blocks evicted to make room"),
    ("deletes", "blocks deleted on request"),
    ("bytes_in", "bytes written into the tier"),
    ("bytes_out", "bytes read out of the tier"),
    ("errors", "failed operations"),
    ("corrupt", "blocks that failed their integrity check"),
)

#: Every table's columns, in order.
TABLES: Final[dict[str, tuple[Column, ...]]] = {
    "tier_stats": (
        *_TIME,
        _c("tick", "int", "count", "tick number since the runtime (epoch) started"),
        _c("epoch", "int", "", "runtime epoch (changes on every restart)"),
        _c("tier", "str", "", "tier name"),
        _c("used_bytes", "int", "bytes", "bytes resident"),
        _c("used_blocks", "int", "count", "blocks resident"),
        _c("capacity_bytes", "int", "bytes", "capacity"),
        _c("occupancy", "float", "fraction", "used_bytes / capacity_bytes (0..1)"),
        _c("high_watermark", "float", "fraction", "fill above which the tier evicts (0..1)"),
        _c("low_watermark", "float", "fraction", "fill eviction brings it down to (0..1)"),
        _c("eviction_policy", "str", "", "eviction policy name"),
        _c("health", "str", "", "ok, degraded or down"),
        _c("faults", "str", "", "active injected faults, space-separated"),
        *(_c(name, "int", "bytes" if name.startswith("bytes") else "count",
             f"cumulative since the runtime started: {text}")
          for name, text in _TIER_COUNTERS),
        _c("interval_s", "float", "s", "message-clock seconds since the previous tick"),
        _c("hit_ratio", "float", "fraction",
           "hits / (hits + misses) over the interval (empty without gets)"),
        _c("gets", "int", "count", "get operations timed in the interval"),
        _c("get_p50_s", "float", "s", "median get latency in the interval"),
        _c("get_p99_s", "float", "s", "99th percentile get latency in the interval"),
        _c("get_mean_s", "float", "s", "mean get latency in the interval"),
        _c("put_p50_s", "float", "s", "median put latency in the interval"),
        _c("put_p99_s", "float", "s", "99th percentile put latency in the interval"),
    ),
    "service": (
        *_TIME,
        _c("tick", "int", "count", "tick number"),
        _c("epoch", "int", "", "runtime epoch"),
        _c("interval_s", "float", "s", "message-clock seconds since the previous tick"),
        _c("paused", "bool", "", "the workload is paused"),
        _c("queue_depth", "int", "count", "requests waiting"),
        _c("requests_in_flight", "int", "count", "requests being served"),
        _c("request_rate", "float", "1/s", "requests completed per second over the interval"),
        _c("tokens_per_s", "float", "1/s", "tokens generated per second over the interval"),
        _c("prefix_query_tokens", "int", "count", "prompt tokens looked up (cumulative)"),
        _c("prefix_hit_tokens", "int", "count", "prompt tokens found in a tier (cumulative)"),
        _c("placement_policy", "str", "", "placement policy name"),
        _c("promotion_policy", "str", "", "promotion policy name"),
        _c("rss_bytes", "int", "bytes", "resident set size of the runtime"),
        _c("mem_available_bytes", "int", "bytes", "memory available on the machine"),
        _c("dropped_messages", "int", "count", "messages the publisher dropped (cumulative)"),
        _c("dropped_events", "int", "count", "block events the publisher dropped (cumulative)"),
    ),
    "block_events": (
        *_TIME,
        _c("seq", "int", "count", "sequence number of the batch on its topic"),
        _c("event", "str", "", "BlockStored, BlockRemoved or AllBlocksCleared"),
        _c("tier", "str", "", "tier (the event's medium, normalised; '*' for a clear)"),
        _c("medium", "str", "", "the event's medium as sent"),
        _c("n_blocks", "int", "count", "blocks in the event"),
        _c("block_hashes", "str", "", "block hashes, hexadecimal, space-separated"),
        _c("parent_block_hash", "str", "", "hash of the block before the first (hex)"),
        _c("n_tokens", "int", "count", "token ids carried (BlockStored)"),
        _c("block_size", "int", "count", "tokens per block (BlockStored)"),
    ),
    "moves": (
        *_TIME,
        _c("kind", "str", "", "promote, demote or drop"),
        _c("block_hash", "str", "", "block hash (hex)"),
        _c("from_tier", "str", "", "tier the block left"),
        _c("to_tier", "str", "", "tier it went to (empty for a drop)"),
        _c("nbytes", "int", "bytes", "bytes moved"),
        _c("latency_s", "float", "s", "time the move took"),
        _c("reason", "str", "", "why (watermark, policy, capacity, command...)"),
        _c("sample_rate", "float", "fraction", "fraction of moves reported (1: all)"),
    ),
    "requests": (
        *_TIME,
        _c("request_id", "str", "", "request id"),
        _c("conversation_id", "str", "", "conversation id"),
        _c("ttft_s", "float", "s", "time to first token"),
        _c("tpot_s", "float", "s", "mean time per output token after the first"),
        _c("e2e_s", "float", "s", "arrival to last token"),
        _c("prompt_tokens", "int", "count", "prompt length"),
        _c("output_tokens", "int", "count", "tokens generated"),
        _c("restored_tokens", "int", "count", "prompt tokens whose KV was restored"),
        _c("recomputed_tokens", "int", "count", "prompt tokens whose KV was computed"),
        _c("served_by", "str", "", "tier that restored most prompt tokens, or 'recompute'"),
        _c("prefix_tokens", "str", "", "restored tokens by tier (JSON object)"),
        _c("fetch_bytes", "int", "bytes", "bytes fetched from all tiers"),
        _c("fetch_latency_s", "float", "s", "time spent fetching from all tiers"),
        _c("fetch_bytes_by_tier", "str", "", "bytes fetched by tier (JSON object)"),
        _c("fetch_latency_by_tier", "str", "", "fetch seconds by tier (JSON object)"),
        _c("sample_rate", "float", "fraction", "fraction of requests reported (1: all)"),
        _c("error", "str", "", "why it failed (empty when it succeeded)"),
    ),
    "control": (
        *_TIME,
        _c("command", "str", "", "command name (set_watermarks, set_policy...)"),
        _c("target", "str", "", "what it changed (a tier, workload, runtime...)"),
        _c("old", "str", "", "value before (JSON)"),
        _c("new", "str", "", "value after (JSON)"),
        _c("by", "str", "", "client that sent it"),
        _c("request_id", "str", "", "id of the command request"),
    ),
    "faults": (
        *_TIME,
        _c("kind", "str", "", "fault (injected/cleared) or health (tier health change)"),
        _c("tier", "str", "", "tier"),
        _c("fault", "str", "", "fault kind: down, slow, corrupt, full (empty for health)"),
        _c("old", "str", "", "state before (inactive/active, or ok/degraded/down)"),
        _c("new", "str", "", "state after"),
        _c("reason", "str", "", "why"),
        _c("delay_s", "float", "s", "extra latency per operation of a slow fault"),
        _c("duration_s", "float", "s", "how long the fault lasts (empty: until cleared)"),
    ),
    "marks": (
        _c("time_s", "float", "s", "session time since the start of the recording"),
        _c("received_at", "float", "s", "unix time of the mark"),
        _c("label", "str", "", "the mark's text"),
    ),
}


#: One line per table: what a row is.
TABLE_ROWS: Final[dict[str, str]] = {
    "tier_stats": "One row per tier per `TierStats` tick (4 a second by default).",
    "service": "One row per `TierStats` tick: runtime-wide figures.",
    "block_events": "One row per block event (vLLM's `BlockStored`, `BlockRemoved`, "
                    "`AllBlocksCleared`).",
    "moves": "One row per promotion, demotion or drop tiertop reported (`TierMoves`).",
    "requests": "One row per finished request (`RequestDone`).",
    "control": "One row per control change the runtime applied (`ControlChange`).",
    "faults": "One row per fault injected or cleared (`FaultEvent`) and per tier health change "
              "(`HealthChange`).",
    "marks": "One row per mark in the recording's index (`Recorder.mark`).",
}


# ------------------------------------------------------------------------------- collection


@dataclass(slots=True)
class Tables:
    """Exported tables, column-wise: ``data[table][column]`` is a list (None: undefined)."""

    data: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, columns in TABLES.items():
            self.data.setdefault(name, {c.name: [] for c in columns})

    def add(self, table: str, row: Mapping[str, Any]) -> None:
        cols = self.data[table]
        for name, values in cols.items():
            values.append(row.get(name))

    def rows(self, table: str) -> int:
        cols = self.data[table]
        return len(next(iter(cols.values()))) if cols else 0

    def column(self, table: str, name: str) -> list[Any]:
        return self.data[table][name]


def _hex(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, int):
        return f"{value & 0xFFFFFFFFFFFFFFFF:x}" if value < 0 else f"{value:x}"
    return "" if value is None else str(value)


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))


def _percentile_s(hist: Sequence[int], q: float) -> float | None:
    """A quantile of one interval's power-of-two ns histogram, in seconds (None: empty)."""
    if not hist or sum(hist) <= 0:
        return None
    return float(percentile_of_counts(list(hist), q))


class _Collector:
    """Turns decoded messages into table rows (one pass, in fold order)."""

    def __init__(self, tables: Tables, start: float) -> None:
        self.tables = tables
        self.start = start
        self._prev: dict[str, tuple[int, int]] = {}
        self._last_tick: tuple[int, int, float] | None = None

    def times(self, record: Record, clock: float | None) -> dict[str, Any]:
        t = record.t
        return {
            "time_s": t - self.start if math.isfinite(t) else 0.0,
            "clock": clock,
            "received_at": record.received_at,
        }

    def __call__(self, message: Decoded, record: Record) -> None:
        if isinstance(message, KvEventBatch):
            self._kv(message, record)
        elif isinstance(message, TierStats):
            self._stats(message, record)
        elif isinstance(message, Snapshot):
            if message.stats is not None:  # the tick a late joiner starts from
                self._stats(message.stats, record)
        elif isinstance(message, RequestDone):
            self._request(message, record)
        elif isinstance(message, TierMoves):
            self._moves(message, record)
        elif isinstance(message, ControlChange):
            self.tables.add("control", {
                **self.times(record, message.clock), "command": message.command,
                "target": message.target, "old": _json(message.old), "new": _json(message.new),
                "by": message.by, "request_id": message.request_id,
            })
        elif isinstance(message, FaultEvent):
            self.tables.add("faults", {
                **self.times(record, message.clock), "kind": "fault", "tier": message.tier,
                "fault": message.fault, "old": message.old, "new": message.new,
                "reason": message.reason, "delay_s": message.delay_s,
                "duration_s": message.duration_s,
            })
        elif isinstance(message, HealthChange):
            self.tables.add("faults", {
                **self.times(record, message.clock), "kind": "health", "tier": message.tier,
                "fault": "", "old": message.old, "new": message.new, "reason": message.reason,
                "delay_s": None, "duration_s": None,
            })

    def _kv(self, batch: KvEventBatch, record: Record) -> None:
        base = self.times(record, batch.ts)
        add = self.tables.add
        for event, tier in zip(batch.events, batch.tiers, strict=False):
            if isinstance(event, BlockStored):
                add("block_events", {
                    **base, "seq": batch.seq, "event": "BlockStored", "tier": tier,
                    "medium": event.medium or "", "n_blocks": len(event.block_hashes),
                    "block_hashes": " ".join(_hex(h) for h in event.block_hashes),
                    "parent_block_hash": _hex(event.parent_block_hash),
                    "n_tokens": len(event.token_ids), "block_size": event.block_size,
                })
            elif isinstance(event, BlockRemoved):
                add("block_events", {
                    **base, "seq": batch.seq, "event": "BlockRemoved", "tier": tier,
                    "medium": event.medium or "", "n_blocks": len(event.block_hashes),
                    "block_hashes": " ".join(_hex(h) for h in event.block_hashes),
                    "parent_block_hash": "", "n_tokens": None, "block_size": None,
                })
            elif isinstance(event, AllBlocksCleared):
                add("block_events", {
                    **base, "seq": batch.seq, "event": "AllBlocksCleared", "tier": "*",
                    "medium": "*", "n_blocks": None, "block_hashes": "",
                    "parent_block_hash": "", "n_tokens": None, "block_size": None,
                })

    def _stats(self, m: TierStats, record: Record) -> None:
        last = self._last_tick
        if last is not None and m.epoch == last[0] and m.tick <= last[1] and m.clock <= last[2]:
            return  # a duplicate (the state model skips it too)
        self._last_tick = (m.epoch, m.tick, m.clock)
        base = self.times(record, m.clock)
        add = self.tables.add
        prev = self._prev
        for s in m.tiers:
            before = prev.get(s.name)
            prev[s.name] = (s.hits, s.misses)
            hit_ratio = None
            if before is not None:
                dh, dm = s.hits - before[0], s.misses - before[1]
                if dh >= 0 and dm >= 0 and dh + dm > 0:
                    hit_ratio = dh / (dh + dm)
            get = s.latency.get("get") or []
            put = s.latency.get("put") or []
            gets = sum(get)
            row: dict[str, Any] = {
                **base, "tick": m.tick, "epoch": m.epoch, "tier": s.name,
                "used_bytes": s.used_bytes, "used_blocks": s.used_blocks,
                "capacity_bytes": s.capacity_bytes,
                "occupancy": s.used_bytes / s.capacity_bytes if s.capacity_bytes > 0 else None,
                "high_watermark": s.high_watermark, "low_watermark": s.low_watermark,
                "eviction_policy": s.eviction_policy, "health": s.health,
                "faults": " ".join(s.faults), "interval_s": m.interval_s,
                "hit_ratio": hit_ratio, "gets": gets,
                "get_p50_s": _percentile_s(get, 0.5), "get_p99_s": _percentile_s(get, 0.99),
                "get_mean_s": (s.latency_sum_ns.get("get", 0) / 1e9 / gets) if gets else None,
                "put_p50_s": _percentile_s(put, 0.5), "put_p99_s": _percentile_s(put, 0.99),
            }
            for name, _ in _TIER_COUNTERS:
                row[name] = getattr(s, name)
            add("tier_stats", row)
        add("service", {
            **base, "tick": m.tick, "epoch": m.epoch, "interval_s": m.interval_s,
            "paused": m.paused, "queue_depth": m.queue_depth,
            "requests_in_flight": m.requests_in_flight, "request_rate": m.request_rate,
            "tokens_per_s": m.tokens_per_s, "prefix_query_tokens": m.prefix_query_tokens,
            "prefix_hit_tokens": m.prefix_hit_tokens, "placement_policy": m.placement_policy,
            "promotion_policy": m.promotion_policy, "rss_bytes": m.rss_bytes,
            "mem_available_bytes": m.mem_available_bytes,
            "dropped_messages": m.dropped_messages, "dropped_events": m.dropped_events,
        })

    def _request(self, m: RequestDone, record: Record) -> None:
        restored = sum(m.prefix_tokens.values())
        best = max(m.prefix_tokens.items(), key=lambda kv: kv[1], default=("", 0))
        self.tables.add("requests", {
            **self.times(record, m.clock), "request_id": m.request_id,
            "conversation_id": m.conversation_id, "ttft_s": m.ttft_s, "tpot_s": m.tpot_s,
            "e2e_s": m.e2e_s, "prompt_tokens": m.prompt_tokens,
            "output_tokens": m.output_tokens, "restored_tokens": restored,
            "recomputed_tokens": m.recomputed_tokens,
            "served_by": best[0] if best[1] > 0 else RECOMPUTE,
            "prefix_tokens": _json(m.prefix_tokens),
            "fetch_bytes": sum(m.fetch_bytes.values()),
            "fetch_latency_s": sum(m.fetch_latency_s.values()),
            "fetch_bytes_by_tier": _json(m.fetch_bytes),
            "fetch_latency_by_tier": _json(m.fetch_latency_s),
            "sample_rate": m.sample_rate, "error": m.error,
        })

    def _moves(self, m: TierMoves, record: Record) -> None:
        add = self.tables.add
        for move in m.moves:
            clock = move.clock or m.clock
            add("moves", {
                **self.times(record, clock), "kind": move.kind, "block_hash": _hex(move.key),
                "from_tier": move.from_tier, "to_tier": move.to_tier, "nbytes": move.nbytes,
                "latency_s": move.latency_s, "reason": move.reason,
                "sample_rate": m.sample_rate,
            })


def collect_tables(
    replayer: Replayer, phases: Sequence[Phase] | None = None
) -> tuple[Tables, Summary]:
    """Replay to the end, collecting every table and the per-phase summary."""
    from .summary import summarize_replay

    tables = Tables()
    collector = _Collector(tables, replayer.start_time)
    replayer.listeners.append(collector)
    try:
        summary = summarize_replay(replayer, phases)
    finally:
        replayer.listeners.remove(collector)
    for entry in replayer.recording.index:
        if entry.kind == "mark":
            tables.add("marks", {
                "time_s": replayer.position_of(entry), "received_at": entry.received_at,
                "label": entry.label,
            })
    return tables, summary


# ---------------------------------------------------------------------------------- writing


def _cell_csv(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


def _cell_json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_csv(path: Path, columns: Sequence[Column], data: Mapping[str, list[Any]]) -> None:
    names = [c.name for c in columns]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names)
        for row in zip(*(data[n] for n in names), strict=True):
            writer.writerow([_cell_csv(v) for v in row])


def _write_jsonl(path: Path, columns: Sequence[Column], data: Mapping[str, list[Any]]) -> None:
    names = [c.name for c in columns]
    with path.open("w") as f:
        for row in zip(*(data[n] for n in names), strict=True):
            f.write(json.dumps({n: _cell_json(v) for n, v in zip(names, row, strict=True)},
                               separators=(",", ":"), allow_nan=False))
            f.write("\n")


def _write_parquet(path: Path, columns: Sequence[Column], data: Mapping[str, list[Any]]) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise RuntimeError("Parquet needs pyarrow: pip install 'tiertop[export]'") from None
    types = {"float": pa.float64(), "int": pa.int64(), "str": pa.string(), "bool": pa.bool_()}
    fields = []
    arrays = []
    for c in columns:
        values = [_cell_json(v) for v in data[c.name]]
        fields.append(pa.field(c.name, types[c.type], nullable=True,
                               metadata={"unit": c.unit, "description": c.description}))
        arrays.append(pa.array(values, type=types[c.type]))
    schema = pa.schema(fields)
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path)


_WRITERS: Final[dict[str, Callable[[Path, Sequence[Column], Mapping[str, list[Any]]], None]]] = {
    "csv": _write_csv,
    "jsonl": _write_jsonl,
    "parquet": _write_parquet,
}


@dataclass(slots=True)
class ExportResult:
    """What :func:`export_recording` wrote.

    Attributes:
        out_dir: The directory.
        files: Every file written, relative to it.
        rows: Rows per table.
        summary: The per-phase summary.
        issues: The recording's problems (and the replay's).
    """

    out_dir: Path
    files: list[str]
    rows: dict[str, int]
    summary: Summary
    issues: list[str]


def schema_markdown() -> str:
    """Every table's columns as Markdown tables (what ``docs/export-schema.md`` lists)."""
    lines: list[str] = []
    for name, columns in TABLES.items():
        lines += [f"### `{name}`", "", TABLE_ROWS[name], "",
                  "| column | type | unit | description |", "|---|---|---|---|"]
        lines += [f"| `{c.name}` | {c.type} | {c.unit or '-'} | {c.description} |"
                  for c in columns]
        lines.append("")
    return "\n".join(lines)


def export_recording(
    recording: Recording | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    fmt: str = "csv",
    *,
    plots: bool = False,
    phases: Sequence[Phase] | None = None,
) -> ExportResult:
    """Export a recording's tables (and plots) into ``out_dir`` (created if needed).

    Raises:
        ValueError: An unknown format.
        RecordingError: The file is not a readable recording.
        RuntimeError: Parquet or plots without pyarrow / matplotlib.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    replayer = Replayer(recording)
    try:
        tables, summary = collect_tables(replayer, phases)
        rec = replayer.recording
        issues = list(rec.issues) + list(replayer.issues)
        summary.info = {"recording": str(rec.path), "issues": issues}
        files: list[str] = []
        writer = _WRITERS[fmt]
        for name, columns in TABLES.items():
            filename = f"{name}.{fmt}"
            writer(out / filename, columns, tables.data[name])
            files.append(filename)
        (out / "summary.json").write_text(json.dumps(summary.as_dict(), indent=2,
                                                     allow_nan=False) + "\n")
        files.append("summary.json")
        rows = {name: tables.rows(name) for name in TABLES}
        hello = rec.hello
        manifest = {
            "recording": {
                "path": str(rec.path),
                "description": rec.describe(),
                "created_at": rec.created_at,
                "tiertop_version": rec.header.get("tiertop_version"),
                "start_time": replayer.start_time,
                "duration_s": replayer.duration_s,
                "mode": hello.mode if hello is not None else None,
                "tiers": [t.name for t in hello.tiers] if hello is not None else [],
                "issues": issues,
            },
            "format": fmt,
            "tables": {
                name: {
                    "file": f"{name}.{fmt}",
                    "rows": rows[name],
                    "columns": [
                        {"name": c.name, "type": c.type, "unit": c.unit,
                         "description": c.description}
                        for c in columns
                    ],
                }
                for name, columns in TABLES.items()
            },
        }
        if plots:
            from .plots import write_report

            files += write_report(out, tables, summary, manifest, replayer.model,
                                  replayer.start_time)
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2, allow_nan=False,
                                                      default=str) + "\n")
        files.append("manifest.json")
    finally:
        replayer.close()
    return ExportResult(out, files, rows, summary, issues)

