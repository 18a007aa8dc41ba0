"""The status line: connection, source, epoch, message age, gaps/drops, control round trip; and
when the session replays a recording (position, speed, playing or paused) or writes one (size).
"""

from __future__ import annotations

from collections.abc import Callable

from rich.text import Text

from ..format import fmt_bytes, fmt_duration
from ..frame import StatusFrame
from ..palette import Palette
from ..replay_status import RecordStatus, ReplayStatus, Tape, fmt_position
from .text_lines import TextLines

__all__ = ["StatusLine", "status_text"]


def state_word(s: StatusFrame, tape: Tape | None = None) -> tuple[str, str]:
    """The connection state in words (first) and its role for colour."""
    if s.error:
        return "✖ ERROR", "bad"
    if not s.has_data:
        return "… CONNECTING", "warn"
    if isinstance(tape, ReplayStatus):
        return ("▶ REPLAY", "ok") if tape.playing else ("❚❚ REPLAY", "warn")
    if s.stale:
        return "⚠ STALE", "warn"
    if s.frozen:
        return "❚❚ VIEW PAUSED", "warn"
    return "● LIVE", "ok"


def _replay_position(out: Text, tape: ReplayStatus, p: Palette) -> None:
    """``1:23.4/5:00.0 ×4 playing`` (and whether the file is damaged)."""
    out.append(f"{fmt_position(tape.position_s)}/{fmt_position(tape.duration_s)} "
               f"×{tape.speed:g} {tape.state}", style="bold")
    if tape.issues:
        out.append("  ⚠ damaged file: readable part only", style=f"bold {p.warn}")
    out.append("  ")


def _record_badge(out: Text, tape: RecordStatus, p: Palette) -> None:
    """``● REC session.ttrec 1.2MiB``, or why recording stopped."""
    if tape.error:
        out.append(f"✖ REC stopped: {tape.error}", style=f"bold {p.bad}")
    else:
        out.append(f"● REC {tape.name} {fmt_bytes(tape.file_bytes)}", style=f"bold {p.bad}")
    out.append("  ")


def status_text(s: StatusFrame, p: Palette, last_reply: tuple[bool, str] | None,
                tape: Tape | None = None) -> Text:
    """Two lines: the connection, then view settings, controls and the last reply."""
    out = Text(no_wrap=True, overflow="ellipsis")
    word, role = state_word(s, tape)
    color = {"ok": p.ok, "warn": p.warn, "bad": p.bad}[role]
    out.append(f" {word} ", style=f"bold reverse {color}")
    out.append(" ")
    replay = tape if isinstance(tape, ReplayStatus) else None
    if isinstance(tape, RecordStatus):
        _record_badge(out, tape, p)
    if s.error:
        out.append(s.error, style=f"bold {p.bad}")
        out.append("\n")
    elif not s.has_data:
        out.append(s.note or f"waiting for telemetry from {s.target or '?'}…", style=p.warn)
        out.append("\n")
    else:
        if replay is not None:
            _replay_position(out, replay, p)
        out.append(s.source or s.target or "?", style="bold")
        out.append(f"  {s.mode or '?'}")
        if s.mode == "sim" and s.speed is not None:
            out.append(f" ×{s.speed:g}" if s.speed else " max speed")
        epoch = str(s.epoch) if s.epoch is not None else "-"
        out.append("  epoch ", style=p.muted).append(epoch[-8:] if len(epoch) > 8 else epoch)
        if replay is None:  # a replayed message's age says nothing
            age = f"{s.age_s:.1f}s" if s.age_s is not None else "-"
            out.append("  age ", style=p.muted).append(age,
                                                       style=f"bold {p.warn}" if s.stale else "")
        out.append("  msgs ", style=p.muted).append(f"{s.messages:,}")
        gap_style = f"bold {p.warn}" if s.unrecovered else ""
        out.append("  gaps ", style=p.muted).append(f"{s.gaps}")
        out.append(" lost ", style=p.muted).append(
            f"{s.unrecovered}{' ⚠' if s.unrecovered else ''}", style=gap_style
        )
        out.append("  drops ", style=p.muted).append(
            f"{s.dropped}{' ⚠' if s.dropped else ''}", style=f"bold {p.warn}" if s.dropped else ""
        )
        out.append("  restarts ", style=p.muted).append(str(s.restarts))
        if s.in_sync is False:
            out.append("  ⟳ resyncing", style=p.warn)
        if replay is None:
            out.append("  rtt ", style=p.muted).append(
                fmt_duration(s.rtt_s) if s.rtt_s is not None else "-"
            )
        out.append("\n")
    out.append(" ")
    out.append(f"zoom {s.zoom}", style="bold")
    out.append("  figures: last 5s", style=p.muted)
    if s.frozen:
        out.append("  ❚❚ view paused (p): still collecting", style=f"bold {p.warn}")
    if s.controls_off:
        out.append("  ")
        out.append(" READ-ONLY ", style=f"bold reverse {p.warn}")
        out.append(f" controls disabled: {s.controls_off}", style=f"bold {p.warn}")
    else:
        out.append("  controls on", style=p.muted)
    if last_reply is not None:
        ok, text = last_reply
        out.append("  last: ", style=p.muted)
        out.append(("✔ " if ok else "✖ ") + text, style=p.ok if ok else f"bold {p.bad}")
    out.append("  ? help", style=p.muted)
    return out


class StatusLine(TextLines):
    """Two lines at the top of the dashboard.

    Args:
        id: Widget id.
        tape: Says what the session records or replays, read at every :meth:`show`
            (``Session.tape``).
    """

    DEFAULT_CSS = """
    StatusLine {
        height: 2;
        background: $panel;
        width: 1fr;
    }
    """

    def __init__(self, *, id: str | None = None,
                 tape: Callable[[], Tape | None] | None = None) -> None:
        super().__init__(id=id)
        self._tape = tape

    def show(self, frame: StatusFrame, palette: Palette,
             last_reply: tuple[bool, str] | None) -> None:
        self.set_text(status_text(frame, palette, last_reply,
                                  self._tape() if self._tape is not None else None))
