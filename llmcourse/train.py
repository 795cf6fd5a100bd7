"""Chapters 09-10: the training loop. One `TrainConfig` says what to train; one `Trainer` trains it.

    data     the corpus -> a BPE tokenizer -> one flat file of token ids (made once, then cached)
    step     forward, loss / accum, backward (x grad_accum_steps), clip, optimizer step, schedule
    watch    train/val loss every eval_every steps, samples, tokens/s and MFU, a JSONL log
    survive  atomic checkpoints with every random state, so a resumed run repeats the same losses;
             a NaN/inf stops the run before it can overwrite the last good checkpoint
    scale    bf16 autocast and fused AdamW on CUDA, optional torch.compile, several GPUs via torchrun

The same code runs a 1M-parameter model on a laptop CPU (`CONFIGS["cpu-tiny"]`) and a
GPT-2-small-sized one on a GPU (`CONFIGS["gpu-small"]`):

    python -m llmcourse pretrain --config cpu-tiny max_steps=200 out_dir=runs/tiny
    torchrun --nproc_per_node 8 -m llmcourse pretrain --config gpu-small
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from llmcourse.data.download import corpus, resolve_cache_dir
from llmcourse.data.tokens import TokenFile, get_batch, tokenize_to_file
from llmcourse.device import default_device, seed_everything
from llmcourse.files import atomic_write
from llmcourse.model import GPT, GPTConfig, flops_per_token
from llmcourse.optim import clip_grad_norm, lr_at, make_optimizer
from llmcourse.tokenizer import ENDOFTEXT, Tokenizer

CHECKPOINT_FORMAT = "llmcourse-train"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "ckpt.pt"
METRICS_NAME = "metrics.jsonl"
TOKENIZER_NAME = "tokenizer.json"
DTYPES = ("auto", "float32", "bfloat16")
# Peak dense bf16 tensor-core throughput, FLOP/s, from NVIDIA's datasheets; the first name found
# in the GPU's name wins, so the PCIe H100 (lower clocks) is listed before the SXM one.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12}


# ---------------------------------------------------------------------------------- config


@dataclass
class TrainConfig:
    """Everything that fixes a training run. `model` holds `GPTConfig` fields except `vocab_size`
    (the tokenizer's) and `block_size` (this config's); `dataclasses.asdict` of it is the record
    a checkpoint keeps.

    One optimizer step sees batch_size x block_size x grad_accum_steps x world_size tokens.
    """

    # data
    corpus: str = "tinyworld"
    corpus_chars: int = 1_000_000
    vocab_size: int = 512
    tokenizer_chars: int = 2_000_000  # the tokenizer learns its merges from this much of the corpus
    val_fraction: float = 0.05  # the corpus's tail, never trained on
    data_dir: str = ""  # cache of tokenizers and token files ("": $LLMCOURSE_CACHE or ~/.cache/llmcourse)
    # model
    model: dict[str, Any] = field(default_factory=lambda: {"n_layer": 2, "n_head": 2, "n_embd": 64})
    # optimization
    batch_size: int = 16
    block_size: int = 64
    grad_accum_steps: int = 1
    max_steps: int = 100
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 10
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm (a huge value turns clipping off)
    aux_loss_weight: float = 0.01  # Mixture-of-Experts load balancing (ignored by dense models)
    # bookkeeping
    eval_every: int = 50
    eval_batches: int = 10
    sample_every: int = 0  # 0: never
    checkpoint_every: int = 100  # a checkpoint is also written when training ends
    log_every: int = 10
    out_dir: str = "runs/default"
    seed: int = 1337
    # hardware
    device: str = "auto"
    dtype: str = "auto"  # auto: bfloat16 autocast on a CUDA GPU that supports it, else float32
    compile: bool = False

    def __post_init__(self) -> None:
        for name in ("corpus_chars", "vocab_size", "tokenizer_chars", "batch_size", "block_size",
                     "grad_accum_steps", "max_steps", "eval_batches", "log_every"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "eval_every", "sample_every", "checkpoint_every", "seed"):
            _check_int(name, getattr(self, name), minimum=0)
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be at most max_steps={self.max_steps}")
        if isinstance(self.grad_clip, bool) or not isinstance(self.grad_clip, (int, float)) \
                or not 0 < self.grad_clip < math.inf:
            raise ValueError(f"grad_clip={self.grad_clip!r} must be a finite number > 0 (1.0 is usual)")
        for name in ("lr", "min_lr", "weight_decay", "aux_loss_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"{name}={value!r} must be a finite number >= 0")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} must be at most lr={self.lr} (lr / 10 is common)")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction!r} must be between 0 and 1, e.g. 0.05")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype={self.dtype!r} must be one of {DTYPES}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile={self.compile!r} must be True or False")
        self.gpt_config(vocab_size=max(self.vocab_size, 1))  # raises on a bad model setting

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        """The model's GPTConfig for a tokenizer of `vocab_size` ids."""
        for fixed in ("vocab_size", "block_size"):
            if fixed in self.model:
                raise ValueError(f"model.{fixed} is set by the trainer (the tokenizer's vocabulary and "
                                 f"the config's block_size); remove it from model and set {fixed} instead")
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, **self.model)

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step on one process (times the world size under torchrun)."""
        return self.batch_size * self.block_size * self.grad_accum_steps


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} must be an integer >= {minimum}")


def from_overrides(base: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """A copy of `base` with `key=value` settings applied, e.g. ["max_steps=20", "model.n_layer=6"].

    Values are parsed by the field's type (ints accept 1e3, bools true/false/1/0). An unknown key or
    a value of the wrong type raises ValueError naming it.
    """
    values = dataclasses.asdict(base)
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    model_types = {f.name: f.type for f in dataclasses.fields(GPTConfig)}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value (e.g. max_steps=200)")
        if key.startswith("model."):
            name = key.removeprefix("model.")
            if name not in model_types:
                raise ValueError(f"unknown model setting {key!r}; known: {', '.join(model_types)}")
            values["model"][name] = _parse_value(key, text, model_types[name])
        elif key in types and key != "model":
            values[key] = _parse_value(key, text, types[key])
        elif key in model_types:
            raise ValueError(f"unknown setting {key!r}; model settings take a prefix: model.{key}={text}")
        else:
            raise ValueError(f"unknown setting {key!r}; known: {', '.join(types)} and model.<GPTConfig field>")
    return TrainConfig(**values)


def _parse_value(key: str, text: str, annotation: str) -> Any:
    """`text` as the type named by a dataclass annotation ("int", "float | None", ...)."""
    text = text.strip()
    if not isinstance(annotation, str):  # a real type, where a module has no `from __future__ import annotations`
        annotation = getattr(annotation, "__name__", str(annotation))
    kinds = [part.strip() for part in annotation.split("|")]
    if "None" in kinds and text.lower() in ("none", "null"):
        return None
    if "bool" in kinds:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{key}={text!r}: expected true or false")
    try:
        if "int" in kinds:
            number = float(text)  # accepts 1e3
            if not number.is_integer():
                raise ValueError
            return int(number)
        if "float" in kinds:
            return float(text)
    except ValueError:
        raise ValueError(f"{key}={text!r}: expected {' or '.join(kinds)}") from None
    return text


CONFIGS: dict[str, TrainConfig] = {
    # Readable TinyWorld stories within minutes on 2 CPU cores (book/runs/cpu-tiny/run.json has the
    # recorded run: its time, machine and losses).
    "cpu-tiny": TrainConfig(
        corpus_chars=16_000_000, vocab_size=1024,
        model={"n_layer": 4, "n_head": 4, "n_embd": 128},
        batch_size=32, block_size=128, max_steps=1500, lr=2e-3, min_lr=2e-4, warmup_steps=100,
        eval_every=100, eval_batches=10, sample_every=500, checkpoint_every=500, log_every=10,
        out_dir="runs/cpu-tiny",
    ),
    # GPT-2 small's shape (12 layers, 12 heads, width 768, 1024 positions) on one GPU, bf16.
    "gpu-small": TrainConfig(
        corpus_chars=200_000_000, vocab_size=1536,  # TinyWorld has about 1700 useful tokens
        model={"n_layer": 12, "n_head": 12, "n_embd": 768},
        batch_size=16, block_size=1024, grad_accum_steps=2, max_steps=5000, lr=6e-4, min_lr=6e-5,
        warmup_steps=200, eval_every=250, eval_batches=20, sample_every=1000, checkpoint_every=1000,
        log_every=10, out_dir="runs/gpu-small", compile=True,
    ),
}


def get_config(name: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """The named config from CONFIGS with `overrides` applied."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose one of {', '.join(CONFIGS)}")
    return from_overrides(CONFIGS[name], overrides)


# ---------------------------------------------------------------------------------- throughput


def peak_flops(device: torch.device | str) -> float | None:
    """Dense bf16 peak FLOP/s of one `device` (H100/H200 989e12, A100 312e12); None if unknown or CPU."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for gpu, flops in PEAK_BF16_FLOPS.items() if gpu in name), None)


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float | None) -> float | None:
    """Model FLOPs utilisation: the fraction of the hardware's peak the model's own FLOPs use
    (PaLM, Chowdhery et al. 2022, appendix B). None when the peak is unknown."""
    if peak_flops is None:
        return None
    return flops_per_token * tokens_per_s / peak_flops


# ---------------------------------------------------------------------------------- data


def prepare_data(config: TrainConfig, progress: bool = True) -> tuple[Path, Path]:
    """Train the tokenizer and write the corpus's token file, once per data setting.

    Both live in a folder named by the settings that determine them, so every run with the same
    corpus, size and vocabulary reuses them. Returns (tokenizer path, token file path).
    """
    tokenizer_chars = min(config.corpus_chars, config.tokenizer_chars)
    name = f"tokens-{config.corpus}-{config.corpus_chars}c-v{config.vocab_size}-t{tokenizer_chars}c"
    folder = resolve_cache_dir(config.data_dir or None) / name
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_path, tokens_path = folder / TOKENIZER_NAME, folder / "train.bin"
    if not tokenizer_path.is_file():
        text = list(corpus(config.corpus, tokenizer_chars))
        Tokenizer.train(text, config.vocab_size, progress=progress).save(tokenizer_path)
    if not Path(str(tokens_path) + ".json").is_file():
        tokenizer = Tokenizer.load(tokenizer_path)
        big = config.corpus_chars >= 20_000_000  # worth several encoding processes
        tokenize_to_file(corpus(config.corpus, config.corpus_chars), tokenizer, tokens_path,
                         progress=progress, corpus=f"{config.corpus}:{config.corpus_chars}",
                         workers=min(8, os.cpu_count() or 1) if big else 1)
    return tokenizer_path, tokens_path


def split_tokens(tokens: np.ndarray, val_fraction: float, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): the last `val_fraction` of the tokens is validation, never trained on."""
    n_val = int(len(tokens) * val_fraction)
    if min(n_val, len(tokens) - n_val) <= block_size:
        raise ValueError(f"{len(tokens)} tokens are too few for block_size={block_size} and "
                         f"val_fraction={val_fraction}; raise corpus_chars")
    return tokens[:-n_val], tokens[-n_val:]


# ---------------------------------------------------------------------------------- the trainer


class TrainingDivergedError(RuntimeError):
    """The loss or gradient became NaN or infinite; the weights were not updated with it."""


@dataclass
class Distributed:
    """Where this process sits in a torchrun job (rank 0 of 1 when run alone)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @classmethod
    def from_env(cls) -> Distributed:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class Trainer:
    """Trains a GPT as `config` says. Build the parts from the config, or pass your own
    (`model`, `tokenizer`, `train_tokens` and `val_tokens` as 1-D arrays of ids).

        trainer = Trainer(CONFIGS["cpu-tiny"])
        losses = trainer.train()           # one float per optimizer step
        trainer = Trainer.resume("runs/cpu-tiny/ckpt.pt"); trainer.train()   # carries on exactly
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        model: GPT | None = None,
        tokenizer: Tokenizer | None = None,
        train_tokens: np.ndarray | None = None,
        val_tokens: np.ndarray | None = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.dist = Distributed.from_env()
        self.device = self._setup_device()
        self.out_dir = Path(config.out_dir)
        self.progress = progress and self.dist.is_main
        self.tokenizer, self.tokenizer_path = self._setup_tokens(tokenizer, train_tokens, val_tokens)
        seed_everything(config.seed)  # the same initial weights on every rank
        self.raw_model = (model or GPT(config.gpt_config(self.tokenizer.vocab_size))).to(self.device)
        self.optimizer = make_optimizer(self.raw_model, config.lr, config.weight_decay)
        self.model = self._wrap(self.raw_model)
        torch.manual_seed(config.seed + self.dist.rank)  # dropout: different masks per rank
        # One generator draws each global batch on every rank, and each rank keeps its own slice,
        # so N processes see exactly the batch one process would (and the same losses).
        self.batch_generator = torch.Generator().manual_seed(config.seed)
        self.step = 0
        self.losses: list[float] = []
        self.flops_per_token = flops_per_token(self.raw_model.config, config.block_size)
        self.peak_flops = peak_flops(self.device)
        if self.peak_flops is not None:
            self.peak_flops *= self.dist.world_size

    # ------------------------------------------------------------------ set-up

    def _setup_device(self) -> torch.device:
        if self.dist.world_size > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        if self.config.device != "auto":
            device = torch.device(self.config.device)
        else:
            device = default_device()
        if device.type == "cuda":
            device = torch.device("cuda", self.dist.local_rank if self.dist.world_size > 1 else device.index or 0)
            torch.cuda.set_device(device)
            torch.backends.cuda.matmul.allow_tf32 = True  # float32 matmuls on tensor cores
            torch.backends.cudnn.allow_tf32 = True
        return device

    def _setup_tokens(self, tokenizer, train_tokens, val_tokens) -> tuple[Tokenizer, Path | None]:
        if train_tokens is not None:
            if tokenizer is None or val_tokens is None:
                raise ValueError("pass tokenizer and val_tokens together with train_tokens")
            self.train_tokens, self.val_tokens = train_tokens, val_tokens
            return tokenizer, None
        if self.dist.is_main:
            prepare_data(self.config, progress=self.progress)
        self._barrier()  # the other ranks wait until rank 0 has written the files
        tokenizer_path, tokens_path = prepare_data(self.config, progress=False)
        tokenizer = Tokenizer.load(tokenizer_path)
        tokens = TokenFile.open(tokens_path, tokenizer=tokenizer).tokens
        self.train_tokens, self.val_tokens = split_tokens(tokens, self.config.val_fraction, self.config.block_size)
        if self.dist.is_main:  # a copy beside the checkpoints, so `sample` finds it after the cache is cleared
            self.out_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tokenizer_path, self.out_dir / TOKENIZER_NAME)
        return tokenizer, self.out_dir / TOKENIZER_NAME

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.config.compile:
            model = torch.compile(model)
        if self.dist.world_size > 1:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        return model

    def close(self) -> None:
        """Leave the torchrun process group (if any); call it when the run is over."""
        if self.dist.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def _barrier(self) -> None:
        if self.dist.world_size > 1:
            dist.barrier()

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA (matmuls in bf16, reductions and the loss in float32); else nothing."""
        dtype = self.config.dtype
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
        if dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # ------------------------------------------------------------------ one step

    def next_batch(self, tokens: np.ndarray | None = None,
                   generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """This rank's slice `(B, T)` of a global batch of batch_size x world_size windows."""
        tokens = self.train_tokens if tokens is None else tokens
        generator = self.batch_generator if generator is None else generator
        b, world = self.config.batch_size, self.dist.world_size
        if world == 1:
            return get_batch(tokens, b, self.config.block_size, generator=generator, device=self.device)
        x, y = get_batch(tokens, b * world, self.config.block_size, generator=generator, device="cpu")
        mine = slice(self.dist.rank * b, (self.dist.rank + 1) * b)
        return x[mine].to(self.device), y[mine].to(self.device)

    def train_step(self) -> float:
        """One optimizer step over grad_accum_steps micro-batches; returns the mean loss."""
        accum = self.config.grad_accum_steps
        lr = self.set_learning_rate()
        total = torch.zeros((), device=self.device)
        for micro in range(accum):
            x, y = self.next_batch()
            # DDP averages gradients across ranks in backward; only the last micro-batch needs it.
            last = micro == accum - 1
            with contextlib.nullcontext() if last or self.dist.world_size == 1 else self.model.no_sync():
                with self.autocast():
                    _, loss = self.model(x, y)
                    loss = loss + self.config.aux_loss_weight * self.raw_model.aux_loss  # 0 unless MoE
                (loss / accum).backward()  # the sum of the accum gradients of loss/accum = the big batch's
            total += loss.detach()
        grad_norm = clip_grad_norm(self.raw_model.parameters(), self.config.grad_clip).item()
        loss = self._mean_over_ranks(total / accum)
        self._stop_if_diverged(loss, grad_norm)  # before the update: a NaN must never reach the weights
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.last = {"lr": lr, "grad_norm": grad_norm}
        return loss

    def set_learning_rate(self) -> float:
        """Set this step's learning rate (warmup, then cosine decay) on every parameter group."""
        config = self.config
        lr = lr_at(self.step, max_lr=config.lr, warmup_steps=config.warmup_steps,
                   max_steps=config.max_steps, min_lr=config.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def _stop_if_diverged(self, loss: float, grad_norm: float) -> None:
        if math.isfinite(loss) and math.isfinite(grad_norm):
            return
        self.optimizer.zero_grad(set_to_none=True)
        raise TrainingDivergedError(
            f"step {self.step}: loss={loss}, gradient norm={grad_norm} is not finite, so training "
            f"stopped before updating the weights. Lower lr (now {self.config.lr}) or check the data, "
            f"then resume from the last good checkpoint in {self.out_dir}")

    def _mean_over_ranks(self, value: Tensor) -> float:
        if self.dist.world_size > 1:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.dist.world_size
        return value.item()

    # ------------------------------------------------------------------ the loop

    def train(self, steps: int | None = None) -> list[float]:
        """Train until max_steps (or `steps` more steps); return this call's losses, one per step.

        Stops with TrainingDivergedError on a NaN/inf loss or gradient, leaving the last checkpoint
        as it was. Writes a checkpoint at the end.
        """
        config = self.config
        end = config.max_steps if steps is None else min(config.max_steps, self.step + steps)
        losses: list[float] = []
        bar = tqdm(total=config.max_steps, initial=self.step, desc="train", disable=not self.progress,
                   dynamic_ncols=True)
        tokens_per_step = config.tokens_per_step * self.dist.world_size
        window_seconds, window_steps, tokens_per_s = 0.0, 0, 0.0  # throughput since the last log line
        self._forget_metrics_after(self.step)
        self.model.train()
        try:
            while self.step < end:
                started = time.perf_counter()
                loss = self.train_step()  # its .item() waits for the GPU, so the time is real
                window_seconds += time.perf_counter() - started
                window_steps += 1
                losses.append(loss)
                self.losses.append(loss)
                if self.step % config.log_every == 0 or self.step == end:
                    tokens_per_s = tokens_per_step * window_steps / window_seconds
                    window_seconds, window_steps = 0.0, 0
                    self._log_step(loss, tokens_per_s)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}")
                if config.eval_every and (self.step % config.eval_every == 0 or self.step == config.max_steps):
                    self._log(self.evaluate(), bar)
                if config.sample_every and (self.step % config.sample_every == 0 or self.step == config.max_steps):
                    self._log({"step": self.step, "sample": self.sample("")}, bar)
                if config.checkpoint_every and self.step % config.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            bar.close()
        if not (config.checkpoint_every and self.step % config.checkpoint_every == 0):
            self.save_checkpoint()  # the final state, unless the loop has just written it
        return losses

    def _log_step(self, loss: float, tokens_per_s: float) -> None:
        tokens_seen = self.step * self.config.tokens_per_step * self.dist.world_size
        record = {"step": self.step, "tokens": tokens_seen, "loss": loss, **self.last,
                  "tokens_per_s": tokens_per_s}
        utilisation = mfu(self.flops_per_token, tokens_per_s, self.peak_flops)
        if utilisation is not None:
            record["mfu"] = utilisation
        self._log(record)

    def _forget_metrics_after(self, step: int) -> None:
        """Drop log records past `step`: a fresh run starts an empty log, and a run resumed from an
        earlier checkpoint rewrites the steps it repeats instead of listing them twice."""
        path = self.out_dir / METRICS_NAME
        if self.dist.is_main and path.is_file():
            kept = [record for record in read_metrics(self.out_dir) if record["step"] <= step]
            path.write_text("".join(json.dumps(record) + "\n" for record in kept), encoding="utf-8")

    def _log(self, record: dict[str, Any], bar: tqdm | None = None) -> None:
        """Append `record` as one JSON line to out_dir/metrics.jsonl (rank 0 only); with a `bar`,
        also print evals and samples above it (printed even when the bar itself is hidden)."""
        if not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / METRICS_NAME, "a", encoding="utf-8") as file:
            file.write(json.dumps(record) + "\n")
        if bar is None:
            return
        if "val_loss" in record:
            bar.write(f"step {record['step']}: train loss {record['train_loss']:.4f}, "
                      f"val loss {record['val_loss']:.4f}")
        elif "sample" in record:
            bar.write(f"step {record['step']} sample: {record['sample']!r}")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss over eval_batches batches of the training and of the validation tokens.

        The same batches every time (a generator seeded afresh), so the curve's wiggles are the
        model's, not the batches'; and the training generator is left alone, so resuming is exact.
        """
        self.raw_model.eval()
        result: dict[str, Any] = {"step": self.step}
        for split, tokens in (("train", self.train_tokens), ("val", self.val_tokens)):
            generator = torch.Generator().manual_seed(self.config.seed + 1)
            total = torch.zeros((), device=self.device)
            for _ in range(self.config.eval_batches):
                x, y = self.next_batch(tokens, generator)
                with self.autocast():
                    total += self.raw_model(x, y)[1]
            result[f"{split}_loss"] = self._mean_over_ranks(total / self.config.eval_batches)
        self.raw_model.train()
        return result

    @torch.no_grad()
    def sample(self, prompt: str, max_new_tokens: int = 64, temperature: float = 0.8) -> str:
        """Continue `prompt` ("" starts a new document) with the current model; returns the new text."""
        self.raw_model.eval()
        text = generate_text(self.raw_model, self.tokenizer, prompt, max_new_tokens, temperature,
                             generator=torch.Generator(self.device).manual_seed(self.config.seed),
                             autocast=self.autocast())
        self.raw_model.train()
        return text

    # ------------------------------------------------------------------ checkpoints

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a resumed run needs, in types `torch.load(weights_only=True)` accepts."""
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "losses": list(self.losses),
            "config": dataclasses.asdict(self.config),
            "model_config": self.raw_model.config.to_dict(),
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "tokenizer": {"path": str(self.tokenizer_path) if self.tokenizer_path else None,
                          "sha256": _sha256(self.tokenizer_path) if self.tokenizer_path else None},
            "rng": {**_rng_states(), "batches": self.batch_generator.get_state()},
        }

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path | None:
        """Write out_dir/ckpt.pt atomically (rank 0 only): a temp file renamed over the old one."""
        path = Path(path) if path is not None else self.out_dir / CHECKPOINT_NAME
        if not self.dist.is_main:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda file: torch.save(self.checkpoint_state(), file))
        return path

    def load_state(self, checkpoint: dict[str, Any]) -> None:
        """Restore weights, optimizer, step and every random state from `load_checkpoint`'s dict."""
        self.raw_model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.step = checkpoint["step"]
        self.losses = list(checkpoint["losses"])
        rng = checkpoint["rng"]
        _set_rng_states(rng)
        self.batch_generator.set_state(rng["batches"])
        if self.dist.world_size > 1:  # dropout masks differ per rank, as in a fresh run
            torch.manual_seed(self.config.seed + self.dist.rank + self.step)

    @classmethod
    def resume(cls, path: str | os.PathLike, overrides: Sequence[str] = (), **parts: Any) -> Trainer:
        """A Trainer that carries on from the checkpoint at `path` (its config, plus `overrides`)."""
        checkpoint = load_checkpoint(path)
        if "optimizer" not in checkpoint:
            raise CheckpointError(f"{path} holds the weights only (save_weights), not a run to resume; "
                                  f"resume from the run's {CHECKPOINT_NAME}")
        config = from_overrides(TrainConfig(**checkpoint["config"]), overrides)
        trainer = cls(config, **parts)
        trainer.load_state(checkpoint)
        return trainer


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _rng_states() -> dict[str, Any]:
    """Python's, numpy's and torch's global random states as tensors and plain types."""
    version, python_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": [version, list(python_state), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_states(states: dict[str, Any]) -> None:
    version, python_state, gauss = states["python"]
    random.setstate((version, tuple(python_state), gauss))
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available() and states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


def read_metrics(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of out_dir/metrics.jsonl, oldest first: step records (loss, lr, grad_norm,
    tokens_per_s, mfu on a known GPU), eval records (train_loss, val_loss) and sample records."""
    path = Path(out_dir) / METRICS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no metrics at {path}; train first (python -m llmcourse pretrain)")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class CheckpointError(ValueError):
    """A file that is not a readable training checkpoint."""


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by `Trainer.save_checkpoint` (safely: weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; train one with `python -m llmcourse pretrain`")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable checkpoint (corrupt or truncated): {error}") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a training checkpoint (no format={CHECKPOINT_FORMAT!r})")
    if checkpoint.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {checkpoint.get('version')!r} is not supported")
    return checkpoint


def load_model(path: str | os.PathLike, device: torch.device | str | None = None) -> tuple[GPT, Tokenizer]:
    """The trained model (in eval mode) and its tokenizer from a training checkpoint or a
    `save_weights` file. The tokenizer is the file the run used or, if that has gone (a run folder
    that was moved or copied), the `tokenizer.json` beside the checkpoint; either must be the same
    file (sha256) the model was trained with."""
    path = Path(path)
    checkpoint = load_checkpoint(path)
    model = GPT(GPTConfig.from_dict(checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    tokenizer_path = _tokenizer_of(path, checkpoint["tokenizer"])
    return model.to(device or default_device()).eval(), Tokenizer.load(tokenizer_path)


def _tokenizer_of(checkpoint_path: Path, info: dict[str, Any]) -> Path:
    candidates = [Path(info["path"])] if info["path"] else []
    candidates.append(checkpoint_path.parent / TOKENIZER_NAME)
    found = [candidate for candidate in candidates if candidate.is_file()]
    if not found:
        raise CheckpointError(f"{checkpoint_path}: its tokenizer file {info['path']!r} is missing; "
                              f"copy the run's {TOKENIZER_NAME} beside the checkpoint or retrain")
    matching = next((candidate for candidate in found if _sha256(candidate) == info["sha256"]), None)
    if matching is None:
        raise CheckpointError(f"{checkpoint_path}: the tokenizer at {found[0]} is not the one it was trained "
                              "with (different sha256); restore the original file")
    return matching


def save_weights(checkpoint_path: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write the model of a training checkpoint without its optimizer state (a third of the size),
    with the run's tokenizer beside it: what sampling and fine-tuning need, not resuming."""
    checkpoint_path, path = Path(checkpoint_path), Path(path)
    checkpoint = load_checkpoint(checkpoint_path)
    tokenizer = _tokenizer_of(checkpoint_path, checkpoint["tokenizer"])
    weights = {key: checkpoint[key] for key in ("format", "version", "step", "config", "model_config", "model")}
    weights["tokenizer"] = {"path": None, "sha256": checkpoint["tokenizer"]["sha256"]}  # the file beside it
    path.parent.mkdir(parents=True, exist_ok=True)
    if tokenizer.resolve() != (path.parent / TOKENIZER_NAME).resolve():
        atomic_write(path.parent / TOKENIZER_NAME, lambda file: file.write(tokenizer.read_bytes()))
    atomic_write(path, lambda file: torch.save(weights, file))
    return path


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

