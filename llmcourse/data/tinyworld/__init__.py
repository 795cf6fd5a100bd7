"""TinyWorld: a small invented world, and an endless stream of simple English about it.

TinyWorld is the course's default corpus. It is written by us, needs no download, and is small
and regular enough that a tiny model trained on a laptop CPU writes readable stories within
minutes. Because every sentence is generated from a known world, later chapters have ground
truth: we know which facts a model saw, how often, and which entities it never saw at all.

Everything a learner needs is importable from here (`from llmcourse.data.tinyworld import World,
stories, corpus_text`); each part lives in its own module, in the order they build on each other:

- `streams`: the named random streams every choice is drawn from (and the rule that keeps them
  stable);
- `vocabulary`: the words a world is made of (species, climates, foods, activities, objects);
- `names`: invented names and how a world draws them;
- `entities`: the records (`Country`, `Town`, `Character`, `Item`, `Fact`);
- `world`: `World.generate(seed)`, the world's lookups, facts and evaluation splits;
- `grammar`: articles, lists and pronouns, shared by the writers;
- `storyteller`: `stories(seed)`, TinyStories-like stories of 5-8 sentences with nine plots;
- `encyclopedia`: `facts(seed)`, one paragraph per entity, stating every fact about it;
- `corpus`: `documents`, `corpus_text` and `write_corpus`, which interleave the kinds into one
  corpus, documents separated by a blank line. The text is plain ASCII, one line per document.

Room to grow
    Each new kind of text gets its own module beside `storyteller` and `encyclopedia`:
    question-and-answer chats (for SFT), preference pairs (for DPO), and arithmetic word
    problems with calculator tool-call traces (for agents). A kind is a function
    `kind(seed, *, world=None)` returning an endless iterator of documents, drawn from a stream
    with a new name, registered in `corpus.DOCUMENT_KINDS` so `documents` can mix it in, and
    re-exported here. Fine-tuning kinds (chats, preferences) build only on facts whose split is
    "sft" (see below).

Stability (later chapters depend on it)
    Every random choice is drawn from a named stream: `stream_rng(seed, "stories")` is a
    `random.Random` seeded with the SHA-256 of `"tinyworld:{seed}:{name}"`. The world's parts
    each have their own stream too. So adding a generator means adding a stream with a new name,
    and it cannot change what `World.generate(seed)`, `stories(seed)` or `facts(seed)` produce.
    Rule for future edits: never draw extra numbers from an existing stream; add a new stream
    instead. `tests/test_tinyworld_pinned.py` pins hashes of every generator's output for
    several seeds, so that an accidental change is caught.

Evaluation splits (reserved now so later chapters cannot leak them)
    * Unseen entities: `world.unseen_countries`, `world.unseen_towns` and
      `world.unseen_characters` are built like the others from their own streams, but no
      pretraining text ever mentions them (their friends are unseen too). Questions about them
      have no answer in the training data: probes for hallucination.
    * Held-out facts: each fact about a seen entity is keyed by (subject, relation), e.g.
      ("Mina", "likes"). About one key in five, chosen by a hash of (seed, subject, relation),
      is pretraining-only: it appears in `facts` and `stories` but must never be used to build
      fine-tuning data, so it can measure whether fine-tuning surfaces knowledge learned in
      pretraining. See `World.facts()` (each `Fact` has a `split`) and
      `World.heldout_fact_keys()`. Friendship is symmetric, so a held-out ("Mina", "friends")
      can still be inferred from a friend's own ("Tobin", "friends") key; an evaluation that
      needs strict separation should also drop the reverse keys.

Speed: pure Python with `random.Random`; tens of MB of text per second on one CPU core
(10 MB of the default mix takes well under a second), streamed, so any size fits in memory.
"""

from llmcourse.data.tinyworld.corpus import (
    DEFAULT_KINDS,
    DOCUMENT_KINDS,
    SEPARATOR,
    corpus_text,
    documents,
    write_corpus,
)
from llmcourse.data.tinyworld.encyclopedia import facts
from llmcourse.data.tinyworld.entities import Character, Country, Fact, Item, Town
from llmcourse.data.tinyworld.grammar import PRONOUNS, Pronouns, join_words, with_article
from llmcourse.data.tinyworld.storyteller import stories
from llmcourse.data.tinyworld.streams import stream_rng
from llmcourse.data.tinyworld.vocabulary import (
    ACTIVITIES,
    ADJECTIVES,
    CLIMATES,
    CLIMBING_SPECIES,
    COLOURS,
    EXPORTS,
    FEARS,
    FLYING_SPECIES,
    FOODS,
    INDOOR_ACTIVITIES,
    LIGHT_OBJECTS,
    OBJECTS,
    OUTDOOR_PLACES,
    PLACES,
    REGIONS,
    SPECIES,
    WEATHER,
    Activity,
)
from llmcourse.data.tinyworld.world import HELDOUT_FRACTION, World

# The API. The vocabulary and the grammar helpers imported above stay importable from here too
# (they were, before TinyWorld became a package), but their home is their own module.
__all__ = [
    "Character",
    "Country",
    "DOCUMENT_KINDS",
    "Fact",
    "Item",
    "Town",
    "World",
    "corpus_text",
    "documents",
    "facts",
    "stories",
    "stream_rng",
    "write_corpus",
]
