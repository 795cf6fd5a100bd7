"""llmcourse.preference: log-probabilities, DPO, the reward model, GRPO and REINFORCE.

Closed forms where they exist (log 2 at a tie, the DPO and Bradley-Terry gradients, the policy
gradient at ratio 1), naive references for the vectorised code, and the properties a learner
relies on: padding never counts, clipping stops the gradient exactly where it should, gradient
accumulation over halves equals one big batch, a baseline leaves the expected gradient alone.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from llmcourse.checks import ArgumentError
from llmcourse.model import GPT, GPTConfig
from llmcourse.preference import (
    DPOOutput, RewardModel, bradley_terry_loss, clip_fraction, dpo_loss, group_advantages, grpo_loss,
    preference_accuracy, reinforce_loss, sequence_logprobs, token_logprobs)

VOCAB = 64


def tiny_gpt(position: str = "learned", seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=16, n_layer=2, n_head=2, n_embd=16, position=position))


def random_ids(batch: int, time: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, time), generator=torch.Generator().manual_seed(seed))


def span_mask(batch: int, time: int, start: int, stop: int) -> torch.Tensor:
    """(batch, time) bool, True in columns start .. stop - 1 of every row."""
    mask = torch.zeros(batch, time, dtype=torch.bool)
    mask[:, start:stop] = True
    return mask


def grad_of(loss: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(loss, inputs)


# ---------------------------------------------------------------- token and sequence log-probabilities


def test_token_logprobs_matches_a_loop_over_positions_and_cross_entropy():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 7, VOCAB, generator=generator) * 3
    ids = random_ids(3, 7, seed=1)
    ours = token_logprobs(logits, ids)
    assert ours.shape == (3, 7) and ours.dtype == torch.float32
    naive = torch.zeros(3, 7)
    for row in range(3):
        for t in range(1, 7):
            naive[row, t] = torch.log_softmax(logits[row, t - 1], dim=-1)[ids[row, t]]
    torch.testing.assert_close(ours, naive)
    assert torch.equal(ours[:, 0], torch.zeros(3))  # nothing predicts the first token
    from_cross_entropy = -F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB), ids[:, 1:].reshape(-1),
                                          reduction="none")
    torch.testing.assert_close(ours[:, 1:], from_cross_entropy.view(3, 6))


def test_token_logprobs_of_low_precision_logits_come_out_in_float32():
    logits = torch.randn(2, 5, VOCAB, generator=torch.Generator().manual_seed(2)).bfloat16()
    ids = random_ids(2, 5, seed=3)
    ours = token_logprobs(logits, ids)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, token_logprobs(logits.float(), ids))


def test_token_logprobs_rejects_mismatched_shapes_and_out_of_range_ids():
    logits = torch.randn(2, 5, VOCAB)
    with pytest.raises(ArgumentError, match="logits"):
        token_logprobs(logits, random_ids(2, 4, seed=0))
    with pytest.raises(ArgumentError, match="vocabulary"):
        token_logprobs(logits, torch.full((2, 5), VOCAB))
    with pytest.raises(ArgumentError, match="integers"):
        token_logprobs(logits, torch.zeros(2, 5))


def test_sequence_logprobs_is_the_masked_sum_of_token_logprobs():
    model = tiny_gpt()
    ids = random_ids(3, 10, seed=4)
    mask = span_mask(3, 10, 4, 10)
    mask[1, 8:] = False  # a shorter response, right-padded
    logits, _ = model(ids)
    expected = (token_logprobs(logits, ids) * mask).sum(dim=1)
    torch.testing.assert_close(sequence_logprobs(model, ids, mask), expected)


def test_sequence_logprob_is_a_sum_so_disjoint_parts_add_up():
    """log p(a, b | x) = log p(a | x) + log p(b | x, a): the chain rule, which a mean would break."""
    model = tiny_gpt()
    ids = random_ids(2, 12, seed=5)
    first, second = span_mask(2, 12, 3, 7), span_mask(2, 12, 7, 12)
    whole = sequence_logprobs(model, ids, first | second)
    torch.testing.assert_close(whole, sequence_logprobs(model, ids, first) + sequence_logprobs(model, ids, second))


def test_padding_after_the_response_never_changes_its_logprob():
    model = tiny_gpt()
    ids = random_ids(2, 8, seed=6)
    mask = span_mask(2, 8, 3, 8)
    alone = sequence_logprobs(model, ids, mask)
    padded_ids = torch.cat([ids, torch.full((2, 4), 7)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 4, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(sequence_logprobs(model, padded_ids, padded_mask), alone)
    # causal attention: a token after the response cannot change it, whatever it is
    changed = padded_ids.clone()
    changed[:, 9] = (changed[:, 9] + 1) % VOCAB
    torch.testing.assert_close(sequence_logprobs(model, changed, padded_mask), alone)


def test_a_prompt_token_is_not_scored_but_is_context():
    """The mask picks which tokens are scored; a prompt token still conditions the response."""
    model = tiny_gpt()
    ids = random_ids(1, 8, seed=7)
    mask = span_mask(1, 8, 4, 8)
    changed = ids.clone()
    changed[0, 2] = (changed[0, 2] + 1) % VOCAB
    assert not torch.allclose(sequence_logprobs(model, changed, mask), sequence_logprobs(model, ids, mask))


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_left_padded_rows_with_an_attention_mask_compute_what_they_would_alone(position):
    model = tiny_gpt(position)
    ids = random_ids(1, 6, seed=8)
    mask = span_mask(1, 6, 2, 6)
    alone = sequence_logprobs(model, ids, mask)
    padded_ids = torch.cat([torch.full((1, 3), 5), ids], dim=1)
    real = torch.cat([torch.zeros(1, 3, dtype=torch.bool), torch.ones(1, 6, dtype=torch.bool)], dim=1)
    padded_mask = torch.cat([torch.zeros(1, 3, dtype=torch.bool), mask], dim=1)
    torch.testing.assert_close(sequence_logprobs(model, padded_ids, padded_mask, attention_mask=real), alone)


def test_response_mask_must_be_bool_and_never_cover_the_first_token():
    model = tiny_gpt()
    ids = random_ids(2, 6, seed=9)
    mask = span_mask(2, 6, 0, 6)
    with pytest.raises(ArgumentError, match=r"response_mask\[0, 0\].*first"):
        sequence_logprobs(model, ids, mask)
    with pytest.raises(ArgumentError, match="bool"):
        sequence_logprobs(model, ids, span_mask(2, 6, 2, 6).long())
    with pytest.raises(ArgumentError, match="response_mask"):
        sequence_logprobs(model, ids, span_mask(2, 5, 2, 5))


# ---------------------------------------------------------------- DPO


def test_dpo_loss_is_log_2_when_the_policy_is_the_reference():
    logps = torch.tensor([-12.0, -3.5, -40.0])
    other = torch.tensor([-9.0, -7.0, -1.0])
    out = dpo_loss(logps, other, logps.clone(), other.clone(), beta=0.3)
    assert isinstance(out, DPOOutput)
    torch.testing.assert_close(out.loss, torch.tensor(math.log(2)))
    assert torch.equal(out.chosen_rewards, torch.zeros(3)) and torch.equal(out.margins, torch.zeros(3))
    assert out.accuracy.item() == 0.0  # a tie is not a win


def test_dpo_gradient_matches_the_closed_form():
    generator = torch.Generator().manual_seed(10)
    policy_chosen = (torch.randn(4, generator=generator) * 5).requires_grad_()
    policy_rejected = (torch.randn(4, generator=generator) * 5).requires_grad_()
    reference_chosen, reference_rejected = torch.randn(4, generator=generator), torch.randn(4, generator=generator)
    beta = 0.2
    out = dpo_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta=beta)
    grad_chosen, grad_rejected = grad_of(out.loss, policy_chosen, policy_rejected)
    margin = beta * ((policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)).detach()
    torch.testing.assert_close(grad_chosen, -beta * torch.sigmoid(-margin) / 4)
    torch.testing.assert_close(grad_rejected, beta * torch.sigmoid(-margin) / 4)


def test_dpo_reference_gets_no_gradient_and_rewards_are_detached():
    reference_chosen = torch.tensor([-2.0, -3.0], requires_grad=True)
    policy = torch.tensor([-1.0, -1.0], requires_grad=True)
    out = dpo_loss(policy, torch.tensor([-4.0, -4.0]), reference_chosen, torch.tensor([-2.0, -2.0]))
    out.loss.backward()
    assert reference_chosen.grad is None and policy.grad is not None
    assert not any(t.requires_grad for t in (out.chosen_rewards, out.rejected_rewards, out.margins, out.accuracy))


def test_dpo_loss_falls_as_the_chosen_response_gets_likelier():
    rejected, reference = torch.tensor([-5.0]), torch.tensor([-5.0])
    losses = [dpo_loss(torch.tensor([-5.0 + shift]), rejected, reference, reference).loss.item()
              for shift in range(-20, 21, 4)]
    assert all(later < earlier for earlier, later in zip(losses, losses[1:]))


def test_dpo_rewards_margins_and_accuracy_by_hand():
    out = dpo_loss(torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0]),
                   torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0]), beta=0.5)
    torch.testing.assert_close(out.chosen_rewards, torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(out.rejected_rewards, torch.tensor([-0.5, 0.5]))
    torch.testing.assert_close(out.margins, torch.tensor([1.0, -0.5]))
    assert out.accuracy.item() == 0.5
    expected = -(math.log(1 / (1 + math.exp(-1.0))) + math.log(1 / (1 + math.exp(0.5)))) / 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)


def test_dpo_checks_beta_and_shapes():
    values = torch.zeros(3)
    for beta in (0.0, -0.1, math.nan):
        with pytest.raises(ArgumentError, match="beta"):
            dpo_loss(values, values, values, values, beta=beta)
    with pytest.raises(ArgumentError, match="reference_rejected"):
        dpo_loss(values, values, values, torch.zeros(2))
    with pytest.raises(ArgumentError, match="policy_chosen"):
        dpo_loss(torch.zeros(3, 1), values, values, values)


def test_a_few_dpo_steps_on_a_tiny_model_prefer_the_chosen_response():
    policy = tiny_gpt(seed=11)
    reference = copy.deepcopy(policy).requires_grad_(False)
    prompt = random_ids(2, 4, seed=12)
    chosen = torch.cat([prompt, random_ids(2, 5, seed=13)], dim=1)
    rejected = torch.cat([prompt, random_ids(2, 5, seed=14)], dim=1)
    mask = span_mask(2, 9, 4, 9)
    with torch.no_grad():
        reference_chosen = sequence_logprobs(reference, chosen, mask)
        reference_rejected = sequence_logprobs(reference, rejected, mask)
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        out = dpo_loss(sequence_logprobs(policy, chosen, mask), sequence_logprobs(policy, rejected, mask),
                       reference_chosen, reference_rejected)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)
    assert losses[-1] < losses[0] - 0.05
    assert out.accuracy.item() == 1.0 and (out.margins > 0).all()


# ---------------------------------------------------------------- reward model


def test_reward_model_scores_each_row_at_its_last_real_token():
    gpt = tiny_gpt()
    reward = RewardModel(gpt)
    ids = random_ids(3, 10, seed=15)
    mask = span_mask(3, 10, 0, 10)
    mask[1, 6:] = False
    scores = reward(ids, mask)
    assert scores.shape == (3,) and torch.isfinite(scores).all()
    after = ids.clone()
    after[1, 6:] = (after[1, 6:] + 1) % VOCAB  # row 1's padding
    torch.testing.assert_close(reward(after, mask), scores)
    before = ids.clone()
    before[1, 5] = (before[1, 5] + 1) % VOCAB  # row 1's last real token
    changed = reward(before, mask)
    assert changed[1] != scores[1]
    torch.testing.assert_close(changed[[0, 2]], scores[[0, 2]])


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_reward_model_ignores_padding_on_either_side(position):
    reward = RewardModel(tiny_gpt(position))
    ids = random_ids(1, 6, seed=16)
    alone = reward(ids, torch.ones(1, 6, dtype=torch.bool))
    pad = torch.full((1, 3), 9)
    no, yes = torch.zeros(1, 3, dtype=torch.bool), torch.ones(1, 6, dtype=torch.bool)
    torch.testing.assert_close(reward(torch.cat([pad, ids], 1), torch.cat([no, yes], 1)), alone)
    torch.testing.assert_close(reward(torch.cat([ids, pad], 1), torch.cat([yes, no], 1)), alone)


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_reward_model_reads_the_same_hidden_state_as_the_gpt(position):
    """Its trunk must compute what GPT.forward computes before the output layer."""
    gpt = tiny_gpt(position)
    reward = RewardModel(gpt)
    captured = {}
    gpt.norm_f.register_forward_hook(lambda module, args, output: captured.update(hidden=output))
    ids = random_ids(2, 9, seed=17)
    gpt(ids)
    features = reward.features(ids, torch.ones(2, 9, dtype=torch.bool))
    torch.testing.assert_close(features, captured["hidden"][:, -1])


def test_reward_model_starts_from_a_copy_and_has_no_output_layer():
    gpt = tiny_gpt()
    before = copy.deepcopy(gpt.state_dict())
    reward = RewardModel(gpt)
    assert not {id(p) for p in reward.parameters()} & {id(p) for p in gpt.parameters()}
    assert not hasattr(reward, "lm_head")
    ids = random_ids(2, 5, seed=18)
    reward(ids, torch.ones(2, 5, dtype=torch.bool)).sum().backward()
    torch.optim.SGD(reward.parameters(), lr=1.0).step()
    assert all(torch.equal(before[name], value) for name, value in gpt.state_dict().items())


def test_reward_model_rejects_bad_masks_and_long_inputs():
    reward = RewardModel(tiny_gpt())
    ids = random_ids(2, 5, seed=19)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1] = False
    with pytest.raises(ArgumentError, match="row 1 has no True"):
        reward(ids, mask)
    with pytest.raises(ArgumentError, match="bool"):
        reward(ids, torch.ones(2, 5))
    with pytest.raises(ArgumentError, match="block_size"):
        reward(random_ids(1, 17, seed=0), torch.ones(1, 17, dtype=torch.bool))
    with pytest.raises(ArgumentError, match="GPT"):
        RewardModel(torch.nn.Linear(2, 2))


def test_a_few_bradley_terry_steps_rank_the_pairs():
    reward = RewardModel(tiny_gpt(seed=20))
    chosen, rejected = random_ids(4, 8, seed=21), random_ids(4, 8, seed=22)
    mask = torch.ones(4, 8, dtype=torch.bool)
    optimizer = torch.optim.Adam(reward.parameters(), lr=1e-2)
    for _ in range(30):
        loss = bradley_terry_loss(reward(chosen, mask), reward(rejected, mask))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        assert preference_accuracy(reward(chosen, mask), reward(rejected, mask)) == 1.0


def test_bradley_terry_loss_closed_forms():
    scores = torch.tensor([0.3, -2.0, 5.0])
    assert bradley_terry_loss(scores, scores.clone()).item() == pytest.approx(math.log(2))
    chosen = torch.tensor([1.0, -1.0, 0.0], requires_grad=True)
    rejected = torch.tensor([0.0, 2.0, 0.0], requires_grad=True)
    grad_chosen, grad_rejected = grad_of(bradley_terry_loss(chosen, rejected), chosen, rejected)
    expected = -torch.sigmoid(-(chosen - rejected)).detach() / 3
    torch.testing.assert_close(grad_chosen, expected)
    torch.testing.assert_close(grad_rejected, -expected)
    assert (grad_chosen < 0).all() and (grad_rejected > 0).all()  # gradient descent widens the gap


def test_preference_accuracy_by_hand_with_a_tie():
    assert preference_accuracy(torch.tensor([1.0, 2.0, 0.5, 3.0]), torch.tensor([0.0, 2.0, 1.0, -1.0])) == 0.5
    with pytest.raises(ArgumentError, match="rejected_scores"):
        preference_accuracy(torch.zeros(3), torch.zeros(4))


# ---------------------------------------------------------------- group advantages


@given(rewards=st.lists(st.lists(st.floats(-10, 10, width=32), min_size=5, max_size=5), min_size=1, max_size=4))
def test_group_advantages_have_zero_mean_and_unit_std_per_group(rewards):
    rewards = torch.tensor(rewards, dtype=torch.float64)
    advantages = group_advantages(rewards)
    assert advantages.shape == rewards.shape
    torch.testing.assert_close(advantages.mean(dim=1), torch.zeros(len(rewards), dtype=torch.float64),
                               rtol=0, atol=1e-6)
    spread = rewards.std(dim=1) > 1e-2
    torch.testing.assert_close(advantages.std(dim=1)[spread], torch.ones(int(spread.sum()), dtype=torch.float64),
                               rtol=0, atol=1e-3)


def test_equal_rewards_give_exactly_zero_advantage():
    # in float32 the mean of seven 0.1s misses 0.1 by 7e-9, which / (std + 1e-6) would make 0.007
    rewards = torch.tensor([[0.1] * 7, [0.3] * 7, [1.0] * 7])
    assert torch.equal(group_advantages(rewards), torch.zeros(3, 7))


@given(value=st.floats(-100, 100, width=32), group=st.integers(2, 16), prompts=st.integers(1, 3))
def test_a_uniform_group_always_gets_zero_advantage(value, group, prompts):
    assert torch.equal(group_advantages(torch.full((prompts, group), value)), torch.zeros(prompts, group))


def test_group_advantages_of_right_and_wrong_answers_by_hand():
    # 0/1 rewards: mean 2/3, unbiased std sqrt(1/3)
    expected = (torch.tensor([0.0, 1.0, 1.0]) - 2 / 3) / (math.sqrt(1 / 3) + 1e-6)
    torch.testing.assert_close(group_advantages(torch.tensor([[0.0, 1.0, 1.0]])), expected[None])
    torch.testing.assert_close(group_advantages(torch.tensor([[0, 1, 1]])), expected[None])  # integer rewards


def test_group_advantages_need_two_answers_per_prompt():
    with pytest.raises(ArgumentError, match="G >= 2"):
        group_advantages(torch.ones(3, 1))
    with pytest.raises(ArgumentError, match="rewards"):
        group_advantages(torch.ones(6))


# ---------------------------------------------------------------- GRPO


def logits_parameter(batch: int, time: int, seed: int) -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.randn(batch, time, VOCAB, generator=torch.Generator().manual_seed(seed)))


def ragged_mask(batch: int, time: int) -> torch.Tensor:
    """Responses from column 2 on, row b one token shorter than row b - 1 (right padding)."""
    mask = span_mask(batch, time, 2, time)
    for row in range(batch):
        mask[row, time - row:] = False
    return mask


def test_equal_rewards_give_a_zero_grpo_gradient():
    logits = logits_parameter(4, 6, seed=23)
    ids, mask = random_ids(4, 6, seed=24), ragged_mask(4, 6)
    logprobs = token_logprobs(logits, ids)
    advantages = group_advantages(torch.full((2, 2), 0.7)).flatten()
    loss = grpo_loss(logprobs, logprobs.detach(), advantages, mask)
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_grpo_at_ratio_one_is_the_length_normalised_policy_gradient():
    logits = logits_parameter(3, 7, seed=25)
    ids, mask = random_ids(3, 7, seed=26), ragged_mask(3, 7)
    advantages = torch.tensor([1.5, -0.5, -1.0])
    logprobs = token_logprobs(logits, ids)
    (ours,) = grad_of(grpo_loss(logprobs, logprobs.detach(), advantages, mask), logits)
    logprobs = token_logprobs(logits, ids)  # a fresh graph: the one above was freed
    per_sequence = (logprobs * mask).sum(dim=1) / mask.sum(dim=1)
    (expected,) = grad_of(-(advantages * per_sequence).mean(), logits)
    torch.testing.assert_close(ours, expected)


def test_clipping_stops_the_gradient_only_where_it_binds():
    # row: (advantage, ratio); both response tokens of a row share the ratio
    cases = [(1.0, 1.5), (-1.0, 0.5), (1.0, 0.5), (-1.0, 1.5), (1.0, 1.1), (-1.0, 0.9)]
    advantages = torch.tensor([a for a, _ in cases])
    ratios = torch.tensor([r for _, r in cases])[:, None].expand(6, 3)
    logprobs = torch.full((6, 3), -2.0, requires_grad=True)
    old_logprobs = logprobs.detach() - ratios.log()
    mask = span_mask(6, 3, 1, 3)
    (grad,) = grad_of(grpo_loss(logprobs, old_logprobs, advantages, mask, clip=0.2), logprobs)
    binds = torch.tensor([True, True, False, False, False, False])
    assert torch.equal(grad[binds], torch.zeros(2, 3))
    # unclipped: d(-ratio * A / n_tokens / B) / d logprob = -ratio * A / (2 * 6) on response tokens
    expected = -(ratios * advantages[:, None]) / 12 * mask
    torch.testing.assert_close(grad[~binds], expected[~binds])
    assert (grad[~binds][:, 1:] != 0).all()
    assert clip_fraction(logprobs, old_logprobs, advantages, mask, clip=0.2).item() == pytest.approx(2 / 6)


def test_grpo_over_two_equal_halves_accumulates_to_the_full_batch():
    logits = logits_parameter(4, 6, seed=27)
    ids, mask = random_ids(4, 6, seed=28), ragged_mask(4, 6)
    advantages = torch.tensor([0.5, -1.0, 2.0, -0.3])
    noise = torch.randn(4, 6, generator=torch.Generator().manual_seed(29))
    old = token_logprobs(logits, ids).detach() + 0.1 * noise  # ratios near, not at, 1
    (full,) = grad_of(grpo_loss(token_logprobs(logits, ids), old, advantages, mask), logits)
    accumulated = torch.zeros_like(logits)
    for half in (slice(0, 2), slice(2, 4)):
        logprobs = token_logprobs(logits[half], ids[half])
        accumulated += grad_of(grpo_loss(logprobs, old[half], advantages[half], mask[half]) / 2, logits)[0]
    torch.testing.assert_close(accumulated, full)


def test_k3_kl_penalty_is_zero_at_the_reference_and_positive_away_from_it():
    generator = torch.Generator().manual_seed(30)
    logprobs = -torch.rand(3, 5, generator=generator) * 4
    mask = span_mask(3, 5, 1, 5)
    advantages = torch.tensor([1.0, -1.0, 0.5])
    plain = grpo_loss(logprobs, logprobs, advantages, mask)
    torch.testing.assert_close(grpo_loss(logprobs, logprobs, advantages, mask, reference_logprobs=logprobs,
                                         kl_coef=0.5), plain)
    reference = logprobs + torch.randn(3, 5, generator=generator)
    with_kl = grpo_loss(logprobs, logprobs, torch.zeros(3), mask, reference_logprobs=reference, kl_coef=2.0)
    difference = reference - logprobs
    k3 = difference.exp() - difference - 1
    expected = 2.0 * ((k3 * mask).sum(dim=1) / 4).mean()
    assert with_kl.item() > 0
    torch.testing.assert_close(with_kl, expected)


def test_grpo_treats_old_and_reference_logprobs_as_constants():
    logprobs = torch.full((1, 3), -1.0, requires_grad=True)
    old = torch.full((1, 3), -1.2, requires_grad=True)
    reference = torch.full((1, 3), -0.5, requires_grad=True)
    grpo_loss(logprobs, old, torch.tensor([1.0]), span_mask(1, 3, 1, 3), reference_logprobs=reference,
              kl_coef=0.1).backward()
    assert old.grad is None and reference.grad is None and logprobs.grad is not None


def test_grpo_ignores_whatever_the_padding_holds():
    logprobs = torch.tensor([[0.0, -1.0, 1e4], [0.0, -2.0, -0.5]], requires_grad=True)
    old = torch.tensor([[0.0, -1.1, -1e4], [0.0, -2.1, -0.4]])
    mask = torch.tensor([[False, True, False], [False, True, True]])
    loss = grpo_loss(logprobs, old, torch.tensor([1.0, -1.0]), mask, reference_logprobs=-old, kl_coef=0.1)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logprobs.grad).all()
    assert logprobs.grad[0, 2] == 0


def test_grpo_rejects_bad_arguments():
    logprobs, advantages = torch.zeros(2, 4), torch.zeros(2)
    mask = span_mask(2, 4, 1, 4)
    empty = mask.clone()
    empty[1] = False
    with pytest.raises(ArgumentError, match="row 1 has no response token"):
        grpo_loss(logprobs, logprobs, advantages, empty)
    with pytest.raises(ArgumentError, match="first"):
        grpo_loss(logprobs, logprobs, advantages, span_mask(2, 4, 0, 4))
    with pytest.raises(ArgumentError, match="reference_logprobs"):
        grpo_loss(logprobs, logprobs, advantages, mask, kl_coef=0.1)
    for clip in (0.0, 1.0, -0.2):
        with pytest.raises(ArgumentError, match="clip"):
            grpo_loss(logprobs, logprobs, advantages, mask, clip=clip)
    with pytest.raises(ArgumentError, match="advantages"):
        grpo_loss(logprobs, logprobs, torch.zeros(2, 1), mask)


# ---------------------------------------------------------------- REINFORCE


def test_reinforce_gradient_is_reward_minus_baseline_times_grad_logprob():
    logits = logits_parameter(3, 6, seed=31)
    ids, mask = random_ids(3, 6, seed=32), ragged_mask(3, 6)
    rewards, baseline = torch.tensor([1.0, 0.0, 3.0]), torch.tensor([0.5, 0.5, 1.0])
    logprobs = token_logprobs(logits, ids)
    (ours,) = grad_of(reinforce_loss(logprobs, rewards, mask, baseline), logits)
    logprobs = token_logprobs(logits, ids)  # a fresh graph: the one above was freed
    (expected,) = grad_of(-((rewards - baseline) * (logprobs * mask).sum(dim=1)).mean(), logits)
    torch.testing.assert_close(ours, expected)


def test_a_baseline_leaves_the_expected_gradient_unchanged():
    """One-token bandit: enumerate every action, weight its gradient by its probability."""
    scores = torch.nn.Parameter(torch.tensor([0.3, -1.0, 2.0, 0.0]))
    rewards = torch.tensor([1.0, 0.0, 0.5, 4.0])
    mask = torch.tensor([[False, True]])

    def expected_gradient(baseline: float) -> tuple[torch.Tensor, torch.Tensor]:
        total, per_action = torch.zeros(4), []
        probs = torch.softmax(scores, dim=0).detach()
        for action in range(4):
            logits = F.pad(scores, (0, VOCAB - 4), value=-math.inf).expand(1, 2, VOCAB)
            logprobs = token_logprobs(logits, torch.tensor([[0, action]]))
            (grad,) = grad_of(reinforce_loss(logprobs, rewards[action:action + 1], mask, baseline), scores)
            per_action.append(grad)
            total += probs[action] * grad
        return total, torch.stack(per_action)

    without, samples_without = expected_gradient(0.0)
    with_baseline, samples_with = expected_gradient(1.5)
    torch.testing.assert_close(with_baseline, without)
    assert not torch.allclose(samples_with, samples_without)  # each sample's gradient does change


def test_reinforce_checks_its_arguments():
    logprobs = torch.zeros(2, 3)
    with pytest.raises(ArgumentError, match="rewards"):
        reinforce_loss(logprobs, torch.zeros(3), span_mask(2, 3, 1, 3))
    with pytest.raises(ArgumentError, match="baseline"):
        reinforce_loss(logprobs, torch.zeros(2), span_mask(2, 3, 1, 3), baseline=math.inf)
    with pytest.raises(ArgumentError, match="first"):
        reinforce_loss(logprobs, torch.zeros(2), span_mask(2, 3, 0, 3))
