"""llmcourse.position against closed forms written element by element, a complex-number RoPE, and
the properties that make RoPE useful (relative positions, rotations preserve length)."""

from __future__ import annotations

import cmath
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llmcourse.position import (
    LearnedPositions,
    RotaryEmbedding,
    SinusoidalPositions,
    apply_rope,
    rope_cos_sin,
    rope_frequencies,
    rotate_half,
    sinusoidal_encoding,
)


def randn(*shape, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# ---------------------------------------------------------------- sinusoidal


@pytest.mark.parametrize("n_positions, n_embd, base", [(1, 2, 10000.0), (7, 6, 10000.0), (12, 10, 100.0)])
def test_sinusoidal_encoding_matches_the_formula_element_by_element(n_positions, n_embd, base):
    expected = torch.zeros(n_positions, n_embd)
    for pos in range(n_positions):
        for i in range(n_embd // 2):
            angle = pos / base ** (2 * i / n_embd)
            expected[pos, 2 * i] = math.sin(angle)
            expected[pos, 2 * i + 1] = math.cos(angle)
    ours = sinusoidal_encoding(n_positions, n_embd, base)
    assert ours.shape == (n_positions, n_embd) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, expected)


def test_sinusoidal_known_values():
    encoding = sinusoidal_encoding(2000, 8)
    assert torch.equal(encoding[0], torch.tensor([0.0, 1, 0, 1, 0, 1, 0, 1]))
    # Dimension pair 0 turns one radian per position.
    torch.testing.assert_close(encoding[:, 0], torch.arange(2000.0).sin(), atol=1e-6, rtol=0)
    # Every (sin, cos) pair lies on the unit circle.
    torch.testing.assert_close(encoding[:, 0::2] ** 2 + encoding[:, 1::2] ** 2, torch.ones(2000, 4))


def test_sinusoidal_relative_positions_are_linear_maps():
    """Vaswani et al.: PE[pos + k] is a fixed linear function (a rotation per pair) of PE[pos]."""
    n_embd, k = 8, 5
    encoding = sinusoidal_encoding(50, n_embd).double()
    frequencies = 10000.0 ** (-torch.arange(0, n_embd, 2, dtype=torch.float64) / n_embd)
    c, s = (k * frequencies).cos(), (k * frequencies).sin()
    sin_now, cos_now = encoding[:-k, 0::2], encoding[:-k, 1::2]
    torch.testing.assert_close(encoding[k:, 0::2], sin_now * c + cos_now * s, atol=1e-6, rtol=0)
    torch.testing.assert_close(encoding[k:, 1::2], cos_now * c - sin_now * s, atol=1e-6, rtol=0)


@pytest.mark.parametrize("n_embd", [0, 3, 7, -2, 2.0])
def test_sinusoidal_rejects_odd_or_bad_sizes(n_embd):
    with pytest.raises(ValueError, match="n_embd"):
        sinusoidal_encoding(4, n_embd)


def test_sinusoidal_positions_module_looks_up_rows():
    module = SinusoidalPositions(block_size=16, n_embd=6)
    table = sinusoidal_encoding(16, 6)
    positions = torch.tensor([[0, 3, 15], [2, 2, 1]])
    assert torch.equal(module(positions), table[positions])
    assert torch.equal(module(torch.arange(16)), table)
    assert list(module.parameters()) == [] and module.state_dict() == {}
    assert module.to(torch.float64)(torch.arange(3)).dtype == torch.float64
    with pytest.raises(ValueError, match=r"positions: 16 at index 16 is outside \[0, 16\); the model has block_size positions"):
        module(torch.arange(17))


# ---------------------------------------------------------------- learned


def test_learned_positions_shapes_gradients_and_state():
    torch.manual_seed(0)
    module = LearnedPositions(block_size=8, n_embd=4)
    assert module.weight.shape == (8, 4) and list(module.state_dict()) == ["weight"]
    assert module(torch.arange(5)).shape == (5, 4)
    positions = torch.tensor([[0, 1, 1], [7, 6, 0]])
    out = module(positions)
    assert out.shape == (2, 3, 4) and torch.equal(out, module.weight[positions])
    out.sum().backward()
    counts = torch.bincount(positions.reshape(-1), minlength=8).float()
    torch.testing.assert_close(module.weight.grad, counts[:, None].expand(8, 4))


@pytest.mark.parametrize("positions, message", [
    (torch.tensor([0, 8]), r"positions: 8 at index 1 is outside \[0, 8\); the model has block_size"),
    (torch.tensor([[1, 2], [3, 100]]), r"positions: 100 at index \(1, 1\).*crop the input to its last block_size tokens"),
    (torch.tensor([-1]), r"positions: -1 at index 0 "),
])
def test_learned_positions_reject_positions_outside_the_table(positions, message):
    with pytest.raises(ValueError, match=message):
        LearnedPositions(block_size=8, n_embd=4)(positions)


def test_positions_must_be_integers():
    with pytest.raises(TypeError, match="positions must hold integers"):
        LearnedPositions(8, 4)(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="block_size=0 must be an integer >= 1"):
        LearnedPositions(0, 4)


# ---------------------------------------------------------------- RoPE: reference implementation


def rope_complex_reference(x: torch.Tensor, positions: list[int], base: float = 10000.0) -> torch.Tensor:
    """RoPE written independently: pair (x_i, x_{i+D/2}) is the complex number x_i + j x_{i+D/2},
    multiplied by e^{j m theta_i}, with theta_i = base^(-2i/D). x (..., T, D), float64 out."""
    *lead, seq_len, head_dim = x.shape
    half = head_dim // 2
    out = torch.empty(x.shape, dtype=torch.float64)
    flat_in, flat_out = x.double().reshape(-1, seq_len, head_dim), out.view(-1, seq_len, head_dim)
    for row in range(flat_in.shape[0]):
        for t, m in enumerate(positions):
            for i in range(half):
                z = complex(flat_in[row, t, i], flat_in[row, t, i + half])
                z *= cmath.exp(1j * m * base ** (-2 * i / head_dim))
                flat_out[row, t, i], flat_out[row, t, i + half] = z.real, z.imag
    return out


@pytest.mark.parametrize("head_dim, base", [(2, 10000.0), (8, 10000.0), (6, 500.0)])
def test_apply_rope_matches_complex_multiplication(head_dim, base):
    positions = [0, 1, 2, 7, 31]
    x = randn(2, 3, len(positions), head_dim, seed=head_dim)
    cos, sin = rope_cos_sin(torch.tensor(positions), head_dim, base=base)
    ours = apply_rope(x, cos, sin)
    assert ours.shape == x.shape and ours.dtype == x.dtype
    torch.testing.assert_close(ours.double(), rope_complex_reference(x, positions, base), atol=1e-5, rtol=1e-5)


def test_rope_frequencies_and_cos_sin_closed_form():
    torch.testing.assert_close(rope_frequencies(4), torch.tensor([1.0, 0.01]))
    torch.testing.assert_close(rope_frequencies(4, base=100.0, scale=2.0), torch.tensor([0.5, 0.05]))
    cos, sin = rope_cos_sin(torch.tensor([3]), 4)
    angles = torch.tensor([3.0, 0.03, 3.0, 0.03])  # the D/2 angles written twice
    torch.testing.assert_close(cos[0], angles.cos())
    torch.testing.assert_close(sin[0], angles.sin())
    assert rope_cos_sin(torch.arange(5), 4, dtype=torch.bfloat16)[0].dtype == torch.bfloat16


def test_rotate_half_is_a_quarter_turn():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])  # pairs (1, 3) and (2, 4)
    assert torch.equal(rotate_half(x), torch.tensor([-3.0, -4.0, 1.0, 2.0]))
    assert torch.equal(rotate_half(rotate_half(x)), -x)


# ---------------------------------------------------------------- RoPE: properties


@given(m=st.integers(0, 400), n=st.integers(0, 400), shift=st.integers(0, 400), seed=st.integers(0, 2**31))
def test_rope_scores_depend_only_on_relative_position(m, n, shift, seed):
    """q rotated to m dotted with k rotated to n equals the same pair moved by `shift`: only m - n counts."""
    head_dim = 16
    q, k = randn(1, 1, 1, head_dim, seed=seed), randn(1, 1, 1, head_dim, seed=seed + 1)

    def score(query_pos: int, key_pos: int) -> torch.Tensor:
        cos_q, sin_q = rope_cos_sin(torch.tensor([query_pos]), head_dim)
        cos_k, sin_k = rope_cos_sin(torch.tensor([key_pos]), head_dim)
        return (apply_rope(q, cos_q, sin_q) * apply_rope(k, cos_k, sin_k)).sum()

    # float32 angles at position ~800 carry errors ~1e-4 rad; scores are sums of 16 products ~1.
    torch.testing.assert_close(score(m, n), score(m + shift, n + shift), atol=2e-3, rtol=0)


def test_rope_scores_do_change_with_distance():
    """The relative test above could pass with no rotation at all; make sure distance matters."""
    q = randn(1, 1, 1, 16, seed=1)
    cos, sin = rope_cos_sin(torch.arange(4), 16)
    rotated = apply_rope(q.expand(1, 1, 4, 16), cos, sin)
    scores = rotated[0, 0, 0] @ rotated[0, 0].T  # position 0 against positions 0..3
    assert (scores[0] - scores[1:]).abs().min() > 1e-3


def test_rope_preserves_norms_and_position_zero_is_identity():
    x = randn(2, 4, 50, 8, seed=3)
    cos, sin = rope_cos_sin(torch.arange(50), 8)
    rotated = apply_rope(x, cos, sin)
    torch.testing.assert_close(rotated.norm(dim=-1), x.norm(dim=-1))
    assert not torch.allclose(rotated[..., 1:, :], x[..., 1:, :])
    assert torch.equal(apply_rope(x[..., :1, :], cos[:1], sin[:1]), x[..., :1, :])


@pytest.mark.parametrize("scale", [2, 4])
def test_rope_scale_interpolates_positions(scale):
    positions = torch.arange(0, 64)
    cos_scaled, sin_scaled = rope_cos_sin(positions * scale, 16, scale=scale)
    cos_plain, sin_plain = rope_cos_sin(positions, 16)
    torch.testing.assert_close(cos_scaled, cos_plain)
    torch.testing.assert_close(sin_scaled, sin_plain)
    module = RotaryEmbedding(16, max_seq_len=64 * scale, scale=scale)
    torch.testing.assert_close(module.cos[positions * scale], cos_plain)


def test_apply_rope_gradcheck():
    x = randn(1, 2, 3, 6, seed=4, dtype=torch.float64).requires_grad_()
    cos, sin = rope_cos_sin(torch.arange(3), 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos, sin), (x,))


# ---------------------------------------------------------------- RotaryEmbedding module


@pytest.mark.parametrize("start_pos, seq_len", [(0, 20), (5, 1), (7, 6), (19, 1)])
def test_rotary_start_pos_equals_slice_of_full_sequence(start_pos, seq_len):
    rope = RotaryEmbedding(head_dim=8, max_seq_len=20)
    q, k = randn(2, 4, 20, 8, seed=5), randn(2, 2, 20, 8, seed=6)  # GQA: fewer key heads
    q_full, k_full = rope(q, k)
    window = slice(start_pos, start_pos + seq_len)
    q_part, k_part = rope(q[:, :, window], k[:, :, window], start_pos=start_pos)
    torch.testing.assert_close(q_part, q_full[:, :, window])
    torch.testing.assert_close(k_part, k_full[:, :, window])


def test_rotary_per_row_positions_rotate_each_row_as_its_own_sequence():
    """Row 0 at positions 3..5 (as if left-padded by 3), row 1 at 0..2: each equals start_pos alone."""
    rope = RotaryEmbedding(head_dim=8, max_seq_len=16)
    q, k = randn(2, 4, 3, 8, seed=13), randn(2, 2, 3, 8, seed=14)
    positions = torch.tensor([[3, 4, 5], [0, 1, 2]])
    q_rot, k_rot = rope(q, k, positions=positions)
    for row, start in enumerate([3, 0]):
        q_alone, k_alone = rope(q[row:row + 1], k[row:row + 1], start_pos=start)
        torch.testing.assert_close(q_rot[row:row + 1], q_alone, rtol=0, atol=0)
        torch.testing.assert_close(k_rot[row:row + 1], k_alone, rtol=0, atol=0)
    # (T,) positions are shared by every row, like start_pos
    assert torch.equal(rope(q, k, positions=torch.arange(2, 5))[0], rope(q, k, start_pos=2)[0])


def test_rotary_per_row_positions_errors():
    rope = RotaryEmbedding(head_dim=8, max_seq_len=10)
    q = k = torch.zeros(2, 1, 3, 8)
    with pytest.raises(ValueError, match=r"positions: 10 at index \(1, 2\) is outside \[0, 10\); build Rotary"):
        rope(q, k, positions=torch.tensor([[0, 1, 2], [8, 9, 10]]))
    with pytest.raises(ValueError, match=r"positions must be a tensor of shape \(\.\.\., 3\)"):
        rope(q, k, positions=torch.tensor([[0, 1], [0, 1]]))
    with pytest.raises(TypeError, match="positions must hold integers"):
        rope(q, k, positions=torch.zeros(2, 3))


def test_rotary_matches_functional_form_and_keeps_no_state():
    rope = RotaryEmbedding(head_dim=8, max_seq_len=32, base=500.0)
    q, k = randn(1, 2, 32, 8, seed=7), randn(1, 2, 32, 8, seed=8)
    cos, sin = rope_cos_sin(torch.arange(32), 8, base=500.0)
    q_rot, k_rot = rope(q, k)
    assert torch.equal(q_rot, apply_rope(q, cos, sin)) and torch.equal(k_rot, apply_rope(k, cos, sin))
    assert rope.state_dict() == {} and list(rope.parameters()) == []
    assert {name for name, _ in rope.named_buffers()} == {"cos", "sin"}


def test_rotary_buffers_follow_dtype_and_bf16_is_close_to_float32():
    rope = RotaryEmbedding(head_dim=16, max_seq_len=64)
    q, k = randn(2, 2, 64, 16, seed=9), randn(2, 2, 64, 16, seed=10)
    q32, k32 = rope(q, k)
    # bf16 inputs with float32 tables: the tables are cast, the result stays bf16.
    q16, k16 = rope(q.bfloat16(), k.bfloat16())
    assert q16.dtype == k16.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa: relative error ~ 2^-8 per element, values here are ~ 1.
    torch.testing.assert_close(q16.float(), q32, atol=5e-2, rtol=2e-2)
    torch.testing.assert_close(k16.float(), k32, atol=5e-2, rtol=2e-2)
    rope_bf16 = RotaryEmbedding(head_dim=16, max_seq_len=64).to(torch.bfloat16)
    assert rope_bf16.cos.dtype == rope_bf16.sin.dtype == torch.bfloat16
    torch.testing.assert_close(rope_bf16(q.bfloat16(), k.bfloat16())[0].float(), q32, atol=5e-2, rtol=2e-2)
    assert RotaryEmbedding(16, 8).to("meta").cos.device.type == "meta"


@pytest.mark.gpu
def test_rotary_on_cuda_matches_cpu():
    rope = RotaryEmbedding(head_dim=16, max_seq_len=64)
    q, k = randn(2, 2, 64, 16, seed=11), randn(2, 2, 64, 16, seed=12)
    q_cpu, _ = rope(q, k)
    rope_cuda = rope.to("cuda")
    assert rope_cuda.cos.is_cuda
    q_gpu, _ = rope_cuda(q.cuda(), k.cuda(), start_pos=0)
    torch.testing.assert_close(q_gpu.cpu(), q_cpu)


def test_rotary_errors_are_clear():
    rope = RotaryEmbedding(head_dim=8, max_seq_len=10)
    q = k = torch.zeros(1, 1, 4, 8)
    with pytest.raises(ValueError, match=r"positions 7\.\.10 go past max_seq_len=10"):
        rope(q, k, start_pos=7)
    with pytest.raises(ValueError, match="start_pos=-1 must be an integer >= 0"):
        rope(q, k, start_pos=-1)
    with pytest.raises(ValueError, match=r"k must be a tensor of shape \(\.\.\., 4, 8\).*same T"):
        rope(q, torch.zeros(1, 1, 5, 8))
    with pytest.raises(ValueError, match=r"q must be a tensor of shape \(\.\.\., T, 8\).*head_dim"):
        rope(torch.zeros(1, 1, 4, 6), torch.zeros(1, 1, 4, 6))
    with pytest.raises(ValueError, match="head_dim=7 must be even"):
        RotaryEmbedding(head_dim=7, max_seq_len=10)
    with pytest.raises(ValueError, match="scale=0.0 must be a finite number > 0"):
        rope_frequencies(8, scale=0.0)
    with pytest.raises(ValueError, match="D even"):
        apply_rope(torch.zeros(1, 1, 2, 8), torch.zeros(2, 6), torch.zeros(2, 6))
    with pytest.raises(TypeError, match="positions must hold integers"):
        rope_cos_sin(torch.tensor([0.5]), 8)
