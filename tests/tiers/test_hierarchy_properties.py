"""Property-based tests: the hierarchy's invariants under random operations and live changes."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from tiertop.tiers.events import EventKind, ListSink
from tiertop.tiers.health import Health
from tiertop.tiers.hierarchy import Hierarchy, TierConfig
from tiertop.tiers.store import FaultKind

from tests.tiers.conftest import DictStore, payload_block

B = 32
NAMES = ("dram", "remote", "disk")
POLICIES = ("lru", "fifo", "lfu", "arc", "s3fifo", "random")
STRATEGIES = ("lru-tiering", "naive-spill", "local-only", "remote-only", "disk-only")
keys = st.integers(min_value=0, max_value=60)
fractions = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


class HierarchyMachine(RuleBasedStateMachine):
    @initialize(
        capacities=st.lists(st.integers(1, 12), min_size=3, max_size=3),
        policies=st.lists(st.sampled_from(POLICIES), min_size=3, max_size=3),
        odd_sizes=st.booleans(),
    )
    def build(self, capacities: list[int], policies: list[str], odd_sizes: bool) -> None:
        self.sink = ListSink()
        self.stores = [DictStore(name, 0, kind=name) for name in NAMES]
        configs = [
            TierConfig(name, cap * B, high=0.9, low=0.6, eviction=policy, store=store)
            for name, cap, policy, store in zip(NAMES, capacities, policies, self.stores,
                                                strict=True)
        ]
        self.h = Hierarchy(configs, block_bytes=B, sink=self.sink)
        self.odd_sizes = odd_sizes
        self.errors_checked = 0

    def state(self) -> tuple[object, ...]:
        h = self.h
        tiers = tuple((t.capacity, t.high, t.low, t.policy.name, t.used, t.blocks) for t in h.tiers)
        return (tiers, len(h), h.puts, h.drops, h.deletes)

    def live_change(self, change: Callable[[], object]) -> None:
        """Apply a live change; a refused one (ValueError) must leave everything as it was."""
        before = self.state()
        try:
            change()
        except ValueError:
            assert self.state() == before

    def size_of(self, key: int) -> int:
        return B + (key % 3) * 8 if self.odd_sizes else B

    @rule(key=keys, position=st.integers(0, 4))
    def put(self, key: int, position: int) -> None:
        self.h.put(payload_block(key, self.size_of(key)), position=position)

    @rule(first=keys, count=st.integers(2, 6))
    def put_run(self, first: int, count: int) -> None:
        """A request's worth of blocks at once: fills tiers in few steps."""
        for key in range(first, first + count):
            self.put(key, 0)

    @rule(key=keys)
    def get(self, key: int) -> None:
        found = self.h.get(key)
        if found is not None:
            block, _ = found
            assert bytes(block.view()) == bytes(payload_block(key, self.size_of(key)).view())

    @precondition(lambda self: len(self.h) > 0)
    @rule(data=st.data())
    def get_resident(self, data: st.DataObject) -> None:
        resident = sorted(k for t in self.h.tiers for k in t.policy)
        self.get(data.draw(st.sampled_from(resident)))

    def in_down_tiers(self) -> list[int]:
        """Blocks resident in a tier whose store is down."""
        return sorted(k for t in self.h.tiers if t.health is Health.DOWN for k in t.policy)

    @precondition(lambda self: bool(self.in_down_tiers()))
    @rule(data=st.data(), position=st.integers(0, 4))
    def put_again_while_its_tier_is_down(self, data: st.DataObject, position: int) -> None:
        self.put(data.draw(st.sampled_from(self.in_down_tiers())), position)

    @rule(key=keys)
    def delete(self, key: int) -> None:
        self.h.delete(key)

    @rule(tier=st.sampled_from(NAMES), a=fractions, b=fractions)
    def set_watermarks(self, tier: str, a: float, b: float) -> None:
        self.live_change(lambda: self.h.set_watermarks(tier, max(a, b), min(a, b)))

    @rule(tier=st.sampled_from(NAMES), blocks=st.integers(0, 14))
    def set_capacity(self, tier: str, blocks: int) -> None:
        self.live_change(lambda: self.h.set_capacity(tier, blocks * B))

    @rule(tier=st.sampled_from(NAMES), policy=st.sampled_from(POLICIES))
    def set_policy(self, tier: str, policy: str) -> None:
        self.live_change(lambda: self.h.set_eviction_policy(tier, policy))

    @rule(name=st.sampled_from(STRATEGIES))
    def set_strategy(self, name: str) -> None:
        self.live_change(lambda: self.h.set_strategy(name))

    @rule(promotion=st.sampled_from(("never", "on-hit", "session-prefetch")))
    def set_promotion(self, promotion: str) -> None:
        self.h.set_promotion(promotion)

    @rule(tier=st.sampled_from((None, *NAMES)))
    def clear(self, tier: str | None) -> None:
        self.h.clear(tier)

    @rule(index=st.integers(0, 2), kind=st.sampled_from(list(FaultKind)))
    def inject_fault(self, index: int, kind: FaultKind) -> None:
        self.stores[index].inject_fault(kind, delay_s=0.0)

    @precondition(lambda self: any(s.faults() for s in self.stores))
    @rule(index=st.integers(0, 2))
    def clear_fault(self, index: int) -> None:
        self.stores[index].clear_faults()

    @rule(index=st.integers(0, 2), data=st.data())
    def outage(self, index: int, data: st.DataObject) -> None:
        """A medium goes away and comes back; its blocks put again meanwhile are placed afresh
        and their old copies stay on it, to be deleted once it is back."""
        store = self.stores[index]
        store.inject_fault(FaultKind.DOWN, delay_s=0.0)
        resident = sorted(self.h.tiers[index].policy)
        if resident:
            for key in data.draw(st.lists(st.sampled_from(resident), unique=True)):
                self.put(key, 0)
        store.clear_faults()

    @invariant()
    def occupancy_within_capacity(self) -> None:
        for tier in self.h.tiers:
            assert 0 <= tier.used <= tier.capacity, tier

    @invariant()
    def bookkeeping_matches_residents(self) -> None:
        per_tier = {t.name: 0 for t in self.h.tiers}
        seen: set[int] = set()
        for tier in self.h.tiers:
            for key in tier.policy:
                assert key not in seen, f"block {key} is resident in two tiers"
                seen.add(key)
                assert self.h.locate(key) == tier.index
                per_tier[tier.name] += self.h.size_of(key)
            assert len(tier.policy) == tier.blocks
        assert len(self.h) == len(seen)
        for tier in self.h.tiers:
            assert per_tier[tier.name] == tier.used
            store = tier.store
            assert store is not None
            # the medium holds the resident blocks and the copies whose delete is pending
            resident = set(tier.policy)
            stranded = {k for k in tier.pending_deletes if k in store} - resident
            assert set(store.keys()) == resident | stranded
            assert store.used_bytes == tier.used + sum(store.size_of(k) for k in stranded)

    @invariant()
    def only_a_full_medium_refuses_a_put(self) -> None:
        # the hierarchy puts a block only where its own count says it fits; a stranded copy
        # it forgot would make the medium refuse
        errors = self.sink.of_kind(EventKind.ERROR)
        for event in errors[self.errors_checked:]:
            if event.detail.startswith("put failed"):
                store = self.stores[NAMES.index(event.tier or "")]
                assert FaultKind.FULL in {f.kind for f in store.faults()}, event.detail
        self.errors_checked = len(errors)

    @invariant()
    def counters_conserve(self) -> None:
        h = self.h
        assert h.puts == len(h) + h.drops + h.deletes

    @invariant()
    def every_move_is_reported(self) -> None:
        # each block leaving a tier lands in the next one (demote), moves up (promote) or is
        # reported dropped; the event stream accounts for every one
        h = self.h
        demotes = len(self.sink.of_kind(EventKind.DEMOTE))
        drops = len(self.sink.of_kind(EventKind.DROP))
        assert drops == h.drops
        assert demotes == sum(t.counters.demotions_in for t in h.tiers)
        evicted = sum(t.counters.evictions for t in h.tiers)
        demoted_out = sum(t.counters.demotions_out for t in h.tiers)
        assert demoted_out <= evicted
        # a demotion is counted out of one tier exactly when it lands in another (a failed one
        # is a drop, and only that)
        assert demoted_out == sum(t.counters.demotions_in for t in h.tiers)
        order = [t.name for t in h.tiers]
        for event in self.sink.of_kind(EventKind.DEMOTE):
            assert event.tier is not None and event.to_tier is not None
            assert order.index(event.to_tier) > order.index(event.tier)


HierarchyMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestHierarchyInvariants = HierarchyMachine.TestCase
