"""Speculative decoding: greedy output equal to the target's own greedy decoding, sampled output
distributed as the target's (chi-square tests at fixed seeds, against the exact distribution by
enumeration), and the acceptance rule's properties."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llmcourse.checks import ArgumentError
from llmcourse.model import GPT, GPTConfig
from llmcourse.sampling import SamplingSettings, process
from llmcourse.speculative import SpeculativeStats, greedy_accept, speculative_accept, speculative_generate


def tiny_gpt(seed: int, vocab: int = 64, n_layer: int = 2, n_embd: int = 32, sharpen: float = 1.0,
             block_size: int = 64) -> GPT:
    """A random GPT; `sharpen` scales the output layer, so the next-token distributions are
    peaked rather than almost uniform. Untied: a random tied model mostly predicts its input
    token again, and two such models would agree on everything."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block_size, n_layer=n_layer, n_head=2, n_embd=n_embd,
                          tie_weights=False))
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
    return model.eval()


def chi_square_limit(degrees: int) -> float:
    """The 99.9th percentile of chi-square(`degrees`), by Wilson and Hilferty's cube-root
    approximation (within 2% of the exact value from 3 degrees up; no scipy needed)."""
    z = 3.0902  # the 99.9th percentile of the standard normal
    return degrees * (1 - 2 / (9 * degrees) + z * math.sqrt(2 / (9 * degrees))) ** 3


def chi_square(counts: torch.Tensor, probs: torch.Tensor) -> tuple[float, int]:
    """The chi-square statistic of `counts` against `probs` over the cells probs gives mass, and
    its degrees of freedom; a count in a cell of probability 0 is an infinite statistic."""
    if counts[probs == 0].sum() > 0:
        return math.inf, 1
    expected = probs * counts.sum()
    kept = probs > 0
    return float(((counts[kept] - expected[kept]) ** 2 / expected[kept]).sum()), int(kept.sum()) - 1


def assert_follows(counts: torch.Tensor, probs: torch.Tensor) -> None:
    statistic, degrees = chi_square(counts.double(), probs.double())
    assert statistic < chi_square_limit(degrees), (statistic, degrees, counts.tolist(), probs.tolist())


# ---------------------------------------------------------------------------------- greedy


PROMPT = torch.tensor([[3, 17, 5, 40, 9]])


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("draft_kind", ["itself", "random", "smaller"])
def test_greedy_equals_the_targets_greedy_decoding(k, draft_kind):
    target = tiny_gpt(0, sharpen=4.0)
    draft = {"itself": target, "random": tiny_gpt(1, sharpen=4.0),
             "smaller": tiny_gpt(2, n_layer=1, n_embd=16, sharpen=4.0)}[draft_kind]
    expected = target.generate(PROMPT, 30, temperature=0)
    ids, stats = speculative_generate(target, draft, PROMPT, 30, k=k, settings=SamplingSettings(temperature=0))
    assert torch.equal(ids, expected)
    assert stats.accepted + stats.target_forwards == 30  # each round: n accepted + 1 from the target
    if draft_kind == "itself":
        assert stats.acceptance_rate == 1.0
        assert stats.target_forwards == math.ceil(30 / (k + 1))


def test_a_random_draft_is_mostly_rejected_and_changes_nothing():
    target, draft = tiny_gpt(0, sharpen=4.0), tiny_gpt(1, sharpen=4.0)
    _, stats = speculative_generate(target, draft, PROMPT, 30, k=4, settings=SamplingSettings(temperature=0))
    assert stats.acceptance_rate < 0.5
    assert stats.draft_forwards == stats.proposed


def test_greedy_with_history_levers_equals_generate():
    """Penalties read the tokens so far: each verified position must see its own prefix."""
    settings = SamplingSettings(temperature=0, repetition_penalty=3.0, no_repeat_ngram_size=2,
                                frequency_penalty=0.5)
    target, draft = tiny_gpt(0, vocab=16, sharpen=4.0), tiny_gpt(3, vocab=16, sharpen=4.0)
    prompt = torch.tensor([[1, 2, 1, 2, 3]])
    expected = target.generate(prompt, 40, settings=settings)
    for k in (1, 3, 6):
        ids, _ = speculative_generate(target, draft, prompt, 40, k=k, settings=settings)
        assert torch.equal(ids, expected), k
        ids, stats = speculative_generate(target, target, prompt, 40, k=k, settings=settings)
        assert torch.equal(ids, expected), k
        assert stats.acceptance_rate == 1.0


def test_it_fills_the_context_exactly():
    target, draft = tiny_gpt(0, block_size=16), tiny_gpt(1, block_size=16)
    ids, _ = speculative_generate(target, draft, PROMPT, 11, k=4, settings=SamplingSettings(temperature=0))
    assert torch.equal(ids, target.generate(PROMPT, 11, temperature=0))
    with pytest.raises(ArgumentError, match="block_size=16"):
        speculative_generate(target, draft, PROMPT, 12)


def test_zero_new_tokens_returns_the_prompt():
    target = tiny_gpt(0)
    ids, stats = speculative_generate(target, target, PROMPT, 0)
    assert torch.equal(ids, PROMPT) and stats == SpeculativeStats()


def test_bad_arguments_are_refused():
    target = tiny_gpt(0)
    with pytest.raises(ArgumentError, match="vocabulary"):
        speculative_generate(target, tiny_gpt(1, vocab=32), PROMPT, 3)
    with pytest.raises(ArgumentError, match="ids"):
        speculative_generate(target, target, PROMPT[0], 3)
    with pytest.raises(ArgumentError, match="ids"):
        speculative_generate(target, target, PROMPT.repeat(2, 1), 3)
    with pytest.raises(ArgumentError, match="k"):
        speculative_generate(target, target, PROMPT, 3, k=0)
    with pytest.raises(ArgumentError, match="draft_probs"):
        speculative_accept(torch.ones(3, 5) / 5, torch.ones(3, 5) / 5, torch.tensor([0, 1]))
    with pytest.raises(ArgumentError, match="target_probs"):
        speculative_accept(torch.ones(2, 5) / 5, torch.ones(2, 5) / 5, torch.tensor([0, 1]))
    with pytest.raises(ArgumentError, match="in \\[0, 5\\)"):
        speculative_accept(torch.ones(3, 5) / 5, torch.ones(2, 5) / 5, torch.tensor([0, 5]))


# ---------------------------------------------------------------------------------- the acceptance rule


P = torch.tensor([[0.40, 0.25, 0.20, 0.10, 0.05],
                  [0.10, 0.10, 0.50, 0.20, 0.10],
                  [0.30, 0.30, 0.10, 0.10, 0.20]])
Q = torch.tensor([[0.10, 0.50, 0.05, 0.30, 0.05],
                  [0.20, 0.20, 0.20, 0.20, 0.20]])


def first_tokens(draft_rows: torch.Tensor, target_rows: torch.Tensor, draws: int, rule=speculative_accept,
                 seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The token each of `draws` rounds puts first (the first draft token if accepted, else the
    rule's own token) as counts over the vocabulary, and the counts of n."""
    generator = torch.Generator().manual_seed(seed)
    k, vocab = draft_rows.shape
    firsts, accepted = torch.zeros(vocab), torch.zeros(k + 1)
    for _ in range(draws):
        drafts = torch.multinomial(draft_rows, 1, generator=generator)[:, 0]  # (k,), token i from q_i
        n, following = rule(target_rows, draft_rows, drafts, generator)
        firsts[int(drafts[0]) if n > 0 else following] += 1
        accepted[n] += 1
    return firsts, accepted


def test_the_first_token_follows_the_target_not_the_draft():
    """20,000 rounds at a fixed seed: chi-square of the first token against p_1 (it passes),
    and the same counts against q_1 (they fail it: the test can tell the two apart)."""
    firsts, accepted = first_tokens(Q, P, 20_000)
    assert_follows(firsts, P[0])
    statistic, degrees = chi_square(firsts.double(), Q[0].double())
    assert statistic > 10 * chi_square_limit(degrees)
    # P(accept x_1) = sum over x of min(p, q) = 1 - total variation distance(p, q)
    assert abs(float(accepted[1:].sum()) / 20_000 - float(torch.minimum(P[0], Q[0]).sum())) < 0.015


def always_accept(target_probs, draft_probs, draft_tokens, generator):
    """A wrong rule (trust the draft): its first tokens follow q, which the test must catch."""
    return draft_tokens.shape[0], 0


def test_the_frequency_test_catches_a_wrong_rule():
    firsts, _ = first_tokens(Q, P, 20_000, rule=always_accept)
    statistic, degrees = chi_square(firsts.double(), P[0].double())
    assert statistic > chi_square_limit(degrees)


def test_a_rejection_draws_from_the_residual():
    """Given n = 0, the token follows normalise(max(0, p_1 - q_1)); tokens where p <= q never come."""
    generator = torch.Generator().manual_seed(1)
    counts = torch.zeros(5)
    for _ in range(10_000):
        draft = torch.multinomial(Q[0], 1, generator=generator)
        n, following = speculative_accept(P[:2], Q[:1], draft, generator)
        if n == 0:
            counts[following] += 1
    residual = (P[0] - Q[0]).clamp(min=0)
    assert counts[residual == 0].sum() == 0
    assert_follows(counts, residual / residual.sum())


def test_all_accepted_draws_the_bonus_from_the_last_row():
    """q = p: every draft token is accepted, and the bonus token follows p_{k+1}."""
    generator = torch.Generator().manual_seed(2)
    counts = torch.zeros(5)
    for _ in range(5_000):
        drafts = torch.multinomial(P[:2], 1, generator=generator)[:, 0]
        n, following = speculative_accept(P, P[:2], drafts, generator)
        assert n == 2
        counts[following] += 1
    assert_follows(counts, P[2])


def test_a_token_the_target_rules_out_is_always_rejected():
    target = torch.tensor([[0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    draft = torch.tensor([[1.0, 0.0, 0.0]])
    for seed in range(50):
        n, following = speculative_accept(target, draft, torch.tensor([0]), torch.Generator().manual_seed(seed))
        assert n == 0 and following in (1, 2)


@given(seed=st.integers(0, 10_000), k=st.integers(0, 6), vocab=st.integers(1, 8),
       temperature=st.sampled_from([0.3, 1.0, 3.0]))
def test_n_is_in_range_and_the_token_is_possible(seed, k, vocab, temperature):
    generator = torch.Generator().manual_seed(seed)
    target = torch.softmax(torch.randn(k + 1, vocab, generator=generator) / temperature, dim=-1)
    draft = torch.softmax(torch.randn(k, vocab, generator=generator) / temperature, dim=-1)
    drafts = torch.multinomial(draft, 1, generator=generator)[:, 0] if k else torch.zeros(0, dtype=torch.long)
    n, following = speculative_accept(target, draft, drafts, generator)
    assert 0 <= n <= k and 0 <= following < vocab
    assert target[n, following] > 0


@given(seed=st.integers(0, 10_000), k=st.integers(0, 6), vocab=st.integers(1, 6))
def test_one_hot_distributions_reduce_to_the_argmax_rule(seed, k, vocab):
    generator = torch.Generator().manual_seed(seed)
    best = torch.randint(vocab, (k + 1,), generator=generator)
    drafts = torch.randint(vocab, (k,), generator=generator)
    target = torch.nn.functional.one_hot(best, vocab).float()
    draft = torch.nn.functional.one_hot(drafts, vocab).float()
    matches = 0
    while matches < k and drafts[matches] == best[matches]:
        matches += 1
    expected = (matches, int(best[matches]))
    assert speculative_accept(target, draft, drafts, generator) == expected
    assert greedy_accept(target, drafts) == expected


# ---------------------------------------------------------------------------------- whole sequences


@torch.no_grad()
def sequence_distribution(model: GPT, prompt: torch.Tensor, new_tokens: int,
                          settings: SamplingSettings) -> torch.Tensor:
    """The exact probability of every continuation of `new_tokens` tokens under `model` sampled
    with `settings`, by enumeration (one full forward per prefix: no cache, nothing shared):
    `(V ** new_tokens,)`, in the order of `itertools.product(range(V), repeat=new_tokens)`."""
    vocab = model.config.vocab_size
    law = []
    for continuation in itertools.product(range(vocab), repeat=new_tokens):
        ids, probability = prompt, 1.0
        for token in continuation:
            logits, _ = model(ids)
            probability *= float(torch.softmax(process(logits[:, -1], ids, settings), dim=-1)[0, token])
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        law.append(probability)
    return torch.tensor(law)


@pytest.mark.parametrize("new_tokens, k, settings", [
    (2, 1, SamplingSettings()),
    (3, 2, SamplingSettings(temperature=0.8, top_k=2, repetition_penalty=1.5)),
])
def test_sampled_sequences_follow_the_targets_distribution(new_tokens, k, settings):
    """Continuations over a tiny vocabulary (V = 3) drawn 1,500 times at a fixed seed, against
    the target's exact law by enumeration: chi-square passes. The same counts fail against the
    draft's own law, so the test can tell the two apart."""
    target, draft = tiny_gpt(0, vocab=3, sharpen=6.0), tiny_gpt(5, vocab=3, sharpen=6.0)
    prompt = torch.tensor([[0, 1, 2]])
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(3 ** new_tokens)
    accepted = 0
    for _ in range(1_500):
        ids, stats = speculative_generate(target, draft, prompt, new_tokens, k=k, settings=settings,
                                          generator=generator)
        # the continuation's index in itertools.product order: its digits in base V = 3
        counts[sum(token * 3 ** power for power, token in enumerate(reversed(ids[0, 3:].tolist())))] += 1
        accepted += stats.accepted
    assert_follows(counts, sequence_distribution(target, prompt, new_tokens, settings))
    draft_law = sequence_distribution(draft, prompt, new_tokens, settings)
    statistic, degrees = chi_square(counts.double(), draft_law.double())
    assert statistic > chi_square_limit(degrees)
    assert 0 < accepted < 1_500 * new_tokens  # acceptance and rejection were both exercised
