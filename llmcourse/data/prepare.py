"""A training run's data, made once: corpus -> BPE tokenizer -> one flat file of token ids.

Both files live in a cache folder named by the settings that determine them, so every run with the
same corpus, size and vocabulary reuses them, and `split_tokens` cuts the ids into the part a
model trains on and the tail it is validated on.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from llmcourse.data.download import corpus, resolve_cache_dir
from llmcourse.data.tokens import tokenize_to_file
from llmcourse.tokenizer import Tokenizer
from llmcourse.train_config import TrainConfig

__all__ = ["prepare_data", "split_tokens"]


def prepare_data(config: TrainConfig, progress: bool = True) -> tuple[Path, Path]:
    """Train the tokenizer and write the corpus's token file, unless an earlier run already did.

    Returns (tokenizer path, token file path), both in the data cache (`config.data_dir`, else
    $LLMCOURSE_CACHE, else ~/.cache/llmcourse).
    """
    tokenizer_chars = min(config.corpus_chars, config.tokenizer_chars)
    name = f"tokens-{config.corpus}-{config.corpus_chars}c-v{config.vocab_size}-t{tokenizer_chars}c"
    folder = resolve_cache_dir(config.data_dir or None) / name
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_path, tokens_path = folder / "tokenizer.json", folder / "train.bin"
    if not tokenizer_path.is_file():
        text = list(corpus(config.corpus, tokenizer_chars))
        Tokenizer.train(text, config.vocab_size, progress=progress).save(tokenizer_path)
    if not Path(str(tokens_path) + ".json").is_file():  # the sidecar is written last: the file is complete
        tokenizer = Tokenizer.load(tokenizer_path)
        big = config.corpus_chars >= 20_000_000  # worth several encoding processes
        tokenize_to_file(corpus(config.corpus, config.corpus_chars), tokenizer, tokens_path,
                         progress=progress, corpus=f"{config.corpus}:{config.corpus_chars}",
                         workers=min(8, os.cpu_count() or 1) if big else 1)
    return tokenizer_path, tokens_path


def split_tokens(tokens: np.ndarray, val_fraction: float, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val): the last `val_fraction` of the 1-D `tokens` is validation, never trained on."""
    n_val = int(len(tokens) * val_fraction)
    if min(n_val, len(tokens) - n_val) <= block_size:
        raise ValueError(f"{len(tokens)} tokens are too few for block_size={block_size} and "
                         f"val_fraction={val_fraction}; raise corpus_chars")
    return tokens[:-n_val], tokens[-n_val:]
