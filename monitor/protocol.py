"""The telemetry schema: every message tiertop's runtime publishes, declared once.

Each message is a msgspec ``Struct`` in one tagged union (tag field ``"type"``, tag value = class
name), encoded as a msgpack map. Readers ignore fields they do not know
(``forbid_unknown_fields=False``) and every field has a default, so a newer runtime can add fields
and an older one can leave them out; a message of a type the reader does not know is counted and
skipped (see :mod:`tiertop.monitor.framing`). Block-level events are not here: they follow vLLM's
KV events shape exactly and live in :mod:`tiertop.monitor.vllm_events`.

Every message carries the envelope of :class:`TelemetryMessage`: ``source``, ``epoch``, ``seq``
and ``clock``. On the wire each message is three ZeroMQ frames ``[topic, seq, payload]`` (see
:mod:`tiertop.monitor.framing`); the topic of each type is in :data:`TOPIC_OF`.

Units: times and durations are seconds (float) unless a name ends in ``_ns``; sizes are bytes;
rates are per second of the message clock; counters named like ``hits`` are cumulative since the
runtime started (``epoch``) and never reset, so a reader takes differences and a lost message
loses detail, never counts.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec
from tiertop.tiers.stats import N_BUCKETS, OPERATIONS

#: Bumped when a change is not backward compatible (a field changes meaning or type). Adding a
#: field with a default is compatible and does not bump it.
PROTOCOL_VERSION: Final = 1

#: Latency histograms on the wire: ``N_BUCKETS`` integer counts, bucket ``i`` holding latencies in
#: ``[2**(i-1), 2**i)`` nanoseconds (bucket 0: 0 ns), as in :mod:`tiertop.tiers.stats`.
LATENCY_BUCKETS: Final = N_BUCKETS
LATENCY_OPERATIONS: Final = OPERATIONS

# ----------------------------------------------------------------------------------------- topics

TOPIC_KV: Final = "kv-events"  # vLLM-compatible block events (batch shape of vllm_events)
TOPIC_HELLO: Final = "tt.hello"
TOPIC_STATS: Final = "tt.stats"
TOPIC_MOVES: Final = "tt.moves"
TOPIC_REQUESTS: Final = "tt.requests"
TOPIC_CONTROL: Final = "tt.control"
TOPIC_FAULTS: Final = "tt.faults"
TOPIC_HEARTBEAT: Final = "tt.heartbeat"
TOPIC_CLUSTER: Final = "tt.cluster"  # the cluster simulator's per-rack and per-GPU summaries
#: Snapshots are never broadcast: they answer a request on the replay socket, under this topic.
TOPIC_SNAPSHOT: Final = "tt.snapshot"
#: Topics of tiertop's own messages start with this; any other topic carries vLLM KV event batches.
TT_TOPIC_PREFIX: Final = "tt."

# -------------------------------------------------------------------------------- capabilities

CAP_LIVE_TUNABLE: Final = "live_tunable"  # settings can be changed while it runs (control plane)
CAP_READ_ONLY: Final = "read_only"  # the runtime accepts no commands
CAP_CONTROL: Final = "control"  # a control socket is listening (address in Hello.addresses)
CAP_SNAPSHOT: Final = "snapshot"  # the replay socket answers snapshot requests
CAP_REPLAY: Final = "replay"  # the replay socket answers replay requests

MODE_MODEL: Final = "model"  # a real model runtime; clocks are wall-clock unix seconds
MODE_SIM: Final = "sim"  # the simulator; clocks are virtual seconds since the simulation start


class TelemetryMessage(
    msgspec.Struct,
    tag=True,
    tag_field="type",
    kw_only=True,
    forbid_unknown_fields=False,
):
    """The envelope every tiertop message carries.

    Attributes:
        source: Id of the publishing runtime (stable for its lifetime, e.g. ``"host:pid"``).
        epoch: Changes on every runtime start (an integer, in practice the start time in ns);
            a reader that sees a new epoch knows the runtime restarted and its counters reset.
        seq: Sequence number of this message within its topic, starting at 0 per epoch and
            incremented by one per message (the same number as frame 1). A reader subscribed to
            some topics only can check its own topics for gaps.
        clock: The runtime's clock when the message was handed to the publisher, in seconds:
            wall-clock unix time in ``model`` mode, virtual seconds in ``sim`` mode.
    """

    source: str = ""
    epoch: int = 0
    seq: int = 0
    clock: float = 0.0


# ------------------------------------------------------------------------------------- hello


class TierInfo(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """What one tier is, as announced in :class:`Hello`.

    Attributes:
        name: The tier's name; also the ``medium`` of its block events and the key in stats.
        kind: The store kind (``"dram"``, ``"numa"``, ``"remote"``, ``"disk"``, ``"cuda"``...).
        description: The store's ``describe()`` text: what it really is on this machine.
        emulated: True when the tier stands in for absent hardware (stated latency/bandwidth)
            or fell back to another mechanism.
        fallback_reason: Why it is emulated or fell back ("" when it is the real thing).
        disabled: True when the tier exists in the configuration but is switched off.
        capacity_bytes: Configured capacity in bytes.
        max_capacity_bytes: The most the medium can take in bytes (None: no fixed limit).
        block_bytes: Size of one KV block in this tier in bytes (0 when it varies).
        live_tunable: Settings of this tier a command may change live (``"capacity"``,
            ``"watermarks"``, ``"eviction_policy"``...).
        read_only: True when no command may change this tier.
    """

    name: str = ""
    kind: str = ""
    description: str = ""
    emulated: bool = False
    fallback_reason: str = ""
    disabled: bool = False
    capacity_bytes: int = 0
    max_capacity_bytes: int | None = None
    block_bytes: int = 0
    live_tunable: list[str] = msgspec.field(default_factory=list)
    read_only: bool = False


class Topology(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """Shape of what the runtime serves.

    Attributes:
        tier_order: Tier names from fastest to slowest (placement order).
        nodes: Machines (1 for a single runtime; many in the cluster simulator).
        gpus: GPUs served (real or simulated).
        racks: Racks (cluster simulator; 0 otherwise).
        numa_nodes: NUMA nodes of the machine the runtime runs on.
        model: Model shape served (e.g. ``"gpt2-tiny"``, ``"gpt2-small"``).
        block_size_tokens: Tokens per KV block.
        block_bytes: Bytes of one KV block for all layers.
        detail: Free-form extra facts (string values), e.g. ``{"router": "prefix-aware"}``.
    """

    tier_order: list[str] = msgspec.field(default_factory=list)
    nodes: int = 1
    gpus: int = 0
    racks: int = 0
    numa_nodes: int = 1
    model: str = ""
    block_size_tokens: int = 0
    block_bytes: int = 0
    detail: dict[str, str] = msgspec.field(default_factory=dict)


class Hello(TelemetryMessage):
    """Who is publishing; sent when the publisher starts and whenever a reader subscribes.

    Topic ``tt.hello``.

    Attributes:
        protocol_version: :data:`PROTOCOL_VERSION` of the publisher.
        software_version: tiertop version of the publisher.
        mode: ``"model"`` (real model, wall clock) or ``"sim"`` (simulator, virtual clock).
        speed: Virtual seconds per wall second in ``sim`` mode (0: as fast as possible); 1.0 in
            ``model`` mode.
        started_at: Wall-clock unix seconds when the runtime started.
        host: Host name of the runtime.
        pid: Process id of the runtime.
        topology: What the runtime serves (:class:`Topology`).
        tiers: Every tier, fastest first (:class:`TierInfo`).
        capabilities: What the runtime offers (``CAP_*`` constants: ``live_tunable``,
            ``read_only``, ``control``, ``snapshot``, ``replay``).
        addresses: ZeroMQ endpoints by role: ``"pub"``, ``"replay"``, ``"control"``.
        kv_topic: The topic its vLLM-compatible block events use.
        topic_seqs: The last sequence number sent on every topic when this Hello was sent
            (topics with nothing sent yet are absent). A reader greeted by it knows where each
            topic starts for it, so a loss right after joining is still seen as a gap.
    """

    protocol_version: int = PROTOCOL_VERSION
    software_version: str = ""
    mode: str = MODE_MODEL
    speed: float = 1.0
    started_at: float = 0.0
    host: str = ""
    pid: int = 0
    topology: Topology = msgspec.field(default_factory=Topology)
    tiers: list[TierInfo] = msgspec.field(default_factory=list)
    capabilities: list[str] = msgspec.field(default_factory=list)
    addresses: dict[str, str] = msgspec.field(default_factory=dict)
    kv_topic: str = TOPIC_KV
    topic_seqs: dict[str, int] = msgspec.field(default_factory=dict)


# ------------------------------------------------------------------------------------- stats


class TierSample(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """One tier at one tick, inside :class:`TierStats`.

    Occupancy and settings are values at the tick; counters are cumulative since the epoch
    started; latency histograms are deltas since the previous ``TierStats``.

    Attributes:
        name: Tier name.
        used_bytes: Bytes resident.
        used_blocks: Blocks resident.
        capacity_bytes: Capacity in bytes.
        high_watermark: Fill fraction of capacity (0..1) above which the tier starts evicting.
        low_watermark: Fill fraction of capacity (0..1) eviction brings it back down to.
        eviction_policy: Name of the eviction policy.
        health: ``"ok"``, ``"degraded"`` or ``"down"``.
        health_reason: Why it is not ok ("" when ok).
        description: What the tier says it is at this tick (``describe()``: block count,
            fragmentation, a memory server's pid...); "" when the sender does not say, and the
            Hello's description stands.
        faults: Injected faults active now (``"down"``, ``"slow"``, ``"corrupt"``, ``"full"``).
        hits: Gets that found the block (count).
        misses: Gets that did not (count).
        puts: Blocks stored (count).
        promotions: Blocks moved up out of this tier (count).
        demotions: Blocks moved down out of this tier (count).
        drops: Blocks dropped from this tier without being kept below (count).
        evictions: Blocks evicted to make room (count; demotions or drops).
        deletes: Blocks deleted on request (count).
        bytes_in: Bytes written into the tier.
        bytes_out: Bytes read out of the tier.
        errors: Failed operations (count).
        corrupt: Blocks that failed their integrity check (count).
        latency: Per operation (``"put"``, ``"get"``, ``"delete"``), the histogram counts recorded
            since the previous TierStats over the fixed power-of-two ns buckets of
            :mod:`tiertop.tiers.stats` (:data:`LATENCY_BUCKETS` ints; an empty list means no
            samples). An operation missing from the dict had no samples.
        latency_sum_ns: Per operation, the sum of latencies in ns recorded since the previous
            TierStats (for means).
    """

    name: str = ""
    used_bytes: int = 0
    used_blocks: int = 0
    capacity_bytes: int = 0
    high_watermark: float = 1.0
    low_watermark: float = 1.0
    eviction_policy: str = ""
    health: str = "ok"
    health_reason: str = ""
    description: str = ""
    faults: list[str] = msgspec.field(default_factory=list)
    hits: int = 0
    misses: int = 0
    puts: int = 0
    promotions: int = 0
    demotions: int = 0
    drops: int = 0
    evictions: int = 0
    deletes: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    errors: int = 0
    corrupt: int = 0
    latency: dict[str, list[int]] = msgspec.field(default_factory=dict)
    latency_sum_ns: dict[str, int] = msgspec.field(default_factory=dict)


class TierStats(TelemetryMessage):
    """Per-tick statistics of every tier plus runtime-wide figures. Topic ``tt.stats``.

    Attributes:
        tick: Tick number since the epoch started.
        interval_s: Message-clock seconds since the previous TierStats (the span of the latency
            deltas and of the rates).
        tiers: One :class:`TierSample` per tier, fastest first.
        placement_policy: Name of the placement policy (where new blocks go).
        promotion_policy: Name of the promotion policy.
        paused: True while the workload is paused.
        queue_depth: Requests waiting to be scheduled.
        requests_in_flight: Requests being served.
        request_rate: Requests completed per second over the interval.
        tokens_per_s: Tokens generated per second over the interval.
        prefix_query_tokens: Prompt tokens looked up in the KV cache (cumulative).
        prefix_hit_tokens: Prompt tokens found in some tier (cumulative).
        rss_bytes: Resident set size of the runtime process.
        mem_total_bytes: Physical memory of the machine.
        mem_available_bytes: Memory available on the machine.
        numa_free_bytes: Free memory per NUMA node id (None when unknown / one node).
        dropped_messages: Messages the publisher dropped since the epoch started (high-water
            mark drops + queue drops + encode errors); filled in by the publisher.
        dropped_hwm_messages: Of which, messages a full subscriber pipe refused (the sequence
            number was used: readers see these as gaps, and can replay them).
        dropped_queue_items: Items dropped because the publisher's in-memory queue was full
            (before getting a sequence number: readers only learn of them here).
        dropped_events: Block events lost in either way (count of events, not messages).
    """

    tick: int = 0
    interval_s: float = 0.0
    tiers: list[TierSample] = msgspec.field(default_factory=list)
    placement_policy: str = ""
    promotion_policy: str = ""
    paused: bool = False
    queue_depth: int = 0
    requests_in_flight: int = 0
    request_rate: float = 0.0
    tokens_per_s: float = 0.0
    prefix_query_tokens: int = 0
    prefix_hit_tokens: int = 0
    rss_bytes: int = 0
    mem_total_bytes: int = 0
    mem_available_bytes: int = 0
    numa_free_bytes: dict[int, int] | None = None
    dropped_messages: int = 0
    dropped_hwm_messages: int = 0
    dropped_queue_items: int = 0
    dropped_events: int = 0


# ------------------------------------------------------------------------------------- moves

MOVE_PROMOTE: Final = "promote"
MOVE_DEMOTE: Final = "demote"
MOVE_DROP: Final = "drop"


class TierMove(msgspec.Struct, array_like=True, forbid_unknown_fields=False, gc=False):
    """One block movement made by tiertop. Encoded positionally (compact; new fields are only
    ever appended, and readers ignore trailing elements they do not know).

    Attributes:
        kind: ``"promote"``, ``"demote"`` or ``"drop"``.
        key: Block hash (64-bit unsigned int).
        from_tier: Tier the block left.
        to_tier: Tier the block went to ("" for a drop).
        nbytes: Bytes moved.
        latency_s: Time the move took in seconds.
        reason: Why (``"watermark"``, ``"policy"``, ``"capacity"``, ``"command"``...).
        clock: Message clock (seconds) when it happened.
    """

    kind: str
    key: int
    from_tier: str
    to_tier: str = ""
    nbytes: int = 0
    latency_s: float = 0.0
    reason: str = ""
    clock: float = 0.0


class TierMoves(TelemetryMessage):
    """A batch of :class:`TierMove`. Topic ``tt.moves``.

    Attributes:
        moves: The movements, oldest first.
        sample_rate: Fraction of movements reported (1.0: all; 0.01: one in a hundred, each
            standing for 100). Counts come from TierStats either way.
    """

    moves: list[TierMove] = msgspec.field(default_factory=list)
    sample_rate: float = 1.0


# ---------------------------------------------------------------------------------- requests


class RequestDone(TelemetryMessage):
    """A finished request. Topic ``tt.requests``.

    Attributes:
        request_id: Id of the request.
        conversation_id: Id of the conversation it belongs to ("" when none).
        ttft_s: Time to first token, seconds.
        tpot_s: Mean time per output token after the first, seconds.
        e2e_s: End-to-end latency (arrival to last token), seconds.
        prompt_tokens: Prompt length in tokens.
        output_tokens: Tokens generated.
        prefix_tokens: Prompt tokens whose KV was restored, by the tier that served them.
        recomputed_tokens: Prompt tokens whose KV had to be computed.
        fetch_bytes: Bytes fetched, by tier.
        fetch_latency_s: Time spent fetching, by tier, seconds.
        sample_rate: Fraction of requests reported (1.0: every request; 0.1: this message stands
            for ten).
        error: Why the request failed ("" when it succeeded).
    """

    request_id: str = ""
    conversation_id: str = ""
    ttft_s: float = 0.0
    tpot_s: float = 0.0
    e2e_s: float = 0.0
    prompt_tokens: int = 0
    output_tokens: int = 0
    prefix_tokens: dict[str, int] = msgspec.field(default_factory=dict)
    recomputed_tokens: int = 0
    fetch_bytes: dict[str, int] = msgspec.field(default_factory=dict)
    fetch_latency_s: dict[str, float] = msgspec.field(default_factory=dict)
    sample_rate: float = 1.0
    error: str = ""


# ------------------------------------------------------------------------- control and faults


class ControlChange(TelemetryMessage):
    """A command the runtime applied (every applied change is published). Topic ``tt.control``.

    Attributes:
        command: Command name (e.g. ``"set_watermarks"``).
        target: What it changed (a tier name, ``"workload"``, ``"runtime"``...).
        old: Value before (any msgpack value; units as the command defines).
        new: Value after.
        by: Who sent it (client id).
        request_id: Id of the command request.
    """

    command: str = ""
    target: str = ""
    old: Any = None
    new: Any = None
    by: str = ""
    request_id: str = ""


class FaultEvent(TelemetryMessage):
    """A fault injected into, or cleared from, a tier. Topic ``tt.faults``.

    Attributes:
        tier: Tier name.
        fault: Fault kind: ``"down"``, ``"slow"``, ``"corrupt"``, ``"full"``.
        old: State before: ``"inactive"`` or ``"active"``.
        new: State after: ``"active"`` or ``"inactive"``.
        reason: Why (``"injected"``, ``"cleared"``, ``"expired"``...).
        delay_s: Extra latency per operation for ``slow`` faults, seconds.
        duration_s: How long it lasts, seconds (None: until cleared).
    """

    tier: str = ""
    fault: str = ""
    old: str = ""
    new: str = ""
    reason: str = ""
    delay_s: float = 0.0
    duration_s: float | None = None


class HealthChange(TelemetryMessage):
    """A tier's health changed. Topic ``tt.faults``.

    Attributes:
        tier: Tier name.
        old: Health before: ``"ok"``, ``"degraded"``, ``"down"``.
        new: Health after.
        reason: Why.
    """

    tier: str = ""
    old: str = ""
    new: str = ""
    reason: str = ""


# ------------------------------------------------------------------------------------ snapshot


class ResidentSummary(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """What one tier holds, inside :class:`Snapshot`.

    Attributes:
        tier: Tier name.
        blocks: Blocks resident.
        bytes: Bytes resident.
        block_hashes: The resident block hashes when the runtime includes them (None: not
            included, e.g. too many); with them a reader can rebuild block-level state.
    """

    tier: str = ""
    blocks: int = 0
    bytes: int = 0
    block_hashes: list[int] | None = None


class Snapshot(TelemetryMessage):
    """The full state, answering a reader's snapshot request (never broadcast).

    ``topic_seqs`` are read before the state is, so the state reflects at least every message up
    to them: a reader applies the snapshot, then the live stream after those sequence numbers
    (dropping older duplicates). Block events are assignments (present/absent per tier), so
    the few applied twice converge.

    Attributes:
        hello: The runtime's current Hello.
        stats: The last TierStats published (None before the first tick).
        resident: Per-tier resident summary (:class:`ResidentSummary`).
        settings: Current live settings by name (watermarks, policies, rates...), as the control
            plane names them.
        topic_seqs: The last sequence number sent on every topic at snapshot time (topics with
            nothing sent yet are absent).
    """

    hello: Hello | None = None
    stats: TierStats | None = None
    resident: list[ResidentSummary] = msgspec.field(default_factory=list)
    settings: dict[str, Any] = msgspec.field(default_factory=dict)
    topic_seqs: dict[str, int] = msgspec.field(default_factory=dict)


class Heartbeat(TelemetryMessage):
    """Liveness, sent every heartbeat interval. Topic ``tt.heartbeat``.

    Attributes:
        topic_seqs: The last sequence number sent on every topic so far; a reader compares it
            with what it received to detect a loss at the tail of a stream.
        uptime_s: Wall seconds since the publisher started.
        queue_len: Items waiting in the publisher's queue.
    """

    topic_seqs: dict[str, int] = msgspec.field(default_factory=dict)
    uptime_s: float = 0.0
    queue_len: int = 0


# ------------------------------------------------------------------------------------ cluster


class RackSample(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """One rack of a simulated cluster at one tick, inside :class:`ClusterStats`.

    Attributes:
        rack: Rack id (0-based).
        gpus: GPUs in the rack.
        occupancy: Per tier kind (``"hbm"``, ``"dram"``, ``"pool"``, ``"ssd"``), the fraction
            of the rack's capacity of that kind in use (0..1). Kinds the rack lacks are absent.
        hits: Block lookups of requests served in this rack that found the block in some tier
            (count, cumulative).
        lookups: Block lookups of requests served in this rack (count, cumulative).
        evictions: Blocks evicted from the rack's tiers, all kinds (count, cumulative).
        load: Mean fraction of the GPUs' running-request KV memory in use (0..1).
        queue: Requests waiting in the rack's GPU queues.
        running: Requests being prefilled, transferred or decoded in the rack.
        faults: Faults active on the rack's shared pool (``"down"``, ``"slow"``...).
    """

    rack: int = 0
    gpus: int = 0
    occupancy: dict[str, float] = msgspec.field(default_factory=dict)
    hits: int = 0
    lookups: int = 0
    evictions: int = 0
    load: float = 0.0
    queue: int = 0
    running: int = 0
    faults: list[str] = msgspec.field(default_factory=list)


class GpuSample(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """One GPU of a rack a reader drilled into, inside :class:`ClusterStats`.

    Attributes:
        gpu: GPU id (0-based, cluster-wide).
        rack: Its rack id.
        role: ``"colocated"`` (prefill and decode), ``"prefill"`` or ``"decode"``.
        occupancy: Per tier kind of the GPU's own tiers (``"hbm"``, ``"dram"``, ``"ssd"``), the
            fraction of its capacity in use (0..1).
        hits: Block lookups of requests it served that hit some tier (count, cumulative).
        lookups: Block lookups of requests it served (count, cumulative).
        evictions: Blocks evicted from its own tiers (count, cumulative).
        load: Fraction of its running-request KV memory in use (0..1).
        queue: Requests waiting for it.
        running: Requests it is prefilling, transferring or decoding.
    """

    gpu: int = 0
    rack: int = 0
    role: str = ""
    occupancy: dict[str, float] = msgspec.field(default_factory=dict)
    hits: int = 0
    lookups: int = 0
    evictions: int = 0
    load: float = 0.0
    queue: int = 0
    running: int = 0


class ClusterStats(TelemetryMessage):
    """Per-tick summary of a simulated cluster (the simulator only). Topic ``tt.cluster``.

    Tier totals across the cluster go in :class:`TierStats` as usual (one sample per tier kind);
    this message adds the per-rack picture, and per-GPU detail for the racks a reader asked to
    drill into (the ``SetDrillDown`` command). Counters are cumulative since the epoch.

    Attributes:
        tick: Tick number since the epoch started (the same as the TierStats of the tick).
        interval_s: Message-clock (virtual) seconds since the previous ClusterStats.
        racks: One :class:`RackSample` per rack, by rack id.
        gpus: One :class:`GpuSample` per GPU of each drilled-into rack.
        drill_racks: The racks whose GPUs are in ``gpus``.
        sample_note: How the figures are sampled, in words (e.g. which requests a
            RequestDone stands for).
    """

    tick: int = 0
    interval_s: float = 0.0
    racks: list[RackSample] = msgspec.field(default_factory=list)
    gpus: list[GpuSample] = msgspec.field(default_factory=list)
    drill_racks: list[int] = msgspec.field(default_factory=list)
    sample_note: str = ""


#: Every message type of the schema, one tagged union.
AnyMessage = (
    Hello
    | TierStats
    | TierMoves
    | RequestDone
    | ControlChange
    | FaultEvent
    | HealthChange
    | Snapshot
    | Heartbeat
    | ClusterStats
)

MESSAGE_TYPES: Final[tuple[type[TelemetryMessage], ...]] = (
    Hello,
    TierStats,
    TierMoves,
    RequestDone,
    ControlChange,
    FaultEvent,
    HealthChange,
    Snapshot,
    Heartbeat,
    ClusterStats,
)

#: The topic each message type is published on.
TOPIC_OF: Final[dict[type[TelemetryMessage], str]] = {
    Hello: TOPIC_HELLO,
    TierStats: TOPIC_STATS,
    TierMoves: TOPIC_MOVES,
    RequestDone: TOPIC_REQUESTS,
    ControlChange: TOPIC_CONTROL,
    FaultEvent: TOPIC_FAULTS,
    HealthChange: TOPIC_FAULTS,
    Snapshot: TOPIC_SNAPSHOT,
    Heartbeat: TOPIC_HEARTBEAT,
    ClusterStats: TOPIC_CLUSTER,
}

#: Every topic tiertop's publisher uses, the vLLM-compatible one first.
TOPICS: Final[tuple[str, ...]] = (
    TOPIC_KV,
    TOPIC_HELLO,
    TOPIC_STATS,
    TOPIC_MOVES,
    TOPIC_REQUESTS,
    TOPIC_CONTROL,
    TOPIC_FAULTS,
    TOPIC_HEARTBEAT,
    TOPIC_CLUSTER,
)


def type_name(cls: type[TelemetryMessage]) -> str:
    """The wire tag of a message type."""
    tag = cls.__struct_config__.tag
    return tag if isinstance(tag, str) else cls.__name__


#: Wire tags of the types this version knows.
KNOWN_TYPE_NAMES: Final[frozenset[str]] = frozenset(type_name(c) for c in MESSAGE_TYPES)

#: Number of top-level keys each type encodes to (its fields plus the tag); a map with more keys
#: carries fields this version does not know.
FIELD_COUNT: Final[dict[type[TelemetryMessage], int]] = {
    c: len(c.__struct_fields__) + 1 for c in MESSAGE_TYPES
}


def is_tt_topic(topic: str) -> bool:
    """True for topics of tiertop's own messages, False for vLLM-compatible block events."""
    return topic.startswith(TT_TOPIC_PREFIX)


def empty_latency() -> list[int]:
    """A zeroed histogram of :data:`LATENCY_BUCKETS` counts."""
    return [0] * LATENCY_BUCKETS
