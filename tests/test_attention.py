"""llmcourse.attention against a naive loop, torch's SDPA and nn.MultiheadAttention, plus properties."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import functional_call

from llmcourse.attention import (
    CausalSelfAttention,
    KVCache,
    attention_fast,
    attention_reference,
    causal_mask,
    kv_cache_bytes,
    merge_heads,
    padding_mask,
    repeat_kv,
    split_heads,
)
from llmcourse.position import RotaryEmbedding, apply_rope, rope_cos_sin


def randn(*shape, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def random_qkv(batch, heads, t_query, t_key, head_dim, seed=0, dtype=torch.float32):
    return (randn(batch, heads, t_query, head_dim, seed=seed, dtype=dtype),
            randn(batch, heads, t_key, head_dim, seed=seed + 1, dtype=dtype),
            randn(batch, heads, t_key, head_dim, seed=seed + 2, dtype=dtype))


def make_attention(n_embd=16, n_head=4, n_kv_heads=None, seed=0, dtype=torch.float32, **kwargs) -> CausalSelfAttention:
    torch.manual_seed(seed)
    return CausalSelfAttention(n_embd, n_head, n_kv_heads, **kwargs).to(dtype).eval()


def reference_fn(q, k, v, causal):
    return attention_reference(q, k, v, causal=causal)[0]


def naive_attention(q, k, v, causal):
    """One query at a time, one key at a time, with Python floats: independent of any matmul."""
    batch, heads, t_query, head_dim = q.shape
    t_key = k.shape[2]
    out = torch.zeros(batch, heads, t_query, v.shape[-1], dtype=torch.float64)
    for b in range(batch):
        for h in range(heads):
            for i in range(t_query):
                position = t_key - t_query + i  # the queries are the last t_query positions
                visible = range(position + 1) if causal else range(t_key)
                scores = [sum(q[b, h, i, d].item() * k[b, h, j, d].item() for d in range(head_dim))
                          / math.sqrt(head_dim) for j in visible]
                top = max(scores)
                exps = [math.exp(s - top) for s in scores]
                total = sum(exps)
                for j, e in zip(visible, exps):
                    out[b, h, i] += (e / total) * v[b, h, j].double()
    return out


SHAPES = [(5, 5), (3, 7), (1, 6), (1, 1)]  # (Tq, Tk): full, chunk after a cache, one token, trivial


# ---------------------------------------------------------------- causal_mask


def test_causal_mask_examples():
    assert torch.equal(causal_mask(3), torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool))
    assert torch.equal(causal_mask(2, 4), torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]], dtype=torch.bool))
    assert causal_mask(1, 5).all()


@given(t_key=st.integers(1, 12), data=st.data())
def test_causal_mask_is_the_bottom_rows_of_the_square_mask(t_key, data):
    t_query = data.draw(st.integers(1, t_key), label="t_query")
    square = torch.ones(t_key, t_key).tril().bool()
    assert torch.equal(causal_mask(t_query, t_key), square[-t_query:])


def test_causal_mask_rejects_more_queries_than_keys():
    with pytest.raises(ValueError, match=r"t_key=3 must be an integer >= 4 \(at least t_query"):
        causal_mask(4, 3)
    with pytest.raises(ValueError, match="t_query=0 must be an integer >= 1"):
        causal_mask(0)


# ---------------------------------------------------------------- attention_reference / attention_fast


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("t_query,t_key", SHAPES)
def test_reference_matches_naive_loop(causal, t_query, t_key):
    q, k, v = random_qkv(2, 2, t_query, t_key, 4, seed=t_query * 10 + t_key, dtype=torch.float64)
    out, weights = attention_reference(q, k, v, causal=causal)
    torch.testing.assert_close(out, naive_attention(q, k, v, causal))
    assert weights.shape == (2, 2, t_query, t_key)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("t_query,t_key", SHAPES)
def test_fast_matches_reference(dtype, tol, causal, t_query, t_key):
    q, k, v = random_qkv(2, 3, t_query, t_key, 8, seed=t_key, dtype=dtype)
    fast = attention_fast(q, k, v, causal=causal)
    assert fast.dtype == dtype
    torch.testing.assert_close(fast, attention_reference(q, k, v, causal=causal)[0], rtol=tol, atol=tol)


def test_fast_is_not_sdpa_top_left_causal_for_a_chunk():
    """The bug the explicit mask avoids: SDPA's is_causal with Tq < Tk hides most of the past."""
    q, k, v = random_qkv(1, 2, 3, 7, 8, seed=5)
    top_left = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert not torch.allclose(attention_fast(q, k, v), top_left, atol=1e-3)


@pytest.mark.parametrize("t_query", [4, 1])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_extra_mask_matches_between_fast_and_reference(t_query, causal, kind):
    q, k, v = random_qkv(2, 2, t_query, 6, 8, seed=3)
    allowed = torch.rand(2, 1, t_query, 6, generator=torch.Generator().manual_seed(0)) < 0.6
    allowed[..., 0] = True  # every query keeps at least one key (else the row is nan)
    mask = allowed if kind == "bool" else torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    out, weights = attention_reference(q, k, v, mask=mask, causal=causal)
    assert (weights[(~allowed).expand_as(weights)] == 0).all()
    torch.testing.assert_close(attention_fast(q, k, v, causal=causal, mask=mask), out)


def test_weights_rows_sum_to_one_and_are_zero_in_the_future():
    q, k, v = random_qkv(2, 3, 4, 6, 8, seed=11)
    _, weights = attention_reference(q, k, v)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 4))
    future = ~causal_mask(4, 6)
    assert (weights[..., future] == 0).all()
    assert (weights[..., ~future] > 0).all()


def test_single_head_without_batch_dims_works():
    q, k, v = (randn(5, 4, seed=s) for s in range(3))
    out, weights = attention_reference(q, k, v)
    assert out.shape == (5, 4) and weights.shape == (5, 5)
    torch.testing.assert_close(attention_fast(q, k, v), out)


def test_large_scores_do_not_overflow_nor_leak_into_the_future():
    q, k, v = random_qkv(1, 1, 4, 4, 8, seed=2)
    # query 0 may see only key 0, and scores it about -1e5: a large finite "minus infinity" such
    # as -1e4 in the mask would then outweigh it and leak weight onto the future keys
    k[..., 0, :] = -q[..., 0, :] * 10
    out, weights = attention_reference(q * 100, k * 100, v)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    assert (weights[..., ~causal_mask(4)] == 0).all()
    torch.testing.assert_close(attention_fast(q * 100, k * 100, v), out)


def test_scale_is_one_over_sqrt_head_dim():
    """With keys all equal but one, the weights follow softmax([q·k/√D, 0, ...]) exactly."""
    head_dim = 16
    q = torch.ones(1, 1, 1, head_dim)
    k = torch.zeros(1, 1, 3, head_dim)
    k[..., 0, :] = 1.0  # q·k0 = D, q·k1 = q·k2 = 0
    v = torch.eye(3).view(1, 1, 3, 3)
    _, weights = attention_reference(q, k, v, causal=False)
    expected = torch.softmax(torch.tensor([head_dim / math.sqrt(head_dim), 0.0, 0.0]), dim=0)
    torch.testing.assert_close(weights.flatten(), expected)


@pytest.mark.parametrize("function", [attention_reference, attention_fast])
def test_attention_functions_reject_mismatched_inputs(function):
    q, k, v = random_qkv(1, 2, 3, 3, 4)
    with pytest.raises(ValueError, match=r"k must be a tensor of shape \(1, 2, Tk, 4\), got shape \(1, 2, 3, 3\)"):
        function(q, k[..., :3], v)
    with pytest.raises(ValueError, match=r"v must be a tensor of shape \(1, 2, 3, Dv\), got shape \(1, 2, 2, 4\)"):
        function(q, k, v[..., :2, :])
    with pytest.raises(ValueError, match=r"got shape \(1, 1, 3, 4\).*use repeat_kv first"):
        function(q, k[:, :1], v[:, :1])
    with pytest.raises(ValueError, match="t_key=2 must be an integer >= 3"):
        function(q, k[..., :2, :], v[..., :2, :])


def test_reference_gradcheck_float64():
    q, k, v = (t.requires_grad_() for t in random_qkv(1, 2, 3, 4, 3, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda *t: attention_reference(*t)[0], (q, k, v))
    assert torch.autograd.gradcheck(lambda *t: attention_reference(*t, causal=False)[1], (q, k, v))


# ---------------------------------------------------------------- heads


def test_split_merge_round_trip_and_head_layout():
    x = randn(2, 5, 12)
    heads = split_heads(x, 3)
    assert heads.shape == (2, 3, 5, 4)
    torch.testing.assert_close(heads[:, 1], x[..., 4:8])  # head h owns channels h*D .. (h+1)*D
    assert torch.equal(merge_heads(heads), x)
    assert torch.equal(split_heads(merge_heads(heads), 3), heads)


def test_split_heads_rejects_indivisible_width():
    with pytest.raises(ValueError, match="C=12 is not divisible by n_heads=5"):
        split_heads(randn(1, 2, 12), 5)


@pytest.mark.parametrize("n_rep", [1, 2, 3])
def test_repeat_kv_matches_repeat_interleave(n_rep):
    x = randn(2, 3, 4, 5)
    assert torch.equal(repeat_kv(x, n_rep), torch.repeat_interleave(x, n_rep, dim=1))


# ---------------------------------------------------------------- CausalSelfAttention


@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
def test_module_shapes_and_projection_sizes(n_kv_heads):
    attention = make_attention(16, 4, n_kv_heads)
    kv = 4 if n_kv_heads is None else n_kv_heads
    assert attention.k_proj.weight.shape == (kv * 4, 16) and attention.q_proj.weight.shape == (16, 16)
    assert attention(randn(2, 7, 16)).shape == (2, 7, 16)


def test_module_with_reference_fn_matches_default_fast_path():
    attention = make_attention(16, 4, 2)
    x = randn(3, 6, 16)
    expected = attention(x)
    attention.attention_fn = reference_fn
    torch.testing.assert_close(attention(x), expected)


def test_attention_fn_swap_is_called():
    calls = []

    def spy(q, k, v, causal):
        calls.append((tuple(q.shape), tuple(k.shape), causal))
        return reference_fn(q, k, v, causal)

    attention = make_attention(16, 4, 2, attention_fn=spy)
    expected = make_attention(16, 4, 2)(randn(2, 5, 16))
    torch.testing.assert_close(attention(randn(2, 5, 16)), expected)
    assert calls == [((2, 4, 5, 4), (2, 4, 5, 4), True)]  # k already repeated to H heads


def test_gqa_with_as_many_kv_heads_as_heads_is_mha():
    mha, gqa = make_attention(16, 4, None), make_attention(16, 4, 4, seed=1)
    gqa.load_state_dict(mha.state_dict())
    x = randn(2, 6, 16)
    assert torch.equal(gqa(x), mha(x))


@pytest.mark.parametrize("n_kv_heads", [1, 2])
def test_gqa_and_mqa_equal_mha_with_repeated_kv_weights(n_kv_heads):
    grouped = make_attention(16, 4, n_kv_heads)
    mha = make_attention(16, 4, None, seed=1)
    n_rep, head_dim = 4 // n_kv_heads, 4

    def repeated(weight):  # (H_kv*D, C) -> (H*D, C): kv head g copied for query heads g*n_rep ...
        return weight.view(n_kv_heads, head_dim, -1).repeat_interleave(n_rep, dim=0).reshape(-1, weight.shape[-1])

    with torch.no_grad():
        mha.q_proj.weight.copy_(grouped.q_proj.weight)
        mha.out_proj.weight.copy_(grouped.out_proj.weight)
        mha.k_proj.weight.copy_(repeated(grouped.k_proj.weight))
        mha.v_proj.weight.copy_(repeated(grouped.v_proj.weight))
    x = randn(2, 6, 16)
    torch.testing.assert_close(grouped(x), mha(x))


def test_matches_torch_multihead_attention():
    """nn.MultiheadAttention's bool attn_mask uses True = blocked, the opposite of causal_mask."""
    n_embd, n_head, time_steps = 16, 4, 6
    ours = make_attention(n_embd, n_head, bias=True, dtype=torch.float64)
    torch_mha = torch.nn.MultiheadAttention(n_embd, n_head, bias=True, batch_first=True).double().eval()
    with torch.no_grad():
        torch_mha.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        torch_mha.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        torch_mha.out_proj.weight.copy_(ours.out_proj.weight)
        torch_mha.out_proj.bias.copy_(ours.out_proj.bias)
    x = randn(2, time_steps, n_embd, dtype=torch.float64)
    expected, expected_weights = torch_mha(x, x, x, attn_mask=~causal_mask(time_steps),
                                           need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(ours(x), expected)
    q, k, v = (split_heads(proj(x), n_head) for proj in (ours.q_proj, ours.k_proj, ours.v_proj))
    torch.testing.assert_close(attention_reference(q, k, v)[1], expected_weights)


@settings(max_examples=25)
@given(t=st.integers(0, 7), seed=st.integers(0, 2**16), use_reference=st.booleans())
def test_changing_token_t_never_changes_earlier_outputs(t, seed, use_reference):
    attention = make_attention(8, 2, 1, seed=seed, dtype=torch.float64,
                               attention_fn=reference_fn if use_reference else None)
    x = randn(2, 8, 8, seed=seed, dtype=torch.float64)
    changed = x.clone()
    changed[:, t] += randn(2, 8, seed=seed + 1, dtype=torch.float64)
    before, after = attention(x), attention(changed)
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-12)
    assert not torch.allclose(after[:, t], before[:, t])  # the test can fail: token t itself moved


@pytest.mark.parametrize("use_reference", [False, True])
def test_module_gradcheck_float64(use_reference):
    attention = make_attention(4, 2, 1, bias=True, dtype=torch.float64,
                               attention_fn=reference_fn if use_reference else None)
    names = [name for name, _ in attention.named_parameters()]
    params = [p.detach().clone().requires_grad_() for _, p in attention.named_parameters()]
    x = randn(1, 3, 4, dtype=torch.float64).requires_grad_()

    def forward(x, *params):
        return functional_call(attention, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(forward, (x, *params))


def test_dropout_only_in_training():
    attention = make_attention(16, 4, dropout=0.5)
    plain = make_attention(16, 4)
    plain.load_state_dict(attention.state_dict())
    x = randn(2, 5, 16)
    assert torch.equal(attention(x), attention(x))
    torch.testing.assert_close(attention(x), plain(x))
    attention.train()
    torch.manual_seed(0)
    dropped = attention(x)
    # dropout acts on the layer's output: each entry is either zeroed or scaled by 1 / (1 - p)
    zeroed = dropped == 0
    assert 0.3 < zeroed.float().mean() < 0.7
    torch.testing.assert_close(dropped[~zeroed], plain(x)[~zeroed] / 0.5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_embd=10, n_head=4), "n_embd=10 is not divisible by n_head=4"),
    (dict(n_embd=16, n_head=4, n_kv_heads=3), "n_head=4 is not divisible by n_kv_heads=3"),
    (dict(n_embd=16, n_head=0), "n_head=0 must be an integer >= 1"),
    (dict(n_embd=16, n_head=4, dropout=1.0), r"dropout=1.0 must be a finite number >= 0 and < 1"),
    (dict(n_embd=16, n_head=True), "n_head=True must be an integer"),
])
def test_module_rejects_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CausalSelfAttention(**kwargs)


def test_module_rejects_bad_input_shapes_and_rope():
    attention = make_attention(16, 4)
    with pytest.raises(ValueError, match=r"x must be a tensor of shape \(B, T, 16\), got shape \(5, 16\)"):
        attention(randn(5, 16))
    with pytest.raises(ValueError, match=r"got shape \(2, 5, 12\)"):
        attention(randn(2, 5, 12))
    with pytest.raises(ValueError, match="head_dim=8"):
        CausalSelfAttention(16, 4, rope=RotaryEmbedding(8, 32))


# ---------------------------------------------------------------- RoPE and the KV cache


def test_rope_is_applied_to_queries_and_keys():
    rope = RotaryEmbedding(4, 16)
    attention = make_attention(16, 4, 2, rope=rope)
    x = randn(2, 6, 16)
    q = split_heads(attention.q_proj(x), 4)
    k = repeat_kv(split_heads(attention.k_proj(x), 2), 2)
    v = repeat_kv(split_heads(attention.v_proj(x), 2), 2)
    cos, sin = rope_cos_sin(torch.arange(6), 4)
    out, _ = attention_reference(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)
    torch.testing.assert_close(attention(x), attention.out_proj(merge_heads(out)))
    assert not torch.allclose(attention(x), make_attention(16, 4, 2)(x), atol=1e-3)


def run_in_chunks(attention: CausalSelfAttention | torch.nn.Sequential, x, chunks, n_layers=1):
    cache = KVCache(n_layers)
    layers = list(attention) if isinstance(attention, torch.nn.Sequential) else [attention]
    outputs, start = [], 0
    for size in chunks:
        assert cache.length == start
        h = x[:, start:start + size]
        for layer in layers:
            h = layer(h, kv_cache=cache)
        outputs.append(h)
        start += size
    assert cache.length == x.shape[1]
    return torch.cat(outputs, dim=1)


CHUNKINGS = [[1] * 9, [5, 1, 1, 1, 1], [4, 3, 2]]


@pytest.mark.parametrize("use_rope", [False, True])
@pytest.mark.parametrize("n_kv_heads", [None, 2, 1])
@pytest.mark.parametrize("chunks", CHUNKINGS)
def test_cached_decoding_equals_full_forward(use_rope, n_kv_heads, chunks):
    attention = make_attention(16, 4, n_kv_heads, rope=RotaryEmbedding(4, 32) if use_rope else None)
    x = randn(2, 9, 16, seed=7)
    torch.testing.assert_close(run_in_chunks(attention, x, chunks), attention(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_rope", [False, True])
def test_cached_decoding_through_two_layers_uses_each_layers_own_position(use_rope):
    """Layer 1 runs after layer 0 has already appended, so it must not read layer 0's length."""
    rope = RotaryEmbedding(4, 32) if use_rope else None
    torch.manual_seed(0)
    stack = torch.nn.Sequential(CausalSelfAttention(16, 4, 2, rope=rope, layer_idx=0),
                                CausalSelfAttention(16, 4, 2, rope=rope, layer_idx=1)).eval()
    x = randn(1, 8, 16, seed=3)
    full = stack[1](stack[0](x))
    torch.testing.assert_close(run_in_chunks(stack, x, [5, 1, 1, 1], n_layers=2), full, rtol=1e-5, atol=1e-6)


def test_cached_decoding_with_reference_fn():
    attention = make_attention(16, 4, 2, rope=RotaryEmbedding(4, 32), attention_fn=reference_fn)
    x = randn(2, 7, 16)
    torch.testing.assert_close(run_in_chunks(attention, x, [3, 1, 1, 2]), attention(x), rtol=1e-5, atol=1e-6)


def masked_reference_fn(q, k, v, causal, mask=None):
    return attention_reference(q, k, v, mask, causal=causal)[0]


def test_padding_mask_allows_real_keys_and_each_query_itself():
    key_is_real = torch.tensor([[False, False, True, True], [True, True, True, True]])
    mask = padding_mask(key_is_real, 3)  # queries at key positions 1, 2, 3
    assert mask.shape == (2, 1, 3, 4)
    assert mask[0, 0].tolist() == [[False, True, True, True],  # a pad query: only itself (and real keys)
                                   [False, False, True, True],
                                   [False, False, True, True]]
    assert mask[1].all()
    with pytest.raises(ValueError, match="key_is_real must be a bool tensor"):
        padding_mask(key_is_real.long(), 3)
    with pytest.raises(ValueError, match=r"t_query=5 must be an integer in \[1, 5\)"):
        padding_mask(key_is_real, 5)


@pytest.mark.parametrize("use_rope", [False, True])
@pytest.mark.parametrize("n_kv_heads", [None, 1])
@pytest.mark.parametrize("attention_fn", [None, masked_reference_fn], ids=["fast", "reference"])
def test_left_padded_row_computes_what_it_computes_alone(use_rope, n_kv_heads, attention_fn):
    """Row 0 is 3 pads then 4 real tokens at positions 0..3; its real outputs equal the 4 tokens alone,
    prefill and then one cached step; the pad queries give finite numbers."""
    rope = RotaryEmbedding(4, 32) if use_rope else None
    attention = make_attention(16, 4, n_kv_heads, rope=rope, attention_fn=attention_fn, dtype=torch.float64)
    x = randn(2, 8, 16, seed=4, dtype=torch.float64)
    mask = torch.tensor([[False] * 3 + [True] * 5, [True] * 8])
    positions = torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4], list(range(8))])
    cache = KVCache(1)
    prefill = attention(x[:, :7], kv_cache=cache, positions=positions[:, :7], attention_mask=mask[:, :7])
    step = attention(x[:, 7:], kv_cache=cache, positions=positions[:, 7:], attention_mask=mask)
    padded = torch.cat([prefill, step], dim=1)
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded[:1, 3:], attention(x[:1, 3:]), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(padded[1:], attention(x[1:]), rtol=1e-10, atol=1e-12)


def test_an_all_true_mask_is_the_plain_causal_path():
    attention = make_attention(16, 4, 2, rope=RotaryEmbedding(4, 32))
    x = randn(2, 5, 16)
    out = attention(x, attention_mask=torch.ones(2, 5, dtype=torch.bool))
    torch.testing.assert_close(out, attention(x), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"attention_mask must be a tensor of shape \(2, 5\)"):
        attention(x, attention_mask=torch.ones(2, 4, dtype=torch.bool))


def test_kv_cache_bookkeeping():
    cache = KVCache(2)
    assert cache.length == 0 and cache.nbytes == 0
    k, v = randn(1, 2, 3, 4), randn(1, 2, 3, 4, seed=1)
    k_all, v_all = cache.update(0, k, v)
    assert torch.equal(k_all, k) and cache.length == 3 and cache.seq_len(1) == 0
    k_all, v_all = cache.update(0, k[..., :1, :], v[..., :1, :])
    assert k_all.shape == (1, 2, 4, 4) and torch.equal(v_all[..., 3, :], v[..., 0, :])
    cache.update(1, k_all, v_all)
    assert cache.nbytes == kv_cache_bytes(2, 2, 4, 4, batch_size=1, bytes_per_element=4)
    cache.reset()
    assert cache.length == 0 and cache.seq_len(1) == 0


def test_kv_cache_truncate_forgets_the_tail_in_every_layer():
    cache = KVCache(2)
    k, v = randn(1, 2, 5, 4), randn(1, 2, 5, 4, seed=1)
    cache.update(0, k, v)
    cache.update(1, v, k)
    cache.truncate(3)
    assert cache.length == 3 and cache.seq_len(1) == 3
    assert torch.equal(cache.keys[0], k[..., :3, :]) and torch.equal(cache.values[1], k[..., :3, :])
    cache.truncate(7)  # beyond what is cached: nothing to forget
    assert cache.length == 3
    cache.truncate(0)
    assert cache.length == 0 and cache.nbytes == 0
    with pytest.raises(ValueError, match="length=-1 must be an integer >= 0"):
        cache.truncate(-1)


@pytest.mark.parametrize("use_rope", [False, True])
def test_truncate_then_decode_equals_never_having_seen_the_tail(use_rope):
    """Speculative decoding's roll-back: feed 6 tokens, keep 4, feed 2 others = feed the 6 new ones."""
    attention = make_attention(16, 4, 2, rope=RotaryEmbedding(4, 32) if use_rope else None)
    x, other = randn(1, 6, 16), randn(1, 2, 16, seed=3)
    cache = KVCache(1)
    attention(x, kv_cache=cache)
    cache.truncate(4)
    out = attention(other, kv_cache=cache)
    expected = attention(torch.cat([x[:, :4], other], dim=1))[:, 4:]
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def test_kv_cache_errors():
    cache = KVCache(2)
    with pytest.raises(ValueError, match=r"layer=2 must be an integer in \[0, 2\) \(one per layer"):
        cache.update(2, randn(1, 2, 3, 4), randn(1, 2, 3, 4))
    with pytest.raises(ValueError, match="same shape|one shape"):
        cache.update(0, randn(1, 2, 3, 4), randn(1, 2, 2, 4))
    cache.update(0, randn(1, 2, 3, 4), randn(1, 2, 3, 4))
    with pytest.raises(ValueError, match="reset"):
        cache.update(0, randn(1, 1, 1, 4), randn(1, 1, 1, 4))
    with pytest.raises(ValueError, match="n_layers=0 must be an integer >= 1"):
        KVCache(0)


def test_kv_cache_bytes_of_llama2_7b():
    """32 layers, 32 heads of 128, 4096 tokens, bf16: 2 GiB (Touvron et al. 2023 sizes)."""
    assert kv_cache_bytes(32, 32, 128, 4096) == 2 * 2**30
    assert kv_cache_bytes(32, 8, 128, 4096) == 2**30 // 2  # GQA with 8 kv heads: 4x smaller


# ---------------------------------------------------------------- compile and GPU


# torch.compile imports torch.utils.mkldnn, whose TorchScript classes warn on import (torch's own code)
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_torch_compile_on_cpu():
    """Cold (empty inductor cache) about 16 s on the 2-core CPU, warm about 4 s."""
    attention = make_attention(16, 4, 2, rope=RotaryEmbedding(4, 32))
    x = randn(2, 6, 16)
    compiled = torch.compile(attention)
    torch.testing.assert_close(compiled(x), attention(x), rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("t_query,t_key", [(256, 256), (16, 256), (1, 256)])
def test_fast_matches_reference_on_cuda_bf16(t_query, t_key):
    q, k, v = (t.cuda() for t in random_qkv(2, 8, t_query, t_key, 64, dtype=torch.bfloat16))
    fast = attention_fast(q, k, v)
    exact = attention_reference(q.double(), k.double(), v.double())[0]
    # bf16 keeps 8 bits of mantissa (~4e-3 relative); both paths round to bf16 at the end
    torch.testing.assert_close(fast.double(), exact, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(attention_reference(q, k, v)[0].double(), exact, rtol=3e-2, atol=3e-2)


@pytest.mark.gpu
def test_module_with_cache_on_cuda_bf16():
    attention = make_attention(64, 4, 2, rope=RotaryEmbedding(16, 64)).cuda().to(torch.bfloat16)
    x = randn(2, 12, 64).cuda().to(torch.bfloat16)
    torch.testing.assert_close(run_in_chunks(attention, x, [8, 1, 1, 1, 1]).float(), attention(x).float(),
                               rtol=3e-2, atol=3e-2)
