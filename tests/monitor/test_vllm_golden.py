"""vLLM KV events: the exact example batches of reference/vllm-kv-events.md, byte for byte, and
the tolerance the decoder promises (legacy arrays, envelopes, extra fields, unknown types)."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import pytest
from tiertop.monitor.framing import FrameDecoder
from tiertop.monitor.vllm_events import (
    ALL_TIERS,
    MEDIUM_ALIASES,
    UNKNOWN_TIER,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KvDecodeError,
    KvEvent,
    KvEventBatch,
    MediumNormalizer,
    decode_batch,
    encode_batch,
)

# The worked examples of the reference, as written there (JSON null -> None).
MAP_EXAMPLE: list[Any] = [
    1.5,
    [
        {
            "type": "BlockStored",
            "block_hashes": [123, 456],
            "parent_block_hash": None,
            "token_ids": [1, 2, 3, 4],
            "block_size": 2,
            "lora_id": None,
            "medium": "GPU",
            "lora_name": None,
            "group_idx": 0,
            "kv_cache_spec_kind": "full_attention",
        },
        {"type": "BlockRemoved", "block_hashes": [123], "medium": "CPU"},
        {"type": "AllBlocksCleared"},
    ],
    0,
]
LEGACY_EXAMPLE: list[Any] = [
    1.5,
    [
        ["BlockStored", [123, 456], None, [1, 2, 3, 4], 2, None, "GPU", None, None, 0,
         "full_attention", None],
        ["BlockRemoved", [123], "CPU", None],
        ["AllBlocksCleared"],
    ],
    0,
]  # fmt: skip

# Their msgpack bytes (what a producer puts in frame 2).
MAP_GOLDEN = bytes.fromhex(
    "93cb3ff8000000000000938aa474797065ab426c6f636b53746f726564ac626c"
    "6f636b5f686173686573927bcd01c8b1706172656e745f626c6f636b5f686173"
    "68c0a9746f6b656e5f6964739401020304aa626c6f636b5f73697a6502a76c6f"
    "72615f6964c0a66d656469756da3475055a96c6f72615f6e616d65c0a967726f"
    "75705f69647800b26b765f63616368655f737065635f6b696e64ae66756c6c5f"
    "617474656e74696f6e83a474797065ac426c6f636b52656d6f766564ac626c6f"
    "636b5f686173686573917ba66d656469756da343505581a474797065b0416c6c"
    "426c6f636b73436c656172656400"
)
LEGACY_GOLDEN = bytes.fromhex(
    "93cb3ff8000000000000939cab426c6f636b53746f726564927bcd01c8c09401"
    "02030402c0a3475055c0c000ae66756c6c5f617474656e74696f6ec094ac426c"
    "6f636b52656d6f766564917ba3435055c091b0416c6c426c6f636b73436c6561"
    "72656400"
)

EXPECTED_EVENTS = [
    BlockStored(
        block_hashes=[123, 456],
        parent_block_hash=None,
        token_ids=[1, 2, 3, 4],
        block_size=2,
        lora_id=None,
        medium="GPU",
        lora_name=None,
        group_idx=0,
        kv_cache_spec_kind="full_attention",
    ),
    BlockRemoved(block_hashes=[123], medium="CPU"),
    AllBlocksCleared(),
]


def test_golden_bytes_are_the_reference_examples() -> None:
    assert msgspec.msgpack.encode(MAP_EXAMPLE) == MAP_GOLDEN
    assert msgspec.msgpack.encode(LEGACY_EXAMPLE) == LEGACY_GOLDEN


@pytest.mark.parametrize("golden", [MAP_GOLDEN, LEGACY_GOLDEN], ids=["map", "legacy"])
def test_reference_examples_decode_to_the_same_events(golden: bytes) -> None:
    result = decode_batch(golden)
    assert result.ts == 1.5
    assert result.data_parallel_rank == 0
    assert result.events == EXPECTED_EVENTS
    assert [type(e) for e in result.events] == [BlockStored, BlockRemoved, AllBlocksCleared]
    assert result.unknown_types == result.bad_events == 0


def test_frame_decoder_normalises_the_examples() -> None:
    decoder = FrameDecoder()
    batches = [decoder.decode(b"kv-events", 4, g) for g in (MAP_GOLDEN, LEGACY_GOLDEN)]
    assert all(isinstance(b, KvEventBatch) for b in batches)
    first, second = batches
    assert isinstance(first, KvEventBatch) and isinstance(second, KvEventBatch)
    assert first.events == second.events == EXPECTED_EVENTS
    assert first.tiers == second.tiers == ["gpu", "cpu", ALL_TIERS]
    assert (first.topic, first.seq) == ("kv-events", 4)
    assert decoder.counters.legacy_batches == 1
    assert decoder.counters.decode_errors == decoder.counters.unknown_types == 0


class _VllmBlockStored(msgspec.Struct, tag="BlockStored", omit_defaults=True):
    """vLLM's own declaration (required fields without defaults), to read our bytes as vLLM
    consumers do."""

    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    extra_keys: list[Any] | None = None
    group_idx: int | None = None
    kv_cache_spec_kind: str | None = None
    kv_cache_spec_sliding_window: int | None = None


class _VllmBlockRemoved(msgspec.Struct, tag="BlockRemoved", omit_defaults=True):
    block_hashes: list[int | bytes]
    medium: str | None
    group_idx: int | None = None


class _VllmAllBlocksCleared(msgspec.Struct, tag="AllBlocksCleared", omit_defaults=True):
    pass


class _VllmBatch(msgspec.Struct, array_like=True):
    ts: float
    events: list[_VllmBlockStored | _VllmBlockRemoved | _VllmAllBlocksCleared]
    data_parallel_rank: int | None = None


def test_tiertop_encoding_is_vllm_map_encoding() -> None:
    events: list[KvEvent] = [
        BlockStored([7, 8], None, [], 0, None, "dram", None),
        BlockRemoved([7], "dram"),
        AllBlocksCleared(),
    ]
    payload = encode_batch(events, 2.25, 0)
    raw = msgspec.msgpack.decode(payload)
    assert raw[0] == 2.25 and raw[2] == 0 and len(raw) == 3  # positional batch
    stored, removed, cleared = raw[1]
    # vLLM's required fields are always present; defaulted ones are omitted.
    assert list(stored) == [
        "type",
        "block_hashes",
        "parent_block_hash",
        "token_ids",
        "block_size",
        "lora_id",
        "medium",
        "lora_name",
    ]
    assert stored["medium"] == "dram" and stored["type"] == "BlockStored"
    assert removed == {"type": "BlockRemoved", "block_hashes": [7], "medium": "dram"}
    assert cleared == {"type": "AllBlocksCleared"}
    as_vllm = msgspec.msgpack.decode(payload, type=_VllmBatch)
    assert [type(e).__name__ for e in as_vllm.events] == [
        "_VllmBlockStored",
        "_VllmBlockRemoved",
        "_VllmAllBlocksCleared",
    ]
    assert decode_batch(payload).events == events


def _pack(obj: Any) -> bytes:
    return msgspec.msgpack.encode(obj)


def test_two_element_batch_and_extra_batch_elements() -> None:
    two = decode_batch(_pack([3, [{"type": "BlockRemoved", "block_hashes": [1], "medium": "GPU"}]]))
    assert two.ts == 3.0 and two.data_parallel_rank is None and len(two.events) == 1
    more = decode_batch(_pack([3.0, [["AllBlocksCleared"]], 2, "future", {"x": 1}]))
    assert more.events == [AllBlocksCleared()] and more.data_parallel_rank == 2


def test_map_envelope() -> None:
    envelope = {"ts": 4.0, "events": MAP_EXAMPLE[1], "data_parallel_rank": 1, "extra": True}
    result = decode_batch(_pack(envelope))
    assert (result.ts, result.data_parallel_rank) == (4.0, 1)
    assert result.events == EXPECTED_EVENTS
    legacy_envelope = {"ts": 4.0, "events": LEGACY_EXAMPLE[1]}
    assert decode_batch(_pack(legacy_envelope)).events == EXPECTED_EVENTS


def test_extra_fields_are_ignored() -> None:
    newer_map = {
        "type": "BlockStored",
        "block_hashes": [1],
        "parent_block_hash": 0,
        "token_ids": [5, 6],
        "block_size": 2,
        "lora_id": None,
        "medium": "CPU",
        "lora_name": None,
        "locality": "rack-3",
        "field_from_2027": {"a": 1},
    }
    result = decode_batch(_pack([1.0, [newer_map], 0]))
    stored = result.events[0]
    assert isinstance(stored, BlockStored)
    assert stored.locality == "rack-3"
    assert stored.block_hashes == [1]
    longer_legacy = ["BlockRemoved", [9], "CPU", 0, "future-1", "future-2"]
    result = decode_batch(_pack([1.0, [longer_legacy], 0]))
    assert result.events == [BlockRemoved([9], "CPU", 0)]


def test_older_legacy_arrays_take_defaults() -> None:
    # An old vLLM: BlockStored before medium/lora_name existed, BlockRemoved without medium.
    old = [1.0, [["BlockStored", [1, 2], None, [1, 2, 3, 4], 2, None], ["BlockRemoved", [1]]]]
    decoder = FrameDecoder()
    batch = decoder.decode(b"", 0, _pack(old))
    assert isinstance(batch, KvEventBatch)
    stored, removed = batch.events
    assert isinstance(stored, BlockStored) and stored.medium is None and stored.lora_name is None
    assert isinstance(removed, BlockRemoved) and removed.block_hashes == [1]
    assert batch.tiers == [UNKNOWN_TIER, UNKNOWN_TIER]


def test_sha256_byte_hashes() -> None:
    digest = hashlib.sha256(b"block").digest()
    parent = hashlib.sha256(b"parent").digest()
    event = BlockStored([digest], parent, [1, 2], 2, None, "GPU", None)
    result = decode_batch(encode_batch([event], 1.0))
    assert result.events == [event]
    assert isinstance(result.events[0], BlockStored)
    assert result.events[0].block_hashes == [digest]


def test_unknown_event_types_are_counted_and_skipped() -> None:
    events = [
        {"type": "BlockStored", "block_hashes": [1], "parent_block_hash": None, "token_ids": [],
         "block_size": 0, "lora_id": None, "medium": "GPU", "lora_name": None},
        {"type": "BlockPinned", "block_hashes": [1]},
        ["BlockMoved", [1], "GPU", "CPU"],
        {"type": "BlockRemoved", "block_hashes": [1], "medium": "GPU"},
        "nonsense",
        {"type": "BlockRemoved", "medium": "GPU"},  # no block_hashes: malformed
    ]  # fmt: skip
    decoder = FrameDecoder()
    batch = decoder.decode(b"kv-events", 0, _pack([1.0, events, 0]))
    assert isinstance(batch, KvEventBatch)
    assert [type(e) for e in batch.events] == [BlockStored, BlockRemoved]
    assert decoder.counters.unknown_types == 2
    assert decoder.counters.decode_errors == 2


@pytest.mark.parametrize(
    "payload",
    [b"", b"\xc1\xc1", _pack(1.0), _pack([1.0]), _pack(["x", []]), _pack([1.0, "events"])],
)
def test_garbage_batches(payload: bytes) -> None:
    with pytest.raises(KvDecodeError):
        decode_batch(payload)
    decoder = FrameDecoder()
    assert decoder.decode(b"kv-events", 0, payload) is None
    assert decoder.counters.decode_errors == 1


@pytest.mark.parametrize(
    ("medium", "tier"),
    [
        ("GPU", "gpu"),
        ("gpu", "gpu"),
        ("CPU", "cpu"),
        ("cpu", "cpu"),  # LMCache
        ("CPU_PINNED", "cpu"),
        ("CPU_TIER1", "cpu"),
        ("CPU_TIER2", "cpu2"),
        ("cpu_tier2", "cpu2"),
        ("FS", "disk"),
        ("DISK", "disk"),
        ("OBJ", "external"),
        ("EXTERNAL", "external"),
        ("Tape", UNKNOWN_TIER),
        ("", UNKNOWN_TIER),
        (None, UNKNOWN_TIER),
    ],
)
def test_medium_aliases(medium: str | None, tier: str) -> None:
    assert MediumNormalizer()(medium) == tier


def test_known_tier_names_map_to_themselves() -> None:
    normalizer = MediumNormalizer(known=["dram", "NUMA1"])
    assert normalizer("dram") == "dram"
    assert normalizer("DRAM") == "dram"
    assert normalizer("numa1") == "NUMA1"
    assert normalizer("GPU") == "gpu"  # aliases still apply
    assert normalizer("remote") == UNKNOWN_TIER
    assert set(MEDIUM_ALIASES.values()) <= {"gpu", "cpu", "cpu2", "disk", "external", ALL_TIERS}
