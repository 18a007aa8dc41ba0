"""Block codecs: exact round trips for lossless codecs, stated and bounded error for fp16."""

from __future__ import annotations

import numpy as np
import pytest
from tiertop.tiers.block import checksum
from tiertop.tiers.codecs import (
    FP16_MAX,
    FP16_MIN_NORMAL,
    FP16_REL_BOUND,
    KNOWN_CODECS,
    CodecError,
    codec,
    fp16_error,
)

LOSSLESS = ("raw", "zstd", "lz4")


def _kv(seed: int = 0, shape: tuple[int, ...] = (2, 4, 16, 64)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _bytes(data: object) -> bytes:
    return memoryview(data).cast("B").tobytes()  # type: ignore[arg-type]


@pytest.mark.parametrize("name", LOSSLESS)
@pytest.mark.parametrize("dtype", ["float32", "float16", "int8", "uint8"])
def test_lossless_codecs_give_back_the_exact_bytes(name: str, dtype: str) -> None:
    array = (_kv(1) * 40).astype(dtype)
    c = codec(name)
    encoded = c.encode(array, dtype)
    decoded = c.decode(encoded.data, dtype, array.nbytes)
    assert _bytes(decoded) == array.tobytes()
    assert encoded.checksum == checksum(array)
    assert encoded.wire_checksum == checksum(encoded.data)
    assert c.lossless and c.error(array).exact


@pytest.mark.parametrize("name", KNOWN_CODECS)
def test_empty_payload_round_trips(name: str) -> None:
    empty = np.zeros(0, dtype=np.float32)
    c = codec(name)
    encoded = c.encode(empty, "float32")
    assert _bytes(c.decode(encoded.data, "float32", 0)) == b""


def test_raw_does_not_copy() -> None:
    array = _kv()
    encoded = codec("raw").encode(array, "float32")
    assert np.shares_memory(np.frombuffer(encoded.data, dtype=np.uint8), array)
    assert encoded.codec == "raw"


@pytest.mark.parametrize("name", ["zstd", "lz4", "fp16+zstd"])
def test_compressors_shrink_compressible_data(name: str) -> None:
    array = np.zeros((256, 256), dtype=np.float32)
    array[::7] = 1.5
    encoded = codec(name).encode(array, "float32")
    assert memoryview(encoded.data).nbytes < array.nbytes // 8


@pytest.mark.parametrize("name", ["fp16", "fp16+zstd", "fp16+lz4"])
def test_fp16_halves_the_bytes_and_states_its_error(name: str) -> None:
    array = _kv(2)
    c = codec(name)
    assert not c.lossless
    encoded = c.encode(array, "float32")
    if name == "fp16":
        assert memoryview(encoded.data).nbytes == array.nbytes // 2
    decoded = np.frombuffer(c.decode(encoded.data, "float32", array.nbytes), dtype=np.float32)
    assert decoded.shape == (array.size,)
    # The checksum the codec reports is that of what decoding gives back, not of the input.
    assert encoded.checksum == checksum(decoded)
    assert encoded.checksum != checksum(array)
    actual = np.abs(decoded.astype(np.float64) - array.reshape(-1))
    bound = c.error(array)
    assert bound == fp16_error(array)
    assert bound.max_abs == pytest.approx(actual.max())
    assert 0 < bound.max_abs < 4 * 2.0**-11  # |x| < 4 for these normals
    normal = np.abs(array.reshape(-1)) >= FP16_MIN_NORMAL
    rel = actual[normal] / np.abs(array.reshape(-1)[normal])
    assert rel.max() <= FP16_REL_BOUND
    assert bound.max_rel >= rel.max()


def test_fp16_saturates_instead_of_overflowing() -> None:
    array = np.array([1e6, -1e6, np.inf, -np.inf, np.nan, 1.0], dtype=np.float32)
    c = codec("fp16")
    decoded = np.frombuffer(c.decode(c.encode(array, "float32").data, "float32", 24), np.float32)
    assert decoded[0] == FP16_MAX and decoded[1] == -FP16_MAX
    assert decoded[2] == np.inf and decoded[3] == -np.inf
    assert np.isnan(decoded[4]) and decoded[5] == 1.0
    error = fp16_error(array)
    assert error.max_abs == pytest.approx(1e6 - FP16_MAX)
    assert np.isfinite(error.max_rel)


def _numpy_fp16(values: np.ndarray) -> np.ndarray:
    """numpy's own cast, with finite overflow saturated as the codec does."""
    with np.errstate(over="ignore", invalid="ignore"):
        half = values.astype(np.float16)
        finite_overflow = np.isinf(half) & np.isfinite(values)
    half[finite_overflow] = np.copysign(FP16_MAX, values[finite_overflow])
    return half


def test_fp16_conversions_match_numpy_bit_for_bit() -> None:
    c = codec("fp16")
    every_half = np.arange(65536, dtype=np.uint16).view(np.float16)
    decoded = np.frombuffer(c.decode(every_half, "float32", 65536 * 4), dtype=np.float32)
    assert np.array_equal(decoded.view(np.uint32), every_half.astype(np.float32).view(np.uint32))
    exponents = np.arange(256, dtype=np.uint32) << 23
    mantissas = np.array(
        [0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF, 0x2000, 0x3000, 0x7FE000, 0x7FEFFF, 0x7FFFFF],
        dtype=np.uint32,
    )
    edges = (exponents[:, None] | mantissas[None, :]).ravel()
    random = np.random.default_rng(7).integers(0, 2**32, 1 << 20, dtype=np.uint64)
    for bits in (edges, edges | np.uint32(1 << 31), random.astype(np.uint32)):
        values = bits.view(np.float32)
        encoded = np.frombuffer(c.encode(values, "float32").data, dtype=np.uint16)
        assert np.array_equal(encoded, _numpy_fp16(values).view(np.uint16))


def test_fp16_error_counts_values_flushed_to_zero() -> None:
    tiny = np.array([1e-9, 2.0], dtype=np.float32)
    assert fp16_error(tiny).max_rel == pytest.approx(1.0)


@pytest.mark.parametrize(("name", "effective"), [("fp16", "raw"), ("fp16+zstd", "zstd")])
@pytest.mark.parametrize("dtype", ["float16", "int8", "float64"])
def test_fp16_leaves_other_dtypes_untouched(name: str, effective: str, dtype: str) -> None:
    array = (_kv(3) * 10).astype(dtype)
    c = codec(name)
    assert c.for_dtype(dtype).name == effective
    encoded = c.encode(array, dtype)
    assert encoded.codec == effective
    assert _bytes(c.decode(encoded.data, dtype, array.nbytes)) == array.tobytes()
    assert encoded.checksum == checksum(array)
    assert c.error(array).exact


@pytest.mark.parametrize("bad", ["gzip", "fp16+gzip", "zstd+fp16", "zstd+lz4", "fp16+fp16"])
def test_unknown_or_nonsense_codecs_are_refused_with_the_known_list(bad: str) -> None:
    with pytest.raises(CodecError) as info:
        codec(bad)
    for known in KNOWN_CODECS:
        assert known in str(info.value)


def test_codec_names_are_normalised() -> None:
    assert codec(" ZSTD ").name == "zstd"
    assert codec("none").name == "raw"
    assert codec("fp16+lz4").name == "fp16+lz4"


@pytest.mark.parametrize("name", ["zstd", "lz4", "fp16+zstd"])
def test_damaged_or_truncated_data_does_not_decode_silently(name: str) -> None:
    array = _kv(4)
    c = codec(name)
    data = bytearray(_bytes(c.encode(array, "float32").data))
    with pytest.raises(CodecError):
        c.decode(bytes(data[: len(data) // 2]), "float32", array.nbytes)


def test_decode_checks_the_size() -> None:
    array = _kv(5)
    with pytest.raises(CodecError):
        codec("raw").decode(array, "float32", array.nbytes + 4)
    with pytest.raises(CodecError):
        codec("fp16").decode(array.astype(np.float16), "float32", array.nbytes * 2)
