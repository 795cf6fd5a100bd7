"""Decoding: each logits processor against `transformers`' processors (an independent oracle) or
a written-out loop, sampled frequencies against the processed distribution, stop sequences, and
beam search against brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmcourse import sampling
from llmcourse.checks import ArgumentError
from llmcourse.sampling import SamplingSettings

hf = pytest.importorskip("transformers.generation.logits_process")


def random_logits(seed: int, batch: int = 4, vocab: int = 50, scale: float = 3.0) -> torch.Tensor:
    return torch.randn(batch, vocab, generator=torch.Generator().manual_seed(seed)) * scale


def with_ties(seed: int) -> torch.Tensor:
    """Logits rounded to a coarse grid, so many values are tied (k-th value, boundaries)."""
    return (random_logits(seed) * 2).round() / 2


def same_mask(ours: torch.Tensor, theirs: torch.Tensor) -> None:
    """The same tokens removed (-inf), and the kept ones with the same logits."""
    assert torch.equal(torch.isneginf(ours), torch.isneginf(theirs))
    kept = ~torch.isneginf(ours)
    torch.testing.assert_close(ours[kept], theirs[kept])


LOGIT_CASES = [random_logits(seed) for seed in range(5)] + [with_ties(seed) for seed in range(5)] + [
    torch.zeros(3, 20),  # all equal
    torch.tensor([[0.0, -math.inf, 1.0, 2.0, -math.inf, 0.5]]),  # already-filtered entries
]


@pytest.mark.parametrize("logits", LOGIT_CASES)
@pytest.mark.parametrize("k", [1, 3, 10, 50, 80])
def test_top_k_matches_transformers(logits, k):
    same_mask(sampling.top_k_filter(logits, k), hf.TopKLogitsWarper(k)(None, logits.clone()))


@pytest.mark.parametrize("logits", [case for case in LOGIT_CASES[:5]] + LOGIT_CASES[-1:])
@pytest.mark.parametrize("p", [0.05, 0.3, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("min_keep", [1, 3])
def test_top_p_matches_transformers_without_ties(logits, p, min_keep):
    theirs = hf.TopPLogitsWarper(p, min_tokens_to_keep=min_keep)(None, logits.clone())
    same_mask(sampling.top_p_filter(logits, p, min_tokens_to_keep=min_keep), theirs)


def test_min_tokens_to_keep_beyond_the_vocabulary_keeps_everything():
    logits = random_logits(0)
    for out in (sampling.top_k_filter(logits, 3, min_tokens_to_keep=55),
                sampling.top_p_filter(logits, 0.5, min_tokens_to_keep=55),
                sampling.min_p_filter(logits, 0.5, min_tokens_to_keep=55)):
        assert torch.equal(out, logits)


def test_top_p_keeps_the_crossing_token_and_every_tie():
    logits = torch.tensor([[2.0, 1.0, 1.0, 0.0]]).log_softmax(-1)
    probs = logits.softmax(-1)[0]
    # p just above the top token's mass: the token that crosses p is kept, and so is its twin.
    kept = ~torch.isneginf(sampling.top_p_filter(logits, float(probs[0]) + 0.01))
    assert kept.tolist() == [[True, True, True, False]]
    assert torch.equal(sampling.top_p_filter(logits, 1.0), logits)


@pytest.mark.parametrize("logits, min_keep", [(case, 1) for case in LOGIT_CASES]
                         + [(case, 4) for case in LOGIT_CASES[:5]])
@pytest.mark.parametrize("min_p", [0.0, 0.05, 0.2, 0.9, 1.0])
def test_min_p_matches_transformers(logits, min_p, min_keep):
    """min_tokens_to_keep is compared without ties: on a tie we keep every tied token."""
    theirs = hf.MinPLogitsWarper(min_p, min_tokens_to_keep=min_keep)(None, logits.clone())
    same_mask(sampling.min_p_filter(logits, min_p, min_tokens_to_keep=min_keep), theirs)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 1.7])
def test_temperature_matches_transformers(temperature):
    logits = random_logits(1)
    theirs = hf.TemperatureLogitsWarper(temperature)(None, logits.clone())
    torch.testing.assert_close(sampling.apply_temperature(logits, temperature), theirs)


def test_temperature_zero_keeps_only_the_argmax():
    logits = with_ties(3)
    out = sampling.apply_temperature(logits, 0)
    kept = ~torch.isneginf(out)
    assert torch.equal(kept.sum(-1), torch.ones(len(logits), dtype=torch.long))
    assert torch.equal(out.argmax(-1), logits.argmax(-1))


def previous(seed: int, batch: int = 4, length: int = 12, vocab: int = 50) -> torch.Tensor:
    return torch.randint(0, vocab // 3, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("penalty", [0.8, 1.0, 1.3, 2.0])
def test_repetition_penalty_matches_transformers(seed, penalty):
    logits, ids = random_logits(seed), previous(seed)
    theirs = hf.RepetitionPenaltyLogitsProcessor(penalty)(ids, logits.clone())
    torch.testing.assert_close(sampling.repetition_penalty(logits, ids, penalty), theirs)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_matches_transformers(seed, n):
    logits = random_logits(seed, vocab=8)
    ids = torch.randint(0, 8, (4, 15), generator=torch.Generator().manual_seed(seed))
    theirs = hf.NoRepeatNGramLogitsProcessor(n)(ids, logits.clone())
    same_mask(sampling.no_repeat_ngram(logits, ids, n), theirs)


@pytest.mark.parametrize("seed", range(3))
def test_frequency_presence_penalty_matches_a_loop(seed):
    logits, ids = random_logits(seed), previous(seed)
    ids[0, :3] = -1  # padding is not a token
    expected = logits.clone()
    for row in range(len(ids)):
        for token in set(ids[row].tolist()) - {-1}:
            count = ids[row].tolist().count(token)
            expected[row, token] -= 0.4 * count + 0.7
    torch.testing.assert_close(sampling.frequency_presence_penalty(logits, ids, 0.4, 0.7), expected)


def test_logit_bias_adds_and_bans():
    logits = random_logits(0)
    out = sampling.logit_bias(logits, {3: 2.5, 7: -math.inf})
    assert torch.isneginf(out[:, 7]).all()
    torch.testing.assert_close(out[:, 3], logits[:, 3] + 2.5)
    untouched = [i for i in range(50) if i not in (3, 7)]
    assert torch.equal(out[:, untouched], logits[:, untouched])


PROCESSORS = [
    lambda x, ids: sampling.apply_temperature(x, 0.7),
    lambda x, ids: sampling.apply_temperature(x, 0),
    lambda x, ids: sampling.top_k_filter(x, 5),
    lambda x, ids: sampling.top_p_filter(x, 0.8),
    lambda x, ids: sampling.min_p_filter(x, 0.1),
    lambda x, ids: sampling.repetition_penalty(x, ids, 1.3),
    lambda x, ids: sampling.frequency_presence_penalty(x, ids, 0.5, 0.5),
    lambda x, ids: sampling.no_repeat_ngram(x, ids, 2),
    lambda x, ids: sampling.logit_bias(x, {1: 1.0}),
]


@pytest.mark.parametrize("processor", PROCESSORS)
def test_processors_never_modify_their_input(processor):
    logits, ids = random_logits(5), previous(5)
    before = logits.clone()
    out = processor(logits, ids)
    assert torch.equal(logits, before)
    assert out.shape == logits.shape and out.data_ptr() != logits.data_ptr()


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 60), p=st.floats(0.01, 1.0), min_p=st.floats(0, 1))
def test_filters_keep_the_top_token_and_only_remove(seed, k, p, min_p):
    logits = random_logits(seed)
    for out in (sampling.top_k_filter(logits, k), sampling.top_p_filter(logits, p),
                sampling.min_p_filter(logits, min_p)):
        kept = ~torch.isneginf(out)
        assert kept.gather(1, logits.argmax(-1, keepdim=True)).all()
        assert torch.equal(out[kept], logits[kept])


def test_sampled_frequencies_follow_the_processed_distribution():
    """A chi-square test at a fixed seed: 20,000 draws from top-p(0.9) at T=0.8."""
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.5, 0.0, -1.0, -3.0]])
    settings_ = SamplingSettings(temperature=0.8, top_p=0.9)
    expected = sampling.process(logits, None, settings_).softmax(-1)[0]
    draws = sampling.next_token(logits.expand(20_000, -1), None, settings_,
                                torch.Generator().manual_seed(0))
    observed = torch.bincount(draws, minlength=7).double()
    assert observed[expected == 0].sum() == 0, "a filtered token was drawn"
    mean = expected[expected > 0].double() * 20_000
    chi_square = float(((observed[expected > 0] - mean) ** 2 / mean).sum())
    # 4 degrees of freedom (5 kept tokens): the 99.9th percentile of chi-square(4) is 18.47.
    assert chi_square < 18.47


def test_sample_is_seeded_and_refuses_an_empty_row():
    logits = random_logits(0)
    first = sampling.sample(logits, torch.Generator().manual_seed(1))
    assert torch.equal(first, sampling.sample(logits, torch.Generator().manual_seed(1)))
    with pytest.raises(ArgumentError, match="every token was filtered"):
        sampling.sample(torch.full((1, 5), -math.inf))
    with pytest.raises(ArgumentError, match=r"\(B, V\)"):
        sampling.sample(torch.zeros(2, 3, 5))


def test_greedy_settings_pick_the_argmax():
    logits = random_logits(2)
    assert torch.equal(sampling.next_token(logits, None, SamplingSettings(temperature=0)), logits.argmax(-1))


@pytest.mark.parametrize("bad, match", [
    (dict(temperature=-1), "temperature=-1"),
    (dict(top_k=0), "top_k=0"),
    (dict(top_p=0), "top_p=0"),
    (dict(top_p=1.5), "top_p=1.5"),
    (dict(min_p=float("nan")), "min_p=nan"),
    (dict(repetition_penalty=0), "repetition_penalty=0"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size=-1"),
])
def test_settings_refuse_bad_values_by_name(bad, match):
    with pytest.raises(ArgumentError, match=match):
        SamplingSettings(**bad)


def test_penalties_need_the_previous_tokens():
    with pytest.raises(ArgumentError, match="previous_ids"):
        sampling.process(random_logits(0), None, SamplingSettings(repetition_penalty=1.2))


# ------------------------------------------------------------------ stop sequences


def test_find_stop_across_token_boundaries():
    pieces = ["The end", ".\n", "\nUser", ": hi"]
    text = ""
    for piece in pieces:
        text += piece
        if sampling.find_stop(text, ["\n\nUser:"]) is not None:
            break
    assert text[: sampling.find_stop(text, ["\n\nUser:"])] == "The end."
    assert sampling.find_stop("abc", ["x", "bc", "c"]) == 1
    assert sampling.find_stop("abc", []) is None


def test_stop_holdback_keeps_back_a_possible_start():
    assert sampling.stop_holdback("Hello\n", ["\n\nUser:"]) == 1
    assert sampling.stop_holdback("Hello\n\nUs", ["\n\nUser:"]) == 4
    assert sampling.stop_holdback("Hello", ["\n\nUser:"]) == 0
    assert sampling.stop_holdback("ab", ["abc", "bcd"]) == 2


# ------------------------------------------------------------------ beam search


def table_model(seed: int, vocab: int):
    """A next-token distribution that depends on the last two tokens: (N, t) -> (N, V) log-probs."""
    table = torch.randn(vocab, vocab, vocab, generator=torch.Generator().manual_seed(seed)) * 2

    def next_log_probs(ids: torch.Tensor) -> torch.Tensor:
        return table[ids[:, -2], ids[:, -1]].log_softmax(-1)

    return next_log_probs


def brute_force(next_log_probs, prompt, vocab, max_new, eos_id, length_penalty):
    """Every continuation that ends at eos or at max_new tokens, scored like beam_search."""
    best = []
    for length in range(1, max_new + 1):
        for tokens in itertools.product(range(vocab), repeat=length):
            if eos_id in tokens[:-1] or (length < max_new and tokens[-1] != eos_id):
                continue
            ids = torch.tensor(prompt + list(tokens))
            total = sum(float(next_log_probs(ids[None, : len(prompt) + i])[0, token])
                        for i, token in enumerate(tokens))
            best.append((total / length ** length_penalty, tokens))
    return max(best)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("eos_id, length_penalty", [(None, 1.0), (0, 0.0), (0, 1.0), (2, 0.5)])
def test_beam_search_with_enough_beams_equals_brute_force(seed, eos_id, length_penalty):
    vocab, max_new, prompt = 3, 4, [1, 2]
    model = table_model(seed, vocab)
    score, tokens = brute_force(model, prompt, vocab, max_new, eos_id, length_penalty)
    found = sampling.beam_search(model, torch.tensor(prompt), num_beams=vocab ** max_new,
                                 max_new_tokens=max_new, eos_id=eos_id, length_penalty=length_penalty)
    assert found[0].tokens == tokens
    assert found[0].score == pytest.approx(score)


def test_one_beam_is_greedy_and_more_beams_never_score_worse():
    model = table_model(7, 5)
    prompt = torch.tensor([1, 2])
    ids = prompt[None]
    for _ in range(6):
        ids = torch.cat([ids, model(ids).argmax(-1, keepdim=True)], dim=1)
    one = sampling.beam_search(model, prompt, num_beams=1, max_new_tokens=6)
    assert one[0].tokens == tuple(ids[0, 2:].tolist())
    scores = [sampling.beam_search(model, prompt, beams, 6)[0].score for beams in (1, 2, 4, 8)]
    assert scores == sorted(scores)


# ---------------------------------------------------------------------------------- diagnostics


def repeated_ngram_rate_by_loop(tokens, n):
    """Written out: walk the n-grams in order and count those seen before."""
    seen, repeats, total = set(), 0, 0
    for start in range(len(tokens) - n + 1):
        gram = tuple(tokens[start:start + n])
        repeats += gram in seen
        total += 1
        seen.add(gram)
    return repeats / total if total else 0.0


def distinct_n_by_loop(sequences, n):
    distinct, total = set(), 0
    for tokens in sequences:
        for start in range(len(tokens) - n + 1):
            distinct.add(tuple(tokens[start:start + n]))
            total += 1
    return len(distinct) / total if total else 0.0


@given(st.lists(st.integers(0, 4), max_size=40), st.integers(1, 5))
@settings(max_examples=200, deadline=None)
def test_repeated_ngram_rate_matches_a_loop(tokens, n):
    assert sampling.repeated_ngram_rate(tokens, n) == pytest.approx(repeated_ngram_rate_by_loop(tokens, n))
    assert sampling.repeated_ngram_rate(torch.tensor(tokens, dtype=torch.long), n) == pytest.approx(
        repeated_ngram_rate_by_loop(tokens, n))


def test_repeated_ngram_rate_of_a_loop_and_of_fresh_text():
    assert sampling.repeated_ngram_rate([1, 2, 3] * 10, 3) == pytest.approx(25 / 28)  # 28 trigrams, 3 of them new
    assert sampling.repeated_ngram_rate(list(range(30)), 2) == 0.0
    assert sampling.repeated_ngram_rate([1, 2], 4) == 0.0
    with pytest.raises(ArgumentError, match="one sequence"):
        sampling.repeated_ngram_rate(torch.zeros(2, 5, dtype=torch.long), 2)


@given(st.lists(st.lists(st.integers(0, 3), max_size=12), max_size=5), st.integers(1, 4))
@settings(max_examples=200, deadline=None)
def test_distinct_n_matches_a_loop(sequences, n):
    assert sampling.distinct_n(sequences, n) == pytest.approx(distinct_n_by_loop(sequences, n))


def test_distinct_n_splits_text_into_words_and_pools_samples():
    assert sampling.distinct_n(["the cat sat", "the cat ran"], 2) == pytest.approx(3 / 4)
    assert sampling.distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert sampling.distinct_n([torch.tensor([5, 6, 5, 6])], 2) == pytest.approx(2 / 3)
    assert sampling.distinct_n([], 2) == 0.0 and sampling.distinct_n(["one"], 2) == 0.0
