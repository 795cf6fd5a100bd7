"""Chapter 13: LoRA, fine-tuning a model by training two thin matrices beside each frozen weight.

Full fine-tuning changes every weight W `(out, in)` of a layer. Hu et al. (2021), "LoRA: Low-Rank
Adaptation of Large Language Models", freeze W and learn the change as a product of rank r:

    y = W x + (alpha / r) · B A x        A: (r, in), B: (out, r), r << min(out, in)

so a layer trains r·(in + out) numbers instead of out·in. B starts at zero, so training starts from
exactly the pretrained model; A starts random, so B's gradient is not zero at the first step (the
paper writes a Gaussian; its reference code, loralib, and peft draw A Kaiming-uniform, as here).
Dividing by r spares retuning the other hyperparameters when r changes (the paper sets alpha to
the first r it tries and does not tune it). After training, (alpha / r) · B A can be added
into W ("merged"): the model is then a plain model again, and inference costs nothing extra. Or
the adapter is kept apart, a small file per task beside one shared base checkpoint.

    inject_lora(model)           wrap the chosen nn.Linear layers, freeze everything else
    merge_lora / unmerge_lora    fold the update into W in place, or take it back out
    merged_state_dict(model)     the plain model's weights, with the update folded in
    save_adapters / load_adapters   the small file: settings and the A, B of every layer
"""

from __future__ import annotations

import fnmatch
import math
import numbers
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.checks import ArgumentError, check_int, check_real
from llmcourse.files import atomic_write

__all__ = [
    "ADAPTER_FORMAT",
    "ADAPTER_VERSION",
    "ATTENTION_TARGETS",
    "DEFAULT_TARGETS",
    "LoRAError",
    "LoRALinear",
    "count_parameters",
    "inject_lora",
    "load_adapters",
    "load_lora_state_dict",
    "lora_layers",
    "lora_state_dict",
    "merge_lora",
    "merged_state_dict",
    "save_adapters",
    "unmerge_lora",
]

ADAPTER_FORMAT = "llmcourse-lora"
ADAPTER_VERSION = 1

# Qualified module names, matched with fnmatch ("*" also crosses dots). The attention projections
# of every block; the paper's experiments adapt W_q and W_v (its section 7.1 compares the choices).
ATTENTION_TARGETS = ("*.attn.q_proj", "*.attn.k_proj", "*.attn.v_proj", "*.attn.out_proj")
# Attention and MLP projections (GELU/ReLU MLP and SwiGLU): QLoRA (Dettmers et al. 2023) found
# that adapting every linear layer of the blocks is needed to match full fine-tuning.
DEFAULT_TARGETS = ATTENTION_TARGETS + ("*.mlp.fc_in", "*.mlp.fc_out",
                                       "*.mlp.gate_proj", "*.mlp.up_proj", "*.mlp.down_proj")
A_KEY, B_KEY = "lora_A", "lora_B"


class LoRAError(ValueError):
    """A model or adapter file that cannot be used as asked (already wrapped, merged twice, a file
    made for another model); the message says what to do instead."""


# ---------------------------------------------------------------------------------- the layer


def _check_settings(rank: Any, alpha: Any, dropout: Any) -> tuple[int, float, float]:
    """rank, alpha and dropout as plain numbers, or an ArgumentError naming the bad one."""
    rank = check_int("rank", rank, 1, hint="the inner width r of B A; 4-16 is typical")
    alpha = check_real("alpha", alpha, above=0.0, hint="the update is scaled by alpha / rank; 2 * rank is common")
    dropout = check_real("dropout", dropout, minimum=0.0, below=1.0,
                         hint="a probability applied to the LoRA branch's input; 0.0 turns it off")
    return rank, alpha, dropout


def _check_rank_fits(rank: int, linear: nn.Linear, name: str = "the layer") -> None:
    """A rank above min(in, out) adds parameters without adding anything B A can express."""
    largest = min(linear.in_features, linear.out_features)
    if rank > largest:
        raise ArgumentError(f"rank={rank} must be at most min(in_features, out_features) = {largest} for {name} "
                            f"({linear.in_features} -> {linear.out_features}); use rank <= {largest}")


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update: `(..., in) -> (..., out)`.

        forward(x) = base(x) + (dropout(x) @ A.T @ B.T) * alpha / rank

    base: the layer to adapt, kept as the submodule `base` with its parameters frozen.
    rank: r, the inner width of the update; at most min(in_features, out_features).
    alpha: the update's scale is alpha / rank.
    dropout: dropout probability on the LoRA branch's input only (training only).

    `lora_A` `(rank, in)` and `lora_B` `(out, rank)` take the base weight's device and dtype; B is
    zero, so a new layer computes exactly what `base` does. Once merged (`merge`), the update lives
    inside `base.weight` and forward is `base(x)` alone.
    """

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise ArgumentError(f"base must be an nn.Linear, got {type(base).__name__}; "
                                "LoRALinear wraps one linear layer (inject_lora wraps a whole model)")
        rank, alpha, dropout = _check_settings(rank, alpha, dropout)
        _check_rank_fits(rank, base)
        self.base = base.requires_grad_(False)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.dropout = nn.Dropout(dropout)
        self.merged = False
        like = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, **like))
        # a = sqrt(5) gives U(-1/sqrt(in), 1/sqrt(in)): nn.Linear's own default, which loralib keeps for A.
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.train(base.training)  # wrapping a layer of a model in eval mode must not switch dropout on

    def forward(self, x: Tensor) -> Tensor:
        """x `(..., in)` -> `(..., out)`."""
        if self.merged:
            return self.base(x)
        # Two thin matmuls, (..., in) -> (..., r) -> (..., out): B A itself (out, in) is never formed.
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + update * self.scaling

    def delta_weight(self) -> Tensor:
        """The update to the base weight, `(out, in)`: B A * alpha / rank (differentiable)."""
        return (self.lora_B @ self.lora_A) * self.scaling

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into `base.weight` in place, so forward costs one matmul again."""
        if self.merged:
            raise LoRAError("this LoRA layer is already merged; merging again would add the update twice "
                            "(call unmerge() first)")
        # In place, so the weight keeps its memory layout (input-major weights stay input-major).
        self.base.weight.add_(self.delta_weight().to(self.base.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Take the update back out of `base.weight` (up to rounding), to train or swap adapters."""
        if not self.merged:
            raise LoRAError("this LoRA layer is not merged, so there is nothing to unmerge "
                            "(call merge() first, or leave it as it is)")
        self.base.weight.sub_(self.delta_weight().to(self.base.weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}, "
                f"alpha={self.alpha}, merged={self.merged}")


# ---------------------------------------------------------------------------------- a whole model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRA layer of `model`, by qualified name (`blocks.0.attn.q_proj`), in module order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LoRALinear)}


def _require_lora(model: nn.Module) -> dict[str, LoRALinear]:
    layers = lora_layers(model)
    if not layers:
        raise LoRAError(f"the {type(model).__name__} has no LoRA layers; add them with inject_lora(model) first")
    return layers


def _first(names: Iterable[str], limit: int = 4) -> str:
    """The first `limit` of `names`, sorted, for an error message."""
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _tied_weights(model: nn.Module) -> set[int]:
    """ids of the parameters that sit in more than one place (lm_head's weight is the embedding's)."""
    seen: dict[int, int] = {}
    for _, param in model.named_parameters(remove_duplicate=False):
        seen[id(param)] = seen.get(id(param), 0) + 1
    return {key for key, count in seen.items() if count > 1}


def _matching_linears(model: nn.Module, targets: Sequence[str]) -> dict[str, nn.Linear]:
    """The nn.Linear layers whose qualified name matches one of `targets`, refusing lm_head and
    tied weights: an update to a shared matrix would silently change its other use too."""
    linears = _linears(model)
    chosen = {name: linear for name, linear in linears.items()
              if any(fnmatch.fnmatchcase(name, pattern) for pattern in targets)}
    if not chosen:
        some = ", ".join(list(linears)[:8]) + (", ..." if len(linears) > 8 else "")
        raise ArgumentError(f"targets={tuple(targets)!r} match no nn.Linear of the {type(model).__name__}; "
                            f"its linear layers are: {some or 'none'} (patterns use fnmatch, e.g. '*.attn.q_proj')")
    tied = _tied_weights(model)
    for name, linear in chosen.items():
        if name.split(".")[-1] == "lm_head":
            why = "is the output layer (tied to the token embedding in most GPTs), which LoRA leaves alone"
        elif id(linear.weight) in tied:
            why = "shares its weight with another layer (tied weights): an update there would change both"
        else:
            continue
        raise ArgumentError(f"targets={tuple(targets)!r} match {name!r}, which {why}; narrow the patterns "
                            "(DEFAULT_TARGETS and ATTENTION_TARGETS leave it out)")
    return chosen


def _linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The model's nn.Linear layers by qualified name; the model itself (name "") cannot be
    replaced in place, so it is never one of them."""
    return {name: module for name, module in model.named_modules() if name and isinstance(module, nn.Linear)}


def _exact_pattern(name: str) -> str:
    """An fnmatch pattern matching `name` only: its wildcard characters put in brackets."""
    return "".join(f"[{char}]" if char in "*?[" else char for char in name)


def inject_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, targets: Sequence[str] = DEFAULT_TARGETS,
                dropout: float = 0.0) -> list[str]:
    """Wrap every nn.Linear whose qualified name matches a pattern in `targets` with a LoRALinear,
    in place, and freeze every other parameter; returns the wrapped names, sorted.

    Afterwards only the LoRA matrices require grad, so an optimizer over
    `[p for p in model.parameters() if p.requires_grad]` trains just them. Nothing is changed if
    an argument is bad, nothing matches, or the model already has LoRA layers.
    """
    if isinstance(targets, str):  # one pattern given as a string, not a string's characters
        targets = (targets,)
    rank, alpha, dropout = _check_settings(rank, alpha, dropout)
    existing = lora_layers(model)
    if existing:
        raise LoRAError(f"the {type(model).__name__} already has LoRA layers ({_first(existing, 3)}); wrap a "
                        "fresh model, or load new adapters into these with load_lora_state_dict")
    chosen = _matching_linears(model, targets)
    for name, linear in chosen.items():  # every check before the first change
        _check_rank_fits(rank, linear, repr(name))
    model.requires_grad_(False)
    for name, linear in chosen.items():
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, LoRALinear(linear, rank, alpha, dropout))
    return sorted(chosen)


def merge_lora(model: nn.Module) -> None:
    """Merge every LoRA layer's update into its base weight, in place (see `LoRALinear.merge`)."""
    layers = _require_lora(model)
    merged = [name for name, layer in layers.items() if layer.merged]
    if merged:
        raise LoRAError(f"LoRA layers {merged[:3]} are already merged; call unmerge_lora(model) first")
    for layer in layers.values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Take every LoRA layer's update back out of its base weight, in place."""
    layers = _require_lora(model)
    unmerged = [name for name, layer in layers.items() if not layer.merged]
    if unmerged:
        raise LoRAError(f"LoRA layers {unmerged[:3]} are not merged, so there is nothing to unmerge")
    for layer in layers.values():
        layer.unmerge()


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict `model` would have without LoRA, with every update folded into its weight.

    Keys are those of the unwrapped model (`blocks.0.attn.q_proj.weight`, not `...base.weight`),
    so the result loads into a freshly built model of the same config. The model is not changed:
    each merged weight is a new tensor W + B A * alpha / rank (a layer already merged holds it).
    """
    layers = _require_lora(model)
    renamed: dict[str, tuple[str, LoRALinear]] = {}
    for name, layer in layers.items():
        for key in layer.base.state_dict():
            renamed[f"{name}.base.{key}"] = (f"{name}.{key}", layer)
    skipped = {f"{name}.{key}" for name in layers for key in (A_KEY, B_KEY)}
    state = {}
    for key, value in model.state_dict().items():
        if key in skipped:
            continue
        if key not in renamed:
            state[key] = value
            continue
        plain_key, layer = renamed[key]
        if plain_key.endswith(".weight") and not layer.merged:
            value = value + layer.delta_weight().to(value.dtype)
        state[plain_key] = value
    return state


# ---------------------------------------------------------------------------------- adapters


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """Only the adapters: `{name}.lora_A` `(rank, in)` and `{name}.lora_B` `(out, rank)` of every
    LoRA layer, detached copies (training on does not change them)."""
    state = {}
    for name, layer in _require_lora(model).items():
        state[f"{name}.{A_KEY}"] = layer.lora_A.detach().clone()
        state[f"{name}.{B_KEY}"] = layer.lora_B.detach().clone()
    return state


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state: dict[str, Tensor]) -> None:
    """Copy adapters (`lora_state_dict`'s keys) into the model's LoRA layers, strictly: a missing,
    unexpected or differently shaped entry raises LoRAError and nothing is copied. Tensors move to
    each layer's device and dtype."""
    layers = _require_lora(model)
    merged = [name for name, layer in layers.items() if layer.merged]
    if merged:
        raise LoRAError(f"LoRA layers {merged[:3]} are merged, and new adapters would make their weights "
                        "wrong; call unmerge_lora(model) first")
    targets = {f"{name}.{key}": getattr(layer, key) for name, layer in layers.items() for key in (A_KEY, B_KEY)}
    missing, unexpected = set(targets) - set(state), set(state) - set(targets)
    if missing or unexpected:
        parts = [f"{what} {_first(keys)}" for what, keys in (("missing", missing), ("unexpected", unexpected))
                 if keys]
        raise LoRAError(f"the adapters do not fit this model's LoRA layers: {'; '.join(parts)} "
                        "(were they saved from a model wrapped with other targets?)")
    for key, param in targets.items():
        value = state[key]
        if not isinstance(value, Tensor) or not value.is_floating_point():
            raise LoRAError(f"adapter {key!r} must be a floating-point tensor, got {type(value).__name__}")
        if value.shape != param.shape:
            raise LoRAError(f"adapter {key!r} has shape {tuple(value.shape)}, but the model's is "
                            f"{tuple(param.shape)} (a different rank or layer size)")
    for key, param in targets.items():
        param.copy_(state[key])


def _settings(layers: dict[str, LoRALinear]) -> dict[str, Any]:
    """The one rank, alpha and dropout of all layers (as inject_lora gives them), and their names."""
    found = {(layer.rank, layer.alpha, layer.dropout.p) for layer in layers.values()}
    if len(found) > 1:
        raise LoRAError(f"the LoRA layers have different (rank, alpha, dropout) settings {sorted(found)}; "
                        "an adapter file holds one setting (wrap the model with one inject_lora call)")
    rank, alpha, dropout = found.pop()
    return {"rank": rank, "alpha": alpha, "dropout": dropout, "targets": list(layers)}


def _check_plain(name: str, value: Any) -> None:
    """A safe load (`weights_only=True`) reads tensors and plain Python values only; refuse anything
    else when saving, rather than write a file that cannot be read back."""
    if value is None or isinstance(value, (str, bool, numbers.Integral, float, Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_plain(f"{name}[{index}]", item)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ArgumentError(f"meta {name} has key {key!r}; use str keys")
            _check_plain(f"{name}[{key!r}]", item)
        return
    raise ArgumentError(f"meta {name}={value!r} is a {type(value).__name__}; use str, int, float, bool, None, "
                        "a tensor, or lists and dicts of them (a safe load reads nothing else)")


def save_adapters(model: nn.Module, path: str | os.PathLike, **meta: Any) -> Path:
    """Write the model's LoRA settings and adapters to `path` (atomically); returns the path.

    `meta` holds plain values to keep beside them, e.g. `base={"path": ..., "sha256": ...}` naming
    the checkpoint the adapters were trained on (`checkpoint.tokenizer_entry` makes such a record).
    """
    for key, value in meta.items():
        _check_plain(key, value)
    layers = _require_lora(model)
    payload = {"format": ADAPTER_FORMAT, "version": ADAPTER_VERSION, **_settings(layers),
               "adapters": lora_state_dict(model), "meta": dict(meta)}
    path = Path(path)
    atomic_write(path, lambda file: torch.save(payload, file))
    return path


def _read_adapter_file(path: Path) -> dict[str, Any]:
    """The payload of an adapter file, checked for format, version and keys."""
    if not path.is_file():
        raise FileNotFoundError(f"no adapter file at {path}; write one with save_adapters(model, path)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip, pickle and EOF errors alike: not a file this code wrote
        raise LoRAError(f"{path} is not a readable {ADAPTER_FORMAT} adapter file "
                        f"({type(error).__name__}); write it with save_adapters") from error
    found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if found != ADAPTER_FORMAT:
        raise LoRAError(f"{path} is not an adapter file (format {found!r}, not {ADAPTER_FORMAT!r}); "
                        "a model checkpoint loads with GPT.load, adapters with load_adapters")
    if payload.get("version") != ADAPTER_VERSION:
        raise LoRAError(f"{path}: adapter file version {payload.get('version')!r} is not supported "
                        f"(this code reads version {ADAPTER_VERSION})")
    missing = [key for key in ("rank", "alpha", "dropout", "targets", "adapters", "meta") if key not in payload]
    if missing:
        raise LoRAError(f"{path} is not a complete adapter file (missing {missing})")
    try:
        _check_settings(payload["rank"], payload["alpha"], payload["dropout"])
    except ArgumentError as error:
        raise LoRAError(f"{path} holds unusable settings: {error}") from error
    targets, adapters = payload["targets"], payload["adapters"]
    if (not isinstance(targets, list) or not targets or not all(isinstance(name, str) for name in targets)
            or not isinstance(adapters, dict) or not isinstance(payload["meta"], dict)):
        raise LoRAError(f"{path} is a damaged adapter file (targets must be a list of layer names, "
                        "adapters and meta dicts); write it again with save_adapters")
    return payload


def _check_file_fits(path: Path, model: nn.Module, saved: dict[str, Any]) -> None:
    """Refuse adapters made for other layers or other settings than the model's LoRA layers."""
    layers = lora_layers(model)
    if not layers:
        _check_file_fits_plain(path, model, saved)
        return
    have = _settings(layers)
    differ = [f"{key}: file {saved[key]!r}, model {have[key]!r}" for key in ("rank", "alpha", "dropout")
              if saved[key] != have[key]]
    in_file, in_model = set(saved["targets"]), set(have["targets"])
    only_file, only_model = in_file - in_model, in_model - in_file
    if only_file:
        differ.append(f"layers only the file adapts: {_first(only_file, 3)}")
    if only_model:
        differ.append(f"layers only the model adapts: {_first(only_model, 3)}")
    if differ:
        raise LoRAError(f"{path} does not match the model's LoRA layers ({'; '.join(differ)}); load it into "
                        "a model without LoRA layers (it is wrapped to fit) or re-wrap with these settings")


def _check_file_fits_plain(path: Path, model: nn.Module, saved: dict[str, Any]) -> None:
    """Before wrapping a model to fit a file: every layer the file adapts exists, with the sizes of
    the file's A and B, so a file made for another model changes nothing."""
    linears, rank = _linears(model), saved["rank"]
    absent = set(saved["targets"]) - set(linears)
    if absent:
        raise LoRAError(f"{path} adapts layers this {type(model).__name__} does not have "
                        f"({_first(absent)}); it was made for another model")
    for name in saved["targets"]:
        linear = linears[name]
        for key, shape in ((A_KEY, (rank, linear.in_features)), (B_KEY, (linear.out_features, rank))):
            value = saved["adapters"].get(f"{name}.{key}")
            if not isinstance(value, Tensor) or tuple(value.shape) != shape:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise LoRAError(f"{path}: adapter {name}.{key} is {got}, but this model's {name} needs "
                                f"{shape}; the file was made for another model")


def load_adapters(model: nn.Module, path: str | os.PathLike) -> dict[str, Any]:
    """Load adapters written by `save_adapters` into `model`; returns the file's `meta`.

    A model without LoRA layers is first wrapped (`inject_lora`) with the file's settings; a model
    with them must have the same layers, rank, alpha and dropout. The file is read with
    `torch.load(weights_only=True)`, which runs no code from it.
    """
    path = Path(path)
    saved = _read_adapter_file(path)
    _check_file_fits(path, model, saved)
    if not lora_layers(model):
        exact = [_exact_pattern(name) for name in saved["targets"]]
        inject_lora(model, saved["rank"], saved["alpha"], exact, saved["dropout"])
    load_lora_state_dict(model, saved["adapters"])
    return saved["meta"]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tensor used in two places (tied weights) counts once."""
    unique = {id(param): param for param in model.parameters()}
    trainable = sum(param.numel() for param in unique.values() if param.requires_grad)
    return trainable, sum(param.numel() for param in unique.values())
