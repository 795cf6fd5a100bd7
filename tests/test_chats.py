"""Tests for llmcourse.data.tinyworld.chats: fine-tuning data that keeps the evaluation splits
clean (no held-out fact, no unseen entity in any chat or pair), answers a program can grade, and
streams that are deterministic and leave the pretraining text alone."""

from __future__ import annotations

import itertools
import re

import pytest

from llmcourse.checks import ArgumentError
from llmcourse.data.tinyworld import World, corpus_text
from llmcourse.data.tinyworld.chats import (ARITHMETIC_SHARE, SYSTEM_PROMPTS, arithmetic, chats, grade_reply,
                                            is_refusal, preference_pairs, question_for, questions, reward,
                                            unknown_names, unknown_questions)

WORLD = World.generate(0)
N = 3000


def _texts(chat_list):
    return [message["content"] for chat in chat_list for message in chat]


def test_chats_never_mention_heldout_facts_or_unseen_entities():
    sample = list(itertools.islice(chats(0, world=WORLD), N))
    text = "\n".join(_texts(sample))
    for name in WORLD.unseen_names():
        assert not re.search(rf"\b{name}\b", text), name
    # no chat asks a held-out fact, in either phrasing
    kinds = {"region": "country", "climate": "country", "capital": "country", "towns": "country",
             "exports": "country", "places": "town"}
    heldout = set()
    for fact in WORLD.facts():
        if fact.split == "heldout":
            kind = kinds.get(fact.relation) or ("town" if fact.subject in {t.name for t in WORLD.towns}
                                                 else "character")
            heldout |= {question_for(fact, kind, form).text for form in (0, 1)}
    asked = {m["content"] for chat in sample for m in chat if m["role"] == "user"}
    assert heldout and not asked & heldout


def test_chats_have_the_expected_mix():
    sample = list(itertools.islice(chats(0, world=WORLD), N))
    assert all(chat[-1]["role"] == "assistant" for chat in sample)
    answers = [m["content"] for chat in sample for m in chat if m["role"] == "assistant"]
    refusals = sum(is_refusal(answer) for answer in answers) / len(answers)
    sums = sum(" plus " in answer for answer in answers) / len(answers)
    assert 0.05 < refusals < 0.15 and 0.5 * ARITHMETIC_SHARE < sums < 1.5 * ARITHMETIC_SHARE
    systems = [chat[0]["content"] for chat in sample if chat[0]["role"] == "system"]
    assert set(systems) == set(SYSTEM_PROMPTS) and 0.2 < len(systems) / N < 0.4
    assert max(sum(m["role"] == "user" for m in chat) for chat in sample) >= 2  # multi-turn chats exist


def test_unknown_names_belong_to_no_entity():
    names = unknown_names(WORLD)
    known = {e.name for e in WORLD.countries + WORLD.towns + WORLD.characters} | WORLD.unseen_names()
    assert len(names) == 60 and not set(names) & known
    assert set(names.values()) == {"country", "town", "character"}
    corpus = corpus_text(300_000, 0, world=WORLD)
    assert not any(re.search(rf"\b{name}\b", corpus) for name in names)


def test_answers_are_graded_correct_and_refusals_and_inventions_are_told_apart():
    for split in ("sft", "heldout"):
        for question in questions(WORLD, split):
            assert grade_reply(question, question.answer) == "correct", question
            assert question.answer.startswith(question.cloze)
    capital = next(q for q in questions(WORLD, "sft") + questions(WORLD, "heldout") if q.relation == "capital")
    assert grade_reply(capital, "I don't know.") == "refusal"
    assert grade_reply(capital, "The capital is Nowhere.") == "wrong"
    assert grade_reply(capital, capital.answer.lower()) == "correct"  # any case
    unseen = questions(WORLD, "unseen")
    assert unseen and all(grade_reply(q, q.answer) == "wrong" for q in unseen)  # the truth is unknowable
    assert all(grade_reply(q, f"I don't know anyone called {q.subject}.") == "refusal" for q in unseen)
    friends = next(q for q in questions(WORLD, "sft") if q.relation == "friends" and len(q.values) > 1)
    assert grade_reply(friends, f"They are friends with {friends.values[0]}.") == "wrong"  # all, not some


def test_each_fact_is_asked_in_both_phrasings_and_the_split_sizes_add_up():
    facts = WORLD.facts(include_unseen=True)
    assert sum(len(questions(WORLD, split)) for split in ("sft", "heldout", "unseen")) == len(facts)
    fact = facts[0]
    kinds = {question_for(fact, "country", form).text for form in (0, 1)}
    assert len(kinds) == 2
    with pytest.raises(ArgumentError):
        questions(WORLD, "unknown")


def test_preference_pairs_prefer_the_truth_and_honest_refusals():
    pairs = list(itertools.islice(preference_pairs(0, world=WORLD), 2000))
    kinds = {pair.kind for pair in pairs}
    assert kinds == {"wrong_fact", "invention", "over_refusal", "off_topic", "rambling"}
    for pair in pairs:
        assert pair.chosen != pair.rejected
        assert pair.prompt[-1]["role"] == "user"
        if pair.kind == "invention":
            assert is_refusal(pair.chosen) and not is_refusal(pair.rejected)
        elif pair.kind == "over_refusal":
            assert is_refusal(pair.rejected) and not is_refusal(pair.chosen)
        elif pair.kind == "rambling":
            assert pair.rejected.startswith(pair.chosen) and len(pair.rejected) > len(pair.chosen)
        else:
            assert not is_refusal(pair.chosen)
    text = "\n".join(p.chosen + p.rejected + p.prompt[-1]["content"] for p in pairs)
    assert not any(re.search(rf"\b{name}\b", text) for name in WORLD.unseen_names())
    heldout_texts = {q.text for q in questions(WORLD, "heldout")}
    assert not any(p.prompt[-1]["content"] in heldout_texts for p in pairs)


def test_arithmetic_splits_are_disjoint_and_graded_by_the_last_number():
    train = {q.subject for q in itertools.islice(arithmetic(0, split="train"), 3000)}
    held = {q.subject for q in itertools.islice(arithmetic(0, split="eval"), 1000)}
    assert train and held and not train & held
    assert len(held) / (len(train) + len(held)) == pytest.approx(0.2, abs=0.06)
    question = next(arithmetic(0, split="eval"))
    a, b = map(int, question.subject.split("+"))
    assert grade_reply(question, f"{a} plus {b} is {a + b}.") == "correct"
    assert grade_reply(question, f"{a} plus {b} is {a + b + 1}.") == "wrong"
    assert grade_reply(question, f"{a} plus {b} is.") == "wrong"  # the question's numbers are no answer
    assert grade_reply(question, f"{a + b}") == "correct"
    with pytest.raises(ArgumentError):
        arithmetic(0, largest=0)


def test_streams_are_deterministic_and_named_errors():
    assert list(itertools.islice(chats(5), 50)) == list(itertools.islice(chats(5), 50))
    assert list(itertools.islice(chats(5), 50)) != list(itertools.islice(chats(6), 50))
    assert list(itertools.islice(preference_pairs(5), 20)) == list(itertools.islice(preference_pairs(5), 20))
    with pytest.raises(ArgumentError, match="unknown_share"):
        chats(0, unknown_share=2.0)


def test_the_verifiable_reward_pays_for_right_answers_and_honest_refusals():
    known = questions(WORLD, "sft")[0]
    asked = unknown_questions(WORLD)
    assert {q.subject for q in asked} == set(unknown_names(WORLD))
    assert all(is_refusal(q.answer) and q.split == "unknown" for q in asked)
    assert reward(known, known.answer) == 1.0 and reward(known, "I don't know.") == 0.0
    assert reward(known, "Something else entirely.") == 0.0
    assert reward(asked[0], asked[0].answer) == 1.0  # declining about an entity nobody knows
    assert reward(asked[0], f"{asked[0].subject} is a country in the north.") == 0.0  # an invention
    unseen = questions(WORLD, "unseen")[0]
    assert reward(unseen, unseen.answer) == 0.0 and reward(unseen, "I don't know.") == 1.0
