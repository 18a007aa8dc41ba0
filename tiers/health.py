"""Health states a tier reports, in order of severity."""

from __future__ import annotations

from enum import StrEnum


class Health(StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    DOWN = "down"
