"""Synthetic block-level traces with real reuse, in the Mooncake trace shape.

Each request is a :class:`~tiertop.runtime.traces.TraceRequest` whose ``hash_ids`` name its
blocks, prefix-chained as in Mooncake's traces (an id stands for its whole prefix: equal ids mean
an equal prefix). Reuse comes from three sources, the ones KV caches live on:

- **interleaved sessions**: ``sessions`` conversations are open at once and requests pick one at
  random, so turns of different sessions interleave; a turn's input is the session's whole
  history (earlier inputs and replies) plus fresh user blocks;
- **shared system prompts**: every session starts with one of ``system_prompts`` prompts,
  picked with Zipf skew ``system_zipf``;
- **Zipf-shared documents**: with probability ``doc_prob`` a session's prefix continues with one
  of ``documents`` documents (RAG context), picked with Zipf skew ``doc_zipf``.

Replies are ``reply_blocks`` blocks appended to the history, never looked up in the request
that produced them (as in a real engine, where the next turn is the first to read them).
Everything is drawn from one seeded ``random.Random``: the same arguments give the same trace.
"""

from __future__ import annotations

import bisect
import json
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..traces import TraceRequest

__all__ = ["SynthParams", "synth_trace", "write_mooncake"]

_MASK = (1 << 62) - 1


def _mix(parent: int, a: int, b: int) -> int:
    """A 62-bit id for content ``(a, b)`` following block ``parent`` (SplitMix64 finaliser)."""
    z = (parent * 0x9E3779B97F4A7C15 + a * 0xBF58476D1CE4E5B9 + b * 0x94D049BB133111EB + 1)
    z &= (1 << 64) - 1
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & ((1 << 64) - 1)
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & ((1 << 64) - 1)
    return (z ^ (z >> 31)) & _MASK


@dataclass(frozen=True, slots=True)
class SynthParams:
    """What :func:`synth_trace` draws (see the module docstring)."""

    requests: int = 2000
    block_tokens: int = 16
    rate: float = 20.0  # requests per second (Poisson)
    sessions: int = 32  # open at once
    turns_mean: float = 4.0  # a session ends after a geometric number of turns
    system_prompts: int = 4
    system_blocks: int = 8
    system_zipf: float = 1.0
    documents: int = 64
    doc_blocks: int = 12
    doc_zipf: float = 1.1
    doc_prob: float = 0.5
    user_blocks_mean: float = 3.0
    reply_blocks: int = 2
    seed: int = 0


def _cdf(n: int, skew: float) -> list[float]:
    weights = [1.0 / (i + 1) ** skew for i in range(n)]
    total = sum(weights)
    acc, out = 0.0, []
    for weight in weights:
        acc += weight / total
        out.append(acc)
    out[-1] = 1.0
    return out


def synth_trace(params: SynthParams | None = None, **overrides: Any) -> list[TraceRequest]:
    """The trace for ``params`` (keyword arguments override its fields)."""
    p = replace(params or SynthParams(), **overrides)
    rng = random.Random(p.seed)
    system_cdf = _cdf(max(1, p.system_prompts), p.system_zipf)
    doc_cdf = _cdf(max(1, p.documents), p.doc_zipf)
    fresh = 0

    opened = 0

    def new_session() -> tuple[list[int], int, str]:
        nonlocal opened
        opened += 1
        history: list[int] = []
        parent = 0
        if p.system_prompts:
            prompt = bisect.bisect_left(system_cdf, rng.random())
            for j in range(p.system_blocks):
                parent = _mix(parent, 1 + prompt, j)
                history.append(parent)
        if p.documents and rng.random() < p.doc_prob:
            doc = bisect.bisect_left(doc_cdf, rng.random())
            for j in range(p.doc_blocks):
                parent = _mix(parent, 1_000_000 + doc, j)
                history.append(parent)
        turns = 1
        while rng.random() > 1.0 / p.turns_mean:
            turns += 1
        return history, turns, f"s{opened}"

    sessions = [new_session() for _ in range(p.sessions)]
    out: list[TraceRequest] = []
    t = 0.0
    for _ in range(p.requests):
        t += rng.expovariate(p.rate)
        slot = rng.randrange(len(sessions))
        history, turns, session = sessions[slot]
        parent = history[-1] if history else 0
        user = 1 + int(rng.expovariate(1.0 / p.user_blocks_mean)) if p.user_blocks_mean else 1
        for _ in range(user):
            fresh += 1
            parent = _mix(parent, 2_000_000, fresh)
            history.append(parent)
        ids = list(history)
        for _ in range(p.reply_blocks):
            fresh += 1
            parent = _mix(parent, 3_000_000, fresh)
            history.append(parent)
        out.append(TraceRequest(
            arrival_s=t, input_tokens=len(ids) * p.block_tokens,
            output_tokens=max(1, p.reply_blocks * p.block_tokens), hash_ids=ids,
            conversation_id=session,
        ))
        turns -= 1
        sessions[slot] = new_session() if turns <= 0 else (history, turns, session)
    return out


def write_mooncake(path: str | Path, requests: list[TraceRequest]) -> Path:
    """Write ``requests`` as a Mooncake-style JSON-lines trace (timestamps in ms)."""
    path = Path(path)
    with open(path, "w", encoding="utf-8") as handle:
        for request in requests:
            handle.write(json.dumps({
                "timestamp": round(request.arrival_s * 1000.0, 3),
                "input_length": request.input_tokens,
                "output_length": request.output_tokens,
                "hash_ids": request.hash_ids,
                **({"session_id": request.conversation_id} if request.conversation_id else {}),
            }) + "\n")
    return path
