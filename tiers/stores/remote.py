"""The remote tier: KV blocks held in a memory server's RAM, reached over ZeroMQ.

:class:`RemoteStore` is the client of a :mod:`~tiertop.tiers.memserver` (``tiertop memserver``):
real disaggregated memory over one DEALER socket. Puts and gets wait for their answer; deletes are
pipelined (sent without waiting: the server answers one connection's requests in order, so a later
put of the same key lands after them). Payloads are sent and received without copies.

Failure handling (never hangs the caller, never hands back wrong bytes):

- Every request has a deadline (``timeout_s``). A request that gets no reply marks the tier
  ``down`` (:meth:`set_medium_health`), drops the socket (requests queued on it and late replies
  go with it) and raises :class:`StoreUnavailable`: the hierarchy turns a failed get into a miss,
  and a failed put leaves the tier unchanged (for a re-put, the base class has already dropped
  the old copy).
- While down, operations fail at once until a back-off interval has passed (doubling from
  ``retry_interval_s`` to ``max_retry_interval_s``); then the next operation (or
  :meth:`refresh_health`) sends one cheap ping with the short ``probe_timeout_s``. When it is
  answered the tier is ``ok`` again.
- Every reply carries the server's *epoch*; when it changes the server restarted and lost every
  block, so the store forgets its resident set (:attr:`restarts`, :attr:`blocks_lost`).
- Replies are matched by request id; a reply to an earlier, timed-out request is dropped.
- A put whose reply was lost may still have landed, and a delete or clear asked while the server is
  unreachable has not: both are remembered and sent when the server answers again, before anything
  else, so the server never keeps blocks the store does not count. Deletes and clears therefore
  succeed locally even while the tier is down.

Integrity: the header checksum covers the raw payload. With codec ``raw`` the payload crosses the
wire untouched and the base class checks that checksum on every get (``verify_on_get``). With any
other codec the server also keeps a checksum of the *encoded* bytes, which the store checks before
decoding, and the stored header's checksum is over what decoding gives back: for lossless codecs
the original checksum, for ``fp16`` the checksum of the rounded float32 data, computed at put time.
So a lossy block comes back with a header describing the rounded data (its checksum differs from
the original block's) and is still verified end to end; :meth:`describe` says the tier is lossy.

Not thread-safe: use one store per thread (a ZeroMQ socket belongs to one thread).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import re
import secrets
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import TracebackType
from typing import IO, Any, NamedTuple

import msgspec
import numpy as np
import zmq

from ..block import Block, BlockHash, BlockHeader, checksum
from ..codecs import Codec, CodecError
from ..codecs import codec as get_codec
from ..errors import StoreFull, StoreUnavailable
from ..health import Health
from ..memserver import (
    HEAD_TAIL,
    INFO_DECODER,
    META_DECODER,
    META_ENCODER,
    OP_CLEAR,
    OP_CONTAINS,
    OP_DELETE,
    OP_GET,
    OP_PING,
    OP_PUT,
    OP_STATS,
    PROTOCOL_VERSION,
    ST_ERROR,
    ST_FULL,
    ST_MISSING,
    ST_OK,
    ServerInfo,
    WireMeta,
    from_u64,
    recv_frames,
    send_frames,
    split_head,
    u64,
)
from ..store import Buffer, TierStore, copy_into
from ..units import format_bytes, parse_size

__all__ = [
    "MemServerProcess",
    "RemoteError",
    "RemoteStore",
    "RequestLost",
    "spawn_memserver",
]

_U64_MASK = (1 << 64) - 1
_NOBLOCK = int(zmq.NOBLOCK)
_MAX_UNACKED = 256  # pipelined deletes in flight before waiting for their answers


class RemoteError(StoreUnavailable):
    """The memory server refused a request as malformed (a protocol bug); nothing changed."""


class RequestLost(StoreUnavailable):
    """A request was sent but no reply came in time (it may or may not have been applied)."""


class _Reply(NamedTuple):
    status: bytes
    frames: list[zmq.Frame]  # [head, body] + [payload] for a get hit

    @property
    def body(self) -> zmq.Frame:
        return self.frames[1]


def _nbytes(data: Any) -> int:
    return memoryview(data).nbytes


class RemoteStore(TierStore):
    """A tier held in a memory server's RAM.

    Args:
        name: the tier's name.
        address: the memory server's ZeroMQ endpoint, e.g. ``tcp://127.0.0.1:5600``.
        capacity_bytes: raw bytes this tier may hold; None takes the server's capacity (the
            server must then answer now, or :class:`StoreUnavailable` is raised).
        codec: how payloads cross the wire and sit on the server (see :mod:`..codecs`):
            ``raw`` (default), ``zstd``, ``lz4``, ``fp16``, ``fp16+zstd``, ``fp16+lz4``.
        timeout_s: deadline of every request.
        probe_timeout_s: deadline of the ping that checks whether a down server is back
            (default: the smaller of ``timeout_s`` and 0.1 s).
        retry_interval_s: how long a down tier fails at once before pinging again; doubles on
            each failed ping up to ``max_retry_interval_s``.
        max_retry_interval_s: the longest back-off.
        context: the ZeroMQ context (default: the process-wide one).
    """

    kind = "remote"
    verify_on_get = True

    def __init__(
        self,
        name: str,
        address: str,
        capacity_bytes: int | None = None,
        *,
        codec: str = "raw",
        timeout_s: float = 0.5,
        probe_timeout_s: float | None = None,
        retry_interval_s: float = 0.25,
        max_retry_interval_s: float = 2.0,
        context: zmq.Context[Any] | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if retry_interval_s <= 0 or max_retry_interval_s < retry_interval_s:
            raise ValueError("need 0 < retry_interval_s <= max_retry_interval_s")
        self._codec: Codec = get_codec(codec)
        super().__init__(name, 0 if capacity_bytes is None else capacity_bytes)
        self.address = address
        self.timeout_s = float(timeout_s)
        self.probe_timeout_s = float(
            min(timeout_s, 0.1) if probe_timeout_s is None else probe_timeout_s
        )
        self.retry_interval_s = float(retry_interval_s)
        self.max_retry_interval_s = float(max_retry_interval_s)
        self._ctx: zmq.Context[Any] = context if context is not None else zmq.Context.instance()
        self._sock: zmq.Socket[Any] | None = None
        self._rcvtimeo_ms = -1
        self._rids = itertools.count(secrets.randbits(48))
        self._epoch: int | None = None
        self._retry_at = 0.0
        self._backoff = self.retry_interval_s
        self._pending_deletes: set[BlockHash] = set()
        self._unacked: dict[bytes, BlockHash] = {}  # pipelined deletes by request id
        self._pending_clear = False
        self._closed = False
        #: The server's identity and counters as of the last ping (None until it answered).
        self.server: ServerInfo | None = None
        #: Server restarts noticed (epoch changes), and the blocks they took with them.
        self.restarts = 0
        self.blocks_lost = 0
        #: Replies dropped because they answered an earlier request that had timed out.
        self.stale_replies = 0
        try:
            self._socket()
        except zmq.ZMQError as exc:
            raise ValueError(
                f"tier {name!r}: bad memory server address {address!r}: {exc}"
            ) from exc
        try:
            self._probe(self.timeout_s)  # a first connection may take longer than a ping
        except StoreUnavailable:
            if capacity_bytes is None:
                self.close()
                raise StoreUnavailable(
                    f"tier {name!r}: memory server {address} did not answer, and no capacity "
                    "was given to start without it"
                ) from None
        if capacity_bytes is None and self.server is not None:
            self._capacity = self.server.capacity

    # ------------------------------------------------------------------ TierStore

    def _put(self, block: Block) -> None:
        header = block.header
        source = block.payload
        if isinstance(source, np.ndarray) and not source.flags.c_contiguous:
            source = np.ascontiguousarray(source)
        size = _nbytes(source)
        if size != header.nbytes:
            raise ValueError(
                f"block {block.key:#018x}: payload has {size} B, header says {header.nbytes} B"
            )
        encoded = self._codec.encode(source, header.dtype, raw_checksum=header.checksum)
        meta = WireMeta(
            shape=header.shape,
            dtype=header.dtype,
            nbytes=header.nbytes,
            checksum=encoded.checksum,
            codec=encoded.codec,
            wire_checksum=encoded.wire_checksum,
            block_codec=header.codec,
        )
        payload = memoryview(encoded.data).cast("B")  # type: ignore[arg-type]  # ndarray too
        try:
            reply = self._request(OP_PUT, block.key, (META_ENCODER.encode(meta), payload))
        except RequestLost:
            self._pending_deletes.add(block.key)  # it may have landed: make sure it goes
            raise
        if reply.status == ST_FULL:
            raise StoreFull(f"tier {self.name!r}: {_text(reply.body)}")
        self._check_ok(reply, "put")

    def _get(self, key: BlockHash, out: Buffer | None) -> Block | None:
        try:
            return self._fetch(key, out)
        except StoreUnavailable:  # the base class counts failed puts, not failed gets
            self.stats.errors += 1
            raise

    def _fetch(self, key: BlockHash, out: Buffer | None) -> Block | None:
        reply = self._request(OP_GET, key)
        if reply.status == ST_MISSING:
            return None
        self._check_ok(reply, "get")
        if len(reply.frames) != 3:
            raise self._protocol_error(f"get reply has {len(reply.frames)} frames, expected 3")
        try:
            meta = META_DECODER.decode(reply.body.buffer)
        except msgspec.MsgspecError:  # undecodable metadata: treat the block as corrupt
            return _unverifiable(key, BlockHeader((0,), "uint8", 0, checksum(b"")))
        header = BlockHeader(meta.shape, meta.dtype, meta.nbytes, meta.checksum, meta.block_codec)
        data = reply.frames[2].buffer
        if meta.codec == "raw":
            return Block(key, header, data if out is None else copy_into(out, data))
        # The base class checks ``header.checksum`` over what we return; the encoded bytes are
        # checked here first so that a damaged payload is never fed to a decoder.
        if checksum(data) != meta.wire_checksum:
            return _unverifiable(key, header)
        try:
            decoded = get_codec(meta.codec).decode(data, meta.dtype, meta.nbytes)
        except CodecError:
            return _unverifiable(key, header)
        return Block(key, header, decoded if out is None else copy_into(out, decoded))

    def _delete(self, key: BlockHash) -> None:
        # Deletes are pipelined: sent without waiting for the answer. The server handles one
        # connection's requests in order, so a later put of the same key lands after it; the
        # answers are collected by later requests, and deletes still unanswered when the server
        # goes away are sent again when it is back.
        try:
            self._ensure_up()
            self._send_delete(key)
        except StoreUnavailable:
            self._pending_deletes.add(key)  # sent once the server answers again
        if key not in self._sizes:
            # The reply showed a restarted server and the resident set was dropped; the base
            # class forgets ``key`` right after this returns, so give it something to forget.
            self._sizes[key] = 0

    def _clear(self) -> None:
        try:
            reply = self._request(OP_CLEAR, 0)
        except RemoteError:
            raise
        except StoreUnavailable:
            self._pending_clear = True  # sent once the server answers again
            self._pending_deletes.clear()
        else:
            self._check_ok(reply, "clear")

    def describe(self) -> str:
        server = self.server
        where = f"memory server {self.address}"
        if server is not None:
            where += f" (pid {server.pid}, {format_bytes(server.capacity)})"
        else:
            where += " (not reached yet)"
        text = f"remote: {where}, codec {self._codec.name}"
        if not self._codec.lossless:
            text += " (lossy: float32 kept as float16, blocks come back rounded)"
        if self._medium_health is Health.DOWN:
            text += f"; down: {self._medium_reason}"
        return text

    def max_capacity(self) -> int | None:
        # Raw bytes cross unchanged, so the server's capacity is the limit; with a codec the
        # raw bytes that fit depend on how well the data compresses.
        if self.server is not None and self._codec.name == "raw":
            return self.server.capacity
        return None

    def close(self) -> None:
        if self._unacked and self._sock is not None and not self._closed:
            with contextlib.suppress(StoreUnavailable):  # let pipelined deletes reach the server
                self._exchange(OP_PING, 0, (), self.probe_timeout_s)
        self._closed = True
        self._drop_socket()

    # ------------------------------------------------------------------ public extras

    @property
    def codec(self) -> Codec:
        return self._codec

    @property
    def epoch(self) -> int | None:
        """The server's epoch as last seen (None before it first answered)."""
        return self._epoch

    def ping(self) -> float:
        """Round-trip time of a ping in seconds; raises :class:`StoreUnavailable`."""
        started = time.perf_counter()
        if self._medium_health is Health.DOWN:
            self._ensure_up()  # pings, or fails at once within the back-off interval
        else:
            self._probe(self.timeout_s)  # no stricter than any other request while up
        return time.perf_counter() - started

    def refresh_health(self) -> Health:
        """Check the server now (a ping, at most once per back-off interval while down)."""
        with contextlib.suppress(StoreUnavailable):
            self.ping()
        return self.health

    def server_stats(self) -> ServerInfo:
        """The server's counters; raises :class:`StoreUnavailable`."""
        reply = self._request(OP_STATS, 0)
        self._check_ok(reply, "stats")
        self.server = self._server_info(reply)
        return self.server

    def server_contains(self, key: BlockHash) -> bool:
        """Whether the server holds ``key`` (asks it); raises :class:`StoreUnavailable`."""
        reply = self._request(OP_CONTAINS, key)
        if reply.status == ST_MISSING:
            return False
        self._check_ok(reply, "contains")
        return True

    # ------------------------------------------------------------------ transport

    def _socket(self) -> zmq.Socket[Any]:
        if self._sock is None:
            sock = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self.address)
            self._sock = sock
            self._rcvtimeo_ms = -1
        return self._sock

    def _drop_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def _fail(self, reason: str, error: type[StoreUnavailable] = StoreUnavailable) -> Exception:
        """Mark the server unreachable; returns the exception for the caller to raise."""
        self._drop_socket()
        self._pending_deletes.update(self._unacked.values())  # they may not have arrived
        self._unacked.clear()
        if self._medium_health is Health.DOWN:
            self._backoff = min(self._backoff * 2, self.max_retry_interval_s)
        else:
            self._backoff = self.retry_interval_s
        self._retry_at = time.monotonic() + self._backoff
        self.set_medium_health(Health.DOWN, reason)
        return error(f"tier {self.name!r}: {reason}")

    def _ensure_up(self) -> None:
        if self._closed:
            raise StoreUnavailable(f"tier {self.name!r} is closed")
        if self._medium_health is not Health.DOWN:
            return
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            raise StoreUnavailable(
                f"tier {self.name!r} is down ({self._medium_reason}); next try in {wait:.2f} s"
            )
        self._probe()

    def _probe(self, timeout_s: float | None = None) -> None:
        """Ping the server; on an answer, send what is pending and report the tier ok."""
        if self._closed:
            raise StoreUnavailable(f"tier {self.name!r} is closed")
        reply = self._exchange(OP_PING, 0, (), timeout_s or self.probe_timeout_s)
        self._check_ok(reply, "ping")
        self.server = self._server_info(reply)
        if self._pending_clear:
            self._check_ok(self._exchange(OP_CLEAR, 0, (), self.timeout_s), "clear")
            self._pending_clear = False
            self._pending_deletes.clear()
        for key in list(self._pending_deletes):
            if key not in self._sizes:  # put again since: the server copy is the live one
                self._send_delete(key)
            self._pending_deletes.discard(key)
        self._backoff = self.retry_interval_s
        if self._medium_health is Health.DOWN:
            self.set_medium_health(Health.OK, f"memory server {self.address} answers again")

    def _request(
        self, op: bytes, key: BlockHash, extra: Sequence[bytes | memoryview] = ()
    ) -> _Reply:
        self._ensure_up()
        return self._exchange(op, key, extra, self.timeout_s)

    def _send(
        self, op: bytes, key: BlockHash, extra: Sequence[bytes | memoryview] = ()
    ) -> tuple[zmq.Socket[Any], bytes]:
        """Send one request without waiting; returns the socket and the request id."""
        rid = u64(next(self._rids) & _U64_MASK)
        try:
            sock = self._socket()
            send_frames(sock, [op + rid + u64(key), *extra], _NOBLOCK)
        except zmq.Again:
            raise self._fail(f"memory server {self.address}: send queue full") from None
        except zmq.ZMQError as exc:  # e.g. the context was terminated
            raise self._fail(f"memory server {self.address}: {exc}") from exc
        sent = len(op) + HEAD_TAIL
        for frame in extra:
            sent += _nbytes(frame)
        self.stats.wire_bytes_in += sent
        return sock, rid

    def _send_delete(self, key: BlockHash) -> None:
        if len(self._unacked) >= _MAX_UNACKED:  # the answer to a ping follows all of theirs
            self._check_ok(self._exchange(OP_PING, 0, (), self.timeout_s), "ping")
        rid = self._send(OP_DELETE, key)[1]
        self._unacked[rid] = key

    def _exchange(
        self,
        op: bytes,
        key: BlockHash,
        extra: Sequence[bytes | memoryview],
        timeout_s: float,
    ) -> _Reply:
        """Send one request and wait for its reply (by request id) until the deadline."""
        sock, rid = self._send(op, key, extra)
        stats = self.stats
        deadline = time.monotonic() + timeout_s
        wait_ms = max(1, math.ceil(timeout_s * 1000))
        while True:
            # A receive timeout on the socket, not a poll: one system call less per request.
            if wait_ms != self._rcvtimeo_ms:
                sock.setsockopt(zmq.RCVTIMEO, wait_ms)
                self._rcvtimeo_ms = wait_ms
            try:
                frames = recv_frames(sock)
            except zmq.Again:
                raise self._timed_out(op, timeout_s) from None
            except zmq.ZMQError as exc:
                raise self._fail(f"memory server {self.address}: {exc}", RequestLost) from exc
            received = 0
            for frame in frames:
                received += len(frame)
            stats.wire_bytes_out += received
            wait_ms = math.ceil((deadline - time.monotonic()) * 1000)
            head = split_head(frames[0].bytes) if len(frames) >= 2 else None
            if head is not None and head[1] == rid:
                self._note_epoch(from_u64(head[2]))
                return _Reply(head[0], frames)
            if head is None or self._unacked.pop(head[1], None) is None:
                self.stale_replies += 1  # the answer to a request we gave up on
            else:  # the answer to a pipelined delete
                self._note_epoch(from_u64(head[2]))
                if head[0] not in (ST_OK, ST_MISSING):
                    stats.errors += 1  # a refused delete: a protocol bug, keep going
            if wait_ms <= 0:
                raise self._timed_out(op, timeout_s)

    def _timed_out(self, op: bytes, timeout_s: float) -> Exception:
        return self._fail(
            f"memory server {self.address} did not answer {op.decode()} within {timeout_s:g} s",
            RequestLost,
        )

    def _note_epoch(self, epoch: int) -> None:
        if self._epoch == epoch:
            return
        previous, self._epoch = self._epoch, epoch
        if previous is None:
            return
        lost = len(self._sizes)
        self.restarts += 1
        self.blocks_lost += lost
        self._reset_resident()
        self._pending_deletes.clear()
        self._unacked.clear()
        self._pending_clear = False
        self.set_medium_health(
            Health.OK,
            f"memory server {self.address} restarted (epoch {epoch:#018x}): {lost} blocks lost",
        )

    def _reset_resident(self) -> None:
        """Forget every block (the server lost them) without touching the medium."""
        self._sizes.clear()
        self._used = 0

    def _server_info(self, reply: _Reply) -> ServerInfo:
        try:
            info = INFO_DECODER.decode(reply.body.buffer)
        except msgspec.MsgspecError as exc:
            raise self._protocol_error(f"unreadable server info: {exc}") from exc
        if info.version != PROTOCOL_VERSION:
            raise self._protocol_error(
                f"speaks protocol {info.version}, this client {PROTOCOL_VERSION}"
            )
        return info

    def _check_ok(self, reply: _Reply, what: str) -> None:
        status = reply.status
        if status == ST_OK:
            return
        if status == ST_ERROR:
            raise self._protocol_error(f"server refused {what}: {_text(reply.body)}")
        raise self._protocol_error(f"unexpected {what} reply status {status[:32]!r}")

    def _protocol_error(self, message: str) -> RemoteError:
        return RemoteError(f"tier {self.name!r}: memory server {self.address}: {message}")


def _text(frame: zmq.Frame) -> str:
    return frame.bytes.decode("utf-8", "replace")


def _unverifiable(key: BlockHash, header: BlockHeader) -> Block:
    """A block that fails ``verify()``: hands a damaged payload to the base class's corrupt-block
    path (count, delete, forget, raise BlockCorrupt) instead of decoding it."""
    if header.checksum == checksum(b""):
        header = BlockHeader(
            header.shape, header.dtype, header.nbytes, ~header.checksum & _U64_MASK
        )
    return Block(key, header, b"")


# ---------------------------------------------------------------------- local server process

_READY = re.compile(r"listening on (\S+)")


class MemServerProcess:
    """A memory server running as a child process (see :func:`spawn_memserver`)."""

    def __init__(
        self, process: subprocess.Popen[bytes], address: str, capacity: int, stderr: IO[bytes]
    ) -> None:
        self.process = process
        self.address = address
        self.capacity = capacity
        self._stderr = stderr

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._release()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL: the server dies at once, taking its blocks with it."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._release()

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")

    def _release(self) -> None:
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> MemServerProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.process.returncode}"
        return f"MemServerProcess(pid={self.pid}, address={self.address!r}, {state})"


def spawn_memserver(
    capacity: int | str = "64MiB",
    bind: str = "tcp://127.0.0.1:0",
    *,
    startup_timeout_s: float = 15.0,
    exit_with_parent: bool = True,
    python: str | None = None,
) -> MemServerProcess:
    """Start ``tiertop memserver`` as a child process and wait until it listens.

    Args:
        capacity: bytes the server may hold (an int or a size such as ``"256MiB"``).
        bind: endpoint to bind; port 0 picks a free port, and the returned handle's
            ``address`` is the one really bound (read from the server's first line of output).
        startup_timeout_s: how long to wait for the server to listen.
        exit_with_parent: the server exits by itself when this process is gone.
        python: the interpreter to run (default: this one).

    Raises:
        RuntimeError: the server exited or did not report its address in time (its stderr is
            in the message).
    """
    nbytes = parse_size(capacity)
    command = [
        python or sys.executable,
        "-m",
        "tiertop.tiers.memserver_cli",
        "--bind",
        bind,
        "--capacity",
        str(nbytes),
    ]
    if exit_with_parent:
        command += ["--parent-pid", str(os.getpid())]
    stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the server
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr
    )
    assert process.stdout is not None
    line = _read_line(process.stdout, time.monotonic() + startup_timeout_s)
    match = _READY.search(line)
    if match is None:
        handle = MemServerProcess(process, "", nbytes, stderr)
        handle.kill()
        raise RuntimeError(
            f"memory server ({' '.join(command)}) did not start: "
            f"{line.strip() or 'no output'}; stderr: {handle.stderr_text().strip()}"
        )
    return MemServerProcess(process, match.group(1), nbytes, stderr)


def _read_line(stream: IO[bytes], deadline: float) -> str:
    """One line from a pipe, or what came before EOF or the deadline."""
    fd = stream.fileno()
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace")
