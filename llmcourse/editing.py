"""Chapter 16: finding where a model stores a fact, and rewriting it with a rank-one change.

Meng et al. (2022), "Locating and Editing Factual Associations in GPT" (ROME), do it in two steps.

**Locating: causal tracing.** Run the prompt "The capital of Ardmark is" three times:

    clean       as it is: the model gives the answer " Bramby" probability p_clean;
    corrupted   with Gaussian noise added to the subject's token embeddings (std 3x that of the
                embeddings), so the model no longer knows which country is meant: p_corrupted;
    restored    corrupted, except that one hidden state, at one layer and one position, is put
                back to its clean value: p_restored.

A state that carries the fact brings the answer back on its own. The states that do form a map
of where the fact travels; in GPT-2 XL, ROME found a band of middle-layer MLPs at the subject's
*last token*, and attention carrying the result to the last position late in the network.

**Editing: the MLP as a key-value memory.** Geva et al. (2021, "Transformer Feed-Forward Layers
Are Key-Value Memories") read an MLP's output layer W = fc_out.weight `(C, H)` as a memory: the
hidden activation k `(H,)` at a position is a key, and W k `(C,)` is the value it writes into the
residual stream. If the subject's last token makes the key k*, then W k* is what layer L adds
about the subject there. To make the model say a new
object, pick a value v* that does (found by gradient descent on that one vector), and change W as
little as possible so that W' k* = v*. "As little as possible" means: the other keys k the layer
sees, with second moment C = E[k kᵀ], should keep their values, so minimise E ||W' k - W k||²
subject to W' k* = v*. Writing Δ = W' - W, that is tr(Δ C Δᵀ) under Δ k* = v* - W k*, and a
Lagrange multiplier gives

    W' = W + (v* - W k*) uᵀ / (uᵀ k*),    u = C⁻¹ k*

a rank-one change. With C = I it is the smallest change in Frobenius norm; with the real C it
leaves alone the directions in which keys usually vary, and moves mostly the ones particular to k*.
ROME reads k* at the subject's last token, where GPT-2 XL gathers what it knows about the
subject; a small model whose names are cut into short, shared pieces (" A", "r", "d", "mark") may
gather it at another of the subject's tokens, and tracing shows which (`subject_token`).

**Judging an edit** (ROME's three questions): efficacy (does the edited prompt now give the new
object?), generalisation (do paraphrases?) and specificity (do other subjects keep their facts?).

    subject_positions / trace_layers / ablate_mlp_layers     where the fact lives
    rank_one_update                                          the closed-form change of W
    key_at / compute_value / key_covariance / edit_fact      k*, v*, C, and the whole edit
    edit_report                                              efficacy, generalisation, specificity
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from llmcourse.checks import ArgumentError, check_choice, check_id_range, check_int, check_real, check_shape
from llmcourse.finetune import document_loss
from llmcourse.generate import generate
from llmcourse.mlp import MLP, SwiGLU
from llmcourse.model import GPT
from llmcourse.sampling import SamplingSettings
from llmcourse.tokenizer import ENDOFTEXT, Tokenizer

__all__ = [
    "SITES",
    "Edit",
    "EditReport",
    "EditRows",
    "Score",
    "Trace",
    "ablate_mlp_layers",
    "compute_value",
    "edit_fact",
    "edit_report",
    "edit_rows",
    "key_at",
    "key_covariance",
    "output_projection",
    "prompt_ids",
    "rank_one_update",
    "sample_prefixes",
    "share_completed",
    "subject_positions",
    "target_probability",
    "trace_layers",
]

# What trace_layers can restore at (layer, position): the residual stream after the block, or the
# output of the block's attention or MLP (what each adds to the stream).
SITES = ("block", "attn", "mlp")
NOISE_SCALE = 3.0  # ROME's corruption: noise std = 3 x the standard deviation of the token embeddings


# ---------------------------------------------------------------------------------- prompts


def prompt_ids(tokenizer: Tokenizer, text: str) -> list[int]:
    """The ids the model reads for `text`: the end-of-text token that starts a document, then the
    text (as `generate` encodes a prompt)."""
    return [tokenizer.special_tokens[ENDOFTEXT]] + tokenizer.encode_ordinary(text)


def subject_positions(tokenizer: Tokenizer, prompt: str, subject: str) -> range:
    """The positions of `subject`'s tokens in `prompt_ids(tokenizer, prompt)` (its first occurrence).

    A BPE tokenizer usually puts the space before a word into the word's first token (" Ardmark"
    -> " A", "r", "d", "mark"); then that token is the subject's first.
    """
    if not isinstance(subject, str) or not subject.strip():
        raise ArgumentError(f"subject={subject!r} must be a non-empty string, the name the prompt is about")
    start = prompt.find(subject)
    if start < 0:
        raise ArgumentError(f"subject={subject!r} does not occur in prompt={prompt!r}; "
                            "the subject must be spelled in the prompt exactly as given")
    end = start + len(subject)
    whole = prompt_ids(tokenizer, prompt)
    before = prompt_ids(tokenizer, prompt[:start])
    if whole[:len(before)] != before:  # the space before the subject is part of its first token
        before = prompt_ids(tokenizer, prompt[:start].rstrip())
    through = prompt_ids(tokenizer, prompt[:end])
    inside_word = prompt[start - 1:start].isalnum() or prompt[end:end + 1].isalnum()
    if inside_word or through[:len(before)] != before or whole[:len(through)] != through:
        raise ArgumentError(f"subject={subject!r} is part of a longer word or token in prompt={prompt!r}; "
                            "give the whole word")
    return range(len(before), len(through))


# ---------------------------------------------------------------------------------- hooks


@contextmanager
def _evaluating(model: nn.Module) -> Iterator[None]:
    """Dropout off inside the block; the model's own mode is restored after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def _hooks(*pairs: tuple[nn.Module, Callable]) -> Iterator[None]:
    """Forward hooks (`hook(module, args, output) -> new output or None`) on modules, removed after."""
    with ExitStack() as stack:
        for module, hook in pairs:
            stack.callback(module.register_forward_hook(hook).remove)
        yield


def _set_rows(output: Tensor, positions: Tensor, values: Tensor) -> Tensor:
    """`output` `(B, L, C)` with row b's vector at `positions[b]` replaced by `values[b]` `(B, C)`.
    A new tensor, so autograd sees the change (a hook must not edit the module's output in place)."""
    output = output.clone()
    output[torch.arange(len(positions), device=output.device), positions] = values.to(output.dtype)
    return output


def _sites(model: GPT, site: str) -> list[nn.Module]:
    """One module per layer whose output is the state `site` names."""
    check_choice("site", site, SITES)
    return [block if site == "block" else getattr(block, site) for block in model.blocks]


# ---------------------------------------------------------------------------------- locating


def _as_ids(name: str, ids: Sequence[int] | Tensor, model: GPT) -> Tensor:
    """A non-empty 1-D tensor of token ids in the model's vocabulary."""
    ids = torch.as_tensor(ids) if not isinstance(ids, Tensor) else ids
    if ids.dim() != 1 or len(ids) == 0:
        raise ArgumentError(f"{name} must be a non-empty list (or 1-D tensor) of token ids, got shape "
                            f"{tuple(ids.shape)}")
    return check_id_range(name, ids, model.config.vocab_size, hint="ids from the model's own tokenizer").long()


def _sequence(model: GPT, prompt: Sequence[int] | Tensor, target: Sequence[int] | Tensor) -> tuple[Tensor, Tensor]:
    """The one input row `(1, L)`, prompt then all but the last target token, and the target ids `(m,)`."""
    prompt, target = _as_ids("prompt_ids", prompt, model), _as_ids("target_ids", target, model)
    ids = torch.cat([prompt, target[:-1]])[None]
    if ids.shape[1] > model.config.block_size:
        raise ArgumentError(f"the prompt and target take {ids.shape[1]} positions, more than block_size="
                            f"{model.config.block_size}; shorten the prompt")
    device = next(model.parameters()).device
    return ids.to(device), target.to(device)


def _probability(logits: Tensor, target: Tensor) -> Tensor:
    """p(target) `(B,)`: the product of each target token's probability, read off the last m
    positions of `logits` `(B, L, V)` (each predicts the next target token)."""
    m = len(target)
    log_probs = F.log_softmax(logits[:, -m:].float(), dim=-1)  # (B, m, V)
    return log_probs.gather(-1, target.expand(len(logits), m)[..., None]).squeeze(-1).sum(-1).exp()


@torch.no_grad()
def target_probability(model: GPT, prompt_ids: Sequence[int] | Tensor, target_ids: Sequence[int] | Tensor) -> float:
    """p(target | prompt): the probability that the model continues `prompt_ids` with `target_ids`
    (every target token in turn, so a town of three tokens is scored whole)."""
    ids, target = _sequence(model, prompt_ids, target_ids)
    with _evaluating(model):
        return _probability(model(ids)[0], target).item()


@dataclass(frozen=True)
class Trace:
    """What `trace_layers` measured, all probabilities of the target after the prompt.

    clean: the model as it is. corrupted: mean over noise samples, subject embeddings noised.
    restored `(n_layer, T)`: the same noise, with the state at (layer, position) put back; T is
    the prompt's length.
    """

    clean: float
    corrupted: float
    restored: Tensor

    @property
    def recovered(self) -> Tensor:
        """`(n_layer, T)`: the share of the lost probability each restoration wins back,
        (restored - corrupted) / (clean - corrupted): 0 = no help, 1 = all of it. Only meaningful
        when the noise did lower p (clean > corrupted)."""
        return (self.restored - self.corrupted) / (self.clean - self.corrupted)


@torch.no_grad()
def trace_layers(model: GPT, prompt_ids: Sequence[int] | Tensor, subject_positions: Sequence[int],
                 target_ids: Sequence[int] | Tensor, *, site: str = "block", noise: float | None = None,
                 samples: int = 10, seed: int = 0) -> Trace:
    """Causal tracing (ROME, section 2.1): how much of p(target) restoring one clean state brings back.

    prompt_ids `(T,)`: the prompt, as `prompt_ids(tokenizer, text)` gives it. subject_positions:
    the positions whose token embeddings get noise (`subject_positions(...)`). target_ids `(m,)`:
    the answer's tokens. site: which state is restored, "block" (the residual stream after the
    block), "attn" or "mlp" (what that sublayer adds). noise: the noise std (None: 3 x the std of
    the token embedding table, as ROME). samples: noise draws to average over; every restoration
    uses the same draws, so the comparisons between states are paired.

    Only prompt positions are restored: for an answer of several tokens the positions after the
    prompt stay corrupted, so even the last block at the last position wins back only part of
    p (ROME traces the answer's first token, `target_ids[:1]`, for which it wins back all).
    One batched forward pass per layer: its rows are (position, noise sample) pairs.
    """
    samples = check_int("samples", samples, 1, hint="noise draws to average over; ROME uses 10")
    ids, target = _sequence(model, prompt_ids, target_ids)
    prompt_length = ids.shape[1] - len(target) + 1
    positions = _positions_in("subject_positions", subject_positions, prompt_length)
    sites = _sites(model, site)
    if noise is None:
        noise = NOISE_SCALE * model.tok_emb.weight.std().item()
    noise = check_real("noise", noise, minimum=0.0, hint="the std of the noise on the subject's embeddings")
    generator = torch.Generator().manual_seed(check_int("seed", seed, 0))
    width = model.config.n_embd
    noise_rows = torch.zeros(samples, ids.shape[1], width)
    noise_rows[:, positions] = torch.randn(samples, len(positions), width, generator=generator) * noise
    noise_rows = noise_rows.to(ids.device, model.tok_emb.weight.dtype)

    def corrupt(module, args, output):  # the same draws for every group of `samples` rows
        return output + noise_rows.repeat(len(output) // samples, 1, 1)

    with _evaluating(model):
        clean_states: list[Tensor] = []
        with _hooks(*[(module, lambda m, a, out: clean_states.append(out[0])) for module in sites]):
            clean = _probability(model(ids)[0], target).item()
        with _hooks((model.tok_emb, corrupt)):
            corrupted = _probability(model(ids.expand(samples, -1))[0], target).mean().item()
        where = torch.arange(prompt_length, device=ids.device).repeat_interleave(samples)  # (T * samples,)
        restored = torch.empty(len(sites), prompt_length)
        for layer, module in enumerate(sites):
            restore = _restorer(where, clean_states[layer][where])
            with _hooks((model.tok_emb, corrupt), (module, restore)):
                p = _probability(model(ids.expand(len(where), -1))[0], target)
            restored[layer] = p.view(prompt_length, samples).mean(1).cpu()
    return Trace(clean, corrupted, restored)


def _restorer(positions: Tensor, values: Tensor) -> Callable:
    """A forward hook that puts `values[b]` back at `positions[b]` of row b of the module's output."""
    return lambda module, args, output: _set_rows(output, positions, values)


def _positions_in(name: str, positions: Sequence[int], length: int) -> list[int]:
    """`positions` as a list of distinct ints in [0, length)."""
    if isinstance(positions, (str, bytes)) or len(positions) == 0:
        raise ArgumentError(f"{name} must be a non-empty list of positions, got {positions!r}")
    checked = [check_int(f"{name}[{i}]", p, 0, below=length, hint=f"a position of the {length}-token prompt")
               for i, p in enumerate(positions)]
    if len(set(checked)) != len(checked):
        raise ArgumentError(f"{name}={list(positions)} lists a position twice")
    return checked


@torch.no_grad()
def ablate_mlp_layers(model: GPT, prompt_ids: Sequence[int] | Tensor, position: int,
                      target_ids: Sequence[int] | Tensor) -> Tensor:
    """p(target) with one layer's MLP output at `position` set to zero, for each layer: `(n_layer,)`.

    The cheap cousin of tracing: one forward pass per layer, no noise. Compare each entry with
    `target_probability`: a large drop says that layer's MLP, at that position, writes what the
    answer needs (zero is a crude "nothing": ROME's tracing restores states instead).
    """
    ids, target = _sequence(model, prompt_ids, target_ids)
    position = check_int("position", position, 0, below=ids.shape[1] - len(target) + 1,
                         hint="a position of the prompt, e.g. the subject's last token")
    where = torch.tensor([position], device=ids.device)
    ablated = torch.empty(model.config.n_layer)
    with _evaluating(model):
        for layer, module in enumerate(_sites(model, "mlp")):
            with _hooks((module, _restorer(where, torch.zeros(1, model.config.n_embd, device=ids.device)))):
                ablated[layer] = _probability(model(ids)[0], target).item()
    return ablated


# ---------------------------------------------------------------------------------- the update


def rank_one_update(weight: Tensor, key: Tensor, value: Tensor, covariance: Tensor | None = None) -> Tensor:
    """ROME's closed form: the W' closest to `weight` with W' key = value. `(C, H)` -> `(C, H)`.

        W' = W + (value - W key) uᵀ / (uᵀ key),    u = covariance⁻¹ key

    weight `(C, H)`, key `(H,)`, value `(C,)`; covariance `(H, H)`: E[k kᵀ] over the keys the
    layer sees, symmetric positive definite (None: the identity, the smallest change in Frobenius
    norm). Any direction x with uᵀ x = 0 keeps its output: W' x = W x. Computed in float64 and
    returned in the weight's dtype.
    """
    check_shape("weight", weight, ("C", "H"), hint="an output projection's weight, (out_features, in_features)")
    width, hidden = weight.shape
    check_shape("key", key, (hidden,), hint="one key: the projection's input at one position")
    check_shape("value", value, (width,), hint="the output the key should produce")
    w, k, v = weight.double(), key.double(), value.double()
    if covariance is None:
        u = k
    else:
        check_shape("covariance", covariance, (hidden, hidden), hint="E[k kᵀ] of the layer's keys")
        c = covariance.to(w.device, torch.float64)
        factor, info = torch.linalg.cholesky_ex(c)
        if info.item() != 0 or not torch.allclose(c, c.T, rtol=1e-6, atol=1e-8 * c.diagonal().abs().max().item()):
            raise ArgumentError("covariance must be symmetric positive definite; estimate it with key_covariance, "
                                "which adds a small ridge, or add eps * I yourself")
        u = torch.cholesky_solve(k[:, None], factor).squeeze(1)
    alignment = u @ k
    if not alignment > 0:
        raise ArgumentError("key is zero (uᵀ key = 0), so no change of the weight can map it to value; "
                            "take the key at a position the layer actually reads")
    return (w + torch.outer(v - w @ k, u) / alignment).to(weight.dtype)


def output_projection(model: GPT, layer: int) -> nn.Linear:
    """The MLP output weight of block `layer` that an edit changes: `fc_out` (ReLU/GELU) or
    `down_proj` (SwiGLU); its input is the key, its output the value."""
    layer = check_int("layer", layer, 0, below=model.config.n_layer,
                      hint=f"a block index, 0 to {model.config.n_layer - 1}")
    mlp = model.blocks[layer].mlp
    if isinstance(mlp, MLP):
        return mlp.fc_out
    if isinstance(mlp, SwiGLU):
        return mlp.down_proj
    raise ArgumentError(f"block {layer}'s MLP is a {type(mlp).__name__}; a rank-one edit needs one dense MLP "
                        "(a Mixture of Experts routes a key to experts, and each has its own weight)")


# ---------------------------------------------------------------------------------- key, value, C


class EditRows(NamedTuple):
    """A batch for an edit, right-padded (causal attention never looks right, so padding is harmless).

    ids `(B, L)`: each row the prompt (after a prefix, except row 0) and the new object's tokens
    but the last. positions `(B,)`: the subject's token the edit uses, in each row. targets `(B, L)`: the
    new object's tokens where they are predicted, -100 elsewhere (as `GPT.forward` takes them).
    """

    ids: Tensor
    positions: Tensor
    targets: Tensor


def edit_rows(tokenizer: Tokenizer, prompt: str, subject: str, target: str, prefixes: Sequence[str] = (),
              subject_token: int = -1) -> EditRows:
    """The prompt alone and after each prefix ("{prefix} {prompt}"), each followed by `target`
    (the words that should follow the prompt, with their leading space: " Selby"); the edit
    reads and writes at the subject's token number `subject_token` (-1: its last, as in ROME)."""
    check_int("subject_token", subject_token, hint="an index into the subject's tokens, -1 for the last")
    if isinstance(prefixes, str):
        raise ArgumentError("prefixes must be a list of texts, not one string; e.g. [prefix]")
    if not isinstance(target, str) or not target.strip():
        raise ArgumentError(f"target={target!r} must be non-empty text, the words that should follow the prompt")
    target_ids = tokenizer.encode_ordinary(target)
    rows, lookups = [], []
    for prefix in ("", *prefixes):
        text = f"{prefix} {prompt}" if prefix else prompt
        span = subject_positions(tokenizer, text, subject)
        if not -len(span) <= subject_token < len(span):
            raise ArgumentError(f"subject_token={subject_token} is not one of the {len(span)} tokens of "
                                f"{subject!r} in {text!r}; use -{len(span)} to {len(span) - 1}")
        lookups.append(span[subject_token])
        rows.append((prompt_ids(tokenizer, text) + target_ids)[:-1])  # the last token is only a target
    length = max(len(row) for row in rows)
    pad = tokenizer.special_tokens[ENDOFTEXT]
    ids = torch.full((len(rows), length), pad, dtype=torch.long)
    targets = torch.full((len(rows), length), -100, dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, :len(row)] = torch.tensor(row)
        targets[b, len(row) - len(target_ids):len(row)] = torch.tensor(target_ids)
    return EditRows(ids, torch.tensor(lookups), targets)


def _check_rows(model: GPT, ids: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    check_shape("ids", ids, ("B", "L"), hint="a batch of token rows, e.g. edit_rows(...).ids")
    check_id_range("ids", ids, model.config.vocab_size, hint="ids from the model's own tokenizer")
    check_shape("positions", positions, (len(ids),), hint="one position per row of ids")
    check_id_range("positions", positions, ids.shape[1], hint="a position inside each row")
    device = next(model.parameters()).device
    return ids.to(device), positions.to(device)


@torch.no_grad()
def key_at(model: GPT, layer: int, ids: Tensor, positions: Tensor) -> Tensor:
    """k* `(H,)`: the input of block `layer`'s MLP output projection at `positions[b]` of each row
    of `ids` `(B, L)`, averaged over the rows (ROME averages over prefixes, so the key is the
    subject's, not one context's)."""
    projection = output_projection(model, layer)
    ids, positions = _check_rows(model, ids, positions)
    keys: list[Tensor] = []
    handle = projection.register_forward_pre_hook(lambda module, args: keys.append(args[0]))
    try:
        with _evaluating(model):
            model(ids)
    finally:
        handle.remove()
    return keys[0][torch.arange(len(ids), device=ids.device), positions].float().mean(0)


def compute_value(model: GPT, layer: int, key: Tensor, rows: EditRows, *, steps: int = 50, lr: float = 0.5,
                  weight_decay: float = 0.1, stop_loss: float = 0.05) -> tuple[Tensor, list[float]]:
    """v* `(C,)`: an output for `key` that makes the model say the targets of `rows`, and the
    targets' cross-entropy before each step.

    A shift δ `(C,)` is added to block `layer`'s MLP output at `rows.positions` (the subject's
    token) in every row, and Adam (learning rate `lr`) lowers, for at most `steps` steps,

        loss(δ) = cross-entropy of the targets + weight_decay · |δ|² / |W k*|²

    stopping early once the cross-entropy is below `stop_loss` (0.05: the new object's tokens
    have about 95% probability each). The second term keeps δ small next to the output it shifts:
    a larger shift says the new object more surely, in more phrasings, but spills over more onto
    other subjects. (ROME also adds a KL term that keeps the subject's other predictions, left
    out here.) Then v* = W k* + δ: the layer's output for the key, shifted. The model is not
    changed, and only δ gets gradients, also when gradients are switched off around the call.
    """
    projection = output_projection(model, layer)
    steps = check_int("steps", steps, 1, hint="the most optimiser steps; 20-50 is typical")
    lr = check_real("lr", lr, above=0.0, hint="Adam's learning rate for the shift; ROME uses 0.5")
    weight_decay = check_real("weight_decay", weight_decay, minimum=0.0, hint="0 lets the shift grow freely")
    stop_loss = check_real("stop_loss", stop_loss, minimum=0.0, hint="0 always takes every step")
    ids, positions = _check_rows(model, rows.ids, rows.positions)
    check_shape("targets", rows.targets, tuple(rows.ids.shape), hint="one target per position of ids, -100 to skip")
    targets = rows.targets.to(ids.device)
    with torch.no_grad():
        start = projection(key.to(projection.weight)[None])[0].float()  # W k* (+ bias)
    shift = torch.zeros_like(start, requires_grad=True)
    optimizer = torch.optim.Adam([shift], lr=lr)
    where = torch.arange(len(ids), device=ids.device)

    def shifted(module, args, output):
        return _set_rows(output, positions, output[where, positions] + shift)

    losses: list[float] = []
    # enable_grad: the search needs gradients even where the caller switched them off (a page, a test)
    with torch.enable_grad(), _evaluating(model), _hooks((model.blocks[layer].mlp, shifted)):
        for _ in range(steps):
            nll = model(ids, targets)[1]
            losses.append(nll.item())
            if losses[-1] < stop_loss:
                break
            loss = nll + weight_decay * shift.pow(2).sum() / start.pow(2).sum()
            shift.grad = torch.autograd.grad(loss, shift)[0]  # the shift's alone: no .grad on the model
            optimizer.step()
    value = (start + shift).detach()
    if projection.bias is not None:  # the output is W k + b; v* is its W k part, the bias stays
        value = value - projection.bias.detach().float()
    return value, losses


@torch.no_grad()
def key_covariance(model: GPT, layer: int, token_ids: Tensor, *, batch_size: int = 8, ridge: float = 1e-3,
                   progress: bool = False) -> Tensor:
    """C `(H, H)` float32: E[k kᵀ], the second moment of block `layer`'s keys over `token_ids` `(N,)`.

    The text is cut into windows of block_size tokens (the last one may be shorter), and every
    position's key counts once. `ridge` adds ridge x (the mean diagonal) to the diagonal, so C is
    invertible even if some hidden unit never fires in the sample. Accumulated in float64.
    """
    projection = output_projection(model, layer)
    batch_size = check_int("batch_size", batch_size, 1)
    ridge = check_real("ridge", ridge, minimum=0.0, hint="a small share of the mean variance, e.g. 1e-3")
    check_shape("token_ids", token_ids, ("N",), hint="a 1-D tensor of token ids of ordinary text")
    check_id_range("token_ids", token_ids, model.config.vocab_size, hint="ids from the model's own tokenizer")
    if len(token_ids) == 0:
        raise ArgumentError("token_ids is empty; give some ordinary text's tokens (a few thousand or more)")
    device = next(model.parameters()).device
    size, token_ids = model.config.block_size, token_ids.long()
    n_full = len(token_ids) // size
    batches = list(token_ids[:n_full * size].view(n_full, size).split(batch_size))
    if len(token_ids) % size:  # the short last window, alone
        batches.append(token_ids[n_full * size:][None])
    hidden = projection.in_features
    total = torch.zeros(hidden, hidden, dtype=torch.float64, device=device)

    def accumulate(module, args):
        keys = args[0].flatten(0, -2).double()  # (B * L, H)
        total.add_(keys.T @ keys)

    handle = projection.register_forward_pre_hook(accumulate)
    try:
        with _evaluating(model):
            for batch in tqdm(batches, desc="keys", disable=not progress):
                model(batch.to(device))
    finally:
        handle.remove()
    covariance = total / len(token_ids)
    covariance += ridge * covariance.diagonal().mean() * torch.eye(hidden, dtype=torch.float64, device=device)
    return covariance.float()


def sample_prefixes(model: GPT, tokenizer: Tokenizer, count: int, *, max_new_tokens: int = 12,
                    seed: int = 0) -> list[str]:
    """`count` short texts sampled from the model (temperature 1), each to the end of its first
    sentence: the contexts ROME puts before the prompt, so the key and value fit the subject in
    any context, not only at the start of a document. count 0 gives none."""
    count = check_int("count", count, 0)
    if count == 0:
        return []
    completions = generate(model, tokenizer, [""] * count, max_new_tokens, SamplingSettings(temperature=1.0),
                           stop=["."], seed=seed)
    return [c.text.strip() + ("." if c.finish_reason == "stop" else "") for c in completions]


# ---------------------------------------------------------------------------------- the edit


@dataclass(frozen=True)
class Edit:
    """An edit made by `edit_fact`: `model` is the edited copy, whose block `layer` output
    projection weight is the original's plus `update` `(C, H)` (rank one). `key` `(H,)`, `value`
    `(C,)`: k* and v*, with W' k* = v*. `losses`: the value search's cross-entropy at each step."""

    model: GPT
    layer: int
    key: Tensor
    value: Tensor
    update: Tensor
    losses: list[float]


def edit_fact(model: GPT, tokenizer: Tokenizer, prompt: str, subject: str, new_object: str, layer: int, *,
              covariance: Tensor | None = None, prefixes: Sequence[str] = (), subject_token: int = -1,
              steps: int = 50, lr: float = 0.5, weight_decay: float = 0.1, stop_loss: float = 0.05) -> Edit:
    """Make `prompt` ("The capital of Ardmark is", about `subject` "Ardmark") continue with
    `new_object` ("Selby"; a space is put before it), by a rank-one change of block `layer`'s MLP
    output weight, in a copy of the model: `model` itself is left untouched.

    k* = `key_at` the subject's token number `subject_token` (-1: its last, as in ROME), over
    the prompt alone and after each of `prefixes`; v* = `compute_value` (`steps`, `lr`,
    `weight_decay`, `stop_loss`); W' = `rank_one_update` with `covariance` (from
    `key_covariance`; None: the identity).
    """
    projection = output_projection(model, layer)
    if not isinstance(new_object, str) or not new_object.strip():
        raise ArgumentError(f"new_object={new_object!r} must be non-empty text, e.g. 'Selby'")
    rows = edit_rows(tokenizer, prompt, subject, " " + new_object.strip(), prefixes, subject_token)
    key = key_at(model, layer, rows.ids, rows.positions)
    value, losses = compute_value(model, layer, key, rows, steps=steps, lr=lr, weight_decay=weight_decay,
                                  stop_loss=stop_loss)
    weight = projection.weight.detach()
    new_weight = rank_one_update(weight, key.to(weight), value, covariance)
    edited = copy.deepcopy(model)
    with torch.no_grad():  # in place: the weight keeps its memory layout (see GPT.input_major_weights_)
        output_projection(edited, layer).weight.copy_(new_weight)
    return Edit(edited, layer, key, value, new_weight - weight, losses)


# ---------------------------------------------------------------------------------- judging it


class Score(NamedTuple):
    """One measure of an edit, on the original model and on the edited one."""

    before: float
    after: float


@dataclass(frozen=True)
class EditReport:
    """efficacy: share of the edited prompts that complete with the new object; generalisation:
    the same for paraphrases; specificity: share of other subjects' prompts that still complete
    correctly; loss: mean next-token loss on ordinary text (None if no text was given)."""

    efficacy: Score
    generalisation: Score
    specificity: Score
    loss: Score | None = None


@torch.no_grad()
def share_completed(model: GPT, tokenizer: Tokenizer, probes: Sequence[tuple[str, str]], *,
                    max_new_tokens: int = 8) -> float:
    """The share of (prompt, answer) pairs whose greedy completion, to the end of the sentence,
    is exactly the answer ("The capital of Ardmark is" -> " Bramby." for "Bramby")."""
    if isinstance(probes, str) or len(probes) == 0 or not all(
            isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in probes):
        raise ArgumentError(f"probes must be a non-empty list of (prompt, answer) pairs, got {probes!r}")
    completions = generate(model, tokenizer, [prompt for prompt, _ in probes], max_new_tokens,
                           SamplingSettings(temperature=0), stop=["."])
    return sum(c.text.strip() == answer for c, (_, answer) in zip(completions, probes)) / len(probes)


def edit_report(original: GPT, edited: GPT, tokenizer: Tokenizer, *, rewrites: Sequence[tuple[str, str]],
                paraphrases: Sequence[tuple[str, str]], neighbours: Sequence[tuple[str, str]],
                tokens: Tensor | None = None, max_new_tokens: int = 8) -> EditReport:
    """Score both models on (prompt, answer) pairs, by greedy completion (`share_completed`).

    rewrites: the edited prompt(s) with the new object; paraphrases: other words for the same
    question, with the new object; neighbours: prompts about other subjects with their own,
    unchanged answers. tokens `(N,)`: ordinary text, for the mean loss before and after
    (`finetune.document_loss`, the same windows for both models; a good edit leaves it almost
    unchanged).
    """
    def score(probes):
        return Score(*(share_completed(m, tokenizer, probes, max_new_tokens=max_new_tokens) for m in (original, edited)))

    loss = None
    if tokens is not None:
        loss = Score(document_loss(original, tokens, batches=4, batch_size=8),
                     document_loss(edited, tokens, batches=4, batch_size=8))
    return EditReport(score(rewrites), score(paraphrases), score(neighbours), loss)
