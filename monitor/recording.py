"""The recording file: the telemetry stream as received, in one crash-safe, seekable file.

A recording holds every message a reader delivered, byte for byte as it came off the wire, with
the time it was received, so that replaying it through a :class:`~tiertop.monitor.state.StateModel`
reaches the state the live reader reached. This module is the file format: a synchronous
:class:`RecordingWriter` (the threads live in :mod:`tiertop.monitor.recorder`), a
:class:`Recording` reader that opens whatever part of a file is readable, and
:class:`StreamFolder`, the one decode-and-fold path shared by the writer (for keyframes) and the
replayer (:mod:`tiertop.monitor.replay`), so that both reach the same state from the same bytes.

File layout
-----------

All integers are little-endian. A file is an 8-byte signature followed by blocks::

    file   := FILE_MAGIC block*                 FILE_MAGIC = 89 54 54 52 45 43 0D 0A
                                                             ("\\x89TTREC\\r\\n")
    block  := header(24 bytes) meta body
    header := magic   4s   b"TTBK"
              kind    u8   "H" header, "D" describe, "C" chunk, "X" index, "K" keyframe, "E" end
              flags   u8   bit 0: body is one zstd frame
              version u16  FORMAT_VERSION of the writer
              meta_len u32
              body_len u32
              crc     u32  CRC-32 of meta + body
              hcrc    u32  CRC-32 of the 20 bytes before it
    meta   := one msgpack map (never compressed; small)
    body   := bytes (zstd-compressed when flags bit 0)

Blocks are only ever appended, each with one ``write`` call, so a writer killed at any moment
leaves a file whose blocks up to the last complete one are intact: the reader stops at an
incomplete block (reported as truncation) and skips a block whose checksums fail (reported as
corruption), resynchronising on the next block magic whose checksums hold.

Block kinds (``meta`` keys; times are seconds):

``H`` header (always first): ``format_version``, ``tiertop_version``, ``created_at`` (unix),
    ``hello`` (the runtime's :class:`~tiertop.monitor.protocol.Hello` payload bytes when known at
    creation, else None), ``scenario`` (scenario text or None), ``source`` (where it was recorded
    from), ``meta`` (free-form map), ``limits`` (``max_bytes``, ``retain_s``, ``on_full``),
    ``keyframes`` (the keyframe policy), ``base`` (None, or after retention dropped the oldest
    data: ``first`` record index kept, ``dropped`` records, ``t``/``r`` times of the cut).
``D`` describe: ``i`` (index of the record it came with), ``topic``, ``hello`` (Hello payload
    bytes): written when a Hello (or a Snapshot's Hello) of a new epoch is first recorded, so
    the runtime description is found without decompressing chunks.
``C`` chunk: ``first`` (index of its first record in the whole recording), ``n`` records,
    ``r0``/``r1`` (first/last receive time), ``t0``/``t1`` (first/last session time),
    ``topics`` (the topic table: list of topic bytes), ``raw`` (uncompressed body length).
    Body: ``n`` records, each ``<ddHQI`` = receive time (f64, unix seconds, non-decreasing),
    session time (f64, see below), topic id (u16, index into ``topics``), sequence number (u64,
    frame 1), payload length (u32), then the payload bytes (frame 2, exactly as received).
``X`` index: ``entries``: list of ``[i, t, r, kind, label]``: control changes (``control``),
    injected faults (``fault``), health changes (``health``), runtime restarts (``restart``) and
    user marks (``mark``); ``i`` is the index of the record (for marks: of the next record).
    Written after the chunk holding those records.
``K`` keyframe: ``next`` (index of the first record not folded into it), ``t``/``r`` (session and
    receive time of the last record folded), ``fingerprint`` (of the code that made it),
    ``raw``. Body: a restricted pickle of the :class:`StreamFolder` state (see below).
``E`` end (written by a clean close): ``records``, ``closed_at``, ``dropped`` (records not
    written because of ``on_full="stop"``), ``stopped`` (why recording stopped early, or "").

Session time (``t``) is the state model's timeline after folding the record: message clocks
(wall-clock seconds in model mode, virtual seconds in sim mode) continued across restarts,
never decreasing. Seeking and replay pacing use it; it is the time axis of every series.

Keyframes
---------

A keyframe is the complete decoded-and-folded state after a chunk: the state model (its
multi-resolution series hold up to days of history, so no short list of messages could
rebuild it) plus the frame decoder's tier-name table, pickled with protocol 5 and compressed.
Restoring one and folding the records after it reaches exactly the state of folding everything
from the start (tested). Reading it is safe on untrusted files: the unpickler resolves only the
classes defined in the state model's modules (the ``tiertop.monitor`` modules it reaches:
state, series, protocol, block events, cluster fold, framing; plain data, no I/O), numpy's array
reconstructors and a few containers; anything else (``os.system``...) is refused. It is tied to
the code by a fingerprint (hash of those modules' source); a keyframe from other code is
ignored, and the replayer folds from an earlier usable keyframe or from the start instead,
which is slower but gives the same state. The writer checks its first keyframe through the
same restricted unpickler and records without keyframes (saying so in the index) if that fails.

Keyframes are written after a chunk when the compressed record bytes since the last one reach
``keyframe_ratio`` (default 2) times the last keyframe's size, and at least
``keyframe_min_bytes`` (64 KiB), and at least ``keyframe_min_interval_s`` (10 s) of session
time passed; or when ``keyframe_max_interval_s`` (300 s) passed. Restoring costs about a
keyframe's size and folding about the records' size, so keyframes stay at most about a third
of the file while a seek never folds more than a few keyframes' worth of records.

Limits and retention
--------------------

``max_bytes`` caps the file size. With ``on_full="drop-oldest"`` (the default) the writer
rewrites the file (to ``PATH.compact``, fsynced, then atomically renamed over ``PATH``) keeping
only what follows a keyframe, so that about three quarters of the cap remain; the new header
names what was dropped (``base``), and replay starts from that keyframe's state. With
``on_full="stop"`` it stops recording at the cap and counts what it dropped. ``retain_s``
keeps only the last ``retain_s`` seconds (receive time) the same way, cutting at keyframes.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import struct
import sys
import time
import types
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Final

import msgspec
import zstandard

from .framing import Decoded, FrameDecoder
from .protocol import (
    TOPIC_HELLO,
    ControlChange,
    FaultEvent,
    HealthChange,
    Hello,
    Snapshot,
    TelemetryMessage,
)
from .state import StateModel
from .vllm_events import KvEventBatch

__all__ = [
    "FILE_MAGIC",
    "FORMAT_VERSION",
    "ChunkInfo",
    "IndexEntry",
    "KeyframeInfo",
    "Record",
    "Recording",
    "RecordingError",
    "RecordingWriter",
    "StreamFolder",
    "WriterStats",
    "is_recording",
    "keyframe_fingerprint",
]

FILE_MAGIC: Final = b"\x89TTREC\r\n"
BLOCK_MAGIC: Final = b"TTBK"
FORMAT_VERSION: Final = 1

KIND_HEADER: Final = ord("H")
KIND_DESCRIBE: Final = ord("D")
KIND_CHUNK: Final = ord("C")
KIND_INDEX: Final = ord("X")
KIND_KEYFRAME: Final = ord("K")
KIND_END: Final = ord("E")
_KINDS: Final = frozenset(
    (KIND_HEADER, KIND_DESCRIBE, KIND_CHUNK, KIND_INDEX, KIND_KEYFRAME, KIND_END)
)

FLAG_ZSTD: Final = 1

_HEADER = struct.Struct("<4sBBHIIII")
HEADER_BYTES: Final = _HEADER.size  # 24
_RECORD = struct.Struct("<ddHQI")
RECORD_HEADER_BYTES: Final = _RECORD.size  # 30
_MAX_META: Final = 64 << 20
_MAX_BODY: Final = 1 << 31

#: Index entry kinds.
INDEX_KINDS: Final = ("control", "fault", "health", "restart", "mark")

_meta_encoder = msgspec.msgpack.Encoder()
_meta_decoder = msgspec.msgpack.Decoder(dict[str, Any])


def is_recording(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a file that starts like a recording (even a damaged one)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(FILE_MAGIC)) == FILE_MAGIC
    except OSError:
        return False


class RecordingError(ValueError):
    """A file that cannot be read as a recording at all (not one, unsupported version, no
    readable header), or a writer that cannot go on."""


# ----------------------------------------------------------------------------------- records


@dataclass(slots=True)
class Record:
    """One recorded message (treat it as read-only).

    Attributes:
        index: Its position in the whole recording (0 for the first message ever recorded;
            kept across retention, so gaps in it mean dropped or unreadable records).
        received_at: When the recorder received it, unix seconds (non-decreasing).
        t: Session time after folding it (the state model's timeline; ``-inf`` before the
            first message with a clock).
        topic: Frame 0 as received.
        seq: Frame 1 as received (the sequence number).
        payload: Frame 2 as received.
    """

    index: int
    received_at: float
    t: float
    topic: bytes
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ChunkInfo:
    """Where one chunk is and what it covers (from its meta; the body is read on demand)."""

    offset: int  # of the block header
    first: int
    n: int
    r0: float
    r1: float
    t0: float
    t1: float
    topics: tuple[bytes, ...]
    body_offset: int
    body_len: int
    compressed: bool
    raw_len: int

    @property
    def end(self) -> int:
        """Index after its last record."""
        return self.first + self.n


@dataclass(frozen=True, slots=True)
class KeyframeInfo:
    """One keyframe: the state after records ``[.., next)``."""

    offset: int
    next: int
    t: float
    r: float
    fingerprint: str
    body_offset: int
    body_len: int
    compressed: bool

    @property
    def compatible(self) -> bool:
        """True when made by code whose state this code can restore."""
        return self.fingerprint == keyframe_fingerprint()


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """A control change, fault, health change, restart or mark.

    Attributes:
        index: The record it came with (for marks: the record after it).
        t: Session time (absolute timeline seconds).
        received_at: Receive time, unix seconds.
        kind: One of :data:`INDEX_KINDS`.
        label: One line describing it.
    """

    index: int
    t: float
    received_at: float
    kind: str
    label: str


# ------------------------------------------------------------------------------ block framing


def _frame_block(kind: int, meta: Mapping[str, Any], body: bytes = b"", flags: int = 0) -> bytes:
    meta_b = _meta_encoder.encode(meta)
    crc = zlib.crc32(body, zlib.crc32(meta_b))
    head = _HEADER.pack(BLOCK_MAGIC, kind, flags, FORMAT_VERSION, len(meta_b), len(body), crc, 0)
    hcrc = zlib.crc32(head[:20])
    return b"".join((head[:20], struct.pack("<I", hcrc), meta_b, body))


@dataclass(slots=True)
class _Block:
    offset: int
    kind: int
    flags: int
    version: int
    meta: dict[str, Any]
    body_offset: int
    body_len: int

    @property
    def end(self) -> int:
        return self.body_offset + self.body_len


def _parse_header(buf: bytes) -> tuple[int, int, int, int, int, int] | None:
    """(kind, flags, version, meta_len, body_len, crc) of a valid block header, else None."""
    if len(buf) < HEADER_BYTES or buf[:4] != BLOCK_MAGIC:
        return None
    _, kind, flags, version, meta_len, body_len, crc, hcrc = _HEADER.unpack_from(buf)
    if zlib.crc32(buf[:20]) != hcrc:
        return None
    if kind not in _KINDS or meta_len > _MAX_META or body_len > _MAX_BODY:
        return None
    return kind, flags, version, meta_len, body_len, crc


# --------------------------------------------------------------------------------- keyframes


_FINGERPRINT: str | None = None
_STATE_MODULES: tuple[types.ModuleType, ...] | None = None


def _state_modules() -> tuple[types.ModuleType, ...]:
    """The modules a keyframe's contents come from: the state model's module and every
    ``tiertop.monitor`` module it reaches through its globals (its series, the message schema,
    block events, the cluster fold...), plus the frame decoder's."""
    global _STATE_MODULES
    if _STATE_MODULES is None:
        from . import framing, state

        package = __name__.rpartition(".")[0] + "."
        found: dict[str, types.ModuleType] = {}
        todo = [state, framing]
        while todo:
            module = todo.pop()
            if module.__name__ in found:
                continue
            found[module.__name__] = module
            for value in vars(module).values():
                if isinstance(value, types.ModuleType):
                    name = value.__name__
                else:
                    name = getattr(value, "__module__", None) or ""
                if name.startswith(package) and name not in found and name != __name__:
                    dep = sys.modules.get(name)
                    if dep is not None:
                        todo.append(dep)
        _STATE_MODULES = tuple(found[k] for k in sorted(found))
    return _STATE_MODULES


def keyframe_fingerprint() -> str:
    """Hash of the code a keyframe's contents depend on (the source of every module in
    :func:`_state_modules`), of this format and of the Python version."""
    global _FINGERPRINT
    if _FINGERPRINT is None:
        h = hashlib.sha256(f"keyframe-v{FORMAT_VERSION}".encode())
        for module in _state_modules():
            h.update(module.__name__.encode())
            path = getattr(module, "__file__", None)
            if path:
                h.update(Path(path).read_bytes())
        h.update(f"{sys.version_info[0]}.{sys.version_info[1]}".encode())
        _FINGERPRINT = h.hexdigest()[:32]
    return _FINGERPRINT


def _method_of(obj: Any, name: str) -> Any:
    """Unpickling helper: a bound method of an allowed object (the state model's handlers)."""
    if type(obj) not in _METHOD_OWNERS or not callable(getattr(type(obj), name, None)):
        raise pickle.UnpicklingError(f"method {name!r} of {type(obj).__name__} not allowed")
    return getattr(obj, name)


_METHOD_OWNERS: Final[frozenset[type]] = frozenset((StateModel,))
_PERSISTENT_MODEL: Final = "model"


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """What a keyframe may refer to: the classes defined in the state modules (plain data:
    none of them does I/O), numpy's array and scalar reconstructors, a few containers, and
    msgspec's struct rebuilder limited to those classes."""
    import builtins
    import collections

    import numpy as np

    allowed: dict[tuple[str, str], Any] = {}
    for module in _state_modules():
        for name, value in vars(module).items():
            if isinstance(value, type) and value.__module__ == module.__name__:
                allowed[(module.__name__, name)] = value
    allowed[(__name__, "_method_of")] = _method_of
    structs = frozenset(v for v in allowed.values() if isinstance(v, type)
                        and issubclass(v, msgspec.Struct))

    def rebuild(cls: Any, kwargs: dict[str, Any]) -> Any:  # msgspec's, for allowed structs only
        if cls not in structs:
            raise pickle.UnpicklingError(f"keyframe rebuilds {cls!r}: not allowed")
        return cls(**kwargs)

    allowed[("msgspec._utils", "rebuild")] = rebuild
    for mod_name in ("numpy._core.multiarray", "numpy.core.multiarray"):
        mod = sys.modules.get(mod_name)
        if mod is not None:
            for name in ("_reconstruct", "scalar"):
                if hasattr(mod, name):
                    allowed[(mod_name, name)] = getattr(mod, name)
    for mod_name in ("numpy._core.numeric", "numpy.core.numeric"):
        mod = sys.modules.get(mod_name)
        if mod is not None and hasattr(mod, "_frombuffer"):
            allowed[(mod_name, "_frombuffer")] = mod._frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        for name in dir(dtypes):
            if name.endswith("DType"):
                allowed[("numpy.dtypes", name)] = getattr(dtypes, name)
    allowed[("collections", "deque")] = collections.deque
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    for name in ("set", "frozenset", "bytearray", "complex"):
        allowed[("builtins", name)] = getattr(builtins, name)
    return allowed


_ALLOWED: dict[tuple[str, str], Any] | None = None


class _KeyframePickler(pickle.Pickler):
    def __init__(self, file: BinaryIO, model: StateModel) -> None:
        super().__init__(file, protocol=5)
        self._model = model

    def persistent_id(self, obj: Any) -> Any:
        return _PERSISTENT_MODEL if obj is self._model else None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.MethodType):
            return _method_of, (obj.__self__, obj.__func__.__name__)
        return NotImplemented


class _KeyframeUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, model: StateModel, trusted: bool = False) -> None:
        super().__init__(file)
        self._model = model
        self._trusted = trusted

    def persistent_load(self, pid: Any) -> Any:
        if pid == _PERSISTENT_MODEL:
            return self._model
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")

    def find_class(self, module: str, name: str) -> Any:
        global _ALLOWED
        if self._trusted:
            return super().find_class(module, name)
        if _ALLOWED is None:
            _ALLOWED = _allowed_globals()
        obj = _ALLOWED.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"keyframe refers to {module}.{name}: not allowed")
        return obj


# ------------------------------------------------------------------------------- the folding


class StreamFolder:
    """Decodes recorded frames and folds them into a state model: the recorder (for keyframes
    and session times) and the replayer use this same path, so they reach the same state.

    It decodes like :class:`~tiertop.monitor.subscriber.TelemetrySubscriber` does (one
    :class:`FrameDecoder`, tier names learned from every Hello so block events name the same
    tiers) and folds with the recorded receive time.

    Args:
        model: The state model to fold into (default: a new one).
    """

    def __init__(self, model: StateModel | None = None) -> None:
        self.model = model if model is not None else StateModel()
        self.decoder = FrameDecoder()
        self.source = ""
        self.epoch: int | None = None

    def feed(
        self, topic: bytes, seq: int, payload: bytes, received_at: float | None
    ) -> Decoded | None:
        """Decode one recorded message and fold it; the decoded message (None: undecodable,
        counted in ``decoder.counters`` and skipped, as a live reader skips it)."""
        message = self.decoder.decode(topic, seq, payload, self.source, self.epoch or 0)
        if message is None:
            return None
        if isinstance(message, TelemetryMessage):
            if self.epoch is None or message.epoch != self.epoch:
                self.epoch, self.source = message.epoch, message.source
            hello = message if isinstance(message, Hello) else (
                message.hello if isinstance(message, Snapshot) else None)
            if hello is not None:
                self.decoder.normalizer.add_known(t.name for t in hello.tiers)
        self.model.fold(message, received_at)
        return message

    @property
    def time(self) -> float:
        """The model's session time (``-inf`` before anything with a clock was folded)."""
        latest = self.model.latest_time
        return latest if latest is not None else -math.inf

    # ------------------------------------------------------------------------- keyframes

    def dump(self) -> bytes:
        """The whole state as keyframe bytes (uncompressed pickle)."""
        buf = io.BytesIO()
        pickler = _KeyframePickler(buf, self.model)
        pickler.dump({
            "model": dict(vars(self.model)),
            "decoder": self.decoder,
            "source": self.source,
            "epoch": self.epoch,
        })
        return buf.getvalue()

    def load(self, data: bytes, *, trusted: bool = False) -> None:
        """Replace the state with a keyframe's (the model object keeps its identity).

        Args:
            data: What :meth:`dump` returned (uncompressed).
            trusted: The data was made by this process (skips the allow-list).

        Raises:
            pickle.UnpicklingError: The data refers to anything outside the allow-list, is not
                a keyframe, or its state model is configured differently.
        """
        state = _KeyframeUnpickler(io.BytesIO(data), self.model, trusted).load()
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise pickle.UnpicklingError("not a keyframe")
        decoder = state["decoder"]
        if not isinstance(decoder, FrameDecoder):
            raise pickle.UnpicklingError("keyframe without a frame decoder")
        model_state = state["model"]
        target = vars(self.model)
        differs = _config_differs(target, model_state)
        if differs:
            raise pickle.UnpicklingError(f"keyframe's state model is configured differently "
                                         f"({differs})")
        # Query settings stay the caller's: they do not change what folding produces.
        keep: dict[str, Any] = {k: target[k] for k in _QUERY_SETTINGS if k in target}
        target.clear()
        target.update(model_state)
        target.update(keep)
        self.decoder = decoder
        self.source = str(state.get("source", ""))
        epoch = state.get("epoch")
        self.epoch = epoch if isinstance(epoch, int) else None


#: State model settings that only shape queries (kept when a keyframe is restored).
_QUERY_SETTINGS: Final = ("window_s", "stale_after_s")
#: State model settings that shape what folding keeps (a keyframe must agree on them).
_FOLD_SETTINGS: Final = ("max_events", "max_requests", "max_tracked_blocks")


def _config_differs(current: Mapping[str, Any], restored: Mapping[str, Any]) -> str:
    """Names of the folding settings in which two state models' attributes differ."""
    names = [k for k in _FOLD_SETTINGS if current.get(k) != restored.get(k)]
    mine = getattr(current.get("_tier_ring"), "resolutions", None)
    theirs = getattr(restored.get("_tier_ring"), "resolutions", None)
    if mine != theirs:
        names.append("resolutions")
    return ", ".join(names)


def index_entry_of(message: Decoded) -> tuple[str, str] | None:
    """(kind, label) of a message that belongs in the recording's index (None: it does not)."""
    if isinstance(message, ControlChange):
        by = f" by {message.by}" if message.by else ""
        return "control", (
            f"{message.command} {message.target}: {message.old!r} -> {message.new!r}{by}")
    if isinstance(message, FaultEvent):
        return "fault", f"fault {message.fault} on {message.tier}: {message.old} -> {message.new}"
    if isinstance(message, HealthChange):
        return "health", f"{message.tier} health {message.old} -> {message.new}"
    return None


# -------------------------------------------------------------------------------- the writer


@dataclass(slots=True)
class WriterStats:
    """What a :class:`RecordingWriter` did (cumulative).

    Attributes:
        records: Messages written (in complete chunks) or pending in the open chunk.
        payload_bytes: Payload bytes of those messages.
        events: Block events among them (from the decoded batches).
        undecodable: Of those, messages that did not decode (kept; replay skips them too).
        chunks: Chunk blocks written.
        keyframes: Keyframe blocks written.
        keyframe_bytes: Compressed bytes of the keyframes written.
        file_bytes: Size of the file now.
        dropped: Messages refused because the size limit was reached (``on_full="stop"``).
        compactions: Times retention rewrote the file without its oldest part.
        dropped_by_retention: Records dropped by those rewrites.
        keyframe_errors: Keyframes that could not be made (recording goes on without them).
        stopped: Why recording stopped early ("" while it goes on).
    """

    records: int = 0
    payload_bytes: int = 0
    events: int = 0
    undecodable: int = 0
    chunks: int = 0
    keyframes: int = 0
    keyframe_bytes: int = 0
    file_bytes: int = 0
    dropped: int = 0
    compactions: int = 0
    dropped_by_retention: int = 0
    keyframe_errors: int = 0
    stopped: str = ""


@dataclass(slots=True)
class _Written:
    offset: int
    kind: int
    size: int
    first: int = 0  # chunks: first record; keyframes: next record
    r: float = 0.0  # chunks: r0; keyframes: r
    t: float = 0.0


ON_FULL: Final = ("drop-oldest", "stop")


class RecordingWriter:
    """Writes a recording (see the module docstring for the layout). Not thread-safe: one
    thread appends (the :class:`~tiertop.monitor.recorder.Recorder` owns one on its thread).

    Args:
        path: The file to write.
        hello: The runtime's Hello (message or payload bytes) when known at creation.
        scenario: Scenario text, if the session runs one.
        source: Where the stream comes from (an address), for the header.
        meta: Free-form header data (msgpack-able).
        max_bytes: Size cap of the file (None: none).
        retain_s: Keep only about the last ``retain_s`` seconds (None: keep everything).
        on_full: At ``max_bytes``: ``"drop-oldest"`` (retention) or ``"stop"``.
        chunk_max_s: Longest a chunk stays open (receive-time seconds); bounds what a crash
            loses.
        chunk_max_bytes: Most uncompressed bytes per chunk.
        keyframe_ratio: A keyframe is due when the compressed record bytes since the last one
            reach this many times its size...
        keyframe_min_interval_s: ...and at least this much session time passed...
        keyframe_max_interval_s: ...or when this much session time passed (None: never by
            time alone). ``keyframe_ratio=0`` disables keyframes (and retention with them).
        keyframe_min_bytes: Least compressed record bytes between two keyframes (and before
            the first), whatever the ratio says.
        fsync_interval_s: How often (receive time) data is fsynced (None: only at close).
        level: zstd compression level.
        overwrite: Replace an existing file (else :class:`RecordingError`).
        clock: Wall clock for ``created_at`` and ``closed_at``.

    Raises:
        RecordingError: The file exists (without ``overwrite``) or bad limits.
        OSError: It cannot be created.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        hello: Hello | bytes | None = None,
        scenario: str | None = None,
        source: str = "",
        meta: Mapping[str, Any] | None = None,
        max_bytes: int | None = None,
        retain_s: float | None = None,
        on_full: str = "drop-oldest",
        chunk_max_s: float = 2.0,
        chunk_max_bytes: int = 1 << 20,
        keyframe_ratio: float = 2.0,
        keyframe_min_interval_s: float = 10.0,
        keyframe_max_interval_s: float | None = 300.0,
        keyframe_min_bytes: int = 64 << 10,
        fsync_interval_s: float | None = 5.0,
        level: int = 3,
        overwrite: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if on_full not in ON_FULL:
            raise RecordingError(f"on_full must be one of {', '.join(ON_FULL)}, not {on_full!r}")
        if max_bytes is not None and max_bytes < 64 << 10:
            raise RecordingError("max_bytes must be at least 64 KiB")
        if retain_s is not None and retain_s <= 0:
            raise RecordingError("retain_s must be > 0")
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise RecordingError(f"{self.path} exists (overwrite it explicitly)")
        self.max_bytes = max_bytes
        self.retain_s = retain_s
        self.on_full = on_full
        self.chunk_max_s = chunk_max_s
        self.chunk_max_bytes = chunk_max_bytes
        self.keyframe_ratio = keyframe_ratio
        self.keyframe_min_interval_s = keyframe_min_interval_s
        self.keyframe_max_interval_s = keyframe_max_interval_s
        self.keyframe_min_bytes = keyframe_min_bytes
        self.fsync_interval_s = fsync_interval_s
        self._clock = clock
        self._zstd = zstandard.ZstdCompressor(level=level)
        self.stats = WriterStats()
        self.folder = StreamFolder()
        self.closed = False

        hello_payload = hello if isinstance(hello, bytes) or hello is None else (
            msgspec.msgpack.encode(hello))
        self._header_meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "tiertop_version": _version(),
            "created_at": clock(),
            "hello": hello_payload,
            "scenario": scenario,
            "source": source,
            "meta": dict(meta or {}),
            "limits": {"max_bytes": max_bytes, "retain_s": retain_s, "on_full": on_full},
            "keyframes": {
                "ratio": keyframe_ratio,
                "min_interval_s": keyframe_min_interval_s,
                "max_interval_s": keyframe_max_interval_s,
                "min_bytes": keyframe_min_bytes,
            },
            "base": None,
        }
        #: (record index, Hello payload) of every runtime description written, oldest first.
        self._hellos: list[tuple[int, bytes]] = [(0, hello_payload)] if hello_payload else []
        self._described_epochs: set[int] = set()

        # The open chunk.
        self._parts: list[bytes] = []
        self._raw_len = 0
        self._topics: dict[bytes, int] = {}
        self._first = 0
        self._n = 0
        self._r0 = 0.0
        self._t0 = 0.0
        self._entries: list[list[Any]] = []

        self._next_index = 0
        self._last_r = -math.inf
        self._last_t = -math.inf
        self._blocks: list[_Written] = []
        self._kf_t = -math.inf  # session time of the last keyframe (or of the start)
        self._kf_size = 0
        self._since_kf = 0  # compressed chunk bytes since the last keyframe
        self._last_fsync = -math.inf
        self._start_t: float | None = None

        tmp = self._compact_path()
        if tmp.exists():
            tmp.unlink()
        self._file: BinaryIO = open(self.path, "wb")  # noqa: SIM115 - closed in close()
        self._size = 0
        self._file.write(FILE_MAGIC)
        self._size += len(FILE_MAGIC)
        self._write_block(KIND_HEADER, self._header_meta)
        self._file.flush()

    # ---------------------------------------------------------------------------- appending

    def append(
        self, received_at: float, topic: bytes | str, seq: int, payload: bytes
    ) -> Decoded | None:
        """Record one message (frames as received) with its receive time; the message as
        decoded for the keyframes (None when it does not decode or was not recorded)."""
        if self.closed:
            raise RecordingError("the writer is closed")
        if self.stats.stopped:
            self.stats.dropped += 1
            return None
        if isinstance(topic, str):
            topic = topic.encode()
        payload = bytes(payload)
        if received_at < self._last_r:
            received_at = self._last_r  # receive times never go back
        index = self._next_index
        folder = self.folder
        message = folder.feed(topic, seq, payload, received_at)
        t = folder.time
        stats = self.stats
        if message is None:
            stats.undecodable += 1
        else:
            if isinstance(message, KvEventBatch):
                stats.events += len(message.events)
            else:
                self._note(index, t, received_at, message, payload)
        if self._n == 0:
            self._first, self._r0, self._t0 = index, received_at, t
            if self._start_t is None or not math.isfinite(self._start_t):
                self._start_t = t
        tid = self._topics.get(topic)
        if tid is None:
            tid = self._topics[topic] = len(self._topics)
        self._parts.append(_RECORD.pack(received_at, t, tid, seq, len(payload)))
        self._parts.append(payload)
        self._raw_len += RECORD_HEADER_BYTES + len(payload)
        self._n += 1
        self._next_index = index + 1
        self._last_r, self._last_t = received_at, t
        stats.records += 1
        stats.payload_bytes += len(payload)
        if (
            self._raw_len >= self.chunk_max_bytes
            or len(self._topics) >= 0xFFFF
            or received_at - self._r0 >= self.chunk_max_s
        ):
            self.flush()
        return message

    def _note(
        self, index: int, t: float, r: float, message: TelemetryMessage, payload: bytes
    ) -> None:
        entry = index_entry_of(message)
        if entry is not None:
            self._entries.append([index, t, r, entry[0], entry[1]])
        hello = message if isinstance(message, Hello) else (
            message.hello if isinstance(message, Snapshot) else None)
        if hello is None:
            return
        if self._described_epochs and message.epoch not in self._described_epochs:
            self._entries.append([index, t, r, "restart", f"runtime restarted (epoch "
                                  f"{message.epoch}, {hello.host}:{hello.pid})"])
        if message.epoch not in self._described_epochs:
            hello_payload = payload if isinstance(message, Hello) else (
                msgspec.msgpack.encode(hello))
            self._hellos.append((index, hello_payload))
            self._described_epochs.add(message.epoch)
            self._write_block(KIND_DESCRIBE, {
                "i": index, "topic": TOPIC_HELLO.encode(), "hello": hello_payload})

    def mark(self, label: str, received_at: float | None = None) -> None:
        """Put a mark in the index at this point of the stream (before the next record)."""
        r = self._last_r if received_at is None else max(received_at, self._last_r)
        if not math.isfinite(r):
            r = self._clock()
        self._entries.append([self._next_index, self._last_t, r, "mark", str(label)])

    def tick(self, now: float) -> None:
        """Let time pass (receive-time clock): closes a chunk open longer than ``chunk_max_s``
        and fsyncs when due, even when no message arrives."""
        if self._n and now - self._r0 >= self.chunk_max_s:
            self.flush()
        elif self._entries and not self._n:
            self._write_index()
        if (
            self.fsync_interval_s is not None
            and now - self._last_fsync >= self.fsync_interval_s
            and not self.closed
        ):
            self._file.flush()
            os.fsync(self._file.fileno())
            self._last_fsync = now

    def flush(self) -> None:
        """Write the open chunk (and its index entries, and a keyframe when due)."""
        if self.closed:
            return
        if self._n:
            raw = b"".join(self._parts)
            body = self._zstd.compress(raw)
            meta = {
                "first": self._first, "n": self._n, "r0": self._r0, "r1": self._last_r,
                "t0": self._t0, "t1": self._last_t, "topics": list(self._topics),
                "raw": len(raw),
            }
            if self._would_overflow(HEADER_BYTES + 200 + len(body)):
                self._stop_full(self._n)
                return
            self._write_block(KIND_CHUNK, meta, body, FLAG_ZSTD,
                              first=self._first, r=self._r0, t=self._t0)
            self.stats.chunks += 1
            self._since_kf += len(body)
            self._parts, self._raw_len, self._topics, self._n = [], 0, {}, 0
        if self._entries:
            self._write_index()
        self._file.flush()
        self._maybe_keyframe()
        self._maybe_retain()

    def _write_index(self) -> None:
        self._write_block(KIND_INDEX, {"entries": self._entries})
        self._entries = []

    def _would_overflow(self, nbytes: int) -> bool:
        return (
            self.max_bytes is not None
            and self.on_full == "stop"
            and self._size + nbytes > self.max_bytes
        )

    def _stop_full(self, lost: int) -> None:
        self.stats.dropped += lost
        self.stats.records -= lost
        self.stats.stopped = f"size limit of {self.max_bytes} bytes reached"
        # Index entries of the records not written go with them.
        self._entries = [e for e in self._entries if e[0] < self._first or e[3] == "mark"]
        self._parts, self._raw_len, self._topics, self._n = [], 0, {}, 0
        self._entries.append([self._next_index, self._last_t, self._last_r, "mark",
                              f"recording stopped: {self.stats.stopped}"])
        self._write_index()
        self._file.flush()

    # ---------------------------------------------------------------------------- keyframes

    def _keyframe_due(self) -> bool:
        if self.keyframe_ratio <= 0 or self._n or not math.isfinite(self._last_t):
            return False
        if self._next_index == 0 or (self._blocks and self._blocks[-1].kind == KIND_KEYFRAME):
            return False
        elapsed = self._last_t - (self._kf_t if math.isfinite(self._kf_t) else (
            self._start_t if self._start_t is not None and math.isfinite(self._start_t)
            else self._last_t))
        if self.keyframe_max_interval_s is not None and elapsed >= self.keyframe_max_interval_s:
            return True
        if elapsed < self.keyframe_min_interval_s:
            return False
        needed = max(self.keyframe_ratio * self._kf_size, self.keyframe_min_bytes)
        if self.max_bytes is not None:
            needed = min(needed, self.max_bytes / 8)
        return self._since_kf >= needed

    def _maybe_keyframe(self, force: bool = False) -> None:
        if not (force or self._keyframe_due()):
            return
        try:
            raw = self.folder.dump()
        except Exception as exc:  # a state the pickler cannot take: go on without keyframes
            self.stats.keyframe_errors += 1
            self.keyframe_ratio = 0.0
            self._entries.append([self._next_index, self._last_t, self._last_r, "mark",
                                  f"keyframes disabled: {type(exc).__name__}: {exc}"])
            return
        if self.stats.keyframes == 0:
            try:  # the first one must come back through the restricted unpickler
                StreamFolder().load(raw)
            except Exception as exc:
                self.stats.keyframe_errors += 1
                self.keyframe_ratio = 0.0
                self._entries.append([self._next_index, self._last_t, self._last_r, "mark",
                                      f"keyframes disabled: {exc}"])
                return
        body = self._zstd.compress(raw)
        if self._would_overflow(HEADER_BYTES + 200 + len(body)):
            return
        meta = {"next": self._next_index, "t": self._last_t, "r": self._last_r,
                "fingerprint": keyframe_fingerprint(), "raw": len(raw)}
        self._write_block(KIND_KEYFRAME, meta, body, FLAG_ZSTD,
                          first=self._next_index, r=self._last_r, t=self._last_t)
        self._file.flush()
        self.stats.keyframes += 1
        self.stats.keyframe_bytes += len(body)
        self._kf_t = self._last_t
        self._kf_size = len(body)
        self._since_kf = 0

    # ---------------------------------------------------------------------------- retention

    def _maybe_retain(self) -> None:
        cut: _Written | None = None
        keyframes = [b for b in self._blocks if b.kind == KIND_KEYFRAME]
        if not keyframes:
            return
        base_first = self._header_meta["base"]["first"] if self._header_meta["base"] else 0
        candidates = [k for k in keyframes if k.first > base_first]
        if not candidates:
            return
        if self.retain_s is not None:
            data_r = [b.r for b in self._blocks if b.kind == KIND_CHUNK]
            oldest = data_r[0] if data_r else self._last_r
            if self._last_r - oldest > 1.25 * self.retain_s:
                limit = self._last_r - self.retain_s
                older = [k for k in candidates if k.r <= limit]
                if older:
                    cut = older[-1]
        if self.max_bytes is not None and self.on_full == "drop-oldest" and (
            self._size > self.max_bytes
        ):
            target = 0.75 * self.max_bytes
            chosen = candidates[-1]
            for k in candidates:
                if self._size - k.offset + 4096 <= target:
                    chosen = k
                    break
            if cut is None or chosen.offset > cut.offset:
                cut = chosen
        if cut is not None:
            self._compact(cut)

    def _compact_path(self) -> Path:
        return self.path.with_name(self.path.name + ".compact")

    def _compact(self, cut: _Written) -> None:
        """Rewrite the file as: header (with ``base``) + describe + the keyframe ``cut`` and
        everything after it; then atomically rename it over the file."""
        self._file.flush()
        os.fsync(self._file.fileno())
        old_first = self._header_meta["base"]["first"] if self._header_meta["base"] else 0
        dropped_before = self._header_meta["base"]["dropped"] if self._header_meta["base"] else 0
        self._header_meta["base"] = {
            "first": cut.first, "dropped": dropped_before + (cut.first - old_first),
            "t": cut.t, "r": cut.r,
        }
        tmp = self._compact_path()
        before = [p for i, p in self._hellos if i < cut.first]
        blocks: list[tuple[int, dict[str, Any]]] = [(KIND_HEADER, self._header_meta)]
        if before:  # the runtime description in force at the cut
            blocks.append((KIND_DESCRIBE, {"i": cut.first, "topic": TOPIC_HELLO.encode(),
                                           "hello": before[-1]}))
        with open(self.path, "rb") as src, open(tmp, "wb") as out:
            out.write(FILE_MAGIC)
            new_blocks: list[_Written] = []
            size = len(FILE_MAGIC)
            for kind, meta in blocks:
                data = _frame_block(kind, meta)
                out.write(data)
                new_blocks.append(_Written(size, kind, len(data)))
                size += len(data)
            shift = size - cut.offset
            src.seek(cut.offset)
            while True:
                data = src.read(1 << 20)
                if not data:
                    break
                out.write(data)
            out.flush()
            os.fsync(out.fileno())
            for b in self._blocks:
                if b.offset >= cut.offset:
                    new_blocks.append(_Written(b.offset + shift, b.kind, b.size, b.first,
                                               b.r, b.t))
            new_size = out.tell()
        self._file.close()
        os.replace(tmp, self.path)
        self._file = open(self.path, "ab")  # noqa: SIM115 - closed in close()
        self._blocks = new_blocks
        self._size = new_size
        self.stats.compactions += 1
        self.stats.dropped_by_retention += cut.first - old_first
        self.stats.file_bytes = self._size

    # ------------------------------------------------------------------------------ closing

    def close(self) -> None:
        """Write the open chunk and the end block, fsync and close (idempotent)."""
        if self.closed:
            return
        self.flush()
        self._write_block(KIND_END, {
            "records": self._next_index, "closed_at": self._clock(),
            "dropped": self.stats.dropped, "stopped": self.stats.stopped,
        })
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self.closed = True

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def next_index(self) -> int:
        """Index the next record will get."""
        return self._next_index

    @property
    def model(self) -> StateModel:
        """The state model the writer folds into (the live state of the recording)."""
        return self.folder.model

    def _write_block(
        self, kind: int, meta: Mapping[str, Any], body: bytes = b"", flags: int = 0,
        *, first: int = 0, r: float = 0.0, t: float = 0.0,
    ) -> None:
        data = _frame_block(kind, meta, body, flags)
        self._file.write(data)
        self._blocks.append(_Written(self._size, kind, len(data), first, r, t))
        self._size += len(data)
        self.stats.file_bytes = self._size


def _version() -> str:
    try:
        from tiertop import __version__
    except ImportError:  # pragma: no cover - the package is always importable when installed
        return "unknown"
    return __version__


# -------------------------------------------------------------------------------- the reader


class Recording:
    """A recording opened for reading: everything readable, and what was not.

    Opening reads every block's header and meta and checks every checksum (``verify``), so a
    damaged file is reported at once; chunk and keyframe bodies are decompressed on demand.
    A truncated file (a writer killed mid-write) or a corrupt one opens with what is readable
    and says what is not in :attr:`issues`; only a file with no readable header raises.

    Use :meth:`open`. Attributes: :attr:`path`, :attr:`header` (the header meta),
    :attr:`chunks`, :attr:`keyframes`, :attr:`index` (control changes, faults, health changes,
    restarts and marks), :attr:`hellos` (``(record index, Hello)`` per runtime epoch),
    :attr:`issues`, :attr:`complete` (an end block was found), :attr:`end` (its meta).

    Raises:
        RecordingError: Not a recording, a newer format, or no readable header.
    """

    def __init__(self, path: str | os.PathLike[str], *, verify: bool = True) -> None:
        self.path = Path(path)
        self.issues: list[str] = []
        self.chunks: list[ChunkInfo] = []
        self.keyframes: list[KeyframeInfo] = []
        self.index: list[IndexEntry] = []
        self.hellos: list[tuple[int, Hello]] = []
        self.header: dict[str, Any] = {}
        self.end: dict[str, Any] | None = None
        self.readable_bytes = 0
        self._zstd = zstandard.ZstdDecompressor()
        try:
            self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            raise RecordingError(f"{self.path}: cannot open: {exc.strerror or exc}") from None
        try:
            self.file_bytes = os.fstat(self._file.fileno()).st_size
            self._scan(verify)
        except BaseException:
            self._file.close()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, verify: bool = True) -> Recording:
        """Open a recording (see the class docstring)."""
        return cls(path, verify=verify)

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ scanning

    def _scan(self, verify: bool) -> None:
        f = self._file
        head = f.read(len(FILE_MAGIC))
        if head != FILE_MAGIC:
            if len(head) < len(FILE_MAGIC) and FILE_MAGIC.startswith(head):
                raise RecordingError(f"{self.path}: empty or truncated before the header "
                                     f"({self.file_bytes} bytes): nothing recorded")
            raise RecordingError(f"{self.path}: not a tiertop recording (bad signature)")
        pos = len(FILE_MAGIC)
        size = self.file_bytes
        expected_first = 0
        first_block = True
        while pos < size:
            f.seek(pos)
            buf = f.read(HEADER_BYTES)
            parsed = _parse_header(buf)
            if parsed is None:
                if len(buf) < HEADER_BYTES and BLOCK_MAGIC.startswith(buf[:4]):
                    self._truncated(pos, len(buf), HEADER_BYTES)
                    break
                nxt = self._resync(pos + 1)
                self._corrupt(pos, nxt, "bad block header")
                if nxt is None:
                    break
                pos = nxt
                continue
            kind, flags, version, meta_len, body_len, crc = parsed
            end = pos + HEADER_BYTES + meta_len + body_len
            if end > size:
                self._truncated(pos, size - pos, end - pos)
                break
            payload = f.read(meta_len + body_len) if verify else f.read(meta_len)
            if verify and zlib.crc32(payload) != crc:
                nxt = self._resync(pos + 1)
                self._corrupt(pos, nxt, "checksum mismatch")
                if nxt is None:
                    break
                pos = nxt
                continue
            if version > FORMAT_VERSION:
                if first_block:
                    raise RecordingError(
                        f"{self.path}: format version {version} is newer than this tiertop "
                        f"reads ({FORMAT_VERSION}); upgrade tiertop")
                self.issues.append(f"block at offset {pos} has format version {version}: "
                                   "skipped")
                pos = end
                continue
            try:
                meta = _meta_decoder.decode(payload[:meta_len])
            except msgspec.DecodeError:
                nxt = self._resync(pos + 1)
                self._corrupt(pos, nxt, "unreadable block meta")
                if nxt is None:
                    break
                pos = nxt
                continue
            block = _Block(pos, kind, flags, version, meta, pos + HEADER_BYTES + meta_len,
                           body_len)
            if first_block:
                if kind != KIND_HEADER:
                    raise RecordingError(f"{self.path}: the first block is not a header")
                first_block = False
            try:
                expected_first = self._take(block, expected_first)
            except (KeyError, TypeError, ValueError) as exc:
                self.issues.append(f"block at offset {pos} ({chr(kind)}) is malformed: {exc}")
            pos = end
            self.readable_bytes = pos
        if first_block:
            raise RecordingError(f"{self.path}: no readable header"
                                 + (f" ({self.issues[0]})" if self.issues else ""))
        if self.end is None and not any("truncated" in i for i in self.issues):
            self.issues.append(
                "no end block: the writer did not close the file (still recording, or killed); "
                "everything up to the last complete chunk is readable")

    def _take(self, block: _Block, expected_first: int) -> int:
        meta = block.meta
        kind = block.kind
        compressed = bool(block.flags & FLAG_ZSTD)
        if kind == KIND_HEADER:
            if self.header:
                self.issues.append(f"second header at offset {block.offset}: ignored")
                return expected_first
            self.header = meta
            base = meta.get("base")
            if base:
                expected_first = int(base["first"])
            hello = meta.get("hello")
            if isinstance(hello, bytes):
                self._add_hello(expected_first, hello)
        elif kind == KIND_DESCRIBE:
            hello = meta.get("hello")
            if isinstance(hello, bytes):
                self._add_hello(int(meta["i"]), hello)
        elif kind == KIND_CHUNK:
            chunk = ChunkInfo(
                offset=block.offset, first=int(meta["first"]), n=int(meta["n"]),
                r0=float(meta["r0"]), r1=float(meta["r1"]), t0=float(meta["t0"]),
                t1=float(meta["t1"]), topics=tuple(bytes(t) for t in meta["topics"]),
                body_offset=block.body_offset, body_len=block.body_len, compressed=compressed,
                raw_len=int(meta.get("raw", 0)),
            )
            if chunk.first > expected_first:
                self.issues.append(
                    f"records {expected_first}..{chunk.first - 1} are missing (unreadable "
                    "blocks before offset "
                    f"{block.offset}); replay goes on after the gap")
            elif chunk.first < expected_first:
                self.issues.append(f"chunk at offset {block.offset} repeats records: ignored")
                return expected_first
            self.chunks.append(chunk)
            return chunk.end
        elif kind == KIND_INDEX:
            for i, t, r, k, label in meta["entries"]:
                self.index.append(IndexEntry(int(i), float(t), float(r), str(k), str(label)))
        elif kind == KIND_KEYFRAME:
            self.keyframes.append(KeyframeInfo(
                offset=block.offset, next=int(meta["next"]), t=float(meta["t"]),
                r=float(meta["r"]), fingerprint=str(meta.get("fingerprint", "")),
                body_offset=block.body_offset, body_len=block.body_len, compressed=compressed,
            ))
        elif kind == KIND_END:
            self.end = meta
        return expected_first

    def _add_hello(self, index: int, payload: bytes) -> None:
        try:
            hello = msgspec.msgpack.decode(payload, type=Hello)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.issues.append(f"runtime description at record {index} is unreadable")
            return
        if not self.hellos or self.hellos[-1][1].epoch != hello.epoch:
            self.hellos.append((index, hello))

    def _resync(self, start: int) -> int | None:
        """Offset of the next block whose header and checksum hold, from ``start``."""
        f = self._file
        pos = start
        size = self.file_bytes
        while pos < size:
            f.seek(pos)
            window = f.read(1 << 20)
            if not window:
                return None
            at = window.find(BLOCK_MAGIC)
            while at >= 0:
                cand = pos + at
                f.seek(cand)
                parsed = _parse_header(f.read(HEADER_BYTES))
                if parsed is not None:
                    _, _, _, meta_len, body_len, crc = parsed
                    if cand + HEADER_BYTES + meta_len + body_len <= size and zlib.crc32(
                        f.read(meta_len + body_len)
                    ) == crc:
                        return cand
                at = window.find(BLOCK_MAGIC, at + 1)
            pos += max(1, len(window) - len(BLOCK_MAGIC) + 1)
        return None

    def _truncated(self, pos: int, have: int, need: int) -> None:
        self.issues.append(
            f"truncated: the block at offset {pos} is incomplete ({have} of {need} bytes; the "
            f"writer stopped mid-write); readable up to offset {pos} of {self.file_bytes}")

    def _corrupt(self, pos: int, nxt: int | None, why: str) -> None:
        if nxt is None:
            self.issues.append(f"corrupt: {why} at offset {pos}; nothing readable after it "
                               f"({self.file_bytes - pos} bytes skipped)")
        else:
            self.issues.append(f"corrupt: {why} at offset {pos}; skipped {nxt - pos} bytes to "
                               f"the next good block at offset {nxt}")

    # ---------------------------------------------------------------------------- contents

    @property
    def complete(self) -> bool:
        """True when the writer closed the file cleanly and nothing is damaged."""
        return self.end is not None and not self.issues

    @property
    def ok(self) -> bool:
        """True when nothing is damaged (an unclosed file is still ok)."""
        return not any(i.startswith(("corrupt", "truncated", "records")) for i in self.issues)

    @property
    def hello(self) -> Hello | None:
        """The runtime description (the first Hello recorded; None when none was)."""
        return self.hellos[0][1] if self.hellos else None

    @property
    def scenario(self) -> str | None:
        value = self.header.get("scenario")
        return value if isinstance(value, str) else None

    @property
    def created_at(self) -> float:
        return float(self.header.get("created_at", 0.0))

    @property
    def base(self) -> dict[str, Any] | None:
        """What retention dropped (None: nothing)."""
        base = self.header.get("base")
        return base if isinstance(base, dict) else None

    @property
    def records(self) -> int:
        """Readable records."""
        return sum(c.n for c in self.chunks)

    @property
    def first_index(self) -> int:
        return self.chunks[0].first if self.chunks else (self.base or {}).get("first", 0)

    @property
    def end_index(self) -> int:
        return self.chunks[-1].end if self.chunks else self.first_index

    @property
    def start_time(self) -> float:
        """Session time of the start: the first finite record time (or of the base keyframe
        after retention); 0.0 for an empty recording."""
        base = self.base
        if base is not None and math.isfinite(float(base.get("t", math.nan))):
            return float(base["t"])
        for c in self.chunks:
            if math.isfinite(c.t0):
                return c.t0
            if math.isfinite(c.t1):
                for rec in self.chunk_records(c):
                    if math.isfinite(rec.t):
                        return rec.t
        return 0.0

    @property
    def end_time(self) -> float:
        """Session time of the last readable record."""
        for c in reversed(self.chunks):
            if math.isfinite(c.t1):
                return c.t1
        return self.start_time

    @property
    def duration_s(self) -> float:
        return max(0.0, self.end_time - self.start_time)

    def describe(self) -> list[str]:
        """Lines a person reads: what, from where, how long, and what is damaged."""
        h = self.header
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.created_at))
        lines = [
            f"recording {self.path} ({self.file_bytes:,} bytes, format {h.get('format_version')}, "
            f"tiertop {h.get('tiertop_version')}, created {created})",
        ]
        hello = self.hello
        if hello is not None:
            tiers = ", ".join(t.name for t in hello.tiers) or "-"
            lines.append(f"runtime: {hello.mode} mode, {hello.topology.model or '-'}, "
                         f"{hello.host}:{hello.pid}, tiers {tiers}")
        if h.get("source"):
            lines.append(f"recorded from: {h['source']}")
        if self.scenario:
            first = self.scenario.strip().splitlines()[0] if self.scenario.strip() else ""
            lines.append(f"scenario: {first}")
        lines.append(
            f"{self.records:,} messages in {len(self.chunks)} chunks, "
            f"{self.duration_s:.1f} s of session time, {len(self.keyframes)} keyframes, "
            f"{sum(1 for e in self.index if e.kind == 'control')} control changes, "
            f"{sum(1 for e in self.index if e.kind == 'mark')} marks")
        base = self.base
        if base is not None:
            lines.append(f"retention dropped the oldest {base.get('dropped', 0):,} messages")
        if self.end is not None and self.end.get("stopped"):
            lines.append(f"recording stopped early: {self.end['stopped']} "
                         f"({self.end.get('dropped', 0):,} messages not recorded)")
        lines += [f"warning: {issue}" for issue in self.issues]
        return lines

    # ------------------------------------------------------------------------------ reading

    def _read_body(self, offset: int, length: int, compressed: bool) -> bytes:
        self._file.seek(offset)
        data = self._file.read(length)
        if len(data) != length:
            raise RecordingError(f"{self.path}: short read at offset {offset}")
        return self._zstd.decompress(data) if compressed else data

    def chunk_records(self, chunk: ChunkInfo) -> list[Record]:
        """Every record of one chunk, in order.

        Raises:
            RecordingError: The body does not decompress or parse (a file changed since it
                was opened, or opened with ``verify=False``).
        """
        try:
            raw = self._read_body(chunk.body_offset, chunk.body_len, chunk.compressed)
        except zstandard.ZstdError as exc:
            raise RecordingError(f"{self.path}: chunk at offset {chunk.offset}: {exc}") from None
        out: list[Record] = []
        unpack = _RECORD.unpack_from
        topics = chunk.topics
        pos = 0
        index = chunk.first
        size = len(raw)
        try:
            for _ in range(chunk.n):
                r, t, tid, seq, n = unpack(raw, pos)
                start = pos + RECORD_HEADER_BYTES
                pos = start + n
                if pos > size:
                    raise RecordingError(f"{self.path}: chunk at offset {chunk.offset} ends "
                                         "inside a record")
                out.append(Record(index, r, t, topics[tid], seq, raw[start:pos]))
                index += 1
        except (struct.error, IndexError) as exc:
            raise RecordingError(
                f"{self.path}: chunk at offset {chunk.offset} is malformed: {exc}") from None
        return out

    def iter_records(self, start: int = 0) -> Iterator[Record]:
        """Every readable record with index >= ``start``, in order."""
        for chunk in self.chunks:
            if chunk.end <= start:
                continue
            for rec in self.chunk_records(chunk):
                if rec.index >= start:
                    yield rec

    def chunk_at(self, index: int) -> int:
        """Position in :attr:`chunks` of the chunk holding record ``index`` (or the first chunk
        after it; ``len(chunks)`` past the end)."""
        lo, hi = 0, len(self.chunks)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.chunks[mid].end <= index:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def load_keyframe(self, keyframe: KeyframeInfo, folder: StreamFolder) -> None:
        """Restore ``folder`` to the keyframe's state.

        Raises:
            RecordingError: It cannot be read or was made by other code.
        """
        if not keyframe.compatible:
            raise RecordingError("keyframe made by other code (fingerprint differs)")
        try:
            data = self._read_body(keyframe.body_offset, keyframe.body_len, keyframe.compressed)
            folder.load(data)
        except (zstandard.ZstdError, pickle.UnpicklingError, EOFError, AttributeError,
                TypeError, ValueError) as exc:
            raise RecordingError(f"keyframe at offset {keyframe.offset}: {exc}") from None

    def records_up_to(self, t: float) -> int:
        """Index after the last record whose session time is <= ``t`` (absolute)."""
        chunks = self.chunks
        if not chunks:
            return self.first_index
        k = 0
        for k, c in enumerate(chunks):  # noqa: B007 - k is used after the loop
            if c.t1 > t:
                break
        else:
            return chunks[-1].end
        c = chunks[k]
        if c.t0 > t:
            return c.first
        for rec in self.chunk_records(c):
            if rec.t > t:
                return rec.index
        return c.end

