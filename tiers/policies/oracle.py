"""Knowledge of the future for offline policies (Belady's MIN).

The hierarchy advances the oracle by one position on every access it serves, before any policy
hears of that access, so ``next_use(key)`` is always the position of the key's next access after
the current one (``NEVER`` when it is not used again).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NEVER = 1 << 62


def next_use_positions(keys: np.ndarray) -> np.ndarray:
    """For every position i, the next position j > i with keys[j] == keys[i], else NEVER."""
    n = len(keys)
    nxt = np.full(n, NEVER, dtype=np.int64)
    if n < 2:
        return nxt
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    same = sorted_keys[1:] == sorted_keys[:-1]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


class FutureOracle:
    """The whole access sequence, known in advance."""

    def __init__(self, keys: Sequence[int] | np.ndarray) -> None:
        arr = np.asarray(keys, dtype=np.uint64 if _is_unsigned(keys) else np.int64)
        #: the whole access sequence, and for each position the position of the next access to
        #: the same key; replay loops may read these and advance inline (see ``advance``)
        self.sequence: list[int] = arr.tolist()
        self.next_positions: list[int] = next_use_positions(arr).tolist()
        self.position = 0
        #: next access position of every key accessed so far, as of ``position``
        self.next_use_table: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self.sequence)

    def advance(self, key: int) -> None:
        """Move past the access to ``key`` at the current position."""
        position = self.position
        if position >= len(self.sequence) or self.sequence[position] != key:
            raise self.mismatch(key, position)
        self.next_use_table[key] = self.next_positions[position]
        self.position = position + 1

    def mismatch(self, key: int, position: int) -> ValueError:
        expected = self.sequence[position] if position < len(self.sequence) else "end of sequence"
        return ValueError(
            f"access {key} at position {position} does not match the oracle's sequence "
            f"(expected {expected})"
        )

    def next_use(self, key: int) -> int:
        """Position of the key's next access (NEVER if none or if it was never accessed)."""
        return self.next_use_table.get(key, NEVER)


def _is_unsigned(keys: Sequence[int] | np.ndarray) -> bool:
    if isinstance(keys, np.ndarray):
        return keys.dtype.kind == "u"
    return any(k > (1 << 63) - 1 for k in keys)
