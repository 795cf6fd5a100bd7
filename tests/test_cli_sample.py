"""The `sample` command's decoding flags, on the shipped cpu-tiny model (seconds on a CPU)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from llmcourse.cli import main

MODEL = Path(__file__).resolve().parents[1] / "book" / "runs" / "cpu-tiny" / "model.pt"
SAMPLE = ["sample", "--checkpoint", str(MODEL), "--prompt", "Once upon a time", "--max-new-tokens", "12"]


def test_every_flag_together_and_the_same_seed_writes_the_same_text(capsys):
    flags = ["--temperature", "0.9", "--top-k", "40", "--top-p", "0.9", "--min-p", "0.05",
             "--repetition-penalty", "1.2", "--seed", "4"]
    assert main([*SAMPLE, *flags]) == 0
    first = capsys.readouterr().out
    assert first.startswith("Once upon a time") and len(first) > len("Once upon a time\n")
    assert main([*SAMPLE, *flags]) == 0
    assert capsys.readouterr().out == first
    assert main([*SAMPLE, *flags[:-1], "5"]) == 0
    assert capsys.readouterr().out != first


def test_num_samples_runs_one_batch_of_different_samples(capsys):
    assert main([*SAMPLE, "--num-samples", "3", "--seed", "1", "--temperature", "1.5"]) == 0
    out = capsys.readouterr().out
    samples = out.split("--- sample ")[1:]
    assert [s.split(" ---")[0] for s in samples] == ["1 of 3", "2 of 3", "3 of 3"]
    texts = [s.split("---\n", 1)[1] for s in samples]
    assert all(text.startswith("Once upon a time") for text in texts) and len(set(texts)) == 3


def test_stop_ends_the_text_before_the_stop(capsys):
    assert main([*SAMPLE, "--greedy"]) == 0
    full = capsys.readouterr().out.rstrip("\n")
    word = full[len("Once upon a time"):].split()[2]  # a word the greedy text writes
    assert main([*SAMPLE, "--greedy", "--stop", "zzz", "--stop", word]) == 0
    assert capsys.readouterr().out.rstrip("\n") == full[:full.index(word, len("Once upon a time"))]


def test_stream_prints_the_same_text_as_no_stream(capsys):
    assert main([*SAMPLE, "--seed", "2", "--no-stream"]) == 0
    batch = capsys.readouterr().out
    assert main([*SAMPLE, "--seed", "2", "--stream"]) == 0
    assert capsys.readouterr().out == batch


def test_stream_is_the_default_on_a_terminal(monkeypatch):
    printed = []
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setattr("builtins.print", lambda *args, **kwargs: printed.append((args, kwargs)))
    assert main([*SAMPLE, "--greedy"]) == 0
    assert len(printed) > 3 and all(kwargs.get("end") == "" for _, kwargs in printed[:-1])  # piece by piece


@pytest.mark.parametrize("flags, message", [
    (["--top-p", "1.5"], r"--top-p 1.5 must be a finite number > 0 and <= 1 \(1 keeps every token\)"),
    (["--min-p", "-0.1"], r"--min-p -0.1 must be a finite number >= 0 and <= 1"),
    (["--top-k", "0"], r"--top-k 0 must be an integer >= 1 \(None keeps every token\)"),
    (["--repetition-penalty", "0"], r"--repetition-penalty 0.0 must be a finite number > 0 \(1 is no penalty\)"),
    (["--num-samples", "0"], r"--num-samples=0 must be an integer >= 1"),
    (["--max-new-tokens", "0"], r"--max-new-tokens=0 must be an integer >= 1"),
    (["--seed", "-3"], r"--seed=-3 must be an integer >= 0"),
    (["--stop", ""], r"--stop '' would stop before the first character"),
    (["--stream", "--num-samples", "2"], r"--stream prints one sample .* use --no-stream, or --num-samples 1"),
    (["--max-new-tokens", "200"], r"exceed the model's block_size=128; ask for at most 123 new tokens"),
])
def test_bad_values_name_the_flag_and_the_fix(capsys, flags, message):
    assert main([*SAMPLE, *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert re.search(message, err), err


def test_flags_that_are_not_numbers_are_argparse_errors(capsys):
    assert main([*SAMPLE, "--top-p", "high"]) == 2
    assert "--top-p: invalid float value: 'high'" in capsys.readouterr().err
