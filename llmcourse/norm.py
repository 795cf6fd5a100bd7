"""Chapter 07: keeping the residual stream in range. LayerNorm and RMSNorm.

A transformer block reads the residual stream through a normalisation: every token's vector of C
numbers is rescaled to a standard size before attention or the MLP sees it, and a learned gain
(and, for LayerNorm, a learned shift) per channel gives back whatever scale the layer wants.

- LayerNorm (Ba et al. 2016) subtracts the mean and divides by the standard deviation of the C
  numbers. GPT-2 uses it.
- RMSNorm (Zhang & Sennrich 2019) skips the mean and divides by the root mean square. It is a
  little cheaper, works as well in practice, and is what Llama, Mistral and most recent models use.

Both are computed in float32 even for bfloat16 inputs: a mean of squares over thousands of
channels loses too many digits in bfloat16's 8-bit mantissa. The result is cast back to the
input's dtype so the rest of the model keeps running in the precision it chose.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.checks import check_choice, check_int, check_real, check_shape

# Said when an input's last dimension is not the one a norm was built for.
_SAME_WIDTH = "build the norm with dim equal to the input's last dimension, the number of channels C"


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float32 for half-precision inputs (bf16, fp16); float64 stays float64."""
    return torch.promote_types(x.dtype, torch.float32)


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float = 1e-5) -> Tensor:
    """Normalise the last dimension to mean 0 and variance 1, then scale and shift per channel.

        y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias

    The variance is the biased one (divide by C, not C - 1), as in `torch.nn.LayerNorm`.
    Shapes: x `(..., C)`, e.g. `(B, T, C)`; weight and bias `(C,)` or None (no scale / no shift).
    Returns the shape and dtype of x.
    """
    x32 = x.to(_compute_dtype(x))
    mean = x32.mean(dim=-1, keepdim=True)
    centred = x32 - mean
    variance = centred.pow(2).mean(dim=-1, keepdim=True)
    # eps keeps the division finite for a constant vector (variance 0).
    y = centred * torch.rsqrt(variance + eps)
    if weight is not None:
        y = y * weight.to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(x.dtype)


def rms_norm(x: Tensor, weight: Tensor | None, eps: float = 1e-6) -> Tensor:
    """Divide the last dimension by its root mean square, then scale per channel.

        y = x / sqrt(mean(x^2) + eps) * weight

    No mean is subtracted and there is no bias: only the length of the vector is normalised,
    its direction is kept. Shapes: x `(..., C)`; weight `(C,)` or None. Returns x's shape and dtype.
    """
    x32 = x.to(_compute_dtype(x))
    mean_square = x32.pow(2).mean(dim=-1, keepdim=True)
    y = x32 * torch.rsqrt(mean_square + eps)
    if weight is not None:
        # Multiplied in float32 too (as Gemma does); Llama casts back first. The gap is one
        # bf16 rounding, well below what training notices.
        y = y * weight.to(y.dtype)
    return y.to(x.dtype)


class LayerNorm(nn.Module):
    """LayerNorm over the last dimension, with a learned gain `weight` (C,) and optional `bias` (C,).

    Matches `torch.nn.LayerNorm(dim, eps, bias=bias)`. `forward`: `(..., C) -> (..., C)`.
    """

    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, 1, hint="the number of channels C")
        self.eps = check_real("eps", eps, minimum=0, hint="a small constant such as 1e-5 or 1e-6")
        self.weight = nn.Parameter(torch.ones(dim))  # start as the identity: gain 1, shift 0
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        check_shape("x", x, (..., self.dim), hint=_SAME_WIDTH)
        # PyTorch's fused kernel: the same function as `layer_norm` above (tested equal), several
        # times faster, since it reads x once instead of once per step of the formula.
        return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, bias={self.bias is not None}"


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension, with a learned gain `weight` (C,).

    Matches `torch.nn.RMSNorm(dim, eps)`. `forward`: `(..., C) -> (..., C)`.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, 1, hint="the number of channels C")
        self.eps = check_real("eps", eps, minimum=0, hint="a small constant such as 1e-5 or 1e-6")
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        check_shape("x", x, (..., self.dim), hint=_SAME_WIDTH)
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}"


NORMS: dict[str, type[nn.Module]] = {"layernorm": LayerNorm, "rmsnorm": RMSNorm}


def make_norm(kind: str, dim: int, eps: float | None = None) -> nn.Module:
    """Build the normalisation named `kind` ("layernorm" or "rmsnorm") over `dim` channels.

    `eps=None` keeps each class's default (1e-5 for LayerNorm as GPT-2, 1e-6 for RMSNorm as Llama).
    """
    check_choice("kind", kind, NORMS)
    return NORMS[kind](dim) if eps is None else NORMS[kind](dim, eps=eps)

