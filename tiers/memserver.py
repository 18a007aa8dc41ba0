"""The memory server: a process that holds KV blocks in its own RAM and serves them over ZeroMQ.

This is the far side of the ``remote`` tier (:mod:`tiertop.tiers.stores.remote`): disaggregated
memory reached over the network, not a label on local memory. One ROUTER socket, one thread, a
dict of payloads bounded by a byte capacity.

Protocol (each item a ZeroMQ message part; ids, keys and epochs are 8 bytes little-endian; ``+``
is byte concatenation, so a request's fixed fields travel in one small frame)::

    request: [op + request id + key] + ([meta, payload] for put)
    reply:   [status + request id + server epoch, body] + ([payload] for a get hit)

``op`` is one of ``put get delete contains clear stats ping`` (ASCII; for ops without a key the
key is 0). ``status`` is ``ok``, ``missing`` (get/delete/contains of an absent key), ``full`` (a
put that does not fit: nothing changed) or ``error`` (a malformed request; ``body`` says why in
UTF-8, and the request id is echoed when it could be read, else 0). ``body`` is the stored
``meta`` for a get hit, a msgpack :class:`ServerInfo` for ``ping``/``stats``, the number of blocks
removed (msgpack) for ``clear``, and empty otherwise. Payloads travel without copies on either
side (ZeroMQ zero-copy frames; a stored payload *is* the received message).

The server keeps ``meta`` (the client's msgpack :class:`WireMeta`) as opaque bytes beside the
payload and returns both on a get; it does not look inside. ``capacity`` bounds the payload bytes
held (metadata, about 60 B per block, comes on top).

The *epoch* is a random 64-bit id drawn at start and carried by every reply: a client that sees it
change knows the server restarted and every block it held is gone. A REQ client works too (the
server echoes an empty delimiter frame). A malformed request gets an ``error`` reply and never
stops the server.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import sys
import time
from collections.abc import Sequence
from typing import Any

import msgspec
import zmq

from .units import format_bytes

PROTOCOL_VERSION = 1

OP_PUT = b"put"
OP_GET = b"get"
OP_DELETE = b"delete"
OP_CONTAINS = b"contains"
OP_CLEAR = b"clear"
OP_STATS = b"stats"
OP_PING = b"ping"
OPS = (OP_PUT, OP_GET, OP_DELETE, OP_CONTAINS, OP_CLEAR, OP_STATS, OP_PING)

ST_OK = b"ok"
ST_MISSING = b"missing"
ST_FULL = b"full"
ST_ERROR = b"error"

#: A head frame ends with two 8-byte fields: request id, then key (request) or epoch (reply).
HEAD_TAIL = 16

MAX_META_BYTES = 64 * 1024
#: Payloads smaller than this are copied out of ZeroMQ's receive buffers (which small messages
#: may share); larger ones are kept as the received message itself, with no copy.
_KEEP_FRAME_BYTES = 64 * 1024

_NO_ID = bytes(8)
_EMPTY = b""


class WireMeta(msgspec.Struct, array_like=True, frozen=True):
    """What a client stores beside a payload (the server keeps it as opaque bytes).

    ``codec`` is the wire codec the client applied; ``checksum`` is over what decoding the
    payload gives back (the raw payload for lossless codecs); ``wire_checksum`` is over the
    payload bytes as stored; ``block_codec`` is the block header's own codec field.
    """

    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    checksum: int
    codec: str
    wire_checksum: int
    block_codec: str = "raw"


class ServerInfo(msgspec.Struct, frozen=True):
    """A memory server's identity and counters (the body of ``ping`` and ``stats`` replies)."""

    version: int
    pid: int
    epoch: int
    address: str
    capacity: int
    used: int
    blocks: int
    started: float
    requests: int = 0
    puts: int = 0
    gets: int = 0
    hits: int = 0
    deletes: int = 0
    rejected: int = 0
    errors: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


INFO_DECODER = msgspec.msgpack.Decoder(ServerInfo)
META_ENCODER = msgspec.msgpack.Encoder()
META_DECODER = msgspec.msgpack.Decoder(WireMeta)
_ENCODER = msgspec.msgpack.Encoder()

Payload = bytes | zmq.Frame


class ServerStopped(BaseException):
    """Raised (from a signal handler) to stop :meth:`MemServer.serve`."""


class _BadRequest(Exception):
    pass


def u64(value: int) -> bytes:
    return value.to_bytes(8, "little")


def from_u64(data: bytes) -> int:
    return int.from_bytes(data, "little")


def split_head(head: bytes) -> tuple[bytes, bytes, bytes] | None:
    """``(word, request id, last field)`` of a head frame, or None if it is too short."""
    if len(head) <= HEAD_TAIL:
        return None
    return head[:-HEAD_TAIL], head[-HEAD_TAIL:-8], head[-8:]


_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)


def send_frames(sock: zmq.Socket[Any], frames: Sequence[Any], flags: int = 0) -> None:
    """Send a multipart message, without copying large frames (leaner than send_multipart)."""
    last = len(frames) - 1
    more = flags | _SNDMORE
    for index, frame in enumerate(frames):
        sock.send(frame, more if index < last else flags, copy=False)


def recv_frames(sock: zmq.Socket[Any]) -> list[zmq.Frame]:
    """Receive a multipart message as zero-copy frames (leaner than recv_multipart)."""
    frame: zmq.Frame = sock.recv(copy=False)
    frames = [frame]
    while frame.more:
        frame = sock.recv(copy=False)
        frames.append(frame)
    return frames


class MemServer:
    """Holds blocks in RAM and answers requests on a ROUTER socket.

    Args:
        bind: ZeroMQ endpoint, e.g. ``tcp://127.0.0.1:5600`` (port 0 or ``*`` picks a free one;
            :attr:`address` is what was bound).
        capacity: most payload bytes held.
        parent_pid: when given, :meth:`serve` returns once that process is gone.
        context: ZeroMQ context (a new one by default).
    """

    def __init__(
        self,
        bind: str,
        capacity: int,
        *,
        parent_pid: int | None = None,
        context: zmq.Context[zmq.Socket[bytes]] | None = None,
    ) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.pid = os.getpid()
        self.epoch = secrets.randbits(64) or 1
        self.parent_pid = parent_pid
        # Our parent's death shows as a change of our parent pid (we get reparented); any other
        # process is checked with signal 0.
        self._parent_is_ppid = parent_pid is not None and parent_pid == os.getppid()
        self._own_context = context is None
        self._ctx = context if context is not None else zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVTIMEO, 500)  # wake up to check the parent process
        try:
            self._sock.bind(bind)
        except zmq.ZMQError:
            self.close()
            raise
        endpoint = self._sock.getsockopt(zmq.LAST_ENDPOINT)
        self.address = endpoint.decode() if isinstance(endpoint, bytes) else str(endpoint)
        self._epoch_bytes = u64(self.epoch)
        self._blocks: dict[int, tuple[bytes, Payload]] = {}
        self.used = 0
        self.started = time.time()
        self.requests = self.puts = self.gets = self.hits = self.deletes = 0
        self.rejected = self.errors = self.bytes_in = self.bytes_out = 0
        self._closed = False

    # ------------------------------------------------------------------ loop

    def serve(self, max_requests: int | None = None) -> str:
        """Answer requests until stopped; returns why it stopped.

        Stops on :class:`ServerStopped`/``KeyboardInterrupt`` (raised by signal handlers; they
        propagate), after ``max_requests`` requests, or when the parent process is gone.
        """
        sock = self._sock
        served = 0
        while max_requests is None or served < max_requests:
            try:
                frames = recv_frames(sock)
            except zmq.Again:
                if self.parent_pid is not None and not self._parent_alive():
                    return f"stopped: parent process {self.parent_pid} is gone"
                continue
            send_frames(sock, self.handle(frames))
            served += 1
        return "stopped"

    def handle(self, frames: Sequence[zmq.Frame]) -> list[Payload]:
        """The reply (routing envelope included) to one request as received by the ROUTER."""
        self.requests += 1
        envelope: list[Payload] = [frames[0]]
        first = 1
        if len(frames) > 1 and len(frames[1]) == 0:  # a REQ client's empty delimiter
            envelope.append(_EMPTY)
            first = 2
        parts = frames[first:]
        rid = _NO_ID
        try:
            head = split_head(parts[0].bytes) if parts else None
            if head is None:
                raise _BadRequest(
                    "malformed request: the first frame must be op + request id (8 B) + key (8 B)"
                )
            rid = head[1]
            reply = self._dispatch(head[0], rid, head[2], parts)
        except _BadRequest as exc:
            self.errors += 1
            reply = [ST_ERROR + rid + self._epoch_bytes, str(exc).encode()]
        except Exception as exc:  # a bug here must not take the server down
            self.errors += 1
            message = f"internal error: {type(exc).__name__}: {exc}"
            reply = [ST_ERROR + rid + self._epoch_bytes, message.encode()]
        return envelope + reply

    def _dispatch(
        self, op: bytes, rid: bytes, key_bytes: bytes, parts: Sequence[zmq.Frame]
    ) -> list[Payload]:
        tail = rid + self._epoch_bytes
        if op == OP_GET:
            if len(parts) != 1:
                raise _BadRequest(f"malformed get request: {len(parts)} frames, expected 1")
            self.gets += 1
            found = self._blocks.get(from_u64(key_bytes))
            if found is None:
                return [ST_MISSING + tail, _EMPTY]
            self.hits += 1
            self.bytes_out += len(found[1])
            return [ST_OK + tail, found[0], found[1]]
        if op == OP_PUT:
            if len(parts) != 3:
                raise _BadRequest(
                    f"malformed put request: {len(parts)} frames, expected 3 (head, meta, payload)"
                )
            return self._put(from_u64(key_bytes), parts[1], parts[2], tail)
        if op not in OPS:
            names = " ".join(o.decode() for o in OPS)
            raise _BadRequest(f"unknown op {op[:32]!r}; known ops: {names}")
        if len(parts) != 1:
            raise _BadRequest(f"malformed {op.decode()} request: {len(parts)} frames, expected 1")
        key = from_u64(key_bytes)
        if op == OP_DELETE:
            removed = self._blocks.pop(key, None)
            if removed is None:
                return [ST_MISSING + tail, _EMPTY]
            self.deletes += 1
            self.used -= len(removed[1])
            return [ST_OK + tail, _EMPTY]
        if op == OP_CONTAINS:
            return [(ST_OK if key in self._blocks else ST_MISSING) + tail, _EMPTY]
        if op == OP_CLEAR:
            count = len(self._blocks)
            self._blocks.clear()
            self.used = 0
            return [ST_OK + tail, _ENCODER.encode(count)]
        return [ST_OK + tail, _ENCODER.encode(self.info())]  # ping, stats

    def _put(self, key: int, meta: zmq.Frame, payload: zmq.Frame, tail: bytes) -> list[Payload]:
        if len(meta) > MAX_META_BYTES:
            raise _BadRequest(f"meta of {len(meta)} B exceeds {MAX_META_BYTES} B")
        size = len(payload)
        old = self._blocks.get(key)
        freed = len(old[1]) if old is not None else 0
        if self.used - freed + size > self.capacity:
            self.rejected += 1
            message = (
                f"memory server full: {size} B does not fit "
                f"({format_bytes(self.used)} of {format_bytes(self.capacity)} used)"
            )
            return [ST_FULL + tail, message.encode()]
        stored: Payload = payload if size >= _KEEP_FRAME_BYTES else payload.bytes
        self._blocks[key] = (meta.bytes, stored)
        self.used += size - freed
        self.puts += 1
        self.bytes_in += size
        return [ST_OK + tail, _EMPTY]

    # ------------------------------------------------------------------ state

    def info(self) -> ServerInfo:
        return ServerInfo(
            version=PROTOCOL_VERSION,
            pid=self.pid,
            epoch=self.epoch,
            address=self.address,
            capacity=self.capacity,
            used=self.used,
            blocks=len(self._blocks),
            started=self.started,
            requests=self.requests,
            puts=self.puts,
            gets=self.gets,
            hits=self.hits,
            deletes=self.deletes,
            rejected=self.rejected,
            errors=self.errors,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
        )

    def _parent_alive(self) -> bool:
        if self.parent_pid is None:
            return True
        if self._parent_is_ppid:
            return os.getppid() == self.parent_pid
        return _alive(self.parent_pid)

    def close(self) -> None:
        if getattr(self, "_closed", False):
            return
        self._closed = True
        self._sock.close(linger=0)
        if self._own_context:
            self._ctx.term()
        self._blocks = {}


def keep_freed_memory() -> bool:
    """Make this process's allocator keep freed payload memory for reuse (glibc only).

    A received payload is a fresh allocation; by default glibc serves large ones with ``mmap``
    and returns them to the OS when freed, so after a delete or clear every new put faults in
    its pages again (256 page faults per MiB, a large share of a put's cost). Keeping freed
    memory (allocations up to 32 MiB from the heap, no trimming) makes the server's footprint
    stay at its high-water mark, which its capacity bounds. Process-wide, and to be called
    before any thread starts: the ``tiertop memserver`` process does, library users should not.
    Returns whether it took effect.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
    # One arena: a per-thread arena (ZeroMQ's I/O thread allocates the payloads) is made of
    # 64 MiB heaps that are unmapped whenever one falls empty, whatever the trim threshold.
    settings = ((m_arena_max, 1), (m_mmap_threshold, 32 << 20), (m_trim_threshold, 2**31 - 1))
    return all(mallopt(option, value) == 1 for option, value in settings)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
