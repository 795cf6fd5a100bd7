"""Chapter 04: telling the model where each token is.

Attention (chapter 05) compares every token with every other one and sums what it finds, and a sum
does not care about order: without extra information "dog bites man" and "man bites dog" look the
same. Three ways to give the model positions:

* **sinusoidal** (Vaswani et al. 2017, "Attention Is All You Need"): add a fixed vector made of
  sines and cosines of the position at many frequencies, like the hands of a clock that turn at
  different speeds;
* **learned** (GPT-2): add a trained vector per position, one row of a `(block_size, C)` table;
* **rotary, RoPE** (Su et al. 2021, "RoFormer"): instead of adding anything, *rotate* each query and
  key by an angle proportional to its position. The dot product of two rotated vectors depends only
  on the difference of their angles, so attention scores depend on how far apart two tokens are,
  not on where they sit (`q_m . k_n` is a function of m - n). Llama, Mistral and most current
  models use it.

RoPE convention used here (and by GPT-NeoX and Hugging Face's Llama): the head dimension D is split
in two halves, and dimension i is paired with dimension i + D/2 (not with its neighbour i + 1, as in
the RoFormer paper and Meta's original Llama code; the two differ only by a fixed permutation of
the dimensions). Pair i turns at frequency

    theta_i = base ** (-2i / D),   i = 0 .. D/2 - 1,

so the vector at position m has pair i rotated by the angle m * theta_i. `scale` > 1 is linear
position interpolation (Chen et al. 2023, "Extending Context Window of Large Language Models via
Positional Interpolation"): positions are divided by `scale`, squeezing a longer context into the
range of angles seen in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.checks import (
    ArgumentError, check_id_range, check_int, check_integer_tensor, check_real, check_shape)

__all__ = [
    "sinusoidal_encoding",
    "SinusoidalPositions",
    "LearnedPositions",
    "rope_frequencies",
    "rope_cos_sin",
    "rotate_half",
    "apply_rope",
    "RotaryEmbedding",
]

# Said when a position is past the table: the model has one row per position below block_size.
CROP_ADVICE = ("the model has block_size positions: crop the input to its last block_size tokens or "
               "build a larger model")


# ------------------------------------------------------------------ absolute positions (added)


def sinusoidal_encoding(n_positions: int, n_embd: int, base: float = 10000.0) -> Tensor:
    """The fixed position vectors of Vaswani et al. (2017), one row per position: `(T, C)` float32.

        PE[pos, 2i]     = sin(pos / base ** (2i / C))
        PE[pos, 2i + 1] = cos(pos / base ** (2i / C)),    i = 0 .. C/2 - 1

    Even dimensions hold sines and odd ones cosines, interleaved, so n_embd must be even. Position
    0 is [0, 1, 0, 1, ...]. The wavelengths grow geometrically from 2*pi to base * 2*pi: the fast
    pairs tell neighbouring positions apart, the slow ones far-away positions.
    """
    check_int("n_positions", n_positions, 0)
    _check_even("n_embd", n_embd)
    check_real("base", base, above=0, hint="the longest wavelength over 2*pi, 10000 in Vaswani et al.")
    # float64 for the angles: pos * frequency loses ~3 digits in float32 at pos ~ 1e4.
    frequencies = base ** (-torch.arange(0, n_embd, 2, dtype=torch.float64) / n_embd)  # (C/2,)
    angles = torch.arange(n_positions, dtype=torch.float64)[:, None] * frequencies  # (T, C/2)
    # stack(..., -1) puts sin and cos of the same angle side by side: (T, C/2, 2) -> (T, C)
    # reads sin, cos, sin, cos, ... along each row.
    return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(n_positions, n_embd).float()


class SinusoidalPositions(nn.Module):
    """Fixed sinusoidal position vectors for positions 0 .. block_size - 1 (nothing to train).

    The `(block_size, C)` table is a non-persistent buffer: it follows `.to(device/dtype)` but is
    not saved in `state_dict()`, since it can always be recomputed.
    """

    def __init__(self, block_size: int, n_embd: int, base: float = 10000.0):
        super().__init__()
        self.block_size = check_int("block_size", block_size, 1, hint="the number of positions the model sees")
        self.n_embd = _check_even("n_embd", n_embd)
        self.register_buffer("encoding", sinusoidal_encoding(block_size, n_embd, base), persistent=False)

    def forward(self, positions: Tensor) -> Tensor:
        """Position vectors: positions `(T,)` or `(B, T)` (integers) -> `(T, C)` or `(B, T, C)`."""
        check_id_range("positions", positions, self.block_size, hint=CROP_ADVICE)
        return F.embedding(positions, self.encoding)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, n_embd={self.n_embd}"


class LearnedPositions(nn.Module):
    """One trained vector per position (GPT-2): a `(block_size, C)` table, `.weight`.

    It cannot say anything about a position it has no row for, so position >= block_size is an
    error: the context length is fixed when the model is built.
    """

    def __init__(self, block_size: int, n_embd: int):
        super().__init__()
        self.block_size = check_int("block_size", block_size, 1, hint="the number of positions the model sees")
        self.n_embd = check_int("n_embd", n_embd, 1)
        # Normal(0, 0.02), GPT-2's initialisation for both embedding tables.
        self.weight = nn.Parameter(torch.randn(self.block_size, self.n_embd) * 0.02)

    def forward(self, positions: Tensor) -> Tensor:
        """Position vectors: positions `(T,)` or `(B, T)` (integers) -> `(T, C)` or `(B, T, C)`."""
        check_id_range("positions", positions, self.block_size, hint=CROP_ADVICE)
        return F.embedding(positions, self.weight)

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, n_embd={self.n_embd}"


# ------------------------------------------------------------------ rotary positions (RoPE)


def rope_frequencies(head_dim: int, base: float = 10000.0, scale: float = 1.0) -> Tensor:
    """Rotation speed of each dimension pair, in radians per position: `(D/2,)` float32.

        theta_i = base ** (-2i / D) / scale,   i = 0 .. D/2 - 1

    Pair 0 turns by one radian per position, the last pair about 1/base as fast. Dividing by
    `scale` is the same as dividing every position by it (linear position interpolation).
    """
    _check_even("head_dim", head_dim)
    check_real("base", base, above=0, hint="10000 in RoFormer and Llama 2, 500000 in Llama 3")
    check_real("scale", scale, above=0, hint="1.0 for none; 4.0 stretches 2k training positions over 8k")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim  # 2i / D
    return (base**-exponents / scale).float()


def rope_cos_sin(
    positions: Tensor,
    head_dim: int,
    base: float = 10000.0,
    scale: float = 1.0,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Cosines and sines of the rotation angles: positions `(T,)` -> cos, sin each `(T, D)`.

    angle[m, i] = positions[m] * theta_i for the D/2 pairs, written twice along the last dimension
    ([angles, angles]) because both members of pair i (dims i and i + D/2) turn by the same angle.
    Computed in float32 on `device` (default: the positions' device), then cast to `dtype`
    (default float32): bf16 angles would be off by whole radians at position ~1000.
    """
    check_integer_tensor("positions", positions, hint="e.g. torch.arange(T)")
    device = positions.device if device is None else torch.device(device)
    frequencies = rope_frequencies(head_dim, base, scale).to(device)
    angles = positions.to(device=device, dtype=torch.float32)[..., None] * frequencies  # (T, D/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, D)
    dtype = torch.float32 if dtype is None else dtype
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: Tensor) -> Tensor:
    """Turn every pair (x_i, x_{i+D/2}) by 90 degrees: (a, b) -> (-b, a). `(..., D)` -> `(..., D)`."""
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x_i, x_{i+D/2}) of every vector by its angle: `(B, H, T, D)` -> same.

        out = x * cos + rotate_half(x) * sin

    which is the 2-D rotation (a, b) -> (a cos - b sin, a sin + b cos) for all pairs at once.
    cos and sin `(T, D)` come from `rope_cos_sin` (any shape that broadcasts against x works); they
    are cast to x's dtype so a bf16 x gives a bf16 result.
    """
    if x.shape[-1] % 2 or cos.shape[-1] != x.shape[-1] or sin.shape != cos.shape:
        raise ArgumentError(f"apply_rope needs x (..., T, D) with D even and cos, sin (T, D) of the same D; "
                         f"got x {tuple(x.shape)}, cos {tuple(cos.shape)}, sin {tuple(sin.shape)}")
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


class RotaryEmbedding(nn.Module):
    """RoPE for queries and keys, with cos/sin precomputed for positions 0 .. max_seq_len - 1.

    The `(max_seq_len, D)` tables are non-persistent buffers: they move with `.to(device)`, are
    not saved in checkpoints, and are cast to the dtype of q and k when applied. One instance can
    be shared by all layers, since the angles depend only on the position.
    """

    def __init__(self, head_dim: int, max_seq_len: int, base: float = 10000.0, scale: float = 1.0):
        super().__init__()
        self.head_dim = _check_even("head_dim", head_dim)
        self.max_seq_len = check_int("max_seq_len", max_seq_len, 1, hint="the longest sequence to rotate")
        self.base = check_real("base", base, above=0)
        self.scale = check_real("scale", scale, above=0)
        cos, sin = rope_cos_sin(torch.arange(max_seq_len), head_dim, base, scale)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, q: Tensor, k: Tensor, start_pos: int = 0, *,
                positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Rotate q `(B, H, T, D)` and k `(B, H_kv, T, D)` as tokens at positions start_pos .. start_pos + T - 1.

        With a KV cache, `start_pos` is the number of tokens already cached, so a new token gets
        the same rotation it would have had in a full forward pass. `positions` (integers, `(T,)`
        or `(B, T)`) gives each token its own position instead: in a left-padded batch each row
        counts from its own first real token (see `llmcourse.generate.padded_positions`).
        """
        check_shape("q", q, (..., "T", self.head_dim), hint="D is the head_dim this RotaryEmbedding was built for")
        check_shape("k", k, (..., q.shape[-2], self.head_dim), hint="the same T new tokens as q: rotate keys "
                    "before appending them to the cache")
        if positions is not None:
            cos, sin = self._cos_sin_at(positions, q.shape[-2])
            return apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        check_int("start_pos", start_pos, 0, hint="the number of tokens already in the KV cache")
        end = start_pos + q.shape[-2]
        if end > self.max_seq_len:
            raise ArgumentError(f"positions {start_pos}..{end - 1} go past max_seq_len={self.max_seq_len}; "
                                f"build RotaryEmbedding with max_seq_len >= {end} (or shorten the input)")
        cos, sin = self.cos[start_pos:end], self.sin[start_pos:end]  # (T, D)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)

    def _cos_sin_at(self, positions: Tensor, t: int) -> tuple[Tensor, Tensor]:
        """The table rows of `positions` `(T,)` -> `(T, D)`, or `(B, T)` -> `(B, 1, T, D)` (one angle for every head)."""
        check_shape("positions", positions, (..., t), hint="one position per new token, (T,) or (B, T)")
        check_id_range("positions", positions, self.max_seq_len,
                       hint=f"build RotaryEmbedding with a larger max_seq_len (now {self.max_seq_len})")
        cos, sin = self.cos[positions], self.sin[positions]
        if positions.dim() == 2:
            cos, sin = cos[:, None], sin[:, None]
        return cos, sin

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_seq_len={self.max_seq_len}, base={self.base:g}, scale={self.scale:g}"


# ------------------------------------------------------------------ input checks


def _check_even(name: str, value: int) -> int:
    """`value`, if it is an even integer >= 2: its dimensions come in pairs."""
    value = check_int(name, value, 2)
    if value % 2:
        raise ArgumentError(f"{name}={value} must be even (its dimensions come in sin/cos or rotation pairs); "
                            f"use {value - 1} or {value + 1}")
    return value
