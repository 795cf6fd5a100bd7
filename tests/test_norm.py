"""llmcourse.norm against torch.nn.LayerNorm / torch.nn.RMSNorm, plus the invariances that define them."""

from __future__ import annotations

import pytest
import torch

from llmcourse.norm import LayerNorm, RMSNorm, layer_norm, make_norm, rms_norm

DTYPES = [torch.float32, torch.float64]


@pytest.fixture(autouse=True)
def seeded_torch():
    """Module inits and dropout draw from torch's global generator: seed it so every test is
    the same on every run, whatever ran before it in this worker."""
    torch.manual_seed(0)


def random(shape, seed: int, dtype=torch.float32, scale: float = 1.0, shift: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale + shift).to(dtype)


def randomise_parameters(*modules: torch.nn.Module, seed: int = 0) -> None:
    """Give every module the same random gains/shifts (the ones/zeros init would hide bugs)."""
    for name, param in modules[0].named_parameters():
        values = random(param.shape, seed=seed + len(name), dtype=torch.float64)
        with torch.no_grad():
            for module in modules:
                getattr(module, name).copy_(values)


def tolerance(dtype: torch.dtype) -> dict:
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- against torch


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7,), (3, 5, 16), (2, 3, 4, 33)])
def test_layer_norm_matches_torch(dtype, bias, shape):
    dim = shape[-1]
    ours = LayerNorm(dim, eps=1e-5, bias=bias).to(dtype)
    theirs = torch.nn.LayerNorm(dim, eps=1e-5, bias=bias).to(dtype)
    randomise_parameters(ours, theirs)
    assert (ours.bias is None) == (not bias)
    x = random(shape, seed=1, dtype=dtype, scale=3.0, shift=2.0)
    y = ours(x)
    assert y.shape == x.shape and y.dtype == dtype
    torch.testing.assert_close(y, theirs(x), **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_module_runs_the_written_out_function(dtype, bias):
    """The module's fused kernel computes what the book's `layer_norm` writes out."""
    module = LayerNorm(24, eps=1e-5, bias=bias).to(dtype)
    randomise_parameters(module, torch.nn.LayerNorm(24, bias=bias).to(dtype))
    x = random((4, 6, 24), seed=2, dtype=dtype, scale=3.0, shift=2.0)
    expected = layer_norm(x, module.weight, module.bias, module.eps)
    torch.testing.assert_close(module(x), expected, **tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7,), (3, 5, 16), (2, 3, 4, 33)])
def test_rms_norm_matches_torch(dtype, shape):
    dim = shape[-1]
    ours = RMSNorm(dim, eps=1e-6).to(dtype)
    theirs = torch.nn.RMSNorm(dim, eps=1e-6).to(dtype)
    randomise_parameters(ours, theirs)
    x = random(shape, seed=2, dtype=dtype, scale=3.0, shift=1.0)
    y = ours(x)
    assert y.shape == x.shape and y.dtype == dtype
    torch.testing.assert_close(y, theirs(x), **tolerance(dtype))


def test_default_eps_and_identity_init():
    assert LayerNorm(4).eps == 1e-5 and RMSNorm(4).eps == 1e-6
    layer, rms = LayerNorm(4), RMSNorm(4)
    assert torch.equal(layer.weight, torch.ones(4)) and torch.equal(layer.bias, torch.zeros(4))
    assert torch.equal(rms.weight, torch.ones(4))
    assert [name for name, _ in RMSNorm(4).named_parameters()] == ["weight"]
    assert [name for name, _ in LayerNorm(4, bias=False).named_parameters()] == ["weight"]


def test_closed_form_values():
    x = torch.tensor([[1.0, 2.0, 3.0, 6.0]])  # mean 3, biased variance (4+1+0+9)/4 = 3.5, mean square 12.5
    torch.testing.assert_close(layer_norm(x, None, None, eps=0.0), (x - 3.0) / 3.5**0.5)
    torch.testing.assert_close(rms_norm(x, None, eps=0.0), x / 12.5**0.5)
    weight, bias = torch.tensor([1.0, -1.0, 2.0, 0.0]), torch.tensor([0.5, 0.5, 0.5, 0.5])
    torch.testing.assert_close(layer_norm(x, weight, bias, eps=0.0), (x - 3.0) / 3.5**0.5 * weight + bias)


# ---------------------------------------------------------------- properties


def test_layer_norm_output_has_zero_mean_unit_variance():
    x = random((4, 6, 32), seed=3, dtype=torch.float64, scale=5.0, shift=-7.0)
    y = layer_norm(x, None, None, eps=0.0)
    torch.testing.assert_close(y.mean(-1), torch.zeros(4, 6, dtype=torch.float64))
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(4, 6, dtype=torch.float64))


def test_rms_norm_output_has_unit_root_mean_square():
    x = random((4, 6, 32), seed=4, dtype=torch.float64, scale=5.0, shift=-7.0)
    y = rms_norm(x, None, eps=0.0)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(4, 6, dtype=torch.float64))


@pytest.mark.parametrize("scale", [0.01, 3.0, 1000.0])
@pytest.mark.parametrize("shift", [-50.0, 0.0, 7.5])
def test_layer_norm_ignores_shift_and_scale_of_input(scale, shift):
    norm = LayerNorm(16, eps=0.0).double()
    randomise_parameters(norm, seed=5)
    x = random((3, 4, 16), seed=6, dtype=torch.float64)
    torch.testing.assert_close(norm(x * scale + shift), norm(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("scale", [0.01, 3.0, 1000.0])
def test_rms_norm_ignores_scale_but_not_shift_of_input(scale):
    norm = RMSNorm(16, eps=0.0).double()
    randomise_parameters(norm, seed=7)
    x = random((3, 4, 16), seed=8, dtype=torch.float64)
    torch.testing.assert_close(norm(x * scale), norm(x), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(norm(x + 1.0), norm(x), atol=1e-3)  # no mean subtraction: a shift shows


def test_default_eps_keeps_invariance_approximately_and_constant_rows_finite():
    x = random((3, 16), seed=9)
    torch.testing.assert_close(LayerNorm(16)(10 * x + 3), LayerNorm(16)(x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(RMSNorm(16)(10 * x), RMSNorm(16)(x), rtol=1e-4, atol=1e-4)
    constant = torch.full((2, 16), 4.0)
    assert torch.equal(LayerNorm(16)(constant), torch.zeros(2, 16))  # 0 / sqrt(0 + eps) = 0
    assert torch.isfinite(RMSNorm(16)(torch.zeros(2, 16))).all()


@pytest.mark.parametrize("norm_class", [LayerNorm, RMSNorm])
def test_bfloat16_input_gives_bfloat16_output_close_to_float32(norm_class):
    norm = norm_class(256)
    randomise_parameters(norm, seed=10)
    x = random((4, 8, 256), seed=11, scale=20.0, shift=30.0).bfloat16()
    y = norm(x)
    assert y.dtype == torch.bfloat16
    expected = norm(x.float())  # the same bf16 numbers, normalised in float32
    # The only error left is the final rounding to bf16: 8 mantissa bits, relative error <= 2^-8.
    torch.testing.assert_close(y.float(), expected, rtol=2**-8, atol=1e-2)


def test_layer_norm_gradcheck():
    x = random((2, 3, 5), seed=12, dtype=torch.float64).requires_grad_()
    weight = random((5,), seed=13, dtype=torch.float64).requires_grad_()
    bias = random((5,), seed=14, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(layer_norm, (x, weight, bias))
    assert torch.autograd.gradcheck(lambda x, weight: layer_norm(x, weight, None), (x, weight))


def test_rms_norm_gradcheck():
    x = random((2, 3, 5), seed=15, dtype=torch.float64).requires_grad_()
    weight = random((5,), seed=16, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(rms_norm, (x, weight))


def test_module_gradients_match_torch():
    x = random((2, 3, 8), seed=17, dtype=torch.float64)
    upstream = random((2, 3, 8), seed=18, dtype=torch.float64)
    for ours, theirs in [(LayerNorm(8), torch.nn.LayerNorm(8)), (RMSNorm(8), torch.nn.RMSNorm(8, eps=1e-6))]:
        ours, theirs = ours.double(), theirs.double()
        randomise_parameters(ours, theirs, seed=19)
        x_ours, x_theirs = x.clone().requires_grad_(), x.clone().requires_grad_()
        (ours(x_ours) * upstream).sum().backward()
        (theirs(x_theirs) * upstream).sum().backward()
        torch.testing.assert_close(x_ours.grad, x_theirs.grad)
        for (name, p_ours), p_theirs in zip(ours.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(p_ours.grad, p_theirs.grad, msg=name)


# ---------------------------------------------------------------- make_norm and errors


def test_make_norm_builds_each_kind():
    assert type(make_norm("layernorm", 8)) is LayerNorm and make_norm("layernorm", 8).dim == 8
    assert type(make_norm("rmsnorm", 8)) is RMSNorm
    assert make_norm("rmsnorm", 8, eps=1e-3).eps == 1e-3


def test_make_norm_unknown_kind_lists_choices():
    with pytest.raises(ValueError, match=r"'batchnorm'.*layernorm.*rmsnorm"):
        make_norm("batchnorm", 8)


@pytest.mark.parametrize("norm_class", [LayerNorm, RMSNorm])
def test_bad_arguments_raise_clear_errors(norm_class):
    with pytest.raises(ValueError, match="dim=0 must be an integer >= 1"):
        norm_class(0)
    with pytest.raises(ValueError, match="eps=-1.0 must be a finite number >= 0"):
        norm_class(4, eps=-1.0)
    with pytest.raises(ValueError, match="eps=nan"):
        norm_class(4, eps=float("nan"))
    with pytest.raises(ValueError, match=r"x must be a tensor of shape \(\.\.\., 4\), got shape \(2, 5\)"):
        norm_class(4)(torch.zeros(2, 5))
