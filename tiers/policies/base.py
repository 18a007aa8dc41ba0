"""The small interface an eviction policy implements, and the registry that names them.

One policy instance orders the resident blocks of one tier. The hierarchy tells it what happens
(``insert``, ``touch``, ``remove``) and asks it for ``victim`` when room is needed. The same code
runs with real bytes and in accounting-only mode: a policy never sees payloads or sizes.

Call order the hierarchy keeps, per tier:

- a miss or a block arriving from elsewhere: zero or more ``victim(incoming=key)`` calls (while
  room is needed), then ``insert(key)``;
- a hit on a resident block: ``touch(key)``;
- a block leaving for any reason other than being chosen as victim (promoted away, deleted,
  cleared): ``remove(key)``.

``victim`` both chooses and forgets the block it returns. Policies with ghost state (ARC, S3-FIFO)
keep it across ``victim``/``insert``; ``resize`` tells them the tier's capacity in blocks.

A policy's table is the hierarchy's only record of which tier holds a block (a table of
locations besides would cost every resident block another dict entry): ``key in
policy.resident_keys`` is asked of one tier after another on every lookup, so a policy that keeps
its resident keys in one dict puts that dict there, and the test is a C-level lookup, not a call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Container, Iterator
from typing import Any, ClassVar


class EvictionPolicy(ABC):
    name: ClassVar[str]
    description: ClassVar[str] = ""

    def __init__(self, capacity_blocks: int = 0, **options: Any) -> None:
        self.capacity_blocks = capacity_blocks
        #: ``key in resident_keys``: is the block resident here (ghosts are not)
        self.resident_keys: Container[object] = self

    @abstractmethod
    def insert(self, key: int) -> None:
        """``key`` became resident in this tier."""

    @abstractmethod
    def touch(self, key: int) -> None:
        """``key`` (resident) was hit."""

    @abstractmethod
    def remove(self, key: int) -> None:
        """``key`` (resident) left the tier without being a victim."""

    @abstractmethod
    def victim(self, incoming: int | None = None) -> int:
        """Choose, forget and return the block to evict; ``incoming`` is the block being made room
        for, when there is one. Raises LookupError when nothing is resident."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __contains__(self, key: object) -> bool: ...

    @abstractmethod
    def __iter__(self) -> Iterator[int]:
        """Resident keys, in no promised order."""

    def resize(self, capacity_blocks: int) -> None:
        self.capacity_blocks = capacity_blocks

    @classmethod
    def from_resident(cls, keys: Iterator[int] | list[int], capacity_blocks: int,
                      **options: Any) -> EvictionPolicy:
        """A fresh policy that starts from blocks already resident (a live policy switch)."""
        policy = cls(capacity_blocks, **options)
        for key in keys:
            policy.insert(key)
        return policy


PolicyFactory = Callable[..., EvictionPolicy]
EVICTION_POLICIES: dict[str, type[EvictionPolicy]] = {}


def register(cls: type[EvictionPolicy]) -> type[EvictionPolicy]:
    """Class decorator: make a policy selectable by its ``name``."""
    EVICTION_POLICIES[cls.name] = cls
    return cls


def eviction_policy(name: str, capacity_blocks: int = 0, **options: Any) -> EvictionPolicy:
    """Build a registered policy by name, with an error that lists the known ones."""
    _load_builtin()
    try:
        cls = EVICTION_POLICIES[name]
    except KeyError:
        known = ", ".join(sorted(EVICTION_POLICIES))
        raise ValueError(f"unknown eviction policy {name!r}; known: {known}") from None
    return cls(capacity_blocks, **options)


def known_eviction_policies() -> list[str]:
    _load_builtin()
    return sorted(EVICTION_POLICIES)


def _load_builtin() -> None:
    from . import eviction  # noqa: F401  (registers the built-in policies)
