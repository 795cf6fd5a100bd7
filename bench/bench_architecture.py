"""Chapters 05-08 benchmark: explicit attention vs the fused kernel, and the GPT's training step.

Run from the repository root:  .venv/bin/python bench/bench_architecture.py
Prints two tables from one run; compare the ratios (machines are noisy, absolute times are not
the point).

1. `attention_reference` (matmuls + softmax, the (T, T) weights in memory) against
   `attention_fast` (`F.scaled_dot_product_attention`) over sequence lengths: the price of the
   readable version, and the quadratic growth of both.
2. Forward + backward of the complete model for a GPT-2-style and a Llama-style small config:
   parameters, milliseconds per step, tokens/s, and the reference attention path over the fast one
   (the `attention_fn` swap point the exercises use).
"""

from __future__ import annotations

import argparse

import torch

from llmcourse.attention import attention_fast, attention_reference
from llmcourse.model import GPT, GPTConfig

from timing import best_time  # bench/timing.py (python puts the script's folder on sys.path)


def reference_attention(q, k, v, causal):
    return attention_reference(q, k, v, causal=causal)[0]


def attention_table(lengths: list[int], heads: int, head_dim: int, repeats: int) -> None:
    print(f"attention, batch 1, {heads} heads of {head_dim}, causal, forward only; best of {repeats}")
    print(f"{'T':>6} {'reference (ms)':>15} {'fast (ms)':>10} {'reference / fast':>17} {'weights (MiB)':>14}")
    generator = torch.Generator().manual_seed(0)
    for length in lengths:
        q, k, v = (torch.randn(1, heads, length, head_dim, generator=generator) for _ in range(3))
        slow = best_time(lambda: attention_reference(q, k, v, causal=True), repeats)
        fast = best_time(lambda: attention_fast(q, k, v, causal=True), repeats)
        weights_mib = heads * length * length * 4 / 2**20  # float32 (H, T, T) the reference keeps
        print(f"{length:>6} {slow * 1e3:>15.2f} {fast * 1e3:>10.2f} {slow / fast:>17.2f} {weights_mib:>14.1f}")


def model_table(batch: int, block: int, vocab: int, repeats: int) -> None:
    configs = {
        "GPT-2 style (learned, LayerNorm, GELU)": GPTConfig(
            vocab_size=vocab, block_size=block, n_layer=4, n_head=4, n_embd=128),
        "Llama style (RoPE, RMSNorm, SwiGLU, GQA 4/2)": GPTConfig(
            vocab_size=vocab, block_size=block, n_layer=4, n_head=4, n_embd=128, n_kv_heads=2,
            position="rope", norm="rmsnorm", mlp="swiglu"),
        "GPT-2 style, wider (L6, C256)": GPTConfig(
            vocab_size=vocab, block_size=block, n_layer=6, n_head=8, n_embd=256),
    }
    print(f"\nGPT forward + backward, batch {batch} x {block} tokens, V={vocab}; best of {repeats}")
    print(f"{'config':<46} {'params':>9} {'fast (ms)':>10} {'tokens/s':>9} {'reference / fast':>17}")
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(vocab, (batch, block + 1), generator=generator)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    for name, config in configs.items():
        timings = {}
        for path, attention_fn in (("fast", None), ("reference", reference_attention)):
            torch.manual_seed(0)
            model = GPT(config, attention_fn=attention_fn)

            def step():
                model.zero_grad(set_to_none=True)
                _, loss = model(inputs, targets)
                loss.backward()

            timings[path] = best_time(step, repeats)
        tokens_per_s = batch * block / timings["fast"]
        print(f"{name:<46} {model.num_params() / 1e6:>8.2f}M {timings['fast'] * 1e3:>10.1f} "
              f"{tokens_per_s:>9.0f} {timings['reference'] / timings['fast']:>17.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    attention_table(args.lengths, args.heads, args.head_dim, args.repeats)
    model_table(args.batch, args.block, args.vocab, args.repeats)


if __name__ == "__main__":
    main()
