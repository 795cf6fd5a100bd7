"""Tests for llmcourse.train and its neighbours (train_config, runs, data.prepare): configs, the
training step against a hand-written reference, exact resume, NaN handling, checkpoints, and DDP on
CPU (gloo, 2 processes) against one process. The checkpoint format's own tests are in
test_checkpoint.py."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from llmcourse.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from llmcourse.data.prepare import prepare_data
from llmcourse.data.tokens import get_batch
from llmcourse.optim import param_groups
from llmcourse.runs import METRICS_NAME, TOKENIZER_NAME, generate_text, load_model, read_metrics, save_weights
from llmcourse.train import Distributed, Trainer, TrainingDivergedError, mfu, peak_flops
from llmcourse.train_config import CONFIGS, TrainConfig, from_overrides, get_config

MICRO = ["corpus_chars=30000", "vocab_size=300", "batch_size=4", "block_size=16", "max_steps=8",
         "warmup_steps=2", "eval_every=4", "eval_batches=2", "checkpoint_every=4", "log_every=2",
         "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "device=cpu"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """One tokenizer and token file shared by the module's tests (prepare_data caches them)."""
    folder = tmp_path_factory.mktemp("data")
    prepare_data(micro_config(folder, folder / "unused"), progress=False)
    return folder


def micro_config(data_dir, out_dir, *overrides: str) -> TrainConfig:
    return from_overrides(TrainConfig(), [*MICRO, f"data_dir={data_dir}", f"out_dir={out_dir}", *overrides])


# ---------------------------------------------------------------------------------- configs


def test_overrides_parse_by_field_type():
    config = from_overrides(TrainConfig(), ["max_steps=2e3", "lr=3e-4", "compile=false", "model.n_layer=3",
                                            "model.n_kv_heads=none", "out_dir=runs/x", "model.dropout=0.1"])
    assert (config.max_steps, config.lr, config.compile, config.out_dir) == (2000, 3e-4, False, "runs/x")
    assert config.model["n_layer"] == 3 and config.model["n_kv_heads"] is None
    assert config.gpt_config(100).dropout == 0.1
    assert TrainConfig().max_steps == 100  # the base is not modified


@pytest.mark.parametrize("override, message", [
    ("nope=1", "unknown setting 'nope'"),
    ("n_layer=2", "model.n_layer=2"),
    ("model.depth=2", "unknown model setting 'model.depth'"),
    ("max_steps=1.5", "max_steps='1.5': expected int"),
    ("lr=fast", "lr='fast': expected float"),
    ("compile=maybe", "expected true or false"),
    ("max_steps", "not key=value"),
    ("warmup_steps=500", "warmup_steps=500 must be at most max_steps=100"),
    ("min_lr=1", "min_lr=1.0 must be at most lr"),
    ("dtype=float16", "dtype='float16' must be one of"),
    ("grad_clip=0", "grad_clip=0.0 must be a finite number > 0"),
    ("model.n_embd=63", "n_embd=63 must be divisible by n_head=2"),
    ("model.vocab_size=10", "model.vocab_size is set by the trainer"),
])
def test_bad_overrides_are_named(override, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        from_overrides(TrainConfig(), [override])


def test_named_configs_are_valid_and_unknown_names_are_refused():
    assert set(CONFIGS) == {"cpu-tiny", "cpu-rope", "gpu-small"}
    small = CONFIGS["gpu-small"].gpt_config(vocab_size=50257)
    assert (small.n_layer, small.n_head, small.n_embd, small.block_size) == (12, 12, 768, 1024)  # GPT-2 small
    with pytest.raises(ValueError, match="unknown config 'big'; choose one of cpu-tiny, cpu-rope, gpu-small"):
        get_config("big")


def test_mfu_and_peak_flops(monkeypatch):
    assert peak_flops("cpu") is None and mfu(1e9, 1e3, None) is None
    assert mfu(6e8, 1e5, 989e12) == pytest.approx(6e8 * 1e5 / 989e12)
    for name, peak in [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                       ("NVIDIA H200", 989e12), ("NVIDIA A100-SXM4-80GB", 312e12), ("NVIDIA GeForce RTX 4090", None)]:
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device, name=name: name)
        assert peak_flops("cuda") == peak


# ---------------------------------------------------------------------------------- the step


def test_train_step_matches_a_hand_written_step_with_accumulation(data_dir, tmp_path):
    """Two micro-batches of 4 with accumulation = one batch of 8 in a plain PyTorch step."""
    config = micro_config(data_dir, tmp_path, "grad_accum_steps=2", "grad_clip=0.05", "warmup_steps=0")
    trainer = Trainer(config, progress=False)
    reference = copy.deepcopy(trainer.raw_model)
    optimizer = torch.optim.AdamW(param_groups(reference, config.weight_decay), lr=config.lr, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(config.seed)
    batches = [get_batch(trainer.train_tokens, 4, 16, generator=generator) for _ in range(2)]
    x, y = (torch.cat(parts) for parts in zip(*batches))

    loss = trainer.train_step()

    _, expected = reference(x, y)
    expected.backward()
    expected_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), config.grad_clip)
    optimizer.step()
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    assert trainer.last["grad_norm"] == pytest.approx(expected_norm.item(), rel=1e-5)  # loss / accum
    for name, param in trainer.raw_model.named_parameters():
        # Adam's first step is about lr * sign(grad): a gradient near 0 may flip by rounding, so
        # the tolerance is 1% of lr rather than float32 precision.
        torch.testing.assert_close(param.detach(), reference.get_parameter(name).detach(),
                                   rtol=1e-5, atol=config.lr / 100)


def test_training_lowers_the_loss_and_logs_metrics(data_dir, tmp_path):
    config = micro_config(data_dir, tmp_path, "max_steps=30", "eval_every=10", "sample_every=20", "lr=3e-3")
    trainer = Trainer(config, progress=False)
    losses = trainer.train()
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    assert losses[0] == pytest.approx(math.log(trainer.tokenizer.vocab_size), abs=0.3)  # ln V at init
    assert np.mean(losses[-5:]) < losses[0] - 0.5
    records = read_metrics(tmp_path)
    evals = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in evals] == [10, 20, 30]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    steps = [r for r in records if "tokens_per_s" in r]
    assert [r["step"] for r in steps] == list(range(2, 31, 2))
    assert all(r["tokens_per_s"] > 0 and "mfu" not in r for r in steps)  # no MFU without a known peak
    assert [r["step"] for r in records if "sample" in r] == [20, 30]  # and one at the end


# ---------------------------------------------------------------------------------- checkpoints


def test_resume_repeats_the_uninterrupted_losses_exactly(data_dir, tmp_path):
    """8 steps straight == 4 steps, a new Trainer from the checkpoint, 4 more (dropout on: RNG states matter)."""
    straight = Trainer(micro_config(data_dir, tmp_path / "a", "model.dropout=0.1"), progress=False).train()

    first = Trainer(micro_config(data_dir, tmp_path / "b", "model.dropout=0.1"), progress=False)
    head = first.train(steps=4)
    del first
    torch.manual_seed(12345)  # disturb the global RNGs: resume must restore them
    np.random.seed(7)
    resumed = Trainer.resume(tmp_path / "b" / CHECKPOINT_NAME, progress=False)
    assert resumed.step == 4
    tail = resumed.train()
    assert torch.equal(torch.tensor(straight), torch.tensor(head + tail))
    assert resumed.losses == straight
    logged = [r["step"] for r in read_metrics(tmp_path / "b") if "loss" in r]
    assert logged == [2, 4, 6, 8]  # each step logged once across the two runs


def test_a_fresh_run_starts_a_fresh_log(data_dir, tmp_path):
    for _ in range(2):
        Trainer(micro_config(data_dir, tmp_path, "max_steps=2", "warmup_steps=0"), progress=False).train()
    assert [r["step"] for r in read_metrics(tmp_path) if "loss" in r] == [2]


def test_checkpoint_loads_with_weights_only_and_samples(data_dir, tmp_path):
    trainer = Trainer(micro_config(data_dir, tmp_path, "max_steps=2"), progress=False)
    trainer.train()
    checkpoint = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert checkpoint["step"] == 2 and checkpoint["config"] == dataclasses.asdict(trainer.config)
    model, tokenizer = load_model(tmp_path / CHECKPOINT_NAME, device="cpu")
    for name, value in trainer.raw_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value)
    assert tokenizer == trainer.tokenizer
    greedy = [generate_text(model, tokenizer, "Once", 10, temperature=0.0) for _ in range(2)]
    assert greedy[0] == greedy[1]
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temporary files


def test_checkpoint_errors_name_the_problem(data_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt is not an llmcourse checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    Trainer(micro_config(data_dir, tmp_path, "max_steps=1", "warmup_steps=0"), progress=False).train()
    with open(tmp_path / TOKENIZER_NAME, "a") as file:
        file.write(" ")  # a different tokenizer file than the model was trained with
    with pytest.raises(CheckpointError, match="not the one it was trained with"):
        load_model(tmp_path / CHECKPOINT_NAME)


def test_saved_weights_are_a_third_of_the_checkpoint_and_travel_with_their_tokenizer(data_dir, tmp_path):
    trainer = Trainer(micro_config(data_dir, tmp_path / "run", "max_steps=2"), progress=False)
    trainer.train()
    weights = save_weights(tmp_path / "run" / CHECKPOINT_NAME, tmp_path / "export" / "model.pt")
    assert weights.stat().st_size < 0.5 * (tmp_path / "run" / CHECKPOINT_NAME).stat().st_size
    moved = tmp_path / "moved"
    (tmp_path / "export").rename(moved)  # a copied or moved folder still loads: the tokenizer is beside it
    model, tokenizer = load_model(moved / "model.pt", device="cpu")
    for name, value in trainer.raw_model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value)
    assert tokenizer == trainer.tokenizer
    with pytest.raises(CheckpointError, match="weights only"):
        Trainer.resume(moved / "model.pt", progress=False)
    (moved / TOKENIZER_NAME).unlink()
    with pytest.raises(CheckpointError, match="its tokenizer file is missing"):
        load_model(moved / "model.pt")


def test_nan_stops_training_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    trainer = Trainer(micro_config(data_dir, tmp_path, "checkpoint_every=2"), progress=False)

    def poison(module, inputs, output):  # a NaN in the logits at step 3 (0-based)
        return output * float("nan") if trainer.step == 3 else output

    trainer.raw_model.lm_head.register_forward_hook(poison)
    with pytest.raises(TrainingDivergedError, match="step 3: loss=nan"):
        trainer.train()
    assert trainer.step == 3
    assert all(torch.isfinite(p).all() for p in trainer.raw_model.parameters())  # the bad step was not applied
    checkpoint = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert checkpoint["step"] == 2 and len(checkpoint["losses"]) == 2


# ---------------------------------------------------------------------------------- DDP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world_size: int, port: int, config: TrainConfig, tokens, result_dir) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    trainer = Trainer(config, progress=False, **tokens)
    losses = trainer.train()
    if rank == 0:
        torch.save({"losses": losses, "model": trainer.raw_model.state_dict()}, f"{result_dir}/ddp.pt")
    trainer.close()


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_with_the_same_global_batch(data_dir, tmp_path):
    base = micro_config(data_dir, tmp_path / "one", "max_steps=2", "grad_accum_steps=2", "eval_every=0",
                        "checkpoint_every=0")
    single = Trainer(base, progress=False)
    tokens = {"tokenizer": single.tokenizer, "train_tokens": np.asarray(single.train_tokens),
              "val_tokens": np.asarray(single.val_tokens)}
    one_losses = single.train()
    halves = dataclasses.replace(base, batch_size=base.batch_size // 2, out_dir=str(tmp_path / "two"))
    mp.spawn(_ddp_worker, args=(2, _free_port(), halves, tokens, str(tmp_path)), nprocs=2, join=True)
    two = torch.load(tmp_path / "ddp.pt", weights_only=True)
    np.testing.assert_allclose(two["losses"], one_losses, rtol=1e-5)
    for name, value in single.raw_model.state_dict().items():
        torch.testing.assert_close(two["model"][name], value, rtol=1e-4, atol=1e-6)


def test_only_rank_zero_writes(data_dir, tmp_path, monkeypatch):
    trainer = Trainer(micro_config(data_dir, tmp_path / "r1", "max_steps=2"), progress=False)
    trainer.dist = Distributed(rank=1, local_rank=1, world_size=1)  # pretend to be rank 1
    trainer.train()
    assert not (tmp_path / "r1" / CHECKPOINT_NAME).exists()
    assert not (tmp_path / "r1" / METRICS_NAME).exists()


# ---------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
def test_cuda_training_uses_bf16_autocast_fused_adamw_and_reports_mfu(data_dir, tmp_path):
    trainer = Trainer(micro_config(data_dir, tmp_path, "device=cuda", "max_steps=4"), progress=False)
    assert trainer.device.type == "cuda" and trainer.optimizer.defaults["fused"]
    with trainer.autocast():
        assert torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda") == torch.bfloat16
    losses = trainer.train()
    assert all(math.isfinite(v) for v in losses)
    records = [json.loads(line) for line in (tmp_path / METRICS_NAME).read_text().splitlines()]
    if peak_flops(trainer.device) is not None:
        assert all(0 < r["mfu"] < 1 for r in records if "tokens_per_s" in r)


@pytest.mark.gpu
def test_compiled_model_trains_like_the_eager_one(data_dir, tmp_path):
    eager = Trainer(micro_config(data_dir, tmp_path / "e", "device=cuda", "dtype=float32"), progress=False).train()
    compiled = Trainer(micro_config(data_dir, tmp_path / "c", "device=cuda", "dtype=float32", "compile=true"),
                       progress=False).train()
    np.testing.assert_allclose(compiled, eager, rtol=1e-3)
