"""A dashboard session fed by a recording: ``tiertop dash --replay FILE``.

The recording goes through the same state model and screens as live data: a
:class:`~tiertop.monitor.replay.Replayer` folds it into the session's model, driven by the
dashboard's own ingest thread through :class:`ReplaySource` (no sockets), which plays it on the
wall clock at the chosen speed. The replay controls (:class:`ReplaySession` methods, bound to
keys in :mod:`tiertop.tui.app`) take the session lock, so a seek never races the ingest.

Step is one *tick*: every message up to and including the next ``TierStats`` (the runtime's
per-tick statistics), so each step moves every figure and sparkline by one sample; a single
message is often a batch of block events that changes nothing visible.

The miss-ratio curve (``M``) is fed the messages the replayer folds, as live it is fed what
the ingest polls; it covers what was played since the last jump: a seek that restores a
keyframe or goes back starts a new curve (a live dashboard's curve likewise starts when it
connects).

Nothing here talks to a runtime: the recorded Hello still names the recorded runtime's control
address, so the session's controller refuses every command (:class:`ReplayController`) and
:meth:`ReplaySession.controls_disabled` gives the reason the dashboard shows.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from tiertop.monitor.commands import AnyCommand
from tiertop.monitor.framing import DecodeCounters
from tiertop.monitor.mrc_feed import MrcFeed
from tiertop.monitor.replay import Replayer
from tiertop.monitor.state import StateModel

from .control import Controller, Outcome
from .replay_status import ReplayStatus, fmt_position
from .session import Session

__all__ = ["REPLAY_CONTROLS_OFF", "ReplayController", "ReplaySession", "ReplaySource",
           "open_replay"]

#: Why every runtime control is off during a replay (status line, help, palette).
REPLAY_CONTROLS_OFF: Final = "replaying a recording: nothing to control"


class ReplayController(Controller):
    """Refuses every command, read-only ones too (a snapshot or drill-down request would go to
    whatever now listens on the recorded runtime's address)."""

    def __init__(self) -> None:
        super().__init__(read_only=True)

    def resolved_address(self) -> str | None:
        return None

    def send(self, commands: Sequence[AnyCommand]) -> Outcome:
        self.history.extend((c.name, False) for c in commands)
        return Outcome(False, REPLAY_CONTROLS_OFF, error_code="replay")


class ReplaySource:
    """The ingest's source during a replay (the :class:`~tiertop.tui.ingest.Source` shape).

    :meth:`poll` lets the replayer fold what is due by the play clock, as many messages as the
    ingest would take from a socket, under the session lock, and returns nothing for the
    ingest to fold (the replayer folds into the session's model itself, through the
    recorder's own decode path). The ingest polls again at once, giving way to the UI in
    between as it does live. When nothing was due it waits a frame (or until :meth:`wake`), so
    a paused replay costs nothing.

    Args:
        replayer: Plays the recording into the session's model.
        lock: The session lock (held while folding).
        play: Start playing at the first poll (the dashboard is up by then).
        frame_s: Longest wait between two looks at the play clock while playing.
        on_fold: Called under the lock after each poll that folded something.
    """

    stale = False
    in_sync = True

    def __init__(self, replayer: Replayer, lock: threading.Lock, *, play: bool = True,
                 frame_s: float = 0.04, on_fold: Callable[[], None] | None = None) -> None:
        self.replayer = replayer
        self.lock = lock
        self.frame_s = frame_s
        self.on_fold = on_fold
        self._play_at_start = play
        self._wake = threading.Event()
        self.closed = False
        #: Messages folded so far.
        self.folded = 0

    def poll(self, max_messages: int = 1000, timeout_ms: float = 0) -> list[Any]:
        replayer = self.replayer
        with self.lock:
            if self._play_at_start:
                self._play_at_start = False
                replayer.play()
            n = 0 if self.closed else replayer.update(max(1, max_messages))
            if n and self.on_fold is not None:
                self.on_fold()
        self.folded += n
        if not n and timeout_ms > 0:
            wait = timeout_ms / 1000
            self._wake.wait(min(wait, self.frame_s) if replayer.playing else wait)
        self._wake.clear()
        return []

    def wake(self) -> None:
        """Look at the play clock now (after play, seek or a speed change)."""
        self._wake.set()

    def counters(self) -> DecodeCounters:
        """Records that could not be decoded (as a live reader counts them)."""
        return self.replayer.folder.decoder.counters

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.replayer.close()
        self._wake.set()


class ReplaySession(Session):
    """A session whose model a recording feeds; the replay controls.

    Args:
        replayer: Opened on the recording with the session's model (see :func:`open_replay`).
        path: The recording's path (status line).
        paused: Start paused (else playing once the dashboard polls).
        clock: Monotonic seconds.
    """

    def __init__(self, replayer: Replayer, *, path: str, paused: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(model=replayer.model, target=path, controller=ReplayController(),
                         clock=clock)
        self.replayer = replayer
        self.path = path
        self.feed = MrcFeed(self.lock, clock=clock)  # what the screen reads is what we fold
        self.mrc = self.feed
        self._unfed: list[Any] = []  # folded, not yet given to the miss-ratio curve
        replayer.listeners.append(lambda message, _record: self._unfed.append(message))
        with self.lock:
            replayer.seek(0.0)  # the Hello and whatever else is at the very start
            self._feed_curve()
        self.source = ReplaySource(replayer, self.lock, play=not paused,
                                   on_fold=self._feed_curve)
        self.attach_source(self.source, mrc=self.feed)  # the feed is fed as it folds
        self.warnings = [f"{os.path.basename(path)}: {issue}"
                         for issue in replayer.recording.issues + replayer.issues]

    def controls_disabled(self) -> str:
        return REPLAY_CONTROLS_OFF

    def tape(self) -> ReplayStatus:
        r = self.replayer
        with self.lock:  # at_end and behind may read the next chunk: not while folding
            closed = self.source.closed  # the file is: read nothing more
            behind = not closed and r.behind
            return ReplayStatus(self.path, r.position_s if behind else r.target_s,
                                r.duration_s, r.speed, r.playing, closed or r.at_end, behind,
                                tuple(r.recording.issues + r.issues))

    # ------------------------------------------------------------------------- controls
    # Each takes the lock, acts, wakes the source, and returns a line for the user ("" when
    # the status line says it all).

    def _act(self, fn: Callable[[Replayer], str]) -> str:
        r = self.replayer
        with self.lock:
            index, restored = r.index, r.keyframes_restored
            note = fn(r)
            if r.index < index or r.keyframes_restored != restored:
                self._restart_curve()  # it jumped: what it skipped is not in the curve
            self._feed_curve()
        self.source.wake()
        return note

    def _feed_curve(self) -> None:
        """Give the miss-ratio curve what was folded since (hold the lock)."""
        if self._unfed:
            self.feed.fold(self._unfed)
            self._unfed = []

    def _restart_curve(self) -> None:
        """A new curve from here on, knowing the runtime's tiers (hold the lock)."""
        self.feed = MrcFeed(self.lock, clock=self.clock)
        self.mrc = self.feed
        self._unfed = [self.model.hello] if self.model.hello is not None else []

    def toggle(self) -> str:
        """Play or pause; at the end, play from the start."""
        def act(r: Replayer) -> str:
            if not r.playing and r.at_end:
                r.seek(0.0)
                r.play()
                return "playing from the start"
            r.toggle()
            return ""
        return self._act(act)

    def step(self) -> str:
        """Pause and fold one tick (see the module docstring)."""
        def act(r: Replayer) -> str:
            return "" if r.step_tick() else "at the end of the recording"
        return self._act(act)

    def change_speed(self, direction: int) -> str:
        """Next speed step up (``direction`` > 0) or down."""
        def act(r: Replayer) -> str:
            before = r.speed
            after = r.faster() if direction > 0 else r.slower()
            return "" if after != before else f"speed stays ×{after:g} (0.25 to 64)"
        return self._act(act)

    def seek_by(self, seconds: float) -> str:
        """Move the position by ``seconds`` (clamped to the recording)."""
        return self._act(lambda r: self._seek(r, r.target_s + seconds))

    def seek_to(self, position_s: float) -> str:
        return self._act(lambda r: self._seek(r, position_s))

    @staticmethod
    def _seek(r: Replayer, position_s: float) -> str:
        r.seek(position_s)
        return ""

    def seek_change(self, direction: int) -> str:
        """Go just past the next (``direction`` > 0) or previous control change."""
        def act(r: Replayer) -> str:
            entry = r.seek_next_control() if direction > 0 else r.seek_prev_control()
            if entry is None:
                return ("no control change after this point" if direction > 0
                        else "no control change before this point")
            return f"{fmt_position(r.position_of(entry))}  ⚙ {entry.label}"
        return self._act(act)


def open_replay(path: str, *, speed: float = 1.0, paused: bool = False,
                model: StateModel | None = None) -> ReplaySession:
    """Open ``path`` for the dashboard (figures over the last 5 s, as live).

    Raises:
        RecordingError: Not a readable recording.
        ValueError: A speed outside 0.25..64.
    """
    replayer = Replayer(path, model=model if model is not None else StateModel(window_s=5.0),
                        speed=speed)
    try:
        return ReplaySession(replayer, path=path, paused=paused)
    except BaseException:
        replayer.close()
        raise
