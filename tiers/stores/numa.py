"""The "remote socket" tier: an arena bound to another NUMA node, or an honest emulation of one.

With libnuma and a second memory node, :class:`NumaStore` allocates its arena on that node
(``numa_alloc_onnode``), touches every page and asks the kernel where they landed
(``move_pages``); only a verified arena is used. Otherwise (one node, no libnuma, allocation or
verification failed) it keeps the arena in local DRAM behind :class:`EmulatedStore` with the
stated figures of a socket hop, and says so: in ``describe()`` and in :attr:`NumaStore.fallback`,
which the dashboard shows.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..numa_topology import (
    NumaBuffer,
    NumaError,
    NumaTopology,
    Placement,
    discover_topology,
)
from ..units import format_bytes
from .arena import DEFAULT_SLOT_BYTES, round_up
from .dram import DramStore
from .emulated import EmulatedStore, format_latency, format_rate

DEFAULT_REMOTE_LATENCY_S = 2.0e-6
"""Emulated extra latency of a remote-socket access (order of one cross-socket round trip plus
the software path), per operation."""
DEFAULT_REMOTE_BANDWIDTH = 40e9
"""Emulated bandwidth of a socket-to-socket link (UPI/Infinity Fabric class), bytes/s."""


class NumaUnavailable(NumaError):
    """A NUMA binding was required (``allow_fallback=False``) and cannot be had."""


@dataclass(frozen=True, slots=True)
class NumaFallback:
    """Why a NUMA store is emulated, and with what figures.

    ``code`` is stable for programs: "single_node", "no_such_node", "no_libnuma",
    "no_remote_node", "node_too_small", "alloc_failed", "verify_failed". ``reason`` is the short
    human form shown in ``describe()`` (e.g. "one NUMA node"), ``detail`` the long one.
    """

    code: str
    reason: str
    detail: str
    latency_s: float
    bandwidth_bytes_per_s: float | None

    def as_dict(self) -> dict[str, object]:
        return {
            "code": self.code,
            "reason": self.reason,
            "detail": self.detail,
            "latency_s": self.latency_s,
            "bandwidth_bytes_per_s": self.bandwidth_bytes_per_s,
        }


class NumaStore(EmulatedStore):
    """Blocks in an arena on a chosen NUMA node, placement verified, or an emulated remote node.

    Args:
        name: the tier's name.
        capacity_bytes: payload bytes the tier may hold (raisable up to the arena size).
        node: the node to bind to; None picks the memory node farthest from this process's CPUs.
            On a machine with one memory node any choice falls back to emulation.
        slot_bytes, arena_bytes: as for :class:`DramStore`.
        emulated_latency_s, emulated_bandwidth_bytes_per_s: the emulated figures when binding is
            impossible (defaults: +2.0 µs/op, 40 GB/s, a remote socket hop).
        allow_fallback: False raises :class:`NumaUnavailable` instead of emulating.
        topology: the machine's topology (default: discovered now).
        verify_pages: the most pages to check after touching (evenly spread beyond that).

    Attributes:
        fallback: None when the arena is really bound, else why not and the emulated figures.
        node: the bound node (None when emulated).
        placement: the kernel's report on the arena's pages (None when emulated).
    """

    kind = "numa"

    def __init__(
        self,
        name: str,
        capacity_bytes: int,
        node: int | None = None,
        *,
        slot_bytes: int | None = None,
        arena_bytes: int | None = None,
        emulated_latency_s: float = DEFAULT_REMOTE_LATENCY_S,
        emulated_bandwidth_bytes_per_s: float | None = DEFAULT_REMOTE_BANDWIDTH,
        allow_fallback: bool = True,
        topology: NumaTopology | None = None,
        verify_pages: int = 65536,
    ) -> None:
        topology = discover_topology() if topology is None else topology
        self.topology = topology
        slot = DEFAULT_SLOT_BYTES if slot_bytes is None else int(slot_bytes)
        size = round_up(max(int(capacity_bytes), int(arena_bytes or 0)), slot)
        self.node: int | None = None
        self.placement: Placement | None = None
        self.fallback: NumaFallback | None = None
        failure = self._why_not(topology, node, size)
        buffer: NumaBuffer | None = None
        if failure is None:
            assert topology.libnuma is not None
            target = topology.remote_node() if node is None else node
            assert target is not None
            try:
                buffer = NumaBuffer(max(size, slot), target, lib=topology.libnuma)
                buffer.touch()
                placement = buffer.verify(max_pages=verify_pages)
            except NumaError as exc:
                buffer = None
                failure = ("alloc_failed", "NUMA allocation failed", str(exc))
            else:
                if placement.ok:
                    self.node, self.placement = target, placement
                else:
                    failure = (
                        "verify_failed",
                        f"pages not on node {target}",
                        f"placement check failed: {placement.summary()}",
                    )
                    buffer = None
        if failure is not None:
            code, reason, detail = failure
            if not allow_fallback:
                raise NumaUnavailable(
                    f"tier {name!r}: cannot bind to a NUMA node, {reason}: {detail}"
                )
            self.fallback = NumaFallback(
                code, reason, detail, emulated_latency_s, emulated_bandwidth_bytes_per_s
            )
            inner = DramStore(name, capacity_bytes, slot, arena_bytes=size)
            super().__init__(
                inner,
                emulated_latency_s,
                emulated_bandwidth_bytes_per_s,
                label="emulated remote NUMA node",
                name=name,
            )
        else:
            assert buffer is not None and self.node is not None
            inner = DramStore(
                name, capacity_bytes, slot, buffer=buffer.array, medium=f"NUMA node {self.node}"
            )
            super().__init__(inner, 0.0, None, label=f"NUMA node {self.node}", name=name)
        self._buffer = buffer  # freed when the inner store drops its views (see NumaBuffer)

    @staticmethod
    def _why_not(
        topology: NumaTopology, node: int | None, size: int
    ) -> tuple[str, str, str] | None:
        memory_nodes = topology.memory_nodes
        if len(memory_nodes) <= 1:
            count = len(topology.nodes)
            if count <= 1:
                return ("single_node", "one NUMA node", topology.summary())
            return (
                "single_node",
                "one NUMA node with memory",
                f"{count} NUMA nodes but only one has memory: {topology.summary()}",
            )
        if node is not None and node not in topology.node_ids:
            return (
                "no_such_node",
                f"no NUMA node {node}",
                f"node {node} was asked for; this machine has {topology.summary()}",
            )
        if topology.libnuma is None:
            return ("no_libnuma", "no libnuma", topology.libnuma_reason)
        target = topology.remote_node() if node is None else node
        if target is None:
            return ("no_remote_node", "no remote node", topology.summary())
        free = topology.node(target).mem_free_bytes
        if free and free < size:
            return (
                "node_too_small",
                f"node {target} has {format_bytes(free)} free",
                f"arena of {format_bytes(size)} does not fit node {target} "
                f"({format_bytes(free)} free)",
            )
        return None

    def close(self) -> None:
        super().close()
        self._buffer = None  # the bound memory goes back to libnuma with the last view of it

    @property
    def bound(self) -> bool:
        """True when the arena really is on another node (not emulated)."""
        return self.fallback is None

    @property
    def emulated(self) -> bool:
        return self.fallback is not None

    @property
    def fallback_reason(self) -> str:
        """'' when bound; else e.g. 'one NUMA node: emulated +2.0 µs/op, 40 GB/s'."""
        fallback = self.fallback
        if fallback is None:
            return ""
        return (
            f"{fallback.reason}: emulated {format_latency(fallback.latency_s)}, "
            f"{format_rate(fallback.bandwidth_bytes_per_s)}"
        )

    @property
    def arena(self) -> DramStore:
        assert isinstance(self.inner, DramStore)
        return self.inner

    def describe(self) -> str:
        arena = self.arena
        if self.fallback is None:
            assert self.placement is not None
            checked = self.placement.pages_checked
            total = self.placement.pages_total
            pages = f"{checked} pages" if checked == total else f"{checked} of {total} pages"
            return (
                f"{self.name}: NUMA node {self.node}, membind verified ({pages}), {arena.layout()}"
            )
        fallback = self.fallback
        return (
            f"{self.name}: emulated, {fallback.reason}, {format_latency(fallback.latency_s)}, "
            f"{format_rate(fallback.bandwidth_bytes_per_s)} (DRAM arena: {arena.layout()})"
        )
