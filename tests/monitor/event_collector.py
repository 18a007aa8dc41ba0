"""A stand-in for the runtime's publisher that keeps the vLLM-shaped block events
``TelemetrySink`` hands it, so tests can feed them to MRC trackers and recordings."""

from __future__ import annotations

from tiertop.monitor.vllm_events import BlockRemoved, BlockStored


class EventCollector:
    """What the runtime's TelemetrySink calls, collecting vLLM-shaped events."""

    def __init__(self) -> None:
        self.events: list[object] = []

    def block_stored(self, hashes: list[int], medium: str, **_: object) -> None:
        self.events.append(BlockStored(list(hashes), None, [], 0, None, medium, None))

    def block_removed(self, hashes: list[int], medium: str) -> None:
        self.events.append(BlockRemoved(list(hashes), medium))

    def move(self, *_: object) -> None:
        """Moves are not block events: nothing to keep."""

    def publish(self, _: object) -> None:
        """Other messages are not block events: nothing to keep."""
