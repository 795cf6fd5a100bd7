"""llmcourse.lora: a LoRA layer that starts as its base layer, trains only its two matrices, merges
into the base weight and back, exports a plain state dict, saves small adapter files, and agrees
with peft (Hugging Face's implementation) on the output, the update and the merged weight."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from llmcourse.checks import ArgumentError
from llmcourse.lora import (ATTENTION_TARGETS, DEFAULT_TARGETS, LoRAError, LoRALinear, count_parameters,
                            inject_lora, load_adapters, load_lora_state_dict, lora_layers, lora_state_dict,
                            merge_lora, merged_state_dict, save_adapters, unmerge_lora)
from llmcourse.model import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=16)
PROJECTIONS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "mlp.fc_in", "mlp.fc_out")


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = CONFIG if not overrides else GPTConfig(**{**CONFIG.to_dict(), **overrides})
    return GPT(config).eval()


def token_ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, CONFIG.vocab_size, (2, 12), generator=torch.Generator().manual_seed(seed))


def randomise_adapters(model: nn.Module, seed: int = 2) -> None:
    """Give every B a non-zero value, so the update is not zero and merging changes something."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=generator))
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.1)


def adapted_gpt(rank: int = 4, alpha: float = 8.0, **kwargs) -> GPT:
    model = tiny_gpt()
    inject_lora(model, rank=rank, alpha=alpha, **kwargs)
    randomise_adapters(model)
    return model


# ---------------------------------------------------------------------------------- the layer


def test_a_new_lora_layer_computes_exactly_its_base_layer():
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    layer = LoRALinear(copy.deepcopy(base), rank=2, alpha=4.0)
    x = torch.randn(3, 5, 8)
    assert torch.equal(layer(x), base(x))
    assert torch.equal(layer.lora_B, torch.zeros(6, 2))
    assert layer.lora_A.abs().sum() > 0  # random A: B's gradient is not zero at the first step
    assert layer.lora_A.abs().max() <= 1 / 8 ** 0.5  # Kaiming-uniform bound 1/sqrt(in), as nn.Linear's
    assert layer.scaling == 2.0


def test_the_base_is_frozen_and_only_a_and_b_train():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 6), rank=2)
    assert not layer.base.weight.requires_grad and not layer.base.bias.requires_grad
    layer(torch.randn(4, 8)).sum().backward()
    assert layer.base.weight.grad is None
    assert layer.lora_B.grad.abs().sum() > 0
    assert torch.equal(layer.lora_A.grad, torch.zeros(2, 8))  # B = 0 blocks A's gradient at the start


@settings(max_examples=50)
@given(in_features=st.integers(1, 12), out_features=st.integers(1, 12), rank_seed=st.integers(0, 100),
       alpha=st.floats(0.1, 64.0), bias=st.booleans(), leading=st.lists(st.integers(1, 3), max_size=2),
       seed=st.integers(0, 2 ** 16))
def test_the_layer_is_the_base_weight_plus_the_scaled_low_rank_update(in_features, out_features, rank_seed,
                                                                        alpha, bias, leading, seed):
    torch.manual_seed(seed)
    rank = 1 + rank_seed % min(in_features, out_features)
    layer = LoRALinear(nn.Linear(in_features, out_features, bias=bias, dtype=torch.float64), rank, alpha)
    with torch.no_grad():
        layer.lora_A.normal_()
        layer.lora_B.normal_()
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float64
    x = torch.randn(*leading, in_features, dtype=torch.float64)
    weight = layer.base.weight + layer.lora_B @ layer.lora_A * (alpha / rank)
    expected = x @ weight.T + (layer.base.bias if bias else 0)
    torch.testing.assert_close(layer(x), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.delta_weight(), weight - layer.base.weight, rtol=1e-10, atol=1e-10)


def test_merge_and_unmerge_of_one_layer():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(8, 6), rank=2, alpha=4.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(5, 8)
    before_weight, before_output = layer.base.weight.clone(), layer(x)
    layer.merge()
    assert layer.merged and "merged=True" in repr(layer)
    torch.testing.assert_close(layer.base.weight, before_weight + layer.delta_weight(), rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), before_output, rtol=1e-5, atol=1e-6)
    with pytest.raises(LoRAError, match="already merged"):
        layer.merge()
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, before_weight, rtol=0, atol=1e-6)
    with pytest.raises(LoRAError, match="not merged"):
        layer.unmerge()


def test_dropout_acts_on_the_lora_branch_in_training_only():
    torch.manual_seed(0)
    base = nn.Linear(8, 6)
    layer = LoRALinear(copy.deepcopy(base), rank=2, dropout=0.5)
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(16, 8)
    layer.train()
    assert not torch.allclose(layer(x), layer(x))  # a fresh mask each call
    layer.eval()
    torch.testing.assert_close(layer(x), base(x) + x @ layer.delta_weight().T)


@pytest.mark.parametrize("kwargs, message", [
    ({"rank": 0}, r"rank=0 must be an integer >= 1"),
    ({"rank": 2.0}, r"rank=2\.0 must be an integer"),
    ({"rank": True}, r"rank=True must be an integer"),
    ({"rank": 7}, r"rank=7 must be at most min\(in_features, out_features\) = 6"),
    ({"alpha": 0.0}, r"alpha=0\.0 must be a finite number > 0"),
    ({"alpha": "16"}, r"alpha='16' must be a finite number"),
    ({"dropout": 1.0}, r"dropout=1\.0 must be a finite number >= 0\.0 and < 1\.0"),
])
def test_bad_settings_name_the_value_and_the_fix(kwargs, message):
    with pytest.raises(ArgumentError, match=message):
        LoRALinear(nn.Linear(8, 6), **kwargs)


def test_only_a_linear_layer_can_be_wrapped():
    with pytest.raises(ArgumentError, match="base must be an nn.Linear, got Conv1d"):
        LoRALinear(nn.Conv1d(8, 6, 1))


# ---------------------------------------------------------------------------------- a GPT


def test_inject_wraps_the_projections_and_the_model_starts_unchanged():
    model, reference = tiny_gpt(), tiny_gpt()
    names = inject_lora(model, rank=4)
    assert names == sorted(f"blocks.{i}.{p}" for i in range(CONFIG.n_layer) for p in PROJECTIONS)
    assert set(lora_layers(model)) == set(names)
    assert isinstance(model.lm_head, nn.Linear) and model.lm_head.weight is model.tok_emb.weight
    assert torch.equal(model(token_ids())[0], reference(token_ids())[0])


def test_attention_targets_wrap_attention_only():
    model = tiny_gpt()
    names = inject_lora(model, rank=2, targets=ATTENTION_TARGETS)
    assert names == sorted(f"blocks.{i}.{p}" for i in range(CONFIG.n_layer) for p in PROJECTIONS[:4])
    assert isinstance(model.blocks[0].mlp.fc_in, nn.Linear)


def test_default_targets_also_cover_swiglu():
    model = tiny_gpt(mlp="swiglu")
    names = inject_lora(model, rank=2)
    assert {"blocks.0.mlp.gate_proj", "blocks.0.mlp.up_proj", "blocks.0.mlp.down_proj"} <= set(names)
    assert len(DEFAULT_TARGETS) == len(set(DEFAULT_TARGETS))


def test_only_lora_parameters_require_and_get_gradients():
    model = adapted_gpt()
    ids = token_ids()
    _, loss = model(ids, targets=ids)
    loss.backward()
    for name, param in model.named_parameters():
        is_lora = name.endswith(("lora_A", "lora_B"))
        assert param.requires_grad == is_lora, name
        assert (param.grad is not None and param.grad.abs().sum() > 0) == is_lora, name


def test_wrapping_keeps_eval_mode():
    model = tiny_gpt()  # in eval mode
    inject_lora(model, rank=2, dropout=0.5)
    assert not any(module.training for module in model.modules())


def test_keeps_the_device_and_dtype_of_the_base_weights():
    model = tiny_gpt().to(torch.float64)
    inject_lora(model, rank=2)
    assert all(p.dtype == torch.float64 for p in model.parameters())


@pytest.mark.gpu
def test_on_the_gpu_the_adapters_live_beside_the_weights():
    model = tiny_gpt().to("cuda", torch.bfloat16)
    inject_lora(model, rank=2)
    layer = model.blocks[0].attn.q_proj
    assert layer.lora_A.device.type == "cuda" and layer.lora_B.dtype == torch.bfloat16
    randomise_adapters(model)
    logits = model(token_ids().cuda())[0]
    merge_lora(model)
    torch.testing.assert_close(model(token_ids().cuda())[0], logits, rtol=0.05, atol=0.05)


def test_merged_model_gives_the_same_outputs_and_unmerge_restores_the_weights():
    model = adapted_gpt()
    weights = {name: p.clone() for name, p in model.named_parameters()}
    logits = model(token_ids())[0]
    merge_lora(model)
    assert all(layer.merged for layer in lora_layers(model).values())
    assert not torch.allclose(model.blocks[0].attn.q_proj.base.weight, weights["blocks.0.attn.q_proj.base.weight"])
    torch.testing.assert_close(model(token_ids())[0], logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(LoRAError, match="already merged"):
        merge_lora(model)
    unmerge_lora(model)
    for name, param in model.named_parameters():
        torch.testing.assert_close(param, weights[name], rtol=0, atol=1e-6)
    with pytest.raises(LoRAError, match="not merged"):
        unmerge_lora(model)


def test_input_major_weights_merge_in_place_with_the_right_values():
    model = tiny_gpt().input_major_weights_()
    inject_lora(model, rank=4)
    randomise_adapters(model)
    layer = model.blocks[1].mlp.fc_in
    assert not layer.base.weight.is_contiguous()
    before, delta, stride = layer.base.weight.clone(), layer.delta_weight().detach(), layer.base.weight.stride()
    logits = model(token_ids())[0]
    merge_lora(model)
    assert layer.base.weight.stride() == stride  # still input-major
    torch.testing.assert_close(layer.base.weight, before + delta, rtol=0, atol=1e-6)
    torch.testing.assert_close(model(token_ids())[0], logits, rtol=1e-5, atol=1e-5)


def test_merged_state_dict_loads_into_a_fresh_gpt_without_changing_the_model():
    model = adapted_gpt()
    own_state = {key: value.clone() for key, value in model.state_dict().items()}
    logits = model(token_ids())[0]
    state = merged_state_dict(model)
    assert list(state) == list(GPT(CONFIG).state_dict())
    plain = GPT(CONFIG).eval()
    plain.load_state_dict(state)  # strict: the keys of an unwrapped GPT
    torch.testing.assert_close(plain(token_ids())[0], logits, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(value, own_state[key]) for key, value in model.state_dict().items())
    assert not any(layer.merged for layer in lora_layers(model).values())
    merge_lora(model)  # a merged model exports the same weights
    for key, value in merged_state_dict(model).items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=1e-6)


def test_count_parameters_counts_rank_times_in_plus_out_per_layer():
    model = tiny_gpt()
    total = model.num_params()
    assert count_parameters(model) == (total, total)  # the tied matrix once
    inject_lora(model, rank=3)
    c, hidden = CONFIG.n_embd, CONFIG.mlp_hidden_size
    per_block = 4 * 3 * (c + c) + 3 * (c + hidden) + 3 * (hidden + c)  # q, k, v, out; fc_in; fc_out
    lora = CONFIG.n_layer * per_block
    assert count_parameters(model) == (lora, total + lora)


# ---------------------------------------------------------------------------------- refusals


def test_a_pattern_that_matches_nothing_lists_the_layers_there_are():
    model = tiny_gpt()
    with pytest.raises(ArgumentError, match=r"match no nn\.Linear.*blocks\.0\.attn\.q_proj"):
        inject_lora(model, targets=("*.attention.query",))
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("tie", [True, False])
def test_lm_head_is_never_wrapped(tie):
    model = tiny_gpt(tie_weights=tie)
    with pytest.raises(ArgumentError, match="'lm_head', which is the output layer"):
        inject_lora(model, targets=("*",))
    assert not lora_layers(model)


def test_a_tied_linear_is_refused_whatever_its_name():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    model[1].weight = model[0].weight
    with pytest.raises(ArgumentError, match="'0', which shares its weight"):
        inject_lora(model, rank=2, targets=("0",))


def test_a_model_is_wrapped_once():
    model = tiny_gpt()
    inject_lora(model, rank=2)
    with pytest.raises(LoRAError, match="already has LoRA layers"):
        inject_lora(model, rank=2)


def test_a_rank_too_large_for_one_layer_changes_nothing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2))
    with pytest.raises(ArgumentError, match=r"rank=4 must be at most .* = 2 for '1'"):
        inject_lora(model, rank=4, targets=("0", "1"))
    assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())


def test_functions_of_a_model_without_lora_say_to_inject_first():
    model = tiny_gpt()
    for function in (merge_lora, unmerge_lora, merged_state_dict, lora_state_dict):
        with pytest.raises(LoRAError, match=r"no LoRA layers; add them with inject_lora"):
            function(model)


# ---------------------------------------------------------------------------------- adapters


def test_lora_state_dict_holds_detached_copies_of_a_and_b_only():
    model = adapted_gpt(rank=2)
    state = lora_state_dict(model)
    assert len(state) == 2 * len(lora_layers(model))
    assert state["blocks.0.attn.q_proj.lora_A"].shape == (2, 16)
    assert state["blocks.0.mlp.fc_in.lora_B"].shape == (CONFIG.mlp_hidden_size, 2)
    assert not any(value.requires_grad for value in state.values())
    with torch.no_grad():
        model.blocks[0].attn.q_proj.lora_A.zero_()
    assert state["blocks.0.attn.q_proj.lora_A"].abs().sum() > 0


def test_load_lora_state_dict_is_strict():
    source, target = adapted_gpt(), tiny_gpt()
    inject_lora(target, rank=4, alpha=8.0)
    state = lora_state_dict(source)
    load_lora_state_dict(target, state)
    assert all(torch.equal(value, lora_state_dict(target)[key]) for key, value in state.items())
    missing = {key: value for key, value in state.items() if "blocks.1.mlp.fc_out" not in key}
    with pytest.raises(LoRAError, match=r"missing blocks\.1\.mlp\.fc_out\.lora_A"):
        load_lora_state_dict(target, missing)
    with pytest.raises(LoRAError, match=r"unexpected lm_head\.lora_A"):
        load_lora_state_dict(target, {**state, "lm_head.lora_A": torch.zeros(1)})
    wrong = {**state, "blocks.0.attn.q_proj.lora_A": torch.zeros(3, 16)}
    with pytest.raises(LoRAError, match=r"shape \(3, 16\), but the model's is \(4, 16\)"):
        load_lora_state_dict(target, wrong)
    merge_lora(target)
    with pytest.raises(LoRAError, match="unmerge_lora"):
        load_lora_state_dict(target, state)


def test_adapters_round_trip_through_a_file(tmp_path):
    model = adapted_gpt(rank=4, alpha=8.0, targets=ATTENTION_TARGETS, dropout=0.1)
    logits = model(token_ids())[0]
    base = {"path": "runs/cpu-tiny/model.pt", "sha256": "ab" * 32}
    path = save_adapters(model, tmp_path / "adapters.pt", base=base, task="greetings")
    raw = torch.load(path, weights_only=True)
    assert (raw["format"], raw["version"], raw["rank"], raw["alpha"], raw["dropout"]) == (
        "llmcourse-lora", 1, 4, 8.0, 0.1)
    assert set(raw["adapters"]) == set(lora_state_dict(model))

    fresh = tiny_gpt()  # the same base weights, no LoRA yet: loading wraps it to fit
    assert load_adapters(fresh, path) == {"base": base, "task": "greetings"}
    assert set(lora_layers(fresh)) == set(lora_layers(model))
    assert lora_layers(fresh)["blocks.0.attn.v_proj"].dropout.p == 0.1
    torch.testing.assert_close(fresh.eval()(token_ids())[0], logits, rtol=0, atol=0)

    wrapped = tiny_gpt()  # already wrapped with the same settings: loads in place
    inject_lora(wrapped, rank=4, alpha=8.0, targets=ATTENTION_TARGETS, dropout=0.1)
    load_adapters(wrapped, path)
    torch.testing.assert_close(wrapped(token_ids())[0], logits, rtol=0, atol=0)


def test_adapters_that_do_not_fit_are_refused(tmp_path):
    path = save_adapters(adapted_gpt(rank=4, alpha=8.0), tmp_path / "adapters.pt")
    other_rank = tiny_gpt()
    inject_lora(other_rank, rank=2, alpha=8.0)
    with pytest.raises(LoRAError, match=r"does not match the model's LoRA layers \(rank: file 4, model 2\)"):
        load_adapters(other_rank, path)
    attention_only = tiny_gpt()
    inject_lora(attention_only, rank=4, alpha=8.0, targets=ATTENTION_TARGETS)
    with pytest.raises(LoRAError, match=r"layers only the file adapts: blocks\.0\.mlp\.fc_in"):
        load_adapters(attention_only, path)
    wider = tiny_gpt(n_embd=32)
    with pytest.raises(LoRAError, match=r"blocks\.0\.attn\.q_proj\.lora_A is \(4, 16\), .* needs \(4, 32\)"):
        load_adapters(wider, path)
    assert not lora_layers(wider)  # refused before any change
    shallow = tiny_gpt(n_layer=1)
    with pytest.raises(LoRAError, match=r"does not have \(blocks\.1\.attn\.k_proj"):
        load_adapters(shallow, path)


def test_a_file_that_is_not_an_adapter_file_is_refused(tmp_path):
    checkpoint = tmp_path / "model.pt"
    tiny_gpt().save(checkpoint)
    with pytest.raises(LoRAError, match=r"not an adapter file \(format 'llmcourse-checkpoint', not 'llmcourse-lo"):
        load_adapters(tiny_gpt(), checkpoint)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(LoRAError, match="not a readable llmcourse-lora adapter file"):
        load_adapters(tiny_gpt(), text)
    newer = tmp_path / "newer.pt"
    torch.save({"format": "llmcourse-lora", "version": 2}, newer)
    with pytest.raises(LoRAError, match="version 2 is not supported"):
        load_adapters(tiny_gpt(), newer)
    with pytest.raises(FileNotFoundError, match="no adapter file"):
        load_adapters(tiny_gpt(), tmp_path / "missing.pt")


def test_meta_a_safe_load_cannot_read_is_refused_when_saving(tmp_path):
    model = adapted_gpt(rank=2)
    with pytest.raises(ArgumentError, match=r"meta base\['when'\]=.* is a object"):
        save_adapters(model, tmp_path / "a.pt", base={"when": object()})
    assert not (tmp_path / "a.pt").exists()


# ---------------------------------------------------------------------------------- oracle


@pytest.mark.parametrize("bias", [True, False])
def test_agrees_with_peft(bias):
    """peft's LoRA layer (Hugging Face) and ours, given the same A and B, compute the same output,
    the same update B A * alpha / r and the same merged weight."""
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    theirs = nn.Sequential(nn.Linear(8, 6, bias=bias))
    ours = LoRALinear(copy.deepcopy(theirs[0]), rank=2, alpha=4.0)
    config = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0"], lora_dropout=0.0, init_lora_weights=False)
    theirs = peft.get_peft_model(theirs, config)
    their_layer = theirs.base_model.model[0]
    with torch.no_grad():  # init_lora_weights=False: both of theirs random; ours copies them
        ours.lora_A.copy_(their_layer.lora_A["default"].weight)
        ours.lora_B.copy_(their_layer.lora_B["default"].weight)
    assert their_layer.scaling["default"] == ours.scaling
    x = torch.randn(3, 4, 8)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours.delta_weight(), their_layer.get_delta_weight("default"), rtol=1e-6, atol=1e-7)
    ours.merge()
    plain = theirs.merge_and_unload()
    torch.testing.assert_close(ours.base.weight, plain[0].weight, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(ours(x), plain(x), rtol=1e-6, atol=1e-6)
