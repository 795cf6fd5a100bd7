"""Chapter 01 benchmark: the package's loss and bigram code against torch built-ins and naive loops.

Run from the repository root:  .venv/bin/python bench/bench_next_token.py
Prints one table; compare the ratios (machines are noisy, absolute seconds are not the point).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from llmcourse.bigram import count_bigrams
from llmcourse.losses import cross_entropy, log_softmax

from timing import best_time  # bench/timing.py (python puts the script's folder on sys.path)


def count_bigrams_loop(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The obvious Python loop over pairs: the baseline count_bigrams vectorises away."""
    counts = torch.zeros(vocab_size, vocab_size, dtype=torch.long)
    for a, b in zip(ids[:-1].tolist(), ids[1:].tolist()):
        counts[a, b] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=4096, help="positions (B*T) in the loss batch")
    parser.add_argument("--vocab", type=int, default=8192, help="vocabulary size V of the logits")
    parser.add_argument("--ids", type=int, default=200_000, help="token ids for the bigram count")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(args.tokens, args.vocab, generator=generator, requires_grad=True)
    targets = torch.randint(args.vocab, (args.tokens,), generator=generator)

    def ours_forward_backward():
        cross_entropy(logits, targets).backward()

    def torch_forward_backward():
        F.cross_entropy(logits, targets).backward()

    rows = [
        ("log_softmax (N, V)", lambda: log_softmax(logits.detach()), lambda: torch.log_softmax(logits.detach(), -1),
         "torch.log_softmax"),
        ("cross_entropy fwd+bwd", ours_forward_backward, torch_forward_backward, "F.cross_entropy"),
    ]
    ids = torch.randint(64, (args.ids,), generator=generator)
    rows.append(("count_bigrams (V=64)", lambda: count_bigrams(ids, 64), lambda: count_bigrams_loop(ids, 64),
                 "Python loop"))

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"logits ({args.tokens}, {args.vocab}), {args.ids} ids; best of {args.repeats}")
    print(f"{'operation':<24}{'llmcourse (ms)':>16}{'baseline (ms)':>16}  {'baseline':<18}{'llmcourse / baseline':>22}")
    for name, ours, baseline, baseline_name in rows:
        repeats = 1 if baseline_name == "Python loop" else args.repeats
        ours_s = best_time(ours, args.repeats)
        base_s = best_time(baseline, repeats)
        print(f"{name:<24}{ours_s * 1e3:>16.2f}{base_s * 1e3:>16.2f}  {baseline_name:<18}{ours_s / base_s:>22.3f}")


if __name__ == "__main__":
    main()
