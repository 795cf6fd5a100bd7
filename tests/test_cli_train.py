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
    out, err = capsys.readouterr()
    assert "resuming" in out
    assert "warning: resuming with changed settings (max_steps 6 -> 8)" in err  # allowed, but no longer exact
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [step for step in steps if step > 6] == [7, 8, 8]  # step and eval records, appended

    for extra in (["--greedy"], ["--temperature", "0.8", "--seed", "3"]):
        assert main(["sample", "--checkpoint", str(checkpoint), "--prompt", "Once upon",
                     "--max-new-tokens", "4", *extra]) == 0  # 10 prompt tokens + 4 fit block_size=16
        assert capsys.readouterr().out.startswith("Once upon")


def test_bad_settings_and_files_are_explained(run, tmp_path, capsys):
    assert main(["pretrain", "--config", "huge"]) == 1
    assert "unknown config 'huge'; choose one of cpu-tiny, cpu-rope, gpu-small" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tmp_path / "none.pt"), "--prompt", "x"]) == 1
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["sample", "--prompt", "x"]) == 2  # --checkpoint is required
    assert main(["sample", "--checkpoint", "x.pt", "--temperature", "0"]) == 2
    assert main(["pretrain", "--help"]) == 0
    assert "cpu-tiny" in capsys.readouterr().out


def test_resume_problems_are_explained(run, tmp_path, capsys):
    assert main(["pretrain", "--no-progress", "--resume", *run]) == 1
    assert f"--resume: no checkpoint at {tmp_path / 'run' / 'ckpt.pt'} to resume" in capsys.readouterr().err
    assert main(["pretrain", "--no-progress", *run]) == 0
    capsys.readouterr()
    assert main(["pretrain", "--no-progress", "--resume", *run]) == 1
    assert "is finished: it has taken 6 steps of max_steps=6; to train it further, resume with a larger " \
           "max_steps, e.g. max_steps=12" in capsys.readouterr().err
    assert main(["pretrain", "--no-progress", "--resume", *run, "max_steps=8", "model.n_embd=64",
                 "block_size=32"]) == 1
    assert "cannot resume with a different model: block_size 16 -> 32, model.n_embd 32 -> 64" in capsys.readouterr().err


def test_misspelled_flags_and_settings_suggest_the_right_one(run, tmp_path, capsys):
    assert main(["pretrain", "--resme", *run]) == 2
    assert "did you mean --resume?" in capsys.readouterr().err
    assert main(["pretrain", *run, "--max-steps", "3"]) == 2
    assert "settings are key=value, not flags: max_steps=3" in capsys.readouterr().err
    assert main(["sample", "--checkpont", "runs/x/ckpt.pt"]) == 2
    assert "did you mean --checkpoint?" in capsys.readouterr().err
    assert main(["pretrain", *run, "max_step=3"]) == 1
    assert "unknown setting 'max_step'; did you mean max_steps?" in capsys.readouterr().err
    assert main(["pretrain", *run, "max_steps=20", "warmup_steps=50"]) == 1
    assert "warmup_steps=50 must be at most max_steps=20 (a tenth of the run is common: warmup_steps=2)" \
        in capsys.readouterr().err


def test_sample_from_a_folder_or_another_file_says_which_file_to_pass(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "ckpt.pt").write_bytes(b"")
    assert main(["sample", "--checkpoint", str(run)]) == 1
    assert f"{run} is a folder; did you mean {run / 'ckpt.pt'}?" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(run / "ckpt.pt")]) == 1
    assert f"{run / 'ckpt.pt'} is not an llmcourse checkpoint (the file is empty)" in capsys.readouterr().err
