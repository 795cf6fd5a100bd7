"""Tool-use traces (chapter 17): word problems a calculator solves, questions two lookups answer.

A model that calls tools learns it from examples: chats in which the assistant, instead of
answering at once, writes a call, reads the tool's result and then answers. Chapter 17 fine-tunes
the chat model on such traces and measures its accuracy with and without tools. Two tools:

    calculator(12 * 7)   evaluates the expression; the result is the integer as Python prints it
    lookup(Bamon)        the encyclopedia `entry` of an entity, or `no_entry(name)` if it has none

A trace adds two roles to a chat: "call" (the assistant's call, `name(argument)`) and "result"
(the tool's output, which the model reads but is not trained to write):

    user       Bamon has 12 bowls with 7 plums in each. How many plums does Bamon have?
    call       calculator(12 * 7)
    result     84
    assistant  Bamon has 84 plums.

Three kinds of `ToolTask`, each with the values a correct final reply must name (see `grade`):

    arithmetic  `word_problems`: adding, taking away, multiplying, sharing equally and two-step
                problems about TinyWorld's characters, with operands of 1 to 4 digits
    multi_hop   `multi_hop_questions`: "What does the country where Bamon lives export?" needs
                Bamon's entry (which names the country) and then the country's entry
    unknown     a lookup of an invented name fails and the assistant declines ("I don't know ...")

Evaluation stays apart from training: a fifth of the arithmetic problems (by their numbers) and a
fifth of the characters and towns that multi-hop questions ask about (by name) are "eval" only,
so a fine-tuned model cannot have memorised an eval answer from a training trace. Training traces
only ask facts of the "sft" split (like `chats`). The lookup tool's entries state facts of every
seen entity (held-out ones too: a tool's result is read, not trained on) and nothing about the
unseen entities.

Every trace fits the course's 128-token chat models (tested with the course tokenizer). Each
generator draws from its own named random stream, so none changes any other TinyWorld text.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache

from llmcourse.checks import ArgumentError, check_choice, check_int, check_real
# `_REFUSALS`: a refusal after a failed lookup is worded as the refusals fine-tuning taught
from llmcourse.data.tinyworld.chats import _REFUSALS, Question, grade_reply, is_refusal, question_for, unknown_names
from llmcourse.data.tinyworld.entities import Character, Country, Town
from llmcourse.data.tinyworld.grammar import PRONOUNS, join_words, with_article
from llmcourse.data.tinyworld.streams import stable_fraction, stream_rng
from llmcourse.data.tinyworld.world import World, world_for

__all__ = ["CALCULATOR", "EVAL_FRACTION", "KINDS", "LOOKUP", "MIX", "NO_ENTRY", "QUESTION_TYPES", "ToolTask",
           "arithmetic_eval", "call_text", "direct_messages", "entry", "grade", "multi_hop_eval",
           "multi_hop_questions", "no_entry", "tool_tasks", "tool_traces", "unknown_lookups", "word_problems"]

Message = dict[str, str]
CALCULATOR = "calculator"
LOOKUP = "lookup"
NO_ENTRY = "error: no entry for '{name}'"  # what `lookup` returns for a name that is no entity
KINDS = ("arithmetic", "multi_hop", "unknown")
MIX = (0.5, 0.45, 0.05)  # default shares of KINDS in `tool_traces`
EVAL_FRACTION = 0.2  # share of arithmetic problems and of multi-hop subjects kept for evaluation
SPLITS = ("train", "eval")


def call_text(tool: str, argument: str) -> str:
    """A tool call as the model writes it: "calculator(12 * 7)", "lookup(Bamon)"."""
    return f"{tool}({argument})"


def no_entry(name: str) -> str:
    """The lookup tool's answer for a name that is no entity: "error: no entry for 'Zorbel'"."""
    return NO_ENTRY.format(name=name.strip())


@dataclass(frozen=True)
class ToolTask:
    """A question, the trace that answers it with tools, and how to grade a reply.

    `trace`: the messages user, (call, result) once or twice, assistant. `values`: what a correct
    final reply must name (empty for an unknown entity, where the right reply is a refusal).
    `detail`: for arithmetic the number of digits of the largest operand (1-4), otherwise the
    question type (a key of `QUESTION_TYPES`). `subject`: the character or town asked about.
    """

    question: str
    trace: tuple[Message, ...]
    values: tuple[str, ...]
    kind: str
    detail: int | str
    split: str
    subject: str

    @property
    def answer(self) -> str:
        """The final reply of the trace."""
        return self.trace[-1]["content"]

    @property
    def calls(self) -> tuple[str, ...]:
        """The tool calls of the trace, in order: ("lookup(Bamon)", "lookup(Ostuna)")."""
        return tuple(message["content"] for message in self.trace if message["role"] == "call")

    def messages(self) -> list[Message]:
        """The trace as a chat (fresh dicts, so a caller may change them)."""
        return [dict(message) for message in self.trace]


def _trace(question: str, steps: list[tuple[str, str]], answer: str) -> tuple[Message, ...]:
    """user, then a call and its result per step, then the assistant's answer."""
    messages = [{"role": "user", "content": question}]
    for call, result in steps:
        messages += [{"role": "call", "content": call}, {"role": "result", "content": result}]
    return tuple(messages + [{"role": "assistant", "content": answer}])


def direct_messages(task: ToolTask, *, with_answer: bool = False) -> list[Message]:
    """`task` asked as an ordinary one-turn chat, with no tools (and the answer if `with_answer`)."""
    chat = [{"role": "user", "content": task.question}]
    return chat + ([{"role": "assistant", "content": task.answer}] if with_answer else [])


# ---------------------------------------------------------------------------------- the lookup tool


def entry(world: World, name: str) -> str | None:
    """The encyclopedia entry the lookup tool returns for the country, town or character `name`
    of `world`, or None if no seen entity has that name. Model output is sloppy, so case, spaces,
    quotes and trailing punctuation are forgiven ("bamon." finds Bamon). Unseen entities get None:
    no text mentions them, and no tool may either (they probe for hallucination)."""
    return _entries(world).get(_normal(name))


_SLOPPY_ENDS = re.compile(r"^[\s'\"]+|[\s'\".,;:!?]+$")  # spaces and quotes around, punctuation after


def _normal(name: str) -> str:
    return _SLOPPY_ENDS.sub("", name).lower()


@lru_cache(maxsize=4)
def _entries(world: World) -> dict[str, str]:
    """Every seen entity's entry, by its name in lower case."""
    entries = {}
    for country in world.countries:
        entries[country.name.lower()] = _country_entry(country)
    for town in world.towns:
        entries[town.name.lower()] = _town_entry(town)
    for character in world.characters:
        entries[character.name.lower()] = _character_entry(character)
    return entries


# An entry says only what the multi-hop questions need, so that a trace with two entries fits a
# 128-token context (with the course tokenizer a name like "Vashavia" alone takes 6 tokens): a
# country's region, climate and towns, a town's places and residents, and a character's friends,
# likes, object and fear are left out, and a country's entry does not repeat the name the call
# just wrote ("Its capital is ...").


def _country_entry(country: Country) -> str:
    return f"Its capital is {country.capital}. It exports {join_words(country.exports)}."


def _town_entry(town: Town) -> str:
    if town.is_capital:
        return f"{town.name} is the capital of {town.country}."
    return f"{town.name} is a town in {town.country}."


def _character_entry(character: Character) -> str:
    return f"{character.name} is {with_article(character.species)} from {character.home} in {character.country}."


# ---------------------------------------------------------------------------------- arithmetic

# Things to count, and what they come in (the containers of `vocabulary.FOODS` where it has them).
_THINGS = {"apples": "baskets", "pears": "baskets", "carrots": "bags", "nuts": "bags", "oranges": "bags",
           "berries": "bowls", "plums": "bowls", "eggs": "boxes", "pancakes": "plates", "cakes": "plates",
           "books": "boxes", "balls": "bags", "kites": "boxes", "cups": "boxes"}


@dataclass(frozen=True)
class _WordProblem:
    """A problem template. {n} is the character, {f} a friend, {he}/{him} the character's pronoun,
    {t} the things, {c} their containers, {a}.. the operands and {x} the result."""

    operation: str
    expression: str
    compute: Callable[..., int]
    question: str
    answer: str
    small: str = ""  # operands of at most 2 digits (how many containers, how many in each): short traces


_WORD_PROBLEMS = (
    _WordProblem("add", "{a} + {b}", lambda a, b: a + b,
                 "{n} has {a} {t}. {f} gives {him} {b} more. How many {t} does {n} have now?",
                 "{n} has {x} {t} now."),
    _WordProblem("add", "{a} + {b}", lambda a, b: a + b,
                 "{n} finds {a} {t} in the morning and {b} in the afternoon. How many {t} does {n} find in all?",
                 "{n} finds {x} {t} in all."),
    _WordProblem("subtract", "{a} - {b}", lambda a, b: a - b,
                 "{n} has {a} {t} and gives {b} to {f}. How many {t} does {n} have left?",
                 "{n} has {x} {t} left."),
    _WordProblem("subtract", "{a} - {b}", lambda a, b: a - b,
                 "There are {a} {t} at the market. {n} buys {b} of them. How many {t} are left?",
                 "There are {x} {t} left."),
    _WordProblem("multiply", "{a} * {b}", lambda a, b: a * b,
                 "{n} has {a} {c} with {b} {t} in each. How many {t} does {n} have?",
                 "{n} has {x} {t}."),
    _WordProblem("multiply", "{a} * {b}", lambda a, b: a * b,
                 "{n} gives {b} {t} to each of {a} friends. How many {t} does {n} give away?",
                 "{n} gives away {x} {t}."),
    _WordProblem("divide", "{a} / {b}", lambda a, b: a // b,
                 "{n} shares {a} {t} equally among {b} friends. How many {t} does each friend get?",
                 "Each friend gets {x} {t}."),
    _WordProblem("divide", "{a} / {b}", lambda a, b: a // b,
                 "{n} puts {a} {t} into {c}, {b} in each. How many {c} does {n} fill?",
                 "{n} fills {x} {c}."),
    _WordProblem("two_step", "{a} - {b} + {d} * {e}", lambda a, b, d, e: a - b + d * e,
                 "{n} has {a} {t} and gives {b} to {f}. Then {he} gets {d} {c} of {e} {t}. "
                 "How many {t} does {n} have?",
                 "{n} has {x} {t}.", small="de"),
    _WordProblem("two_step", "{a} * {b} + {d}", lambda a, b, d: a * b + d,
                 "{n} has {a} {c} of {b} {t} and {d} more {t}. How many {t} does {n} have in all?",
                 "{n} has {x} {t} in all.", small="ab"),
)


def word_problems(seed: int = 0, *, digits: tuple[int, ...] = (1, 2, 3), split: str = "train",
                  world: World | None = None) -> Iterator[ToolTask]:
    """An endless stream of arithmetic word problems about the characters of the world of `seed`,
    each solved by one calculator call. Each problem's largest operand has a number of digits
    drawn from `digits` (1-4). A problem is "train" or "eval" by a hash of its operation and
    numbers (a fifth are "eval"), so a model cannot have learned an eval answer by heart."""
    seed = check_int("seed", seed)
    digits = _check_digits(digits)
    check_choice("split", split, SPLITS)
    writer = _ProblemWriter(world_for(seed, world), split)
    return _problem_stream(writer, digits, stream_rng(seed, f"word-problems:{split}"))


def arithmetic_eval(seed: int = 0, n_per_size: int = 50, digits: tuple[int, ...] = (1, 2, 3, 4), *,
                    world: World | None = None) -> list[ToolTask]:
    """`n_per_size` "eval" word problems for each number of digits in `digits`, in that order:
    chapter 17's arithmetic test set, drawn from a stream of its own."""
    seed = check_int("seed", seed)
    check_int("n_per_size", n_per_size, 1)
    digits = _check_digits(digits)
    writer = _ProblemWriter(world_for(seed, world), "eval")
    rng = stream_rng(seed, "word-problems:eval-set")
    return [writer.problem(rng, size) for size in digits for _ in range(n_per_size)]


def _check_digits(digits: tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(digits, int) or not digits:
        raise ArgumentError(f"digits must be a non-empty tuple of sizes in 1..4, e.g. (1, 2, 3), got {digits!r}")
    return tuple(check_int("digits", size, 1, below=5, hint="operands of 1 to 4 digits") for size in digits)


def _problem_stream(writer: _ProblemWriter, digits: tuple[int, ...], rng: random.Random) -> Iterator[ToolTask]:
    while True:
        yield writer.problem(rng, rng.choice(digits))


class _ProblemWriter:
    """Writes word problems of one split about the characters of a world."""

    def __init__(self, world: World, split: str) -> None:
        self.world = world
        self.split = split

    def problem(self, rng: random.Random, digits: int) -> ToolTask:
        operands = None
        while operands is None:
            template = rng.choice(_WORD_PROBLEMS)
            operands = self._operands(rng, template, digits)
        character = rng.choice(self.world.characters)
        things = rng.choice(list(_THINGS))
        result = template.compute(*operands)
        names = dict(zip("abde", operands))
        pronoun = PRONOUNS[character.pronoun]
        words = dict(n=character.name, f=rng.choice(character.friends), he=pronoun.subject,
                     him=pronoun.object, t=things, c=_THINGS[things], x=result, **names)
        expression = template.expression.format(**names)
        question = template.question.format(**words)
        answer = template.answer.format(**words)
        trace = _trace(question, [(call_text(CALCULATOR, expression), str(result))], answer)
        return ToolTask(question, trace, (str(result),), "arithmetic", digits, self.split, character.name)

    def _operands(self, rng: random.Random, template: _WordProblem, digits: int) -> tuple[int, ...] | None:
        """Operands for `template` whose largest has `digits` digits, of this writer's split; None
        if 100 draws found none (one-digit sharing has only six problems: a split may have none)."""
        for _ in range(100):  # draw until the numbers belong to this split (4 in 5 draws do, for "train")
            if template.operation == "divide":
                operands = _division(rng, digits)
            else:
                names = re.findall(r"{(\w)}", template.expression)
                operands = _numbers(rng, [name in template.small for name in names], digits)
                if template.expression.startswith("{a} - {b}"):  # take the smaller away: no negative results
                    operands = (max(operands[:2]), min(operands[:2]), *operands[2:])
            key = (template.operation, *sorted(operands))
            if (stable_fraction(self.world.seed, "word-problem-split", *key) < EVAL_FRACTION) == (self.split == "eval"):
                return operands
        return None


def _number(rng: random.Random, digits: int) -> int:
    """A number of exactly `digits` digits (one-digit numbers from 2: 0 and 1 make no problem)."""
    return rng.randint(2 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def _numbers(rng: random.Random, small: list[bool], digits: int) -> tuple[int, ...]:
    """A number for each of `small` (True: at most 2 digits, else at most `digits`); one of the
    others, at random, has exactly `digits` digits."""
    sizes = [rng.randint(1, min(2, digits) if is_small else digits) for is_small in small]
    sizes[rng.choice([i for i, is_small in enumerate(small) if not is_small])] = digits
    return tuple(_number(rng, size) for size in sizes)


def _division(rng: random.Random, digits: int) -> tuple[int, int]:
    """(dividend, divisor) that divide exactly, the dividend of `digits` digits, the quotient >= 2."""
    while True:
        divisor = _number(rng, rng.randint(1, max(1, digits - 1)))
        lowest = max(2, math.ceil(10 ** (digits - 1) / divisor))
        highest = (10**digits - 1) // divisor
        if lowest <= highest:
            return rng.randint(lowest, highest) * divisor, divisor


# ---------------------------------------------------------------------------------- multi-hop questions


@dataclass(frozen=True)
class _Hops:
    """A two-hop question type: the subject's entry names its country, whose `relation` is asked."""

    subject: str  # "character" or "town"
    relation: str  # "exports" or "capital"
    forms: tuple[str, str]


QUESTION_TYPES = {
    "country_exports": _Hops("character", "exports",
                             ("What does the country where {s} lives export?", "What does {s}'s country export?")),
    "country_capital": _Hops("character", "capital",
                             ("What is the capital of the country where {s} lives?",
                              "Which town is the capital of {s}'s country?")),
    "town_exports": _Hops("town", "exports",
                          ("What does the country that {s} is in export?", "What are the exports of {s}'s country?")),
    "town_capital": _Hops("town", "capital",
                          ("What is the capital of the country that {s} is in?",
                           "Which town is the capital of the country of {s}?")),
}
# Questions through a town (what can you find in the town where Bamon lives?) or about a country's
# climate would need longer entries than a 128-token context leaves room for (see `entry`).


def multi_hop_questions(seed: int = 0, split: str = "train", *, world: World | None = None) -> Iterator[ToolTask]:
    """An endless stream of two-lookup questions about the world of `seed`, in either phrasing.
    "train" asks about the training subjects and only "sft" facts, and never looks up an eval
    subject; "eval" asks about the eval subjects (every fact)."""
    seed = check_int("seed", seed)
    check_choice("split", split, SPLITS)
    asker = _HopAsker(world_for(seed, world))
    questions = asker.questions(split)
    if not questions:
        raise ArgumentError(f"the world of seed {asker.world.seed} has no {split} multi-hop questions; "
                            "use a larger world (World.generate with the default sizes)")
    return _hop_stream(asker, questions, split, stream_rng(seed, f"multi-hop:{split}"))


def multi_hop_eval(world_seed: int = 0, *, world: World | None = None) -> list[ToolTask]:
    """Every eval multi-hop question (each eval subject, each type that fits it, both phrasings),
    in the world's order: chapter 17's multi-hop test set (about a hundred with the default world)."""
    asker = _HopAsker(world_for(check_int("world_seed", world_seed), world))
    return [asker.task(subject, kind, form, "eval") for subject, kind in asker.questions("eval") for form in (0, 1)]


def _hop_stream(asker: _HopAsker, questions: list[tuple[str, str]], split: str,
                rng: random.Random) -> Iterator[ToolTask]:
    while True:
        subject, kind = rng.choice(questions)
        yield asker.task(subject, kind, rng.randrange(2), split)


class _HopAsker:
    """Knows the world's facts and which subjects are eval-only; writes multi-hop tasks."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.facts = {fact.key: fact for fact in world.facts()}
        # A capital's own entry says it is the capital, so "the capital of the country that
        # Bramby is in" would need one lookup, not two: capitals are no subjects of town questions.
        self.subjects = {"character": [c.name for c in world.characters],
                         "town": [t.name for t in world.towns if not t.is_capital]}

    def is_eval(self, name: str) -> bool:
        """Whether questions about the character or town `name` are for evaluation only."""
        return stable_fraction(self.world.seed, "multi-hop-split", name) < EVAL_FRACTION

    def questions(self, split: str) -> list[tuple[str, str]]:
        """The (subject, question type) pairs of `split`, characters first, in the world's order."""
        return [(subject, kind) for subject_kind in ("character", "town") for subject in self.subjects[subject_kind]
                for kind, hops in QUESTION_TYPES.items()
                if hops.subject == subject_kind and self.is_eval(subject) == (split == "eval")
                and (split == "eval" or self._trainable(subject, kind))]

    def _trainable(self, subject: str, kind: str) -> bool:
        """Whether a training trace may ask it: both facts it uses are "sft"."""
        country = self.facts[(subject, "country")]
        return country.split == "sft" and self.facts[(country.values[0], QUESTION_TYPES[kind].relation)].split == "sft"

    def task(self, subject: str, kind: str, form: int, split: str) -> ToolTask:
        hops = QUESTION_TYPES[kind]
        country = self.facts[(subject, "country")].values[0]
        fact = self.facts[(country, hops.relation)]
        question = hops.forms[form].format(s=subject)
        answer = question_for(fact, "country").answer  # the answer `chats` teaches for the fact
        steps = [(call_text(LOOKUP, name), entry(self.world, name)) for name in (subject, country)]
        return ToolTask(question, _trace(question, steps, answer), fact.values, "multi_hop", kind, split, subject)


# ---------------------------------------------------------------------------------- unknown entities


def unknown_lookups(seed: int = 0, *, world: World | None = None) -> Iterator[ToolTask]:
    """An endless stream of multi-hop questions about invented characters and towns (`chats.unknown_names`,
    never the world's unseen entities): the lookup fails and the assistant declines."""
    seed = check_int("seed", seed)
    world = world_for(seed, world)
    names = sorted((name, kind) for name, kind in unknown_names(world).items() if kind != "country")
    return _unknown_stream(names, stream_rng(seed, "unknown-lookups"))


def _unknown_stream(names: list[tuple[str, str]], rng: random.Random) -> Iterator[ToolTask]:
    while True:
        name, kind = rng.choice(names)
        question_type = rng.choice([key for key, hops in QUESTION_TYPES.items() if hops.subject == kind])
        question = QUESTION_TYPES[question_type].forms[rng.randrange(2)].format(s=name)
        refusal = rng.choice(_REFUSALS[kind]).format(s=name)
        trace = _trace(question, [(call_text(LOOKUP, name), no_entry(name))], refusal)
        yield ToolTask(question, trace, (), "unknown", question_type, "train", name)


# ---------------------------------------------------------------------------------- the training mix


def tool_tasks(seed: int = 0, *, digits: tuple[int, ...] = (1, 2, 3), mix: tuple[float, float, float] = MIX,
               world: World | None = None) -> Iterator[ToolTask]:
    """An endless stream of training tasks: each kind of `KINDS` with its share in `mix`."""
    seed = check_int("seed", seed)
    shares = _check_mix(mix)
    world = world_for(seed, world)
    streams = (word_problems(seed, digits=digits, world=world), multi_hop_questions(seed, world=world),
               unknown_lookups(seed, world=world))
    return _mix_stream(streams, shares, stream_rng(seed, "tool-traces"))


def tool_traces(seed: int = 0, *, digits: tuple[int, ...] = (1, 2, 3), mix: tuple[float, float, float] = MIX,
                world: World | None = None) -> Iterator[list[Message]]:
    """The chats of `tool_tasks`: chapter 17's fine-tuning data."""
    return (task.messages() for task in tool_tasks(seed, digits=digits, mix=mix, world=world))


def _check_mix(mix: tuple[float, float, float]) -> tuple[float, ...]:
    if isinstance(mix, (str, bytes)) or not hasattr(mix, "__len__") or len(mix) != len(KINDS):
        raise ArgumentError(f"mix must give {len(KINDS)} shares, one per kind {KINDS}, e.g. {MIX}; got {mix!r}")
    shares = tuple(check_real(f"mix share of {kind}", share, minimum=0) for kind, share in zip(KINDS, mix))
    if not math.isclose(sum(shares), 1.0, abs_tol=1e-6):
        raise ArgumentError(f"mix must sum to 1, got {mix!r} (sum {sum(shares)}); e.g. {MIX}")
    return shares


def _mix_stream(streams: tuple[Iterator[ToolTask], ...], shares: tuple[float, ...],
                rng: random.Random) -> Iterator[ToolTask]:
    while True:
        yield next(rng.choices(streams, weights=shares)[0])


# ---------------------------------------------------------------------------------- grading

_NUMBER = re.compile(r"\d+(?:,\d{3})*")


def grade(task: ToolTask, reply: str) -> str:
    """"correct", "refusal" or "wrong", as `chats.grade_reply` grades: a refusal is a "refusal";
    a multi-hop reply is correct when it names every value (as whole words, any case); an
    arithmetic reply when its last number is the result ("84" is not "184", "1,234" is 1234); for
    an unknown entity the honest reply is a refusal and anything else is "wrong"."""
    if is_refusal(reply):
        return "refusal"
    if task.kind == "arithmetic":
        numbers = [number.replace(",", "") for number in _NUMBER.findall(reply)]
        return "correct" if numbers and numbers[-1] == task.values[0] else "wrong"
    split = "unknown" if task.kind == "unknown" else "sft"
    return grade_reply(Question(task.subject, task.kind, task.question, task.answer, task.values, split), reply)
