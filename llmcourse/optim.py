"""Chapter 09: how the weights move. AdamW, which weights decay, the learning-rate schedule, clipping.

One training step is: forward (the loss), backward (a gradient for every weight), then the
optimizer turns gradients into a change of the weights. Plain gradient descent moves every weight
by `lr * grad`; Adam (Kingma & Ba 2015) instead keeps, per weight, a running mean of the gradient
(the *first moment* m, a direction that noise averages out of) and of its square (the *second
moment* v, the gradient's typical size), and moves by about `lr * m / sqrt(v)`: a step of roughly
`lr` whatever the gradient's scale, so one learning rate suits embeddings and deep layers alike.
AdamW (Loshchilov & Hutter 2019) adds weight decay *decoupled* from that rescaling: every step
shrinks each decayed weight by the factor `1 - lr * weight_decay`.

Around the optimizer, training uses three more pieces, all here:
  param_groups    which weights decay: matrices yes; biases, norm gains and embedding tables no.
  lr_at           the learning rate at each step: linear warmup, then cosine decay.
  clip_grad_norm  rescale the whole gradient when its norm spikes, so one bad batch cannot
                  throw the weights far.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from llmcourse.checks import ArgumentError, check_choice, check_int, check_real
from llmcourse.embedding import TokenEmbedding
from llmcourse.position import LearnedPositions

# Modules whose weight is a lookup table (one row per token or position), exempt from decay.
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, TokenEmbedding, LearnedPositions)
OPTIMIZER_IMPLS = ("torch", "llmcourse")
WEIGHT_DECAY_HINT = "0.1 is typical for GPT pretraining, 0.0 turns decay off"


# ---------------------------------------------------------------------------------- AdamW


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay, written out step by step; same numbers as `torch.optim.AdamW`.

    For each parameter p with gradient g, at step t = 1, 2, ...:

        p   <- p * (1 - lr * weight_decay)                 decoupled decay (before the Adam step)
        m   <- beta1 * m + (1 - beta1) * g                 first moment: mean gradient
        v   <- beta2 * v + (1 - beta2) * g²                second moment: mean squared gradient
        m̂   =  m / (1 - beta1**t)                          bias correction: m and v start at 0,
        v̂   =  v / (1 - beta2**t)                          so early averages are too small
        p   <- p - lr * m̂ / (sqrt(v̂) + eps)

    Per-parameter state (the same keys as torch's, so `state_dict()`s look alike): "step" (t, an
    int), "exp_avg" (m) and "exp_avg_sq" (v), both shaped like the parameter. Parameters without a
    gradient are skipped entirely (not even decayed), as in torch. AMSGrad is not implemented.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        *,
        amsgrad: bool = False,
    ) -> None:
        if amsgrad:
            raise ArgumentError("amsgrad=True is not implemented by llmcourse.optim.AdamW; "
                             "use torch.optim.AdamW(..., amsgrad=True) for it")
        check_real("lr", lr, minimum=0, hint="e.g. 3e-4")
        _check_betas(betas)
        check_real("eps", eps, minimum=0, hint="e.g. 1e-8")
        check_real("weight_decay", weight_decay, minimum=0, hint=WEIGHT_DECAY_HINT)
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()  # the update itself is not part of any graph
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Update every parameter that has a gradient; return `closure()`'s loss if one is given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                self._update(param, param.grad, group["lr"], beta1, beta2, group["eps"],
                             group["weight_decay"])
        return loss

    def _update(self, param: Tensor, grad: Tensor, lr: float, beta1: float, beta2: float,
                eps: float, weight_decay: float) -> None:
        """One AdamW step for one parameter, in place."""
        if grad.is_sparse:
            raise RuntimeError("AdamW does not support sparse gradients; use torch.optim.SparseAdam")
        state = self.state[param]
        if not state:  # first step: both moments start at zero
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        # int() also accepts the 0-d tensor torch.optim.AdamW stores, so its state dicts load here.
        state["step"] = step = int(state["step"]) + 1
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

        # Decoupled decay pulls the weight towards 0 by a fixed fraction, independent of the
        # gradient; adding wd * p to g instead (L2 regularisation) would be divided by sqrt(v)
        # below, so weights with large gradients would hardly decay at all.
        param.mul_(1 - lr * weight_decay)

        exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

        # After t steps the weights of the running averages sum to 1 - beta**t, not 1; dividing
        # by it undoes the pull towards the zero start (large at t=1, vanishing as t grows).
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)  # sqrt(v̂) + eps
        param.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)  # p -= lr * m̂ / denom


def _check_betas(betas: tuple[float, float]) -> None:
    """Raise a clear error unless `betas` is a pair of decay rates in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ArgumentError(f"betas={betas!r} must be two numbers in [0, 1), e.g. (0.9, 0.95)")
    for index, beta in enumerate(betas):
        check_real(f"betas[{index}]", beta, minimum=0, below=1, hint="e.g. betas=(0.9, 0.95)")


# ---------------------------------------------------------------------------------- what decays


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    embedding_types: tuple[type[nn.Module], ...] = EMBEDDING_TYPES,
) -> list[dict[str, Any]]:
    """Split the model's trainable parameters into a decayed and a non-decayed optimizer group.

    Decayed: every parameter with 2 or more dimensions (the weight matrices of linear layers)
    that is not an embedding table. Not decayed: biases and norm gains (1-D: shrinking a norm's
    gain towards 0 would only fight the normalisation, and they are few) and the weight of every
    `embedding_types` module (token and learned position tables: each row is updated only when its
    token appears, so decay would mostly erode the rare tokens). A tied lm_head shares the token
    embedding's tensor and so follows it (not decayed); an untied lm_head is a linear layer (decayed).

    Returns `[{"params": [...], "weight_decay": weight_decay}, {"params": [...], "weight_decay": 0.0}]`
    (an empty group is left out), ready for an optimizer; each parameter appears exactly once (a
    tied tensor too) in `named_parameters()` order. Frozen parameters (requires_grad=False) are
    left out, since they never change.
    """
    check_real("weight_decay", weight_decay, minimum=0, hint=WEIGHT_DECAY_HINT)
    embedding_ids = {id(param) for module in model.modules() if isinstance(module, embedding_types)
                     for param in module.parameters(recurse=False)}
    decay, no_decay = [], []
    for param in model.parameters():  # yields a shared (tied) tensor only once
        if not param.requires_grad:
            continue
        is_matrix = param.dim() >= 2 and id(param) not in embedding_ids
        (decay if is_matrix else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def make_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool | None = None,
    impl: str = "torch",
) -> torch.optim.Optimizer:
    """AdamW over `param_groups(model, weight_decay)`; betas (0.9, 0.95) as GPT-3 (Brown et al. 2020).

    impl="torch" builds `torch.optim.AdamW`; `fused` picks its single-kernel CUDA implementation
    (None: fused exactly when every parameter is on a CUDA device). impl="llmcourse" builds this
    module's `AdamW` (same numbers, one parameter at a time: the version to read, not the fast one).
    """
    check_choice("impl", impl, OPTIMIZER_IMPLS)
    groups = param_groups(model, weight_decay)
    if not groups:
        raise ArgumentError(f"{type(model).__name__} has no trainable parameters to optimize "
                            "(all have requires_grad=False)")
    if impl == "llmcourse":
        if fused:
            raise ArgumentError("fused=True needs impl='torch'; llmcourse's AdamW has no fused kernel")
        return AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    if fused is None:
        fused = all(param.is_cuda for group in groups for param in group["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused)


# ---------------------------------------------------------------------------------- schedule


def lr_at(step: int, *, max_lr: float, warmup_steps: int, max_steps: int, min_lr: float = 0.0) -> float:
    """The learning rate for optimizer step `step` (0-based): linear warmup, then cosine decay.

        step < warmup_steps:               max_lr * (step + 1) / warmup_steps
        warmup_steps <= step <= max_steps: min_lr + (max_lr - min_lr) * (1 + cos(pi * r)) / 2,
                                           r = (step - warmup_steps) / (max_steps - warmup_steps)
        step > max_steps:                  min_lr

    Warmup counts from step + 1, so the very first step already moves (lr = max_lr / warmup_steps,
    not 0) and the last warmup step, warmup_steps - 1, reaches max_lr; the cosine then starts at
    max_lr (step = warmup_steps), passes (max_lr + min_lr) / 2 halfway and reaches min_lr at
    max_steps. Warmup gives Adam's second-moment estimates a few steps to settle before full-size
    steps (Goyal et al. 2017; GPT-3 warms up, then decays with a cosine to 10% of max_lr).
    warmup_steps=0 starts at max_lr. Steps past max_steps stay at min_lr.
    """
    check_int("step", step, 0)
    check_int("max_steps", max_steps, 0)
    check_int("warmup_steps", warmup_steps, 0, below=max_steps + 1, hint=f"at most max_steps={max_steps}: "
              f"warmup is the first part of training; try warmup_steps={max_steps // 10}")
    check_real("max_lr", max_lr, minimum=0)
    check_real("min_lr", min_lr, minimum=0, maximum=max_lr, hint="min_lr = max_lr / 10 is common")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= max_steps:  # also covers max_steps == warmup_steps, where the cosine has no length
        return float(min_lr)
    progress = (step - warmup_steps) / (max_steps - warmup_steps)  # 0 -> 1 over the decay
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------- clipping


def clip_grad_norm(parameters: Tensor | Iterable[Tensor], max_norm: float) -> Tensor:
    """Scale all gradients together so their global L2 norm is at most `max_norm`; return the norm before.

        norm  = sqrt(sum over every gradient entry of g²)       (one norm for the whole model)
        scale = min(1, max_norm / (norm + 1e-6))
        g    <- g * scale                                       (for every gradient)

    One scale for all gradients keeps the update's direction and only shortens it. The 1e-6
    (as in `torch.nn.utils.clip_grad_norm_`, whose numbers this matches for finite norms) keeps
    the division finite when every gradient is 0. Parameters without a gradient are skipped; with
    no gradients at all the norm is 0.

    A non-finite norm (an inf or nan in some gradient) is returned as it is and the gradients are
    left UNTOUCHED, unlike torch, which would multiply them by 0 or nan. Clipping cannot repair
    such a step; the caller should see the non-finite norm and skip the step (or stop training).
    The check runs on the device, with no CPU-GPU synchronisation.
    """
    check_real("max_norm", max_norm, above=0, hint="1.0 is the usual choice")
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [param.grad for param in parameters if param.grad is not None]
    if not grads:
        return torch.zeros(())
    device = grads[0].device
    # The norm of the per-tensor norms is the norm of all entries together: sqrt(sum of squares).
    per_tensor = torch.stack([torch.linalg.vector_norm(grad).to(device) for grad in grads])
    total_norm = torch.linalg.vector_norm(per_tensor)
    scale = (max_norm / (total_norm + 1e-6)).clamp(max=1.0)
    scale = torch.where(total_norm.isfinite(), scale, torch.ones_like(scale))
    for grad in grads:
        grad.mul_(scale.to(grad.device))  # scale is 1 (no change) when already below max_norm
    return total_norm
