"""llmcourse.context: extending a RoPE model's context keeps its weights, is the identity at scale
1, maps positions as interpolation and NTK-aware scaling promise, refuses models it cannot extend;
the loss-by-position and retrieval probes measure what they say, on models of the course."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from llmcourse.checks import ArgumentError
from llmcourse.context import (extend_context, ntk_base, position_losses, range_means, retrieval_accuracy,
                               retrieval_probe)
from llmcourse.data.tinyworld import World
from llmcourse.model import GPT, GPTConfig
from llmcourse.position import rope_frequencies
from llmcourse.runs import load_model, read_metrics
from llmcourse.tokenizer import ENDOFTEXT, Tokenizer

RUNS = Path(__file__).resolve().parents[1] / "book" / "runs"
T = 16


def rope_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    settings = dict(vocab_size=64, block_size=T, n_layer=2, n_head=2, n_embd=32, position="rope")
    return GPT(GPTConfig(**{**settings, **overrides})).eval()


def token_ids(length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 64, (2, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """The recorded cpu-tiny run's tokenizer: trained on TinyWorld, one token per character name."""
    return Tokenizer.load(RUNS / "cpu-tiny" / "tokenizer.json")


# ---------------------------------------------------------------------------------- ntk_base


def test_ntk_base_stretches_the_slowest_pair_by_exactly_the_scale_and_keeps_the_fastest():
    head_dim, base = 32, 10000.0
    assert ntk_base(base, 4.0, head_dim) == pytest.approx(base * 4.0 ** (32 / 30))
    assert ntk_base(base, 1.0, head_dim) == base
    for scale in (2.0, 4.0, 8.0):
        before = rope_frequencies(head_dim, base).double()
        after = rope_frequencies(head_dim, ntk_base(base, scale, head_dim)).double()
        assert after[0] == before[0] == 1.0  # pair 0 turns one radian per position whatever the base
        assert after[-1].item() == pytest.approx(before[-1].item() / scale, rel=1e-5)  # wavelength x scale
        stretch = before / after  # 1 for pair 0, growing geometrically to `scale` for the last pair
        assert torch.all(stretch[1:] > stretch[:-1])
        assert torch.allclose(stretch, scale ** (torch.arange(head_dim // 2) / (head_dim // 2 - 1)).double(),
                              rtol=1e-5)


def test_ntk_base_refuses_what_has_no_meaning():
    with pytest.raises(ArgumentError, match="scale=0.5 must be"):
        ntk_base(10000.0, 0.5, 32)
    with pytest.raises(ArgumentError, match="head_dim=2 must be"):
        ntk_base(10000.0, 2.0, 2)


# ---------------------------------------------------------------------------------- extend_context


@pytest.mark.parametrize("method", ["none", "interpolation", "ntk"])
def test_extending_to_the_same_length_is_exactly_the_original(method):
    model = rope_gpt()
    same = extend_context(model, T, method)
    assert same is not model and same.config == model.config
    ids = token_ids(T)
    assert torch.equal(same(ids)[0], model(ids)[0])
    model.input_major_weights_()  # as runs.load_model lays out a CPU model: the copy keeps the layout
    assert torch.equal(extend_context(model, T, method)(ids)[0], model(ids)[0])


def test_the_copy_has_the_same_weights_and_its_own_config_and_leaves_the_original_alone():
    model = rope_gpt()
    before = {name: value.clone() for name, value in model.state_dict().items()}
    state = torch.random.get_rng_state()
    longer = extend_context(model, 4 * T, "ntk")
    assert torch.equal(torch.random.get_rng_state(), state)  # building it drew nothing from the caller's stream
    assert longer.config.block_size == 4 * T and longer.config.rope_scale == 1.0
    assert longer.config.rope_base == pytest.approx(ntk_base(10000.0, 4.0, model.config.head_dim))
    assert not longer.training
    for name, value in longer.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert longer.lm_head.weight is longer.tok_emb.weight  # still tied
    with torch.no_grad():
        longer.lm_head.weight.add_(1.0)
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    assert model.config.block_size == T


def test_interpolation_gives_position_p_the_angles_of_position_p_over_s():
    model = rope_gpt()
    for scale in (2, 4):
        stretched = extend_context(model, scale * T, "interpolation")
        assert stretched.config.rope_scale == scale
        positions = torch.arange(0, scale * T, scale)  # p = s·q lands exactly on the trained q
        assert torch.allclose(stretched.rope.cos[positions], model.rope.cos, atol=1e-6)
        assert torch.allclose(stretched.rope.sin[positions], model.rope.sin, atol=1e-6)
        # between trained positions: the angle of the fraction p / s
        theta = rope_frequencies(model.config.head_dim, model.config.rope_base)
        odd = torch.arange(1, scale * T, scale)
        angles = (odd[:, None] / scale) * theta
        assert torch.allclose(stretched.rope.cos[odd], torch.cat([angles, angles], -1).cos(), atol=1e-6)
    # a model already interpolated to 2T goes on to 4T by the same rule: scale 2 x 2
    assert extend_context(extend_context(model, 2 * T, "interpolation"), 4 * T, "interpolation").config.rope_scale == 4


def test_the_extended_model_reads_4t_tokens_and_the_original_refuses_them():
    model = rope_gpt()
    ids = token_ids(4 * T)
    with pytest.raises(ValueError, match=f"64 tokens exceed block_size={T}"):
        model(ids)
    for method in ("none", "interpolation", "ntk"):
        logits, _ = extend_context(model, 4 * T, method)(ids)
        assert logits.shape == (2, 4 * T, 64) and torch.isfinite(logits).all()
        # causal: the first T positions see only the first T tokens; with no change of angles
        # ("none"), they are exactly what the original computes there
        if method == "none":
            assert torch.allclose(logits[:, :T], model(ids[:, :T])[0], atol=1e-5)


@pytest.mark.parametrize("position, reason", [
    ("learned", "learned position table has rows for positions 0..15 only"),
    ("sinusoidal", "sinusoidal vectors are added to the token embeddings"),
    ("none", "no positions at all"),
])
def test_models_without_rope_are_refused_with_the_reason(position, reason):
    model = rope_gpt(position=position)
    with pytest.raises(ArgumentError, match=f"needs a model with position='rope', got position='{position}'") as error:
        extend_context(model, 2 * T, "interpolation")
    assert reason in str(error.value) and "train a model with position='rope'" in str(error.value)


def test_bad_lengths_and_methods_are_refused():
    model = rope_gpt()
    with pytest.raises(ArgumentError, match=f"new_block_size=8 must be an integer >= {T}"):
        extend_context(model, 8, "ntk")
    with pytest.raises(ArgumentError, match="method='yarn' must be one of 'none', 'interpolation', 'ntk'"):
        extend_context(model, 2 * T, "yarn")


# ---------------------------------------------------------------------------------- loss by position


def test_position_losses_average_what_the_model_scores_on_each_window():
    model = rope_gpt()
    tokens = np.random.default_rng(0).integers(0, 64, 500).astype(np.uint16)  # as a token file holds them
    losses = position_losses(model, tokens, T, n_windows=5, batch_size=2)
    assert losses.shape == (T,) and losses.dtype == torch.float32
    windows = torch.tensor(np.stack([tokens[s:s + T + 1] for s in range(0, 500, 100)]).astype(np.int64))
    with torch.no_grad():
        _, mean = model(windows[:, :-1], windows[:, 1:])
    assert losses.mean().item() == pytest.approx(mean.item(), rel=1e-5)
    # a longer length reads the same windows further: with unchanged angles, the first T positions agree
    longer = position_losses(extend_context(model, 4 * T, "none"), torch.from_numpy(tokens.astype(np.int64)),
                             4 * T, n_windows=5)
    assert longer.shape == (4 * T,) and torch.allclose(longer[:T], losses, atol=1e-5)
    with pytest.raises(ArgumentError, match="hold n_windows=32 windows of length \\+ 1 = 17 ids"):
        position_losses(model, tokens[:300], T)


def test_range_means():
    losses = torch.arange(8, dtype=torch.float32)
    assert range_means(losses, [0, 2, 8]) == [0.5, 4.5]
    with pytest.raises(ArgumentError, match="increasing positions within the 8 losses"):
        range_means(losses, [0, 9])


# ---------------------------------------------------------------------------------- retrieval


def test_a_probe_has_the_length_asked_for_and_names_its_hero_once_at_the_distance(tokenizer):
    world = World.generate(0)
    names = {c.name for c in world.characters}
    end = tokenizer.special_tokens[ENDOFTEXT]
    for length, distance in ((128, 48), (256, 255), (512, 48)):
        probes = retrieval_probe(tokenizer, 6, length, distance)
        assert len({p.answer for p in probes}) > 1
        for probe in probes:
            assert len(probe.ids) == length
            assert distance - 40 < probe.distance <= distance  # filler comes in whole sentences
            story = probe.ids[-probe.distance:]
            assert probe.ids[-probe.distance - 1] == end  # the story is a document of its own
            text = tokenizer.decode(story)
            assert text.startswith("Once upon a time, there was") and text.endswith(" In the end,")
            assert probe.answer in names and probe.answer_id in probe.candidate_ids
            assert tokenizer.decode(probe.ids).count(probe.answer) == 1  # only the opening names the hero
            assert probe.ids.count(probe.answer_id) == 1 and probe.answer_id in story[:20]
            assert not set(tokenizer.decode(story[20:]).replace(",", " ").replace(".", " ").split()) & names
    assert len(probes[0].candidate_ids) == len(world.characters)
    assert retrieval_probe(tokenizer, 3, 128, 48, seed=1) != retrieval_probe(tokenizer, 3, 128, 48, seed=2)
    assert retrieval_probe(tokenizer, 3, 128, 48) == retrieval_probe(tokenizer, 3, 128, 48)


def test_probes_refuse_what_cannot_be_built(tokenizer):
    with pytest.raises(ArgumentError, match="distance=128 must be"):
        retrieval_probe(tokenizer, 4, 128, 128)
    with pytest.raises(ArgumentError, match="distance=10 is too short"):
        retrieval_probe(tokenizer, 4, 128, 10)
    bytes_only = Tokenizer.train(["Mina and Tobin"], vocab_size=256 + 5)  # bytes and the special tokens, no merges
    with pytest.raises(ArgumentError, match="start with a token of their own"):
        retrieval_probe(bytes_only, 4, 128, 48)


def test_the_course_model_retrieves_its_hero_at_its_trained_context_far_above_chance(tokenizer):
    """cpu-tiny (learned positions, 128 tokens) names the hero of a story it read 48 tokens back."""
    model, loaded = load_model(RUNS / "cpu-tiny" / "model.pt", device="cpu")
    assert loaded == tokenizer
    probes = retrieval_probe(tokenizer, 32, model.config.block_size, 48)
    chance = 1 / len(probes[0].candidate_ids)
    assert retrieval_accuracy(model, probes) > 0.5 > 10 * chance
    torch.manual_seed(0)
    random_model = GPT(GPTConfig(**{**model.config.to_dict(), "n_layer": 1})).eval()
    assert retrieval_accuracy(random_model, probes) < 0.25
    with pytest.raises(ArgumentError, match="of one length"):
        retrieval_accuracy(model, [*probes[:2], *retrieval_probe(tokenizer, 1, 64, 48)])


# ---------------------------------------------------------------------------------- the record script


def test_record_context_writes_every_run_and_measures_every_model(tmp_path, monkeypatch, record_script):
    record = record_script
    monkeypatch.setattr(record, "PROBES", 4)
    monkeypatch.setattr(record, "POSITION_WINDOWS", 2)
    monkeypatch.setattr(record, "NEAR_DISTANCE", 40)
    overrides = ["corpus_chars=300000", "batch_size=4", "block_size=64", "max_steps=3", "warmup_steps=1",
                 "eval_every=3", "eval_batches=1", "log_every=1", "sample_every=0", "device=cpu",
                 "model.n_layer=1", "model.n_head=2", "model.n_embd=16", f"data_dir={tmp_path / 'data'}"]
    runs = record.record_context(tmp_path, overrides, progress=False)
    assert list(runs) == ["cpu-rope", "cpu-rope-long/none", "cpu-rope-long/interpolation", "cpu-rope-long/ntk"]
    assert sorted(p.name for p in (tmp_path / "cpu-rope").iterdir()) == [
        "context.json", "metrics.jsonl", "model.pt", "run.json", "tokenizer.json"]
    model, _ = load_model(tmp_path / "cpu-rope" / "model.pt", device="cpu")
    assert model.config.position == "rope" and model.config.block_size == 64
    for method, scale in (("none", 1.0), ("interpolation", 2.0), ("ntk", 1.0)):
        run = json.loads((tmp_path / "cpu-rope-long" / method / "run.json").read_text())
        assert run["config"]["block_size"] == 128 and run["config"]["batch_size"] == 2 and run["steps"] == 3
        assert run["extension"]["method"] == method and run["extension"]["rope_scale"] == scale
        assert [r["step"] for r in read_metrics(tmp_path / "cpu-rope-long" / method) if "val_loss" in r] == [3]
    results = json.loads((tmp_path / "cpu-rope" / "context.json").read_text())
    rows = {(row["model"], row["method"], row["length"]): row for row in results["rows"]}
    assert len(rows) == 18 and results["lengths"] == [64, 128, 256]
    assert list(rows["pretrained", "ntk", 256]["loss_by_range"]) == ["0-64", "64-128", "128-256"]
    assert len(rows["pretrained", "ntk", 256]["loss_curve"]) == 256 // record.CURVE_BUCKET
    assert rows["pretrained", "interpolation", 256]["rope_scale"] == 4.0
    assert rows["fine-tuned", "interpolation", 128]["rope_scale"] == 2.0
    # at the trained context every method is the same model
    assert rows["pretrained", "none", 64] | {"method": ""} == rows["pretrained", "ntk", 64] | {"method": ""}
    for row in rows.values():
        assert all(0 <= row[f"retrieval_{kind}"] <= 1 for kind in ("near", "far"))
        assert all(0 < loss < 2 * math.log(1024) for loss in row["loss_by_range"].values())
