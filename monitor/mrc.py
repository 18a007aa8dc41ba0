"""Online miss-ratio curves of the KV block access stream, with bounded memory (SHARDS).

A miss-ratio curve (MRC) says, for every cache size, which fraction of accesses would miss; here
it is reported as its complement, the hit ratio. :class:`MissRatioCurve` estimates it online:

**LRU, exactly up to sampling: SHARDS** (Waldspurger, Park, Garthwaite, Ahmad, "Efficient MRC
Construction with SHARDS", FAST 2015). A block is *sampled* when ``hash(key) mod P < T``, i.e.
with rate ``R = T / P`` (``P = 2**64``; Fibonacci hashing, see :func:`hash64`); the choice
depends on the key only, so a sampled block has *all* its accesses sampled (spatial sampling).
For every sampled access the LRU stack distance within the sampled stream, ``d`` (distinct
sampled blocks accessed since this block's previous access), is counted exactly, and ``d / R``
goes into a histogram of distances; a block seen for the first time is a cold miss. An LRU
cache of ``c`` blocks hits an access whose distance is below ``c``. Distances are counted over
access-time slots: a slot holds a mark while it is the last access of its block, and marks are
also summed per chunk of 128 slots, so a distance is two short byte counts plus one sum over
chunk totals (square-root decomposition; cheaper in Python than a Fenwick tree's three O(log n)
loops).

Two variants, as in the paper:

* *fixed rate* (``max_keys=None``): ``R`` stays as given; memory grows with ``R x`` distinct
  blocks.
* *fixed size* (``max_keys=N``, the default): at most ``N`` sampled blocks are tracked. When one
  more would be, the block with the largest hash leaves, ``T`` drops to its hash (so ``R``
  drops), and the histograms are rescaled by ``R_new / R_old`` (a lazy scale factor: O(1)).
  Memory is bounded by ``N`` whatever the stream.

**Normalisation: stratified by recency** (the default, ``correction="stratified"``). Spatial
sampling keeps or drops a block with all its accesses, so a few very hot blocks decide how many
accesses the sample holds: in a Zipf(1.1) trace of 800,000 accesses the hottest block carries
12 % of them, and a 2 % sample that catches it (or misses every hot one) moves SHARDS' plain
ratio, hits over sampled accesses, by up to 0.35 of hit ratio. The paper's remedy, SHARDS-adj,
counts the difference between the expected and the sampled number of accesses as hits at
distance 0: right when the difference is hot blocks, but it is then a Horvitz-Thompson estimate
of the misses, whose variance comes from the blocks that miss often, and it still erred by up to
0.05 on a Zipf(0.8) trace and on a loop. What is used here is post-stratification with exactly
known stratum sizes, in effect an exact "hot set" in O(1) memory, without per-block state:

* every offered access, sampled or not, gets a *recency class* from a direct-mapped table of
  ``2**16`` slots (512 KiB, :class:`RecencyClasses`): class ``j`` for a block last offered
  ``2**j`` to ``2**(j+1) - 1`` chunks of 2,048 accesses before that still holds its slot
  (``j < 8``), "not seen recently" otherwise, and a class for the stream's first chunk. Classes
  depend on the stream only, not on batching, at a few vectorised operations per access;
* each class's size ``T_k`` is counted exactly; the sample estimates only the hit ratio *within*
  each class: ``h(c) = sum_k T_k * hits_k(c) / sampled_k / sum_k T_k``.

Accesses of one class are alike: nearly all of a hot block's accesses come a chunk after its
previous ones, in a class where almost every access hits at any size worth asking about, so
catching or missing the block barely moves the estimate. With a single class this is SHARDS'
plain ratio; a class the sample holds nothing of takes the pooled ratio. A block that turns hot
spends its first chunk in "not seen recently" (every offer within a chunk is classed by the
table as it was when the chunk began); a chunk of 2,048 rather than 4,096 halves that lump for
about 5 % more cost. Measured at R = 0.02 (``benchmarks/mrc.py``: five generated traces, Zipf
and prefix sharing and loops among them, 20 seeds each, sizes from 10,000 blocks): worst error
0.017, where the same samples give 0.052 with SHARDS-adj and 0.355 with the plain ratio.

Other remedies weighed: a higher rate (the error falls as ``1/sqrt(R)`` but the cost grows with
``R``; 0.02 is what fits the 5 % budget), several hash seeds averaged (the same as a higher rate,
at the same cost), fixed-size SHARDS' adaptive rate (kept for its memory bound; it lowers the
rate, never raises it), a regression on access counts (this module's previous default: up to
0.056). ``correction="adjusted"`` (SHARDS-adj) and ``"sampled"`` (plain ratio) remain for
comparison; ``benchmarks/mrc.py`` measures all three on the same samples (figures in
``docs/planner.md``).

Accuracy depends on how many blocks the sample holds (a few thousand for +-0.02 here), cost on
how many accesses it processes; see ``docs/planner.md`` for the measured figures and
``benchmarks/mrc.py`` to measure them.

**Other eviction policies: mini-simulation** (the same paper, section 6): for each policy and
size asked for (``policies={"s3fifo": [sizes...]}``) a cache of the tier library's policy
(:func:`tiertop.tiers.policies.base.eviction_policy`) with capacity ``round(size x R_s)`` is run
on the stream sampled at ``R_s = max(rate, sim_min_blocks / size)`` (so no mini-cache holds fewer
than ``sim_min_blocks`` blocks); its hits and accesses are counted per recency class and
normalised like the LRU curve, so the hot-block correction applies to every policy. Between the
simulated sizes the curve is interpolated linearly.

**From telemetry** (:class:`MrcTracker`): the curve is folded from the same decoded messages the
state model sees. vLLM-shaped block events say where blocks *are*, not when they are *used*, so
an access is defined from them as follows (per block hash ``h``, events in stream order; only
sampled hashes are tracked, so the bookkeeping is bounded like the sample):

* ``BlockStored(h, T)`` is an access of ``h`` when ``h`` was held by no tier (a newly computed
  block: the access that missed), when ``T`` already held ``h`` (a re-store: a producer reporting
  a hit), or when ``T`` is faster than every tier that held ``h`` (a promotion or a load into a
  faster tier: a hit served from below). "Held" includes the tier ``h`` was removed from by the
  immediately preceding event, so a move (``BlockRemoved(h, F)`` then ``BlockStored(h, T)``, how
  tiertop publishes promotions and demotions) counts when it goes up and not when it goes down.
  A store into a slower tier while a faster one holds the block (vLLM's CPU offload copy) is not
  an access.
* ``BlockRemoved`` and ``AllBlocksCleared`` are never accesses; they only update where blocks are
  (``BlockRemoved`` with no hashes clears its tier, tiertop's tier-wide clear).
* Tier speed order comes from ``Hello.topology.tier_order``, else the canonical order
  ``gpu, cpu, cpu2, numa, remote, disk, external``, else order of first appearance.

Which stores are accesses needs per-block state, kept for sampled blocks only, so the tracker
offers every stored hash to the recency classes (:meth:`MissRatioCurve.offer_items`) and the
sample estimates, per class, both the share of stores that are accesses and their hit ratio:
``h(c) = sum_k T_k * hits_k(c) / stores_k / sum_k T_k * accesses_k / stores_k``. Accesses given
without their class (:meth:`MissRatioCurve.sampled_access`) are weighed by ``1 / R``, which for
them alone is the plain ratio.

A hit in the fastest tier moves no block, so vLLM-shaped streams carry no event for it: the
curve folded from telemetry is the curve of the accesses the events reveal (with tiertop's
default placement and promotion: the fastest tier's misses). :attr:`MrcTracker.coverage` compares
them with the lookups the runtime counts in ``TierStats``. For the full stream, feed the estimator
where the lookups happen (:class:`MrcSink` on the hierarchy's event sink, or ``access_many``).

Everything here is deterministic (hash-based sampling, seeded policies) and never imports Textual.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from tiertop.tiers.events import EventKind, TierEvent
from tiertop.tiers.policies.base import EvictionPolicy, eviction_policy

from .protocol import Hello, Snapshot, TierStats
from .vllm_events import AllBlocksCleared, BlockRemoved, BlockStored, KvEventBatch

__all__ = [
    "CANONICAL_TIER_ORDER",
    "MissRatioCurve",
    "MrcSink",
    "MrcTracker",
    "RecencyClasses",
    "TierCapacity",
    "WhatIf",
    "hash64",
    "hash64_array",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.intp]
U64Array = npt.NDArray[np.uint64]

_MASK64: Final = (1 << 64) - 1
_P: Final = float(1 << 64)
_C1: Final = 0xBF58476D1CE4E5B9
_GOLDEN: Final = 0x9E3779B97F4A7C15
_SLOT_MIX: Final = np.uint64(0x94D049BB133111EB)  # splitmix64's second multiplier
_HIGH32: Final = np.uint64(0xFFFFFFFF00000000)
_CHUNK_BITS: Final = 7  # 128 distance slots per chunk

#: Default sampling rate and sample size (see docs/planner.md for the measured trade-off).
DEFAULT_RATE: Final = 0.02
DEFAULT_MAX_KEYS: Final = 16384

#: How the sample is normalised (see the module docstring).
CORRECTIONS: Final = ("stratified", "adjusted", "sampled")

#: Tier order assumed when the stream does not say (vLLM/SGLang names after normalisation).
CANONICAL_TIER_ORDER: Final = ("gpu", "cpu", "cpu2", "numa", "remote", "disk", "external")

# Recency classes (see RecencyClasses): j < _AGE_CLASSES, last offered 2**j to 2**(j+1) - 1
# chunks of _RECENCY_CHUNK items before; then "not seen recently" (older, never, or its slot
# taken since); then the stream's first chunk; then accesses given without a class.
_RECENCY_CHUNK: Final = 2048
_RECENCY_BITS: Final = 16
_BATCH: Final = 4096  # offered accesses processed at a time (numpy's per-call cost, amortised)
_AGE_CLASSES: Final = 8
_NOT_RECENT: Final = _AGE_CLASSES
_FIRST_CHUNK: Final = _AGE_CLASSES + 1
_UNCLASSIFIED: Final = _AGE_CLASSES + 2
_CLASSES: Final = _AGE_CLASSES + 3
_AGE_CAP: Final = np.uint64(1 << _AGE_CLASSES)
_CLASS_OF_AGE: Final = np.array(
    [_NOT_RECENT] + [a.bit_length() - 1 for a in range(1, 1 << _AGE_CLASSES)] + [_NOT_RECENT],
    dtype=np.intp)


# ------------------------------------------------------------------------------------ hashing


def _seed_word(seed: int) -> int:
    return (seed * _C1) & _MASK64


def hash64(key: int, seed: int = 0) -> int:
    """The sampling hash: Fibonacci (multiplicative) hashing of ``key ^ seed_word``.

    Sampling compares the hash with a threshold, i.e. reads its top bits; the top bits of
    ``k x 2**64/phi mod 2**64`` are uniform for random keys (block hashes are xxh3 or sha256
    digests) and evenly spread for any arithmetic progression of keys (the three-distance
    theorem), at one multiplication per key.
    """
    return ((key ^ _seed_word(seed)) * _GOLDEN) & _MASK64


def hash64_array(keys: U64Array, seed: int = 0) -> U64Array:
    """:func:`hash64` of every key (uint64 multiplication wraps, as the scalar version masks)."""
    word = _seed_word(seed)
    if not word:  # seed 0: the xor is a copy
        return np.multiply(keys, np.uint64(_GOLDEN))
    out: U64Array = np.bitwise_xor(keys, np.uint64(word))
    np.multiply(out, np.uint64(_GOLDEN), out=out)
    return out


def key_int(key: Any) -> int:
    """A block hash as a 64-bit unsigned int (vLLM's bytes digests: their first 8 bytes)."""
    if isinstance(key, int):
        return key & _MASK64
    if isinstance(key, bytes | bytearray | memoryview):
        return int.from_bytes(bytes(key[:8]), "little")
    raise TypeError(f"a block hash must be an int or bytes, not {type(key).__name__}")


def as_keys(keys: Iterable[Any] | npt.NDArray[Any]) -> U64Array:
    """Block hashes as a uint64 array (fast path for ints and uint64 arrays)."""
    if isinstance(keys, np.ndarray):
        if keys.dtype == np.uint64:
            return keys
        if keys.dtype.kind in "iu":
            return keys.astype(np.uint64)
    seq = keys if isinstance(keys, list) else list(keys)
    try:  # array's conversion of ints is several times numpy's
        return np.frombuffer(array("Q", seq), dtype=np.uint64)
    except (OverflowError, TypeError, ValueError):
        return np.array([key_int(k) for k in seq], dtype=np.uint64)


# --------------------------------------------------------------------------- recency classes


class RecencyClasses:
    """Puts every offered block into a recency class and counts each class exactly.

    Why: the class sizes are then known for the whole stream, so the sample only has to
    estimate hit ratios within classes (see the module docstring). Items are taken in chunks of
    2,048. A direct-mapped table of ``2**bits`` slots holds ``fingerprint << 32 | chunk + 1`` of
    the last block hashed to each slot, as it was when the chunk began (writes wait for the
    chunk's end; whichever writer a slot keeps, the counts stay exact): a block's stamp now
    minus its slot's is its age in chunks when the fingerprints agree, at least ``2**32`` when
    they do not, so a few vector operations class a whole chunk. Reading the table as of the
    chunk's start makes classes independent of batching, at a price: every offer of a block
    within one chunk gets the same class, so a block that turns hot spends its first chunk in
    "not seen recently". The very first chunk, where every block would, is a class of its own.
    (Telling repeats within a chunk apart takes a second table; the estimator then cost 17 to
    28 % more in our runs, where halving the chunk from 4,096 halved that lump for about 5 %.)

    Args:
        bits: Table size (``2**bits`` slots of 8 bytes).
    """

    def __init__(self, bits: int = _RECENCY_BITS) -> None:
        self._table = np.zeros(1 << bits, dtype=np.uint64)
        self._shift = np.uint64(64 - bits)
        self._tag = 1  # chunk number + 1: an empty slot (0) never looks recent
        self._filled = 0  # items of the current chunk offered so far
        self._pending: list[tuple[IntArray, U64Array]] = []
        #: Items offered per class (the last class, "unclassified", is never offered).
        self.totals: npt.NDArray[np.int64] = np.zeros(_CLASSES, dtype=np.int64)

    @property
    def table_bytes(self) -> int:
        return int(self._table.nbytes)

    def offer(self, hashes: U64Array) -> IntArray:
        """Classes of these items (their sampling hashes, in stream order), counted."""
        if hashes.size <= _RECENCY_CHUNK - self._filled:
            return self._classify(hashes)
        out = np.empty(hashes.size, dtype=np.intp)
        start = 0
        while start < hashes.size:
            end = min(hashes.size, start + _RECENCY_CHUNK - self._filled)
            out[start:end] = self._classify(hashes[start:end])
            start = end
        return out

    def _classify(self, hashes: U64Array) -> IntArray:
        """Classes of items that all fall into the current chunk."""
        slots = np.right_shift(hashes * _SLOT_MIX, self._shift).view(np.intp)
        stamps = np.bitwise_and(hashes, _HIGH32)
        stamps += np.uint64(self._tag)
        ages = stamps - self._table[slots]
        np.minimum(ages, _AGE_CAP, out=ages)
        classes: IntArray = _CLASS_OF_AGE[ages.view(np.intp)]
        if self._tag == 1:  # nothing to compare with yet
            classes[:] = _FIRST_CHUNK
        self.totals += np.bincount(classes, minlength=_CLASSES)
        self._pending.append((slots, stamps))
        self._filled += hashes.size
        if self._filled == _RECENCY_CHUNK:
            if len(self._pending) == 1:
                slots, stamps = self._pending[0]
            else:
                slots = np.concatenate([s for s, _ in self._pending])
                stamps = np.concatenate([s for _, s in self._pending])
            self._table[slots] = stamps
            self._pending.clear()
            self._filled = 0
            self._tag += 1
        return classes


# ------------------------------------------------------------------------------ the estimator


@dataclass(frozen=True)
class WhatIf:
    """What a tier's hit ratio would be at another capacity (from the curve).

    ``hit_ratio`` is the tier's share of all accesses: in an exclusive hierarchy of LRU tiers
    that demotes victims and promotes on hit, the tiers together behave as one LRU cache of their
    summed capacity, so a tier with ``above_blocks`` of faster tiers above it serves
    ``h(above + c) - h(above)`` of all accesses (``cumulative`` is ``h(above + c)``).
    """

    tier: str
    policy: str
    capacity_blocks: int
    new_capacity_blocks: int
    factor: float
    above_blocks: int
    hit_ratio: float
    new_hit_ratio: float
    cumulative: float
    new_cumulative: float

    def text(self) -> str:
        name = self.tier or "the cache"
        if self.factor >= 1:
            size = "twice as large" if self.factor == 2 else f"{self.factor:g}x as large"
        else:
            size = "half as large" if self.factor == 0.5 else f"{self.factor:g}x its size"
        out = (
            f"if {name} were {size} ({self.capacity_blocks:,} -> "
            f"{self.new_capacity_blocks:,} blocks), its hit ratio would go from "
            f"{self.hit_ratio:.2f} to {self.new_hit_ratio:.2f}"
        )
        if self.above_blocks:
            out += (f" (all tiers down to it: {self.cumulative:.2f} -> "
                    f"{self.new_cumulative:.2f})")
        return out


class _MiniCache:
    """One mini-simulation: a policy at a scaled capacity on a sub-sampled stream, with its hits,
    accesses and other sampled items counted per recency class."""

    __slots__ = ("capacity", "hits", "others", "policy", "policy_name", "rate", "seen", "size",
                 "threshold")

    def __init__(self, policy_name: str, size: int, rate: float, seed: int) -> None:
        self.policy_name = policy_name
        self.size = size
        self.rate = rate
        self.threshold = min(int(rate * _P), _MASK64 + 1)
        self.capacity = max(1, round(size * rate))
        options: dict[str, Any] = {"seed": seed} if policy_name == "random" else {}
        self.policy: EvictionPolicy = eviction_policy(policy_name, self.capacity, **options)
        self.hits = [0] * _CLASSES
        self.seen = [0] * _CLASSES
        self.others = [0] * _CLASSES

    def access(self, key: int, recency: int) -> None:
        self.seen[recency] += 1
        policy = self.policy
        if key in policy:
            policy.touch(key)
            self.hits[recency] += 1
            return
        capacity = self.capacity
        while len(policy) >= capacity:
            policy.victim(key)
        policy.insert(key)


class MissRatioCurve:
    """SHARDS miss-ratio-curve estimator (LRU) with optional mini-simulations of other policies.

    Args:
        rate: Sampling rate ``R`` (0 < R <= 1); with ``max_keys`` it is the starting rate.
        max_keys: Most sampled blocks tracked (fixed-size SHARDS); None: fixed rate, unbounded.
        seed: Salt of the sampling hash (another seed samples other blocks).
        policies: Policy name -> cache sizes (blocks) to mini-simulate; any policy of the tier
            library except ``belady`` (which needs the future) and ``lru`` (exact here already).
        sim_min_blocks: Smallest capacity of a mini-cache (raises its sampling rate for small
            sizes).
        max_bins: Histogram bins per recency class; beyond them bins are merged in pairs
            (resolution halves).
        correction: How the sample is normalised: ``stratified`` (default), ``adjusted``
            (SHARDS-adj) or ``sampled`` (plain ratio); see the module docstring.
        on_evict: Called with a block hash when fixed-size sampling stops tracking it.

    Cost per offered access: one hash and compare, and the recency table's few vectorised
    operations (offered accesses are held until 4,096 are there to process together; every read
    and every other input processes what is held first, see :meth:`flush`); per sampled access,
    a dict lookup, a short byte count and a few list updates (distances are counted over slot
    chunks: O(sqrt(slots)) worst case, O(1) for recent blocks) and one policy operation per
    mini-cache that samples it.
    """

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        max_keys: int | None = DEFAULT_MAX_KEYS,
        *,
        seed: int = 0,
        policies: Mapping[str, Sequence[int]] | None = None,
        sim_min_blocks: int = 32,
        max_bins: int = 4096,
        correction: str = "stratified",
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        if not 0 < rate <= 1:
            raise ValueError(f"sampling rate must be in (0, 1], got {rate}")
        if max_keys is not None and max_keys < 16:
            raise ValueError(f"max_keys must be at least 16 (or None), got {max_keys}")
        if max_bins < 16:
            raise ValueError(f"max_bins must be at least 16, got {max_bins}")
        if correction not in CORRECTIONS:
            raise ValueError(f"correction must be one of {', '.join(CORRECTIONS)}, "
                             f"got {correction!r}")
        self.initial_rate = rate
        self.max_keys = max_keys
        self._max_live = max_keys if max_keys is not None else 1 << 62
        self.seed = seed
        self.correction = correction
        self.on_evict = on_evict
        self._threshold = min(int(rate * _P), _MASK64 + 1)
        self._recency = RecencyClasses()
        # Offered accesses not processed yet: access() keys, then copies of small batches
        # (processing 4,096 at a time keeps numpy's per-call overhead off each access).
        self._buffer: list[int] = []
        self._pending: list[U64Array] = []
        self._pending_size = 0
        # Sampled blocks: key -> slot of its last access. A slot holds a mark (1) while it is the
        # last access of its block; marks are also counted per chunk of 2**_CHUNK_BITS slots
        # (square-root decomposition), so a distance costs two short byte counts and one sum
        # over chunk totals.
        self._last: dict[int, int] = {}
        self._heap: list[tuple[int, int]] = []  # (-hash, key) of tracked blocks (max-hash first)
        self._live = 0
        self._size = 1 << 12
        self._marks = bytearray(self._size)
        self._blocks = [0] * (self._size >> _CHUNK_BITS)
        self._clock = 0
        # Per recency class: a histogram of scaled distances d / R (``_width`` blocks per bin),
        # cold misses, and sampled items that were not accesses (telemetry), in raw units: the
        # true count is raw x ``_scale`` (fixed-size rescaling is one multiplication).
        self._max_bins = max_bins
        self._bins: list[list[float]] = [[0.0] * max_bins for _ in range(_CLASSES)]
        self._cold = [0.0] * _CLASSES
        self._others = [0.0] * _CLASSES
        self._cumulated: FloatArray | None = None  # cumulative bins, until the next change
        self._width = 1.0 / rate  # a bin per sampled distance: its resolution, no finer
        self._scale = 1.0
        self._unit = 1.0
        self._bin_per_distance = 0.0
        self._rebin()
        self.accesses = 0  # offered accesses (access / access_many)
        self._sampled = 0  # sampled accesses processed (unscaled count)
        self._sims: list[_MiniCache] = []
        self.policies: dict[str, list[int]] = {}
        for name, sizes in (policies or {}).items():
            if name == "lru":
                raise ValueError("lru needs no mini-simulation: SHARDS gives its curve")
            if name == "belady":
                raise ValueError("belady needs the future: it cannot be simulated online")
            clean = sorted({int(s) for s in sizes})
            if not clean or clean[0] < 1:
                raise ValueError(f"policy {name}: sizes must be >= 1 blocks, got {list(sizes)}")
            self.policies[name] = clean
            for size in clean:
                sim_rate = min(1.0, max(rate, sim_min_blocks / size))
                self._sims.append(_MiniCache(name, size, sim_rate, seed))
        self._sims.sort(key=lambda s: -s.threshold)
        self._sim_threshold = self._sims[0].threshold if self._sims else 0

    # ------------------------------------------------------------------------ properties

    @property
    def rate(self) -> float:
        """The current LRU sampling rate (drops over time with ``max_keys``)."""
        self.flush()
        return self._threshold / _P

    @property
    def threshold(self) -> int:
        """Largest hash any part of the estimator still samples (exclusive bound)."""
        self.flush()
        return max(self._threshold, self._sim_threshold)

    @property
    def sampled(self) -> int:
        """Sampled accesses processed so far."""
        self.flush()
        return self._sampled

    @property
    def max_distance(self) -> float:
        """Upper edge (blocks) of the highest non-empty distance bin: sizes beyond it gain
        nothing."""
        self.flush()
        filled = np.flatnonzero(np.diff(self._cumulative_bins().sum(axis=0)) > 0)
        return float(filled[-1] + 1) * self._width if filled.size else 0.0

    @property
    def tracked_keys(self) -> int:
        self.flush()
        return self._live

    @property
    def class_totals(self) -> list[int]:
        """Offered items (accesses, or stored hashes from telemetry) per recency class."""
        self.flush()
        return [int(t) for t in self._recency.totals[:_UNCLASSIFIED]]

    def __contains__(self, key: object) -> bool:
        self.flush()
        return key in self._last

    # -------------------------------------------------------------------------- feeding

    def access(self, key: int) -> None:
        """One access of block ``key`` (an int; see :func:`key_int` for other hash types)."""
        self.accesses += 1
        self._buffer.append(key & _MASK64)
        if len(self._buffer) >= _BATCH:
            self.flush()

    def access_many(self, keys: Iterable[Any] | npt.NDArray[Any]) -> None:
        """Accesses in order (vectorised hashing: the unsampled ones cost a few ns each)."""
        arr = as_keys(keys)
        if not arr.size:
            return
        self.accesses += int(arr.size)
        self._hold()
        self._pending.append(arr.copy() if arr.size < _BATCH else arr)
        self._pending_size += arr.size
        if self._pending_size >= _BATCH:
            self.flush()

    def offer_items(self, hashes: U64Array) -> IntArray:
        """Recency classes of items that are not all accesses (every stored hash of a telemetry
        stream, as sampling hashes), counted; give each sampled one to :meth:`sampled_item`."""
        self.flush()
        return self._recency.offer(hashes)

    def sampled_item(self, key: int, hv: int, recency: int, is_access: bool) -> None:
        """A sampled item that :meth:`offer_items` classed ``recency``, and whether it is an
        access (the sample's share of accesses per class scales that class's total)."""
        self.flush()
        if is_access:
            self._sample([key], [hv], [recency])
            return
        if hv < self._threshold:
            self._others[recency] += self._unit
        for sim in self._sims:
            if hv >= sim.threshold:
                break
            sim.others[recency] += 1

    def sampled_accesses(self, keys: list[int], hashes: list[int], classes: list[int]) -> None:
        """Sampled items that are all accesses, in order: the same as one
        :meth:`sampled_item` each, at one call's cost."""
        self.flush()
        self._sample(keys, hashes, classes)

    @property
    def room(self) -> int:
        """Blocks the sample can still take before fixed-size SHARDS lowers the rate and
        forgets blocks: up to that many accesses can be held back and given together."""
        self.flush()
        return self._max_live - self._live

    def sampled_access(self, key: int, hv: int) -> None:
        """An access the caller already knows is sampled (``hv = hash64(key, seed)`` below
        :attr:`threshold`) without offering the others: with no class total to scale it, it
        counts with weight ``1 / R`` (for such accesses alone, the plain ratio)."""
        self.flush()
        self._sample([key], [hv], [_UNCLASSIFIED])

    def _hold(self) -> None:
        """Move access() keys behind the pending batches (order is kept)."""
        if self._buffer:
            self._pending.append(np.array(self._buffer, dtype=np.uint64))
            self._pending_size += len(self._buffer)
            self._buffer.clear()

    def flush(self) -> None:
        """Process the offered accesses held so far (reads and other inputs call it first)."""
        self._hold()
        if not self._pending:
            return
        pending = self._pending
        keys = pending[0] if len(pending) == 1 else np.concatenate(pending)
        pending.clear()
        self._pending_size = 0
        self._offer_accesses(keys)

    def _offer_accesses(self, keys: U64Array) -> None:
        hv = hash64_array(keys, self.seed)
        classes = self._recency.offer(hv)
        limit = max(self._threshold, self._sim_threshold)
        picked = np.flatnonzero(hv < np.uint64(min(limit, _MASK64)))
        if picked.size:
            self._sample(keys[picked].tolist(), hv[picked].tolist(), classes[picked].tolist())

    def _sample(self, keys: list[int], hashes: list[int], classes: list[int]) -> None:
        self._lru(keys, hashes, classes)
        if self._sims:
            sims = self._sims
            top = self._sim_threshold
            for key, hv, recency in zip(keys, hashes, classes, strict=True):
                if hv < top:
                    for sim in sims:
                        if hv >= sim.threshold:
                            break
                        sim.access(key, recency)

    def _lru(self, keys: list[int], hashes: list[int], classes: list[int]) -> None:
        """The SHARDS step for sampled accesses in order (locals cached: this is the hot loop)."""
        last_of = self._last
        marks = self._marks
        blocks = self._blocks
        bins = self._bins
        cold = self._cold
        heap = self._heap
        push = heapq.heappush
        clock = self._clock
        size = self._size
        live = self._live
        unit = self._unit  # one access in raw histogram units (1 / scale)
        per = self._bin_per_distance
        max_bins = self._max_bins
        threshold = self._threshold
        max_live = self._max_live
        shift = _CHUNK_BITS
        n = len(keys)
        for key, hv, recency in zip(keys, hashes, classes, strict=True):
            if hv >= threshold:
                n -= 1
                continue
            last = last_of.get(key)
            if last is None:
                cold[recency] += unit
                push(heap, (-hv, key))
                live += 1
            else:
                # Distinct sampled blocks accessed since = marks in (last, clock): byte counts
                # in the two partial chunks plus the chunk totals in between.
                a = last + 1
                ca = a >> shift
                cb = clock >> shift
                if ca == cb:
                    d = marks.count(1, a, clock)
                else:
                    d = (marks.count(1, a, (ca + 1) << shift) + sum(blocks[ca + 1:cb])
                         + marks.count(1, cb << shift, clock))
                marks[last] = 0
                blocks[last >> shift] -= 1
                b = int(d * per)
                if b >= max_bins:
                    b = self._coarsen_for(d)
                    bins, per = self._bins, self._bin_per_distance
                bins[recency][b] += unit
            marks[clock] = 1
            blocks[clock >> shift] += 1
            last_of[key] = clock
            clock += 1
            if clock >= size or live > max_live:
                self._clock, self._live = clock, live
                if clock >= size:
                    self._compact()
                if self._live > max_live:
                    self._shrink()
                last_of, marks, blocks = self._last, self._marks, self._blocks
                clock, size, threshold = self._clock, self._size, self._threshold
                unit, per, live = self._unit, self._bin_per_distance, self._live
        self._clock = clock
        self._live = live
        self._sampled += n
        self._cumulated = None

    def _coarsen_for(self, d: int) -> int:
        """Merge bins in pairs until sampled distance ``d`` has a bin; returns that bin."""
        b = int(d * self._bin_per_distance)
        while b >= self._max_bins:
            self._coarsen()
            b = int(d * self._bin_per_distance)
        return b

    def _rebin(self) -> None:
        # bins hold scaled distances d / R in blocks, ``_width`` blocks per bin
        self._bin_per_distance = _P / self._threshold / self._width

    def _coarsen(self) -> None:
        pad = [0.0] * (self._max_bins - self._max_bins // 2)
        self._bins = [[row[i] + row[i + 1] for i in range(0, len(row) - 1, 2)] + pad
                      for row in self._bins]
        self._width *= 2
        self._rebin()

    def _compact(self) -> None:
        """Renumber the live slots 0..live-1 (oldest first), growing the slot space when more
        than half of it is live."""
        order = sorted(self._last.items(), key=lambda kv: kv[1])
        live = len(order)
        size = self._size
        while live * 2 > size:
            size *= 2
        self._size = size
        self._marks = bytearray(b"\x01" * live) + bytearray(size - live)
        chunk = 1 << _CHUNK_BITS
        self._blocks = [min(chunk, max(0, live - c * chunk)) for c in range(size // chunk)]
        self._last = {key: slot for slot, (key, _) in enumerate(order)}
        self._clock = live

    def _shrink(self) -> None:
        """Fixed-size SHARDS: drop the largest-hash blocks, lower the threshold, rescale."""
        old = self._threshold
        heap = self._heap
        new = old
        while self._live > (self.max_keys or 0) or (heap and -heap[0][0] >= new):
            neg, key = heapq.heappop(heap)
            new = min(new, -neg)
            slot = self._last.pop(key)
            self._marks[slot] = 0
            self._blocks[slot >> _CHUNK_BITS] -= 1
            self._live -= 1
            if self.on_evict is not None:
                self.on_evict(key)
        if new < old:
            self._threshold = new
            self._scale *= new / old
            self._unit = 1.0 / self._scale
            self._rebin()

    # -------------------------------------------------------------------------- reading

    def _weights(self, accessed: FloatArray, others: FloatArray, rate: float) -> FloatArray:
        """Per class, how many items of the stream one sampled item stands for: the class's
        exact size over its sampled items (accesses and others); ``1 / R`` for accesses given
        without a class; the size of classes the sample missed is spread over all (pooled)."""
        totals = self._recency.totals.astype(np.float64)
        items = accessed + others
        weight = np.zeros(_CLASSES)
        seen = items > 0
        weight[seen] = totals[seen] / items[seen]
        weight[_UNCLASSIFIED] = 1.0 / rate
        weight += totals[~seen].sum() / items.sum()
        return weight

    def _normalise(self, hits: FloatArray, accessed: FloatArray, others: FloatArray,
                   rate: float) -> FloatArray:
        """Hit ratios from per-class sampled counts (rows: classes; ``hits`` has a column per
        size) as :attr:`correction` says: stratified, SHARDS-adj or the plain ratio."""
        sampled = accessed.sum()
        if self.correction == "sampled":
            plain: FloatArray = hits.sum(axis=0) / sampled
            return plain
        weight = self._weights(accessed, others, rate)
        accesses = float(weight @ accessed)
        if self.correction == "adjusted":  # the shortfall of sampled accesses hits at distance 0
            expected = accesses * rate
            adjusted: FloatArray = (hits.sum(axis=0) + (expected - sampled)) / expected
            return adjusted
        stratified: FloatArray = (weight @ hits) / accesses
        return stratified

    def _sampled_counts(self) -> tuple[FloatArray, FloatArray]:
        """Per class, sampled accesses and other sampled items, in true units."""
        accessed = (np.array(self._cold) + self._cumulative_bins()[:, -1]) * self._scale
        return accessed, np.array(self._others) * self._scale

    def _estimated_accesses(self) -> float:
        """Accesses the sample stands for (the offered ones, or estimated from telemetry)."""
        accessed, others = self._sampled_counts()
        if accessed.sum() <= 0:
            return 0.0
        if self.correction == "sampled":
            return float(accessed.sum()) / self.rate
        return float(self._weights(accessed, others, self.rate) @ accessed)

    def max_hit_ratio(self) -> float:
        """Hit ratio of an unbounded LRU cache (every access but the cold ones)."""
        return float(self.curve([math.inf])[0]) if self.sampled else 0.0

    def _cumulative_bins(self) -> FloatArray:
        """Per class, the running sum of its distance bins (raw units), with a leading 0."""
        if self._cumulated is None:
            counts = np.asarray(self._bins, dtype=np.float64)
            self._cumulated = np.concatenate(
                (np.zeros((_CLASSES, 1)), np.cumsum(counts, axis=1)), axis=1)
        return self._cumulated

    def _hits_below(self, x: FloatArray) -> FloatArray:
        """Per class (rows), raw sampled accesses at distance below each size (linear within a
        bin)."""
        cum = self._cumulative_bins()
        bins = cum.shape[1] - 1
        pos = np.clip(x / self._width, 0.0, float(bins))
        whole = np.floor(pos).astype(np.int64)
        frac = pos - whole
        nxt = np.minimum(whole + 1, bins)
        out: FloatArray = cum[:, whole] + (cum[:, nxt] - cum[:, whole]) * frac
        return out

    def curve(self, sizes: Sequence[float] | npt.NDArray[Any], policy: str = "lru") -> FloatArray:
        """Estimated hit ratio at each cache size (blocks) for ``policy``.

        LRU comes from the SHARDS histograms (linear within a bin), normalised per
        :attr:`correction`; other policies from their mini-simulations, normalised the same
        way and interpolated between the simulated sizes (clamped beyond them).
        """
        self.flush()
        x = np.asarray(sizes, dtype=np.float64)
        if policy != "lru":
            return self._sim_curve(x, policy)
        accessed, others = self._sampled_counts()
        if accessed.sum() <= 0:
            return np.zeros_like(x)
        hits = self._hits_below(x.reshape(-1)) * self._scale
        out = self._normalise(hits, accessed, others, self.rate).reshape(x.shape)
        out = np.clip(out, 0.0, 1.0)
        out[x <= 0] = 0.0
        return out

    def _sim_curve(self, x: FloatArray, policy: str) -> FloatArray:
        sims = sorted((s for s in self._sims if s.policy_name == policy), key=lambda s: s.size)
        if not sims:
            known = ", ".join(["lru", *self.policies]) or "lru"
            raise ValueError(f"no curve for policy {policy!r}; this estimator has: {known}")
        xs = [0.0]
        ys = [0.0]
        for sim in sims:
            seen = np.array(sim.seen, dtype=np.float64)
            xs.append(float(sim.size))
            if seen.sum() <= 0:
                ys.append(0.0)
                continue
            hits = np.array(sim.hits, dtype=np.float64).reshape(-1, 1)
            others = np.array(sim.others, dtype=np.float64)
            ratio = float(self._normalise(hits, seen, others, sim.rate)[0])
            ys.append(min(1.0, max(0.0, ratio)))
        out: FloatArray = np.interp(x, xs, ys)
        return out

    def hit_ratio(self, size: float, policy: str = "lru") -> float:
        return float(self.curve([size], policy)[0])

    def what_if(
        self,
        tier_capacity_blocks: int,
        factor: float,
        *,
        above_blocks: int = 0,
        policy: str = "lru",
        tier: str = "",
    ) -> WhatIf:
        """The tier's hit ratio now and with its capacity multiplied by ``factor``.

        Args:
            tier_capacity_blocks: The tier's (effective) capacity in blocks.
            factor: Capacity multiplier (2.0: twice as large).
            above_blocks: Summed capacity of the faster tiers above it (0 for the top tier).
            policy: Curve to read.
            tier: Name for the text.
        """
        if factor <= 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        cap = int(tier_capacity_blocks)
        new = max(0, round(cap * factor))
        h0, h1, h2 = self.curve([above_blocks, above_blocks + cap, above_blocks + new], policy)
        return WhatIf(
            tier=tier, policy=policy, capacity_blocks=cap, new_capacity_blocks=new,
            factor=factor, above_blocks=int(above_blocks),
            hit_ratio=float(h1 - h0), new_hit_ratio=float(h2 - h0),
            cumulative=float(h1), new_cumulative=float(h2),
        )

    def memory_bytes(self) -> int:
        """Rough bytes held (dict and heap entries, slots, histograms, recency table,
        mini-caches)."""
        self.flush()
        per_key = 100 + 72  # dict entry, heap tuple
        sims = sum(s.capacity * 120 for s in self._sims)
        slots = self._size + 8 * (self._size >> _CHUNK_BITS)
        bins = 8 * self._max_bins * _CLASSES
        return self._live * per_key + slots + bins + self._recency.table_bytes + sims

    def summary(self) -> dict[str, Any]:
        """Plain figures for views and JSON output."""
        self.flush()
        return {
            "accesses": self.accesses,
            "sampled": self._sampled,
            "rate": self.rate,
            "initial_rate": self.initial_rate,
            "max_keys": self.max_keys,
            "tracked_keys": self._live,
            "correction": self.correction,
            "estimated_accesses": round(self._estimated_accesses()),
            "class_totals": self.class_totals,
            "max_hit_ratio": self.max_hit_ratio(),
            "max_distance_blocks": self.max_distance,
            "policies": {k: list(v) for k, v in self.policies.items()},
            "memory_bytes": self.memory_bytes(),
        }


# ------------------------------------------------------------------- feeding from the tiers


class MrcSink:
    """An event sink for the tier hierarchy: every lookup (hit or miss) is one access.

    Attach it where the runtime attaches its sink (chain it with the telemetry sink with
    ``forward``); hierarchy ``get``/``access`` emit exactly one HIT or MISS per lookup.
    """

    def __init__(self, curve: MissRatioCurve, forward: Any = None) -> None:
        self.curve = curve
        self.forward = forward

    def emit(self, event: TierEvent) -> None:
        kind = event.kind
        if (kind is EventKind.HIT or kind is EventKind.MISS) and event.key is not None:
            self.curve.access(event.key)
        if self.forward is not None:
            self.forward.emit(event)


# -------------------------------------------------------------------- feeding from telemetry


@dataclass(frozen=True)
class TierCapacity:
    """A tier as the curve needs it: name, capacity in blocks, watermarks (fastest first)."""

    name: str
    capacity_blocks: int
    high: float = 1.0
    low: float = 1.0

    @property
    def effective_blocks(self) -> int:
        """Blocks a tier evicting between its watermarks holds on average: (high + low) / 2."""
        return int(self.capacity_blocks * (self.high + self.low) / 2)


class MrcTracker:
    """Folds decoded telemetry into a :class:`MissRatioCurve` (see the module docstring for how
    block events become accesses) and keeps the tier capacities to mark on it.

    Every stored hash is offered to the curve's recency classes, so the curve keeps its
    normalisation (``correction``) whether it is fed block events here or accesses directly
    (``curve.access_many``, as ``tiertop plan`` does for a file of accesses).

    Args:
        curve: The estimator (default: ``MissRatioCurve()``); its ``on_evict`` is taken over.
        tier_order: Tier names fastest first, when the stream's Hello will not say.
    """

    def __init__(self, curve: MissRatioCurve | None = None, *,
                 tier_order: Sequence[str] = ()) -> None:
        self.curve = curve if curve is not None else MissRatioCurve()
        self.curve.on_evict = self._forget
        self._rank: dict[str, int] = {}
        self.tier_order: list[str] = []
        self.set_tier_order(tier_order)
        self._where: dict[int, set[str]] = {}
        self._last_removed: tuple[int, str, int] | None = None  # (key, tier, position)
        self._position = 0
        self.block_bytes = 0
        self._capacity_bytes: dict[str, int] = {}
        self._watermarks: dict[str, tuple[float, float]] = {}
        self.accesses_seen = 0  # sampled accesses the events revealed
        self.events = 0
        self.batches = 0
        self._lookups_base: int | None = None
        self._lookups_last: int | None = None
        self._lookups = 0
        self._sampled_at_base = 0

    # ----------------------------------------------------------------------------- tiers

    def set_tier_order(self, names: Sequence[str]) -> None:
        if names:
            self.tier_order = list(names)
        self._rank = {name: i for i, name in enumerate(self.tier_order)}

    def _tier_rank(self, name: str) -> int:
        rank = self._rank.get(name)
        if rank is None:
            if name in CANONICAL_TIER_ORDER and not self.tier_order:
                return CANONICAL_TIER_ORDER.index(name)
            rank = len(CANONICAL_TIER_ORDER) + len(self._rank)
            self._rank[name] = rank
        return rank

    @property
    def tiers(self) -> list[TierCapacity]:
        """Known tiers, fastest first, with capacities in blocks (needs the block size)."""
        names = sorted(self._capacity_bytes, key=self._tier_rank)
        out = []
        for name in names:
            high, low = self._watermarks.get(name, (1.0, 1.0))
            blocks = self._capacity_bytes[name] // self.block_bytes if self.block_bytes else 0
            out.append(TierCapacity(name, blocks, high, low))
        return out

    def set_tiers(self, tiers: Sequence[TierCapacity], block_bytes: int = 1) -> None:
        """Declare tiers directly (fastest first), e.g. from a command line."""
        self.block_bytes = block_bytes
        self.set_tier_order([t.name for t in tiers])
        self._capacity_bytes = {t.name: t.capacity_blocks * block_bytes for t in tiers}
        self._watermarks = {t.name: (t.high, t.low) for t in tiers}

    def what_if(self, tier: str, factor: float, policy: str = "lru") -> WhatIf:
        """"If ``tier`` were ``factor`` times as large...", from the tiers' effective sizes."""
        tiers = self.tiers
        above = 0
        for t in tiers:
            if t.name == tier:
                return self.curve.what_if(t.effective_blocks, factor, above_blocks=above,
                                          policy=policy, tier=tier)
            above += t.effective_blocks
        known = ", ".join(t.name for t in tiers) or "none yet"
        raise ValueError(f"unknown tier {tier!r}; known: {known}")

    @property
    def coverage(self) -> float | None:
        """Accesses the block events revealed over the lookups the runtime counted (TierStats)
        over the same span; None before two TierStats. Below 1: lookups no event shows (hits
        in the fastest tier); it can exceed 1 when the runtime stores blocks it never looked up
        (KV of generated tokens)."""
        if self._lookups <= 0 or not self.curve.rate:
            return None
        revealed = (self.curve.sampled - self._sampled_at_base) / self.curve.rate
        return revealed / self._lookups

    # --------------------------------------------------------------------------- folding

    def fold(self, message: Any) -> None:
        """Fold one decoded message; types other than the ones below are ignored."""
        if isinstance(message, KvEventBatch):
            self._on_batches([message])
        elif isinstance(message, TierStats):
            self._on_stats(message)
        elif isinstance(message, Hello):
            self._on_hello(message)
        elif isinstance(message, Snapshot):
            if message.hello is not None:
                self._on_hello(message.hello)
            if message.stats is not None:
                self._on_stats(message.stats)

    def fold_many(self, messages: Iterable[Any]) -> None:
        """Fold messages in order; consecutive block-event batches are scanned together (up to
        ``_BATCH`` events), so numpy's per-call cost is shared by more events."""
        run: list[KvEventBatch] = []
        held = 0
        for message in messages:
            if isinstance(message, KvEventBatch):
                run.append(message)
                held += len(message.events)
                if held < _BATCH:
                    continue
            if run:
                self._on_batches(run)
                run, held = [], 0
            if not isinstance(message, KvEventBatch):
                self.fold(message)
        if run:
            self._on_batches(run)

    def _on_hello(self, m: Hello) -> None:
        if m.topology.tier_order:
            self.set_tier_order(m.topology.tier_order)
        if m.topology.block_bytes:
            self.block_bytes = m.topology.block_bytes
        for info in m.tiers:
            if info.block_bytes and not self.block_bytes:
                self.block_bytes = info.block_bytes
            self._capacity_bytes[info.name] = info.capacity_bytes

    def _on_stats(self, m: TierStats) -> None:
        for sample in m.tiers:
            self._capacity_bytes[sample.name] = sample.capacity_bytes
            self._watermarks[sample.name] = (sample.high_watermark, sample.low_watermark)
            if not self.block_bytes and sample.used_blocks:
                self.block_bytes = sample.used_bytes // sample.used_blocks
        if m.tiers:
            first = m.tiers[0]
            lookups = first.hits + first.misses
            if self._lookups_base is None or (
                self._lookups_last is not None and lookups < self._lookups_last
            ):
                self._lookups_base = lookups  # first sight or a restart: a new baseline
                self._lookups = 0
                self._sampled_at_base = self.curve.sampled
            else:
                self._lookups = lookups - self._lookups_base
            self._lookups_last = lookups

    def _forget(self, key: int) -> None:
        self._where.pop(key, None)

    def _on_batches(self, batches: list[KvEventBatch]) -> None:
        """Consecutive block-event batches: every hash is hashed, and every stored one offered
        to the recency classes, in one numpy pass; only sampled hashes go through the access
        rules in Python (they alone have per-block state)."""
        batches = [batch for batch in batches if batch.events]
        if not batches:
            return
        events = (batches[0].events if len(batches) == 1
                  else list(chain.from_iterable(batch.events for batch in batches)))
        scanned = _scan(events)
        if scanned is None:  # a clear: it applies in order among the hashes
            for batch in batches:
                self._on_batch_in_order(batch)
            return
        flat, owner, store_event = scanned
        self.batches += len(batches)
        self.events += len(events)
        curve = self.curve
        keys = as_keys(flat)
        hv = hash64_array(keys, curve.seed)
        is_store = store_event[owner]
        classes = np.full(keys.size, -1, dtype=np.intp)
        classes[is_store] = curve.offer_items(hv[is_store])
        picked = np.flatnonzero(hv < np.uint64(min(curve.threshold, _MASK64)))
        base = self._position
        self._position += keys.size
        positions = (picked + base).tolist()
        owners = owner[picked].tolist()
        picked_keys = keys[picked].tolist()
        picked_hv = hv[picked].tolist()
        picked_classes = classes[picked].tolist()
        # Batch by batch, as before they were scanned together: ``_where`` is pruned after each.
        ends = np.cumsum([len(batch.events) for batch in batches])
        cuts = np.searchsorted(owner[picked], ends).tolist()
        start = first = 0
        for batch, cut, end in zip(batches, cuts, ends.tolist(), strict=True):
            if cut > start:
                self._items(batch.events, _event_tiers(batch), positions[start:cut],
                            [o - first for o in owners[start:cut]], picked_keys[start:cut],
                            picked_hv[start:cut], picked_classes[start:cut])
            self._prune_where()
            start, first = cut, end

    def _on_batch_in_order(self, batch: KvEventBatch) -> None:
        """A batch with clears: every position walked in order, a clear's marker included."""
        events = batch.events
        self.batches += 1
        self.events += len(events)
        flat: list[Any] = []  # every hash in stream order, None for a clear
        owners: list[int] = []  # the event of each
        for i, event in enumerate(events):
            hashes = () if isinstance(event, AllBlocksCleared) else event.block_hashes
            if hashes:
                flat.extend(hashes)
                owners.extend([i] * len(hashes))
            elif type(event) is not BlockStored:  # a clear: a marker position
                flat.append(None)
                owners.append(i)
        base = self._position
        self._position += len(flat)
        present = [p for p, k in enumerate(flat) if k is not None]
        curve = self.curve
        keys = as_keys([flat[p] for p in present])
        hv = hash64_array(keys, curve.seed)
        store_event = np.array([type(e) is BlockStored for e in events], dtype=bool)
        is_store = store_event[np.array([owners[p] for p in present], dtype=np.intp)]
        classes = np.full(keys.size, -1, dtype=np.intp)
        classes[is_store] = curve.offer_items(hv[is_store])
        full_keys: list[int | None] = [None] * len(flat)
        full_hv = [0] * len(flat)
        full_classes = [-1] * len(flat)
        for n, p in enumerate(present):
            full_keys[p] = int(keys[n])
            full_hv[p] = int(hv[n])
            full_classes[p] = int(classes[n])
        self._items(events, _event_tiers(batch), [base + p for p in range(len(flat))],
                    owners, full_keys, full_hv, full_classes)
        self._prune_where()

    def _items(self, events: Sequence[Any], tiers: Sequence[str], positions: Sequence[int],
               owners: Sequence[int], keys: Sequence[int | None], hashes: Sequence[int],
               classes: Sequence[int]) -> None:
        """The access rules for these hashes (parallel lists: stream position, index of the
        event in ``events``, key, sampling hash, recency class; a None key is a clear).

        Accesses are held back and given to the curve together while it has room for them
        all: only fixed-size SHARDS forgetting blocks (and lowering the threshold) could make
        an earlier access change how a later hash is read, and it cannot happen before then."""
        curve = self.curve
        where = self._where
        limit = curve.threshold
        room = curve.room
        held_keys: list[int] = []
        held_hv: list[int] = []
        held_classes: list[int] = []
        for n, position in enumerate(positions):
            owner = owners[n]
            event = events[owner]
            tier = tiers[owner]
            key = keys[n]
            if key is None:
                if type(event) is AllBlocksCleared:
                    where.clear()
                else:  # BlockRemoved with no hashes: the whole tier is cleared
                    for holders in where.values():
                        holders.discard(tier)
                continue
            hv = hashes[n]
            if hv >= limit:
                continue
            if type(event) is BlockRemoved:
                was = where.get(key)
                if was is not None:
                    was.discard(tier)
                    if not was:
                        del where[key]
                self._last_removed = (key, tier, position)
                continue
            held = where.get(key)
            last = self._last_removed
            moved_from = (last[1] if last is not None and last[0] == key
                          and last[2] == position - 1 else None)
            if held:
                is_access = tier in held or tier == moved_from or self._faster(
                    tier, held if moved_from is None else {*held, moved_from})
                held.add(tier)
            else:
                is_access = (moved_from is None or tier == moved_from
                             or self._faster(tier, (moved_from,)))
                if held is None:
                    where[key] = {tier}
                else:
                    held.add(tier)
            if not is_access:
                curve.sampled_item(key, hv, classes[n], False)
                continue
            self.accesses_seen += 1
            if len(held_keys) >= room:  # the curve may forget blocks: give it what is held
                curve.sampled_accesses(held_keys, held_hv, held_classes)
                held_keys, held_hv, held_classes = [], [], []
                room = curve.room
                if room <= 0:  # this access may make it forget blocks: give it alone
                    curve.sampled_item(key, hv, classes[n], True)
                    limit, room = curve.threshold, curve.room
                    continue
            held_keys.append(key)
            held_hv.append(hv)
            held_classes.append(classes[n])
        if held_keys:
            curve.sampled_accesses(held_keys, held_hv, held_classes)

    def _faster(self, tier: str, than: Iterable[str]) -> bool:
        """Whether ``tier`` is faster than every one of ``than``."""
        rank = self._tier_rank(tier)
        return all(rank < self._tier_rank(t) for t in than)

    def _prune_where(self) -> None:
        """Forget where blocks the curve no longer tracks are (bounds ``_where``)."""
        where = self._where
        if self.curve.max_keys is not None and len(where) > 2 * self.curve.max_keys:
            for key in [k for k in where if k not in self.curve]:
                del where[key]


def _scan(events: Sequence[Any]) -> tuple[list[Any], IntArray, npt.NDArray[np.bool_]] | None:
    """Every hash of these events in order, the index of its event, and which events are
    stores; None when one is a clear (no per-hash scan can keep its place in the order).
    Why comprehensions: one attribute read per event is most of the cost of a scan."""
    try:
        hashes = [event.block_hashes for event in events]
    except AttributeError:  # AllBlocksCleared has no hashes
        return None
    store_event = np.frombuffer(bytes([type(event) is BlockStored for event in events]),
                                dtype=np.bool_)
    n = len(events)
    try:
        flat = [h for (h,) in hashes]  # one hash per event: the common case
    except ValueError:
        counts = np.fromiter(map(len, hashes), dtype=np.intp, count=n)
        if not store_event[counts == 0].all():  # BlockRemoved with no hashes: a tier clear
            return None
        return (list(chain.from_iterable(hashes)),
                np.repeat(np.arange(n, dtype=np.intp), counts), store_event)
    return flat, np.arange(n, dtype=np.intp), store_event


def _event_tiers(batch: KvEventBatch) -> list[str]:
    """Each event's tier (an event beyond the batch's tier list: its medium)."""
    tiers, events = batch.tiers, batch.events
    if len(tiers) >= len(events):
        return tiers
    return [*tiers, *(str(event.medium) for event in events[len(tiers):])]
