"""Tests for llmcourse.data.tinyworld.traces: tool-use traces whose calls and results are right,
whose evaluation subjects never appear in training, which fit a 128-token context with the
course tokenizer, and which are deterministic."""

from __future__ import annotations

import itertools
import re
from collections import Counter
from pathlib import Path

import pytest

from llmcourse.checks import ArgumentError
from llmcourse.data.tinyworld import World
from llmcourse.data.tinyworld import traces
from llmcourse.data.tinyworld.chats import unknown_names
from llmcourse.data.tinyworld.traces import (KINDS, NO_ENTRY, QUESTION_TYPES, arithmetic_eval, direct_messages, entry,
                                             grade, multi_hop_eval, multi_hop_questions, no_entry, tool_tasks,
                                             tool_traces, unknown_lookups, word_problems)
from llmcourse.tokenizer import Tokenizer

WORLD = World.generate(0)
TOKENIZER_FILE = Path(__file__).resolve().parents[1] / "book" / "runs" / "cpu-tiny" / "tokenizer.json"
CONTEXT, SPARE = 128, 4
N = 3000


def _sample(stream, n=N):
    return list(itertools.islice(stream, n))


# ---------------------------------------------------------------------------------- a calculator for the tests


def _calculate(expression: str) -> int:
    """Integers with + - * / (exact division) and the usual precedence, written apart from the
    module so that the test checks the traces, not the module against itself."""
    tokens = re.findall(r"\d+|[-+*/]", expression)
    assert "".join(tokens) == expression.replace(" ", ""), expression
    terms, signs, term = [], [], int(tokens[0])
    for operator, number in zip(tokens[1::2], map(int, tokens[2::2])):
        if operator == "*":
            term *= number
        elif operator == "/":
            assert term % number == 0, f"{expression}: inexact division"
            term //= number
        else:
            terms.append(term)
            signs.append(operator)
            term = number
    total = terms[0] if terms else term
    for sign, value in zip(signs, terms[1:] + [term]):
        total = total + value if sign == "+" else total - value
    return total


def test_the_test_calculator():
    assert _calculate("45 - 12 + 3 * 8") == 57
    assert _calculate("12 * 7") == 84 and _calculate("84 / 7") == 12 and _calculate("5 - 3 - 1") == 1
    assert _calculate("2 * 3 + 4") == 10 and _calculate("7") == 7


def _call(text: str) -> tuple[str, str]:
    match = re.fullmatch(r"(\w+)\((.*)\)", text)
    assert match, text
    return match.group(1), match.group(2)


# ---------------------------------------------------------------------------------- the lookup tool


def test_entry_for_every_seen_entity_and_none_for_unseen_or_unknown():
    for entity in WORLD.countries + WORLD.towns + WORLD.characters:
        text = entry(WORLD, entity.name)
        assert text and text.endswith(".")
    for name in WORLD.unseen_names():
        assert entry(WORLD, name) is None, name
    for name in unknown_names(WORLD):
        assert entry(WORLD, name) is None, name
    assert entry(WORLD, "") is None and entry(WORLD, "Nobody at all") is None


def test_entries_state_the_facts():
    character = WORLD.characters[0]
    text = entry(WORLD, character.name)
    assert all(word in text for word in (character.name, character.species, character.home, character.country))
    town = next(t for t in WORLD.towns if not t.is_capital)
    assert entry(WORLD, town.name) == f"{town.name} is a town in {town.country}."
    capital = next(t for t in WORLD.towns if t.is_capital)
    assert entry(WORLD, capital.name) == f"{capital.name} is the capital of {capital.country}."
    country = WORLD.countries[0]
    text = entry(WORLD, country.name)
    assert country.capital in text and all(export in text for export in country.exports)


def test_entry_forgives_sloppy_names():
    name = WORLD.characters[3].name
    for sloppy in (name.lower(), f"  {name} ", f"{name}.", f"'{name}'", f'"{name}"?', name.upper()):
        assert entry(WORLD, sloppy) == entry(WORLD, name), sloppy


def test_no_entry_text():
    assert no_entry("Zorbel") == "error: no entry for 'Zorbel'" == NO_ENTRY.format(name="Zorbel")


# ---------------------------------------------------------------------------------- arithmetic


def test_word_problems_compute_what_they_say():
    for task in _sample(word_problems(0, digits=(1, 2, 3, 4))) + arithmetic_eval(0, 50):
        roles = [message["role"] for message in task.trace]
        assert roles == ["user", "call", "result", "assistant"]
        tool, expression = _call(task.trace[1]["content"])
        assert tool == "calculator"
        value = _calculate(expression)
        assert value >= 0 and task.trace[2]["content"] == str(value) and task.values == (str(value),)
        operands = [int(number) for number in re.findall(r"\d+", expression)]
        assert len(str(max(operands))) == task.detail and task.kind == "arithmetic"
        assert all(str(number) in task.question for number in operands)  # the question states every number
        assert grade(task, task.answer) == "correct" and task.question == task.trace[0]["content"]


def _signature(task):
    """What makes two problems the same arithmetic: their operators and their numbers."""
    expression = _call(task.trace[1]["content"])[1]
    return tuple(sorted(re.findall(r"[-+*/]", expression))), tuple(sorted(map(int, re.findall(r"\d+", expression))))


def test_arithmetic_splits_are_disjoint():
    train = _sample(word_problems(0, digits=(1, 2)), 4000)
    evaluation = arithmetic_eval(0, 100, digits=(1, 2))
    assert {t.split for t in train} == {"train"} and {t.split for t in evaluation} == {"eval"}
    assert not {_signature(t) for t in train} & {_signature(t) for t in evaluation}


def test_arithmetic_eval_sizes_and_every_template_appears():
    tasks = arithmetic_eval(0, 200)
    assert [t.detail for t in tasks] == [1] * 200 + [2] * 200 + [3] * 200 + [4] * 200
    patterns = [re.compile(re.sub(r"\\\{\w+\\\}", ".+", re.escape(template.question)))
                for template in traces._WORD_PROBLEMS]
    assert len(patterns) >= 6
    used = Counter(next(i for i, p in enumerate(patterns) if p.fullmatch(t.question)) for t in tasks)
    assert set(used) == set(range(len(patterns)))
    operators = {tuple(re.findall(r"[-+*/]", _call(t.trace[1]["content"])[1])) for t in tasks}
    assert {("+",), ("-",), ("*",), ("/",), ("-", "+", "*"), ("*", "+")} <= operators


# ---------------------------------------------------------------------------------- multi-hop


def _check_multi_hop(task, world=WORLD):
    roles = [message["role"] for message in task.trace]
    assert roles == ["user", "call", "result", "call", "result", "assistant"]
    (tool1, first), (tool2, second) = (_call(call) for call in task.calls)
    assert tool1 == tool2 == "lookup" and first == task.subject
    assert task.trace[2]["content"] == entry(world, first) and task.trace[4]["content"] == entry(world, second)
    assert second in task.trace[2]["content"]  # the first entry names what to look up next
    assert task.values and all(value in task.trace[4]["content"] for value in task.values)
    assert grade(task, task.answer) == "correct" and task.detail in QUESTION_TYPES


def test_multi_hop_traces_look_up_what_they_use():
    for task in _sample(multi_hop_questions(0)) + multi_hop_eval(0):
        _check_multi_hop(task)
    world = World.generate(3)
    for task in _sample(multi_hop_questions(3, world=world), 300):
        _check_multi_hop(task, world)


def test_multi_hop_answers_are_true():
    countries = {c.name: c for c in WORLD.countries}
    for task in multi_hop_eval(0):
        home = (WORLD.character(task.subject).country if task.detail.startswith("country_")
                else WORLD.town(task.subject).country)
        country = countries[home]
        assert task.values == (country.exports if task.detail.endswith("exports") else (country.capital,))


def test_eval_subjects_never_appear_in_training_traces():
    evaluation = multi_hop_eval(0)
    subjects = {task.subject for task in evaluation}
    assert {task.split for task in evaluation} == {"eval"}
    assert 0.1 < len(subjects) / (len(WORLD.characters) + len(WORLD.towns)) < 0.3
    assert {task.detail for task in evaluation} == set(QUESTION_TYPES)
    train = _sample(multi_hop_questions(0)) + [t for t in _sample(tool_tasks(0)) if t.kind == "multi_hop"]
    for task in train:
        looked_up = {_call(call)[1] for call in task.calls}
        assert task.split == "train" and not looked_up & subjects
        assert not any(re.search(rf"\b{name}\b", task.question) for name in subjects)
    sft = {fact.key for fact in WORLD.facts() if fact.split == "sft"}
    for task in train:  # training answers state "sft" facts only
        middle = _call(task.calls[1])[1]
        relation = "exports" if task.detail.endswith("exports") else "capital"
        assert (task.subject, "country") in sft and (middle, relation) in sft
    assert multi_hop_eval(0) == evaluation  # deterministic


def test_every_question_type_and_phrasing_appears():
    questions = {task.question for task in _sample(multi_hop_questions(0), 2000)}
    assert len(QUESTION_TYPES) >= 3
    for hops in QUESTION_TYPES.values():
        for form in hops.forms:
            pattern = re.compile(re.escape(form).replace(re.escape("{s}"), r"\w+"))
            assert any(pattern.fullmatch(question) for question in questions), form


# ---------------------------------------------------------------------------------- unknown entities


def test_unknown_lookups_fail_and_refuse():
    invented = unknown_names(WORLD)
    tasks = _sample(unknown_lookups(0), 500)
    for task in tasks:
        assert task.subject in invented and task.subject not in WORLD.unseen_names()
        assert task.calls == (f"lookup({task.subject})",) and task.trace[2]["content"] == no_entry(task.subject)
        assert task.values == () and grade(task, task.answer) == "refusal" and task.kind == "unknown"
    assert {invented[task.subject] for task in tasks} == {"character", "town"}


def test_no_trace_mentions_an_unseen_entity():
    chats = _sample(tool_traces(0, digits=(1, 2, 3, 4))) + [task.messages() for task in multi_hop_eval(0)]
    text = "\n".join(message["content"] for chat in chats for message in chat)
    for name in WORLD.unseen_names():
        assert not re.search(rf"\b{name}\b", text), name


# ---------------------------------------------------------------------------------- the mix and its budget


def test_tool_traces_mix_and_determinism():
    tasks = _sample(tool_tasks(0), 4000)
    shares = Counter(task.kind for task in tasks)
    assert set(shares) == set(KINDS)
    assert 0.45 < shares["arithmetic"] / 4000 < 0.55 and 0.4 < shares["multi_hop"] / 4000 < 0.5
    assert 0.03 < shares["unknown"] / 4000 < 0.07
    assert {task.detail for task in tasks if task.kind == "arithmetic"} == {1, 2, 3}
    chats = _sample(tool_traces(0), 200)
    assert chats == [task.messages() for task in tasks[:200]] == _sample(tool_traces(0), 200)
    assert chats != _sample(tool_traces(1), 200)
    assert arithmetic_eval(0, 10) == arithmetic_eval(0, 10) != arithmetic_eval(1, 10)
    only_sums = _sample(tool_tasks(0, mix=(1, 0, 0)), 50)
    assert {task.kind for task in only_sums} == {"arithmetic"}


def _length(tokenizer, messages):
    """Tokens of the rendered chat: <|endoftext|>, then per message two role/end tokens (three for a
    call: <|assistant|><|call|>) around its text."""
    return 1 + sum(2 + (m["role"] == "call") + len(tokenizer.encode_ordinary(m["content"])) for m in messages)


def test_every_trace_fits_the_context():
    tokenizer = Tokenizer.load(TOKENIZER_FILE)
    for seed in (0, 1, 2, 3):
        world = World.generate(seed)
        tasks = (_sample(tool_tasks(seed, digits=(1, 2, 3, 4), world=world), 1500)
                 + arithmetic_eval(seed, 100, world=world) + multi_hop_eval(seed, world=world))
        asker = traces._HopAsker(world)  # every multi-hop question, in both phrasings, of either split
        tasks += [asker.task(subject, kind, form, "train") for kind, hops in QUESTION_TYPES.items()
                  for subject in asker.subjects[hops.subject] for form in (0, 1)]
        longest = max(tasks, key=lambda task: _length(tokenizer, task.trace))
        assert _length(tokenizer, longest.trace) <= CONTEXT - SPARE, longest.trace


# ---------------------------------------------------------------------------------- grading and arguments


def test_grade():
    task = traces.ToolTask("What is 12 times 7?", (), ("84",), "arithmetic", 2, "eval", "Bamon")
    assert grade(task, "Bamon has 84 plums.") == "correct"
    assert grade(task, "Bamon has 184 plums.") == "wrong" and grade(task, "Bamon has 840 plums.") == "wrong"
    assert grade(task, "12 times 7 is 84.") == "correct" and grade(task, "84 is 12 times 8.") == "wrong"
    assert grade(task, "I don't know.") == "refusal" and grade(task, "No idea at all") == "wrong"
    big = traces.ToolTask("?", (), ("1234",), "arithmetic", 4, "eval", "Bamon")
    assert grade(big, "Bamon has 1,234 kites.") == "correct" and grade(big, "Bamon has 12345 kites.") == "wrong"
    hop = multi_hop_eval(0)[0]
    assert grade(hop, hop.answer.lower()) == "correct" and grade(hop, "I do not know.") == "refusal"
    assert grade(hop, "It is Nowhere.") == "wrong"
    unknown = next(unknown_lookups(0))
    assert grade(unknown, unknown.answer) == "refusal"
    assert grade(unknown, f"{unknown.subject} exports tea.") == "wrong"  # a hallucination


def test_direct_messages():
    task = multi_hop_eval(0)[0]
    assert direct_messages(task) == [{"role": "user", "content": task.question}]
    assert direct_messages(task, with_answer=True)[-1] == {"role": "assistant", "content": task.answer}
    chat = task.messages()
    chat[0]["content"] = "changed"
    assert task.trace[0]["content"] == task.question  # a task's trace cannot be changed through messages()


@pytest.mark.parametrize("make", [
    lambda: word_problems(0, digits=(5,)),
    lambda: word_problems(0, digits=3),
    lambda: word_problems(0, digits=()),
    lambda: word_problems(0, split="test"),
    lambda: multi_hop_questions(0, "heldout"),
    lambda: tool_tasks(0, mix=(0.5, 0.5, 0.5)),
    lambda: tool_tasks(0, mix=(1.0, 0.0)),
    lambda: tool_tasks(0, mix=(1.5, -0.5, 0.0)),
    lambda: arithmetic_eval(0, 0),
    lambda: tool_traces("0"),
])
def test_bad_arguments_fail_at_once(make):
    with pytest.raises(ArgumentError):
        make()
