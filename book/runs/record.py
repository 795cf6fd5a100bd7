"""Record the training runs that chapter 10 shows.

A page of the book must execute in under a minute, and a pretraining run takes several, so the
page reads runs recorded by this script instead of training live. Everything here is the
package's own Trainer, run with the package's own configs; each run folder keeps how it was made
(the command, the commit, the machine, the time it took) in run.json:

    .venv/bin/python book/runs/record.py pretrain   # cpu-tiny, samples at log-spaced steps -> book/runs/cpu-tiny/
    .venv/bin/python book/runs/record.py scaling    # three model sizes, same data and steps -> book/runs/scaling/

tests/test_runs.py fails when the recorded cpu-tiny run no longer matches CONFIGS["cpu-tiny"],
so changing the config means recording again.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
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


def _trainer(config: TrainConfig, progress: bool) -> tuple[Trainer, float]:
    started = time.perf_counter()
    trainer = Trainer(config, progress=progress)  # tokenizes the corpus the first time (cached after)
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
        "train_tokens": len(trainer.train_tokens),
        "val_tokens": len(trainer.val_tokens),
        "steps": trainer.step,
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "machine": _machine(),
        "commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    _write_json(out_dir / "run.json", record)
    return record


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
    parser.add_argument("which", choices=("pretrain", "scaling"))
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, as for pretrain")
    parser.add_argument("--out", type=Path, help="default: book/runs/cpu-tiny or book/runs/scaling")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.which == "pretrain":
        record = record_pretrain(args.out or RUNS / "cpu-tiny", args.overrides, not args.no_progress)
        print(f"{record['steps']} steps in {record['train_seconds']} s")
    else:
        for size, record in record_scaling(args.out or RUNS / "scaling", args.overrides, not args.no_progress).items():
            print(f"{size}: {record['params']:,} parameters, {record['train_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
