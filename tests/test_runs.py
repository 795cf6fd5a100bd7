"""Tests for the recorded runs that chapter 10 shows (book/runs/) and the script that records them.

The page reads these files instead of training, so they must be what the package's current
config produces (else the page is stale) and real (the weights predict TinyWorld text).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch

from llmcourse.data.download import corpus
from llmcourse.tokenizer import ENDOFTEXT
from llmcourse.runs import load_model, read_metrics
from llmcourse.train import Trainer
from llmcourse.train_config import CONFIGS, from_overrides

RUNS = Path(__file__).resolve().parents[1] / "book" / "runs"


def without_out_dir(config: dict) -> dict:
    return {key: value for key, value in config.items() if key != "out_dir"}


# ----------------------------------------------------------------------------- the recorded runs


def test_the_recorded_run_is_the_current_cpu_tiny_config():
    run = json.loads((RUNS / "cpu-tiny" / "run.json").read_text())
    current = without_out_dir(dataclasses.asdict(CONFIGS["cpu-tiny"]))
    assert without_out_dir(run["config"]) == current, (
        "CONFIGS['cpu-tiny'] changed since book/runs/cpu-tiny was recorded: run "
        "`.venv/bin/python book/runs/record.py pretrain` and commit the new run")
    assert run["steps"] == current["max_steps"]
    validation_share = run["val_tokens"] / (run["train_tokens"] + run["val_tokens"])
    assert abs(validation_share - current["val_fraction"]) < 1e-3


def test_the_recorded_run_learned_and_its_samples_cover_the_run():
    metrics = read_metrics(RUNS / "cpu-tiny")
    val = [record["val_loss"] for record in metrics if "val_loss" in record]
    assert len(val) >= 5 and all(later < earlier for earlier, later in zip(val, val[1:]))
    assert val[-1] < 0.6 < math.log(1024)  # far below guessing uniformly among 1024 tokens
    samples = json.loads((RUNS / "cpu-tiny" / "samples.json").read_text())
    steps = sorted({sample["step"] for sample in samples})
    assert steps[0] == 0 and steps[-1] == CONFIGS["cpu-tiny"].max_steps


def test_the_recorded_weights_predict_unseen_tinyworld_text():
    """Independent of the run's own log: the saved model's loss on stories of the same world that
    come after everything it was trained or validated on (the corpus is generated in order)."""
    model, tokenizer = load_model(RUNS / "cpu-tiny" / "model.pt", device="cpu")
    trained_chars = CONFIGS["cpu-tiny"].corpus_chars
    unseen = list(corpus("tinyworld", trained_chars + 100_000))[-100:]  # the run stopped at trained_chars
    end = tokenizer.special_tokens[ENDOFTEXT]
    ids = torch.tensor([i for document in unseen for i in [end, *tokenizer.encode_ordinary(document)]])
    block = model.config.block_size
    windows = ids[: (len(ids) - 1) // block * block + 1].unfold(0, block + 1, block)[:32]  # (32, block + 1)
    with torch.no_grad():
        _, loss = model(windows[:, :-1], windows[:, 1:])
    recorded = [record["val_loss"] for record in read_metrics(RUNS / "cpu-tiny") if "val_loss" in record][-1]
    assert abs(loss.item() - recorded) < 0.1
    # loaded for decoding on the CPU: input-major weights (the same values)
    assert model.blocks[0].mlp.fc_in.weight.stride() == (1, model.blocks[0].mlp.fc_in.weight.shape[0])


def test_the_scaling_runs_share_data_and_steps_and_differ_in_size():
    runs = {size: json.loads((RUNS / "scaling" / size / "run.json").read_text())
            for size in ("xs", "s", "m")}
    shared = [{k: v for k, v in without_out_dir(run["config"]).items() if k not in ("model", "max_steps")}
              for run in runs.values()]
    assert runs["xs"]["steps"] == runs["s"]["steps"] == runs["m"]["steps"]
    assert shared[0] == shared[1] == shared[2]
    params = [run["params"] for run in runs.values()]
    assert params == sorted(params) and len(set(params)) == 3
    final = [[r["val_loss"] for r in read_metrics(RUNS / "scaling" / size) if "val_loss" in r][-1] for size in runs]
    assert final == sorted(final, reverse=True)  # bigger is better at equal steps, here
    longer = json.loads((RUNS / "scaling" / "s-long" / "run.json").read_text())
    compute = lambda run: run["flops_per_token"] * run["tokens_per_step"] * run["steps"]  # noqa: E731
    assert longer["params"] == runs["s"]["params"] and abs(compute(longer) / compute(runs["m"]) - 1) < 0.01


# ----------------------------------------------------------------------------- the script


TINY = ["corpus_chars=40000", "vocab_size=300", "batch_size=4", "block_size=16", "max_steps=12",
        "warmup_steps=2", "eval_every=4", "eval_batches=2", "log_every=2", "device=cpu"]


def test_record_pretrain_writes_a_loadable_run_and_sampling_does_not_change_training(tmp_path, record_script):
    record = record_script
    overrides = [*TINY, f"data_dir={tmp_path / 'data'}"]
    run = record.record_pretrain(tmp_path / "run", overrides, progress=False)
    assert run["steps"] == 12 and run["params"] > 0 and run["machine"]["torch"] == torch.__version__
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "metrics.jsonl", "model.pt", "run.json", "samples.json", "tokenizer.json"]
    samples = json.loads((tmp_path / "run" / "samples.json").read_text())
    assert [s["step"] for s in samples] == [step for step in (0, 10, 12) for _ in record.PROMPTS]
    assert all(isinstance(s["sample"], str) for s in samples)
    model, _ = load_model(tmp_path / "run" / "model.pt", device="cpu")
    # The same config trained straight through, without stopping to sample, ends at the same weights.
    straight = Trainer(from_overrides(CONFIGS["cpu-tiny"], [*overrides, f"out_dir={tmp_path / 'straight'}"]),
                       progress=False)
    straight.train()
    for name, value in straight.raw_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    logged = [r["loss"] for r in read_metrics(tmp_path / "run") if "loss" in r]
    assert logged == [r["loss"] for r in read_metrics(tmp_path / "straight") if "loss" in r]


def test_record_scaling_trains_each_size_on_the_same_data(tmp_path, monkeypatch, record_script):
    record = record_script
    monkeypatch.setattr(record, "SCALING_MODELS", {
        "xs": {"n_layer": 1, "n_head": 2, "n_embd": 16}, "s": {"n_layer": 1, "n_head": 2, "n_embd": 32}})
    monkeypatch.setattr(record, "SCALING_LONGER", {"xs-long": ("xs", "s")})
    runs = record.record_scaling(tmp_path, [*TINY, "max_steps=4", f"data_dir={tmp_path / 'data'}"], progress=False)
    assert list(runs) == ["xs", "s", "xs-long"] and runs["xs"]["params"] < runs["s"]["params"]
    for size in ("xs", "s"):
        assert json.loads((tmp_path / size / "run.json").read_text())["config"]["max_steps"] == 4
        assert [r["step"] for r in read_metrics(tmp_path / size) if "val_loss" in r] == [4]
    # xs-long: the xs model for as many steps as s's compute buys (the closest whole number)
    longer = runs["xs-long"]
    assert longer["params"] == runs["xs"]["params"] and longer["steps"] > 4
    compute = lambda run: run["flops_per_token"] * run["tokens_per_step"] * run["steps"]  # noqa: E731
    assert abs(compute(longer) - compute(runs["s"])) <= runs["xs"]["flops_per_token"] * runs["xs"]["tokens_per_step"] / 2


# ----------------------------------------------------------------------------- chapters 13-14


def _fitted(config) -> dict:
    """A fine-tuning config as its run records it: the model settings are the base checkpoint's."""
    recorded = without_out_dir(dataclasses.asdict(config))
    base = json.loads((RUNS / "cpu-tiny" / "run.json").read_text())["config"]
    return recorded | {"model": recorded["model"] or None, "block_size": base["block_size"],
                       "vocab_size": base["vocab_size"]}


def test_the_recorded_finetuning_runs_are_the_current_configs():
    from llmcourse.finetune import FINETUNE_CONFIGS
    from llmcourse.preference_train import PREFERENCE_CONFIGS

    for name, config in {**FINETUNE_CONFIGS, **PREFERENCE_CONFIGS}.items():
        run = json.loads((RUNS / name / "run.json").read_text())
        recorded = without_out_dir(run["config"])
        expected = _fitted(config)
        assert {k: v for k, v in recorded.items() if k != "model"} == {
            k: v for k, v in expected.items() if k != "model"}, (
            f"{name} changed since book/runs/{name} was recorded: run `.venv/bin/python book/runs/record.py "
            f"{'finetune' if name in FINETUNE_CONFIGS else 'preference'}` and commit the new run")
        assert run["steps"] == config.max_steps


def test_the_recorded_finetuned_models_answer_as_their_evaluation_says():
    """The shipped cpu-sft weights, asked again: their answers to a few known questions are right,
    as eval.json records (an independent check that the file and the weights belong together)."""
    from llmcourse.data.tinyworld import World
    from llmcourse.data.tinyworld.chats import questions
    from llmcourse.finetune import answer_questions, grade_questions

    model, tokenizer = load_model(RUNS / "cpu-sft" / "model.pt", device="cpu")
    asked = questions(World.generate(0), "sft")[:40]
    grades = grade_questions(asked, answer_questions(model, tokenizer, asked))
    recorded = json.loads((RUNS / "cpu-sft" / "eval.json").read_text())["models"]["cpu-sft"]["chat"]["sft"]
    assert grades["correct"] >= 0.9 and recorded["correct"] >= 0.9


def test_the_recorded_report_cards_match_the_recorded_answers_and_models():
    """Chapter 15's recordings belong together: every card follows the schema, its accuracy per split
    is the share of correct grades in answers.json, and cpu-sft, asked again, gives the recorded
    replies to the heldout questions (so the files and the shipped weights agree)."""
    from llmcourse.data.tinyworld import World
    from llmcourse.data.tinyworld.chats import questions
    from llmcourse.evaluate import REPORT_SCHEMA, ask

    cards = json.loads((RUNS / "evaluation" / "report_cards.json").read_text())
    answers = json.loads((RUNS / "evaluation" / "answers.json").read_text())
    assert set(cards) == set(answers) == {"cpu-tiny", "cpu-sft", "cpu-lora", "cpu-dpo", "cpu-grpo"}
    for name, card in cards.items():
        assert card["schema"] == REPORT_SCHEMA
        for split, saved in answers[name].items():
            share = saved["grades"].count("correct") / len(saved["grades"])
            assert card["facts"][split]["correct"] == share and card["facts"][split]["n"] == len(saved["grades"])
    model, tokenizer = load_model(RUNS / "cpu-sft" / "model.pt", device="cpu")
    again = ask(model, tokenizer, questions(World.generate(0), "heldout"))  # batched as recorded
    assert again.replies == answers["cpu-sft"]["heldout"]["replies"]
    frequency = json.loads((RUNS / "evaluation" / "frequency.json").read_text())
    assert frequency["after"]["20"]["correct"] > frequency["after"]["1"]["correct"]


def test_the_recorded_levers_cover_every_variant_record_py_makes(record_script):
    levers = json.loads((RUNS / "levers" / "levers.json").read_text())
    names = {"unchanged", *(q[0] for q in record_script.QUANTIZED), *(p[0] for p in record_script.PRUNED)}
    assert set(levers["rows"]) == names
    rows = levers["rows"]
    assert rows["int8"]["bytes"] < rows["unchanged"]["bytes"] / 2  # packed, not float
    assert rows["magnitude 50%"]["bytes"] == rows["unchanged"]["bytes"]  # zeros still take their place
