"""Token files: a corpus tokenized once, stored flat on disk, and read back in random windows.

Pretraining reads the same tokens many times, so we tokenize the corpus once and keep the ids in a
flat binary file: every document's ids followed by the separator (`<|endoftext|>`), one after
another, as `uint16` (2 bytes a token, enough for a vocabulary of up to 65,536 ids: GPT-2's
50,257 fit) or `uint32` for larger vocabularies. numpy memory-maps the file, so a training run
reads only the windows it samples and a corpus larger than memory costs nothing to open.

A bare array of numbers cannot say what it means, so each file has a JSON *sidecar*
(`tokens.bin.json`) recording the format version, dtype, token count, vocabulary size and a
hash of the tokenizer. `TokenFile.open` checks all of it: a file made by another tokenizer,
a truncated file or a lost sidecar is an error that says what to do, never silent garbage.

Typical use:

    token_file = tokenize_to_file(corpus("tinyworld", 5_000_000), tokenizer, "tinyworld.bin")
    train, val = token_file.split(0.1)
    x, y = get_batch(train, batch_size=8, block_size=64, generator=generator, device="cpu")
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from llmcourse.checks import ArgumentError, check_int, check_real
from llmcourse.files import atomic_path, read_versioned_json
from llmcourse.tokenizer import ENDOFTEXT

__all__ = [
    "TOKEN_FILE_FORMAT",
    "TOKEN_FILE_VERSION",
    "Batches",
    "TokenFile",
    "TokenFileError",
    "get_batch",
    "token_dtype",
    "tokenize_to_file",
    "tokenizer_sha256",
]

TOKEN_FILE_FORMAT = "llmcourse-tokens"
TOKEN_FILE_VERSION = 1
# Little-endian whatever the machine, so a file written on one machine reads the same on another.
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
# Documents are encoded in chunks of about this many characters: big enough that the per-chunk
# overhead (a numpy conversion, a write, a message to a worker process) is negligible, small
# enough that memory stays flat however long the stream is.
_CHUNK_CHARS = 1 << 20


class TokenFileError(ValueError):
    """A token file that is missing, truncated, or does not match its sidecar or tokenizer."""


class TokenizerLike(Protocol):
    """What tokenizing needs from a tokenizer (`llmcourse.tokenizer.Tokenizer` has it all)."""

    merges: list[tuple[int, int]]
    pattern: str
    special_tokens: dict[str, int]

    @property
    def vocab_size(self) -> int: ...

    def encode_ordinary(self, text: str) -> list[int]: ...


# --------------------------------------------------------------------------- writing


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id `0..vocab_size-1`: uint16 or uint32."""
    vocab_size = check_int("vocab_size", vocab_size, 1)
    if vocab_size <= 1 << 16:
        return _DTYPES["uint16"]
    if vocab_size <= 1 << 32:
        return _DTYPES["uint32"]
    raise ArgumentError(f"vocab_size={vocab_size} does not fit in uint32 token ids (at most {1 << 32})")


def tokenizer_sha256(tokenizer: TokenizerLike) -> str:
    """A fingerprint of what decides the ids: the merges (in order), the split pattern, the specials.

    Two tokenizers with the same fingerprint encode every text identically, whatever file they
    were loaded from (so re-saving a tokenizer does not invalidate its token files).
    """
    identity = {
        "merges": [[int(a), int(b)] for a, b in tokenizer.merges],
        "pattern": tokenizer.pattern,
        "special_tokens": [[name, int(i)] for name, i in tokenizer.special_tokens.items()],
    }
    canonical = json.dumps(identity, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def tokenize_to_file(
    texts: Iterable[str],
    tokenizer: TokenizerLike,
    path: str | os.PathLike,
    *,
    separator: str | None = ENDOFTEXT,
    progress: bool | None = None,
    corpus: str = "",
    workers: int = 1,
) -> TokenFile:
    """Encode each document followed by `separator`'s id and stream the ids to the file `path`.

    Documents are encoded as ordinary text (a literal `"<|endoftext|>"` inside a document stays
    text: data cannot forge a separator); `separator=None` writes no separator. The ids go to a
    temporary file in blocks and it is renamed to `path` only when complete, with the sidecar
    `path + ".json"` beside it, so an interrupted run leaves no file that looks finished.
    `corpus` is a free-form note stored in the sidecar (where the text came from).
    `workers > 1` encodes chunks of documents in that many processes. `progress`: a tqdm bar
    counting characters (`None`: shown only if the work takes more than a second).
    Returns the opened `TokenFile`.
    """
    path = Path(path)
    separator_id = _separator_id(tokenizer, separator)
    dtype = token_dtype(tokenizer.vocab_size)
    check_int("workers", workers, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sidecar = _sidecar_path(path)
    n_tokens = n_documents = 0
    bar = tqdm(
        unit="char", unit_scale=True, desc=f"tokenizing {path.name}",
        disable=progress is False, delay=1.0 if progress is None else 0.0,
    )
    # Renamed in reverse order of entry: the ids first, then the sidecar that vouches for them.
    with bar, atomic_path(sidecar) as temporary_json, atomic_path(path) as temporary_bin:
        with open(temporary_bin, "wb") as file:
            for chunk, ids in _encode_chunks(_chunks(texts), tokenizer, separator_id, dtype, workers):
                ids.tofile(file)
                n_tokens += len(ids)
                n_documents += len(chunk)
                bar.update(sum(map(len, chunk)))
                bar.set_postfix(tokens=f"{n_tokens:,}", refresh=False)
        meta = {
            "format": TOKEN_FILE_FORMAT,
            "version": TOKEN_FILE_VERSION,
            "dtype": dtype.name,
            "n_tokens": n_tokens,
            "vocab_size": tokenizer.vocab_size,
            "tokenizer_sha256": tokenizer_sha256(tokenizer),
            "corpus": corpus,
            "n_documents": n_documents,
            "separator": separator,
        }
        temporary_json.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
        # A stale sidecar must never describe the new data, even for an instant: drop it first.
        sidecar.unlink(missing_ok=True)
    return TokenFile.open(path, tokenizer)


def _separator_id(tokenizer: TokenizerLike, separator: str | None) -> int | None:
    if separator is None:
        return None
    if separator not in tokenizer.special_tokens:
        raise ValueError(
            f"separator {separator!r} is not a special token of this tokenizer "
            f"(it has {list(tokenizer.special_tokens)}); pass one of those, or separator=None"
        )
    return tokenizer.special_tokens[separator]


def _chunks(texts: Iterable[str]) -> Iterator[list[str]]:
    """Group a stream of documents into lists of about `_CHUNK_CHARS` characters (whole documents)."""
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of documents, not one string; wrap it as [text]")
    chunk: list[str] = []
    size = 0
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"every document must be a str, got {type(text).__name__}: {text!r:.60}")
        chunk.append(text)
        size += len(text)
        if size >= _CHUNK_CHARS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _encode_chunk(
    documents: list[str], tokenizer: TokenizerLike, separator_id: int | None, dtype: np.dtype
) -> np.ndarray:
    """The ids of `documents`, each followed by `separator_id`, as one flat array of `dtype`."""
    ids: list[int] = []
    for document in documents:
        ids.extend(tokenizer.encode_ordinary(document))  # the tokenizer's cache makes repeats cheap
        if separator_id is not None:
            ids.append(separator_id)
    array = np.array(ids, dtype=np.int64)
    if array.size and (array.min() < 0 or array.max() >= tokenizer.vocab_size):
        raise ValueError(f"the tokenizer produced an id outside 0..{tokenizer.vocab_size - 1}")
    return array.astype(dtype)


def _encode_chunks(
    chunks: Iterator[list[str]], tokenizer: TokenizerLike, separator_id: int | None, dtype: np.dtype, workers: int
) -> Iterator[tuple[list[str], np.ndarray]]:
    """`(chunk, ids)` in input order, encoded here or in a pool of `workers` processes."""
    if workers == 1:
        for chunk in chunks:
            yield chunk, _encode_chunk(chunk, tokenizer, separator_id, dtype)
        return
    # fork shares the tokenizer with the workers for free; elsewhere (macOS, Windows) fork is
    # unsafe or missing and spawn pickles it to each worker once, through the initializer.
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    with context.Pool(workers, initializer=_init_worker, initargs=(tokenizer, separator_id, dtype)) as pool:
        # At most 2 chunks per worker in flight: Pool.imap would read the whole stream ahead into
        # memory, which defeats streaming a corpus larger than RAM.
        pending: deque = deque()
        for chunk in chunks:
            pending.append((chunk, pool.apply_async(_encode_in_worker, (chunk,))))
            if len(pending) >= 2 * workers:
                done, result = pending.popleft()
                yield done, result.get()
        while pending:
            done, result = pending.popleft()
            yield done, result.get()


_worker_args: tuple[Any, ...] = ()


def _init_worker(tokenizer: TokenizerLike, separator_id: int | None, dtype: np.dtype) -> None:
    global _worker_args
    _worker_args = (tokenizer, separator_id, dtype)


def _encode_in_worker(documents: list[str]) -> np.ndarray:
    return _encode_chunk(documents, *_worker_args)


def _sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


# --------------------------------------------------------------------------- reading


class TokenFile:
    """A token file opened read-only as a numpy memmap, checked against its sidecar.

    `tokens` is the flat id array (`uint16` or `uint32`, shape `(N,)`); `meta` the
    sidecar's fields. `split(val_fraction)` or `train`/`val` give disjoint views.
    """

    def __init__(self, path: Path, tokens: np.ndarray, meta: dict[str, Any], val_fraction: float = 0.1) -> None:
        self.path = path
        self.tokens = tokens
        self.meta = meta
        self.val_fraction = val_fraction

    @classmethod
    def open(
        cls, path: str | os.PathLike, tokenizer: TokenizerLike | None = None, *, val_fraction: float = 0.1
    ) -> TokenFile:
        """Memory-map `path` after checking its sidecar (and, if given, that `tokenizer` made it).

        Raises `TokenFileError` naming the problem: no file, no or corrupt sidecar, another
        format version, a size that disagrees with the sidecar (truncated or overwritten), or a
        different tokenizer.
        """
        path = Path(path)
        rebuild = f"re-create it with tokenize_to_file(..., {str(path)!r})"
        if not path.is_file():
            raise TokenFileError(f"no token file at {str(path)!r}; {rebuild}")
        meta = _read_sidecar(path, rebuild)
        dtype = _DTYPES[meta["dtype"]]
        n_tokens = meta["n_tokens"]
        size = path.stat().st_size
        if size != n_tokens * dtype.itemsize:
            raise TokenFileError(
                f"{str(path)!r} has {size:,} bytes but its sidecar says {n_tokens:,} {dtype.name} tokens "
                f"({n_tokens * dtype.itemsize:,} bytes): the file is truncated or was overwritten; {rebuild}"
            )
        if tokenizer is not None:
            _check_tokenizer(path, meta, tokenizer, rebuild)
        # numpy cannot map an empty file; an empty corpus is still a valid (empty) token file.
        tokens = np.memmap(path, dtype=dtype, mode="r") if n_tokens else np.empty(0, dtype=dtype)
        val_fraction = check_real("val_fraction", val_fraction, above=0, below=1)
        return cls(path, tokens, meta, val_fraction)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    @property
    def dtype(self) -> np.dtype:
        return self.tokens.dtype

    def split(self, val_fraction: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """`(train, val)`: the first `1 - val_fraction` of the tokens and the rest, as views.

        The two never overlap, so a window sampled from `train` never sees a validation token.
        The cut falls at a token, so one document may straddle it (half in each part).
        """
        fraction = self.val_fraction if val_fraction is None else val_fraction
        val_fraction = check_real("val_fraction", fraction, above=0, below=1)
        n = len(self.tokens)
        n_val = round(n * val_fraction)
        if n_val == 0 or n_val == n:
            raise ArgumentError(
                f"val_fraction={val_fraction} of {n} tokens leaves an empty "
                f"{'validation' if n_val == 0 else 'training'} part; use more data or another val_fraction"
            )
        return self.tokens[: n - n_val], self.tokens[n - n_val :]

    @property
    def train(self) -> np.ndarray:
        """The training view of `split` with this file's `val_fraction`."""
        return self.split()[0]

    @property
    def val(self) -> np.ndarray:
        """The validation view of `split` with this file's `val_fraction`."""
        return self.split()[1]

    def __repr__(self) -> str:
        return (
            f"TokenFile({str(self.path)!r}, n_tokens={len(self):,}, dtype={self.dtype.name}, "
            f"vocab_size={self.vocab_size}, corpus={self.meta.get('corpus', '')!r})"
        )


def _read_sidecar(path: Path, rebuild: str) -> dict[str, Any]:
    """The sidecar's fields, each checked for presence and type."""
    sidecar = _sidecar_path(path)
    if not sidecar.is_file():
        raise TokenFileError(
            f"{str(path)!r} has no sidecar {sidecar.name!r}, so nothing says which tokenizer or dtype "
            f"wrote it; {rebuild}"
        )
    meta = read_versioned_json(sidecar, TOKEN_FILE_FORMAT, TOKEN_FILE_VERSION, kind="sidecar",
                               error=TokenFileError, hint=rebuild)
    expected = {"dtype": str, "n_tokens": int, "vocab_size": int, "tokenizer_sha256": str}
    for key, kind in expected.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise TokenFileError(f"{str(sidecar)!r} lacks a valid {key!r} ({kind.__name__}); {rebuild}")
    if meta["dtype"] not in _DTYPES or meta["n_tokens"] < 0 or meta["vocab_size"] < 1:
        raise TokenFileError(f"{str(sidecar)!r} has an invalid dtype, n_tokens or vocab_size; {rebuild}")
    if _DTYPES[meta["dtype"]] != token_dtype(meta["vocab_size"]):
        raise TokenFileError(
            f"{str(sidecar)!r} says dtype {meta['dtype']} for vocab_size {meta['vocab_size']}, which needs "
            f"{token_dtype(meta['vocab_size']).name}; {rebuild}"
        )
    return meta


def _check_tokenizer(path: Path, meta: dict[str, Any], tokenizer: TokenizerLike, rebuild: str) -> None:
    theirs, ours = meta["tokenizer_sha256"], tokenizer_sha256(tokenizer)
    if theirs != ours or meta["vocab_size"] != tokenizer.vocab_size:
        raise TokenFileError(
            f"{str(path)!r} was tokenized by a different tokenizer (vocab_size {meta['vocab_size']}, "
            f"sha256 {theirs[:12]}...) than the one given (vocab_size {tokenizer.vocab_size}, sha256 "
            f"{ours[:12]}...): its ids would mean other tokens; load the tokenizer that made it, or {rebuild}"
        )


# --------------------------------------------------------------------------- batches


def get_batch(
    tokens: np.ndarray | torch.Tensor,
    batch_size: int,
    block_size: int,
    *,
    generator: torch.Generator,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch_size` random windows of `block_size + 1` consecutive tokens, as inputs and targets.

    Returns `x` and `y`, both `(B, T)` int64 on `device`, with `y[:, t] == x[:, t + 1]`
    for `t < T-1`: the target of each position is the next token. Window starts are drawn
    uniformly from `0..N-T-1` with `generator` (a CPU generator), so the same seed gives the
    same batches and no window reads past the end. On CUDA the batch is copied from pinned
    memory without blocking, so the copy overlaps the previous step's compute.
    """
    n = _check_window(tokens, batch_size, block_size)
    starts = torch.randint(0, n - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size + 1)
    if isinstance(tokens, torch.Tensor):
        index = (starts[:, None] + offsets).to(tokens.device)
        windows = tokens[index].to(torch.int64)  # (B, T+1)
    else:
        index = (starts[:, None] + offsets).numpy()
        windows = torch.from_numpy(tokens[index].astype(np.int64))  # (B, T+1); reads only these windows
    x, y = windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
    device = torch.device(device)
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def _check_window(tokens: np.ndarray | torch.Tensor, batch_size: int, block_size: int) -> int:
    """The number of tokens, after checking that a window of `block_size + 1` fits in them."""
    if not isinstance(tokens, (np.ndarray, torch.Tensor)):
        hint = " (pass its .tokens, .train or .val)" if isinstance(tokens, TokenFile) else ""
        raise TypeError(f"tokens must be a numpy array or a torch tensor, got {type(tokens).__name__}{hint}")
    check_int("batch_size", batch_size, 1)
    check_int("block_size", block_size, 1)
    if tokens.ndim != 1:
        raise ValueError(f"tokens must be a flat 1-D array of ids, got shape {tuple(tokens.shape)}")
    n = len(tokens)
    if n < block_size + 1:
        raise ValueError(
            f"{n} tokens are too few for block_size={block_size}: a window needs block_size + 1 = "
            f"{block_size + 1} tokens (input plus the next-token target); use a smaller block_size or more data"
        )
    return n


class Batches:
    """An endless iterator of `get_batch` batches with fixed arguments.

    Its randomness lives in `generator`: save `generator.get_state()` in a checkpoint and
    restore it to resume the exact same sequence of batches.
    """

    def __init__(
        self,
        tokens: np.ndarray | torch.Tensor,
        batch_size: int,
        block_size: int,
        *,
        generator: torch.Generator,
        device: str | torch.device = "cpu",
    ) -> None:
        self.tokens, self.batch_size, self.block_size = tokens, batch_size, block_size
        self.generator, self.device = generator, device
        _check_window(tokens, batch_size, block_size)  # fail here, not at the first next()

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return get_batch(
            self.tokens, self.batch_size, self.block_size, generator=self.generator, device=self.device
        )
