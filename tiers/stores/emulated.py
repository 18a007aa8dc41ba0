"""A store that makes another slower by stated figures: emulated hardware, said out loud.

Where a tier's hardware is absent (a remote socket, a CXL pool), tiertop keeps real bytes in a
real store and wraps it in :class:`EmulatedStore`, which adds ``latency_s`` to every operation and
``nbytes / bandwidth`` to every put and get, and says so in ``describe()``. The wrapper's own
bookkeeping (occupancy, counters, latency histograms, faults) is what the hierarchy sees; storage,
capacity and the medium's health are the inner store's.
"""

from __future__ import annotations

import math
import time

from ..block import Block, BlockHash
from ..health import Health
from ..store import Buffer, TierStore

SPIN_BELOW_S = 1e-3
"""Delays shorter than this are busy-waited (sleep cannot time them); longer ones sleep, then
busy-wait the last part."""


def wait(seconds: float) -> None:
    """Block for ``seconds``: busy-wait when short, sleep then busy-wait the end when long."""
    if seconds <= 0:
        return
    clock = time.perf_counter
    deadline = clock() + seconds
    if seconds >= SPIN_BELOW_S:
        time.sleep(seconds - SPIN_BELOW_S / 2)
    while clock() < deadline:
        pass


def format_latency(seconds: float) -> str:
    """'+2.0 µs/op', '+1.5 ms/op'."""
    if seconds < 1e-3:
        return f"+{seconds * 1e6:.1f} µs/op"
    if seconds < 1.0:
        return f"+{seconds * 1e3:.1f} ms/op"
    return f"+{seconds:.2f} s/op"


def format_rate(bytes_per_s: float | None) -> str:
    """'40 GB/s', '12.5 GB/s', '800 MB/s' (decimal units, as links are rated); None: unlimited."""
    if bytes_per_s is None:
        return "unlimited bandwidth"
    for unit, scale in (("TB/s", 1e12), ("GB/s", 1e9), ("MB/s", 1e6), ("kB/s", 1e3)):
        if bytes_per_s >= scale:
            return f"{bytes_per_s / scale:.3g} {unit}"
    return f"{bytes_per_s:.3g} B/s"


class EmulatedStore(TierStore):
    """Wraps ``inner`` and adds ``latency_s`` per operation plus ``nbytes / bandwidth`` per put/get.

    Args:
        inner: the store that really holds the bytes. Use it only through the wrapper from now on
            (the wrapper adopts what it already holds).
        latency_s: added to every put, get (hit or miss) and delete.
        bandwidth_bytes_per_s: the emulated link's rate; a put or get of ``n`` bytes also waits
            ``n / bandwidth``. None (or inf) adds no per-byte delay.
        label: what is emulated, for ``describe()`` (e.g. "emulated CXL").
        name: the tier's name (default: the inner store's).

    The delays are added to the inner operation's own time (the emulated medium is that much
    slower than the real one underneath), before the inner call, so failed operations pay them too.
    """

    kind = "emulated"

    def __init__(
        self,
        inner: TierStore,
        latency_s: float,
        bandwidth_bytes_per_s: float | None,
        label: str = "emulated",
        *,
        name: str | None = None,
    ) -> None:
        if not latency_s >= 0 or math.isinf(latency_s):
            raise ValueError(f"emulated latency must be a finite number >= 0 s, got {latency_s}")
        if bandwidth_bytes_per_s is not None and math.isinf(bandwidth_bytes_per_s):
            bandwidth_bytes_per_s = None
        if bandwidth_bytes_per_s is not None and not bandwidth_bytes_per_s > 0:
            raise ValueError(f"emulated bandwidth must be > 0 B/s, got {bandwidth_bytes_per_s}")
        super().__init__(inner.name if name is None else name, inner.capacity_bytes)
        self.inner = inner
        self.latency_s = float(latency_s)
        self.bandwidth_bytes_per_s = (
            None if bandwidth_bytes_per_s is None else float(bandwidth_bytes_per_s)
        )
        self.label = label
        self._per_byte_s = 0.0 if bandwidth_bytes_per_s is None else 1.0 / bandwidth_bytes_per_s
        self._delays = self.latency_s > 0 or self._per_byte_s > 0
        for key in list(inner.keys()):
            self._adopt(key, inner.size_of(key))
        if inner.health_listener is None:
            inner.health_listener = self._inner_health_changed
        self._reported_health = self.health

    # ---------------------------------------------------------------- emulation

    def delay_s(self, nbytes: int) -> float:
        """The delay this wrapper adds to an operation moving ``nbytes``."""
        return self.latency_s + nbytes * self._per_byte_s

    def _pause(self, nbytes: int) -> None:
        if self._delays:
            wait(self.latency_s + nbytes * self._per_byte_s)

    def emulation(self) -> str:
        """'emulated CXL, +0.3 µs/op, 64 GB/s'."""
        return (
            f"{self.label}, {format_latency(self.latency_s)}, "
            f"{format_rate(self.bandwidth_bytes_per_s)}"
        )

    def describe(self) -> str:
        return f"{self.name}: {self.emulation()} over {self.inner.describe()}"

    @property
    def emulated(self) -> bool:
        """True: this tier stands in for absent hardware (the dashboard's "emulated" flag)."""
        return True

    @property
    def fallback_reason(self) -> str:
        """What is emulated and with which figures ('' for the real thing)."""
        return self.emulation()

    # ---------------------------------------------------------------- capacity and health

    def max_capacity(self) -> int | None:
        return self.inner.max_capacity()

    def set_capacity(self, capacity_bytes: int) -> None:
        self.inner.set_capacity(capacity_bytes)
        self._capacity = self.inner.capacity_bytes

    @property
    def health(self) -> Health:
        own = super().health
        inner = self.inner.health
        return max(own, inner, key=(Health.OK, Health.DEGRADED, Health.DOWN).index)

    def _inner_health_changed(
        self, store: TierStore, previous: Health, current: Health, reason: str
    ) -> None:
        self._report_health(f"{store.name}: {reason}")

    def close(self) -> None:
        self.inner.close()

    # ---------------------------------------------------------------- TierStore

    def get(self, key: BlockHash, out: Buffer | None = None) -> Block | None:
        if key not in self._sizes and self._delays:  # a miss costs a round trip too
            wait(self.latency_s)
        return super().get(key, out)

    def _put(self, block: Block) -> None:
        self._pause(block.header.nbytes)
        self.inner.put(block)

    def _get(self, key: BlockHash, out: Buffer | None) -> Block | None:
        self._pause(self._sizes[key])
        # A BlockCorrupt from the inner store is counted and forgotten by TierStore.get.
        return self.inner.get(key, out)

    def _delete(self, key: BlockHash) -> None:
        self._pause(0)
        self.inner.delete(key)

    def _clear(self) -> None:
        self._pause(0)
        self.inner.clear()
