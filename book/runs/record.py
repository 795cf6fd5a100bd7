"""Record the training runs that chapter 10 shows.

A page of the book must execute in under a minute, and a pretraining run takes several, so the
page reads runs recorded by this script instead of training live. Everything here is the
package's own Trainer, run with the package's own configs; each run folder keeps how it was made
(the command, the commit, the machine, the time it took) in run.json:

    .venv/bin/python book/runs/record.py pretrain   # cpu-tiny, samples at log-spaced steps -> book/runs/cpu-tiny/
    .venv/bin/python book/runs/record.py scaling    # three model sizes, same data and steps -> book/runs/scaling/
    .venv/bin/python book/runs/record.py finetune   # chapter 13: cpu-sft and cpu-lora from cpu-tiny, evaluated
    .venv/bin/python book/runs/record.py finetune-eval   # chapter 13's evaluation again, of the recorded models
    .venv/bin/python book/runs/record.py preference # chapter 14: cpu-dpo and cpu-grpo from cpu-sft, evaluated
    .venv/bin/python book/runs/record.py evaluation # chapter 15: report cards, answers, hallucination vs frequency
    .venv/bin/python book/runs/record.py levers     # chapter 16: cpu-sft quantized and pruned, each graded
    .venv/bin/python book/runs/record.py context    # chapter 16: cpu-rope, extended to 2x and 4x its context
    .venv/bin/python book/runs/record.py induction  # chapter 17: an attention-only model learns to copy
    .venv/bin/python book/runs/record.py agent      # chapter 17: cpu-agent from cpu-sft; with and without tools
    .venv/bin/python book/runs/record.py agent-experiment   # chapter 17's experiment again, of the recorded cpu-agent
    .venv/bin/python book/runs/record.py capstone   # chapter 18: the capstone pipeline, reference and solved parts

tests/test_runs.py fails when the recorded cpu-tiny run no longer matches CONFIGS["cpu-tiny"],
so changing the config means recording again.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import itertools
import json
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from llmcourse.files import atomic_write
from llmcourse.model import count_params
from llmcourse.checkpoint import CHECKPOINT_NAME
from llmcourse.runs import METRICS_NAME, save_weights
from llmcourse.train import Trainer
from llmcourse.train_config import TrainConfig, get_config

RUNS = Path(__file__).resolve().parent
# Samples are taken at these optimizer steps (and at the last): roughly doubling, because the
# model changes fastest at the start (noise, then letters, then words, then sentences).
SNAPSHOT_STEPS = (0, 10, 25, 50, 100, 200, 400, 800)
PROMPTS = ("", "Once upon a time, there was a")  # "": a new document, the model's own choice
# The scaling study: three widths and depths, everything else as in cpu-tiny.
SCALING_MODELS = {
    "xs": {"n_layer": 2, "n_head": 2, "n_embd": 48},
    "s": {"n_layer": 3, "n_head": 3, "n_embd": 96},
    "m": {"n_layer": 4, "n_head": 4, "n_embd": 128},
}
SCALING_OVERRIDES = ("max_steps=600", "warmup_steps=60", "eval_every=50", "sample_every=0", "checkpoint_every=0")
# And one more run: a smaller model given a bigger one's compute (more steps), to test Chinchilla's
# advice that, at equal compute, a smaller model trained on more tokens can beat a bigger one.
# {run name: (model size to train, model size whose compute it gets)}
SCALING_LONGER = {"s-long": ("s", "m")}


def record_pretrain(out_dir: Path, overrides: Sequence[str] = (), progress: bool = True) -> dict:
    """Train cpu-tiny (with `overrides`), sampling PROMPTS at SNAPSHOT_STEPS, into `out_dir`:
    run.json, metrics.jsonl, samples.json, and the final weights (model.pt + tokenizer.json)."""
    with tempfile.TemporaryDirectory(prefix="llmcourse-record-") as work:
        config = get_config("cpu-tiny", [*overrides, f"out_dir={work}"])
        trainer, data_seconds = _trainer(config, progress)
        steps = sorted({step for step in SNAPSHOT_STEPS if step < config.max_steps} | {config.max_steps})
        samples, train_seconds = [], 0.0
        for step in steps:
            started = time.perf_counter()
            trainer.train(steps=step - trainer.step)
            train_seconds += time.perf_counter() - started
            for prompt in PROMPTS:
                samples.append({"step": step, "tokens": step * config.tokens_per_step, "prompt": prompt,
                                "sample": trainer.sample(prompt, max_new_tokens=80)})
        out_dir.mkdir(parents=True, exist_ok=True)
        save_weights(Path(work) / CHECKPOINT_NAME, out_dir / "model.pt")
        _write_json(out_dir / "samples.json", samples)
        return _finish(trainer, out_dir, data_seconds, train_seconds)


def record_scaling(out_dir: Path, overrides: Sequence[str] = (), progress: bool = True) -> dict[str, dict]:
    """Train each of SCALING_MODELS on the same data for the same steps into out_dir/<size>/, then
    each of SCALING_LONGER for as many steps as its compute allows into out_dir/<name>/."""
    base = get_config("cpu-tiny", [*SCALING_OVERRIDES, *overrides])
    records = {size: _record_scaling_run(base, model, base.max_steps, out_dir / size, progress)
               for size, model in SCALING_MODELS.items()}
    for name, (size, compute_of) in SCALING_LONGER.items():
        spent = records[compute_of]["flops_per_token"] * base.tokens_per_step * base.max_steps
        steps = round(spent / (records[size]["flops_per_token"] * base.tokens_per_step))
        records[name] = _record_scaling_run(base, SCALING_MODELS[size], steps, out_dir / name, progress)
    return records


def _record_scaling_run(base: TrainConfig, model: dict, steps: int, out_dir: Path, progress: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="llmcourse-record-") as work:
        config = dataclasses.replace(base, model=model, max_steps=steps, out_dir=work)
        trainer, data_seconds = _trainer(config, progress)
        started = time.perf_counter()
        trainer.train()
        return _finish(trainer, out_dir, data_seconds, time.perf_counter() - started)


# ---------------------------------------------------------------------------------- chapter 13

# The conversations page 13 shows, asked of every model (greedy): known facts, a held-out fact, an
# entity nobody knows, a sum, and a follow-up question in the same chat.
SAMPLE_CHATS = (
    ["What is the capital of Ardmark?"],
    ["What kind of animal is Gabin?", "Where does Gabin live?"],
    ["What does Zerland export?"],
    ["Tell me a story about a fox."],
    ["What is 7 plus 5?"],
)
FINETUNE_RUNS = ("cpu-sft", "cpu-lora")


def record_finetune(out_root: Path, progress: bool = True) -> dict[str, dict]:
    """Fine-tune the book's cpu-tiny weights with FINETUNE_RUNS (full, then LoRA) into
    out_root/<name>/: run.json, metrics.jsonl and the weights (cpu-sft: model.pt; cpu-lora: its
    adapters.pt, small, applied to cpu-tiny's weights when loaded); then evaluate every model,
    the base included, into out_root/cpu-sft/eval.json."""
    from llmcourse.finetune import FinetuneTrainer, get_finetune_config
    from llmcourse.lora import count_parameters

    records, models = {}, {}
    for name in FINETUNE_RUNS:
        with tempfile.TemporaryDirectory(prefix="llmcourse-record-") as work:
            config = get_finetune_config(name, [f"out_dir={work}"])
            trainer, data_seconds = _trainer(config, progress, FinetuneTrainer)
            started = time.perf_counter()
            trainer.train()
            train_seconds = time.perf_counter() - started
            out_dir = out_root / name
            trainer.export(Path(work) / "model.pt")
            out_dir.mkdir(parents=True, exist_ok=True)
            kept = ["adapters.pt"] if config.lora_rank else ["model.pt", "tokenizer.json"]
            for file in kept:
                data = (Path(work) / file).read_bytes()
                atomic_write(out_dir / file, lambda handle, data=data: handle.write(data))
            trainable, total = count_parameters(trainer.raw_model)
            record = _finish(trainer, out_dir, data_seconds, train_seconds)
            record |= {"trainable_params": trainable, "total_params": total,
                       # AdamW keeps two float32 numbers per trained weight, and backward one gradient
                       "optimizer_and_gradient_bytes": 3 * 4 * trainable}
            _write_json(out_dir / "run.json", record)
            records[name] = record
            models[name] = trainer.raw_model.eval()
    _write_json(out_root / "cpu-sft" / "eval.json", evaluate_finetuned(models))
    return records


def recorded_finetuned() -> dict:
    """The recorded chapter-13 models, loaded: cpu-sft's weights, and cpu-tiny with cpu-lora's adapters."""
    from llmcourse.lora import load_adapters
    from llmcourse.runs import load_model

    sft, _ = load_model(RUNS / "cpu-sft" / "model.pt", device="cpu")
    lora, _ = load_model(RUNS / "cpu-tiny" / "model.pt", device="cpu")
    load_adapters(lora, RUNS / "cpu-lora" / "adapters.pt")
    return {"cpu-sft": sft, "cpu-lora": lora.eval()}


def evaluate_finetuned(models: dict, base: bool = True) -> dict:
    """Every model (and, with `base`, cpu-tiny) on the question splits, asked as a chat and, for the
    base, as a sentence to complete; their pretraining validation loss; SAMPLE_CHATS verbatim."""
    from llmcourse.data.prepare import prepare_data, split_tokens
    from llmcourse.data.tinyworld import World
    from llmcourse.data.tinyworld.chats import questions, sums
    from llmcourse.data.tokens import TokenFile
    from llmcourse.finetune import answer_questions, chat_reply, complete_questions, document_loss, grade_questions
    from llmcourse.runs import load_model

    pretrained, tokenizer = load_model(RUNS / "cpu-tiny" / "model.pt", device="cpu")
    models = {"cpu-tiny": pretrained, **models} if base else models
    world = World.generate(0)
    asked = {split: questions(world, split) for split in ("sft", "heldout", "unseen")}
    asked["sums_trained"] = sums(0, split="train")
    asked["sums_new"] = sums(0, split="eval")
    pretraining = get_config("cpu-tiny")
    _, tokens_path = prepare_data(pretraining, progress=False)
    val_tokens = split_tokens(TokenFile.open(tokens_path).tokens, pretraining.val_fraction, pretraining.block_size)[1]
    result: dict = {"questions": {split: len(items) for split, items in asked.items()}, "models": {}}
    for name, model in models.items():
        entry = {"chat": {}, "pretraining_val_loss": document_loss(model, val_tokens), "samples": []}
        for split, items in asked.items():
            replies = answer_questions(model, tokenizer, items)
            entry["chat"][split] = grade_questions(items, replies) | {"examples": replies[:3]}
        if name == "cpu-tiny":
            entry["completion"] = {split: grade_questions(items, complete_questions(model, tokenizer, items))
                                   for split, items in asked.items()}
        for turns in SAMPLE_CHATS:
            messages = []
            for text in turns:
                messages.append({"role": "user", "content": text})
                messages.append({"role": "assistant", "content": chat_reply(model, tokenizer, messages)})
            entry["samples"].append(messages)
        result["models"][name] = entry
    return result


# ---------------------------------------------------------------------------------- chapter 14

PREFERENCE_RUNS = ("cpu-dpo-plain", "cpu-dpo", "cpu-grpo")


def record_preference(out_root: Path, progress: bool = True) -> dict[str, dict]:
    """Tune the recorded cpu-sft model with DPO (plain, and with the chosen replies' own loss) and
    with GRPO into out_root/<name>/ (run.json, metrics.jsonl; no weights: page 14 shows what they
    did, not a model to load), then evaluate cpu-sft and all three into out_root/cpu-dpo/eval.json."""
    from llmcourse.preference_train import DPOTrainer, GRPOTrainer, get_preference_config

    records, models = {}, {}
    for name in PREFERENCE_RUNS:
        with tempfile.TemporaryDirectory(prefix="llmcourse-record-") as work:
            config = get_preference_config(name, [f"out_dir={work}"])
            kind = DPOTrainer if config.method == "dpo" else GRPOTrainer
            trainer, data_seconds = _trainer(config, progress, kind)
            started = time.perf_counter()
            trainer.train()
            records[name] = _finish(trainer, out_root / name, data_seconds, time.perf_counter() - started)
            models[name] = trainer.raw_model.eval()
    from llmcourse.runs import load_model

    models = {"cpu-sft": load_model(RUNS / "cpu-sft" / "model.pt", device="cpu")[0], **models}
    _write_json(out_root / "cpu-dpo" / "eval.json", evaluate_finetuned(models, base=False))
    return records


# ---------------------------------------------------------------------------------- chapter 15

# The models page 15 grades. cpu-dpo and cpu-grpo are trained again from cpu-sft (their runs are
# deterministic; page 14 keeps no weights), cpu-lora is cpu-tiny with its adapters.
EVALUATED = ("cpu-tiny", "cpu-sft", "cpu-lora", "cpu-dpo", "cpu-grpo")
# The hallucination experiment: cpu-tiny read once through facts of another world (each stated
# 1, 2, 5 or 20 times) among its own world's stories, with pretraining's learning-rate schedule.
FREQUENCY_OVERRIDES = ("lr=2e-3", "min_lr=2e-4", "warmup_steps=10", "eval_every=0", "sample_every=0",
                       "checkpoint_every=0")


def record_evaluation(out_dir: Path, progress: bool = True) -> dict:
    """Chapter 15: every EVALUATED model's report card into out_dir/report_cards.json and its graded
    answers with their confidences into out_dir/answers.json; the hallucination-vs-frequency run
    into out_dir/frequency.json; the seconds each took into out_dir/run.json."""
    from llmcourse.evaluate import ask_every_split, frequency_experiment, report_card
    from llmcourse.runs import load_model

    models = _evaluated_models(progress)
    tokenizer = load_model(RUNS / "cpu-tiny" / "model.pt", device="cpu")[1]
    cards, answers, seconds = {}, {}, {}
    for name, model in models.items():
        chat = name != "cpu-tiny"
        started = time.perf_counter()
        asked = ask_every_split(model, tokenizer, chat=chat)  # the card's answers, kept for the page
        cards[name] = report_card(model, tokenizer, chat=chat, answers=asked)
        seconds[name] = round(time.perf_counter() - started, 1)
        answers[name] = {split: split_answers.to_dict() for split, split_answers in asked.items()}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmcourse-record-") as work:
        config = get_config("cpu-tiny", [*FREQUENCY_OVERRIDES, f"out_dir={work}"])
        _, frequency = frequency_experiment(config, tokenizer, model=models["cpu-tiny"], progress=progress)
    frequency |= {"seconds": round(time.perf_counter() - started, 1), "overrides": list(FREQUENCY_OVERRIDES)}
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "report_cards.json", cards)
    _write_json(out_dir / "answers.json", answers)
    _write_json(out_dir / "frequency.json", frequency)
    record = {"report_card_seconds": seconds, "frequency_seconds": frequency["seconds"],
              "command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "commit": _git_commit(),
              "machine": _machine()}
    _write_json(out_dir / "run.json", record)
    return record


def _evaluated_models(progress: bool) -> dict:
    from llmcourse.preference_train import DPOTrainer, GRPOTrainer, get_preference_config

    from llmcourse.runs import load_model

    models = {"cpu-tiny": load_model(RUNS / "cpu-tiny" / "model.pt", device="cpu")[0], **recorded_finetuned()}
    for name in ("cpu-dpo", "cpu-grpo"):
        with tempfile.TemporaryDirectory(prefix="llmcourse-record-") as work:
            config = get_preference_config(name, [f"out_dir={work}"])
            kind = DPOTrainer if config.method == "dpo" else GRPOTrainer
            trainer, _ = _trainer(config, progress, kind)
            trainer.train()
            models[name] = trainer.raw_model.eval()
    return models


# ---------------------------------------------------------------------------------- chapter 16: levers

# Quantized variants of cpu-sft (the assistant one would ship), each graded by chapter 15's report
# card: (name, bits, group_size, method). GPTQ calibrates on CALIBRATION_CHATS rendered SFT chats.
QUANTIZED = (("int8", 8, None, "rtn"), ("int4", 4, None, "rtn"), ("int4 GPTQ", 4, None, "gptq"),
             ("int4 g32", 4, 32, "rtn"), ("int4 g32 GPTQ", 4, 32, "gptq"), ("int3 g32", 3, 32, "rtn"),
             ("int3 g32 GPTQ", 3, 32, "gptq"), ("int2 g32", 2, 32, "rtn"), ("int2 g32 GPTQ", 2, 32, "gptq"))
# Pruned variants: (name, kind, sparsity); magnitude pruning is per layer.
PRUNED = (("magnitude 25%", "magnitude", 0.25), ("magnitude 50%", "magnitude", 0.5),
          ("magnitude 75%", "magnitude", 0.75), ("heads 25%", "heads", 0.25), ("heads 50%", "heads", 0.5),
          ("neurons 25%", "neurons", 0.25), ("neurons 50%", "neurons", 0.5))
CALIBRATION_CHATS = 64


def record_levers(out_dir: Path) -> dict:
    """Chapter 16: cpu-sft quantized (QUANTIZED) and pruned (PRUNED), each variant's report card, size
    in bytes and the seconds it took to make, beside the unchanged model's, into out_dir/levers.json."""
    from llmcourse.compress import apply_masks, head_masks, magnitude_masks, model_bytes, neuron_masks, quantize_model
    from llmcourse.evaluate import report_card
    from llmcourse.runs import load_model

    model, tokenizer = load_model(RUNS / "cpu-sft" / "model.pt", device="cpu")
    calibration = _calibration_rows(tokenizer, model.config.block_size)
    variants = {"unchanged": lambda: model}
    for name, bits, group, method in QUANTIZED:
        variants[name] = lambda bits=bits, group=group, method=method: quantize_model(
            model, bits, group, method, calibration=calibration if method == "gptq" else None)
    masks_of = {"magnitude": magnitude_masks, "heads": head_masks, "neurons": neuron_masks}
    for name, kind, sparsity in PRUNED:
        variants[name] = lambda kind=kind, sparsity=sparsity: _pruned(model, masks_of[kind], sparsity)
    rows = {}
    for name, make in variants.items():
        started = time.perf_counter()
        variant = make()
        made = time.perf_counter() - started
        rows[name] = {"bytes": model_bytes(variant), "seconds_to_make": round(made, 2),
                      "card": report_card(variant, tokenizer, chat=True)}
        print(f"{name}: {rows[name]['bytes']:,} bytes, heldout {rows[name]['card']['facts']['heldout']['correct']:.3f}")
    record = {"model": "cpu-sft", "calibration_tokens": int(calibration.numel()), "rows": rows,
              "command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "commit": _git_commit(),
              "machine": _machine()}
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(out_dir / "levers.json", record)
    return record


def _calibration_rows(tokenizer, block_size: int) -> torch.Tensor:
    """CALIBRATION_CHATS chats from after cpu-sft's training and validation chats, rendered and cut
    or padded to one row of block_size tokens each."""
    from llmcourse.data.tinyworld.chats import chats
    from llmcourse.finetune import render_chat

    eot = tokenizer.special_tokens["<|endoftext|>"]
    rows = []
    for chat in itertools.islice(chats(0), 30_000, 30_000 + CALIBRATION_CHATS):
        ids = render_chat(tokenizer, chat)[0][:block_size]
        rows.append(ids + [eot] * (block_size - len(ids)))
    return torch.tensor(rows)


def _pruned(model, masks_of, sparsity: float):
    from llmcourse.compress import apply_masks

    pruned = copy.deepcopy(model)
    apply_masks(pruned, masks_of(pruned, sparsity)).remove()  # zeroed for good; no training follows
    return pruned


# ---------------------------------------------------------------------------------- chapter 16

# Continued pretraining of cpu-rope at LONG_FACTOR times its context, once per way of extending it
# (Chen et al. 2023 fine-tune position-interpolated models on long windows of pretraining text):
# as many tokens per step as pretraining (rows LONG_FACTOR times longer, LONG_FACTOR times fewer),
# at about pretraining's final learning rate.
LONG_FACTOR = 2
LONG_OVERRIDES = ("max_steps=120", "warmup_steps=12", "lr=2e-4", "min_lr=2e-5", "eval_every=40",
                  "sample_every=0", "checkpoint_every=0")
CONTEXT_FACTORS = (1, 2, 4)  # every model is measured at these multiples of cpu-rope's context
PROBES = 64  # retrieval prompts per length and kind
NEAR_DISTANCE = 48  # "near" retrieval: the story starts this many tokens before its question
CURVE_BUCKET = 16  # positions per point of the recorded loss curves
POSITION_WINDOWS = 64  # held-out windows per loss curve


def record_context(out_root: Path, overrides: Sequence[str] = (), progress: bool = True) -> dict[str, dict]:
    """Pretrain cpu-rope (with `overrides`) into out_root/cpu-rope (run.json, metrics.jsonl, model.pt,
    tokenizer.json); continue its pretraining at LONG_FACTOR times the context, once per extension
    method, into out_root/cpu-rope-long/<method>/ (run.json and metrics.jsonl: the page shows what
    they did, not a model to load); then measure all of them at CONTEXT_FACTORS times the context
    into out_root/cpu-rope/context.json."""
    from llmcourse.context import EXTENSION_METHODS, extend_context

    with tempfile.TemporaryDirectory(prefix="llmcourse-record-") as work:
        config = get_config("cpu-rope", [*overrides, f"out_dir={work}"])
        trainer, data_seconds = _trainer(config, progress)
        started = time.perf_counter()
        trainer.train()
        out_dir = out_root / "cpu-rope"
        records = {"cpu-rope": _finish(trainer, out_dir, data_seconds, time.perf_counter() - started)}
        save_weights(Path(work) / CHECKPOINT_NAME, out_dir / "model.pt")
    base, tokenizer, val_tokens = trainer.raw_model.eval(), trainer.tokenizer, trainer.val_tokens
    models = {("pretrained", method): base for method in EXTENSION_METHODS}
    long_block = LONG_FACTOR * config.block_size
    for method in EXTENSION_METHODS:
        with tempfile.TemporaryDirectory(prefix="llmcourse-record-") as work:
            settings = [*LONG_OVERRIDES, *overrides, f"block_size={long_block}",
                        f"batch_size={max(1, config.batch_size // LONG_FACTOR)}", f"out_dir={work}"]
            extended = extend_context(base, long_block, method)
            trainer, data_seconds = _trainer(get_config("cpu-rope", settings), progress, model=extended)
            started = time.perf_counter()
            trainer.train()
            out_dir = out_root / "cpu-rope-long" / method
            record = _finish(trainer, out_dir, data_seconds, time.perf_counter() - started)
            record["extension"] = {"method": method, "from_block_size": config.block_size,
                                   "rope_base": extended.config.rope_base, "rope_scale": extended.config.rope_scale}
            _write_json(out_dir / "run.json", record)
            records[f"cpu-rope-long/{method}"] = record
            models[("fine-tuned", method)] = trainer.raw_model.eval()
    _write_json(out_root / "cpu-rope" / "context.json",
                evaluate_context(models, tokenizer, val_tokens, config.block_size))
    return records


def evaluate_context(models: dict, tokenizer, val_tokens, block_size: int) -> dict:
    """Each of `models` ({(stage, method): GPT}) at CONTEXT_FACTORS times `block_size`, extended by
    its method where its own context is shorter: the mean held-out loss in each range of positions
    (inside the trained context, then each doubling), its loss curve, and its retrieval accuracy
    with the story NEAR_DISTANCE tokens back ("near") and at the start of the prompt ("far")."""
    from llmcourse.context import extend_context, position_losses, range_means, retrieval_accuracy, retrieval_probe

    lengths = [factor * block_size for factor in CONTEXT_FACTORS]
    probes = {length: {"near": retrieval_probe(tokenizer, PROBES, length, min(NEAR_DISTANCE, length - 1)),
                       "far": retrieval_probe(tokenizer, PROBES, length, length - 1)} for length in lengths}
    rows = []
    for (stage, method), model in models.items():
        for length in lengths:
            extended = model if length <= model.config.block_size else extend_context(model, length, method)
            losses = position_losses(extended, val_tokens, length, n_windows=POSITION_WINDOWS)
            edges = [0, *(edge for edge in lengths if edge <= length)]
            rows.append({
                "model": stage, "method": method, "length": length,
                "rope_base": extended.config.rope_base, "rope_scale": extended.config.rope_scale,
                "loss_by_range": {f"{a}-{b}": loss for a, b, loss in zip(edges, edges[1:], range_means(losses, edges))},
                "loss_curve": range_means(losses, range(0, length + 1, CURVE_BUCKET)),
                **{f"retrieval_{kind}": retrieval_accuracy(extended, probes[length][kind]) for kind in ("near", "far")},
            })
    example = probes[lengths[0]]["near"][0]
    return {
        "block_size": block_size, "long_block_size": LONG_FACTOR * block_size, "lengths": lengths,
        "curve_bucket": CURVE_BUCKET, "position_windows": POSITION_WINDOWS,
        "probes": {"n": PROBES, "near_distance": NEAR_DISTANCE, "chance": 1 / len(example.candidate_ids),
                   "example": {"prompt": tokenizer.decode(example.ids), "answer": example.answer,
                               "distance": example.distance}},
        "rows": rows,
    }


# ---------------------------------------------------------------------------------- chapter 17

AGENT_EVAL_ARITHMETIC = 30  # word problems per operand size (1 to 4 digits)
AGENT_EVAL_MULTI_HOP = 60  # two-hop questions, sampled from the held-out subjects


# What the agent's training budget and its fresh digit rows each buy: cpu-agent trained again with
# one change, asked the word problems with tools.
AGENT_ABLATIONS = {
    "without fresh digit rows": ("refresh_digits=false",),
    "chapter 13's budget (400 steps at lr 5e-4)": ("max_steps=400", "lr=5e-4", "min_lr=5e-5", "warmup_steps=20"),
}


def record_agent(out_root: Path, progress: bool = True) -> dict:
    """Fine-tune the recorded cpu-sft model to call tools (cpu-agent, weights kept in
    out_root/cpu-agent/), then run the chapter's experiment (`record_agent_experiment`)."""
    from llmcourse.agent_train import AgentTrainer, get_agent_config

    with tempfile.TemporaryDirectory(prefix="llmcourse-record-") as work:
        config = get_agent_config("cpu-agent", [f"out_dir={work}"])
        trainer, data_seconds = _trainer(config, progress, AgentTrainer)
        started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - started
        trainer.export(Path(work) / "model.pt")
        out_dir = out_root / "cpu-agent"
        out_dir.mkdir(parents=True, exist_ok=True)
        for file in ("model.pt", "tokenizer.json"):
            data = (Path(work) / file).read_bytes()
            atomic_write(out_dir / file, lambda handle, data=data: handle.write(data))
        record = _finish(trainer, out_dir, data_seconds, train_seconds)
    record_agent_experiment(out_root, progress)
    return record


def record_agent_experiment(out_root: Path, progress: bool = True) -> dict:
    """The same word problems and two-hop questions asked of cpu-sft directly, of cpu-agent with
    its tools banned, and of cpu-agent with its tools (out_root/cpu-agent's weights); then
    AGENT_ABLATIONS. Every reply, grade and transcript into out_root/agent/experiment.json."""
    from llmcourse.agent import format_transcript
    from llmcourse.agent_train import accuracy_table, format_accuracy, get_agent_config, sample_tasks, tool_experiment
    from llmcourse.data.tinyworld.traces import arithmetic_eval, multi_hop_eval
    from llmcourse.runs import load_model

    config = get_agent_config("cpu-agent")
    agent = load_model(out_root / "cpu-agent" / "model.pt", device="cpu")
    chat = load_model(RUNS / "cpu-sft" / "model.pt", device="cpu")
    tasks = (arithmetic_eval(config.world_seed, n_per_size=AGENT_EVAL_ARITHMETIC, digits=(1, 2, 3, 4))
             + sample_tasks(multi_hop_eval(config.world_seed), AGENT_EVAL_MULTI_HOP))
    started = time.perf_counter()
    runs = tool_experiment(chat, agent, tasks, world_seed=config.world_seed, progress=progress)
    tables = {condition: accuracy_table(condition_runs) for condition, condition_runs in runs.items()}
    experiment = {
        "models": {"direct": "cpu-sft", "tools banned": "cpu-agent", "tools": "cpu-agent"},
        "tables": tables,
        "runs": {condition: [{"question": run.task.question, "kind": run.task.kind, "detail": run.task.detail,
                              "values": list(run.task.values), "reply": run.reply, "grade": run.grade,
                              "transcript": run.transcript.messages if run.transcript else None,
                              "finish": run.transcript.finish if run.transcript else None}
                             for run in condition_runs]
                 for condition, condition_runs in runs.items()},
        "experiment_seconds": round(time.perf_counter() - started, 1),
        "machine": _machine(), "commit": _git_commit(),
    }
    experiment["ablations"] = {name: _agent_ablation(overrides, tasks, progress)
                               for name, overrides in AGENT_ABLATIONS.items()}
    experiment["ablation"] = experiment["ablations"]["without fresh digit rows"]  # the first one, as before
    _write_json(out_root / "agent" / "experiment.json", experiment)
    print(format_accuracy(tables))
    for name, ablation in experiment["ablations"].items():
        print(f"{name}: {ablation['table']['all']['correct']:.0%} of the word problems right, first call exact in "
              f"{ablation['calls_exact']}, digit rows' mean cosine {ablation['digit_cosine_after']:.3f}")
    for run in runs["tools"][:: max(1, len(runs["tools"]) // 4)]:
        print(format_transcript(run.transcript), end="\n\n")
    return experiment


def _agent_ablation(overrides: Sequence[str], tasks, progress: bool) -> dict:
    """cpu-agent trained again with `overrides` (no weights kept), asked the arithmetic tasks with tools."""
    from llmcourse.agent import mean_cosine_similarity
    from llmcourse.agent_train import AgentTrainer, accuracy_table, digit_ids, get_agent_config, solve_with_agent

    with tempfile.TemporaryDirectory(prefix="llmcourse-record-") as work:
        config = get_agent_config("cpu-agent", [f"out_dir={work}", "checkpoint_every=0", *overrides])
        trainer, _ = _trainer(config, progress, AgentTrainer)
        started = time.perf_counter()
        losses = trainer.train()
        train_seconds = time.perf_counter() - started
        model, tokenizer = trainer.raw_model.eval(), trainer.tokenizer
    arithmetic = [task for task in tasks if task.kind == "arithmetic"]
    runs = solve_with_agent(model, tokenizer, arithmetic, world_seed=config.world_seed, progress=progress)
    return {"overrides": list(overrides), "train_seconds": round(train_seconds, 1), "final_train_loss": losses[-1],
            "digit_cosine_after": mean_cosine_similarity(model, digit_ids(tokenizer)),
            "table": accuracy_table(runs),
            "calls_exact": sum(bool(run.transcript.calls) and run.transcript.calls[0][0] == run.task.calls[0]
                               for run in runs)}


# ---------------------------------------------------------------------------------- chapter 18

CAPSTONE_EXERCISES = ("02-tokenization", "05-attention", "07-mlp-residual-norm", "09-training", "11-decoding")


def record_capstone(out_dir: Path, progress: bool = True, which: Sequence[str] = ("reference", "all")) -> dict:
    """Run the capstone command's pipeline twice at its CPU config: with the reference parts, and
    with every part taken from the exercise notebooks of a learner who solved them all (the
    solution notebooks, copied into a work folder as `course start` would); write both results
    (parts, stage times, report card, chat) into out_dir/capstone.json. No weights are kept.
    `which` runs one of the two (into the same file, beside a run recorded before), so the two
    can run side by side, each on one thread."""
    import shutil

    from llmcourse.capstone import run_capstone

    results = {}
    with tempfile.TemporaryDirectory(prefix="llmcourse-record-") as work:
        for exercise in CAPSTONE_EXERCISES:
            source = RUNS.parent.parent / "solutions" / exercise / f"{exercise}.ipynb"
            (Path(work) / "work" / exercise).mkdir(parents=True)
            shutil.copyfile(source, Path(work) / "work" / exercise / f"{exercise}.ipynb")
        for parts in which:
            result = run_capstone(Path(work) / "work", Path(work) / f"runs-{parts}", parts=parts, progress=progress)
            results[parts] = {"parts": result.parts, "messages": result.messages, "notes": result.notes,
                              "stage_seconds": {k: round(v, 1) for k, v in result.stage_seconds.items()},
                              "report_card": result.report_card,
                              "chat": [list(turn) for turn in result.chat]}
    path = out_dir / "capstone.json"
    earlier = json.loads(path.read_text(encoding="utf-8"))["runs"] if path.is_file() else {}
    results = {parts: results.get(parts, earlier.get(parts)) for parts in ("reference", "all")
               if parts in results or parts in earlier}
    record = {"runs": results, "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
              "machine": _machine(), "commit": _git_commit(),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    _write_json(out_dir / "capstone.json", record)
    return record


# ---------------------------------------------------------------------------------- chapter 17


def record_induction(out_dir: Path, progress: bool = True) -> dict:
    """Chapter 17: train the default `InductionConfig` attention-only model; write out_dir/model.pt
    and out_dir/history.json (config, per-step history, train seconds, command, commit, machine)."""
    from llmcourse.induction import InductionConfig, save_induction_run, train_induction_model

    config = InductionConfig()
    model, history = train_induction_model(config, progress=progress)
    save_induction_run(out_dir, model, history, config, command=shlex.join([Path(sys.executable).name, *sys.argv]),
                       commit=_git_commit(), machine=_machine(),
                       date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    return {"steps": config.steps, "train_seconds": history.train_seconds,
            "repeat_loss": sum(history.second_half[-50:]) / 50}


def _trainer(config: TrainConfig, progress: bool, kind: type = Trainer, **parts) -> tuple[Trainer, float]:
    started = time.perf_counter()
    trainer = kind(config, progress=progress, **parts)  # tokenizes the corpus the first time (cached after)
    return trainer, time.perf_counter() - started


def _finish(trainer: Trainer, out_dir: Path, data_seconds: float, train_seconds: float) -> dict:
    """Copy the run's metrics into `out_dir` and write its run.json; return that record."""
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = (trainer.out_dir / METRICS_NAME).read_bytes()
    atomic_write(out_dir / METRICS_NAME, lambda file: file.write(metrics))
    config = dataclasses.asdict(trainer.config)
    config["out_dir"] = str(out_dir.relative_to(RUNS.parent.parent) if out_dir.is_relative_to(RUNS.parent.parent)
                            else out_dir)
    model_config = trainer.raw_model.config
    record = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "config": config,
        "params": count_params(model_config),
        "non_embedding_params": count_params(model_config, non_embedding=True),
        "flops_per_token": trainer.flops_per_token,
        "tokens_per_step": trainer.config.tokens_per_step,
        "train_tokens": _token_count(trainer.train_tokens),
        "val_tokens": _token_count(trainer.val_tokens),
        "steps": trainer.step,
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "machine": _machine(),
        "commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_json(out_dir / "run.json", record)
    return record


def _token_count(tokens) -> int:
    """Tokens of a run's data: a flat array of ids, or chats packed into rows (`ChatRows`)."""
    return int(tokens.ids.numel()) if hasattr(tokens, "ids") else len(tokens)


def _machine() -> dict:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "os": platform.system()}


def _git_commit() -> str | None:
    """HEAD's commit, with "+uncommitted changes" when the working tree differs from it."""
    try:
        head, status = (subprocess.run(["git", *args], cwd=RUNS, capture_output=True, text=True, check=True).stdout
                        for args in (["rev-parse", "HEAD"], ["status", "--porcelain", "--untracked-files=no"]))
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.strip() + (" +uncommitted changes" if status.strip() else "")


def _write_json(path: Path, value) -> None:
    text = json.dumps(value, indent=1, ensure_ascii=False) + "\n"
    atomic_write(path, lambda file: file.write(text.encode("utf-8")))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("which", choices=("pretrain", "scaling", "finetune", "finetune-eval", "preference", "evaluation",
                                          "levers", "context", "agent", "agent-experiment",
                                          "capstone", "induction"))
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for pretrain")
    parser.add_argument("--out", type=Path, help="default: book/runs/cpu-tiny or book/runs/scaling")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.which == "pretrain":
        record = record_pretrain(args.out or RUNS / "cpu-tiny", args.overrides, not args.no_progress)
        print(f"{record['steps']} steps in {record['train_seconds']} s")
    elif args.which == "finetune-eval":  # evaluate the recorded chapter-13 models again, without training
        _write_json((args.out or RUNS) / "cpu-sft" / "eval.json", evaluate_finetuned(recorded_finetuned()))
    elif args.which == "preference":
        for name, record in record_preference(args.out or RUNS, not args.no_progress).items():
            print(f"{name}: {record['steps']} steps, {record['train_seconds']} s")
    elif args.which == "evaluation":
        record = record_evaluation(args.out or RUNS / "evaluation", not args.no_progress)
        print(f"report cards {record['report_card_seconds']} s, frequency run {record['frequency_seconds']} s")
    elif args.which == "agent":
        record = record_agent(args.out or RUNS, not args.no_progress)
        print(f"cpu-agent: {record['steps']} steps, {record['train_seconds']} s")
    elif args.which == "agent-experiment":
        record_agent_experiment(args.out or RUNS, not args.no_progress)
    elif args.which == "capstone":
        which = [item.split("=", 1)[1] for item in args.overrides if item.startswith("parts=")] or ["reference", "all"]
        record = record_capstone(args.out or RUNS / "capstone", not args.no_progress, which)
        for parts, run in record["runs"].items():
            print(f"{parts}: {sum(run['stage_seconds'].values()):.0f} s {run['stage_seconds']}")
    elif args.which == "levers":
        record_levers(args.out or RUNS / "levers")
    elif args.which == "context":
        records = record_context(args.out or RUNS, args.overrides, not args.no_progress)
        for name, record in records.items():
            print(f"{name}: {record['steps']} steps, {record['train_seconds']} s")
        results = json.loads(((args.out or RUNS) / "cpu-rope" / "context.json").read_text())
        for row in results["rows"]:
            losses = ", ".join(f"{where} {loss:.3f}" for where, loss in row["loss_by_range"].items())
            print(f"{row['model']:>10} {row['method']:>13} {row['length']:>4}: loss {losses}; "
                  f"retrieval near {row['retrieval_near']:.2f}, far {row['retrieval_far']:.2f}")
    elif args.which == "induction":
        record = record_induction(args.out or RUNS / "induction", not args.no_progress)
        print(f"{record['steps']} steps in {record['train_seconds']} s; repeat loss (last 50 steps) "
              f"{record['repeat_loss']:.3f}")
    elif args.which == "finetune":
        for name, record in record_finetune(args.out or RUNS, not args.no_progress).items():
            print(f"{name}: {record['trainable_params']:,} trained parameters, {record['train_seconds']} s")
    else:
        for size, record in record_scaling(args.out or RUNS / "scaling", args.overrides, not args.no_progress).items():
            print(f"{size}: {record['params']:,} parameters, {record['train_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
