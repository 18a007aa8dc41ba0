"""Export: the schema (columns, types, units), row counts and values in CSV, JSON lines and
Parquet; the schema document; the plots and the HTML report."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from tiertop.monitor.export import TABLES, export_recording, schema_markdown
from tiertop.monitor.plots import FIGURES
from tiertop.monitor.recording import RecordingWriter

from tests.recording.streams import TIERS, session

REPO = Path(__file__).resolve().parents[2]
SECONDS = 30.0
TICKS = int(SECONDS / 0.25)
#: Rows the stream of tests.recording.streams gives over SECONDS.
EXPECTED_ROWS = {
    "tier_stats": TICKS * len(TIERS),
    "service": TICKS,
    "block_events": 2 * 2 * TICKS,  # two requests per tick, each one stored + one removed
    "moves": 2 * (TICKS // 4),
    "requests": 2 * TICKS,
    "control": 2,  # at 15 s and 30 s
    "faults": 4,  # slow fault at 20 s + health change, cleared at 30 s + health change
    "marks": 1,
}


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("exp") / "e.ttrec"
    with RecordingWriter(path) as writer:
        for k, (r, topic, seq, payload) in enumerate(session(SECONDS)):
            writer.append(r, topic, seq, payload)
            if k == 200:
                writer.mark("half way, more or less")
    return path


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def read_jsonl(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return (list(rows[0]) if rows else []), rows


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_tables_have_the_documented_columns_and_the_expected_rows(
    recording: Path, tmp_path: Path, fmt: str
) -> None:
    result = export_recording(recording, tmp_path, fmt)
    assert result.rows == EXPECTED_ROWS
    assert result.issues == []
    for name, columns in TABLES.items():
        path = tmp_path / f"{name}.{fmt}"
        names = [c.name for c in columns]
        if fmt == "csv":
            header, rows = read_csv(path)
            assert header == names
        elif fmt == "jsonl":
            header, rows = read_jsonl(path)
            assert all(list(r) == names for r in rows)
        else:
            table = pq.read_table(path)
            assert table.column_names == names
            types = {"float": "double", "int": "int64", "str": "string", "bool": "bool"}
            for c, field in zip(columns, table.schema, strict=True):
                assert str(field.type) == types[c.type], (name, c.name)
                meta = field.metadata or {}
                assert meta[b"unit"] == c.unit.encode()
                assert meta[b"description"] == c.description.encode()
            rows = table.to_pylist()
        assert len(rows) == EXPECTED_ROWS[name], name

    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["format"] == fmt
    assert {k: v["rows"] for k, v in manifest["tables"].items()} == EXPECTED_ROWS
    assert manifest["tables"]["tier_stats"]["columns"][0] == {
        "name": "time_s", "type": "float", "unit": "s",
        "description": TABLES["tier_stats"][0].description}
    assert manifest["recording"]["mode"] == "sim"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["phases"][0]["tiers"]["dram"]["hits"] == 9 * (TICKS - 1)


def test_values_and_units_are_right(recording: Path, tmp_path: Path) -> None:
    export_recording(recording, tmp_path, "jsonl")
    _, stats = read_jsonl(tmp_path / "tier_stats.jsonl")
    dram = [r for r in stats if r["tier"] == "dram"]
    assert dram[0]["time_s"] == pytest.approx(0.25) and dram[0]["hit_ratio"] is None
    assert dram[1]["hit_ratio"] == pytest.approx(0.9)  # +9 hits, +1 miss per tick
    assert dram[1]["hits"] == 18 and dram[1]["occupancy"] == pytest.approx(
        dram[1]["used_bytes"] / (1 << 20))
    assert dram[1]["get_p50_s"] == pytest.approx(dram[1]["get_p99_s"])  # one bucket
    assert 5e-7 < dram[1]["get_p50_s"] < 2e-6 and dram[1]["get_mean_s"] == pytest.approx(1e-6)
    remote = [r for r in stats if r["tier"] == "remote"]
    assert {r["health"] for r in remote if 20.0 <= r["time_s"] < 30.0} == {"degraded"}
    _, control = read_jsonl(tmp_path / "control.jsonl")
    assert [round(c["time_s"], 3) for c in control] == [14.998, 29.998]
    assert json.loads(control[0]["old"]) == {"high": 0.9}
    assert json.loads(control[0]["new"]) == {"high": 0.85}
    _, faults = read_jsonl(tmp_path / "faults.jsonl")
    assert [(f["kind"], f["new"]) for f in faults] == [
        ("fault", "active"), ("health", "degraded"), ("fault", "inactive"), ("health", "ok")]
    assert faults[0]["delay_s"] == pytest.approx(0.005) and faults[1]["delay_s"] is None
    _, events = read_jsonl(tmp_path / "block_events.jsonl")
    assert events[0]["event"] == "BlockStored" and events[0]["block_hashes"] == "1"
    assert events[0]["n_tokens"] == 16 and events[1]["event"] == "BlockRemoved"
    assert {e["tier"] for e in events} == set(TIERS)
    _, requests = read_jsonl(tmp_path / "requests.jsonl")
    assert requests[1]["served_by"] == "dram" and requests[0]["served_by"] == "recompute"
    assert json.loads(requests[1]["prefix_tokens"]) == {"dram": 32}
    assert requests[1]["fetch_bytes"] == 8192
    _, moves = read_jsonl(tmp_path / "moves.jsonl")
    assert moves[0]["kind"] == "demote" and moves[0]["nbytes"] == 4096
    _, marks = read_jsonl(tmp_path / "marks.jsonl")
    assert marks[0]["label"] == "half way, more or less" and 0 < marks[0]["time_s"] < SECONDS


def test_the_schema_document_lists_every_column(recording: Path) -> None:
    doc = (REPO / "docs" / "export-schema.md").read_text()
    assert schema_markdown().strip() in doc  # regenerate the doc when a column changes
    for name, columns in TABLES.items():
        section = doc[doc.index(f"### `{name}`"):]
        for c in columns:
            assert f"| `{c.name}` | {c.type} | {c.unit or '-'} |" in section, (name, c.name)


def test_plots_and_report(recording: Path, tmp_path: Path) -> None:
    result = export_recording(recording, tmp_path, "csv", plots=True)
    for name in FIGURES:
        png = tmp_path / "plots" / name
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(data) > 20_000, name  # drawn lines, not an empty canvas
        assert f"plots/{name}" in result.files
    page = (tmp_path / "index.html").read_text()
    for name in FIGURES:
        assert f'src="plots/{name}"' in page
    assert "Phase all" in page and "set_watermarks" in page
    assert 'href="tier_stats.csv"' in page
