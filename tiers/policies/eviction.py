"""The built-in eviction policies, each registered under its ``name``.

Why each one is here:

- ``lru``: the baseline every KV cache (vLLM's prefix cache included) starts from; recency only.
- ``fifo``: the cheapest possible order (a hit costs nothing); the floor other policies must beat.
- ``lfu``: keeps hot shared prefixes (system prompts, popular documents) against one-off scans.
- ``arc``: adapts between recency and frequency by itself (Megiddo & Modha, FAST 2003).
- ``s3fifo``: FIFO-only, scan-resistant, drops one-hit blocks fast (Yang et al., SOSP 2023).
- ``random``: the no-information control; any policy worth its cost should beat it.
- ``belady``: the offline optimum (MIN, with demand fetch) that bounds what any policy can reach.

Work per call is O(1) (amortized) except ``lfu`` (O(log F), F distinct frequencies) and
``belady`` (O(log n)); ``lru``/``fifo`` allocate nothing per hit. No policy sees block sizes or
payloads (see ``base``).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterator
from heapq import heapify, heappop, heappush
from itertools import chain
from typing import Any, ClassVar

from .base import EvictionPolicy, register
from .oracle import NEVER, FutureOracle

_NO_KEY: Any = object()  # "no pending incoming key" (block keys are ints, never this object)

__all__ = [
    "ARCPolicy",
    "BeladyPolicy",
    "FIFOPolicy",
    "LFUPolicy",
    "LRUPolicy",
    "RandomPolicy",
    "S3FIFOPolicy",
]


def _check_options(name: str, options: dict[str, Any], allowed: tuple[str, ...] = ()) -> None:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) if allowed else "none"
        raise TypeError(
            f"eviction policy {name!r} got unknown option(s) {', '.join(unknown)}; "
            f"accepted: {accepted}"
        )


# --------------------------------------------------------------------------------------------
# LRU and FIFO: one OrderedDict, oldest first.
# --------------------------------------------------------------------------------------------


@register
class LRUPolicy(EvictionPolicy):
    """Least recently used: a hit moves the block to the young end; the victim is the oldest."""

    name: ClassVar[str] = "lru"
    description: ClassVar[str] = "least recently used"

    def __init__(self, capacity_blocks: int = 0, **options: Any) -> None:
        _check_options(self.name, options)
        super().__init__(capacity_blocks)
        self._order: OrderedDict[int, None] = OrderedDict()
        self.resident_keys = self._order
        if type(self) is LRUPolicy:  # a hit is then one C call, not a Python frame
            self.touch = self._order.move_to_end  # type: ignore[method-assign]

    def insert(self, key: int) -> None:
        order = self._order
        if key in order:
            raise ValueError(f"{self.name}: block {key} is already resident")
        order[key] = None

    def touch(self, key: int) -> None:
        self._order.move_to_end(key)

    def remove(self, key: int) -> None:
        del self._order[key]

    def victim(self, incoming: int | None = None) -> int:
        try:
            return self._order.popitem(last=False)[0]
        except KeyError:
            raise LookupError(f"{self.name}: no resident block to evict") from None

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, key: object) -> bool:
        return key in self._order

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._order))


@register
class FIFOPolicy(LRUPolicy):
    """First in, first out: hits change nothing; the victim is the block resident longest."""

    name: ClassVar[str] = "fifo"
    description: ClassVar[str] = "first in, first out (hits do not reorder)"

    def touch(self, key: int) -> None:
        pass


# --------------------------------------------------------------------------------------------
# LFU: frequency buckets (each an OrderedDict in recency order) and a min-heap of frequencies.
# --------------------------------------------------------------------------------------------


@register
class LFUPolicy(EvictionPolicy):
    """Least frequently used, LRU among blocks of equal frequency; O(log F) per call at worst.

    A block enters with frequency 1 (no memory of evicted blocks) and each hit adds one. Blocks
    of one frequency share a bucket (an OrderedDict, least recent access first); a lazy min-heap
    of the frequencies that have a bucket finds the least frequent one (F = distinct frequencies;
    pushes are of a new, larger frequency, so they rarely sift). A block alone in its bucket takes
    the bucket along to the next frequency, which is the common case for hot blocks.
    """

    name: ClassVar[str] = "lfu"
    description: ClassVar[str] = "least frequently used, LRU among equal frequency"

    def __init__(self, capacity_blocks: int = 0, **options: Any) -> None:
        _check_options(self.name, options)
        super().__init__(capacity_blocks)
        self._freq: dict[int, int] = {}
        self.resident_keys = self._freq
        self._buckets: dict[int, OrderedDict[int, None]] = {}
        self._freq_heap: list[int] = []  # frequencies with a bucket (and stale ones)
        self._heap_limit = 64

    def _new_bucket(self, freq: int) -> OrderedDict[int, None]:
        bucket: OrderedDict[int, None] = OrderedDict()
        self._buckets[freq] = bucket
        self._push_freq(freq)
        return bucket

    def _push_freq(self, freq: int) -> None:
        heap = self._freq_heap
        heappush(heap, freq)
        if len(heap) > self._heap_limit:
            heap[:] = self._buckets
            heapify(heap)
            self._heap_limit = 2 * len(heap) + 64

    def insert(self, key: int) -> None:
        if key in self._freq:
            raise ValueError(f"lfu: block {key} is already resident")
        bucket = self._buckets.get(1)
        if bucket is None:
            bucket = self._new_bucket(1)
        bucket[key] = None
        self._freq[key] = 1

    def touch(self, key: int) -> None:
        freqs = self._freq
        freq = freqs[key]
        up = freq + 1
        freqs[key] = up
        buckets = self._buckets
        bucket = buckets[freq]
        target = buckets.get(up)
        if target is None:
            if len(bucket) == 1:  # alone: its bucket becomes the next frequency's
                del buckets[freq]
                buckets[up] = bucket
            else:
                del bucket[key]
                target = buckets[up] = OrderedDict()
                target[key] = None
            heap = self._freq_heap  # (inlined _push_freq: this is the hot path)
            heappush(heap, up)
            if len(heap) > self._heap_limit:
                heap[:] = buckets
                heapify(heap)
                self._heap_limit = 2 * len(heap) + 64
            return
        del bucket[key]
        target[key] = None
        if not bucket:
            del buckets[freq]

    def remove(self, key: int) -> None:
        freq = self._freq.pop(key)
        bucket = self._buckets[freq]
        del bucket[key]
        if not bucket:
            del self._buckets[freq]

    def victim(self, incoming: int | None = None) -> int:
        buckets = self._buckets
        heap = self._freq_heap
        while heap:
            freq = heap[0]
            bucket = buckets.get(freq)
            if bucket:
                key = bucket.popitem(last=False)[0]
                del self._freq[key]
                if not bucket:
                    del buckets[freq]
                return key
            heappop(heap)
        raise LookupError(f"{self.name}: no resident block to evict")

    def frequency(self, key: int) -> int:
        """The hit count (+1 for the insert) of a resident block."""
        return self._freq[key]

    def __len__(self) -> int:
        return len(self._freq)

    def __contains__(self, key: object) -> bool:
        return key in self._freq

    def __iter__(self) -> Iterator[int]:
        """Coldest first (the eviction order), so ``from_resident`` keeps it."""
        buckets = self._buckets
        return iter([key for freq in sorted(buckets) for key in buckets[freq]])


# --------------------------------------------------------------------------------------------
# ARC (Megiddo & Modha, "ARC: A Self-Tuning, Low Overhead Replacement Cache", FAST 2003).
# --------------------------------------------------------------------------------------------

_CASE_B1 = 2  # case II: ghost hit in B1
_CASE_B2 = 3  # case III: ghost hit in B2
_CASE_NEW = 4  # case IV: not in the directory


@register
class ARCPolicy(EvictionPolicy):
    """Adaptive Replacement Cache, exactly as in Fig. 4 of the FAST 2003 paper.

    ``T1``/``T2`` hold the resident blocks seen once/at least twice recently, ``B1``/``B2`` the
    ghosts (keys only) evicted from them; ``p`` is the adaptive target size of ``T1``. Each list
    is an OrderedDict, LRU end first. ``c`` is ``capacity_blocks``.

    Mapping onto the hierarchy's calls: a request's case (II: x in B1, III: x in B2, IV: new) and
    its directory work (adapting ``p``; the case-IV trimming of ``B1``/``B2``) is done once per
    request: by the first ``victim(incoming=x)`` when room is needed, otherwise by ``insert(x)``.
    That first victim is what the paper evicts for that request (``REPLACE(x, p)``, or in case
    IV-A with ``|T1| == c`` the LRU page of ``T1``, which becomes no ghost); any further victim
    for the same request is another ``REPLACE(x, p)``. ``insert(x)`` then puts ``x`` at the MRU
    end of ``T2`` (ghost hit) or ``T1`` (new). With one full tier of ``c`` blocks this is the
    textbook algorithm, decision for decision. A ghost hit while the tier has room still adapts
    ``p`` and goes to ``T2``, without a REPLACE.

    ``p`` is real-valued as in the paper (δ1 = |B2|/|B1| may be a fraction).
    """

    name: ClassVar[str] = "arc"
    description: ClassVar[str] = "adaptive replacement cache (recency/frequency, self-tuning)"

    def __init__(self, capacity_blocks: int = 0, **options: Any) -> None:
        _check_options(self.name, options)
        super().__init__(capacity_blocks)
        self.t1: OrderedDict[int, None] = OrderedDict()
        self.t2: OrderedDict[int, None] = OrderedDict()
        self.b1: OrderedDict[int, None] = OrderedDict()
        self.b2: OrderedDict[int, None] = OrderedDict()
        self.p: float = 0
        self._pending: Any = _NO_KEY  # the incoming key whose case has been handled
        self._pending_case = 0

    # -- the paper's pieces -------------------------------------------------------------------

    def _replace(self, key: Any) -> int:
        """REPLACE(x, p): demote the LRU page of T1 or T2 to its ghost list; return its key."""
        t1 = self.t1
        n1 = len(t1)
        if n1 and (n1 > self.p or (key in self.b2 and n1 == self.p)):
            victim = t1.popitem(last=False)[0]
            self.b1[victim] = None
        elif self.t2:
            victim = self.t2.popitem(last=False)[0]
            self.b2[victim] = None
        elif n1:  # T2 empty and |T1| <= p: unreachable in the paper's setting; evict from T1
            victim = t1.popitem(last=False)[0]
            self.b1[victim] = None
        else:
            raise LookupError(f"{self.name}: no resident block to evict")
        return victim

    def _classify(self, key: int) -> int:
        """Case II/III adaptation of p, or case IV directory trimming; returns the case."""
        c = self.capacity_blocks
        b1, b2 = self.b1, self.b2
        if key in b1:
            n1, n2 = len(b1), len(b2)
            delta = 1 if n1 >= n2 else n2 / n1
            self.p = min(self.p + delta, c)
            return _CASE_B1
        if key in b2:
            n1, n2 = len(b1), len(b2)
            delta = 1 if n2 >= n1 else n1 / n2
            self.p = max(self.p - delta, 0)
            return _CASE_B2
        n_t1 = len(self.t1)
        if n_t1 + len(b1) >= c:  # case IV-A: L1 has c pages
            if n_t1 < c and b1:
                b1.popitem(last=False)
        elif n_t1 + len(self.t2) + len(b1) + len(b2) >= 2 * c and b2:  # case IV-B
            b2.popitem(last=False)
        return _CASE_NEW

    # -- the EvictionPolicy interface ----------------------------------------------------------

    def victim(self, incoming: int | None = None) -> int:
        if incoming is None:
            return self._replace(None)
        if self._pending == incoming:
            return self._replace(incoming)
        if not self.t1 and not self.t2:
            raise LookupError(f"{self.name}: no resident block to evict")
        case = self._classify(incoming)
        self._pending = incoming
        self._pending_case = case
        t1 = self.t1
        if case == _CASE_NEW and len(t1) >= self.capacity_blocks:
            # Case IV-A with |T1| == c (so B1 is empty): T1's LRU page leaves the directory.
            return t1.popitem(last=False)[0]
        return self._replace(incoming)

    def insert(self, key: int) -> None:
        if self._pending == key:
            case = self._pending_case
            self._pending = _NO_KEY
        else:
            if key in self.t1 or key in self.t2:
                raise ValueError(f"arc: block {key} is already resident")
            self._pending = _NO_KEY
            case = self._classify(key)
        if case == _CASE_NEW:
            self.t1[key] = None
        else:
            self.b1.pop(key, None)
            self.b2.pop(key, None)
            self.t2[key] = None
        self._bound_directory()

    def _bound_directory(self) -> None:
        """Keep |T1|+|B1| <= c and the directory <= 2c (never binds on the textbook path)."""
        c = self.capacity_blocks
        b1, b2 = self.b1, self.b2
        n_t1 = len(self.t1)
        while b1 and n_t1 + len(b1) > c:
            b1.popitem(last=False)
        total = n_t1 + len(self.t2) + len(b1) + len(b2)
        while total > 2 * c and (b2 or b1):
            (b2 or b1).popitem(last=False)
            total -= 1

    def touch(self, key: int) -> None:
        t1 = self.t1
        if key in t1:  # case I: to the MRU end of T2
            del t1[key]
            self.t2[key] = None
        else:
            self.t2.move_to_end(key)

    def remove(self, key: int) -> None:
        if self.t1.pop(key, _NO_KEY) is _NO_KEY:
            del self.t2[key]

    def resize(self, capacity_blocks: int) -> None:
        self.capacity_blocks = capacity_blocks
        self.p = min(max(self.p, 0), capacity_blocks)
        self._bound_directory()

    def __len__(self) -> int:
        return len(self.t1) + len(self.t2)

    def __contains__(self, key: object) -> bool:
        return key in self.t1 or key in self.t2

    def __iter__(self) -> Iterator[int]:
        return iter(list(chain(self.t1, self.t2)))


# --------------------------------------------------------------------------------------------
# S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction", SOSP 2023).
# --------------------------------------------------------------------------------------------


@register
class S3FIFOPolicy(EvictionPolicy):
    """S3-FIFO: a small FIFO ``S`` (~10 %), a main FIFO ``M`` and a ghost FIFO ``G`` (keys only).

    Follows the paper's Algorithm 1 with the eviction loop structured as libCacheSim's
    ``S3FIFO.c``/``S3FIFOv0.c`` (one block leaves per eviction, which is what ``victim`` needs):

    - a hit adds one to the block's 2-bit frequency (capped at 3);
    - a miss goes to ``M`` if its key is in ``G`` (and leaves ``G``), else to ``S``; frequency 0;
    - to evict: from ``M`` when ``|M| > |M|cap`` or ``S`` is empty, else from ``S``;
    - from ``S``: the oldest block moves to ``M`` (frequency cleared) if its frequency is at least
      ``move_to_main_threshold``, else it is the victim and its key enters ``G`` (``G`` drops
      its oldest key beyond its cap); repeat until a victim (or ``S`` runs dry: evict from ``M``);
    - from ``M``: the oldest block with frequency > 0 is reinserted with frequency - 1 (2-bit
      CLOCK); the first with frequency 0 is the victim.

    ``|S|cap = max(1, int(small_ratio * c))``, ``|M|cap = c - |S|cap`` and ``G`` holds as many keys
    as ``M`` holds blocks. ``move_to_main_threshold`` defaults to 2, as in the paper's Algorithm 1
    (``t.freq > 1``), the SOSP'23 artifact and libCacheSim; 1 is the eager variant.

    Whether the incoming key was a ghost is decided before evictions move keys into ``G``
    (libCacheSim looks it up when the request arrives), by the first ``victim(incoming=x)``, or
    by ``insert(x)`` when no room was needed.
    """

    name: ClassVar[str] = "s3fifo"
    description: ClassVar[str] = "S3-FIFO: small + main FIFO with a ghost queue (quick demotion)"

    def __init__(
        self,
        capacity_blocks: int = 0,
        *,
        small_ratio: float = 0.1,
        move_to_main_threshold: int = 2,
        **options: Any,
    ) -> None:
        _check_options(self.name, options, ("small_ratio", "move_to_main_threshold"))
        if not 0 < small_ratio < 1:
            raise ValueError(f"s3fifo: small_ratio must be in (0, 1), got {small_ratio}")
        if not 1 <= move_to_main_threshold <= 3:
            raise ValueError(
                f"s3fifo: move_to_main_threshold must be 1..3 (2-bit counter), "
                f"got {move_to_main_threshold}"
            )
        super().__init__(capacity_blocks)
        self.small_ratio = small_ratio
        self.move_to_main_threshold = move_to_main_threshold
        self.small: OrderedDict[int, int] = OrderedDict()  # key -> freq, oldest first
        self.main: OrderedDict[int, int] = OrderedDict()
        self.ghost: OrderedDict[int, None] = OrderedDict()
        self._checked: Any = _NO_KEY  # incoming key whose ghost status is already known
        self._ghost_hit = False
        self.small_cap = self.main_cap = self.ghost_cap = 0
        self.resize(capacity_blocks)

    def resize(self, capacity_blocks: int) -> None:
        self.capacity_blocks = capacity_blocks
        self.small_cap = max(1, int(capacity_blocks * self.small_ratio + 1e-9))
        self.main_cap = max(0, capacity_blocks - self.small_cap)
        self.ghost_cap = self.main_cap
        ghost = self.ghost
        while len(ghost) > self.ghost_cap:
            ghost.popitem(last=False)

    def _check_ghost(self, key: int) -> None:
        self._checked = key
        self._ghost_hit = self.ghost.pop(key, _NO_KEY) is not _NO_KEY

    def insert(self, key: int) -> None:
        if self._checked != key:
            if key in self.small or key in self.main:
                raise ValueError(f"s3fifo: block {key} is already resident")
            self._check_ghost(key)
        self._checked = _NO_KEY
        if self._ghost_hit:
            self.main[key] = 0
        else:
            self.small[key] = 0

    def touch(self, key: int) -> None:
        small = self.small
        freq = small.get(key)
        if freq is not None:
            if freq < 3:
                small[key] = freq + 1
        else:
            main = self.main
            freq = main[key]
            if freq < 3:
                main[key] = freq + 1

    def remove(self, key: int) -> None:
        if self.small.pop(key, None) is None:
            del self.main[key]

    def victim(self, incoming: int | None = None) -> int:
        if incoming is not None and self._checked != incoming:
            self._check_ghost(incoming)
        small, main = self.small, self.main
        if small and len(main) <= self.main_cap:
            threshold = self.move_to_main_threshold
            while small:
                key, freq = small.popitem(last=False)
                if freq >= threshold:
                    main[key] = 0
                else:
                    ghost = self.ghost
                    ghost[key] = None
                    if len(ghost) > self.ghost_cap:
                        ghost.popitem(last=False)
                    return key
        while main:
            key, freq = main.popitem(last=False)
            if freq:
                main[key] = freq - 1
            else:
                return key
        raise LookupError(f"{self.name}: no resident block to evict")

    def __len__(self) -> int:
        return len(self.small) + len(self.main)

    def __contains__(self, key: object) -> bool:
        return key in self.small or key in self.main

    def __iter__(self) -> Iterator[int]:
        return iter(list(chain(self.small, self.main)))


# --------------------------------------------------------------------------------------------
# Random: a list of keys and each key's index; the victim swaps with the last and pops.
# --------------------------------------------------------------------------------------------


@register
class RandomPolicy(EvictionPolicy):
    """A uniformly random resident block, from a seeded generator (``seed``, default 0)."""

    name: ClassVar[str] = "random"
    description: ClassVar[str] = "uniformly random victim (seeded)"

    def __init__(self, capacity_blocks: int = 0, *, seed: int = 0, **options: Any) -> None:
        _check_options(self.name, options, ("seed",))
        super().__init__(capacity_blocks)
        self.seed = seed
        self._rng = random.Random(seed)
        self._keys: list[int] = []
        self._index: dict[int, int] = {}
        self.resident_keys = self._index

    def insert(self, key: int) -> None:
        index = self._index
        if key in index:
            raise ValueError(f"random: block {key} is already resident")
        index[key] = len(self._keys)
        self._keys.append(key)

    def touch(self, key: int) -> None:
        pass

    def _take(self, i: int) -> int:
        keys = self._keys
        key = keys[i]
        last = keys.pop()
        if i < len(keys):  # the taken key was not the last one: the last fills its slot
            keys[i] = last
            self._index[last] = i
        del self._index[key]
        return key

    def remove(self, key: int) -> None:
        self._take(self._index[key])

    def victim(self, incoming: int | None = None) -> int:
        n = len(self._keys)
        if not n:
            raise LookupError(f"{self.name}: no resident block to evict")
        return self._take(int(self._rng.random() * n))

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._keys))


# --------------------------------------------------------------------------------------------
# Belady's MIN with demand fetch.
# --------------------------------------------------------------------------------------------



@register
class BeladyPolicy(EvictionPolicy):
    """Belady's MIN: the victim is the resident block whose next use is farthest away.

    Needs ``oracle`` (a ``FutureOracle`` the hierarchy advances before each access). Demand
    fetch: the missed block is always inserted. Every access position is the next use of
    exactly one key, so a finite next use identifies its block: the heap holds ``-next_use``
    alone (small ints, cheap to push and compare) and ``oracle.sequence[next_use]`` gives the
    key back. Blocks never used again sit in a second heap by key, and go first, smallest key
    first. Entries are lazy: ``_entry[key]`` is a resident block's live next use; others are
    dropped when they surface, and the heaps are rebuilt when they outgrow twice the blocks.
    """

    name: ClassVar[str] = "belady"
    description: ClassVar[str] = "offline optimum (MIN): evicts the block used farthest ahead"

    def __init__(
        self, capacity_blocks: int = 0, *, oracle: FutureOracle | None = None, **options: Any
    ) -> None:
        _check_options(self.name, options, ("oracle",))
        if not isinstance(oracle, FutureOracle):
            raise ValueError(
                "belady needs oracle=FutureOracle(...) (the whole access sequence in advance)"
            )
        super().__init__(capacity_blocks)
        self.oracle = oracle
        self._next_use = oracle.next_use_table.get
        self._sequence = oracle.sequence
        self._entry: dict[int, int] = {}
        self.resident_keys = self._entry
        self._heap: list[int] = []  # -next_use of live and stale entries
        self._dead: list[int] = []  # keys never used again (live and stale)
        self._limit = 64

    def insert(self, key: int) -> None:
        if key in self._entry:
            raise ValueError(f"belady: block {key} is already resident")
        self.touch(key)

    def touch(self, key: int) -> None:
        nxt = self._next_use(key, NEVER)
        self._entry[key] = nxt
        if nxt == NEVER:
            dead = self._dead
            heappush(dead, key)
            if len(dead) > 4 * len(self._entry) + 64:
                dead[:] = [k for k, n in self._entry.items() if n == NEVER]
                heapify(dead)
        else:
            heap = self._heap
            heappush(heap, -nxt)
            if len(heap) > self._limit:
                self._rebuild()

    def _rebuild(self) -> None:
        """Drop stale heap entries (every touch leaves one behind)."""
        self._heap[:] = [-n for n in self._entry.values() if n != NEVER]
        heapify(self._heap)
        self._limit = 4 * len(self._heap) + 64

    def remove(self, key: int) -> None:
        del self._entry[key]

    def victim(self, incoming: int | None = None) -> int:
        entries = self._entry
        dead = self._dead
        while dead:
            key = heappop(dead)
            if entries.get(key) == NEVER:
                del entries[key]
                return key
        heap = self._heap
        sequence = self._sequence
        while heap:
            nxt = -heappop(heap)
            key = sequence[nxt]
            if entries.get(key) == nxt:
                del entries[key]
                return key
        raise LookupError(f"{self.name}: no resident block to evict")

    def next_use(self, key: int) -> int:
        """The next-use position recorded for a resident block at its last insert/touch."""
        return self._entry[key]

    def __len__(self) -> int:
        return len(self._entry)

    def __contains__(self, key: object) -> bool:
        return key in self._entry

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._entry))
