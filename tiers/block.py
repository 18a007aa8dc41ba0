"""KV blocks: chained prefix hashes, a small header and a payload of real bytes.

A block holds the keys and values of ``block_size`` consecutive tokens of one sequence for all
layers. Its identity is a chained hash of the parent block's hash and its own token ids, as vLLM
computes it, so equal prefixes share blocks. Hashes are 64-bit unsigned ints: they fit msgpack and
vLLM's int form of ``block_hashes``, and at a million resident blocks the chance of any collision
is about 3e-8.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xxhash

BlockHash = int
ROOT_HASH: BlockHash = 0


def chain_hash(parent: BlockHash | None, token_ids: Sequence[int] | np.ndarray) -> BlockHash:
    """The block hash of ``token_ids`` following the block ``parent`` (None for the first)."""
    tokens = np.asarray(token_ids, dtype=np.int64)
    seed = ROOT_HASH if parent is None else parent
    return xxhash.xxh3_64_intdigest(tokens.tobytes(), seed=seed)


def prefix_hashes(token_ids: Sequence[int] | np.ndarray, block_size: int) -> list[BlockHash]:
    """The chained hashes of every full block of ``token_ids`` (a partial last block has none)."""
    tokens = np.asarray(token_ids, dtype=np.int64)
    hashes: list[BlockHash] = []
    parent: BlockHash | None = None
    for start in range(0, len(tokens) - block_size + 1, block_size):
        parent = chain_hash(parent, tokens[start : start + block_size])
        hashes.append(parent)
    return hashes


Payload = bytes | bytearray | memoryview | np.ndarray


def byte_view(payload: Payload) -> memoryview:
    """Any C-contiguous payload as a flat byte view (no copy)."""
    return memoryview(payload).cast("B")  # type: ignore[arg-type]  # ndarray is a buffer


def checksum(payload: Payload) -> int:
    """Integrity checksum of a payload (xxh3-64: several GB/s, cheaper than the copy it guards)."""
    return xxhash.xxh3_64_intdigest(byte_view(payload))


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """What a store needs to keep beside the bytes to hand back a usable block.

    ``codec`` names how the payload bytes are encoded ("raw" means exactly the array's bytes);
    ``checksum`` is over the raw payload, so it also checks what a codec decoded.
    """

    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    checksum: int
    codec: str = "raw"


@dataclass(slots=True)
class Block:
    """A block's identity, header and payload (any C-contiguous buffer of ``header.nbytes``)."""

    key: BlockHash
    header: BlockHeader
    payload: Payload

    @classmethod
    def from_array(cls, key: BlockHash, array: np.ndarray) -> Block:
        """Wrap a numpy array (e.g. stacked K/V of all layers) as a block, checksumming it."""
        data = np.ascontiguousarray(array)
        header = BlockHeader(
            shape=tuple(int(d) for d in data.shape),
            dtype=str(data.dtype),
            nbytes=int(data.nbytes),
            checksum=checksum(data),
        )
        return cls(key, header, data)

    def view(self) -> memoryview:
        """The payload as a flat byte view (no copy)."""
        return byte_view(self.payload)

    def to_array(self) -> np.ndarray:
        """The payload as an array of the header's shape and dtype (no copy where possible)."""
        flat = np.frombuffer(self.view(), dtype=np.uint8)
        return flat.view(np.dtype(self.header.dtype)).reshape(self.header.shape)

    def verify(self) -> bool:
        """True when the payload still matches the header's checksum."""
        return checksum(self.payload) == self.header.checksum
