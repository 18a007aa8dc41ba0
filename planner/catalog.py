"""Model and hardware catalogues: TOML files users can extend, loaded and validated.

The bundled catalogues live in ``planner/catalog/`` (``models.toml``, ``hardware.toml``); each
file documents its keys. More catalogues come from directories (or single files) named in the
``TIERTOP_CATALOG`` environment variable (``os.pathsep``-separated) and then from ``--catalog``;
every ``*.toml`` file in such a directory is read, in name order. A file holds a ``[models.NAME]``
and/or a ``[hardware.NAME]`` table per entry. An entry whose name is already known updates only
the keys it sets (the usual use: refresh a price); a new entry must set every required key.

Validation is strict and reports every problem at once, each with its file and key: unknown
keys (with the closest known one), missing keys, wrong types, values out of range, shapes that
cannot be (``heads`` not a multiple of ``kv_heads``), and names or aliases used twice.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

__all__ = [
    "ENV_VAR",
    "PRECISIONS",
    "Catalog",
    "CatalogError",
    "HardwareSpec",
    "ModelSpec",
    "load_catalog",
]

#: Environment variable with extra catalogue directories (``os.pathsep``-separated).
ENV_VAR: Final = "TIERTOP_CATALOG"

#: Precisions the planner knows, with the bytes one weight or KV element takes.
PRECISIONS: Final[dict[str, int]] = {"fp32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}

SOURCE_KEYS: Final = ("memory", "compute", "bandwidth", "host_link", "interconnect", "price")


class CatalogError(ValueError):
    """A catalogue file cannot be used; ``problems`` lists every reason, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        head = "catalogue error" if count == 1 else f"{count} catalogue errors"
        super().__init__(head + ":\n  " + "\n  ".join(self.problems))


@dataclass(frozen=True)
class ModelSpec:
    """One model's shape (see ``models.toml`` for the meaning of each field)."""

    key: str
    name: str
    family: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn_hidden: int
    vocab_size: int
    params: int
    max_context: int
    source: str
    aliases: tuple[str, ...] = ()
    note: str = ""
    gated_mlp: bool = False

    def matmul_params_per_layer(self) -> int:
        """Weights one token multiplies through in one transformer block: Q, K, V and output
        projections plus the MLP (two matrices, three when gated)."""
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        mlp = (3 if self.gated_mlp else 2) * self.hidden * self.ffn_hidden
        return self.hidden * q + 2 * self.hidden * kv + q * self.hidden + mlp

    def kv_bytes_per_token(self, precision: str = "fp16") -> int:
        """Bytes of K and V for one token over all layers: 2 x layers x kv_heads x head_dim x
        bytes per element."""
        return 2 * self.layers * self.kv_heads * self.head_dim * PRECISIONS[precision]

    def derived_params(self) -> int:
        """Parameter count implied by the shape, for the families whose layout is known
        (GPT-2/OPT: learned positions, tied embeddings, biases; Llama: untied embeddings, no
        biases, gated MLP). ``-1`` for other families."""
        d, f, layers, v = self.hidden, self.ffn_hidden, self.layers, self.vocab_size
        attn = self.heads * self.head_dim
        if self.family in ("gpt2", "opt"):
            positions = self.max_context + (2 if self.family == "opt" else 0)
            per_layer = 3 * (d * attn + attn) + attn * d + d + d * f + f + f * d + d + 4 * d
            return layers * per_layer + v * d + positions * d + 2 * d
        if self.family == "llama":
            kv = self.kv_heads * self.head_dim
            per_layer = 2 * d * attn + 2 * d * kv + 3 * d * f + 2 * d
            return layers * per_layer + 2 * v * d + d
        return -1


@dataclass(frozen=True)
class HardwareSpec:
    """One GPU model (see ``hardware.toml`` for the meaning and units of each field)."""

    key: str
    name: str
    memory_gib: float
    memory_bandwidth_gb_s: float
    peak_tflops: Mapping[str, float]
    host_link_gb_s: float
    interconnect_gb_s: float
    max_gpus: int
    compute_efficiency: float
    memory_efficiency: float
    host_link_efficiency: float
    interconnect_efficiency: float
    collective_latency_us: float
    step_overhead_ms: float
    price_usd_per_hour: float
    price_model: str
    price_date: str
    sources: Mapping[str, str]
    aliases: tuple[str, ...] = ()
    note: str = ""

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gib * 2**30)

    def supports(self, precision: str) -> bool:
        return precision in self.peak_tflops

    def effective_flops(self, precision: str) -> float:
        """Operations per second a real run reaches: peak x compute_efficiency."""
        return self.peak_tflops[precision] * 1e12 * self.compute_efficiency

    def effective_memory_bw(self) -> float:
        return self.memory_bandwidth_gb_s * 1e9 * self.memory_efficiency

    def effective_host_link_bw(self) -> float:
        return self.host_link_gb_s * 1e9 * self.host_link_efficiency

    def effective_interconnect_bw(self) -> float:
        return self.interconnect_gb_s * 1e9 * self.interconnect_efficiency

    def with_efficiencies(self, **factors: float) -> HardwareSpec:
        """A copy with some of ``compute_efficiency``, ``memory_efficiency``,
        ``host_link_efficiency``, ``interconnect_efficiency`` or ``step_overhead_ms`` replaced
        (what calibration produces)."""
        allowed = {"compute_efficiency", "memory_efficiency", "host_link_efficiency",
                   "interconnect_efficiency", "step_overhead_ms"}
        unknown = set(factors) - allowed
        if unknown:
            raise ValueError(f"not efficiency factors: {', '.join(sorted(unknown))}")
        data = {f: getattr(self, f) for f in self.__dataclass_fields__}
        data.update(factors)
        return HardwareSpec(**data)


# ------------------------------------------------------------------------------- the schema

_INT, _NUM, _STR, _STRS, _TFLOPS, _SOURCES = "int", "number", "str", "list of str", "tflops", "src"
_BOOL = "bool"

_MODEL_FIELDS: Final[dict[str, str]] = {
    "name": _STR, "family": _STR, "layers": _INT, "hidden": _INT, "heads": _INT,
    "kv_heads": _INT, "head_dim": _INT, "ffn_hidden": _INT, "vocab_size": _INT, "params": _INT,
    "max_context": _INT, "source": _STR, "aliases": _STRS, "note": _STR, "gated_mlp": _BOOL,
}
_MODEL_OPTIONAL: Final = frozenset({"aliases", "note", "gated_mlp"})

_HARDWARE_FIELDS: Final[dict[str, str]] = {
    "name": _STR, "memory_gib": _NUM, "memory_bandwidth_gb_s": _NUM, "peak_tflops": _TFLOPS,
    "host_link_gb_s": _NUM, "interconnect_gb_s": _NUM, "max_gpus": _INT,
    "compute_efficiency": _NUM, "memory_efficiency": _NUM, "host_link_efficiency": _NUM,
    "interconnect_efficiency": _NUM, "collective_latency_us": _NUM, "step_overhead_ms": _NUM,
    "price_usd_per_hour": _NUM, "price_model": _STR, "price_date": _STR, "sources": _SOURCES,
    "aliases": _STRS, "note": _STR,
}
_HARDWARE_OPTIONAL: Final = frozenset({"aliases", "note"})
_EFFICIENCIES: Final = ("compute_efficiency", "memory_efficiency", "host_link_efficiency",
                        "interconnect_efficiency")
_SECTIONS: Final = ("models", "hardware")


def _closest(word: str, options: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(options), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def _type_ok(kind: str, value: Any) -> bool:
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _NUM:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == _STR:
        return isinstance(value, str)
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == _STRS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, dict)


class _Collector:
    """Raw entries merged across files, with every problem found on the way."""

    def __init__(self) -> None:
        self.raw: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in _SECTIONS}
        self.origin: dict[tuple[str, str], str] = {}
        self.problems: list[str] = []

    def add_file(self, path: Path | str, text: str) -> None:
        where = str(path)
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            self.problems.append(f"{where}: not valid TOML: {exc}")
            return
        for section, body in doc.items():
            if section not in _SECTIONS:
                self.problems.append(
                    f"{where}: unknown table [{section}]{_closest(section, _SECTIONS)}; "
                    f"a catalogue file holds [models.NAME] and [hardware.NAME] tables"
                )
                continue
            if not isinstance(body, dict):
                self.problems.append(f"{where}: {section} must be a table of entries")
                continue
            fields = _MODEL_FIELDS if section == "models" else _HARDWARE_FIELDS
            for key, entry in body.items():
                label = f"{where}: {section}.{key}"
                if not isinstance(entry, dict):
                    self.problems.append(f"{label}: must be a table, not a {type(entry).__name__}")
                    continue
                unknown = [k for k in entry if k not in fields]
                for k in unknown:
                    hint = (
                        f" (a dot in a name must be quoted: [{section}.\"{key}.{k}\"])"
                        if isinstance(entry[k], dict) else _closest(k, fields)
                    )
                    self.problems.append(
                        f"{label}: unknown key {k!r}{hint}; known: {', '.join(fields)}"
                    )
                clean = {k: v for k, v in entry.items() if k in fields}
                existing = self.raw[section].get(key)
                if existing is None:
                    self.raw[section][key] = clean
                else:  # an override: merge key by key (sources merge per key too)
                    for k, v in clean.items():
                        if k == "sources" and isinstance(v, dict) and isinstance(
                            existing.get(k), dict
                        ):
                            existing[k] = {**existing[k], **v}
                        else:
                            existing[k] = v
                self.origin[(section, key)] = where

    # ------------------------------------------------------------------------- validation

    def _check_fields(self, label: str, entry: dict[str, Any], fields: Mapping[str, str],
                      optional: frozenset[str]) -> bool:
        missing = [k for k in fields if k not in entry and k not in optional]
        if missing:
            self.problems.append(f"{label}: missing key(s) {', '.join(missing)}")
        ok = not missing
        for k, kind in fields.items():
            if k not in entry:
                continue
            if not _type_ok(kind, entry[k]):
                shown = "table" if kind in (_TFLOPS, _SOURCES) else kind
                self.problems.append(
                    f"{label}: {k} must be a {shown}, got {type(entry[k]).__name__} "
                    f"{entry[k]!r}"
                )
                ok = False
        return ok

    def models(self) -> dict[str, ModelSpec]:
        out: dict[str, ModelSpec] = {}
        for key, entry in self.raw["models"].items():
            label = f"{self.origin[('models', key)]}: models.{key}"
            if not self._check_fields(label, entry, _MODEL_FIELDS, _MODEL_OPTIONAL):
                continue
            bad = False
            for k in ("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn_hidden",
                      "vocab_size", "params", "max_context"):
                if entry[k] <= 0:
                    self.problems.append(f"{label}: {k} must be > 0, got {entry[k]}")
                    bad = True
            if bad:
                continue
            if entry["kv_heads"] > entry["heads"] or entry["heads"] % entry["kv_heads"]:
                self.problems.append(
                    f"{label}: heads ({entry['heads']}) must be a multiple of kv_heads "
                    f"({entry['kv_heads']}) (grouped-query attention shares each KV head among "
                    "a whole number of query heads)"
                )
                continue
            out[key] = ModelSpec(
                key=key, aliases=tuple(entry.get("aliases", ())), note=entry.get("note", ""),
                gated_mlp=entry.get("gated_mlp", False),
                **{k: entry[k] for k in _MODEL_FIELDS if k not in _MODEL_OPTIONAL},
            )
        return out

    def hardware(self) -> dict[str, HardwareSpec]:
        out: dict[str, HardwareSpec] = {}
        for key, entry in self.raw["hardware"].items():
            label = f"{self.origin[('hardware', key)]}: hardware.{key}"
            if not self._check_fields(label, entry, _HARDWARE_FIELDS, _HARDWARE_OPTIONAL):
                continue
            bad = False
            for k in ("memory_gib", "memory_bandwidth_gb_s", "host_link_gb_s",
                      "interconnect_gb_s", "max_gpus"):
                if entry[k] <= 0:
                    self.problems.append(f"{label}: {k} must be > 0, got {entry[k]}")
                    bad = True
            for k in _EFFICIENCIES:
                if not 0 < entry[k] <= 1:
                    self.problems.append(
                        f"{label}: {k} must be in (0, 1] (a fraction of the peak), got {entry[k]}"
                    )
                    bad = True
            for k in ("collective_latency_us", "step_overhead_ms", "price_usd_per_hour"):
                if entry[k] < 0:
                    self.problems.append(f"{label}: {k} must be >= 0, got {entry[k]}")
                    bad = True
            tflops = entry["peak_tflops"]
            if not tflops:
                self.problems.append(f"{label}: peak_tflops names no precision")
                bad = True
            for p, v in tflops.items():
                if p not in PRECISIONS:
                    self.problems.append(
                        f"{label}: peak_tflops has unknown precision {p!r}{_closest(p, PRECISIONS)}"
                        f"; known: {', '.join(PRECISIONS)}"
                    )
                    bad = True
                elif not _type_ok(_NUM, v) or v <= 0:
                    self.problems.append(
                        f"{label}: peak_tflops.{p} must be a number > 0, got {v!r}")
                    bad = True
            sources = entry["sources"]
            for k in sources:
                if k not in SOURCE_KEYS:
                    self.problems.append(
                        f"{label}: sources has unknown key {k!r}{_closest(k, SOURCE_KEYS)}; "
                        f"known: {', '.join(SOURCE_KEYS)}"
                    )
                    bad = True
            for k in SOURCE_KEYS:
                if not isinstance(sources.get(k), str) or not sources[k].strip():
                    self.problems.append(
                        f"{label}: sources.{k} is missing: say where the {k} figure comes from"
                    )
                    bad = True
            if bad:
                continue
            out[key] = HardwareSpec(
                key=key,
                aliases=tuple(entry.get("aliases", ())),
                note=entry.get("note", ""),
                peak_tflops={p: float(v) for p, v in tflops.items()},
                sources=dict(sources),
                **{k: entry[k] for k in _HARDWARE_FIELDS
                   if k not in _HARDWARE_OPTIONAL and k not in ("peak_tflops", "sources")},
            )
        return out


def _names(section: str, entries: Mapping[str, ModelSpec] | Mapping[str, HardwareSpec],
           problems: list[str]) -> dict[str, str]:
    """Lower-case name or alias -> key; a name used twice is a problem."""
    index: dict[str, str] = {}
    for key, spec in entries.items():
        for name in (key, *spec.aliases):
            low = name.lower()
            other = index.get(low)
            if other is not None and other != key:
                problems.append(f"{section}: name {name!r} is used by both {other!r} and {key!r}")
            index[low] = key
    return index


@dataclass(frozen=True)
class Catalog:
    """Validated models and hardware, with name/alias lookup."""

    models: Mapping[str, ModelSpec]
    hardware: Mapping[str, HardwareSpec]
    sources: tuple[str, ...] = ()
    _model_index: Mapping[str, str] = field(default_factory=dict, repr=False)
    _hardware_index: Mapping[str, str] = field(default_factory=dict, repr=False)

    def model(self, name: str) -> ModelSpec:
        key = self._model_index.get(name.lower())
        if key is None:
            raise KeyError(_unknown("model", name, self._model_index, self.models))
        return self.models[key]

    def gpu(self, name: str) -> HardwareSpec:
        key = self._hardware_index.get(name.lower())
        if key is None:
            raise KeyError(_unknown("hardware", name, self._hardware_index, self.hardware))
        return self.hardware[key]


def _unknown(kind: str, name: str, index: Mapping[str, str], keys: Iterable[str]) -> str:
    return f"unknown {kind} {name!r}{_closest(name.lower(), index)}; known: {', '.join(keys)}"


def _catalog_files(location: str | os.PathLike[str]) -> list[Path]:
    path = Path(location).expanduser()
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise CatalogError([f"{path}: no such catalogue directory or file"])
    files = sorted(path.glob("*.toml"))
    if not files:
        raise CatalogError([f"{path}: holds no *.toml catalogue file"])
    return files


def catalog_dirs_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    value = (os.environ if environ is None else environ).get(ENV_VAR, "")
    return [p for p in value.split(os.pathsep) if p.strip()]


def load_catalog(
    extra: Sequence[str | os.PathLike[str]] = (),
    *,
    use_env: bool = True,
    bundled: bool = True,
    environ: Mapping[str, str] | None = None,
) -> Catalog:
    """The bundled catalogue, then ``$TIERTOP_CATALOG``'s, then ``extra`` directories or files.

    Raises:
        CatalogError: Any file is unreadable or invalid (every problem listed).
    """
    collector = _Collector()
    loaded: list[str] = []
    if bundled:
        root = resources.files("tiertop.planner") / "catalog"
        for name in ("models.toml", "hardware.toml"):
            item = root / name
            collector.add_file(f"<bundled>/{name}", item.read_text(encoding="utf-8"))
            loaded.append(f"<bundled>/{name}")
    locations = [*(catalog_dirs_from_env(environ) if use_env else []), *extra]
    for location in locations:
        for path in _catalog_files(location):
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                collector.problems.append(f"{path}: cannot read: {exc}")
                continue
            collector.add_file(path, text)
            loaded.append(str(path))
    models = collector.models()
    hardware = collector.hardware()
    model_index = _names("models", models, collector.problems)
    hardware_index = _names("hardware", hardware, collector.problems)
    if collector.problems:
        raise CatalogError(collector.problems)
    return Catalog(models, hardware, tuple(loaded), model_index, hardware_index)
