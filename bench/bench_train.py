"""Throughput of `llmcourse.train.Trainer` against a bare PyTorch loop doing the same work.

Same model, same AdamW (make_optimizer), same batches, same clipping, same autocast; the bare loop
has no schedule, logging, NaN check or progress bar. The ratio says what the Trainer's bookkeeping
costs (target: >= 0.95).

    python bench/bench_train.py                      # cpu, a small model
    python bench/bench_train.py --device cuda --n-layer 12 --n-embd 768 --block-size 1024 --batch-size 16
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
import torch

from llmcourse.data.tokens import get_batch
from llmcourse.model import GPT
from llmcourse.optim import make_optimizer
from llmcourse.tokenizer import Tokenizer
from llmcourse.train import Trainer
from llmcourse.train_config import TrainConfig, from_overrides

WARMUP_STEPS = 3


def bare_loop(config: TrainConfig, model: GPT, tokens: np.ndarray, steps: int, device: torch.device) -> float:
    """Tokens/s of the plainest loop: batch, forward, backward, clip, step."""
    optimizer = make_optimizer(model, config.lr, config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())
    started = 0.0
    for step in range(WARMUP_STEPS + steps):
        if step == WARMUP_STEPS:  # the first steps pay for start-up (allocation, kernels); time the rest
            _sync(device)
            started = time.perf_counter()
        for _ in range(config.grad_accum_steps):
            x, y = get_batch(tokens, config.batch_size, config.block_size, generator=generator, device=device)
            with autocast:
                _, loss = model(x, y)
            (loss / config.grad_accum_steps).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(device)
    return steps * config.tokens_per_step / (time.perf_counter() - started)


def trainer_loop(config: TrainConfig, tokenizer: Tokenizer, tokens: np.ndarray, steps: int) -> float:
    trainer = Trainer(config, tokenizer=tokenizer, train_tokens=tokens, val_tokens=tokens, progress=False)
    trainer.save_checkpoint = lambda *args, **kwargs: None  # train() ends with one; not per-step work
    trainer.train(steps=WARMUP_STEPS)
    _sync(trainer.device)
    started = time.perf_counter()
    trainer.train(steps=steps)
    _sync(trainer.device)
    return steps * config.tokens_per_step / (time.perf_counter() - started)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=128)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternate the two loops this many times and keep each one's best")
    args = parser.parse_args()

    device = torch.device(args.device)
    config = from_overrides(TrainConfig(), [
        f"device={args.device}", f"batch_size={args.batch_size}", f"block_size={args.block_size}",
        f"model.n_layer={args.n_layer}", f"model.n_embd={args.n_embd}", f"model.n_head={args.n_head}",
        f"max_steps={10 * args.steps}", "warmup_steps=10", "eval_every=0", "checkpoint_every=0",
        "out_dir=/tmp/bench_train_run"])
    # Random ids over a stand-in vocabulary: throughput does not depend on what the tokens say.
    tokenizer = Tokenizer(merges=[(0, 0)] + [(0, 255 + k) for k in range(1, args.vocab_size - 256 - 4)])
    tokens = np.random.default_rng(0).integers(0, tokenizer.vocab_size, 2_000_000).astype(np.uint16)

    print(f"device {device}, model {args.n_layer}x{args.n_embd}, batch {args.batch_size}x{args.block_size}, "
          f"{args.steps} timed steps")
    best_bare = best_trainer = 0.0
    for _ in range(args.repeats):  # alternate, so load from other processes hits both alike
        torch.manual_seed(config.seed)
        model = GPT(config.gpt_config(tokenizer.vocab_size)).to(device)
        best_bare = max(best_bare, bare_loop(config, model, tokens, args.steps, device))
        best_trainer = max(best_trainer, trainer_loop(config, tokenizer, tokens, args.steps))
    print(f"bare loop : {best_bare:12,.0f} tokens/s")
    print(f"Trainer   : {best_trainer:12,.0f} tokens/s")
    print(f"ratio     : {best_trainer / best_bare:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
