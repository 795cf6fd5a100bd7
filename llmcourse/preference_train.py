"""Chapter 14: the preference-tuning runs, DPO from pairs and GRPO from rewards a program checks.

Both start from a fine-tuned checkpoint (chapter 13's `cpu-sft` by default) and are the chapter-13
`FinetuneTrainer` with other data and another loss (same checkpoints, resume, logging, LoRA):

    DPOTrainer    batches of preference pairs (`chats.preference_pairs`); the loss is
                  `preference.dpo_loss` of the policy against a frozen copy of the start model
                  (the reference); logs the implicit rewards, their margin and accuracy
    GRPOTrainer   each step asks `batch_size` questions whose answers a program can check (sums
                  and facts), samples `group_size` replies to each with the current model, rewards
                  the right ones (`chats.reward`: a correct answer, or a refusal about an
                  entity nobody knows), and takes one step on `preference.grpo_loss` with
                  `group_advantages` (on-policy: every micro-batch of a step is sampled by the
                  model before the step's one update, so the ratio is 1 and the clip never
                  binds here; it matters when samples are reused for several updates, as PPO does)

    python -m llmcourse dpo  --config cpu-dpo
    python -m llmcourse grpo --config cpu-grpo
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from llmcourse.checkpoint import load_checkpoint
from llmcourse.checks import ArgumentError, check_choice, check_int, check_real
from llmcourse.data.tinyworld import World
from llmcourse.data.tinyworld.chats import (PreferencePair, Question, preference_pairs, questions, reward, sums,
                                            unknown_questions)
from llmcourse.finetune import END, FinetuneConfig, FinetuneTrainer, answer_questions, render_chat
from llmcourse.generate import generate
from llmcourse.model import GPT
from llmcourse.preference import dpo_loss, group_advantages, grpo_loss, sequence_logprobs, token_logprobs
from llmcourse.sampling import SamplingSettings
from llmcourse.tokenizer import ENDOFTEXT, Tokenizer
from llmcourse.train_config import from_overrides

__all__ = ["PREFERENCE_CONFIGS", "DPOTrainer", "GRPOTrainer", "PairRows", "PreferenceConfig",
           "get_preference_config", "pair_rows", "response_rows", "right_pad"]


@dataclass
class PreferenceConfig(FinetuneConfig):
    """A `FinetuneConfig` for chapter 14: `method` "dpo" (pairs, beta) or "grpo" (sampled groups)."""

    init_from: str = "book/runs/cpu-sft/model.pt"
    method: str = "dpo"
    beta: float = 0.1  # DPO: how far the policy may move from the reference (larger: less far)
    n_pairs: int = 4000  # DPO: training pairs; validation takes the val_fraction share after them
    group_size: int = 8  # GRPO: replies sampled per question
    max_new_tokens: int = 24  # GRPO: the longest reply sampled
    temperature: float = 1.0  # GRPO: sampling temperature of the replies
    nll_weight: float = 0.0  # DPO: weight of the chosen replies' own loss (SFT) added to DPO's
    questions: str = "facts+unknown"  # GRPO: what to ask: "facts+unknown" (known facts, and entities
    # nobody knows, where the rewarded reply is a refusal) or "sums"
    clip: float = 0.2  # GRPO: the PPO clip range of the probability ratio
    kl_coef: float = 0.0  # GRPO: weight of the KL penalty to the start model (0: none)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("method", self.method, ("dpo", "grpo"))
        self.beta = check_real("beta", self.beta, above=0, hint="0.1 is usual")
        check_int("n_pairs", self.n_pairs, 1)
        check_int("group_size", self.group_size, 2, hint="GRPO compares replies within a group")
        check_int("max_new_tokens", self.max_new_tokens, 1)
        self.temperature = check_real("temperature", self.temperature, above=0, hint="1.0 samples as trained")
        self.clip = check_real("clip", self.clip, above=0, below=1)
        self.kl_coef = check_real("kl_coef", self.kl_coef, minimum=0)
        self.nll_weight = check_real("nll_weight", self.nll_weight, minimum=0, hint="0 is plain DPO; 1 is common")
        check_choice("questions", self.questions, ("facts+unknown", "sums"))


PREFERENCE_CONFIGS: dict[str, PreferenceConfig] = {
    # DPO from the cpu-sft model, keeping the chosen replies likely (nll_weight): a minute on 2 CPU cores.
    "cpu-dpo": PreferenceConfig(
        method="dpo", batch_size=16, max_steps=150, lr=5e-5, min_lr=5e-6, warmup_steps=10, weight_decay=0.0,
        eval_every=25, eval_batches=4, checkpoint_every=50, log_every=5, out_dir="runs/cpu-dpo", nll_weight=1.0,
    ),
    # The same without the chosen replies' own loss: plain DPO, which here drifts away from good answers.
    "cpu-dpo-plain": PreferenceConfig(
        method="dpo", batch_size=16, max_steps=150, lr=5e-5, min_lr=5e-6, warmup_steps=10, weight_decay=0.0,
        eval_every=25, eval_batches=4, checkpoint_every=50, log_every=5, out_dir="runs/cpu-dpo-plain",
    ),
    # GRPO from the cpu-sft model: 8 questions x 8 replies per step.
    "cpu-grpo": PreferenceConfig(
        method="grpo", batch_size=8, max_steps=100, lr=5e-5, min_lr=5e-5, warmup_steps=0, weight_decay=0.0,
        eval_every=25, eval_batches=1, checkpoint_every=25, log_every=1, out_dir="runs/cpu-grpo",
    ),
}


def get_preference_config(name: str, overrides: Sequence[str] = ()) -> PreferenceConfig:
    """The named config of PREFERENCE_CONFIGS with `key=value` overrides applied."""
    check_choice("config", name, PREFERENCE_CONFIGS, hint="a preference-tuning config")
    return from_overrides(PREFERENCE_CONFIGS[name], overrides)


# ---------------------------------------------------------------------------------- pairs


@dataclass
class PairRows:
    """Preference pairs as right-padded rows `(N, L)`: the chosen and the rejected chat, each with
    its response mask (True on the reply's tokens and its <|end|>)."""

    chosen: Tensor
    chosen_mask: Tensor
    rejected: Tensor
    rejected_mask: Tensor

    def __len__(self) -> int:
        return self.chosen.shape[0]


def response_rows(tokenizer: Tokenizer, prompts: Sequence[list[dict[str, str]]], replies: Sequence[str],
                  length: int) -> tuple[Tensor, Tensor]:
    """Each prompt followed by its reply, rendered as a chat and right-padded to `length`: ids and
    response mask `(N, length)`. A chat longer than `length` is an error (nothing is cut)."""
    rendered = []
    for row, (prompt, reply) in enumerate(zip(prompts, replies, strict=True)):
        chat_ids, chat_mask = render_chat(tokenizer, [*prompt, {"role": "assistant", "content": reply}])
        if len(chat_ids) > length:
            raise ArgumentError(f"pair {row} has {len(chat_ids)} tokens, more than {length}; use shorter pairs")
        rendered.append((chat_ids, chat_mask))
    return right_pad(rendered, length, tokenizer.special_tokens[ENDOFTEXT])


def right_pad(rows: Sequence[tuple[list[int], list[bool]]], length: int, pad_id: int) -> tuple[Tensor, Tensor]:
    """Rows of (ids, mask), each at most `length` long, as tensors `(N, length)`: ids padded with
    `pad_id`, mask padded with False."""
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)
    for row, (row_ids, row_mask) in enumerate(rows):
        ids[row, :len(row_ids)] = torch.tensor(row_ids)
        mask[row, :len(row_mask)] = torch.tensor(row_mask)
    return ids, mask


def pair_rows(tokenizer: Tokenizer, pairs: Sequence[PreferencePair], length: int) -> PairRows:
    """`pairs` as `PairRows` of `length` tokens."""
    prompts = [pair.prompt for pair in pairs]
    chosen = response_rows(tokenizer, prompts, [pair.chosen for pair in pairs], length)
    rejected = response_rows(tokenizer, prompts, [pair.rejected for pair in pairs], length)
    return PairRows(*chosen, *rejected)


class _PreferenceTrainer(FinetuneTrainer):
    """What the DPO and GRPO trainers share: the config check, the frozen reference (the start
    model), equal micro-batch weights, and statistics logged with each step."""

    config_class = PreferenceConfig
    method = ""

    def __init__(self, config: PreferenceConfig, *, progress: bool = True, **parts: Any) -> None:
        """parts: FinetuneTrainer's `model_swaps` and `optimizer_parts` (the reference model is
        built with the same swaps as the policy)."""
        if not isinstance(config, PreferenceConfig) or config.method != self.method:
            raise ArgumentError(f"{type(self).__name__} needs a PreferenceConfig with method={self.method!r} "
                                "(get_preference_config)")
        super().__init__(config, progress=progress, **parts)
        self.stats: dict[str, float] = {}
        self.reference = self._reference() if self.uses_reference() else None

    def uses_reference(self) -> bool:
        return True

    def _reference(self) -> GPT:
        """The start model, frozen: the policy is measured against it, and held near it."""
        start = GPT.from_checkpoint(load_checkpoint(self.base_path), source=self.base_path, **self.model_swaps)
        return start.to(self.device).eval().requires_grad_(False)

    def batch_weights(self, batches: list) -> list[float]:
        return [1.0] * len(batches)  # every micro-batch holds the same number of pairs or sequences

    def train_step(self) -> float:
        loss = super().train_step()
        self.last.update(self.stats)  # logged with the step
        return loss


class DPOTrainer(_PreferenceTrainer):
    """Direct preference optimisation (Rafailov et al. 2023) on TinyWorld preference pairs; the
    reference is the start model: the loss rewards moving away from it only where pairs ask to."""

    method = "dpo"

    def make_data(self, config: PreferenceConfig, tokenizer: Tokenizer) -> tuple[PairRows, PairRows]:
        n_val = max(1, round(config.n_pairs * config.val_fraction))
        pairs = list(itertools.islice(preference_pairs(config.world_seed), config.n_pairs + n_val))
        length = config.block_size  # a pair is one sequence through the model (no shifted copy)
        return pair_rows(tokenizer, pairs[:config.n_pairs], length), pair_rows(tokenizer, pairs[config.n_pairs:], length)

    def next_batch(self, rows: PairRows | None = None, generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
        """This rank's pairs: (chosen, chosen_mask, rejected, rejected_mask), each `(B, L)`, cut to
        the longest row (padding only costs time)."""
        rows = self.train_tokens if rows is None else rows
        generator = self.batch_generator if generator is None else generator
        picks = self.pick_rows(len(rows), generator)
        masks = rows.chosen_mask[picks] | rows.rejected_mask[picks]
        length = int(masks.nonzero()[:, 1].max()) + 1
        tensors = (rows.chosen, rows.chosen_mask, rows.rejected, rows.rejected_mask)
        return tuple(t[picks, :length].to(self.device) for t in tensors)

    def batch_loss(self, batch: tuple[Tensor, ...]) -> Tensor:
        chosen, chosen_mask, rejected, rejected_mask = batch
        ids, mask = torch.cat([chosen, rejected]), torch.cat([chosen_mask, rejected_mask])
        policy = sequence_logprobs(self.model, ids, mask)  # one forward pass for both halves
        with torch.no_grad():
            reference = sequence_logprobs(self.reference, ids, mask)
        n = chosen.shape[0]
        out = dpo_loss(policy[:n], policy[n:], reference[:n], reference[n:], self.config.beta)
        loss = out.loss
        if self.config.nll_weight:  # keep the chosen replies likely: their mean loss per token (RPO)
            loss = loss - self.config.nll_weight * policy[:n].sum() / chosen_mask.sum()
        self.stats = {"dpo_loss": out.loss.item(), "chosen_reward": out.chosen_rewards.mean().item(),
                      "rejected_reward": out.rejected_rewards.mean().item(),
                      "margin": out.margins.mean().item(), "accuracy": float(out.accuracy)}
        return loss

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The loss (with the NLL term, if any), the DPO loss alone, reward accuracy and margin on the
        same batches of training and validation pairs."""
        self.raw_model.eval()
        result: dict[str, Any] = {"step": self.step}
        for split, rows in (("train", self.train_tokens), ("val", self.val_tokens)):
            generator = torch.Generator().manual_seed(self.config.seed + 1)
            values = [self._evaluate_batch(self.next_batch(rows, generator)) for _ in range(self.config.eval_batches)]
            for key in values[0]:
                result[f"{split}_{key}"] = sum(v[key] for v in values) / len(values)
        self.raw_model.train()
        return result

    def _evaluate_batch(self, batch: tuple[Tensor, ...]) -> dict[str, float]:
        with self.autocast():
            loss = self.batch_loss(batch).item()
        return {"loss": loss, "dpo_loss": self.stats["dpo_loss"], "accuracy": self.stats["accuracy"],
                "margin": self.stats["margin"]}


# ---------------------------------------------------------------------------------- GRPO


class GRPOTrainer(_PreferenceTrainer):
    """Group relative policy optimisation (Shao et al. 2024) with rewards a program checks; with
    kl_coef > 0, a KL penalty holds the policy near the start model."""

    method = "grpo"

    def uses_reference(self) -> bool:
        return self.config.kl_coef > 0

    def make_data(self, config: PreferenceConfig, tokenizer: Tokenizer) -> tuple[list[Question], list[Question]]:
        """Training and evaluation questions. "facts+unknown": the `sft` facts and the unknown
        entities' questions, evaluated on held-out facts and never-seen entities (neither is ever
        trained on); "sums": the "train" sums, evaluated on the sums never trained on."""
        world = World.generate(config.world_seed)
        if config.questions == "sums":
            return sums(config.world_seed, split="train"), sums(config.world_seed, split="eval")
        train = questions(world, "sft") + unknown_questions(world)
        return train, questions(world, "heldout") + questions(world, "unseen")

    def next_batch(self, asked: list[Question] | None = None, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Sample `group_size` replies to each of `batch_size` questions with the current model and
        score them: ids, response mask, advantages and the sampling model's log-probabilities."""
        asked = self.train_tokens if asked is None else asked
        generator = self.batch_generator if generator is None else generator
        config = self.config
        picks = self.pick_rows(len(asked), generator).tolist()  # this rank's questions
        group = [asked[i] for i in picks for _ in range(config.group_size)]
        # one draw on every rank; each rank's replies then use their own seeds (generate: seed + row)
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator)) + self.dist.rank * len(group)
        prompts = [render_chat(self.tokenizer, q.messages(), add_generation_prompt=True)[0] for q in group]
        completions = generate(self.raw_model, self.tokenizer, prompts, config.max_new_tokens,
                               SamplingSettings(temperature=config.temperature), seed=seed)
        rewards = torch.tensor([reward(q, c.text) for q, c in zip(group, completions)])
        ids, mask = _sampled_rows(prompts, [c.token_ids for c in completions], self.tokenizer)
        ids, mask = ids.to(self.device), mask.to(self.device)
        self.raw_model.eval()
        with torch.no_grad(), self.autocast():
            old = token_logprobs(self.raw_model(ids)[0], ids)
        self.raw_model.train()
        advantages = group_advantages(rewards.view(config.batch_size, config.group_size)).flatten()
        by_group = rewards.view(config.batch_size, config.group_size)
        self.stats = {"reward": rewards.mean().item(),
                      "solved_groups": (by_group.max(1).values > 0).float().mean().item(),
                      # the groups whose replies differ in reward: the only ones with a gradient
                      "signal_groups": (by_group.max(1).values > by_group.min(1).values).float().mean().item()}
        return {"ids": ids, "mask": mask, "advantages": advantages.to(self.device), "old_logprobs": old}

    def batch_loss(self, batch: dict[str, Tensor]) -> Tensor:
        logprobs = token_logprobs(self.model(batch["ids"])[0], batch["ids"])
        reference = None
        if self.reference is not None:
            with torch.no_grad():
                reference = token_logprobs(self.reference(batch["ids"])[0], batch["ids"])
        return grpo_loss(logprobs, batch["old_logprobs"], batch["advantages"], batch["mask"], self.config.clip,
                         reference, self.config.kl_coef)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The mean reward of greedy replies to the evaluation questions, by split: held-out facts
        (accuracy), never-seen entities (the refusal rate), sums never trained on (accuracy)."""
        result: dict[str, Any] = {"step": self.step}
        for split in ("heldout", "unseen", "arithmetic"):
            asked = [q for q in self.val_tokens if q.split == split]
            if asked:
                replies = answer_questions(self.raw_model, self.tokenizer, asked)
                result[f"{split}_reward"] = sum(reward(q, r) for q, r in zip(asked, replies)) / len(asked)
        self.raw_model.train()
        return result


def _sampled_rows(prompts: list[list[int]], replies: list[list[int]], tokenizer: Tokenizer) -> tuple[Tensor, Tensor]:
    """Prompt + sampled reply tokens per row, right-padded: ids and response mask `(N, L)`. A reply
    that ended at a special token keeps it (the model chose to stop: that choice is rewarded too)."""
    rows = [(prompt + reply, [False] * len(prompt) + [True] * len(reply)) for prompt, reply in zip(prompts, replies)]
    return right_pad(rows, max(len(ids) for ids, _ in rows), tokenizer.special_tokens[ENDOFTEXT])
