"""Replaying a recording through the state model: play, pause, step, speed, seek.

:class:`Replayer` feeds a recording's messages, decoded exactly as the recorder decoded them
(:class:`~tiertop.monitor.recording.StreamFolder`), into one
:class:`~tiertop.monitor.state.StateModel`, so a replay reaches the states the live reader went
through (tested: after the last message, ``snapshot()`` without the ``connection`` section is
equal). It is a plain object with no thread: a dashboard calls :meth:`Replayer.update` from its
ingest worker (under the lock it holds around folding and rendering), a headless reader calls
:meth:`Replayer.run_until` or iterates :meth:`Replayer.iter_messages`.

Time. Positions are seconds of *session time* from the start of the recording: the state
model's timeline (message clocks: wall-clock seconds in model mode, virtual seconds in sim
mode, continued across restarts), which is also the time axis of every series. Playing at speed
``s`` moves the position ``s`` seconds per wall second (0.25 to 64); the messages folded are
those whose session time is at or before the position.

Seeking. :meth:`Replayer.seek` restores the latest keyframe at or before the target (when it
helps: a seek forward close to the current position just folds forward) and folds the records
from there; the result is the state of folding everything from the start up to the target
(tested). Keyframes made by other code (a different tiertop) are skipped and the replayer
folds from an earlier one or from the start: slower, same state. The model object keeps its
identity across seeks (the dashboard may hold on to it); only its contents change.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Final

import zstandard

from .framing import Decoded
from .protocol import TierStats
from .recording import (
    IndexEntry,
    KeyframeInfo,
    Record,
    Recording,
    RecordingError,
    StreamFolder,
)
from .state import StateModel

__all__ = ["MAX_SPEED", "MIN_SPEED", "SPEEDS", "Listener", "Replayer"]

MIN_SPEED: Final = 0.25
MAX_SPEED: Final = 64.0
#: The speed steps :meth:`Replayer.faster` and :meth:`Replayer.slower` go through.
SPEEDS: Final = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)

#: Called after each message is folded: ``(message, record)``.
Listener = Callable[[Decoded, Record], None]


class Replayer:
    """Plays a recording into a state model.

    Args:
        recording: A :class:`Recording` or the path of one (opened here and closed by
            :meth:`close`).
        model: The state model to fold into (default: a new :class:`StateModel`, configured as
            the recorder's is). A model with other ``max_events``/``max_requests``/
            ``max_tracked_blocks``/resolutions cannot use the file's keyframes (it is folded
            from the start on every backward seek); ``window_s`` may differ freely.
        speed: Initial speed (0.25 to 64).
        clock: Monotonic wall clock in seconds (for pacing).
        use_keyframes: Use the file's keyframes for seeking (False: always fold from the
            start or forward; for tests and for files whose keyframes are suspect).
        listeners: Called after every folded message with ``(message, record)``.

    Raises:
        RecordingError: The file cannot be read as a recording.
        ValueError: A speed outside 0.25..64.

    Attributes:
        recording: The recording (header, index, issues: see :class:`Recording`).
        folder: The decode-and-fold path (``folder.model`` is :attr:`model`).
        issues: What went wrong while replaying (unusable keyframes, unreadable chunks),
            on top of ``recording.issues``.
    """

    def __init__(
        self,
        recording: Recording | str | os.PathLike[str],
        *,
        model: StateModel | None = None,
        speed: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        use_keyframes: bool = True,
        listeners: Sequence[Listener] = (),
    ) -> None:
        self._check_speed(speed)
        self._own = not isinstance(recording, Recording)
        self.recording = recording if isinstance(recording, Recording) else Recording(recording)
        self._speed = float(speed)
        self._clock = clock
        self.use_keyframes = use_keyframes
        self.listeners: list[Listener] = list(listeners)
        self.folder = StreamFolder(model)
        self.issues: list[str] = []
        #: Keyframes restored so far (seeks that did not fold from the start).
        self.keyframes_restored = 0
        self._bad_keyframes: set[int] = set()
        self._zstd = zstandard.ZstdCompressor(level=1)
        # The state before the first record: empty, or after retention the base keyframe.
        self._initial = self._zstd.compress(self.folder.dump())
        self._start = self.recording.start_time
        base = self.recording.base
        self._base_index = self.recording.first_index
        if base is not None:
            kf = next((k for k in self.recording.keyframes if k.next == int(base["first"])), None)
            if kf is not None and self._restore(kf):
                self._initial = self._zstd.compress(self.folder.dump())
            else:
                self.issues.append("the recording starts after dropped data and its first "
                                   "keyframe is unusable: replay starts from an empty state")
        self._chunk = 0  # position in recording.chunks of the buffered chunk
        self._buf: list[Record] = []
        self._pos = 0  # next record in _buf
        self._next = self._base_index  # index of the next record to fold
        self._seek_cursor(self._next)
        self.last_record: Record | None = None
        # Where a seek asked to be (absolute session time), until the next record is folded:
        # the position shown and played from is the one asked for, not the record before it.
        self._asked_t: float | None = None
        self._playing = False
        self._anchor_wall = clock()
        self._anchor_t = self._start

    # ------------------------------------------------------------------------ properties

    @property
    def model(self) -> StateModel:
        """The state model being fed (the same object for the replayer's lifetime)."""
        return self.folder.model

    @property
    def start_time(self) -> float:
        """Absolute session time of position 0."""
        return self._start

    @property
    def end_time(self) -> float:
        return max(self.recording.end_time, self._start)

    @property
    def duration_s(self) -> float:
        """Seconds of session time from the start to the last record."""
        return self.end_time - self._start

    @property
    def position_s(self) -> float:
        """Position of the last folded record (0.0 before any)."""
        rec = self.last_record
        if rec is None or not math.isfinite(rec.t):
            return 0.0
        return max(0.0, rec.t - self._start)

    @property
    def target_s(self) -> float:
        """Where the play clock is (ahead of :attr:`position_s` while playing and waiting for
        the next record's time; after a seek, the position asked for)."""
        if self._playing:
            return min(max(self._target(self._clock()) - self._start, 0.0), self.duration_s)
        if self._asked_t is not None:
            return self._asked_t - self._start
        return self.position_s

    @property
    def behind(self) -> bool:
        """True while playing with records due by the play clock not folded yet: the reader
        is behind the clock, and the state is at :attr:`position_s`, not :attr:`target_s`."""
        if not self._playing:
            return False
        rec = self._peek()
        return rec is not None and rec.t <= self._target(self._clock())

    @property
    def index(self) -> int:
        """Index of the next record to fold."""
        return self._next

    @property
    def at_end(self) -> bool:
        """True when every readable record was folded."""
        return self._peek() is None

    @property
    def playing(self) -> bool:
        return self._playing

    @property
    def speed(self) -> float:
        return self._speed

    @speed.setter
    def speed(self, value: float) -> None:
        self._check_speed(value)
        now = self._clock()
        self._anchor_t = self._target(now) if self._playing else self._anchor_t
        self._anchor_wall = now
        self._speed = float(value)

    @property
    def controls(self) -> list[IndexEntry]:
        """Control changes of the recording, in order."""
        return [e for e in self.recording.index if e.kind == "control"]

    @property
    def marks(self) -> list[IndexEntry]:
        return [e for e in self.recording.index if e.kind == "mark"]

    def position_of(self, entry: IndexEntry) -> float:
        """Position (seconds from the start) of an index entry."""
        return max(0.0, entry.t - self._start) if math.isfinite(entry.t) else 0.0

    # -------------------------------------------------------------------------- playing

    def play(self) -> None:
        """Start (or go on) playing from the current position at the current speed."""
        if self._playing:
            return
        self._playing = True
        self._reanchor()

    def pause(self) -> None:
        self._playing = False

    def toggle(self) -> bool:
        """Play when paused, pause when playing; True when now playing."""
        if self._playing:
            self.pause()
        else:
            self.play()
        return self._playing

    def faster(self) -> float:
        """Next speed step up (see :data:`SPEEDS`); the new speed."""
        self.speed = next((s for s in SPEEDS if s > self._speed), MAX_SPEED)
        return self._speed

    def slower(self) -> float:
        self.speed = next((s for s in reversed(SPEEDS) if s < self._speed), MIN_SPEED)
        return self._speed

    def update(self, max_messages: int = 20_000, now: float | None = None) -> int:
        """While playing, fold every record due by the play clock (at most ``max_messages``);
        the number folded. Stops playing at the end. Call it from the ingest worker at any
        rate (e.g. 20 times a second)."""
        if not self._playing:
            return 0
        target = self._target(self._clock() if now is None else now)
        n = 0
        while n < max_messages:
            rec = self._peek()
            if rec is None:
                self._playing = False
                break
            if rec.t > target:
                break
            self._fold_next()
            n += 1
        return n

    def step_tick(self) -> list[Decoded]:
        """Pause and fold every record up to and including the next :class:`TierStats`: one
        runtime tick, so the figures and series move by one sample (a single message is often
        a batch of block events that changes nothing visible). The decoded messages."""
        self.pause()
        out: list[Decoded] = []
        while self._peek() is not None:
            message = self._fold_next()
            if message is not None:
                out.append(message)
                if isinstance(message, TierStats):
                    break
        return out

    def step(self, n: int = 1) -> list[Decoded]:
        """Pause and fold the next ``n`` records; the decoded messages (undecodable ones are
        skipped as a live reader skips them)."""
        self.pause()
        out: list[Decoded] = []
        for _ in range(max(0, n)):
            if self._peek() is None:
                break
            message = self._fold_next()
            if message is not None:
                out.append(message)
        return out

    def run_until(self, position_s: float | None = None, max_messages: int | None = None) -> int:
        """Fold as fast as possible every record up to ``position_s`` (None: to the end); the
        number folded. Does not change the play state."""
        target = math.inf if position_s is None else self._start + position_s
        n = 0
        while max_messages is None or n < max_messages:
            rec = self._peek()
            if rec is None or rec.t > target:
                break
            self._fold_next()
            n += 1
        if self._playing:
            self._reanchor()
        return n

    def iter_messages(self, position_s: float | None = None) -> Iterator[tuple[Decoded, Record]]:
        """Fold records up to ``position_s`` (None: the end) and yield each decoded message
        with its record, after it is folded."""
        target = math.inf if position_s is None else self._start + position_s
        while True:
            rec = self._peek()
            if rec is None or rec.t > target:
                return
            message = self._fold_next()
            if message is not None:
                yield message, rec

    # -------------------------------------------------------------------------- seeking

    def seek(self, position_s: float) -> None:
        """Go to ``position_s`` (clamped to the recording): the state after every record at or
        before it. Keeps playing if it was."""
        position_s = min(max(position_s, 0.0), self.duration_s)
        target = self._start + position_s
        index = self.recording.records_up_to(target) if position_s > 0 else (
            self._first_at_start())
        self.seek_index(index)
        self._asked_t = target
        if self._playing:
            self._reanchor()

    def seek_index(self, index: int) -> None:
        """Go to the state after every record before ``index``."""
        self._asked_t = None
        index = max(index, self._base_index)
        current = self._next
        if index != current:
            if index < current:
                if not self._restore_best(index, after=None):
                    self._reset()
            else:
                self._restore_best(index, after=current)
            while True:
                rec = self._peek()
                if rec is None or rec.index >= index:
                    break
                self._fold_next()
        if self._playing:
            self._reanchor()

    def _restore_best(self, index: int, after: int | None) -> bool:
        """Restore the latest usable keyframe at or before ``index`` (when ``after`` is given:
        only one worth it over folding forward from record ``after``); True when one was."""
        while True:
            kf = self._best_keyframe(index)
            if kf is None:
                return False
            if after is not None and not (kf.next > after and self._worth(kf, after, index)):
                return False
            if self._restore(kf):
                return True

    def seek_next_control(self, kinds: Sequence[str] = ("control",)) -> IndexEntry | None:
        """Go just past the next control change (or other index ``kinds``: ``fault``,
        ``health``, ``restart``, ``mark``) after the current position; that entry, or None
        when there is none (nothing changes)."""
        for entry in self.recording.index:
            if entry.kind in kinds and self._after_entry(entry) > self._next:
                self.seek_index(self._after_entry(entry))
                return entry
        return None

    def seek_prev_control(self, kinds: Sequence[str] = ("control",)) -> IndexEntry | None:
        """Go just past the control change (or ``kinds``) before the one the position is at
        or after; None when there is none."""
        found: IndexEntry | None = None
        for entry in self.recording.index:
            if entry.kind in kinds and self._after_entry(entry) < self._next:
                found = entry
        if found is not None:
            self.seek_index(self._after_entry(found))
        return found

    def close(self) -> None:
        if self._own:
            self.recording.close()

    def __enter__(self) -> Replayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------- internals

    @staticmethod
    def _check_speed(speed: float) -> None:
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be between {MIN_SPEED:g} and {MAX_SPEED:g}, "
                             f"not {speed:g}")

    def _target(self, now: float) -> float:
        return self._anchor_t + (now - self._anchor_wall) * self._speed

    def _reanchor(self) -> None:
        self._anchor_wall = self._clock()
        rec = self.last_record
        if self._asked_t is not None:
            self._anchor_t = self._asked_t
        else:
            self._anchor_t = rec.t if rec is not None and math.isfinite(rec.t) else self._start

    @staticmethod
    def _after_entry(entry: IndexEntry) -> int:
        """Index to seek to so that the entry's record is folded (marks sit before a record)."""
        return entry.index if entry.kind == "mark" else entry.index + 1

    def _first_at_start(self) -> int:
        """Index after the records at the very start (time at or before position 0)."""
        return self.recording.records_up_to(self._start)

    def _worth(self, kf: KeyframeInfo, current: int, index: int) -> bool:
        """Restore ``kf`` rather than fold forward from ``current``? When it saves folding
        more records than a keyframe costs (a keyframe restores in about the time of folding
        a thousand or two records)."""
        return (kf.next - current) > 1500

    def _best_keyframe(self, index: int) -> KeyframeInfo | None:
        if not self.use_keyframes:
            return None
        best: KeyframeInfo | None = None
        for kf in self.recording.keyframes:
            if (
                kf.next <= index and kf.offset not in self._bad_keyframes and kf.compatible
                and (best is None or kf.next > best.next)
            ):
                best = kf
        return best

    def _restore(self, kf: KeyframeInfo) -> bool:
        try:
            self.recording.load_keyframe(kf, self.folder)
        except RecordingError as exc:
            self._bad_keyframes.add(kf.offset)
            self.issues.append(f"keyframe at offset {kf.offset} unusable ({exc}); folding "
                               "from an earlier point instead")
            return False
        self._next = kf.next
        self._seek_cursor(kf.next)
        self.last_record = Record(kf.next - 1, kf.r, kf.t, b"", 0, b"")
        self.keyframes_restored += 1
        return True

    def _reset(self) -> None:
        self.folder.load(zstandard.ZstdDecompressor().decompress(self._initial), trusted=True)
        self._next = self._base_index
        self._seek_cursor(self._next)
        self.last_record = None
        self._asked_t = None

    def _seek_cursor(self, index: int) -> None:
        chunks = self.recording.chunks
        k = self.recording.chunk_at(index)
        self._chunk = k
        self._buf = []
        self._pos = 0
        if k < len(chunks):
            self._load_chunk(k)
            while self._pos < len(self._buf) and self._buf[self._pos].index < index:
                self._pos += 1

    def _load_chunk(self, k: int) -> None:
        chunks = self.recording.chunks
        while k < len(chunks):
            try:
                self._buf = self.recording.chunk_records(chunks[k])
            except RecordingError as exc:
                self.issues.append(f"{exc}; skipped")
                k += 1
                continue
            self._chunk = k
            self._pos = 0
            return
        self._chunk = len(chunks)
        self._buf = []
        self._pos = 0

    def _peek(self) -> Record | None:
        if self._pos < len(self._buf):
            return self._buf[self._pos]
        if self._chunk + 1 < len(self.recording.chunks):
            self._load_chunk(self._chunk + 1)
            if self._pos < len(self._buf):
                return self._buf[self._pos]
        return None

    def _fold_next(self) -> Decoded | None:
        rec = self._buf[self._pos]
        self._pos += 1
        message = self.folder.feed(rec.topic, rec.seq, rec.payload, rec.received_at)
        self._next = rec.index + 1
        self.last_record = rec
        self._asked_t = None
        if message is not None:
            for listener in self.listeners:
                listener(message, rec)
        return message
