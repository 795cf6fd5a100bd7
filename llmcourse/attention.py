"""Chapters 05 and 06: attention, causal masking, multi-head attention (MHA, GQA, MQA), KV cache.

Attention lets each position build its output from the positions it may look at. Every token
emits a *query* (what am I looking for?), a *key* (what do I contain?) and a *value* (what do
I pass on if chosen). Query i scores every key j with a dot product, softmax turns the scores
of row i into weights that sum to 1, and output i is the weighted average of the values:

    Attention(Q, K, V) = softmax(Q Kᵀ / √D + mask) V          (Vaswani et al. 2017, eq. 1)

A language model predicts the *next* token, so position i must never see positions after it:
the causal mask sets those scores to -inf, which softmax turns into weight exactly 0.

Shapes used throughout: B batch, H query heads, H_kv key/value heads, Tq queries, Tk keys,
D head size, C = H·D model width.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.checks import ArgumentError, check_int, check_real, check_shape

if TYPE_CHECKING:  # only for the annotation; attention never needs position at run time
    from llmcourse.position import RotaryEmbedding

# An attention function takes q (B, H, Tq, D), k and v (B, H, Tk, D) and a causal flag and
# returns (B, H, Tq, D). `attention_fast` is the default; a learner's own function can replace it.
# Only a padded batch (chapter 12) also passes `mask=`, a bool (B, 1, Tq, Tk), True = allowed.
AttentionFn = Callable[[Tensor, Tensor, Tensor, bool], Tensor]


# ---------------------------------------------------------------- masks


def causal_mask(t_query: int, t_key: int | None = None, device: torch.device | str | None = None) -> Tensor:
    """Which keys each query may attend to: a `(Tq, Tk)` bool tensor, True = allowed.

    The queries are the LAST Tq of the Tk positions (bottom-right alignment): query i sits at
    absolute position `Tk - Tq + i` and may see keys 0 .. Tk - Tq + i. With Tq == Tk this is the
    usual lower triangle; with a KV cache (Tk cached + new keys, Tq new queries) it lets the new
    queries see the whole past and, among themselves, only what came before.

        causal_mask(2, 4) = [[T, T, T, F],
                             [T, T, T, T]]
    """
    check_int("t_query", t_query, 1)
    t_key = t_query if t_key is None else t_key
    check_int("t_key", t_key, t_query, hint="at least t_query: the queries are the last t_query of the t_key "
              "positions (did you forget to append the new keys to the cache?)")
    # tril(diagonal=k) keeps column j in row i when j <= i + k; k = Tk - Tq aligns bottom-right.
    return torch.ones(t_query, t_key, dtype=torch.bool, device=device).tril(diagonal=t_key - t_query)


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    """Raise a clear error unless q (..., Tq, D), k (..., Tk, D) and v (..., Tk, Dv) fit together."""
    check_shape("q", q, (..., "Tq", "D"))
    check_shape("k", k, (*q.shape[:-2], "Tk", q.shape[-1]), hint="q's leading (batch, head) dims and its head "
                "size D, to be dotted with q; for GQA, use repeat_kv first")
    check_shape("v", v, (*k.shape[:-1], "Dv"), hint="k's leading dims and its number of positions Tk")


def _with_causal(mask: Tensor | None, t_query: int, t_key: int, device: torch.device) -> Tensor:
    """Combine an optional extra mask with the causal mask, keeping the extra mask's kind.

    A bool mask (True = allowed) is and-ed with the causal mask; a float mask (added to the
    scores) gets -inf where the causal mask forbids.
    """
    allowed = causal_mask(t_query, t_key, device=device)
    if mask is None:
        return allowed
    if mask.dtype == torch.bool:
        return mask & allowed
    return mask.masked_fill(~allowed, float("-inf"))


def padding_mask(key_is_real: Tensor, t_query: int) -> Tensor:
    """Which keys each query of a left-padded batch may see: `(B, Tk)` -> `(B, 1, Tq, Tk)` bool.

    key_is_real: True for a real token, False for padding; the Tq queries are the last Tq keys.
    A query may see every real key (the causal mask is and-ed in later) and, always, itself: a pad
    query has only pad keys before it, and a row with every key blocked would be a softmax over
    nothing (NaN). Attending to itself gives it a finite output that no real token ever reads.
    """
    check_shape("key_is_real", key_is_real, ("B", "Tk"), hint="the attention mask, True for real tokens")
    if key_is_real.dtype != torch.bool:
        raise ArgumentError(f"key_is_real must be a bool tensor (True = real token), got {key_is_real.dtype}; "
                            "convert it with mask.bool()")
    t_key = key_is_real.shape[-1]
    check_int("t_query", t_query, 1, below=t_key + 1, hint="the queries are the last t_query keys")
    keys = torch.arange(t_key, device=key_is_real.device)
    queries = torch.arange(t_key - t_query, t_key, device=key_is_real.device)
    itself = keys == queries[:, None]  # (Tq, Tk): query i sits at key position Tk - Tq + i
    return key_is_real[:, None, None, :] | itself


# ---------------------------------------------------------------- attention itself


def attention_reference(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None, causal: bool = True
) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention written out: `softmax(q kᵀ / √D + mask) v`.

    Shapes: q (B, H, Tq, D), k (B, H, Tk, D), v (B, H, Tk, Dv) -> out (B, H, Tq, Dv) and the
    attention weights (B, H, Tq, Tk), each row a probability distribution over the keys.
    Any leading dims work, e.g. a single head (T, D).

    causal: query i may only see keys up to its own position (bottom-right aligned, see
    `causal_mask`). mask: optional extra mask broadcastable to (B, H, Tq, Tk), either bool with
    True = allowed (as `causal_mask`) or float added to the scores (0 = allowed, -inf = blocked).
    A row with every key blocked has no distribution to form and comes out as nan.
    """
    _check_qkv(q, k, v)
    t_query, t_key, head_dim = q.shape[-2], k.shape[-2], q.shape[-1]
    # Why divide by √D: if the entries of q and k have mean 0 and variance 1, the dot product
    # sums D such products and has variance D. Unscaled scores of size ~√D push softmax towards
    # a one-hot, where its gradient almost vanishes; dividing by √D keeps the variance at 1
    # whatever the head size (Vaswani et al. 2017, section 3.2.1).
    scale = 1.0 / math.sqrt(head_dim)
    scores = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, D) @ (B, H, D, Tk) -> (B, H, Tq, Tk)
    if causal:
        allowed = causal_mask(t_query, t_key, device=q.device)
        # -inf, not a large negative number: exp(-inf) is exactly 0, so no weight leaks to the future.
        scores = scores.masked_fill(~allowed, float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    weights = torch.softmax(scores, dim=-1)  # each row sums to 1 over the keys
    out = weights @ v  # (B, H, Tq, Tk) @ (B, H, Tk, Dv) -> (B, H, Tq, Dv): weighted average of values
    return out, weights


def attention_fast(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, *, mask: Tensor | None = None) -> Tensor:
    """The same result as `attention_reference` (without the weights), through PyTorch's fused kernel.

    `F.scaled_dot_product_attention` never materialises the (Tq, Tk) weights when it can use
    FlashAttention (Dao et al. 2022) or the memory-efficient kernel on a GPU, so memory grows
    linearly rather than quadratically with the sequence length.

    SDPA's own `is_causal=True` aligns the mask top-left (query i sees keys 0..i), which is right
    only when Tq == Tk. With a KV cache the queries are the last Tq positions, so for Tq < Tk we
    pass the bottom-right `causal_mask` explicitly; a single query (Tq == 1) is the newest
    position and may see every key, so it needs no mask at all.
    Shapes and `mask` as in `attention_reference`.
    """
    _check_qkv(q, k, v)
    t_query, t_key = q.shape[-2], k.shape[-2]
    if causal and mask is None and t_query == t_key:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if causal and mask is None and t_query == 1:
        return F.scaled_dot_product_attention(q, k, v)
    if causal:
        mask = _with_causal(mask, t_query, t_key, device=q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


# ---------------------------------------------------------------- heads


def split_heads(x: Tensor, n_heads: int) -> Tensor:
    """(B, T, H·D) -> (B, H, T, D): cut the channels into H heads of D each, heads before time."""
    check_shape("x", x, ("B", "T", "C"))
    check_int("n_heads", n_heads, 1)
    _check_divisible("C", x.shape[-1], "n_heads", n_heads, "each head gets C / n_heads channels")
    batch, time, channels = x.shape
    return x.view(batch, time, n_heads, channels // n_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """(B, H, T, D) -> (B, T, H·D): the inverse of `split_heads` (concatenate the heads)."""
    check_shape("x", x, ("B", "H", "T", "D"), hint="the output of split_heads")
    batch, heads, time, head_dim = x.shape
    # transpose makes the tensor non-contiguous, so reshape (which copies) rather than view
    return x.transpose(1, 2).reshape(batch, time, heads * head_dim)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, H_kv, T, D) -> (B, H_kv·n_rep, T, D): key/value head g serves query heads g·n_rep .. g·n_rep+n_rep-1.

    The same as `torch.repeat_interleave(x, n_rep, dim=1)` (and Llama's `repeat_kv`), written as
    an expand (a view, no copy yet) followed by one reshape (which copies, since the expanded
    view is not contiguous).
    """
    check_shape("x", x, ("B", "H_kv", "T", "D"))
    check_int("n_rep", n_rep, 1, hint="the query heads each key/value head serves, H / H_kv")
    if n_rep == 1:
        return x
    batch, kv_heads, time, head_dim = x.shape
    expanded = x[:, :, None, :, :].expand(batch, kv_heads, n_rep, time, head_dim)
    return expanded.reshape(batch, kv_heads * n_rep, time, head_dim)


# ---------------------------------------------------------------- KV cache


class KVCache:
    """Keys and values already computed, per layer, so that generation feeds only the new tokens.

    Without a cache, generating token t+1 recomputes the keys and values of all t earlier tokens
    in every layer. They never change (causal attention: earlier positions do not see later
    ones), so we keep them: each call appends the new (B, H_kv, T_new, D) keys/values along T.
    The keys are stored *after* RoPE, so they are rotated for their own position once.

    This simple version concatenates (each append copies the cache); the inference chapter adds
    a preallocated variant with the same interface.
    """

    def __init__(self, n_layers: int) -> None:
        self.n_layers = check_int("n_layers", n_layers, 1, hint="one slot per transformer block")
        self.keys: list[Tensor | None] = [None] * n_layers
        self.values: list[Tensor | None] = [None] * n_layers

    def seq_len(self, layer: int) -> int:
        """Tokens cached for `layer`: the position of the next token that layer will see."""
        self._check_layer(layer)
        cached = self.keys[layer]
        return 0 if cached is None else cached.shape[-2]

    @property
    def length(self) -> int:
        """Tokens cached (= start position of the next call). Every layer holds this many
        between forward calls; inside a forward, a layer asks `seq_len(its index)` instead."""
        return self.seq_len(0)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append k, v (B, H_kv, T_new, D) for `layer`; return all of them (B, H_kv, T_past + T_new, D)."""
        self._check_layer(layer)
        check_shape("k", k, ("B", "H_kv", "T", "D"))
        check_shape("v", v, tuple(k.shape), hint="the same shape as k")
        past_k, past_v = self.keys[layer], self.values[layer]
        if past_k is None or past_v is None:
            self.keys[layer], self.values[layer] = k, v
        else:
            if past_k.shape[:2] != k.shape[:2] or past_k.shape[-1] != k.shape[-1]:
                raise ArgumentError(f"layer {layer} caches (B, H_kv, T, D) = {tuple(past_k.shape)} but got new keys "
                                    f"{tuple(k.shape)}: batch, heads and head size must stay the same "
                                    "(call reset() to start a new sequence)")
            self.keys[layer] = torch.cat([past_k, k], dim=-2)
            self.values[layer] = torch.cat([past_v, v], dim=-2)
        return self.keys[layer], self.values[layer]  # type: ignore[return-value]

    def reset(self) -> None:
        """Forget everything (start a new sequence)."""
        self.keys = [None] * self.n_layers
        self.values = [None] * self.n_layers

    def truncate(self, length: int) -> None:
        """Forget every cached position from `length` on, in every layer (keep positions 0 .. length-1).

        Used to roll back tokens that turned out wrong (speculative decoding rejects a draft's
        tail); a length at or beyond what is cached changes nothing, 0 empties the cache.
        """
        check_int("length", length, 0, hint="the number of positions to keep")
        for layer in range(self.n_layers):
            keys, values = self.keys[layer], self.values[layer]
            if keys is None or values is None:
                continue
            if length == 0:
                self.keys[layer] = self.values[layer] = None
            else:
                # a slice is a view (no copy); the next update's cat makes a fresh tensor anyway
                self.keys[layer], self.values[layer] = keys[..., :length, :], values[..., :length, :]

    @property
    def nbytes(self) -> int:
        """Memory held by the cached keys and values, in bytes."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)

    def _check_layer(self, layer: int) -> None:
        check_int("layer", layer, 0, below=self.n_layers, hint="one per layer: build KVCache(n_layers) with "
                  "the model's layer count")


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int,
                   batch_size: int = 1, bytes_per_element: int = 2) -> int:
    """Closed-form KV-cache size: 2 (keys and values) · layers · H_kv · D · T · B · bytes.

    Example, Llama-2-7B (32 layers, 32 heads of 128, no GQA) at 4096 tokens in bf16:
    2·32·32·128·4096·2 bytes = 2 GiB per sequence. GQA divides it by H / H_kv.
    """
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch_size * bytes_per_element


# ---------------------------------------------------------------- the module


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with grouped key/value heads, optional RoPE and KV cache.

    Each of the H query heads attends with its own D = C / H channels; the heads' outputs are
    concatenated and mixed by `out_proj` (W_o). `n_kv_heads` sets how many key/value heads there
    are: H (None) is multi-head attention (Vaswani et al. 2017), 1 is multi-query attention
    (Shazeer 2019), anything dividing H in between is grouped-query attention (Ainslie et al.
    2023), where each key/value head serves H / H_kv consecutive query heads. Fewer kv heads
    means a proportionally smaller KV cache.

    attention_fn(q, k, v, causal) -> out replaces the attention computation (default
    `attention_fast`); pass e.g. `lambda q, k, v, causal: attention_reference(q, k, v, causal=causal)[0]`.
    rope: a `RotaryEmbedding` applied to q and k (positions offset by the cache length).
    layer_idx: which slot of a `KVCache` this layer uses.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        n_kv_heads: int | None = None,
        *,
        bias: bool = False,
        dropout: float = 0.0,
        rope: RotaryEmbedding | None = None,
        attention_fn: AttentionFn | None = None,
        layer_idx: int = 0,
    ) -> None:
        super().__init__()
        n_kv_heads = n_head if n_kv_heads is None else n_kv_heads
        _check_heads(n_embd, n_head, n_kv_heads)
        check_real("dropout", dropout, minimum=0, below=1, hint="the probability of zeroing an output")
        self.n_embd, self.n_head, self.n_kv_heads = n_embd, n_head, n_kv_heads
        self.head_dim = n_embd // n_head
        self.layer_idx = check_int("layer_idx", layer_idx, 0, hint="which slot of a KVCache this layer uses")
        rope_dim = getattr(rope, "head_dim", self.head_dim)
        if rope_dim != self.head_dim:
            raise ArgumentError(f"rope was built for head_dim={rope_dim} but this layer's heads have "
                                f"n_embd // n_head = {self.head_dim}; build RotaryEmbedding({self.head_dim}, ...)")
        self.q_proj = nn.Linear(n_embd, n_head * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(n_embd, n_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(n_embd, n_kv_heads * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(n_head * self.head_dim, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)  # active only in training mode (model.train())
        self.rope = rope
        self.attention_fn: AttentionFn = attention_fast if attention_fn is None else attention_fn

    def forward(self, x: Tensor, kv_cache: KVCache | None = None, *, positions: Tensor | None = None,
                attention_mask: Tensor | None = None) -> Tensor:
        """(B, T, C) -> (B, T, C). With `kv_cache`, x holds only the new tokens; they attend to
        everything cached for this layer plus themselves, and their keys/values are appended.

        For a left-padded batch (chapter 12): `positions` `(B, T)` are the new tokens' positions
        for RoPE (None: the cache length onwards) and `attention_mask` `(B, T_past + T)` is True
        for real tokens, so no token attends to padding (see `padding_mask`).
        """
        check_shape("x", x, ("B", "T", self.n_embd), hint="add a batch dim with x.unsqueeze(0) if you have (T, C)")
        q = split_heads(self.q_proj(x), self.n_head)  # (B, H, T, D)
        k = split_heads(self.k_proj(x), self.n_kv_heads)  # (B, H_kv, T, D)
        v = split_heads(self.v_proj(x), self.n_kv_heads)  # (B, H_kv, T, D)
        start_pos = 0 if kv_cache is None else kv_cache.seq_len(self.layer_idx)
        if self.rope is not None:
            q, k = self.rope(q, k, start_pos=start_pos, positions=positions)
        if kv_cache is not None:
            # the cache stores H_kv heads, not H: that is where GQA/MQA save memory
            k, v = kv_cache.update(self.layer_idx, k, v)  # (B, H_kv, start_pos + T, D)
        n_rep = self.n_head // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        if attention_mask is None:  # no padding: training and single prompts keep the plain causal kernel
            out = self.attention_fn(q, k, v, True)
        else:
            check_shape("attention_mask", attention_mask, (x.shape[0], k.shape[-2]),
                        hint="(B, T_past + T): one flag per cached and new token, True = real")
            out = self.attention_fn(q, k, v, True, mask=padding_mask(attention_mask, q.shape[-2]))
        return self.dropout(self.out_proj(merge_heads(out)))

    def extra_repr(self) -> str:
        return (f"n_embd={self.n_embd}, n_head={self.n_head}, n_kv_heads={self.n_kv_heads}, "
                f"head_dim={self.head_dim}, layer_idx={self.layer_idx}")


def _check_heads(n_embd: Any, n_head: Any, n_kv_heads: Any) -> None:
    """Raise a clear error for head counts that cannot split the model width evenly."""
    check_int("n_embd", n_embd, 1)
    check_int("n_head", n_head, 1)
    check_int("n_kv_heads", n_kv_heads, 1, hint="None for one per query head")
    _check_divisible("n_embd", n_embd, "n_head", n_head, "each head gets n_embd / n_head channels")
    _check_divisible("n_head", n_head, "n_kv_heads", n_kv_heads,
                     "each key/value head serves n_head / n_kv_heads query heads")


def _check_divisible(name: str, value: int, divisor_name: str, divisor: int, why: str) -> None:
    if value % divisor:
        raise ArgumentError(f"{name}={value} is not divisible by {divisor_name}={divisor}: {why}; "
                            f"pick {divisor_name} among the divisors of {value}")


@contextlib.contextmanager
def recording_attention(model: nn.Module) -> Iterator[list[Tensor]]:
    """While open, every `CausalSelfAttention` of `model` computes attention with
    `attention_reference` (the fused kernel never forms the weights) and appends its weights
    `(B, H, Tq, Tk)` to the list this yields, one tensor per layer per forward pass, in the order
    the layers run. The model runs in eval mode (no dropout); on leaving, its own attention
    functions and train/eval mode come back, whatever happened. Chapter 06's head explorer and
    chapter 17's induction heads read attention through this."""
    layers = [m for m in model.modules() if isinstance(m, CausalSelfAttention)]
    if not layers:
        raise ArgumentError(f"{type(model).__name__} has no CausalSelfAttention layers whose weights could be recorded")
    weights: list[Tensor] = []

    def recorder(q: Tensor, k: Tensor, v: Tensor, causal: bool = True, **masks: Any) -> Tensor:
        out, layer_weights = attention_reference(q, k, v, causal=causal, **masks)
        weights.append(layer_weights.detach())
        return out

    originals = [layer.attention_fn for layer in layers]
    was_training = model.training
    model.eval()
    try:
        for layer in layers:
            layer.attention_fn = recorder
        yield weights
    finally:
        for layer, original in zip(layers, originals):
            layer.attention_fn = original
        model.train(was_training)
