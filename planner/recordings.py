"""Reading what the planner learns from: tiertop recordings and JSONL files of accesses/events.

Three inputs feed the miss-ratio curve of ``tiertop plan --from-recording FILE``:

* a tiertop recording (:mod:`tiertop.monitor.recording`): its messages are decoded exactly as
  the replayer decodes them and folded through :class:`~tiertop.monitor.mrc.MrcTracker` (block
  events become accesses as that class documents; Hello and TierStats give tiers, capacities and
  watermarks);
* a JSONL file whose lines are any mix of

  - a block access: a bare integer, ``{"key": K}`` or ``{"keys": [K, ...]}`` (K an int, or a
    string of hex digits): fed straight to the estimator, every line one access (the exact stream);
  - a telemetry message as JSON (``{"type": "Hello", ...}``, ``"TierStats"``, ``"Snapshot"``,
    or a KV event batch ``{"type": "KvEventBatch", "events": [...], "tiers": [...]}``);
  - a row of ``tiertop export``'s ``block_events`` table (``event``, ``tier``,
    ``block_hashes`` as space-separated hex);

  lines of other shapes (``RequestDone``...) are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
from tiertop.monitor import protocol
from tiertop.monitor.mrc import MrcTracker, key_int
from tiertop.monitor.vllm_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    ExternalBlockHash,
    KvEvent,
    KvEventBatch,
)

__all__ = ["InputError", "feed_file", "read_messages"]


class InputError(ValueError):
    """The file cannot be read as a recording or a JSONL of accesses/events."""


def _is_recording(path: Path) -> bool:
    try:
        from tiertop.monitor.recording import is_recording
    except ImportError:
        return False
    return is_recording(path)


def read_messages(path: str | Path) -> Iterator[Any]:
    """Every decodable message of a tiertop recording, in order (decoded as replay decodes)."""
    p = Path(path)
    try:
        from tiertop.monitor.recording import Recording, RecordingError, StreamFolder
    except ImportError as exc:  # pragma: no cover - the module ships with tiertop
        raise InputError(f"{p}: tiertop recordings cannot be read here: {exc}") from None
    try:
        recording = Recording(p)
    except (RecordingError, OSError) as exc:
        raise InputError(f"{p}: {exc}") from None
    with recording:
        folder = StreamFolder()
        for record in recording.iter_records():
            message = folder.feed(record.topic, record.seq, record.payload, record.received_at)
            if message is not None:
                yield message


_MESSAGE_TYPES = {cls.__name__: cls for cls in protocol.MESSAGE_TYPES}
_EVENT_TYPES: dict[str, type[KvEvent]] = {
    "BlockStored": BlockStored, "BlockRemoved": BlockRemoved,
    "AllBlocksCleared": AllBlocksCleared,
}


def _key(value: Any) -> int:
    """A key from JSON: an int, or a string of hex digits (``tiertop export`` writes hashes as
    hex, with or without ``0x``)."""
    if isinstance(value, str):
        return key_int(int(value, 16))
    return key_int(value)


def _event_of(obj: dict[str, Any]) -> KvEvent:
    cls = _EVENT_TYPES[obj["type"] if "type" in obj else obj["event"]]
    if cls is AllBlocksCleared:
        return AllBlocksCleared()
    raw = obj.get("block_hashes", [])
    hashes: list[ExternalBlockHash] = [
        _key(h) for h in (raw.split() if isinstance(raw, str) else raw)]
    medium = obj.get("medium") or obj.get("tier")
    if cls is BlockRemoved:
        return BlockRemoved(hashes, medium)
    return BlockStored(hashes, None, [], 0, None, medium, None)


def _batch(events: list[KvEvent], seq: int) -> KvEventBatch:
    tiers = ["*" if isinstance(e, AllBlocksCleared) else str(e.medium) for e in events]
    return KvEventBatch(topic="kv-events", seq=seq, ts=0.0, events=events, tiers=tiers)


def feed_file(path: str | Path, tracker: MrcTracker, *, batch: int = 4096) -> dict[str, int]:
    """Feed a recording or a JSONL file (see the module docstring) into ``tracker``; returns
    counts of what was read (``accesses``, ``messages``, ``events``, ``skipped``)."""
    p = Path(path)
    counts = {"accesses": 0, "messages": 0, "events": 0, "skipped": 0}
    if _is_recording(p):
        for message in read_messages(p):
            tracker.fold(message)
            counts["messages"] += 1
        return counts
    keys: list[int] = []
    events: list[KvEvent] = []
    seq = 0

    def flush_keys() -> None:
        if keys:
            tracker.curve.access_many(keys)
            counts["accesses"] += len(keys)
            keys.clear()

    def flush_events() -> None:
        nonlocal seq
        if events:
            tracker.fold(_batch(list(events), seq))
            seq += 1
            counts["events"] += len(events)
            events.clear()

    try:
        f = p.open(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{p}: cannot read: {exc}") from None
    with f:
        for number, line in enumerate(f, 1):
            text = line.strip()
            if not text:
                continue
            try:
                obj = json.loads(text)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InputError(f"{p}:{number}: neither a tiertop recording nor JSONL: "
                                 f"{exc}") from None
            try:
                if isinstance(obj, int) and not isinstance(obj, bool):
                    flush_events()
                    keys.append(key_int(obj))
                elif isinstance(obj, dict) and ("key" in obj or "keys" in obj):
                    flush_events()
                    raw = obj["keys"] if "keys" in obj else [obj["key"]]
                    keys.extend(_key(k) for k in raw)
                elif isinstance(obj, dict) and (obj.get("type") in _EVENT_TYPES
                                                or obj.get("event") in _EVENT_TYPES):
                    flush_keys()
                    events.append(_event_of(obj))
                    if len(events) >= batch:
                        flush_events()
                elif isinstance(obj, dict) and obj.get("type") == "KvEventBatch":
                    flush_keys()
                    flush_events()
                    batch_events = [_event_of(e) for e in obj.get("events", [])]
                    events.extend(batch_events)
                    flush_events()
                elif isinstance(obj, dict) and obj.get("type") in _MESSAGE_TYPES:
                    flush_keys()
                    flush_events()
                    cls = _MESSAGE_TYPES[obj["type"]]
                    body = {k: v for k, v in obj.items() if k != "type"}
                    tracker.fold(msgspec.convert(body, cls))
                    counts["messages"] += 1
                else:
                    counts["skipped"] += 1
            except (KeyError, ValueError, TypeError, msgspec.ValidationError) as exc:
                raise InputError(f"{p}:{number}: {exc}") from None
            if len(keys) >= batch:
                flush_keys()
    flush_keys()
    flush_events()
    return counts
