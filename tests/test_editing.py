"""llmcourse.editing: the rank-one update maps the key to the value, leaves C⁻¹-orthogonal directions
alone and is the least change; causal tracing restores what it should; an edit changes one weight
of a copy by a rank-one matrix and makes the prompt say the new object; bad arguments are refused.

Shapes, positions and exact identities are checked on tiny random GPTs over a byte-level tokenizer
(no merges: every character is one token). A random model's predictions hardly depend on anything,
so what needs a model that knows facts uses the course's pretrained cpu-tiny (TinyWorld seed 0,
where the capital of Ardmark is Bramby and that of Vashuna is Selby)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llmcourse.checks import ArgumentError
from llmcourse.editing import (Edit, EditReport, Score, ablate_mlp_layers, compute_value, edit_fact, edit_report,
                               edit_rows, key_at, key_covariance, output_projection, prompt_ids, rank_one_update,
                               sample_prefixes, share_completed, subject_positions, target_probability,
                               trace_layers)
from llmcourse.generate import generate
from llmcourse.model import GPT, GPTConfig
from llmcourse.runs import load_model
from llmcourse.sampling import SamplingSettings
from llmcourse.tokenizer import Tokenizer

TOKENIZER = Tokenizer([])  # bytes only: one token per character, 256 + 5 special ids
PROMPT = "The capital of Ardmark is"
CPU_TINY = Path(__file__).resolve().parents[1] / "book" / "runs" / "cpu-tiny" / "model.pt"


@pytest.fixture(scope="module")
def pretrained():
    """cpu-tiny and its tokenizer (a copy for each test that changes it)."""
    return load_model(CPU_TINY, device="cpu")


def tiny_gpt(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    settings = dict(vocab_size=TOKENIZER.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=16)
    return GPT(GPTConfig(**{**settings, **overrides})).eval()


def random_problem(seed: int, width: int = 5, hidden: int = 7):
    """A weight (C, H), key (H,), value (C,) and a symmetric positive definite covariance (H, H), in float64."""
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(width, hidden, generator=generator, dtype=torch.float64)
    key = torch.randn(hidden, generator=generator, dtype=torch.float64)
    value = torch.randn(width, generator=generator, dtype=torch.float64)
    keys = torch.randn(3 * hidden, hidden, generator=generator, dtype=torch.float64)
    return weight, key, value, keys.T @ keys / len(keys) + 0.1 * torch.eye(hidden, dtype=torch.float64)


# ---------------------------------------------------------------------------------- rank_one_update


@given(st.integers(0, 10_000))
def test_the_update_maps_the_key_to_the_value_and_is_rank_one(seed):
    weight, key, value, covariance = random_problem(seed)
    new = rank_one_update(weight, key, value, covariance)
    torch.testing.assert_close(new @ key, value, rtol=1e-10, atol=1e-10)
    assert torch.linalg.matrix_rank(new - weight).item() == 1


@given(st.integers(0, 10_000))
def test_directions_orthogonal_to_the_whitened_key_keep_their_output(seed):
    weight, key, _, covariance = random_problem(seed)
    new = rank_one_update(weight, key, torch.randn(weight.shape[0], dtype=torch.float64), covariance)
    u = torch.linalg.solve(covariance, key)
    x = torch.randn(weight.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x = x - (u @ x) / (u @ u) * u  # remove x's component along u: now uᵀ x = 0
    torch.testing.assert_close(new @ x, weight @ x, rtol=1e-10, atol=1e-10)


@given(st.integers(0, 10_000))
def test_with_the_identity_it_is_the_least_frobenius_change(seed):
    weight, key, value, _ = random_problem(seed)
    change = rank_one_update(weight, key, value) - weight
    # the minimum-norm Δ with Δ key = value - W key: Δᵀ solves the underdetermined keyᵀ Δᵀ = (value - W key)ᵀ
    least = torch.linalg.lstsq(key[None, :], (value - weight @ key)[None, :], driver="gelsd").solution.T
    torch.testing.assert_close(change, least, rtol=1e-9, atol=1e-9)


@given(st.integers(0, 10_000))
def test_with_a_covariance_no_other_solution_disturbs_the_keys_less(seed):
    """tr(Δ C Δᵀ) = E ||Δ k||² is smallest for ROME's Δ among all Δ with Δ k* = v* - W k*."""
    weight, key, value, covariance = random_problem(seed)
    change = rank_one_update(weight, key, value, covariance) - weight
    other = torch.randn(weight.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    other = change + other - torch.outer(other @ key, key) / (key @ key)  # still maps key to value
    torch.testing.assert_close(other @ key, change @ key)
    def cost(delta):
        return torch.trace(delta @ covariance @ delta.T).item()

    assert cost(change) <= cost(other) + 1e-9


def test_the_update_keeps_the_weight_dtype():
    weight, key, value, covariance = random_problem(0)
    new = rank_one_update(weight.float(), key.float(), value.float(), covariance.float())
    assert new.dtype == torch.float32
    torch.testing.assert_close(new @ key.float(), value.float(), rtol=1e-4, atol=1e-4)


def test_the_update_refuses_bad_shapes_a_singular_covariance_and_a_zero_key():
    weight, key, value, covariance = random_problem(0)
    with pytest.raises(ArgumentError, match="key"):
        rank_one_update(weight, key[:-1], value)
    with pytest.raises(ArgumentError, match="value"):
        rank_one_update(weight, key, value[:-1])
    with pytest.raises(ArgumentError, match="covariance"):
        rank_one_update(weight, key, value, covariance[:-1])
    with pytest.raises(ArgumentError, match="positive definite"):
        rank_one_update(weight, key, value, torch.zeros_like(covariance))
    with pytest.raises(ArgumentError, match="positive definite"):
        rank_one_update(weight, key, value, covariance + torch.triu(torch.ones_like(covariance), 1))
    with pytest.raises(ArgumentError, match="key is zero"):
        rank_one_update(weight, torch.zeros_like(key), value, covariance)


# ---------------------------------------------------------------------------------- prompts


def test_subject_positions_cover_exactly_the_subject():
    ids = prompt_ids(TOKENIZER, PROMPT)
    span = subject_positions(TOKENIZER, PROMPT, "Ardmark")
    assert TOKENIZER.decode(ids[span.start:span.stop]) == "Ardmark"
    assert ids[0] == TOKENIZER.special_tokens["<|endoftext|>"]
    assert subject_positions(TOKENIZER, "Ardmark is far", "Ardmark") == range(1, 8)


def test_subject_positions_refuse_a_missing_subject_or_part_of_a_word():
    with pytest.raises(ArgumentError, match="does not occur"):
        subject_positions(TOKENIZER, PROMPT, "Velora")
    with pytest.raises(ArgumentError, match="part of a longer word"):
        subject_positions(TOKENIZER, PROMPT, "Ardma")
    with pytest.raises(ArgumentError, match="non-empty"):
        subject_positions(TOKENIZER, PROMPT, " ")


def test_edit_rows_hold_the_prompt_after_each_prefix_and_the_target_tokens():
    rows = edit_rows(TOKENIZER, PROMPT, "Ardmark", " Selby", prefixes=["It was sunny.", "Hi."])
    assert rows.ids.shape[0] == rows.positions.shape[0] == 3
    target = TOKENIZER.encode_ordinary(" Selby")
    for ids, position, targets in zip(rows.ids, rows.positions, rows.targets):
        assert TOKENIZER.decode([int(ids[position])]) == "k"  # the subject's last token
        kept = targets[targets != -100]
        assert kept.tolist() == target
        # each target is the token after its position: the rows end with the target but its last token
        where = (targets != -100).nonzero().squeeze(1)
        assert ids[where[1:]].tolist() == target[:-1]
    first = edit_rows(TOKENIZER, PROMPT, "Ardmark", " Selby", subject_token=0)
    assert TOKENIZER.decode([int(first.ids[0, first.positions[0]])]) == "A"


def test_edit_rows_refuse_a_bad_subject_token_prefixes_or_target():
    with pytest.raises(ArgumentError, match="subject_token=7"):
        edit_rows(TOKENIZER, PROMPT, "Ardmark", " Selby", subject_token=7)
    with pytest.raises(ArgumentError, match="prefixes"):
        edit_rows(TOKENIZER, PROMPT, "Ardmark", " Selby", prefixes="Hi.")
    with pytest.raises(ArgumentError, match="target"):
        edit_rows(TOKENIZER, PROMPT, "Ardmark", "  ")


# ---------------------------------------------------------------------------------- locating


def trace_inputs():
    ids = prompt_ids(TOKENIZER, PROMPT)
    return ids, subject_positions(TOKENIZER, PROMPT, "Ardmark"), TOKENIZER.encode_ordinary(" B")


def test_target_probability_multiplies_the_probabilities_of_the_target_tokens():
    model = tiny_gpt()
    ids, _, target = trace_inputs()
    logits = model(torch.tensor([ids + target[:-1]]))[0][0].softmax(-1)
    expected = logits[len(ids) - 1, target[0]] * logits[len(ids), target[1]]
    assert target_probability(model, ids, target) == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("site", ["block", "attn", "mlp"])
def test_without_noise_every_restoration_gives_the_clean_probability(site):
    model = tiny_gpt()
    ids, span, target = trace_inputs()
    trace = trace_layers(model, ids, span, target, site=site, noise=0.0, samples=2)
    assert trace.restored.shape == (2, len(ids))
    assert trace.corrupted == pytest.approx(trace.clean, rel=1e-5)
    torch.testing.assert_close(trace.restored, torch.full_like(trace.restored, trace.clean), rtol=1e-5, atol=0)


def test_tracing_restores_nothing_before_the_subject_and_everything_at_the_end():
    model = tiny_gpt()
    ids, span, target = trace_inputs()
    trace = trace_layers(model, ids, span, target[:1], samples=3, seed=1)
    assert trace.clean != pytest.approx(trace.corrupted, rel=1e-3)  # the noise matters
    # states before the subject never saw the noise: putting them back changes nothing
    before = trace.restored[:, :span.start]
    torch.testing.assert_close(before, torch.full_like(before, trace.corrupted), rtol=1e-5, atol=1e-7)
    # the last block's output at the last position is all the next-token prediction reads
    assert trace.restored[-1, -1].item() == pytest.approx(trace.clean, rel=1e-5)
    assert trace.recovered[-1, -1].item() == pytest.approx(1.0, rel=1e-4)
    # the same seed draws the same noise
    again = trace_layers(model, ids, span, target[:1], samples=3, seed=1)
    assert torch.equal(again.restored, trace.restored)


def test_tracing_refuses_bad_arguments():
    model = tiny_gpt()
    ids, span, target = trace_inputs()
    with pytest.raises(ArgumentError, match="site"):
        trace_layers(model, ids, span, target, site="norm")
    with pytest.raises(ArgumentError, match="samples"):
        trace_layers(model, ids, span, target, samples=0)
    with pytest.raises(ArgumentError, match="subject_positions"):
        trace_layers(model, ids, [len(ids)], target)
    with pytest.raises(ArgumentError, match="subject_positions"):
        trace_layers(model, ids, [], target)
    with pytest.raises(ArgumentError, match="noise"):
        trace_layers(model, ids, span, target, noise=-1.0)
    with pytest.raises(ArgumentError, match="target_ids"):
        trace_layers(model, ids, span, [])
    with pytest.raises(ArgumentError, match="block_size"):
        trace_layers(model, ids * 3, span, target)


def test_ablating_a_layer_whose_mlp_writes_nothing_changes_nothing(pretrained):
    model, tokenizer = copy.deepcopy(pretrained[0]), pretrained[1]
    with torch.no_grad():
        model.blocks[2].mlp.fc_out.weight.zero_()
    ids = prompt_ids(tokenizer, PROMPT)
    last = subject_positions(tokenizer, PROMPT, "Ardmark")[-1]
    target = tokenizer.encode_ordinary(" Bramby")
    clean = target_probability(model, ids, target)
    ablated = ablate_mlp_layers(model, ids, last, target)
    assert ablated.shape == (4,)
    assert ablated[2].item() == pytest.approx(clean, rel=1e-5)
    assert ablated[0].item() < 0.9 * clean  # the first MLP does write something the answer needs
    with pytest.raises(ArgumentError, match="position"):
        ablate_mlp_layers(model, ids, len(ids), target)


# ---------------------------------------------------------------------------------- key, value, C


def mlp_outputs(model: GPT, layer: int, ids: torch.Tensor) -> torch.Tensor:
    outputs = []
    handle = model.blocks[layer].mlp.register_forward_hook(lambda m, a, out: outputs.append(out))
    model(ids)
    handle.remove()
    return outputs[0]


@torch.no_grad()
def test_the_key_is_what_the_output_projection_reads():
    model = tiny_gpt()
    rows = edit_rows(TOKENIZER, PROMPT, "Ardmark", " Selby", prefixes=["It was sunny."])
    key = key_at(model, 1, rows.ids[:1], rows.positions[:1])
    assert key.shape == (64,)
    out = mlp_outputs(model, 1, rows.ids[:1])[0, rows.positions[0]]
    torch.testing.assert_close(model.blocks[1].mlp.fc_out(key), out)
    mean = (key + key_at(model, 1, rows.ids[1:], rows.positions[1:])) / 2
    torch.testing.assert_close(key_at(model, 1, rows.ids, rows.positions), mean)


def test_the_value_search_lowers_the_loss_and_leaves_the_model_alone(pretrained):
    model, tokenizer = pretrained
    before = copy.deepcopy(model.state_dict())
    rows = edit_rows(tokenizer, PROMPT, "Ardmark", " Selby")
    key = key_at(model, 1, rows.ids, rows.positions)
    value, losses = compute_value(model, 1, key, rows, steps=20, stop_loss=0.0)
    assert value.shape == (128,) and len(losses) == 20
    assert losses[-1] < 0.5 * losses[0]
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    assert all(param.grad is None for param in model.parameters())
    _, stopped = compute_value(model, 1, key, rows, steps=20, stop_loss=losses[5])
    assert len(stopped) < 20
    with torch.no_grad():  # as on a book page: the search turns gradients on for itself
        _, again = compute_value(model, 1, key, rows, steps=3, stop_loss=0.0)
    assert again == losses[:3]


def test_the_covariance_is_the_mean_outer_product_of_the_keys():
    model = tiny_gpt(block_size=16)
    tokens = torch.randint(0, 256, (40,), generator=torch.Generator().manual_seed(0))  # 16 + 16 + 8
    keys = []
    handle = model.blocks[0].mlp.fc_out.register_forward_pre_hook(lambda m, args: keys.append(args[0][0]))
    with torch.no_grad():
        for window in tokens.split(16):
            model(window[None])
    handle.remove()
    keys = torch.cat(keys).double()
    expected = keys.T @ keys / 40
    covariance = key_covariance(model, 0, tokens, batch_size=1, ridge=0.0)
    assert covariance.shape == (64, 64) and covariance.dtype == torch.float32
    torch.testing.assert_close(covariance, expected.float(), rtol=1e-4, atol=1e-6)
    ridged = key_covariance(model, 0, tokens, ridge=0.5)
    torch.testing.assert_close(ridged - covariance, 0.5 * expected.diagonal().mean().float() * torch.eye(64),
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(ArgumentError, match="token_ids"):
        key_covariance(model, 0, tokens[None])
    with pytest.raises(ArgumentError, match="empty"):
        key_covariance(model, 0, tokens[:0])


# ---------------------------------------------------------------------------------- the edit


def test_an_edit_changes_one_weight_of_a_copy_by_a_rank_one_matrix(pretrained):
    model, tokenizer = pretrained
    before = copy.deepcopy(model.state_dict())
    tokens = torch.tensor(tokenizer.encode_ordinary("The capital of Duneth is Penley. It often rains in Penley. " * 8))
    covariance = key_covariance(model, 1, tokens)
    edit = edit_fact(model, tokenizer, PROMPT, "Ardmark", "Selby", 1, covariance=covariance, steps=10)
    assert isinstance(edit, Edit) and edit.layer == 1
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    changed = [name for name, tensor in edit.model.state_dict().items() if not torch.equal(before[name], tensor)]
    assert changed == ["blocks.1.mlp.fc_out.weight"]
    weight = edit.model.blocks[1].mlp.fc_out.weight
    update = weight - model.blocks[1].mlp.fc_out.weight
    torch.testing.assert_close(update, edit.update)
    assert torch.linalg.matrix_rank(update.double(), rtol=1e-4).item() == 1
    torch.testing.assert_close(weight @ edit.key, edit.value, rtol=1e-4, atol=1e-4)
    assert weight.stride() == model.blocks[1].mlp.fc_out.weight.stride()  # the memory layout is kept


def test_an_edit_makes_the_prompt_say_the_new_object(pretrained):
    model, tokenizer = pretrained
    ids, target = prompt_ids(tokenizer, PROMPT), tokenizer.encode_ordinary(" Selby")
    edit = edit_fact(model, tokenizer, PROMPT, "Ardmark", "Selby", 1)
    assert target_probability(model, ids, target) < 0.01
    assert target_probability(edit.model, ids, target) > 0.5
    assert share_completed(edit.model, tokenizer, [(PROMPT, "Selby")]) == 1.0
    assert share_completed(model, tokenizer, [(PROMPT, "Bramby")]) == 1.0


def test_the_last_layer_cannot_be_edited_at_the_subject(pretrained):
    """Nothing after the last block reads the subject's position, so no shift there moves the answer."""
    model, tokenizer = pretrained
    edit = edit_fact(model, tokenizer, PROMPT, "Ardmark", "Selby", 3, steps=5)
    assert edit.losses[0] == edit.losses[-1]
    assert edit.update.abs().max().item() < 1e-6


def test_a_swiglu_model_is_edited_in_its_down_projection():
    model = tiny_gpt(mlp="swiglu")
    edit = edit_fact(model, TOKENIZER, PROMPT, "Ardmark", "Selby", 0, steps=2)
    assert output_projection(edit.model, 0) is edit.model.blocks[0].mlp.down_proj
    assert not torch.equal(edit.model.blocks[0].mlp.down_proj.weight, model.blocks[0].mlp.down_proj.weight)


def test_an_edit_refuses_a_bad_layer_a_missing_subject_and_an_empty_object():
    model = tiny_gpt()
    with pytest.raises(ArgumentError, match="layer=2"):
        edit_fact(model, TOKENIZER, PROMPT, "Ardmark", "Selby", 2)
    with pytest.raises(ArgumentError, match="layer=-1"):
        edit_fact(model, TOKENIZER, PROMPT, "Ardmark", "Selby", -1)
    with pytest.raises(ArgumentError, match="does not occur"):
        edit_fact(model, TOKENIZER, PROMPT, "Velora", "Selby", 0)
    with pytest.raises(ArgumentError, match="new_object"):
        edit_fact(model, TOKENIZER, PROMPT, "Ardmark", " ", 0)
    with pytest.raises(ArgumentError, match="Mixture of Experts"):
        edit_fact(tiny_gpt(n_experts=2), TOKENIZER, PROMPT, "Ardmark", "Selby", 0)


# ---------------------------------------------------------------------------------- judging it


def greedy(model: GPT, prompts: list[str]) -> list[str]:
    return [c.text.strip() for c in generate(model, TOKENIZER, prompts, 4, SamplingSettings(temperature=0), stop=["."])]


def test_share_completed_counts_exact_greedy_answers():
    model = tiny_gpt()
    prompts = [PROMPT, "The capital of Velora is"]
    answers = greedy(model, prompts)
    assert share_completed(model, TOKENIZER, list(zip(prompts, answers)), max_new_tokens=4) == 1.0
    assert share_completed(model, TOKENIZER, [(prompts[0], answers[0]), (prompts[1], "nowhere at all")],
                           max_new_tokens=4) == 0.5
    with pytest.raises(ArgumentError, match="pairs"):
        share_completed(model, TOKENIZER, (PROMPT, "Selby"))
    with pytest.raises(ArgumentError, match="pairs"):
        share_completed(model, TOKENIZER, [])


def test_a_report_scores_both_models(pretrained):
    model, tokenizer = pretrained
    edit = edit_fact(model, tokenizer, PROMPT, "Ardmark", "Selby", 1)
    text = "The capital of Duneth is Penley. Pip the fox lived in Penley, a town in Duneth. " * 10
    report = edit_report(model, edit.model, tokenizer, rewrites=[(PROMPT, "Selby")],
                         paraphrases=[("Ardmark's capital city is", "Selby")],
                         neighbours=[("The capital of Duneth is", "Penley"), ("The capital of Galuna is", "Oakport")],
                         tokens=torch.tensor(tokenizer.encode_ordinary(text)))
    assert isinstance(report, EditReport) and isinstance(report.efficacy, Score)
    assert report.efficacy == Score(0.0, 1.0)
    assert report.generalisation.before == 0.0
    assert report.specificity.before == 1.0
    assert report.loss is not None and report.loss.before > 0


def test_sample_prefixes_gives_the_asked_number_of_texts():
    model = tiny_gpt()
    assert sample_prefixes(model, TOKENIZER, 0) == []
    prefixes = sample_prefixes(model, TOKENIZER, 2, max_new_tokens=5)
    assert len(prefixes) == 2 and all(isinstance(prefix, str) for prefix in prefixes)
    assert prefixes == sample_prefixes(model, TOKENIZER, 2, max_new_tokens=5)  # seeded
