"""Tests for llmcourse.agent_train: the training mix, the digit rows made distinct, the AgentTrainer
(tool tokens added, exact resume, export that `load_model` and `chat --tools` read), the
three-condition experiment and its tables, and `finetune --config cpu-agent` end to end on a
micro model (seconds on a CPU)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from llmcourse.agent import (CALL, RESULT, add_tool_tokens, extend_vocabulary, mean_cosine_similarity,
                             refresh_embeddings, render_tool_chat)
from llmcourse.agent_train import (CONDITIONS, AgentTrainer, ToolRun, accuracy_table, agent_chats, digit_ids,
                                   format_accuracy, get_agent_config, sample_tasks, tool_experiment)
from llmcourse.checkpoint import CHECKPOINT_NAME
from llmcourse.checks import ArgumentError
from llmcourse.cli import main
from llmcourse.data.tinyworld.traces import arithmetic_eval, multi_hop_eval
from llmcourse.model import GPT, GPTConfig
from llmcourse.runs import load_model


def micro(base, out_dir, *overrides: str):
    return get_agent_config("cpu-agent", [f"init_from={base}", f"out_dir={out_dir}", "n_chats=80",
                                          "batch_size=4", "max_steps=4", "warmup_steps=1", "eval_every=2",
                                          "eval_batches=1", "checkpoint_every=2", "log_every=1", "device=cpu",
                                          *overrides])


# ---------------------------------------------------------------------------------- the data


def test_the_mix_holds_traces_and_plain_chats_in_the_configured_share(tmp_path):
    config = get_agent_config("cpu-agent", ["trace_share=0.3"])
    drawn = list(itertools.islice(agent_chats(config), 2000))
    with_calls = sum(any(message["role"] == "call" for message in chat) for chat in drawn)
    assert 0.25 < with_calls / len(drawn) < 0.35
    assert drawn[:50] == list(itertools.islice(agent_chats(config), 50))  # deterministic
    assert all(any(m["role"] == "call" for m in chat) for chat in
               itertools.islice(agent_chats(get_agent_config("cpu-agent", ["trace_share=1"])), 200))


@pytest.mark.parametrize("override", ["trace_share=1.5", "max_digits=0", "max_digits=5"])
def test_bad_settings_are_refused(override):
    with pytest.raises(ArgumentError):
        get_agent_config("cpu-agent", [override])


# ---------------------------------------------------------------------------------- digits


def test_refreshed_rows_are_as_far_apart_as_unrelated_tokens_and_other_rows_stay():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32))
    with torch.no_grad():  # ten rows collapsed onto one direction, as pretraining leaves unseen tokens
        model.tok_emb.weight[:10] = model.tok_emb.weight[10] + 1e-3 * torch.randn(10, 32)
    before = model.tok_emb.weight.detach().clone()
    assert mean_cosine_similarity(model, range(10)) > 0.99
    refresh_embeddings(model, range(10), seed=0)
    assert abs(mean_cosine_similarity(model, range(10))) < 0.2
    assert torch.equal(model.tok_emb.weight[10:], before[10:])
    assert model.lm_head.weight is model.tok_emb.weight  # still tied
    row_norms = model.tok_emb.weight.norm(dim=1)
    assert row_norms[:10].mean().item() == pytest.approx(row_norms[10:].mean().item(), rel=0.3)
    with pytest.raises(ArgumentError, match="token id"):
        refresh_embeddings(model, [64])


def test_digit_ids_are_the_ten_single_digit_tokens(micro_tokenizer):
    ids = digit_ids(micro_tokenizer)
    assert [micro_tokenizer.decode([i]) for i in ids] == [str(d) for d in range(10)]


# ---------------------------------------------------------------------------------- training


def test_agent_trainer_adds_the_tokens_trains_resumes_exactly_and_exports(micro_base, tmp_path):
    straight = AgentTrainer(micro(micro_base, tmp_path / "a"), progress=False)
    assert {CALL, RESULT} <= set(straight.tokenizer.special_tokens)
    assert straight.raw_model.config.vocab_size == straight.tokenizer.vocab_size
    losses = straight.train()
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    again = AgentTrainer(micro(micro_base, tmp_path / "b", "max_steps=4"), progress=False)
    again.train(steps=2)
    resumed = AgentTrainer.resume(tmp_path / "b" / CHECKPOINT_NAME, progress=False)
    assert resumed.train() == pytest.approx(losses[2:], abs=1e-6)
    model, tokenizer = load_model(straight.export(), device="cpu")
    assert CALL in tokenizer.special_tokens and model.config.vocab_size == tokenizer.vocab_size


def test_only_the_digit_rows_and_the_new_rows_differ_from_the_base_before_training(micro_base, tmp_path):
    base, tokenizer = load_model(micro_base, device="cpu")
    trainer = AgentTrainer(micro(micro_base, tmp_path / "a"), progress=False)
    start = trainer.raw_model.tok_emb.weight.detach()
    changed = (start[:base.config.vocab_size] != base.tok_emb.weight.detach()).any(dim=1).nonzero().flatten()
    assert changed.tolist() == sorted(digit_ids(tokenizer))
    plain = AgentTrainer(micro(micro_base, tmp_path / "b", "refresh_digits=false"), progress=False)
    assert torch.equal(plain.raw_model.tok_emb.weight[:base.config.vocab_size], base.tok_emb.weight)


def test_finetune_command_trains_an_agent_that_chat_tools_accepts(micro_base, tmp_path, capsys):
    run = [f"init_from={micro_base}", f"out_dir={tmp_path / 'agent'}", "n_chats=40", "batch_size=2",
           "max_steps=2", "warmup_steps=1", "eval_every=1", "eval_batches=1", "log_every=1", "device=cpu"]
    assert main(["finetune", "--config", "cpu-agent", "--no-progress", *run]) == 0
    assert main(["finetune", "--config", "cpu-agent", "--lora", *run]) == 1
    assert "--lora is not available" in capsys.readouterr().err
    assert main(["chat", "--checkpoint", str(tmp_path / "agent" / "model.pt"), "--tools", "calculator,lookup",
                 "--message", "What is 2 + 2?", "--max-new-tokens", "4"]) == 0


# ---------------------------------------------------------------------------------- the experiment


@pytest.fixture(scope="module")
def micro_agent(micro_base, tmp_path_factory):
    model, tokenizer = load_model(micro_base, device="cpu")
    tokenizer = add_tool_tokens(tokenizer)
    return extend_vocabulary(model, tokenizer.vocab_size).eval(), tokenizer


def test_the_experiment_runs_every_condition_on_the_same_tasks(micro_base, micro_agent):
    chat = load_model(micro_base, device="cpu")
    tasks = arithmetic_eval(0, n_per_size=1, digits=(1, 2)) + sample_tasks(multi_hop_eval(0), 2)
    runs = tool_experiment(chat, micro_agent, tasks)
    assert tuple(runs) == CONDITIONS
    for condition, condition_runs in runs.items():
        assert [run.task for run in condition_runs] == tasks
        assert all(run.grade in ("correct", "refusal", "wrong") for run in condition_runs)
        assert all((run.transcript is None) == (condition == "direct") for run in condition_runs)
    banned = runs["tools banned"]
    assert all(not run.transcript.calls for run in banned)  # the call token never comes out


def test_accuracy_table_counts_grades_per_group_and_over_all():
    tasks = arithmetic_eval(0, n_per_size=2, digits=(1, 3))
    grades = ["correct", "wrong", "refusal", "correct"]
    runs = [ToolRun(task, "", grade) for task, grade in zip(tasks, grades)]
    table = accuracy_table(runs)
    assert table["arithmetic, 1 digit"] == {"n": 2, "correct": 0.5, "refusal": 0.0, "wrong": 0.5}
    assert table["arithmetic, 3 digits"] == {"n": 2, "correct": 0.5, "refusal": 0.5, "wrong": 0.0}
    assert table["all"]["n"] == 4 and table["all"]["correct"] == 0.5
    text = format_accuracy({"direct": table, "tools": table})
    assert "arithmetic, 3 digits" in text and "50%" in text and text.count("\n") == len(table)


def test_sample_tasks_is_seeded_and_keeps_order():
    tasks = multi_hop_eval(0)
    picked = sample_tasks(tasks, 10, seed=1)
    assert picked == sample_tasks(tasks, 10, seed=1) and len(picked) == 10
    assert [tasks.index(t) for t in picked] == sorted(tasks.index(t) for t in picked)
    assert sample_tasks(tasks, 10_000) == tasks


def test_every_training_trace_fits_the_recorded_models_context():
    from llmcourse.tokenizer import Tokenizer

    runs = Path(__file__).resolve().parents[1] / "book" / "runs"
    tokenizer = add_tool_tokens(Tokenizer.load(runs / "cpu-tiny" / "tokenizer.json"))
    block_size = json.loads((runs / "cpu-tiny" / "run.json").read_text())["config"]["block_size"]
    config = get_agent_config("cpu-agent")
    longest = max(len(render_tool_chat(tokenizer, chat)[0]) for chat in itertools.islice(agent_chats(config), 3000))
    assert longest <= block_size + 1  # a row holds block_size inputs and their last target
