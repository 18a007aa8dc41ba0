"""The disk tier's on-disk format: one slab file of 4 KiB slots, every run of slots self-describing.

The file is a sequence of *runs*. Each run starts with a 4 KiB header slot and is either a block
record (the header, then the payload from the next slot on; the bytes after the payload in its
last slot are unused) or a free run (a header that says how many slots are free). Reading the
headers from offset 0, each one saying how far to skip, walks the whole file; a slot boundary
where no valid header starts is damage (see ``tiers/stores/disk_scan.py``).

Header (176 bytes, little-endian, at the start of the header slot; the rest of the slot is zero)::

    magic "TTKVSLOT" | version u16 | kind u8 (1 block, 2 free) | pad u8 | span u32 (slots) |
    key u64 | nbytes u64 | payload checksum u64 | generation u64 |
    ndim u8 | pad 7 | dtype 32s | codec 16s | shape 8 x u64 |
    header checksum u64 (xxh3-64 of the 168 bytes before it)

The payload starts at a page boundary (the slot after the header), so a record of a
page-multiple payload writes whole pages only. ``generation`` counts puts over the life of the
directory: the oldest block has the lowest, and when two records claim one key (a crash between
freeing a slot and reusing it elsewhere), the newest wins.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import xxhash

from ..block import BlockHash, BlockHeader

SLOT_BYTES = 4096
"""Granularity of the slab file: runs start at multiples of it, payloads start one slot in."""
FORMAT_VERSION = 2
DATA_NAME = f"blocks.v{FORMAT_VERSION}.slab"
"""The slab file's name in the store's directory (the version is in the name, so a directory can
hold files of other format versions, which this one leaves alone)."""
MAGIC = b"TTKVSLOT"
MAX_NDIM = 8
KIND_BLOCK = 1
KIND_FREE = 2

_FIXED = struct.Struct("<8sHBxIQQQQ")  # magic .. generation: 48 B
_LAYOUT = struct.Struct("<B7x32s16s8Q")  # ndim, dtype, codec, shape: 120 B
_LAYOUT_START = _FIXED.size
_CHECKED = _FIXED.size + _LAYOUT.size  # the header checksum covers everything before it
_SUM = struct.Struct("<Q")
HEADER_BYTES = _CHECKED + _SUM.size  # 176
_EMPTY_LAYOUT = bytes(_LAYOUT.size)
_DTYPE_LEN = 32
_CODEC_LEN = 16
_LAYOUT_CACHE_LIMIT = 256


class BadSlot(Exception):
    """A header slot that is not a valid header of this format (the message says why)."""


class SlotHeader(NamedTuple):
    """A parsed header: a block record (``block`` set) or a free run (``block`` None)."""

    span: int  # slots the run takes, header slot included
    key: BlockHash = 0
    generation: int = 0
    block: BlockHeader | None = None


def record_span(nbytes: int) -> int:
    """Slots a block record of ``nbytes`` payload bytes takes: the header slot and the payload."""
    return 1 + -(-nbytes // SLOT_BYTES)


# Layouts (shape, dtype, codec) repeat across blocks of one model: packing and parsing them once
# keeps the per-block header work to one struct call and one short checksum.
_packed_layouts: dict[tuple[tuple[int, ...], str, str], bytes] = {}
_parsed_layouts: dict[bytes, tuple[tuple[int, ...], str, str]] = {}


def pack_block_header(
    buf: bytearray, key: BlockHash, header: BlockHeader, generation: int
) -> None:
    """Write the header of a block record into ``buf[:HEADER_BYTES]``.

    Raises:
        ValueError: The header does not fit the format (too many dimensions, long names).
    """
    layout = _packed_layouts.get((header.shape, header.dtype, header.codec))
    if layout is None:
        layout = _pack_layout(key, header)
    _FIXED.pack_into(
        buf, 0, MAGIC, FORMAT_VERSION, KIND_BLOCK, record_span(header.nbytes), key, header.nbytes,
        header.checksum, generation,
    )  # fmt: skip
    buf[_LAYOUT_START:_CHECKED] = layout
    _SUM.pack_into(buf, _CHECKED, _header_sum(buf))


def pack_free_header(buf: bytearray, span: int) -> None:
    """Write the header of a free run of ``span`` slots into ``buf[:HEADER_BYTES]``."""
    _FIXED.pack_into(buf, 0, MAGIC, FORMAT_VERSION, KIND_FREE, span, 0, 0, 0, 0)
    buf[_LAYOUT_START:_CHECKED] = _EMPTY_LAYOUT
    _SUM.pack_into(buf, _CHECKED, _header_sum(buf))


def parse_header(buf: bytes | bytearray | memoryview) -> SlotHeader:
    """The header at the start of ``buf`` (at least ``HEADER_BYTES`` long).

    Raises:
        BadSlot: Not a header this format wrote, or damaged.
    """
    view = memoryview(buf)
    if view.nbytes < HEADER_BYTES:
        raise BadSlot(f"truncated header ({view.nbytes} of {HEADER_BYTES} B)")
    magic, version, kind, span, key, nbytes, payload_sum, generation = _FIXED.unpack_from(view)
    if magic != MAGIC:
        raise BadSlot("bad magic")
    if _SUM.unpack_from(view, _CHECKED)[0] != _header_sum(view):
        raise BadSlot("header checksum mismatch")
    if version != FORMAT_VERSION:
        raise BadSlot(f"format version {version}, this reads {FORMAT_VERSION}")
    if kind == KIND_FREE:
        if span < 1:
            raise BadSlot("inconsistent header (empty free run)")
        return SlotHeader(span)
    if kind != KIND_BLOCK or span != record_span(nbytes):
        raise BadSlot("inconsistent header")
    raw_layout = bytes(view[_LAYOUT_START:_CHECKED])
    layout = _parsed_layouts.get(raw_layout)
    if layout is None:
        layout = _parse_layout(raw_layout)
    shape, dtype, codec = layout
    header = BlockHeader(shape, dtype, nbytes, payload_sum, codec)
    return SlotHeader(span, key, generation, header)


def _header_sum(buf: bytearray | memoryview) -> int:
    """xxh3-64 of the header bytes before the header checksum (``tiers.block.checksum``'s hash)."""
    return xxhash.xxh3_64_intdigest(memoryview(buf)[:_CHECKED])


def _pack_layout(key: BlockHash, header: BlockHeader) -> bytes:
    ndim = len(header.shape)
    if ndim > MAX_NDIM:
        raise ValueError(f"block {key:#018x}: {ndim} dimensions, the disk format holds {MAX_NDIM}")
    dtype = header.dtype.encode("ascii")
    codec = header.codec.encode("ascii")
    if len(dtype) > _DTYPE_LEN or len(codec) > _CODEC_LEN:
        raise ValueError(f"block {key:#018x}: dtype or codec name too long for the disk format")
    layout = _LAYOUT.pack(ndim, dtype, codec, *header.shape, *(0,) * (MAX_NDIM - ndim))
    if len(_packed_layouts) >= _LAYOUT_CACHE_LIMIT:
        _packed_layouts.clear()
    _packed_layouts[(header.shape, header.dtype, header.codec)] = layout
    return layout


def _parse_layout(raw: bytes) -> tuple[tuple[int, ...], str, str]:
    ndim, dtype_b, codec_b, *shape = _LAYOUT.unpack(raw)
    if ndim > MAX_NDIM or any(shape[ndim:]):
        raise BadSlot("inconsistent header")
    try:
        dtype = dtype_b.rstrip(b"\0").decode("ascii")
        codec = codec_b.rstrip(b"\0").decode("ascii")
    except UnicodeDecodeError as exc:
        raise BadSlot("undecodable dtype or codec") from exc
    layout = (tuple(shape[:ndim]), dtype, codec)
    if len(_parsed_layouts) >= _LAYOUT_CACHE_LIMIT:
        _parsed_layouts.clear()
    _parsed_layouts[raw] = layout
    return layout
