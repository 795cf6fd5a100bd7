"""llmcourse.checkpoint: one format for every file with weights in it, older files still read, and
every file that is not a checkpoint refused with a message that says what it is instead; and the
errors of resuming a run (`Trainer.resume`) that a practitioner meets."""

from __future__ import annotations

import ast
import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import llmcourse.checkpoint
from llmcourse.checkpoint import (CHECKPOINT_NAME, FORMAT, VERSION, CheckpointError, load_checkpoint,
                                  make_checkpoint, save_checkpoint, tokenizer_entry)
from llmcourse.data.prepare import prepare_data
from llmcourse.files import sha256_file
from llmcourse.model import GPT, GPTConfig
from llmcourse.runs import load_model, save_weights
from llmcourse.train import Trainer
from llmcourse.train_config import TrainConfig, from_overrides

RUNS = Path(__file__).resolve().parents[1] / "book" / "runs"


def tiny_model() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=8))


# ---------------------------------------------------------------------------------- the format


def test_a_checkpoint_round_trips_with_its_keys(tmp_path):
    model = tiny_model()
    (tmp_path / "tokenizer.json").write_text("{}")
    entry = tokenizer_entry(tmp_path / "tokenizer.json")
    assert entry == {"path": str(tmp_path / "tokenizer.json"), "sha256": sha256_file(tmp_path / "tokenizer.json")}
    checkpoint = make_checkpoint(model.config.to_dict(), model.state_dict(), entry, step=3)
    path = save_checkpoint(checkpoint, tmp_path / "a.pt")
    loaded = load_checkpoint(path)
    assert set(loaded) == {"format", "version", "model_config", "model", "tokenizer", "step"}
    assert (loaded["format"], loaded["version"], loaded["step"], loaded["tokenizer"]) == (FORMAT, VERSION, 3, entry)
    assert all(torch.equal(loaded["model"][name], value) for name, value in model.state_dict().items())
    assert torch.load(path, weights_only=True)["format"] == FORMAT  # plain torch reads it safely too


def test_gpt_save_writes_the_one_format(tmp_path):
    tiny_model().save(tmp_path / "model.pt")
    checkpoint = load_checkpoint(tmp_path / "model.pt")
    assert checkpoint["format"] == FORMAT and checkpoint["tokenizer"] is None
    assert GPTConfig.from_dict(checkpoint["model_config"]) == tiny_model().config


def test_unknown_run_state_is_refused():
    with pytest.raises(ValueError, match=r"unknown checkpoint entries \['epoch'\]"):
        make_checkpoint({}, {}, epoch=1)


def test_the_module_is_a_helper_that_imports_no_chapter():
    """checkpoint.py sits below the model and the trainer: it imports torch and two helpers only."""
    tree = ast.parse(Path(llmcourse.checkpoint.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert {name for name in imported if name.startswith("llmcourse")} <= {"llmcourse.files", "llmcourse.checks"}


# ---------------------------------------------------------------------------------- older files


def test_the_shipped_run_is_read_through_the_legacy_translation():
    """book/runs/cpu-tiny/model.pt was written as "llmcourse-train" version 1 and is kept as it is."""
    path = RUNS / "cpu-tiny" / "model.pt"
    assert torch.load(path, weights_only=True)["format"] == "llmcourse-train"
    checkpoint = load_checkpoint(path)
    assert (checkpoint["format"], checkpoint["version"]) == (FORMAT, VERSION)
    model, _ = load_model(path, device="cpu")
    assert model.config.vocab_size == checkpoint["model_config"]["vocab_size"]


def test_a_legacy_gpt_save_file_still_loads(tmp_path):
    model = tiny_model()
    torch.save({"format": "llmcourse-gpt", "version": 1, "config": model.config.to_dict(),
                "state_dict": model.state_dict()}, tmp_path / "old.pt")
    loaded = GPT.load(tmp_path / "old.pt")
    assert all(torch.equal(loaded.state_dict()[name], value) for name, value in model.state_dict().items())


# ---------------------------------------------------------------------------------- bad files


def _torch_bytes(value) -> bytes:
    """What `torch.save(value, path)` would write."""
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


BAD_FILES = [
    ("empty", b"", r"\(the file is empty\)"),
    ("truncated", None, r"\(a torch file that is truncated or damaged"),
    ("text", b"hello, world\n", r"\(a text file beginning 'hello, world"),
    ("tokenizer", RUNS.joinpath("cpu-tiny", "tokenizer.json").read_bytes(),
     r"\(a JSON file of format 'llmcourse-bpe'; a checkpoint is a \.pt file, such as ckpt\.pt\)"),
    ("random dict", _torch_bytes({"weights": [1, 2], "lr": 0.1}),
     r"\(a torch file holding a dict \('weights', 'lr'\) without format='llmcourse-checkpoint'\)"),
    ("state_dict", _torch_bytes(tiny_model().state_dict()), r"\(a bare state_dict \('tok_emb.weight', .*GPT\.save"),
    ("list", _torch_bytes([torch.zeros(2)]), r"\(a torch file holding a list"),
    ("numpy", _torch_bytes({"x": np.zeros(3)}), r"\(a torch file holding Python objects other than tensors"),
    ("pickle", pickle.dumps({"a": 1}, protocol=2), r"\(a binary file that torch cannot read: not written by torch"),
    ("other format", _torch_bytes({"format": "someone-else", "version": 1}), r"\(its format is 'someone-else'"),
]


@pytest.mark.parametrize(("kind", "content", "message"), BAD_FILES, ids=[kind for kind, _, _ in BAD_FILES])
def test_a_file_that_is_not_a_checkpoint_says_what_it_is(tmp_path, kind, content, message):
    if content is None:  # the first half of a real checkpoint, as a copy cut short leaves it
        tiny_model().save(tmp_path / "good.pt")
        content = (tmp_path / "good.pt").read_bytes()[:1000]
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"bad\.pt is not an llmcourse checkpoint " + message):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"bad\.pt is not an llmcourse checkpoint"):
        GPT.load(path)


@pytest.mark.parametrize(("version", "advice"), [
    (2, "a newer llmcourse wrote it: update llmcourse"),
    (0, "it is older than every layout this code reads"),
])
def test_another_version_is_named(tmp_path, version, advice):
    checkpoint = make_checkpoint(tiny_model().config.to_dict(), {})
    checkpoint["version"] = version
    torch.save(checkpoint, tmp_path / "v.pt")
    with pytest.raises(CheckpointError, match=rf"v\.pt is an llmcourse checkpoint of version {version}, but this "
                                              rf"code reads version 1; .*{advice}"):
        load_checkpoint(tmp_path / "v.pt")


def test_an_incomplete_checkpoint_names_what_is_missing(tmp_path):
    torch.save({"format": FORMAT, "version": VERSION, "model": {}}, tmp_path / "part.pt")
    with pytest.raises(CheckpointError, match=r"part\.pt is not a complete llmcourse checkpoint "
                                              r"\(missing \['model_config', 'tokenizer'\]\)"):
        load_checkpoint(tmp_path / "part.pt")


def test_a_folder_points_to_the_checkpoint_inside(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(CheckpointError, match=r"run is a folder with no checkpoint in it \(no ckpt\.pt or model\.pt\)"):
        load_checkpoint(run)
    tiny_model().save(run / "model.pt")
    with pytest.raises(CheckpointError, match=rf"run is a folder; did you mean {run / 'model.pt'}\?"):
        load_checkpoint(run)
    tiny_model().save(run / CHECKPOINT_NAME)  # the run's checkpoint comes first
    with pytest.raises(CheckpointError, match=rf"did you mean {run / CHECKPOINT_NAME}\?"):
        GPT.load(run)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*missing\.pt"):
        load_checkpoint(run / "missing.pt")


# ---------------------------------------------------------------------------------- resuming

MICRO = ["corpus_chars=30000", "vocab_size=300", "batch_size=4", "block_size=16", "max_steps=4",
         "warmup_steps=1", "eval_every=0", "log_every=2", "model.n_layer=1", "model.n_head=2",
         "model.n_embd=32", "device=cpu"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """The checkpoint of a 4-step run that has finished (max_steps=4)."""
    folder = tmp_path_factory.mktemp("resume")
    config = from_overrides(TrainConfig(), [*MICRO, f"data_dir={folder / 'data'}", f"out_dir={folder / 'run'}"])
    prepare_data(config, progress=False)
    Trainer(config, progress=False).train()
    return folder / "run" / CHECKPOINT_NAME


def test_resuming_a_finished_run_suggests_more_steps(finished_run):
    with pytest.raises(ValueError, match=r"run\S* is finished: it has taken 4 steps of max_steps=4; .* "
                                         r"resume with a larger max_steps, e.g. max_steps=8"):
        Trainer.resume(finished_run, progress=False)


def test_resuming_with_another_model_names_each_changed_setting(finished_run):
    with pytest.raises(ValueError, match=r"cannot resume with a different model: block_size 16 -> 32, "
                                         r"model.n_layer 1 -> 2, model.mlp 'gelu' -> 'swiglu'; "):
        Trainer.resume(finished_run, ["block_size=32", "model.n_layer=2", "model.mlp=swiglu"], progress=False)
    with pytest.raises(ValueError, match=r"vocab_size 300 -> 400"):
        Trainer.resume(finished_run, ["vocab_size=400"], progress=False)
    with pytest.raises(ValueError, match=r"corpus 'tinyworld' -> 'tinyshakespeare'"):
        Trainer.resume(finished_run, ["corpus=tinyshakespeare"], progress=False)


def test_resuming_with_another_schedule_warns_and_goes_on(finished_run):
    with pytest.warns(UserWarning, match=r"resuming with changed settings \(max_steps 4 -> 6, lr 0.001 -> 0.002\)"
                                         r": the run goes on, but its losses no longer match"):
        trainer = Trainer.resume(finished_run, ["max_steps=6", "lr=2e-3", "log_every=1"], progress=False)
    assert trainer.step == 4 and trainer.config.max_steps == 6
    with pytest.warns(UserWarning) as caught:
        Trainer.resume(finished_run, ["max_steps=6", "eval_every=1", "log_every=1"], progress=False)
    assert [str(w.message).split(":")[0] for w in caught] == ["resuming with changed settings (max_steps 4 -> 6)"]


def test_resuming_from_exported_weights_is_refused(finished_run, tmp_path):
    weights = save_weights(finished_run, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match=r"model\.pt holds the weights only .* resume from the run's ckpt\.pt"):
        Trainer.resume(weights, ["max_steps=8"], progress=False)


def test_resuming_from_nowhere_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no checkpoint at .*nothing[/\\]ckpt\.pt"):
        Trainer.resume(tmp_path / "nothing" / CHECKPOINT_NAME)


@pytest.mark.parametrize(("override", "message"), [
    ("max_step=3", r"unknown setting 'max_step'; did you mean max_steps\?"),
    ("model.n_layers=3", r"unknown model setting 'model.n_layers'; did you mean model.n_layer\?"),
    ("warmup_steps=500", r"warmup_steps=500 must be at most max_steps=100 \(.*warmup_steps=10\)"),
])
def test_settings_suggest_the_fix(override, message):
    with pytest.raises(ValueError, match=message):
        from_overrides(TrainConfig(), [override])
