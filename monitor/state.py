"""The reader-side state model: telemetry messages folded into what a dashboard shows.

:class:`StateModel` is plain Python (numpy for the time series). The dashboard, ``tiertop
watch``, the headless player's summary, the recorder's keyframes and the exporters all fold the
same decoded messages through it, so it is deterministic: given the same messages (and the same
``received_at`` values, which only feed the connection section) it reaches the same state. Time
comes from the message clocks, never from the machine's clock.

What it keeps, all bounded in memory:

* **per-tier time series** in :class:`~tiertop.monitor.series.MultiResolutionRing` buffers (1 s
  points for 15 min, 10 s for 3 h, 60 s for 2 days by default). Rows hold additive raw
  quantities (counter deltas and the seconds they span, gauge sums, histogram counts), so
  rates, ratios and percentiles at every resolution and over every window are exact
  aggregates. Query with :meth:`StateModel.series` and :meth:`StateModel.tier_window`.
* **rates from cumulative counters**: a TierStats tick contributes the difference of its
  counters from the previous tick, over the difference of their clocks; a lost tick loses
  resolution, never totals. A counter going backwards (or a new epoch) is a runtime restart:
  baselines are reset and the restart is counted and logged.
* **latency percentiles** from the summed histogram deltas of the window (power-of-two ns
  buckets of :mod:`tiertop.tiers.stats`, read as
  :func:`~tiertop.tiers.stats.percentile_of_counts` reads them).
* **service figures** from :class:`~tiertop.monitor.protocol.RequestDone` (weighted by
  ``1 / sample_rate``): request rate, tokens/s, TTFT and TPOT percentiles, share of prompt
  tokens restored per tier vs recomputed; queue depth and prefix hits from TierStats.
* **recent events** (moves, control changes, faults, health changes, restarts, resyncs) in a
  bounded log with a filter (:meth:`StateModel.events`).
* **recent requests** in a bounded table updated in place (:meth:`StateModel.requests`).
* **source and connection health** (:meth:`StateModel.source_health`).
* **block residency** from vLLM-shaped block events (hashes per tier, capped, in a
  :class:`~tiertop.monitor.residency.BlockResidency`), which is how sources that send no
  TierStats (real engines) still show occupancy. A :class:`~tiertop.monitor.residency.BlockDigest`
  (what a run of batches did, folded elsewhere) folds through the same path as a raw batch.
* **the cluster picture** from the simulator's ``ClusterStats``: per-rack occupancy, windowed
  hit ratio and eviction rate, load, and per-GPU rows of drilled-into racks, as
  :attr:`StateModel.cluster` (a :class:`~tiertop.monitor.cluster_state.ClusterView`).

:meth:`StateModel.snapshot` returns all of it as plain, comparable data. This module never
imports Textual.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import numpy as np
import numpy.typing as npt
from tiertop.tiers.stats import N_BUCKETS, bucket_mid_s

from .cluster_state import ClusterFold, ClusterView
from .protocol import (
    ClusterStats,
    ControlChange,
    FaultEvent,
    HealthChange,
    Heartbeat,
    Hello,
    RequestDone,
    Snapshot,
    TierInfo,
    TierMove,
    TierMoves,
    TierSample,
    TierStats,
)
from .residency import DEFAULT_MAX_TRACKED_BLOCKS, BlockDigest, BlockResidency
from .series import DEFAULT_RESOLUTIONS, MultiResolutionRing, Resolution, RingWindow
from .vllm_events import KvEventBatch

__all__ = [
    "EVENT_KINDS",
    "RECOMPUTE",
    "SERVICE_METRICS",
    "TIER_METRICS",
    "EventRecord",
    "RequestRow",
    "StateModel",
    "TierState",
]

FloatArray = npt.NDArray[np.float64]

#: ``served_by`` of a request whose prompt KV was computed, not restored from any tier.
RECOMPUTE: Final = "recompute"

#: Kinds of entries in the event log.
EVENT_KINDS: Final = (
    "promote",
    "demote",
    "drop",
    "control",
    "fault",
    "health",
    "restart",
    "resync",
)

# ----------------------------------------------------------------------------- tier columns

TIER_GAUGES: Final = ("used_bytes", "used_blocks", "capacity_bytes", "high_watermark",
                      "low_watermark")
TIER_COUNTERS: Final = ("hits", "misses", "puts", "promotions", "demotions", "drops",
                        "evictions", "deletes", "bytes_in", "bytes_out", "errors", "corrupt")

_T_DT: Final = 0  # seconds of message clock the counter deltas span
_T_N: Final = 1  # TierStats samples (gauge sums divide by this)
_T_GAUGE: Final = 2  # len(TIER_GAUGES) sums
_T_CTR: Final = _T_GAUGE + len(TIER_GAUGES)  # len(TIER_COUNTERS) deltas
_T_GET_N: Final = _T_CTR + len(TIER_COUNTERS)  # get latency samples
_T_GET_SUM_NS: Final = _T_GET_N + 1
_T_RESTORED: Final = _T_GET_SUM_NS + 1  # prompt tokens restored from this tier (RequestDone)
_T_FETCH_BYTES: Final = _T_RESTORED + 1
_T_FETCH_S: Final = _T_FETCH_BYTES + 1
_T_KV_STORED: Final = _T_FETCH_S + 1  # blocks in BlockStored events
_T_KV_REMOVED: Final = _T_KV_STORED + 1  # blocks in BlockRemoved events
_T_RES_SUM: Final = _T_KV_REMOVED + 1  # resident blocks from block events, summed per batch
_T_RES_N: Final = _T_RES_SUM + 1
_T_HIST: Final = _T_RES_N + 1  # get latency histogram, N_BUCKETS counts
_T_WIDTH: Final = _T_HIST + N_BUCKETS
_T_SCALARS: Final = _T_HIST  # columns before the histogram

# --------------------------------------------------------------------------- service columns

#: Request latency histograms: 4 buckets per octave from 2**-14 s (61 us) to 2**10 s; bucket 0
#: holds anything shorter, the last one anything longer.
_RQ_PER_OCTAVE: Final = 4
_RQ_LOW_EXP: Final = -14
_RQ_HIGH_EXP: Final = 10
_RQ_OFFSET: Final = 1 - _RQ_LOW_EXP * _RQ_PER_OCTAVE
RQ_BUCKETS: Final = (_RQ_HIGH_EXP - _RQ_LOW_EXP) * _RQ_PER_OCTAVE + 2

_S_DT: Final = 0
_S_N: Final = 1
_S_QUEUE: Final = 2
_S_IN_FLIGHT: Final = 3
_S_PAUSED: Final = 4
_S_PREFIX_Q: Final = 5
_S_PREFIX_HIT: Final = 6
_S_REQUESTS: Final = 7
_S_FAILED: Final = 8
_S_PROMPT: Final = 9
_S_OUTPUT: Final = 10
_S_RECOMPUTED: Final = 11
_S_RESTORED: Final = 12
_S_TTFT_SUM: Final = 13
_S_TPOT_SUM: Final = 14
_S_TPOT_N: Final = 15
_S_E2E_SUM: Final = 16
_S_BLOCK_EVENTS: Final = 17
_S_MOVES: Final = 18
_S_TTFT_HIST: Final = 19
_S_TPOT_HIST: Final = _S_TTFT_HIST + RQ_BUCKETS
_S_WIDTH: Final = _S_TPOT_HIST + RQ_BUCKETS

_GET_MIDS: Final[FloatArray] = np.array([bucket_mid_s(i) for i in range(N_BUCKETS)])
_RQ_MIDS: Final[FloatArray] = 2.0 ** (
    (np.arange(RQ_BUCKETS, dtype=np.float64) - _RQ_OFFSET + 0.5) / _RQ_PER_OCTAVE
)
_NAN: Final = float("nan")
_KV_BATCH: Final = KvEventBatch.__name__


def request_bucket(seconds: float) -> int:
    """Bucket of a request latency in the service histograms."""
    if not seconds > 0.0:  # also NaN
        return 0
    if math.isinf(seconds):
        return RQ_BUCKETS - 1
    i = math.floor(math.log2(seconds) * _RQ_PER_OCTAVE) + _RQ_OFFSET
    return 0 if i < 0 else (RQ_BUCKETS - 1 if i >= RQ_BUCKETS else i)


def percentiles_of_rows(hist: FloatArray, q: float, mids: FloatArray) -> FloatArray:
    """The ``q``-quantile of each row of histogram counts (NaN for empty rows).

    Reads like :func:`tiertop.tiers.stats.percentile_of_counts`: the first bucket whose
    cumulative count reaches ``q * total``, at the bucket's representative value.
    """
    if hist.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    total = hist.sum(axis=1)
    cum = np.cumsum(hist, axis=1)
    rank = np.maximum(q * total, np.finfo(np.float64).tiny)
    idx = np.minimum((cum < rank[:, np.newaxis]).sum(axis=1), hist.shape[1] - 1)
    out: FloatArray = mids[idx]
    return np.where(total > 0, out, _NAN)


def _div(a: FloatArray, b: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        out: FloatArray = np.where(b > 0, a / np.where(b > 0, b, 1.0), _NAN)
    return out


# A metric: (raw rows, covered seconds per row) -> values per row.
_Metric = Callable[[FloatArray, FloatArray], FloatArray]


def _mean_of(col: int, n_col: int) -> _Metric:
    return lambda r, s: _div(r[:, col], r[:, n_col])


def _tier_metrics() -> dict[str, _Metric]:
    m: dict[str, _Metric] = {}
    for i, name in enumerate(TIER_GAUGES):
        m[name] = _mean_of(_T_GAUGE + i, _T_N)
    used, cap = _T_GAUGE + 0, _T_GAUGE + 2
    m["occupancy"] = lambda r, s: _div(r[:, used], r[:, cap])
    hits, misses = _T_CTR + 0, _T_CTR + 1
    m["hit_ratio"] = lambda r, s: _div(r[:, hits], r[:, hits] + r[:, misses])
    for i, name in enumerate(TIER_COUNTERS):
        m[f"{name}_per_s"] = _mean_of(_T_CTR + i, _T_DT)
    m["get_p50_s"] = lambda r, s: percentiles_of_rows(r[:, _T_HIST:], 0.5, _GET_MIDS)
    m["get_p99_s"] = lambda r, s: percentiles_of_rows(r[:, _T_HIST:], 0.99, _GET_MIDS)
    m["get_mean_s"] = lambda r, s: _div(r[:, _T_GET_SUM_NS] / 1e9, r[:, _T_GET_N])
    m["restored_tokens_per_s"] = lambda r, s: _div(r[:, _T_RESTORED], s)
    m["fetch_bytes_per_s"] = lambda r, s: _div(r[:, _T_FETCH_BYTES], s)
    m["blocks_stored_per_s"] = lambda r, s: _div(r[:, _T_KV_STORED], s)
    m["blocks_removed_per_s"] = lambda r, s: _div(r[:, _T_KV_REMOVED], s)
    m["resident_blocks"] = lambda r, s: _div(r[:, _T_RES_SUM], r[:, _T_RES_N])
    return m


def _service_metrics() -> dict[str, _Metric]:
    m: dict[str, _Metric] = {}
    ttft = slice(_S_TTFT_HIST, _S_TTFT_HIST + RQ_BUCKETS)
    tpot = slice(_S_TPOT_HIST, _S_TPOT_HIST + RQ_BUCKETS)
    m["request_rate"] = lambda r, s: _div(r[:, _S_REQUESTS], s)
    m["error_rate"] = lambda r, s: _div(r[:, _S_FAILED], s)
    m["tokens_per_s"] = lambda r, s: _div(r[:, _S_OUTPUT], s)
    m["prompt_tokens_per_s"] = lambda r, s: _div(r[:, _S_PROMPT], s)
    m["queue_depth"] = lambda r, s: _div(r[:, _S_QUEUE], r[:, _S_N])
    m["in_flight"] = lambda r, s: _div(r[:, _S_IN_FLIGHT], r[:, _S_N])
    m["paused"] = lambda r, s: _div(r[:, _S_PAUSED], r[:, _S_N])
    m["ttft_p50_s"] = lambda r, s: percentiles_of_rows(r[:, ttft], 0.5, _RQ_MIDS)
    m["ttft_p99_s"] = lambda r, s: percentiles_of_rows(r[:, ttft], 0.99, _RQ_MIDS)
    m["tpot_p50_s"] = lambda r, s: percentiles_of_rows(r[:, tpot], 0.5, _RQ_MIDS)
    m["tpot_p99_s"] = lambda r, s: percentiles_of_rows(r[:, tpot], 0.99, _RQ_MIDS)
    m["ttft_mean_s"] = lambda r, s: _div(r[:, _S_TTFT_SUM], r[:, _S_REQUESTS] - r[:, _S_FAILED])
    m["tpot_mean_s"] = lambda r, s: _div(r[:, _S_TPOT_SUM], r[:, _S_TPOT_N])
    m["e2e_mean_s"] = lambda r, s: _div(r[:, _S_E2E_SUM], r[:, _S_REQUESTS] - r[:, _S_FAILED])
    m["prefix_hit_ratio"] = lambda r, s: _div(r[:, _S_PREFIX_HIT], r[:, _S_PREFIX_Q])
    m["restored_share"] = lambda r, s: _div(
        r[:, _S_RESTORED], r[:, _S_RESTORED] + r[:, _S_RECOMPUTED]
    )
    m["recomputed_share"] = lambda r, s: _div(
        r[:, _S_RECOMPUTED], r[:, _S_RESTORED] + r[:, _S_RECOMPUTED]
    )
    m["block_events_per_s"] = lambda r, s: _div(r[:, _S_BLOCK_EVENTS], s)
    m["moves_per_s"] = lambda r, s: _div(r[:, _S_MOVES], s)
    return m


_TIER_METRICS: Final = _tier_metrics()
_SERVICE_METRICS: Final = _service_metrics()
#: Metric names :meth:`StateModel.series` accepts for a tier.
TIER_METRICS: Final[tuple[str, ...]] = tuple(_TIER_METRICS)
#: Metric names :meth:`StateModel.series` accepts for the service (``tier=None``).
SERVICE_METRICS: Final[tuple[str, ...]] = tuple(_SERVICE_METRICS)


def _clean(x: float) -> float | None:
    """JSON- and equality-friendly: None for NaN/inf."""
    return x if math.isfinite(x) else None


def _builtins(value: Any) -> Any:
    return msgspec.to_builtins(value, str_keys=True)


# ----------------------------------------------------------------------------- public records


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One entry of the event log.

    Attributes:
        index: Running number of the entry in this model (never reused).
        time: Timeline seconds (message clock, continued across restarts).
        clock: The message clock it carried.
        kind: One of :data:`EVENT_KINDS`.
        tier: Tier concerned ("" when none): the source tier of a move.
        to_tier: Destination tier of a move ("" otherwise).
        sample_rate: For moves, the fraction of moves reported (1.0 otherwise).
        item: The message or move it came from (None for restarts).
    """

    index: int
    time: float
    clock: float
    kind: str
    tier: str = ""
    to_tier: str = ""
    sample_rate: float = 1.0
    item: Any = None

    @property
    def text(self) -> str:
        """One line describing it."""
        item = self.item
        if isinstance(item, TierMove):
            dest = f" -> {item.to_tier}" if item.to_tier else ""
            why = f" ({item.reason})" if item.reason else ""
            sampled = f" [1 in {1 / self.sample_rate:g}]" if self.sample_rate < 1.0 else ""
            return (
                f"{item.kind} {item.key:#x} {item.from_tier}{dest} {item.nbytes} B "
                f"{item.latency_s * 1e3:.3f} ms{why}{sampled}"
            )
        if isinstance(item, ControlChange):
            by = f" by {item.by}" if item.by else ""
            return f"{item.command} {item.target}: {item.old!r} -> {item.new!r}{by}"
        if isinstance(item, FaultEvent):
            extra = f" +{item.delay_s * 1e3:g} ms" if item.delay_s else ""
            dur = f" for {item.duration_s:g} s" if item.duration_s is not None else ""
            why = f" ({item.reason})" if item.reason else ""
            return f"fault {item.fault} on {item.tier}: {item.old} -> {item.new}{extra}{dur}{why}"
        if isinstance(item, HealthChange):
            why = f" ({item.reason})" if item.reason else ""
            return f"{item.tier} health {item.old} -> {item.new}{why}"
        if isinstance(item, str):
            return item
        return self.kind

    def as_dict(self) -> dict[str, Any]:
        """Plain data (for snapshots and exports)."""
        item = self.item
        return {
            "index": self.index,
            "time": self.time,
            "clock": self.clock,
            "kind": self.kind,
            "tier": self.tier,
            "to_tier": self.to_tier,
            "sample_rate": self.sample_rate,
            "text": self.text,
            "item": None if item is None or isinstance(item, str) else _builtins(item),
        }


@dataclass(slots=True)
class RequestRow:
    """One row of the requests table (updated in place when the same id comes again).

    Attributes:
        request_id: Id of the request.
        conversation_id: Its conversation ("" when none).
        served_by: The tier that restored most of its prompt tokens, or :data:`RECOMPUTE`.
        ttft_s: Time to first token.
        tpot_s: Time per output token after the first.
        e2e_s: End-to-end latency.
        prompt_tokens: Prompt length.
        output_tokens: Tokens generated.
        restored_tokens: Prompt tokens restored from any tier.
        recomputed_tokens: Prompt tokens computed.
        prefix_tokens: Restored tokens by tier.
        error: Why it failed ("" when it succeeded).
        sample_rate: Fraction of requests reported when it was.
        clock: Message clock of its completion.
        time: Timeline seconds of its completion.
    """

    request_id: str
    conversation_id: str
    served_by: str
    ttft_s: float
    tpot_s: float
    e2e_s: float
    prompt_tokens: int
    output_tokens: int
    restored_tokens: int
    recomputed_tokens: int
    prefix_tokens: dict[str, int]
    error: str
    sample_rate: float
    clock: float
    time: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "conversation_id": self.conversation_id,
            "served_by": self.served_by,
            "ttft_s": self.ttft_s,
            "tpot_s": self.tpot_s,
            "e2e_s": self.e2e_s,
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "restored_tokens": self.restored_tokens,
            "recomputed_tokens": self.recomputed_tokens,
            "prefix_tokens": dict(self.prefix_tokens),
            "error": self.error,
            "sample_rate": self.sample_rate,
            "clock": self.clock,
            "time": self.time,
        }


@dataclass(slots=True)
class TierState:
    """What the model knows about one tier now (read it, do not change it).

    Attributes:
        name: Tier name.
        index: Its row in the tier series.
        info: What Hello said about it (None when it was only seen in stats or events).
        sample: Its latest TierSample (None before the first TierStats naming it).
        health: ``"ok"``, ``"degraded"``, ``"down"`` (latest of TierStats and HealthChange).
        health_reason: Why it is not ok.
        faults: Active injected faults (latest of TierStats and FaultEvent).
        resident_blocks: Resident blocks per block events / snapshots.
        blocks_exact: ``resident_blocks`` counts tracked hashes (False: an estimate, stored
            minus removed, e.g. over the cap or after a snapshot without hashes).
        in_block_events: Block events (or a snapshot's residency) named it.
    """

    name: str
    index: int
    info: TierInfo | None = None
    sample: TierSample | None = None
    health: str = "ok"
    health_reason: str = ""
    faults: list[str] = field(default_factory=list)
    resident_blocks: int = 0
    blocks_exact: bool = True
    in_block_events: bool = False

    @property
    def kind(self) -> str:
        return self.info.kind if self.info is not None else ""

    @property
    def capacity_bytes(self) -> int:
        if self.sample is not None:
            return self.sample.capacity_bytes
        return self.info.capacity_bytes if self.info is not None else 0

    @property
    def used_bytes(self) -> int:
        return self.sample.used_bytes if self.sample is not None else 0

    @property
    def occupancy(self) -> float | None:
        cap = self.capacity_bytes
        return self.used_bytes / cap if self.sample is not None and cap > 0 else None


# ------------------------------------------------------------------------------- the model


class StateModel:
    """Folds decoded telemetry (tiertop messages and KV event batches) into dashboard state.

    Args:
        resolutions: Time-series levels, finest first (default 1 s x 900, 10 s x 1080,
            60 s x 2880).
        window_s: Default window of :meth:`tier_window` / :meth:`service_window` and of the
            windowed figures in :meth:`snapshot`.
        max_events: Entries kept in the event log.
        max_requests: Rows kept in the requests table.
        max_tracked_blocks: Most block hashes tracked per tier from block events; above it the
            tier's residency becomes an estimate (stored minus removed).
        stale_after_s: Silence (by ``received_at``/``now``) after which the source counts as
            stale when the caller does not say (see :meth:`update_connection`).

    Feed it with :meth:`fold` / :meth:`fold_many`; tell it about the connection with
    :meth:`update_connection` and :meth:`set_control_rtt`; read it with :meth:`series`,
    :meth:`tier_window`, :meth:`service_window`, :meth:`events`, :meth:`requests`,
    :meth:`source_health`, :meth:`tier_view`, :meth:`service_view` and :meth:`snapshot`.

    Not thread-safe: a dashboard that folds in a worker and renders on a timer holds one lock
    around both (folding a bounded batch takes milliseconds).
    """

    def __init__(
        self,
        *,
        resolutions: tuple[Resolution, ...] = DEFAULT_RESOLUTIONS,
        window_s: float = 5.0,
        max_events: int = 2000,
        max_requests: int = 500,
        max_tracked_blocks: int = DEFAULT_MAX_TRACKED_BLOCKS,
        stale_after_s: float = 3.0,
    ) -> None:
        if max_events < 1 or max_requests < 1:
            raise ValueError("max_events and max_requests must be >= 1")
        self.window_s = window_s
        self.max_events = max_events
        self.max_requests = max_requests
        self.max_tracked_blocks = max_tracked_blocks
        self.stale_after_s = stale_after_s

        # Source.
        self.source = ""
        self.epoch: int | None = None
        self.hello: Hello | None = None
        self.settings: dict[str, Any] = {}
        self.restarts = 0
        self.snapshots_applied = 0
        self.messages: dict[str, int] = {}
        self.last_clock: float | None = None
        self.heartbeat: Heartbeat | None = None
        self.stats: TierStats | None = None  # latest TierStats (runtime-wide figures)

        # Timeline: message clock + offset (the offset keeps time moving forward when a
        # restarted simulator's virtual clock starts again from 0).
        self._offset = 0.0
        self.first_time: float | None = None
        self.latest_time: float | None = None

        # Tiers.
        self._tiers: dict[str, TierState] = {}
        #: Resident block hashes per tier from block events (read it, do not change it).
        self.residency = BlockResidency(max_tracked_blocks)
        self._order: list[str] = []
        self._tier_ring = MultiResolutionRing((4, _T_WIDTH), resolutions)
        self._service_ring = MultiResolutionRing((_S_WIDTH,), resolutions)

        # Baselines of cumulative counters (reset on restart).
        self._base: dict[str, tuple[int, ...]] = {}
        self._base_clock: float | None = None
        self._base_prefix: tuple[int, int] | None = None
        self._last_tick: int | None = None

        # Logs.
        self._events: deque[EventRecord] = deque(maxlen=max_events)
        self._event_index = 0
        self._requests: OrderedDict[str, RequestRow] = OrderedDict()

        # Connection (not part of the message-determined state).
        self.last_received_at: float | None = None
        self.subscriber: dict[str, int] = {}
        self._stale: bool | None = None
        self._in_sync: bool | None = None
        self.control_rtt_s: float | None = None
        self.control_rtt_at: float | None = None

        # The cluster simulator's per-rack and per-GPU picture (see cluster_state).
        self._cluster = ClusterFold(window_s=window_s)

        self._handlers: dict[type, Callable[[Any, float], None]] = {
            KvEventBatch: self._on_kv,
            BlockDigest: self._on_digest,
            TierStats: self._on_stats,
            TierMoves: self._on_moves,
            RequestDone: self._on_request,
            ControlChange: self._on_control,
            FaultEvent: self._on_fault,
            HealthChange: self._on_health,
            Hello: self._on_hello,
            Heartbeat: self._on_heartbeat,
            Snapshot: self._on_snapshot,
            ClusterStats: self._on_cluster,
        }

    # ================================================================================ folding

    def fold(self, message: Any, received_at: float | None = None) -> None:
        """Fold one decoded message (a tiertop message, a :class:`KvEventBatch` or a
        :class:`~tiertop.monitor.residency.BlockDigest` of several).

        Args:
            message: What :meth:`TelemetrySubscriber.poll` returned (or a recording holds).
                Types the model does not know are counted and ignored.
            received_at: When it was received, in the caller's clock (only used for the
                message age in :meth:`source_health`).
        """
        if received_at is not None:
            self.last_received_at = received_at
        cls = type(message)
        if cls is BlockDigest:  # counted as the batches it stands for, however they came
            name, count = _KV_BATCH, message.batches
        else:
            name, count = cls.__name__, 1
        if count:  # a digest of no batches (a snapshot's counts) is no message of its own
            self.messages[name] = self.messages.get(name, 0) + count
        handler = self._handlers.get(cls)
        if handler is None:
            return
        if cls is KvEventBatch or cls is BlockDigest:  # block events carry no source or epoch
            handler(message, self._time(message.ts))
            return
        if message.source and message.source != self.source:
            self.source = message.source
        if self.epoch is None:
            self.epoch = message.epoch
        elif message.epoch != self.epoch:
            self._restart(message.epoch, message.clock, f"new epoch {message.epoch}")
        handler(message, self._time(message.clock))

    def fold_many(self, messages: Iterable[Any], received_at: float | None = None) -> None:
        """Fold messages in order (one ``received_at`` for all, e.g. one poll's batch)."""
        for message in messages:
            self.fold(message, received_at)

    def update_connection(
        self,
        counters: Any = None,
        *,
        stale: bool | None = None,
        in_sync: bool | None = None,
    ) -> None:
        """Record the subscriber's view of the connection.

        Args:
            counters: A :class:`~tiertop.monitor.subscriber.SubscriberCounters` (or a mapping
                of counter name to value): gaps, recovered, unrecovered, duplicates...
            stale: The subscriber's ``stale`` (None: judge by message age).
            in_sync: The subscriber's ``in_sync``.
        """
        if counters is not None:
            if dataclasses.is_dataclass(counters) and not isinstance(counters, type):
                items: Mapping[str, Any] = dataclasses.asdict(counters)
            else:
                items = dict(counters)
            self.subscriber = {k: int(v) for k, v in items.items()}
        self._stale = stale
        self._in_sync = in_sync

    def set_control_rtt(self, rtt_s: float | None, at: float | None = None) -> None:
        """Record the last control round trip (e.g. ``ControlClient.last_rtt_s``)."""
        self.control_rtt_s = rtt_s
        self.control_rtt_at = at

    # ---------------------------------------------------------------------------- timeline

    def _time(self, clock: float) -> float:
        self.last_clock = clock
        t = clock + self._offset
        if self.first_time is None or t < self.first_time:
            self.first_time = t
        if self.latest_time is None or t > self.latest_time:
            self.latest_time = t
        return t

    def _restart(self, epoch: int | None, clock: float, why: str) -> None:
        """The runtime restarted: reset baselines and block state, keep the timeline going."""
        self.restarts += 1
        if epoch is not None:
            self.epoch = epoch
        self._base.clear()
        self._base_clock = None
        self._base_prefix = None
        self._last_tick = None
        self.residency.reset()
        for tier in self._tiers.values():
            tier.resident_blocks = 0
            tier.blocks_exact = True
            tier.faults = []
        self._cluster.reset()
        latest = self.latest_time
        if latest is not None and clock + self._offset < latest:
            self._offset = latest - clock
        t = self._time(clock)
        self._log(t, clock, "restart", item=f"runtime restarted: {why}")

    # ------------------------------------------------------------------------------- tiers

    def _tier(self, name: str) -> TierState:
        tier = self._tiers.get(name)
        if tier is None:
            index = len(self._order)
            rows = self._tier_ring.shape[0]
            if index >= rows:
                self._tier_ring.grow((rows * 2, _T_WIDTH))
            tier = self._tiers[name] = TierState(name=name, index=index)
            self._order.append(name)
        return tier

    def _log(
        self,
        t: float,
        clock: float,
        kind: str,
        tier: str = "",
        to_tier: str = "",
        sample_rate: float = 1.0,
        item: Any = None,
    ) -> None:
        self._events.append(
            EventRecord(self._event_index, t, clock, kind, tier, to_tier, sample_rate, item)
        )
        self._event_index += 1

    # ---------------------------------------------------------------------------- handlers

    def _on_hello(self, m: Hello, t: float) -> None:
        self.hello = m
        order = [info.name for info in m.tiers]
        for info in m.tiers:
            self._tier(info.name).info = info
        # Hello's order (fastest first) wins; tiers only seen elsewhere follow.
        self._order = order + [n for n in self._order if n not in set(order)]

    def _on_heartbeat(self, m: Heartbeat, t: float) -> None:
        self.heartbeat = m

    def _on_stats(self, m: TierStats, t: float) -> None:
        last_tick, base_clock = self._last_tick, self._base_clock
        if (
            last_tick is not None and base_clock is not None
            and m.tick <= last_tick and m.clock <= base_clock
        ):
            return  # already folded, or older than what was (a snapshot's stats, a duplicate)
        samples = m.tiers
        base = self._base
        sub = operator.sub
        # Differences of the cumulative counters since the previous tick (None: no baseline).
        counters: list[tuple[int, ...]] = []
        deltas: list[list[int] | None] = []
        backwards = False
        for s in samples:
            now: tuple[int, ...] = (
                s.hits, s.misses, s.puts, s.promotions, s.demotions, s.drops, s.evictions,
                s.deletes, s.bytes_in, s.bytes_out, s.errors, s.corrupt,
            )
            counters.append(now)
            prev = base.get(s.name)
            if prev is None:
                deltas.append(None)
                continue
            d: list[int] = list(map(sub, now, prev))
            if min(d) < 0:
                backwards = True
                break
            deltas.append(d)
        prefix = (m.prefix_query_tokens, m.prefix_hit_tokens)
        base_prefix = self._base_prefix
        if base_prefix is not None and (prefix[0] < base_prefix[0] or prefix[1] < base_prefix[1]):
            backwards = True
        if backwards:  # the runtime restarted: this tick is the new baseline
            self._restart(None, m.clock, "counters went backwards")
            t = self._time(m.clock)
            counters = [
                (s.hits, s.misses, s.puts, s.promotions, s.demotions, s.drops, s.evictions,
                 s.deletes, s.bytes_in, s.bytes_out, s.errors, s.corrupt)
                for s in samples
            ]
            deltas = [None] * len(samples)

        base_clock = self._base_clock
        dt = 0.0
        if base_clock is not None:
            dt = m.clock - base_clock
            if dt <= 0.0:
                dt = max(m.interval_s, 0.0)
        zeros = [0] * len(TIER_COUNTERS)
        ring = self._tier_ring
        n_rows = ring.shape[0]
        width = _T_WIDTH
        flat: list[float] = [0.0] * (n_rows * width)  # the tick's rows, filled in place
        for s, cur, delta in zip(samples, counters, deltas, strict=True):
            tier = self._tiers.get(s.name) or self._tier(s.name)
            tier.sample = s
            tier.health = s.health
            tier.health_reason = s.health_reason
            tier.faults = list(s.faults)
            base[s.name] = cur
            if ring.shape[0] != n_rows:  # a new tier grew the ring
                flat += [0.0] * ((ring.shape[0] - n_rows) * width)
                n_rows = ring.shape[0]
            at = tier.index * width
            get_hist = s.latency.get("get")
            get_n = 0
            if get_hist:
                if len(get_hist) != N_BUCKETS:  # keep what fits, fold the tail into the last
                    h = list(get_hist[:N_BUCKETS])
                    h += [0] * (N_BUCKETS - len(h))
                    h[-1] += sum(get_hist[N_BUCKETS:])
                    get_hist = h
                get_n = sum(get_hist)
                flat[at + _T_HIST : at + width] = get_hist
            flat[at : at + _T_RESTORED] = [
                dt if delta is not None else 0.0, 1.0, s.used_bytes, s.used_blocks,
                s.capacity_bytes, s.high_watermark, s.low_watermark,
                *(delta if delta is not None else zeros), get_n, s.latency_sum_ns.get("get", 0),
            ]
        raw = np.fromiter(flat, dtype=np.float64, count=len(flat)).reshape(ring.shape)
        ring.add(t, raw)

        svc = np.zeros(_S_WIDTH, dtype=np.float64)
        svc[_S_DT] = dt
        svc[_S_N] = 1.0
        svc[_S_QUEUE] = m.queue_depth
        svc[_S_IN_FLIGHT] = m.requests_in_flight
        svc[_S_PAUSED] = 1.0 if m.paused else 0.0
        if base_prefix is not None and base_clock is not None:
            svc[_S_PREFIX_Q] = prefix[0] - base_prefix[0]
            svc[_S_PREFIX_HIT] = prefix[1] - base_prefix[1]
        self._service_ring.add(t, svc)

        self._base_prefix = prefix
        self._base_clock = m.clock
        self._last_tick = m.tick
        self.stats = m

    def _on_kv(self, batch: KvEventBatch, t: float) -> None:
        digest = self.residency.fold((batch,))
        if digest is not None:
            self._on_digest(digest, t)

    def _on_digest(self, digest: BlockDigest, t: float) -> None:
        """Block events, raw (a digest of one batch) or digested elsewhere: the counts only,
        so a model fed digests shows what one fed the batches would. Each tier touched adds
        its resident count after each batch that touched it to the series (a tier only a clear
        touched, unknown to the residency: one sample of 0)."""
        tiers = self._tiers
        if digest.cleared:
            for tier in tiers.values():
                tier.resident_blocks = 0
        for name, blocks in digest.resident.items():
            tier = tiers.get(name) or self._tier(name)
            tier.resident_blocks = blocks
            tier.in_block_events = True
        untracked = digest.untracked
        for tier in tiers.values():
            tier.blocks_exact = tier.name not in untracked
        events = digest.events
        if not events:
            return
        self._service_ring.add_at(t, _S_BLOCK_EVENTS, float(events))
        touched = tiers.keys() if digest.cleared else digest.resident.keys()
        if not touched:
            return
        stored, removed, samples = digest.stored, digest.removed, digest.samples
        idx: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        for name in touched:
            tier = tiers[name]
            i = tier.index
            s, r = stored.get(name, 0), removed.get(name, 0)
            if s:
                idx.append(i)
                cols.append(_T_KV_STORED)
                vals.append(s)
            if r:
                idx.append(i)
                cols.append(_T_KV_REMOVED)
                vals.append(r)
            total, n = samples.get(name, (0, 1))
            idx += (i, i)
            cols += (_T_RES_SUM, _T_RES_N)
            vals += (total, n)
        self._tier_ring.add_many(
            t, (np.array(idx, dtype=np.intp), np.array(cols, dtype=np.intp)),
            np.array(vals, dtype=np.float64),
        )

    def _on_moves(self, m: TierMoves, t: float) -> None:
        moves = m.moves
        if not moves:
            return
        rate = m.sample_rate if m.sample_rate > 0 else 1.0
        self._service_ring.add_at(t, _S_MOVES, len(moves) / rate)
        offset = self._offset
        for move in moves[-self.max_events :]:
            clock = move.clock or m.clock
            self._log(
                clock + offset, clock, move.kind, move.from_tier, move.to_tier, rate, move
            )

    def _on_request(self, m: RequestDone, t: float) -> None:
        rate = m.sample_rate if m.sample_rate > 0 else 1.0
        w = 1.0 / rate
        restored = 0
        served_by = RECOMPUTE
        best = 0
        for name, n in m.prefix_tokens.items():
            restored += n
            if n > best:
                best, served_by = n, name
        if best > 0 and len(m.prefix_tokens) > 1:  # ties: the fastest tier
            tied = [k for k, v in m.prefix_tokens.items() if v == best]
            if len(tied) > 1:
                rank = {name: i for i, name in enumerate(self._order)}
                served_by = min(tied, key=lambda k: (rank.get(k, len(rank)), k))

        svc = np.zeros(_S_WIDTH, dtype=np.float64)
        svc[_S_REQUESTS] = w
        svc[_S_PROMPT] = m.prompt_tokens * w
        svc[_S_OUTPUT] = m.output_tokens * w
        svc[_S_RECOMPUTED] = m.recomputed_tokens * w
        svc[_S_RESTORED] = restored * w
        if m.error:
            svc[_S_FAILED] = w
        else:
            svc[_S_TTFT_SUM] = m.ttft_s * w
            svc[_S_E2E_SUM] = m.e2e_s * w
            svc[_S_TTFT_HIST + request_bucket(m.ttft_s)] = w
            if m.output_tokens > 1:
                svc[_S_TPOT_SUM] = m.tpot_s * w
                svc[_S_TPOT_N] = w
                svc[_S_TPOT_HIST + request_bucket(m.tpot_s)] = w
        self._service_ring.add(t, svc)

        names = m.prefix_tokens.keys() | m.fetch_bytes.keys() | m.fetch_latency_s.keys()
        if names:
            idx: list[int] = []
            cols: list[int] = []
            vals: list[float] = []
            for name in names:
                i = self._tier(name).index
                idx += (i, i, i)
                cols += (_T_RESTORED, _T_FETCH_BYTES, _T_FETCH_S)
                vals += (
                    m.prefix_tokens.get(name, 0) * w,
                    m.fetch_bytes.get(name, 0) * w,
                    m.fetch_latency_s.get(name, 0.0) * w,
                )
            self._tier_ring.add_many(
                t, (np.array(idx, dtype=np.intp), np.array(cols, dtype=np.intp)),
                np.array(vals, dtype=np.float64),
            )

        key = m.request_id or f"{m.epoch}:{m.seq}"
        rows = self._requests
        row = rows.get(key)
        if row is None:
            rows[key] = RequestRow(
                key, m.conversation_id, served_by, m.ttft_s, m.tpot_s, m.e2e_s,
                m.prompt_tokens, m.output_tokens, restored, m.recomputed_tokens,
                dict(m.prefix_tokens), m.error, m.sample_rate, m.clock, t,
            )
            if len(rows) > self.max_requests:
                rows.popitem(last=False)
        else:  # the same request again: update it in place
            row.conversation_id = m.conversation_id
            row.served_by = served_by
            row.ttft_s, row.tpot_s, row.e2e_s = m.ttft_s, m.tpot_s, m.e2e_s
            row.prompt_tokens, row.output_tokens = m.prompt_tokens, m.output_tokens
            row.restored_tokens, row.recomputed_tokens = restored, m.recomputed_tokens
            row.prefix_tokens = dict(m.prefix_tokens)
            row.error, row.sample_rate = m.error, m.sample_rate
            row.clock, row.time = m.clock, t
            rows.move_to_end(key)

    def _on_control(self, m: ControlChange, t: float) -> None:
        self._log(t, m.clock, "control", tier=m.target if m.target in self._tiers else "",
                  item=m)

    def _on_fault(self, m: FaultEvent, t: float) -> None:
        tier = self._tier(m.tier) if m.tier else None
        if tier is not None and m.fault:
            if m.new == "active" and m.fault not in tier.faults:
                tier.faults = [*tier.faults, m.fault]
            elif m.new == "inactive" and m.fault in tier.faults:
                tier.faults = [f for f in tier.faults if f != m.fault]
        self._log(t, m.clock, "fault", tier=m.tier, item=m)

    def _on_health(self, m: HealthChange, t: float) -> None:
        if m.tier:
            tier = self._tier(m.tier)
            tier.health = m.new
            tier.health_reason = m.reason
        self._log(t, m.clock, "health", tier=m.tier, item=m)

    def _on_cluster(self, m: ClusterStats, t: float) -> None:
        self._cluster.fold(m, t)

    def _on_snapshot(self, m: Snapshot, t: float) -> None:
        """Resync: learn hello, settings and residency; fold its stats as a new baseline (or,
        in the same run and newer than what was folded, as the tick it is: no count lost)."""
        self.snapshots_applied += 1
        if m.hello is not None:
            self._on_hello(m.hello, t)
        self.settings = dict(m.settings)
        if m.stats is not None:
            stats = m.stats
            if not stats.epoch or stats.epoch == self.epoch:  # else: another run's, stale
                self._on_stats(stats, self._time(stats.clock) if stats.clock else t)
        self.residency.load(m.resident)
        for summary in m.resident:
            tier = self._tier(summary.tier)
            tier.resident_blocks = summary.blocks
            tier.blocks_exact = self.residency.tracked(summary.tier)
            tier.in_block_events = True
        self._log(t, m.clock, "resync", item=f"snapshot applied ({len(m.topic_seqs)} topics)")

    # ================================================================================ queries

    def tier_names(self) -> list[str]:
        """Tier names, fastest first (Hello's order, then tiers seen only elsewhere)."""
        return list(self._order)

    def tier_has_data(self, name: str) -> bool:
        """Whether ``name`` is a tier to show: the runtime's Hello lists it, or tier statistics
        or block events named it. Tiers only fault or health events named (the simulator's
        per-rack pools, ``pool@R``, whose traffic the ``pool`` tier carries) are not; without
        a Hello (a real engine's block events) every tier is."""
        tier = self._tiers.get(name)
        if tier is None:
            return False
        return (self.hello is None or tier.info is not None or tier.sample is not None
                or tier.in_block_events)

    def tier(self, name: str) -> TierState | None:
        """The state of one tier (None when unknown)."""
        return self._tiers.get(name)

    @property
    def has_data(self) -> bool:
        """True once any message was folded."""
        return bool(self.messages)

    @property
    def cluster(self) -> ClusterView:
        """The cluster simulator's racks and drilled-into GPUs (empty for other runtimes; the
        shape is described in :mod:`tiertop.monitor.cluster_state`)."""
        return self._cluster.view()

    @property
    def mode(self) -> str:
        return self.hello.mode if self.hello is not None else ""

    def series(
        self, tier: str | None, metric: str, window_s: float | None = None
    ) -> tuple[FloatArray, FloatArray]:
        """One metric over time at the finest resolution that covers the window.

        Args:
            tier: Tier name, or None for service metrics (:data:`SERVICE_METRICS`).
            metric: One of :data:`TIER_METRICS` (or :data:`SERVICE_METRICS` for ``None``).
            window_s: Seconds back from the latest data (None: everything kept).

        Returns:
            ``(times, values)``: timeline seconds (bucket ends; the partial last bucket at its
            latest time) and values (NaN where the bucket holds nothing to derive it from).
            Empty arrays for an unknown tier or no data.

        Raises:
            KeyError: Unknown metric.
        """
        if tier is None:
            fn = _SERVICE_METRICS[metric]
            win = self._service_ring.window(window_s, self._level(window_s))
            rows = win.rows
        else:
            fn = _TIER_METRICS[metric]
            state = self._tiers.get(tier)
            if state is None:
                empty = np.zeros(0, dtype=np.float64)
                return empty, empty.copy()
            win = self._tier_ring.window(window_s, self._level(window_s))
            rows = win.rows[:, state.index, :]
        return win.times.copy(), fn(rows, self._spans(win))

    def resolution_for(self, window_s: float | None) -> float:
        """Step in seconds of the points :meth:`series` returns for this window."""
        return self._tier_ring.resolutions[self._level(window_s)].step_s

    def _level(self, window_s: float | None) -> int:
        if window_s is None:
            if self.first_time is None or self.latest_time is None:
                return 0
            window_s = self.latest_time - self.first_time
        return self._tier_ring.level_for(window_s)

    def _spans(self, win: RingWindow) -> FloatArray:
        first = self.first_time if self.first_time is not None else 0.0
        starts = np.maximum(win.ends - win.step_s, first)
        spans: FloatArray = np.maximum(win.times - starts, 0.0)
        return spans

    def _window_sum(
        self, ring: MultiResolutionRing, window_s: float | None, tier_index: int | None
    ) -> tuple[FloatArray, float] | None:
        win = ring.window(window_s, self._level(window_s))
        if len(win) == 0:
            return None
        rows = win.rows if tier_index is None else win.rows[:, tier_index, :]
        total = rows.sum(axis=0)
        first = self.first_time if self.first_time is not None else 0.0
        span = float(win.times[-1]) - max(float(win.ends[0]) - win.step_s, first)
        return total, max(span, 0.0)

    def tier_window(self, name: str, window_s: float | None = None) -> dict[str, float | None]:
        """Every tier metric over the last ``window_s`` seconds (default :attr:`window_s`) of
        the tier data, as one aggregate (rates: total delta / total seconds; hit ratio:
        hits / gets; percentiles: of the summed histograms). None where undefined."""
        window_s = self.window_s if window_s is None else window_s
        tier = self._tiers.get(name)
        got = None if tier is None else self._window_sum(self._tier_ring, window_s, tier.index)
        if got is None:
            return dict.fromkeys(TIER_METRICS)
        total, span = got
        row = total[np.newaxis]
        spans = np.array([span])
        return {k: _clean(float(fn(row, spans)[0])) for k, fn in _TIER_METRICS.items()}

    def service_window(self, window_s: float | None = None) -> dict[str, Any]:
        """Every service metric over the last ``window_s`` seconds (default :attr:`window_s`),
        plus ``restored_share_by_tier``: of the prompt tokens of the requests completed in the
        window, the share restored from each tier (the rest: ``recomputed_share``)."""
        window_s = self.window_s if window_s is None else window_s
        got = self._window_sum(self._service_ring, window_s, None)
        out: dict[str, Any]
        if got is None:
            out = dict.fromkeys(SERVICE_METRICS)
            out["restored_share_by_tier"] = {}
            out["requests"] = 0.0
            return out
        total, span = got
        row = total[np.newaxis]
        spans = np.array([span])
        out = {k: _clean(float(fn(row, spans)[0])) for k, fn in _SERVICE_METRICS.items()}
        out["requests"] = float(total[_S_REQUESTS])
        prompt = float(total[_S_RESTORED] + total[_S_RECOMPUTED])
        shares: dict[str, float] = {}
        if prompt > 0:
            # The same level and cutoff as the service rows: RequestDone adds to both rings at
            # the same time, so these rows hold the same requests.
            win = self._tier_ring.window(
                window_s, self._level(window_s), end=self._service_ring.latest
            )
            if len(win):
                restored = win.rows[:, :, _T_RESTORED].sum(axis=0)
                for name in self._order:
                    value = float(restored[self._tiers[name].index])
                    if value > 0:
                        shares[name] = value / prompt
        out["restored_share_by_tier"] = shares
        return out

    def events(
        self,
        kinds: Iterable[str] | str | None = None,
        tier: str | None = None,
        text: str | None = None,
        limit: int | None = None,
    ) -> list[EventRecord]:
        """Entries of the event log, oldest first, filtered.

        Args:
            kinds: Keep only these kinds (one kind or several; see :data:`EVENT_KINDS`).
            tier: Keep only entries concerning this tier (as source or destination).
            text: Keep only entries whose text contains this (case-insensitive).
            limit: Keep only the newest ``limit`` of what matches.
        """
        wanted = {kinds} if isinstance(kinds, str) else (set(kinds) if kinds is not None else None)
        needle = text.lower() if text else None
        out = [
            e for e in self._events
            if (wanted is None or e.kind in wanted)
            and (tier is None or e.tier == tier or e.to_tier == tier)
            and (needle is None or needle in e.text.lower())
        ]
        if limit is not None:
            out = out[-limit:] if limit > 0 else []
        return out

    def requests(self) -> list[RequestRow]:
        """The requests table, oldest first (at most ``max_requests`` rows)."""
        return list(self._requests.values())

    def source_health(self, now: float | None = None) -> dict[str, Any]:
        """Source and connection health.

        Args:
            now: The caller's clock, in the same clock as the ``received_at`` values given to
                :meth:`fold` (None: no age).
        """
        hello = self.hello
        stats = self.stats
        sub = self.subscriber
        age = (
            None
            if now is None or self.last_received_at is None
            else max(0.0, now - self.last_received_at)
        )
        stale = self._stale
        if stale is None:
            stale = age is not None and age > self.stale_after_s
        return {
            "source": self.source,
            "mode": hello.mode if hello is not None else "",
            "epoch": self.epoch,
            "host": hello.host if hello is not None else "",
            "pid": hello.pid if hello is not None else 0,
            "speed": hello.speed if hello is not None else None,
            "last_clock": self.last_clock,
            "last_received_at": self.last_received_at,
            "age_s": age,
            "stale": stale,
            "in_sync": self._in_sync,
            "messages": sum(self.messages.values()),
            "restarts": self.restarts,
            "snapshots": self.snapshots_applied,
            "gaps": sub.get("gaps", 0),
            "recovered": sub.get("recovered", 0),
            "unrecovered": sub.get("unrecovered", 0),
            "duplicates": sub.get("duplicates", 0),
            "decode_errors": sub.get("decode_errors", 0),
            "resync_failures": sub.get("resync_failures", 0),
            "reconnects": sub.get("reconnects", 0),
            "subscriber_restarts": sub.get("restarts", 0),
            "dropped_messages": stats.dropped_messages if stats is not None else 0,
            "dropped_hwm_messages": stats.dropped_hwm_messages if stats is not None else 0,
            "dropped_queue_items": stats.dropped_queue_items if stats is not None else 0,
            "dropped_events": stats.dropped_events if stats is not None else 0,
            "control_rtt_s": self.control_rtt_s,
            "control_rtt_at": self.control_rtt_at,
        }

    def tier_view(self, name: str, window_s: float | None = None) -> dict[str, Any]:
        """Plain data of one tier: what Hello said, its latest sample, health, counters and
        its windowed metrics (``window``)."""
        tier = self._tiers[name]
        info = tier.info
        s = tier.sample
        return {
            "name": name,
            "kind": tier.kind,
            "description": (s.description if s is not None and s.description
                            else info.description if info is not None else ""),
            "emulated": info.emulated if info is not None else False,
            "fallback_reason": info.fallback_reason if info is not None else "",
            "disabled": info.disabled if info is not None else False,
            "read_only": info.read_only if info is not None else False,
            "live_tunable": list(info.live_tunable) if info is not None else [],
            "block_bytes": info.block_bytes if info is not None else 0,
            "max_capacity_bytes": info.max_capacity_bytes if info is not None else None,
            "capacity_bytes": tier.capacity_bytes,
            "used_bytes": s.used_bytes if s is not None else None,
            "used_blocks": s.used_blocks if s is not None else None,
            "occupancy": tier.occupancy,
            "high_watermark": s.high_watermark if s is not None else None,
            "low_watermark": s.low_watermark if s is not None else None,
            "eviction_policy": s.eviction_policy if s is not None else "",
            "health": tier.health,
            "health_reason": tier.health_reason,
            "faults": list(tier.faults),
            "counters": {k: getattr(s, k) for k in TIER_COUNTERS} if s is not None else {},
            "resident_blocks": tier.resident_blocks,
            "blocks_exact": tier.blocks_exact,
            "window": self.tier_window(name, window_s),
        }

    def service_view(self, window_s: float | None = None) -> dict[str, Any]:
        """Plain data of runtime-wide figures: the latest TierStats' and the window's."""
        st = self.stats
        latest: dict[str, Any] = {}
        if st is not None:
            latest = {
                "tick": st.tick,
                "placement_policy": st.placement_policy,
                "promotion_policy": st.promotion_policy,
                "paused": st.paused,
                "queue_depth": st.queue_depth,
                "requests_in_flight": st.requests_in_flight,
                "request_rate": st.request_rate,
                "tokens_per_s": st.tokens_per_s,
                "prefix_query_tokens": st.prefix_query_tokens,
                "prefix_hit_tokens": st.prefix_hit_tokens,
                "rss_bytes": st.rss_bytes,
                "mem_total_bytes": st.mem_total_bytes,
                "mem_available_bytes": st.mem_available_bytes,
                "numa_free_bytes": (
                    {str(k): v for k, v in st.numa_free_bytes.items()}
                    if st.numa_free_bytes is not None else None
                ),
            }
        return {"latest": latest, "window": self.service_window(window_s)}

    def memory_bytes(self) -> int:
        """Bytes held by the time series (fixed for a given number of tiers)."""
        return self._tier_ring.nbytes + self._service_ring.nbytes

    def snapshot(self, now: float | None = None, *, series: bool = True) -> dict[str, Any]:
        """The whole visible state as plain data, comparable with ``==``.

        Sections: ``source`` (who, epoch, restarts, messages folded by type, settings, the
        timeline), ``connection`` (:meth:`source_health`: depends on ``received_at``, ``now``
        and the subscriber, so leave it out when comparing a replay with the live run),
        ``service`` (:meth:`service_view`), ``tiers`` (:meth:`tier_view` of each, fastest
        first), ``events`` and ``requests`` (as dicts), ``cluster`` (:attr:`cluster` as plain
        data), and with ``series`` a digest of every
        time-series level (rows stored, last bucket end, hash of the data).
        Undefined values are None (never NaN), so equal states compare equal.
        """
        hello = self.hello
        out: dict[str, Any] = {
            "source": {
                "source": self.source,
                "epoch": self.epoch,
                "restarts": self.restarts,
                "snapshots": self.snapshots_applied,
                "messages": dict(sorted(self.messages.items())),
                "hello": _builtins(hello) if hello is not None else None,
                "settings": _builtins(self.settings),
                "first_time": self.first_time,
                "latest_time": self.latest_time,
                "last_clock": self.last_clock,
                "window_s": self.window_s,
            },
            "connection": self.source_health(now),
            "service": self.service_view(),
            "tiers": [self.tier_view(name) for name in self._order],
            "events": [e.as_dict() for e in self._events],
            "requests": [r.as_dict() for r in self._requests.values()],
            "cluster": self._cluster.view().as_dict(),
        }
        if series:
            digest: dict[str, list[dict[str, Any]]] = {}
            for label, ring in (("tiers", self._tier_ring), ("service", self._service_ring)):
                digest[label] = [
                    {"step_s": step, "rows": count, "last_end": last, "digest": h}
                    for step, count, last, h in ring.digest()
                ]
            out["series"] = digest
        return out
