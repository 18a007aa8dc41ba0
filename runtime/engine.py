"""The model engine: serves requests with a real model and reuses prefix KV from the tiers.

For each request (:meth:`ModelEngine.serve`):

1. the context is hashed into full blocks (:func:`tiers.block.prefix_hashes`);
2. the longest cached prefix is restored: ``hierarchy.get`` block by block, in order, until the
   first miss. Each get hands back exact bytes or a miss: a corrupt block, a block its medium lost
   or a tier that is down is a miss, and everything from there on is recomputed. At least one
   context token is always recomputed (its logits give the first output token);
3. the restored blocks become the model's ``DynamicCache`` (:mod:`.kv_blocks`) and prefill runs on
   the remaining context tokens only; then ``max_new_tokens`` tokens are decoded greedily;
4. the new full blocks of context + output (those the hierarchy does not hold) are put into the
   hierarchy (``position`` = block index, ``parent`` = the previous block's hash), which may demote
   or drop other blocks.

Timing uses one clock (``time.perf_counter`` unless another is given); ``arrival_time`` must be a
reading of that clock. Not thread-safe: one engine, its model and its hierarchy belong to one
thread (the runtime's service loop).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tiertop.tiers.block import BlockHash, chain_hash, prefix_hashes
from tiertop.tiers.errors import TierError
from tiertop.tiers.hierarchy import Hierarchy

from .kv_blocks import LayerKV, RestoreBuffer, blocks_to_kv, cache_from_kv, kv_to_blocks
from .model import LoadedModel

DEFAULT_BLOCK_SIZE = 16


@dataclass(slots=True)
class RequestResult:
    """What serving one request did and how long it took (seconds).

    ``ttft_s`` = queueing delay (start - ``arrival_time``, when given) + restore + prefill + first
    token; ``tpot_s`` is the mean time per output token after the first; ``e2e_s`` runs from
    arrival (or start) to the last token. Storing the new blocks happens after the last token and
    is reported apart (``store_s``).
    """

    prompt_tokens: int
    output_ids: list[int]
    ttft_s: float
    tpot_s: float
    e2e_s: float
    queue_s: float
    restore_s: float  # fetching blocks and building the cache
    prefill_s: float  # forward pass over the recomputed tokens + first token
    decode_s: float
    store_s: float
    #: Tokens whose KV was restored, by the tier that served them (every tier listed).
    prefix_tokens_restored: dict[str, int]
    recomputed_tokens: int
    bytes_fetched: dict[str, int]
    fetch_latency_s: dict[str, float]
    #: Full context blocks, and of those how many were found in a tier before the first miss.
    context_blocks: int = 0
    blocks_restored: int = 0
    blocks_stored: int = 0  # new blocks the hierarchy accepted
    blocks_rejected: int = 0  # new blocks no tier could take
    #: Why the restore stopped early or a put failed, other than a plain miss.
    errors: list[str] = field(default_factory=list)

    @property
    def output_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def restored_tokens(self) -> int:
        return sum(self.prefix_tokens_restored.values())

    def continuation(self, context: Sequence[int], new_prompt: Sequence[int]) -> list[int]:
        """The next turn's context: ``context`` + this turn's output + ``new_prompt``."""
        return [*context, *self.output_ids, *new_prompt]


@dataclass(slots=True)
class _Restored:
    """The outcome of a restore: the KV (or None) and its per-tier accounting."""

    kv: LayerKV | None
    blocks: int
    tokens_by_tier: dict[str, int]
    bytes_by_tier: dict[str, int]
    latency_by_tier: dict[str, float]
    errors: list[str]


class ModelEngine:
    """Serves requests on a loaded model, with prefix KV kept in a tier hierarchy.

    Args:
        model: from :func:`~tiertop.runtime.model.load_model`.
        hierarchy: the tiers; every tier must hold bytes (a store), not accounting only.
        block_size: tokens per KV block.
        clock: the clock of every timing and of ``arrival_time`` (default ``time.perf_counter``).
        hash_seed: None (default) hashes blocks with :func:`prefix_hashes` exactly; an int seeds
            the chain so that engines of different models never share blocks in one hierarchy.
        store_blocks: put the new blocks of each request into the hierarchy (default True).

    Memory: the engine keeps a host buffer that blocks are read into (pinned when the model is on
    a GPU) and a staging tensor on the model's device, each the size of the longest prefix it
    has restored, so a restore never touches fresh pages.
    """

    def __init__(
        self,
        model: LoadedModel,
        hierarchy: Hierarchy,
        block_size: int = DEFAULT_BLOCK_SIZE,
        *,
        clock: Callable[[], float] = time.perf_counter,
        hash_seed: int | None = None,
        store_blocks: bool = True,
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.model = model
        self.info = model.info
        self.hierarchy = hierarchy
        self.block_size = int(block_size)
        self.block_bytes = model.block_bytes(self.block_size)
        self.block_shape = model.block_shape(self.block_size)
        self._dtype_name = str(self.info.numpy_dtype)
        accounting = [tier.name for tier in hierarchy.tiers if tier.store is None]
        if accounting:
            raise ValueError(
                f"tier(s) {', '.join(accounting)} are accounting-only; the model engine needs "
                "tiers that hold bytes"
            )
        if hierarchy.block_bytes not in (None, self.block_bytes):
            raise ValueError(
                f"the hierarchy's blocks are {hierarchy.block_bytes} B; this model's blocks of "
                f"{self.block_size} tokens are {self.block_bytes} B"
            )
        self.clock = clock
        self.hash_seed = hash_seed
        self.store_blocks = store_blocks
        self._buffer = RestoreBuffer(self.info, self.block_size)
        self.requests = 0

    # ------------------------------------------------------------------ public API

    def hashes(self, tokens: Sequence[int]) -> list[BlockHash]:
        """The chained hashes of every full block of ``tokens``."""
        if self.hash_seed is None:
            return list(prefix_hashes(tokens, self.block_size))
        array = np.asarray(tokens, dtype=np.int64)
        out: list[BlockHash] = []
        parent: BlockHash = self.hash_seed
        for start in range(0, len(array) - self.block_size + 1, self.block_size):
            parent = chain_hash(parent, array[start : start + self.block_size])
            out.append(parent)
        return out

    def serve(
        self,
        context_tokens: Sequence[int],
        max_new_tokens: int,
        arrival_time: float | None = None,
        between_steps: Callable[[], None] | None = None,
    ) -> RequestResult:
        """Generate ``max_new_tokens`` tokens greedily after ``context_tokens``.

        ``between_steps`` runs after the prefill and after every decode step: the runtime applies
        control commands there, so a command waits one forward pass, not a whole request. The
        request's KV lives in its own cache until it is stored at the end, so a command that
        changes the tiers (clear, capacity, faults) cannot pull bytes from under it.

        Raises:
            ValueError: empty context, ``max_new_tokens`` < 1, token ids outside the vocabulary,
                or more tokens than the model has positions for.
        """
        clock = self.clock
        started = clock()
        context = self._check_request(context_tokens, max_new_tokens)
        queue_s = max(0.0, started - arrival_time) if arrival_time is not None else 0.0
        hashes = self.hashes(context)
        with torch.inference_mode():
            restored = self._restore(hashes, len(context))
            restore_end = clock()
            restored_tokens = restored.blocks * self.block_size
            cache = None if restored.kv is None else cache_from_kv(restored.kv)
            logits, cache = self._forward(context[restored_tokens:], cache)
            next_id = int(torch.argmax(logits[0, -1]).item())
            first_token = clock()
            output = [next_id]
            for _ in range(max_new_tokens - 1):
                if between_steps is not None:
                    between_steps()
                logits, cache = self._forward([next_id], cache)
                next_id = int(torch.argmax(logits[0, -1]).item())
                output.append(next_id)
            finished = clock()
            stored, rejected, store_errors = self._store(context, output, cache)
        store_end = clock()
        self.requests += 1
        origin = started - queue_s
        decoded = len(output) - 1
        return RequestResult(
            prompt_tokens=len(context),
            output_ids=output,
            ttft_s=first_token - origin,
            tpot_s=(finished - first_token) / decoded if decoded else 0.0,
            e2e_s=finished - origin,
            queue_s=queue_s,
            restore_s=restore_end - started,
            prefill_s=first_token - restore_end,
            decode_s=finished - first_token,
            store_s=store_end - finished,
            prefix_tokens_restored=restored.tokens_by_tier,
            recomputed_tokens=len(context) - restored_tokens,
            bytes_fetched=restored.bytes_by_tier,
            fetch_latency_s=restored.latency_by_tier,
            context_blocks=len(hashes),
            blocks_restored=restored.blocks,
            blocks_stored=stored,
            blocks_rejected=rejected,
            errors=restored.errors + store_errors,
        )

    def logits_with_restore(self, tokens: Sequence[int]) -> tuple[torch.Tensor, int]:
        """Logits of the last position of ``tokens`` with the cached prefix restored from the
        tiers and only the rest recomputed, and how many tokens were restored. Stores nothing."""
        context = self._check_request(tokens, 1)
        with torch.inference_mode():
            restored = self._restore(self.hashes(context), len(context))
            restored_tokens = restored.blocks * self.block_size
            cache = None if restored.kv is None else cache_from_kv(restored.kv)
            logits, _ = self._forward(context[restored_tokens:], cache)
        return logits[0, -1].float().cpu(), restored_tokens

    def recompute_logits(self, tokens: Sequence[int]) -> torch.Tensor:
        """Logits of the last position of ``tokens`` computed from scratch (no tier touched)."""
        context = self._check_request(tokens, 1)
        with torch.inference_mode():
            logits, _ = self._forward(context, None)
        return logits[0, -1].float().cpu()

    def prefill_only(self, tokens: Sequence[int]) -> float:
        """Seconds to the first token with full recomputation (no tier touched): the baseline
        the benchmark divides by."""
        context = self._check_request(tokens, 1)
        with torch.inference_mode():
            started = self.clock()
            logits, _ = self._forward(context, None)
            int(torch.argmax(logits[0, -1]).item())
            return self.clock() - started

    # ------------------------------------------------------------------ steps

    def _check_request(self, tokens: Sequence[int], max_new_tokens: int) -> list[int]:
        context = [int(t) for t in tokens]
        if not context:
            raise ValueError("a request needs at least one context token")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        vocab = self.info.vocab_size
        low, high = min(context), max(context)
        if low < 0 or high >= vocab:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} is outside the vocabulary (0..{vocab - 1})")
        # The last generated token is never fed back, so it needs no position.
        fed = len(context) + max_new_tokens - 1
        if fed > self.info.n_positions:
            raise ValueError(
                f"{len(context)} context + {max_new_tokens} new tokens need {fed} positions; "
                f"the model has {self.info.n_positions}"
            )
        return context

    def _restore(self, hashes: Sequence[BlockHash], context_len: int) -> _Restored:
        hierarchy = self.hierarchy
        names = [tier.name for tier in hierarchy.tiers]
        tokens = dict.fromkeys(names, 0)
        nbytes = dict.fromkeys(names, 0)
        latency = dict.fromkeys(names, 0.0)
        errors: list[str] = []
        # At least one context token is recomputed: its logits give the first output token.
        limit = min(len(hashes), (context_len - 1) // self.block_size)
        # How far the hierarchy's bookkeeping says the prefix goes (no side effects), to size the
        # buffer; the gets below decide what really comes back.
        resident = 0
        while resident < limit and hierarchy.locate(hashes[resident]) is not None:
            resident += 1
        if resident == 0:
            return _Restored(None, 0, tokens, nbytes, latency, errors)
        buffer = self._buffer
        buffer.reserve(resident)
        clock = self.clock
        count = 0
        for index in range(resident):
            key = hashes[index]
            if hierarchy.size_of(key) != self.block_bytes:
                errors.append(
                    f"block {index} ({key:#018x}) has {hierarchy.size_of(key)} B, "
                    f"not a {self.block_bytes} B block of this model"
                )
                break
            started = clock()
            try:
                got = hierarchy.get(key, out=buffer.slot(index))
            except (TierError, ValueError) as exc:  # a store that broke its contract: a miss
                errors.append(f"block {index} ({key:#018x}): {exc}")
                break
            elapsed = clock() - started
            if got is None:
                break  # miss (absent, corrupt, lost, or its tier is down): recompute from here
            block, tier_index = got
            header = block.header
            if header.shape != self.block_shape or header.dtype != self._dtype_name:
                errors.append(
                    f"block {index} ({key:#018x}) is {header.dtype}{list(header.shape)}, "
                    f"this model's blocks are {self._dtype_name}{list(self.block_shape)}"
                )
                break
            name = names[tier_index]
            tokens[name] += self.block_size
            nbytes[name] += header.nbytes
            latency[name] += elapsed
            count += 1
        kv = None
        if count:
            kv = blocks_to_kv(buffer.tensor(count), self.info, out=buffer.staging(resident))
        return _Restored(kv, count, tokens, nbytes, latency, errors)

    def _forward(self, tokens: Sequence[int], cache: Any) -> tuple[torch.Tensor, Any]:
        ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.info.device)
        out = self.model.model(
            input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1
        )
        return out.logits, out.past_key_values

    def _store(
        self, context: list[int], output: list[int], cache: Any
    ) -> tuple[int, int, list[str]]:
        """Put the full blocks of context + output that the hierarchy lacks."""
        if not self.store_blocks:
            return 0, 0, []
        hierarchy = self.hierarchy
        tokens = context + output
        held = int(cache.get_seq_length())  # context + output[:-1]
        hashes = self.hashes(tokens[:held])
        missing = []
        for index, key in enumerate(hashes):
            where = hierarchy.locate(key)
            if where is None or not hierarchy.tiers[where].is_usable():
                missing.append(index)
        if not missing:
            return 0, 0, []
        first = missing[0]
        blocks = kv_to_blocks(cache, self.info, hashes[first:], first, self.block_size)
        stored = rejected = 0
        errors: list[str] = []
        wanted = set(missing)
        for offset, block in enumerate(blocks):
            index = first + offset
            if index not in wanted:
                continue
            parent = hashes[index - 1] if index else None
            try:
                landed = hierarchy.put(block, position=index, parent=parent)
            except (TierError, ValueError) as exc:
                errors.append(f"put of block {index} ({block.key:#018x}) failed: {exc}")
                rejected += 1
                continue
            if landed is None:
                rejected += 1
            else:
                stored += 1
        return stored, rejected, errors
