"""Chapter 02 benchmark: the package's BPE tokenizer against a naive trainer, HF tokenizers and tiktoken.

Run from the repository root:  .venv/bin/python bench/bench_tokenizer.py
Options: --vocab (default 4096), --naive-merges (default 200), --text PATH (default
../shared/data/tinyshakespeare.txt), --tinyworld (add a row for 10 MB of TinyWorld text).
Prints one table; compare the ratios (machines are noisy, absolute seconds are not the point).

Training: ours (`Tokenizer.train`), a naive trainer written below (recounts every pair after every
merge; run for --naive-merges merges only and extrapolated linearly to the full number), and HF
`tokenizers` (byte-level BPE with the same GPT-4 split regex). Encoding: ours (`encode_ordinary`,
cold cache) against `tiktoken` built from our merges; the two must give identical ids.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections import Counter
from pathlib import Path

import regex
import tiktoken
import tokenizers
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

from llmcourse.tokenizer import GPT4_SPLIT_PATTERN, Tokenizer

DEFAULT_TEXT = Path(__file__).resolve().parents[1].parent / "shared/data/tinyshakespeare.txt"
SPECIALS = ("<|endoftext|>",)


def naive_train(text: str, n_merges: int) -> tuple[list[tuple[int, int]], float, float]:
    """The textbook BPE loop: after every merge, recount all pairs over the distinct pre-tokens.

    Same pre-tokenization (GPT-4 regex, each distinct pre-token counted once with its frequency)
    and same tie-breaking (highest count, then smallest pair) as the package. Returns the merges,
    the seconds spent pre-tokenizing and the seconds spent in the merge loop.
    """
    start = time.perf_counter()
    counts = Counter(regex.findall(GPT4_SPLIT_PATTERN, text))
    words = [list(piece.encode("utf-8")) for piece in counts]
    freqs = list(counts.values())
    pretokenize_s = time.perf_counter() - start

    start = time.perf_counter()
    merges: list[tuple[int, int]] = []
    for rank in range(n_merges):
        pairs: Counter[tuple[int, int]] = Counter()
        for word, freq in zip(words, freqs):
            for pair in zip(word, word[1:]):
                pairs[pair] += freq
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], -p[0], -p[1]))
        new_id = 256 + rank
        for w, word in enumerate(words):
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(new_id)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            words[w] = out
        merges.append(best)
    return merges, pretokenize_s, time.perf_counter() - start


def hf_train(text: str, vocab_size: int) -> tuple[tokenizers.Tokenizer, float]:
    """HF byte-level BPE: split with the GPT-4 regex, then map bytes to ByteLevel characters."""
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(GPT4_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=list(SPECIALS),
    )
    start = time.perf_counter()
    hf.train_from_iterator([text], trainer=trainer)
    return hf, time.perf_counter() - start


def bench_corpus(name: str, text: str, vocab_size: int, naive_merges: int) -> dict[str, object]:
    """Train the three ways and encode the two ways on `text`; return one table row."""
    mb = len(text.encode("utf-8")) / 1e6

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:  # small corpora stop merging early
        warnings.simplefilter("always")
        tok = Tokenizer.train(text, vocab_size, special_tokens=SPECIALS, pattern=GPT4_SPLIT_PATTERN, progress=False)
    ours_train_s = time.perf_counter() - start
    n_merges = len(tok.merges)

    naive, pretokenize_s, loop_s = naive_train(text, min(naive_merges, n_merges))
    if naive != tok.merges[: len(naive)]:
        first_diff = next(i for i, (x, y) in enumerate(zip(naive, tok.merges)) if x != y)
        raise AssertionError(f"{name}: naive merge {first_diff} is {naive[first_diff]}, ours is {tok.merges[first_diff]}")
    naive_train_s = pretokenize_s + loop_s * n_merges / len(naive)

    hf, hf_train_s = hf_train(text, vocab_size)

    fresh = Tokenizer(tok.merges, tok.pattern, tok.special_tokens)  # cold pre-token cache
    start = time.perf_counter()
    ours_ids = fresh.encode_ordinary(text)
    ours_encode_s = time.perf_counter() - start

    enc = tiktoken.Encoding(
        name=f"llmcourse-{name}",
        pat_str=GPT4_SPLIT_PATTERN,
        mergeable_ranks=tok.mergeable_ranks(),
        special_tokens=dict(tok.special_tokens),
    )
    start = time.perf_counter()
    tiktoken_ids = enc.encode_ordinary(text)
    tiktoken_encode_s = time.perf_counter() - start
    assert ours_ids == tiktoken_ids, f"{name}: our ids differ from tiktoken's"

    return {
        "corpus": f"{name} {mb:.1f} MB",
        "vocab": f"{tok.vocab_size}/{hf.get_vocab_size()}",
        "ours": ours_train_s,
        "naive": naive_train_s,
        "naive_run": len(naive),
        "hf": hf_train_s,
        "ours_mbs": mb / ours_encode_s,
        "tiktoken_mbs": mb / tiktoken_encode_s,
        "tokens": len(ours_ids),
        "early_stop": bool(caught),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=4096, help="vocabulary size to train to")
    parser.add_argument("--naive-merges", type=int, default=200, help="merges the naive trainer really runs")
    parser.add_argument("--text", type=Path, default=DEFAULT_TEXT, help="training/encoding text (UTF-8)")
    parser.add_argument("--tinyworld", action="store_true", help="add a row for 10 MB of TinyWorld text")
    args = parser.parse_args()

    if not args.text.is_file():
        parser.error(f"text file {args.text} not found (pass --text PATH to use another UTF-8 text)")
    corpora = [(args.text.stem, args.text.read_text(encoding="utf-8"))]
    if args.tinyworld:
        from llmcourse.data.tinyworld import corpus_text

        corpora.append(("tinyworld", corpus_text(10_000_000)))

    rows = [bench_corpus(name, text, args.vocab, args.naive_merges) for name, text in corpora]

    print(f"vocab {args.vocab} (ours/HF reached), {os.cpu_count()} CPUs; tokenizers {tokenizers.__version__}, "
          f"tiktoken {tiktoken.__version__}; one run each")
    print("naive (s) = pre-tokenizing + (merge loop for the first N merges) x (all merges / N), N in brackets;")
    print("its first N merges equal ours (checked). Encoding: MB/s of UTF-8 input, ids checked identical.")
    header = (f"{'corpus':<22}{'vocab':>10}{'ours (s)':>10}{'naive (s)':>16}{'HF (s)':>9}"
              f"{'naive/ours':>12}{'ours/HF':>9}{'ours MB/s':>11}{'tiktoken MB/s':>15}{'tiktoken/ours':>15}")
    print(header)
    for r in rows:
        naive = f"{r['naive']:.1f} [{r['naive_run']}]"
        print(f"{r['corpus']:<22}{r['vocab']:>10}{r['ours']:>10.2f}{naive:>16}{r['hf']:>9.2f}"
              f"{r['naive'] / r['ours']:>12.1f}{r['ours'] / r['hf']:>9.2f}{r['ours_mbs']:>11.2f}"
              f"{r['tiktoken_mbs']:>15.2f}{r['tiktoken_mbs'] / r['ours_mbs']:>15.1f}")
    for r in rows:
        if r["early_stop"]:
            print(f"note: {r['corpus']} ran out of pairs to merge: vocab reached {r['vocab'].split('/')[0]}")


if __name__ == "__main__":
    main()
