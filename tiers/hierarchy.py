"""The tier hierarchy: an ordered list of tiers with watermarks, moving real blocks between them.

Each block lives in exactly one tier (an exclusive hierarchy). A put lands where the placement
policy says. When a tier passes its high watermark, victims chosen by that tier's eviction policy
move to the next tier (or are dropped from the last) until it is at or under its low watermark;
before any insert, victims are moved until the new block fits. A hit may promote the block.

With ``store=None`` a tier is accounting-only: the hierarchy tracks identities and sizes and runs
exactly the same policy code, which is what the cluster simulator and trace replay use.

Which tier holds a block is known from the tiers' eviction policies alone (``key in
policy.resident_keys``, asked fastest tier first): a table of locations of its own cost every
resident block a second dict entry, a third of the metadata a long-running hierarchy held.

Not thread-safe: the runtime applies every operation and every live change on one thread.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .block import Block, BlockHash
from .errors import BlockCorrupt, StoreFull, StoreUnavailable, TierError
from .events import EventKind, EventSink, TierEvent
from .health import Health
from .policies.base import EvictionPolicy, eviction_policy
from .policies.oracle import FutureOracle
from .policies.placement import (
    PlacementPolicy,
    placement_policy,
    promotion_policy,
    strategy,
)
from .store import TierStore

DEFAULT_HIGH = 0.9
DEFAULT_LOW = 0.8

# Enum members as module constants: an attribute lookup on an Enum class costs ~100 ns in
# Python 3.11, which the accounting-only hot path pays several times per miss otherwise.
_PUT, _PROMOTE, _DEMOTE = EventKind.PUT, EventKind.PROMOTE, EventKind.DEMOTE
_HIT, _MISS, _DROP = EventKind.HIT, EventKind.MISS, EventKind.DROP
_DOWN = Health.DOWN


@dataclass
class TierConfig:
    """How to build one tier. ``store=None`` makes it accounting-only."""

    name: str
    capacity_bytes: int
    high: float = DEFAULT_HIGH
    low: float = DEFAULT_LOW
    eviction: str = "lru"
    eviction_options: dict[str, Any] = field(default_factory=dict)
    store: TierStore | None = None
    kind: str | None = None  # defaults to the store's kind, or "accounting"


@dataclass(slots=True)
class TierCounters:
    """Cumulative per-tier counters (never reset; readers take differences)."""

    hits: int = 0
    placed: int = 0  # new blocks that entered here
    promotions_in: int = 0
    promotions_out: int = 0
    demotions_in: int = 0
    demotions_out: int = 0
    evictions: int = 0  # victims chosen here (each then demoted or dropped)
    drops: int = 0  # blocks that left the hierarchy from here
    deletes: int = 0
    errors: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


def validate_watermarks(name: str, high: float, low: float) -> None:
    if not 0.0 <= high <= 1.0:
        raise ValueError(f"high watermark {high} for tier {name} is outside 0..1")
    if not 0.0 <= low <= 1.0:
        raise ValueError(f"low watermark {low} for tier {name} is outside 0..1")
    if low > high:
        raise ValueError(f"low watermark {low} for tier {name} is above its high watermark {high}")


class Tier:
    """One level of the hierarchy: a store (or none), its policy, capacity and watermarks."""

    def __init__(self, index: int, config: TierConfig, policy: EvictionPolicy) -> None:
        validate_watermarks(config.name, config.high, config.low)
        self.index = index
        self.name = config.name
        self.store = config.store
        self.kind = config.kind or (config.store.kind if config.store is not None else "accounting")
        self.policy = policy  # replaced through the Hierarchy, which notes its resident_keys
        self.eviction_options = dict(config.eviction_options)
        self.capacity = int(config.capacity_bytes)
        self.high = config.high
        self.low = config.low
        self.used = 0
        self.blocks = 0
        self.counters = TierCounters()
        # copies the hierarchy let go of but the medium still holds (its delete failed, the tier
        # was down); deleted before anything else is put here, so the medium has the room that
        # ``used`` says it has
        self.pending_deletes: set[BlockHash] = set()

    def has_room_for(self, nbytes: int) -> bool:
        return self.used + nbytes <= self.high * self.capacity

    def is_usable(self) -> bool:
        return self.store is None or self.store.health is not Health.DOWN

    @property
    def health(self) -> Health:
        return Health.OK if self.store is None else self.store.health

    def describe(self) -> str:
        if self.store is None:
            return f"{self.name}: accounting only (sizes and identities, no bytes)"
        return self.store.describe()

    def __repr__(self) -> str:
        return f"Tier({self.name!r}, {self.used}/{self.capacity} B, {self.policy.name})"


class Hierarchy:
    """Ordered tiers (fastest first) with live-tunable watermarks, capacities and policies."""

    def __init__(
        self,
        tiers: Sequence[TierConfig],
        *,
        block_bytes: int | None = None,
        placement: str = "top",
        promotion: str = "on-hit",
        strategy_name: str | None = None,
        sink: EventSink | None = None,
        oracle: FutureOracle | None = None,
    ) -> None:
        if not tiers:
            raise ValueError("a hierarchy needs at least one tier")
        names = [t.name for t in tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        self.block_bytes = block_bytes
        self.oracle = oracle
        self.sink = sink
        self.tiers: list[Tier] = []
        for index, config in enumerate(tiers):
            options = dict(config.eviction_options)
            if oracle is not None and config.eviction == "belady":
                options.setdefault("oracle", oracle)
            config = TierConfig(**{**config.__dict__, "eviction_options": options})
            policy = eviction_policy(config.eviction, self._blocks_of(config.capacity_bytes),
                                     **options)
            tier = Tier(index, config, policy)
            if tier.store is not None:
                if tier.store.num_blocks:
                    raise ValueError(
                        f"tier {tier.name!r}: its store already holds {tier.store.num_blocks} "
                        "blocks; adopt them with Hierarchy.adopt_resident() after construction"
                    )
                if tier.store.capacity_bytes != tier.capacity:
                    tier.store.set_capacity(tier.capacity)
                tier.store.health_listener = self._on_store_health
            self.tiers.append(tier)
        self._by_name = {t.name: t for t in self.tiers}
        self._track_policies()
        self._odd_size: dict[BlockHash, int] = {}  # sizes that differ from block_bytes
        self._successor: dict[BlockHash, BlockHash] = {}  # parent -> child, for prefetch
        self.lookups = 0
        self.hits = 0
        self.misses = 0
        self.puts = 0  # new blocks accepted
        self.rejected = 0  # new blocks no tier could take
        self.drops = 0  # blocks that left the hierarchy (victims of the last tier, lost, corrupt)
        self.deletes = 0  # blocks removed on request (delete, clear)
        if strategy_name is not None:
            self.placement, self.promotion = strategy(strategy_name, self.tiers)
        else:
            self.placement = placement_policy(placement, self.tiers)
            self.promotion = promotion_policy(promotion)
        self.strategy_name = strategy_name

    @property
    def placement(self) -> PlacementPolicy:
        return self._placement

    @placement.setter
    def placement(self, policy: PlacementPolicy) -> None:
        self._placement = policy
        # where each tier's victims go: fixed for a placement policy, so asked once
        self._demote_to = [policy.demote_to(self.tiers, i) for i in range(len(self.tiers))]
        self._fixed_target = policy.fixed_target(self.tiers)

    # ------------------------------------------------------------------ lookups and access

    def locate(self, key: BlockHash) -> int | None:
        """Index of the tier holding ``key`` (no side effects), or None."""
        if key in self._top_keys:
            return 0
        for index, resident_keys in enumerate(self._lower_keys, 1):
            if key in resident_keys:
                return index
        return None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and self.locate(key) is not None

    def __len__(self) -> int:
        return sum(tier.blocks for tier in self.tiers)

    def size_of(self, key: BlockHash) -> int:
        return self._odd_size.get(key, self.block_bytes or 0)

    def access(
        self,
        key: BlockHash,
        nbytes: int | None = None,
        position: int = 0,
        parent: BlockHash | None = None,
    ) -> int:
        """Accounting-only access: a hit returns the serving tier's index (promoting as the
        policy says); a miss returns -1 after placing the block as a new put."""
        if self.oracle is not None:
            self.oracle.advance(key)
        return self._access(key, nbytes, position, parent)

    def run_trace(self, keys: Iterable[BlockHash], nbytes: int | None = None) -> int:
        """Access every key in order (accounting-only); returns the number of hits.

        The same bookkeeping as calling ``access()`` per key (a test holds the two equal), with
        two short paths for what dominates a replay: a hit in the top tier, and a miss into an
        accounting-only top tier whose victims leave the hierarchy (one tier, or local-only);
        counters are added up once at the end. Everything else goes through ``access()``'s own
        code. Observed hierarchies (a sink) and prefetching take the plain loop.
        """
        before = self.hits
        if self.sink is not None or self.promotion.prefetch_depth:
            for key in keys:
                self.access(key, nbytes)
            return self.hits - before
        size = self.block_bytes if nbytes is None else nbytes
        if size is None:
            raise ValueError("run_trace() needs nbytes when the hierarchy has no block_bytes")
        top = self.tiers[0]
        policy = top.policy
        resident_keys, touch, insert, victim = (policy.resident_keys, policy.touch,
                                                policy.insert, policy.victim)
        locate, below = self.locate, bool(self._lower_keys)
        slow = self._access
        put_new = self._put_new
        oracle = self.oracle
        # with an oracle, each access advances it inline (what FutureOracle.advance does)
        sequence = oracle.sequence if oracle is not None else []
        next_positions = oracle.next_positions if oracle is not None else []
        next_use = oracle.next_use_table if oracle is not None else {}
        position = oracle.position if oracle is not None else 0
        end = len(sequence)
        # misses placed inline: the top tier holds no bytes, takes every new block, drops its
        # victims, and all blocks have the one size
        inline = (top.store is None and self._fixed_target == 0 and self._demote_to[0] is None
                  and size == self.block_bytes and not self._odd_size
                  and 0 < size <= top.capacity)
        capacity, high = top.capacity, top.high * top.capacity
        top_hits = misses = placed = evicted = 0
        used, blocks = top.used, top.blocks  # kept in locals; written back around slow calls
        for key in keys:
            if oracle is not None:
                if position >= end or sequence[position] != key:
                    oracle.position = position
                    raise oracle.mismatch(key, position)
                next_use[key] = next_positions[position]
                position += 1
            if key in resident_keys:
                touch(key)
                top_hits += 1
                continue
            if below and locate(key) is not None:  # a lower tier's hit: access() serves it
                top.used, top.blocks = used, blocks
                slow(key, size, 0, None)
                used, blocks = top.used, top.blocks
                continue
            misses += 1
            if inline:
                while used + size > capacity:  # make room: victims leave the hierarchy
                    victim(key)
                    used -= size
                    blocks -= 1
                    evicted += 1
                used += size
                blocks += 1
                insert(key)
                placed += 1
                if used <= high:
                    continue
            top.used, top.blocks = used, blocks
            if inline:
                self._enforce_high(top)
            else:
                put_new(key, size, 0, None, None)
            used, blocks = top.used, top.blocks
        top.used, top.blocks = used, blocks
        if oracle is not None:
            oracle.position = position
        counters = top.counters
        counters.hits += top_hits
        counters.placed += placed
        counters.bytes_in += placed * size
        counters.evictions += evicted
        counters.drops += evicted
        counters.bytes_out += evicted * size
        self.lookups += top_hits + misses
        self.hits += top_hits
        self.misses += misses
        self.puts += placed
        self.drops += evicted
        return self.hits - before

    def _access(
        self, key: BlockHash, nbytes: int | None, position: int, parent: BlockHash | None
    ) -> int:
        self.lookups += 1
        index = 0 if key in self._top_keys else self.locate(key)  # the top tier without a call
        if index is not None:
            tier = self.tiers[index]
            self.hits += 1
            tier.counters.hits += 1
            if self.sink is not None:
                self._emit(_HIT, key, tier, nbytes=self.size_of(key))
            if index and self.promotion.on_hit:
                self._promote(tier, key, None)
            else:
                tier.policy.touch(key)
            if self.promotion.prefetch_depth:
                self._prefetch(key)
            return index
        self.misses += 1
        if self.sink is not None:
            self._emit(_MISS, key, None)
        if nbytes is None:
            if self.block_bytes is None:
                raise ValueError("access() needs nbytes when the hierarchy has no block_bytes")
            nbytes = self.block_bytes
        self._put_new(key, nbytes, position, parent, None)
        return -1

    def get(self, key: BlockHash, out: Any = None) -> tuple[Block, int] | None:
        """The block's exact bytes and the index of the tier that served it, or None (a miss).

        A corrupt block, a block the medium lost, or a tier that is down all end as a miss:
        the caller recomputes; wrong bytes are never returned."""
        self.lookups += 1
        tier = self._where(key)
        if tier is None:
            self._miss(key)
            return None
        store = tier.store
        if store is None:
            raise TypeError(f"tier {tier.name!r} is accounting-only: use access(), not get()")
        started = time.perf_counter()
        try:
            block = store.get(key, out)
        except BlockCorrupt as exc:
            self._lose(tier, key, f"corrupt: {exc.reason}")
            self._miss(key)
            return None
        except StoreUnavailable as exc:
            tier.counters.errors += 1
            self._emit_error(tier, key, f"get failed: {exc}")
            self._miss(key)
            return None
        if block is None:
            self._lose(tier, key, "lost by its medium")
            self._miss(key)
            return None
        self.hits += 1
        counters = tier.counters
        counters.hits += 1
        counters.bytes_out += block.header.nbytes
        if self.sink is not None:
            self._emit(_HIT, key, tier, nbytes=block.header.nbytes,
                       latency_s=time.perf_counter() - started)
        index = tier.index
        if index and self.promotion.on_hit:
            self._promote(tier, key, block)
        else:
            tier.policy.touch(key)
        if self.promotion.prefetch_depth:
            self._prefetch(key)
        return block, index

    def put(self, block: Block, position: int = 0, parent: BlockHash | None = None) -> int | None:
        """Store a new block; returns the index of the tier it landed in, or None when no tier
        could take it. A block already resident and reachable is left where it is; one resident
        in a tier that is down is dropped there (the copy stays on that medium until it can be
        deleted, see ``Tier.pending_deletes``) and put again as a new block."""
        key = block.key
        tier = self._where(key)
        if tier is not None:
            if tier.is_usable():
                return tier.index
            self._lose(tier, key, "unreachable (tier down); put again")
        landed = self._put_new(key, block.header.nbytes, position, parent, block)
        if landed is None:
            return None
        if key in landed.policy.resident_keys:
            return landed.index
        where = self._where(key)  # a high-watermark pass moved it on
        return None if where is None else where.index

    # ------------------------------------------------------------------ removal

    def delete(self, key: BlockHash) -> bool:
        tier = self._where(key)
        if tier is None:
            return False
        self._remove(tier, key)
        tier.counters.deletes += 1
        self.deletes += 1
        self._emit(EventKind.DELETE, key, tier)
        return True

    def clear(self, tier_name: str | None = None) -> int:
        """Remove every block (of one tier, or all); returns how many were removed."""
        targets = self.tiers if tier_name is None else [self.tier(tier_name)]
        removed = 0
        for tier in targets:
            keys = list(tier.policy)
            for key in keys:
                self._odd_size.pop(key, None)
            removed += len(keys)
            tier.policy = tier.policy.from_resident(
                [], self._blocks_of(tier.capacity), **tier.eviction_options
            )
            self._track_policies()
            tier.counters.deletes += len(keys)
            tier.used = 0
            tier.blocks = 0
            if tier.store is not None:
                try:
                    tier.store.clear()
                    tier.pending_deletes.clear()
                except TierError as exc:
                    tier.pending_deletes.update(keys)
                    self._emit_error(tier, None, f"clear failed on the medium: {exc}")
            self._emit(EventKind.CLEAR, None, tier, detail=f"{len(keys)} blocks")
        self.deletes += removed
        if tier_name is None:
            self._successor.clear()
        return removed

    # ------------------------------------------------------------------ live changes

    def tier(self, name: str) -> Tier:
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(self._by_name)
            raise ValueError(f"unknown tier {name!r}; known: {known}") from None

    def set_watermarks(self, name: str, high: float, low: float) -> tuple[float, float]:
        """Change a tier's watermarks; takes effect at once. Returns the old (high, low)."""
        tier = self.tier(name)
        validate_watermarks(name, high, low)
        old = (tier.high, tier.low)
        tier.high, tier.low = high, low
        self._emit(EventKind.CONFIG, None, tier, detail=f"watermarks {old} -> {(high, low)}")
        self._enforce_high(tier)
        return old

    def set_capacity(self, name: str, capacity_bytes: int) -> int:
        """Change a tier's capacity; shrinking evicts down to fit first. Returns the old one."""
        tier = self.tier(name)
        if capacity_bytes < 0:
            raise ValueError(f"capacity {capacity_bytes} for tier {name} must be >= 0")
        store = tier.store
        if store is not None:
            if not tier.is_usable():
                raise ValueError(f"tier {name} is down; its capacity can change once it is back")
            if tier.pending_deletes:
                self._retry_deletes(tier)
            limit = store.max_capacity()
            if limit is not None and capacity_bytes > limit:
                raise ValueError(
                    f"capacity {capacity_bytes} B for tier {name} exceeds its medium ({limit} B)"
                )
        old = tier.capacity
        tier.capacity = int(capacity_bytes)
        while tier.used > tier.capacity:
            self._evict_one(tier, None)
        if store is not None:
            try:
                store.set_capacity(tier.capacity)
            except ValueError as exc:  # deletes failed on the way: the medium keeps more
                self._emit_error(tier, None, f"medium kept its capacity: {exc}")
        tier.policy.resize(self._blocks_of(tier.capacity))
        self._emit(EventKind.CONFIG, None, tier, detail=f"capacity {old} -> {capacity_bytes}")
        self._enforce_high(tier)
        return old

    def set_eviction_policy(self, name: str, policy: str, **options: Any) -> str:
        """Switch a tier's eviction policy; the new one starts from the blocks resident now."""
        tier = self.tier(name)
        if policy == "belady" and self.oracle is not None:
            options.setdefault("oracle", self.oracle)
        fresh = eviction_policy(policy, self._blocks_of(tier.capacity), **options)
        for key in tier.policy:
            fresh.insert(key)
        old = tier.policy.name
        tier.policy = fresh
        self._track_policies()
        tier.eviction_options = options
        self._emit(EventKind.CONFIG, None, tier, detail=f"eviction {old} -> {policy}")
        return old

    def set_placement(self, name: str) -> str:
        old = self.placement.describe()
        self.placement = placement_policy(name, self.tiers)
        self.strategy_name = None
        self._emit(EventKind.CONFIG, None, None, detail=f"placement {old} -> {name}")
        return old

    def set_promotion(self, name: str) -> str:
        old = self.promotion.name
        self.promotion = promotion_policy(name)
        self.strategy_name = None
        self._emit(EventKind.CONFIG, None, None, detail=f"promotion {old} -> {name}")
        return old

    def set_strategy(self, name: str) -> str | None:
        old = self.strategy_name
        self.placement, self.promotion = strategy(name, self.tiers)
        self.strategy_name = name
        self._emit(EventKind.CONFIG, None, None, detail=f"strategy {old} -> {name}")
        return old

    def adopt_resident(self, name: str) -> int:
        """Take the blocks a tier's store already holds (a reopened disk directory) into the
        hierarchy's bookkeeping; returns how many were adopted."""
        tier = self.tier(name)
        if tier.store is None:
            return 0
        adopted = 0
        for key in tier.store.keys():  # noqa: SIM118  (a store is not a dict)
            if self._where(key) is not None:
                continue
            tier.pending_deletes.discard(key)  # a stranded copy is a good copy: keep it
            self._attach(tier, key, tier.store.size_of(key))
            adopted += 1
        self._enforce_high(tier)
        return adopted

    # ------------------------------------------------------------------ internals

    def _blocks_of(self, capacity_bytes: int) -> int:
        return capacity_bytes // self.block_bytes if self.block_bytes else 0

    def _track_policies(self) -> None:
        """Note each tier's ``policy.resident_keys``: every lookup asks them, tier by tier.
        Called whenever a tier's policy object is replaced."""
        tables = [tier.policy.resident_keys for tier in self.tiers]
        self._top_keys = tables[0]
        self._lower_keys = tuple(tables[1:])  # flat and small: the simulator has 10k of these

    def _where(self, key: BlockHash) -> Tier | None:
        index = self.locate(key)
        return None if index is None else self.tiers[index]

    def _miss(self, key: BlockHash) -> None:
        self.misses += 1
        if self.sink is not None:
            self._emit(_MISS, key, None)

    def _put_new(
        self,
        key: BlockHash,
        nbytes: int,
        position: int,
        parent: BlockHash | None,
        block: Block | None,
    ) -> Tier | None:
        """Place a block no tier holds; returns the tier it entered (a high-watermark pass may
        since have moved it on), or None when no tier could take it."""
        if self.block_bytes is None:
            self.block_bytes = nbytes
            for tier in self.tiers:
                tier.policy.resize(self._blocks_of(tier.capacity))
        if parent is not None and self.promotion.prefetch_depth:
            self._successor[parent] = key
        index = self._fixed_target
        if index is None:
            index = self._placement.target(self.tiers, position, nbytes)
        landed = self._insert(index, key, nbytes, block, _PUT)
        if landed is None:
            self.rejected += 1
            return None
        self.puts += 1
        return landed

    def _insert(
        self, index: int | None, key: BlockHash, nbytes: int, block: Block | None,
        why: EventKind, source: Tier | None = None,
    ) -> Tier | None:
        """Put ``key`` into tier ``index``, falling down the hierarchy when a tier cannot take
        it. Returns the tier it entered, or None when none could (the block is then gone).

        This is the hot path of accounting-only replay: keep it flat."""
        tiers = self.tiers
        demote_to = self._demote_to
        while index is not None:
            tier = tiers[index]
            store = tier.store
            if nbytes > tier.capacity or (store is not None and store.health is _DOWN):
                index = demote_to[index]
                continue
            if tier.pending_deletes:  # stranded copies hold room the medium needs first
                self._retry_deletes(tier)
            if tier.used + nbytes > tier.capacity:
                evict = self._evict_one
                while tier.used + nbytes > tier.capacity and evict(tier, key):
                    pass
                if tier.used + nbytes > tier.capacity:
                    index = demote_to[index]
                    continue
            started = 0.0
            if store is not None:
                if block is None:
                    raise TypeError(
                        f"tier {tier.name!r} stores bytes: put() a Block, not a bare key"
                    )
                started = time.perf_counter()
                try:
                    store.put(block)
                except (StoreFull, StoreUnavailable) as exc:
                    tier.counters.errors += 1
                    self._emit_error(tier, key, f"put failed: {exc}")
                    index = demote_to[index]
                    continue
            if nbytes != self.block_bytes:
                self._odd_size[key] = nbytes
            tier.used += nbytes
            tier.blocks += 1
            tier.policy.insert(key)
            counters = tier.counters
            counters.bytes_in += nbytes
            if why is _PUT:
                counters.placed += 1
            elif why is _DEMOTE:
                counters.demotions_in += 1
            else:
                counters.promotions_in += 1
            if self.sink is not None:
                latency = time.perf_counter() - started if store is not None else 0.0
                if source is None:
                    self._emit(why, key, tier, nbytes=nbytes, latency_s=latency)
                else:
                    self._emit(why, key, source, to=tier, nbytes=nbytes, latency_s=latency)
            if tier.used > tier.high * tier.capacity:
                self._enforce_high(tier)
            return tier
        return None

    def _attach(self, tier: Tier, key: BlockHash, nbytes: int) -> None:
        if nbytes != self.block_bytes:
            self._odd_size[key] = nbytes
        tier.used += nbytes
        tier.blocks += 1
        tier.policy.insert(key)

    def _detach(self, tier: Tier, key: BlockHash) -> int:
        """Forget ``key`` in ``tier``'s bookkeeping and medium (not its policy)."""
        nbytes = self._odd_size.pop(key, None)
        if nbytes is None:
            nbytes = self.block_bytes or 0
        tier.used -= nbytes
        tier.blocks -= 1
        store = tier.store
        if store is not None:
            try:
                store.delete(key)
            except TierError:
                tier.pending_deletes.add(key)
        return nbytes

    def _remove(self, tier: Tier, key: BlockHash) -> int:
        tier.policy.remove(key)
        return self._detach(tier, key)

    def _enforce_high(self, tier: Tier) -> None:
        if tier.used <= tier.high * tier.capacity:
            return
        target = tier.low * tier.capacity
        while tier.used > target and self._evict_one(tier, None):
            pass

    def _evict_one(self, tier: Tier, incoming: BlockHash | None) -> bool:
        """Move one victim of ``tier`` down (or drop it). False when the tier is empty."""
        try:
            key = tier.policy.victim(incoming)
        except LookupError:
            return False
        tier.counters.evictions += 1
        destination = self._demote_to[tier.index]
        block: Block | None = None
        if destination is not None and tier.store is not None:
            try:
                block = tier.store.get(key)
            except TierError as exc:
                self._emit_error(tier, key, f"could not read victim to demote it: {exc}")
            if block is None:
                destination = None
        if tier.store is None:  # accounting only: the detach, inline (the replay hot path)
            nbytes = self._odd_size.pop(key, None) or self.block_bytes or 0
            tier.used -= nbytes
            tier.blocks -= 1
        else:
            nbytes = self._detach(tier, key)
        tier.counters.bytes_out += nbytes
        if (destination is not None
                and self._insert(destination, key, nbytes, block, _DEMOTE, tier) is not None):
            tier.counters.demotions_out += 1  # a failed one is a drop, counted once
            return True
        tier.counters.drops += 1
        self.drops += 1
        if self.sink is not None:
            self._emit(_DROP, key, tier, nbytes=nbytes)
        return True

    def _promote(self, tier: Tier, key: BlockHash, block: Block | None) -> None:
        destination = self.placement.promote_to(self.tiers, tier.index)
        if destination is None or destination == tier.index:
            tier.policy.touch(key)
            return
        if block is None and tier.store is not None:
            try:
                block = tier.store.get(key)
            except TierError:
                block = None
            if block is None:
                tier.policy.touch(key)
                return
        nbytes = self._remove(tier, key)
        tier.counters.promotions_out += 1
        tier.counters.bytes_out += nbytes
        if self._insert(destination, key, nbytes, block, _PROMOTE, tier) is None:
            tier.counters.drops += 1
            self.drops += 1
            self._emit(_DROP, key, tier, nbytes=nbytes, detail="promotion failed")

    def _prefetch(self, key: BlockHash) -> None:
        successor = self._successor.get
        for _ in range(self.promotion.prefetch_depth):
            next_key = successor(key)
            if next_key is None:
                return
            tier = self._where(next_key)
            if tier is not None and tier.index:
                self._promote(tier, next_key, None)
            key = next_key

    def _lose(self, tier: Tier, key: BlockHash, reason: str) -> None:
        """A block the hierarchy believed resident is gone or unusable: forget it as a drop."""
        nbytes = self._remove(tier, key)
        tier.counters.drops += 1
        tier.counters.errors += 1
        self.drops += 1
        self._emit(_DROP, key, tier, nbytes=nbytes, detail=reason)

    def _retry_deletes(self, tier: Tier) -> None:
        store = tier.store
        assert store is not None
        for key in list(tier.pending_deletes):
            if key in tier.policy.resident_keys:
                tier.pending_deletes.discard(key)  # it was put back since
                continue
            try:
                store.delete(key)
            except TierError:
                return
            tier.pending_deletes.discard(key)

    def _on_store_health(self, store: TierStore, old: Health, new: Health, reason: str) -> None:
        for tier in self.tiers:
            if tier.store is store:
                self._emit(EventKind.HEALTH, None, tier, detail=f"{old} -> {new}: {reason}")

    def _emit_error(self, tier: Tier, key: BlockHash | None, detail: str) -> None:
        self._emit(EventKind.ERROR, key, tier, detail=detail)

    def _emit(
        self, kind: EventKind, key: BlockHash | None, tier: Tier | None, *,
        to: Tier | None = None, nbytes: int = 0, latency_s: float = 0.0, detail: str = "",
    ) -> None:
        if self.sink is None:
            return
        self.sink.emit(TierEvent(
            kind, time.time(), key, None if tier is None else tier.name,
            None if to is None else to.name, nbytes, latency_s, detail,
        ))
