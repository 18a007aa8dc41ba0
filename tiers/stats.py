"""Per-store operation counters and latency histograms.

Histograms use fixed power-of-two buckets in nanoseconds: recording is one ``bit_length`` and one
list increment, bucket edges never change (so deltas between two snapshots are meaningful and can
go on the wire as plain integer lists), and percentiles are exact to within a factor of two, read
at the bucket's geometric middle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

N_BUCKETS = 48  # bucket i holds latencies in [2**(i-1), 2**i) ns; 2**47 ns is about 39 hours
OPERATIONS = ("put", "get", "delete")


class LatencyHistogram:
    """Counts of latencies in power-of-two nanosecond buckets."""

    __slots__ = ("counts", "sum_ns", "total")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * N_BUCKETS
        self.total = 0
        self.sum_ns = 0

    def record(self, ns: int) -> None:
        bucket = ns.bit_length() if ns > 0 else 0
        self.counts[bucket if bucket < N_BUCKETS else N_BUCKETS - 1] += 1
        self.total += 1
        self.sum_ns += ns

    def percentile(self, q: float) -> float:
        """The ``q``-quantile (0..1) in seconds, 0.0 when empty."""
        return percentile_of_counts(self.counts, q)

    def mean_s(self) -> float:
        return self.sum_ns / self.total / 1e9 if self.total else 0.0

    def copy(self) -> LatencyHistogram:
        other = LatencyHistogram()
        other.counts = list(self.counts)
        other.total = self.total
        other.sum_ns = self.sum_ns
        return other


def bucket_mid_s(bucket: int) -> float:
    """Representative latency of a bucket, in seconds."""
    if bucket == 0:
        return 0.0
    low = 1 << (bucket - 1)
    return low * 1.4142135623730951 / 1e9


def percentile_of_counts(counts: list[int], q: float) -> float:
    """Quantile of power-of-two bucket counts (shared by stores and by telemetry readers)."""
    total = sum(counts)
    if total == 0:
        return 0.0
    rank = q * total
    seen = 0
    for bucket, count in enumerate(counts):
        seen += count
        if count and seen >= rank:
            return bucket_mid_s(bucket)
    return bucket_mid_s(len(counts) - 1)


@dataclass(slots=True)
class StoreStats:
    """Cumulative counters of one store. Never reset: readers take differences."""

    puts: int = 0
    gets: int = 0
    hits: int = 0
    misses: int = 0
    deletes: int = 0
    errors: int = 0
    corrupt: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    wire_bytes_in: int = 0
    wire_bytes_out: int = 0
    latency: dict[str, LatencyHistogram] = field(
        default_factory=lambda: {op: LatencyHistogram() for op in OPERATIONS}
    )
