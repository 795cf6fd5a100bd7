"""Chapter 18: the capstone. Your own components in one model: pretrain, fine-tune, chat.

Over chapters 02-11 you wrote a tokenizer trainer, attention, a norm, an activation, AdamW with
its schedule and clipping, and sampling filters, each in an exercise notebook under `work/`. This
module reads those notebooks, checks each piece against the course's reference on random inputs,
plugs every piece that passes into the model's swap points, and runs the whole pipeline:

    tokenizer  (ex. 02)  train_merges, bpe_encode, decode -> the merges the tokenizer uses
    attention  (ex. 05)  attention_reference              -> GPT(attention_fn=...)
    norm       (ex. 07)  layer_norm                       -> GPT(norm_cls=...)
    mlp        (ex. 07)  gelu                             -> GPT(mlp_cls=...)
    optimizer  (ex. 09)  adamw_update, lr_at, clip_grad_norm -> Trainer(optimizer_parts=...)
    sampling   (ex. 11)  top_p_filter, min_p_filter       -> the chat's decoding

    pretrain (as cpu-tiny) -> SFT (as cpu-sft) -> DPO (as cpu-dpo) -> report card -> a short chat

A piece that is missing, unfinished, crashes or disagrees with the reference is replaced by the
reference, with one line saying which and why, so one slip never stops the run:

    python -m llmcourse capstone                      # work/ -> runs/capstone/: the book's cpu-tiny, cpu-sft
                                                      # and cpu-dpo runs (10 minutes recorded on 2 cores), plus
                                                      # what your slower parts add
    python -m llmcourse capstone --parts reference    # the same run with every reference part
    python -m llmcourse capstone --fast               # a tiny run, under a minute: does it all work?
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import io
import itertools
import math
import shutil
import signal
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import regex
import torch
from torch import Tensor, nn

from llmcourse import attention as reference_attention
from llmcourse import mlp as reference_mlp
from llmcourse import norm as reference_norm
from llmcourse import optim as reference_optim
from llmcourse import sampling as reference_sampling
from llmcourse import tokenizer as reference_tokenizer
from llmcourse.attention import KVCache
from llmcourse.checkpoint import CHECKPOINT_NAME, WEIGHTS_NAME, load_checkpoint
from llmcourse.checks import ArgumentError
from llmcourse.data.download import corpus
from llmcourse.data.prepare import prepare_data, split_tokens
from llmcourse.data.tinyworld import World, corpus_text
from llmcourse.data.tinyworld.chats import (Question, chats, grade_reply, preference_pairs, questions,
                                            unknown_questions)
from llmcourse.data.tokens import TokenFile, tokenize_to_file
from llmcourse.device import seed_everything
from llmcourse.evaluate import format_reports, report_card
from llmcourse.finetune import FINETUNE_CONFIGS, FinetuneConfig, FinetuneTrainer, chat_rows, render_chat
from llmcourse.mlp import MLP
from llmcourse.model import GPT, flops_per_token
from llmcourse.preference_train import PREFERENCE_CONFIGS, DPOTrainer, PreferenceConfig, pair_rows
from llmcourse.runs import TOKENIZER_NAME, tokenizer_of
from llmcourse.tokenizer import GPT4_SPLIT_PATTERN, SPECIAL_TOKENS, Tokenizer
from llmcourse.train import PEAK_BF16_FLOPS, OptimizerParts, Trainer
from llmcourse.train_config import CONFIGS, TrainConfig

__all__ = ["CAPSTONE_CONFIGS", "PARTS", "Assembly", "CapstoneConfig", "CapstoneResult", "CellProblem", "Part",
           "assemble", "format_result", "load_learner_module", "parse_parts", "run_capstone"]

STAGES = ("pretrain", "sft", "dpo")
CELL_TIME_LIMIT_S = 60  # a cell that runs longer is stopped and reported (where the OS has alarms)


# ---------------------------------------------------------------------------------- reading a notebook


@dataclass(frozen=True)
class CellProblem:
    """A cell whose work cannot be used: it raised (`error` is the exception's line) or it still
    holds the release's `raise NotImplementedError()` (`unfinished`). `names`: what it defines."""

    index: int
    grade_id: str
    names: frozenset[str]
    error: str = ""
    unfinished: bool = False

    def describe(self, name: str) -> str:
        """Why `name`, defined in this cell, cannot be used."""
        if self.unfinished:
            return f"{name} is not implemented yet (cell {self.index} still raises NotImplementedError)"
        return f"cell {self.index} ({self.grade_id}) raised {self.error}"


def load_learner_module(notebook_path: str | Path) -> tuple[types.ModuleType, list[CellProblem]]:
    """Run the cells of an exercise notebook that define your work, in a fresh module.

    Which cells run: the read-only set-up cells before the first answer cell (imports, constants,
    the course's helpers) and every answer cell (nbgrader `solution: true`, not `grade`), in order.
    Test cells (visible and hidden) and the demo cells after the tasks never run. Every exercise
    notebook of the course has this layout, so one rule fits all of them.

    A cell that raises is skipped and reported in the returned problems (with the cell's index and
    the exception's line), as is an answer cell still holding `raise NotImplementedError()`.
    What the cells print is swallowed. This runs YOUR code from YOUR notebook on YOUR machine with
    `exec`, like Jupyter would; it is not the grader, which runs submissions in a sandbox.
    """
    import nbformat  # imported here: only reading notebooks needs it

    path = Path(notebook_path)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}; start the exercise with python -m llmcourse course start "
                                f"{path.parent.name}")
    try:
        notebook = nbformat.read(path, as_version=4)
    except Exception as error:  # nbformat raises several kinds for a file that is not a notebook
        raise ArgumentError(f"{path} is not a readable notebook ({type(error).__name__}: {error}); "
                            "copy it afresh from exercises/") from None
    module = types.ModuleType(f"learner_{_identifier(path.stem)}", f"your work in {path}")
    module.__file__ = str(path)
    sys.modules[module.__name__] = module  # classes and dataclasses look their module up by name
    problems = []
    threads = torch.get_num_threads()  # set-up cells may call torch.set_num_threads(1): undo it after
    try:
        for index, cell in _cells_to_run(notebook.cells):
            problem = _run_cell(module, path, index, cell)
            if problem is not None:
                problems.append(problem)
    finally:
        torch.set_num_threads(threads)
    return module, problems


def _cells_to_run(cells: Sequence[Any]) -> list[tuple[int, Any]]:
    """(index, cell) of the set-up cells before the first answer cell, then every answer cell."""
    def nbgrader(cell: Any) -> dict:
        return cell.get("metadata", {}).get("nbgrader", {})

    def is_answer(cell: Any) -> bool:
        return cell.cell_type == "code" and nbgrader(cell).get("solution", False) and not nbgrader(cell).get("grade")

    first_answer = next((i for i, cell in enumerate(cells) if is_answer(cell)), len(cells))
    chosen = []
    for index, cell in enumerate(cells):
        if cell.cell_type != "code":
            continue
        is_setup = index < first_answer and not nbgrader(cell).get("grade")
        if is_setup or is_answer(cell):
            chosen.append((index, cell))
    return chosen


def _run_cell(module: types.ModuleType, path: Path, index: int, cell: Any) -> CellProblem | None:
    """Execute one cell in `module`'s namespace; a CellProblem if it raised or is unfinished."""
    source = _without_magics(cell.source)
    grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")
    names = _defined_names(source)
    unfinished = "raise NotImplementedError" in source
    try:
        code = compile(source, f"{path} cell {index}", "exec")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                _time_limit(CELL_TIME_LIMIT_S):
            exec(code, module.__dict__)  # noqa: S102 - the learner's own code, see load_learner_module
    except Exception as error:  # any failure of the learner's cell is reported, never raised
        return CellProblem(index, grade_id, names, error=_one_line(error))
    return CellProblem(index, grade_id, names, unfinished=True) if unfinished else None


def _without_magics(source: str) -> str:
    """The cell's Python: IPython lines (`%matplotlib`, `!pip ...`) become comments."""
    return "\n".join("# " + line if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _defined_names(source: str) -> frozenset[str]:
    """The top-level names a cell defines (functions, classes, assignments), read without running it."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return frozenset()
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {name.id for target in targets for name in ast.walk(target) if isinstance(name, ast.Name)}
    return frozenset(names)


@contextlib.contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in the block after `seconds` (only on the main thread of a POSIX system)."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise TimeoutError(f"the cell ran longer than {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _one_line(error: BaseException) -> str:
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _identifier(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


# ---------------------------------------------------------------------------------- adapters


class YourLayerNorm(nn.Module):
    """The course's LayerNorm parameters (a gain `weight` (C,), and a `bias` (C,) if asked for),
    normalised by your `layer_norm(x, weight, bias, eps)`: `(..., C) -> (..., C)`."""

    def __init__(self, dim: int, layer_norm: Callable[..., Tensor], eps: float = 1e-5, bias: bool = False) -> None:
        super().__init__()
        self.layer_norm, self.eps = layer_norm, eps
        self.weight = nn.Parameter(torch.ones(dim))  # the same names as LayerNorm: checkpoints fit both
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return self.layer_norm(x, self.weight, self.bias, self.eps)


class YourMLP(MLP):
    """The course's MLP (fc_in, fc_out, dropout) with your `gelu` between the two layers."""

    def __init__(self, n_embd: int, hidden: int, gelu: Callable[[Tensor], Tensor], bias: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__(n_embd, hidden, activation="gelu", bias=bias, dropout=dropout)
        self.gelu = gelu

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc_out(self.gelu(self.fc_in(x))))


class YourAdamW(reference_optim.AdamW):
    """The course's AdamW (parameter groups, state, checkpoints) with each tensor's step done by
    your `adamw_update(param, grad, exp_avg, exp_avg_sq, step, *, lr, betas, eps, weight_decay)`."""

    def __init__(self, params: Any, adamw_update: Callable[..., None], **settings: Any) -> None:
        super().__init__(params, **settings)
        self.adamw_update = adamw_update

    def _update(self, param: Tensor, grad: Tensor, lr: float, beta1: float, beta2: float, eps: float,
                weight_decay: float) -> None:
        state = self.state[param]
        if not state:  # the moments start at zero, as torch.optim.AdamW's
            state.update(step=0, exp_avg=torch.zeros_like(param), exp_avg_sq=torch.zeros_like(param))
        state["step"] = int(state["step"]) + 1
        self.adamw_update(param, grad, state["exp_avg"], state["exp_avg_sq"], state["step"], lr=lr,
                          betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)


def your_optimizer_factory(adamw_update: Callable[..., None]) -> Callable[[nn.Module, float, float], YourAdamW]:
    """`make_optimizer(model, lr, weight_decay)` building YourAdamW over the course's parameter
    groups, with the betas (0.9, 0.95) of `llmcourse.optim.make_optimizer`."""
    def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> YourAdamW:
        groups = reference_optim.param_groups(model, weight_decay)
        return YourAdamW(groups, adamw_update, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay)
    return make_optimizer


def your_attention_fn(attention_reference: Callable[..., tuple[Tensor, Tensor]]) -> Callable[..., Tensor]:
    """The model's `attention_fn(q, k, v, causal, mask=None) -> out` from your
    `attention_reference(q, k, v, mask, causal) -> (out, weights)`; q `(B, H, Tq, D)`."""
    def attention_fn(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, *, mask: Tensor | None = None) -> Tensor:
        return attention_reference(q, k, v, mask=mask, causal=causal)[0]
    return attention_fn


@dataclass(frozen=True)
class SamplingFilters:
    """The two filters the chat samples through: `top_p(logits, p)` and `min_p(logits, min_p)`,
    each `(B, V) -> (B, V)` with -inf on the tokens removed."""

    top_p: Callable[[Tensor, float], Tensor] = reference_sampling.top_p_filter
    min_p: Callable[[Tensor, float], Tensor] = reference_sampling.min_p_filter


@dataclass
class YourBPE:
    """A tokenizer trainer from your exercise-02 functions.

    Your `train_merges` learns merges from a text as one piece (no pre-tokens), recounting every
    pair after each merge, so it gets a sample of the corpus (`sample_chars`, shrunk so it finishes
    in about `budget_s` at the speed measured by the check). The tokenizer built from your merges
    cuts text into pre-tokens (the GPT-4 pattern) before merging, as the course's does, so a merge
    that crosses a word boundary is never used. Its encoding and decoding are the reference's code
    (fast, cached, saved to a file); the check proved your `bpe_encode` and `decode` give the same ids
    and text.
    """

    train_merges: Callable[[str, int], list[tuple[int, int]]]
    bpe_encode: Callable[[bytes, dict], list[int]]
    decode: Callable[[list[int], list[tuple[int, int]]], str]
    seconds_per_char_merge: float = 0.0  # measured by the check

    def sample_chars(self, n_merges: int, most: int, budget_s: float = 20.0) -> int:
        """How much text to learn `n_merges` merges from: `most`, or less if that would take longer than `budget_s`."""
        affordable = budget_s / max(self.seconds_per_char_merge * n_merges, 1e-12)
        return int(min(most, max(affordable, 5_000)))  # below 5,000 characters the merges mean little

    def train(self, text: str, vocab_size: int) -> Tokenizer:
        """A tokenizer of `vocab_size` ids (specials included) with the merges your train_merges learns from `text`."""
        merges = self.train_merges(text, vocab_size - 256 - len(SPECIAL_TOKENS))
        return Tokenizer(merges, GPT4_SPLIT_PATTERN, SPECIAL_TOKENS)


# ---------------------------------------------------------------------------------- checks

CHECK_TOLERANCE = 1e-4  # float32 sums in another order differ by ~1e-6; a real mistake by far more


class PartMismatch(Exception):
    """A learner's part disagrees with the reference; the message says how."""


def _seeded(*shape: int, seed: int) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _compare(name: str, yours: Tensor, reference: Tensor, what: str = "on random inputs") -> None:
    """Raise PartMismatch unless `yours` has the reference's shape and values (inf where it has inf)."""
    if not isinstance(yours, Tensor):
        raise PartMismatch(f"{name} returned {type(yours).__name__}, not a tensor")
    if yours.shape != reference.shape:
        raise PartMismatch(f"{name} returned shape {tuple(yours.shape)}, the reference {tuple(reference.shape)} {what}")
    finite = torch.isfinite(reference)
    if not torch.equal(torch.isfinite(yours), finite):
        raise PartMismatch(f"{name} removes (sets to -inf) other entries than the reference {what}")
    diff = (yours[finite].double() - reference[finite].double()).abs().max().item() if finite.any() else 0.0
    if not diff <= CHECK_TOLERANCE:  # `not <=` also catches nan
        raise PartMismatch(f"{name} differs from the reference (max |diff| {diff:.3g} {what})")


def check_tokenizer(bpe: YourBPE) -> None:
    """Your merges equal `Tokenizer.train`'s on the whole text as one piece; your bpe_encode gives
    the reference's ids for every pre-token of a sample; your decode gives the text back."""
    text = corpus_text(3_000, seed=1)
    started = time.perf_counter()
    merges = [tuple(pair) for pair in bpe.train_merges(text, 60)]
    bpe.seconds_per_char_merge = (time.perf_counter() - started) / (len(text) * 60)
    with _quiet_warnings():
        expected = Tokenizer.train(text, 256 + 60, special_tokens=(), pattern=r"(?s).+").merges
    if merges != expected:
        first = next((i for i, (a, b) in enumerate(zip(merges, expected)) if a != b), min(len(merges), len(expected)))
        raise PartMismatch(f"train_merges differs from the reference from merge {first} on "
                           f"(of {len(expected)} learned from 3,000 characters of TinyWorld)")
    ranks = {pair: 256 + i for i, pair in enumerate(merges)}
    sample = corpus_text(1_000, seed=2) + " naïve 日本 🐈"
    ids = []
    for piece in regex.findall(GPT4_SPLIT_PATTERN, sample):  # the pre-tokens the model's tokenizer encodes
        data = piece.encode("utf-8")
        yours, reference = bpe.bpe_encode(data, ranks), reference_tokenizer.bpe_encode(data, ranks)
        if list(yours) != reference:
            raise PartMismatch(f"bpe_encode gives {list(yours)[:8]} for {piece!r}, the reference {reference[:8]}")
        ids += reference
    if bpe.decode(ids, merges) != sample:
        raise PartMismatch("decode(encode(text)) is not the text on a sample of TinyWorld")
    if bpe.decode([195], merges) != "\ufffd":
        raise PartMismatch("decode of a broken UTF-8 byte is not U+FFFD")


def check_attention(attention_fn: Callable[..., Tensor]) -> None:
    """The same output as the course's attention on random q, k, v: a full causal pass, queries
    continuing a KV cache (Tq < Tk), and a padded batch (a bool mask)."""
    q, k, v = (_seeded(2, 3, 6, 8, seed=seed) for seed in (1, 2, 3))
    real = torch.tensor([[True] * 6, [False, False, True, True, True, True]])
    cases = [("causal self-attention", q, k, v, None),
             ("queries after a KV cache", q[:, :, -2:], k, v, None),
             ("a padded batch", q, k, v, reference_attention.padding_mask(real, 6))]
    for what, q_, k_, v_, mask in cases:
        reference = reference_attention.attention_reference(q_, k_, v_, mask=mask, causal=True)[0]
        if mask is not None:  # a padding query attends only to itself; its output is never read
            reference = reference * real[:, None, -q_.shape[-2]:, None]
        yours = attention_fn(q_, k_, v_, True, mask=mask)
        if mask is not None and isinstance(yours, Tensor) and yours.shape == reference.shape:
            yours = yours * real[:, None, -q_.shape[-2]:, None]
        _compare("attention_reference", yours, reference, f"on random inputs, {what}")


def check_norm(norm_cls: Callable[[int], nn.Module]) -> None:
    """Your layer_norm, with a random gain, matches the course's on random `(B, T, C)` inputs."""
    norm = norm_cls(16)
    with torch.no_grad():
        norm.weight.copy_(_seeded(16, seed=5))
    x = _seeded(2, 5, 16, seed=4) * 3 + 1
    reference = reference_norm.layer_norm(x, norm.weight, None)
    _compare("layer_norm", norm(x), reference)


def check_mlp(gelu: Callable[[Tensor], Tensor]) -> None:
    """Your gelu matches the course's (tanh approximation) on random inputs, large ones included."""
    x = _seeded(4, 64, seed=6) * 4
    _compare("gelu", gelu(x), reference_mlp.gelu(x))


def check_optimizer(parts: OptimizerParts) -> None:
    """Three steps of your AdamW match torch.optim.AdamW; your lr_at matches the course's schedule on
    every step of a short run; your clip_grad_norm returns the course's norm and clipped gradients."""
    _check_adamw(parts.make_optimizer)
    schedule = dict(max_lr=1e-3, warmup_steps=10, max_steps=50, min_lr=1e-4)
    for step in range(60):
        yours, reference = parts.lr_at(step, **schedule), reference_optim.lr_at(step, **schedule)
        if not math.isclose(yours, reference, rel_tol=1e-6, abs_tol=1e-12):
            raise PartMismatch(f"lr_at({step}) is {yours}, the reference {reference} "
                               "(warmup 10 steps to 1e-3, cosine to 1e-4 at step 50)")
    for max_norm in (0.5, 100.0):  # clipped, and left alone
        mine, theirs = _with_gradients(seed=9), _with_gradients(seed=9)
        what = f"(max_norm={max_norm}: the norm returned)"
        _compare("clip_grad_norm", torch.as_tensor(parts.clip_grad_norm(mine, max_norm)).float(),
                 reference_optim.clip_grad_norm(theirs, max_norm), what)
        for param, reference in zip(mine, theirs):
            _compare("clip_grad_norm", param.grad, reference.grad, f"(max_norm={max_norm}: the clipped gradients)")


def _check_adamw(make_optimizer: Callable[[nn.Module, float, float], torch.optim.Optimizer]) -> None:
    """Three steps on random gradients: a decayed matrix and a non-decayed vector, as torch's AdamW moves them."""
    mine, theirs = _with_gradients(seed=7), _with_gradients(seed=7)
    yours = make_optimizer(nn.ParameterList(mine), 1e-2, 0.1)
    groups = [{"params": [theirs[0]], "weight_decay": 0.1}, {"params": [theirs[1]], "weight_decay": 0.0}]
    reference = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95))
    for step in range(3):
        for params, optimizer in ((mine, yours), (theirs, reference)):
            for i, param in enumerate(params):
                param.grad = _seeded(*param.shape, seed=100 * step + i)
            optimizer.step()
    for param, expected in zip(mine, theirs):
        _compare("adamw_update", param.detach(), expected.detach(), "after 3 steps on random gradients")


def _with_gradients(seed: int) -> list[nn.Parameter]:
    """A (3, 4) matrix and a (7,) vector, random, each with a random gradient."""
    params = [nn.Parameter(_seeded(3, 4, seed=seed)), nn.Parameter(_seeded(7, seed=seed + 1))]
    for i, param in enumerate(params):
        param.grad = _seeded(*param.shape, seed=seed + 10 + i) * 2
    return params


def check_sampling(filters: SamplingFilters) -> None:
    """Your top_p_filter and min_p_filter keep the same tokens as the course's on random logits."""
    logits = _seeded(4, 50, seed=11) * 3
    for p in (0.3, 0.9, 1.0):
        _compare("top_p_filter", filters.top_p(logits, p), reference_sampling.top_p_filter(logits, p), f"(p={p})")
    for min_p in (0.0, 0.05, 0.5):
        _compare("min_p_filter", filters.min_p(logits, min_p), reference_sampling.min_p_filter(logits, min_p),
                 f"(min_p={min_p})")


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ---------------------------------------------------------------------------------- the parts


@dataclass(frozen=True)
class Part:
    """One swap point the model can take from you: the exercise notebook and the names it needs,
    `adapt(module)` turning them into the swap object, and `check(swap)` (raises PartMismatch)."""

    name: str
    exercise: str
    needs: tuple[str, ...]
    feeds: str
    adapt: Callable[[Any], Any]
    check: Callable[[Any], None]


PARTS: dict[str, Part] = {part.name: part for part in [
    Part("tokenizer", "02-tokenization", ("train_merges", "bpe_encode", "decode"), "the tokenizer's merges",
         lambda m: YourBPE(m.train_merges, m.bpe_encode, m.decode), check_tokenizer),
    Part("attention", "05-attention", ("attention_reference",), "GPT(attention_fn=...)",
         lambda m: your_attention_fn(m.attention_reference), check_attention),
    Part("norm", "07-mlp-residual-norm", ("layer_norm",), "GPT(norm_cls=...)",
         lambda m: lambda dim: YourLayerNorm(dim, m.layer_norm), check_norm),
    Part("mlp", "07-mlp-residual-norm", ("gelu",), "GPT(mlp_cls=...)", lambda m: m.gelu, check_mlp),
    Part("optimizer", "09-training", ("adamw_update", "lr_at", "clip_grad_norm"), "Trainer(optimizer_parts=...)",
         lambda m: OptimizerParts(your_optimizer_factory(m.adamw_update), m.lr_at, m.clip_grad_norm), check_optimizer),
    Part("sampling", "11-decoding", ("top_p_filter", "min_p_filter"), "the chat's top-p and min-p",
         lambda m: SamplingFilters(m.top_p_filter, m.min_p_filter), check_sampling),
]}


def parse_parts(text: str) -> list[str]:
    """`--parts`: "all", "reference" (none of yours) or names separated by commas."""
    if text == "all":
        return list(PARTS)
    if text == "reference":
        return []
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in PARTS]
    if unknown or not names:
        raise ArgumentError(f"--parts {text!r}: unknown part(s) {unknown}; use all, reference, or names among "
                            f"{', '.join(PARTS)} separated by commas (e.g. attention,norm)")
    return names


@dataclass
class Assembly:
    """Which parts are yours: `swaps` maps a part's name to its swap object (only the parts of yours
    that passed), `table` each part to "yours" or "reference (why)", `messages` one line per fallback."""

    swaps: dict[str, Any] = field(default_factory=dict)
    table: dict[str, str] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    @property
    def model_swaps(self) -> dict[str, Any]:
        """The keyword arguments for `GPT(config, **model_swaps)`."""
        swaps = {}
        if "attention" in self.swaps:
            swaps["attention_fn"] = self.swaps["attention"]
        if "norm" in self.swaps:
            swaps["norm_cls"] = self.swaps["norm"]
        if "mlp" in self.swaps:
            gelu = self.swaps["mlp"]
            swaps["mlp_cls"] = lambda config: YourMLP(config.n_embd, config.mlp_hidden_size, gelu, bias=config.bias,
                                                      dropout=config.dropout)
        return swaps

    @property
    def optimizer_parts(self) -> OptimizerParts | None:
        return self.swaps.get("optimizer")

    @property
    def sampling(self) -> SamplingFilters:
        return self.swaps.get("sampling", SamplingFilters())


def assemble(work_dir: str | Path, parts: str | Sequence[str] = "all") -> Assembly:
    """Read your notebooks in `work_dir` (`work/NN-slug/NN-slug.ipynb`) and check every part asked
    for; each one that passes goes into the assembly, the others fall back to the reference."""
    wanted = parse_parts(parts) if isinstance(parts, str) else list(parts)
    parse_parts(",".join(wanted) or "reference")  # the same check for a list
    assembly, loaded = Assembly(), {}
    for name, part in PARTS.items():
        if name not in wanted:
            assembly.table[name] = "reference (not asked for)"
            continue
        notebook = Path(work_dir) / part.exercise / f"{part.exercise}.ipynb"
        if notebook not in loaded:
            loaded[notebook] = _load_or_reason(notebook)
        swap, reason = _try_part(part, *loaded[notebook])
        if reason is None:
            assembly.swaps[name], assembly.table[name] = swap, "yours"
        else:
            assembly.table[name] = f"reference ({reason})"
            assembly.messages.append(f"{name}: {notebook}: {reason}; using the reference")
    return assembly


def _load_or_reason(notebook: Path) -> tuple[Any, Any]:
    """(module, problems) of a notebook, or (None, why it could not be read)."""
    if not notebook.is_file():
        return None, f"no notebook (start the exercise with python -m llmcourse course start {notebook.parent.name})"
    try:
        return load_learner_module(notebook)
    except ArgumentError as error:
        return None, str(error)


def _try_part(part: Part, module: types.ModuleType | None, problems: Any) -> tuple[Any, str | None]:
    """(the part's swap object, None) if your work passes its check, else (None, why not)."""
    if module is None:
        return None, problems
    for name in part.needs:
        problem = next((p for p in problems if name in p.names), None)
        if problem is not None:
            return None, problem.describe(name)
        if not callable(getattr(module, name, None)):
            return None, f"defines no function {name}"
    try:
        swap = part.adapt(module)
        part.check(swap)
    except PartMismatch as mismatch:
        return None, str(mismatch)
    except Exception as error:  # your code crashed on the check's inputs
        return None, f"raised {_one_line(error)} when checked on random inputs"
    return swap, None


# ---------------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class CapstoneConfig:
    """The three training runs and what is measured after them.

    pretrain, sft, dpo: the runs' configs (their `out_dir` and `init_from` are set by `run_capstone`).
    tokenizer_chars: the most text your `train_merges` learns from (see `YourBPE`).
    report_chars, report_stories: the report card's held-out text and sampled stories.
    """

    pretrain: TrainConfig
    sft: FinetuneConfig
    dpo: PreferenceConfig
    tokenizer_chars: int = 100_000
    report_chars: int = 100_000
    report_stories: int = 16


CAPSTONE_CONFIGS: dict[str, CapstoneConfig] = {
    # The book's CPU runs, back to back: cpu-tiny, cpu-sft, cpu-dpo (no sampling during pretraining).
    "cpu": CapstoneConfig(
        pretrain=dataclasses.replace(CONFIGS["cpu-tiny"], sample_every=0),
        sft=FINETUNE_CONFIGS["cpu-sft"],
        dpo=PREFERENCE_CONFIGS["cpu-dpo"],
    ),
    # A few steps of a tiny model at every stage: checks that everything runs, in well under a minute.
    "fast": CapstoneConfig(
        pretrain=dataclasses.replace(
            CONFIGS["cpu-tiny"], corpus_chars=300_000, tokenizer_chars=100_000, vocab_size=512, block_size=256,
            model={"n_layer": 1, "n_head": 2, "n_embd": 32}, batch_size=8, max_steps=20, warmup_steps=2,
            eval_every=10, eval_batches=2, sample_every=0, checkpoint_every=0, log_every=5),
        sft=dataclasses.replace(FINETUNE_CONFIGS["cpu-sft"], n_chats=300, batch_size=8, max_steps=10, warmup_steps=2,
                                eval_every=5, eval_batches=2, checkpoint_every=0, log_every=5),
        dpo=dataclasses.replace(PREFERENCE_CONFIGS["cpu-dpo"], n_pairs=100, batch_size=4, max_steps=4, warmup_steps=1,
                                eval_every=2, eval_batches=1, checkpoint_every=0, log_every=2),
        tokenizer_chars=10_000, report_chars=2_000, report_stories=2,
    ),
}


@dataclass
class CapstoneResult:
    """What `run_capstone` did: the parts used, each stage's seconds, the report card (a dict, as
    `evaluate.report_card`), the chat transcript (question, reply, grade) and where the runs are."""

    parts: dict[str, str]
    messages: list[str]
    stage_seconds: dict[str, float]
    report_card: dict
    chat: list[tuple[str, str, str]]
    out_dir: Path
    notes: list[str] = field(default_factory=list)
    config: str = "cpu"


def run_capstone(work_dir: str | Path, out_dir: str | Path, *, parts: str | Sequence[str] = "all", fast: bool = False,
                 progress: bool = True, force: bool = False) -> CapstoneResult:
    """Pretrain, fine-tune (SFT, then DPO), evaluate and chat with a model built from your parts.

    work_dir: where your exercise notebooks are (`work/NN-slug/NN-slug.ipynb`). out_dir: each stage
    writes its run to out_dir/<stage>/ (checkpoints, metrics, tokenizer, model.pt); an out_dir that
    holds a run already is refused unless `force`, which replaces those stage folders.
    fast: the tiny configuration (seconds per stage) instead of the book's CPU runs.
    """
    name = "fast" if fast else "cpu"
    config, out_dir = CAPSTONE_CONFIGS[name], Path(out_dir)
    _claim_out_dir(out_dir, force)
    say = print if progress else (lambda *args, **kwargs: None)
    assembly = assemble(work_dir, parts)
    say(format_parts(assembly.table))
    for message in assembly.messages:
        say(message)
    seconds, notes = {}, []
    swaps, optimizer_parts = assembly.model_swaps, assembly.optimizer_parts

    say(f"\n== pretraining: {config.pretrain.max_steps} steps ==")
    started = time.perf_counter()
    pretrained = _pretrain(config, assembly, out_dir / "pretrain", progress, notes)
    seconds["pretrain"] = time.perf_counter() - started

    final = pretrained
    for stage, kind, stage_config, items in (("sft", FittingFinetuneTrainer, config.sft, "chapter 13's chats"),
                                             ("dpo", FittingDPOTrainer, config.dpo, "chapter 14's pairs")):
        say(f"\n== {'supervised fine-tuning' if stage == 'sft' else 'DPO'}: {stage_config.max_steps} steps ==")
        started = time.perf_counter()
        stage_config = dataclasses.replace(stage_config, init_from=str(final), out_dir=str(out_dir / stage))
        trainer = kind(stage_config, progress=progress, model_swaps=swaps, optimizer_parts=optimizer_parts)
        if trainer.dropped:
            notes.append(f"{stage}: {trainer.dropped} of {items} did not fit the context with this tokenizer "
                         "and were left out")
        final = _finetune(trainer)  # the next stage starts from this one's weights
        seconds[stage] = time.perf_counter() - started

    say("\n== report card and chat ==")
    started = time.perf_counter()
    model, tokenizer = _load(final, swaps)
    card = report_card(model, tokenizer, chat=True, world_seed=config.dpo.world_seed, text_chars=config.report_chars,
                       stories=config.report_stories)
    transcript = scripted_chat(model, tokenizer, assembly.sampling, world_seed=config.dpo.world_seed)
    seconds["report card and chat"] = time.perf_counter() - started
    return CapstoneResult(assembly.table, assembly.messages, seconds, card, transcript, out_dir, notes, name)


def _claim_out_dir(out_dir: Path, force: bool) -> None:
    """Refuse to overwrite an earlier capstone run in `out_dir`; with `force`, remove its stage folders."""
    earlier = [out_dir / stage for stage in STAGES if (out_dir / stage).exists()]
    if earlier and not force:
        folders = ", ".join(f"{folder.name}/" for folder in earlier)
        raise ArgumentError(f"--out {out_dir} already holds a capstone run ({folders}); "
                            "pass --force to replace it, or choose another --out")
    for folder in earlier:
        shutil.rmtree(folder)
    out_dir.mkdir(parents=True, exist_ok=True)


def _pretrain(config: CapstoneConfig, assembly: Assembly, out_dir: Path, progress: bool, notes: list[str]) -> Path:
    """The pretraining run with your parts: your tokenizer (or the course's), your model parts and
    optimizer. Returns its checkpoint."""
    train_config = dataclasses.replace(config.pretrain, out_dir=str(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer, tokens = _tokens(train_config, assembly.swaps.get("tokenizer"), config.tokenizer_chars, out_dir,
                                progress, notes)
    train_tokens, val_tokens = split_tokens(tokens, train_config.val_fraction, train_config.block_size)
    seed_everything(train_config.seed)  # the initial weights a Trainer would draw for this config
    model = GPT(train_config.gpt_config(tokenizer.vocab_size), **assembly.model_swaps)
    trainer = Trainer(train_config, model=model, tokenizer=tokenizer, train_tokens=train_tokens, val_tokens=val_tokens,
                      progress=progress, optimizer_parts=assembly.optimizer_parts)
    trainer.tokenizer_path = out_dir / TOKENIZER_NAME  # the checkpoint records it, so fine-tuning finds it
    trainer.train()
    return out_dir / CHECKPOINT_NAME


def _tokens(config: TrainConfig, bpe: YourBPE | None, most_chars: int, out_dir: Path, progress: bool,
            notes: list[str]) -> tuple[Tokenizer, np.ndarray]:
    """The tokenizer (saved in out_dir) and the corpus's token ids: the course's from the data cache,
    or one with your merges, the corpus tokenized into out_dir."""
    if bpe is None:
        tokenizer_path, tokens_path = prepare_data(config, progress=progress)
        tokenizer = Tokenizer.load(tokenizer_path)
        tokenizer.save(out_dir / TOKENIZER_NAME)
        return tokenizer, TokenFile.open(tokens_path, tokenizer=tokenizer).tokens
    n_merges = config.vocab_size - 256 - len(SPECIAL_TOKENS)
    sample_chars = bpe.sample_chars(n_merges, most=most_chars)
    started = time.perf_counter()
    tokenizer = bpe.train(corpus_text(sample_chars, seed=0), config.vocab_size)
    notes.append(f"tokenizer: your train_merges learned {len(tokenizer.merges)} merges from {sample_chars:,} "
                 f"characters of TinyWorld in {time.perf_counter() - started:.1f} s (the course's learns from "
                 f"{min(config.tokenizer_chars, config.corpus_chars):,}, split into words first)")
    tokenizer.save(out_dir / TOKENIZER_NAME)
    token_file = tokenize_to_file(corpus(config.corpus, config.corpus_chars), tokenizer, out_dir / "tokens.bin",
                                  progress=progress, corpus=f"{config.corpus}:{config.corpus_chars}")
    return tokenizer, token_file.tokens


def fitting(items: list, length_of: Callable[[Any], int], room: int) -> list:
    """The items whose rendered length (`length_of`) fits `room` tokens. A tokenizer learned from a
    small sample (yours: see `YourBPE`) cuts text into more tokens than the course's, so a few of
    chapter 13's longest chats no longer fit the model's context; they are left out, not cut."""
    return [item for item in items if length_of(item) <= room]


class FittingFinetuneTrainer(FinetuneTrainer):
    """Chapter 13's SFT on the chats that fit the context with this run's tokenizer (`fitting`)."""

    def make_data(self, config: FinetuneConfig, tokenizer: Tokenizer) -> tuple[Any, Any]:
        n_val = max(1, round(config.n_chats * config.val_fraction))
        all_chats = list(itertools.islice(chats(config.world_seed, unknown_share=config.unknown_share),
                                          config.n_chats + n_val))
        kept = fitting(all_chats, lambda chat: len(render_chat(tokenizer, chat)[0]), config.block_size + 1)
        self.dropped = len(all_chats) - len(kept)
        n_train = round(len(kept) * config.n_chats / (config.n_chats + n_val))
        return (chat_rows(tokenizer, kept[:n_train], config.block_size),
                chat_rows(tokenizer, kept[n_train:], config.block_size))


class FittingDPOTrainer(DPOTrainer):
    """Chapter 14's DPO on the pairs whose chosen and rejected chats fit the context (`fitting`)."""

    def make_data(self, config: PreferenceConfig, tokenizer: Tokenizer) -> tuple[Any, Any]:
        n_val = max(1, round(config.n_pairs * config.val_fraction))
        pairs = list(itertools.islice(preference_pairs(config.world_seed), config.n_pairs + n_val))

        def longest(pair: Any) -> int:
            return max(len(render_chat(tokenizer, [*pair.prompt, {"role": "assistant", "content": reply}])[0])
                       for reply in (pair.chosen, pair.rejected))

        kept = fitting(pairs, longest, config.block_size)
        self.dropped = len(pairs) - len(kept)
        n_train = round(len(kept) * config.n_pairs / (config.n_pairs + n_val))
        return (pair_rows(tokenizer, kept[:n_train], config.block_size),
                pair_rows(tokenizer, kept[n_train:], config.block_size))


def _finetune(trainer: FinetuneTrainer) -> Path:
    """Train, export out_dir/model.pt and return its path."""
    try:
        trainer.train()
        return trainer.export()
    finally:
        trainer.close()


def _load(path: Path, swaps: dict[str, Any]) -> tuple[GPT, Tokenizer]:
    """The model at `path` rebuilt with your parts (in eval mode) and its tokenizer."""
    checkpoint = load_checkpoint(path)
    model = GPT.from_checkpoint(checkpoint, source=path, **swaps).eval()
    return model, Tokenizer.load(tokenizer_of(path, checkpoint["tokenizer"]))


# ---------------------------------------------------------------------------------- the chat

CHAT_SETTINGS = {"temperature": 0.7, "top_p": 0.9, "min_p": 0.1}


def chat_questions(world_seed: int = 0) -> list[Question]:
    """Four questions: three facts of the world (two taught in SFT, one only stated in pretraining)
    and one about an entity that does not exist, whose right answer is a refusal."""
    world = World.generate(world_seed)
    taught, relations = [], set()
    for question in questions(world, "sft"):
        if question.relation not in relations and len(taught) < 2:
            taught.append(question)
            relations.add(question.relation)
    return taught + questions(world, "heldout")[:1] + unknown_questions(world)[:1]


@torch.no_grad()
def sample_reply(model: GPT, tokenizer: Tokenizer, text: str, filters: SamplingFilters, *, temperature: float,
                 top_p: float, min_p: float, max_new_tokens: int = 40, seed: int = 0) -> str:
    """The model's reply to the user message `text`, sampled token by token through `filters`:
    logits / temperature -> top_p -> min_p -> a draw, until a special token (e.g. <|end|>)."""
    ids = render_chat(tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)[0]
    max_new_tokens = min(max_new_tokens, model.config.block_size - len(ids))
    generator = torch.Generator().manual_seed(seed)
    cache = KVCache(model.config.n_layer)
    logits = model(torch.tensor([ids]), kv_cache=cache)[0][:, -1]  # (1, V): the first reply token's
    reply: list[int] = []
    for _ in range(max_new_tokens):
        logits = reference_sampling.apply_temperature(logits.float(), temperature)
        logits = filters.min_p(filters.top_p(logits, top_p), min_p)
        token = reference_sampling.sample(logits, generator)  # (1,)
        if token.item() in tokenizer.special_ids:
            break
        reply.append(token.item())
        logits = model(token[:, None], kv_cache=cache)[0][:, -1]
    return tokenizer.decode(reply)


def scripted_chat(model: GPT, tokenizer: Tokenizer, filters: SamplingFilters,
                  world_seed: int = 0) -> list[tuple[str, str, str]]:
    """(question, reply, grade) for each of `chat_questions`, sampled with CHAT_SETTINGS."""
    transcript = []
    for seed, question in enumerate(chat_questions(world_seed)):
        reply = sample_reply(model, tokenizer, question.text, filters, seed=seed, **CHAT_SETTINGS)
        transcript.append((question.text, reply, grade_reply(question, reply)))
    return transcript


# ---------------------------------------------------------------------------------- printing


def format_parts(table: dict[str, str]) -> str:
    """The part table: each part, the exercise it comes from, and whose it is."""
    width = max(len(name) for name in table)
    lines = ["part        exercise              used"]
    for name, status in table.items():
        lines.append(f"{name.ljust(max(width, 10))}  {PARTS[name].exercise.ljust(20)}  {status}")
    return "\n".join(lines)


def gpu_minutes(config: TrainConfig, tokens: float, passes: float = 1.0) -> float:
    """Estimated minutes on one H100 for `tokens` trained tokens of `config`'s model, as chapter 10
    estimates: 6·N FLOPs per token (`flops_per_token`) at 40% of the bf16 peak; `passes` counts
    extra forward-only work as a fraction of training (DPO's frozen reference: 1/3)."""
    per_token = flops_per_token(config.gpt_config(config.vocab_size), config.block_size) * passes
    return tokens * per_token / (0.4 * PEAK_BF16_FLOPS["H100"]) / 60


def gpu_recipe(out: str = "runs/gpu") -> str:
    """The same pipeline at GPU scale (gpu-small's model, then the course's SFT and DPO settings), as
    commands with reference parts, not run here; each with its estimated time (`gpu_minutes`)."""
    config = CONFIGS["gpu-small"]
    sft, dpo = FINETUNE_CONFIGS["cpu-sft"], PREFERENCE_CONFIGS["cpu-dpo"]
    pretrain_tokens = config.max_steps * config.tokens_per_step
    sft_tokens = sft.max_steps * sft.batch_size * config.block_size  # packed rows of the base model's context
    dpo_tokens = dpo.max_steps * dpo.batch_size * 2 * config.block_size  # chosen and rejected, at most a context each
    return "\n".join([
        f"python -m llmcourse pretrain --config gpu-small out_dir={out}-small",
        f"    estimate: {gpu_minutes(config, pretrain_tokens):.0f} minutes ({pretrain_tokens / 1e6:,.0f} M tokens)",
        f"python -m llmcourse finetune --config cpu-sft init_from={out}-small/ckpt.pt out_dir={out}-sft",
        f"    estimate: under {max(1, math.ceil(gpu_minutes(config, sft_tokens)))} minute(s) "
        f"(at most {sft_tokens / 1e6:,.0f} M tokens)",
        f"python -m llmcourse dpo --config cpu-dpo init_from={out}-sft/model.pt out_dir={out}-dpo",
        f"    estimate: under {max(1, math.ceil(gpu_minutes(config, dpo_tokens, passes=4 / 3)))} minute(s) "
        f"(at most {dpo_tokens / 1e6:,.1f} M tokens)",
        f"python -m llmcourse eval --checkpoint {out}-dpo/model.pt",
        f"python -m llmcourse chat --checkpoint {out}-dpo/model.pt",
        "(estimates: chapter 10's FLOPs per token at 40% of one H100's bf16 peak; your own parts run "
        "slower than the fused reference kernels)",
    ])


def format_result(result: CapstoneResult) -> str:
    """Everything the command prints at the end: parts, times, report card, chat and the GPU recipe."""
    times = [f"  {stage:<22} {seconds:7.1f} s" for stage, seconds in result.stage_seconds.items()]
    times.append(f"  {'total':<22} {sum(result.stage_seconds.values()):7.1f} s")
    chat = []
    for question, reply, grade in result.chat:
        chat += [f"you>   {question}", f"model> {reply}    [{grade}]"]
    settings = ", ".join(f"{key} {value}" for key, value in CHAT_SETTINGS.items())
    sections = [
        ("your parts", [format_parts(result.parts), *result.messages, *result.notes]),
        ("time per stage", times),
        ("report card", [format_reports({"capstone": result.report_card})]),
        (f"chat (sampled: {settings})", chat),
        ("runs", [f"  {result.out_dir / stage}/" for stage in STAGES]
         + [f"  chat with it: python -m llmcourse chat --checkpoint {result.out_dir / 'dpo' / WEIGHTS_NAME}"]),
        ("the same on one GPU (a recipe, not run)", [gpu_recipe()]),
    ]
    return "\n\n".join(f"== {title} ==\n" + "\n".join(lines) for title, lines in sections)
