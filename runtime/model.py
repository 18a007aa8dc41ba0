"""The real model: a GPT-2 architecture network through transformers, never downloaded.

:func:`load_model` builds one of two named shapes from a config with seeded random weights, or
loads a checkpoint that is already on local disk:

- ``tiny``: 2 layers, 4 heads, 64 hidden (head_dim 16), vocabulary 1000, 2048 positions, weights
  drawn with std 0.1 so greedy output depends on the context. Loads in well under a second and
  runs a forward pass in milliseconds on one CPU core; for tests and demos.
- ``gpt2-small``: the real 124M GPT-2 shape (12 layers, 12 heads, 768 hidden, vocabulary 50257,
  1024 positions) with seeded random weights; for benchmarks. KV sizes, copy costs and timings
  depend on the shape, not on the weights.
- any other string is a path to a local checkpoint directory (``save_pretrained`` output), read
  with ``local_files_only=True``.

The same ``seed`` gives identical weights (the init runs under a forked, seeded torch RNG, so the
caller's global RNG state is left as it was). The model is in eval mode; the engine runs it under
``torch.inference_mode``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Named shapes built from a config (GPT2Config keyword arguments).
SHAPES: dict[str, dict[str, int | float]] = {
    # initializer_range 0.1 (GPT-2 uses 0.02): at this width, 0.02 gives a near-uniform model whose
    # greedy output repeats one token whatever the context, which would make output checks vacuous.
    "tiny": {
        "n_layer": 2,
        "n_head": 4,
        "n_embd": 64,
        "vocab_size": 1000,
        "n_positions": 2048,
        "initializer_range": 0.1,
    },
    "gpt2-small": {
        "n_layer": 12,
        "n_head": 12,
        "n_embd": 768,
        "vocab_size": 50257,
        "n_positions": 1024,
    },
}

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


class ModelLoadError(ValueError):
    """The model spec, device or dtype cannot be used (the message says why and what would)."""


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Shape facts of a loaded model that size its KV cache."""

    spec: str
    layers: int
    heads: int
    head_dim: int
    hidden: int
    vocab_size: int
    n_positions: int
    dtype: torch.dtype
    device: torch.device
    seed: int | None  # None for a checkpoint (its weights are what they are)

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        """The numpy dtype of KV blocks (bfloat16 has none; such blocks cannot be stored)."""
        if self.dtype is torch.bfloat16:
            raise ModelLoadError("bfloat16 KV has no numpy dtype; use float32 or float16")
        return np.dtype(str(self.dtype).removeprefix("torch."))

    @property
    def itemsize(self) -> int:
        return int(torch.tensor([], dtype=self.dtype).element_size())

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of K and V of one token over all layers."""
        return self.layers * 2 * self.heads * self.head_dim * self.itemsize

    def block_bytes(self, block_size: int) -> int:
        """Bytes of one KV block of ``block_size`` tokens."""
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        return self.kv_bytes_per_token * block_size

    def block_shape(self, block_size: int) -> tuple[int, int, int, int, int]:
        """Shape of one KV block: [layers, 2 (K, V), heads, block_size, head_dim]."""
        return (self.layers, 2, self.heads, block_size, self.head_dim)

    def describe(self) -> str:
        seed = "checkpoint weights" if self.seed is None else f"random weights, seed {self.seed}"
        return (
            f"{self.spec}: GPT-2, {self.layers} layers x {self.heads} heads x {self.head_dim} "
            f"head_dim, vocab {self.vocab_size}, {self.n_positions} positions, "
            f"{str(self.dtype).removeprefix('torch.')} on {self.device} ({seed}); "
            f"KV {self.kv_bytes_per_token} B/token"
        )


@dataclass(slots=True)
class LoadedModel:
    """A GPT-2 LM head model (``model``, a ``GPT2LMHeadModel``) and its shape facts."""

    model: Any
    info: ModelInfo

    # Shortcuts to the shape facts, so ``loaded.layers`` etc. read naturally.
    @property
    def layers(self) -> int:
        return self.info.layers

    @property
    def heads(self) -> int:
        return self.info.heads

    @property
    def head_dim(self) -> int:
        return self.info.head_dim

    @property
    def dtype(self) -> torch.dtype:
        return self.info.dtype

    @property
    def device(self) -> torch.device:
        return self.info.device

    @property
    def vocab_size(self) -> int:
        return self.info.vocab_size

    @property
    def n_positions(self) -> int:
        return self.info.n_positions

    @property
    def kv_bytes_per_token(self) -> int:
        return self.info.kv_bytes_per_token

    def block_bytes(self, block_size: int) -> int:
        return self.info.block_bytes(block_size)

    def block_shape(self, block_size: int) -> tuple[int, int, int, int, int]:
        return self.info.block_shape(block_size)

    def describe(self) -> str:
        return self.info.describe()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` is the CPU; ``cuda`` (or ``cuda:N``) only when torch sees a GPU."""
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"unknown device {device!r}: {exc}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"device {device!r} asked for, but torch {torch.__version__} sees no CUDA GPU "
                f"(torch.version.cuda={torch.version.cuda}); use device=None for the CPU"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ModelLoadError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present"
            )
        return dev
    if dev.type != "cpu":
        raise ModelLoadError(f"device {device!r} is not supported; use 'cpu' or 'cuda'")
    return dev


def load_model(
    spec: str,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: str = "float32",
) -> LoadedModel:
    """Build or load a GPT-2 architecture model, in eval mode with gradients off.

    Args:
        spec: ``tiny``, ``gpt2-small``, or the path of a local checkpoint directory.
        seed: seeds the random weights of a named shape (ignored for a checkpoint).
        device: ``None`` or ``"cpu"`` (default), or ``"cuda"`` when a GPU is present.
        dtype: ``float32`` (default), ``float16`` or ``bfloat16``.

    Raises:
        ModelLoadError: unknown dtype, device not present, checkpoint missing or not GPT-2.
    """
    from transformers import GPT2Config, GPT2LMHeadModel  # heavy import: only when used

    if dtype not in _DTYPES:
        raise ModelLoadError(f"dtype {dtype!r} not supported; use one of {sorted(_DTYPES)}")
    torch_dtype = _DTYPES[dtype]
    dev = resolve_device(device)
    model: Any
    used_seed: int | None
    if spec in SHAPES:
        shape = SHAPES[spec]
        last = int(shape["vocab_size"]) - 1
        kwargs: dict[str, Any] = {**shape, "bos_token_id": last, "eos_token_id": last}
        config = GPT2Config(**kwargs)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = GPT2LMHeadModel(config)
        used_seed = seed
    else:
        path = Path(os.path.expanduser(spec))
        if not path.is_dir() or not (path / "config.json").is_file():
            what = "does not exist" if not path.exists() else "holds no config.json"
            raise ModelLoadError(
                f"model {spec!r}: not a known shape ({', '.join(SHAPES)}) and the checkpoint "
                f"directory {str(path)!r} {what}; nothing is downloaded, pass a local "
                "save_pretrained() directory"
            )
        try:
            config = GPT2Config.from_pretrained(path, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"model {spec!r}: cannot read its config: {exc}") from exc
        if getattr(config, "model_type", None) != "gpt2":
            raise ModelLoadError(
                f"model {spec!r} is a {config.model_type!r} checkpoint; tiertop runs GPT-2 "
                "architecture models"
            )
        try:
            model = GPT2LMHeadModel.from_pretrained(path, local_files_only=True, dtype=torch_dtype)
        except OSError as exc:
            raise ModelLoadError(f"model {spec!r}: cannot load its weights: {exc}") from exc
        used_seed = None
    model = model.to(device=dev, dtype=torch_dtype)
    model.eval()
    model.requires_grad_(False)
    cfg = model.config
    heads = int(cfg.n_head)
    hidden = int(cfg.n_embd)
    if hidden % heads:
        raise ModelLoadError(f"model {spec!r}: hidden size {hidden} not divisible by {heads} heads")
    info = ModelInfo(
        spec=spec,
        layers=int(cfg.n_layer),
        heads=heads,
        head_dim=hidden // heads,
        hidden=hidden,
        vocab_size=int(cfg.vocab_size),
        n_positions=int(cfg.n_positions),
        dtype=torch_dtype,
        device=dev,
        seed=used_seed,
    )
    return LoadedModel(model, info)
