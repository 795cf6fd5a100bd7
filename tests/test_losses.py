"""llmcourse.losses against torch's own log_softmax and cross_entropy, plus closed forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from llmcourse.losses import REDUCTIONS, cross_entropy, log_softmax, perplexity

SCALES = [1e-3, 1.0, 30.0, 1e4]


def random_logits(shape, seed: int, scale: float, dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype)


def tolerance(scale: float) -> dict:
    # float32 keeps ~7 significant digits, so logits of size 1e4 carry absolute errors ~1e-3.
    return dict(rtol=1e-5, atol=1e-5 * max(1.0, scale))


shapes = st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple)


# ---------------------------------------------------------------- log_softmax


@given(shape=shapes, data=st.data(), seed=st.integers(0, 2**31), scale=st.sampled_from(SCALES))
def test_log_softmax_matches_torch(shape, data, seed, scale):
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    logits = random_logits(shape, seed, scale)
    ours = log_softmax(logits, dim=dim)
    assert ours.shape == logits.shape and ours.dtype == logits.dtype
    torch.testing.assert_close(ours, torch.log_softmax(logits, dim=dim), **tolerance(scale))
    torch.testing.assert_close(ours.exp().sum(dim=dim), torch.ones(()).expand_as(ours.sum(dim=dim)))


@given(shape=shapes, data=st.data(), seed=st.integers(0, 2**31), scale=st.sampled_from(SCALES))
def test_log_softmax_with_minus_inf_entries_matches_torch(shape, data, seed, scale):
    """-inf logits (masked-out tokens) get probability 0; the rest stay finite, as in torch."""
    dim = data.draw(st.integers(-len(shape), len(shape) - 1), label="dim")
    logits = random_logits(shape, seed, scale)
    masked = torch.rand(shape, generator=torch.Generator().manual_seed(seed + 1)) < 0.5
    masked.select(dim, 0).fill_(False)  # keep one finite logit per slice: torch is finite there
    logits = logits.masked_fill(masked, -math.inf)
    ours = log_softmax(logits, dim=dim)
    expected = torch.log_softmax(logits, dim=dim)
    assert torch.equal(ours == -math.inf, masked)
    assert torch.isfinite(ours[~masked]).all()
    torch.testing.assert_close(ours, expected, **tolerance(scale))


def test_log_softmax_is_finite_for_huge_logits_and_exact_in_closed_form():
    logits = torch.tensor([[1e4, -1e4, 0.0], [1e4, 1e4, 1e4]])
    ours = log_softmax(logits)
    assert torch.isfinite(ours).all()
    ln3 = math.log(3.0)
    # exp(-1e4) vanishes next to exp(0) = 1, so the first row is exact: [0, -2e4, -1e4].
    torch.testing.assert_close(ours, torch.tensor([[0.0, -2e4, -1e4], [-ln3, -ln3, -ln3]]))


def test_log_softmax_gradient_is_correct_in_float64():
    logits = random_logits((3, 5), seed=0, scale=2.0, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: log_softmax(x, dim=-1), (logits,))
    assert torch.autograd.gradcheck(lambda x: log_softmax(x, dim=0), (logits,))


def test_log_softmax_gradient_matches_torch_with_minus_inf_and_ties():
    values = torch.tensor([[2.0, 2.0, -math.inf, 0.5], [1e4, -1e4, 3.0, 1e4]], dtype=torch.float64)
    upstream = random_logits((2, 4), seed=1, scale=1.0, dtype=torch.float64)
    ours = values.clone().requires_grad_()
    theirs = values.clone().requires_grad_()
    (log_softmax(ours) * upstream).sum().backward()
    (torch.log_softmax(theirs, dim=-1) * upstream).sum().backward()
    assert torch.isfinite(ours.grad).all()
    torch.testing.assert_close(ours.grad, theirs.grad)


def test_log_softmax_of_a_scalar_matches_torch():
    torch.testing.assert_close(log_softmax(torch.tensor(3.0)), torch.log_softmax(torch.tensor(3.0), dim=-1))


def test_log_softmax_rejects_integer_logits_and_empty_class_dim():
    with pytest.raises(TypeError, match="floating-point"):
        log_softmax(torch.tensor([1, 2, 3]))
    with pytest.raises(TypeError, match="floating-point tensor, got list"):
        log_softmax([1.0, 2.0])
    with pytest.raises(ValueError, match="size 0"):
        log_softmax(torch.zeros(2, 0))


def test_losses_are_computed_without_torch_softmax_builtins(monkeypatch):
    """The package is the reference the exercises compare against: it must not delegate."""

    def forbidden(*args, **kwargs):
        raise AssertionError("llmcourse.losses delegated to a torch softmax/cross-entropy built-in")

    for owner, name in [(torch, "log_softmax"), (torch, "softmax"), (torch, "logsumexp"),
                        (torch.Tensor, "log_softmax"), (torch.Tensor, "softmax"), (torch.Tensor, "logsumexp"),
                        (F, "log_softmax"), (F, "softmax"), (F, "cross_entropy"), (F, "nll_loss")]:
        monkeypatch.setattr(owner, name, forbidden)
    logits = random_logits((4, 7), seed=3, scale=1.0).requires_grad_()
    cross_entropy(logits, torch.tensor([0, 6, 3, 2])).backward()
    assert torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- cross_entropy


def torch_cross_entropy(logits, targets, **kwargs):
    """torch's cross-entropy for class-last logits: torch wants classes in dim 1, (B, T, V) -> (B, V, T)."""
    return F.cross_entropy(logits.movedim(-1, 1) if logits.dim() > 2 else logits, targets, **kwargs)


def random_problem(batch_shape, vocab_size, seed, scale, ignore_index, ignore_fraction, dtype=torch.float32):
    logits = random_logits((*batch_shape, vocab_size), seed, scale, dtype)
    generator = torch.Generator().manual_seed(seed + 1)
    targets = torch.randint(vocab_size, batch_shape, generator=generator)
    ignored = torch.rand(batch_shape, generator=generator) < ignore_fraction
    return logits, targets.masked_fill(ignored, ignore_index)


@given(
    batch_shape=st.sampled_from([(1,), (7,), (2, 5), (3, 1), (1, 9)]),
    vocab_size=st.integers(1, 12),
    seed=st.integers(0, 2**31),
    scale=st.sampled_from(SCALES),
    ignore_index=st.sampled_from([-100, -1, 0]),
    ignore_fraction=st.sampled_from([0.0, 0.3, 1.0]),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_cross_entropy_matches_torch(batch_shape, vocab_size, seed, scale, ignore_index, ignore_fraction, reduction):
    logits, targets = random_problem(batch_shape, vocab_size, seed, scale, ignore_index, ignore_fraction)
    ours = cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
    expected = torch_cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, equal_nan=True, **tolerance(scale))


@given(
    batch_shape=st.sampled_from([(6,), (2, 4)]),
    vocab_size=st.integers(2, 9),
    seed=st.integers(0, 2**31),
    scale=st.sampled_from(SCALES),
    ignore_index=st.sampled_from([-100, 1]),
    reduction=st.sampled_from(REDUCTIONS),
)
def test_cross_entropy_gradient_matches_torch(batch_shape, vocab_size, seed, scale, ignore_index, reduction):
    logits, targets = random_problem(batch_shape, vocab_size, seed, scale, ignore_index, 0.3, torch.float64)
    upstream = random_logits(batch_shape, seed + 2, 1.0, torch.float64) if reduction == "none" else torch.tensor(1.0)
    ours = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    (cross_entropy(ours, targets, ignore_index, reduction) * upstream).sum().backward()
    (torch_cross_entropy(theirs, targets, ignore_index=ignore_index, reduction=reduction) * upstream).sum().backward()
    torch.testing.assert_close(ours.grad, theirs.grad, equal_nan=True)


def test_cross_entropy_gradient_passes_gradcheck():
    logits, targets = random_problem((2, 3), 5, seed=4, scale=1.0, ignore_index=-100,
                                     ignore_fraction=0.3, dtype=torch.float64)
    logits.requires_grad_()
    assert torch.autograd.gradcheck(lambda x: cross_entropy(x, targets), (logits,))


def test_all_ignored_targets_give_nan_mean_zero_sum_and_zero_losses():
    logits = random_logits((2, 3, 4), seed=5, scale=1.0)
    targets = torch.full((2, 3), -100)
    assert math.isnan(cross_entropy(logits, targets).item())
    assert math.isnan(torch_cross_entropy(logits, targets).item())  # the behaviour we copy
    assert cross_entropy(logits, targets, reduction="sum").item() == 0.0
    assert torch.equal(cross_entropy(logits, targets, reduction="none"), torch.zeros(2, 3))


def test_ignored_positions_contribute_nothing_to_the_mean():
    logits = random_logits((5, 6), seed=6, scale=1.0)
    targets = torch.tensor([1, -100, 4, -100, 0])
    kept = targets != -100
    torch.testing.assert_close(cross_entropy(logits, targets), cross_entropy(logits[kept], targets[kept]))


def test_extreme_logits_give_the_closed_form_loss():
    logits = torch.tensor([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    losses = cross_entropy(logits, torch.tensor([0, 1, 2]), reduction="none")
    assert torch.isfinite(losses).all()
    torch.testing.assert_close(losses, torch.tensor([0.0, 2e4, math.log(3.0)]))


@pytest.mark.parametrize("vocab_size", [1, 2, 27, 65, 50257])
@pytest.mark.parametrize("constant", [0.0, -3.5, 1e4])
def test_uniform_logits_give_exactly_ln_v(vocab_size, constant):
    """Equal logits mean p = 1/V everywhere: the loss is -log(1/V) = ln V at every position."""
    logits = torch.full((3, 4, vocab_size), constant)
    targets = torch.randint(vocab_size, (3, 4), generator=torch.Generator().manual_seed(0))
    per_position = cross_entropy(logits, targets, reduction="none")
    assert torch.equal(per_position, torch.full((3, 4), vocab_size, dtype=torch.float32).log())
    assert cross_entropy(logits, targets).item() == pytest.approx(math.log(vocab_size), rel=1e-6, abs=1e-7)
    assert perplexity(cross_entropy(logits, targets).item()) == pytest.approx(vocab_size, rel=1e-5)


def test_narrow_integer_targets_give_the_same_loss():
    logits, targets = random_problem((8,), 5, seed=7, scale=1.0, ignore_index=-100, ignore_fraction=0.0)
    expected = cross_entropy(logits, targets)
    assert torch.equal(cross_entropy(logits, targets.int()), expected)
    assert torch.equal(cross_entropy(logits, targets.to(torch.uint8)), expected)
    # uint8 cannot hold -100: an id of 156 must be an error, not wrap around to "ignored".
    with pytest.raises(ValueError, match=r"targets: 156 at index 0 is outside \[0, 5\)"):
        cross_entropy(torch.zeros(2, 5), torch.tensor([156, 1], dtype=torch.uint8))


def test_unbatched_logits_and_scalar_target_match_torch():
    logits = random_logits((6,), seed=8, scale=1.0)
    torch.testing.assert_close(cross_entropy(logits, torch.tensor(2)), F.cross_entropy(logits, torch.tensor(2)))


def test_cross_entropy_rejects_float_targets():
    with pytest.raises(TypeError, match="targets must hold integers, got dtype torch.float32.*long"):
        cross_entropy(torch.zeros(3, 4), torch.zeros(3))


@pytest.mark.parametrize("logits_shape, targets_shape", [((3, 4), (4,)), ((2, 3, 4), (3, 2)), ((2, 3, 4), (6,)),
                                                         ((), ())])
def test_cross_entropy_rejects_mismatched_shapes(logits_shape, targets_shape):
    with pytest.raises(ValueError, match=r"logits must be a tensor of shape .*V\)") as error:
        cross_entropy(torch.zeros(logits_shape), torch.zeros(targets_shape, dtype=torch.long))
    assert f"shape {(*targets_shape, 'V')}".replace("'", "") in str(error.value)


@pytest.mark.parametrize("bad_id, ignore_index", [(4, -100), (-1, -100), (-100, -1), (17, 17 + 1)])
def test_cross_entropy_rejects_target_ids_out_of_range_naming_them(bad_id, ignore_index):
    targets = torch.tensor([[0, 1], [bad_id, 3]])
    with pytest.raises(ValueError, match=rf"targets: {bad_id} at index \(1, 0\) is outside \[0, 4\)"):
        cross_entropy(torch.zeros(2, 2, 4), targets, ignore_index=ignore_index)


def test_cross_entropy_rejects_unknown_reduction_listing_the_allowed_ones():
    with pytest.raises(ValueError, match="reduction='average' must be one of 'mean', 'sum', 'none'"):
        cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), reduction="average")


# ---------------------------------------------------------------- perplexity


@pytest.mark.parametrize("vocab_size", [1, 2, 65, 50257])
def test_perplexity_of_ln_v_is_v(vocab_size):
    assert perplexity(math.log(vocab_size)) == pytest.approx(vocab_size, rel=1e-12)
    as_tensor = perplexity(torch.tensor(math.log(vocab_size), dtype=torch.float64))
    assert isinstance(as_tensor, torch.Tensor)
    assert as_tensor.item() == pytest.approx(vocab_size, rel=1e-12)


def test_perplexity_keeps_tensor_shape_and_overflows_to_inf():
    torch.testing.assert_close(perplexity(torch.tensor([0.0, 1.0])), torch.tensor([1.0, math.e]))
    assert perplexity(0) == 1.0
    assert perplexity(1e4) == math.inf
