"""Seeded generator of multi-turn conversation requests for the model runtime and the simulator.

A request is one *turn* of a conversation: its context is everything the conversation has said so
far (an optional shared system prompt, every earlier user prompt and every earlier model reply)
followed by a newly drawn user prompt. Equal prefixes therefore recur in three ways, which is what
a tiered KV cache feeds on: a continued conversation extends its previous context exactly, new
conversations that draw the same shared system prompt start with the same tokens, and nothing else
is shared (user prompts and synthetic replies are fresh random tokens).

The stream is driven in *virtual time*. ``next_request(now)`` hands out the next request whose
arrival time is ``<= now`` (or ``None``); ``requests_until(t)`` drains every request up to ``t``.
A simulator calls them with its virtual clock (or with no argument: as fast as possible), a live
runtime with its wall clock since start. Arrivals are a Poisson process of rate ``lambda_rate``.

Closed loop. After the engine serves a request it calls :meth:`WorkloadGenerator.complete` with the
tokens the model really generated; the conversation's next turn then contains that reply. Until
then the conversation is *busy* and is not picked for continuation (a user waits for the answer).
A simulator without a model calls :meth:`WorkloadGenerator.complete_synthetic`, or builds the
generator with ``auto_complete=True`` so every request is completed with a synthetic reply of
``max_new_tokens`` tokens as it is issued.

Determinism. The same parameters and seed give the identical request stream as long as the caller
makes the same sequence of calls (``next_request`` times, completions and their tokens, parameter
changes). Random variates are pre-drawn in numpy batches of *standard* variates (exponential,
normal, uniform) and transformed with the parameters in force when a request is issued, so a
parameter change acts on the very next request without re-drawing or disturbing the stream.

Cost (CPU time on a shared 2-core development box, default lengths, 1000 live conversations):
about 6-7 µs per request with ``auto_complete`` (roughly 140-170k requests/s; 240k/s with
16-token prompts and replies), dominated by drawing and copying token ids and Python overhead.
``context_block_hashes`` with 16-token blocks adds about 10 µs per request (xxh3 per new block).
"""

from __future__ import annotations

import bisect
import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, cast

import numpy as np
import xxhash
from numpy.typing import NDArray
from tiertop.tiers.block import ROOT_HASH, BlockHash, prefix_hashes

__all__ = [
    "LIVE_PARAMS",
    "SET_WORKLOAD_FIELDS",
    "TOKEN_DTYPE",
    "LengthSpec",
    "Request",
    "TokenArray",
    "WorkloadError",
    "WorkloadGenerator",
    "WorkloadParams",
]

#: Token ids are stored as int32 (any GPT-2-class vocabulary fits); ``chain_hash`` hashes them
#: as int64 whatever the input dtype, so block hashes do not depend on this choice.
TOKEN_DTYPE = np.int32
TokenArray = NDArray[np.int32]

LengthKind = Literal["lognormal", "uniform", "fixed"]
_LENGTH_KINDS: tuple[str, ...] = ("lognormal", "uniform", "fixed")


class WorkloadError(ValueError):
    """A workload parameter is invalid; ``param`` names it (e.g. ``"prompt.max"``)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)


def _check_int(name: str, value: object, low: int, what: str = "") -> int:
    if not _is_int(value) or int(cast(int, value)) < low:
        raise WorkloadError(name, f"{name} must be an integer >= {low}{what}, got {value!r}")
    return int(cast(int, value))


def _check_float(name: str, value: object, low: float, high: float, what: str = "") -> float:
    if not _is_number(value) or not low <= float(cast(float, value)) <= high:
        bounds = f">= {low}" if high == math.inf else f"in {low}..{high}"
        raise WorkloadError(name, f"{name} must be a number {bounds}{what}, got {value!r}")
    return float(cast(float, value))


@dataclass(frozen=True, slots=True)
class LengthSpec:
    """A distribution of token counts (prompt or output length), always within ``[min, max]``.

    Kinds:
        ``lognormal``: ``mean`` is the mean of the lognormal before clipping to ``[min, max]``
            and ``sigma`` its shape (the standard deviation of the log); values are rounded to
            the nearest integer and clipped, so a ``max`` close to ``mean`` lowers the realised
            mean.
        ``uniform``: integers uniformly in ``[min, max]``; ``mean`` is ``(min + max) / 2``.
        ``fixed``: always ``mean`` (``min == max == mean``).

    Build one with :meth:`lognormal`, :meth:`uniform`, :meth:`fixed` or :meth:`coerce` (which also
    takes a plain dict, as scenario files and control messages carry it).
    """

    kind: LengthKind = "lognormal"
    mean: float = 128.0
    min: int = 1
    max: int = 1024
    sigma: float = 0.6

    @classmethod
    def lognormal(
        cls, mean: float, *, sigma: float = 0.6, min: int = 1, max: int | None = None
    ) -> LengthSpec:
        """Lognormal with the given mean, clipped to ``[min, max]`` (max defaults to 8×mean)."""
        top = max if max is not None else math.ceil(8 * mean)
        return cls("lognormal", float(mean), min, top, sigma)

    @classmethod
    def uniform(cls, min: int, max: int) -> LengthSpec:
        """Integers uniformly distributed in ``[min, max]``."""
        return cls("uniform", (min + max) / 2, min, max, 0.0)

    @classmethod
    def fixed(cls, n: int) -> LengthSpec:
        """Always ``n`` tokens."""
        return cls("fixed", float(n), n, n, 0.0)

    @classmethod
    def coerce(cls, value: object, name: str = "length") -> LengthSpec:
        """A validated spec from a spec, an int (fixed) or a dict such as
        ``{"kind": "lognormal", "mean": 200, "max": 1024, "sigma": 0.8}``; ``name`` is used in
        error messages."""
        if isinstance(value, LengthSpec):
            spec = value
        elif _is_int(value):
            spec = cls.fixed(int(cast(int, value)))
        elif isinstance(value, Mapping):
            spec = cls._from_mapping(value, name)
        else:
            raise WorkloadError(
                name, f"{name} must be a LengthSpec, a dict or an integer, got {value!r}"
            )
        spec.validate(name)
        return spec

    @classmethod
    def _from_mapping(cls, data: Mapping[Any, Any], name: str) -> LengthSpec:
        known = {"kind", "mean", "min", "max", "sigma"}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise WorkloadError(
                f"{name}.{unknown[0]}",
                f"{name} has unknown field(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}",
            )
        kind = data.get("kind", "lognormal")
        if kind not in _LENGTH_KINDS:
            raise WorkloadError(
                f"{name}.kind",
                f"{name}.kind must be one of {', '.join(_LENGTH_KINDS)}, got {kind!r}",
            )
        for key in ("min", "max"):
            if key in data:
                _check_int(f"{name}.{key}", data[key], 1)
        for key in ("mean", "sigma"):
            if key in data:
                _check_float(f"{name}.{key}", data[key], -math.inf, math.inf)
        if kind == "fixed":
            if "mean" not in data:
                raise WorkloadError(f"{name}.mean", f"{name}: a fixed length needs 'mean'")
            n = data["mean"]
            if not float(n).is_integer():
                raise WorkloadError(
                    f"{name}.mean", f"{name}.mean must be a whole number, got {n!r}"
                )
            spec = cls.fixed(int(n))
            for key in ("min", "max"):
                if key in data and data[key] != spec.mean:
                    raise WorkloadError(
                        f"{name}.{key}", f"{name}.{key} must equal mean {int(n)} for a fixed length"
                    )
            return spec
        if kind == "uniform":
            if "min" not in data or "max" not in data:
                raise WorkloadError(
                    f"{name}.min", f"{name}: a uniform length needs 'min' and 'max'"
                )
            spec = cls.uniform(int(data["min"]), int(data["max"]))
            if "mean" in data and float(data["mean"]) != spec.mean:
                raise WorkloadError(
                    f"{name}.mean",
                    f"{name}.mean must be (min + max) / 2 = {spec.mean} for a uniform length "
                    f"(leave it out), got {data['mean']!r}",
                )
            return spec
        if "mean" not in data:
            raise WorkloadError(f"{name}.mean", f"{name}: a lognormal length needs 'mean'")
        mean = float(data["mean"])
        return cls.lognormal(
            mean,
            sigma=float(data.get("sigma", 0.6)),
            min=int(data.get("min", 1)),
            max=int(data["max"]) if "max" in data else None,
        )

    def validate(self, name: str = "length") -> None:
        """Raise :class:`WorkloadError` naming ``name.field`` when the spec is inconsistent."""
        if self.kind not in _LENGTH_KINDS:
            raise WorkloadError(
                f"{name}.kind",
                f"{name}.kind must be one of {', '.join(_LENGTH_KINDS)}, got {self.kind!r}",
            )
        low = _check_int(f"{name}.min", self.min, 1, " (lengths are positive)")
        high = _check_int(f"{name}.max", self.max, 1, " (lengths are positive)")
        if low > high:
            raise WorkloadError(f"{name}.min", f"{name}.min {low} is above {name}.max {high}")
        mean = _check_float(f"{name}.mean", self.mean, 1.0, math.inf)
        if math.isinf(mean):
            raise WorkloadError(f"{name}.mean", f"{name}.mean must be finite, got {mean}")
        if not low <= mean <= high:
            raise WorkloadError(
                f"{name}.mean", f"{name}.mean {mean:g} is outside {name}.min..max ({low}..{high})"
            )
        if self.kind == "lognormal":
            sigma = _check_float(f"{name}.sigma", self.sigma, 0.0, 10.0)
            del sigma
        elif self.kind == "uniform" and mean != (low + high) / 2:
            raise WorkloadError(
                f"{name}.mean", f"{name}.mean must be (min + max) / 2 for a uniform length"
            )
        elif self.kind == "fixed" and not (low == high == mean):
            raise WorkloadError(f"{name}.mean", f"{name}: a fixed length needs min == max == mean")

    def with_mean(self, mean: float, name: str = "length") -> LengthSpec:
        """The same kind of distribution with a new mean (uniform: the range moves, keeping its
        width where it can; fixed: the new length)."""
        if self.kind == "fixed":
            if not float(mean).is_integer():
                raise WorkloadError(
                    f"{name}.mean", f"{name} is a fixed length: its mean must be whole, got {mean}"
                )
            return LengthSpec.fixed(int(mean))
        if self.kind == "uniform":
            half = (self.max - self.min) / 2
            low = max(1.0, mean - half)
            high = 2 * mean - low
            if not (float(low).is_integer() and float(high).is_integer()):
                low, high = math.floor(low), math.ceil(high)
            return LengthSpec.uniform(int(low), int(high))
        return replace(self, mean=float(mean))

    def with_max(self, top: int, name: str = "length") -> LengthSpec:
        """The same distribution with a new upper bound (uniform: the range ``[min, top]``)."""
        if self.kind == "fixed":
            raise WorkloadError(
                f"{name}.max",
                f"{name} is a fixed length of {int(self.mean)} tokens: "
                "change its mean, not its max",
            )
        if self.kind == "uniform":
            return LengthSpec.uniform(self.min, top)
        return replace(self, max=int(top))

    def to_dict(self) -> dict[str, Any]:
        """Plain data: ``{"kind", "mean", "min", "max", "sigma"}``."""
        return {
            "kind": self.kind,
            "mean": self.mean,
            "min": self.min,
            "max": self.max,
            "sigma": self.sigma,
        }

    def sampler(self) -> tuple[int, float, float, int, int]:
        """``(kind code, a, b, min, max)`` for :func:`_sample` (the hot path)."""
        if self.kind == "lognormal":
            mu = math.log(self.mean) - self.sigma * self.sigma / 2
            return (0, mu, self.sigma, self.min, self.max)
        if self.kind == "uniform":
            return (1, 0.0, 0.0, self.min, self.max)
        return (2, 0.0, 0.0, self.min, self.max)

    def sample(self, z: float, u: float) -> int:
        """The length for a standard normal ``z`` and a uniform ``u`` in [0, 1)."""
        return _sample(self.sampler(), z, u)

    def draw(self, rng: np.random.Generator, n: int) -> NDArray[np.int64]:
        """``n`` lengths drawn with ``rng`` (vectorised; for analysis and tests)."""
        code, a, b, low, high = self.sampler()
        if code == 0:
            values = np.floor(np.exp(a + b * rng.standard_normal(n)) + 0.5)
            return np.clip(values, low, high).astype(np.int64)
        if code == 1:
            return rng.integers(low, high + 1, size=n, dtype=np.int64)
        return np.full(n, low, dtype=np.int64)


def _sample(sampler: tuple[int, float, float, int, int], z: float, u: float) -> int:
    code, a, b, low, high = sampler
    if code == 0:
        exponent = a + b * z
        n = int(math.exp(exponent) + 0.5) if exponent < 700.0 else high
        return low if n < low else high if n > high else n
    if code == 1:
        return low + int(u * (high - low + 1))
    return low


def _chain(
    parent: BlockHash | None, tokens: TokenArray, first: int, stop: int, block_size: int
) -> list[BlockHash]:
    """``chain_hash`` over blocks ``first..stop-1`` of ``tokens``, continuing from ``parent``.

    Same values as :func:`tiertop.tiers.block.chain_hash` (xxh3-64 of the int64 token bytes,
    seeded by the parent hash, 0 for the first block), but converts the whole span to int64 once
    instead of once per block (tests check equality with ``prefix_hashes``).
    """
    span = np.ascontiguousarray(tokens[first * block_size : stop * block_size], dtype=np.int64)
    data = span.data.cast("B")
    step = block_size * 8
    seed = ROOT_HASH if parent is None else parent
    out: list[BlockHash] = []
    digest = xxhash.xxh3_64_intdigest
    for offset in range(0, (stop - first) * step, step):
        seed = digest(data[offset : offset + step], seed=seed)
        out.append(seed)
    return out


_DEFAULT_PROMPT = LengthSpec.lognormal(128, sigma=0.6, max=1024)
_DEFAULT_OUTPUT = LengthSpec.lognormal(64, sigma=0.6, max=512)


@dataclass(frozen=True, slots=True)
class WorkloadParams:
    """Every parameter of the generated workload (all plain values; see :meth:`to_dict`).

    Attributes:
        lambda_rate: Poisson arrival rate in requests per second (0: no arrivals).
        duration: seconds after the start during which requests arrive (None: unbounded).
        new_conv_prob: probability that a request starts a new conversation rather than
            continuing an idle live one (when none is idle it starts a new one anyway).
        seed: seeds every random stream.
        prompt: length of each new user prompt, in tokens.
        output: ``max_new_tokens`` of each request.
        max_live_conversations: conversations kept open for continuation; starting one more
            retires the least recently used.
        system_prompts: size of the pool of shared system prompts (0: none). Every new
            conversation then begins with one of them, picked with Zipf skew.
        system_prompt_len: tokens in each system prompt.
        system_prompt_zipf: Zipf exponent of the pick (prompt ``i`` has weight ``1/(i+1)**s``;
            0 picks uniformly).
        vocab_size: token ids are drawn from ``[0, vocab_size)``.
        max_context_tokens: the model's context window (None: unbounded). A turn whose context
            plus ``max_new_tokens`` would not fit retires its conversation and starts a new one;
            a new conversation's prompt (then output) is clipped to fit.
    """

    lambda_rate: float = 1.0
    duration: float | None = None
    new_conv_prob: float = 0.3
    seed: int = 0
    prompt: LengthSpec = _DEFAULT_PROMPT
    output: LengthSpec = _DEFAULT_OUTPUT
    max_live_conversations: int = 64
    system_prompts: int = 0
    system_prompt_len: int = 0
    system_prompt_zipf: float = 1.0
    vocab_size: int = 50257
    max_context_tokens: int | None = None

    def validate(self) -> None:
        """Raise :class:`WorkloadError` naming the first invalid parameter and its range."""
        rate = _check_float("lambda_rate", self.lambda_rate, 0.0, math.inf, " requests/s")
        if math.isinf(rate):
            raise WorkloadError("lambda_rate", "lambda_rate must be finite (requests/s), got inf")
        if self.duration is not None:
            duration = _check_float("duration", self.duration, 0.0, math.inf, " s (or None)")
            if math.isinf(duration):
                raise WorkloadError("duration", "duration must be finite; use None for unbounded")
        _check_float("new_conv_prob", self.new_conv_prob, 0.0, 1.0)
        _check_int("seed", self.seed, 0)
        for name in ("prompt", "output"):
            spec = getattr(self, name)
            if not isinstance(spec, LengthSpec):
                raise WorkloadError(name, f"{name} must be a LengthSpec, got {spec!r}")
            spec.validate(name)
        _check_int("max_live_conversations", self.max_live_conversations, 1)
        _check_int("system_prompts", self.system_prompts, 0)
        _check_int("system_prompt_len", self.system_prompt_len, 0)
        if self.system_prompts > 0 and self.system_prompt_len == 0:
            raise WorkloadError(
                "system_prompt_len", "system_prompt_len must be >= 1 when system_prompts > 0"
            )
        _check_float("system_prompt_zipf", self.system_prompt_zipf, 0.0, 100.0)
        _check_int("vocab_size", self.vocab_size, 2, " and < 2**31")
        if self.vocab_size >= 2**31:
            raise WorkloadError("vocab_size", f"vocab_size must be < 2**31, got {self.vocab_size}")
        if self.max_context_tokens is not None:
            need = self.system_prompt_len + 2
            _check_int(
                "max_context_tokens",
                self.max_context_tokens,
                need,
                " (system_prompt_len + 1 prompt token + 1 output token), or None",
            )

    def to_dict(self) -> dict[str, Any]:
        """The parameters as plain data (length specs as dicts)."""
        out: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            out[item.name] = value.to_dict() if isinstance(value, LengthSpec) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkloadParams:
        """Validated parameters from plain data (unknown keys are an error)."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(key for key in data if key not in known)
        if unknown:
            raise WorkloadError(
                unknown[0],
                f"unknown workload parameter(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}",
            )
        values = dict(data)
        for name in ("prompt", "output"):
            if name in values:
                values[name] = LengthSpec.coerce(values[name], name)
        params = cls(**values)
        params.validate()
        return params


#: Parameters that :meth:`WorkloadGenerator.set_params` accepts (``seed`` and ``vocab_size``
#: are fixed for a generator's life: build a new one to change them).
LIVE_PARAMS: frozenset[str] = frozenset(
    item.name for item in fields(WorkloadParams) if item.name not in ("seed", "vocab_size")
)

#: The flat field names of the control protocol's ``SetWorkload`` command, and what they set.
SET_WORKLOAD_FIELDS: Mapping[str, str] = {
    "rate": "lambda_rate",
    "new_conv_prob": "new_conv_prob",
    "prompt_len_mean": "prompt.mean",
    "prompt_len_max": "prompt.max",
    "output_len_mean": "output.mean",
    "output_len_max": "output.max",
    "live_conversations": "max_live_conversations",
}


@dataclass(slots=True, eq=False)
class Request:
    """One conversation turn to serve (treat as read-only; not frozen only because a frozen
    dataclass costs 1.5 µs more to build, a third of the generator's per-request budget).

    Attributes:
        request_id: unique, increasing from 0.
        conversation_id: the conversation (unique per generator; ``-1`` for trace replay).
        turn: 0 for a conversation's first request, then 1, 2, ...
        arrival_s: arrival time in seconds of virtual (or wall-clock-since-start) time.
        context_tokens: the whole input, read-only: system prompt, earlier prompts and replies,
            then the new prompt (its last ``new_prompt_len`` tokens).
        new_prompt_len: tokens of the new user prompt at the end of the context.
        max_new_tokens: tokens to generate.
        system_prompt_id: which shared system prompt the conversation began with, if any.
    """

    request_id: int
    conversation_id: int
    turn: int
    arrival_s: float
    context_tokens: TokenArray
    new_prompt_len: int
    max_new_tokens: int
    system_prompt_id: int | None = None

    @property
    def prompt_len(self) -> int:
        """Tokens in the whole context (what a prefill without any cache hit computes)."""
        return len(self.context_tokens)

    @property
    def history_len(self) -> int:
        """Tokens before the new prompt (reusable from an earlier turn or a system prompt)."""
        return len(self.context_tokens) - self.new_prompt_len


class _Conversation:
    """A live conversation: its token history in a growable buffer."""

    __slots__ = (
        "buf",
        "busy",
        "frozen",
        "hashes",
        "id",
        "idle_pos",
        "length",
        "system_len",
        "system_prompt_id",
        "turn",
    )

    def __init__(self, conv_id: int, capacity: int, system_prompt_id: int | None) -> None:
        self.id = conv_id
        self.buf: TokenArray = np.empty(capacity, dtype=TOKEN_DTYPE)
        self.frozen = self._read_only(self.buf)
        self.length = 0
        self.turn = 0
        self.busy = -1  # request id of the outstanding turn, -1 when idle
        self.idle_pos = -1
        self.system_prompt_id = system_prompt_id
        self.system_len = 0
        self.hashes: dict[int, list[BlockHash]] | None = None

    def reserve(self, extra: int) -> None:
        need = self.length + extra
        if need > self.buf.shape[0]:
            grown = np.empty(max(need, 2 * self.buf.shape[0]), dtype=TOKEN_DTYPE)
            grown[: self.length] = self.buf[: self.length]
            self.buf = grown
            self.frozen = self._read_only(grown)

    @staticmethod
    def _read_only(buf: TokenArray) -> TokenArray:
        # A read-only alias of the buffer: slices of it are read-only views for free, so a
        # request's context cannot be written through (that would corrupt the history).
        alias = buf.view()
        alias.flags.writeable = False
        return alias


class _TokenPool:
    """Random token ids drawn in large batches; ``take(n)`` is a view valid until the next take.

    Ids come from the raw PCG64 stream, 32 bits each, scaled by multiply-shift into
    ``[0, vocab)``: exact bounds, a stable stream, and twice as fast as ``Generator.integers``
    (token generation is the largest part of a request's cost).
    """

    __slots__ = ("pool", "pos", "rng", "size", "vocab")

    def __init__(self, rng: np.random.Generator, vocab: int, size: int = 1 << 18) -> None:
        self.rng = rng
        self.vocab = vocab
        self.size = size
        self.pool: TokenArray = self.draw(size)
        self.pos = 0

    def draw(self, n: int) -> TokenArray:
        raw = self.rng.bit_generator.random_raw((n + 1) // 2).view(np.uint32)[:n]
        scaled = (raw.astype(np.uint64) * np.uint64(self.vocab)) >> np.uint64(32)
        return scaled.astype(TOKEN_DTYPE)

    def take(self, n: int) -> TokenArray:
        pos = self.pos
        if pos + n > self.size:
            if n > self.size:
                return self.draw(n)
            self.pool = self.draw(self.size)
            pos = 0
        self.pos = pos + n
        return self.pool[pos : pos + n]


# Columns of a pre-drawn variate row.
_ROW_COLUMNS = 8  # exp, u_new, u_pick, u_sys, z_prompt, u_prompt, z_output, u_output


class WorkloadGenerator:
    """Poisson arrivals of conversation turns (see the module docstring).

    Args:
        params: the parameters (default :class:`WorkloadParams()`); keyword arguments override
            its fields, e.g. ``WorkloadGenerator(lambda_rate=50, seed=3)``.
        auto_complete: complete every request with a synthetic reply as it is issued (for a
            simulator that has no model and does not call :meth:`complete`).
        start_s: virtual time of the start (the first inter-arrival is drawn from here).
        batch: how many requests' random variates are drawn per numpy call.
    """

    def __init__(
        self,
        params: WorkloadParams | None = None,
        *,
        auto_complete: bool = False,
        start_s: float = 0.0,
        batch: int = 4096,
        **overrides: Any,
    ) -> None:
        base = params if params is not None else WorkloadParams()
        if overrides:
            unknown = sorted(set(overrides) - {item.name for item in fields(WorkloadParams)})
            if unknown:
                raise WorkloadError(
                    unknown[0], f"unknown workload parameter(s): {', '.join(unknown)}"
                )
            for name in ("prompt", "output"):
                if name in overrides:
                    overrides[name] = LengthSpec.coerce(overrides[name], name)
            base = replace(base, **overrides)
        base.validate()
        if batch < 1:
            raise WorkloadError("batch", f"batch must be >= 1, got {batch}")
        self._params = base
        self.auto_complete = auto_complete
        self._start = float(start_s)
        self._batch = batch
        seq = np.random.SeedSequence(base.seed)
        variates, prompts, replies, redraws = seq.spawn(4)
        self._rng = np.random.default_rng(variates)
        self._redraw_rng = np.random.default_rng(redraws)
        self._prompt_tokens = _TokenPool(np.random.default_rng(prompts), base.vocab_size)
        self._reply_tokens = _TokenPool(np.random.default_rng(replies), base.vocab_size)
        self._rows: list[list[float]] = []
        self._row = 0
        self._refill()

        self._live: OrderedDict[int, _Conversation] = OrderedDict()
        self._idle: list[_Conversation] = []
        self._next_request_id = 0
        self._next_conv_id = 0
        self._clock = self._start
        self._completed = 0
        self._stats = dict.fromkeys(
            (
                "forced_new",
                "retired_lru",
                "retired_context",
                "retired_abandoned",
            ),
            0,
        )
        self._system_pool: list[TokenArray] = []
        self._system_hash_cache: dict[tuple[int, int, int], list[BlockHash]] = {}
        self._system_cdf: list[float] = []
        self._apply_cached(base, None)
        first = self._rows[self._row][0]
        self._row += 1
        if self._row == len(self._rows):
            self._refill()
        self._next_t = self._start + first / self._rate if self._rate > 0 else math.inf

    # ------------------------------------------------------------------ parameters

    def params(self) -> dict[str, Any]:
        """The current parameters as plain data (see :class:`WorkloadParams`)."""
        return self._params.to_dict()

    @property
    def current(self) -> WorkloadParams:
        """The current parameters."""
        return self._params

    def describe(self) -> dict[str, Any]:
        """Parameters plus live state, as plain data for telemetry and control replies."""
        return {
            "params": self.params(),
            "state": {
                **self.stats(),
                "live_conversations": len(self._live),
                "idle_conversations": len(self._idle),
                "clock_s": self._clock,
                "next_arrival_s": self._next_t,
                "exhausted": self.exhausted,
            },
        }

    def stats(self) -> dict[str, int]:
        """Counters: requests issued, conversations started, continued turns, ``forced_new``
        (continuation drawn but no idle conversation), retirements by cause, completions."""
        requests, conversations = self._next_request_id, self._next_conv_id
        return {
            "requests": requests,
            "conversations": conversations,
            "continued": requests - conversations,
            **self._stats,
            "completed": self._completed,
        }

    def set_params(
        self, *, now: float | None = None, **changes: Any
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Change parameters live; returns ``(old, new)`` plain values of the given names.

        Validated as a whole before anything changes: on :class:`WorkloadError` (naming the
        parameter and its range) nothing changed. Takes effect for the next arrival; a changed
        ``lambda_rate`` re-draws the pending inter-arrival from ``now`` (default: the latest time
        this generator has seen) so a change from 0.001 to 100 requests/s acts at once. Lowering
        ``max_live_conversations`` retires the least recently used conversations at once.
        """
        if not changes:
            raise WorkloadError("params", "set_params needs at least one parameter")
        for name in changes:
            if name not in LIVE_PARAMS:
                if name in ("seed", "vocab_size"):
                    raise WorkloadError(
                        name, f"{name} cannot change on a running generator; build a new one"
                    )
                raise WorkloadError(
                    name,
                    f"unknown workload parameter {name!r}; known: {', '.join(sorted(LIVE_PARAMS))}",
                )
        values = dict(changes)
        for name in ("prompt", "output"):
            if name in values:
                values[name] = LengthSpec.coerce(values[name], name)
        if now is not None:
            _check_float("now", now, -math.inf, math.inf)
        new = replace(self._params, **values)
        new.validate()
        old_dict, new_dict = self._params.to_dict(), new.to_dict()
        old = self._params
        self._params = new
        self._apply_cached(new, old)
        if new.lambda_rate != old.lambda_rate:
            base = max(self._clock, now) if now is not None else self._clock
            if self._next_t > base:
                if new.lambda_rate > 0:
                    gap = float(self._redraw_rng.standard_exponential())
                    self._next_t = base + gap / new.lambda_rate
                else:
                    self._next_t = math.inf
        if new.max_live_conversations < len(self._live):
            while len(self._live) > new.max_live_conversations:
                self._retire(next(iter(self._live.values())), "retired_lru")
        return ({k: old_dict[k] for k in values}, {k: new_dict[k] for k in values})

    def apply_set_workload(
        self, changes: Mapping[str, float | int]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Apply the flat fields of the control protocol's ``SetWorkload`` command (see
        :data:`SET_WORKLOAD_FIELDS`): ``rate``, ``new_conv_prob``, ``prompt_len_mean``,
        ``prompt_len_max``, ``output_len_mean``, ``output_len_max``, ``live_conversations``.
        Returns ``(old, new)`` keyed by those field names; atomic like :meth:`set_params`."""
        unknown = sorted(set(changes) - set(SET_WORKLOAD_FIELDS))
        if unknown:
            raise WorkloadError(
                unknown[0],
                f"unknown SetWorkload field(s) {', '.join(unknown)}; "
                f"known: {', '.join(SET_WORKLOAD_FIELDS)}",
            )
        before = self._flat()
        try:
            self.set_params(**self._plain_changes(changes))
        except WorkloadError as error:
            flat = {target: field for field, target in SET_WORKLOAD_FIELDS.items()}
            name = flat.get(error.param, error.param)
            raise WorkloadError(name, str(error).replace(error.param, name, 1)) from None
        after = self._flat()
        return ({k: before[k] for k in changes}, {k: after[k] for k in changes})

    def _plain_changes(self, changes: Mapping[str, float | int]) -> dict[str, Any]:
        """``SetWorkload`` fields as :meth:`set_params` arguments."""
        p = self._params
        specs = {"prompt": p.prompt, "output": p.output}
        plain: dict[str, Any] = {}
        for field_name, value in changes.items():
            target = SET_WORKLOAD_FIELDS[field_name]
            if "." not in target:
                plain[target] = value
        for stem in ("prompt", "output"):
            spec = specs[stem]
            top = changes.get(f"{stem}_len_max")
            mean = changes.get(f"{stem}_len_mean")
            if top is not None:
                _check_int(f"{stem}.max", top, 1)
                spec = spec.with_max(int(top), stem)
            if mean is not None:
                _check_float(f"{stem}.mean", mean, 1.0, math.inf)
                spec = spec.with_mean(float(mean), stem)
            if top is not None or mean is not None:
                plain[stem] = spec
        return plain

    def _flat(self) -> dict[str, Any]:
        p = self._params
        return {
            "rate": p.lambda_rate,
            "new_conv_prob": p.new_conv_prob,
            "prompt_len_mean": p.prompt.mean,
            "prompt_len_max": p.prompt.max,
            "output_len_mean": p.output.mean,
            "output_len_max": p.output.max,
            "live_conversations": p.max_live_conversations,
        }

    def _apply_cached(self, new: WorkloadParams, old: WorkloadParams | None) -> None:
        self._rate = new.lambda_rate
        self._p_new = new.new_conv_prob
        self._end = self._start + new.duration if new.duration is not None else math.inf
        self._prompt_sampler = new.prompt.sampler()
        self._output_sampler = new.output.sampler()
        self._max_ctx = new.max_context_tokens
        if (
            old is None
            or old.system_prompts != new.system_prompts
            or old.system_prompt_len != new.system_prompt_len
        ):
            self._system_pool = [
                self._system_prompt(i, new.system_prompt_len) for i in range(new.system_prompts)
            ]
        if (
            old is None
            or old.system_prompts != new.system_prompts
            or (old.system_prompt_zipf != new.system_prompt_zipf)
        ):
            weights = [1.0 / (i + 1) ** new.system_prompt_zipf for i in range(new.system_prompts)]
            total = sum(weights)
            acc = 0.0
            cdf: list[float] = []
            for weight in weights:
                acc += weight / total
                cdf.append(acc)
            if cdf:
                cdf[-1] = 1.0
            self._system_cdf = cdf

    def _system_prompt(self, index: int, length: int) -> TokenArray:
        rng = np.random.default_rng([self._params.seed, 0x5359_5354, index, length])
        tokens = rng.integers(0, self._params.vocab_size, size=length, dtype=TOKEN_DTYPE)
        tokens.flags.writeable = False
        return tokens

    def system_prompt(self, index: int) -> TokenArray:
        """The tokens of shared system prompt ``index`` (read-only)."""
        return self._system_pool[index]

    # ------------------------------------------------------------------ time

    @property
    def next_arrival_s(self) -> float:
        """When the next request arrives (``inf`` when the rate is 0 or past ``duration``)."""
        return self._next_t if self._next_t < self._end else math.inf

    @property
    def exhausted(self) -> bool:
        """True once the next arrival would fall after ``start + duration``."""
        return self._next_t >= self._end and self._end < math.inf

    @property
    def clock_s(self) -> float:
        """The latest time this generator has seen (an arrival or a ``now`` it was given)."""
        return self._clock

    def next_request(self, now: float = math.inf) -> Request | None:
        """The next request if it has arrived by ``now`` (default: whenever it arrives), else None.

        Returns None when the next arrival is after ``now``, the rate is 0, or ``duration`` is
        over. ``now`` also advances the generator's clock (used to re-draw on a rate change).
        """
        t = self._next_t
        if t > now or t >= self._end:
            if now > self._clock and now < math.inf:
                self._clock = now
            return None
        return self._issue(t)

    def requests_until(self, t: float) -> list[Request]:
        """Every request arriving by ``t``, in order (the clock then stands at ``t``).

        ``t = inf`` is only allowed when the stream ends (a ``duration``, or rate 0).
        """
        if t == math.inf and self._end == math.inf and self._next_t < math.inf:
            raise WorkloadError(
                "t", "requests_until(inf) never ends without a duration; give a finite time"
            )
        out: list[Request] = []
        issue = self._issue
        end = self._end
        while True:
            nxt = self._next_t
            if nxt > t or nxt >= end:
                break
            out.append(issue(nxt))
        if t > self._clock and t < math.inf:
            self._clock = t
        return out

    def _refill(self) -> None:
        n = self._batch
        rng = self._rng
        block = np.empty((n, _ROW_COLUMNS))
        block[:, 0] = rng.standard_exponential(n)
        block[:, 1:4] = rng.random((n, 3))
        block[:, 4] = rng.standard_normal(n)
        block[:, 5] = rng.random(n)
        block[:, 6] = rng.standard_normal(n)
        block[:, 7] = rng.random(n)
        self._rows = block.tolist()
        self._row = 0

    # ------------------------------------------------------------------ issuing

    def _issue(self, t: float) -> Request:
        # The hot path: kept flat (no helper calls on the common path) for throughput.
        rows = self._rows
        index = self._row
        gap, u_new, u_pick, u_sys, z_p, u_p, z_o, u_o = rows[index]
        index += 1
        if index == len(rows):
            self._refill()
        else:
            self._row = index
        rate = self._rate
        self._next_t = t + gap / rate if rate > 0.0 else math.inf
        if t > self._clock:
            self._clock = t
        code, a, b, low, high = self._prompt_sampler
        if code == 0:
            exponent = a + b * z_p
            n = int(math.exp(exponent) + 0.5) if exponent < 700.0 else high
            prompt_len = low if n < low else high if n > high else n
        else:
            prompt_len = low + int(u_p * (high - low + 1)) if code == 1 else low
        code, a, b, low, high = self._output_sampler
        if code == 0:
            exponent = a + b * z_o
            n = int(math.exp(exponent) + 0.5) if exponent < 700.0 else high
            out_len = low if n < low else high if n > high else n
        else:
            out_len = low + int(u_o * (high - low + 1)) if code == 1 else low
        conv: _Conversation | None = None
        idle = self._idle
        if u_new >= self._p_new:
            if idle:
                conv = idle[int(u_pick * len(idle))]
                max_ctx = self._max_ctx
                if max_ctx is not None and conv.length + prompt_len + out_len > max_ctx:
                    self._retire(conv, "retired_context")
                    conv = None
            else:
                self._stats["forced_new"] += 1
        request_id = self._next_request_id
        self._next_request_id = request_id + 1
        if conv is None:
            conv, prompt_len, out_len = self._start_conversation(u_sys, prompt_len, out_len)
        else:
            conv.turn += 1
            # leave the idle list (swap-remove)
            pos = conv.idle_pos
            last = idle.pop()
            if last is not conv:
                idle[pos] = last
                last.idle_pos = pos
            conv.idle_pos = -1
            self._live.move_to_end(conv.id)
            if conv.length + prompt_len + out_len > conv.buf.shape[0]:
                conv.reserve(prompt_len + out_len)
        # New prompt tokens from the pool; with auto_complete the synthetic reply is drawn in
        # the same slice (one copy) and the conversation is idle again at once.
        auto = self.auto_complete
        count = prompt_len + out_len if auto else prompt_len
        pool = self._prompt_tokens
        start = pool.pos
        if start + count > pool.size:
            tokens = pool.take(count)
        else:
            pool.pos = start + count
            tokens = pool.pool[start : start + count]
        length = conv.length
        end = length + prompt_len
        conv.buf[length : length + count] = tokens
        context = conv.frozen[:end]
        request = Request(
            request_id, conv.id, conv.turn, t, context, prompt_len, out_len, conv.system_prompt_id
        )
        if auto:
            conv.length = length + count
            idle.append(conv)
            conv.idle_pos = len(idle) - 1
            self._completed += 1
        else:
            conv.length = end
            conv.busy = request_id
        return request

    def _start_conversation(
        self, u_sys: float, prompt_len: int, out_len: int
    ) -> tuple[_Conversation, int, int]:
        system_id: int | None = None
        sys_len = 0
        if self._system_cdf:
            system_id = bisect.bisect_right(self._system_cdf, u_sys)
            if system_id >= len(self._system_cdf):
                system_id = len(self._system_cdf) - 1
            sys_len = self._params.system_prompt_len
        max_ctx = self._max_ctx
        if max_ctx is not None and sys_len + prompt_len + out_len > max_ctx:
            room = max_ctx - sys_len
            prompt_len = max(1, min(prompt_len, room - out_len))
            out_len = max(1, min(out_len, room - prompt_len))
        conv_id = self._next_conv_id
        self._next_conv_id = conv_id + 1
        conv = _Conversation(conv_id, max(64, 2 * (sys_len + prompt_len + out_len)), system_id)
        if system_id is not None:
            conv.buf[:sys_len] = self._system_pool[system_id]
            conv.length = conv.system_len = sys_len
        live = self._live
        live[conv_id] = conv
        if len(live) > self._params.max_live_conversations:
            self._retire(next(iter(live.values())), "retired_lru")
        return conv, prompt_len, out_len

    def _retire(self, conv: _Conversation, reason: str) -> None:
        self._stats[reason] += 1
        del self._live[conv.id]
        pos = conv.idle_pos
        if pos >= 0:
            idle = self._idle
            last = idle.pop()
            if last is not conv:
                idle[pos] = last
                last.idle_pos = pos
            conv.idle_pos = -1
        conv.busy = -1

    def _append_reply(self, conv: _Conversation, tokens: TokenArray) -> None:
        n = tokens.shape[0]
        length = conv.length
        if length + n > conv.buf.shape[0]:
            conv.reserve(n)
        conv.buf[length : length + n] = tokens
        conv.length = length + n
        conv.busy = -1
        idle = self._idle
        conv.idle_pos = len(idle)
        idle.append(conv)
        self._completed += 1

    # ------------------------------------------------------------------ completion

    def _outstanding(self, request: Request) -> _Conversation | None:
        conv = self._live.get(request.conversation_id)
        if conv is None:
            return None
        if conv.busy != request.request_id:
            raise WorkloadError(
                "request",
                f"request {request.request_id} is not the outstanding turn of conversation "
                f"{request.conversation_id} (already completed or abandoned?)",
            )
        return conv

    def complete(self, request: Request, output_tokens: Iterable[int] | NDArray[Any]) -> bool:
        """Record the model's reply to ``request``; the conversation's next turn will contain it.

        Returns False (and does nothing) when the conversation has retired meanwhile. Raises
        :class:`WorkloadError` when the request is not the conversation's outstanding turn, or
        the reply is longer than ``max_new_tokens`` or has ids outside the vocabulary.
        """
        conv = self._outstanding(request)
        if conv is None:
            return False
        tokens = np.asarray(
            output_tokens if isinstance(output_tokens, np.ndarray) else list(output_tokens)
        )
        if tokens.ndim != 1:
            raise WorkloadError("output_tokens", f"output_tokens must be 1-D, got {tokens.shape}")
        if tokens.shape[0] > request.max_new_tokens:
            raise WorkloadError(
                "output_tokens",
                f"reply has {tokens.shape[0]} tokens, more than max_new_tokens "
                f"{request.max_new_tokens}",
            )
        if tokens.shape[0]:
            if tokens.dtype.kind not in "iu":
                raise WorkloadError(
                    "output_tokens", f"token ids must be integers, got {tokens.dtype}"
                )
            low, high = int(tokens.min()), int(tokens.max())
            if low < 0 or high >= self._params.vocab_size:
                raise WorkloadError(
                    "output_tokens",
                    f"token ids must be in 0..{self._params.vocab_size - 1}, got {low}..{high}",
                )
        self._append_reply(conv, tokens.astype(TOKEN_DTYPE, copy=False))
        return True

    def synthetic_reply(self, request: Request, n: int | None = None) -> TokenArray:
        """``n`` (default ``max_new_tokens``) random reply tokens from the generator's own
        reply stream (deterministic given the call sequence; a copy)."""
        count = request.max_new_tokens if n is None else n
        if not 0 <= count <= request.max_new_tokens:
            raise WorkloadError("n", f"n must be in 0..{request.max_new_tokens}, got {count}")
        return self._reply_tokens.take(count).copy()

    def complete_synthetic(self, request: Request, n: int | None = None) -> bool:
        """:meth:`complete` with a synthetic reply of ``n`` (default ``max_new_tokens``) tokens."""
        conv = self._outstanding(request)
        if conv is None:
            return False
        count = request.max_new_tokens if n is None else n
        if not 0 <= count <= request.max_new_tokens:
            raise WorkloadError("n", f"n must be in 0..{request.max_new_tokens}, got {count}")
        self._append_reply(conv, self._reply_tokens.take(count))
        return True

    def abandon(self, request: Request) -> bool:
        """The request was dropped (no reply): its conversation retires. False if already gone."""
        conv = self._outstanding(request)
        if conv is None:
            return False
        self._retire(conv, "retired_abandoned")
        return True

    # ------------------------------------------------------------------ helpers

    def context_block_hashes(self, request: Request, block_size: int) -> list[BlockHash]:
        """``prefix_hashes(request.context_tokens, block_size)``, computed incrementally.

        A conversation's contexts only grow, so the hashes of its earlier full blocks are cached
        per conversation and only new blocks are hashed (O(new tokens) per turn).
        """
        if block_size < 1:
            raise WorkloadError("block_size", f"block_size must be >= 1, got {block_size}")
        tokens = request.context_tokens
        full = len(tokens) // block_size
        conv = self._live.get(request.conversation_id)
        if conv is None:
            return list(prefix_hashes(tokens, block_size))
        # Every context of a conversation is a prefix of its history, so cached hashes of any of
        # its requests agree with this one's on the blocks they share.
        if conv.hashes is None:
            conv.hashes = {}
        cached = conv.hashes.get(block_size)
        if cached is None:
            cached = conv.hashes[block_size] = []
            system_id = conv.system_prompt_id
            if (
                system_id is not None
                and system_id < len(self._system_pool)
                and conv.system_len == self._params.system_prompt_len
            ):  # the pool this conversation started from is still the current one
                cached.extend(self._system_hashes(system_id, block_size))
        done = len(cached)
        if full > done:
            cached.extend(_chain(cached[-1] if cached else None, tokens, done, full, block_size))
        return cached[:full]

    def _system_hashes(self, system_id: int, block_size: int) -> list[BlockHash]:
        key = (system_id, block_size, self._params.system_prompt_len)
        hashes = self._system_hash_cache.get(key)
        if hashes is None:
            prompt = self._system_pool[system_id]
            hashes = _chain(None, prompt, 0, len(prompt) // block_size, block_size)
            self._system_hash_cache[key] = hashes
        return hashes

    @property
    def live_conversations(self) -> int:
        """Conversations currently open."""
        return len(self._live)
