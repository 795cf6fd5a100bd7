"""Chapters 09-10: reading what a training run left behind, and using the model it trained.

A run's folder (its `out_dir`) holds

    ckpt.pt         the checkpoint (`llmcourse.checkpoint`): weights, optimizer, step, random states
    tokenizer.json  a copy of the tokenizer the model was trained with
    metrics.jsonl   the log: one JSON record per line (`read_metrics`)

`load_model` turns a checkpoint back into a model and its tokenizer, `generate_text` writes with
them, and `save_weights` exports the weights alone (with the tokenizer beside them) to share.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from llmcourse.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, save_checkpoint
from llmcourse.device import default_device
from llmcourse.files import atomic_write, sha256_file
from llmcourse.model import GPT
from llmcourse.tokenizer import ENDOFTEXT, Tokenizer

__all__ = ["METRICS_NAME", "TOKENIZER_NAME", "generate_text", "load_model", "read_metrics", "save_weights",
           "tokenizer_of"]

METRICS_NAME = "metrics.jsonl"
TOKENIZER_NAME = "tokenizer.json"


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of out_dir/metrics.jsonl, oldest first: step records (loss, lr, grad_norm,
    tokens_per_s, mfu on a known GPU), eval records (train_loss, val_loss) and sample records."""
    path = Path(out_dir) / METRICS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no metrics at {path}; train first (python -m llmcourse pretrain)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_model(path: str | os.PathLike, device: torch.device | str | None = None) -> tuple[GPT, Tokenizer]:
    """The trained model (in eval mode, on `device`, default: the best available) and its tokenizer,
    from a training checkpoint or a `save_weights` file. On a CPU its weights are laid out for
    decoding (`GPT.input_major_weights_`: same values, faster matrix-vector products)."""
    path = Path(path)
    checkpoint = load_checkpoint(path)
    model = GPT.from_checkpoint(checkpoint, source=path).to(device or default_device()).eval()
    tokenizer = Tokenizer.load(tokenizer_of(path, checkpoint["tokenizer"]))
    if next(model.parameters()).device.type == "cpu":
        model.input_major_weights_()
    return model, tokenizer


def tokenizer_of(checkpoint_path: str | os.PathLike, entry: dict[str, Any] | None) -> Path:
    """The tokenizer file of the checkpoint at `checkpoint_path`, whose tokenizer `entry` is
    {"path", "sha256"}: the file the run used or, if that has gone (a run folder that was moved or
    copied), the `tokenizer.json` beside the checkpoint; either must have the recorded SHA-256."""
    checkpoint_path = Path(checkpoint_path)
    if entry is None:
        raise CheckpointError(f"{checkpoint_path} records no tokenizer file (GPT.save, or a Trainer given "
                              "a tokenizer object); rebuild the model with GPT.load and use the tokenizer "
                              "it was trained with")
    candidates = [Path(entry["path"])] if entry["path"] else []
    candidates.append(checkpoint_path.parent / TOKENIZER_NAME)
    found = [candidate for candidate in candidates if candidate.is_file()]
    if not found:
        wanted = " or ".join(str(candidate) for candidate in candidates)
        raise CheckpointError(f"{checkpoint_path}: its tokenizer file is missing (looked for {wanted}); "
                              f"copy the run's {TOKENIZER_NAME} beside the checkpoint, or retrain")
    matching = next((candidate for candidate in found if sha256_file(candidate) == entry["sha256"]), None)
    if matching is None:
        raise CheckpointError(f"{checkpoint_path}: the tokenizer at {found[0]} is not the one it was trained "
                              "with (different sha256); restore the original file")
    return matching


def save_weights(checkpoint_path: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the model of a training checkpoint without its optimizer state (a third of the size),
    with the run's tokenizer beside it: what sampling and fine-tuning need, not resuming."""
    checkpoint_path, path = Path(checkpoint_path), Path(path)
    checkpoint = load_checkpoint(checkpoint_path)
    tokenizer = tokenizer_of(checkpoint_path, checkpoint["tokenizer"])
    # The tokenizer entry has no path: the loader finds the copy beside the weights.
    entry = {"path": None, "sha256": checkpoint["tokenizer"]["sha256"]}
    record = {key: checkpoint[key] for key in ("step", "config") if key in checkpoint}
    weights = make_checkpoint(checkpoint["model_config"], checkpoint["model"], entry, **record)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tokenizer.resolve() != (path.parent / TOKENIZER_NAME).resolve():
        atomic_write(path.parent / TOKENIZER_NAME, lambda file: file.write(tokenizer.read_bytes()))
    return save_checkpoint(weights, path)


@torch.no_grad()
def generate_text(model: GPT, tokenizer: Tokenizer, prompt: str, max_new_tokens: int = 64,
                  temperature: float = 0.8, *, generator: torch.Generator | None = None,
                  autocast: contextlib.AbstractContextManager | None = None) -> str:
    """The text `model` writes after `prompt` (temperature 0: greedy). The prompt is cut to its
    last tokens so that prompt + new tokens fit the context; generation stops at end-of-text."""
    device = next(model.parameters()).device
    ids = [tokenizer.special_tokens[ENDOFTEXT]] + tokenizer.encode_ordinary(prompt)
    max_new_tokens = min(max_new_tokens, model.config.block_size - 1)
    ids = ids[-(model.config.block_size - max_new_tokens):]
    with autocast or contextlib.nullcontext():
        out = model.generate(torch.tensor([ids], device=device), max_new_tokens, temperature,
                             generator=generator)
    new = out[0, len(ids):].tolist()
    end = tokenizer.special_tokens[ENDOFTEXT]
    return tokenizer.decode(new[: new.index(end)] if end in new else new)
