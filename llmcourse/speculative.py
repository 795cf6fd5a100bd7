"""Chapter 12: speculative decoding, a small draft model guessing ahead of a large target model.

Generating one token with a large model costs one forward pass, and on most hardware that pass
takes about as long for a few tokens as for one (it is bound by reading the weights, not by the
arithmetic). Speculative decoding (Leviathan et al. 2023; Chen et al. 2023) spends that slack:

    1. a cheap draft model proposes k tokens x_1 .. x_k, one at a time, from its distributions q_i;
    2. the target runs once over all of them and gives its own distributions p_1 .. p_{k+1};
    3. draft token x_i is accepted with probability min(1, p_i(x_i) / q_i(x_i)), left to right;
    4. at the first rejection, the next token is drawn from normalise(max(0, p_i - q_i));
       if all k are accepted, a bonus token is drawn from p_{k+1}.

Every round thus yields between 1 and k + 1 tokens for one target forward, and the tokens are
distributed *exactly* as if the target had sampled them one by one: accepting x with probability
min(q(x), p(x)) and filling the rest from the residual max(0, p - q) adds up to p(x) (Leviathan et
al., appendix A.1). A good draft only makes it faster; a bad one only makes it slower.

With greedy settings both distributions are one-hot, and the rule becomes: accept while the
draft's token is the target's argmax, then take the target's argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from llmcourse.attention import KVCache
from llmcourse.checks import ArgumentError, check_int, check_integer_tensor, check_shape
from llmcourse.model import GPT
from llmcourse.sampling import SamplingSettings, process, sample

__all__ = ["SpeculativeStats", "greedy_accept", "speculative_accept", "speculative_generate"]


# ---------------------------------------------------------------------------------- one round


def speculative_accept(target_probs: Tensor, draft_probs: Tensor, draft_tokens: Tensor,
                       generator: torch.Generator | None = None) -> tuple[int, int]:
    """Verify `k` draft tokens against the target: (how many are accepted, the next token).

    target_probs: `(k+1, V)`, the target's distribution at each draft position and the one after.
    draft_probs: `(k, V)`, the draft's distribution each draft token was drawn from.
    draft_tokens: `(k,)` the draft's tokens. Returns n in 0..k and the token that follows the n
    accepted ones: drawn from normalise(max(0, p_n - q_n)) after a rejection at position n, or
    from p_k (the bonus token) when all k are accepted.
    """
    k = _check_round(target_probs, draft_probs, draft_tokens)
    positions = torch.arange(k)
    p = target_probs[positions, draft_tokens]  # (k,) the target's probability of each draft token
    q = draft_probs[positions, draft_tokens]  # (k,) the draft's
    uniform = torch.rand(k, generator=generator, device=_device_of(generator)).to(p.device)
    # u < p/q written without the division: q can underflow to 0 for a token the draft barely
    # proposed, and u * q < p then accepts it whenever the target gives it any probability.
    accepted = uniform * q < p
    n = int(accepted.long().cumprod(dim=0).sum())  # the accepted prefix stops at the first False
    if n == k:
        return n, _draw(target_probs[k], generator)
    residual = (target_probs[n] - draft_probs[n]).clamp(min=0)
    if residual.sum() <= 0:
        # p <= q everywhere means p == q (both sum to 1) up to rounding, where a rejection has
        # probability 0; it can still happen by rounding, and then p itself is the right law.
        residual = target_probs[n]
    return n, _draw(residual, generator)


def greedy_accept(target_probs: Tensor, draft_tokens: Tensor) -> tuple[int, int]:
    """The greedy case of `speculative_accept`, with no randomness: accept draft tokens `(k,)`
    while each equals the target's argmax in `target_probs` `(k+1, V)`; the next token is the
    target's argmax at the first mismatch (or after the last draft token)."""
    k = check_shape("draft_tokens", draft_tokens, ("k",)).shape[0]
    check_shape("target_probs", target_probs, (k + 1, "V"), hint="k + 1 rows: one per draft token and one after")
    best = target_probs.argmax(dim=-1)  # (k+1,)
    n = int((best[:k] == draft_tokens).long().cumprod(dim=0).sum())
    return n, int(best[n])


def _draw(probs: Tensor, generator: torch.Generator | None) -> int:
    """One token from the (possibly unnormalised) probabilities `(V,)`, by the one draw of
    `llmcourse.sampling`: softmax(log w) = w / sum(w), and log 0 = -inf keeps impossible tokens out."""
    return int(sample(probs.log()[None], generator)[0])


def _device_of(generator: torch.Generator | None) -> torch.device:
    """Where `generator` draws (a generator draws only on its own device); the CPU without one."""
    return torch.device("cpu") if generator is None else generator.device


def _check_round(target_probs: Tensor, draft_probs: Tensor, draft_tokens: Tensor) -> int:
    """The number of draft tokens k, after checking that the three arguments of a round agree."""
    check_integer_tensor("draft_tokens", draft_tokens)
    k = check_shape("draft_tokens", draft_tokens, ("k",)).shape[0]
    vocab = check_shape("draft_probs", draft_probs, (k, "V"), hint="one row per draft token").shape[1]
    check_shape("target_probs", target_probs, (k + 1, vocab),
                hint="k + 1 rows, one per draft token and one after, over the draft's vocabulary")
    if k and not ((draft_tokens >= 0) & (draft_tokens < vocab)).all():
        raise ArgumentError(f"draft_tokens {draft_tokens.tolist()} must be ids in [0, {vocab})")
    return k


# ---------------------------------------------------------------------------------- generation


@dataclass
class SpeculativeStats:
    """What a `speculative_generate` call did: draft tokens proposed and accepted, and the forward
    passes of each model (the target's prompt pass included)."""

    proposed: int = 0
    accepted: int = 0
    target_forwards: int = 0
    draft_forwards: int = 0

    @property
    def acceptance_rate(self) -> float:
        """The share of proposed draft tokens the target accepted (0.0 if none was proposed)."""
        return self.accepted / self.proposed if self.proposed else 0.0


@torch.no_grad()
def speculative_generate(target: GPT, draft: GPT, ids: Tensor, max_new_tokens: int, *, k: int = 4,
                         settings: SamplingSettings | None = None,
                         generator: torch.Generator | None = None) -> tuple[Tensor, SpeculativeStats]:
    """`max_new_tokens` tokens after ids `(1, T)`, distributed as the target's own sampling with
    `settings` (greedy: the same tokens as `target.generate`), with `draft` proposing `k` tokens
    per target forward. Returns ids `(1, T + max_new_tokens)` and the round's statistics.

    Call eval() on both models first. Both keep a KV cache holding every committed token but the
    newest; after a rejection each cache is cut back (`KVCache.truncate`) to drop the rejected tail.
    """
    settings = SamplingSettings() if settings is None else settings
    k = check_int("k", k, 1, hint="draft tokens per round; 2-8 is usual")
    _check_generate(target, draft, ids, max_new_tokens)
    target_cache, draft_cache = KVCache(target.config.n_layer), KVCache(draft.config.n_layer)
    stats = SpeculativeStats()
    goal = ids.shape[1] + max_new_tokens
    while ids.shape[1] < goal:
        # A round adds at most k + 1 tokens; asking for fewer near the end keeps every cache
        # within block_size and the output at exactly max_new_tokens.
        proposals = min(k, goal - ids.shape[1] - 1)
        drafts, draft_probs = _propose(draft, draft_cache, ids, proposals, settings, generator)
        target_probs = _verify(target, target_cache, ids, drafts, settings)
        if settings.greedy:
            n, following = greedy_accept(target_probs, drafts)
        else:
            n, following = speculative_accept(target_probs, draft_probs, drafts, generator)
        ids = torch.cat([ids, drafts[None, :n], ids.new_tensor([[following]])], dim=1)
        for cache in (target_cache, draft_cache):
            cache.truncate(ids.shape[1] - 1)  # the newest token is fed in the next round
        stats.proposed, stats.accepted = stats.proposed + proposals, stats.accepted + n
        stats.target_forwards += 1
        stats.draft_forwards += proposals
    return ids, stats


def _propose(draft: GPT, cache: KVCache, ids: Tensor, proposals: int, settings: SamplingSettings,
             generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """The draft's tokens `(proposals,)` after ids `(1, L)` and the distributions `(proposals, V)`
    they were drawn from; `cache` holds a prefix of ids and is extended by the drafts but the last."""
    tokens, probs = [], []
    new_ids = ids[:, cache.length:]  # the tokens the cache has not seen: the prompt, or 1-2 new ones
    for _ in range(proposals):
        logits, _ = draft(new_ids, kv_cache=cache)
        processed = process(logits[:, -1, :], torch.cat([ids, *tokens], dim=1), settings)  # (1, V)
        token = processed.argmax(dim=-1) if settings.greedy else sample(processed, generator)
        new_ids = token[:, None]
        tokens.append(new_ids)
        probs.append(torch.softmax(processed, dim=-1))
    if not tokens:
        return ids.new_zeros(0), torch.zeros(0, draft.config.vocab_size, device=ids.device)
    return torch.cat(tokens, dim=1)[0], torch.cat(probs)


def _verify(target: GPT, cache: KVCache, ids: Tensor, drafts: Tensor, settings: SamplingSettings) -> Tensor:
    """The target's distributions `(k+1, V)` after ids `(1, L)` followed by each prefix of
    drafts `(k,)`, from one forward pass over the tokens its cache has not seen."""
    sequence = torch.cat([ids, drafts[None]], dim=1)  # (1, L + k)
    logits, _ = target(sequence[:, cache.length:], kv_cache=cache)
    k = drafts.shape[0]
    processed = process(logits[0, -(k + 1):], _prefixes(sequence, k), settings)  # (k+1, V)
    return torch.softmax(processed, dim=-1)


def _prefixes(sequence: Tensor, k: int) -> Tensor:
    """The history each of the last k+1 predictions saw, one row each: `(1, L + k)` ->
    `(k+1, L + k)`, row i = sequence[:L + i] left-padded with -1 (padding that every penalty
    ignores; on the left, so that each row still ends with its last real tokens)."""
    length = sequence.shape[1]
    columns = torch.arange(length, device=sequence.device)
    shift = torch.arange(k, -1, -1, device=sequence.device)[:, None]  # row i moves right by k - i
    source = columns - shift  # (k+1, L+k): where each entry of a row comes from, negative = padding
    return torch.where(source >= 0, sequence[0, source.clamp(min=0)], -1)


def _check_generate(target: GPT, draft: GPT, ids: Tensor, max_new_tokens: int) -> None:
    check_integer_tensor("ids", ids)
    check_shape("ids", ids, (1, "T"), hint="one sequence; add a batch dim with ids.unsqueeze(0)")
    if ids.shape[1] == 0:
        raise ArgumentError("ids must hold at least one token: the prompt to continue")
    check_int("max_new_tokens", max_new_tokens, 0)
    if target.config.vocab_size != draft.config.vocab_size:
        raise ArgumentError(f"the draft's vocabulary ({draft.config.vocab_size}) must be the target's "
                            f"({target.config.vocab_size}): both must use the same tokenizer")
    block_size = min(target.config.block_size, draft.config.block_size)
    if ids.shape[1] + max_new_tokens > block_size:
        raise ArgumentError(f"{ids.shape[1]} prompt tokens + max_new_tokens={max_new_tokens} exceed "
                            f"block_size={block_size} (the smaller of the two models'); shorten the "
                            "prompt or ask for fewer tokens")
