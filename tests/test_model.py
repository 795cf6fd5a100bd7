"""Tests for llmcourse.model: config checks, parameter and FLOP counts, the full GPT forward,
causality, weight tying, swap points, KV cache, generation and checkpoints."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from llmcourse.attention import KVCache, attention_reference
from llmcourse.checkpoint import CheckpointError
from llmcourse.losses import cross_entropy
from llmcourse.mlp import MoE
from llmcourse.model import (
    GPT,
    GPTConfig,
    count_params,
    flops_per_token,
    param_breakdown,
)

POSITIONS = ["learned", "sinusoidal", "rope", "none"]


def tiny_config(**overrides) -> GPTConfig:
    values = dict(vocab_size=32, block_size=16, n_layer=2, n_head=4, n_embd=16)
    values.update(overrides)
    return GPTConfig(**values)


def tiny_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(tiny_config(**overrides)).eval()


def random_ids(batch: int, length: int, vocab: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"vocab_size": 0}, r"vocab_size=0 must be an integer >= 1 \(use your tokenizer's vocabulary size\)"),
        ({"block_size": -3}, r"block_size=-3 must be an integer >= 1"),
        ({"n_layer": 1.5}, r"n_layer=1.5 must be an integer >= 1"),
        ({"n_head": True}, r"n_head=True must be an integer >= 1"),
        ({"n_embd": 0}, r"n_embd=0 must be an integer >= 1"),
        ({"n_embd": 100, "n_head": 3}, r"n_embd=100 must be divisible by n_head=3 \(try n_embd=102 or n_head=4\)"),
        ({"n_kv_heads": 3}, r"n_kv_heads=3 must divide n_head=4\b.*try n_kv_heads=4"),
        ({"n_kv_heads": 0}, r"n_kv_heads=0 must be an integer >= 1"),
        ({"mlp": "geglu"}, r"mlp='geglu' must be one of 'relu', 'gelu', 'swiglu'"),
        ({"mlp_hidden": 0}, r"mlp_hidden=0 must be an integer >= 1"),
        ({"norm": "batchnorm"}, r"norm='batchnorm' must be one of"),
        ({"position": "alibi"}, r"position='alibi' must be one of"),
        ({"position": "rope", "n_embd": 12, "n_head": 4}, r"head_dim .* must be even, got 12 // 4 = 3"),
        ({"position": "sinusoidal", "n_embd": 15, "n_head": 5}, r"n_embd must be even, got n_embd=15"),
        ({"rope_base": 1.0}, r"rope_base=1.0 must be a finite number > 1"),
        ({"rope_scale": 0.0}, r"rope_scale=0.0 must be a finite number > 0"),
        ({"n_experts": 0}, r"n_experts=0 must be an integer >= 1"),
        ({"top_k": 0}, r"top_k=0 must be an integer >= 1"),
        ({"n_experts": 4, "top_k": 5}, r"top_k=5 must be at most n_experts=4"),
        ({"tie_weights": "yes"}, r"tie_weights='yes' must be True or False"),
        ({"bias": 1}, r"bias=1 must be True or False"),
        ({"dropout": 1.0}, r"dropout=1.0 must be a finite number >= 0.0 and < 1.0 \(a probability"),
        ({"dropout": -0.1}, r"dropout=-0.1 must be a finite number >= 0.0"),
    ],
)
def test_config_rejects_bad_fields_with_a_fix(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_config_derived_sizes():
    config = tiny_config(n_embd=48, n_head=6, n_kv_heads=2, mlp="swiglu")
    assert config.head_dim == 8
    assert config.kv_heads == 2
    assert tiny_config().kv_heads == 4
    assert config.mlp_hidden_size == 128  # ceil(8·48/3) = 128, already a multiple of 64
    assert tiny_config(mlp_hidden=20).mlp_hidden_size == 20
    assert tiny_config().mlp_hidden_size == 64  # 4·C for gelu


def test_config_dict_round_trip():
    config = tiny_config(n_kv_heads=2, mlp="swiglu", norm="rmsnorm", position="rope", rope_base=500000.0,
                         n_experts=4, top_k=2, tie_weights=False, bias=True, dropout=0.1)
    as_dict = config.to_dict()
    assert as_dict["position"] == "rope" and as_dict["n_experts"] == 4
    assert GPTConfig.from_dict(as_dict) == config
    assert set(as_dict) == {f.name for f in dataclasses.fields(GPTConfig)}


def test_config_from_dict_names_unknown_and_missing_keys():
    values = tiny_config().to_dict()
    with pytest.raises(ValueError, match=r"unknown GPTConfig field\(s\) \['n_embed'\]"):
        GPTConfig.from_dict({**values, "n_embed": 16})
    del values["vocab_size"]
    with pytest.raises(ValueError, match=r"missing required field\(s\) \['vocab_size'\]"):
        GPTConfig.from_dict(values)


# ------------------------------------------------------------------------- counting

config_strategy = st.builds(
    dict,
    n_head=st.sampled_from([1, 2, 4]),
    head_dim=st.sampled_from([2, 4]),
    kv_divisor=st.sampled_from([1, 2, 4]),
    n_layer=st.integers(1, 3),
    mlp=st.sampled_from(["relu", "gelu", "swiglu"]),
    mlp_hidden=st.sampled_from([None, 8, 24]),
    norm=st.sampled_from(["layernorm", "rmsnorm"]),
    position=st.sampled_from(POSITIONS),
    n_experts=st.sampled_from([1, 2, 3]),
    tie_weights=st.booleans(),
    bias=st.booleans(),
)


def build_config(choice: dict) -> GPTConfig:
    n_head = choice["n_head"]
    kv_heads = n_head // choice["kv_divisor"] if n_head % choice["kv_divisor"] == 0 else None
    return GPTConfig(
        vocab_size=11, block_size=7, n_layer=choice["n_layer"], n_head=n_head,
        n_embd=n_head * choice["head_dim"], n_kv_heads=kv_heads, mlp=choice["mlp"],
        mlp_hidden=choice["mlp_hidden"], norm=choice["norm"], position=choice["position"],
        n_experts=choice["n_experts"], top_k=min(2, choice["n_experts"]),
        tie_weights=choice["tie_weights"], bias=choice["bias"])


@settings(max_examples=40)
@given(config_strategy)
def test_count_params_matches_the_built_model(choice):
    config = build_config(choice)
    model = GPT(config)
    assert model.num_params() == count_params(config)
    assert model.num_params(non_embedding=True) == count_params(config, non_embedding=True)
    # independent count: every parameter tensor, shared ones once
    assert model.num_params() == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_param_breakdown_of_gpt2_small():
    """GPT-2 small (124M): V=50257, T=1024, 12 layers of C=768, biases, tied, learned positions."""
    config = GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, bias=True)
    assert count_params(config) == 124_439_808  # the published Hugging Face gpt2 parameter count
    parts = param_breakdown(config)
    assert parts["lm_head"] == 0 and parts["positions"] == 1024 * 768
    # Kaplan et al.'s approximation: non-embedding N ≈ 12·L·C²
    assert count_params(config, non_embedding=True) == pytest.approx(12 * 12 * 768**2, rel=0.01)


def test_num_params_non_embedding_drops_vocabulary_and_position_tables():
    tied = tiny_model()
    untied = tiny_model(tie_weights=False)
    c, v, t = 16, 32, 16
    assert tied.num_params() - tied.num_params(non_embedding=True) == v * c + t * c
    assert untied.num_params() - untied.num_params(non_embedding=True) == 2 * v * c + t * c


def matmul_weights(model: GPT, top_k: int = 1, n_experts: int = 1) -> float:
    """Weights a token is multiplied by, read off the modules (MoE experts scaled by top_k/E)."""
    total = 0.0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            share = top_k / n_experts if ".experts." in name else 1.0
            total += share * module.weight.numel()
    return total


@pytest.mark.parametrize("overrides", [{}, {"mlp": "swiglu", "n_kv_heads": 1, "tie_weights": False},
                                       {"n_experts": 4, "top_k": 2}])
def test_flops_per_token_counts_every_matmul(overrides):
    model = tiny_model(**overrides)
    config = model.config
    expected = 6 * matmul_weights(model, config.top_k, config.n_experts) + 12 * config.n_layer * config.n_embd * 10
    assert flops_per_token(config, seq_len=10) == expected
    assert flops_per_token(config) == flops_per_token(config, seq_len=config.block_size)
    with pytest.raises(ValueError, match="seq_len=0 must be an integer >= 1"):
        flops_per_token(config, seq_len=0)


def test_flops_per_token_equals_torch_flop_counter():
    """Count the FLOPs torch really performs in forward + backward (dense model, reference attention)."""
    torch.manual_seed(0)
    config = tiny_config(block_size=12)
    model = GPT(config, attention_fn=lambda q, k, v, causal: attention_reference(q, k, v, causal=causal)[0])
    ids = random_ids(2, 12)
    with FlopCounterMode(display=False) as counter:
        _, loss = model(ids, targets=ids)
        loss.backward()
    assert counter.get_total_flops() == flops_per_token(config, seq_len=12) * ids.numel()


# ------------------------------------------------------------------------- forward


def test_forward_shapes_and_loss_matches_chapter_01_cross_entropy():
    model = tiny_model()
    ids = random_ids(3, 10)
    targets = random_ids(3, 10, seed=2)
    targets[0, :4] = -100  # ignored positions
    logits, loss = model(ids, targets)
    assert logits.shape == (3, 10, 32)
    torch.testing.assert_close(loss, cross_entropy(logits, targets), rtol=1e-6, atol=1e-6)
    assert model(ids)[1] is None


@pytest.mark.parametrize("position", POSITIONS)
def test_untrained_loss_is_about_ln_vocab_size(position):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, block_size=32, n_layer=2, n_head=4, n_embd=64, position=position))
    ids = torch.randint(0, 512, (8, 32))
    _, loss = model(ids, torch.randint(0, 512, (8, 32)))
    assert abs(loss.item() - math.log(512)) < 0.1


def test_initialisation_follows_gpt2():
    model = tiny_model(n_layer=8, n_embd=64, bias=True)
    residual_std = 0.02 / math.sqrt(2 * 8)
    for name, param in model.named_parameters():
        if name.endswith(("out_proj.weight", "fc_out.weight")):
            assert param.std().item() == pytest.approx(residual_std, rel=0.15), name
        elif name.endswith(("q_proj.weight", "fc_in.weight", "tok_emb.weight")):
            assert param.std().item() == pytest.approx(0.02, rel=0.15), name
        elif name.endswith("bias"):
            assert torch.all(param == 0), name
        elif "norm" in name:
            assert torch.all(param == 1), name


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(tiny_config(n_embd=32, block_size=16))
    ids = random_ids(4, 17)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(300):
        _, loss = model(inputs, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if loss.item() < 0.05:
            break
    assert loss.item() < 0.05


@pytest.mark.parametrize("position", POSITIONS)
def test_the_model_is_causal(position):
    """Changing token t changes no logits before t (and does change some logit at t)."""
    model = tiny_model(position=position)
    ids = random_ids(2, 12)
    changed = ids.clone()
    t = 7
    changed[:, t] = (changed[:, t] + 1) % 32
    before, after = model(ids)[0], model(changed)[0]
    torch.testing.assert_close(before[:, :t], after[:, :t], rtol=0, atol=0)
    assert not torch.allclose(before[:, t], after[:, t])


def test_without_positions_one_layer_is_blind_to_word_order():
    """position="none": the last position sees the same set of keys for "dog bites man" and
    "man bites dog", so one layer gives it the same logits; every real position kind does not."""
    dog_bites_man, man_bites_dog = torch.tensor([[3, 5, 7, 9]]), torch.tensor([[7, 5, 3, 9]])
    for position in POSITIONS:
        model = tiny_model(position=position, n_layer=1)
        same = torch.allclose(model(dog_bites_man)[0][:, -1], model(man_bites_dog)[0][:, -1], atol=1e-6)
        assert same == (position == "none"), position


def test_input_errors():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"ids must be an integer tensor of shape \(B, T\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"targets \(2, 4\) must have the shape of ids \(2, 5\)"):
        model(random_ids(2, 5), random_ids(2, 4))
    with pytest.raises(ValueError, match=r"17 tokens exceed block_size=16"):
        model(random_ids(1, 17))
    cache = KVCache(2)
    model(random_ids(1, 10), kv_cache=cache)
    with pytest.raises(ValueError, match=r"7 tokens after 10 cached tokens exceed block_size=16"):
        model(random_ids(1, 7), kv_cache=cache)


def test_dropout_only_in_training():
    model = tiny_model(dropout=0.5)
    ids = random_ids(2, 8)
    torch.testing.assert_close(model(ids)[0], model(ids)[0])
    model.train()
    assert not torch.allclose(model(ids)[0], model(ids)[0])


# ------------------------------------------------------------------------- weight tying


def test_weight_tying_shares_one_parameter():
    tied, untied = tiny_model(), tiny_model(tie_weights=False)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert not torch.equal(untied.lm_head.weight, untied.tok_emb.weight)
    # a gradient step through the output layer moves the embedding of a tied model
    _, loss = tied(random_ids(2, 8), random_ids(2, 8, seed=3))
    loss.backward()
    assert tied.tok_emb.weight.grad is not None and tied.tok_emb.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------- swap points


def test_attention_fn_swap_is_used_and_reference_equals_fast_path():
    calls = []

    def recording_reference(q, k, v, causal):
        calls.append(tuple(q.shape))
        return attention_reference(q, k, v, causal=causal)[0]

    torch.manual_seed(0)
    swapped = GPT(tiny_config(position="rope", n_kv_heads=2), attention_fn=recording_reference).eval()
    torch.manual_seed(0)
    fast = GPT(tiny_config(position="rope", n_kv_heads=2)).eval()
    ids = random_ids(2, 9)
    torch.testing.assert_close(swapped(ids)[0], fast(ids)[0], rtol=1e-5, atol=1e-5)
    assert calls == [(2, 4, 9, 4)] * 2  # once per layer, with (B, H, T, D) queries


def test_norm_cls_and_mlp_cls_swaps_are_used():
    built = {"norm": 0, "mlp": 0}

    class TorchNorm(nn.LayerNorm):
        def __init__(self, dim):
            super().__init__(dim)
            built["norm"] += 1

    class ZeroMLP(nn.Module):
        def __init__(self, config):
            super().__init__()
            built["mlp"] += 1

        def forward(self, x):
            return torch.zeros_like(x)

    model = GPT(tiny_config(), norm_cls=TorchNorm, mlp_cls=ZeroMLP).eval()
    assert built == {"norm": 2 * 2 + 1, "mlp": 2}
    assert isinstance(model.norm_f, TorchNorm) and isinstance(model.blocks[1].mlp, ZeroMLP)
    # with the MLPs silenced, each block is x + attn(norm1(x)): check block 0 by hand
    x = torch.randn(1, 5, 16)
    block = model.blocks[0]
    torch.testing.assert_close(block(x), x + block.attn(block.norm1(x)))


def test_mixture_of_experts_model_sets_aux_loss_and_trains_its_router():
    torch.manual_seed(0)
    model = GPT(tiny_config(n_experts=4, top_k=2, mlp="swiglu"))
    assert all(isinstance(block.mlp, MoE) for block in model.blocks)
    ids = random_ids(2, 12)
    _, loss = model(ids, ids)
    layer_losses = torch.stack([block.mlp.aux_loss for block in model.blocks])
    torch.testing.assert_close(model.aux_loss, layer_losses.mean())
    assert model.aux_loss.item() >= 1.0 - 1e-6  # Switch's loss is 1 at perfect balance, more otherwise
    (loss + 0.01 * model.aux_loss).backward()
    assert model.blocks[0].mlp.router.weight.grad.abs().sum() > 0
    dense = tiny_model()
    dense(ids)
    assert dense.aux_loss.item() == 0.0


# ------------------------------------------------------------------------- KV cache and generation


@pytest.mark.parametrize(("position", "n_kv_heads"),
                         [("rope", None), ("rope", 2), ("learned", None), ("sinusoidal", 1), ("none", None)])
def test_kv_cache_incremental_forward_equals_full_forward(position, n_kv_heads):
    model = tiny_model(position=position, n_kv_heads=n_kv_heads)
    ids = random_ids(2, 12)
    full = model(ids)[0]
    cache = KVCache(model.config.n_layer)
    pieces = [model(ids[:, :5], kv_cache=cache)[0]]  # prefill 5 tokens, then one at a time
    for t in range(5, 12):
        pieces.append(model(ids[:, t:t + 1], kv_cache=cache)[0])
    assert cache.length == 12
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("position", POSITIONS)
def test_left_padded_rows_give_the_logits_they_give_alone(position):
    """Row 0: 4 pads then 6 real tokens; with positions and the mask its real logits equal the 6
    tokens alone, through a prefill and two cached steps; the pad rows' logits are finite."""
    model = tiny_model(position=position, n_kv_heads=2).double()
    ids = random_ids(2, 12)
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[0, :4] = False
    positions = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
    cache = KVCache(model.config.n_layer)
    pieces = [model(ids[:, :10], kv_cache=cache, positions=positions[:, :10], attention_mask=mask[:, :10])[0]]
    for t in (10, 11):
        pieces.append(model(ids[:, t:t + 1], kv_cache=cache, positions=positions[:, t:t + 1],
                            attention_mask=mask[:, :t + 1])[0])
    padded = torch.cat(pieces, dim=1)
    assert torch.isfinite(padded).all()
    torch.testing.assert_close(padded[:1, 4:], model(ids[:1, 4:])[0], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(padded[1:], model(ids[1:])[0], rtol=1e-9, atol=1e-10)


def test_positions_and_mask_are_checked():
    model = tiny_model()
    ids = random_ids(2, 5)
    with pytest.raises(ValueError, match=r"positions must be a tensor of shape \(2, 5\)"):
        model(ids, positions=torch.arange(5))
    with pytest.raises(ValueError, match=r"attention_mask must be a tensor of shape \(2, 5\)"):
        model(ids, attention_mask=torch.ones(2, 6, dtype=torch.bool))


def naive_greedy(model: GPT, ids: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding without a cache: the whole sequence through the model at every step."""
    for _ in range(steps):
        next_id = model(ids)[0][:, -1].argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, next_id], dim=1)
    return ids


def test_generate_greedy_with_cache_equals_naive_decoding():
    model = tiny_model(position="rope")
    prompt = random_ids(2, 4)
    out = model.generate(prompt, max_new_tokens=12, temperature=0)
    assert out.shape == (2, 16)
    assert torch.equal(out, naive_greedy(model, prompt, 12))


def test_generate_sampling_is_repeatable_and_respects_top_k():
    model = tiny_model()
    prompt = random_ids(3, 2)
    first = model.generate(prompt, 8, temperature=1.5, generator=torch.Generator().manual_seed(7))
    second = model.generate(prompt, 8, temperature=1.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second) and torch.equal(first[:, :2], prompt)
    top_1 = model.generate(prompt, 8, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(7))
    assert torch.equal(top_1, naive_greedy(model, prompt, 8))  # top_k=1 leaves only the argmax
    with pytest.raises(ValueError, match=r"max_new_tokens=15 exceed block_size=16"):
        model.generate(prompt, 15)


# ------------------------------------------------------------------------- checkpoints


def test_save_load_round_trip(tmp_path):
    model = tiny_model(position="rope", mlp="swiglu", norm="rmsnorm", n_kv_heads=2, tie_weights=True)
    path = tmp_path / "model.pt"
    model.save(path)
    loaded = GPT.load(path).eval()
    assert loaded.config == model.config
    assert loaded.lm_head.weight is loaded.tok_emb.weight  # tying survives the round trip
    ids = random_ids(2, 10)
    assert torch.equal(loaded(ids)[0], model(ids)[0])
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_save_is_atomic(tmp_path, monkeypatch):
    old = tiny_model(seed=0)
    path = tmp_path / "model.pt"
    old.save(path)

    def crash_mid_write(obj, file, *args, **kwargs):
        file.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        tiny_model(seed=1).save(path)
    monkeypatch.undo()
    ids = random_ids(1, 6)
    assert torch.equal(GPT.load(path).eval()(ids)[0], old(ids)[0])  # the old file is intact
    assert list(tmp_path.iterdir()) == [path]


def test_load_rejects_bad_files_clearly(tmp_path):
    good = tmp_path / "good.pt"
    tiny_model().save(good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:200])
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"truncated.pt is not an llmcourse checkpoint \(a torch file that is truncated"):
        GPT.load(truncated)
    with pytest.raises(CheckpointError, match=r"text.pt is not an llmcourse checkpoint \(a text file"):
        GPT.load(text)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(CheckpointError, match=r"other.pt is not an llmcourse checkpoint \(a bare state_dict"):
        GPT.load(other)
    mismatched = tmp_path / "mismatched.pt"
    checkpoint = torch.load(good, weights_only=True)
    checkpoint["model_config"]["n_embd"] = 32
    torch.save(checkpoint, mismatched)
    with pytest.raises(CheckpointError, match=r"config and weights do not form a valid GPT"):
        GPT.load(mismatched)
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        GPT.load(tmp_path / "missing.pt")


def test_load_moves_to_map_location(tmp_path):
    path = tmp_path / "model.pt"
    tiny_model().save(path)
    loaded = GPT.load(path, map_location="cpu")
    assert all(p.device.type == "cpu" for p in loaded.parameters())


# ------------------------------------------------------------------------- compile and GPU


@pytest.mark.slow  # about 25 s on 2 CPU cores (inductor compiles C++ kernels)
def test_torch_compile_matches_eager_on_cpu():
    model = tiny_model(position="rope")
    ids = random_ids(2, 8)
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(ids)[0], model(ids)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("position", ["learned", "rope"])
def test_bf16_autocast_on_gpu_matches_float32(position):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=4, n_embd=128,
                          position=position)).cuda()
    ids = torch.randint(0, 256, (4, 64), device="cuda")
    _, loss32 = model(ids, ids)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, loss16 = model(ids, ids)
    assert logits.dtype == torch.bfloat16 and loss16.dtype == torch.float32
    assert abs(loss16.item() - loss32.item()) < 0.05
    loss16.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ------------------------------------------------------------------------- memory layout


@pytest.mark.parametrize("tie", [True, False])
def test_input_major_weights_change_the_layout_not_the_model(tie, tmp_path):
    model, relaid = tiny_model(tie_weights=tie), tiny_model(tie_weights=tie).input_major_weights_()
    linears = [m for m in relaid.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.stride() == (1, m.weight.shape[0]) for m in linears)
    before, after = model.state_dict(), relaid.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    ids = random_ids(2, 10)
    torch.testing.assert_close(relaid(ids)[0], model(ids)[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(relaid.generate(ids, 5, temperature=0), model.generate(ids, 5, temperature=0))
    relaid.save(tmp_path / "relaid.pt")  # a checkpoint does not care about the layout
    assert torch.equal(GPT.load(tmp_path / "relaid.pt")(ids)[0], relaid(ids)[0])
    # and it still trains: the same gradients as the usual layout
    targets = random_ids(2, 10, seed=2)
    for m in (model, relaid):
        m.train()
        m(ids, targets)[1].backward()
    for (name, p), q in zip(model.named_parameters(), relaid.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
