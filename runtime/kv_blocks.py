"""Conversion between a model's KV cache and tier blocks.

A block holds the keys and values of ``block_size`` consecutive tokens for every layer as one
C-contiguous array shaped ``[layers, 2, heads, block_size, head_dim]`` in the model's dtype (index
0 of the second axis is K, 1 is V), wrapped with :meth:`Block.from_array`.

The model's side is transformers 5's :class:`~transformers.DynamicCache`: one ``DynamicLayer``
per decoder layer holding ``keys`` and ``values`` tensors shaped ``[batch, heads, seq, head_dim]``
(GPT-2 reads them as ``cache.layers[i].keys`` and grows them with ``torch.cat`` in
``DynamicLayer.update``). Going from blocks to a cache:

1. the tier stores write each restored block straight into one slot of a preallocated host buffer
   shaped ``[n_blocks, layers, 2, heads, block_size, head_dim]`` (``get(key, out=slot)``, the only
   copy out of the medium), seen by torch without a copy (``torch.from_numpy``; the buffer is
   pinned when the model is on a GPU, so the upload is one asynchronous DMA);
2. one permuting copy per layer turns it into K and V tensors ``[1, heads, n_blocks * block_size,
   head_dim]``: this is the one copy the layout change needs (a block keeps all layers together,
   the cache keeps all tokens of a layer together). The engine copies into a reusable staging
   tensor (:meth:`RestoreBuffer.staging`), so a restore pays no page faults for fresh memory;
3. :func:`cache_from_kv` makes a ``DynamicCache`` whose layers hold those tensors: each layer is
   initialised through its public ``update`` with an empty slice (so the layer sets its own
   dtype/device state whatever its version), then given the tensors as ``keys``/``values``, so no
   third copy is made. The first forward pass over the remaining tokens appends to them.

Going from a cache to blocks (:func:`kv_to_blocks`) is one gather copy per layer into a fresh
``[n_blocks, layers, 2, heads, block_size, head_dim]`` array; each block is a C-contiguous slice.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from tiertop.tiers.block import Block, BlockHash

from .model import ModelInfo


def kv_shape(info: ModelInfo, n_blocks: int, block_size: int) -> tuple[int, ...]:
    """Shape of a stack of blocks: [n_blocks, layers, 2, heads, block_size, head_dim]."""
    return (n_blocks, *info.block_shape(block_size))


class RestoreBuffer:
    """A reusable host buffer that tier stores fill block by block (``get(key, out=slot(i))``).

    Kept across requests so a restore never pays page faults for fresh memory; pinned when the
    model runs on a GPU. Grows (never shrinks) to the largest prefix seen.
    """

    def __init__(self, info: ModelInfo, block_size: int) -> None:
        self.info = info
        self.block_size = block_size
        self._pin = info.device.type == "cuda"
        self._tensor: torch.Tensor | None = None
        self._array: np.ndarray | None = None
        self._staging: torch.Tensor | None = None

    @property
    def capacity_blocks(self) -> int:
        return 0 if self._tensor is None else int(self._tensor.shape[0])

    def reserve(self, n_blocks: int) -> None:
        """Make room for ``n_blocks`` blocks (contents are not kept when it grows)."""
        if n_blocks <= self.capacity_blocks:
            return
        shape = kv_shape(self.info, n_blocks, self.block_size)
        tensor = torch.empty(shape, dtype=self.info.dtype, pin_memory=self._pin)
        self._tensor = tensor
        self._array = tensor.numpy()

    def slot(self, index: int) -> np.ndarray:
        """The C-contiguous, writable array that block ``index`` is read into."""
        if self._array is None or index >= self.capacity_blocks:
            raise IndexError(f"restore buffer holds {self.capacity_blocks} blocks, asked {index}")
        slot: np.ndarray = self._array[index]
        return slot

    def staging(self, n_blocks: int) -> torch.Tensor:
        """A reusable 1-D tensor on the model's device with room for the cache-layout copy of
        ``n_blocks`` blocks (the ``out`` of :func:`blocks_to_kv`): reusing it spares each restore
        the page faults of fresh memory (measured: 46 ms fresh vs 12 ms reused for the 74 MB of a
        1008-token gpt2-small prefix, one thread)."""
        need = n_blocks * self.info.block_bytes(self.block_size) // self.info.itemsize
        staging = self._staging
        if staging is None or staging.numel() < need:
            staging = torch.empty(need, dtype=self.info.dtype, device=self.info.device)
            self._staging = staging
        return staging

    def tensor(self, n_blocks: int) -> torch.Tensor:
        """The first ``n_blocks`` slots as one tensor (a view of the same memory)."""
        if self._tensor is None or n_blocks > self.capacity_blocks:
            raise IndexError(
                f"restore buffer holds {self.capacity_blocks} blocks, asked {n_blocks}"
            )
        return self._tensor[:n_blocks]


LayerKV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer, K and V shaped ``[1, heads, tokens, head_dim]`` (contiguous)."""


def blocks_to_kv(
    stacked: torch.Tensor | np.ndarray | Sequence[Block],
    info: ModelInfo,
    out: torch.Tensor | None = None,
) -> LayerKV:
    """Restored blocks as per-layer K and V tensors on the model's device.

    ``stacked`` is a ``[n, layers, 2, heads, block_size, head_dim]`` tensor or array (e.g. a
    :class:`RestoreBuffer` view), or a sequence of blocks whose payloads are seen through
    ``torch.from_numpy`` without a copy. Exactly one copy is made (the layout change), on the
    model's device, into fresh tensors or, when given, into ``out`` (a 1-D tensor of the model's
    dtype and device with room for all of it, e.g. :meth:`RestoreBuffer.staging`): the result
    then aliases ``out`` and is valid until ``out`` is written again. A ``DynamicCache`` built
    from it stops referencing it at its first forward pass (``DynamicLayer.update`` concatenates
    into new tensors).
    """
    if isinstance(stacked, torch.Tensor):
        source = stacked
    elif isinstance(stacked, np.ndarray):
        source = _from_numpy(stacked)
    else:
        blocks = list(stacked)
        if not blocks:
            raise ValueError("no blocks to restore")
        source = torch.stack([_from_numpy(b.to_array()) for b in blocks])
    if source.ndim != 6:
        raise ValueError(
            f"expected [n, layers, 2, heads, block, head_dim], got {tuple(source.shape)}"
        )
    n, layers, two, heads, block_size, head_dim = (int(d) for d in source.shape)
    if (layers, two, heads, head_dim) != (info.layers, 2, info.heads, info.head_dim):
        raise ValueError(
            f"blocks shaped {tuple(source.shape)} do not fit the model "
            f"({info.layers} layers, {info.heads} heads, head_dim {info.head_dim})"
        )
    if source.dtype != info.dtype:
        raise ValueError(f"blocks are {source.dtype}, the model runs {info.dtype}")
    if source.device != info.device:
        source = source.to(info.device, non_blocking=source.is_pinned())
    tokens = n * block_size
    size = heads * tokens * head_dim
    if out is not None and (
        out.ndim != 1
        or out.numel() < 2 * layers * size
        or out.dtype != source.dtype
        or out.device != source.device
    ):
        raise ValueError(
            f"out must be a 1-D {source.dtype} tensor on {source.device} with room "
            f"for {2 * layers * size} values"
        )

    def gather(layer: int, which: int) -> torch.Tensor:
        # [n, H, b, D] -> [H, n, b, D] copied into [1, H, n*b, D]: always one copy, so the cache
        # never aliases the source (a reused buffer, a read-only payload)
        if out is None:
            dest = torch.empty(
                (1, heads, tokens, head_dim), dtype=source.dtype, device=source.device
            )
        else:
            start = (2 * layer + which) * size
            dest = out[start : start + size].view(1, heads, tokens, head_dim)
        dest[0].view(heads, n, block_size, head_dim).copy_(source[:, layer, which].transpose(0, 1))
        return dest

    return [(gather(layer, 0), gather(layer, 1)) for layer in range(layers)]


def cache_from_kv(kv: LayerKV) -> Any:
    """A transformers ``DynamicCache`` holding ``kv`` (per layer, K and V [1, heads, tokens,
    head_dim]).

    The layers hold the given tensors (no copy); a forward pass with this cache as
    ``past_key_values`` continues at position ``tokens``.
    """
    from transformers import DynamicCache

    if not kv:
        raise ValueError("no layers to restore")
    tokens = int(kv[0][0].shape[2])
    # ddp_cache_data entries without tensors give empty DynamicLayers (no config needed).
    cache = DynamicCache(ddp_cache_data=[(None, None)] * len(kv))
    layer: Any
    for layer, (keys, values) in zip(cache.layers, kv, strict=True):
        if keys.shape != values.shape or int(keys.shape[2]) != tokens:
            raise ValueError("every layer's K and V must hold the same tokens")
        layer.update(keys[:, :, :0], values[:, :, :0])  # the layer's own lazy initialisation
        layer.keys = keys
        layer.values = values
    if cache.get_seq_length() != tokens:
        raise RuntimeError(
            f"transformers' DynamicCache did not take the restored KV (holds "
            f"{cache.get_seq_length()} tokens, expected {tokens})"
        )
    return cache


def cache_from_blocks(blocks: torch.Tensor | np.ndarray | Sequence[Block], info: ModelInfo) -> Any:
    """A ``DynamicCache`` continuing after the restored ``blocks`` (see :func:`blocks_to_kv`)."""
    return cache_from_kv(blocks_to_kv(blocks, info))


def cache_tokens(cache: Any) -> int:
    """Tokens held by a cache."""
    return int(cache.get_seq_length())


def kv_to_array(
    cache: Any, info: ModelInfo, first_block: int, n_blocks: int, block_size: int
) -> np.ndarray:
    """K/V of blocks ``first_block .. first_block + n_blocks - 1`` of a cache, as a fresh host
    array shaped ``[n_blocks, layers, 2, heads, block_size, head_dim]``."""
    start = first_block * block_size
    stop = start + n_blocks * block_size
    held = cache_tokens(cache)
    if stop > held:
        raise ValueError(f"blocks up to token {stop} asked, the cache holds {held} tokens")
    out = torch.empty(kv_shape(info, n_blocks, block_size), dtype=info.dtype)
    for index, layer in enumerate(cache.layers):
        for which, tensor in ((0, layer.keys), (1, layer.values)):
            # [1, H, tokens, D] -> [H, n, b, D] -> [n, H, b, D]
            part = tensor[0, :, start:stop].unflatten(1, (n_blocks, block_size)).transpose(0, 1)
            out[:, index, which].copy_(part)
    return out.numpy()


def kv_to_blocks(
    cache: Any,
    info: ModelInfo,
    hashes: Sequence[BlockHash],
    first_block: int,
    block_size: int,
) -> list[Block]:
    """Blocks ``first_block ..`` of a cache, one per hash (checksummed, C-contiguous payloads)."""
    if not hashes:
        return []
    array = kv_to_array(cache, info, first_block, len(hashes), block_size)
    return [Block.from_array(key, array[i]) for i, key in enumerate(hashes)]


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` without a copy, also for read-only payloads (e.g. a ZeroMQ frame),
    which are only ever read here."""
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.from_numpy(array)
