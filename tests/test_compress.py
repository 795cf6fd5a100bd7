"""llmcourse.compress: round-to-nearest quantization agrees with torch's own quantizer and stays
within half a step; groups help against outliers; GPTQ beats RTN on a layer's output error and is
RTN when inputs are uncorrelated; a quantized GPT stays close to the float one and is smaller;
pruning masks remove exactly what they say, head and neuron removal is exact, and removed weights
stay zero through training."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from llmcourse.attention import attention_reference, merge_heads, split_heads
from llmcourse.checks import ArgumentError
from llmcourse.compress import (MaskHooks, Quantized, QuantizedLinear, apply_masks, block_linears, dequantize,
                                gptq_quantize, head_masks, layer_sparsity, magnitude_masks, model_bytes,
                                neuron_masks, packed_bytes, quantize_absmax, quantize_model, sparsity_of)
from llmcourse.model import GPT, GPTConfig

CONFIG = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=4, n_embd=32)
PROJECTIONS = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "mlp.fc_in", "mlp.fc_out")


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(**{**CONFIG.to_dict(), **overrides})
    return GPT(config).eval()


def token_ids(seed: int = 1, rows: int = 4) -> torch.Tensor:
    return torch.randint(0, CONFIG.vocab_size, (rows, CONFIG.block_size), generator=torch.Generator().manual_seed(seed))


def random_weight(out: int = 24, inp: int = 64, seed: int = 0) -> torch.Tensor:
    """Rows of different scales, as a trained layer has."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(out, inp, generator=generator) * torch.rand(out, 1, generator=generator).add(0.1)


def scale_of_each_weight(q: Quantized) -> torch.Tensor:
    return q.scales.float().repeat_interleave(q.group, dim=1)


# ---------------------------------------------------------------------------------- round to nearest


@pytest.mark.parametrize("bits", [8, 4, 3, 2])
@pytest.mark.parametrize("group_size", [None, 16])
def test_every_weight_comes_back_within_half_a_step(bits, group_size):
    weight = random_weight()
    q = quantize_absmax(weight, bits, group_size)
    q_max = 2 ** (bits - 1) - 1
    assert q.codes.dtype == torch.int8 and q.codes.shape == weight.shape
    assert q.scales.dtype == torch.float16 and q.scales.shape == (24, 64 // (group_size or 64))
    assert int(q.codes.abs().max()) == q_max  # the largest weight of a group takes the largest code
    error = (dequantize(q) - weight).abs()
    assert (error <= scale_of_each_weight(q) / 2 + 1e-6).all()


def test_scales_are_absmax_over_q_max_per_row_or_group():
    weight = random_weight()
    per_row = quantize_absmax(weight, 4)
    assert torch.equal(per_row.scales, (weight.abs().amax(1, keepdim=True) / 7).half())
    grouped = quantize_absmax(weight, 4, group_size=16)
    assert torch.equal(grouped.scales, (weight.reshape(24, 4, 16).abs().amax(-1) / 7).half())


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor, torch.quantize_per_channel:UserWarning")
def test_int8_per_channel_codes_equal_torch_quantize_per_channel():
    weight = random_weight(32, 128)
    # A row whose scale is exactly 1 with weights exactly half-way between codes: both round half to even.
    weight[0] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5] * 16)
    q = quantize_absmax(weight, 8)
    assert q.scales[0].item() == 1.0
    reference = torch.quantize_per_channel(weight, q.scales.flatten().double(), torch.zeros(32, dtype=torch.long),
                                           axis=0, dtype=torch.qint8)
    assert torch.equal(q.codes, reference.int_repr())
    assert q.codes[0, :8].tolist() == [127, 0, 2, 2, 0, -2, -2, 4]
    assert torch.equal(dequantize(q), reference.dequantize())


def test_error_shrinks_as_bits_grow():
    weight = random_weight()
    errors = [(dequantize(quantize_absmax(weight, bits)) - weight).pow(2).mean().item() for bits in range(2, 9)]
    assert all(more < fewer for fewer, more in zip(errors, errors[1:]))
    # each bit halves the step, so the squared error falls about fourfold from 3 bits on
    assert 3 < errors[-2] / errors[-1] < 5


def test_groups_confine_outliers():
    weight = random_weight(64, 128)
    weight[:, [5, 70]] *= 30  # two outlier input columns, as LLM activations and weights have
    per_channel = (dequantize(quantize_absmax(weight, 4)) - weight).pow(2).mean()
    grouped = (dequantize(quantize_absmax(weight, 4, group_size=32)) - weight).pow(2).mean()
    assert grouped < 0.6 * per_channel


@pytest.mark.parametrize("group_size", [None, 16])
def test_a_row_or_group_of_zeros_stays_zero(group_size):
    weight = random_weight(4, 32)
    weight[2] = 0.0
    weight[0, :16] = 0.0  # a whole group when group_size=16
    q = quantize_absmax(weight, 4, group_size)
    restored = dequantize(q)
    assert torch.isfinite(restored).all()
    assert torch.equal(q.codes[2], torch.zeros(32, dtype=torch.int8)) and torch.equal(restored[2], torch.zeros(32))
    assert torch.equal(restored[0, :16], torch.zeros(16))


def test_packed_bytes_counts_bits_and_float16_scales():
    weight = random_weight(128, 512)
    # 128·512 codes at 4 bits = 32768 bytes; 128 rows · 16 groups of 32 scales at 2 bytes = 4096
    assert packed_bytes(quantize_absmax(weight, 4, group_size=32)) == 32768 + 4096
    # 3 bits: 65536 · 3 / 8 = 24576 bytes, one scale per row
    assert packed_bytes(quantize_absmax(weight, 3)) == 24576 + 256
    assert packed_bytes(quantize_absmax(weight[:3, :5], 3)) == math.ceil(15 * 3 / 8) + 6


# ---------------------------------------------------------------------------------- GPTQ


def correlated_inputs(n: int = 512, width: int = 64, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(width, width, generator=generator)
    return torch.randn(n, width, generator=generator) @ mixing


@pytest.mark.parametrize("bits,group_size", [(3, None), (4, None), (4, 16)])
def test_gptq_beats_round_to_nearest_on_the_output_error(bits, group_size):
    weight, inputs = random_weight(), correlated_inputs()
    rtn = dequantize(quantize_absmax(weight, bits, group_size))
    q = gptq_quantize(weight, inputs, bits, group_size)
    assert q.codes.abs().max() <= 2 ** (bits - 1) - 1
    gptq_error = (inputs @ (weight - dequantize(q)).T).norm()
    rtn_error = (inputs @ (weight - rtn).T).norm()
    assert gptq_error < 0.85 * rtn_error


def test_gptq_makes_the_optimal_brain_surgeon_update_column_by_column():
    """GPTQ's Cholesky factor stands for re-inverting the Hessian of the columns still to round
    after each step; here it is re-inverted explicitly, in float64, as OBS would."""
    weight, inputs = random_weight(8, 16), correlated_inputs(width=16)
    q = gptq_quantize(weight, inputs, 4)
    hessian = 2 * inputs.double().T @ inputs.double() / inputs.shape[0]
    hessian += 0.01 * hessian.diagonal().mean() * torch.eye(16, dtype=torch.float64)
    work = weight.double().clone()
    scales = (weight.abs().amax(1, keepdim=True) / 7).half().double()  # per channel: from the original W
    for column in range(16):
        inverse = torch.linalg.inv(hessian[column:, column:])  # only the columns not yet rounded
        rounded = torch.round(work[:, column] / scales[:, 0]).clamp(-7, 7) * scales[:, 0]
        error = (work[:, column] - rounded) / inverse[0, 0]
        work[:, column:] -= error[:, None] * inverse[0][None, :]  # column i becomes `rounded` exactly
    torch.testing.assert_close(dequantize(q).double(), work, atol=1e-5, rtol=0)


@pytest.mark.parametrize("group_size", [None, 16])
def test_gptq_with_uncorrelated_inputs_is_round_to_nearest(group_size):
    weight = random_weight()
    # H = 2 XᵀX / N is a multiple of the identity: no error has anywhere better to go.
    inputs = torch.eye(64).repeat(3, 1) * 2.5
    gptq, rtn = gptq_quantize(weight, inputs, 4, group_size), quantize_absmax(weight, 4, group_size)
    assert torch.equal(gptq.codes, rtn.codes) and torch.equal(gptq.scales, rtn.scales)


def test_gptq_zeroes_the_weights_of_an_input_that_is_never_used():
    weight, inputs = random_weight(), correlated_inputs()
    inputs[:, 7] = 0.0
    q = gptq_quantize(weight, inputs, 4)
    assert torch.equal(q.codes[:, 7], torch.zeros(24, dtype=torch.int8))


# ---------------------------------------------------------------------------------- a whole model


def test_quantized_linear_computes_with_the_dequantized_weight():
    torch.manual_seed(0)
    linear = nn.Linear(32, 8, bias=True)
    layer = QuantizedLinear.from_linear(linear, 4, group_size=8)
    x = torch.randn(2, 3, 32)
    weight = dequantize(quantize_absmax(linear.weight, 4, 8))
    torch.testing.assert_close(layer(x), x @ weight.T + linear.bias)
    assert set(dict(layer.named_buffers())) == {"codes", "scales"}
    assert "bits=4, group_size=8" in repr(layer)


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_quantize_model_replaces_the_block_linears_of_a_copy(method):
    model = tiny_gpt()
    before = copy.deepcopy(model.state_dict())
    calibration = token_ids() if method == "gptq" else None
    quantized = quantize_model(model, 8, method=method, calibration=calibration)
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    assert not any(isinstance(module, QuantizedLinear) for module in model.modules())
    layers = {name: module for name, module in quantized.named_modules() if isinstance(module, QuantizedLinear)}
    assert set(layers) == {f"blocks.{i}.{p}" for i in range(2) for p in PROJECTIONS}
    assert quantized.lm_head.weight is quantized.tok_emb.weight  # still tied, still float
    assert torch.equal(quantized.tok_emb.weight, model.tok_emb.weight)
    ids = token_ids(seed=5)
    float_logits, quantized_logits = model(ids)[0], quantized(ids)[0]
    assert (quantized_logits - float_logits).abs().max() < 0.03 * float_logits.std()  # 4 bits: 0.2


def test_fewer_bits_move_the_logits_more():
    model, ids = tiny_gpt(), token_ids(seed=5)
    logits = model(ids)[0]
    errors = [(quantize_model(model, bits)(ids)[0] - logits).pow(2).mean() for bits in (8, 4, 2)]
    assert errors[0] < errors[1] < errors[2]


def test_gptq_model_is_closer_to_the_float_model_than_rtn_on_its_calibration_text():
    model = tiny_gpt(n_embd=64)
    ids = token_ids(rows=16)
    logits = model(ids)[0]
    rtn = quantize_model(model, 3, group_size=16)
    gptq = quantize_model(model, 3, group_size=16, method="gptq", calibration=ids)
    assert (gptq(ids)[0] - logits).pow(2).mean() < 0.8 * (rtn(ids)[0] - logits).pow(2).mean()


def test_model_bytes_counts_packed_linears_and_float_rest():
    model = tiny_gpt()
    assert model_bytes(model) == 4 * model.num_params()
    assert model_bytes(model, torch.bfloat16) == 2 * model.num_params()
    linears = block_linears(model)
    linear_weights = sum(linear.weight.numel() for linear in linears.values())
    rows = sum(linear.out_features for linear in linears.values())
    rest = model.num_params() - linear_weights
    eight_bit = quantize_model(model, 8)
    assert model_bytes(eight_bit) == 4 * rest + linear_weights + 2 * rows  # a byte a weight, a scale a row
    assert 3.5 < 4 * linear_weights / (linear_weights + 2 * rows) <= 4
    assert model_bytes(quantize_model(model, 4, group_size=16)) == 4 * rest + linear_weights // 2 + 2 * (
        linear_weights // 16)


# ---------------------------------------------------------------------------------- pruning masks


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_layer_masks_remove_exactly_the_smallest_weights_of_each_layer(sparsity):
    model = tiny_gpt()
    masks = magnitude_masks(model, sparsity)
    weights = {f"{name}.weight": linear.weight for name, linear in block_linears(model).items()}
    assert set(masks) == set(weights)
    for name, weight in weights.items():
        mask = masks[name]
        assert mask.dtype == torch.bool and mask.shape == weight.shape
        # a plain sort of (|w|, position) pairs: the first round(s · n) are the ones to remove
        ranked = sorted((abs(value), index) for index, value in enumerate(weight.flatten().tolist()))
        removed = {index for _, index in ranked[:round(sparsity * weight.numel())]}
        assert set((~mask).flatten().nonzero().flatten().tolist()) == removed


def test_global_masks_rank_all_layers_together():
    model = tiny_gpt()
    masks = magnitude_masks(model, 0.5, scope="global")
    weights = torch.cat([linear.weight.detach().abs().flatten() for linear in block_linears(model).values()])
    keep = torch.cat([mask.flatten() for mask in masks.values()])
    assert int((~keep).sum()) == round(0.5 * weights.numel())
    assert weights[~keep].max() <= weights[keep].min()
    # the residual projections start smaller (GPT-2's init), so a global ranking takes more of them
    shares = {name: (~mask).float().mean().item() for name, mask in masks.items()}
    assert shares["blocks.0.attn.out_proj.weight"] > shares["blocks.0.attn.q_proj.weight"]


def test_ties_are_broken_by_position():
    model = tiny_gpt()
    with torch.no_grad():
        for linear in block_linears(model).values():
            linear.weight.fill_(0.5)
    masks = magnitude_masks(model, 0.25)
    mask = masks["blocks.0.mlp.fc_in.weight"].flatten()
    removed = round(0.25 * mask.numel())
    assert not mask[:removed].any() and mask[removed:].all()


def test_applied_masks_give_the_stated_sparsity():
    model = tiny_gpt()
    apply_masks(model, magnitude_masks(model, 0.75))
    per_layer = layer_sparsity(model)
    assert all(share == pytest.approx(0.75) for share in per_layer.values())
    assert sparsity_of(model) == pytest.approx(0.75)


def test_removed_weights_stay_zero_through_training_with_adamw():
    model = tiny_gpt()
    model.train()
    masks = magnitude_masks(model, 0.5)
    hooks = apply_masks(model, masks)
    assert isinstance(hooks, MaskHooks) and len(hooks) == len(masks)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    params = dict(model.named_parameters())
    kept_before = {name: params[name].detach()[mask].clone() for name, mask in masks.items()}
    for step in range(2):
        ids = token_ids(seed=step)
        _, loss = model(ids[:, :-1], ids[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        for name, mask in masks.items():
            assert torch.equal(params[name].grad[~mask], torch.zeros(int((~mask).sum())))
        optimizer.step()
    for name, mask in masks.items():
        assert torch.equal(params[name].detach()[~mask], torch.zeros(int((~mask).sum())))
        assert not torch.equal(params[name].detach()[mask], kept_before[name])  # the rest did train
    hooks.remove()
    ids = token_ids(seed=9)
    model(ids[:, :-1], ids[:, 1:])[1].backward()
    name, mask = "blocks.0.mlp.fc_in.weight", masks["blocks.0.mlp.fc_in.weight"]
    assert params[name].grad[~mask].abs().sum() > 0  # without the hooks, gradients reach them again


def test_removing_a_head_removes_exactly_its_contribution():
    model = tiny_gpt()
    attn = model.blocks[1].attn
    original = copy.deepcopy(attn)
    scores = torch.ones(2, 4)
    scores[1, 2] = 0.0  # the least important: head 2 of block 1
    masks = head_masks(model, 0.25, scores=scores)
    assert (~masks["blocks.1.attn.out_proj.weight"]).sum() == 32 * 8  # its 8 columns of out_proj
    apply_masks(model, masks)
    x = torch.randn(2, 10, 32)
    # by hand, with the untouched layer: every head's output, head 2's replaced by zeros
    q, k, v = (split_heads(proj(x), 4) for proj in (original.q_proj, original.k_proj, original.v_proj))
    v[:, 2] = 0.0
    heads, _ = attention_reference(q, k, v)
    expected = original.out_proj(merge_heads(heads))
    torch.testing.assert_close(attn(x), expected, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(original(x), expected, atol=1e-4)


def test_head_masks_default_to_the_heads_with_the_smallest_out_proj_columns():
    model = tiny_gpt()
    with torch.no_grad():
        model.blocks[0].attn.out_proj.weight[:, 8:16] *= 0.01  # head 1 of block 0 barely writes
        model.blocks[1].attn.out_proj.weight[:, 24:32] *= 0.01  # head 3 of block 1
    masks = head_masks(model, 0.25)
    assert (~masks["blocks.0.attn.out_proj.weight"]).nonzero()[:, 1].unique().tolist() == list(range(8, 16))
    assert (~masks["blocks.1.attn.q_proj.weight"]).nonzero()[:, 0].unique().tolist() == list(range(24, 32))
    # with one query head per key/value head, the head's keys and values go too
    assert (~masks["blocks.1.attn.v_proj.weight"]).nonzero()[:, 0].unique().tolist() == list(range(24, 32))


def test_with_grouped_query_attention_keys_and_values_go_only_with_their_whole_group():
    model = tiny_gpt(n_kv_heads=2)  # heads 0, 1 share key/value head 0; heads 2, 3 share 1
    scores = torch.tensor([[0.0, 3.0, 1.0, 2.0], [0.0, 1.0, 3.0, 2.0]])
    masks = head_masks(model, 0.5, scores=scores)  # block 0 loses heads 0 and 2, block 1 heads 0 and 1
    assert masks["blocks.0.attn.k_proj.weight"].all() and masks["blocks.0.attn.v_proj.weight"].all()
    assert (~masks["blocks.1.attn.v_proj.weight"]).nonzero()[:, 0].unique().tolist() == list(range(0, 8))
    assert (~masks["blocks.1.attn.q_proj.weight"]).nonzero()[:, 0].unique().tolist() == list(range(0, 16))


@pytest.mark.parametrize("kind", ["gelu", "swiglu"])
def test_removing_neurons_gives_the_model_with_a_narrower_mlp(kind):
    model = tiny_gpt(mlp=kind, mlp_hidden=32)
    masks = neuron_masks(model, 0.25)
    apply_masks(model, masks)
    # An independent model whose MLPs are 24 wide, with the kept neurons' weights copied in.
    narrow = tiny_gpt(seed=1, mlp=kind, mlp_hidden=24)
    state = model.state_dict()
    out_name = "fc_out" if kind == "gelu" else "down_proj"
    for index in range(2):
        keep = masks[f"blocks.{index}.mlp.{out_name}.weight"][0]
        assert int(keep.sum()) == 24
        for name, weight in state.items():
            if name.startswith(f"blocks.{index}.mlp."):
                state[name] = weight[:, keep] if name.endswith(f"{out_name}.weight") else weight[keep]
    narrow.load_state_dict(state)
    ids = token_ids(seed=3)
    torch.testing.assert_close(model(ids)[0], narrow(ids)[0], atol=1e-5, rtol=1e-5)


def test_neuron_masks_remove_the_neurons_of_least_weight():
    model = tiny_gpt(mlp_hidden=32)
    with torch.no_grad():
        model.blocks[0].mlp.fc_in.weight[[3, 17]] *= 0.01
        model.blocks[0].mlp.fc_out.weight[:, 30] *= 0.001
    masks = neuron_masks(model, 0.1)  # round(3.2) = 3 neurons a layer
    assert (~masks["blocks.0.mlp.fc_out.weight"][0]).nonzero().flatten().tolist() == [3, 17, 30]
    assert torch.equal(masks["blocks.0.mlp.fc_in.weight"][:, 0], masks["blocks.0.mlp.fc_out.weight"][0])


# ---------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("call,named", [
    (lambda: quantize_absmax(random_weight(), 1), "bits=1"),
    (lambda: quantize_absmax(random_weight(), 9), "bits=9"),
    (lambda: quantize_absmax(random_weight(), 4.0), "bits=4.0"),
    (lambda: quantize_absmax(random_weight(), 4, group_size=48), "group_size=48"),
    (lambda: quantize_absmax(random_weight(), 4, group_size=0), "group_size=0"),
    (lambda: quantize_absmax(torch.randn(64), 4), "weight"),
    (lambda: quantize_absmax(torch.full((2, 4), float("nan")), 4), "nan"),
    (lambda: gptq_quantize(random_weight(), torch.randn(10, 32), 4), "inputs"),
    (lambda: gptq_quantize(random_weight(), correlated_inputs(), 4, damp=-0.1), "damp=-0.1"),
    (lambda: quantize_model(tiny_gpt(), 4, method="awq"), "method='awq'"),
    (lambda: quantize_model(tiny_gpt(), 4, group_size=24), "group_size=24"),
    (lambda: quantize_model(tiny_gpt(), 4, method="gptq"), "calibration"),
    (lambda: quantize_model(tiny_gpt(), 4, calibration=token_ids()), "method='gptq'"),
    (lambda: quantize_model(tiny_gpt(), 4, method="gptq", calibration=token_ids().float()), "calibration"),
    (lambda: quantize_model(tiny_gpt(), 4, method="gptq", calibration=token_ids() + 64), "calibration"),
    (lambda: quantize_model(quantize_model(tiny_gpt(), 8), 4), "no nn.Linear"),
    (lambda: quantize_model(nn.Sequential(nn.Linear(4, 4)), 4), "model.blocks"),
    (lambda: quantize_model(tiny_gpt(n_experts=2), 4), "Mixture-of-Experts"),
    (lambda: model_bytes(tiny_gpt(), torch.int8), "dtype"),
    (lambda: magnitude_masks(tiny_gpt(), 1.0), "sparsity=1.0"),
    (lambda: magnitude_masks(tiny_gpt(), -0.1), "sparsity=-0.1"),
    (lambda: magnitude_masks(tiny_gpt(), 0.5, scope="rows"), "scope='rows'"),
    (lambda: head_masks(tiny_gpt(), 0.5, scores=torch.ones(2, 3)), "scores"),
    (lambda: neuron_masks(tiny_gpt(), 1.5), "sparsity=1.5"),
    (lambda: apply_masks(tiny_gpt(), {"blocks.0.nowhere.weight": torch.ones(2, dtype=torch.bool)}), "nowhere"),
    (lambda: apply_masks(tiny_gpt(), {"blocks.0.mlp.fc_in.weight": torch.ones(128, 32)}), "bool"),
    (lambda: apply_masks(tiny_gpt(), {"blocks.0.mlp.fc_in.weight": torch.ones(32, 128, dtype=torch.bool)}),
     "(128, 32)"),
])
def test_bad_arguments_are_named(call, named):
    with pytest.raises(ArgumentError) as caught:
        call()
    assert named in str(caught.value)


def test_a_bad_group_size_suggests_one_that_fits():
    with pytest.raises(ArgumentError, match=r"group_size=48 does not divide the 64 input columns.*group_size=32"):
        quantize_absmax(random_weight(), 4, group_size=48)
    with pytest.raises(ArgumentError, match="blocks.0.attn.q_proj"):
        quantize_model(tiny_gpt(), 4, group_size=24)
