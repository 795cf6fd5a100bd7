"""Chapters 01 and 11: from a model's scores to the next token.

A language model gives, for each row of a batch, one score (a logit) per token of the vocabulary.
Decoding turns those `(B, V)` logits into one chosen token per row. Chapter 01 needs only two
steps, temperature and a draw; chapter 11 adds the levers between them:

    logits --penalties--> --temperature--> --top-k / top-p / min-p--> --softmax, draw--> token

Every lever is a *logits processor*: a pure function `(B, V) -> (B, V)` that returns new logits
and never modifies its input. A processor removes a token by setting its logit to `-inf`, so that
softmax gives it probability 0 and the others renormalise among themselves. Processors compose in
any order the caller likes; `process` applies them in the order above (the order `transformers`
and vLLM use: penalties on the raw logits, then temperature, then the filters).

Conventions, and where they differ from the common ones (`transformers` logits processors):

- temperature 0 means greedy: only the likeliest token is kept (the first one on a tie, as
  `argmax`); `transformers` refuses 0 and wants `do_sample=False` instead;
- top-k keeps every token tied with the k-th value (as `transformers`);
- top-p keeps the smallest set of likeliest tokens whose mass reaches p, including the token that
  crosses p, and every token tied with the last one kept (`transformers` keeps whichever of the
  tied tokens its sort puts first); p = 1 keeps every token, even those whose probability
  underflows to 0 (which `transformers` removes);
- min-p keeps the tokens with probability >= min_p times the top probability (as `transformers`);
- `min_tokens_to_keep` keeps every token tied with the last one it keeps (`transformers` keeps
  exactly that many, whichever its sort puts first), so no filter depends on a sort's tie order;
- the repetition penalty divides positive logits by the penalty and multiplies negative ones, once
  per distinct earlier token (CTRL, Keskar et al. 2019; as `transformers`); the frequency and
  presence penalties subtract count x frequency and presence from the logits of earlier tokens
  (OpenAI's API; `transformers` has no such processor);
- earlier tokens are `(B, T)` ids where a negative id is padding and is ignored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from llmcourse.checks import ArgumentError, check_int, check_integer_tensor, check_real

__all__ = [
    "SamplingSettings",
    "apply_temperature",
    "beam_search",
    "distinct_n",
    "find_stop",
    "frequency_presence_penalty",
    "logit_bias",
    "min_p_filter",
    "next_token",
    "no_repeat_ngram",
    "process",
    "repeated_ngram_rate",
    "repetition_penalty",
    "sample",
    "stop_holdback",
    "top_k_filter",
    "top_p_filter",
]


# ---------------------------------------------------------------------------------- chapter 01


def apply_temperature(logits: Tensor, temperature: float) -> Tensor:
    """Logits `(B, V)` divided by `temperature`: T < 1 sharpens the distribution, T > 1 flattens
    it, T = 1 leaves it as it is; T = 0 is greedy (only the likeliest token is kept)."""
    temperature = check_real("temperature", temperature, minimum=0,
                             hint="0 for greedy, 1 for the model's own distribution")
    if temperature == 0:
        best = logits.argmax(dim=-1, keepdim=True)
        return torch.full_like(logits, -math.inf).scatter(-1, best, logits.gather(-1, best))
    return logits / temperature


def sample(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One token id per row drawn from softmax(logits): `(B, V)` -> `(B,)` int64.

    The same `generator` state gives the same draws. A generator draws only on its own device,
    so the probabilities are moved there (a CPU generator with GPU logits draws on the CPU).
    """
    if logits.dim() != 2:
        raise ArgumentError(f"logits must be (B, V), got shape {tuple(logits.shape)}; "
                            "take the last position with logits[:, -1, :]")
    if not torch.isfinite(logits).any(dim=-1).all():
        raise ArgumentError("a row of logits has no finite entry: every token was filtered out; "
                            "loosen the filters (a larger top_k or top_p, a smaller min_p)")
    probs = torch.softmax(logits.float(), dim=-1)
    if generator is not None:
        probs = probs.to(generator.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1).to(logits.device)


# ---------------------------------------------------------------------------------- filters


def top_k_filter(logits: Tensor, k: int, min_tokens_to_keep: int = 1) -> Tensor:
    """Keep the `k` highest logits of each row (and every logit tied with the k-th); -inf elsewhere."""
    k = max(check_int("k", k, 1, hint="the number of tokens to keep"), min_tokens_to_keep)
    if k >= logits.shape[-1]:
        return logits.clone()
    kth_best = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth_best, -math.inf)


def top_p_filter(logits: Tensor, p: float, min_tokens_to_keep: int = 1) -> Tensor:
    """Nucleus filter (Holtzman et al. 2020): keep the likeliest tokens until their mass reaches
    `p`, the token that crosses `p` included; -inf elsewhere."""
    p = check_real("p", p, above=0, maximum=1, hint="the probability mass to keep, e.g. 0.9")
    if p == 1:
        return logits.clone()
    probs = torch.softmax(logits.float(), dim=-1)
    sorted_probs = probs.sort(dim=-1, descending=True).values
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # the mass of the likelier tokens
    n_kept = (mass_before < p).sum(dim=-1, keepdim=True).clamp(min=min_tokens_to_keep, max=logits.shape[-1])
    smallest_kept = sorted_probs.gather(-1, n_kept - 1)
    return logits.masked_fill(probs < smallest_kept, -math.inf)


def min_p_filter(logits: Tensor, min_p: float, min_tokens_to_keep: int = 1) -> Tensor:
    """Keep the tokens whose probability is at least `min_p` times the top token's (Nguyen et
    al. 2024): a cut that follows the model's confidence; -inf elsewhere."""
    min_p = check_real("min_p", min_p, minimum=0, maximum=1, hint="e.g. 0.05; 0 keeps every token")
    probs = torch.softmax(logits.float(), dim=-1)
    threshold = min_p * probs.amax(dim=-1, keepdim=True)
    if min_tokens_to_keep > 1:
        kth = torch.topk(probs, min(min_tokens_to_keep, probs.shape[-1]), dim=-1).values[..., -1:]
        threshold = torch.minimum(threshold, kth)
    return logits.masked_fill(probs < threshold, -math.inf)


# ---------------------------------------------------------------------------------- penalties


def token_counts(previous_ids: Tensor, vocab_size: int) -> Tensor:
    """How often each token occurs in each row of `previous_ids` `(B, T)`: `(B, V)` counts.
    Negative ids are padding and are not counted."""
    check_integer_tensor("previous_ids", previous_ids)
    if previous_ids.dim() != 2:
        raise ArgumentError(f"previous_ids must be (B, T), got shape {tuple(previous_ids.shape)}")
    real = previous_ids >= 0
    counts = torch.zeros(previous_ids.shape[0], vocab_size, dtype=torch.long, device=previous_ids.device)
    return counts.scatter_add_(1, previous_ids.clamp(min=0), real.long())


def repetition_penalty(logits: Tensor, previous_ids: Tensor, penalty: float) -> Tensor:
    """Make every token already in the row less likely: its logit divided by `penalty` if
    positive, multiplied by it if negative (so both move down for penalty > 1)."""
    penalty = check_real("penalty", penalty, above=0, hint="1 is no penalty; 1.1-1.3 is usual")
    seen = token_counts(previous_ids, logits.shape[-1]) > 0
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def frequency_presence_penalty(logits: Tensor, previous_ids: Tensor, frequency: float = 0.0,
                               presence: float = 0.0) -> Tensor:
    """Subtract `frequency` x (the token's count so far) + `presence` x (1 if it occurred) from
    each token's logit: the frequency term grows with each repeat, the presence term does not."""
    frequency = check_real("frequency", frequency, hint="0 is no penalty; 0.1-1 is usual")
    presence = check_real("presence", presence, hint="0 is no penalty; 0.1-1 is usual")
    counts = token_counts(previous_ids, logits.shape[-1]).to(logits.dtype)
    return logits - frequency * counts - presence * (counts > 0).to(logits.dtype)


def no_repeat_ngram(logits: Tensor, previous_ids: Tensor, n: int) -> Tensor:
    """Forbid every token that would complete an n-gram already present in the row (Paulus et
    al. 2018): if the last n-1 tokens occurred before, the token that followed them then is -inf."""
    n = check_int("n", n, 1, hint="the n-gram size; 3 or 4 is usual")
    check_integer_tensor("previous_ids", previous_ids)
    batch, length = previous_ids.shape
    if length < n:
        return logits.clone()
    windows = previous_ids.unfold(1, n, 1)  # (B, W, n): every n-gram of the row
    context = previous_ids[:, length - (n - 1):]  # (B, n-1): the n-gram's start we are completing
    repeats = (windows[:, :, :-1] == context[:, None, :]).all(dim=-1) & (windows >= 0).all(dim=-1)
    banned = torch.zeros(batch, logits.shape[-1], dtype=torch.long, device=logits.device)
    banned.scatter_add_(1, windows[:, :, -1].clamp(min=0), repeats.long())
    return logits.masked_fill(banned > 0, -math.inf)


def logit_bias(logits: Tensor, bias: Mapping[int, float]) -> Tensor:
    """Add `bias[token]` to that token's logit in every row; a bias of -inf bans the token."""
    vocab_size = logits.shape[-1]
    if not bias:
        return logits.clone()
    ids = torch.tensor([check_int("logit_bias token", token, 0, below=vocab_size) for token in bias],
                       device=logits.device)
    values = torch.tensor([check_real(f"logit_bias[{token}]", value, finite=False)
                           for token, value in bias.items()], dtype=logits.dtype, device=logits.device)
    shift = torch.zeros(vocab_size, dtype=logits.dtype, device=logits.device).index_add_(0, ids, values)
    return logits + shift


# ---------------------------------------------------------------------------------- the pipeline


@dataclass(frozen=True)
class SamplingSettings:
    """Every decoding lever in one place; the defaults change nothing (plain sampling at T = 1)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    no_repeat_ngram_size: int = 0
    logit_bias: Mapping[int, float] | None = None

    def __post_init__(self) -> None:
        check_real("temperature", self.temperature, minimum=0, hint="0 for greedy")
        if self.top_k is not None:
            check_int("top_k", self.top_k, 1, hint="None keeps every token")
        check_real("top_p", self.top_p, above=0, maximum=1, hint="1 keeps every token")
        check_real("min_p", self.min_p, minimum=0, maximum=1, hint="0 keeps every token")
        check_real("repetition_penalty", self.repetition_penalty, above=0, hint="1 is no penalty")
        check_real("frequency_penalty", self.frequency_penalty, hint="0 is no penalty")
        check_real("presence_penalty", self.presence_penalty, hint="0 is no penalty")
        check_int("no_repeat_ngram_size", self.no_repeat_ngram_size, 0, hint="0 turns it off")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def process(logits: Tensor, previous_ids: Tensor | None, settings: SamplingSettings) -> Tensor:
    """Apply every lever of `settings` that is switched on, in the order the module docstring
    gives: `(B, V)` logits -> `(B, V)` logits. `previous_ids` `(B, T)` feeds the penalties."""
    uses_history = (settings.repetition_penalty != 1 or settings.frequency_penalty != 0
                    or settings.presence_penalty != 0 or settings.no_repeat_ngram_size > 0)
    if uses_history and previous_ids is None:
        raise ArgumentError("the penalties need previous_ids, the (B, T) tokens so far")
    logits = logits.float()
    if settings.logit_bias:
        logits = logit_bias(logits, settings.logit_bias)
    if settings.repetition_penalty != 1:
        logits = repetition_penalty(logits, previous_ids, settings.repetition_penalty)
    if settings.frequency_penalty or settings.presence_penalty:
        logits = frequency_presence_penalty(logits, previous_ids, settings.frequency_penalty,
                                            settings.presence_penalty)
    if settings.no_repeat_ngram_size:
        logits = no_repeat_ngram(logits, previous_ids, settings.no_repeat_ngram_size)
    if settings.temperature != 1:
        logits = apply_temperature(logits, settings.temperature)
    if settings.top_k is not None:
        logits = top_k_filter(logits, settings.top_k)
    if settings.top_p < 1:
        logits = top_p_filter(logits, settings.top_p)
    if settings.min_p > 0:
        logits = min_p_filter(logits, settings.min_p)
    return logits


def next_token(logits: Tensor, previous_ids: Tensor | None, settings: SamplingSettings,
               generator: torch.Generator | None = None) -> Tensor:
    """The next token of each row: `(B, V)` logits -> `(B,)` ids (argmax when greedy)."""
    processed = process(logits, previous_ids, settings)
    if settings.greedy:
        return processed.argmax(dim=-1)
    return sample(processed, generator)


# ---------------------------------------------------------------------------------- stop sequences


def find_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the earliest stop sequence starts in `text`, or None. Works on decoded text, so a
    stop that spans several tokens (or part of one) is found wherever the token boundaries fall."""
    starts = [index for stop in stops if stop and (index := text.find(stop)) >= 0]
    return min(starts, default=None)


def stop_holdback(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of `text` a stream must hold back: the longest end of
    `text` that is the start of a stop sequence (it may become one with the next token)."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:size]):
                longest = size
                break
    return longest


# ---------------------------------------------------------------------------------- beam search


@dataclass(frozen=True)
class Hypothesis:
    """One finished beam: its new tokens, their total log-probability and the ranking score."""

    tokens: tuple[int, ...]
    log_prob: float
    score: float


def beam_search(next_log_probs: Callable[[Tensor], Tensor], prompt: Tensor, num_beams: int,
                max_new_tokens: int, *, eos_id: int | None = None,
                length_penalty: float = 1.0) -> list[Hypothesis]:
    """The `num_beams` best continuations of `prompt` `(T,)`, best first.

    `next_log_probs(ids)` maps `(N, t)` sequences to `(N, V)` next-token log-probabilities. A
    hypothesis is ranked by its total log-probability divided by (new tokens)^`length_penalty`
    (0: raw sums, which favour short answers; 1: the mean per token). A hypothesis ends at
    `eos_id` (included) or after `max_new_tokens`. The search stops once no live beam can still
    beat the worst of the `num_beams` finished ones, so with enough beams it is exhaustive.
    """
    num_beams = check_int("num_beams", num_beams, 1)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, 1)
    length_penalty = check_real("length_penalty", length_penalty, minimum=0, hint="1 is the mean")
    beams, scores = prompt[None, :], torch.zeros(1, dtype=torch.float64, device=prompt.device)
    finished: list[Hypothesis] = []
    for step in range(1, max_new_tokens + 1):
        candidates = scores[:, None] + next_log_probs(beams).double()  # (N, V)
        vocab_size = candidates.shape[-1]
        best = candidates.flatten().topk(min(2 * num_beams, candidates.numel()))
        live, live_scores = [], []
        for total, flat in zip(best.values.tolist(), best.indices.tolist()):
            if total == -math.inf:
                break
            sequence = torch.cat([beams[flat // vocab_size], prompt.new_tensor([flat % vocab_size])])
            if flat % vocab_size == eos_id or step == max_new_tokens:
                finished.append(Hypothesis(tuple(sequence[len(prompt):].tolist()), total,
                                           total / step ** length_penalty))
            elif len(live) < num_beams:
                live.append(sequence)
                live_scores.append(total)
        finished = sorted(finished, key=lambda h: h.score, reverse=True)[:num_beams]
        if not live or _cannot_improve(finished, live_scores, num_beams, max_new_tokens, length_penalty):
            break
        beams, scores = torch.stack(live), scores.new_tensor(live_scores)
    return finished


def _cannot_improve(finished: list[Hypothesis], live_scores: list[float], num_beams: int,
                    max_new_tokens: int, length_penalty: float) -> bool:
    """True when every live beam's best possible final score is below the worst kept hypothesis.

    Log-probabilities are <= 0, so a beam's total can only fall; its score total / n^alpha is
    then at most total / max_new_tokens^alpha (dividing a negative total by more raises it)."""
    if len(finished) < num_beams:
        return False
    best_possible = max(live_scores) / max_new_tokens ** length_penalty
    return finished[-1].score >= best_possible


# ---------------------------------------------------------------------------------- diagnostics


def _as_sequence(ids: Sequence[int] | Tensor) -> list:
    if isinstance(ids, Tensor):
        if ids.dim() != 1:
            raise ArgumentError(f"ids must be one sequence (T,), got shape {tuple(ids.shape)}; "
                                "pass one row at a time")
        return ids.tolist()
    return list(ids)


def repeated_ngram_rate(ids: Sequence[int] | Tensor, n: int) -> float:
    """The fraction of the n-grams of one sequence `(T,)` that already occurred earlier in it:
    0 for text that never repeats itself, close to 1 for a loop. No n-gram at all gives 0."""
    n = check_int("n", n, 1, hint="the n-gram size, e.g. 4")
    tokens = _as_sequence(ids)
    grams = [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def distinct_n(sequences: Sequence[Sequence[int] | Tensor | str], n: int) -> float:
    """Distinct n-grams divided by all n-grams, pooled over `sequences` (distinct-n, Li et al.
    2016): near 1 when the samples never repeat each other or themselves, small when they do.
    A string is split into words; a sequence of ids is used as it is. No n-gram at all gives 0."""
    n = check_int("n", n, 1, hint="the n-gram size, e.g. 2")
    grams = []
    for sequence in sequences:
        tokens = sequence.split() if isinstance(sequence, str) else _as_sequence(sequence)
        grams += [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0
