"""llmcourse.bigram: counting and neural bigram models against naive loops and each other."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llmcourse.bigram import (
    CountingBigram,
    NeuralBigram,
    bigram_nll,
    bigram_probs,
    count_bigrams,
    sample_bigram,
    train_neural_bigram,
)
from llmcourse.losses import cross_entropy

@pytest.fixture(autouse=True)
def one_torch_thread():
    """These tensors are small: two threads only add synchronisation, badly so on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


id_lists = st.integers(1, 8).flatmap(
    lambda vocab_size: st.tuples(st.just(vocab_size), st.lists(st.integers(0, vocab_size - 1), max_size=60)))


def naive_counts(ids: list[int], vocab_size: int) -> list[list[int]]:
    counts = [[0] * vocab_size for _ in range(vocab_size)]
    for current, following in zip(ids, ids[1:]):
        counts[current][following] += 1
    return counts


def markov_text(vocab_size: int, length: int, seed: int) -> torch.Tensor:
    """Ids drawn from a random bigram model whose rows favour a few successors (like letters)."""
    generator = torch.Generator().manual_seed(seed)
    true_probs = (torch.randn(vocab_size, vocab_size, generator=generator) * 2).exp()
    true_probs = true_probs / true_probs.sum(dim=1, keepdim=True)
    return torch.cat([torch.tensor([0]), sample_bigram(true_probs, 0, length - 1, generator)])


# ---------------------------------------------------------------- counting


@given(id_lists)
def test_count_bigrams_matches_a_naive_double_loop(vocab_and_ids):
    vocab_size, ids = vocab_and_ids
    counts = count_bigrams(torch.tensor(ids, dtype=torch.long), vocab_size)
    assert counts.dtype == torch.long and counts.shape == (vocab_size, vocab_size)
    assert counts.tolist() == naive_counts(ids, vocab_size)
    assert counts.sum().item() == max(len(ids) - 1, 0)


def test_count_bigrams_is_not_symmetric():
    counts = count_bigrams(torch.tensor([0, 1, 1, 2]), 3)
    assert counts.tolist() == [[0, 1, 0], [0, 1, 1], [0, 0, 0]]


@pytest.mark.parametrize("ids, vocab_size, error, pattern", [
    (torch.tensor([[0, 1], [1, 0]]), 2, ValueError, r"ids must be a tensor of shape \(N,\), got shape \(2, 2\)"),
    (torch.tensor([0.0, 1.0]), 2, TypeError, "ids must hold integers, got dtype torch.float32"),
    (torch.tensor([0, 3, 1]), 3, ValueError, r"ids: 3 at index 1 is outside \[0, 3\); use a vocab_size larger"),
    (torch.tensor([0, -1]), 3, ValueError, "ids: -1 at index 1"),
    (torch.tensor([0, 1]), 0, ValueError, "vocab_size=0 must be an integer >= 1"),
    ([0, 1], 2, TypeError, r"ids must be a tensor of integers, got list.*torch\.tensor"),
])
def test_count_bigrams_rejects_bad_input(ids, vocab_size, error, pattern):
    with pytest.raises(error, match=pattern):
        count_bigrams(ids, vocab_size)


@given(id_lists, st.sampled_from([0.0, 0.1, 1.0, 5.0]))
def test_bigram_probs_is_add_k_smoothing_with_rows_summing_to_one(vocab_and_ids, smoothing):
    vocab_size, ids = vocab_and_ids
    counts = count_bigrams(torch.tensor(ids, dtype=torch.long), vocab_size)
    probs = bigram_probs(counts, smoothing)
    assert probs.dtype == torch.float32 and probs.shape == (vocab_size, vocab_size)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(vocab_size))
    for a, row in enumerate(naive_counts(ids, vocab_size)):
        total = sum(row) + smoothing * vocab_size
        expected = [(c + smoothing) / total if total > 0 else 1 / vocab_size for c in row]
        torch.testing.assert_close(probs[a], torch.tensor(expected))


def test_bigram_probs_without_smoothing_gives_empty_rows_a_uniform_distribution():
    counts = torch.tensor([[0, 2, 2], [0, 0, 0], [1, 0, 0]])
    probs = bigram_probs(counts, smoothing=0.0)
    torch.testing.assert_close(probs, torch.tensor([[0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3], [1.0, 0.0, 0.0]]))
    smoothed = bigram_probs(counts, smoothing=1.0)
    assert (smoothed > 0).all()  # every pair, even unseen, keeps some probability
    torch.testing.assert_close(smoothed[0], torch.tensor([1 / 7, 3 / 7, 3 / 7]))


def test_bigram_probs_keeps_float64_counts_in_float64():
    assert bigram_probs(torch.ones(3, 3, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("smoothing", [-0.5, math.nan, math.inf, "1"])
def test_bigram_probs_rejects_bad_smoothing(smoothing):
    with pytest.raises(ValueError, match="smoothing=.* must be a finite number >= 0"):
        bigram_probs(torch.ones(2, 2), smoothing)


def test_bigram_probs_rejects_non_square_or_negative_counts():
    with pytest.raises(ValueError, match=r"square \(V, V\).*\(2, 3\)"):
        bigram_probs(torch.ones(2, 3))
    with pytest.raises(ValueError, match="counts must be >= 0"):
        bigram_probs(torch.tensor([[1, -1], [0, 0]]))


@given(id_lists.filter(lambda pair: len(pair[1]) >= 2), st.sampled_from([0.5, 1.0]))
def test_bigram_nll_matches_a_naive_loop(vocab_and_ids, smoothing):
    vocab_size, ids = vocab_and_ids
    probs = bigram_probs(count_bigrams(torch.tensor(ids), vocab_size), smoothing).double()
    expected = -sum(math.log(probs[a, b].item()) for a, b in zip(ids, ids[1:])) / (len(ids) - 1)
    assert bigram_nll(probs, torch.tensor(ids)).item() == pytest.approx(expected, rel=1e-12)


def test_bigram_nll_is_inf_for_an_impossible_pair_and_needs_two_ids():
    probs = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    assert bigram_nll(probs, torch.tensor([0, 1, 0])).item() == 0.0
    assert bigram_nll(probs, torch.tensor([0, 0])).item() == math.inf
    with pytest.raises(ValueError, match="ids holds 1 ids but needs at least 2"):
        bigram_nll(probs, torch.tensor([0]))


def test_counting_model_nll_equals_the_cross_entropy_of_its_log_probs():
    ids = markov_text(6, 500, seed=1)
    model = CountingBigram.fit(ids, 6, smoothing=0.5)
    torch.testing.assert_close(model.nll(ids), cross_entropy(model.probs.log()[ids[:-1]], ids[1:]))


# ---------------------------------------------------------------- sampling


def reference_sampling_loop(probs, start_id, num_tokens, generator):
    """What a learner writes: the exact call the API promises, once per token."""
    current, generated = start_id, []
    for _ in range(num_tokens):
        current = torch.multinomial(probs[current], 1, generator=generator).item()
        generated.append(current)
    return generated


def random_probs(vocab_size: int, seed: int) -> torch.Tensor:
    weights = torch.rand(vocab_size, vocab_size, generator=torch.Generator().manual_seed(seed))
    weights[weights < 0.4] = 0.0  # many impossible successors
    weights[:, 0] += 0.01  # ...but never an empty row
    return weights / weights.sum(dim=1, keepdim=True)


def test_sample_bigram_matches_the_multinomial_loop_id_for_id():
    probs = random_probs(9, seed=2)
    ours = sample_bigram(probs, 4, 300, torch.Generator().manual_seed(11))
    assert ours.dtype == torch.long and ours.shape == (300,)
    assert ours.tolist() == reference_sampling_loop(probs, 4, 300, torch.Generator().manual_seed(11))


def test_sample_bigram_is_reproducible_and_seed_dependent():
    probs = random_probs(9, seed=3)
    first = sample_bigram(probs, 0, 100, torch.Generator().manual_seed(5))
    assert torch.equal(first, sample_bigram(probs, 0, 100, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, sample_bigram(probs, 0, 100, torch.Generator().manual_seed(6)))


def test_sample_bigram_only_emits_possible_successors():
    probs = random_probs(9, seed=4)
    ids = sample_bigram(probs, 3, 2000, torch.Generator().manual_seed(0))
    previous = torch.cat([torch.tensor([3]), ids[:-1]])
    assert (probs[previous, ids] > 0).all()


def test_sample_bigram_follows_a_deterministic_table_exactly():
    successor = torch.tensor([2, 0, 3, 1])  # 0 -> 2 -> 3 -> 1 -> 0 -> ...
    probs = torch.nn.functional.one_hot(successor, 4).float()
    assert sample_bigram(probs, 0, 8).tolist() == [2, 3, 1, 0, 2, 3, 1, 0]


def test_sample_bigram_frequencies_match_the_distribution():
    target = torch.tensor([0.5, 0.3, 0.15, 0.05])
    probs = target.expand(4, 4)  # every row the same: draws are independent samples of target
    num_tokens = 20_000
    ids = sample_bigram(probs, 0, num_tokens, torch.Generator().manual_seed(0))
    observed = torch.bincount(ids, minlength=4).double()
    expected = target.double() * num_tokens
    chi_square = ((observed - expected) ** 2 / expected).sum().item()
    assert chi_square < 16.27  # the 99.9% quantile of chi-square with 3 degrees of freedom


def test_sample_bigram_handles_zero_tokens_and_rejects_bad_arguments():
    probs = random_probs(5, seed=5)
    empty = sample_bigram(probs, 0, 0)
    assert empty.shape == (0,) and empty.dtype == torch.long
    with pytest.raises(ValueError, match=r"start_id=5 must be an integer in \[0, 5\)"):
        sample_bigram(probs, 5, 3)
    with pytest.raises(ValueError, match="num_tokens=-1 must be an integer >= 0"):
        sample_bigram(probs, 0, -1)
    with pytest.raises(ValueError, match="square"):
        sample_bigram(probs[0], 0, 3)


def test_counting_bigram_bundles_the_functions():
    ids = markov_text(7, 800, seed=6)
    model = CountingBigram.fit(ids, 7, smoothing=0.3)
    assert torch.equal(model.counts, count_bigrams(ids, 7))
    assert torch.equal(model.probs, bigram_probs(model.counts, 0.3))
    assert model.vocab_size == 7 and "smoothing=0.3" in repr(model)
    assert torch.equal(model.nll(ids), bigram_nll(model.probs, ids))
    assert torch.equal(model.sample(2, 50, torch.Generator().manual_seed(1)),
                       sample_bigram(model.probs, 2, 50, torch.Generator().manual_seed(1)))


# ---------------------------------------------------------------- neural


@pytest.mark.parametrize("vocab_size", [1, 5, 27, 96])
def test_untrained_neural_bigram_is_uniform_with_loss_exactly_ln_v(vocab_size):
    model = NeuralBigram(vocab_size)
    ids = torch.randint(vocab_size, (40,), generator=torch.Generator().manual_seed(0))
    per_position = cross_entropy(model(ids[:-1]), ids[1:], reduction="none")
    assert torch.equal(per_position, torch.full((39,), vocab_size, dtype=torch.float32).log())
    assert cross_entropy(model(ids[:-1]), ids[1:]).item() == pytest.approx(math.log(vocab_size), rel=1e-6, abs=1e-7)
    torch.testing.assert_close(model.probs(), torch.full((vocab_size, vocab_size), 1 / vocab_size))


def test_neural_bigram_forward_shapes():
    model = NeuralBigram(11)
    assert model(torch.zeros(7, dtype=torch.long)).shape == (7, 11)
    assert model(torch.zeros(3, 5, dtype=torch.long)).shape == (3, 5, 11)
    assert sum(p.numel() for p in model.parameters()) == 11 * 11
    with pytest.raises(ValueError, match="vocab_size=0 must be an integer >= 1"):
        NeuralBigram(0)


def test_trained_neural_bigram_reaches_the_counting_model():
    """Gradient descent on the cross-entropy finds the maximum-likelihood table: the counts."""
    vocab_size = 20
    ids = markov_text(vocab_size, 20_000, seed=7)
    counting_nll = CountingBigram.fit(ids, vocab_size, smoothing=0.0).nll(ids).item()
    model, losses = train_neural_bigram(ids, vocab_size)
    with torch.no_grad():
        trained_nll = cross_entropy(model(ids[:-1]), ids[1:]).item()
    assert len(losses) == 50 and losses[0] == pytest.approx(math.log(vocab_size), rel=1e-6)
    assert counting_nll - 1e-4 <= trained_nll <= counting_nll + 0.01
    assert losses[-1] < losses[0]
    frequent = count_bigrams(ids, vocab_size).sum(dim=1) > 2000  # rows with plenty of data
    counting_probs = CountingBigram.fit(ids, vocab_size, smoothing=0.0).probs
    torch.testing.assert_close(model.probs()[frequent], counting_probs[frequent], atol=0.01, rtol=0.0)


def test_minibatch_training_is_seeded_and_learns():
    ids = markov_text(8, 3000, seed=8)
    _, losses = train_neural_bigram(ids, 8, steps=30, lr=0.1, batch_size=256, seed=1)
    _, same = train_neural_bigram(ids, 8, steps=30, lr=0.1, batch_size=256, seed=1)
    _, other = train_neural_bigram(ids, 8, steps=30, lr=0.1, batch_size=256, seed=2)
    assert losses == same and losses != other
    assert sum(losses[-5:]) / 5 < math.log(8) - 0.2


def test_training_runs_on_the_requested_device_and_shows_progress(capsys):
    model, losses = train_neural_bigram(torch.tensor([0, 1, 2, 0, 1]), 3, steps=3, progress=True, device="cpu")
    assert next(model.parameters()).device == torch.device("cpu") and len(losses) == 3
    assert "neural bigram" in capsys.readouterr().err


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(steps=0), "steps=0 must be an integer >= 1"),
    (dict(lr=-1.0), "lr=-1.0 must be a finite number > 0"),
    (dict(batch_size=0), r"batch_size=0 must be an integer >= 1 \(or None for the full batch\)"),
])
def test_training_rejects_bad_settings(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        train_neural_bigram(torch.tensor([0, 1, 0]), 2, **kwargs)


def test_training_rejects_ids_out_of_range():
    with pytest.raises(ValueError, match=r"ids: 5 at index 2 is outside \[0, 3\)"):
        train_neural_bigram(torch.tensor([0, 1, 5]), 3)


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_everything_runs_on_cuda():
    ids = markov_text(10, 5000, seed=9)
    on_gpu = ids.cuda()
    assert torch.equal(count_bigrams(on_gpu, 10).cpu(), count_bigrams(ids, 10))
    probs = bigram_probs(count_bigrams(on_gpu, 10), 0.5)
    assert probs.is_cuda
    torch.testing.assert_close(bigram_nll(probs, on_gpu).cpu(), bigram_nll(probs.cpu(), ids))
    # A CPU generator drives sampling on the CPU: the same ids as the CPU table, returned on the GPU.
    sampled = sample_bigram(probs, 0, 50, torch.Generator().manual_seed(0))
    assert sampled.is_cuda
    assert sampled.tolist() == sample_bigram(probs.cpu(), 0, 50, torch.Generator().manual_seed(0)).tolist()
    assert sample_bigram(probs, 0, 20).is_cuda
    model, losses = train_neural_bigram(ids, 10, device="cuda")
    assert next(model.parameters()).is_cuda
    counting_nll = CountingBigram.fit(ids, 10, smoothing=0.0).nll(ids).item()
    assert losses[-1] <= counting_nll + 0.02
    _, minibatch_losses = train_neural_bigram(on_gpu, 10, steps=5, batch_size=64)
    assert len(minibatch_losses) == 5
