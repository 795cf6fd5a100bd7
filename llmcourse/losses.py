"""Chapter 01: how wrong is a next-token prediction? Log-softmax, cross-entropy and perplexity.

A language model outputs one score (a *logit*) per vocabulary entry for the next token. Softmax
turns the V scores into probabilities, and training minimises the negative log-probability the
model gave to the token that really came next, averaged over positions: the cross-entropy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from llmcourse.checks import (
    ArgumentError, check_choice, check_id_range, check_int, check_integer_tensor, check_shape)

REDUCTIONS = ("mean", "sum", "none")


def log_softmax(logits: Tensor, dim: int = -1) -> Tensor:
    """Log-probabilities from logits along `dim`, computed without overflow.

        log_softmax(x)_i = x_i - m - log sum_j exp(x_j - m),   with m = max_j x_j

    Shape: same as `logits`, e.g. `(B, T, V)` -> `(B, T, V)`. Finite for logits as large as +-1e4
    (and for -inf entries, as long as one entry along `dim` is finite).
    """
    _check_logits(logits, dim)
    # softmax is unchanged when every logit moves by the same constant, so shift by the max:
    # then every exponent is <= 0 and exp cannot overflow (exp(1e4) would be inf), while the
    # largest term is exp(0) = 1, so the sum is >= 1 and its log cannot be -inf.
    # The shift is a constant for the gradient too (its effect cancels exactly), hence detach.
    shift = logits.detach().amax(dim=dim, keepdim=True)
    shifted = logits - shift
    return shifted - shifted.exp().sum(dim=dim, keepdim=True).log()


def cross_entropy(
    logits: Tensor,
    targets: Tensor,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Tensor:
    """Negative log-likelihood of `targets` under `softmax(logits)`: -log p(target).

        loss_n = -log_softmax(logits_n)[targets_n]

    Shapes: logits `(N, V)` or `(B, T, V)` (any leading shape, classes in the LAST dim, unlike
    `torch.nn.functional.cross_entropy` which wants them in dim 1); targets `(N,)` or `(B, T)`,
    integer ids in [0, V). Positions whose target equals `ignore_index` (padding, prompt tokens)
    contribute nothing.

    reduction: "mean" averages over the non-ignored positions (nan if all are ignored, like
    torch), "sum" adds them, "none" returns one loss per position (shape of `targets`, 0 where
    ignored).
    """
    check_choice("reduction", reduction, REDUCTIONS)
    check_int("ignore_index", ignore_index)
    check_integer_tensor("targets", targets, hint="the class id of the token that came next")
    check_shape("logits", logits, (*targets.shape, "V"), hint="the shape of targets plus a last dimension of "
                "V class scores, e.g. logits (B, T, V) with targets (B, T)")
    targets = targets.long()  # narrower integer types would wrap -100 around when compared
    check_id_range("targets", targets.masked_fill(targets == ignore_index, 0), logits.shape[-1],
                   hint="a target is a class id below V, or ignore_index to skip its position; check the "
                   "vocabulary size or the targets")
    keep = targets != ignore_index
    # Ignored positions may hold any id (-100 is not a valid index), so point them at class 0
    # for the lookup and zero their loss afterwards.
    safe_targets = targets.masked_fill(~keep, 0)
    log_probs = log_softmax(logits, dim=-1)
    # Only the log-probability of the token that really came next matters: gather picks that
    # one entry out of V at every position, (..., V) -> (...).
    target_log_probs = log_probs.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    losses = (-target_log_probs).masked_fill(~keep, 0.0)
    if reduction == "none":
        return losses
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / keep.sum()  # 0 / 0 = nan when every position is ignored


def _check_logits(logits: Tensor, dim: int) -> None:
    """Raise unless `logits` is a floating-point tensor with at least one class along `dim`."""
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        got = f"dtype {logits.dtype}" if isinstance(logits, Tensor) else type(logits).__name__
        raise ArgumentError(f"logits must be a floating-point tensor, got {got}; "
                            "convert with torch.as_tensor(logits).float()")
    if logits.dim() > 0 and logits.shape[dim] == 0:
        raise ArgumentError(f"logits has size 0 along dim={dim} (shape {tuple(logits.shape)}): "
                            "there are no classes to normalise over")


def perplexity(mean_nll: float | Tensor) -> float | Tensor:
    """exp(mean negative log-likelihood in nats): the effective number of equally likely choices.

    A model that spreads its probability uniformly over V tokens has loss ln V and perplexity V.
    A float in gives a float out; a tensor in gives a tensor out (same shape).
    """
    if isinstance(mean_nll, Tensor):
        return mean_nll.exp()
    try:
        return math.exp(mean_nll)
    except OverflowError:  # math.exp raises past ~709 nats; the perplexity is then infinite
        return math.inf
