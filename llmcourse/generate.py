"""Chapter 12: inference, turning a trained GPT into a text generator that is fast and correct.

Generation has two phases with different costs (Pope et al. 2022, "Efficiently Scaling
Transformer Inference"):

* **prefill**: the whole prompt goes through the model in one forward pass, which fills the KV
  cache with every prompt token's keys and values; many tokens per weight read, so it is bound
  by arithmetic;
* **decode**: one new token per step, which attends to the whole cache; one token per weight
  read, so it is bound by memory traffic, and batching several prompts is almost free.

A batch of prompts of different lengths is **left-padded**: every prompt ends in the last column,
so each row's next token is predicted by the same (last) position and the new tokens of all rows
are appended in one column. Two things make a padded row compute exactly what it would alone:
its tokens get their own positions (0 at its first real token, `padded_positions`), and an
attention mask keeps every real token from attending to padding (`GPT.forward`'s
`attention_mask`).

A prompt is a string (encoded as ordinary text after the end-of-text token that starts a
document) or a list of token ids used as they are (chapter 13's chat prompts, special tokens and
all).

Each row stops on its own: at a special token (`"eos"`: the end-of-text token of a document, or
the end of a chat message), at a stop sequence (`"stop"`,
searched in the decoded text, so it may span tokens) or after `max_new_tokens` (`"length"`). A
finished row leaves the batch, cache rows included, so no compute is spent on it.

Seeds: with `seed=s`, prompt i draws from its own generator seeded `s + i` (on the CPU), so its
text does not depend on which other prompts share the batch, nor on the device. (Up to rounding:
a different batch shape can round the logits differently, which chapter 12 shows can flip a
near-tie even at temperature 0.)

The context is fixed: a prompt (with the end-of-text token that starts it) plus `max_new_tokens`
must fit in `block_size`, otherwise `generate` raises an error (there is no sliding window).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from tqdm.auto import tqdm

from llmcourse.checks import ArgumentError, check_id_range, check_int, check_shape
from llmcourse.model import GPT
from llmcourse.sampling import SamplingSettings, find_stop, next_token, process, sample, stop_holdback
from llmcourse.tokenizer import ENDOFTEXT, Tokenizer

__all__ = ["FINISH_REASONS", "Completion", "StaticKVCache", "generate", "left_pad", "padded_positions", "stream"]

FINISH_REASONS = ("eos", "stop", "length")


# ---------------------------------------------------------------------------------- padding


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-align token lists in one batch: ids `(B, T)` int64 and mask `(B, T)` bool (True = real).

    T is the longest prompt; shorter ones get `pad_id` in front. The pad id is never attended to,
    so any valid id will do.
    """
    check_int("pad_id", pad_id, 0, hint="any valid token id: padding is masked out")
    if isinstance(prompts, Tensor) or len(prompts) == 0:
        raise ArgumentError("prompts must be a non-empty list of token-id lists, e.g. [[3, 7], [5]]")
    empty = [row for row, prompt in enumerate(prompts) if len(prompt) == 0]
    if empty:
        raise ArgumentError(f"prompt {empty[0]} has no tokens: every row needs at least one (e.g. end-of-text) "
                            "to predict the next token from")
    width = max(len(prompt) for prompt in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.bool)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.as_tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt):] = True
    return ids, mask


def padded_positions(mask: Tensor) -> Tensor:
    """Each token's position in its own row: mask `(B, T)` bool -> `(B, T)` int64.

    0 at a row's first real token and counting up, as if the row had no padding; pad slots get 0
    (any valid position would do: nothing reads them).
    """
    check_shape("mask", mask, ("B", "T"), hint="True for real tokens, as left_pad returns")
    if mask.dtype != torch.bool:
        raise ArgumentError(f"mask must be a bool tensor (True = real token), got {mask.dtype}; use mask.bool()")
    return (mask.long().cumsum(dim=-1) - 1).clamp(min=0)


# ---------------------------------------------------------------------------------- the cache


class StaticKVCache:
    """A KV cache allocated once, at its full size: the same interface as `KVCache`.

    `KVCache` concatenates, so every step copies the whole cache into a new tensor. Here keys and
    values live in two `(n_layers, B, H_kv, max_len, D)` buffers; `update` writes the new
    positions in place and returns views of the filled part. No copy, no allocation per step, and
    the memory needed is known (and fails, if it must) before generation starts.
    """

    def __init__(self, n_layers: int, batch_size: int, n_kv_heads: int, max_len: int, head_dim: int, *,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.n_layers = check_int("n_layers", n_layers, 1, hint="one slot per transformer block")
        shape = (n_layers, check_int("batch_size", batch_size, 1), check_int("n_kv_heads", n_kv_heads, 1),
                 check_int("max_len", max_len, 1, hint="prompt length + new tokens"), check_int("head_dim", head_dim, 1))
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = [0] * n_layers  # filled positions per layer

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    def seq_len(self, layer: int) -> int:
        """Tokens cached for `layer`: the position of the next token that layer will see."""
        return self.lengths[self._check_layer(layer)]

    @property
    def length(self) -> int:
        """Tokens cached (= start position of the next call), as `KVCache.length`."""
        return self.seq_len(0)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v `(B, H_kv, T_new, D)` after what `layer` holds; return views `(B, H_kv, T_past + T_new, D)`."""
        self._check_layer(layer)
        _, batch, heads, _, head_dim = self.keys.shape
        check_shape("k", k, (batch, heads, "T", head_dim), hint="the cache's (batch_size, n_kv_heads, T, head_dim)")
        check_shape("v", v, tuple(k.shape), hint="the same shape as k")
        if k.dtype != self.keys.dtype:
            raise ArgumentError(f"k has dtype {k.dtype} but the cache holds {self.keys.dtype}; build "
                                f"StaticKVCache(..., dtype={k.dtype})")
        start, end = self.lengths[layer], self.lengths[layer] + k.shape[-2]
        if end > self.max_len:
            raise ArgumentError(f"layer {layer} holds {start} positions and got {k.shape[-2]} more, past "
                                f"max_len={self.max_len}; build the cache with max_len >= {end} (or reset() it)")
        self.keys[layer, :, :, start:end] = k
        self.values[layer, :, :, start:end] = v
        self.lengths[layer] = end
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def reset(self) -> None:
        """Forget everything (the buffers stay allocated; they are overwritten)."""
        self.lengths = [0] * self.n_layers

    def truncate(self, length: int) -> None:
        """Forget every cached position from `length` on, in every layer (as `KVCache.truncate`)."""
        check_int("length", length, 0, hint="the number of positions to keep")
        self.lengths = [min(filled, length) for filled in self.lengths]

    def keep_rows(self, rows: Tensor) -> None:
        """Keep only these batch rows `(B_kept,)` (indices), in that order: finished rows leave the batch."""
        self.keys, self.values = self.keys[:, rows], self.values[:, rows]

    @property
    def nbytes(self) -> int:
        """Memory held by the two buffers, in bytes: all of it, filled or not (it is preallocated)."""
        return 2 * self.keys.numel() * self.keys.element_size()

    def _check_layer(self, layer: int) -> int:
        return check_int("layer", layer, 0, below=self.n_layers, hint="one per layer")


# ---------------------------------------------------------------------------------- one row


@dataclass
class Completion:
    """What one prompt produced.

    text: the new text, without the end-of-text token and cut before a stop sequence.
    token_ids: the new tokens, the end-of-text token or the tokens that made the stop included.
    finish_reason: "eos" (end-of-text), "stop" (a stop sequence) or "length" (max_new_tokens).
    prompt_tokens: tokens the prompt took, the end-of-text token that starts it included.
    """

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int


class _Row:
    """One prompt's generation so far: its new tokens, their bytes and why it ended (None: running)."""

    def __init__(self, prompt_tokens: int, stop: tuple[str, ...]) -> None:
        self.prompt_tokens, self.stop = prompt_tokens, stop
        self.token_ids: list[int] = []
        self.data = bytearray()
        self.finish_reason: str | None = None

    def add(self, token: int, tokenizer: Tokenizer, max_new_tokens: int) -> None:
        self.token_ids.append(token)
        if token in tokenizer.special_ids:
            self.finish_reason = "eos"
            return
        self.data += tokenizer.token_bytes(token)
        if self.stop and find_stop(_utf8(self.data, final=False), self.stop) is not None:
            self.finish_reason = "stop"
        elif len(self.token_ids) == max_new_tokens:
            self.finish_reason = "length"

    def text(self) -> str:
        """The text so far, cut before a stop sequence. While the row runs, its end is held back
        where it may still change: an unfinished UTF-8 character, or the start of a stop sequence."""
        running = self.finish_reason is None
        text = _utf8(self.data, final=not running)
        cut = find_stop(text, self.stop)
        if cut is not None:
            return text[:cut]
        return text[:len(text) - stop_holdback(text, self.stop)] if running else text

    def completion(self) -> Completion:
        return Completion(self.text(), list(self.token_ids), self.finish_reason or "length", self.prompt_tokens)


def _utf8(data: bytes | bytearray, final: bool) -> str:
    """Decode as `Tokenizer.decode` does (bad bytes become U+FFFD); unless `final`, leave out a
    last character whose bytes are not all there yet (the next token may complete it)."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(bytes(data), final=final)


# ---------------------------------------------------------------------------------- the engine


def _next_tokens(logits: Tensor, history: Tensor, settings: SamplingSettings,
                 generators: list[torch.Generator] | None) -> Tensor:
    """The next token of each row: logits `(B, V)`, earlier ids `(B, T)` (-1 = padding) -> `(B,)`.

    The levers run once for the whole batch; with generators, row i then draws from
    `generators[i]` alone, so its draws do not depend on the other rows. Greedy draws nothing.
    """
    if generators is None or settings.greedy:
        return next_token(logits, history, settings)
    processed = process(logits, history, settings)
    return torch.cat([sample(processed[row, None], generator) for row, generator in enumerate(generators)])


def _check_fits(prompts: list[list[int]], max_new_tokens: int, block_size: int) -> None:
    longest = max(len(prompt) for prompt in prompts)
    if longest + max_new_tokens > block_size:
        fix = ("shorten the prompt" if longest >= block_size else
               f"ask for at most {block_size - longest} new tokens, or shorten the prompt")
        raise ArgumentError(f"a prompt of {longest} tokens (the end-of-text token that starts it included) + "
                            f"max_new_tokens={max_new_tokens} exceed the model's block_size={block_size}; {fix}")


@torch.inference_mode()
def _run(model: GPT, tokenizer: Tokenizer, prompts: list[list[int]], max_new_tokens: int,
         settings: SamplingSettings, stop: tuple[str, ...],
         generators: list[torch.Generator] | None) -> Iterator[list[_Row]]:
    """Generate for every prompt at once; yield all the rows after each new token.

    Prefill runs the left-padded prompts `(B, T)` in one forward pass; each decode step feeds one
    token per running row. A finished row is dropped from the batch (ids, mask, cache rows).
    """
    config, device = model.config, next(model.parameters()).device
    rows = [_Row(len(prompt), stop) for prompt in prompts]
    live = list(range(len(rows)))  # batch row b is rows[live[b]]
    ids, mask = (t.to(device) for t in left_pad(prompts, pad_id=tokenizer.special_tokens[ENDOFTEXT]))
    padded = not bool(mask.all())  # without padding, no mask: attention keeps its plain causal kernel
    positions, history = padded_positions(mask), ids.masked_fill(~mask, -1)  # penalties skip negative ids
    cache = StaticKVCache(config.n_layer, len(rows), config.kv_heads, ids.shape[1] + max_new_tokens,
                          config.head_dim, dtype=next(model.parameters()).dtype, device=device)
    logits, _ = model(ids, kv_cache=cache, positions=positions, attention_mask=mask if padded else None)
    while True:
        tokens = _next_tokens(logits[:, -1], history, settings,
                              None if generators is None else [generators[i] for i in live])
        for index, token in zip(live, tokens.tolist()):
            rows[index].add(token, tokenizer, max_new_tokens)
        yield rows
        running = [b for b, index in enumerate(live) if rows[index].finish_reason is None]
        if not running:
            return
        if len(running) < len(live):  # drop the finished rows: no more compute on them
            keep = torch.tensor(running, device=device)
            cache.keep_rows(keep)
            tokens, history, mask, positions = tokens[keep], history[keep], mask[keep], positions[keep]
            live = [live[b] for b in running]
        history = torch.cat([history, tokens[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones(len(live), 1)], dim=1)
        positions = positions[:, -1:] + 1
        logits, _ = model(tokens[:, None], kv_cache=cache, positions=positions,
                          attention_mask=mask if padded else None)


def _prepare(model: GPT, tokenizer: Tokenizer, prompts: Sequence[str], max_new_tokens: int,
             stop: Sequence[str], seed: int | None) -> tuple[list[list[int]], tuple[str, ...], list | None]:
    """Check the arguments; return the prompts' token ids, the stop sequences and the generators."""
    if isinstance(prompts, str) or len(prompts) == 0 or not all(_is_prompt(p) for p in prompts):
        raise ArgumentError(f"prompts must be a non-empty list of strings (or of token id lists), got "
                            f"{prompts!r}; for one prompt pass [prompt]")
    check_int("max_new_tokens", max_new_tokens, 1)
    if isinstance(stop, str) or not all(isinstance(s, str) and s for s in stop):
        raise ArgumentError(f"stop must be a list of non-empty strings, got {stop!r}; e.g. stop=['\\n\\n']")
    eot = tokenizer.special_tokens[ENDOFTEXT]
    # Training documents start after an end-of-text token, so a prompt starting with one starts a document.
    ids = [[eot] + tokenizer.encode_ordinary(prompt) if isinstance(prompt, str) else list(prompt)
           for prompt in prompts]
    for prompt in ids:
        check_id_range("prompt", torch.tensor(prompt), tokenizer.vocab_size, hint="ids from this tokenizer")
    _check_fits(ids, max_new_tokens, model.config.block_size)
    if seed is None:
        return ids, tuple(stop), None
    check_int("seed", seed, 0, hint="or None for torch's global random state")
    return ids, tuple(stop), [torch.Generator().manual_seed(seed + row) for row in range(len(prompts))]


def _is_prompt(prompt: object) -> bool:
    """A string, or a non-empty list of token ids."""
    if isinstance(prompt, str):
        return True
    return isinstance(prompt, (list, tuple)) and len(prompt) > 0 and all(isinstance(t, int) for t in prompt)


def _eval_mode(model: GPT) -> bool:
    """Switch off dropout for generation; return whether the model was training, to restore it."""
    was_training = model.training
    model.eval()
    return was_training


def generate(model: GPT, tokenizer: Tokenizer, prompts: list[str] | list[list[int]], max_new_tokens: int = 64,
             settings: SamplingSettings | None = None, *, stop: Sequence[str] = (), seed: int | None = None,
             progress: bool = False) -> list[Completion]:
    """Continue every prompt, all of them in one batch; one `Completion` per prompt, in order.

    settings: the decoding levers (`llmcourse.sampling`; None: plain sampling at temperature 1).
    stop: texts that end a row where they appear (not included in its text). seed: prompt i
    draws from its own generator seeded `seed + i` (None: torch's global random state).
    """
    ids, stop, generators = _prepare(model, tokenizer, prompts, max_new_tokens, stop, seed)
    settings = SamplingSettings() if settings is None else settings
    was_training = _eval_mode(model)
    try:
        with tqdm(total=max_new_tokens, desc="generate", disable=not progress) as bar:
            for rows in _run(model, tokenizer, ids, max_new_tokens, settings, stop, generators):
                bar.update()
    finally:
        model.train(was_training)
    return [row.completion() for row in rows]


def stream(model: GPT, tokenizer: Tokenizer, prompt: str | list[int], max_new_tokens: int = 64,
           settings: SamplingSettings | None = None, *, stop: Sequence[str] = (),
           seed: int | None = None) -> Iterator[str]:
    """Yield the text of one prompt's continuation as it is made, piece by piece.

    The pieces join into `generate(...)[0].text` with the same arguments. A piece never holds
    text that may still change: the start of a possible stop sequence, or an unfinished UTF-8
    character, waits until the next tokens settle it.
    """
    ids, stop, generators = _prepare(model, tokenizer, [prompt], max_new_tokens, stop, seed)
    settings = SamplingSettings() if settings is None else settings
    was_training = _eval_mode(model)
    shown = 0
    try:
        for rows in _run(model, tokenizer, ids, max_new_tokens, settings, stop, generators):
            text = rows[0].text()
            if len(text) > shown:
                yield text[shown:]
                shown = len(text)
    finally:
        model.train(was_training)
