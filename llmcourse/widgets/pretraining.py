"""The recorded pretraining run of chapter 10: its loss curve, its samples, and the scaling study.

A recorded run is a folder written by `book/runs/record.py` (the package's own Trainer, run with
the package's own config):

    run.json       how the run was made: command, config, params, flops_per_token, machine, time
    metrics.jsonl  the Trainer's log (`llmcourse.runs.read_metrics`): step, eval and sample records
    samples.json   optional: [{step, tokens, prompt, sample}] at a few steps during the run

`RecordedRun.load(folder)` reads one; `loss_curve_figure` draws its curves, `sample_html` shows what
it wrote at one step, `scaling_figure` compares the runs of several model sizes, and `RunExplorer`
is the step slider that ties the curve and the samples together. Everything here reads files, so
the pictures are the same on the website (no kernel) and in Jupyter.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from llmcourse.checks import check_int
from llmcourse.plots import figure_to_png
from llmcourse.runs import read_metrics
from llmcourse.widgets.explorer import Explorer

RUN_INFO_NAME = "run.json"
SAMPLES_NAME = "samples.json"
SIZE_COLORS = ("C0", "C1", "C2", "C3", "C4", "C5")


# ---------------------------------------------------------------------------------- a recorded run


@dataclass
class RecordedRun:
    """One recorded training run, read from its folder.

    info     run.json as a dict (config, params, flops_per_token, tokens_per_step, steps, machine...)
    steps    step records, oldest first: {step, tokens, loss, lr, grad_norm, tokens_per_s}
    evals    eval records: {step, train_loss, val_loss}
    samples  samples.json's records {step, tokens, prompt, sample} ([] when the run has none)
    """

    folder: Path
    info: dict[str, Any]
    steps: list[dict[str, Any]]
    evals: list[dict[str, Any]]
    samples: list[dict[str, Any]]

    @classmethod
    def load(cls, folder: str | os.PathLike) -> RecordedRun:
        """Read run.json, metrics.jsonl and (if present) samples.json from `folder`."""
        folder = Path(folder)
        info_path = folder / RUN_INFO_NAME
        if not info_path.is_file():
            raise FileNotFoundError(f"no {RUN_INFO_NAME} in {folder}; record the run first "
                                    "(python book/runs/record.py pretrain) or pass the run's folder")
        info = json.loads(info_path.read_text(encoding="utf-8"))
        records = read_metrics(folder)
        samples_path = folder / SAMPLES_NAME
        samples = json.loads(samples_path.read_text(encoding="utf-8")) if samples_path.is_file() else []
        return cls(
            folder=folder,
            info=info,
            steps=[r for r in records if "loss" in r],
            evals=[r for r in records if "val_loss" in r],
            samples=samples,
        )

    # ------------------------------------------------------------------ curves as arrays

    def curve(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of one logged quantity: "loss", "lr", "grad_norm", "tokens_per_s"
        (step records) or "train_loss", "val_loss" (eval records)."""
        records = self.evals if key in ("train_loss", "val_loss") else self.steps
        kept = [r for r in records if key in r]
        if not kept:
            raise KeyError(f"{self.folder}: no record has {key!r}")
        return np.array([r["step"] for r in kept]), np.array([r[key] for r in kept], dtype=float)

    @property
    def final_val_loss(self) -> float:
        """The validation loss of the last evaluation."""
        if not self.evals:
            raise ValueError(f"{self.folder}: the run logged no evaluation (eval_every=0?)")
        return float(self.evals[-1]["val_loss"])

    def training_flops(self, step: int | np.ndarray) -> float | np.ndarray:
        """Training compute spent by `step`: flops_per_token x tokens seen (6N + attention per token)."""
        return self.info["flops_per_token"] * self.info["tokens_per_step"] * np.asarray(step, dtype=float)

    # ------------------------------------------------------------------ samples

    @property
    def sample_steps(self) -> list[int]:
        """The steps at which samples were recorded, in order."""
        return sorted({s["step"] for s in self.samples})

    @property
    def prompts(self) -> list[str]:
        """The recorded prompts, in the order they first appear ("" = a new document)."""
        return list(dict.fromkeys(s["prompt"] for s in self.samples))

    def sample(self, step: int, prompt: str = "") -> dict[str, Any]:
        """The sample record written at `step` for `prompt`."""
        for record in self.samples:
            if record["step"] == step and record["prompt"] == prompt:
                return record
        raise KeyError(f"no sample at step {step} for prompt {prompt!r}; recorded steps: {self.sample_steps}, "
                       f"prompts: {self.prompts}")

    def loss_near(self, step: int) -> tuple[int, float] | None:
        """(logged step, training loss) of the step record nearest `step`; None at step 0, before
        any training (a fresh model's loss is about ln V, chapter 09)."""
        if step <= 0 or not self.steps:
            return None
        nearest = min(self.steps, key=lambda r: (abs(r["step"] - step), r["step"]))
        return nearest["step"], float(nearest["loss"])


# ---------------------------------------------------------------------------------- figures


def loss_curve_figure(run: RecordedRun, *, step: int | None = None, log_x: bool = False, log_y: bool = False,
                      title: str | None = None, figsize: tuple[float, float] = (8.0, 4.0)) -> Figure:
    """The run's training loss (every logged step, light), its evaluations (train and validation,
    markers) and the learning rate (right axis). `step` draws a marker line there; `log_x` and
    `log_y` put the steps or the loss on a log scale (step 0 is then drawn at step 1)."""
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    steps, losses = run.curve("loss")
    ax.plot(steps, losses, color="0.65", linewidth=0.9, label="training loss (one batch)")
    if run.evals:
        eval_steps, train_losses = run.curve("train_loss")
        ax.plot(eval_steps, train_losses, "o-", color="C0", markersize=4, label="train (eval batches)")
        ax.plot(eval_steps, run.curve("val_loss")[1], "s-", color="C1", markersize=4, label="validation")
    if step is not None:
        ax.axvline(max(step, 1) if log_x else step, color="C3", linestyle="--", linewidth=1.2,
                   label=f"step {step}")
    ax.set_xlabel("optimizer step" + (" (log scale)" if log_x else ""))
    ax.set_ylabel("loss (nats per token)" + (", log scale" if log_y else ""))
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))  # 0.2, 0.5, 1, 2, 5: readable losses
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
    lr_ax = ax.twinx()
    lr_steps, lrs = run.curve("lr")
    lr_ax.plot(lr_steps, lrs, color="C2", linewidth=1.0, alpha=0.7, label="learning rate")
    lr_ax.set_ylabel("learning rate", color="C2")
    lr_ax.tick_params(axis="y", colors="C2")
    lr_ax.set_ylim(0, max(lrs) * 1.1)
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    handles, labels = ax.get_legend_handles_labels()
    lr_handles, lr_labels = lr_ax.get_legend_handles_labels()
    ax.legend(handles + lr_handles, labels + lr_labels, fontsize=8, loc="upper right")
    ax.set_title(title or f"Pretraining {run.info.get('params', 0):,} parameters on TinyWorld")
    return fig


def compute_frontier(runs: Mapping[str, RecordedRun], points: int = 200) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The lowest validation loss any run reached with a given training compute.

    Each run's eval curve is interpolated in log(compute) between its first and last evaluation;
    returns (compute grid, best loss, name of the best run) at `points` log-spaced budgets from the
    first evaluation of any run to the last. Where no run has evaluations (a gap between runs that
    do not overlap) the loss is inf and the name "".
    """
    curves = {}
    for name, run in runs.items():
        steps, val = run.curve("val_loss")
        curves[name] = (np.log(run.training_flops(steps)), val)
    low = min(x[0] for x, _ in curves.values())
    high = max(x[-1] for x, _ in curves.values())
    grid = np.linspace(low, high, points)
    best = np.full(points, np.inf)
    winner = [""] * points
    for name, (x, y) in curves.items():
        inside = (grid >= x[0]) & (grid <= x[-1])
        values = np.interp(grid, x, y)
        for i in np.flatnonzero(inside & (values < best)):
            best[i], winner[i] = values[i], name
    return np.exp(grid), best, winner


def scaling_figure(runs: Mapping[str, RecordedRun], *, title: str | None = None) -> Figure:
    """Left: final validation loss against non-embedding parameters (log x). Right: validation loss
    against training compute (FLOPs, log x), one curve per model size, with the lower envelope."""
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    ax_params, ax_compute = fig.subplots(1, 2)
    names = list(runs)
    params = [runs[n].info["non_embedding_params"] for n in names]
    finals = [runs[n].final_val_loss for n in names]
    ax_params.plot(params, finals, "-", color="0.6", zorder=1)
    for i, name in enumerate(names):
        color = SIZE_COLORS[i % len(SIZE_COLORS)]
        ax_params.scatter(params[i], finals[i], color=color, s=50, zorder=2)
        ax_params.annotate(name, (params[i], finals[i]), textcoords="offset points", xytext=(7, 5), fontsize=9)
        run = runs[name]
        steps, val = run.curve("val_loss")
        ax_compute.plot(run.training_flops(steps), val, "o-", color=color, markersize=3,
                        label=f"{name} ({run.info['params']:,} params)")
    compute, best, _ = compute_frontier(runs)
    ax_compute.plot(compute, best, color="0.5", linewidth=7, alpha=0.3, zorder=0,
                    label="lowest loss at this compute")
    ax_params.set_xscale("log")
    ax_params.set_xticks(params, [f"{n / 1e3:,.0f}k" for n in params])
    ax_params.xaxis.set_minor_formatter(NullFormatter())
    ax_params.set_xlim(min(params) / 1.6, max(params) * 1.6)
    ax_params.set_xlabel("non-embedding parameters (log scale)")
    ax_params.set_ylabel("final validation loss (nats per token)")
    ax_params.set_title("Final loss against model size")
    ax_compute.set_xscale("log")
    ax_compute.set_xlabel("training FLOPs = flops_per_token x tokens seen (log scale)")
    ax_compute.set_ylabel("validation loss (nats per token)")
    ax_compute.set_title("Loss against training compute")
    ax_compute.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def ddp_figure(world_size: int = 4, grad_accum_steps: int = 2, batch_size: int = 16) -> Figure:
    """One optimizer step of data-parallel training, drawn: the global batch cut into one slice per
    rank, each rank's micro-batches (forward + backward), the gradient all-reduce, the same update."""
    check_int("world_size", world_size, 1, hint="the number of GPUs")
    check_int("grad_accum_steps", grad_accum_steps, 1)
    check_int("batch_size", batch_size, 1)
    fig = Figure(figsize=(10.0, 1.0 + 0.8 * world_size), layout="constrained")
    ax = fig.add_subplot()
    micro_width, gap = 1.7, 0.15
    reduce_x = 2.7 + grad_accum_steps * (micro_width + gap)
    for rank in range(world_size):
        y = world_size - 1 - rank
        first, last = rank * batch_size, (rank + 1) * batch_size - 1
        _draw_box(ax, 0.0, y, 2.4, f"windows {first}-{last}\nof each global batch", "#dde6f3")
        for micro in range(grad_accum_steps):
            _draw_box(ax, 2.7 + micro * (micro_width + gap), y, micro_width,
                      f"micro-batch {micro + 1}\nforward + backward", "#fbe3c8")
        _draw_box(ax, reduce_x + 1.9, y, 2.0, "clip + AdamW step\n(the same update)", "#d9efd9")
        ax.text(-0.15, y + 0.35, f"rank {rank}", ha="right", va="center", fontsize=9)
    _draw_box(ax, reduce_x, 0.0, 1.6, "all-reduce:\naverage the\ngradients\nof all ranks\n(overlapping the\nlast backward)",
              "#f3d6d6", height=world_size - 0.3)
    ax.set_xlim(-1.0, reduce_x + 4.0)
    ax.set_ylim(-0.1, world_size)
    ax.axis("off")
    ax.set_title(f"One optimizer step on {world_size} GPUs: every micro-batch is one global batch of "
                 f"{world_size * batch_size} windows, each rank takes its {batch_size}", fontsize=10)
    return fig


def _draw_box(ax, x: float, y: float, width: float, text: str, color: str, height: float = 0.7) -> None:
    """A rounded box at (x, y) with `text` centred in it."""
    ax.add_patch(FancyBboxPatch((x, y), width, height, boxstyle="round,pad=0.02", facecolor=color,
                                edgecolor="0.4", linewidth=0.8))
    ax.text(x + width / 2, y + height / 2, text, ha="center", va="center", fontsize=8)


# ---------------------------------------------------------------------------------- samples as HTML


_SAMPLE_STYLE = ("font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.85em; "
                 "white-space: pre-wrap; padding: 6px 8px; border-left: 3px solid #4c72b0; "
                 "background: #f6f8fa; margin: 2px 0")


def _loss_label(run: RecordedRun, step: int) -> str:
    near = run.loss_near(step)
    vocab = run.info.get("config", {}).get("vocab_size")
    if near is None:
        return f"≈ ln V = {math.log(vocab):.2f} (untrained)" if vocab else "untrained"
    logged_step, loss = near
    return f"{loss:.2f}" + ("" if logged_step == step else f" (step {logged_step})")


def sample_html(record: Mapping[str, Any]) -> str:
    """One sample as a block: the prompt in grey bold, the model's continuation after it."""
    prompt = html.escape(record["prompt"])
    text = html.escape(record["sample"])
    shown_prompt = f'<b style="color:#777">{prompt}</b>' if prompt else '<i style="color:#999">(new document)</i> '
    return f'<div style="{_SAMPLE_STYLE}">{shown_prompt}{text}</div>'


def samples_table_html(run: RecordedRun, prompt: str = "", steps: Sequence[int] | None = None) -> str:
    """An HTML table of what the model wrote for `prompt` at each recorded step (default: all),
    with the tokens it had seen and the training loss logged nearest that step."""
    rows = []
    for step in steps if steps is not None else run.sample_steps:
        record = run.sample(step, prompt)
        rows.append(
            f"<tr><td style='text-align:right'>{step:,}</td><td style='text-align:right'>{record['tokens']:,}</td>"
            f"<td>{html.escape(_loss_label(run, step))}</td><td style='text-align:left'>{sample_html(record)}</td></tr>"
        )
    header = ("<tr><th>step</th><th>tokens seen</th><th>training loss</th>"
              "<th style='text-align:left'>what the model wrote</th></tr>")
    return f"<table style='border-collapse: collapse'>{header}{''.join(rows)}</table>"


# ---------------------------------------------------------------------------------- the explorer


class RunExplorer(Explorer):
    """Scrub through a recorded run: a step slider over the steps that have samples, a prompt choice.

    Shows the loss curve with a marker at the chosen step and what the model wrote there.
    State after any change: `step`, `record` (the sample record shown), `loss` ((logged step,
    training loss) nearest the step, or None at step 0) and `figure`.
    """

    def __init__(self, run: RecordedRun | str | os.PathLike, *, step: int | None = None, prompt: str | None = None,
                 log_x: bool = True) -> None:
        self.run = run if isinstance(run, RecordedRun) else RecordedRun.load(run)
        if not self.run.samples:
            raise ValueError(f"{self.run.folder} has no {SAMPLES_NAME}; the explorer needs a run recorded "
                             "with samples (record.py pretrain)")
        steps = self.run.sample_steps
        if step is not None and step not in steps:
            raise ValueError(f"step {step} has no recorded sample; choose one of {steps}")
        prompts = self.run.prompts
        if prompt is not None and prompt not in prompts:
            raise ValueError(f"prompt {prompt!r} was not recorded; choose one of {prompts}")
        self.log_x = log_x
        self.record: dict[str, Any] = {}
        self.loss: tuple[int, float] | None = None
        self.figure: Figure | None = None
        self.step_slider = widgets.SelectionSlider(options=steps, value=steps[-1] if step is None else step,
                                                   description="step", continuous_update=False)
        self.prompt = widgets.Dropdown(options=[(repr(p) if p else "(new document)", p) for p in prompts],
                                       value=prompts[0] if prompt is None else prompt, description="prompt")
        self.status = widgets.HTML()
        self.chart = widgets.Image(format="png")
        self.text = widgets.HTML()
        self.watch(self.step_slider, self.prompt)
        super().__init__([widgets.HBox([self.step_slider, self.prompt]), self.status, self.chart, self.text])
        self.refresh()

    @property
    def step(self) -> int:
        return self.step_slider.value

    def refresh(self) -> None:
        """Redraw the curve with its marker and show the sample at the current step and prompt."""
        self.record = self.run.sample(self.step, self.prompt.value)
        self.loss = self.run.loss_near(self.step)
        self.figure = loss_curve_figure(self.run, step=self.step, log_x=self.log_x, figsize=(7.0, 3.4))
        self.chart.value = figure_to_png(self.figure, dpi=80)
        self.text.value = sample_html(self.record)
        self.status.value = (f"step {self.step:,}: {self.record['tokens']:,} tokens seen, "
                             f"training loss {html.escape(_loss_label(self.run, self.step))}")


# The name the book uses.
run_explorer = RunExplorer
