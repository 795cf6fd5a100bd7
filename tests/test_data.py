"""llmcourse.data: TinyWorld (world, stories, facts, corpus), the Python-source corpus, CharVocab."""

from __future__ import annotations

import itertools
import random
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llmcourse.data import (
    CharVocab,
    World,
    corpus_text,
    documents,
    facts,
    python_source_files,
    python_source_text,
    stories,
    write_corpus,
)
from llmcourse.data import tinyworld
from llmcourse.data.tinyworld import names as tinyworld_names

WORLD = World.generate(0)
SPECIES = "|".join(tinyworld.SPECIES)
NAME = r"((?!(?:He|She|His|Her|It|Its|The|In|One)\b)[A-Z][a-z]+)"  # a name, not a sentence opener
LIST = r"((?:[a-z]+, )*[a-z]+(?: and [a-z]+)?)"  # "copper", "copper and tea", "a, b and c"
NAME_LIST = r"((?:[A-Z][a-z]+, )*[A-Z][a-z]+(?: and [A-Z][a-z]+)?)"
GENDERED = {
    "he": {"he", "him", "his", "himself"},
    "she": {"she", "her", "herself"},
}


def take(iterator, n: int) -> list[str]:
    return list(itertools.islice(iterator, n))


@pytest.fixture(scope="module")
def corpus() -> str:
    return corpus_text(300_000, seed=0)


@pytest.fixture(scope="module")
def some_stories() -> list[str]:
    return take(stories(0), 1500)


@pytest.fixture(scope="module")
def some_facts() -> list[str]:
    return take(facts(0), 2 * len(WORLD.countries + WORLD.towns + WORLD.characters))


# ----------------------------------------------------------------------------- text helpers


def split_sentences(text: str) -> list[str]:
    """Split after . ! ? (and a closing quote) followed by a space, but never inside a quote."""
    sentences, start = [], 0
    for match in re.finditer(r'[.!?]"? (?=[A-Z"])', text):
        if text[: match.end()].count('"') % 2 == 0:
            sentences.append(text[start : match.end() - 1])
            start = match.end()
    sentences.append(text[start:])
    return sentences


def names_in(text: str, world: World = WORLD) -> set[str]:
    known = {e.name for e in world.countries + world.towns + world.characters}
    return set(re.findall(r"\b[A-Z][a-z]+\b", text)) & known


def list_words(phrase: str) -> set[str]:
    return set(re.split(r", | and ", phrase))


def claim_errors(text: str, world: World = WORLD) -> list[str]:
    """Every checkable statement in `text` that contradicts the world."""
    errors = []

    def check(pattern: str, ok) -> None:
        for match in re.finditer(pattern, text):
            try:
                good = ok(*match.groups())
            except KeyError:
                good = False
            if not good:
                errors.append(f"{match.group(0)!r} contradicts the world")

    char, town, country = world.character, world.town, world.country
    # species
    check(rf"\b{NAME} (?:was|is) an? (?:[a-z]+ )?({SPECIES})\b", lambda n, s: char(n).species == s)
    check(rf"\b{NAME} the ({SPECIES})\b", lambda n, s: char(n).species == s)
    check(rf"\ban? (?:[a-z]+ )?({SPECIES}) (?:named|called) {NAME}", lambda s, n: char(n).species == s)
    # homes
    check(rf"\b{NAME} (?:lived|lives) in (?:the town of )?{NAME}", lambda n, t: char(n).home == t)
    check(rf"\b{NAME} the (?:{SPECIES}) (?:lived|lives) in {NAME}", lambda n, t: char(n).home == t)
    check(rf"\b{NAME} is an? (?:{SPECIES}) (?:who lives in|from) {NAME}", lambda n, t: char(n).home == t)
    check(rf"\b{NAME}'s home is in {NAME}", lambda n, t: char(n).home == t)
    check(rf"named {NAME} who lived in {NAME}", lambda n, t: char(n).home == t)
    check(
        rf"In the town of {NAME}, there lived an? (?:[a-z]+ )?(?:{SPECIES}) called {NAME}",
        lambda t, n: char(n).home == t,
    )
    check(rf"friend {NAME} lived far away in {NAME}", lambda n, t: char(n).home == t)
    check(rf"friend {NAME} arrived from {NAME}", lambda n, t: char(n).home == t)
    check(rf"friend {NAME} in {NAME}", lambda n, t: char(n).home == t)
    # towns and countries
    check(rf"\b{NAME}, a town in {NAME}", lambda t, c: town(t).country == c)
    check(rf"\bin {NAME}, in (?:the country of )?{NAME}", lambda t, c: town(t).country == c)
    check(rf"\b(?:town of|from) {NAME} in {NAME}", lambda t, c: town(t).country == c)
    check(rf"\b{NAME} is (?:a town in|also in|one of the towns of) {NAME}", lambda t, c: town(t).country == c)
    check(rf"\bThe town of {NAME} is in {NAME}", lambda t, c: town(t).country == c)
    capital_of = rf"\b{NAME},? (?:is|was|the) (?:the )?capital(?: city)? of {NAME}"
    check(capital_of, lambda t, c: country(c).capital == t)
    check(rf"\b[Tt]he capital of {NAME} is {NAME}", lambda c, t: country(c).capital == t)
    check(rf"\b{NAME}'s capital city is {NAME}", lambda c, t: country(c).capital == t)
    for pattern in (rf"\bOther towns in {NAME} are {NAME_LIST}", rf"\b{NAME} also has the towns of {NAME_LIST}"):
        check(pattern, lambda c, ts: set(country(c).towns[1:]) == list_words(ts))
    check(rf"\bAnother town in {NAME} is {NAME}", lambda c, t: country(c).towns[1:] == (t,))
    # exports
    exports = (rf"\b{NAME} exports {LIST}", rf"\b{NAME} is known for its {LIST}", rf"exports of {NAME} are {LIST}")
    for pattern in exports:
        check(pattern, lambda c, goods: set(country(c).exports) == list_words(goods))
    # likes, objects, fears, friends
    check(rf"\b{NAME} loved ([a-z]+)\b", lambda n, thing: thing in char(n).likes)
    both_loved = rf"\b{NAME} and {NAME} both loved ([a-z]+)"
    check(both_loved, lambda a, b, x: x in char(a).likes and x in char(b).likes)
    check(rf"\b{NAME} took (?:his|her) ([a-z]+ [a-z]+)", lambda n, item: str(char(n).item) == item)
    check(rf"\b{NAME} (?:was|is) (?:very )?(?:afraid|scared) of ([a-z ]+?)\.", lambda n, f: char(n).fear == f)
    check(rf"\b{NAME}'s friend is {NAME}|\b{NAME}'s best friend is {NAME}",
          lambda a, b, c, d: (c, d) != (None, None) and (b or d) in char(a or c).friends)
    return errors


def pronoun_errors(text: str, world: World = WORLD) -> list[str]:
    """Pronouns that do not fit the character they must refer to."""
    errors = []
    characters = {c.name: c for c in world.characters}

    def wrong(name: str, pronoun: str) -> bool:
        return pronoun.lower() not in GENDERED[characters[name].pronoun]

    # A sentence that starts with a pronoun refers to the previous sentence's subject.
    sentences = split_sentences(text)
    for before, after in zip(sentences, sentences[1:]):
        first = before.split(" ")[0].rstrip(",'s")
        pronoun = after.split(" ")[0]
        if first in characters and pronoun in {"He", "She", "His", "Her"} and wrong(first, pronoun):
            errors.append(f"{before!r} then {after!r}")
    # Pronouns inside sentences whose referent the template fixes.
    patterns = (
        (rf"\b{NAME} missed {NAME} very much, so (he|she) decided to visit (him|her)", ((1, 3), (2, 4))),
        (rf"\b{NAME}'s birthday, and {NAME} wanted to give (him|her)", ((1, 3),)),
        (rf"\b{NAME} was so happy that (he|she) hugged", ((1, 2),)),
        (rf"\b{NAME} was proud of (himself|herself)", ((1, 2),)),
        (rf"\b{NAME} took (his|her) ", ((1, 2),)),
        (rf"\b{NAME} loved [a-z]+, but (he|she) was", ((1, 2),)),
        (rf"\b{NAME} was so scared that (he|she)", ((1, 2),)),
        (rf"\b{NAME} was sad, because (he|she)", ((1, 2),)),
        (rf"\b{NAME} knew that {NAME} loved [a-z]+, so (he|she) [a-z]+ (him|her)", ((1, 3), (2, 4))),
    )
    for pattern, pairs in patterns:
        for match in re.finditer(pattern, text):
            for name_group, pronoun_group in pairs:
                if wrong(match.group(name_group), match.group(pronoun_group)):
                    errors.append(match.group(0))
    return errors


def hygiene_errors(document: str) -> list[str]:
    """Template artefacts: wrong articles, stray spaces or punctuation, lowercase sentence starts."""
    checks = {
        "'a' before a vowel": r"\b[Aa] [aeiouAEIOU]",
        "'an' before a consonant": r"\b[Aa]n [^aeiouAEIOU\W]",
        "double space": r"  ",
        "space before punctuation": r" [.,!?]",
        "doubled punctuation": r"[.,][.,]",
        "repeated word": r"\b(\w+) \1\b",
        "unfilled placeholder": r"[{}]|None",
    }
    errors = [f"{what}: {document!r}" for what, pattern in checks.items() if re.search(pattern, document)]
    if document != document.strip() or "\n" in document or not document.isascii():
        errors.append(f"whitespace, newline or non-ASCII in {document!r}")
    if document.count('"') % 2:
        errors.append(f"unbalanced quotes in {document!r}")
    for sentence in split_sentences(document):
        if not re.match(r'"?[A-Z]', sentence) or not re.search(r'[.!?]"?$', sentence):
            errors.append(f"sentence does not start with a capital or end with . ! ?: {sentence!r}")
    return errors


# ----------------------------------------------------------------------------- the world


def test_world_is_deterministic_and_seed_dependent():
    assert World.generate(0) == WORLD
    assert World.generate(0).summary() == WORLD.summary()
    assert World.generate(1) != WORLD
    assert {c.name for c in World.generate(1).characters} != {c.name for c in WORLD.characters}


def test_world_ignores_the_global_random_state():
    random.seed(1)
    first = World.generate(3)
    first_stories = take(stories(3), 5)
    random.seed(2)
    assert World.generate(3) == first
    assert take(stories(3), 5) == first_stories


def test_world_has_the_requested_sizes():
    world = World.generate(
        5, n_countries=4, towns_per_country=2, n_characters=10, n_unseen_countries=1, n_unseen_characters=3
    )
    assert (len(world.countries), len(world.towns), len(world.characters)) == (4, 8, 10)
    assert (len(world.unseen_countries), len(world.unseen_towns), len(world.unseen_characters)) == (1, 2, 3)
    assert (len(WORLD.countries), len(WORLD.towns), len(WORLD.characters)) == (20, 60, 60)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_world_is_consistent(seed):
    world = World.generate(seed)
    entities = (
        world.countries + world.towns + world.characters
        + world.unseen_countries + world.unseen_towns + world.unseen_characters
    )
    names = [e.name for e in entities]
    assert len(names) == len(set(names)), "every name is unique across countries, towns and characters"
    assert not set(names) & tinyworld_names.NOT_NAMES
    for countries, towns, characters in (
        (world.countries, world.towns, world.characters),
        (world.unseen_countries, world.unseen_towns, world.unseen_characters),
    ):
        town_names = {t.name for t in towns}
        for c in countries:
            assert c.capital == c.towns[0] and set(c.towns) <= town_names
            assert world.town(c.capital).is_capital
            assert all(world.town(t).country == c.name for t in c.towns)
            assert 2 <= len(c.exports) <= 3 and set(c.exports) <= set(tinyworld.EXPORTS)
        for t in towns:
            assert t.places[0] == "market" and len(set(t.places)) == len(t.places)
        group = {c.name for c in characters}
        for c in characters:
            assert world.town(c.home).country == c.country
            assert 1 <= len(c.friends) and c.name not in c.friends
            assert set(c.friends) <= group, "seen and unseen characters are never friends"
            for friend in c.friends:
                assert c.name in world.character(friend).friends, "friendship is symmetric"
            assert c.food in tinyworld.FOODS and c.activity in tinyworld.ACTIVITIES
            assert c.pronoun in ("he", "she") and c.species in tinyworld.SPECIES
    assert all(c.home in {t.name for t in world.towns + world.unseen_towns} for c in world.unseen_characters)


def test_world_lookups_and_printing():
    mina = WORLD.characters[0]
    assert WORLD.character(mina.name) is mina
    assert WORLD.town(mina.home).name == mina.home
    assert mina.name in WORLD.residents(mina.home)
    with pytest.raises(KeyError, match="no country named"):
        WORLD.country(mina.name)
    text = repr(WORLD)
    assert text.startswith("World(seed=0, 20 countries") and "\n" not in text and len(text) < 200
    summary = WORLD.summary()
    assert all(e.name in summary for e in WORLD.characters + WORLD.unseen_characters + WORLD.countries)


def test_fact_splits():
    seen_facts = WORLD.facts()
    keys = [f.key for f in seen_facts]
    assert len(keys) == len(set(keys))
    heldout = WORLD.heldout_fact_keys()
    assert heldout <= set(keys)
    assert 0.1 < len(heldout) / len(keys) < 0.3
    assert {f.split for f in seen_facts} == {"sft", "heldout"}
    assert heldout == World.generate(0).heldout_fact_keys() != World.generate(1).heldout_fact_keys()
    unseen = [f for f in WORLD.facts(include_unseen=True) if f.split == "unseen"]
    assert {f.subject for f in unseen} == WORLD.unseen_names()
    mina = WORLD.characters[0]
    likes = next(f for f in seen_facts if f.key == (mina.name, "likes"))
    assert likes.values == mina.likes


# ----------------------------------------------------------------------------- streams


def test_streams_are_deterministic_and_seed_dependent():
    assert take(stories(0), 30) == take(stories(0), 30)
    assert take(facts(0), 30) == take(facts(0), 30)
    assert take(stories(0), 30) != take(stories(1), 30)
    assert take(facts(0), 30) != take(facts(1), 30)
    assert corpus_text(5000, seed=0) == corpus_text(5000, seed=0) != corpus_text(5000, seed=1)


def test_each_kind_keeps_its_own_stream_inside_documents():
    story_stream, fact_stream = iter(take(stories(0), 400)), iter(take(facts(0), 400))
    next_story, next_fact = next(story_stream), next(fact_stream)
    counts = {"stories": 0, "facts": 0}
    for document in take(documents(0), 400):
        if document == next_story:
            next_story, counts["stories"] = next(story_stream), counts["stories"] + 1
        else:
            assert document == next_fact, "a document is neither the next story nor the next fact"
            next_fact, counts["facts"] = next(fact_stream), counts["facts"] + 1
    assert counts["stories"] > 2 * counts["facts"] > 0  # weights 3 : 1
    assert take(documents(0, kinds=("stories",)), 20) == take(stories(0), 20)
    assert take(documents(0, kinds="facts"), 20) == take(facts(0), 20)


def test_facts_describe_every_entity_once_per_pass():
    n = len(WORLD.countries + WORLD.towns + WORLD.characters)
    first_pass = take(facts(0), n)
    assert len(set(first_pass)) == n
    subjects = [paragraph_subject(p) for p in first_pass]
    assert sorted(subjects) == sorted(e.name for e in WORLD.countries + WORLD.towns + WORLD.characters)


def paragraph_subject(paragraph: str) -> str:
    """The one entity whose related names cover the paragraph and whose every fact it states."""

    def says(value: str) -> bool:
        return re.search(rf"\b{value}\b", paragraph) is not None

    mentioned = names_in(paragraph)
    candidates = []
    for name in mentioned:
        entity = WORLD._by_name[name]
        if isinstance(entity, tinyworld.Character):
            related = {name, *entity.friends, entity.home, entity.country}
            values = [entity.species, entity.home, entity.country, *entity.friends, *entity.likes,
                      str(entity.item), entity.fear]
        elif isinstance(entity, tinyworld.Town):
            related = {name, entity.country, *WORLD.residents(name)}
            values = [entity.country, *entity.places]
        else:
            related = {name, *entity.towns}
            values = [entity.region, *entity.towns, *entity.exports]
        if mentioned <= related and all(says(v) for v in values):
            candidates.append(name)
    assert len(candidates) == 1, f"cannot tell what this paragraph is about ({candidates}): {paragraph!r}"
    return candidates[0]


def test_fact_paragraphs_are_true_to_the_world(some_facts):
    for paragraph in some_facts:
        subject = WORLD._by_name[paragraph_subject(paragraph)]
        assert not claim_errors(paragraph), claim_errors(paragraph)
        if isinstance(subject, tinyworld.Country) and "Its capital is" in paragraph:
            assert f"Its capital is {subject.capital}." in paragraph
        if isinstance(subject, tinyworld.Town):
            assert ("capital" in paragraph) == subject.is_capital, paragraph
        words = set(re.findall(r"[a-z]+", paragraph.lower()))
        all_pronouns = GENDERED["he"] | GENDERED["she"]
        if isinstance(subject, tinyworld.Character):
            assert words & all_pronouns <= GENDERED[subject.pronoun], paragraph
        else:
            assert not words & all_pronouns, paragraph
        assert not pronoun_errors(paragraph), pronoun_errors(paragraph)


def test_stories_are_true_to_the_world(some_stories):
    errors = [e for story in some_stories for e in claim_errors(story) + pronoun_errors(story)]
    assert not errors, errors[:5]


def test_stories_only_bring_together_friends_and_their_places(some_stories):
    for story in some_stories:
        mentioned = names_in(story)
        characters = {n for n in mentioned if n in {c.name for c in WORLD.characters}}
        assert characters, f"no named character in {story!r}"
        assert any(characters <= {c, *WORLD.character(c).friends} for c in characters), story
        cast = [WORLD.character(n) for n in characters]
        countries = {c.country for c in cast}
        towns = {c.home for c in cast} | {WORLD.country(c).capital for c in countries}
        assert mentioned - characters <= towns | countries, story


def test_stories_are_short_and_use_the_world_facts(some_stories):
    for story in some_stories:
        assert 3 <= len(split_sentences(story)) <= 8, story
        assert story.count('"') >= 2, f"no dialogue in {story!r}"
    # Every plot shows up, so the text is varied; cause and effect is spelled out.
    text = "\n".join(some_stories)
    for phrase in ("Because it was", "flew up", "climbed the tree", "a long stick", "share my",
                   "lived far away", "birthday", "afraid of", "practised every day", "exports", "both loved",
                   "Once upon a time", "In the town of"):
        assert phrase in text, phrase
    assert len(set(some_stories)) > 0.95 * len(some_stories)


def test_text_has_no_template_artefacts(some_stories, some_facts):
    errors = [e for document in some_stories + some_facts for e in hygiene_errors(document)]
    assert not errors, errors[:5]


def test_hygiene_checks_catch_artefacts():
    assert hygiene_errors("Mina ate a apple.")
    assert hygiene_errors("Mina saw an kite.")
    assert hygiene_errors("Mina  ran.")
    assert hygiene_errors('"Hello, said Mina.')
    assert hygiene_errors("mina ran.")
    assert not hygiene_errors('Mina saw an owl. "Hello!" said Mina.')
    someone = WORLD.characters[0]
    wrong_pronoun = "He" if someone.pronoun == "she" else "She"
    assert pronoun_errors(f"{someone.name} ran. {wrong_pronoun} fell.")
    assert not pronoun_errors(f"{someone.name} ran. {someone.pronoun.capitalize()} fell.")


def test_unseen_entities_never_appear_and_seen_ones_do(corpus):
    for name in WORLD.unseen_names():
        assert not re.search(rf"\b{name}\b", corpus), f"unseen {name!r} appears in the corpus"
    mentioned = set(re.findall(r"\b[A-Z][a-z]+\b", corpus))
    assert {e.name for e in WORLD.countries + WORLD.towns + WORLD.characters} <= mentioned


@pytest.mark.parametrize("seed", [1, 2])
def test_unseen_entities_never_appear_for_other_seeds(seed):
    world = World.generate(seed)
    text = corpus_text(150_000, seed=seed)
    assert not set(re.findall(r"\b[A-Z][a-z]+\b", text)) & world.unseen_names()


def test_no_possible_name_is_an_ordinary_word(corpus):
    words = set(re.findall(r"[a-z]+", corpus.lower()))
    pools = (tinyworld_names.CHARACTER_NAMES, tinyworld_names.COUNTRY_NAMES, tinyworld_names.TOWN_NAMES)
    names = [name for pool in pools for names in pool.values() for name in names]
    clashes = [n for n in names if n.lower() in words and n not in names_in(corpus)]
    assert not clashes, f"names that are also words of the text: {clashes}"


def test_custom_world():
    small = World.generate(
        7, n_countries=2, towns_per_country=2, n_characters=4, n_unseen_countries=0, n_unseen_characters=0
    )
    for story in take(stories(7, world=small), 50):
        assert names_in(story, small) and not claim_errors(story, small) and not pronoun_errors(story, small)
    assert corpus_text(2000, seed=7, world=small) != corpus_text(2000, seed=7)


# ----------------------------------------------------------------------------- corpus_text and write_corpus


@pytest.mark.parametrize("n_chars", [1, 500, 12_345])
def test_corpus_text_is_whole_documents_and_long_enough(n_chars):
    text = corpus_text(n_chars, seed=0)
    pieces = text.split("\n\n")
    assert pieces == take(documents(0), len(pieces)), "the corpus is whole documents, in stream order"
    assert len(text) >= n_chars
    assert len("\n\n".join(pieces[:-1])) < n_chars, "it stops at the first document boundary past n_chars"
    assert corpus_text(0) == ""


def test_write_corpus_streams_the_same_text(tmp_path):
    path = write_corpus(tmp_path / "deep" / "folder" / "corpus.txt", 20_000, seed=3, progress=False)
    assert path == tmp_path / "deep" / "folder" / "corpus.txt"
    data = path.read_bytes()
    assert data.decode("utf-8") == corpus_text(20_000, seed=3)
    assert len(data) >= 20_000
    assert sorted(p.name for p in path.parent.iterdir()) == ["corpus.txt"], "no temporary file is left"
    assert write_corpus(tmp_path / "empty.txt", 0, progress=False).read_bytes() == b""
    only_facts = write_corpus(tmp_path / "facts.txt", 3000, kinds=("facts",), progress=False)
    assert only_facts.read_text() == corpus_text(3000, kinds=("facts",))


def test_write_corpus_shows_progress(tmp_path, capsys):
    write_corpus(tmp_path / "c.txt", 5000, progress=True)
    assert "c.txt" in capsys.readouterr().err
    write_corpus(tmp_path / "d.txt", 5000, progress=False)
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: corpus_text(-1), "n_chars=-1 must be an integer >= 0"),
        (lambda: corpus_text(10, kinds=("stories", "poems")), r"kind='poems' must be one of 'stories', 'facts'"),
        (lambda: corpus_text(10, kinds=()), r"kinds=\(\) is empty"),
        (lambda: corpus_text(10, kinds=("facts", "facts")), "twice"),
        (lambda: documents(0, kinds=["novels"]), "kind='novels' must be one of"),
        (lambda: write_corpus("x.txt", -5, progress=False), "n_bytes=-5 must be an integer >= 0"),
        (lambda: World.generate(0, n_countries=-1), "n_countries=-1 must be an integer >= 1"),
        (lambda: World.generate(0, n_characters=1), r"n_characters=1 must be an integer >= 2 \(each character needs a friend\)"),
        (lambda: World.generate(0, n_unseen_characters=-3), "n_unseen_characters=-3 must be an integer >= 0"),
        (lambda: World.generate(0, n_characters=100_000), r"ask for at most \d+ characters"),
        (lambda: World.generate(0, n_countries=300), r"ask for at most \d+ countries"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_wrong_types_raise_type_errors():
    with pytest.raises(TypeError, match="seed='0' must be an integer"):
        World.generate("0")
    with pytest.raises(TypeError, match="n_chars=1.5 must be an integer"):
        corpus_text(1.5)
    with pytest.raises(TypeError, match="world must be a World"):
        stories(0, world="small")
    with pytest.raises(TypeError, match="seed=None must be an integer"):
        facts(seed=None)
    assert World.generate(np.int64(4)) == World.generate(4)


# ----------------------------------------------------------------------------- Python source


def test_python_source_files_are_the_standard_library():
    root = Path(sysconfig.get_paths()["stdlib"])
    files = python_source_files()
    relative = [p.relative_to(root).as_posix() for p in files]
    assert relative == sorted(relative)
    assert "os.py" in relative and "json/decoder.py" in relative
    assert all(p.suffix == ".py" and p.is_file() for p in files)
    for parts in (Path(r).parts for r in relative):
        assert not {"site-packages", "dist-packages", "test", "tests", "idle_test"} & set(parts[:-1])
    assert len(python_source_files(include_tests=True)) > len(files)


def test_python_source_text_is_whole_files_within_budget():
    text = python_source_text(200_000)
    assert 150_000 < len(text) <= 200_000
    assert text.startswith("# file: ")
    root = Path(sysconfig.get_paths()["stdlib"])
    chunks = re.split(r"(?:^|\n)# file: (.+)\n", text)[1:]
    headers, bodies = chunks[0::2], chunks[1::2]
    assert headers == sorted(headers) and len(headers) > 5
    for header, body in zip(headers, bodies):
        assert body == (root / header).read_text(encoding="utf-8"), header
    assert python_source_text(0) == ""


def test_python_source_skips_tests_packages_and_bad_files(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "b.py").write_text("b = 2\n")
    (tmp_path / "a.py").write_text("a = 1")  # no final newline: one is added
    (tmp_path / "latin1.py").write_bytes("name = 'caf\xe9'\n".encode("latin-1"))
    for excluded in ("tests", "site-packages", "pkg/test", "idlelib/idle_test"):
        (tmp_path / excluded).mkdir(parents=True)
        (tmp_path / excluded / "x.py").write_text("x = 0\n")
    (tmp_path / "notes.txt").write_text("not python")
    files = [p.relative_to(tmp_path).as_posix() for p in python_source_files(tmp_path)]
    assert files == ["a.py", "latin1.py", "pkg/b.py"]
    assert len(python_source_files(tmp_path, include_tests=True)) == 6
    text = python_source_text(10_000, root=tmp_path)
    assert text == "# file: a.py\na = 1\n\n# file: pkg/b.py\nb = 2\n"
    # A file that does not fit is skipped; the smaller one after it still goes in.
    (tmp_path / "big.py").write_text("x = 1\n" * 100)
    assert python_source_text(40, root=tmp_path) == "# file: a.py\na = 1\n"


def test_python_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no .py files found"):
        python_source_files(tmp_path)
    with pytest.raises(FileNotFoundError, match="no folder"):
        python_source_files(tmp_path / "missing")
    with pytest.raises(ValueError, match="max_chars=-1 must be an integer >= 0"):
        python_source_text(-1)


# ----------------------------------------------------------------------------- CharVocab

VOCAB_TEXT = "hello world! Hello, TinyWorld.\n\t"


@given(st.text(alphabet=sorted(set(VOCAB_TEXT)), max_size=200))
def test_char_vocab_round_trip(text):
    vocab = CharVocab.from_text(VOCAB_TEXT)
    ids = vocab.encode(text)
    assert ids.dtype == torch.long and ids.shape == (len(text),)
    assert ids.tolist() == [vocab.stoi[c] for c in text]  # naive reference
    assert vocab.decode(ids) == text
    assert vocab.decode(ids.tolist()) == text
    assert vocab.decode(tuple(ids.tolist())) == text


@given(st.text(min_size=1, max_size=100))
def test_char_vocab_of_any_text(text):
    vocab = CharVocab.from_text(text)
    assert vocab.chars == sorted(set(text))
    assert vocab.decode(vocab.encode(text)) == text
    assert all(vocab.itos[vocab.stoi[c]] == c for c in text)


def test_char_vocab_basics():
    vocab = CharVocab.from_text("banana")
    assert vocab.chars == ["a", "b", "n"] and vocab.size == len(vocab) == 3
    assert vocab.stoi == {"a": 0, "b": 1, "n": 2} and vocab.itos == ["a", "b", "n"]
    assert vocab.encode("nab").tolist() == [2, 0, 1]
    assert vocab.encode("").shape == (0,) and vocab.decode([]) == ""
    assert vocab.decode(np.array([1, 0])) == "ba"
    assert "a" in vocab and "z" not in vocab
    assert vocab == CharVocab(["a", "b", "n"]) != CharVocab(["b", "a", "n"])
    assert repr(vocab) == "CharVocab(size=3, chars='abn')"
    assert repr(CharVocab.from_text("abcdefghijklmnopqrstuvwxyz")).endswith("...)")
    vocab.chars.append("z")
    assert vocab.size == 3, "chars is a copy"


def test_char_vocab_errors():
    vocab = CharVocab.from_text("abc")
    with pytest.raises(ValueError, match=r"'z' \(U\+007A\) at position 2 .*from a text that contains it"):
        vocab.encode("abz")
    with pytest.raises(ValueError, match=r"character '\\n'"):
        vocab.encode("a\n")
    with pytest.raises(ValueError, match=r"id 3 at position 1 is out of range .* 0 to 2"):
        vocab.decode([0, 3])
    with pytest.raises(ValueError, match="id -1"):
        vocab.decode(torch.tensor([-1]))
    with pytest.raises(ValueError, match=r"shape \(1, 2\)"):
        vocab.decode(torch.tensor([[0, 1]]))
    with pytest.raises(TypeError, match="integer ids"):
        vocab.decode(torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="integer ids"):
        vocab.decode([0, 1.5])
    with pytest.raises(TypeError, match="list, tuple or 1-D tensor"):
        vocab.decode("abc")
    with pytest.raises(TypeError, match="needs a str"):
        vocab.encode([0, 1])
    with pytest.raises(ValueError, match="empty text"):
        CharVocab.from_text("")
    with pytest.raises(ValueError, match="appears twice"):
        CharVocab(["a", "b", "a"])
    with pytest.raises(ValueError, match="single character"):
        CharVocab(["ab"])


# ----------------------------------------------------------------------------- lazy package

# Run in a fresh interpreter: this one has long since imported everything.
LAZY_IMPORT_CHECK = """
import sys
import llmcourse.data.chars
loaded = sorted(name for name in ("llmcourse.tokenizer", "llmcourse.data.download",
                                  "llmcourse.data.tinyworld", "llmcourse.data.tokens") if name in sys.modules)
assert not loaded, f"import llmcourse.data.chars loaded {loaded}"

import llmcourse.data as data
for name in data.__all__:
    value = getattr(data, name)
    assert getattr(value, "__module__", data.__name__).startswith("llmcourse.data"), (name, value)
assert set(data.__all__) <= set(dir(data))
from llmcourse.data.download import download  # the submodule, not hidden by a function
assert callable(download) and not callable(data.download)
print("ok")
"""


def test_data_package_loads_its_modules_only_when_asked():
    result = subprocess.run([sys.executable, "-c", LAZY_IMPORT_CHECK], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


TINYWORLD_WITHOUT_TORCH = """
import sys
from llmcourse.data.tinyworld import World, corpus_text
assert len(corpus_text(2_000, world=World.generate(0))) >= 2_000
try:
    World.generate("zero")
except ValueError as error:
    assert "seed" in str(error), error
assert "torch" not in sys.modules, "TinyWorld imported torch"
print("ok")
"""


def test_tinyworld_needs_no_torch():
    """TinyWorld is pure Python, and its argument checks work (and fail) before torch is loaded."""
    result = subprocess.run([sys.executable, "-c", TINYWORLD_WITHOUT_TORCH], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_data_package_refuses_unknown_names():
    import llmcourse.data as data

    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"):
        data.nothing_here  # noqa: B018
