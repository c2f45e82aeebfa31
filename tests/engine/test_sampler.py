"""Sampler: penalties by their formulas, filters, per-request seeded streams, logprobs."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch

from engine import sampler as sampler_module
from engine.penalties import TokenPenalties
from engine.sampler import Sampler
from engine.sampling import SamplingParams
from engine.step_logits import HostTokenIds
from engine.structured.masks import TokenMasks


@dataclass
class FakeRequest:
    seq_id: int
    params: SamplingParams
    prompt_token_ids: list[int] = field(default_factory=list)
    output_token_ids: list[int] = field(default_factory=list)


def add(sampler: Sampler, seq_id: int, seed: int | None = 0, **params) -> FakeRequest:
    request = FakeRequest(seq_id, SamplingParams(seed=seed, **params))
    sampler.add_request(request)
    return request


def random_logits(rows: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, vocab_size, generator=torch.Generator().manual_seed(seed))


def tokens(sampler: Sampler, logits: torch.Tensor, requests: list[FakeRequest]) -> list[int]:
    return [result.token_id for result in sampler.sample(logits, requests)]


def test_greedy_is_argmax_without_logprobs():
    sampler = Sampler()
    logits = random_logits(6, 50)
    requests = [add(sampler, i, temperature=0.0) for i in range(6)]
    results = sampler.sample(logits, requests)
    assert [r.token_id for r in results] == logits.argmax(dim=-1).tolist()
    assert all(r.logprob is None and r.top_logprobs == () for r in results)


def test_greedy_ties_take_the_first_largest():
    """The CPU's argmax (numpy's) picks as torch's does: the first of equal maxima."""
    sampler = Sampler()
    logits = random_logits(5, 300).round()  # many equal values in every row
    logits[1, [3, 200]] = 50.0
    logits[2, :] = 0.0
    requests = [add(sampler, i, temperature=0.0) for i in range(5)]
    ids = tokens(sampler, logits, requests)
    assert ids == logits.argmax(dim=-1).tolist()
    assert ids[1:3] == [3, 0]


def sent_ids(ids: list[int]) -> HostTokenIds:
    host = HostTokenIds(8, torch.device("cpu"))
    host.send(torch.tensor(ids))
    return host


def test_a_batch_wanting_only_the_argmax_takes_the_steps_ids():
    """The ids a graph replay computed are taken as they are (here deliberately not the
    logits' argmax, to tell the paths apart)."""
    sampler = Sampler()
    logits = random_logits(3, 50)
    requests = [add(sampler, i, temperature=0.0, stop_token_ids=(7,)) for i in range(3)]
    not_argmax = [(i + 1) % 50 for i in logits.argmax(dim=-1).tolist()]
    results = sampler.sample(logits, requests, argmax=sent_ids(not_argmax))
    assert [r.token_id for r in results] == not_argmax
    assert all(r.logprob is None and r.top_logprobs == () for r in results)


@pytest.mark.parametrize(
    "params",
    [
        dict(temperature=1.0),
        dict(temperature=0.0, logprobs=0),
        dict(temperature=0.0, logit_bias={3: 1.0}),
        dict(temperature=0.0, repetition_penalty=1.2),
        dict(temperature=0.0, presence_penalty=0.5),
        dict(temperature=0.0, frequency_penalty=0.5),
    ],
    ids=["sampled", "logprobs", "logit_bias", "repetition", "presence", "frequency"],
)
def test_a_batch_wanting_more_than_the_argmax_samples_the_logits(params):
    """One request that needs the logits makes the whole batch sample them."""
    logits = random_logits(2, 50)
    samplers = Sampler(), Sampler()  # the same seeded requests in each
    batches = [[add(s, 0, temperature=0.0), add(s, 1, **params)] for s in samplers]
    expected = tokens(samplers[0], logits, batches[0])
    not_argmax = [(i + 1) % 50 for i in logits.argmax(dim=-1).tolist()]
    assert expected[0] != not_argmax[0]
    results = samplers[1].sample(logits, batches[1], argmax=sent_ids(not_argmax))
    assert [r.token_id for r in results] == expected


def test_a_masked_batch_samples_the_logits():
    sampler = Sampler()
    logits = random_logits(2, 50)
    requests = [add(sampler, i, temperature=0.0) for i in range(2)]
    allow_all = TokenMasks([1], torch.full((1, 2), -1, dtype=torch.int32))
    not_argmax = [(i + 1) % 50 for i in logits.argmax(dim=-1).tolist()]
    results = sampler.sample(logits, requests, allow_all, argmax=sent_ids(not_argmax))
    assert [r.token_id for r in results] == logits.argmax(dim=-1).tolist()


RAW = [2.0, 1.0, -1.0, 0.5]


# prompt [2], output [0, 0, 3]; hand-computed from the formulas in TokenPenalties.apply.
@pytest.mark.parametrize(
    "params, expected",
    [
        ({"logit_bias": {1: 0.5, 3: -2.0}}, [2.0, 1.5, -1.0, -1.5]),
        ({"repetition_penalty": 2.0}, [1.0, 1.0, -2.0, 0.25]),
        ({"frequency_penalty": 0.5}, [1.0, 1.0, -1.0, 0.0]),
        ({"presence_penalty": 0.25}, [1.75, 1.0, -1.0, 0.25]),
        (
            {
                "logit_bias": {1: 0.5},
                "repetition_penalty": 2.0,
                "frequency_penalty": 0.5,
                "presence_penalty": 0.25,
            },
            [-0.25, 1.5, -2.0, -0.5],
        ),
    ],
)
def test_penalties_follow_their_formulas(params, expected):
    sampler = Sampler()
    penalised = add(sampler, 0, temperature=0.0, **params)
    plain = add(sampler, 1, temperature=0.0)
    for request in (penalised, plain):
        request.prompt_token_ids, request.output_token_ids = [2], [0, 0, 3]
    logits = torch.tensor([RAW, RAW])

    out = TokenPenalties().apply(logits, [penalised, plain])
    torch.testing.assert_close(out[0], torch.tensor(expected))
    torch.testing.assert_close(out[1], torch.tensor(RAW))
    assert torch.equal(logits, torch.tensor([RAW, RAW]))
    assert tokens(sampler, logits, [penalised, plain]) == [int(torch.tensor(expected).argmax()), 0]


def test_no_penalties_is_a_no_op():
    logits = random_logits(2, 10)
    requests = [FakeRequest(i, SamplingParams(), [1, 2], [3]) for i in range(2)]
    assert TokenPenalties().apply(logits, requests) is logits


@pytest.mark.parametrize("params", [{"top_k": 1}, {"top_p": 1e-6}])
def test_filters_down_to_one_token_equal_greedy(params):
    sampler = Sampler()
    logits = random_logits(16, 100)
    requests = [add(sampler, i, seed=i, temperature=1.5, **params) for i in range(16)]
    assert tokens(sampler, logits, requests) == logits.argmax(dim=-1).tolist()


PROBS = [0.4, 0.3, 0.2, 0.1]


@pytest.mark.parametrize(
    "params, kept",
    [
        ({}, {0, 1, 2, 3}),
        ({"top_k": 1000}, {0, 1, 2, 3}),
        ({"top_k": 2}, {0, 1}),
        ({"top_p": 0.6}, {0, 1}),
        ({"top_p": 0.8}, {0, 1, 2}),
        ({"min_p": 0.3}, {0, 1, 2}),
        ({"min_p": 0.7}, {0, 1}),
        ({"top_k": 2, "top_p": 0.55}, {0}),  # top-p sees the top-k renormalised
    ],
)
def test_filters_keep_exactly_the_expected_tokens(params, kept):
    sampler = Sampler()
    num_draws = 400
    logits = torch.tensor(PROBS).log().expand(num_draws, -1)
    requests = [add(sampler, i, seed=i, **params) for i in range(num_draws)]
    assert set(tokens(sampler, logits, requests)) == kept


def test_top_k_beyond_vocab_changes_nothing():
    logits = random_logits(8, 20)
    drawn = []
    for top_k in (0, 1000):
        sampler = Sampler()
        drawn.append(
            tokens(sampler, logits, [add(sampler, i, seed=i, top_k=top_k) for i in range(8)])
        )
    assert drawn[0] == drawn[1]


def test_seeded_request_ignores_batch_composition_and_preemption():
    num_steps, vocab_size = 12, 64
    steps = [random_logits(1, vocab_size, seed=100 + step) for step in range(num_steps)]

    alone = Sampler()
    target = add(alone, 7, seed=1234, temperature=0.8)
    expected = [tokens(alone, logits, [target])[0] for logits in steps]

    crowd = Sampler()
    target = add(crowd, 7, seed=1234, temperature=0.8)
    others = [
        add(crowd, 1, temperature=0.0),
        add(crowd, 2, seed=1234, temperature=0.8),
        add(crowd, 3, seed=5, repetition_penalty=1.3, top_k=5, logit_bias={4: 3.0}),
        add(crowd, 4, seed=None, top_p=0.5, logprobs=2),
    ]
    got, step, tick = [], 0, 0
    while step < num_steps:
        tick += 1
        others_logits = random_logits(len(others), vocab_size, seed=tick)
        if tick in (4, 5):  # the target is preempted; the others go on drawing
            tokens(crowd, others_logits, others)
            continue
        position = tick % (len(others) + 1)
        batch = others[:position] + [target] + others[position:]
        logits = torch.cat([others_logits[:position], steps[step], others_logits[position:]])
        got.append(tokens(crowd, logits, batch)[position])
        target.output_token_ids.append(got[-1])
        step += 1
    assert got == expected


@pytest.mark.parametrize("seeds", [(1, 2), (None, None)])
def test_different_seeds_give_different_streams(seeds):
    sampler = Sampler()
    requests = [add(sampler, i, seed=seed) for i, seed in enumerate(seeds)]
    logits = torch.zeros(2, 32)
    streams = list(zip(*(tokens(sampler, logits, requests) for _ in range(20)), strict=True))
    assert all(0 <= t < 32 for stream in streams for t in stream)
    assert streams[0] != streams[1]
    assert len(set(streams[0])) > 1


@pytest.mark.parametrize("across_requests", [True, False])
def test_draws_follow_softmax_of_logits_over_temperature(across_requests):
    raw, temperature, num_draws = torch.tensor([1.0, 0.5, 0.0, -1.0, 2.0]), 0.7, 2000
    sampler = Sampler()
    if across_requests:
        requests = [add(sampler, i, seed=i, temperature=temperature) for i in range(num_draws)]
        drawn = tokens(sampler, raw.expand(num_draws, -1), requests)
    else:
        request = add(sampler, 0, seed=0, temperature=temperature)
        drawn = [tokens(sampler, raw.unsqueeze(0), [request])[0] for _ in range(num_draws)]
    observed = torch.bincount(torch.tensor(drawn), minlength=len(raw)).double()
    expected = (raw / temperature).softmax(dim=-1).double() * num_draws
    chi_square = ((observed - expected) ** 2 / expected).sum().item()
    assert chi_square < 18.5  # 4 degrees of freedom: p = 0.001


def test_logprobs_come_from_raw_logits():
    sampler = Sampler()
    logits = random_logits(3, 40)
    before = logits.clone()
    forced = add(
        sampler,
        0,
        temperature=0.5,
        top_k=3,
        repetition_penalty=1.5,
        logit_bias={7: 100.0},
        logprobs=5,
    )
    forced.prompt_token_ids = logits[0].topk(2).indices.tolist()
    chosen_only = add(sampler, 1, temperature=0.0, logprobs=0)
    without = add(sampler, 2, temperature=1.0)
    results = sampler.sample(logits, [forced, chosen_only, without])

    raw = torch.log_softmax(before, dim=-1)
    assert torch.equal(logits, before)
    assert results[0].token_id == 7
    assert results[0].logprob == pytest.approx(raw[0, 7].item(), abs=1e-5)
    top_values, top_ids = raw[0].topk(5)
    assert [token_id for token_id, _ in results[0].top_logprobs] == top_ids.tolist()
    assert [lp for _, lp in results[0].top_logprobs] == pytest.approx(top_values.tolist(), abs=1e-5)
    assert results[1].token_id == before[1].argmax().item()
    assert results[1].logprob == pytest.approx(raw[1].max().item(), abs=1e-5)
    assert results[1].top_logprobs == ()
    assert results[2].logprob is None and results[2].top_logprobs == ()


def test_logit_bias_forces_and_bans_tokens():
    sampler = Sampler()
    logits = random_logits(8, 50)
    forced = [add(sampler, i, seed=i, logit_bias={13: 100.0}) for i in range(8)]
    assert tokens(sampler, logits, forced) == [13] * 8
    top = int(logits[0].argmax())
    banned = add(sampler, 8, temperature=0.0, logit_bias={top: -100.0})
    assert tokens(sampler, logits[:1], [banned]) != [top]


def test_remove_request_frees_the_generator():
    sampler = Sampler()
    logits = torch.zeros(1, 1000)
    request = add(sampler, 3, seed=5)
    first = tokens(sampler, logits, [request])
    assert sampler.num_requests == 1
    sampler.remove_request(3)
    sampler.remove_request(3)
    assert sampler.num_requests == 0
    with pytest.raises(KeyError):
        sampler.sample(logits, [request])
    sampler.add_request(request)
    assert tokens(sampler, logits, [request]) == first


def test_greedy_rows_draw_nothing():
    sampler = Sampler()
    seeded_greedy = add(sampler, 0, seed=3, temperature=0.0)
    unseeded_greedy = add(sampler, 1, seed=None, temperature=0.0, logprobs=1)
    shared = sampler._generator.get_state()
    own = sampler._requests[0].get_state()
    for step in range(3):
        tokens(sampler, random_logits(2, 30, seed=step), [seeded_greedy, unseeded_greedy])
    assert torch.equal(sampler._generator.get_state(), shared)
    assert torch.equal(sampler._requests[0].get_state(), own)


def test_seeded_stream_is_the_same_amid_unseeded_and_greedy_rows():
    vocab_size, num_steps = 40, 6
    alone = Sampler()
    target = add(alone, 0, seed=77, top_p=0.9)
    expected = [tokens(alone, random_logits(1, vocab_size, seed=s), [target])[0] for s in range(6)]

    crowd = Sampler()
    target = add(crowd, 0, seed=77, top_p=0.9)
    unseeded = [add(crowd, i, seed=None) for i in range(1, 9)]
    greedy = [add(crowd, i, temperature=0.0) for i in range(9, 12)]
    got = []
    for step in range(num_steps):
        neighbours = unseeded[: step + 2] + greedy[: step % 3]
        logits = torch.cat(
            [random_logits(1, vocab_size, seed=step), random_logits(len(neighbours), vocab_size)]
        )
        got.append(tokens(crowd, logits, [target, *neighbours])[0])
    assert got == expected


def test_incremental_penalty_counts_equal_recounted_ones():
    vocab_size = 16
    sampler = Sampler()
    requests = [
        add(sampler, 0, seed=1, repetition_penalty=1.5),
        add(sampler, 1, seed=2, frequency_penalty=0.7, presence_penalty=0.3),
        add(sampler, 2, seed=None),
        add(sampler, 3, temperature=0.0, frequency_penalty=1.0, logit_bias={5: 2.0}),
    ]
    for request in requests:
        request.prompt_token_ids = [request.seq_id, 7, 7]
    for step in range(30):
        if step == 10:  # a finished request's row goes to a newcomer, recounted afresh
            sampler.remove_request(1)
            requests[1] = FakeRequest(
                4, SamplingParams(seed=4, frequency_penalty=0.7), [4, 4], [1, 2, 2]
            )
            sampler.add_request(requests[1])
        logits = random_logits(len(requests), vocab_size, seed=step)
        recounted = TokenPenalties().apply(logits, requests)
        torch.testing.assert_close(sampler.penalties.apply(logits, requests), recounted)
        for request, token_id in zip(requests, tokens(sampler, logits, requests), strict=True):
            request.output_token_ids.append(token_id)


def kept_by_sorting(logits: torch.Tensor, top_k: int, top_p: float) -> set[int]:
    """The tokens top-k then top-p keep, by the textbook way: sort, cut, renormalise."""
    order = logits.argsort(descending=True).tolist()
    if 0 < top_k < len(order):
        order = order[:top_k]
    probs = logits[order].softmax(dim=-1).tolist()
    kept, mass = [], 0.0
    for token, p in zip(order, probs):
        if top_p < 1 and mass >= top_p:
            break
        kept.append(token)
        mass += p
    return set(kept)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["numpy", "torch"])
def test_top_k_and_top_p_keep_what_sorting_keeps(dtype: torch.dtype) -> None:
    knobs = [(0, 0.9), (5, 1.0), (50, 0.5), (0, 0.05), (3, 0.99), (2000, 0.7), (0, 1.0)]
    logits = (random_logits(len(knobs), 300, seed=3) * 3).to(dtype)
    top_k = torch.tensor([[k] for k, _ in knobs], dtype=dtype)
    top_p = torch.tensor([[p] for _, p in knobs], dtype=dtype)
    cutoff = sampler_module._smallest_kept(logits, top_k, top_p, use_top_p=True)
    for row, (k, p) in enumerate(knobs):
        kept = set((logits[row] >= cutoff[row]).nonzero().flatten().tolist())
        assert kept == kept_by_sorting(logits[row].double(), k, p), (k, p)
