"""Trace loaders: public LLM serving traces as one stream of :class:`TraceRequest`.

Formats (column and field names as the publishers document them):

``mooncake``
    JSON lines, one request per line: ``timestamp`` (ms since the trace start),
    ``input_length``, ``output_length`` and ``hash_ids`` — one id per ``block_size``-token block
    of the input (512 in the published Mooncake traces; the last id covers a partial block),
    where equal leading ids mean an equal prefix. Optional ``conversation_id``/``session_id``.
    Source: kvcache-ai/Mooncake ``FAST25-release/traces`` and the trace-replay docs of AIPerf and
    Dynamo that read them.
``burstgpt``
    CSV ``Timestamp, Model, Request tokens, Response tokens, Total tokens, Log Type``;
    ``Timestamp`` is seconds from 0:00:00 of the first day (HPMLL/BurstGPT README). Newer
    releases add ``Session ID`` (used as the conversation id) and ``Elapsed time``. Failed
    requests have ``Response tokens`` 0 (kept: they are valid rows).
``azure``
    CSV ``TIMESTAMP, ContextTokens, GeneratedTokens`` (Azure/AzurePublicDataset
    ``AzureLLMInferenceDataset2023.md`` and ``...2024.md``); ``TIMESTAMP`` is a datetime string:
    2023 files look like ``2023-11-16 18:15:46.6805900`` (naive, 7 fractional digits, read as
    UTC), 2024 files like ``2024-05-10 00:00:00.009930+00:00``. Tokens only.
``splitwise``
    The Splitwise paper's traces are the Azure 2023 files above (same columns), read as
    ``azure``; splitwise-sim's generated traces use ``request_id, request_type, application_id,
    arrival_timestamp, batch_size, prompt_size, token_size`` with ``arrival_timestamp`` in
    seconds (Mutinifni/splitwise-sim ``generate_trace.py``). Both variants load with
    ``format="splitwise"``; detection names the second one ``splitwise``.

Token-only formats (all but Mooncake) carry **no reuse information**: nothing says which
requests share a prefix, so replaying them measures capacity and bandwidth, never prefix hits
(:class:`TraceTokens` gives every such request fresh blocks).

Reading is streaming (:class:`TraceReader`), so week-long traces need not fit in memory;
:func:`load_trace` collects a list. Broken input raises :class:`TraceError` naming the file,
line and field; ``skip_bad=True`` skips bad rows instead and counts them.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from .workload import TOKEN_DTYPE, Request, TokenArray

__all__ = [
    "FORMATS",
    "FRESH_KEY_BASE",
    "MOONCAKE_BLOCK_SIZE",
    "Trace",
    "TraceError",
    "TracePlayer",
    "TraceReader",
    "TraceRequest",
    "TraceTokens",
    "detect_format",
    "load_trace",
]

FORMATS: tuple[str, ...] = ("mooncake", "burstgpt", "azure", "splitwise")
#: Tokens per ``hash_ids`` entry in the published Mooncake traces.
MOONCAKE_BLOCK_SIZE = 512

_BURSTGPT = ("Timestamp", "Request tokens", "Response tokens")
_AZURE = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_SPLITWISE_SIM = ("arrival_timestamp", "prompt_size", "token_size")
_BURSTGPT_SESSION = "Session ID"


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One request of a trace.

    Attributes:
        arrival_s: seconds from the first replayed request (after ``speed`` scaling).
        input_tokens: prompt length.
        output_tokens: generated length (0 for BurstGPT's failed requests).
        hash_ids: ids of the input's blocks (Mooncake), None for token-only traces.
        conversation_id: the trace's session/conversation id where it has one.
    """

    arrival_s: float
    input_tokens: int
    output_tokens: int
    hash_ids: list[int] | None = None
    conversation_id: str | None = None


class TraceError(ValueError):
    """A trace file is broken: ``path``, ``line`` (1-based, None for the whole file) and
    ``field`` (None when no one field is at fault) say where."""

    def __init__(self, path: str | Path, line: int | None, field_name: str | None, problem: str):
        where = f"{path}" if line is None else f"{path}:{line}"
        what = f" field {field_name!r}:" if field_name is not None else ""
        super().__init__(f"{where}:{what} {problem}")
        self.path = str(path)
        self.line = line
        self.field = field_name
        self.problem = problem


# --------------------------------------------------------------------------- opening & detection


def _open_text(path: Path) -> TextIO:
    """Text stream of ``path`` (gzip when it ends in .gz); a UTF-8 BOM is dropped."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _stem_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _norm(name: str) -> str:
    return name.replace("\ufeff", "").strip().lower()


def _csv_format(header: Sequence[str]) -> str | None:
    names = {_norm(name) for name in header}
    for fmt, required in (
        ("burstgpt", _BURSTGPT),
        ("azure", _AZURE),
        ("splitwise", _SPLITWISE_SIM),
    ):
        if all(_norm(column) in names for column in required):
            return fmt
    return None


def detect_format(path: str | Path) -> str:
    """The format of ``path`` by extension (``.jsonl``/``.json``/``.ndjson`` → mooncake, also
    under ``.gz``) and, for CSV or unknown extensions, by the header or first character."""
    path = Path(path)
    suffix = _stem_suffix(path)
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "mooncake"
    try:
        with _open_text(path) as stream:
            first = ""
            for line in stream:
                if line.strip():
                    first = line
                    break
    except OSError as error:
        raise TraceError(path, None, None, f"cannot read: {error}") from error
    except UnicodeDecodeError as error:
        raise TraceError(path, None, None, f"not UTF-8 text: {error}") from error
    if not first:
        raise TraceError(path, None, None, "empty file: cannot tell its format")
    if suffix != ".csv" and first.lstrip().startswith("{"):
        return "mooncake"
    header = next(csv.reader([first]))
    fmt = _csv_format(header)
    if fmt is None:
        shown = ", ".join(name.strip() for name in header)
        raise TraceError(
            path,
            1,
            None,
            f"unknown trace header ({shown}); expected BurstGPT ({', '.join(_BURSTGPT)}), "
            f"Azure/Splitwise ({', '.join(_AZURE)}) or splitwise-sim "
            f"({', '.join(_SPLITWISE_SIM)}) columns, or pass format=",
        )
    return fmt


# --------------------------------------------------------------------------- field parsing


@dataclass(slots=True)
class _Row:
    line: int
    time: float  # the trace's own clock, in 1/ticks_per_s seconds (absolute or relative)
    ticks_per_s: int
    time_field: str
    input_tokens: int
    output_tokens: int
    hash_ids: list[int] | None
    conversation_id: str | None


class _Bad(Exception):
    def __init__(self, field_name: str | None, problem: str) -> None:
        super().__init__(problem)
        self.field = field_name
        self.problem = problem


def _number(text: str, name: str) -> float:
    value = text.strip()
    if not value:
        raise _Bad(name, "empty value")
    try:
        number = float(value)
    except ValueError:
        raise _Bad(name, f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise _Bad(name, f"{value!r} is not a finite number")
    return number


def _count(value: Any, name: str) -> int:
    """A token count: a whole number >= 0 (``12`` or ``12.0``; not ``12.5``, ``-1``, ``true``)."""
    if isinstance(value, bool):
        raise _Bad(name, f"{value!r} is not a number")
    if isinstance(value, int):
        number: float = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise _Bad(name, f"{value!r} is not a finite number")
        number = value
    elif isinstance(value, str):
        number = _number(value, name)
    else:
        raise _Bad(name, f"{value!r} is not a number")
    if number < 0:
        raise _Bad(name, f"must be >= 0, got {value!r}")
    if not float(number).is_integer():
        raise _Bad(name, f"must be a whole number of tokens, got {value!r}")
    return int(number)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _datetime_us(text: str, name: str) -> int:
    """Microseconds since the epoch (an int, so differences are exact)."""
    value = text.strip()
    if not value:
        raise _Bad(name, "empty value")
    try:
        stamp = datetime.fromisoformat(value)
    except ValueError:
        raise _Bad(name, f"{value!r} is not a date-time (like 2023-11-16 18:15:46.68)") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return (stamp - _EPOCH) // _MICROSECOND


def _parse_mooncake(
    stream: TextIO, path: Path, block_size: int, check_blocks: bool
) -> Iterator[_Row | TraceError]:
    for number, raw in enumerate(stream, start=1):
        text = raw.strip()
        if not text:
            continue
        try:
            try:
                record = json.loads(text)
            except json.JSONDecodeError as error:
                raise _Bad(None, f"invalid JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(record, dict):
                raise _Bad(None, f"expected a JSON object, got {type(record).__name__}")
            for key in ("timestamp", "input_length", "output_length"):
                if key not in record:
                    raise _Bad(key, "missing")
            stamp = record["timestamp"]
            if isinstance(stamp, bool) or not isinstance(stamp, int | float):
                raise _Bad("timestamp", f"{stamp!r} is not a number (milliseconds)")
            if not math.isfinite(stamp):
                raise _Bad("timestamp", f"{stamp!r} is not a finite number")
            input_tokens = _count(record["input_length"], "input_length")
            output_tokens = _count(record["output_length"], "output_length")
            hash_ids: list[int] | None = None
            if record.get("hash_ids") is not None:
                ids = record["hash_ids"]
                if not isinstance(ids, list) or not all(
                    isinstance(item, int) and not isinstance(item, bool) and item >= 0
                    for item in ids
                ):
                    raise _Bad("hash_ids", "must be a list of non-negative integers")
                if check_blocks:
                    need = -(-input_tokens // block_size)
                    if len(ids) != need:
                        raise _Bad(
                            "hash_ids",
                            f"has {len(ids)} ids but input_length {input_tokens} spans {need} "
                            f"blocks of {block_size} tokens (wrong block_size? "
                            "check_blocks=False accepts it)",
                        )
                hash_ids = ids
            conv = record.get("conversation_id", record.get("session_id"))
            yield _Row(
                number,
                stamp,
                1000,
                "timestamp",
                input_tokens,
                output_tokens,
                hash_ids,
                None if conv is None else str(conv),
            )
        except _Bad as bad:
            yield TraceError(path, number, bad.field, bad.problem)


def _parse_csv(stream: TextIO, path: Path, fmt: str) -> Iterator[_Row | TraceError]:
    reader = csv.reader(stream)
    header: list[str] | None = None
    for row in reader:
        if any(cell.strip() for cell in row):
            header = row
            break
    if header is None:
        raise TraceError(path, None, None, "empty file: no header row")
    header_line = reader.line_num
    index = {_norm(name): i for i, name in enumerate(header)}
    shown = ", ".join(name.strip() for name in header)

    def column(name: str) -> int:
        position = index.get(_norm(name))
        if position is None:
            raise TraceError(
                path, header_line, name, f"missing column for a {fmt} trace (header has: {shown})"
            )
        return position

    session_col: int | None = None
    if fmt == "burstgpt":
        time_name, in_name, out_name = _BURSTGPT
        session_col = index.get(_norm(_BURSTGPT_SESSION))
    elif fmt == "splitwise" and _csv_format(header) == "splitwise":
        time_name, in_name, out_name = _SPLITWISE_SIM
    else:  # azure, or splitwise in the Azure 2023 columns
        time_name, in_name, out_name = _AZURE
    time_col, in_col, out_col = column(time_name), column(in_name), column(out_name)
    is_datetime = time_name == "TIMESTAMP"
    ticks = 1_000_000 if is_datetime else 1
    width = max(time_col, in_col, out_col) + 1
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        try:
            if len(row) < width:
                names = (time_name, in_name, out_name)
                missing = [
                    n
                    for n, c in zip(names, (time_col, in_col, out_col), strict=True)
                    if c >= len(row)
                ]
                raise _Bad(
                    missing[0], f"missing value (row has {len(row)} of {len(header)} columns)"
                )
            time: float = (
                _datetime_us(row[time_col], time_name)
                if is_datetime
                else _number(row[time_col], time_name)
            )
            conv = None
            if session_col is not None and session_col < len(row) and row[session_col].strip():
                conv = row[session_col].strip()
            yield _Row(
                number,
                time,
                ticks,
                time_name,
                _count(row[in_col], in_name),
                _count(row[out_col], out_name),
                None,
                conv,
            )
        except _Bad as bad:
            yield TraceError(path, number, bad.field, bad.problem)


# --------------------------------------------------------------------------- reader


class TraceReader:
    """Streams a trace file as :class:`TraceRequest` s, re-based to start at 0.

    Args:
        path: the file (``.gz`` is decompressed on the fly).
        format: one of :data:`FORMATS`; detected from extension and header when None.
        speed: time scaling: 2.0 replays twice as fast (arrival times halved).
        max_requests: stop after this many requests.
        max_duration_s: stop at the first request arriving at or after this many seconds of
            *replay* time (after ``speed`` scaling).
        start_s: skip the first ``start_s`` seconds of the *trace's own* timeline (measured from
            its first request, before scaling); the first request kept arrives at 0.
        block_size: tokens per ``hash_ids`` entry (Mooncake: 512).
        skip_bad: skip broken rows (counted in :attr:`skipped`, lines in
            :attr:`skipped_lines`) instead of raising :class:`TraceError`.
        check_blocks: require ``len(hash_ids) == ceil(input_length / block_size)``.

    Timestamps must not go backwards (every public trace is sorted); for an unsorted file use
    ``load_trace(..., sort=True)``.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        format: str | None = None,
        speed: float = 1.0,
        max_requests: int | None = None,
        max_duration_s: float | None = None,
        start_s: float = 0.0,
        block_size: int = MOONCAKE_BLOCK_SIZE,
        skip_bad: bool = False,
        check_blocks: bool = True,
    ) -> None:
        self.path = Path(path)
        if format is not None and format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        if not (isinstance(speed, int | float) and math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a finite number > 0, got {speed!r}")
        if max_requests is not None and max_requests < 0:
            raise ValueError(f"max_requests must be >= 0, got {max_requests}")
        if max_duration_s is not None and not max_duration_s >= 0:
            raise ValueError(f"max_duration_s must be >= 0, got {max_duration_s}")
        if not (math.isfinite(start_s) and start_s >= 0):
            raise ValueError(f"start_s must be a finite number >= 0, got {start_s}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if not self.path.is_file():
            raise TraceError(self.path, None, None, "no such file")
        self.format = format if format is not None else detect_format(self.path)
        self.speed = float(speed)
        self.max_requests = max_requests
        self.max_duration_s = max_duration_s
        self.start_s = float(start_s)
        self.block_size = block_size
        self.skip_bad = skip_bad
        self.check_blocks = check_blocks
        #: rows skipped as broken (``skip_bad=True``) during the last iteration
        self.skipped = 0
        #: their line numbers (the first 1000)
        self.skipped_lines: list[int] = []

    def _rows(self, stream: TextIO) -> Iterator[_Row]:
        if self.format == "mooncake":
            parsed = _parse_mooncake(stream, self.path, self.block_size, self.check_blocks)
        else:
            parsed = _parse_csv(stream, self.path, self.format)
        for item in parsed:
            if isinstance(item, TraceError):
                self._bad(item)
                continue
            yield item

    def _bad(self, error: TraceError) -> None:
        if not self.skip_bad:
            raise error
        self.skipped += 1
        if len(self.skipped_lines) < 1000 and error.line is not None:
            self.skipped_lines.append(error.line)

    def __iter__(self) -> Iterator[TraceRequest]:
        self.skipped = 0
        self.skipped_lines = []
        with _open_text(self.path) as stream:
            try:
                yield from self._window(self._rows(stream), ordered=True)
            except UnicodeDecodeError as error:
                raise TraceError(self.path, None, None, f"not UTF-8 text: {error}") from error

    def _window(self, rows: Iterable[_Row], *, ordered: bool) -> Iterator[TraceRequest]:
        if self.max_requests == 0:
            return
        origin: float | None = None
        first_kept: float | None = None
        last = -math.inf
        last_line = 0
        count = 0
        for row in rows:
            if origin is None:
                origin = row.time
            rel = (row.time - origin) / row.ticks_per_s
            if ordered and rel < last:
                self._bad(
                    TraceError(
                        self.path,
                        row.line,
                        row.time_field,
                        f"time goes backwards ({rel:.6f} s after the first request, the row on "
                        f"line {last_line} was at {last:.6f} s); sort the file or load it with "
                        "load_trace(..., sort=True)",
                    )
                )
                continue
            last, last_line = rel, row.line
            if rel < self.start_s:
                continue
            if first_kept is None:
                first_kept = rel
            arrival = (rel - first_kept) / self.speed
            if self.max_duration_s is not None and arrival >= self.max_duration_s:
                return
            yield TraceRequest(
                arrival, row.input_tokens, row.output_tokens, row.hash_ids, row.conversation_id
            )
            count += 1
            if self.max_requests is not None and count >= self.max_requests:
                return

    def read_sorted(self) -> Iterator[TraceRequest]:
        """Like iterating, but reads every row first and sorts by time (stable): for unsorted
        files."""
        self.skipped = 0
        self.skipped_lines = []
        with _open_text(self.path) as stream:
            rows = list(self._rows(stream))
        rows.sort(key=lambda row: row.time)
        yield from self._window(rows, ordered=False)


@dataclass(slots=True)
class Trace:
    """A loaded trace: its requests and how it was read."""

    path: Path
    format: str
    requests: list[TraceRequest]
    speed: float = 1.0
    block_size: int = MOONCAKE_BLOCK_SIZE
    skipped: int = 0
    skipped_lines: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[TraceRequest]:
        return iter(self.requests)

    @property
    def duration_s(self) -> float:
        """Arrival time of the last request (0 for an empty trace)."""
        return self.requests[-1].arrival_s if self.requests else 0.0

    def player(self) -> TracePlayer:
        """A virtual-time player over these requests."""
        return TracePlayer(self.requests)


def load_trace(
    path: str | Path,
    *,
    format: str | None = None,
    speed: float = 1.0,
    max_requests: int | None = None,
    max_duration_s: float | None = None,
    start_s: float = 0.0,
    block_size: int = MOONCAKE_BLOCK_SIZE,
    skip_bad: bool = False,
    check_blocks: bool = True,
    sort: bool = False,
) -> Trace:
    """Read a whole trace into memory (see :class:`TraceReader` for the arguments; ``sort``
    sorts rows by time before windowing, for unsorted files)."""
    reader = TraceReader(
        path,
        format=format,
        speed=speed,
        max_requests=max_requests,
        max_duration_s=max_duration_s,
        start_s=start_s,
        block_size=block_size,
        skip_bad=skip_bad,
        check_blocks=check_blocks,
    )
    requests = list(reader.read_sorted() if sort else reader)
    return Trace(
        reader.path,
        reader.format,
        requests,
        reader.speed,
        block_size,
        reader.skipped,
        list(reader.skipped_lines),
    )


# --------------------------------------------------------------------------- replay helpers


class TracePlayer:
    """The generator's virtual-time API over trace requests (already sorted by arrival).

    ``next_request(now)`` returns the next request whose ``arrival_s <= now`` (None otherwise);
    ``requests_until(t)`` drains every request up to ``t``. Works on a list or a streaming
    :class:`TraceReader`.
    """

    def __init__(self, requests: Iterable[TraceRequest], *, offset_s: float = 0.0) -> None:
        self._source = iter(requests)
        self._offset = offset_s
        self._pending: TraceRequest | None = None
        self._done = False
        self.issued = 0
        self._peek()

    def _peek(self) -> None:
        if self._pending is None and not self._done:
            self._pending = next(self._source, None)
            if self._pending is None:
                self._done = True

    @property
    def next_arrival_s(self) -> float:
        """When the next request arrives (``inf`` once the trace is over)."""
        pending = self._pending
        return math.inf if pending is None else pending.arrival_s + self._offset

    @property
    def exhausted(self) -> bool:
        """True once every request has been handed out."""
        return self._pending is None and self._done

    def next_request(self, now: float = math.inf) -> TraceRequest | None:
        pending = self._pending
        if pending is None or pending.arrival_s + self._offset > now:
            return None
        self._pending = None
        self._peek()
        self.issued += 1
        return pending

    def requests_until(self, t: float) -> list[TraceRequest]:
        out: list[TraceRequest] = []
        while (request := self.next_request(t)) is not None:
            out.append(request)
        return out


_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_FRESH_SALT = 0xD1B54A32D192ED03
#: Block keys handed to token-only trace requests start here, far above any trace's hash ids.
FRESH_KEY_BASE = 1 << 62


def _splitmix(values: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser, vectorised over uint64 (wrapping arithmetic)."""
    z = values.astype(np.uint64, copy=True)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


class TraceTokens:
    """Turns trace requests into token ids (model replay) or block keys (accounting replay).

    Token ids: block ``j`` of a request with ``hash_ids`` is the ``block_size`` tokens that hash
    id ``hash_ids[j]`` always maps to (a pure function of ``seed`` and the id; stable across
    runs, platforms and numpy versions), so requests whose ``hash_ids`` share a prefix get equal
    leading tokens, and the engine's own chained block hashes find that reuse. The last block
    is cut to ``input_tokens``. Blocks without an id (token-only traces, or a Mooncake row with
    fewer ids than blocks) get fresh tokens never seen before.

    Block keys: ``hash_ids`` as they are. A token-only request gets fresh keys
    (``FRESH_KEY_BASE`` upwards), one per ``block_size`` tokens: such traces have **no reuse
    information**, so every block is new and replay at block granularity shows no prefix hits.

    ``block_size`` must be the trace's (512 for Mooncake).
    """

    def __init__(
        self, block_size: int = MOONCAKE_BLOCK_SIZE, vocab_size: int = 50257, seed: int = 0
    ):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if not 2 <= vocab_size < 2**31:
            raise ValueError(f"vocab_size must be in 2..2**31-1, got {vocab_size}")
        self.block_size = block_size
        self.vocab_size = vocab_size
        self.seed = seed
        self._seed_mix = np.uint64((seed * _GOLDEN + 0x632BE59BD9B4E019) & _MASK)
        self._positions = np.arange(block_size, dtype=np.uint64) * np.uint64(_GOLDEN)
        self._fresh_blocks = 0
        self._fresh_keys = 0
        self._conversations: dict[str, int] = {}

    def _block(self, salt: int, block_id: int) -> TokenArray:
        base = _splitmix(np.array([((block_id * _GOLDEN) ^ salt) & _MASK], dtype=np.uint64))
        with np.errstate(over="ignore"):
            mixed = _splitmix(self._positions + base + self._seed_mix)
        return (mixed % np.uint64(self.vocab_size)).astype(TOKEN_DTYPE)

    def block_tokens(self, hash_id: int) -> TokenArray:
        """The ``block_size`` tokens that ``hash_id`` stands for."""
        if hash_id < 0:
            raise ValueError(f"hash ids are non-negative, got {hash_id}")
        return self._block(0, hash_id & _MASK)

    def token_ids(self, request: TraceRequest) -> TokenArray:
        """The request's ``input_tokens`` token ids (see the class docstring)."""
        size = self.block_size
        blocks = -(-request.input_tokens // size)
        ids = request.hash_ids or []
        parts: list[TokenArray] = []
        for index in range(blocks):
            if index < len(ids):
                parts.append(self.block_tokens(ids[index]))
            else:
                self._fresh_blocks += 1
                parts.append(self._block(_FRESH_SALT, self._fresh_blocks))
        if not parts:
            return np.empty(0, dtype=TOKEN_DTYPE)
        return np.concatenate(parts)[: request.input_tokens]

    def block_keys(self, request: TraceRequest) -> list[int]:
        """The request's block keys: ``hash_ids``, or fresh unique keys for token-only rows."""
        if request.hash_ids is not None:
            return list(request.hash_ids)
        blocks = -(-request.input_tokens // self.block_size)
        start = FRESH_KEY_BASE + self._fresh_keys
        self._fresh_keys += blocks
        return list(range(start, start + blocks))

    def to_request(self, request: TraceRequest, request_id: int) -> Request:
        """A :class:`~tiertop.runtime.workload.Request` for the model engine: the whole input is
        the new prompt (reuse shows up as cache hits, not as history), ``max_new_tokens`` is the
        trace's output length (at least 1), ``turn`` is 0 and ``conversation_id`` a small int per
        trace conversation id (-1 when the trace has none). Such requests are open loop: do not
        pass them to ``WorkloadGenerator.complete``."""
        tokens = self.token_ids(request)
        tokens.flags.writeable = False
        conv = -1
        if request.conversation_id is not None:
            conv = self._conversations.setdefault(request.conversation_id, len(self._conversations))
        return Request(
            request_id,
            conv,
            0,
            request.arrival_s,
            tokens,
            len(tokens),
            max(1, request.output_tokens),
        )
