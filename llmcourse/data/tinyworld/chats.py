"""Fine-tuning data about a world: questions with graded answers, chats, and preference pairs.

Every fact of the world can be asked as a `Question`: its text ("What is the capital of Velora?"),
a reference answer ("The capital of Velora is Brinley."), and the values a correct reply must name
(("Brinley",)). A program can therefore grade any reply (`grade_reply`): "correct", "refusal" or
"wrong". Three kinds of question matter for chapters 13-15:

    sft       facts that fine-tuning data may use (and pretraining text states)
    heldout   facts that pretraining text states but no fine-tuning data asks: does fine-tuning
              unlock what pretraining taught, or only what it drills?
    unseen    entities no text ever mentions (`World.unseen_*`): the only honest reply is a
              refusal, anything else is a hallucination

Fine-tuning teaches refusals with *unknown* entities: invented names drawn from TinyWorld's name
pools that belong to no entity at all, seen or unseen, so the `unseen` probes stay untouched.

    chats(seed)             endless SFT chats: one to three questions, sometimes a system prompt
                            or a greeting; about a tenth ask about an unknown entity
    preference_pairs(seed)  endless DPO pairs: a prompt, a chosen and a rejected reply
    arithmetic(seed)        endless sums of small numbers, checkable by a program (chapter 14)

A chat is a list of messages `{"role": "system" | "user" | "assistant", "content": str}`. These
streams yield structured data, not text documents, so they are not in `corpus.DOCUMENT_KINDS`.
Each draws from its own named random stream, so none changes what the pretraining text is.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass

from llmcourse.checks import ArgumentError, check_choice, check_int, check_real
from llmcourse.data.tinyworld.entities import Fact
from llmcourse.data.tinyworld.grammar import join_words, with_article
from llmcourse.data.tinyworld.names import CHARACTER_NAMES, COUNTRY_NAMES, TOWN_NAMES, draw_names
from llmcourse.data.tinyworld.streams import stable_fraction, stream_rng
from llmcourse.data.tinyworld.world import World, world_for

__all__ = ["ARITHMETIC_SHARE", "GRADES", "SPLITS", "SYSTEM_PROMPTS", "PreferencePair", "Question", "arithmetic", "chats",
           "grade_reply", "is_refusal", "preference_pairs", "question_for", "questions", "reward", "sums",
           "unknown_names", "unknown_questions"]

Message = dict[str, str]
SPLITS = ("sft", "heldout", "unseen", "unknown", "arithmetic")
GRADES = ("correct", "refusal", "wrong")
ARITHMETIC_SHARE = 0.1  # of the questions in SFT chats: sums, the skill chapter 14 rewards


@dataclass(frozen=True)
class Question:
    """A question a program can grade. `values`: what a correct reply must name (all of them);
    empty for an entity nobody knows, where the right reply is a refusal."""

    subject: str
    relation: str
    text: str
    answer: str
    values: tuple[str, ...]
    split: str
    cloze: str = ""  # the answer's start, for a model that only completes text: "The capital of Velora is"

    def messages(self, system: str | None = None) -> list[Message]:
        """The question as a one-turn chat prompt (with a system message if given)."""
        prompt = [{"role": "system", "content": system}] if system else []
        return prompt + [{"role": "user", "content": self.text}]


# ---------------------------------------------------------------------------------- phrasing

# relation -> (question forms, answer form). {s} is the subject, {v} the values as words.
_TEMPLATES: dict[tuple[str, str], tuple[tuple[str, ...], str]] = {
    ("country", "region"): (("Where is {s}?", "In which part of the world is {s}?"),
                            "{s} is a country in the {v}."),
    ("country", "climate"): (("What is the weather like in {s}?", "What is the climate of {s}?"),
                             "The weather in {s} is usually {v}."),
    ("country", "capital"): (("What is the capital of {s}?", "Which town is the capital of {s}?"),
                             "The capital of {s} is {v}."),
    ("country", "towns"): (("Which towns are in {s}?", "Name the towns of {s}."),
                           "The towns of {s} are {v}."),
    ("country", "exports"): (("What does {s} export?", "What are the main exports of {s}?"),
                             "{s} exports {v}."),
    ("town", "country"): (("Which country is {s} in?", "In which country is the town of {s}?"),
                          "{s} is in {v}."),
    ("town", "places"): (("What can you find in {s}?", "What places are there in {s}?"),
                         "In {s} there is {v}."),
    ("character", "species"): (("What kind of animal is {s}?", "What animal is {s}?"),
                               "{s} is {v}."),
    ("character", "home"): (("Where does {s} live?", "Which town does {s} live in?"),
                            "{s} lives in {v}."),
    ("character", "country"): (("Which country is {s} from?", "What country does {s} live in?"),
                               "{s} is from {v}."),
    ("character", "friends"): (("Who are {s}'s friends?", "Who is {s} friends with?"),
                               "{s} is friends with {v}."),
    ("character", "likes"): (("What does {s} like?", "What are {s}'s favourite things?"),
                             "{s} likes {v}."),
    ("character", "owns"): (("What does {s} own?", "What does {s} have?"), "{s} owns {v}."),
    ("character", "fear"): (("What is {s} afraid of?", "What scares {s}?"), "{s} is afraid of {v}."),
}
RELATIONS = {kind: tuple(relation for k, relation in _TEMPLATES if k == kind)
             for kind in ("country", "town", "character")}
_REFUSALS = {
    "country": ("I don't know a country called {s}.", "Sorry, I don't know a country called {s}."),
    "town": ("I don't know a town called {s}.", "Sorry, I don't know a town called {s}."),
    "character": ("I don't know anyone called {s}.", "Sorry, I don't know anyone called {s}."),
}
SYSTEM_PROMPTS = (
    "You are a helpful assistant who knows all about TinyWorld.",
    "Answer questions about TinyWorld in one sentence.",
    "You are a friendly guide to TinyWorld. If you do not know, say so.",
)
_GREETINGS = (("Hello!", "Hello! Ask me anything about TinyWorld."),
              ("Hi there.", "Hi! What would you like to know about TinyWorld?"))


def _value_words(relation: str, values: tuple[str, ...]) -> str:
    if relation == "places" or relation in ("species", "owns"):
        return join_words(with_article(value) for value in values)
    return join_words(values)


def question_for(fact: Fact, kind: str, form: int = 0) -> Question:
    """`fact` (about an entity of `kind`: "country", "town" or "character") phrased as question
    form `form` (0 or 1), with its reference answer."""
    forms, answer = _TEMPLATES[(kind, fact.relation)]
    text = forms[form].format(s=fact.subject)
    cloze = answer.split(" {v}")[0].format(s=fact.subject)
    return Question(fact.subject, fact.relation, text,
                    answer.format(s=fact.subject, v=_value_words(fact.relation, fact.values)),
                    fact.values, fact.split, cloze)


def _unknown_question(name: str, kind: str, relation: str, form: int, refusal: int) -> Question:
    forms, _ = _TEMPLATES[(kind, relation)]
    return Question(name, relation, forms[form].format(s=name), _REFUSALS[kind][refusal].format(s=name), (),
                    "unknown")


def _kinds(world: World) -> dict[str, str]:
    """Every entity's name -> its kind."""
    kinds = {}
    for kind, entities in (("country", world.countries + world.unseen_countries),
                           ("town", world.towns + world.unseen_towns),
                           ("character", world.characters + world.unseen_characters)):
        kinds.update({entity.name: kind for entity in entities})
    return kinds


def questions(world: World, split: str) -> list[Question]:
    """One question per fact of `split` ("sft", "heldout" or "unseen"), in the world's fact order,
    each in a phrasing fixed by a hash of its key: the evaluation sets of chapters 13-15."""
    check_choice("split", split, SPLITS[:3], hint="questions about unknown entities: unknown_names")
    kinds = _kinds(world)
    return [question_for(fact, kinds[fact.subject], _form(world.seed, fact.subject, fact.relation))
            for fact in world.facts(include_unseen=split == "unseen") if fact.split == split]


def _form(seed: int, subject: str, relation: str) -> int:
    return int(stable_fraction(seed, "question-form", subject, relation) * 2)


def unknown_names(world: World, count: int = 60) -> dict[str, str]:
    """`count` invented names (a third each of countries, towns and characters, name -> kind) that
    no entity of `world` has, seen or unseen: the subjects of the refusals fine-tuning teaches."""
    check_int("count", count, 3)
    taken = set(_kinds(world))
    names: dict[str, str] = {}
    for kind, pool in (("country", COUNTRY_NAMES), ("town", TOWN_NAMES), ("character", CHARACTER_NAMES)):
        for name in draw_names(world.seed, f"chats:unknown-{kind}-names", pool, count // 3, taken):
            names[name] = kind
    return names


def unknown_questions(world: World) -> list[Question]:
    """Every question about the `unknown_names` of `world` (each name, each relation of its kind,
    the first phrasing): what a model should decline to answer."""
    return [_unknown_question(name, kind, relation, 0, 0)
            for name, kind in sorted(unknown_names(world).items()) for relation in RELATIONS[kind]]


# ---------------------------------------------------------------------------------- grading

_REFUSAL = re.compile(r"\bdon't know\b|\bdo not know\b", re.IGNORECASE)


def is_refusal(reply: str) -> bool:
    """Whether `reply` declines to answer ("I don't know ...")."""
    return bool(_REFUSAL.search(reply))


def reward(question: Question, reply: str) -> float:
    """1.0 for the reply a program can verify as right, else 0.0: a correct answer to a known
    question, a refusal about an entity nobody knows (chapter 14's verifiable reward)."""
    grade = grade_reply(question, reply)
    honest = question.split in ("unknown", "unseen") and grade == "refusal"
    return float(grade == "correct" or honest)


def grade_reply(question: Question, reply: str) -> str:
    """"correct" when the reply names every value (as whole words, any case) and does not refuse,
    "refusal" when it declines, else "wrong". For an unknown or unseen entity nothing is correct:
    the honest reply is a refusal, and anything else is a hallucination ("wrong")."""
    if is_refusal(reply):
        return "refusal"
    if question.split in ("unknown", "unseen") or not question.values:
        return "wrong"
    if question.split == "arithmetic":  # the answer is the first number after the last " is"
        numbers = re.findall(r"\d+", reply.rsplit(" is", 1)[-1])
        return "correct" if numbers and numbers[0] == question.values[0] else "wrong"
    named = all(re.search(rf"\b{re.escape(value)}\b", reply, re.IGNORECASE) for value in question.values)
    return "correct" if named else "wrong"


# ---------------------------------------------------------------------------------- chats


def chats(seed: int = 0, *, world: World | None = None, unknown_share: float = 0.1) -> Iterator[list[Message]]:
    """An endless stream of SFT chats: questions about `sft` facts, with a share `unknown_share` of
    questions about unknown entities (answered with a refusal) and `ARITHMETIC_SHARE` of sums."""
    seed = check_int("seed", seed)
    check_real("unknown_share", unknown_share, minimum=0, maximum=1 - ARITHMETIC_SHARE)
    world = world_for(seed, world)
    return _chat_stream(_Asker(world), stream_rng(seed, "chats"), unknown_share)


class _Asker:
    """Draws questions: a known `sft` fact (any phrasing) or an unknown entity."""

    def __init__(self, world: World) -> None:
        self.world = world
        kinds = _kinds(world)
        self.known = [(fact, kinds[fact.subject]) for fact in world.facts() if fact.split == "sft"]
        self.unknown = sorted(unknown_names(world).items())

    def known_question(self, rng: random.Random) -> Question:
        fact, kind = rng.choice(self.known)
        return question_for(fact, kind, rng.randrange(2))

    def unknown_question(self, rng: random.Random) -> tuple[Question, str]:
        """A question about an unknown entity, and the entity's kind."""
        name, kind = rng.choice(self.unknown)
        question = _unknown_question(name, kind, rng.choice(RELATIONS[kind]), rng.randrange(2), rng.randrange(2))
        return question, kind

    def question(self, rng: random.Random, unknown_share: float, sums: Iterator[Question]) -> Question:
        draw = rng.random()
        if draw < unknown_share:
            return self.unknown_question(rng)[0]
        if draw < unknown_share + ARITHMETIC_SHARE:
            return next(sums)
        return self.known_question(rng)


def _chat_stream(asker: _Asker, rng: random.Random, unknown_share: float) -> Iterator[list[Message]]:
    sums = arithmetic(asker.world.seed, split="train")
    while True:
        chat: list[Message] = []
        if rng.random() < 0.3:
            chat.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        if rng.random() < 0.1:
            greeting, reply = rng.choice(_GREETINGS)
            chat += [{"role": "user", "content": greeting}, {"role": "assistant", "content": reply}]
        for _ in range(rng.choice((1, 1, 2))):  # longer chats would not fit cpu-tiny's 128 tokens
            question = asker.question(rng, unknown_share, sums)
            chat += [{"role": "user", "content": question.text}, {"role": "assistant", "content": question.answer}]
        yield chat


# ---------------------------------------------------------------------------------- preferences


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (messages ending with the user's turn), a better and a worse reply, and what makes
    the worse one worse: "wrong_fact", "invention", "over_refusal", "off_topic" or "rambling"."""

    prompt: list[Message]
    chosen: str
    rejected: str
    kind: str


def preference_pairs(seed: int = 0, *, world: World | None = None) -> Iterator[PreferencePair]:
    """An endless stream of DPO pairs. Known questions (`sft` facts) prefer the right answer to a
    wrong fact, an unneeded refusal, an answer to another question, or a right answer that rambles
    on; questions about unknown entities prefer a refusal to a confident invention."""
    seed = check_int("seed", seed)
    world = world_for(seed, world)
    return _pair_stream(_Asker(world), stream_rng(seed, "preference-pairs"))


def _pair_stream(asker: _Asker, rng: random.Random) -> Iterator[PreferencePair]:
    by_kind_relation: dict[tuple[str, str], list[Fact]] = {}
    for fact, kind in asker.known:
        by_kind_relation.setdefault((kind, fact.relation), []).append(fact)
    while True:
        system = rng.choice(SYSTEM_PROMPTS) if rng.random() < 0.3 else None
        if rng.random() < 0.3:
            question, kind = asker.unknown_question(rng)
            invented = _invention(question, kind, by_kind_relation, rng)
            yield PreferencePair(question.messages(system), question.answer, invented, "invention")
            continue
        fact, kind = rng.choice(asker.known)
        question = question_for(fact, kind, rng.randrange(2))
        flaw = rng.choice(("wrong_fact", "wrong_fact", "over_refusal", "off_topic", "rambling"))
        if flaw == "wrong_fact":
            rejected = _wrong_answer(fact, kind, by_kind_relation[(kind, fact.relation)], rng)
        elif flaw == "over_refusal":
            rejected = _REFUSALS[kind][rng.randrange(2)].format(s=fact.subject)
        elif flaw == "off_topic":
            rejected = _other_answer(asker, question, rng)
        else:
            rejected = " ".join([question.answer] + [_other_answer(asker, question, rng) for _ in range(2)])
        if rejected == question.answer:  # a fact whose values no other entity differs in: draw again
            continue
        yield PreferencePair(question.messages(system), question.answer, rejected, flaw)


def _wrong_answer(fact: Fact, kind: str, same_relation: list[Fact], rng: random.Random) -> str:
    """The answer with another entity's values for the same relation (different from the truth)."""
    others = [other for other in same_relation if set(other.values) != set(fact.values)]
    if not others:
        return question_for(fact, kind).answer
    values = rng.choice(others).values
    return question_for(Fact(fact.subject, fact.relation, values, fact.split), kind).answer


def _invention(question: Question, kind: str, by_kind_relation: dict[tuple[str, str], list[Fact]],
               rng: random.Random) -> str:
    """A confident answer about an unknown entity, with values borrowed from a real one."""
    values = rng.choice(by_kind_relation[(kind, question.relation)]).values
    return question_for(Fact(question.subject, question.relation, values, "unknown"), kind).answer


def _other_answer(asker: _Asker, question: Question, rng: random.Random) -> str:
    """The answer to a different known question."""
    while True:
        other = asker.known_question(rng)
        if (other.subject, other.relation) != (question.subject, question.relation):
            return other.answer


# ---------------------------------------------------------------------------------- arithmetic


def arithmetic(seed: int = 0, largest: int = 20, *, split: str = "train") -> Iterator[Question]:
    """An endless stream of sums "What is 7 plus 5?" -> "7 plus 5 is 12." with both numbers in
    0..`largest`. Every pair (a, b) belongs to "train" or "eval" by a hash (a fifth are "eval"),
    so a learned skill can be told from a memorised answer."""
    seed = check_int("seed", seed)
    asked = sums(seed, largest, split=split)
    return _sum_stream(asked, stream_rng(seed, f"arithmetic:{split}"))


def sums(seed: int = 0, largest: int = 20, *, split: str = "train") -> list[Question]:
    """Every sum of the `split`, in order: the questions `arithmetic` draws from."""
    check_int("largest", largest, 1)
    check_choice("split", split, ("train", "eval"))
    pairs = [(a, b) for a in range(largest + 1) for b in range(largest + 1)
             if (stable_fraction(seed, "arithmetic-split", a, b) < 0.2) == (split == "eval")]
    if not pairs:
        raise ArgumentError(f"largest={largest} leaves no {split} sums; use a larger value, e.g. 20")
    return [Question(f"{a}+{b}", "sum", f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.",
                     (str(a + b),), "arithmetic", f"{a} plus {b} is") for a, b in pairs]


def _sum_stream(asked: list[Question], rng: random.Random) -> Iterator[Question]:
    while True:
        yield rng.choice(asked)
