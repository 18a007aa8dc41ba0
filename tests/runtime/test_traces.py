"""Trace loaders (Mooncake, BurstGPT, Azure, Splitwise), limits, errors and replay helpers."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tiertop.runtime.traces import (
    FRESH_KEY_BASE,
    TraceError,
    TracePlayer,
    TraceReader,
    TraceRequest,
    TraceTokens,
    detect_format,
    load_trace,
)
from tiertop.tiers.block import prefix_hashes

MOONCAKE = [
    {"timestamp": 0, "input_length": 655, "output_length": 52, "hash_ids": [46, 47]},
    {"timestamp": 10535, "input_length": 672, "output_length": 26, "hash_ids": [46, 47]},
    {"timestamp": 27482, "input_length": 1100, "output_length": 7, "hash_ids": [46, 48, 49]},
    {"timestamp": 30000.5, "input_length": 512, "output_length": 1, "hash_ids": [50]},
]

BURSTGPT = """\ufeff Timestamp , Model ,Request tokens,Response tokens,Total tokens,Log Type
5,ChatGPT,472,18,490,Conversation log
45,GPT-4,1087,0,1087,API log

46.5,ChatGPT,20,30,50,Conversation log
"""

AZURE_2023 = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,4808,10
2023-11-16 18:15:50.4805900,3180,8
2023-11-16 18:16:46.6805900,110,27
"""

AZURE_2024 = """TIMESTAMP,ContextTokens,GeneratedTokens
2024-05-10 00:00:00.009930+00:00,2162,5
2024-05-10 00:00:01+00:00,1000,13
2024-05-10 02:00:00.109930+02:00,57,1
"""

SPLITWISE_SIM = (
    "request_id,request_type,application_id,arrival_timestamp,batch_size,prompt_size,token_size\n"
    "0,2,0,0.5,1,2048,28\n"
    "1,2,0,0.75,1,100,211\n"
)


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _requests(path: Path, **options: Any) -> list[TraceRequest]:
    requests: list[TraceRequest] = load_trace(path, **options).requests
    return requests


# --------------------------------------------------------------------------- happy paths


def test_mooncake_exact_values(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "trace.jsonl", MOONCAKE)
    trace = load_trace(path)
    assert trace.format == "mooncake" and trace.skipped == 0
    assert trace.requests == [
        TraceRequest(0.0, 655, 52, [46, 47]),
        TraceRequest(10.535, 672, 26, [46, 47]),
        TraceRequest(27.482, 1100, 7, [46, 48, 49]),
        TraceRequest(30.0005, 512, 1, [50]),
    ]
    assert trace.duration_s == 30.0005


def test_mooncake_rebases_time_and_reads_optional_conversation_and_gzip(tmp_path: Path) -> None:
    rows = [
        {"timestamp": 5000, "input_length": 3, "output_length": 1, "session_id": 17},
        {"timestamp": 7000, "input_length": 4, "output_length": 2, "hash_ids": [1]},
    ]
    path = tmp_path / "trace.jsonl.gz"
    with gzip.open(path, "wt") as out:
        out.write("\n".join(json.dumps(row) for row in rows) + "\n\n")
    assert detect_format(path) == "mooncake"
    assert _requests(path) == [
        TraceRequest(0.0, 3, 1, None, "17"),
        TraceRequest(2.0, 4, 2, [1], None),
    ]


def test_burstgpt_with_bom_whitespace_and_failed_requests(tmp_path: Path) -> None:
    path = tmp_path / "BurstGPT_1.csv"
    path.write_text(BURSTGPT, encoding="utf-8")
    assert detect_format(path) == "burstgpt"
    assert _requests(path) == [
        TraceRequest(0.0, 472, 18),
        TraceRequest(40.0, 1087, 0),  # a failed request: kept, 0 response tokens
        TraceRequest(41.5, 20, 30),
    ]


def test_burstgpt_session_id_becomes_the_conversation(tmp_path: Path) -> None:
    path = tmp_path / "burst.csv"
    path.write_text(
        "Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,"
        "Total tokens,Log Type\n"
        "1,abc,3,ChatGPT,10,20,30,Conversation log\n"
        "2,,3,ChatGPT,11,21,32,API log\n"
    )
    assert _requests(path) == [TraceRequest(0.0, 10, 20, None, "abc"), TraceRequest(1.0, 11, 21)]


def test_azure_2023_and_2024_timestamps(tmp_path: Path) -> None:
    old = tmp_path / "AzureLLMInferenceTrace_conv.csv"
    old.write_text(AZURE_2023)
    assert detect_format(old) == "azure"
    assert _requests(old) == [
        TraceRequest(0.0, 4808, 10),
        TraceRequest(3.8, 3180, 8),
        TraceRequest(60.0, 110, 27),
    ]
    new = tmp_path / "AzureLLMInferenceTrace_code_1week.csv"
    new.write_text(AZURE_2024)
    # mixed precision in one file; +02:00 is the same instant as 00:00:00.10993 UTC
    assert [r.arrival_s for r in _requests(new, sort=True)] == [0.0, 0.1, 0.99007]
    with pytest.raises(TraceError, match=r"AzureLLMInferenceTrace_code_1week\.csv:4: field "):
        load_trace(new)  # unsorted in time without sort=True


def test_splitwise_both_variants(tmp_path: Path) -> None:
    azure_columns = tmp_path / "splitwise_code.csv"
    azure_columns.write_text(AZURE_2023)
    assert [r.input_tokens for r in _requests(azure_columns, format="splitwise")] == [
        4808,
        3180,
        110,
    ]
    sim = tmp_path / "rr_code_50.csv"
    sim.write_text(SPLITWISE_SIM)
    assert detect_format(sim) == "splitwise"
    assert _requests(sim) == [TraceRequest(0.0, 2048, 28), TraceRequest(0.25, 100, 211)]


def test_format_override_and_detection_by_header(tmp_path: Path) -> None:
    odd = tmp_path / "trace.log"
    odd.write_text(AZURE_2023)
    assert detect_format(odd) == "azure"
    lines = _jsonl(tmp_path / "trace.txt", MOONCAKE[:1])
    assert detect_format(lines) == "mooncake"
    unknown = tmp_path / "other.csv"
    unknown.write_text("time,tokens\n1,2\n")
    with pytest.raises(TraceError, match=r"other\.csv:1: unknown trace header \(time, tokens\)"):
        detect_format(unknown)
    with pytest.raises(TraceError, match=r"other\.csv:1: field 'Timestamp': missing column"):
        load_trace(unknown, format="burstgpt")
    with pytest.raises(ValueError, match="format must be one of"):
        load_trace(unknown, format="sharegpt")


# --------------------------------------------------------------------------- scaling and limits


def test_speed_scales_arrival_times(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "trace.jsonl", MOONCAKE)
    assert [r.arrival_s for r in _requests(path, speed=2.0)] == [0.0, 5.2675, 13.741, 15.00025]
    assert [r.arrival_s for r in _requests(path, speed=0.5)] == [0.0, 21.07, 54.964, 60.001]
    with pytest.raises(ValueError, match="speed must be a finite number > 0"):
        load_trace(path, speed=0)


def test_limits_and_start_offset(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "trace.jsonl", MOONCAKE)
    assert [r.input_tokens for r in _requests(path, max_requests=2)] == [655, 672]
    assert _requests(path, max_requests=0) == []
    # max_duration_s is replay time: at speed 2 the third request arrives at 13.741 s
    assert [r.input_tokens for r in _requests(path, speed=2.0, max_duration_s=13.741)] == [655, 672]
    assert len(_requests(path, speed=2.0, max_duration_s=13.75)) == 3
    # start_s is trace time: skip the first 10 s, re-base the first kept request to 0
    kept = _requests(path, start_s=10.0, speed=2.0)
    assert [(r.arrival_s, r.input_tokens) for r in kept] == [
        (0.0, 672),
        (8.4735, 1100),
        (9.73275, 512),
    ]
    assert [r.input_tokens for r in _requests(path, start_s=10.6, max_requests=1)] == [1100]


def test_streaming_reader_and_player(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "trace.jsonl", MOONCAKE)
    player = TracePlayer(TraceReader(path))
    assert player.next_arrival_s == 0.0
    assert [r.input_tokens for r in player.requests_until(11.0)] == [655, 672]
    assert player.next_request(27.0) is None
    assert player.next_arrival_s == 27.482
    request = player.next_request()
    assert request is not None and request.input_tokens == 1100
    assert not player.exhausted
    assert player.requests_until(math.inf)[0].input_tokens == 512
    assert player.exhausted and player.next_arrival_s == math.inf and player.issued == 4


# --------------------------------------------------------------------------- broken input


@pytest.mark.parametrize(
    ("rows", "line", "field", "problem"),
    [
        (
            ['{"timestamp": 0, "input_length": 1, "output_length": 1}', "{oops"],
            2,
            None,
            "invalid JSON",
        ),
        (['{"timestamp": 0, "output_length": 1}'], 1, "input_length", "missing"),
        (
            ['{"timestamp": "soon", "input_length": 1, "output_length": 1}'],
            1,
            "timestamp",
            "is not a number",
        ),
        (
            ['{"timestamp": 0, "input_length": -4, "output_length": 1}'],
            1,
            "input_length",
            "must be >= 0, got -4",
        ),
        (
            ['{"timestamp": 0, "input_length": 4, "output_length": 1.5}'],
            1,
            "output_length",
            "whole number",
        ),
        (
            ['{"timestamp": 0, "input_length": 4, "output_length": 1, "hash_ids": [1, "x"]}'],
            1,
            "hash_ids",
            "list of non-negative integers",
        ),
        (
            ['{"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [1]}'],
            1,
            "hash_ids",
            "has 1 ids but input_length 600 spans 2 blocks of 512 tokens",
        ),
        (["[1, 2]"], 1, None, "expected a JSON object"),
        (
            [
                '{"timestamp": 9, "input_length": 1, "output_length": 1}',
                '{"timestamp": 3, "input_length": 1, "output_length": 1}',
            ],
            2,
            "timestamp",
            "time goes backwards",
        ),
    ],
)
def test_broken_mooncake_names_file_line_and_field(
    tmp_path: Path, rows: list[str], line: int, field: str | None, problem: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(TraceError) as caught:
        load_trace(path)
    error = caught.value
    assert (error.path, error.line, error.field) == (str(path), line, field)
    assert str(error).startswith(f"{path}:{line}:")
    assert problem in str(error)
    if field is not None:
        assert f"field {field!r}" in str(error)


@pytest.mark.parametrize(
    ("body", "line", "field", "problem"),
    [
        (
            "Timestamp,Model,Request tokens,Total tokens\n1,x,2,3\n",
            1,
            "Response tokens",
            "missing column",
        ),
        (
            "Timestamp,Model,Request tokens,Response tokens\n1,x,2,3\n2,x,many,3\n",
            3,
            "Request tokens",
            "'many' is not a number",
        ),
        (
            "Timestamp,Model,Request tokens,Response tokens\n1,x,2,-3\n",
            2,
            "Response tokens",
            "must be >= 0",
        ),
        (
            "Timestamp,Model,Request tokens,Response tokens\n1,x,2,3\n,x,2,3\n",
            3,
            "Timestamp",
            "empty value",
        ),
        (
            "Timestamp,Model,Request tokens,Response tokens\n1,x,2\n",
            2,
            "Response tokens",
            "missing value",
        ),
        (
            "Timestamp,Model,Request tokens,Response tokens\nnan,x,2,3\n",
            2,
            "Timestamp",
            "not a finite number",
        ),
        (
            "TIMESTAMP,ContextTokens,GeneratedTokens\nyesterday,2,3\n",
            2,
            "TIMESTAMP",
            "is not a date-time",
        ),
    ],
)
def test_broken_csv_names_file_line_and_field(
    tmp_path: Path, body: str, line: int, field: str, problem: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body)
    with pytest.raises(TraceError) as caught:
        load_trace(path, format="azure" if body.startswith("TIMESTAMP") else "burstgpt")
    error = caught.value
    assert (error.path, error.line, error.field) == (str(path), line, field)
    assert str(error).startswith(f"{path}:{line}: field {field!r}: ")
    assert problem in str(error)


def test_skip_bad_counts_skipped_lines(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    rows = [
        json.dumps(MOONCAKE[0]),
        "{broken",
        json.dumps(MOONCAKE[1]),
        '{"timestamp": 1, "input_length": -1, "output_length": 1}',
        json.dumps(MOONCAKE[2]),
    ]
    path.write_text("\n".join(rows) + "\n")
    trace = load_trace(path, skip_bad=True)
    assert [r.input_tokens for r in trace.requests] == [655, 672, 1100]
    assert trace.skipped == 2 and trace.skipped_lines == [2, 4]
    with pytest.raises(TraceError, match=r"mixed\.jsonl:2: invalid JSON"):
        load_trace(path)
    missing_column = tmp_path / "header.csv"
    missing_column.write_text("Timestamp,Request tokens\n1,2\n")
    with pytest.raises(TraceError, match="missing column"):  # a file-level error is never skipped
        load_trace(missing_column, format="burstgpt", skip_bad=True)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"nope\.csv: no such file"):
        load_trace(tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_text("\n\n")
    with pytest.raises(TraceError, match=r"empty\.csv: empty file"):
        load_trace(empty)


# --------------------------------------------------------------------------- conversions


def test_hash_ids_become_deterministic_shared_token_prefixes(tmp_path: Path) -> None:
    requests = _requests(_jsonl(tmp_path / "trace.jsonl", MOONCAKE))
    tokens = TraceTokens(block_size=512, vocab_size=1000, seed=3)
    a, b, c, d = (tokens.token_ids(r) for r in requests)
    assert [len(x) for x in (a, b, c, d)] == [655, 672, 1100, 512]
    assert a.min() >= 0 and c.max() < 1000
    np.testing.assert_array_equal(a, b[:655])  # same ids [46, 47]: b only extends the block
    np.testing.assert_array_equal(a[:512], c[:512])  # shared first id 46
    assert not np.array_equal(a[512:655], c[512:655])  # 47 vs 48
    np.testing.assert_array_equal(tokens.block_tokens(50), d)
    again = TraceTokens(block_size=512, vocab_size=1000, seed=3)
    np.testing.assert_array_equal(again.token_ids(requests[2]), c)  # pure function of the ids
    other_seed = TraceTokens(block_size=512, vocab_size=1000, seed=4)
    assert not np.array_equal(other_seed.token_ids(requests[2]), c)
    # an engine hashing 16-token blocks sees the shared 512-token prefix as 32 equal blocks
    ha, hc = prefix_hashes(a, 16), prefix_hashes(c, 16)
    assert ha[:32] == hc[:32] and ha[32] != hc[32]
    assert tokens.block_keys(requests[2]) == [46, 48, 49]


def test_token_only_requests_get_fresh_tokens_and_keys(tmp_path: Path) -> None:
    path = tmp_path / "azure.csv"
    path.write_text(AZURE_2023)
    requests = _requests(path)
    tokens = TraceTokens(block_size=1024)
    first, second = tokens.token_ids(requests[0]), tokens.token_ids(requests[1])
    assert len(first) == 4808 and len(second) == 3180
    assert not np.array_equal(first[:1024], second[:1024])
    keys = tokens.block_keys(requests[0]) + tokens.block_keys(requests[1])
    assert len(keys) == 5 + 4 and len(set(keys)) == 9 and min(keys) == FRESH_KEY_BASE
    request = tokens.to_request(requests[2], request_id=41)
    assert (request.request_id, request.conversation_id, request.turn) == (41, -1, 0)
    assert request.new_prompt_len == len(request.context_tokens) == 110
    assert request.max_new_tokens == 27 and request.arrival_s == 60.0
