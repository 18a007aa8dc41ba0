"""The bundled catalogues, user catalogues, and the validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiertop.planner.catalog import ENV_VAR, SOURCE_KEYS, CatalogError, load_catalog

GOOD_GPU = """
[hardware.mygpu]
name = "My GPU"
memory_gib = 24
memory_bandwidth_gb_s = 500
peak_tflops = { fp16 = 100 }
host_link_gb_s = 16
interconnect_gb_s = 16
max_gpus = 4
compute_efficiency = 0.5
memory_efficiency = 0.8
host_link_efficiency = 0.8
interconnect_efficiency = 0.7
collective_latency_us = 10
step_overhead_ms = 0
price_usd_per_hour = 1.0
price_model = "on-demand"
price_date = "2026-01"
[hardware.mygpu.sources]
memory = "datasheet"
compute = "datasheet"
bandwidth = "datasheet"
host_link = "datasheet"
interconnect = "datasheet"
price = "my cloud, 2026-01"
"""

GOOD_MODEL = """
[models.mymodel]
name = "My model"
family = "llama"
layers = 2
hidden = 64
heads = 4
kv_heads = 2
head_dim = 16
ffn_hidden = 128
vocab_size = 100
params = 1000
max_context = 512
source = "made up"
"""


def write(tmp_path: Path, text: str, name: str = "extra.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return tmp_path


def problems(tmp_path: Path, text: str) -> str:
    with pytest.raises(CatalogError) as err:
        load_catalog([write(tmp_path, text)], use_env=False)
    return str(err.value)


def test_bundled_catalogue_has_what_the_issue_lists() -> None:
    c = load_catalog(use_env=False)
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "opt-1.3b", "opt-2.7b",
                 "opt-6.7b", "opt-13b", "opt-30b", "opt-66b", "llama-3-8b", "llama-3-70b"):
        assert name in c.models
    assert c.model("llama-3-70b").kv_heads == 8 and c.model("llama-3-70b").heads == 64
    assert set(c.hardware) == {"t4", "a10g", "l4", "l40s", "a100-40gb", "a100-80gb", "h100",
                               "h200"}
    for hw in c.hardware.values():
        assert set(hw.sources) == set(SOURCE_KEYS)
        assert all(hw.sources[k].strip() for k in SOURCE_KEYS)
        assert hw.price_date and hw.price_model and hw.price_usd_per_hour > 0
        assert 0 < hw.compute_efficiency <= 1 and "fp16" in hw.peak_tflops


def test_parameter_counts_match_the_shapes() -> None:
    """A typo in a shape (or a count) shows up as a mismatch with the architecture formula."""
    for m in load_catalog(use_env=False).models.values():
        assert m.derived_params() == m.params, m.key


def test_lookup_by_alias_any_case_and_unknown_names() -> None:
    c = load_catalog(use_env=False)
    assert c.model("LLAMA3-8B").key == "llama-3-8b"
    assert c.model("gpt2-small").key == "gpt2"
    assert c.gpu("H100-SXM").key == "h100"
    with pytest.raises(KeyError, match=r"unknown model 'llama-3-7b'.*did you mean"):
        c.model("llama-3-7b")


def test_user_catalogue_adds_and_overrides(tmp_path: Path) -> None:
    write(tmp_path, GOOD_GPU + GOOD_MODEL)
    write(tmp_path, """
[hardware.h100]
price_usd_per_hour = 6.88
price_date = "2025-07"
[hardware.h100.sources]
price = "AWS p5.48xlarge after the June 2025 cut / 8"
""", "prices.toml")
    c = load_catalog([tmp_path], use_env=False)
    assert c.gpu("mygpu").memory_gib == 24
    assert c.model("mymodel").kv_heads == 2
    h100 = c.gpu("h100")
    assert (h100.price_usd_per_hour, h100.price_date) == (6.88, "2025-07")
    assert h100.sources["price"].startswith("AWS p5.48xlarge after")
    assert h100.sources["memory"].startswith("NVIDIA H100")  # untouched keys stay
    assert h100.memory_gib == 79.65


def test_environment_variable_adds_catalogues(tmp_path: Path) -> None:
    write(tmp_path, GOOD_MODEL)
    c = load_catalog(environ={ENV_VAR: str(tmp_path)})
    assert "mymodel" in c.models
    assert "mymodel" not in load_catalog(environ={}).models


def test_unknown_key_is_rejected_with_file_key_and_suggestion(tmp_path: Path) -> None:
    text = problems(tmp_path, GOOD_MODEL.replace("layers = 2", "layer = 2"))
    assert "extra.toml: models.mymodel: unknown key 'layer' (did you mean 'layers'?)" in text
    assert "missing key(s) layers" in text


@pytest.mark.parametrize(("edit", "message"), [
    (("memory_gib = 24", 'memory_gib = "24"'), "memory_gib must be a number, got str '24'"),
    (("compute_efficiency = 0.5", "compute_efficiency = 1.5"),
     "compute_efficiency must be in (0, 1]"),
    (("peak_tflops = { fp16 = 100 }", "peak_tflops = { fp61 = 100 }"),
     "unknown precision 'fp61' (did you mean 'fp16'?)"),
    (("max_gpus = 4", "max_gpus = 0"), "max_gpus must be > 0"),
    (('price = "my cloud, 2026-01"\n', ""), "sources.price is missing"),
    (("price_usd_per_hour = 1.0", "price_usd_per_hour = -1.0"),
     "price_usd_per_hour must be >= 0"),
])
def test_hardware_validation(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    assert edit[0] in GOOD_GPU
    text = problems(tmp_path, GOOD_GPU.replace(*edit))
    assert "hardware.mygpu" in text and message in text


def test_model_validation(tmp_path: Path) -> None:
    text = problems(tmp_path, GOOD_MODEL.replace("kv_heads = 2", "kv_heads = 3"))
    assert "heads (4) must be a multiple of kv_heads (3)" in text
    text = problems(tmp_path, GOOD_MODEL.replace("layers = 2", "layers = 0"))
    assert "layers must be > 0" in text


def test_structural_errors(tmp_path: Path) -> None:
    assert "not valid TOML" in problems(tmp_path, "[models.x\n")
    assert "unknown table [model] (did you mean 'models'?)" in problems(
        tmp_path, GOOD_MODEL.replace("[models.", "[model."))
    dotted = problems(tmp_path, GOOD_MODEL.replace("[models.mymodel]", "[models.my-1.5b]"))
    assert 'a dot in a name must be quoted: [models."my-1.5b"]' in dotted
    clash = problems(tmp_path, GOOD_MODEL + 'aliases = ["gpt2"]\n')
    assert "name 'gpt2' is used by both" in clash


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    bad = (GOOD_GPU.replace("max_gpus = 4", "max_gpus = 0")
           + GOOD_MODEL.replace("layers = 2", "layer = 2"))
    with pytest.raises(CatalogError) as err:
        load_catalog([write(tmp_path, bad)], use_env=False)
    assert len(err.value.problems) == 3  # max_gpus, the unknown key, the missing one
    assert str(err.value).startswith("3 catalogue errors:")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="no such catalogue directory"):
        load_catalog([tmp_path / "nope"], use_env=False)
    with pytest.raises(CatalogError, match="holds no"):
        load_catalog([tmp_path], use_env=False)
