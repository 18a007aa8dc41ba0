"""What the status line says about a recording: one being replayed, or one being written.

Plain data and text helpers (no widgets), shared by the session that knows the facts and the
status line that shows them. Positions are seconds from the start of the recording.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

__all__ = ["RecordStatus", "ReplayStatus", "Tape", "fmt_position", "parse_position"]


@dataclass(frozen=True, slots=True)
class ReplayStatus:
    """A replay: where it is, how fast, playing or not.

    Attributes:
        path: The recording.
        position_s: Where the play clock is.
        duration_s: Length of the recording (session time).
        speed: Play speed (session seconds per wall second).
        playing: Playing (else paused).
        at_end: Everything readable was folded.
        behind: Playing, but the dashboard folds slower than the clock asks (the position is
            that of the state shown, behind the clock).
        issues: What is damaged in the file or failed while replaying ("" each when fine).
    """

    path: str
    position_s: float
    duration_s: float
    speed: float
    playing: bool
    at_end: bool
    behind: bool = False
    issues: tuple[str, ...] = ()

    @property
    def state(self) -> str:
        """``playing``, ``paused`` or ``paused at the end``, in words."""
        if self.playing:
            return "playing, catching up" if self.behind else "playing"
        return "paused at the end" if self.at_end else "paused"


@dataclass(frozen=True, slots=True)
class RecordStatus:
    """A recording being written (``--record``).

    Attributes:
        path: The file.
        file_bytes: Its size so far.
        error: Why it stopped writing ("" while fine).
    """

    path: str
    file_bytes: int
    error: str = ""

    @property
    def name(self) -> str:
        return os.path.basename(self.path) or self.path


#: Either, or None when the session neither records nor replays.
Tape = ReplayStatus | RecordStatus


def fmt_position(seconds: float) -> str:
    """``0:07.3``, ``12:30.0``, ``1:02:03``: minutes and seconds to a tenth; hours without
    tenths."""
    if not math.isfinite(seconds):
        return "-"
    tenths = round(max(seconds, 0.0) * 10)
    whole, tenth = divmod(tenths, 10)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{minutes}:{secs:02d}.{tenth}"


_POSITION_RE = re.compile(r"^(?:(?:(\d+):)?(\d+):)?(\d+(?:\.\d*)?|\.\d+)s?$")


def parse_position(text: str, current_s: float, duration_s: float) -> float:
    """A position typed by the user: seconds (``90``, ``90.5s``) or ``[h:]m:ss[.s]``
    (``1:30``, ``1:02:03``), from the start; ``+S``/``-S`` (any of those forms) moves from
    ``current_s``.

    Raises:
        ValueError: Not a time, or outside the recording (0 to ``duration_s``).
    """
    raw = text.strip().replace(" ", "")
    sign = raw[:1] if raw[:1] in "+-" else ""
    m = _POSITION_RE.match(raw[len(sign):])
    if not raw or m is None:
        raise ValueError(f"{text.strip()!r} is not a time: give seconds (90) or m:ss (1:30), "
                         "+S/-S to move from here")
    hours, minutes, secs = m.groups()
    too_big = (minutes is not None and float(secs) >= 60) or (
        hours is not None and int(minutes) >= 60)
    if too_big:
        raise ValueError(f"{text.strip()!r}: minutes and seconds go up to 59")
    value = int(hours or 0) * 3600 + int(minutes or 0) * 60 + float(secs)
    target = current_s + value if sign == "+" else current_s - value if sign == "-" else value
    if not -1e-9 <= target <= duration_s + 1e-9:
        raise ValueError(f"{fmt_position(target) if target >= 0 else text.strip()} is outside "
                         f"the recording (0:00.0 to {fmt_position(duration_s)})")
    return min(max(target, 0.0), duration_s)
