"""Chapter 15: the report card's measurements, each against an independent computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmcourse.checks import ArgumentError
from llmcourse.cli import main
from llmcourse.data.tinyworld import World
from llmcourse.data.tinyworld.chats import grade_reply, questions
from llmcourse.data.tinyworld.frequency import COUNTS, fact_counts, frequency_corpus, frequency_questions
from llmcourse.evaluate import (REPORT_ROWS, REPORT_SCHEMA, Answers, OnePassTrainer, abstention_score,
                                answer_confidences, ask, expected_calibration_error, format_reports,
                                heldout_documents, heldout_loss, ngram_overlap, penalty_for, reliability_bins,
                                report_card, story_statistics)
from llmcourse.finetune import complete_questions, question_prompts
from llmcourse.model import GPT, GPTConfig
from llmcourse.runs import load_model
from llmcourse.train_config import TrainConfig


@pytest.fixture(scope="module")
def micro(micro_base):
    model, tokenizer = load_model(micro_base, device="cpu")
    return model, tokenizer


# ---------------------------------------------------------------------------------- held-out text


def test_heldout_loss_of_one_short_document_is_the_model_loss(micro):
    model, tokenizer = micro
    text = "Once upon a time, there was a fox named Pipa."
    ids = [tokenizer.special_tokens["<|endoftext|>"]] + tokenizer.encode_ordinary(text)
    x, y = torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])
    with torch.no_grad():
        expected = F.cross_entropy(model(x)[0][0], y[0]).item()
    result = heldout_loss(model, tokenizer, [text])
    assert result.tokens == len(ids) - 1
    assert result.bytes == len(text.encode())  # every target is a piece of the text
    assert result.loss == pytest.approx(expected, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(expected), rel=1e-5)
    assert result.bits_per_byte == pytest.approx(expected * result.tokens / math.log(2) / result.bytes, rel=1e-5)


def test_heldout_loss_counts_every_token_of_a_long_document_once(micro):
    model, tokenizer = micro
    texts = heldout_documents(3_000)
    assert sum(map(len, texts)) >= 3_000
    result = heldout_loss(model, tokenizer, texts, batch_size=3)
    assert result.tokens == sum(len(tokenizer.encode_ordinary(t)) for t in texts)
    assert result.bytes == sum(len(t.encode()) for t in texts)
    assert result.tokens > model.config.block_size  # windows were needed
    assert heldout_loss(model, tokenizer, texts, batch_size=64).nats == pytest.approx(result.nats, rel=1e-5)


def test_heldout_documents_are_new_documents_about_the_same_world():
    from llmcourse.data.tinyworld import corpus_text

    training = corpus_text(400_000)
    texts = heldout_documents(20_000)
    stories = [t for t in texts if t.startswith("Once")]
    assert stories and not any(t in training for t in stories)
    names = {e.name for e in World.generate(0).characters}
    assert any(name in texts[0] or name in texts[1] for name in names)
    with pytest.raises(ArgumentError):
        heldout_loss(None, None, [])


# ---------------------------------------------------------------------------------- answers


def test_answer_confidences_equal_a_row_by_row_computation():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    prompts = [[1, 2, 3], [4], [5, 6, 7, 8, 9]]
    responses = [[10, 11], [12, 13, 14, 15], [16]]
    expected = []
    for prompt, response in zip(prompts, responses):
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logprobs = F.log_softmax(model(ids)[0][0].double(), dim=-1)
        expected.append(math.exp(sum(logprobs[len(prompt) - 1 + i, token].item() for i, token in enumerate(response))))
    assert answer_confidences(model, prompts, responses, batch_size=2) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ArgumentError, match="one response per prompt"):
        answer_confidences(model, prompts, responses[:2])


def test_ask_as_cloze_agrees_with_complete_questions_and_grades_each_reply(micro):
    model, tokenizer = micro
    asked = questions(World.generate(0), "heldout")[:5]
    answers = ask(model, tokenizer, asked, chat=False, max_new_tokens=16)
    assert answers.replies == complete_questions(model, tokenizer, asked)
    assert answers.grades == [grade_reply(q, r) for q, r in zip(asked, answers.replies)]
    assert all(0 < c <= 1 for c in answers.confidences)
    assert sum(answers.shares().values()) == pytest.approx(1)
    chat = ask(model, tokenizer, asked, chat=True, max_new_tokens=4)
    assert len(chat.replies) == 5 and question_prompts(tokenizer, asked)[0][-1] == tokenizer.special_tokens["<|assistant|>"]


# ---------------------------------------------------------------------------------- calibration


def test_ece_equals_torchmetrics_binary_calibration_error():
    from torchmetrics.functional.classification import binary_calibration_error

    generator = torch.Generator().manual_seed(0)
    for n_bins in (1, 5, 10, 15):
        confidences = torch.rand(500, generator=generator) * 0.999  # torchmetrics gives 1.0 a bin of its own
        correct = torch.rand(500, generator=generator) < confidences ** 2
        expected = binary_calibration_error(confidences, correct.long(), n_bins=n_bins, norm="l1").item()
        assert expected_calibration_error(confidences, correct, n_bins) == pytest.approx(expected, abs=1e-6)


def test_reliability_bins_by_hand_and_confidence_one_in_the_last_bin():
    bins = reliability_bins([0.05, 0.15, 0.95, 1.0], [False, True, True, False], n_bins=10)
    assert bins["count"].tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert bins["confidence"][9].item() == pytest.approx(0.975)
    assert bins["accuracy"].tolist()[:2] == [0.0, 1.0] and bins["accuracy"][9].item() == 0.5
    # 1/4 |0 - .05| + 1/4 |1 - .15| + 2/4 |.5 - .975|
    assert expected_calibration_error([0.05, 0.15, 0.95, 1.0], [False, True, True, False]) == pytest.approx(
        0.25 * 0.05 + 0.25 * 0.85 + 0.5 * 0.475)
    assert expected_calibration_error([0.7] * 10, [True] * 7 + [False] * 3) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ArgumentError, match="probabilities"):
        reliability_bins([1.5], [True])
    with pytest.raises(ArgumentError, match="one correct flag per confidence"):
        reliability_bins([0.5, 0.5], [True])


# ---------------------------------------------------------------------------------- abstention


def _answers(grades, confidences):
    return Answers([], ["a reply"] * len(grades), list(grades), list(confidences))


def test_abstention_score_by_hand():
    answers = _answers(["correct", "wrong", "wrong", "refusal"], [0.9, 0.8, 0.3, 0.5])
    assert penalty_for(0.75) == pytest.approx(3.0) and penalty_for(0.0) == 0.0
    assert abstention_score(answers, penalty=0) == {"score": 0.25, "correct": 0.25, "wrong": 0.5, "abstained": 0.25}
    assert abstention_score(answers, penalty=3)["score"] == pytest.approx((1 - 3 * 2) / 4)
    assert abstention_score(answers, penalty=3, threshold=0.85) == {"score": 0.25, "correct": 0.25, "wrong": 0.0,
                                                                    "abstained": 0.75}
    with pytest.raises(ArgumentError):
        penalty_for(1.0)


def test_calibrated_answers_score_best_when_abstaining_below_the_break_even_threshold():
    """Kalai et al. 2025: with penalty t/(1-t), a calibrated model does best answering above t."""
    generator = torch.Generator().manual_seed(1)
    confidences = torch.rand(20_000, generator=generator)
    correct = torch.rand(20_000, generator=generator) < confidences  # calibrated by construction
    answers = _answers(["correct" if c else "wrong" for c in correct.tolist()], confidences.tolist())
    grid = [i / 20 for i in range(20)]
    for t in (0.0, 0.5, 0.75):
        scores = [abstention_score(answers, penalty_for(t), threshold)["score"] for threshold in grid]
        assert abs(grid[int(np.argmax(scores))] - t) <= 0.05


# ---------------------------------------------------------------------------------- contamination, stories


def test_ngram_overlap_by_hand():
    corpus = ["The capital of Velora is Brinley. It often rains there.", "Pipa likes honey."]
    items = ["the capital of Velora is Brinley", "The capital of Velora is Dunmore", "Pipa likes honey", "rain"]
    overlap = ngram_overlap(items, corpus, n=3)
    assert overlap[0] == 1.0
    assert overlap[1] == pytest.approx(3 / 4)  # "the capital of", "capital of velora", "of velora is" are there
    assert overlap[2] == 1.0  # exactly n words
    assert overlap[3] == 0.0  # a 1-word item is one 1-gram: "rain" is not a word of the corpus ("rains" is)
    assert ngram_overlap(["Pipa likes"], corpus, n=3) == [1.0]  # shorter than n: the whole item
    assert ngram_overlap([""], corpus) == [0.0]


def test_story_statistics_by_hand():
    looping = story_statistics(["a b c d a b c d a b c d"], n=4)
    assert looping["repetition_4"] == pytest.approx(1 - 4 / 9)  # 9 4-grams, 4 distinct
    assert looping["distinct_2"] == pytest.approx(4 / 11)
    fresh = story_statistics(["one two three four five", "six seven eight nine ten"])
    assert fresh == {"repetition_4": 0.0, "distinct_2": 1.0}
    same = story_statistics(["one two three"] * 4)
    assert same["distinct_2"] == pytest.approx(2 / 8)


# ---------------------------------------------------------------------------------- the report card


@pytest.fixture(scope="module")
def card(micro):
    model, tokenizer = micro
    return report_card(model, tokenizer, chat=True, text_chars=2_000, stories=2, story_tokens=8)


def test_report_card_schema_and_ranges(card):
    assert card["schema"] == REPORT_SCHEMA and card["asked_as"] == "chat"
    json.dumps(card)  # JSON-ready
    assert set(card["facts"]) == {"sft", "heldout", "unseen", "unknown"}
    for split in card["facts"].values():
        assert sum(split[g] for g in ("correct", "refusal", "wrong")) == pytest.approx(1) and split["n"] > 0
    assert card["facts"]["unseen"]["correct"] == 0 and card["facts"]["unknown"]["correct"] == 0
    assert 0 <= card["invention_rate"] <= 1 and 0 <= card["calibration"]["ece"] <= 1
    assert sum(card["calibration"]["bins"]["count"]) == card["facts"]["sft"]["n"] + card["facts"]["heldout"]["n"]
    assert card["text"]["bits_per_byte"] > 0 and card["stories"]["tokens_per_s"] > 0


def test_format_reports_prints_every_row_side_by_side(card):
    table = format_reports({"a": card, "b": card})
    lines = table.splitlines()
    assert len(lines) == 2 + len(REPORT_ROWS)
    assert all(label in table for label, _, _ in REPORT_ROWS)
    with pytest.raises(ArgumentError, match="not a report card"):
        format_reports({"x": {"loss": 1}})


def test_cli_eval_writes_json_and_compares_saved_reports(micro_base, tmp_path, capsys, card):
    saved = tmp_path / "saved.json"
    saved.write_text(json.dumps({"earlier": card}))
    out = tmp_path / "report.json"
    assert main(["eval", "--checkpoint", micro_base, "--report", str(saved), "--out", str(out), "--stories", "2",
                 "--text-chars", "2000", "--ask", "completion"]) == 0
    written = json.loads(out.read_text())
    assert set(written) == {"earlier", micro_base} and written[micro_base]["asked_as"] == "completion"
    assert "earlier" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["eval"], "nothing to evaluate"),
    (["eval", "--checkpoint", "no/such/model.pt"], "no checkpoint at"),
    (["eval", "--report", "no/such.json"], "no such file"),
])
def test_cli_eval_errors_are_messages(argv, message, capsys):
    assert main(argv) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [(json.dumps({"x": {"loss": 1}}), "not a report card"),
                                              (json.dumps([1, 2]), "holds no report cards"),
                                              ("{not json", "")])
def test_cli_eval_rejects_a_file_that_is_not_a_report(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert main(["eval", "--report", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err


# ---------------------------------------------------------------------------------- frequency


def test_each_fact_is_stated_exactly_its_count():
    world, stories = World.generate(2), World.generate(0)
    counts = fact_counts(world)
    assert set(counts.values()) == set(COUNTS) and len(counts) == len(world.facts())
    shares = {c: list(counts.values()).count(c) / len(counts) for c in COUNTS}
    assert shares[1] > shares[2] > shares[5] > shares[20] > 0.05
    texts = frequency_corpus(world, 20_000, story_world=stories)
    sentences = [s for text in texts if not text.startswith("Once") for s in _sentences(text)]
    by_count = frequency_questions(world, story_world=stories)
    for count in COUNTS:
        for question in by_count[count][:10]:
            assert sentences.count(question.answer) == count
            assert all(question.cloze not in text for text in texts if text.startswith("Once"))
    assert all(q.subject not in {e.name for e in stories.characters + stories.towns + stories.countries}
               for items in by_count.values() for q in items)
    with pytest.raises(ArgumentError, match="same seed"):
        frequency_corpus(world, 100, story_world=World.generate(2))


def _sentences(text):
    parts = text.split(". ")
    return [p if p.endswith(".") else p + "." for p in parts]


def test_one_pass_trainer_reads_the_tokens_once_in_order(micro_tokenizer, tmp_path):
    tokens = np.arange(2 * 3 * 8 + 1) % micro_tokenizer.vocab_size
    config = TrainConfig(model={"n_layer": 1, "n_head": 2, "n_embd": 16}, batch_size=3, block_size=8,
                         max_steps=2, warmup_steps=0, eval_every=0, sample_every=0, checkpoint_every=0,
                         out_dir=str(tmp_path))
    trainer = OnePassTrainer(config, tokenizer=micro_tokenizer, train_tokens=tokens, val_tokens=tokens,
                             progress=False)
    seen = []
    for _ in range(3):
        x, y = trainer.next_batch()
        assert torch.equal(x[:, 1:], y[:, :-1])
        seen.append(x.flatten())
        trainer.step += 1
    assert torch.equal(torch.cat(seen[:2]), torch.as_tensor(tokens[:-1]))
    assert torch.equal(seen[2], seen[0])  # a second pass starts again


def test_frequency_experiment_end_to_end_on_a_micro_model(micro, tmp_path):
    from llmcourse.evaluate import frequency_experiment

    model, tokenizer = micro
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(model={"n_layer": 1, "n_head": 2, "n_embd": 16}, batch_size=16, block_size=64,
                         max_steps=1, warmup_steps=0, eval_every=0, sample_every=0, checkpoint_every=0,
                         out_dir=str(tmp_path))
    trained, result = frequency_experiment(config, tokenizer, model=model, story_chars=5_000)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the caller's model is kept
    assert not torch.equal(trained.blocks[0].mlp.fc_in.weight, model.blocks[0].mlp.fc_in.weight)
    asked = frequency_questions(World.generate(2), story_world=World.generate(0))
    for when in ("before", "after"):
        assert sorted(result[when]) == [0, *COUNTS]
        assert all(result[when][count]["n"] == len(asked[count]) for count in asked)
        assert all(0 <= entry["correct"] <= 1 and 0 <= entry["confidence"] <= 1 for entry in result[when].values())
    assert result["after"][0]["correct"] == 0  # nothing about a never-stated entity can be graded correct
    assert result["singleton_share"] == pytest.approx(len(asked[1]) / sum(len(asked[c]) for c in COUNTS))
    assert result["steps"] == (result["train_tokens"] - 1) // (16 * 64)


def test_decoding_speed_runs_a_fixed_workload(micro, monkeypatch):
    from llmcourse import evaluate

    model, tokenizer = micro
    seen = []
    real_generate = evaluate.generate

    def counting(*args, **kwargs):
        completions = real_generate(*args, **kwargs)
        seen.append([len(c.token_ids) for c in completions])
        return completions

    monkeypatch.setattr(evaluate, "generate", counting)
    speed = evaluate.decoding_speed(model, tokenizer, batch=3, new_tokens=5, repeats=2)
    assert speed > 0 and seen == [[5, 5, 5], [5, 5, 5]]  # no row ended early: special tokens are ruled out
