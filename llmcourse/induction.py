"""Chapter 17: in-context learning in miniature, the induction head.

A model learns *in context* when the text it is reading changes what it predicts, with no change
to its weights. The smallest case to watch: a random sequence of tokens, then the same sequence
again. The first copy is noise, and no model can beat a uniform guess there, ln V nats per token.
The second copy is predictable from the first: after token A, predict the token that followed A
last time. Olsson et al. (2022, "In-context learning and induction heads") found that
transformers learn this with two attention heads working together (Elhage et al. 2021, "A
mathematical framework for transformer circuits"):

    layer 0, a previous-token head:  position j copies in "the token before me was x_{j-1}"
    layer 1, an induction head:      position t, holding token A, looks for a key that says
                                     "the token before me was A", i.e. j with x_{j-1} = A,
                                     and copies x_j, the token that followed A last time.

On repeated random sequences the induction head's pattern is a stripe: query t in the second
copy attends to key t - length + 1. This module trains a 2-layer, attention-only `GPT` (no MLPs,
so attention is all it has) on such sequences in a few minutes on a laptop CPU, measures its
heads (`attention_patterns`, `previous_token_scores`, `induction_scores`), and shows the limit
of what it can copy: nothing that has slid out of its context window (`copy_loss_by_gap`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.attention import recording_attention
from llmcourse.checks import ArgumentError, check_int, check_real
from llmcourse.files import atomic_write, read_versioned_json
from llmcourse.model import GPT, GPTConfig

__all__ = [
    "InductionConfig",
    "InductionHistory",
    "NoMLP",
    "attention_only_model",
    "attention_patterns",
    "copy_loss_by_gap",
    "first_copy_columns",
    "gap_sequences",
    "induction_scores",
    "load_induction_run",
    "loss_by_position",
    "previous_token_scores",
    "repeat_columns",
    "repeated_sequences",
    "save_induction_run",
    "token_losses",
    "train_induction_model",
    "uniform_loss",
]

MODEL_NAME = "model.pt"
HISTORY_NAME = "history.json"
HISTORY_FORMAT = "llmcourse-induction-history"
HISTORY_VERSION = 1


# ---------------------------------------------------------------------------------- data


def repeated_sequences(batch_size: int, length: int, vocab_size: int,
                       generator: torch.Generator | None = None) -> Tensor:
    """`batch_size` rows of `length` uniformly random tokens followed by the same tokens again.

    Returns `(B, 2 * length)` int64 ids with `ids[:, length:] == ids[:, :length]`. The task of
    Olsson et al. (2022) and Elhage et al. (2021): the first half cannot be predicted (ln V nats
    per token at best), the second half, from its second token on, can be copied from the first.
    """
    check_int("batch_size", batch_size, 1)
    check_int("length", length, 1, hint="the number of random tokens before they repeat")
    check_int("vocab_size", vocab_size, 1)
    first = torch.randint(vocab_size, (batch_size, length), generator=generator)
    return torch.cat([first, first], dim=1)


def gap_sequences(batch_size: int, length: int, gap: int, vocab_size: int,
                  generator: torch.Generator | None = None) -> Tensor:
    """A random segment, `gap` random filler tokens, then the segment again: `(B, 2 * length + gap)`.

    The repeat starts at `length + gap`; a token of it is `length + gap` positions after its
    first occurrence, so a model whose window is shorter than that cannot see what to copy.
    """
    check_int("gap", gap, 0, hint="the number of filler tokens between the two copies")
    segment = repeated_sequences(batch_size, length, vocab_size, generator)[:, :length]
    filler = torch.randint(vocab_size, (segment.shape[0], gap), generator=generator)
    return torch.cat([segment, filler, segment], dim=1)


def first_copy_columns(length: int) -> slice:
    """The columns of `token_losses` that predict the first copy's tokens 1..L-1.

    Column j of `token_losses` is the loss of predicting token j + 1, so these are columns 0..L-2.
    """
    return slice(0, length - 1)


def repeat_columns(length: int, gap: int = 0) -> slice:
    """The columns of `token_losses` of a `gap_sequences` row that predict the repeat's tokens 2..L.

    The repeat starts at token L + gap, and its first token is left out: nothing announces it (it
    is as random as the first copy). From its second token on, the token before says where to copy.
    """
    return slice(length + gap, 2 * length + gap - 1)


# ---------------------------------------------------------------------------------- the model


class NoMLP(nn.Module):
    """A stand-in MLP that adds nothing to the residual stream: `(B, T, C) -> zeros (B, T, C)`.

    Passed as `GPT(..., mlp_cls=NoMLP)` it leaves an attention-only transformer, the model Elhage
    et al. (2021) analyse: everything it computes, it computes by moving information between
    positions. It has no parameters.
    """

    def __init__(self, config: GPTConfig | None = None) -> None:
        super().__init__()

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


@dataclass
class InductionConfig:
    """The attention-only model and how it is trained to copy.

    Each step draws, for the whole batch, a segment length L uniformly from [min_length,
    max_length] and a gap uniformly from [0, block_size - 2L], and trains on `gap_sequences`
    (gap 0 is `repeated_sequences`). Both must vary: at one fixed distance a head could learn
    "attend L + gap - 1 positions back" from positions alone, which copies without matching any
    token, and only distances the model has seen, up to nearly block_size, would it copy across.

    The output layer is not tied to the token embedding (`tie_weights=False`): tied, the direct
    path embedding -> unembedding favours predicting the current token again, which the model
    must first unlearn. head_dim = n_embd // n_head = 32 gives each head room to match 128 tokens.
    """

    vocab_size: int = 128
    block_size: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    position: str = "rope"
    min_length: int = 8
    max_length: int = 32
    batch_size: int = 32
    steps: int = 2500
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        check_int("min_length", self.min_length, 2, hint="a repeat needs at least 2 tokens to copy one")
        check_int("max_length", self.max_length, self.min_length, hint="at least min_length")
        if 2 * self.max_length > self.block_size:
            raise ArgumentError(f"max_length={self.max_length} repeated twice is {2 * self.max_length} tokens, "
                                f"more than block_size={self.block_size}; use max_length <= {self.block_size // 2}")
        check_int("batch_size", self.batch_size, 1)
        check_int("steps", self.steps, 0)
        check_real("lr", self.lr, above=0.0, hint="e.g. 3e-3 for this tiny model")
        check_real("weight_decay", self.weight_decay, minimum=0.0)
        check_int("seed", self.seed, 0)
        self.model_config()  # GPTConfig checks the architecture now, not at the first step

    def model_config(self) -> GPTConfig:
        """The `GPTConfig` of the model (its `mlp` field is unused: `NoMLP` replaces the MLPs)."""
        return GPTConfig(vocab_size=self.vocab_size, block_size=self.block_size, n_layer=self.n_layer,
                         n_head=self.n_head, n_embd=self.n_embd, position=self.position, tie_weights=False)


def attention_only_model(config: GPTConfig) -> GPT:
    """A `GPT` whose blocks have attention and norms but no MLP (see `NoMLP`)."""
    return GPT(config, mlp_cls=NoMLP)


@dataclass
class InductionHistory:
    """What training recorded, one entry per step: the batch's segment `lengths` and `gaps`, its
    mean `losses`, and the mean loss on the first copy (`first_half`, tokens 1..L-1) and on the
    repeat (`second_half`, its tokens 2..L); and the wall-clock `train_seconds`."""

    lengths: list[int] = field(default_factory=list)
    gaps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    first_half: list[float] = field(default_factory=list)
    second_half: list[float] = field(default_factory=list)
    train_seconds: float = 0.0


def train_induction_model(config: InductionConfig | None = None, *,
                          progress: bool = True) -> tuple[GPT, InductionHistory]:
    """Train an attention-only GPT on `gap_sequences`; return it (in eval mode) and its history.

    A plain loop: draw a batch, compute the per-token losses, step AdamW on their mean. Every
    token counts in the loss, the unpredictable ones included, as in pretraining; the history
    splits the loss into the two copies so the moment the model starts copying is visible.
    """
    config = config or InductionConfig()
    torch.manual_seed(config.seed)  # the model's initial weights
    data_generator = torch.Generator().manual_seed(config.seed)
    model = attention_only_model(config.model_config())
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    history = InductionHistory()
    started = time.perf_counter()
    model.train()
    for step in range(config.steps):
        length = _draw(config.min_length, config.max_length, data_generator)
        gap = _draw(0, config.block_size - 2 * length, data_generator)
        ids = gap_sequences(config.batch_size, length, gap, config.vocab_size, data_generator)
        losses = token_losses(model, ids)  # (B, 2L + gap - 1)
        loss = losses.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _record(history, length, gap, losses.detach())
        if progress and (step % 100 == 0 or step == config.steps - 1):
            print(f"step {step:4d}  loss {history.losses[-1]:.3f}  first copy {history.first_half[-1]:.3f}  "
                  f"repeat {history.second_half[-1]:.3f}")
    history.train_seconds = round(time.perf_counter() - started, 2)
    return model.eval(), history


def _draw(low: int, high: int, generator: torch.Generator) -> int:
    """A uniformly random integer from low to high, both included."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def _record(history: InductionHistory, length: int, gap: int, losses: Tensor) -> None:
    history.lengths.append(length)
    history.gaps.append(gap)
    history.losses.append(round(float(losses.mean()), 4))
    history.first_half.append(round(float(losses[:, first_copy_columns(length)].mean()), 4))
    history.second_half.append(round(float(losses[:, repeat_columns(length, gap)].mean()), 4))


# ---------------------------------------------------------------------------------- losses


def token_losses(model: GPT, ids: Tensor) -> Tensor:
    """The loss (nats) of predicting each token of `ids` `(B, T)` from the ones before: `(B, T - 1)`.

    Column j is -log P(ids[:, j + 1] | what the model sees up to j). A sequence longer than the
    model's block_size is read with a sliding window, as a model in use reads a long text: the
    prediction after position j sees only the last block_size tokens, j - block_size + 1 .. j.
    Gradients flow (training uses it); wrap it in `torch.no_grad()` to measure.
    """
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise ArgumentError(f"ids must be (B, T) with T >= 2, got shape {tuple(ids.shape)}")
    block = model.config.block_size
    first, _ = model(ids[:, :block])  # positions 0..block-1 all fit in one window
    logits = [first[:, : ids.shape[1] - 1]]
    if ids.shape[1] - 1 > block:
        # The window that ends at position j (for j = block .. T-2) is ids[j - block + 1 .. j]:
        # one row per window, (B, W, block) -> (B * W, block), and keep each row's last logit.
        windows = ids[:, 1:-1].unfold(1, block, 1)
        later, _ = model(windows.flatten(0, 1))
        logits.append(later[:, -1].view(ids.shape[0], windows.shape[1], -1))
    logits = torch.cat(logits, dim=1)  # (B, T - 1, V)
    return F.cross_entropy(logits.transpose(1, 2).float(), ids[:, 1:], reduction="none")


@torch.no_grad()
def loss_by_position(model: GPT, ids: Tensor) -> Tensor:
    """The mean loss (nats) of predicting token j + 1, averaged over the batch: `(T - 1,)`.

    On `repeated_sequences` it is ~ln V across the first copy and drops at the second token of
    the repeat, once the model has something to copy.
    """
    return token_losses(model.eval(), ids).mean(dim=0)


@torch.no_grad()
def copy_loss_by_gap(model: GPT, length: int, gaps: list[int] | range, *, batch_size: int = 64,
                     generator: torch.Generator | None = None) -> Tensor:
    """The mean loss on the repeat of `gap_sequences` for each gap: `(len(gaps),)` nats.

    The loss counts the repeat's tokens 2..L (its first token cannot be known). The model reads
    with a sliding window of block_size tokens (see `token_losses`), so a repeated token is
    copyable only while the earlier copy's successor (the key the induction head finds) and the
    token before it (which the previous-token head reads at that key) are both inside the window:
    the loss stays low up to gap = block_size - length - 1 and jumps to ~ln V after.
    """
    check_int("length", length, 2, hint="the segment needs 2 tokens for one to be copyable")
    model.eval()
    vocab_size = model.config.vocab_size
    means = []
    for gap in gaps:
        ids = gap_sequences(batch_size, length, gap, vocab_size, generator)
        means.append(token_losses(model, ids)[:, repeat_columns(length, gap)].mean())
    return torch.stack(means)


# ---------------------------------------------------------------------------------- heads


@torch.no_grad()
def attention_patterns(model: nn.Module, ids: Tensor) -> Tensor:
    """Every layer's and head's attention weights on `ids`, averaged over the batch: `(L, H, T, T)`.

    ids: `(B, T)` (or `(T,)` for one sequence). Entry `[l, h, t, j]` is how much query t of
    head h in layer l attends to key j, averaged over the B sequences; each row sums to 1 and is
    0 right of the diagonal (causal). On `repeated_sequences` of one length the stripes of
    previous-token and induction heads sit at the same place in every row, so the mean keeps them
    sharp while the attention to accidental matches averages away.
    """
    ids = ids[None] if ids.dim() == 1 else ids
    with recording_attention(model) as patterns:  # one (B, H, T, T) per layer
        model(ids)
    return torch.stack([p.mean(dim=0) for p in patterns]).float().cpu()


def previous_token_scores(patterns: Tensor) -> Tensor:
    """Mean attention from each query t to key t - 1, over t = 1..T-1: `(..., T, T) -> (...)`.

    1 for a perfect previous-token head; 1/(t+1) per row for one that attends uniformly.
    """
    _check_patterns(patterns, min_length=2)
    queries = torch.arange(1, patterns.shape[-1])
    return patterns[..., queries, queries - 1].mean(dim=-1)


def induction_scores(patterns: Tensor, length: int) -> Tensor:
    """Mean attention from each query t of the repeat to key t - length + 1: `(..., T, T) -> (...)`.

    patterns come from `repeated_sequences` of segment `length` (T >= 2 * length). Query t, in the
    repeat (t = length .. 2·length - 1), holds the token first seen at t - length; the token that
    followed it there sits at t - length + 1, where an induction head looks. 1 for a perfect one.
    """
    check_int("length", length, 1)
    _check_patterns(patterns, min_length=2 * length)
    queries = torch.arange(length, 2 * length)
    return patterns[..., queries, queries - length + 1].mean(dim=-1)


def _check_patterns(patterns: Tensor, min_length: int) -> None:
    if patterns.dim() < 2 or patterns.shape[-1] != patterns.shape[-2] or patterns.shape[-1] < min_length:
        raise ArgumentError(f"expected attention patterns (..., T, T) with T >= {min_length}, "
                            f"got shape {tuple(patterns.shape)}")


# ---------------------------------------------------------------------------------- recordings


def save_induction_run(folder: str | os.PathLike, model: GPT, history: InductionHistory,
                       config: InductionConfig, **extra: Any) -> Path:
    """Write `model.pt` (an llmcourse checkpoint) and `history.json` (config, history, `extra`) into `folder`.

    Both writes are atomic. Returns the folder. `extra` holds JSON values the recorder adds
    (the command, the machine).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / MODEL_NAME)
    record = {"format": HISTORY_FORMAT, "version": HISTORY_VERSION, "config": dataclasses.asdict(config),
              "history": dataclasses.asdict(history), **extra}
    text = json.dumps(record, indent=1) + "\n"
    atomic_write(folder / HISTORY_NAME, lambda file: file.write(text.encode("utf-8")))
    return folder


def load_induction_run(folder: str | os.PathLike) -> tuple[GPT, InductionHistory, InductionConfig]:
    """The model (eval mode, on the CPU), history and config that `save_induction_run` wrote."""
    folder = Path(folder)
    record = read_versioned_json(folder / HISTORY_NAME, HISTORY_FORMAT, HISTORY_VERSION,
                                 kind="induction history", error=ValueError,
                                 hint="record it with `python book/runs/record.py induction`")
    model = GPT.load(folder / MODEL_NAME, mlp_cls=NoMLP).eval()
    return model, InductionHistory(**record["history"]), InductionConfig(**record["config"])


def uniform_loss(vocab_size: int) -> float:
    """ln V: the loss of a uniform guess over V tokens, the best possible on random tokens."""
    return math.log(vocab_size)
