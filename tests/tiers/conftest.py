"""Shared helpers for tier tests: a plain in-memory store and deterministic payloads."""

from __future__ import annotations

import numpy as np
import pytest
from tiertop.tiers.block import Block, BlockHash
from tiertop.tiers.store import Buffer, TierStore, copy_into


class DictStore(TierStore):
    """A store that keeps blocks in a dict: the simplest real-bytes medium, for hierarchy tests
    that must not depend on any one production store."""

    kind = "dict"

    def __init__(self, name: str, capacity_bytes: int, kind: str = "dict") -> None:
        super().__init__(name, capacity_bytes)
        self.kind = kind  # type: ignore[misc]
        self._blocks: dict[BlockHash, Block] = {}

    def _put(self, block: Block) -> None:
        self._blocks[block.key] = Block(block.key, block.header, bytes(block.view()))

    def _get(self, key: BlockHash, out: Buffer | None) -> Block | None:
        stored = self._blocks.get(key)
        if stored is None:
            return None
        return Block(key, stored.header, copy_into(out, stored.payload))

    def _delete(self, key: BlockHash) -> None:
        del self._blocks[key]

    def _clear(self) -> None:
        self._blocks.clear()

    def describe(self) -> str:
        return f"{self.name}: python dict ({self.kind})"


def payload_block(key: int, nbytes: int = 64) -> Block:
    """A block whose bytes are a pure function of its key, so any returned block can be checked."""
    rng = np.random.default_rng(key)
    return Block.from_array(key, rng.integers(0, 256, nbytes, dtype=np.uint8))


@pytest.fixture
def make_block():  # type: ignore[no-untyped-def]
    return payload_block
