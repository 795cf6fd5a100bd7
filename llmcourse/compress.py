"""Chapter 16: two levers that make a trained model smaller, quantization and pruning.

A trained GPT stores every weight as a 32-bit float. Both levers act after training, and each has
a price that only an evaluation can tell: the loss of the smaller model on held-out text.

**Quantization** stores each weight as a small integer times a scale shared by a row or a group
of the row. Round-to-nearest (RTN) with symmetric absmax scaling, for b bits:

    q_max = 2^(b-1) - 1                  127 for int8, 7 for int4, 1 for 2 bits
    s     = max |w| / q_max              over one row of W (per channel), or over each group
                                         of `group_size` consecutive weights of a row
    code  = clamp(round(w / s), -q_max, q_max)          ŵ = code · s

so every weight moves by at most s / 2. One outlier makes s large for its whole row; groups
confine the damage to their own weights for one more 16-bit scale each (int4 in groups of 128 costs
4 + 16/128 = 4.125 bits a weight). This is weight-only quantization: the activations stay float,
and a layer computes x Ŵᵀ (fast kernels dequantize on the fly; what shrinks is the memory that
holds and moves the weights).

RTN rounds every weight on its own. GPTQ (Frantar et al. 2022) rounds a layer's input columns one
at a time and moves each column's rounding error onto the columns not yet rounded, where it can
cancel, weighted by the inverse of H = 2 XᵀX: the Hessian of the layer's output error
||X Wᵀ - X Ŵᵀ||² on calibration inputs X. It descends from Optimal Brain Surgeon (Hassibi & Stork
1993) through OBQ (Frantar & Alistarh 2022), done in one fixed column order so that it scales.

**Pruning** sets weights to zero. Unstructured magnitude pruning zeroes the weights of smallest |w|
(Han et al. 2015), per layer or across all layers; it saves memory and time only with sparse
formats and kernels. Structured pruning removes whole attention heads (Michel et al. 2019, "Are
Sixteen Heads Really Better than One?") or MLP neurons, rows and columns that a smaller dense
matrix can simply leave out.

    quantize_absmax, dequantize, packed_bytes    one weight matrix with RTN, and its stored size
    gptq_quantize                                one weight matrix, with error compensation
    QuantizedLinear, quantize_model, model_bytes   a whole GPT, and its size in bytes
    magnitude_masks, head_masks, neuron_masks    which weights to remove: {name: mask, True = keep}
    apply_masks, sparsity_of, layer_sparsity     remove them and keep them removed while training
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from llmcourse.attention import CausalSelfAttention
from llmcourse.checks import (ArgumentError, check_choice, check_id_range, check_int, check_integer_tensor,
                              check_real, check_shape)
from llmcourse.mlp import MLP, MoE, SwiGLU

__all__ = [
    "MaskHooks",
    "QUANTIZE_METHODS",
    "Quantized",
    "QuantizedLinear",
    "apply_masks",
    "block_linears",
    "dequantize",
    "gptq_quantize",
    "head_masks",
    "layer_sparsity",
    "magnitude_masks",
    "model_bytes",
    "neuron_masks",
    "packed_bytes",
    "quantize_absmax",
    "quantize_model",
    "sparsity_of",
]

QUANTIZE_METHODS = ("rtn", "gptq")
SCALE_BYTES = 2  # scales are stored as float16, as GPTQ's checkpoints store them


# ---------------------------------------------------------------------------------- checks


def _check_bits(bits: Any) -> int:
    return check_int("bits", bits, 2, below=9, hint="bits per weight, 2 to 8; 8 and 4 are the usual choices")


def _check_group(group_size: Any, in_features: int, where: str = "the weight") -> int:
    """The number of weights sharing a scale: `in_features` for None (per channel), else
    `group_size` if it divides `in_features`."""
    if group_size is None:
        return in_features
    group_size = check_int("group_size", group_size, 1, hint="consecutive weights of a row sharing one scale, "
                           "or None for one scale per row")
    if in_features % group_size:
        fits = max(d for d in range(1, min(group_size, in_features) + 1) if in_features % d == 0)
        raise ArgumentError(f"group_size={group_size} does not divide the {in_features} input columns of {where}; "
                            f"use a divisor of {in_features} (e.g. group_size={fits}) or None for one scale per row")
    return group_size


def _check_sparsity(sparsity: Any) -> float:
    return check_real("sparsity", sparsity, minimum=0.0, below=1.0,
                      hint="the share to remove, e.g. 0.5; 1 would remove everything")


def _check_weight(weight: Any) -> Tensor:
    check_shape("weight", weight, ("out", "in"), hint="a linear layer's weight, (out_features, in_features)")
    if not weight.is_floating_point():
        raise ArgumentError(f"weight must be a float tensor, got dtype {weight.dtype}")
    if not torch.isfinite(weight).all():
        raise ArgumentError("weight holds inf or nan, which no scale can represent; quantize a trained, finite weight")
    return weight


# ---------------------------------------------------------------------------------- one matrix


@dataclass(frozen=True, eq=False)  # tensors have no single truth value to compare by
class Quantized:
    """A weight matrix `(out, in)` stored as integer codes and one scale per row or per group.

    codes       `(out, in)` int8, each in [-q_max, q_max]: `bits` bits of information each (a real
                file packs them, see `packed_bytes`; int8 is the smallest integer type torch computes with).
    scales      `(out, in // group)` float16; a weight is its code times the scale of its group.
    bits        b, from 2 to 8.
    group_size  consecutive weights of a row sharing a scale; None = the whole row (per channel).
    """

    codes: Tensor
    scales: Tensor
    bits: int
    group_size: int | None

    @property
    def shape(self) -> torch.Size:
        """`(out, in)`, the shape of the weight."""
        return self.codes.shape

    @property
    def group(self) -> int:
        """The weights per scale: `group_size`, or the whole row."""
        return self.codes.shape[1] if self.group_size is None else self.group_size


def _absmax_scales(values: Tensor, q_max: int) -> Tensor:
    """`(..., g)` -> `(...)` float16: max |value| / q_max over the last dim, as it will be stored.

    The scale is rounded to float16 here, before any code is computed, so codes are rounded against
    the scale that is stored and the size we count is the model we evaluate.
    """
    scales = (values.abs().amax(dim=-1) / q_max).to(torch.float16)
    if torch.isinf(scales).any():
        raise ArgumentError(f"a weight of magnitude {values.abs().max().item():.3g} needs a scale beyond float16's "
                            "range (65504); scale the layer down before quantizing it")
    return scales


def _round_to_codes(values: Tensor, scales: Tensor, q_max: int) -> Tensor:
    """round(values / scales), clamped to [-q_max, q_max], as int8; `scales` broadcasts to `values`.

    torch.round rounds halves to even, as torch's own quantizers do. A group of zeros has scale 0:
    dividing by 1 instead gives codes 0, and 0 · 0 dequantizes to 0.
    """
    safe = torch.where(scales == 0, torch.ones_like(scales), scales).float()
    return torch.round(values / safe).clamp(-q_max, q_max).to(torch.int8)


def quantize_absmax(weight: Tensor, bits: int, group_size: int | None = None) -> Quantized:
    """Round-to-nearest with symmetric absmax scales: weight `(out, in)` -> `Quantized`.

    group_size None gives one scale per output channel (row); an int gives one per `group_size`
    consecutive input columns of each row, and must divide `in`. Every weight ends within half a
    step of where it was: |dequantize(q) - weight| <= scale / 2.

    Symmetric codes use 2^b - 1 of the 2^b levels (-q_max .. q_max, never -2^(b-1)), so 0 stays
    exact and no zero point is stored; at 2 bits that leaves three levels, -s, 0 and s.
    """
    bits = _check_bits(bits)
    weight = _check_weight(weight)
    group = _check_group(group_size, weight.shape[1])
    q_max = 2 ** (bits - 1) - 1
    out_features, in_features = weight.shape
    grouped = weight.detach().float().reshape(out_features, in_features // group, group)
    scales = _absmax_scales(grouped, q_max)  # (out, in // group)
    codes = _round_to_codes(grouped, scales[..., None], q_max)
    return Quantized(codes.reshape(out_features, in_features), scales, bits, group_size)


def dequantize(quantized: Quantized) -> Tensor:
    """The float32 weight `(out, in)` that `quantized` stands for: each code times its group's scale."""
    if not isinstance(quantized, Quantized):
        raise ArgumentError(f"quantized must be a Quantized, got {type(quantized).__name__}; "
                            "make one with quantize_absmax or gptq_quantize")
    out_features, in_features = quantized.shape
    grouped = quantized.codes.float().reshape(out_features, in_features // quantized.group, quantized.group)
    return (grouped * quantized.scales.float()[..., None]).reshape(out_features, in_features)


def packed_bytes(quantized: Quantized) -> int:
    """Bytes a real file needs for `quantized`: every code at `bits` bits, packed (int4: two codes
    a byte), plus the float16 scales. The int8 tensor in memory is only how torch holds the codes."""
    if not isinstance(quantized, Quantized):
        raise ArgumentError(f"quantized must be a Quantized, got {type(quantized).__name__}")
    return math.ceil(quantized.codes.numel() * quantized.bits / 8) + quantized.scales.numel() * SCALE_BYTES


# ---------------------------------------------------------------------------------- GPTQ


def gptq_quantize(weight: Tensor, inputs: Tensor, bits: int, group_size: int | None = None,
                  damp: float = 0.01) -> Quantized:
    """Quantize weight `(out, in)` to fit the layer's outputs on `inputs` `(..., in)`, not its weights.

    RTN minimises each |w - ŵ| on its own; GPTQ aims at the layer's output error on the calibration
    inputs X (all leading dims of `inputs` flattened to N rows), ||X Wᵀ - X Ŵᵀ||², whose Hessian
    with respect to a row of W is H = 2 XᵀX / N (`in`, `in`); we divide by N so that H does not grow
    with the amount of calibration text (the result is the same). `damp` adds damp · mean(diag H)
    to the diagonal, so that H stays invertible when inputs are correlated or scarce (the paper
    uses 1%). Same codes and scales as `quantize_absmax` produces, same `group_size` rule.
    """
    bits = _check_bits(bits)
    weight = _check_weight(weight)
    check_shape("inputs", inputs, (..., weight.shape[1]), hint="the layer's inputs, one row per token")
    rows = inputs.detach().reshape(-1, weight.shape[1]).float()
    if rows.shape[0] == 0:
        raise ArgumentError("inputs holds no rows; GPTQ needs calibration inputs (a few thousand tokens)")
    return _gptq(weight, 2 * rows.T @ rows / rows.shape[0], bits, group_size, damp)


def _gptq(weight: Tensor, hessian: Tensor, bits: int, group_size: int | None, damp: float,
          where: str = "the weight") -> Quantized:
    """GPTQ (Frantar et al. 2022, Algorithm 1, without its lazy batch updates) with the layer's
    Hessian `(in, in)` given."""
    damp = check_real("damp", damp, minimum=0.0, hint="the share of the mean diagonal added to H; 0.01 as in GPTQ")
    group = _check_group(group_size, weight.shape[1], where)
    q_max = 2 ** (bits - 1) - 1
    work = weight.detach().float().clone()  # (out, in): rows are rounded column by column, in place
    out_features, in_features = work.shape
    hessian = hessian.to(work).clone()
    # An input that is always 0 in the calibration data has no curvature: its weights cannot change
    # the output, so they are set to 0 and H gets a 1 on the diagonal to stay invertible.
    dead = hessian.diagonal() == 0
    hessian.diagonal()[dead] = 1.0
    work[:, dead] = 0.0
    hessian.diagonal().add_(damp * hessian.diagonal().mean())
    # U, upper triangular with H⁻¹ = UᵀU. Row i of U is the inverse Hessian's row i once the
    # columns before i are fixed, up to a factor: the Cholesky factorisation performs exactly the
    # eliminations that Optimal Brain Surgeon would redo after each column, so H⁻¹ is never updated.
    factor, info = torch.linalg.cholesky_ex(hessian)
    upper, info_inverse = torch.linalg.cholesky_ex(torch.cholesky_inverse(factor), upper=True)
    if info or info_inverse:
        raise ArgumentError(f"the Hessian of {where} is not positive definite even with damp={damp}; raise damp "
                            "(e.g. damp=0.1) or calibrate on more tokens")

    codes = torch.zeros(out_features, in_features, dtype=torch.int8, device=work.device)
    scales = torch.zeros(out_features, in_features // group, dtype=torch.float16, device=work.device)
    for column in range(in_features):
        if column % group == 0:
            # A group's scale comes from its weights as they are now, after the earlier columns'
            # errors have been added to them (per channel: the whole original row, at column 0).
            scales[:, column // group] = _absmax_scales(work[:, column:column + group], q_max)
        scale = scales[:, column // group]
        codes[:, column] = _round_to_codes(work[:, column], scale, q_max)
        error = (work[:, column] - codes[:, column].float() * scale.float()) / upper[column, column]  # (out,)
        # The optimal change of the columns not yet rounded, given this column's rounding error.
        work[:, column + 1:] -= error[:, None] * upper[column, column + 1:][None, :]
    return Quantized(codes, scales, bits, group_size)


# ---------------------------------------------------------------------------------- a whole model


class QuantizedLinear(nn.Module):
    """A linear layer holding its weight quantized: `(..., in) -> (..., out)`.

        forward(x) = x @ dequantize(codes, scales)ᵀ + bias

    The codes `(out, in)` int8 and scales `(out, in // group)` float16 are buffers (saved with the
    state dict, never trained); the bias, if any, stays float. Each forward rebuilds the float
    weight, which costs memory bandwidth that a fused int4 kernel would save: this layer shows what
    quantization does to the outputs, not how fast it can run.
    """

    def __init__(self, quantized: Quantized, bias: Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(quantized, Quantized):
            raise ArgumentError(f"quantized must be a Quantized, got {type(quantized).__name__}; "
                                "build the layer with QuantizedLinear.from_linear(linear, bits)")
        self.out_features, self.in_features = quantized.shape
        self.bits, self.group_size = quantized.bits, quantized.group_size
        self.register_buffer("codes", quantized.codes)
        self.register_buffer("scales", quantized.scales)
        self.register_parameter("bias", None if bias is None else nn.Parameter(bias.detach().clone()))

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int | None = None) -> QuantizedLinear:
        """`linear` with its weight quantized by round-to-nearest (`quantize_absmax`)."""
        return cls(quantize_absmax(linear.weight, bits, group_size), linear.bias)

    @property
    def quantized(self) -> Quantized:
        return Quantized(self.codes, self.scales, self.bits, self.group_size)

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, dequantize(self.quantized).to(x.dtype), bias)

    def extra_repr(self) -> str:
        group = "per channel" if self.group_size is None else f"group_size={self.group_size}"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, {group}, "
                f"bias={self.bias is not None}")


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ArgumentError(f"expected a GPT, whose transformer blocks are in model.blocks; got a "
                            f"{type(model).__name__} without them")
    if any(isinstance(module, MoE) for module in blocks.modules()):
        raise ArgumentError("the model has Mixture-of-Experts layers, which this chapter's code does not handle "
                            "(its router decides which expert each token reaches); use a dense model (n_experts=1)")
    return blocks


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The nn.Linear layers of a GPT's transformer blocks, by qualified name (`blocks.0.attn.q_proj`),
    in module order: attention's q, k, v and out projections and the MLP's. The embedding and the
    output layer are not among them."""
    linears = {f"blocks.{index}.{name}": module for index, block in enumerate(_blocks(model))
               for name, module in block.named_modules() if isinstance(module, nn.Linear)}
    if not linears:
        raise ArgumentError(f"the {type(model).__name__} has no nn.Linear layers in its blocks (is it already "
                            "quantized?); start from the float model")
    return linears


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def quantize_model(model: nn.Module, bits: int, group_size: int | None = None, method: str = "rtn", *,
                   calibration: Tensor | None = None, damp: float = 0.01) -> nn.Module:
    """A quantized copy of a GPT: every nn.Linear of its blocks replaced by a `QuantizedLinear`.

    method "rtn" rounds each weight to nearest (`quantize_absmax`); "gptq" needs `calibration`, token
    ids `(B, T)` (a few thousand tokens of text like the model's), and uses `gptq_quantize`, with
    `damp` as there. `model` itself is not changed.

    The token embedding (tied to the output layer) and the position table stay float. The output
    layer turns every error in that matrix straight into an error in the logits, and its rows for
    rare tokens see little calibration data. At this course's size the embeddings are a large share
    of the weights (16% of cpu-tiny's 935k), so they limit what quantization can save; at scale
    they are a small one (Llama-2-7B: 2 · 32000 · 4096 = 262M of 6.7B, 4%).
    """
    bits = _check_bits(bits)
    check_choice("method", method, QUANTIZE_METHODS, hint="round to nearest, or GPTQ's error compensation")
    linears = block_linears(model)
    for name, linear in linears.items():  # every check before any work
        _check_group(group_size, linear.in_features, name)
    if method == "gptq":
        calibration = _check_calibration(model, calibration)
    elif calibration is not None:
        raise ArgumentError("calibration is used only by method='gptq'; drop it, or pass method='gptq'")
    quantized = copy.deepcopy(model)  # deepcopy keeps the tie: lm_head.weight is still tok_emb.weight
    if method == "rtn":
        for name, linear in block_linears(quantized).items():
            _replace(quantized, name, QuantizedLinear.from_linear(linear, bits, group_size))
    else:
        _quantize_gptq(quantized, calibration, bits, group_size, damp)
    return quantized


def _check_calibration(model: nn.Module, calibration: Any) -> Tensor:
    if calibration is None:
        raise ArgumentError("method='gptq' needs calibration token ids (B, T): a few thousand tokens of text "
                            "like the model's, e.g. 32 rows of block_size tokens")
    check_shape("calibration", calibration, ("B", "T"), hint="token ids, one row per text window")
    check_integer_tensor("calibration", calibration)
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab_size is not None:
        check_id_range("calibration", calibration, vocab_size, hint="token ids of the model's tokenizer")
    return calibration.to(next(model.parameters()).device)


@torch.no_grad()
def _quantize_gptq(model: nn.Module, calibration: Tensor, bits: int, group_size: int | None,
                   damp: float) -> None:
    """Quantize the blocks of `model` in place with GPTQ, one block after the other.

    Sequential, as in the paper: block l is calibrated on what the already quantized blocks 0..l-1
    give it, the inputs it will see in use, so it also compensates some of their error. Within a
    block every layer sees the float block's inputs (the paper's code does the same).
    """
    was_training = model.training
    model.eval()
    by_block: dict[str, dict[str, nn.Linear]] = {}
    for name, linear in block_linears(model).items():
        by_block.setdefault(".".join(name.split(".")[:2]), {})[name] = linear
    for layers in by_block.values():
        sums = {name: torch.zeros(linear.in_features, linear.in_features, device=linear.weight.device)
                for name, linear in layers.items()}
        counts = dict.fromkeys(layers, 0)

        def accumulate(name: str, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            rows = args[0].reshape(-1, module.in_features).float()
            sums[name] += rows.T @ rows
            counts[name] += rows.shape[0]

        handles = [linear.register_forward_hook(functools.partial(accumulate, name))
                   for name, linear in layers.items()]
        try:
            model(calibration)  # the later blocks run too; at this size that is cheaper than splitting the model
        finally:
            for handle in handles:
                handle.remove()
        for name, linear in layers.items():
            hessian = 2 * sums[name] / counts[name]
            quantized = _gptq(linear.weight, hessian, bits, group_size, damp, where=name)
            _replace(model, name, QuantizedLinear(quantized, linear.bias))
    model.train(was_training)


def model_bytes(model: nn.Module, dtype: torch.dtype = torch.float32) -> int:
    """The model's size in bytes: each `QuantizedLinear` at its `packed_bytes`, every other
    parameter (biases included) at `dtype`'s size, a tied matrix once. Buffers that the model
    recomputes (RoPE tables) do not count."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ArgumentError(f"dtype={dtype!r} must be a float torch dtype, e.g. torch.float32 or torch.bfloat16")
    quantized = sum(packed_bytes(module.quantized) for module in model.modules()
                    if isinstance(module, QuantizedLinear))
    unique = {id(param): param for param in model.parameters()}
    return quantized + sum(param.numel() for param in unique.values()) * torch.finfo(dtype).bits // 8


# ---------------------------------------------------------------------------------- pruning masks


def _keep_largest(scores: Tensor, n_remove: int) -> Tensor:
    """`(n,)` -> bool `(n,)`, False for the `n_remove` lowest scores. A stable sort breaks ties by
    position, so equal scores are removed first-come and the result never depends on chance."""
    keep = torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    keep[torch.argsort(scores, stable=True)[:n_remove]] = False
    return keep


def magnitude_masks(model: nn.Module, sparsity: float, scope: str = "layer") -> dict[str, Tensor]:
    """Unstructured magnitude pruning: masks that remove the `sparsity` share of smallest |w|.

    Returns {"blocks.0.attn.q_proj.weight": bool mask of the weight's shape, ...} for every linear
    layer of the blocks; True keeps a weight, False removes it (see `apply_masks`). scope "layer"
    removes exactly round(sparsity · numel) weights from each layer; "global" removes
    round(sparsity · total) from all of them ranked together, so layers of small weights (the
    residual projections, initialised smaller) lose more.
    """
    sparsity = _check_sparsity(sparsity)
    check_choice("scope", scope, ("layer", "global"), hint="rank weights within each layer, or across all layers")
    weights = {f"{name}.weight": linear.weight.detach() for name, linear in block_linears(model).items()}
    if scope == "layer":
        return {name: _keep_largest(weight.abs().flatten(), round(sparsity * weight.numel())).reshape(weight.shape)
                for name, weight in weights.items()}
    magnitudes = torch.cat([weight.abs().flatten() for weight in weights.values()])
    keep = _keep_largest(magnitudes, round(sparsity * magnitudes.numel()))
    pieces = keep.split([weight.numel() for weight in weights.values()])
    return {name: piece.reshape(weight.shape) for (name, weight), piece in zip(weights.items(), pieces)}


def _layer_scores(name: str, scores: Any, shape: tuple[int, int]) -> Tensor:
    """Given importance scores as a tensor `(layers, units)`, checked."""
    if not isinstance(scores, Tensor):
        scores = torch.as_tensor(scores)
    check_shape(name, scores, shape, hint="one importance per unit of each layer; the lowest are removed")
    if not scores.is_floating_point() or not torch.isfinite(scores).all():
        raise ArgumentError(f"{name} must hold finite float importances, got dtype {scores.dtype}")
    return scores


def head_masks(model: nn.Module, sparsity: float, scores: Tensor | None = None) -> dict[str, Tensor]:
    """Structured pruning: masks that remove round(sparsity · n_head) attention heads of every layer.

    A head's output reaches the model only through its D columns of out_proj, so zeroing them
    removes its contribution exactly; its D rows of q_proj are then dead and removed too, and the
    rows of k_proj and v_proj of a key/value head once every query head sharing it is gone (with
    grouped-query attention). Biases are not masked: behind zero columns they cannot matter.

    scores `(n_layer, n_head)`: importance of each head, the lowest removed; by default the norm of
    the head's out_proj columns, a crude weight-only score (Michel et al. 2019 use the loss's
    gradient with respect to a gate on each head, which can be passed here).
    Returns {name: bool mask}, True = keep, for the four projections of every block.
    """
    sparsity = _check_sparsity(sparsity)
    attentions = [block.attn for block in _blocks(model)]
    if not all(isinstance(attn, CausalSelfAttention) for attn in attentions):
        raise ArgumentError("head_masks needs CausalSelfAttention layers in model.blocks[i].attn")
    n_head, head_dim = attentions[0].n_head, attentions[0].head_dim
    if scores is None:
        scores = torch.stack([attn.out_proj.weight.detach().reshape(-1, n_head, head_dim).norm(dim=(0, 2))
                              for attn in attentions])
    scores = _layer_scores("scores", scores, (len(attentions), n_head))
    masks = {}
    for index, (attn, layer_scores) in enumerate(zip(attentions, scores)):
        removed = (~_keep_largest(layer_scores, round(sparsity * n_head))).nonzero().flatten().tolist()
        masks.update(_head_removal(f"blocks.{index}.attn", attn, removed))
    return masks


def _head_removal(prefix: str, attn: CausalSelfAttention, removed: Iterable[int]) -> dict[str, Tensor]:
    """The masks that remove query heads `removed` from one attention layer."""
    masks = {f"{prefix}.{name}.weight": torch.ones_like(getattr(attn, name).weight, dtype=torch.bool)
             for name in ("q_proj", "k_proj", "v_proj", "out_proj")}
    width, per_group = attn.head_dim, attn.n_head // attn.n_kv_heads
    removed = set(removed)
    for head in removed:
        masks[f"{prefix}.q_proj.weight"][head * width:(head + 1) * width, :] = False
        masks[f"{prefix}.out_proj.weight"][:, head * width:(head + 1) * width] = False
    for group in range(attn.n_kv_heads):
        if removed.issuperset(range(group * per_group, (group + 1) * per_group)):
            masks[f"{prefix}.k_proj.weight"][group * width:(group + 1) * width, :] = False
            masks[f"{prefix}.v_proj.weight"][group * width:(group + 1) * width, :] = False
    return masks


def _mlp_parts(index: int, mlp: nn.Module) -> tuple[tuple[nn.Linear, ...], nn.Linear, tuple[str, ...], str]:
    """The layers that make an MLP's hidden units: (inputs, output, their names). Hidden unit j is
    row j of each input projection and column j of the output projection."""
    if isinstance(mlp, MLP):
        return (mlp.fc_in,), mlp.fc_out, ("fc_in",), "fc_out"
    if isinstance(mlp, SwiGLU):
        return (mlp.gate_proj, mlp.up_proj), mlp.down_proj, ("gate_proj", "up_proj"), "down_proj"
    raise ArgumentError(f"blocks.{index}.mlp is a {type(mlp).__name__}; neuron_masks knows MLP and SwiGLU")


def neuron_masks(model: nn.Module, sparsity: float, scores: Tensor | None = None) -> dict[str, Tensor]:
    """Structured pruning: masks that remove round(sparsity · hidden) MLP hidden units of every block.

    Unit j is row j of fc_in (gate_proj and up_proj for SwiGLU) and column j of fc_out (down_proj);
    removing both gives exactly the MLP of a smaller hidden width. scores `(n_layer, hidden)`:
    importance of each unit, the lowest removed; by default the product of the norms of its rows
    and its column, which bounds how much the unit can add to the output for an input of a given size.
    Returns {name: bool mask}, True = keep.
    """
    sparsity = _check_sparsity(sparsity)
    parts = [_mlp_parts(index, block.mlp) for index, block in enumerate(_blocks(model))]
    hidden = parts[0][1].in_features
    if scores is None:
        scores = torch.stack([math.prod(layer.weight.detach().norm(dim=1) for layer in inputs)
                              * output.weight.detach().norm(dim=0) for inputs, output, _, _ in parts])
    scores = _layer_scores("scores", scores, (len(parts), hidden))
    masks = {}
    for index, ((inputs, output, in_names, out_name), layer_scores) in enumerate(zip(parts, scores)):
        keep = _keep_largest(layer_scores, round(sparsity * hidden)).to(output.weight.device)
        for layer, name in zip(inputs, in_names):
            masks[f"blocks.{index}.mlp.{name}.weight"] = keep[:, None].expand(layer.weight.shape).clone()
        masks[f"blocks.{index}.mlp.{out_name}.weight"] = keep[None, :].expand(output.weight.shape).clone()
    return masks


# ---------------------------------------------------------------------------------- applying masks


class MaskHooks:
    """The gradient hooks that `apply_masks` registered; `remove()` takes them off. The removed
    weights stay zero until something (training) changes them."""

    def __init__(self, handles: Iterable[RemovableHandle]) -> None:
        self.handles = list(handles)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def __len__(self) -> int:
        return len(self.handles)


def _masked_gradient(keep: Tensor, grad: Tensor) -> Tensor:
    return grad.masked_fill(~keep, 0.0)


def apply_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> MaskHooks:
    """Zero the removed weights (False in a mask) in place, and keep their gradients zero.

    masks: {parameter name: bool mask of the parameter's shape}, as the `*_masks` functions make.
    A gradient hook on each masked parameter zeroes the removed entries' gradient, so SGD, Adam and
    AdamW leave them at exactly 0 (weight decay scales 0 to 0, and Adam's moments of a gradient that
    was always 0 are 0): start a fresh optimizer after pruning, since moments from before would
    still move them. Parameters that do not require grad get no hook. Returns the hooks.
    """
    params = dict(model.named_parameters())
    for name, mask in masks.items():  # every check before the first change
        if name not in params:
            raise ArgumentError(f"masks name {name!r}, which is not a parameter of the {type(model).__name__}; "
                                "make the masks from this model")
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise ArgumentError(f"the mask of {name!r} must be a bool tensor (True = keep), got {got}")
        check_shape(f"the mask of {name!r}", mask, tuple(params[name].shape), hint="the parameter's shape")
    handles = []
    with torch.no_grad():
        for name, mask in masks.items():
            param, keep = params[name], mask.to(params[name].device)
            param.masked_fill_(~keep, 0.0)
            if param.requires_grad:
                handles.append(param.register_hook(functools.partial(_masked_gradient, keep)))
    return MaskHooks(handles)


def layer_sparsity(model: nn.Module) -> dict[str, float]:
    """The share of exact zeros in each linear weight of the blocks, by parameter name."""
    return {f"{name}.weight": (linear.weight == 0).float().mean().item()
            for name, linear in block_linears(model).items()}


def sparsity_of(model: nn.Module) -> float:
    """The share of exact zeros among all the linear weights of the blocks together."""
    weights = [linear.weight for linear in block_linears(model).values()]
    return sum(int((weight == 0).sum()) for weight in weights) / sum(weight.numel() for weight in weights)
