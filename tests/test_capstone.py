"""Chapter 18: the capstone reads a learner's notebooks, checks each part, swaps it into the model
(or falls back to the reference, saying why), and runs pretrain -> SFT -> DPO -> report card -> chat."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from llmcourse import attention, mlp, norm, optim, sampling
from llmcourse.capstone import (PARTS, Assembly, assemble, check_attention, load_learner_module, parse_parts,
                                run_capstone)
from llmcourse.checks import ArgumentError
from llmcourse.model import GPT, GPTConfig
from llmcourse.train import OptimizerParts

ROOT = Path(__file__).resolve().parents[1]


def copy_exercise(work: Path, slug: str, source: str = "solutions") -> Path:
    """Copy one exercise notebook (solution or release) to where `course start` puts a learner's."""
    target = work / slug / f"{slug}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / source / slug / f"{slug}.ipynb", target)
    return target


def edit_answer(notebook: Path, grade_id: str, new_source: str) -> None:
    """Replace the source of the answer cell `grade_id`, as a learner editing it would."""
    data = json.loads(notebook.read_text(encoding="utf-8"))
    cell = next(c for c in data["cells"] if c["metadata"].get("nbgrader", {}).get("grade_id") == grade_id)
    cell["source"] = new_source
    notebook.write_text(json.dumps(data), encoding="utf-8")


# ---------------------------------------------------------------------------------- the loader


def test_loader_runs_setup_and_answers_only(tmp_path):
    notebook = copy_exercise(tmp_path, "05-attention")
    module, problems = load_learner_module(notebook)
    assert problems == []
    assert callable(module.attention_reference) and callable(module.causal_mask)
    assert hasattr(module, "math")  # from the set-up cell
    assert not hasattr(module, "course_model")  # the demo cell after the tasks never ran


def test_loader_restores_torch_threads(tmp_path):
    notebook = copy_exercise(tmp_path, "09-training")  # its set-up cell calls torch.set_num_threads(1)
    before = torch.get_num_threads()
    load_learner_module(notebook)
    assert torch.get_num_threads() == before


def test_solutions_are_yours(tmp_path):
    for slug in ("05-attention", "07-mlp-residual-norm", "11-decoding"):
        copy_exercise(tmp_path, slug)
    assembly = assemble(tmp_path, ["attention", "norm", "mlp", "sampling"])
    assert [assembly.table[name] for name in ("attention", "norm", "mlp", "sampling")] == ["yours"] * 4
    assert assembly.messages == []
    assert assembly.table["optimizer"].startswith("reference")


def test_release_notebooks_fall_back_as_not_implemented(tmp_path):
    copy_exercise(tmp_path, "05-attention", source="exercises")
    copy_exercise(tmp_path, "09-training", source="exercises")
    assembly = assemble(tmp_path, ["attention", "optimizer"])
    assert assembly.swaps == {}
    assert "not implemented" in assembly.table["attention"]
    [attention_message, optimizer_message] = assembly.messages
    assert attention_message.startswith("attention: ") and "05-attention.ipynb" in attention_message
    assert "attention_reference is not implemented" in attention_message
    assert attention_message.endswith("using the reference")
    assert "adamw_update is not implemented" in optimizer_message


def test_missing_notebook_says_how_to_start_it(tmp_path):
    assembly = assemble(tmp_path, ["norm"])
    assert "no notebook" in assembly.table["norm"] and "course start 07-mlp-residual-norm" in assembly.table["norm"]


def test_broken_answer_cell_is_named(tmp_path):
    notebook = copy_exercise(tmp_path, "07-mlp-residual-norm")
    edit_answer(notebook, "gelu", "def gelu(x):\n    return x\n\nraise RuntimeError('oops, my cell')\n")
    module, problems = load_learner_module(notebook)
    [problem] = problems
    assert problem.grade_id == "gelu" and problem.index == 12 and "RuntimeError: oops, my cell" in problem.error
    assembly = assemble(tmp_path, ["norm", "mlp"])
    assert assembly.table["norm"] == "yours"  # the other cells still ran
    assert "cell 12 (gelu) raised RuntimeError: oops, my cell" in assembly.table["mlp"]


def test_wrong_answer_fails_its_check_with_the_difference(tmp_path):
    notebook = copy_exercise(tmp_path, "05-attention")
    no_causal_mask = (
        "def attention_reference(q, k, v, mask=None, causal=True):\n"
        "    weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)\n"
        "    return weights @ v, weights\n")
    edit_answer(notebook, "attention_reference", no_causal_mask)
    assembly = assemble(tmp_path, ["attention"])
    [message] = assembly.messages
    assert "attention_reference differs from the reference (max |diff|" in message
    assert message.endswith("; using the reference") and "attention" not in assembly.swaps


def test_check_tolerates_the_reference_itself():
    check_attention(lambda q, k, v, causal=True, mask=None: attention.attention_reference(q, k, v, mask, causal)[0])


def test_parse_parts():
    assert parse_parts("all") == list(PARTS) and parse_parts("reference") == []
    assert parse_parts("norm, attention") == ["norm", "attention"]
    with pytest.raises(ArgumentError, match="unknown part.*'atention'"):
        parse_parts("atention")


# ---------------------------------------------------------------------------------- adapters


def reference_assembly() -> Assembly:
    """Every adapter wired to the course's own functions, as if a learner had written them."""
    course = SimpleNamespace(attention_reference=attention.attention_reference, layer_norm=norm.layer_norm,
                             gelu=mlp.gelu, top_p_filter=sampling.top_p_filter, min_p_filter=sampling.min_p_filter)
    return Assembly(swaps={name: PARTS[name].adapt(course) for name in ("attention", "norm", "mlp", "sampling")})


def test_model_adapters_with_the_reference_give_the_default_logits():
    config = GPTConfig(vocab_size=64, block_size=16, n_layer=2, n_head=2, n_embd=32)
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    default = GPT(config).eval()
    torch.manual_seed(0)
    swapped = GPT(config, **reference_assembly().model_swaps).eval()
    assert default.state_dict().keys() == swapped.state_dict().keys()  # checkpoints fit both
    with torch.no_grad():
        torch.testing.assert_close(swapped(ids)[0], default(ids)[0], atol=1e-5, rtol=1e-5)


def test_every_check_passes_for_the_reference():
    assembly = reference_assembly()
    for name in ("attention", "norm", "mlp", "sampling"):
        PARTS[name].check(assembly.swaps[name])


def test_optimizer_adapter_with_the_reference_trains_like_torch_adamw():
    def adamw_update(param, grad, exp_avg, exp_avg_sq, step, *, lr, betas, eps, weight_decay):
        reference = optim.AdamW([param], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        reference.state[param] = {"step": step - 1, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
        reference._update(param, grad, lr, *betas, eps, weight_decay)

    course = SimpleNamespace(adamw_update=adamw_update, lr_at=optim.lr_at, clip_grad_norm=optim.clip_grad_norm)
    parts = PARTS["optimizer"].adapt(course)
    PARTS["optimizer"].check(parts)
    config = GPTConfig(vocab_size=32, block_size=8, n_layer=1, n_head=2, n_embd=16)
    ids = torch.randint(0, 32, (4, 8), generator=torch.Generator().manual_seed(1))
    losses = {}
    for name, factory in (("default", OptimizerParts().make_optimizer), ("adapter", parts.make_optimizer)):
        torch.manual_seed(0)
        model = GPT(config)
        optimizer = factory(model, 1e-2, 0.1)
        losses[name] = []
        for _ in range(3):
            loss = model(ids[:, :-1].contiguous(), ids[:, 1:].contiguous())[1]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses[name].append(loss.item())
    assert losses["adapter"] == pytest.approx(losses["default"], abs=1e-5)


# ---------------------------------------------------------------------------------- the run


def test_capstone_command_end_to_end_and_refuses_to_overwrite(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    copy_exercise(work, "07-mlp-residual-norm")  # norm and mlp are yours; the rest falls back
    command = [sys.executable, "-m", "llmcourse", "capstone", "--work", str(work), "--out", str(out), "--fast",
               "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = done.stdout
    for heading in ("your parts", "time per stage", "report card", "chat", "the same on one GPU"):
        assert f"== {heading}" in printed
    assert "loss per token (nats)" in printed and "invention rate" in printed
    assert "tokenizer: " in printed and "no notebook" in printed
    assert printed.count("you>   ") == 4 and printed.count("model> ") == 4
    assert "python -m llmcourse pretrain --config gpu-small" in printed
    for stage in ("pretrain", "sft", "dpo"):
        assert (out / stage / "ckpt.pt").is_file() and (out / stage / "metrics.jsonl").is_file()
    assert (out / "dpo" / "model.pt").is_file()

    again = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert again.returncode == 1
    assert "already holds a capstone run" in again.stderr and "--force" in again.stderr


def test_run_capstone_api_with_the_solution_tokenizer(tmp_path):
    copy_exercise(tmp_path / "work", "02-tokenization")
    result = run_capstone(tmp_path / "work", tmp_path / "out", parts=["tokenizer"], fast=True, progress=False)
    assert result.parts["tokenizer"] == "yours" and result.parts["attention"] == "reference (not asked for)"
    assert set(result.stage_seconds) == {"pretrain", "sft", "dpo", "report card and chat"}
    assert result.report_card["asked_as"] == "chat" and len(result.chat) == 4
    assert any("your train_merges learned" in note for note in result.notes)
    assert (tmp_path / "out" / "pretrain" / "tokens.bin").is_file()
    with pytest.raises(ArgumentError, match="already holds a capstone run"):
        run_capstone(tmp_path / "work", tmp_path / "out", parts=["tokenizer"], fast=True, progress=False)
