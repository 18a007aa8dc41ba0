"""Tier specifications: parsing, clear errors, and opening (and releasing) real stores."""

from __future__ import annotations

from pathlib import Path

import pytest
from tiertop.tiers.spec import OpenTiers, TierSpec


def test_parse_command_line_form() -> None:
    spec = TierSpec.parse("remote:128MiB,codec=zstd,high=0.8,low=0.6,eviction=arc,name=pool")
    assert (spec.kind, spec.name, spec.capacity_bytes) == ("remote", "pool", 128 << 20)
    assert (spec.high, spec.low, spec.eviction) == (0.8, 0.6, "arc")
    assert spec.options == {"codec": "zstd"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("dram", r"expected KIND:CAPACITY"),
        ("hbm:1GiB", r"unknown tier kind 'hbm'; known: dram, numa, remote, disk, cuda"),
        ("dram:lots", r"not a size: 'lots'"),
        ("dram:1GiB,high=1.5", r"high watermark 1.5 for tier dram is outside 0..1"),
        ("dram:1GiB,colour=blue", r"tier dram: unknown key\(s\) colour; allowed for dram: "),
        ("disk:1GiB,codec=zstd", r"unknown key\(s\) codec; allowed for disk: .*dir.*fsync"),
        ("dram:1GiB,slot", r"option 'slot' is not key=value"),
    ],
)
def test_bad_specs_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TierSpec.parse(text)


def test_open_tiers_builds_real_stores_and_releases_everything(tmp_path: Path) -> None:
    specs = [TierSpec.parse(t) for t in ("dram:1MiB", "remote:1MiB", "disk:4MiB", "numa:1MiB")]
    opened = OpenTiers(specs, workdir=tmp_path)
    kinds = [c.store.kind if c.store is not None else None for c in opened.configs]
    assert kinds == ["dram", "remote", "disk", "numa"]
    server = opened._servers[0]
    assert server.alive
    assert any(tmp_path.iterdir())  # the disk tier's temporary directory
    opened.close()
    assert not server.alive
    assert not any(tmp_path.iterdir())


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(ValueError, match="tier names must be unique"):
        OpenTiers([TierSpec.parse("dram:1MiB"), TierSpec.parse("dram:2MiB")])
