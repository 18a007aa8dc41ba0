"""The conversation workload generator: arrivals, conversations, prefixes, live changes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tiertop.runtime.workload import (
    LengthSpec,
    Request,
    WorkloadError,
    WorkloadGenerator,
    WorkloadParams,
)
from tiertop.tiers.block import prefix_hashes


def _signature(request: Request) -> tuple[object, ...]:
    return (
        request.request_id,
        request.conversation_id,
        request.turn,
        request.arrival_s,
        request.new_prompt_len,
        request.max_new_tokens,
        request.system_prompt_id,
        request.context_tokens.tobytes(),
    )


# --------------------------------------------------------------------------- arrivals


def test_poisson_rate_and_dispersion_over_a_long_horizon() -> None:
    rate, horizon = 20.0, 2000.0
    gen = WorkloadGenerator(lambda_rate=rate, seed=7, auto_complete=True, prompt=4, output=4)
    times = np.array([r.arrival_s for r in gen.requests_until(horizon)])
    expected = rate * horizon  # 40000; Poisson sd = 200
    assert abs(len(times) - expected) < 0.03 * expected  # 6 sd
    assert np.all(np.diff(times) >= 0) and times[-1] <= horizon
    gaps = np.diff(times)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)  # exponential: CV = 1
    counts = np.histogram(times, bins=int(horizon), range=(0, horizon))[0]
    assert counts.var() / counts.mean() == pytest.approx(1.0, abs=0.1)  # Poisson: var = mean


def test_next_request_respects_now_and_advances_in_order() -> None:
    gen = WorkloadGenerator(lambda_rate=5.0, seed=1, auto_complete=True)
    first_at = gen.next_arrival_s
    assert first_at > 0
    assert gen.next_request(first_at / 2) is None
    assert gen.clock_s == first_at / 2
    request = gen.next_request(first_at)
    assert request is not None and request.arrival_s == first_at and request.request_id == 0
    later = gen.next_request()  # no bound: whenever it arrives
    assert later is not None and later.arrival_s > first_at and later.request_id == 1


def test_duration_bounds_arrivals_and_zero_rate_means_none() -> None:
    gen = WorkloadGenerator(lambda_rate=50.0, duration=10.0, seed=2, auto_complete=True)
    requests = gen.requests_until(1e9)
    assert requests and all(r.arrival_s < 10.0 for r in requests)
    assert gen.exhausted and gen.next_request() is None and gen.next_arrival_s == math.inf
    idle = WorkloadGenerator(lambda_rate=0.0, seed=2)
    assert idle.next_request() is None and idle.requests_until(1e6) == []
    assert idle.next_arrival_s == math.inf and not idle.exhausted
    endless = WorkloadGenerator(lambda_rate=1.0)
    with pytest.raises(WorkloadError, match="never ends"):
        endless.requests_until(math.inf)


def test_same_seed_same_stream_different_seed_differs() -> None:
    def run(seed: int) -> list[tuple[object, ...]]:
        gen = WorkloadGenerator(
            lambda_rate=10.0,
            seed=seed,
            new_conv_prob=0.4,
            system_prompts=4,
            system_prompt_len=16,
            max_live_conversations=8,
        )
        out = []
        for request in gen.requests_until(100.0):
            out.append(_signature(request))
            if request.request_id % 3:
                gen.complete_synthetic(request, n=request.max_new_tokens // 2)
        return out

    first, second, other = run(11), run(11), run(12)
    assert len(first) > 500
    assert first == second
    assert first != other


# --------------------------------------------------------------------------- conversations


def test_new_conv_prob_is_respected() -> None:
    gen = WorkloadGenerator(lambda_rate=100.0, seed=3, new_conv_prob=0.25, auto_complete=True)
    gen.set_params(prompt=4, output=4)
    requests = [gen.next_request() for _ in range(20000)]
    new = sum(1 for r in requests[1:] if r is not None and r.turn == 0)
    assert new / (len(requests) - 1) == pytest.approx(0.25, abs=0.02)  # sd 0.003
    stats = gen.stats()
    assert stats["forced_new"] == 1  # only the very first request found no idle conversation
    assert stats["conversations"] == new + 1


def test_without_completions_every_request_is_a_forced_new_conversation() -> None:
    gen = WorkloadGenerator(lambda_rate=10.0, seed=4, new_conv_prob=0.0)
    requests = gen.requests_until(20.0)
    assert len(requests) > 100
    assert all(r.turn == 0 for r in requests)
    assert gen.stats()["forced_new"] == len(requests)


def test_continued_context_is_previous_context_plus_reply_plus_new_prompt() -> None:
    gen = WorkloadGenerator(lambda_rate=10.0, seed=5, new_conv_prob=0.0, max_live_conversations=1)
    previous = gen.next_request()
    assert previous is not None and previous.turn == 0
    assert previous.new_prompt_len == len(previous.context_tokens)
    for turn in range(1, 30):
        before = previous.context_tokens.copy()
        reply = np.arange(turn, turn + min(previous.max_new_tokens, 7 + turn)) % 50257
        assert gen.complete(previous, reply)
        request = gen.next_request()
        assert request is not None
        assert request.conversation_id == previous.conversation_id and request.turn == turn
        context = request.context_tokens
        n_prev, n_reply = len(before), len(reply)
        assert len(context) == n_prev + n_reply + request.new_prompt_len
        np.testing.assert_array_equal(context[:n_prev], before)
        np.testing.assert_array_equal(context[n_prev : n_prev + n_reply], reply)
        assert request.history_len == n_prev + n_reply
        # the earlier request's context survives buffer growth unchanged and cannot be written
        np.testing.assert_array_equal(previous.context_tokens, before)
        with pytest.raises(ValueError):
            context[0] = 1
        previous = request


def test_busy_conversations_are_not_continued_until_completed() -> None:
    gen = WorkloadGenerator(lambda_rate=10.0, seed=6, new_conv_prob=0.0, max_live_conversations=4)
    first = gen.next_request()
    second = gen.next_request()
    assert first is not None and second is not None
    assert second.conversation_id != first.conversation_id  # first is still being served
    gen.complete_synthetic(first)
    third = gen.next_request()
    assert third is not None and third.conversation_id == first.conversation_id
    assert third.turn == 1


def test_least_recently_used_conversation_retires_and_late_completion_is_ignored() -> None:
    gen = WorkloadGenerator(lambda_rate=10.0, seed=8, new_conv_prob=1.0, max_live_conversations=3)
    requests = [gen.next_request() for _ in range(4)]
    assert all(r is not None and r.turn == 0 for r in requests)
    assert gen.live_conversations == 3 and gen.stats()["retired_lru"] == 1
    oldest = requests[0]
    assert oldest is not None
    assert gen.complete_synthetic(oldest) is False  # its conversation retired
    newest = requests[3]
    assert newest is not None and gen.complete_synthetic(newest) is True
    with pytest.raises(WorkloadError, match="not the outstanding turn"):
        gen.complete_synthetic(newest)


def test_complete_validates_the_reply() -> None:
    gen = WorkloadGenerator(lambda_rate=1.0, seed=9, output=LengthSpec.fixed(4), vocab_size=100)
    request = gen.next_request()
    assert request is not None
    with pytest.raises(WorkloadError, match="more than max_new_tokens 4"):
        gen.complete(request, [1, 2, 3, 4, 5])
    with pytest.raises(WorkloadError, match=r"0\.\.99, got 1\.\.100"):
        gen.complete(request, [1, 100])
    assert gen.complete(request, [1, 2])
    with pytest.raises(WorkloadError, match="not the outstanding turn"):
        gen.abandon(request)  # a completed turn cannot be abandoned (nor completed again)


def test_abandon_retires_the_conversation() -> None:
    gen = WorkloadGenerator(lambda_rate=1.0, seed=9, new_conv_prob=0.0)
    request = gen.next_request()
    assert request is not None and gen.abandon(request)
    assert gen.live_conversations == 0 and gen.stats()["retired_abandoned"] == 1
    assert gen.complete_synthetic(request) is False


def test_max_context_tokens_is_never_exceeded() -> None:
    gen = WorkloadGenerator(
        lambda_rate=10.0,
        seed=10,
        new_conv_prob=0.1,
        auto_complete=True,
        prompt=LengthSpec.lognormal(60, max=400),
        output=LengthSpec.lognormal(40, max=300),
        system_prompts=2,
        system_prompt_len=100,
        max_context_tokens=512,
    )
    requests = gen.requests_until(300.0)
    assert all(len(r.context_tokens) + r.max_new_tokens <= 512 for r in requests)
    assert max(r.turn for r in requests) >= 2
    assert gen.stats()["retired_context"] > 0


# --------------------------------------------------------------------------- shared prefixes


def test_shared_system_prompts_give_equal_leading_tokens_with_zipf_skew() -> None:
    length = 40
    gen = WorkloadGenerator(
        lambda_rate=10.0,
        seed=12,
        new_conv_prob=1.0,
        auto_complete=True,
        system_prompts=3,
        system_prompt_len=length,
        system_prompt_zipf=1.0,
        max_live_conversations=10,
    )
    requests = gen.requests_until(1000.0)
    by_prompt: dict[int, list[Request]] = {0: [], 1: [], 2: []}
    for request in requests:
        assert request.system_prompt_id is not None
        by_prompt[request.system_prompt_id].append(request)
        np.testing.assert_array_equal(
            request.context_tokens[:length], gen.system_prompt(request.system_prompt_id)
        )
        assert len(request.context_tokens) == length + request.new_prompt_len
    pools = [gen.system_prompt(i) for i in range(3)]
    assert not np.array_equal(pools[0], pools[1]) and not np.array_equal(pools[1], pools[2])
    shares = np.array([len(by_prompt[i]) for i in range(3)]) / len(requests)
    np.testing.assert_allclose(shares, [6 / 11, 3 / 11, 2 / 11], atol=0.03)
    # equal leading tokens mean equal leading block hashes (what the cache keys on)
    a, b = by_prompt[1][0], by_prompt[1][1]
    assert prefix_hashes(a.context_tokens, 8)[:5] == prefix_hashes(b.context_tokens, 8)[:5]
    assert prefix_hashes(a.context_tokens, 8)[5] != prefix_hashes(b.context_tokens, 8)[5]


def test_context_block_hashes_match_prefix_hashes_incrementally() -> None:
    gen = WorkloadGenerator(
        lambda_rate=10.0,
        seed=13,
        new_conv_prob=0.2,
        auto_complete=True,
        max_live_conversations=50,
        system_prompts=2,
        system_prompt_len=40,
    )
    first_phase = {r.conversation_id for r in gen.requests_until(30.0)}  # not hashed yet
    gen.set_params(system_prompt_len=24)  # conversations from the old pool stay live
    continued_old = 0
    for request in gen.requests_until(90.0):
        continued_old += request.conversation_id in first_phase
        for block_size in (16, 7):
            expected = prefix_hashes(request.context_tokens, block_size)
            assert gen.context_block_hashes(request, block_size) == expected
    assert continued_old > 10


# --------------------------------------------------------------------------- live changes


def test_rate_change_takes_effect_at_once() -> None:
    gen = WorkloadGenerator(lambda_rate=0.001, seed=14, auto_complete=True)
    assert gen.requests_until(10.0) == [] and gen.next_arrival_s > 20.0
    old, new = gen.set_params(lambda_rate=100.0)
    assert old == {"lambda_rate": 0.001} and new == {"lambda_rate": 100.0}
    assert 10.0 < gen.next_arrival_s < 10.5  # re-drawn from the new rate, not ~1000 s away
    burst = gen.requests_until(20.0)
    assert len(burst) == pytest.approx(1000, rel=0.15)
    gen.set_params(lambda_rate=0.0)
    assert gen.next_arrival_s == math.inf and gen.requests_until(1e6) == []
    gen.set_params(lambda_rate=5.0, now=50.0)
    assert gen.next_arrival_s > 50.0


def test_other_parameters_apply_to_the_next_request() -> None:
    gen = WorkloadGenerator(lambda_rate=10.0, seed=15, new_conv_prob=0.0, auto_complete=True)
    gen.requests_until(5.0)
    gen.set_params(prompt=LengthSpec.fixed(7), output={"kind": "uniform", "min": 3, "max": 5})
    request = gen.next_request()
    assert request is not None and request.new_prompt_len == 7 and 3 <= request.max_new_tokens <= 5
    assert request.turn > 0
    gen.set_params(new_conv_prob=1.0)
    assert all(r.turn == 0 for r in gen.requests_until(20.0))
    gen.set_params(max_live_conversations=2)
    assert gen.live_conversations == 2
    params = gen.params()
    assert params["prompt"] == {"kind": "fixed", "mean": 7.0, "min": 7, "max": 7, "sigma": 0.0}
    assert params["max_live_conversations"] == 2 and params["new_conv_prob"] == 1.0
    state = gen.describe()["state"]
    assert state["live_conversations"] == 2 and state["requests"] == gen.stats()["requests"]


def test_apply_set_workload_maps_the_control_fields() -> None:
    gen = WorkloadGenerator(lambda_rate=1.0, seed=16, prompt=LengthSpec.lognormal(100, max=1000))
    old, new = gen.apply_set_workload(
        {"rate": 8.0, "prompt_len_mean": 50.0, "prompt_len_max": 200, "live_conversations": 5}
    )
    assert old == {
        "rate": 1.0,
        "prompt_len_mean": 100.0,
        "prompt_len_max": 1000,
        "live_conversations": 64,
    }
    assert new == {
        "rate": 8.0,
        "prompt_len_mean": 50.0,
        "prompt_len_max": 200,
        "live_conversations": 5,
    }
    assert gen.current.lambda_rate == 8.0 and gen.current.prompt.max == 200
    with pytest.raises(WorkloadError, match="rate must be a number >= 0") as caught:
        gen.apply_set_workload({"rate": -1.0})
    assert caught.value.param == "rate"
    with pytest.raises(WorkloadError, match=r"prompt_len_mean 50 is outside prompt\.min\.\.max"):
        gen.apply_set_workload({"prompt_len_max": 40})
    with pytest.raises(WorkloadError, match="fixed length") as caught:
        WorkloadGenerator(output=5).apply_set_workload({"output_len_max": 9})
    assert caught.value.param == "output_len_max"
    assert gen.current.prompt.max == 200  # unchanged


@pytest.mark.parametrize(
    ("changes", "param", "message"),
    [
        ({"lambda_rate": -1.0}, "lambda_rate", r"lambda_rate must be a number >= 0.0 requests/s"),
        ({"lambda_rate": math.inf}, "lambda_rate", "must be finite"),
        ({"new_conv_prob": 1.5}, "new_conv_prob", r"new_conv_prob must be a number in 0.0..1.0"),
        (
            {"prompt": {"kind": "uniform", "min": 9, "max": 3}},
            "prompt.min",
            "prompt.min 9 is above",
        ),
        ({"output": LengthSpec("lognormal", 10.0, 0, 20, 0.5)}, "output.min", "positive"),
        ({"prompt": {"kind": "lognormal", "mean": 500, "max": 100}}, "prompt.mean", "outside"),
        ({"prompt": {"kind": "normal", "mean": 5}}, "prompt.kind", "one of lognormal"),
        ({"max_live_conversations": 0}, "max_live_conversations", ">= 1"),
        ({"duration": -5.0}, "duration", ">= 0"),
        ({"seed": 3}, "seed", "cannot change on a running generator"),
        ({"rate": 3.0}, "rate", "unknown workload parameter 'rate'"),
        ({"system_prompts": 2}, "system_prompt_len", "system_prompt_len must be >= 1"),
    ],
)
def test_invalid_changes_name_the_parameter_and_change_nothing(
    changes: dict[str, object], param: str, message: str
) -> None:
    gen = WorkloadGenerator(lambda_rate=2.0, seed=17)
    before = gen.params()
    pending = gen.next_arrival_s
    with pytest.raises(WorkloadError, match=message) as caught:
        gen.set_params(**{"max_live_conversations": 7, **changes})  # one valid change beside
    assert caught.value.param == param
    assert gen.params() == before and gen.next_arrival_s == pending


def test_constructor_validates_too() -> None:
    with pytest.raises(WorkloadError, match="new_conv_prob"):
        WorkloadGenerator(new_conv_prob=-0.1)
    with pytest.raises(WorkloadError, match="unknown workload parameter"):
        WorkloadGenerator(rate=3)
    with pytest.raises(WorkloadError, match="max_context_tokens must be an integer >= 12"):
        WorkloadGenerator(system_prompts=1, system_prompt_len=10, max_context_tokens=11)
    params = WorkloadParams.from_dict({"lambda_rate": 4, "prompt": {"mean": 30, "max": 90}})
    assert params.prompt == LengthSpec.lognormal(30, max=90)
    with pytest.raises(WorkloadError, match="unknown workload parameter"):
        WorkloadParams.from_dict({"lamda_rate": 4})


# --------------------------------------------------------------------------- lengths


def test_length_distributions() -> None:
    gen = WorkloadGenerator(
        lambda_rate=100.0,
        seed=18,
        auto_complete=True,
        new_conv_prob=1.0,
        prompt=LengthSpec.lognormal(200, sigma=0.5, max=100_000),
        output={"kind": "uniform", "min": 10, "max": 30},
    )
    requests = [gen.next_request() for _ in range(20000)]
    prompts = np.array([r.new_prompt_len for r in requests if r is not None])
    outputs = np.array([r.max_new_tokens for r in requests if r is not None])
    assert prompts.mean() == pytest.approx(200, rel=0.03)
    assert np.log(prompts).std() == pytest.approx(0.5, rel=0.05)
    assert outputs.min() == 10 and outputs.max() == 30
    assert outputs.mean() == pytest.approx(20, rel=0.02)
    assert len(np.unique(outputs)) == 21
    clipped = LengthSpec.lognormal(200, sigma=2.0, min=50, max=300)
    drawn = clipped.draw(np.random.default_rng(0), 5000)
    assert drawn.min() == 50 and drawn.max() == 300
    assert LengthSpec.uniform(4, 9).with_mean(20) == LengthSpec.uniform(17, 23)  # mean kept
    assert LengthSpec.uniform(4, 10).with_mean(2) == LengthSpec.uniform(1, 3)
