"""Textbook cache simulations, written from the papers, independent of the tier library.

Each takes the capacity in blocks and the flat access sequence with, for every access, whether
it is counted (warm-up excluded), and returns ``(hits, evictions)`` over the counted accesses.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Sequence


def lru(capacity: int, keys: Sequence[int], counted: Sequence[bool]) -> tuple[int, int]:
    """Least recently used: a hit moves the block to the MRU end; a miss with a full cache
    evicts the LRU block."""
    cache: OrderedDict[int, None] = OrderedDict()
    hits = evictions = 0
    for key, count in zip(keys, counted, strict=True):
        if key in cache:
            cache.move_to_end(key)
            hits += count
            continue
        if len(cache) == capacity:
            cache.popitem(last=False)
            evictions += count
        cache[key] = None
    return hits, evictions


def arc(capacity: int, keys: Sequence[int], counted: Sequence[bool]) -> tuple[int, int]:
    """ARC as in Fig. 4 of Megiddo & Modha, "ARC: A Self-Tuning, Low Overhead Replacement
    Cache" (FAST 2003): T1/T2 resident (LRU first), B1/B2 their ghosts, p the target of T1."""
    c = capacity
    t1: OrderedDict[int, None] = OrderedDict()
    t2: OrderedDict[int, None] = OrderedDict()
    b1: OrderedDict[int, None] = OrderedDict()
    b2: OrderedDict[int, None] = OrderedDict()
    p = 0.0
    hits = evictions = 0

    def replace(x: int, count: bool) -> None:
        nonlocal evictions
        if t1 and ((x in b2 and len(t1) == p) or len(t1) > p):
            victim = t1.popitem(last=False)[0]
            b1[victim] = None
        else:
            victim = t2.popitem(last=False)[0]
            b2[victim] = None
        evictions += count

    for x, count in zip(keys, counted, strict=True):
        if x in t1:  # case I
            del t1[x]
            t2[x] = None
            hits += count
        elif x in t2:  # case I
            t2.move_to_end(x)
            hits += count
        elif x in b1:  # case II
            p = min(p + (1 if len(b1) >= len(b2) else len(b2) / len(b1)), c)
            replace(x, count)
            del b1[x]
            t2[x] = None
        elif x in b2:  # case III
            p = max(p - (1 if len(b2) >= len(b1) else len(b1) / len(b2)), 0)
            replace(x, count)
            del b2[x]
            t2[x] = None
        else:  # case IV
            if len(t1) + len(b1) == c:  # A
                if len(t1) < c:
                    b1.popitem(last=False)
                    replace(x, count)
                else:
                    t1.popitem(last=False)
                    evictions += count
            else:  # B: |L1| < c
                total = len(t1) + len(t2) + len(b1) + len(b2)
                if total >= c:
                    if total == 2 * c:
                        b2.popitem(last=False)
                    replace(x, count)
            t1[x] = None
    return hits, evictions


def belady(capacity: int, keys: Sequence[int], counted: Sequence[bool]) -> tuple[int, int]:
    """Belady's MIN with demand fetch: every missed block is brought in; with a full cache the
    resident block whose next use is farthest away (or never) leaves."""
    never = len(keys) + 1
    next_use = [never] * len(keys)
    last: dict[int, int] = {}
    for i in range(len(keys) - 1, -1, -1):
        next_use[i] = last.get(keys[i], never)
        last[keys[i]] = i
    resident: dict[int, int] = {}  # key -> its next use
    heap: list[tuple[int, int]] = []  # (-next use, key), stale entries skipped
    hits = evictions = 0
    for i, (key, count) in enumerate(zip(keys, counted, strict=True)):
        if key in resident:
            hits += count
        elif len(resident) == capacity:
            while True:
                negative, victim = heapq.heappop(heap)
                if resident.get(victim) == -negative:
                    del resident[victim]
                    break
            evictions += count
        resident[key] = next_use[i]
        heapq.heappush(heap, (-next_use[i], key))
    return hits, evictions


REFERENCES = {"lru": lru, "arc": arc, "belady": belady}
