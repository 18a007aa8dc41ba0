"""What happens in the tiers, reported to a sink the caller passes in.

The hierarchy only builds an event when a sink is attached, so an unobserved hierarchy pays one
``is None`` test per operation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class EventKind(StrEnum):
    PUT = "put"
    HIT = "hit"
    MISS = "miss"
    PROMOTE = "promote"
    DEMOTE = "demote"
    DROP = "drop"
    DELETE = "delete"
    CLEAR = "clear"
    HEALTH = "health"
    ERROR = "error"
    CONFIG = "config"


@dataclass(frozen=True, slots=True)
class TierEvent:
    """One thing that happened. ``tier`` is where it happened (the source of a move), ``to_tier``
    the destination of a promote/demote; ``latency_s`` is the measured time of the operation."""

    kind: EventKind
    time: float
    key: int | None = None
    tier: str | None = None
    to_tier: str | None = None
    nbytes: int = 0
    latency_s: float = 0.0
    detail: str = ""


class EventSink(Protocol):
    def emit(self, event: TierEvent) -> None: ...


class ListSink:
    """Keeps every event in a list (tests, small tools)."""

    def __init__(self) -> None:
        self.events: list[TierEvent] = []

    def emit(self, event: TierEvent) -> None:
        self.events.append(event)

    def of_kind(self, kind: EventKind) -> list[TierEvent]:
        return [e for e in self.events if e.kind is kind]


def now() -> float:
    """Event timestamps are wall-clock seconds, like vLLM's batch ``ts``."""
    return time.time()
