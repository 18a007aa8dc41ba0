"""A recorded trace as the model runtime's workload: requests arrive at the trace's times."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .traces import TracePlayer, TraceReader, TraceTokens
from .workload import Request, WorkloadError


class TraceWorkload:
    """The model runtime's workload interface over a trace: requests arrive at the trace's
    times with token ids that repeat where the trace's blocks repeat (:class:`TraceTokens`);
    contexts longer than the model's window are cut to fit (counted in :attr:`clipped`). Open
    loop: completions change nothing, and the rate cannot be changed live."""

    def __init__(self, path: str | Path, format: str | None = None, *, vocab_size: int,
                 max_context: int, seed: int = 0, speed: float = 1.0, start_s: float = 0.0,
                 max_requests: int | None = None) -> None:
        from .sim.replay import trace_block_tokens

        block = trace_block_tokens(path, format, 16)
        reader = TraceReader(path, format=format, speed=speed, start_s=start_s,
                             max_requests=max_requests, block_size=block)
        self._player = TracePlayer(reader)
        self._tokens = TraceTokens(block, vocab_size, seed)
        self._max_context = max_context
        self.issued = 0
        self.clipped = 0

    @property
    def next_arrival_s(self) -> float:
        return self._player.next_arrival_s

    @property
    def exhausted(self) -> bool:
        return self._player.exhausted

    def requests_until(self, t: float) -> list[Request]:
        out = []
        for row in self._player.requests_until(t):
            request = self._tokens.to_request(row, self.issued)
            self.issued += 1
            limit = self._max_context
            max_new = min(request.max_new_tokens, max(1, limit // 4))
            context = request.context_tokens
            if len(context) + max_new > limit or max_new != request.max_new_tokens:
                self.clipped += 1
                context = context[:max(1, limit - max_new)]
                request = Request(request.request_id, request.conversation_id, request.turn,
                                  request.arrival_s, context, len(context), max_new)
            out.append(request)
        return out

    def complete(self, request: Any, output_ids: Any) -> None:
        return None

    def abandon(self, request: Any) -> None:
        return None

    def apply_set_workload(self, changes: Mapping[str, float | int]) -> Any:
        raise WorkloadError("workload", "replaying a trace: the workload is the trace")
