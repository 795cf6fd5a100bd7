"""Chapters 09-10: the training loop. One `TrainConfig` says what to train; one `Trainer` trains it.

    data     the corpus -> a BPE tokenizer -> one flat file of token ids (`llmcourse.data.prepare`)
    step     forward, loss / accum, backward (x grad_accum_steps), clip, optimizer step, schedule
    watch    train/val loss every eval_every steps, samples, tokens/s and MFU, a JSONL log
    survive  atomic checkpoints with every random state, so a resumed run repeats the same losses;
             a NaN/inf stops the run before it can overwrite the last good checkpoint
    scale    bf16 autocast and fused AdamW on CUDA, optional torch.compile, several GPUs via torchrun

The same code runs a 1M-parameter model on a laptop CPU (`CONFIGS["cpu-tiny"]`, in
`llmcourse.train_config`) and a GPT-2-small-sized one on a GPU (`CONFIGS["gpu-small"]`):

    python -m llmcourse pretrain --config cpu-tiny max_steps=200 out_dir=runs/tiny
    torchrun --nproc_per_node 8 -m llmcourse pretrain --config gpu-small

What a run leaves behind is read by `llmcourse.runs`; the checkpoint format is `llmcourse.checkpoint`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from llmcourse.checkpoint import (CHECKPOINT_NAME, CheckpointError, load_checkpoint, make_checkpoint,
                                  save_checkpoint, tokenizer_entry)
from llmcourse.data.prepare import prepare_data, split_tokens
from llmcourse.data.tokens import TokenFile, get_batch
from llmcourse.device import default_device, seed_everything
from llmcourse.model import GPT, flops_per_token
from llmcourse.optim import clip_grad_norm, lr_at, make_optimizer
from llmcourse.runs import METRICS_NAME, TOKENIZER_NAME, generate_text, read_metrics
from llmcourse.tokenizer import Tokenizer
from llmcourse.train_config import TrainConfig, from_overrides

# Peak dense bf16 tensor-core throughput, FLOP/s, from NVIDIA's datasheets; the first name found
# in the GPU's name wins, so the PCIe H100 (lower clocks) is listed before the SXM one.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12}


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


# ---------------------------------------------------------------------------------- the trainer


class TrainingDivergedError(RuntimeError):
    """The loss or gradient became NaN or infinite; the weights were not updated with it."""


@dataclass(frozen=True)
class OptimizerParts:
    """The three pieces of an optimizer step that a caller may replace with its own (chapter 18
    plugs in the learner's): the defaults are `llmcourse.optim`'s.

    make_optimizer(model, lr, weight_decay) -> torch.optim.Optimizer
    lr_at(step, *, max_lr, warmup_steps, max_steps, min_lr) -> float
    clip_grad_norm(parameters, max_norm) -> the gradients' global norm before clipping (a 0-d tensor)
    """

    make_optimizer: Callable[[nn.Module, float, float], torch.optim.Optimizer] = make_optimizer
    lr_at: Callable[..., float] = lr_at
    clip_grad_norm: Callable[[Iterable[Tensor], float], Tensor] = clip_grad_norm


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
    (`model`, `tokenizer`, `train_tokens` and `val_tokens` as 1-D arrays of ids), and your own
    optimizer, schedule and clipping (`optimizer_parts`).

        trainer = Trainer(CONFIGS["cpu-tiny"])
        losses = trainer.train()           # one float per optimizer step
        trainer = Trainer.resume("runs/cpu-tiny/ckpt.pt"); trainer.train()   # carries on exactly
    """

    config_class = TrainConfig  # what a checkpoint's "config" is read back as

    def __init__(
        self,
        config: TrainConfig,
        *,
        model: GPT | None = None,
        tokenizer: Tokenizer | None = None,
        train_tokens: np.ndarray | None = None,
        val_tokens: np.ndarray | None = None,
        progress: bool = True,
        optimizer_parts: OptimizerParts | None = None,
    ) -> None:
        self.config = config
        self.optimizer_parts = optimizer_parts or OptimizerParts()
        self.dist = Distributed.from_env()
        self.device = self._setup_device()
        self.out_dir = Path(config.out_dir)
        self.progress = progress and self.dist.is_main
        self.tokenizer, self.tokenizer_path = self._setup_tokens(tokenizer, train_tokens, val_tokens)
        seed_everything(config.seed)  # the same initial weights on every rank
        self.raw_model = (model or GPT(config.gpt_config(self.tokenizer.vocab_size))).to(self.device)
        self.optimizer = self.optimizer_parts.make_optimizer(self.raw_model, config.lr, config.weight_decay)
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
        batches = [self.next_batch() for _ in range(accum)]
        weights = self.batch_weights(batches)
        for micro, (batch, weight) in enumerate(zip(batches, weights)):
            # DDP averages gradients across ranks in backward; only the last micro-batch needs it.
            last = micro == accum - 1
            with contextlib.nullcontext() if last or self.dist.world_size == 1 else self.model.no_sync():
                with self.autocast():
                    loss = weight * self.batch_loss(batch)
                    loss = loss + self.config.aux_loss_weight * self.raw_model.aux_loss  # 0 unless MoE
                (loss / accum).backward()  # the sum of the accum gradients of loss/accum = the big batch's
            total += loss.detach()
        grad_norm = self.optimizer_parts.clip_grad_norm(self.raw_model.parameters(), self.config.grad_clip).item()
        loss = self._mean_over_ranks(total / accum)
        self._stop_if_diverged(loss, grad_norm)  # before the update: a NaN must never reach the weights
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.last = {"lr": lr, "grad_norm": grad_norm}
        return loss

    def batch_loss(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        """The loss of one micro-batch (inputs, targets): the mean next-token cross-entropy."""
        x, y = batch
        return self.model(x, y)[1]

    def batch_weights(self, batches: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
        """One weight per micro-batch so that the step's loss is the mean over every counted target
        of the global batch: each micro-batch's mean loss counts in proportion to its targets. With
        a loss mask (fine-tuning) micro-batches count different numbers of targets; without one
        every weight is exactly 1."""
        counts = torch.stack([(y != -100).sum() for _, y in batches]).to(self.device)
        total = counts.sum()
        if self.dist.world_size > 1:
            dist.all_reduce(total)
        # count * accum * world / total: integers until the one division, so equal counts give 1.0.
        return list((counts * len(batches) * self.dist.world_size).double().div(total.clamp(min=1)).float())

    def set_learning_rate(self) -> float:
        """Set this step's learning rate (warmup, then cosine decay) on every parameter group."""
        config = self.config
        lr = self.optimizer_parts.lr_at(self.step, max_lr=config.lr, warmup_steps=config.warmup_steps,
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
        return make_checkpoint(self.raw_model.config.to_dict(), self.model_state(),
                               tokenizer_entry(self.tokenizer_path), **self.run_state())

    def model_state(self) -> dict[str, Tensor]:
        """The weights a checkpoint holds (a fine-tuning run with adapters holds them merged)."""
        return self.raw_model.state_dict()

    def run_state(self) -> dict[str, Any]:
        """The run's state beside the weights: what resuming needs to repeat the same steps."""
        return dict(config=dataclasses.asdict(self.config), step=self.step, losses=list(self.losses),
                    optimizer=self.optimizer.state_dict(),
                    rng={**_rng_states(), "batches": self.batch_generator.get_state()})

    def save_checkpoint(self, path: str | os.PathLike | None = None) -> Path | None:
        """Write out_dir/ckpt.pt atomically (rank 0 only): a temp file renamed over the old one."""
        path = Path(path) if path is not None else self.out_dir / CHECKPOINT_NAME
        if not self.dist.is_main:
            return None
        return save_checkpoint(self.checkpoint_state(), path)

    def load_state(self, checkpoint: dict[str, Any]) -> None:
        """Restore weights, optimizer, step and every random state from `load_checkpoint`'s dict."""
        self.load_model_state(checkpoint)
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.step = checkpoint["step"]
        self.losses = list(checkpoint["losses"])
        rng = checkpoint["rng"]
        _set_rng_states(rng)
        self.batch_generator.set_state(rng["batches"])
        if self.dist.world_size > 1:  # dropout masks differ per rank, as in a fresh run
            torch.manual_seed(self.config.seed + self.dist.rank + self.step)

    def load_model_state(self, checkpoint: dict[str, Any]) -> None:
        """Restore the weights `model_state` wrote."""
        self.raw_model.load_state_dict(checkpoint["model"])

    @classmethod
    def resume(cls, path: str | os.PathLike, overrides: Sequence[str] = (), **parts: Any) -> Trainer:
        """A Trainer that carries on from the checkpoint at `path` (its config, plus `overrides`).

        An override of a setting the weights fix (`FIXED_BY_WEIGHTS`, the model's) is refused; one of
        `CHANGEABLE_ON_RESUME` (the schedule, dropout) is allowed, e.g. to extend a run, with a warning
        that the run no longer repeats an uninterrupted one. A finished run is refused.
        """
        path = Path(path)
        checkpoint = load_checkpoint(path)
        if not all(key in checkpoint for key in ("config", "optimizer", "rng")):
            raise CheckpointError(f"{path} holds the weights only (save_weights), not a run to resume; "
                                  f"resume from the run's {CHECKPOINT_NAME}")
        saved = cls.config_class(**checkpoint["config"])
        config = from_overrides(saved, overrides)
        fixed, allowed = _changed_settings(saved, config)
        if fixed:
            raise ValueError(f"cannot resume with a different model: {', '.join(fixed)}; the checkpoint's "
                             "weights fix these settings (start a new run in another out_dir to change them)")
        if checkpoint["step"] >= config.max_steps:
            raise ValueError(f"the run in {path} is finished: it has taken {checkpoint['step']} steps of "
                             f"max_steps={config.max_steps}; to train it further, resume with a larger "
                             f"max_steps, e.g. max_steps={2 * checkpoint['step']}")
        if allowed:
            warnings.warn(f"resuming with changed settings ({', '.join(allowed)}): the run goes on, but its "
                          "losses no longer match an uninterrupted run's", stacklevel=2)
        trainer = cls(config, **parts)
        trainer.load_state(checkpoint)
        return trainer


# What a resumed run may change, at the cost of no longer repeating an uninterrupted run (so it is
# warned about): the learning-rate schedule (e.g. a longer run), the batches, the data and dropout.
# The weights fix the tokenizer (its corpus, vocabulary and the text its merges were learned from),
# the context length and the other model settings. Bookkeeping and hardware settings change freely.
CHANGEABLE_ON_RESUME = ("max_steps", "lr", "min_lr", "warmup_steps", "weight_decay", "grad_clip",
                        "aux_loss_weight", "batch_size", "grad_accum_steps", "corpus_chars", "val_fraction",
                        "seed", "model.dropout")
FIXED_BY_WEIGHTS = ("corpus", "vocab_size", "tokenizer_chars", "block_size")


def _changed_settings(saved: TrainConfig, config: TrainConfig) -> tuple[list[str], list[str]]:
    """The changes from `saved` to `config`, as "name old -> new": (those of settings the weights fix,
    those of `CHANGEABLE_ON_RESUME`). Other settings (logging, evaluation, ...) change freely."""
    old, new = _resume_settings(saved), _resume_settings(config)
    fixed, changeable = [], []
    for name in old:
        if old[name] == new[name]:
            continue
        change = f"{name} {old[name]!r} -> {new[name]!r}"
        if name in CHANGEABLE_ON_RESUME:
            changeable.append(change)
        elif name in FIXED_BY_WEIGHTS or name.startswith("model."):
            fixed.append(change)
    return fixed, changeable


def _resume_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings `_changed_settings` compares: the fields, `model.<field>` with the defaults filled
    in, and tokenizer_chars as `prepare_data` uses it (no more than corpus_chars)."""
    values = {name: value for name, value in dataclasses.asdict(config).items() if name != "model"}
    values["tokenizer_chars"] = min(config.corpus_chars, config.tokenizer_chars)
    model = config.gpt_config(config.vocab_size).to_dict()
    return values | {f"model.{name}": value for name, value in model.items() if name not in values}


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
