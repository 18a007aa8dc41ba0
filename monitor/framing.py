"""Wire framing shared by the publisher and every reader.

Every message on every topic is one ZeroMQ multipart message of three frames, as vLLM's KV
events publisher sends them:

====== =====================================================================================
frame  content
====== =====================================================================================
0      topic, UTF-8 (``kv-events``, ``tt.stats``...; vLLM's default topic is empty)
1      sequence number: 8 bytes big-endian unsigned, per topic, +1 per message
2      msgpack payload: a KV event batch (non-``tt.`` topics) or one tiertop message
====== =====================================================================================

Replay (ROUTER on the publisher, DEALER on readers), vLLM's semantics extended to topics:

* request ``[b"", start8]``: batches of the KV events topic with seq >= start (vLLM's request);
* request ``[b"", start8, topic]``: messages of ``topic`` with seq >= start;
* request ``[b"", start8, topic, end8]``: messages of ``topic`` with start <= seq < end;
* request ``[b"", b"tt.snapshot"]``: one :class:`~tiertop.monitor.protocol.Snapshot`;
* each answer is ``[b"", topic, seq8, payload]`` (pre-v0.26 vLLM: ``[b"", seq8, payload]``),
  then the end marker ``[b"", b"", END, b""]`` (END is eight ``0xff`` bytes).

This module also holds the message codec: :class:`MessageCodec` encodes tiertop messages and
:class:`FrameDecoder` turns any received payload into a typed object, counting unknown types,
unknown fields and garbage instead of raising.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import msgspec

from .protocol import (
    FIELD_COUNT,
    KNOWN_TYPE_NAMES,
    TOPIC_SNAPSHOT,
    TT_TOPIC_PREFIX,
    AnyMessage,
    TelemetryMessage,
)
from .vllm_events import KvDecodeError, KvEventBatch, MediumNormalizer, decode_batch

SEQ_BYTES: Final = 8
#: End-of-replay marker in the sequence frame (vLLM: ``(-1).to_bytes(8, "big", signed=True)``).
END_SEQ: Final = b"\xff" * SEQ_BYTES
#: Replay-socket request for a snapshot (its length differs from a sequence number's).
SNAPSHOT_REQUEST: Final = TOPIC_SNAPSHOT.encode()
MAX_SEQ: Final = (1 << 64) - 1

Decoded = KvEventBatch | TelemetryMessage


class FramingError(ValueError):
    """A multipart message that does not follow the framing."""


def encode_seq(seq: int) -> bytes:
    """The 8-byte big-endian form of a sequence number."""
    return seq.to_bytes(SEQ_BYTES, "big")


def decode_seq(frame: bytes | memoryview) -> int:
    """A sequence number from its 8-byte frame.

    Raises:
        FramingError: The frame is not 8 bytes.
    """
    if len(frame) != SEQ_BYTES:
        raise FramingError(f"sequence frame has {len(frame)} bytes, expected {SEQ_BYTES}")
    return int.from_bytes(frame, "big")


def live_frames(topic: bytes, seq: int, payload: bytes) -> list[bytes]:
    """The three frames of one live message."""
    return [topic, encode_seq(seq), payload]


def split_live(frames: list[bytes]) -> tuple[bytes, int, bytes]:
    """``(topic, seq, payload)`` of a live message.

    Raises:
        FramingError: Not three frames, or a bad sequence frame.
    """
    if len(frames) != 3:
        raise FramingError(f"live message has {len(frames)} frames, expected 3")
    return frames[0], decode_seq(frames[1]), frames[2]


# ----------------------------------------------------------------------------------- replay


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    """A parsed replay-socket request: a replay of ``topic`` from ``start``, or a snapshot."""

    snapshot: bool
    start: int = 0
    topic: bytes | None = None  # None: the publisher's KV events topic (vLLM's request)
    end: int | None = None  # first sequence number not wanted (None: up to the newest)


def replay_request_frames(
    start: int, topic: bytes | None = None, end: int | None = None
) -> list[bytes]:
    """What a DEALER sends to ask for a replay (``topic`` None: vLLM's request, which cannot
    carry an end)."""
    frames = [b"", encode_seq(start)]
    if topic is not None:
        frames.append(topic)
        if end is not None:
            frames.append(encode_seq(end))
    return frames


def snapshot_request_frames() -> list[bytes]:
    """What a DEALER sends to ask for a snapshot."""
    return [b"", SNAPSHOT_REQUEST]


def parse_replay_request(frames: list[bytes]) -> ReplayRequest:
    """Parse what a ROUTER received after the peer identity (``[b"", ...]``).

    Raises:
        FramingError: Not a request this protocol knows.
    """
    body = frames[1:] if frames and frames[0] == b"" else frames
    if len(body) == 1 and body[0] == SNAPSHOT_REQUEST:
        return ReplayRequest(snapshot=True)
    if 1 <= len(body) <= 3 and len(body[0]) == SEQ_BYTES:
        return ReplayRequest(
            snapshot=False,
            start=decode_seq(body[0]),
            topic=body[1] if len(body) >= 2 else None,
            end=decode_seq(body[2]) if len(body) == 3 else None,
        )
    raise FramingError(f"unknown replay request of {len(frames)} frames")


@dataclass(frozen=True, slots=True)
class ReplayItem:
    """One message of a replay answer (``topic`` None: a pre-v0.26 two-frame answer)."""

    topic: bytes | None
    seq: int
    payload: bytes


def split_replay(frames: list[bytes]) -> ReplayItem | None:
    """Parse one message a DEALER received on the replay socket; None is the end marker.

    Rule (after the leading empty delimiter): an empty last frame is the end; 2 frames are
    ``[seq, payload]``; 3 frames are ``[topic, seq, payload]``.

    Raises:
        FramingError: Any other shape.
    """
    body = frames[1:] if len(frames) > 1 and frames[0] == b"" else frames
    if not body:
        raise FramingError("empty replay message")
    if body[-1] == b"" and (len(body) < 2 or body[-2] == END_SEQ):
        return None
    if len(body) == 2:
        return ReplayItem(None, decode_seq(body[0]), body[1])
    if len(body) == 3:
        return ReplayItem(body[0], decode_seq(body[1]), body[2])
    raise FramingError(f"replay message has {len(body)} frames")


def end_frames() -> list[bytes]:
    """The end marker a ROUTER sends after the identity: ``[b"", b"", END, b""]``."""
    return [b"", b"", END_SEQ, b""]


# ------------------------------------------------------------------------------------ codec


class MessageCodec:
    """Encodes tiertop messages (one reusable msgspec encoder; not thread-safe)."""

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()

    def encode(self, message: TelemetryMessage) -> bytes:
        return self._encoder.encode(message)


class _TypeOnly(msgspec.Struct, forbid_unknown_fields=False):
    type: str | None = None


_message_decoder = msgspec.msgpack.Decoder(AnyMessage)
_type_decoder = msgspec.msgpack.Decoder(_TypeOnly)


def map_len(payload: bytes | memoryview) -> int | None:
    """Number of keys of a msgpack map at the start of ``payload`` (None: not a map)."""
    if not payload:
        return None
    first = payload[0]
    if 0x80 <= first <= 0x8F:
        return first & 0x0F
    if first == 0xDE and len(payload) >= 3:
        return int.from_bytes(payload[1:3], "big")
    if first == 0xDF and len(payload) >= 5:
        return int.from_bytes(payload[1:5], "big")
    return None


@dataclass(slots=True)
class DecodeCounters:
    """What a :class:`FrameDecoder` skipped or tolerated.

    Attributes:
        unknown_types: Messages (and block events inside batches) of types this version does
            not know; skipped.
        unknown_fields: Top-level fields of tiertop messages this version does not know;
            ignored (the message is used).
        decode_errors: Payloads that are not valid messages (garbage, wrong shape), plus
            malformed events inside otherwise valid batches; skipped.
        legacy_batches: KV batches that used the legacy positional event encoding.
    """

    unknown_types: int = 0
    unknown_fields: int = 0
    decode_errors: int = 0
    legacy_batches: int = 0


class FrameDecoder:
    """Decodes payloads by topic: ``tt.*`` topics hold one tiertop message, any other topic a
    vLLM-shaped KV event batch. Never raises on bad input: returns None and counts it."""

    def __init__(self, normalizer: MediumNormalizer | None = None) -> None:
        self.normalizer = normalizer if normalizer is not None else MediumNormalizer()
        self.counters = DecodeCounters()
        self._topic_names: dict[bytes, str] = {}

    def topic_name(self, topic: bytes) -> str:
        name = self._topic_names.get(topic)
        if name is None:
            name = topic.decode("utf-8", "replace")
            if len(self._topic_names) < 1024:
                self._topic_names[topic] = name
        return name

    def decode(
        self, topic: bytes, seq: int, payload: bytes, source: str = "", epoch: int = 0
    ) -> Decoded | None:
        """The typed message in ``payload``, or None (counted) when it cannot be used."""
        name = self.topic_name(topic)
        try:
            if name.startswith(TT_TOPIC_PREFIX):
                return self.decode_message(payload)
            return self.decode_kv(name, seq, payload, source, epoch)
        except Exception:  # whatever the bytes were, a reader must not fall over
            self.counters.decode_errors += 1
            return None

    def decode_message(self, payload: bytes) -> TelemetryMessage | None:
        counters = self.counters
        try:
            message: TelemetryMessage = _message_decoder.decode(payload)
        except (msgspec.ValidationError, msgspec.DecodeError):
            try:
                tag = _type_decoder.decode(payload).type
            except (msgspec.ValidationError, msgspec.DecodeError):
                counters.decode_errors += 1
                return None
            if tag is not None and tag not in KNOWN_TYPE_NAMES:
                counters.unknown_types += 1
            else:
                counters.decode_errors += 1
            return None
        keys = map_len(payload)
        expected = FIELD_COUNT[type(message)]
        if keys is not None and keys > expected:
            counters.unknown_fields += keys - expected
        return message

    def decode_kv(
        self, topic: str, seq: int, payload: bytes, source: str = "", epoch: int = 0
    ) -> KvEventBatch | None:
        counters = self.counters
        try:
            result = decode_batch(payload)
        except KvDecodeError:
            counters.decode_errors += 1
            return None
        if result.unknown_types:
            counters.unknown_types += result.unknown_types
        if result.bad_events:
            counters.decode_errors += result.bad_events
        if result.legacy:
            counters.legacy_batches += 1
        events = result.events
        return KvEventBatch(
            topic=topic,
            seq=seq,
            ts=result.ts,
            events=events,
            tiers=self.normalizer.tiers_of(events),
            data_parallel_rank=result.data_parallel_rank,
            source=source,
            epoch=epoch,
        )
