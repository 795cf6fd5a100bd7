"""The one checkpoint format: every file the package writes with a model's weights in it.

A checkpoint is a dict written with `torch.save` and read back with `torch.load(weights_only=True)`,
which accepts tensors and plain Python values only, so a file cannot run code when it is loaded:

    format        "llmcourse-checkpoint": what the file is
    version       1: which layout of the keys below
    model_config  `GPTConfig.to_dict()`: enough to rebuild the model
    model         the model's `state_dict()`
    tokenizer     {"path", "sha256"} of the tokenizer file the model was trained with, or None

and, in a training run's checkpoint, the run's state (what resuming needs; all optional):

    config        the `TrainConfig` as a dict
    step          optimizer steps taken
    losses        one float per step
    optimizer     the optimizer's `state_dict()`
    rng           every random state: Python's, numpy's, torch's, CUDA's and the batch generator's
    lora          a LoRA fine-tuning run's adapters (chapter 13; `model` then holds the merged weights)

`GPT.save` writes the first five keys; `Trainer.save_checkpoint` all of them; `save_weights` a
run's checkpoint without `losses`, `optimizer` and `rng`, which is enough to sample, not to resume.

Files are written atomically (`files.atomic_write`). `load_checkpoint` also reads the two formats
that came before this one (see `LEGACY_FORMATS`), and refuses anything else with a
`CheckpointError` that names the file and says what it is instead.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llmcourse.files import atomic_write, sha256_file

__all__ = [
    "CHECKPOINT_NAME",
    "FORMAT",
    "RUN_STATE",
    "VERSION",
    "WEIGHTS_NAME",
    "CheckpointError",
    "load_checkpoint",
    "make_checkpoint",
    "save_checkpoint",
    "tokenizer_entry",
]

FORMAT = "llmcourse-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "ckpt.pt"  # a training run's checkpoint, in its out_dir
WEIGHTS_NAME = "model.pt"  # a run's exported weights (`save_weights`)
REQUIRED = ("model_config", "model", "tokenizer")
RUN_STATE = ("config", "step", "losses", "optimizer", "rng", "lora")


class CheckpointError(ValueError):
    """A file that is not a readable llmcourse checkpoint, or one that cannot be used as asked."""


def make_checkpoint(model_config: dict[str, Any], model_state: dict[str, Any],
                    tokenizer: dict[str, Any] | None = None, **run_state: Any) -> dict[str, Any]:
    """A checkpoint dict of a model (`GPTConfig.to_dict()` and `state_dict()`), its tokenizer entry
    (`tokenizer_entry`) and, optionally, the run state named in `RUN_STATE`."""
    unknown = sorted(set(run_state) - set(RUN_STATE))
    if unknown:
        raise ValueError(f"unknown checkpoint entries {unknown}; the run state is {list(RUN_STATE)}")
    return {"format": FORMAT, "version": VERSION, "model_config": dict(model_config),
            "model": model_state, "tokenizer": tokenizer, **run_state}


def tokenizer_entry(path: str | os.PathLike | None) -> dict[str, Any] | None:
    """The checkpoint's record of the tokenizer file at `path`: where it was and its SHA-256, so a
    loader can tell the right file from another one of the same name. None without a file."""
    if path is None:
        return None
    return {"path": str(path), "sha256": sha256_file(path)}


def save_checkpoint(checkpoint: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `checkpoint` (from `make_checkpoint`) to `path` atomically: a temporary file renamed
    over the old one, so a crash mid-write leaves the previous checkpoint intact."""
    if checkpoint.get("format") != FORMAT or checkpoint.get("version") != VERSION:
        raise ValueError(f"not a version {VERSION} checkpoint dict; build it with make_checkpoint")
    path = Path(path)
    atomic_write(path, lambda file: torch.save(checkpoint, file))
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict in `path`, on the CPU, in this version's layout (older ones translated).

    Raises FileNotFoundError for a missing file, and CheckpointError for a folder (naming the
    checkpoint inside it), for a file that is not a checkpoint (saying what it is), and for a
    version this code does not read.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(_folder_advice(path))
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train one with `python -m llmcourse pretrain`")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # zip, pickle and EOF errors alike: the file is not a checkpoint
        what = _describe_unreadable(path, error)
        raise CheckpointError(f"{path} is not an llmcourse checkpoint ({what})") from error
    return _current_layout(path, checkpoint)


# ---------------------------------------------------------------------------------- older files


def _from_train_v1(old: dict[str, Any]) -> dict[str, Any]:
    """"llmcourse-train" v1 (the Trainer's checkpoints and `save_weights` files, including the
    runs shipped in book/runs/): the same keys as version 1 of this format, under another name."""
    return {**old, "format": FORMAT, "version": VERSION}


def _from_gpt_v1(old: dict[str, Any]) -> dict[str, Any]:
    """"llmcourse-gpt" v1 (`GPT.save`): the model's config and weights under other keys, no tokenizer."""
    return make_checkpoint(old["config"], old["state_dict"])


# (format, version) of a file written before the one format -> its translation to the current layout
LEGACY_FORMATS: dict[tuple[str, int], Callable[[dict[str, Any]], dict[str, Any]]] = {
    ("llmcourse-train", 1): _from_train_v1,
    ("llmcourse-gpt", 1): _from_gpt_v1,
}


def _current_layout(path: Path, checkpoint: Any) -> dict[str, Any]:
    """`checkpoint` checked for format and version, translated if it is a legacy file."""
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("format"), str):
        raise CheckpointError(f"{path} is not an llmcourse checkpoint ({_describe_foreign(checkpoint)})")
    file_format, version = checkpoint["format"], checkpoint.get("version")
    if (file_format, version) in LEGACY_FORMATS:
        checkpoint = LEGACY_FORMATS[file_format, version](checkpoint)
    elif file_format != FORMAT:
        raise CheckpointError(f"{path} is not an llmcourse checkpoint (its format is {file_format!r}, "
                              f"not {FORMAT!r})")
    elif version != VERSION:
        newer = isinstance(version, int) and version > VERSION
        advice = ("a newer llmcourse wrote it: update llmcourse to read it" if newer
                  else "it is older than every layout this code reads: write it again with this code")
        raise CheckpointError(f"{path} is an llmcourse checkpoint of version {version!r}, but this code reads "
                              f"version {VERSION}; {advice}")
    missing = [key for key in REQUIRED if key not in checkpoint]
    if missing:
        raise CheckpointError(f"{path} is not a complete llmcourse checkpoint (missing {missing})")
    return checkpoint


# ---------------------------------------------------------------------------------- messages


def _folder_advice(folder: Path) -> str:
    """What to say when a folder is passed as a checkpoint: the checkpoint in it, if there is one."""
    inside = [folder / name for name in (CHECKPOINT_NAME, WEIGHTS_NAME) if (folder / name).is_file()]
    inside = inside or sorted(folder.glob("*.pt"))
    if inside:
        return f"{folder} is a folder; did you mean {inside[0]}?"
    return (f"{folder} is a folder with no checkpoint in it (no {CHECKPOINT_NAME} or {WEIGHTS_NAME}); "
            f"pass a checkpoint file, such as runs/cpu-tiny/{CHECKPOINT_NAME}")


def _describe_unreadable(path: Path, error: Exception) -> str:
    """What the file that `torch.load` refused is instead, in a few words."""
    with open(path, "rb") as file:
        head = file.read(4096)
    if not head:
        return "the file is empty"
    if head.startswith(b"PK"):  # torch.save writes a zip archive
        if isinstance(error, RuntimeError):
            return "a torch file that is truncated or damaged; save it again or copy it again"
        return ("a torch file holding Python objects other than tensors and plain values, which a safe "
                "load refuses; it was not written by llmcourse")
    if b"\0" in head:
        return "a binary file that torch cannot read: not written by torch.save, or damaged"
    return _describe_text(head.decode("utf-8", errors="replace"))


def _describe_text(text: str) -> str:
    """A text file in a few words; a JSON file says its "format", so a tokenizer file is recognised."""
    if text.lstrip().startswith("{"):
        declared = re.search(r'"format"\s*:\s*"([^"]*)"', text)
        kind = f"a JSON file of format {declared[1]!r}" if declared else "a JSON file"
        return f"{kind}; a checkpoint is a .pt file, such as {CHECKPOINT_NAME}"
    return f"a text file beginning {text[:40]!r}"


def _describe_foreign(value: Any) -> str:
    """What a loadable torch file that is not a checkpoint holds."""
    if not isinstance(value, dict):
        return f"a torch file holding a {type(value).__name__}, not a dict with format={FORMAT!r}"
    keys = ", ".join(repr(key) for key in list(value)[:3]) + (", ..." if len(value) > 3 else "")
    if value and all(isinstance(item, torch.Tensor) for item in value.values()):
        return f"a bare state_dict ({keys}) without the model's config; save models with GPT.save"
    return f"a torch file holding a dict ({keys}) without format={FORMAT!r}"
