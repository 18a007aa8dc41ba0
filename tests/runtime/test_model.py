"""The model loader: shapes, seeded determinism, load time, local checkpoints, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tiertop.runtime.model import SHAPES, LoadedModel, ModelLoadError, load_model

transformers = pytest.importorskip("transformers")


def _same_weights(a: LoadedModel, b: LoadedModel) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_shape_facts() -> None:
    m = load_model("tiny")
    assert (m.layers, m.heads, m.head_dim) == (2, 4, 16)
    assert m.dtype is torch.float32
    assert m.device == torch.device("cpu")
    assert m.vocab_size == 1000 and m.n_positions == 2048
    # K and V, 2 layers, 4 heads x 16 dims, 4 bytes each
    assert m.kv_bytes_per_token == 2 * 2 * 4 * 16 * 4 == 1024
    assert m.block_bytes(16) == 16 * 1024
    assert m.block_shape(16) == (2, 2, 4, 16, 16)
    assert not m.model.training
    assert all(not p.requires_grad for p in m.model.parameters())
    assert "2 layers" in m.describe() and "1024 B/token" in m.describe()
    with pytest.raises(ValueError, match="block_size"):
        m.block_bytes(0)


def test_kv_bytes_match_the_real_cache() -> None:
    m = load_model("tiny")
    with torch.inference_mode():
        out = m.model(input_ids=torch.arange(20)[None], use_cache=True)
    cache = out.past_key_values
    total = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert total == 20 * m.kv_bytes_per_token
    assert cache.layers[0].keys.shape == (1, m.heads, 20, m.head_dim)


@pytest.mark.slow
def test_gpt2_small_is_the_real_124m_shape() -> None:
    m = load_model("gpt2-small")
    assert (m.layers, m.heads, m.head_dim, m.info.hidden) == (12, 12, 64, 768)
    assert (m.vocab_size, m.n_positions) == (50257, 1024)
    assert sum(p.numel() for p in m.model.parameters()) == 124_439_808
    assert m.kv_bytes_per_token == 12 * 2 * 768 * 4 == 73_728
    assert m.block_bytes(16) == 1_179_648


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    state = torch.random.get_rng_state()
    a, b, c = load_model("tiny", seed=7), load_model("tiny", seed=7), load_model("tiny", seed=8)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)
    # the caller's global RNG is left as it was
    assert torch.equal(torch.random.get_rng_state(), state)
    ids = torch.arange(30)[None]
    with torch.inference_mode():
        assert torch.equal(a.model(input_ids=ids).logits, b.model(input_ids=ids).logits)




def test_local_checkpoint_round_trip(tmp_path: Path) -> None:
    original = load_model("tiny", seed=5)
    original.model.save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path))
    assert loaded.info.seed is None
    assert (loaded.layers, loaded.heads, loaded.head_dim) == (2, 4, 16)
    assert _same_weights(original, loaded)
    ids = torch.arange(50)[None]
    with torch.inference_mode():
        assert torch.equal(original.model(input_ids=ids).logits, loaded.model(input_ids=ids).logits)


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="does not exist") as info:
        load_model(str(missing))
    assert str(missing) in str(info.value)
    assert "tiny" in str(info.value)  # says which names are known
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_model(str(tmp_path))  # a directory, but not a checkpoint


def test_not_gpt2_checkpoint_is_refused(tmp_path: Path) -> None:
    config = transformers.GPTNeoConfig(
        vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global"], 2]]
    )
    config.save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="gpt_neo"):
        load_model(str(tmp_path))


def test_bad_dtype_and_device() -> None:
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model("tiny", dtype="int8")
    with pytest.raises(ModelLoadError, match="not supported"):
        load_model("tiny", device="meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="no CUDA GPU"):
        load_model("tiny", device="cuda")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_model_matches_cpu() -> None:
    cpu, gpu = load_model("tiny", seed=1), load_model("tiny", seed=1, device="cuda")
    assert gpu.device.type == "cuda"
    ids = torch.arange(40)[None]
    with torch.inference_mode():
        a = cpu.model(input_ids=ids).logits
        b = gpu.model(input_ids=ids.cuda()).logits.cpu()
    assert torch.allclose(a, b, atol=1e-4)


def test_named_shapes_are_listed() -> None:
    assert set(SHAPES) == {"tiny", "gpt2-small"}
