"""Facts at chosen frequencies: the data of chapter 15's hallucination experiment.

Kalai and Vempala (2024), "Calibrated Language Models Must Hallucinate", argue that a model which
is calibrated must invent answers about as often as the training text contains facts seen exactly
once: such a fact gives no evidence about the facts never seen at all, so a model cannot tell the
two apart. To watch this happen, each fact of a world is stated a chosen number of times, in one
sentence form, inside a corpus whose other text (stories about a *different* world) teaches
English but states none of this world's facts:

    fact_counts(world)          each seen fact's number of mentions: 1, 2, 5 or 20, by a hash of its key
    frequency_corpus(world)     the documents: fact sentences, each as often as its count, among stories

A model trained once through this corpus has met a fact exactly as many times as its count says.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from llmcourse.checks import ArgumentError, check_int
from llmcourse.data.tinyworld.chats import Question, question_for, questions
from llmcourse.data.tinyworld.corpus import documents
from llmcourse.data.tinyworld.entities import Fact
from llmcourse.data.tinyworld.streams import stable_fraction, stream_rng
from llmcourse.data.tinyworld.world import World

__all__ = ["COUNTS", "SHARES", "fact_counts", "frequency_corpus", "frequency_questions"]

COUNTS = (1, 2, 5, 20)  # how many times a fact is stated
SHARES = (0.4, 0.3, 0.2, 0.1)  # of the facts at each count: long-tailed, as in real text
SENTENCES_PER_DOCUMENT = 8


def fact_counts(world: World, counts: Sequence[int] = COUNTS, shares: Sequence[float] = SHARES) -> dict[Fact, int]:
    """Every seen fact of `world` -> how many times `frequency_corpus` states it: count i for a
    share `shares[i]` of the facts, chosen by a hash of the fact's key (stable across runs)."""
    _check_buckets(counts, shares)
    edges = [sum(shares[:i + 1]) for i in range(len(shares))]
    result = {}
    for fact in world.facts():
        draw = stable_fraction(world.seed, "frequency", fact.subject, fact.relation)
        result[fact] = counts[min(sum(draw >= edge for edge in edges), len(counts) - 1)]
    return result


def frequency_questions(world: World, counts: Sequence[int] = COUNTS, shares: Sequence[float] = SHARES, *,
                        story_world: World | None = None) -> dict[int, list[Question]]:
    """The questions about the facts stated `count` times, by count (0: the unseen entities).

    Subjects that `story_world` also names are left out: its stories say other things about them."""
    shared = _names(story_world) if story_world is not None else set()
    by_question = {(q.subject, q.relation): q for split in ("sft", "heldout") for q in questions(world, split)}
    result: dict[int, list[Question]] = {count: [] for count in (0, *counts)}
    for fact, count in fact_counts(world, counts, shares).items():
        if fact.subject not in shared:
            result[count].append(by_question[(fact.subject, fact.relation)])
    result[0] = [q for q in questions(world, "unseen") if q.subject not in shared]
    return result


def _names(world: World) -> set[str]:
    return {e.name for e in world.countries + world.towns + world.characters}


def frequency_corpus(world: World, story_chars: int, *, story_world: World, counts: Sequence[int] = COUNTS,
                     shares: Sequence[float] = SHARES, seed: int = 0) -> list[str]:
    """Documents in a shuffled order: each fact of `world` stated as often as `fact_counts` says (in
    the reference-answer form, "The capital of Velora is Brinley."), `SENTENCES_PER_DOCUMENT` facts
    to a document, among stories about `story_world` adding up to about `story_chars` characters.

    No sentence states a fact twice in one document, and a story never names an entity of `world`
    unless the two worlds share a name: pick a story_world whose names differ (see the tests).
    """
    check_int("story_chars", story_chars, 0)
    if story_world.seed == world.seed:
        raise ArgumentError(f"story_world has the same seed ({world.seed}) as world, so its stories would state "
                            "the facts being counted; use another seed, e.g. World.generate(world.seed + 1)")
    sentences = [_sentence(world, fact) for fact, count in fact_counts(world, counts, shares).items()
                 for _ in range(count)]
    rng = stream_rng(seed, "frequency-corpus")
    fact_documents = _spread(sentences, rng)
    stories, total = [], 0
    for story in documents(seed, "stories", world=story_world):
        if total >= story_chars:
            break
        stories.append(story)
        total += len(story)
    mixed = fact_documents + stories
    rng.shuffle(mixed)
    return mixed


def _sentence(world: World, fact: Fact) -> str:
    kinds = {c.name: "country" for c in world.countries} | {t.name: "town" for t in world.towns}
    return question_for(fact, kinds.get(fact.subject, "character")).answer


def _spread(sentences: list[str], rng: random.Random) -> list[str]:
    """Documents of SENTENCES_PER_DOCUMENT sentences: the copies of a fact go to different
    documents (a sorted deal, then a shuffle within each), so a fact is never repeated in place."""
    sentences = sorted(sentences)  # copies of one fact side by side, then dealt round-robin
    n_documents = max(1, -(-len(sentences) // SENTENCES_PER_DOCUMENT))
    dealt: list[list[str]] = [[] for _ in range(n_documents)]
    for i, sentence in enumerate(sentences):
        dealt[i % n_documents].append(sentence)
    for document in dealt:
        rng.shuffle(document)
    return [" ".join(document) for document in dealt]


def _check_buckets(counts: Sequence[int], shares: Sequence[float]) -> None:
    if len(counts) != len(shares) or not counts:
        raise ArgumentError(f"counts {tuple(counts)} and shares {tuple(shares)} must pair up, one share per count")
    for count in counts:
        check_int("count", count, 1, hint="a fact stated 0 times is an unseen one; those come from World.unseen_*")
    if any(share < 0 for share in shares) or abs(sum(shares) - 1) > 1e-9:
        raise ArgumentError(f"shares {tuple(shares)} must be non-negative and add up to 1")
