"""Typed failures a store raises; the hierarchy turns each into a miss, a failed put or a
health change, so a caller never receives wrong bytes."""

from __future__ import annotations


class TierError(Exception):
    """Base of every error raised by a tier store."""


class StoreFull(TierError):
    """The put does not fit: capacity reached, or the medium is full (ENOSPC)."""


class StoreUnavailable(TierError):
    """The store cannot be reached right now (server down, injected fault); nothing changed."""


class BlockCorrupt(TierError):
    """A stored block failed its integrity check; it has been removed from the store."""

    def __init__(self, key: int, reason: str) -> None:
        super().__init__(f"block {key:#018x} is corrupt: {reason}")
        self.key = key
        self.reason = reason
