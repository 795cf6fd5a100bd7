"""llmcourse.mlp: activations against torch, MLPs against their formulas, MoE against a naive loop."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from llmcourse.mlp import (MLP, MoE, SwiGLU, default_hidden, gelu, load_balancing_loss, make_mlp,
                           mlp_param_count, moe_param_counts, swiglu, top_k_route)

KINDS = ["relu", "gelu", "swiglu"]


@pytest.fixture(autouse=True)
def seeded_torch():
    """Module inits and dropout draw from torch's global generator: seed it so every test is
    the same on every run, whatever ran before it in this worker."""
    torch.manual_seed(0)


def random(shape, seed: int, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype)


def randomise_parameters(module: torch.nn.Module, seed: int) -> None:
    """Replace every parameter by random numbers (torch's init would hide scale bugs in biases)."""
    with torch.no_grad():
        for i, param in enumerate(module.parameters()):
            param.copy_(random(param.shape, seed=seed + i, dtype=param.dtype, scale=0.5))


# ---------------------------------------------------------------- activations


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gelu_matches_torch_tanh_approximation(dtype):
    x = torch.cat([random((1000,), seed=0, dtype=dtype, scale=4.0),
                   torch.tensor([-1e4, -30.0, -1.0, 0.0, 1.0, 30.0, 1e4], dtype=dtype)])
    ours = gelu(x)
    assert ours.dtype == dtype
    torch.testing.assert_close(ours, F.gelu(x, approximate="tanh"))
    assert gelu(torch.tensor(0.0)) == 0.0
    assert not torch.allclose(gelu(x), F.gelu(x), rtol=0, atol=1e-7)  # the tanh form, not the erf one


def test_swiglu_matches_line_by_line_formula():
    gate, up = random((2, 3, 7), seed=1), random((2, 3, 7), seed=2)
    expected = gate / (1 + torch.exp(-gate)) * up  # silu(g) = g * sigmoid(g)
    torch.testing.assert_close(swiglu(gate, up), expected)
    torch.testing.assert_close(swiglu(gate, up), F.silu(gate) * up)


def test_swiglu_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"x_up must be a tensor of shape \(2, 3\), got shape \(2, 4\)"):
        swiglu(torch.zeros(2, 3), torch.zeros(2, 4))


def test_activation_gradchecks():
    x = random((3, 4), seed=3, dtype=torch.float64).requires_grad_()
    y = random((3, 4), seed=4, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(gelu, (x,))
    assert torch.autograd.gradcheck(swiglu, (x, y))


# ---------------------------------------------------------------- dense MLPs


@pytest.mark.parametrize("activation", ["relu", "gelu"])
@pytest.mark.parametrize("bias", [False, True])
def test_mlp_matches_formula(activation, bias):
    mlp = MLP(8, 24, activation=activation, bias=bias)
    randomise_parameters(mlp, seed=5)
    x = random((2, 5, 8), seed=6)
    act = torch.relu if activation == "relu" else gelu  # the written-out GELU the book shows
    hidden = act(x @ mlp.fc_in.weight.T + (mlp.fc_in.bias if bias else 0))
    expected = hidden @ mlp.fc_out.weight.T + (mlp.fc_out.bias if bias else 0)
    torch.testing.assert_close(mlp(x), expected)
    assert mlp.fc_in.weight.shape == (24, 8) and mlp.fc_out.weight.shape == (8, 24)
    assert (mlp.fc_in.bias is not None) == bias


@pytest.mark.parametrize("bias", [False, True])
def test_swiglu_module_matches_formula(bias):
    mlp = SwiGLU(8, 20, bias=bias)
    randomise_parameters(mlp, seed=7)
    x = random((2, 5, 8), seed=8)
    gate = F.linear(x, mlp.gate_proj.weight, mlp.gate_proj.bias)
    up = F.linear(x, mlp.up_proj.weight, mlp.up_proj.bias)
    expected = F.linear(F.silu(gate) * up, mlp.down_proj.weight, mlp.down_proj.bias)
    torch.testing.assert_close(mlp(x), expected)
    assert [n for n, _ in mlp.named_parameters() if n.endswith("weight")] == [
        "gate_proj.weight", "up_proj.weight", "down_proj.weight"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(8,), (4, 8), (2, 3, 8)])
def test_make_mlp_shapes_and_types(kind, shape):
    mlp = make_mlp(kind, 8, 16)
    assert type(mlp) is (SwiGLU if kind == "swiglu" else MLP)
    assert mlp(torch.randn(shape)).shape == shape


@pytest.mark.parametrize("kind", KINDS)
def test_mlp_acts_on_each_position_independently(kind):
    mlp = make_mlp(kind, 8, 16)
    x = random((2, 6, 8), seed=9)
    row_by_row = torch.stack([torch.stack([mlp(x[b, t]) for t in range(6)]) for b in range(2)])
    torch.testing.assert_close(mlp(x), row_by_row)


@pytest.mark.parametrize("kind", KINDS)
def test_mlp_gradcheck(kind):
    mlp = make_mlp(kind, 4, 6, bias=True).double()
    randomise_parameters(mlp, seed=10)
    x = random((2, 3, 4), seed=11, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(mlp, (x,))


@pytest.mark.parametrize("kind", KINDS)
def test_dropout_only_in_training(kind):
    mlp = make_mlp(kind, 8, 16, dropout=0.5)
    x = random((4, 8, 8), seed=12)
    assert (mlp(x) == 0).float().mean() > 0.3  # training mode: about half the outputs zeroed
    mlp.eval()
    assert torch.equal(mlp(x), mlp(x))
    assert (mlp(x) == 0).sum() == 0


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [False, True])
def test_mlp_param_count_matches_modules(kind, bias):
    mlp = make_mlp(kind, 12, 20, bias=bias)
    n_matrices = 3 if kind == "swiglu" else 2
    n_hidden_biases = 2 if kind == "swiglu" else 1
    expected = n_matrices * 12 * 20 + ((n_hidden_biases * 20 + 12) if bias else 0)
    assert sum(p.numel() for p in mlp.parameters()) == expected == mlp_param_count(kind, 12, 20, bias)


def test_default_hidden_values():
    assert default_hidden("relu", 64) == default_hidden("gelu", 64) == 256
    assert default_hidden("gelu", 768) == 3072                # GPT-2 small
    assert default_hidden("swiglu", 768) == 2048              # 8·768/3 = 2048 exactly
    assert default_hidden("swiglu", 64) == 192                # ceil(170.67) = 171 -> 192
    assert default_hidden("swiglu", 96) == 256                # 256 exactly
    assert default_hidden("swiglu", 97) == 320                # ceil(258.67) = 259 -> 320
    assert default_hidden("swiglu", 4096, multiple_of=256) == 11008  # Llama-1 7B
    assert default_hidden("swiglu", 10, multiple_of=1) == 27  # ceil(26.67)
    for n_embd in range(1, 300):
        hidden = default_hidden("swiglu", n_embd)
        assert hidden % 64 == 0 and 8 * n_embd / 3 <= hidden < 8 * n_embd / 3 + 64


def test_make_mlp_and_constructors_reject_bad_arguments():
    with pytest.raises(ValueError, match=r"kind='geglu' must be one of 'relu', 'gelu', 'swiglu'"):
        make_mlp("geglu", 8, 16)
    with pytest.raises(ValueError, match=r"kind='tanh' must be one of"):
        default_hidden("tanh", 8)
    with pytest.raises(ValueError, match=r"activation='swiglu' must be one of 'relu', 'gelu'.*use SwiGLU"):
        MLP(8, 16, activation="swiglu")
    with pytest.raises(ValueError, match="hidden=0 must be an integer >= 1"):
        make_mlp("gelu", 8, 0)
    with pytest.raises(TypeError, match="n_embd=8.0 must be an integer >= 1"):
        SwiGLU(8.0, 16)
    with pytest.raises(ValueError, match=r"dropout=1.0 must be a finite number >= 0 and < 1"):
        make_mlp("swiglu", 8, 16, dropout=1.0)


# ---------------------------------------------------------------- routing


def brute_force_route(logits: torch.Tensor, k: int):
    """Per row: sort the experts by logit, keep k, softmax over the kept logits with math.exp."""
    all_weights, all_experts = [], []
    for row in logits.tolist():
        best = sorted(range(len(row)), key=lambda e: -row[e])[:k]
        exps = [math.exp(row[e] - row[best[0]]) for e in best]
        all_weights.append([value / sum(exps) for value in exps])
        all_experts.append(best)
    return torch.tensor(all_weights, dtype=torch.float64), torch.tensor(all_experts)


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_top_k_route_matches_brute_force(k):
    logits = random((20, 6), seed=13, dtype=torch.float64, scale=2.0)
    weights, experts = top_k_route(logits, k)
    expected_weights, expected_experts = brute_force_route(logits, k)
    assert weights.shape == experts.shape == (20, k) and experts.dtype == torch.long
    assert torch.equal(experts, expected_experts)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(weights.sum(-1), torch.ones(20, dtype=torch.float64))
    assert (weights[:, :-1] >= weights[:, 1:]).all()  # best expert first


def test_top_k_route_equals_mixtral_softmax_then_renormalise():
    logits = random((10, 8), seed=14, scale=3.0)
    weights, experts = top_k_route(logits, 2)
    probs = torch.softmax(logits, dim=-1).gather(-1, experts)
    torch.testing.assert_close(weights, probs / probs.sum(-1, keepdim=True))


def test_top_k_route_switch_convention_keeps_full_softmax_probabilities():
    logits = random((10, 8), seed=15, scale=3.0)
    weights, experts = top_k_route(logits, 1, renormalize=False)
    torch.testing.assert_close(weights, torch.softmax(logits, -1).max(-1, keepdim=True).values)
    assert (weights < 1).all()
    assert torch.equal(top_k_route(logits, 1)[0], torch.ones(10, 1))  # Mixtral's k=1: always weight 1


def test_top_k_route_keeps_bfloat16_and_rejects_bad_k():
    logits = random((5, 4), seed=16).bfloat16()
    assert top_k_route(logits, 2)[0].dtype == torch.bfloat16
    for k in (0, 5, 2.0):
        with pytest.raises(ValueError, match=rf"k={k} must be an integer in \[1, 5\) \(a token picks k of the E"):
            top_k_route(logits, k)
    with pytest.raises(ValueError, match=r"router_logits must be a tensor of shape \(N, E\), got shape \(2, 3, 4\).*reshape"):
        top_k_route(torch.zeros(2, 3, 4), 1)


# ---------------------------------------------------------------- load-balancing loss


@pytest.mark.parametrize("n_experts", [2, 4, 8])
@pytest.mark.parametrize("k", [1, 2])
def test_load_balancing_loss_is_one_when_perfectly_balanced(n_experts, k):
    n_tokens = 3 * n_experts
    uniform_logits = torch.zeros(n_tokens, n_experts)  # P_e = 1/E
    # Round robin: token i uses experts i, i+1, ... (mod E), so every expert gets N·k/E slots.
    experts = (torch.arange(n_tokens)[:, None] + torch.arange(k)[None, :]) % n_experts
    loss = load_balancing_loss(uniform_logits, experts, n_experts)
    torch.testing.assert_close(loss, torch.tensor(1.0))


@pytest.mark.parametrize("n_experts", [2, 4, 8])
def test_load_balancing_loss_is_larger_for_collapsed_routing(n_experts):
    n_tokens = 16
    # Every token sure of expert 0: f = (1, 0, ...), P = (1, 0, ...) -> E · 1 · 1 = E.
    collapsed = torch.full((n_tokens, n_experts), -1e4)
    collapsed[:, 0] = 0.0
    experts = top_k_route(collapsed, 1)[1]
    torch.testing.assert_close(load_balancing_loss(collapsed, experts, n_experts), torch.tensor(float(n_experts)))
    # Top-2 collapsed onto experts 0 and 1, equally: f = P = (1/2, 1/2, 0, ...) -> E · 2 · 1/4 = E/2.
    two_way = torch.full((n_tokens, n_experts), -1e4)
    two_way[:, :2] = 0.0
    experts = torch.tensor([[0, 1]] * n_tokens)
    torch.testing.assert_close(load_balancing_loss(two_way, experts, n_experts), torch.tensor(n_experts / 2))


def test_load_balancing_loss_matches_explicit_sums_and_gradient_flows_through_probabilities():
    n_experts, k = 5, 2
    logits = random((12, n_experts), seed=17, dtype=torch.float64, scale=2.0).requires_grad_()
    experts = top_k_route(logits.detach(), k)[1]
    probs = torch.softmax(logits.detach(), dim=-1)
    expected = n_experts * sum(
        (experts == e).sum().item() / (12 * k) * probs[:, e].mean().item() for e in range(n_experts))
    loss = load_balancing_loss(logits, experts, n_experts)
    assert loss.dim() == 0 and loss.dtype == torch.float64
    assert math.isclose(loss.item(), expected, rel_tol=1e-12)
    assert torch.autograd.gradcheck(lambda z: load_balancing_loss(z, experts, n_experts), (logits,))


# ---------------------------------------------------------------- MoE


def naive_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Token by token: out = Σ_k w_k · expert_k(x), with the routing recomputed by sorting."""
    tokens = x.reshape(-1, x.shape[-1])
    rows = []
    for token in tokens:
        logits = moe.router.weight @ token
        best = sorted(range(moe.n_experts), key=lambda e: -logits[e].item())[:moe.top_k]
        weights = torch.softmax(logits[best], dim=-1)
        rows.append(sum(w * moe.experts[e](token) for w, e in zip(weights, best)))
    return torch.stack(rows).reshape(x.shape)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n_experts,top_k", [(4, 1), (4, 2), (5, 3), (3, 3)])
def test_moe_matches_naive_per_token_loop(kind, n_experts, top_k):
    moe = MoE(6, 10, n_experts, top_k=top_k, kind=kind, bias=True).double()
    randomise_parameters(moe, seed=18)
    x = random((3, 7, 6), seed=19, dtype=torch.float64)
    out = moe(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    torch.testing.assert_close(out, naive_moe(moe, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_moe_with_one_expert_is_exactly_the_dense_mlp(kind):
    moe = MoE(8, 16, n_experts=1, top_k=1, kind=kind)
    dense = make_mlp(kind, 8, 16)
    dense.load_state_dict(moe.experts[0].state_dict())
    x = random((2, 5, 8), seed=20)
    assert torch.equal(moe(x), dense(x))
    assert moe.aux_loss.item() == 1.0  # one expert is always perfectly balanced


def test_moe_gradients_reach_router_and_chosen_experts_only():
    moe = MoE(8, 12, n_experts=8, top_k=2)
    x = random((1, 3, 8), seed=21)  # 3 tokens x 2 choices: at most 6 of the 8 experts used
    moe(x).pow(2).sum().backward()
    chosen = set(top_k_route(moe.router(x.reshape(3, 8)), 2)[1].flatten().tolist())
    assert 2 <= len(chosen) <= 6
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
    for e, expert in enumerate(moe.experts):
        for name, param in expert.named_parameters():
            if e in chosen:
                assert param.grad is not None and param.grad.abs().sum() > 0, (e, name)
            else:
                assert param.grad is None, (e, name)


def test_mixtral_top1_router_learns_only_from_aux_loss_switch_router_from_both():
    x = random((2, 5, 8), seed=22)
    for renormalize, main_loss_moves_router in [(True, False), (False, True)]:
        moe = MoE(8, 12, n_experts=4, top_k=1, renormalize=renormalize)
        moe(x).sum().backward()
        assert bool(moe.router.weight.grad.abs().sum() > 0) == main_loss_moves_router
        moe.zero_grad(set_to_none=True)
        moe(x)
        moe.aux_loss.backward()
        assert moe.router.weight.grad.abs().sum() > 0


def test_moe_sets_aux_loss_on_every_forward():
    moe = MoE(8, 12, n_experts=4, top_k=2)
    assert moe.aux_loss is None
    x1, x2 = random((2, 5, 8), seed=23), random((3, 4, 8), seed=24)
    moe(x1)
    first = moe.aux_loss
    assert isinstance(first, torch.Tensor) and first.dim() == 0 and first.requires_grad
    logits = moe.router(x1.reshape(-1, 8))
    torch.testing.assert_close(first, load_balancing_loss(logits, top_k_route(logits, 2)[1], 4))
    moe(x2)
    assert moe.aux_loss is not first
    logits = moe.router(x2.reshape(-1, 8))
    torch.testing.assert_close(moe.aux_loss, load_balancing_loss(logits, top_k_route(logits, 2)[1], 4))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bias", [False, True])
def test_moe_parameter_counts(kind, bias):
    n_embd, hidden, n_experts, top_k = 8, 20, 6, 2
    moe = MoE(n_embd, hidden, n_experts, top_k=top_k, kind=kind, bias=bias)
    per_expert = sum(p.numel() for p in moe.experts[0].parameters())
    assert per_expert == (3 if kind == "swiglu" else 2) * n_embd * hidden + (
        ((2 if kind == "swiglu" else 1) * hidden + n_embd) if bias else 0)
    router = n_embd * n_experts
    counts = moe_param_counts(n_embd, hidden, n_experts, top_k, kind, bias)
    assert counts == {"total": n_experts * per_expert + router, "active": top_k * per_expert + router}
    assert counts["total"] == sum(p.numel() for p in moe.parameters())


def test_moe_param_counts_for_mixtral_8x7b():
    # Mixtral 8x7B (Jiang et al. 2024): C = 4096, hidden = 14336, 8 experts, top 2, 32 layers.
    counts = moe_param_counts(4096, 14336, 8, 2, "swiglu")
    assert round(32 * counts["total"] / 1e9, 1) == 45.1   # + attention and embeddings = 46.7B
    assert round(32 * counts["active"] / 1e9, 1) == 11.3  # + attention and embeddings = 12.9B


def test_moe_accepts_any_leading_shape_and_bfloat16():
    moe = MoE(8, 12, n_experts=4, top_k=2)
    for shape in [(8,), (5, 8), (2, 3, 8), (2, 2, 2, 8)]:
        assert moe(torch.randn(shape)).shape == shape
    moe_bf16 = MoE(8, 12, n_experts=4, top_k=2).bfloat16()
    assert moe_bf16(torch.randn(2, 3, 8).bfloat16()).dtype == torch.bfloat16


def test_moe_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"top_k=2 must be an integer in \[1, 2\) \(a token cannot use more experts"):
        MoE(8, 16, n_experts=1)  # the default top_k=2 needs at least two experts
    with pytest.raises(ValueError, match="n_experts=0 must be an integer >= 1"):
        MoE(8, 16, n_experts=0, top_k=1)
    with pytest.raises(ValueError, match="kind='moe' must be one of 'relu', 'gelu', 'swiglu'"):
        MoE(8, 16, n_experts=2, kind="moe")
