"""The `pretrain` and `sample` commands, end to end on a micro config (seconds on a CPU)."""

from __future__ import annotations

import json

import pytest

from llmcourse.cli import main

MICRO = ["corpus_chars=30000", "vocab_size=300", "batch_size=4", "block_size=16", "max_steps=6",
         "warmup_steps=1", "eval_every=3", "eval_batches=1", "log_every=1", "model.n_layer=1",
         "model.n_head=2", "model.n_embd=32", "sample_every=0", "device=cpu"]


@pytest.fixture
def run(tmp_path):
    return ["--config", "cpu-tiny", *MICRO, f"data_dir={tmp_path / 'data'}", f"out_dir={tmp_path / 'run'}"]


def test_pretrain_then_resume_then_sample(run, tmp_path, capsys):
    assert main(["pretrain", "--no-progress", *run]) == 0
    checkpoint = tmp_path / "run" / "ckpt.pt"
    assert f"checkpoint: {checkpoint}" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == [3, 6]

    assert main(["pretrain", "--no-progress", *run]) == 1
    assert "pass --resume to continue that run" in capsys.readouterr().err
    assert main(["pretrain", "--no-progress", "--resume", *run, "max_steps=8"]) == 0
    assert "resuming" in capsys.readouterr().out
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [step for step in steps if step > 6] == [7, 8, 8]  # step and eval records, appended

    for extra in (["--greedy"], ["--temperature", "0.8", "--seed", "3"]):
        assert main(["sample", "--checkpoint", str(checkpoint), "--prompt", "Once upon",
                     "--max-new-tokens", "8", *extra]) == 0
        assert capsys.readouterr().out.startswith("Once upon")


def test_bad_settings_and_files_are_explained(run, tmp_path, capsys):
    assert main(["pretrain", *run, "max_step=3"]) == 1
    assert "unknown setting 'max_step'" in capsys.readouterr().err
    assert main(["pretrain", "--config", "huge"]) == 1
    assert "unknown config 'huge'; choose one of cpu-tiny, gpu-small" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tmp_path / "none.pt"), "--prompt", "x"]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["sample", "--prompt", "x"]) == 2  # --checkpoint is required
    assert main(["sample", "--checkpoint", "x.pt", "--temperature", "0"]) == 2
    assert main(["pretrain", "--help"]) == 0
    assert "cpu-tiny" in capsys.readouterr().out
