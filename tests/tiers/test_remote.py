"""The remote tier against a real memory server process on loopback."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import msgspec
import numpy as np
import pytest
import zmq
from tiertop.tiers.block import Block, checksum
from tiertop.tiers.codecs import KNOWN_CODECS, Codec, codec, fp16_error
from tiertop.tiers.errors import BlockCorrupt, StoreFull
from tiertop.tiers.health import Health
from tiertop.tiers.memserver import (
    HEAD_TAIL,
    INFO_DECODER,
    META_ENCODER,
    PROTOCOL_VERSION,
    MemServer,
    WireMeta,
    u64,
)
from tiertop.tiers.stores.remote import MemServerProcess, RemoteStore, spawn_memserver

KIB = 1024
MIB = 1024 * KIB


@pytest.fixture(scope="module")
def server() -> Iterator[MemServerProcess]:
    handle = spawn_memserver(64 * MIB)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def store(server: MemServerProcess) -> Iterator[RemoteStore]:
    tier = RemoteStore("remote", server.address, 32 * MIB, timeout_s=2.0)
    tier.clear()
    try:
        yield tier
    finally:
        tier.clear()
        tier.close()


@pytest.fixture
def dealer(server: MemServerProcess) -> Iterator[zmq.Socket[bytes]]:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 3000)
    sock.connect(server.address)
    try:
        yield sock
    finally:
        sock.close(0)


def kv_block(key: int, nbytes: int = 256 * KIB, seed: int = 0) -> Block:
    values = np.random.default_rng(seed).standard_normal(nbytes // 4).astype(np.float32)
    return Block.from_array(key, values.reshape(2, -1, 64))


# ---------------------------------------------------------------- put / get / delete / clear


@pytest.mark.parametrize("name", ["raw", "zstd", "lz4"])
def test_lossless_codecs_return_the_exact_bytes(server: MemServerProcess, name: str) -> None:
    tier = RemoteStore("remote", server.address, 32 * MIB, codec=name)
    try:
        blocks = [kv_block(100 + i, (64 + 192 * i) * KIB, seed=i) for i in range(4)]
        for block in blocks:
            tier.put(block)
        assert tier.num_blocks == 4
        assert tier.used_bytes == sum(b.header.nbytes for b in blocks)
        for block in blocks:
            got = tier.get(block.key)
            assert got is not None
            assert got.header == block.header
            assert bytes(got.view()) == bytes(block.view())
            assert np.array_equal(got.to_array(), block.to_array())
        assert tier.stats.hits == 4 and tier.stats.bytes_out == tier.stats.bytes_in
        assert f"codec {name}" in tier.describe()
        assert f"pid {server.pid}" in tier.describe()
    finally:
        tier.clear()
        tier.close()


def test_get_into_an_output_buffer(store: RemoteStore) -> None:
    block = kv_block(7)
    store.put(block)
    out = np.empty(block.header.nbytes, dtype=np.uint8)
    got = store.get(7, out=out)
    assert got is not None and got.payload is out
    assert out.tobytes() == bytes(block.view())


def test_wire_bytes_count_what_crosses_the_network(server: MemServerProcess) -> None:
    zeros = Block.from_array(1, np.zeros((512, 256), dtype=np.float32))  # 512 KiB, compressible
    for name in ("raw", "zstd"):
        tier = RemoteStore("remote", server.address, 32 * MIB, codec=name)
        try:
            tier.put(zeros)
            assert tier.get(1) is not None
            stats = tier.stats
            assert stats.bytes_in == stats.bytes_out == zeros.header.nbytes
            if name == "raw":
                assert stats.wire_bytes_in > stats.bytes_in
                assert stats.wire_bytes_out > stats.bytes_out
            else:
                assert stats.wire_bytes_in < stats.bytes_in // 20
                assert stats.wire_bytes_out < stats.bytes_out // 20
        finally:
            tier.clear()
            tier.close()


@pytest.mark.parametrize("name", ["fp16", "fp16+zstd", "fp16+lz4"])
def test_fp16_blocks_come_back_rounded_and_verified(server: MemServerProcess, name: str) -> None:
    tier = RemoteStore("remote", server.address, 32 * MIB, codec=name)
    try:
        block = kv_block(3, 512 * KIB, seed=5)
        tier.put(block)
        got = tier.get(3)
        assert got is not None
        assert got.header.shape == block.header.shape and got.header.dtype == "float32"
        assert got.verify()  # the header describes the rounded data
        assert got.header.checksum != block.header.checksum
        error = np.abs(got.to_array().astype(np.float64) - block.to_array())
        assert error.max() == pytest.approx(fp16_error(block.to_array()).max_abs)
        assert 0 < error.max() < 1e-2
        assert tier.stats.corrupt == 0
        assert tier.stats.wire_bytes_in < 0.6 * block.header.nbytes
        assert "lossy" in tier.describe()
        assert codec(name).lossless is False
    finally:
        tier.clear()
        tier.close()


def test_fp16_tier_keeps_other_dtypes_exact(server: MemServerProcess) -> None:
    tier = RemoteStore("remote", server.address, 32 * MIB, codec="fp16")
    try:
        half = Block.from_array(
            9, np.random.default_rng(1).standard_normal(4096).astype(np.float16)
        )
        tier.put(half)
        got = tier.get(9)
        assert got is not None and got.header == half.header
        assert bytes(got.view()) == bytes(half.view())
    finally:
        tier.clear()
        tier.close()


def test_put_replaces_and_delete_contains_clear(store: RemoteStore) -> None:
    first, second = kv_block(42, seed=1), kv_block(42, seed=2)
    store.put(first)
    store.put(second)
    got = store.get(42)
    assert got is not None and bytes(got.view()) == bytes(second.view())
    assert store.server_stats().used == second.header.nbytes
    assert store.server_contains(42)
    assert store.delete(42)
    assert not store.delete(42)
    assert 42 not in store and not store.server_contains(42)
    assert store.get(42) is None
    for key in range(5):
        store.put(kv_block(key, 64 * KIB, seed=key))
    assert store.server_stats().blocks == 5
    assert store.clear() == 5 * 64 * KIB
    info = store.server_stats()
    assert (info.blocks, info.used) == (0, 0)
    assert store.num_blocks == 0 and store.used_bytes == 0


def test_a_block_missing_on_the_server_is_a_miss(store: RemoteStore) -> None:
    block = kv_block(11)
    store._adopt(11, block.header.nbytes)  # the store believes it holds a block it does not
    assert store.get(11) is None
    assert 11 not in store and store.used_bytes == 0
    assert store.stats.misses == 1


def test_server_capacity_refuses_puts_with_nothing_changed() -> None:
    small = spawn_memserver("1MiB")
    tier = RemoteStore("remote", small.address, 8 * MIB)  # more than the server holds
    try:
        for key in range(4):
            tier.put(kv_block(key, 256 * KIB, seed=key))
        with pytest.raises(StoreFull, match="memory server full"):
            tier.put(kv_block(99, 256 * KIB))
        assert tier.num_blocks == 4 and tier.used_bytes == MIB and 99 not in tier
        info = tier.server_stats()
        assert (info.blocks, info.used, info.capacity, info.rejected) == (4, MIB, MIB, 1)
        assert tier.health is Health.OK and tier.stats.errors == 1
        assert tier.delete(0)
        tier.put(kv_block(99, 256 * KIB))  # fits again once a block is gone
        assert 99 in tier
    finally:
        tier.close()
        small.stop()


@pytest.mark.parametrize("address", ["tcp://", "nonsense", "tcp://127.0.0.1:notaport"])
def test_a_bad_address_is_a_clear_error(address: str) -> None:
    with pytest.raises(ValueError, match="bad memory server address"):
        RemoteStore("remote", address, MIB)


def test_unknown_codec_is_refused(server: MemServerProcess) -> None:
    with pytest.raises(ValueError, match="known codecs"):
        RemoteStore("remote", server.address, MIB, codec="gzip")


def test_capacity_defaults_to_the_servers(server: MemServerProcess) -> None:
    tier = RemoteStore("remote", server.address)
    compressed = RemoteStore("zstd", server.address, codec="zstd")
    try:
        assert tier.capacity_bytes == 64 * MIB == tier.max_capacity()
        assert compressed.capacity_bytes == 64 * MIB and compressed.max_capacity() is None
        with pytest.raises(ValueError):
            tier.set_capacity(128 * MIB)
    finally:
        tier.close()
        compressed.close()


# ---------------------------------------------------------------- integrity


def _raw_put(sock: zmq.Socket[bytes], key: int, meta: WireMeta, payload: bytes) -> bytes:
    sock.send_multipart([b"put" + u64(1) + u64(key), META_ENCODER.encode(meta), payload])
    reply = sock.recv_multipart()
    return reply[0][:-HEAD_TAIL]


@pytest.mark.parametrize("wire", ["raw", "zstd"])
def test_a_block_damaged_on_the_server_is_never_returned(
    store: RemoteStore, dealer: zmq.Socket[bytes], wire: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[str] = []
    real_decode = Codec.decode

    def spy(self: Codec, data: object, dtype: str, nbytes: int) -> object:
        decoded.append(self.name)
        return real_decode(self, data, dtype, nbytes)

    monkeypatch.setattr(Codec, "decode", spy)
    array = np.random.default_rng(3).standard_normal(64 * KIB // 4).astype(np.float32)
    encoded = codec(wire).encode(array, "float32")
    damaged = bytearray(memoryview(encoded.data).cast("B"))
    damaged[len(damaged) // 2] ^= 0x55
    meta = WireMeta(
        (array.size,), "float32", array.nbytes, encoded.checksum, wire, encoded.wire_checksum
    )
    assert _raw_put(dealer, 77, meta, bytes(damaged)) == b"ok"
    store._adopt(77, array.nbytes)
    with pytest.raises(BlockCorrupt):
        store.get(77)
    assert store.stats.corrupt == 1 and 77 not in store
    assert not store.server_contains(77)  # removed from the server too
    assert decoded == []  # damaged bytes are caught before any decoder sees them


# ---------------------------------------------------------------- protocol robustness


RID = u64(5)
MALFORMED: list[list[bytes]] = [
    [b"get"],  # no request id, no key
    [b"get" + RID],  # no key
    [RID + u64(1)],  # no op
    [b"steal" + RID + u64(1)],  # unknown op
    [b"\xff" * 100_000 + RID + u64(1)],  # a huge unknown op
    [b"put" + RID + u64(1)],  # no meta, no payload
    [b"put" + RID + u64(1), b"meta"],  # no payload
    [b"get" + RID + u64(1), b"extra"],  # a frame too many
    [b"ping" + RID + u64(0), b"", b""],
    [b"put" + RID + u64(1), b"m" * (65 * 1024), b"payload"],  # meta too large
    [b"", b"", b""],  # a delimiter, then an empty head
]


def test_malformed_requests_get_error_replies_and_the_server_keeps_serving(
    store: RemoteStore, dealer: zmq.Socket[bytes]
) -> None:
    errors_before = store.server_stats().errors
    for frames in MALFORMED:
        dealer.send_multipart(frames)
        reply = dealer.recv_multipart()
        if frames[0] == b"":  # read as a REQ delimiter, so echoed
            assert reply[0] == b""
            reply = reply[1:]
        head, body = reply[0], reply[1:]
        assert head[:-HEAD_TAIL] == b"error", frames[0][:20]
        assert len(body) == 1 and body[0], "an error reply says why"
        if len(frames[0]) > HEAD_TAIL and frames[0][-HEAD_TAIL:-8] == RID:
            assert head[-HEAD_TAIL:-8] == RID  # the request id is echoed when readable
        else:
            assert head[-HEAD_TAIL:-8] == bytes(8)
        assert head[-8:] == u64(store.epoch or 0)
    # a REQ client (its empty delimiter frame is echoed) is served too
    req: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.setsockopt(zmq.RCVTIMEO, 3000)
    req.connect(store.address)
    try:
        req.send_multipart([b"ping" + u64(9) + u64(0)])
        ping_head, ping_body = req.recv_multipart()
        assert ping_head[:-HEAD_TAIL] == b"ok" and ping_head[-HEAD_TAIL:-8] == u64(9)
        assert INFO_DECODER.decode(ping_body).version == PROTOCOL_VERSION
    finally:
        req.close(0)
    block = kv_block(5)
    store.put(block)
    got = store.get(5)
    assert got is not None and bytes(got.view()) == bytes(block.view())
    assert store.server_stats().errors == errors_before + len(MALFORMED)
    assert store.health is Health.OK


def test_replies_to_other_requests_are_dropped() -> None:
    """A reply whose request id is not the one awaited (e.g. the late answer to a request that
    timed out) is dropped; the awaited one is used."""
    server = MemServer("tcp://127.0.0.1:0", 16 * MIB)
    stop = threading.Event()

    def serve_with_decoys() -> None:
        sock = server._sock
        while not stop.is_set():
            try:
                frames = sock.recv_multipart(copy=False)
            except zmq.Again:
                continue
            reply = server.handle(frames)
            head = reply[1]
            assert isinstance(head, bytes)
            decoy = list(reply)
            decoy[1] = head[:-HEAD_TAIL] + u64(0xDEAD) + head[-8:]  # answers another request
            sock.send_multipart(decoy, copy=False)
            sock.send_multipart(reply, copy=False)

    thread = threading.Thread(target=serve_with_decoys, daemon=True)
    thread.start()
    tier = RemoteStore("remote", server.address, 8 * MIB, timeout_s=2.0)
    try:
        block = kv_block(1)
        tier.put(block)
        got = tier.get(1)
        assert got is not None and bytes(got.view()) == bytes(block.view())
        assert tier.stale_replies >= 3  # ping, put, get each had a decoy before them
    finally:
        tier.close()
        stop.set()
        thread.join(5)
        server.close()


def test_wire_meta_round_trips() -> None:
    meta = WireMeta((2, 3), "float32", 24, 2**64 - 1, "fp16+zstd", 5)
    assert msgspec.msgpack.decode(META_ENCODER.encode(meta), type=WireMeta) == meta
    assert meta.block_codec == "raw"


def test_every_known_codec_works_end_to_end(store: RemoteStore, server: MemServerProcess) -> None:
    for name in KNOWN_CODECS:
        tier = RemoteStore("remote", server.address, 8 * MIB, codec=name)
        try:
            block = kv_block(1000, 128 * KIB, seed=9)
            tier.put(block)
            got = tier.get(1000)
            assert got is not None and got.verify()
            assert checksum(got.payload) == got.header.checksum
        finally:
            tier.clear()
            tier.close()
