"""TinyWorld's output, pinned byte for byte for a few seeds.

Every generated text (the world, its facts, stories, fact paragraphs, each document kind, the
mixed corpus, the corpus file) is hashed here and compared with hashes recorded on purpose. Later
chapters, recorded runs and learners' cached models rely on this text never changing by accident:
a refactor must leave every hash alone. Update a hash ONLY when you mean to change TinyWorld for
everyone, and say so in the change description. Adding a generator adds a new named random
stream (see the `llmcourse.data.tinyworld` docstring) and changes none of the hashes below.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import pytest

from llmcourse.data.tinyworld.chats import arithmetic, chats, preference_pairs, questions, sums, unknown_names
from llmcourse.data.tinyworld import (
    DOCUMENT_KINDS,
    World,
    corpus_text,
    documents,
    facts,
    stories,
    stream_rng,
    write_corpus,
)

SEEDS = (0, 1, 1337)
# A world with non-default sizes, so the pin also covers the size arguments of World.generate.
SMALL_WORLD = dict(n_countries=3, towns_per_country=2, n_characters=8, n_unseen_countries=1,
                   n_unseen_characters=2)


def fingerprint(data: str | bytes) -> str:
    """The first 16 hex digits of the SHA-256 of `data` (text as UTF-8): plenty to catch a change."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.sha256(raw).hexdigest()[:16]


def lines(items) -> str:
    return "\n".join(map(str, items))


def take(stream, n: int) -> list[str]:
    return list(itertools.islice(stream, n))


def outputs(seed: int, folder: Path) -> dict[str, str | bytes]:
    """Everything TinyWorld generates for `seed`, by name."""
    world = World.generate(seed)
    small = World.generate(seed, **SMALL_WORLD)
    rng = stream_rng(seed, "stories")
    result: dict[str, str | bytes] = {
        # Every field of every entity: the dataclass reprs spell them all out.
        "world": repr((world.countries, world.towns, world.characters,
                       world.unseen_countries, world.unseen_towns, world.unseen_characters)),
        "world.summary": world.summary(),
        "world.facts": lines(world.facts(include_unseen=True)),
        "world.heldout_fact_keys": lines(sorted(world.heldout_fact_keys())),
        "world.residents": lines(world.residents(town.name) for town in world.towns),
        "small_world.summary": small.summary(),
        "small_world.stories": lines(take(stories(seed, world=small), 50)),
        "stream_rng": lines([rng.random(), rng.getrandbits(64), rng.randint(0, 9)]),
        "stories": lines(take(stories(seed), 200)),
        # More than one pass over the ~140 entities, so the reshuffle between passes is pinned too.
        "facts": lines(take(facts(seed), 300)),
        "documents": lines(take(documents(seed), 300)),
        "documents[facts+stories]": lines(take(documents(seed, ("facts", "stories")), 100)),
        "corpus_text": corpus_text(50_000, seed),
        "corpus_text[facts]": corpus_text(10_000, seed, "facts"),
        "write_corpus": write_corpus(folder / "corpus.txt", 30_000, seed, progress=False).read_bytes(),
    }
    for kind in DOCUMENT_KINDS:
        result[f"documents[{kind}]"] = lines(take(documents(seed, kind), 100))
    return result


# Recorded from the code as it stood before TinyWorld became a package (issue 15).
PINNED = {
    0: {
        "world": "5c5d5e70c4cdaa29",
        "world.summary": "4659ce9f0d18ea81",
        "world.facts": "b58209506fd9d87e",
        "world.heldout_fact_keys": "ac41b35d46753825",
        "world.residents": "c4b885d3b9b78f59",
        "small_world.summary": "e2f5b42b622eaee3",
        "small_world.stories": "3e4e5a0f14018451",
        "stream_rng": "eebe796a6a808f68",
        "stories": "dd83e37d6be6332e",
        "facts": "06892829c209806b",
        "documents": "449222c969c98498",
        "documents[facts+stories]": "e2c35f432ea80cd7",
        "corpus_text": "8ade57f76ba1b643",
        "corpus_text[facts]": "ed68a52a244b382d",
        "write_corpus": "a6266a5b4b5f727a",
        "documents[stories]": "451cfc8f757ecc96",
        "documents[facts]": "575c1a85e01e0c94",
    },
    1: {
        "world": "0a143e0c64659ca1",
        "world.summary": "fe985bf97dfa0965",
        "world.facts": "f6d6767c05b1c81d",
        "world.heldout_fact_keys": "584cb4ad73054021",
        "world.residents": "a7aae7076582e2b1",
        "small_world.summary": "f2d39a03c12a66e5",
        "small_world.stories": "3482896b96034f25",
        "stream_rng": "f1fa4aadd0ef1569",
        "stories": "53256b5e99fda2c6",
        "facts": "47a1072c30941b01",
        "documents": "a95474f23b6b5078",
        "documents[facts+stories]": "661deac684c46603",
        "corpus_text": "07b62153a40c18d3",
        "corpus_text[facts]": "bc24c03d06f9d4d0",
        "write_corpus": "1b763c984b5b615e",
        "documents[stories]": "1c345a12c4e9e23e",
        "documents[facts]": "e233243ac62e981b",
    },
    1337: {
        "world": "122f48823da353fc",
        "world.summary": "a87a71d92e6110b6",
        "world.facts": "8428d56a724f37fe",
        "world.heldout_fact_keys": "d484ac0fab55e261",
        "world.residents": "7b6850f232e20d96",
        "small_world.summary": "59cc494db3ad132e",
        "small_world.stories": "54ea80bb6f14a8f3",
        "stream_rng": "d591198c888b2870",
        "stories": "1ec769d86b68eeea",
        "facts": "310365f80f1be369",
        "documents": "09800b7aa1dd59be",
        "documents[facts+stories]": "6e369adef4427b99",
        "corpus_text": "42950d659166e47b",
        "corpus_text[facts]": "13c86515bbe31a29",
        "write_corpus": "cd9fa545d3b139c3",
        "documents[stories]": "37db303ffd6fcf24",
        "documents[facts]": "c3596523b6dc93fb",
    },
}


@pytest.mark.parametrize("seed", SEEDS)
def test_tinyworld_output_is_unchanged(seed, tmp_path):
    found = {name: fingerprint(data) for name, data in outputs(seed, tmp_path).items()}
    changed = sorted(name for name in found.keys() | PINNED[seed].keys()
                     if found.get(name) != PINNED[seed].get(name))
    assert not changed, (
        f"TinyWorld's output for seed {seed} changed: {', '.join(changed)}. If that was not on "
        f"purpose, a change drew from an existing random stream; add a new stream instead. "
        f"Now: {found}"
    )


# ---------------------------------------------------------------------------------- fine-tuning data

def finetuning_outputs(seed: int) -> dict[str, str]:
    """The fine-tuning streams of chapters 13-14 for `seed` (the recorded runs in book/runs/cpu-sft,
    cpu-lora, cpu-dpo and cpu-grpo were trained on seed 0's)."""
    world = World.generate(seed)
    return {
        "chats": lines(take(chats(seed, world=world), 300)),
        "preference_pairs": lines(take(preference_pairs(seed, world=world), 200)),
        "questions": lines(q for split in ("sft", "heldout", "unseen") for q in questions(world, split)),
        "unknown_names": lines(sorted(unknown_names(world).items())),
        "sums": lines(sums(seed, split="train") + sums(seed, split="eval")),
        "arithmetic": lines(take(arithmetic(seed), 100)),
    }


# Recorded when chapters 13-14 were written (issue 17).
PINNED_FINETUNING: dict[int, dict[str, str]] = {
    0: {"chats": "93de199fb4a6f3e1", "preference_pairs": "d2daea203fedaf05", "questions": "68288e46c68be0b2",
        "unknown_names": "4fa137b782000299", "sums": "2b08113eb6b2bbd8", "arithmetic": "e850c095e8bdf610"},
    1: {"chats": "8ff2b30ed62a7bca", "preference_pairs": "643bb6934890cd78", "questions": "54bf8ce8b68113e5",
        "unknown_names": "7d1cabc4097a94ba", "sums": "fe5526d8fd8694f5", "arithmetic": "ee0a609d22a6bec5"},
    1337: {"chats": "9c247e5dcbd2b7ac", "preference_pairs": "daebd3e1609cb4b0", "questions": "9506f3fbe98c1881",
           "unknown_names": "4b50bb78cfb62ff3", "sums": "495b2f347ce07e6e", "arithmetic": "6f8f59bdcecc7ca2"},
}


@pytest.mark.parametrize("seed", SEEDS)
def test_finetuning_data_is_pinned(seed):
    assert {name: fingerprint(text) for name, text in finetuning_outputs(seed).items()} == PINNED_FINETUNING[seed]
