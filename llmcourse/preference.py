"""Chapter 14: preferences, teaching a model which of its answers people (or a checker) prefer.

Fine-tuning (chapter 13) imitates answers. Here the signal is a judgement instead: of two answers
to one prompt, this one is better (a preference pair), or: this answer is right (a reward). Three
ways to learn from it, all built on the same quantity, the log-probability of a response:

* **reward model + RL**, the classic RLHF recipe (Christiano et al. 2017; Ouyang et al. 2022,
  "Training language models to follow instructions with human feedback", InstructGPT): train a
  `RewardModel` to score responses so that, under the Bradley-Terry model (Bradley & Terry 1952),
  P(chosen beats rejected) = sigmoid(score_chosen - score_rejected), then optimise the language
  model against those scores with reinforcement learning;
* **DPO** (Rafailov et al. 2023, "Direct Preference Optimization: Your Language Model is Secretly
  a Reward Model"): the policy that best trades reward against staying close to a reference model
  has a closed form, so the reward can be written with the policy itself,
  r(x, y) = beta * log(pi(y | x) / pi_ref(y | x)), and `dpo_loss` fits the Bradley-Terry model
  with that implicit reward directly: no reward model, no sampling;
* **RL with verifiable rewards** (the name is from Lambert et al. 2024, Tulu 3): when a program can
  check an answer (a sum, a unit test), sample G answers per prompt, reward each, and raise the
  probability of the better ones. `reinforce_loss` is the plain policy gradient (Williams 1992);
  `group_advantages` and `grpo_loss` are GRPO (Shao et al. 2024, "DeepSeekMath"): PPO's clipped
  objective (Schulman et al. 2017) with each answer's advantage measured against its own group
  instead of a learned value function.

Convention for a batch of sequences, used by every function here:

* `ids (B, T)` integer tokens: prompt then response, padded to a common length T;
* `response_mask (B, T)` bool, True where `ids[b, t]` is a response token, whose log-probability
  counts. Prompt tokens and padding are False: they are context (the prompt) or nothing (padding),
  never scored. Column 0 can never be True, since nothing before it predicts it.
* Padding is anywhere the mask is False; right padding is typical and needs nothing more, because
  under causal attention no real token sees the padding after it. Left (or inner) padding needs
  `sequence_logprobs`'s `attention_mask` as well.

A sequence's log-probability is the SUM over its response tokens of log p(token | everything
before it), which is the log of the probability of the whole response, the quantity DPO's
derivation is about. Some libraries offer the MEAN over tokens instead (SimPO, Meng et al. 2024,
builds its reward on it). A mean makes the reward independent of the response's length, so a long
response no longer wins or loses just by having more tokens, but it is no longer the log of a
sequence probability, so the DPO derivation no longer applies, and beta's scale changes with it
(per token instead of per sequence).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.checks import ArgumentError, check_id_range, check_integer_tensor, check_real, check_shape
from llmcourse.generate import padded_positions
from llmcourse.model import GPT, INIT_STD

__all__ = [
    "DPOOutput",
    "RewardModel",
    "bradley_terry_loss",
    "check_response_mask",
    "clip_fraction",
    "dpo_loss",
    "group_advantages",
    "grpo_loss",
    "k3_kl",
    "last_true_index",
    "preference_accuracy",
    "reinforce_loss",
    "sequence_logprobs",
    "token_logprobs",
]


# ------------------------------------------------------------------------- log-probabilities


def token_logprobs(logits: Tensor, ids: Tensor) -> Tensor:
    """Each token's log-probability under the model: logits `(B, T, V)`, ids `(B, T)` -> `(B, T)` float32.

    Entry t is log p(ids[:, t] | ids[:, :t]), read from `logits[:, t - 1]` (position t - 1 predicts
    token t). Column 0 is 0: nothing predicts the first token, so it is never a response token.
    """
    check_integer_tensor("ids", ids)
    check_shape("ids", ids, ("B", "T"), hint="add a batch dimension with ids.unsqueeze(0)")
    check_shape("logits", logits, (*ids.shape, "V"), hint="the model's output for ids: (B, T, V)")
    check_id_range("ids", ids, logits.shape[-1], hint="every id must be below the vocabulary size V")
    # float32 because low-precision logits (bf16 keeps ~3 digits) would round the small differences
    # that DPO and GRPO take between log-probabilities. The last position predicts a token beyond
    # the sequence, so it is dropped before the (B, T - 1, V) normalisation, not after.
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    picked = log_probs.gather(-1, ids[:, 1:, None].long()).squeeze(-1)  # (B, T - 1)
    return F.pad(picked, (1, 0))  # column 0 = 0


def sequence_logprobs(model: nn.Module, ids: Tensor, response_mask: Tensor, *,
                      attention_mask: Tensor | None = None) -> Tensor:
    """log p(response | prompt) per row: the SUM of the response tokens' log-probabilities, `(B,)` float32.

    model: maps ids `(B, T)` to logits `(B, T, V)`, or to `(logits, loss)` like `GPT`.
    ids, response_mask: `(B, T)`, as in the module's convention.
    attention_mask: `(B, T)` bool, True for real tokens; needed only when padding comes before real
    tokens (left padding), so that every row computes what it would alone (as in chapter 12).
    """
    check_response_mask(response_mask, ids)
    if attention_mask is None:
        output = model(ids)
    else:
        check_shape("attention_mask", attention_mask, tuple(ids.shape), hint="one flag per token, True = real")
        output = model(ids, positions=padded_positions(attention_mask), attention_mask=attention_mask)
    logits = output[0] if isinstance(output, tuple) else output
    # where, not a product: a masked-out position may hold -inf (a pad id the model rules out)
    return torch.where(response_mask, token_logprobs(logits, ids), 0.0).sum(dim=-1)


def check_response_mask(response_mask: Tensor, ids: Tensor) -> Tensor:
    """`response_mask`, if it is a bool tensor of `ids`'s shape `(B, T)` whose column 0 is all False."""
    check_shape("response_mask", response_mask, tuple(ids.shape), hint="one flag per token of ids")
    if response_mask.dtype != torch.bool:
        raise ArgumentError(f"response_mask must be a bool tensor (True = response token), got "
                            f"{response_mask.dtype}; convert it with mask.bool()")
    first = response_mask[:, 0].nonzero()
    if len(first):
        raise ArgumentError(f"response_mask[{int(first[0])}, 0] is True, but nothing predicts a sequence's first "
                            "token, so it cannot be a response token; start each row with a prompt token "
                            "(at least the end-of-text token)")
    return response_mask


# ------------------------------------------------------------------------- DPO


@dataclass
class DPOOutput:
    """What `dpo_loss` returns. Rewards and margins are detached (for logging), shape `(B,)`."""

    loss: Tensor  # scalar, the one to call backward() on
    chosen_rewards: Tensor  # beta * (log pi - log pi_ref) of the chosen responses
    rejected_rewards: Tensor  # the same for the rejected ones
    margins: Tensor  # chosen_rewards - rejected_rewards
    accuracy: Tensor  # float scalar: share of pairs whose chosen reward is strictly higher


def dpo_loss(policy_chosen: Tensor, policy_rejected: Tensor, reference_chosen: Tensor,
             reference_rejected: Tensor, beta: float = 0.1) -> DPOOutput:
    """The DPO loss of B preference pairs from their sequence log-probabilities (each `(B,)`).

        r = beta * (log pi(y | x) - log pi_ref(y | x))           the implicit reward
        loss = -mean_b log sigmoid(r_chosen - r_rejected)        Bradley-Terry on those rewards

    beta > 0 is the weight of the pull to the reference in the objective DPO solves: with a small
    beta the policy must move far from the reference to open a given reward margin, and does; a
    large beta keeps it close. The reference is a fixed anchor, so no gradient reaches it. When
    policy == reference every reward is 0 and the loss is log 2.
    """
    beta = check_real("beta", beta, above=0.0, hint="the strength of the pull to the reference; 0.1 is typical")
    check_shape("policy_chosen", policy_chosen, ("B",), hint="one sequence log-probability per pair")
    for name, values in [("policy_rejected", policy_rejected), ("reference_chosen", reference_chosen),
                         ("reference_rejected", reference_rejected)]:
        check_shape(name, values, tuple(policy_chosen.shape), hint="the shape of policy_chosen: one value per pair")
    chosen_logratio = policy_chosen - reference_chosen.detach()
    rejected_logratio = policy_rejected - reference_rejected.detach()
    margin_logits = beta * (chosen_logratio - rejected_logratio)
    loss = -F.logsigmoid(margin_logits).mean()  # logsigmoid stays finite where log(sigmoid) would be log 0
    chosen_rewards = beta * chosen_logratio.detach()
    rejected_rewards = beta * rejected_logratio.detach()
    margins = chosen_rewards - rejected_rewards
    return DPOOutput(loss=loss, chosen_rewards=chosen_rewards, rejected_rewards=rejected_rewards,
                     margins=margins, accuracy=(margins > 0).float().mean())


# ------------------------------------------------------------------------- reward model


class RewardModel(nn.Module):
    """A GPT that outputs one score per sequence instead of next-token logits (InstructGPT's reward model).

    It starts from a copy of `gpt`'s token embedding, positions, blocks and final norm (the
    language model itself is left untouched) and replaces the output layer by `score`, a linear
    map from the last real token's hidden state to one number: under causal attention that token
    is the only one that has read the whole prompt and response.
    """

    def __init__(self, gpt: GPT) -> None:
        super().__init__()
        if not isinstance(gpt, GPT):
            raise ArgumentError(f"gpt must be a GPT, got {type(gpt).__name__} (the reward model starts from one, "
                                "usually the fine-tuned model of chapter 13)")
        self.config = gpt.config
        shared: dict[int, object] = {}  # one memo keeps modules shared inside the GPT (RoPE tables) shared
        self.tok_emb = copy.deepcopy(gpt.tok_emb, shared)
        self.pos_emb = copy.deepcopy(gpt.pos_emb, shared)
        self.drop = copy.deepcopy(gpt.drop, shared)
        self.blocks = copy.deepcopy(gpt.blocks, shared)
        self.norm_f = copy.deepcopy(gpt.norm_f, shared)
        self.score = nn.Linear(gpt.config.n_embd, 1)
        nn.init.normal_(self.score.weight, mean=0.0, std=INIT_STD)  # the GPT's own init scale
        nn.init.zeros_(self.score.bias)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Scores `(B,)`: ids `(B, T)`, mask `(B, T)` bool, True for the real tokens of prompt + response.

        Each row is scored at its last True position; any padding (left or right) is ignored.
        """
        return self.score(self.features(ids, mask)).squeeze(-1)

    def features(self, ids: Tensor, mask: Tensor) -> Tensor:
        """The final-norm hidden state at each row's last real token, `(B, C)`: what `score` reads.

        The trunk computes what `GPT.forward` computes before its output layer; padding gets the
        positions and attention mask of chapter 12, so a padded row computes what it would alone.
        """
        check_integer_tensor("ids", ids)
        check_shape("ids", ids, ("B", "T"), hint="add a batch dimension with ids.unsqueeze(0)")
        if ids.shape[1] > self.config.block_size:
            raise ArgumentError(f"{ids.shape[1]} tokens exceed block_size={self.config.block_size}; "
                                "shorten the prompt or the response")
        last = last_true_index(mask, ids)
        positions = padded_positions(mask)
        x = self.tok_emb(ids)  # (B, T, C)
        if self.pos_emb is not None:
            x = x + self.pos_emb(positions)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x, positions=positions, attention_mask=mask)
        final = x[torch.arange(x.shape[0], device=x.device), last]  # (B, C)
        return self.norm_f(final)  # a per-token norm, so normalising only the rows read is the same


def last_true_index(mask: Tensor, ids: Tensor) -> Tensor:
    """Column of each row's last True entry: mask `(B, T)` bool -> `(B,)` int64; raises on an all-False row."""
    check_shape("mask", mask, tuple(ids.shape), hint="one flag per token of ids, True = real token")
    if mask.dtype != torch.bool:
        raise ArgumentError(f"mask must be a bool tensor (True = real token), got {mask.dtype}; use mask.bool()")
    empty = (~mask.any(dim=1)).nonzero()
    if len(empty):
        raise ArgumentError(f"mask row {int(empty[0])} has no True entry: every sequence needs at least one "
                            "real token to be scored")
    columns = torch.arange(mask.shape[1], device=mask.device)
    return torch.where(mask, columns, -1).amax(dim=1)


def bradley_terry_loss(chosen_scores: Tensor, rejected_scores: Tensor) -> Tensor:
    """-mean log sigmoid(chosen - rejected): the negative log-likelihood of the preferences, scalar.

    Bradley & Terry (1952): P(chosen beats rejected) = sigmoid(s_chosen - s_rejected). Only the
    difference of the scores matters, so a reward model's scores have no meaningful zero.
    Shapes: both `(B,)`.
    """
    check_shape("chosen_scores", chosen_scores, ("B",), hint="one score per pair")
    check_shape("rejected_scores", rejected_scores, tuple(chosen_scores.shape), hint="the shape of chosen_scores")
    return -F.logsigmoid(chosen_scores - rejected_scores).mean()


def preference_accuracy(chosen_scores: Tensor, rejected_scores: Tensor) -> float:
    """Share of pairs (each `(B,)`) whose chosen score is strictly above the rejected one; a tie counts as wrong."""
    check_shape("chosen_scores", chosen_scores, ("B",), hint="one score per pair")
    check_shape("rejected_scores", rejected_scores, tuple(chosen_scores.shape), hint="the shape of chosen_scores")
    return (chosen_scores > rejected_scores).float().mean().item()


# ------------------------------------------------------------------------- RL with verifiable rewards


def group_advantages(rewards: Tensor) -> Tensor:
    """GRPO's advantages: each reward measured against its own group, rewards `(P, G)` -> `(P, G)` float.

        A = (r - mean_group(r)) / (std_group(r) + 1e-6)     std unbiased, over the G samples

    P prompts, G sampled answers each. An answer is good if it beats its siblings, whatever the
    prompt's difficulty; a group whose rewards are all equal (all right or all wrong) teaches
    nothing, and gets exactly 0.
    """
    check_shape("rewards", rewards, ("P", "G"), hint="one row per prompt, one column per sampled answer")
    if rewards.shape[1] < 2:
        raise ArgumentError(f"rewards has G={rewards.shape[1]} answer per prompt; a group needs G >= 2 answers "
                            "to compare (sample several answers per prompt)")
    rewards = rewards if rewards.is_floating_point() else rewards.float()
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    # The float mean of equal numbers can miss them by a rounding error, which dividing by
    # std + 1e-6 would blow up into a sizeable advantage: set uniform groups to 0 exactly.
    uniform = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)
    centred = torch.where(uniform, 0.0, centred)
    return centred / (rewards.std(dim=1, keepdim=True) + 1e-6)


def grpo_loss(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, response_mask: Tensor,
              clip: float = 0.2, reference_logprobs: Tensor | None = None, kl_coef: float = 0.0) -> Tensor:
    """GRPO's loss (Shao et al. 2024): the negated clipped surrogate, plus an optional KL penalty. Scalar.

        ratio_t = pi(token_t) / pi_old(token_t) = exp(logprobs - old_logprobs)
        surrogate_t = min(ratio_t * A, clamp(ratio_t, 1 - clip, 1 + clip) * A)
        kl_t = exp(ref - logprobs) - (ref - logprobs) - 1       (k3, Schulman 2020; >= 0)
        loss = -mean_b [ mean_{t in response b} (surrogate_t - kl_coef * kl_t) ]

    logprobs `(B, T)`: `token_logprobs` under the policy being trained (with gradients).
    old_logprobs `(B, T)`: the same tokens under the policy that sampled them; reference_logprobs
    `(B, T)`: under the frozen reference. Both are constants (detached).
    advantages `(B,)`: one per sequence (`group_advantages`, flattened); response_mask `(B, T)`.

    The min takes the more pessimistic of the two: once the ratio has moved past 1 + clip in the
    direction the advantage rewards (or below 1 - clip against a negative advantage), the token
    gets no more gradient, so one batch of samples cannot drag the policy far (PPO, Schulman et
    al. 2017). Each sequence's tokens are averaged first, then the sequences, as in DeepSeekMath;
    Liu et al. (2025, "Understanding R1-Zero-Like Training") point out that this per-sequence
    mean favours short right answers and long wrong ones (a wrong answer's penalty is spread over
    more tokens), and divide by a constant instead.
    """
    clip = check_real("clip", clip, above=0.0, below=1.0, hint="the PPO clip range; 0.2 is typical")
    kl_coef = check_real("kl_coef", kl_coef, minimum=0.0, hint="0.0 turns the KL penalty off")
    token_count = _response_token_count(logprobs, response_mask)
    check_shape("old_logprobs", old_logprobs, tuple(logprobs.shape), hint="the shape of logprobs")
    check_shape("advantages", advantages, (logprobs.shape[0],), hint="one advantage per sequence")
    # Zero the log-ratio outside the response before exp: padding may hold any value, and an
    # overflowing exp there would turn the gradient into NaN even though `where` discards it.
    log_ratio = torch.where(response_mask, logprobs - old_logprobs.detach(), 0.0)
    ratio = log_ratio.exp()
    advantage = advantages.detach()[:, None]  # (B, 1): every token of a sequence shares its advantage
    surrogate = torch.minimum(ratio * advantage, ratio.clamp(1 - clip, 1 + clip) * advantage)
    per_token = -surrogate
    if kl_coef > 0:
        if reference_logprobs is None:
            raise ArgumentError(f"kl_coef={kl_coef} needs reference_logprobs (the frozen reference model's "
                                "token_logprobs), or set kl_coef=0.0")
        check_shape("reference_logprobs", reference_logprobs, tuple(logprobs.shape), hint="the shape of logprobs")
        per_token = per_token + kl_coef * k3_kl(logprobs, reference_logprobs, response_mask)
    per_sequence = torch.where(response_mask, per_token, 0.0).sum(dim=1) / token_count
    return per_sequence.mean()


def k3_kl(logprobs: Tensor, reference_logprobs: Tensor, response_mask: Tensor) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from sampled tokens, `(B, T)` (0 outside the response).

        k3 = exp(d) - d - 1,  d = log pi_ref(token) - log pi(token)

    Unbiased when the tokens come from pi, and never negative (exp(d) >= 1 + d), unlike the plain
    estimate -d (Schulman 2020, "Approximating KL Divergence"; used by DeepSeekMath).
    """
    difference = torch.where(response_mask, reference_logprobs.detach() - logprobs, 0.0)
    return difference.exp() - difference - 1


def clip_fraction(logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, response_mask: Tensor,
                  clip: float = 0.2) -> Tensor:
    """Share of response tokens whose clipping binds (they get no gradient from `grpo_loss`), float scalar.

    Arguments as in `grpo_loss`. A share that climbs far above ~0.1-0.2 says the policy moves
    too far per batch of samples (lower the learning rate or take fewer steps per batch).
    """
    clip = check_real("clip", clip, above=0.0, below=1.0, hint="the PPO clip range; 0.2 is typical")
    _response_token_count(logprobs, response_mask)
    ratio = torch.where(response_mask, logprobs - old_logprobs, 0.0).detach().exp()
    advantage = advantages.detach()[:, None]
    binds = ((advantage > 0) & (ratio > 1 + clip)) | ((advantage < 0) & (ratio < 1 - clip))
    return (binds & response_mask).sum() / response_mask.sum()


def reinforce_loss(logprobs: Tensor, rewards: Tensor, response_mask: Tensor,
                   baseline: float | Tensor = 0.0) -> Tensor:
    """The REINFORCE loss (Williams 1992): -mean_b (reward_b - baseline) * log p(response_b). Scalar.

    logprobs `(B, T)` (`token_logprobs`), rewards `(B,)`, response_mask `(B, T)`; baseline a number
    or a tensor broadcastable to `(B,)` (for instance each prompt's mean reward). Its gradient is
    the policy gradient estimate: raise the log-probability of each sampled response in proportion
    to how much better than the baseline it did. A baseline that does not depend on the sampled
    response leaves the expected gradient unchanged (E[grad log p] = 0) and lowers its variance.
    """
    check_shape("logprobs", logprobs, ("B", "T"), hint="token_logprobs of the sampled sequences")
    check_response_mask(response_mask, logprobs)
    check_shape("rewards", rewards, (logprobs.shape[0],), hint="one reward per sequence")
    if not isinstance(baseline, Tensor):
        baseline = check_real("baseline", baseline,
                              hint="a number, or a tensor broadcastable to the rewards' shape (B,)")
    weight = (rewards - baseline).detach()  # rewards are measurements, not functions of the weights
    sequence_logprob = torch.where(response_mask, logprobs, 0.0).sum(dim=1)
    return -(weight * sequence_logprob).mean()


def _response_token_count(logprobs: Tensor, response_mask: Tensor) -> Tensor:
    """Response tokens per row `(B,)`, after checking logprobs `(B, T)` and the mask; raises on an empty row."""
    check_shape("logprobs", logprobs, ("B", "T"), hint="token_logprobs of the sampled sequences")
    check_response_mask(response_mask, logprobs)
    count = response_mask.sum(dim=1)
    empty = (count == 0).nonzero()
    if len(empty):
        raise ArgumentError(f"response_mask row {int(empty[0])} has no response token, so it has no mean "
                            "over tokens; drop that sequence from the batch")
    return count
