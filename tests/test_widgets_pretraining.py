"""Chapter 10's recorded-run reader, figures and explorer, driven without a kernel.

Most tests build a run folder by hand (known numbers, so every value read back can be checked);
one records a real, tiny run with book/runs/record.py, the script that makes the book's runs, so
the reader is tested against the files that script actually writes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.figure import Figure

from llmcourse.widgets.pretraining import (
    RecordedRun,
    RunExplorer,
    compute_frontier,
    ddp_figure,
    loss_curve_figure,
    run_explorer,
    sample_html,
    samples_table_html,
    scaling_figure,
)

PROMPTS = ("", "Once upon a time")


def write_run(folder: Path, *, params: int = 1000, flops_per_token: int = 6000, tokens_per_step: int = 64,
              val_losses=(5.0, 4.0, 3.5), eval_every: int = 10, samples: bool = True) -> Path:
    """A run folder like record.py writes: run.json, metrics.jsonl and samples.json."""
    folder.mkdir(parents=True)
    steps = eval_every * len(val_losses)
    info = {"config": {"vocab_size": 256}, "params": params, "non_embedding_params": params // 2,
            "flops_per_token": flops_per_token, "tokens_per_step": tokens_per_step, "steps": steps}
    (folder / "run.json").write_text(json.dumps(info))
    records = []
    for step in range(1, steps + 1):
        if step % 5 == 0:  # log_every = 5
            records.append({"step": step, "tokens": step * tokens_per_step, "loss": 6.0 - step / steps,
                            "lr": 1e-3 * step / steps, "grad_norm": 1.0, "tokens_per_s": 100.0})
        if step % eval_every == 0:
            val = val_losses[step // eval_every - 1]
            records.append({"step": step, "train_loss": val - 0.1, "val_loss": val})
    records.append({"step": steps, "sample": "a sample record, ignored by the reader"})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if samples:
        recorded = [{"step": s, "tokens": s * tokens_per_step, "prompt": p, "sample": f"text<{s}> & {p!r}"}
                    for s in (0, 10, steps) for p in PROMPTS]
        (folder / "samples.json").write_text(json.dumps(recorded))
    return folder


def test_a_run_folder_is_read_back_exactly(tmp_path):
    run = RecordedRun.load(write_run(tmp_path / "run"))
    assert isinstance(run, RecordedRun)
    assert [r["step"] for r in run.steps] == [5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in run.evals] == [10, 20, 30]
    steps, val = run.curve("val_loss")
    np.testing.assert_array_equal(steps, [10, 20, 30])
    np.testing.assert_array_equal(val, [5.0, 4.0, 3.5])
    assert run.final_val_loss == 3.5
    assert run.sample_steps == [0, 10, 30] and run.prompts == list(PROMPTS)
    assert run.sample(10, "Once upon a time")["tokens"] == 640
    assert run.training_flops(30) == 6000 * 64 * 30
    with pytest.raises(KeyError, match="no sample at step 11"):
        run.sample(11)
    with pytest.raises(KeyError, match="mfu"):
        run.curve("mfu")


def test_loss_near_takes_the_nearest_logged_step_and_none_before_training(tmp_path):
    run = RecordedRun.load(write_run(tmp_path / "run"))
    assert run.loss_near(0) is None
    assert run.loss_near(10) == (10, pytest.approx(6.0 - 10 / 30))
    assert run.loss_near(12)[0] == 10 and run.loss_near(13)[0] == 15
    assert run.loss_near(1000)[0] == 30


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="run.json"):
        RecordedRun.load(tmp_path)
    folder = write_run(tmp_path / "run")
    (folder / "metrics.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match="metrics"):
        RecordedRun.load(folder)


def test_compute_frontier_is_the_lower_envelope(tmp_path):
    # "small" is cheap per token and stalls; "big" costs 3x more per token and overtakes it while both run.
    small = RecordedRun.load(write_run(tmp_path / "small", flops_per_token=1000, val_losses=(4.0, 3.6, 3.5, 3.45)))
    big = RecordedRun.load(write_run(tmp_path / "big", flops_per_token=3000, val_losses=(3.6, 2.5, 2.3, 2.2)))
    compute, best, winner = compute_frontier({"small": small, "big": big}, points=400)
    assert winner[0] == "small" and winner[-1] == "big"
    switch = winner.index("big")
    assert all(w == "small" for w in winner[:switch]) and all(w == "big" for w in winner[switch:])
    assert compute[switch] < small.training_flops(40)  # the crossing happens where both runs have evals
    for name, run in (("small", small), ("big", big)):  # never above either run where it is defined
        steps, val = run.curve("val_loss")
        x = np.log(run.training_flops(steps))
        inside = (np.log(compute) >= x[0]) & (np.log(compute) <= x[-1])
        assert np.all(best[inside] <= np.interp(np.log(compute[inside]), x, val) + 1e-12)
    assert compute[0] == pytest.approx(small.training_flops(10)) and compute[-1] == pytest.approx(big.training_flops(40))
    # Runs that do not overlap leave a gap: no loss, no winner there.
    far = RecordedRun.load(write_run(tmp_path / "far", flops_per_token=100_000))
    compute, best, winner = compute_frontier({"small": small, "far": far})
    gap = (compute > small.training_flops(40)) & (compute < far.training_flops(10))
    assert gap.any() and np.all(np.isinf(best[gap])) and {winner[i] for i in np.flatnonzero(gap)} == {""}


def test_figures_draw_what_they_are_given(tmp_path):
    run = RecordedRun.load(write_run(tmp_path / "run"))
    fig = loss_curve_figure(run, step=10)
    assert isinstance(fig, Figure)
    ax, lr_ax = fig.axes
    assert len(ax.lines) == 4  # batch loss, eval train, eval val, the marker
    np.testing.assert_array_equal(ax.lines[2].get_ydata(), [5.0, 4.0, 3.5])
    assert list(ax.lines[3].get_xdata()) == [10, 10]
    assert max(lr_ax.lines[0].get_ydata()) == pytest.approx(1e-3)
    log_axes = loss_curve_figure(run, step=0, log_x=True, log_y=True).axes[0]
    assert log_axes.get_xscale() == "log" and log_axes.get_yscale() == "log"
    other = RecordedRun.load(write_run(tmp_path / "other", params=4000, val_losses=(4.5, 3.5, 3.0)))
    fig = scaling_figure({"s": run, "m": other})
    ax_params, ax_compute = fig.axes
    assert ax_params.get_xscale() == "log" and ax_compute.get_xscale() == "log"
    assert len(ax_compute.lines) == 3  # two runs and the envelope
    np.testing.assert_array_equal(ax_params.lines[0].get_ydata(), [3.5, 3.0])  # final losses, in order
    with pytest.raises(ValueError, match=r"world_size=0 must be an integer >= 1 \(the number of GPUs\)"):
        ddp_figure(world_size=0)
    diagram = ddp_figure(world_size=2, grad_accum_steps=3, batch_size=4)
    texts = [t.get_text() for t in diagram.axes[0].texts]
    assert texts.count("micro-batch 3\nforward + backward") == 2 and "windows 4-7\nof each global batch" in texts


def test_samples_are_escaped_and_tabled(tmp_path):
    run = RecordedRun.load(write_run(tmp_path / "run"))
    block = sample_html(run.sample(10, "Once upon a time"))
    assert "text&lt;10&gt; &amp;" in block and "<b" in block and "Once upon a time" in block
    assert "(new document)" in sample_html(run.sample(0, ""))
    table = samples_table_html(run, "")
    assert table.count("<tr>") == 4  # header + 3 steps
    assert f"ln V = {math.log(256):.2f}" in table  # step 0: the untrained model's loss


def test_explorer_follows_its_controls(tmp_path):
    explorer = run_explorer(write_run(tmp_path / "run"))
    assert isinstance(explorer, RunExplorer)
    assert explorer.step == 30 and explorer.record["prompt"] == ""
    assert explorer.chart.value[:4] == b"\x89PNG"
    assert "text&lt;30&gt;" in explorer.text.value and "step 30" in explorer.message
    explorer.step_slider.value = 10  # what dragging the slider does
    assert explorer.record == explorer.run.sample(10, "") and explorer.loss[0] == 10
    assert "640 tokens" in explorer.message
    explorer.prompt.value = "Once upon a time"
    assert explorer.record["prompt"] == "Once upon a time" and "Once upon a time" in explorer.text.value
    explorer.step_slider.value = 0
    assert explorer.loss is None and "untrained" in explorer.message
    assert list(explorer.figure.axes[0].lines[-1].get_xdata()) == [1, 1]  # log x: step 0 drawn at 1


def test_explorer_refuses_what_was_not_recorded(tmp_path):
    folder = write_run(tmp_path / "run")
    with pytest.raises(ValueError, match="step 7 has no recorded sample"):
        RunExplorer(folder, step=7)
    with pytest.raises(ValueError, match="was not recorded"):
        RunExplorer(folder, prompt="Hello")
    with pytest.raises(ValueError, match="no samples.json"):
        RunExplorer(write_run(tmp_path / "bare", samples=False))


def test_a_real_tiny_recording_reads_back(tmp_path, record_script):
    record = record_script
    overrides = ["max_steps=12", "corpus_chars=60000", "vocab_size=300", "eval_every=4", "eval_batches=2",
                 "warmup_steps=2", "batch_size=4", "block_size=32", "log_every=2", "model.n_layer=1",
                 "model.n_embd=32", "model.n_head=2", "sample_every=0", "checkpoint_every=0", "device=cpu",
                 f"data_dir={tmp_path / 'data'}"]
    record.record_pretrain(tmp_path / "run", overrides, progress=False)
    run = RecordedRun.load(tmp_path / "run")
    assert run.info["steps"] == 12 and run.info["config"]["max_steps"] == 12
    assert run.sample_steps == [0, 10, 12] and run.prompts == list(record.PROMPTS)
    assert [r["step"] for r in run.evals] == [4, 8, 12]
    assert run.steps[-1]["tokens"] == 12 * run.info["tokens_per_step"]
    explorer = RunExplorer(run, step=10, prompt=record.PROMPTS[1])
    assert explorer.record["sample"] == run.sample(10, record.PROMPTS[1])["sample"]
    assert explorer.loss == (10, pytest.approx(run.steps[4]["loss"]))
