"""Fixtures shared by the monitor tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest


@pytest.fixture
def closers() -> Iterator[list[Callable[[], None]]]:
    """Things to close after the test, last added first (publishers, subscribers...)."""
    fns: list[Callable[[], None]] = []
    yield fns
    for fn in reversed(fns):
        fn()
