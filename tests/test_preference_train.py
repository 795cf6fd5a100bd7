"""Tests for llmcourse.preference_train: the DPO and GRPO trainers and their commands, on a micro
model (seconds on a CPU). The losses themselves are tested in test_preference.py."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch

from llmcourse.checkpoint import CHECKPOINT_NAME
from llmcourse.checks import ArgumentError
from llmcourse.cli import main
from llmcourse.data.tinyworld.chats import preference_pairs
from llmcourse.preference_train import (DPOTrainer, GRPOTrainer, get_preference_config, pair_rows,
                                        response_rows)
from llmcourse.finetune import render_chat
from llmcourse.preference import sequence_logprobs

COMMON = ["batch_size=4", "warmup_steps=0", "eval_batches=1", "log_every=1", "device=cpu"]


def dpo_config(base, out_dir, *overrides):
    return get_preference_config("cpu-dpo", [f"init_from={base}", f"out_dir={out_dir}", "n_pairs=60",
                                             "max_steps=4", "eval_every=2", "checkpoint_every=2", *COMMON, *overrides])


def grpo_config(base, out_dir, *overrides):
    return get_preference_config("cpu-grpo", [f"init_from={base}", f"out_dir={out_dir}", "batch_size=2",
                                              "group_size=3", "max_new_tokens=6", "max_steps=2", "eval_every=0",
                                              "checkpoint_every=1", "warmup_steps=0", "log_every=1", "device=cpu",
                                              *overrides])


def test_pair_rows_hold_each_reply_after_the_same_prompt(micro_tokenizer):
    pairs = list(itertools.islice(preference_pairs(0), 8))
    rows = pair_rows(micro_tokenizer, pairs, 192)
    for i, pair in enumerate(pairs):
        for ids, mask, reply in ((rows.chosen, rows.chosen_mask, pair.chosen),
                                 (rows.rejected, rows.rejected_mask, pair.rejected)):
            expected = render_chat(micro_tokenizer, [*pair.prompt, {"role": "assistant", "content": reply}])
            assert ids[i, :len(expected[0])].tolist() == expected[0]
            assert mask[i].tolist() == expected[1] + [False] * (192 - len(expected[1]))
    with pytest.raises(ArgumentError, match="more than"):
        response_rows(micro_tokenizer, [pairs[0].prompt], [pairs[0].chosen], 5)


def test_dpo_starts_at_log_2_raises_the_margin_and_resumes_exactly(micro_base, tmp_path):
    with_nll = DPOTrainer(dpo_config(micro_base, tmp_path / "n", "nll_weight=1.0"), progress=False)
    x = with_nll.next_batch(with_nll.train_tokens, torch.Generator().manual_seed(0))
    chosen_nll = -(sequence_logprobs(with_nll.raw_model, x[0], x[1]).sum() / x[1].sum()).item()
    assert with_nll.batch_loss(x).item() == pytest.approx(math.log(2) + chosen_nll, rel=1e-5)

    trainer = DPOTrainer(dpo_config(micro_base, tmp_path / "a", "lr=1e-2", "nll_weight=0"), progress=False)
    start = trainer.evaluate()
    assert start["train_loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference
    assert start["train_margin"] == pytest.approx(0.0, abs=1e-6)
    losses = trainer.train()
    end = trainer.evaluate()
    assert end["train_margin"] > 0 and end["train_loss"] < math.log(2)
    assert all(p.grad is None or not p.requires_grad for p in trainer.reference.parameters())
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert {"chosen_reward", "rejected_reward", "margin", "accuracy"} <= set(records[0])

    first = DPOTrainer(dpo_config(micro_base, tmp_path / "b", "lr=1e-2", "nll_weight=0"), progress=False)
    first.train(steps=2)  # interrupted after 2 of 4 steps (the checkpoint is written on the way out)
    resumed = DPOTrainer.resume(tmp_path / "b" / CHECKPOINT_NAME, progress=False)
    assert resumed.train() == pytest.approx(losses[2:], abs=1e-6)


def test_grpo_samples_groups_scores_them_and_resumes_exactly(micro_base, tmp_path):
    trainer = GRPOTrainer(grpo_config(micro_base, tmp_path / "a"), progress=False)
    batch = trainer.next_batch()
    assert batch["ids"].shape[0] == 2 * 3 and batch["mask"].any(dim=1).all()
    assert batch["advantages"].view(2, 3).sum(dim=1).abs().max() < 1e-5  # each group is centred
    assert 0.0 <= trainer.stats["reward"] <= 1.0
    # a step whose groups all got equal rewards has no advantage, so no gradient: nothing changes
    batch["advantages"].zero_()
    trainer.raw_model.zero_grad()
    trainer.batch_loss(batch).backward()
    assert all(p.grad is None or p.grad.abs().max() == 0 for p in trainer.raw_model.parameters())

    straight = GRPOTrainer(grpo_config(micro_base, tmp_path / "s"), progress=False)
    losses = straight.train()
    first = GRPOTrainer(grpo_config(micro_base, tmp_path / "r"), progress=False)
    first.train(steps=1)
    resumed = GRPOTrainer.resume(tmp_path / "r" / CHECKPOINT_NAME, progress=False)
    assert resumed.train() == pytest.approx(losses[1:], abs=1e-6)
    evaluation = straight.evaluate()
    assert set(evaluation) == {"step", "heldout_reward", "unseen_reward"}
    assert all(0 <= value <= 1 for value in evaluation.values() if value != evaluation["step"])
    sums_run = GRPOTrainer(grpo_config(micro_base, tmp_path / "sums", "questions=sums"), progress=False)
    assert {q.split for q in sums_run.train_tokens} == {"arithmetic"}
    assert not {q.subject for q in sums_run.train_tokens} & {q.subject for q in sums_run.val_tokens}


def test_configs_are_checked(micro_base, tmp_path):
    with pytest.raises(ArgumentError, match="method='dpo'"):
        DPOTrainer(grpo_config(micro_base, tmp_path), progress=False)
    with pytest.raises(ValueError, match="group_size"):
        grpo_config(micro_base, tmp_path, "group_size=1")
    with pytest.raises(ValueError, match="beta"):
        dpo_config(micro_base, tmp_path, "beta=0")


def test_dpo_and_grpo_commands(micro_base, tmp_path, capsys):
    assert main(["dpo", "--no-progress", f"init_from={micro_base}", f"out_dir={tmp_path / 'd'}", "n_pairs=20",
                 "max_steps=1", "eval_every=1", *COMMON]) == 0
    assert (tmp_path / "d" / "model.pt").is_file()
    assert main(["grpo", "--no-progress", f"init_from={micro_base}", f"out_dir={tmp_path / 'g'}", "batch_size=2",
                 "group_size=2", "max_new_tokens=4", "max_steps=1", "eval_every=0", "warmup_steps=0",
                 "device=cpu"]) == 0
    assert (tmp_path / "g" / "model.pt").is_file()
    capsys.readouterr()
    assert main(["dpo", "--no-progress", "--config", "cpu-grpo"]) == 1
    assert "is a grpo config" in capsys.readouterr().err
