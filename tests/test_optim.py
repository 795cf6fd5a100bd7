"""llmcourse.optim against torch's AdamW and clip_grad_norm_, closed forms, and properties."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from llmcourse.model import GPT, GPTConfig
from llmcourse.optim import AdamW, clip_grad_norm, lr_at, make_optimizer, param_groups

# ---------------------------------------------------------------- AdamW against torch


def make_params(dtype: torch.dtype, seed: int = 0) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(5, 3), (3,), (2, 4, 2), ()]
    return [nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype)) for shape in shapes]


def set_grads(params: list[nn.Parameter], step: int) -> None:
    """Gradients that depend on the current weights (a quadratic pull) plus seeded noise of varied scale,
    so a difference between two optimizers would grow along the trajectory."""
    generator = torch.Generator().manual_seed(1000 + step)
    for i, param in enumerate(params):
        noise = torch.randn(param.shape, generator=generator, dtype=torch.float64).to(param.dtype)
        param.grad = (param.detach() - 0.5) * 3.0 + noise * 10.0 ** (i - 2)


def split_groups(params: list[nn.Parameter], two_groups: bool, weight_decay: float) -> list[dict]:
    if not two_groups:
        return [{"params": params}]
    return [{"params": params[:2], "weight_decay": weight_decay},
            {"params": params[2:], "lr": 3e-3, "weight_decay": 0.0, "betas": (0.8, 0.99)}]


def run_trajectory(optimizer_cls, dtype, weight_decay, two_groups, steps=100, **kwargs):
    params = make_params(dtype)
    optimizer = optimizer_cls(split_groups(params, two_groups, weight_decay), lr=1e-2,
                              weight_decay=weight_decay, **kwargs)
    trajectory = []
    for step in range(steps):
        set_grads(params, step)
        optimizer.step()
        trajectory.append([param.detach().clone() for param in params])
    return trajectory, optimizer


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("two_groups", [False, True])
def test_adamw_matches_torch_for_100_steps(dtype, weight_decay, two_groups):
    ours, our_optimizer = run_trajectory(AdamW, dtype, weight_decay, two_groups)
    theirs, their_optimizer = run_trajectory(torch.optim.AdamW, dtype, weight_decay, two_groups)
    for step, (mine, reference) in enumerate(zip(ours, theirs)):
        for p, q in zip(mine, reference):
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-6, msg=lambda m: f"step {step}: {m}")
    # same state, under the same keys
    for p, q in zip(our_optimizer.state.values(), their_optimizer.state.values()):
        assert set(p) == set(q) == {"step", "exp_avg", "exp_avg_sq"}
        assert p["step"] == int(q["step"]) == 100
        torch.testing.assert_close(p["exp_avg"], q["exp_avg"], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(p["exp_avg_sq"], q["exp_avg_sq"], rtol=1e-6, atol=1e-6)


def test_adamw_first_step_closed_form():
    """At t=1 bias correction gives m̂ = g and v̂ = g²: the step is lr * g / (|g| + eps) ~ lr * sign(g)."""
    param = nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    param.grad = torch.tensor([0.5, -4.0, 0.0], dtype=torch.float64)
    lr, wd, eps = 0.1, 0.2, 1e-8
    AdamW([param], lr=lr, weight_decay=wd, eps=eps).step()
    decayed = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64) * (1 - lr * wd)
    expected = decayed - lr * param.grad / (param.grad.abs() + eps)
    torch.testing.assert_close(param.detach(), expected, rtol=0, atol=1e-15)


def test_adamw_skips_parameters_without_grad_and_returns_closure_loss():
    used, unused = nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(3))
    optimizer = AdamW([used, unused], lr=0.1, weight_decay=0.5)

    def closure():
        optimizer.zero_grad()
        loss = (used**2).sum()
        loss.backward()
        return loss

    loss = optimizer.step(closure)
    assert loss.item() == 3.0
    assert torch.equal(unused.detach(), torch.ones(3)) and unused not in optimizer.state
    assert not torch.equal(used.detach(), torch.ones(3))


def test_adamw_state_dict_round_trip_continues_identically():
    full, _ = run_trajectory(AdamW, torch.float32, 0.1, two_groups=True, steps=60)

    params = make_params(torch.float32)
    optimizer = AdamW(split_groups(params, True, 0.1), lr=1e-2, weight_decay=0.1)
    for step in range(30):
        set_grads(params, step)
        optimizer.step()
    saved_params = [param.detach().clone() for param in params]
    saved_state = copy.deepcopy(optimizer.state_dict())
    del params, optimizer

    fresh = [nn.Parameter(value) for value in saved_params]
    # wrong hyperparameters on purpose: load_state_dict must bring back the saved ones
    restored = AdamW(split_groups(fresh, True, 0.1), lr=1.0, weight_decay=0.0)
    restored.load_state_dict(saved_state)
    for step in range(30, 60):
        set_grads(fresh, step)
        restored.step()
        for p, q in zip(fresh, full[step]):
            assert torch.equal(p.detach(), q), f"step {step} differs after reloading the state"


def test_adamw_continues_from_torch_adamw_state():
    """torch.optim.AdamW's state dict (0-d tensor steps) loads into ours and the run goes on the same."""
    full, _ = run_trajectory(torch.optim.AdamW, torch.float64, 0.1, two_groups=False, steps=40)
    params = make_params(torch.float64)
    theirs = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    for step in range(20):
        set_grads(params, step)
        theirs.step()
    ours = AdamW(params, lr=1e-2, weight_decay=0.1)
    ours.load_state_dict(theirs.state_dict())
    for step in range(20, 40):
        set_grads(params, step)
        ours.step()
    for p, q in zip(params, full[-1]):
        torch.testing.assert_close(p.detach(), q, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(amsgrad=True), "amsgrad"),
    (dict(lr=-1.0), "lr"),
    (dict(betas=(0.9, 1.0)), r"betas\[1\]=1.0 must be a finite number >= 0 and < 1"),
    (dict(betas=(True, 0.9)), r"betas\[0\]=True"),
    (dict(betas=(0.9,)), "betas"),
    (dict(eps=-1e-8), "eps"),
    (dict(weight_decay=-0.1), "weight_decay"),
    (dict(weight_decay=math.nan), "weight_decay"),
])
def test_adamw_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdamW([nn.Parameter(torch.zeros(2))], **kwargs)


# ---------------------------------------------------------------- param_groups

GPT_VARIANTS = [
    dict(),  # tied, learned positions, layernorm without bias
    dict(tie_weights=False, bias=True),
    dict(position="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=1),
    dict(position="sinusoidal", tie_weights=False, norm="rmsnorm", bias=True),
    dict(position="none", n_experts=2, top_k=1, bias=True),
]


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = dict(vocab_size=23, block_size=8, n_layer=2, n_head=2, n_embd=8) | overrides
    return GPT(GPTConfig(**config))


@pytest.mark.parametrize("variant", GPT_VARIANTS, ids=str)
def test_param_groups_cover_each_parameter_once_and_decay_exactly_the_matrices(variant):
    model = tiny_gpt(**variant)
    groups = param_groups(model, weight_decay=0.1)
    grouped = [id(p) for group in groups for p in group["params"]]
    assert len(grouped) == len(set(grouped)), "a parameter appears twice"
    assert set(grouped) == {id(p) for p in model.parameters()}
    assert len(grouped) == len(list(model.parameters()))  # a tied matrix counted once

    decayed = {id(p) for group in groups if group["weight_decay"] > 0 for p in group["params"]}
    embeddings = {"tok_emb.weight", "pos_emb.weight"}
    # named_parameters lists a tied lm_head.weight under its first name, tok_emb.weight
    expected = {id(p) for name, p in model.named_parameters() if p.dim() >= 2 and name not in embeddings}
    assert decayed == expected
    assert id(model.tok_emb.weight) not in decayed
    assert (id(model.lm_head.weight) in decayed) == (not model.config.tie_weights)
    assert {group["weight_decay"] for group in groups} == {0.1, 0.0}
    for name, p in model.named_parameters():
        if name.endswith("bias") or ".norm" in name or name.startswith("norm_f"):
            assert id(p) not in decayed, name


def test_param_groups_tied_head_follows_the_embedding():
    tied, untied = tiny_gpt(), tiny_gpt(tie_weights=False)
    decayed = lambda model: [p for g in param_groups(model, 0.1) if g["weight_decay"] for p in g["params"]]
    assert not any(p is tied.lm_head.weight for p in decayed(tied))
    assert any(p is untied.lm_head.weight for p in decayed(untied))
    assert not any(p is untied.tok_emb.weight for p in decayed(untied))


def test_param_groups_leaves_out_frozen_parameters_and_checks_weight_decay():
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 4), nn.LayerNorm(4))
    model[1].weight.requires_grad_(False)
    groups = param_groups(model, 0.1)
    assert groups == [{"params": [model[0].weight, model[1].bias, model[2].weight, model[2].bias],
                       "weight_decay": 0.0}]  # the empty decay group is left out
    with pytest.raises(ValueError, match="weight_decay"):
        param_groups(model, -0.1)


@pytest.mark.parametrize("impl, expected", [("torch", torch.optim.AdamW), ("llmcourse", AdamW)])
def test_make_optimizer_builds_the_chosen_adamw(impl, expected):
    model = tiny_gpt(tie_weights=False, bias=True)
    optimizer = make_optimizer(model, lr=3e-4, weight_decay=0.1, impl=impl)
    assert type(optimizer) is expected
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.1, 0.0]
    assert all(g["lr"] == 3e-4 and tuple(g["betas"]) == (0.9, 0.95) for g in optimizer.param_groups)
    if impl == "torch":
        assert not optimizer.defaults["fused"]  # CPU parameters: not fused by default


def test_make_optimizer_errors():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="impl"):
        make_optimizer(model, 1e-3, 0.1, impl="sgd")
    with pytest.raises(ValueError, match="fused"):
        make_optimizer(model, 1e-3, 0.1, fused=True, impl="llmcourse")
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        make_optimizer(model, 1e-3, 0.1)


@pytest.mark.gpu
def test_make_optimizer_is_fused_on_cuda():
    model = tiny_gpt().cuda()
    assert make_optimizer(model, 1e-3, 0.1).defaults["fused"]


# ---------------------------------------------------------------- lr_at

SCHEDULE = dict(max_lr=6e-4, warmup_steps=10, max_steps=110, min_lr=6e-5)


def test_lr_at_closed_form_values():
    assert lr_at(0, **SCHEDULE) == pytest.approx(6e-4 / 10)  # the first step already moves
    assert lr_at(4, **SCHEDULE) == pytest.approx(6e-4 * 5 / 10)
    assert lr_at(9, **SCHEDULE) == pytest.approx(6e-4)  # the last warmup step reaches max_lr
    assert lr_at(10, **SCHEDULE) == pytest.approx(6e-4)  # the cosine starts at max_lr
    assert lr_at(60, **SCHEDULE) == pytest.approx((6e-4 + 6e-5) / 2)  # halfway through the decay
    quarter = 6e-5 + (6e-4 - 6e-5) * (1 + math.cos(math.pi / 4)) / 2
    assert lr_at(35, **SCHEDULE) == pytest.approx(quarter)
    assert lr_at(110, **SCHEDULE) == pytest.approx(6e-5)
    assert lr_at(111, **SCHEDULE) == lr_at(10_000, **SCHEDULE) == 6e-5


def test_lr_at_edge_schedules():
    assert lr_at(0, max_lr=1.0, warmup_steps=0, max_steps=100) == 1.0  # no warmup
    assert lr_at(50, max_lr=1.0, warmup_steps=0, max_steps=100) == pytest.approx(0.5)
    assert lr_at(100, max_lr=1.0, warmup_steps=0, max_steps=100) == 0.0
    # warmup all the way: no room for the cosine, min_lr from max_steps on
    assert [lr_at(s, max_lr=1.0, warmup_steps=4, max_steps=4, min_lr=0.1) for s in range(6)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 0.1, 0.1])
    assert lr_at(7, max_lr=1.0, warmup_steps=0, max_steps=0, min_lr=0.5) == 0.5
    assert lr_at(50, max_lr=0.3, warmup_steps=10, max_steps=100, min_lr=0.3) == pytest.approx(0.3)  # constant


def test_lr_at_is_monotone_in_each_piece_and_bounded():
    lrs = [lr_at(step, **SCHEDULE) for step in range(130)]
    warmup, decay = lrs[:10], lrs[10:]
    assert all(a < b for a, b in zip(warmup, warmup[1:]))
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert all(0 < lr <= 6e-4 for lr in warmup)  # warmup starts at max_lr / warmup_steps, not at min_lr
    assert all(6e-5 <= lr <= 6e-4 for lr in decay)


@pytest.mark.parametrize("kwargs, match", [
    (dict(warmup_steps=20, max_steps=10), r"warmup_steps=20 must be an integer in \[0, 11\) \(at most max_steps=10"),
    (dict(step=-1), "step"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(max_steps=-5, warmup_steps=0), "max_steps"),
    (dict(max_lr=-1e-3), "max_lr"),
    (dict(min_lr=-1e-5), "min_lr"),
    (dict(min_lr=1e-2), "min_lr=0.01 must be a finite number >= 0 and <= 0.001"),
    (dict(step=1.5), "step"),
    (dict(max_lr=math.inf), "max_lr"),
])
def test_lr_at_rejects_bad_arguments(kwargs, match):
    arguments = dict(step=0, max_lr=1e-3, warmup_steps=10, max_steps=100, min_lr=0.0) | kwargs
    step = arguments.pop("step")
    with pytest.raises(ValueError, match=match):
        lr_at(step, **arguments)


# ---------------------------------------------------------------- clip_grad_norm


def params_with_grads(seed: int, scale: float, with_missing: bool = True) -> list[nn.Parameter]:
    generator = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.zeros(shape)) for shape in [(4, 3), (7,), (2, 2, 2), (5,)]]
    for i, param in enumerate(params):
        if with_missing and i == 3:
            continue  # a parameter that got no gradient
        param.grad = torch.randn(param.shape, generator=generator) * scale
    return params


@pytest.mark.parametrize("scale, max_norm", [(1.0, 0.5), (10.0, 1.0), (1e-3, 1.0), (1.0, 100.0)])
def test_clip_grad_norm_matches_torch(scale, max_norm):
    ours, theirs = params_with_grads(0, scale), params_with_grads(0, scale)
    our_norm = clip_grad_norm(ours, max_norm)
    their_norm = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    torch.testing.assert_close(our_norm, their_norm, rtol=1e-6, atol=0)
    for p, q in zip(ours, theirs):
        assert (p.grad is None) == (q.grad is None)
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)
    # the norm is the plain sqrt(sum of squares) over every gradient entry, before clipping
    unclipped = params_with_grads(0, scale)
    flat = torch.cat([p.grad.flatten() for p in unclipped if p.grad is not None])
    torch.testing.assert_close(our_norm, flat.norm(), rtol=1e-6, atol=0)
    after = torch.cat([p.grad.flatten() for p in ours if p.grad is not None]).norm()
    assert after <= max_norm * (1 + 1e-6)


def test_clip_grad_norm_leaves_small_gradients_bit_for_bit_untouched():
    params = params_with_grads(1, scale=1e-2)
    before = [p.grad.clone() for p in params if p.grad is not None]
    norm = clip_grad_norm(params, max_norm=1.0)
    assert norm < 1.0
    assert all(torch.equal(g, p.grad) for g, p in zip(before, [p for p in params if p.grad is not None]))


def test_clip_grad_norm_accepts_a_single_tensor_and_no_grads():
    param = nn.Parameter(torch.zeros(2))
    param.grad = torch.tensor([3.0, 4.0])
    assert clip_grad_norm(param, 1.0).item() == pytest.approx(5.0)
    torch.testing.assert_close(param.grad, torch.tensor([0.6, 0.8]), rtol=1e-5, atol=0)
    assert clip_grad_norm([nn.Parameter(torch.zeros(3))], 1.0).item() == 0.0


def test_clip_grad_norm_of_all_zero_gradients_is_zero_without_nan():
    params = [nn.Parameter(torch.ones(3)) for _ in range(2)]
    for param in params:
        param.grad = torch.zeros(3)
    assert clip_grad_norm(params, 1.0).item() == 0.0
    assert all(torch.equal(p.grad, torch.zeros(3)) for p in params)


@pytest.mark.parametrize("bad", [math.inf, math.nan])
def test_clip_grad_norm_returns_non_finite_norm_and_leaves_grads_untouched(bad):
    params = params_with_grads(2, scale=10.0)
    params[0].grad[1, 1] = bad
    before = [p.grad.clone() for p in params if p.grad is not None]
    norm = clip_grad_norm(params, max_norm=1.0)
    assert not torch.isfinite(norm) and (math.isnan(bad) == norm.isnan().item())
    after = [p.grad for p in params if p.grad is not None]
    for a, b in zip(before, after):
        torch.testing.assert_close(b, a, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(after[1], before[1])  # a finite gradient is not scaled (torch would zero it)


@pytest.mark.parametrize("max_norm", [0.0, -1.0, math.nan, math.inf])
def test_clip_grad_norm_rejects_bad_max_norm(max_norm):
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(params_with_grads(0, 1.0), max_norm)


# ---------------------------------------------------------------- a real training run


def train_losses(impl: str, steps: int = 50) -> list[float]:
    model = tiny_gpt(seed=3, tie_weights=True, bias=True)
    optimizer = make_optimizer(model, lr=1e-2, weight_decay=0.1, impl=impl)
    generator = torch.Generator().manual_seed(7)
    data = torch.randint(0, 23, (4, 64), generator=generator)
    data[:, 1::2] = (data[:, ::2] * 3 + 1) % 23  # learnable: every second token follows from the one before
    losses = []
    for step in range(steps):
        start = (step * 5) % (64 - 9)
        x, y = data[:, start:start + 8], data[:, start + 1:start + 9]
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, max_lr=1e-2, warmup_steps=5, max_steps=steps, min_lr=1e-3)
        _, loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip_grad_norm(model.parameters(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_tiny_gpt_trains_the_same_with_our_adamw_and_torchs():
    ours, theirs = train_losses("llmcourse"), train_losses("torch")
    assert ours == pytest.approx(theirs, rel=0, abs=1e-5)
    assert ours[-1] < ours[0] - 0.3  # and it does learn (from ln 23 = 3.14 to about 2.6)
