"""Block codecs: how a block's payload is encoded for what crosses the wire (or sits on a medium).

A codec is a chain of stages named ``stage+stage``: at most one lossy *transform* (``fp16``:
float32 values stored as float16, half the bytes) followed by at most one *compressor* (``zstd``,
``lz4``). ``raw`` is the empty chain: the payload's bytes as they are, never copied.

Stages that do not apply to a block's dtype are skipped (``fp16`` only touches native float32;
a float16 or int8 block goes through ``fp16+zstd`` as ``zstd``), so :meth:`Codec.for_dtype` names
what really happened to a block, and that name is what a store records beside it.

Lossless codecs decode to exactly the original bytes. A lossy codec decodes to different bytes;
:meth:`Codec.encode` therefore also returns the checksum of what decoding will give back, so a
store can verify the block it returns end to end, and :meth:`Codec.error` (or :func:`fp16_error`)
states the largest error the codec introduces on a given array.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cache

import lz4.block
import numpy as np
import zstandard

from .block import checksum

Buffer = bytes | bytearray | memoryview | np.ndarray

#: Largest finite float16; the fp16 codec saturates larger finite float32 values to it.
FP16_MAX = 65504.0
#: Relative error bound of float32 -> float16 rounding for values in float16's normal range
#: (|x| >= 2**-14); smaller values lose relative precision and those below 2**-25 become 0.
FP16_REL_BOUND = 2.0**-11
FP16_MIN_NORMAL = 2.0**-14

ZSTD_LEVEL = 1


class CodecError(ValueError):
    """Unknown codec name, or bytes that do not decode to what their header says."""


@dataclass(frozen=True, slots=True)
class Encoded:
    """A payload as encoded for the wire.

    Attributes:
        data: the encoded bytes (for ``raw``, a view of the original payload: no copy).
        codec: the name of the stages that really applied (see :meth:`Codec.for_dtype`).
        checksum: checksum of the bytes that decoding ``data`` gives back: the raw payload's
            checksum for a lossless codec, the checksum of the decoded (rounded) data for a
            lossy one.
        wire_checksum: checksum of ``data`` itself.
    """

    data: Buffer
    codec: str
    checksum: int
    wire_checksum: int


@dataclass(frozen=True, slots=True)
class CodecErrorBound:
    """The largest error a codec introduced on one array (0.0 and 0.0 for lossless codecs).

    ``max_rel`` is taken over nonzero finite inputs; a value flushed to zero counts as 1.0.
    """

    max_abs: float
    max_rel: float

    @property
    def exact(self) -> bool:
        return self.max_abs == 0.0 and self.max_rel == 0.0


def _flat(data: Buffer) -> memoryview:
    return memoryview(data).cast("B")  # type: ignore[arg-type]  # ndarray is a buffer


# ------------------------------------------------------------------------------------ stages


class Stage(ABC):
    """One step of a codec chain."""

    name: str
    lossless: bool = True
    #: A compressor keeps the data's meaning (dtype, size); a transform changes the values.
    compressor: bool = True

    def applies(self, dtype: str) -> bool:
        """Whether this stage does anything to data of ``dtype``."""
        return True

    def transform(self, dtype: str, nbytes: int) -> tuple[str, int]:
        """The dtype and size of the data this stage hands to the next one."""
        return dtype, nbytes

    @abstractmethod
    def encode(self, data: memoryview, dtype: str) -> Buffer:
        """Encode ``data`` (flat bytes of ``dtype``)."""

    @abstractmethod
    def decode(self, data: memoryview, dtype: str, nbytes: int) -> Buffer:
        """Decode back to ``nbytes`` bytes of ``dtype`` (the dtype and size ``encode`` saw)."""


class _Fp16(Stage):
    name = "fp16"
    lossless = False
    compressor = False

    def applies(self, dtype: str) -> bool:
        return dtype == "float32"

    def transform(self, dtype: str, nbytes: int) -> tuple[str, int]:
        return "float16", nbytes // 2

    def encode(self, data: memoryview, dtype: str) -> Buffer:
        return _to_fp16(np.frombuffer(data, dtype=np.float32))

    def decode(self, data: memoryview, dtype: str, nbytes: int) -> Buffer:
        if len(data) * 2 != nbytes:
            raise CodecError(f"fp16 data of {len(data)} B cannot decode to {nbytes} B of float32")
        return _from_fp16(np.frombuffer(data, dtype=np.uint16))


# numpy's own float16 casts convert one element at a time (about 4 ns each, 1 ms per MiB); these
# do the same IEEE conversions with whole-array integer operations, 1.5-2.5x faster. They give
# the same bits as ``astype`` (tests compare them over every float16 and over float32 patterns),
# except that finite float32 values beyond float16's range saturate to +-65504 instead of inf.

_U32 = np.uint32


def _to_fp16(values: np.ndarray) -> np.ndarray:
    """float32 -> float16 (round to nearest even), saturating finite values beyond the range."""
    bits = np.ascontiguousarray(values, dtype=np.float32).reshape(-1).view(_U32)
    absf = bits & _U32(0x7FFFFFFF)
    # Normal float16 range: rebias the exponent, round to nearest even on bit 13.
    out = (absf >> _U32(13)) & _U32(1)
    out += absf
    out += _U32(0xC8000FFF)  # ((15 - 127) << 23) + 0xFFF, modulo 2**32
    out >>= _U32(13)
    small = np.flatnonzero(absf < _U32(0x38800000))
    if small.size:  # float16 subnormals and zeros: a magic add makes the FPU round them
        rounded = absf[small].view(np.float32) + np.float32(0.5)
        out[small] = rounded.view(_U32) - _U32(0x3F000000)
    np.minimum(out, _U32(0x7BFF), out=out)  # saturate (also clears the garbage of huge values)
    special = np.flatnonzero(absf >= _U32(0x7F800000))
    if special.size:  # inf stays inf; NaN keeps the top of its payload and stays NaN
        payload = absf[special]
        half = _U32(0x7C00) + ((payload & _U32(0x7FFFFF)) >> _U32(13))
        half[(payload > _U32(0x7F800000)) & (half == _U32(0x7C00))] += _U32(1)
        out[special] = half
    out |= (bits >> _U32(16)) & _U32(0x8000)
    return out.astype(np.uint16).view(np.float16)


def _from_fp16(half_bits: np.ndarray) -> np.ndarray:
    """float16 (as uint16 bits) -> float32, exactly."""
    wide = half_bits.astype(_U32)
    out = (wide & _U32(0x7FFF)) << _U32(13)
    exponent = out & _U32(0x0F800000)
    out += _U32(0x38000000)  # (127 - 15) << 23
    special = np.flatnonzero(exponent == _U32(0x0F800000))
    if special.size:  # inf and NaN: all-ones exponent
        out[special] += _U32(0x38000000)
    tiny = np.flatnonzero(exponent == 0)
    if tiny.size:  # zeros and subnormals: renormalise through the FPU
        shifted = out[tiny] + _U32(1 << 23)
        out[tiny] = (shifted.view(np.float32) - np.float32(2.0**-14)).view(_U32)
    out |= (wide & _U32(0x8000)) << _U32(16)
    return out.view(np.float32)


class _Zstd(Stage):
    name = "zstd"

    def __init__(self, level: int = ZSTD_LEVEL) -> None:
        self.level = level
        self._local = threading.local()  # zstd contexts are not thread-safe

    def _contexts(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        pair: tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor] | None
        pair = getattr(self._local, "pair", None)
        if pair is None:
            pair = (zstandard.ZstdCompressor(level=self.level), zstandard.ZstdDecompressor())
            self._local.pair = pair
        return pair

    def encode(self, data: memoryview, dtype: str) -> Buffer:
        return self._contexts()[0].compress(data)

    def decode(self, data: memoryview, dtype: str, nbytes: int) -> Buffer:
        try:
            out: bytes = self._contexts()[1].decompress(data, max_output_size=nbytes)
        except zstandard.ZstdError as exc:
            raise CodecError(f"zstd data does not decode: {exc}") from exc
        if len(out) != nbytes:
            raise CodecError(f"zstd data decoded to {len(out)} B, expected {nbytes} B")
        return out


class _Lz4(Stage):
    name = "lz4"

    def encode(self, data: memoryview, dtype: str) -> Buffer:
        if not len(data):
            return b""
        out: bytes = lz4.block.compress(data, store_size=False)
        return out

    def decode(self, data: memoryview, dtype: str, nbytes: int) -> Buffer:
        if nbytes == 0:
            if len(data):
                raise CodecError(f"lz4 data of {len(data)} B for an empty payload")
            return b""
        try:
            out: bytes = lz4.block.decompress(data, uncompressed_size=nbytes)
        except lz4.block.LZ4BlockError as exc:
            raise CodecError(f"lz4 data does not decode: {exc}") from exc
        if len(out) != nbytes:
            raise CodecError(f"lz4 data decoded to {len(out)} B, expected {nbytes} B")
        return out


_STAGES: dict[str, type[Stage]] = {"fp16": _Fp16, "zstd": _Zstd, "lz4": _Lz4}

#: Every name :func:`codec` accepts.
KNOWN_CODECS: tuple[str, ...] = ("raw", "fp16", "zstd", "lz4", "fp16+zstd", "fp16+lz4")


# ------------------------------------------------------------------------------------ codecs


class Codec:
    """A chain of stages applied left to right on encode, right to left on decode."""

    def __init__(self, stages: tuple[Stage, ...]) -> None:
        self.stages = stages
        self.name = "+".join(stage.name for stage in stages) or "raw"
        self.lossless = all(stage.lossless for stage in stages)
        self._by_dtype: dict[str, Codec] = {}

    def __repr__(self) -> str:
        return f"codec({self.name!r})"

    def for_dtype(self, dtype: str) -> Codec:
        """This codec without the stages that do nothing to data of ``dtype``."""
        found = self._by_dtype.get(dtype)
        if found is None:
            kept: list[Stage] = []
            stage_dtype = dtype
            for stage in self.stages:
                if stage.applies(stage_dtype):
                    kept.append(stage)
                    stage_dtype = stage.transform(stage_dtype, 0)[0]
            found = self if len(kept) == len(self.stages) else Codec(tuple(kept))
            self._by_dtype[dtype] = found
        return found

    def encode(self, payload: Buffer, dtype: str, raw_checksum: int | None = None) -> Encoded:
        """Encode a payload of ``dtype``.

        Args:
            payload: the block's bytes (any C-contiguous buffer).
            dtype: numpy dtype name of the payload; stages that do not apply are skipped.
            raw_checksum: the payload's checksum when the caller knows it (a block header's),
                saving a pass over the data.
        """
        effective = self.for_dtype(dtype)
        data: Buffer = _flat(payload)
        raw_sum = checksum(data) if raw_checksum is None else raw_checksum
        decoded_sum = raw_sum
        for stage in effective.stages:
            encoded = stage.encode(_flat(data), dtype)
            if not stage.lossless:  # what decoding will give back is this stage's rounding
                nbytes = len(_flat(data))
                decoded_sum = checksum(stage.decode(_flat(encoded), dtype, nbytes))
            dtype = stage.transform(dtype, 0)[0]
            data = encoded
        wire_sum = raw_sum if not effective.stages else checksum(data)
        return Encoded(data, effective.name, decoded_sum, wire_sum)

    def decode(self, data: Buffer, dtype: str, nbytes: int) -> Buffer:
        """Decode bytes this codec's :meth:`encode` made from ``nbytes`` bytes of ``dtype``."""
        effective = self.for_dtype(dtype)
        shapes: list[tuple[str, int]] = []
        for stage in effective.stages:
            shapes.append((dtype, nbytes))
            dtype, nbytes = stage.transform(dtype, nbytes)
        out: Buffer = data
        for stage, (stage_dtype, stage_nbytes) in zip(
            reversed(effective.stages), reversed(shapes), strict=True
        ):
            out = stage.decode(_flat(out), stage_dtype, stage_nbytes)
        if not effective.stages and len(_flat(out)) != nbytes:
            raise CodecError(f"raw data of {len(_flat(out))} B, expected {nbytes} B")
        return out

    def error(self, array: np.ndarray) -> CodecErrorBound:
        """The largest absolute and relative error this codec introduces on ``array``."""
        if self.for_dtype(str(array.dtype)).lossless:
            return CodecErrorBound(0.0, 0.0)
        return fp16_error(array)


def fp16_error(array: np.ndarray) -> CodecErrorBound:
    """The largest absolute and relative error of storing float32 ``array`` as float16.

    Computed exactly, by rounding the array the way the ``fp16`` codec does. For values in
    float16's normal range the relative error is at most :data:`FP16_REL_BOUND` (about 4.9e-4);
    smaller values keep only an absolute precision of about 3e-8 and finite values beyond
    :data:`FP16_MAX` are saturated to it. NaN and infinities are kept and not counted.
    """
    values = np.asarray(array)
    if values.dtype != np.float32:
        return CodecErrorBound(0.0, 0.0)  # the fp16 stage leaves other dtypes untouched
    flat = values.reshape(-1)
    back = _from_fp16(_to_fp16(flat).view(np.uint16))
    finite = np.isfinite(flat)
    if not finite.any():
        return CodecErrorBound(0.0, 0.0)
    orig = flat[finite].astype(np.float64)
    diff = np.abs(back[finite].astype(np.float64) - orig)
    nonzero = orig != 0.0
    max_rel = float((diff[nonzero] / np.abs(orig[nonzero])).max()) if nonzero.any() else 0.0
    return CodecErrorBound(float(diff.max()), max_rel)


@cache
def codec(name: str) -> Codec:
    """The codec called ``name`` (e.g. ``raw``, ``zstd``, ``fp16+lz4``).

    Raises:
        CodecError: the name is unknown or the chain makes no sense; the message lists the
            known codecs.
    """
    known = ", ".join(KNOWN_CODECS)
    text = name.strip().lower()
    if text in ("", "raw", "none"):
        return Codec(())
    parts = [part.strip() for part in text.split("+")]
    unknown = [part for part in parts if part not in _STAGES]
    if unknown:
        raise CodecError(f"unknown codec {name!r} ({', '.join(unknown)}); known codecs: {known}")
    stages = tuple(_STAGES[part]() for part in parts)
    transforms = [stage for stage in stages if not stage.compressor]
    compressors = [stage for stage in stages if stage.compressor]
    if len(transforms) > 1 or len(compressors) > 1:
        raise CodecError(
            f"codec {name!r}: at most one transform (fp16) and one compressor (zstd, lz4); "
            f"known codecs: {known}"
        )
    if transforms and stages[0] is not transforms[0]:
        raise CodecError(f"codec {name!r}: fp16 must come before the compressor; known: {known}")
    return Codec(stages)
