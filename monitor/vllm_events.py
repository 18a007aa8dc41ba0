"""Block-level KV events in exactly vLLM's shape, and a tolerant decoder for every producer.

The payload of one message is a batch ``[ts, events, data_parallel_rank]`` (a positional msgpack
array); each event is a tagged union ``BlockStored`` / ``BlockRemoved`` / ``AllBlocksCleared``.
tiertop publishes events map-encoded (``{"type": "BlockStored", ...}``, vLLM's encoding since
v0.26) with ``medium`` = the tier name. See ``reference/vllm-kv-events.md``.

The decoder reads what real engines send: map and legacy positional events
(``["BlockStored", field1, ...]`` in declaration order, of any length), batches of 2 or more
elements and map envelopes ``{ts, events, data_parallel_rank}``, ignores fields it does not know,
and counts event types it does not know instead of failing. ``medium`` is normalised
case-insensitively through :data:`MEDIUM_ALIASES` (``"unknown"`` for anything else).

The common case (tiertop's own map encoding) decodes in one typed msgspec call; anything else
falls back to a generic decode that converts event by event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, ClassVar, Final, cast

import msgspec

#: vLLM hashes are 32-byte sha256 digests or ints; tiertop's are 64-bit ints.
ExternalBlockHash = int | bytes


class BlockStored(msgspec.Struct, tag=True, omit_defaults=True, gc=False):
    """Blocks now resident in ``medium``.

    Fields are in vLLM's declaration order (the order of the legacy positional encoding). The
    first seven are always encoded (vLLM declares them without defaults); the rest are omitted
    at their default.

    Attributes:
        block_hashes: Hashes of consecutive blocks, each the parent of the next.
        parent_block_hash: Hash of the block before the first one (None: the first block).
        token_ids: Token ids of the blocks, ``block_size * len(block_hashes)``; empty for
            placeholder events ("this existing block is now also on that tier").
        block_size: Tokens per block (0 in placeholders).
        lora_id: Deprecated LoRA id.
        medium: Tier the blocks are in (tiertop: the tier name; vLLM ``"GPU"``/``"CPU"``...).
        lora_name: LoRA adapter name.
        extra_keys: Extra hash inputs per block (multimodal ids, cache salt...).
        group_idx: KV cache group index.
        kv_cache_spec_kind: Attention kind of the group (``"full_attention"``...).
        kv_cache_spec_sliding_window: Sliding window size of the group.
        locality: Newer vLLM field, carried through as is.
        ownership: Newer vLLM field, carried through as is.
        session_id: Newer vLLM field, carried through as is.
    """

    block_hashes: list[ExternalBlockHash]
    parent_block_hash: ExternalBlockHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[Any] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None
    locality: Any = None
    ownership: Any = None
    session_id: Any = None


class BlockRemoved(msgspec.Struct, tag=True, omit_defaults=True, gc=False):
    """Blocks no longer resident in ``medium``.

    Attributes:
        block_hashes: Hashes of the removed blocks.
        medium: Tier they left.
        group_idx: KV cache group index.
    """

    block_hashes: list[ExternalBlockHash]
    medium: str | None
    group_idx: int | None = None


class AllBlocksCleared(msgspec.Struct, tag=True, omit_defaults=True, gc=False):
    """Every block of every tier is gone (cache reset; also a recovery fence). No fields."""

    #: Not a field: a clear applies to every medium, so readers can treat every event alike.
    medium: ClassVar[str] = "*"


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared

EVENT_TYPES: Final[dict[str, type[KvEvent]]] = {
    "BlockStored": BlockStored,
    "BlockRemoved": BlockRemoved,
    "AllBlocksCleared": AllBlocksCleared,
}


class KvEventBatchWire(msgspec.Struct, array_like=True, gc=False):
    """One batch as tiertop encodes it: ``[ts, events, data_parallel_rank]``.

    Attributes:
        ts: Unix seconds (wall clock) or, from tiertop's simulator, virtual seconds.
        events: The events, oldest first.
        data_parallel_rank: Data-parallel rank of the engine (None when not data parallel).
    """

    ts: float
    events: list[KvEvent]
    data_parallel_rank: int | None = None


class _KvEventBatchMap(msgspec.Struct, gc=False):
    """The map envelope some producers use: ``{ts, events, data_parallel_rank}``."""

    ts: float
    events: list[KvEvent]
    data_parallel_rank: int | None = None


class KvEventBatch(msgspec.Struct, kw_only=True, gc=False):
    """A decoded batch, as a subscriber hands it out (not a wire type).

    Attributes:
        topic: Topic it came on.
        seq: Its sequence number (frame 1).
        ts: Batch timestamp in seconds.
        events: The events, oldest first.
        tiers: The normalised tier of each event, parallel to ``events`` (``"*"`` for
            ``AllBlocksCleared``, ``"unknown"`` for a medium the alias table does not know).
        data_parallel_rank: Data-parallel rank of the engine.
        source: Source id of the publisher when known ("" otherwise).
        epoch: Epoch of the publisher when known (0 otherwise).
    """

    topic: str
    seq: int
    ts: float
    events: list[KvEvent]
    tiers: list[str]
    data_parallel_rank: int | None = None
    source: str = ""
    epoch: int = 0


# ------------------------------------------------------------------------------ medium names

_medium_of = attrgetter("medium")

UNKNOWN_TIER: Final = "unknown"
ALL_TIERS: Final = "*"

#: Producer tier names (lower case) → tiertop's canonical names. vLLM: GPU, CPU, FS, OBJ;
#: SGLang: GPU, CPU_PINNED, DISK, EXTERNAL (older CPU_TIER1, CPU_TIER2); LMCache: cpu. The two
#: SGLang host tiers stay distinct so two tiers never merge into one.
MEDIUM_ALIASES: Final[Mapping[str, str]] = {
    "gpu": "gpu",
    "hbm": "gpu",
    "cuda": "gpu",
    "cpu": "cpu",
    "cpu_pinned": "cpu",
    "cpu_tier1": "cpu",
    "cpu_tier2": "cpu2",
    "fs": "disk",
    "disk": "disk",
    "obj": "external",
    "external": "external",
    ALL_TIERS: ALL_TIERS,
}


class MediumNormalizer:
    """Maps ``medium`` strings to canonical tier names, case-insensitively.

    Names given as ``known`` (tiertop's own tier names, from Hello) map to themselves; anything
    else goes through the alias table, and what it does not know becomes ``"unknown"`` (as does
    None). Results are cached per raw string, so normalising is one dict lookup.
    """

    _CACHE_LIMIT: ClassVar[int] = 4096

    def __init__(self, aliases: Mapping[str, str] | None = None, known: Iterable[str] = ()) -> None:
        self._aliases: dict[str, str] = {
            k.lower(): v for k, v in (MEDIUM_ALIASES if aliases is None else aliases).items()
        }
        self._cache: dict[str | None, str] = {None: UNKNOWN_TIER}
        self.add_known(known)

    def add_known(self, names: Iterable[str]) -> None:
        """Make these tier names (case-insensitively) map to themselves."""
        for name in names:
            self._aliases[name.lower()] = name
        self._cache = {None: UNKNOWN_TIER}

    def __call__(self, medium: str | None) -> str:
        tier = self._cache.get(medium)
        if tier is not None:
            return tier
        tier = (
            self._aliases.get(medium.lower(), UNKNOWN_TIER)
            if isinstance(medium, str)
            else (UNKNOWN_TIER)
        )
        if len(self._cache) < self._CACHE_LIMIT:
            self._cache[medium] = tier
        return tier

    def tiers_of(self, events: list[KvEvent]) -> list[str]:
        """The normalised tier of every event (one cached lookup each, in C)."""
        tiers = list(map(self._cache.get, map(_medium_of, events)))
        if None in tiers:  # a medium seen for the first time
            return [self(e.medium) for e in events]
        return cast("list[str]", tiers)


# ---------------------------------------------------------------------------------- encoding

_encoder = msgspec.msgpack.Encoder()


def encode_batch(events: list[KvEvent], ts: float, data_parallel_rank: int | None = 0) -> bytes:
    """The msgpack payload of one batch: ``[ts, events, data_parallel_rank]``, events as maps."""
    return _encoder.encode(KvEventBatchWire(ts, events, data_parallel_rank))


# ---------------------------------------------------------------------------------- decoding


@dataclass(slots=True)
class KvDecodeResult:
    """A decoded payload before the subscriber adds topic and sequence."""

    ts: float
    events: list[KvEvent]
    data_parallel_rank: int | None
    unknown_types: int = 0
    bad_events: int = 0
    legacy: bool = False


class KvDecodeError(ValueError):
    """The payload is not a KV event batch in any known encoding."""


_FIELD_NAMES: Final[dict[type[KvEvent], tuple[str, ...]]] = {
    cls: tuple(cls.__struct_fields__) for cls in EVENT_TYPES.values()
}
# Fields vLLM declares without a default; producers that leave them out get these.
_REQUIRED_FILL: Final[dict[type[KvEvent], dict[str, Any]]] = {
    BlockStored: {
        "parent_block_hash": None,
        "token_ids": [],
        "block_size": 0,
        "lora_id": None,
        "medium": None,
        "lora_name": None,
    },
    BlockRemoved: {"medium": None},
    AllBlocksCleared: {},
}

_array_decoder = msgspec.msgpack.Decoder(KvEventBatchWire)
_map_decoder = msgspec.msgpack.Decoder(_KvEventBatchMap)
_generic_decoder = msgspec.msgpack.Decoder()


def _is_map_header(first: int) -> bool:
    return 0x80 <= first <= 0x8F or first in (0xDE, 0xDF)


def decode_batch(payload: bytes | memoryview) -> KvDecodeResult:
    """Decode one KV event batch payload in any encoding vLLM-like producers use.

    Raises:
        KvDecodeError: The payload is not a batch (garbage, wrong shape). Events of unknown
            types and malformed events inside a valid batch do not raise: they are skipped and
            counted in the result.
    """
    if len(payload) == 0:
        raise KvDecodeError("empty payload")
    try:
        if _is_map_header(payload[0]):
            m = _map_decoder.decode(payload)
            return KvDecodeResult(m.ts, m.events, m.data_parallel_rank)
        w = _array_decoder.decode(payload)
        return KvDecodeResult(w.ts, w.events, w.data_parallel_rank)
    except (msgspec.ValidationError, msgspec.DecodeError):
        pass
    return _decode_tolerant(payload)


def _decode_tolerant(payload: bytes | memoryview) -> KvDecodeResult:
    try:
        raw = _generic_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise KvDecodeError(f"not msgpack: {exc}") from None
    if isinstance(raw, list):
        if len(raw) < 2:
            raise KvDecodeError(f"batch has {len(raw)} elements, needs 2 or more")
        ts, events, rank = raw[0], raw[1], raw[2] if len(raw) > 2 else None
    elif isinstance(raw, dict):
        if "events" not in raw:
            raise KvDecodeError("map batch without 'events'")
        ts, events, rank = raw.get("ts", 0.0), raw["events"], raw.get("data_parallel_rank")
    else:
        raise KvDecodeError(f"batch is a {type(raw).__name__}, not an array or map")
    if isinstance(ts, bool) or not isinstance(ts, int | float):
        raise KvDecodeError(f"batch ts is a {type(ts).__name__}")
    if not isinstance(events, list):
        raise KvDecodeError(f"batch events is a {type(events).__name__}")
    if isinstance(rank, bool) or not isinstance(rank, int | None):
        rank = None
    result = KvDecodeResult(float(ts), [], rank)
    for raw_event in events:
        _convert_event(raw_event, result)
    return result


def _convert_event(raw: Any, result: KvDecodeResult) -> None:
    if isinstance(raw, dict):
        name = raw.get("type")
        fields = raw
    elif isinstance(raw, list) and raw and isinstance(raw[0], str):
        name = raw[0]
        cls_for_names = EVENT_TYPES.get(name)
        if cls_for_names is None:
            result.unknown_types += 1
            return
        result.legacy = True
        fields = dict(zip(_FIELD_NAMES[cls_for_names], raw[1:], strict=False))
    else:
        result.bad_events += 1
        return
    cls = EVENT_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        result.unknown_types += 1
        return
    data = dict(_REQUIRED_FILL[cls])
    data.update(fields)
    data.pop("type", None)
    if "block_hashes" not in data and cls is not AllBlocksCleared:
        result.bad_events += 1
        return
    try:
        result.events.append(msgspec.convert(data, cls))
    except msgspec.ValidationError:
        result.bad_events += 1
