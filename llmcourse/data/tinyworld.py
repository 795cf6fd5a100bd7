"""TinyWorld: a small invented world, and an endless stream of simple English about it.

TinyWorld is the course's default corpus. It is written by us, needs no download, and is small
and regular enough that a tiny model trained on a laptop CPU writes readable stories within
minutes. Because every sentence is generated from a known world, later chapters have ground
truth: we know which facts a model saw, how often, and which entities it never saw at all.

The world (`World.generate(seed)`)
    Invented countries (pronounceable names built from syllables) with a region, a climate, a
    capital, other towns and exports; towns with places (every town has a market); animal
    characters with a species, a pronoun, a home town, symmetric friendships, likes (a food, an
    activity and sometimes a kind of object), a coloured object they own and a fear.

The text
    `stories(seed)`: TinyStories-like stories of 5-8 sentences, each about one character and
    usually a friend, following one of nine plots (a rainy day, a lost kite, sharing food, a long
    visit, a birthday, a fear overcome, practice, a trip to the capital, a day of play), with
    cause and effect and a line of dialogue, and always true to the world.
    `facts(seed)`: encyclopedia-style paragraphs, one per country, town or character, saying
    every fact about it in varied words. Each pass over the entities is a fresh shuffle, so every
    entity is described once per pass (about 140 paragraphs with the default sizes).
    `documents`, `corpus_text` and `write_corpus` interleave the kinds into one corpus, with
    documents separated by a blank line. The text is plain ASCII, one line per document.

Stability (later chapters depend on it)
    Every random choice is drawn from a named stream: `stream_rng(seed, "stories")` is a
    `random.Random` seeded with the SHA-256 of `"tinyworld:{seed}:{name}"` (never Python's
    salted `hash()`, never the iteration order of a set). The world's parts each have their own
    stream too. So adding a generator later (SFT chats, preference pairs, tool-use traces) means
    adding a stream with a new name, and it cannot change what `World.generate(seed)`,
    `stories(seed)` or `facts(seed)` produce. Rule for future edits: never draw extra numbers
    from an existing stream; add a new stream instead. `tests/test_data.py` pins hashes of the
    default world and corpus so that an accidental change is caught.

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

from __future__ import annotations

import hashlib
import operator
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from tqdm.auto import tqdm

from llmcourse.files import atomic_path

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

# --------------------------------------------------------------------------- random streams


def stream_rng(seed: int, stream: str) -> random.Random:
    """An independent random stream for (seed, stream name), identical on every platform."""
    digest = hashlib.sha256(f"tinyworld:{seed}:{stream}".encode()).digest()
    return random.Random(int.from_bytes(digest, "big"))


def _stable_fraction(*parts: object) -> float:
    """A number in [0, 1) fixed by `parts`: a per-item coin that no other draw can disturb."""
    digest = hashlib.sha256(":".join(map(str, ("tinyworld", *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# --------------------------------------------------------------------------- vocabulary

SPECIES = (
    "cat", "dog", "fox", "rabbit", "owl", "bear", "mouse", "frog",
    "duck", "hedgehog", "squirrel", "badger", "otter", "goat",
)
FLYING_SPECIES = frozenset({"owl", "duck"})
CLIMBING_SPECIES = frozenset({"cat", "squirrel", "bear"})

REGIONS = ("north", "south", "east", "west")
CLIMATES = ("rainy", "snowy", "windy", "sunny", "foggy")
EXPORTS = (
    "copper", "tea", "wool", "salt", "silk", "glass", "timber", "rice", "coffee", "cotton",
    "iron", "silver", "paper", "marble", "amber", "sugar", "tin", "leather", "wheat", "cocoa",
)

# A food a character likes -> a portion of it that can be carried or given.
FOODS = {
    "honey": "a jar of honey",
    "apples": "a basket of apples",
    "cheese": "a big piece of cheese",
    "bread": "a loaf of bread",
    "carrots": "a bag of carrots",
    "berries": "a bowl of berries",
    "fish": "a basket of fish",
    "cake": "a big cake",
    "soup": "a pot of soup",
    "nuts": "a bag of nuts",
    "plums": "a bowl of plums",
    "pears": "a basket of pears",
    "eggs": "a box of eggs",
    "oranges": "a bag of oranges",
    "pancakes": "a plate of pancakes",
}


@dataclass(frozen=True)
class Activity:
    gerund: str  # "painting": what a character likes
    verb: str  # "paint": "Let us paint together!"
    past: str  # "painted pictures": "they painted pictures all day"
    indoor: bool  # can be done at home on a rainy day


ACTIVITIES = {
    a.gerund: a
    for a in (
        Activity("painting", "paint", "painted pictures", True),
        Activity("singing", "sing", "sang songs", True),
        Activity("dancing", "dance", "danced", True),
        Activity("baking", "bake", "baked a cake", True),
        Activity("drawing", "draw", "drew pictures", True),
        Activity("reading", "read", "read books", True),
        Activity("knitting", "knit", "knitted scarves", True),
        Activity("juggling", "juggle", "juggled", True),
        Activity("swimming", "swim", "went swimming", False),
        Activity("climbing", "climb", "climbed rocks", False),
        Activity("fishing", "fish", "went fishing", False),
        Activity("skating", "skate", "went skating", False),
    )
}
INDOOR_ACTIVITIES = tuple(a for a in ACTIVITIES.values() if a.indoor)

# An object kind (singular) -> its plural, for "likes kites". LIGHT_OBJECTS can blow away.
OBJECTS = {
    "kite": "kites", "ball": "balls", "hat": "hats", "scarf": "scarves", "balloon": "balloons",
    "umbrella": "umbrellas", "boat": "boats", "drum": "drums", "book": "books", "lamp": "lamps",
    "bell": "bells", "cup": "cups", "basket": "baskets", "whistle": "whistles",
}
LIGHT_OBJECTS = frozenset({"kite", "ball", "hat", "scarf", "balloon", "umbrella"})
COLOURS = (
    "red", "blue", "green", "yellow", "orange", "purple", "pink", "white", "black", "brown", "grey",
)
FEARS = ("the dark", "thunder", "spiders", "deep water", "loud noises")

PLACES = (
    "park", "library", "river", "bakery", "bridge", "lake", "hill", "forest",
    "garden", "beach", "school", "harbour", "square", "museum", "pond",
)
OUTDOOR_PLACES = frozenset(
    {"park", "river", "bridge", "lake", "hill", "forest", "garden", "beach", "harbour", "square", "pond"}
)
ADJECTIVES = ("little", "young", "kind", "clever", "brave", "happy", "old", "curious", "gentle")

# How each climate shows up in text: what the weather is doing, and how it ends (now / then).
WEATHER = {
    "rainy": ("raining", "the rain stops", "the rain stopped"),
    "snowy": ("snowing", "the snow stops", "the snow stopped"),
    "windy": ("very windy", "the wind calms down", "the wind calmed down"),
    "foggy": ("very foggy", "the fog lifts", "the fog lifted"),
    "sunny": ("far too hot", "it gets cooler", "it got cooler"),
}

# --------------------------------------------------------------------------- invented names

_CHARACTER_START = (
    "Ba", "Be", "Bi", "Bo", "Da", "Di", "Fe", "Fi", "Ga", "Ha", "Jo", "Ka", "Ki", "La", "Li",
    "Lo", "Lu", "Ma", "Mi", "Mo", "Na", "Ni", "Pa", "Pe", "Pi", "Po", "Ra", "Ri", "Ro", "Sa",
    "Se", "Ta", "Te", "To", "Va", "Wi", "Ya", "Ze",
)
_CHARACTER_END = (
    "bo", "da", "di", "fi", "ka", "ki", "la", "li", "lo", "ma", "mi", "na", "ni", "no", "pa",
    "pi", "ra", "ri", "ro", "sa", "ta", "ti", "to", "vi", "zo", "bin", "dor", "lin", "mon",
    "nor", "rik", "bel", "tan", "wen", "fin", "gan", "mar",
)
_COUNTRY_START = (
    "Vel", "Bran", "Kor", "Ost", "Mal", "Ser", "Tav", "Dun", "Ard", "Lun", "Zer", "Quel",
    "Hav", "Nor", "Pel", "Sil", "Tor", "Gal", "Rhen", "Vash",
)
_COUNTRY_END = ("ora", "ia", "mark", "land", "avia", "eth", "ovia", "esse", "una", "aria", "ica", "ond")
_TOWN_START = (
    "Brin", "Ash", "Cal", "Elm", "Fen", "Glen", "Hol", "Kip", "Lark", "Mil", "Oak", "Pen",
    "Rook", "Stan", "Thorn", "Wil", "Wren", "Bram", "Cor", "Del", "Har", "Mor", "Red", "Sel",
    "Bel", "Cran", "Dor", "Fair", "Gold", "Hazel", "Lin", "Mead", "Sand", "Tam",
)
_TOWN_END = (
    "ley", "ford", "by", "ton", "wick", "mere", "holm", "stead", "bury", "field", "port",
    "gate", "ham", "well",
)
# Syllable pairs that spell an English word (a name must never be mistaken for ordinary text,
# above all a word the stories use, like "Began"), a rude one, or a well-known place.
_NOT_NAMES = frozenset(
    {
        "Babel", "Bagan", "Began", "Beta", "Bozo", "Dada", "Data", "Feta", "Gala", "Halo",
        "Kaka", "Kiki", "Kilo", "Label", "Lala", "Lama", "Lima", "Lobo", "Lola", "Mama",
        "Mami", "Manor", "Mini", "Minor", "Moto", "Nana", "Pagan", "Papa", "Papi", "Pipi",
        "Polo", "Robin", "Rota", "Sagan", "Satan", "Senor", "Tata", "Tenor", "Toto",
        "Wifi", "Wiki", "Wino", "Zero",
        "Ashholm", "Galaria", "Holholm", "Malaria", "Norland", "Ostia", "Silica",
    }
)


def _name_pool(starts: Iterable[str], ends: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """First syllable -> the names it starts (minus English words), all sorted so draws are stable."""
    return {
        start: tuple(sorted({start + end for end in ends} - _NOT_NAMES)) for start in sorted(set(starts))
    }


_CHARACTER_NAMES = _name_pool(_CHARACTER_START, _CHARACTER_END)
_COUNTRY_NAMES = _name_pool(_COUNTRY_START, _COUNTRY_END)
_TOWN_NAMES = _name_pool(_TOWN_START, _TOWN_END)

# --------------------------------------------------------------------------- the world


@dataclass(frozen=True)
class Item:
    """A coloured object a character owns, e.g. Item("red", "kite")."""

    colour: str
    kind: str

    def __str__(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class Country:
    name: str
    region: str  # "north", "south", "east" or "west"
    climate: str  # a key of WEATHER
    capital: str
    towns: tuple[str, ...]  # the capital first
    exports: tuple[str, ...]


@dataclass(frozen=True)
class Town:
    name: str
    country: str
    places: tuple[str, ...]  # "market" first
    is_capital: bool


@dataclass(frozen=True)
class Character:
    name: str
    species: str
    pronoun: str  # "he" or "she"
    home: str  # a town
    country: str  # the home town's country
    friends: tuple[str, ...]  # sorted; friendship is symmetric
    food: str  # a key of FOODS
    activity: str  # a key of ACTIVITIES
    liked_objects: str | None  # a plural of OBJECTS ("kites"), or None
    item: Item  # the object the character owns
    fear: str

    @property
    def likes(self) -> tuple[str, ...]:
        """Everything the character likes: ("honey", "painting") or ("honey", "painting", "kites")."""
        extra = (self.liked_objects,) if self.liked_objects else ()
        return (self.food, self.activity, *extra)


@dataclass(frozen=True)
class Fact:
    """One fact about an entity, e.g. Fact("Mina", "likes", ("honey", "painting"), "sft").

    `split` says where it may be used: "sft" (in pretraining text; free for fine-tuning data),
    "heldout" (in pretraining text; never in fine-tuning data) or "unseen" (the subject never
    appears in any text).
    """

    subject: str
    relation: str
    values: tuple[str, ...]
    split: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.subject, self.relation)


HELDOUT_FRACTION = 0.2  # share of (subject, relation) keys that are pretraining-only


@dataclass(frozen=True, repr=False)
class World:
    """A generated world. Build it with `World.generate(seed)`; equal seeds give equal worlds."""

    seed: int
    countries: tuple[Country, ...]
    towns: tuple[Town, ...]
    characters: tuple[Character, ...]
    unseen_countries: tuple[Country, ...]
    unseen_towns: tuple[Town, ...]
    unseen_characters: tuple[Character, ...]

    @classmethod
    def generate(
        cls,
        seed: int = 0,
        *,
        n_countries: int = 20,
        towns_per_country: int = 3,
        n_characters: int = 60,
        n_unseen_countries: int = 3,
        n_unseen_characters: int = 12,
    ) -> World:
        """Build the world for `seed`. Each part is drawn from its own named random stream."""
        seed = _check_int("seed", seed, minimum=None)
        _check_int("n_countries", n_countries, minimum=1)
        _check_int("towns_per_country", towns_per_country, minimum=1)
        _check_int("n_characters", n_characters, minimum=2)
        _check_int("n_unseen_countries", n_unseen_countries, minimum=0)
        _check_int("n_unseen_characters", n_unseen_characters, minimum=0)
        if n_unseen_characters == 1:
            raise ValueError("n_unseen_characters must be 0 or >= 2 (each character needs a friend), got 1")
        _check_capacity("countries", n_countries + n_unseen_countries, _COUNTRY_NAMES)
        _check_capacity("towns", (n_countries + n_unseen_countries) * towns_per_country, _TOWN_NAMES)
        _check_capacity("characters", n_characters + n_unseen_characters, _CHARACTER_NAMES)

        taken: set[str] = set()  # every name drawn so far: no two entities share a name
        countries, towns = _make_countries(seed, "world", n_countries, towns_per_country, taken)
        characters = _make_characters(seed, "world", n_characters, towns, taken)
        unseen_countries, unseen_towns = _make_countries(
            seed, "unseen", n_unseen_countries, towns_per_country, taken
        )
        # Unseen characters live in unseen towns or in seen ones (a seen town's facts list only
        # its seen residents, so this leaks nothing); their friends are unseen characters only.
        unseen_characters = _make_characters(
            seed, "unseen", n_unseen_characters, unseen_towns + towns, taken
        )
        return cls(seed, countries, towns, characters, unseen_countries, unseen_towns, unseen_characters)

    # ---- lookups

    @cached_property
    def _by_name(self) -> dict[str, Country | Town | Character]:
        everything = (
            self.countries + self.towns + self.characters
            + self.unseen_countries + self.unseen_towns + self.unseen_characters
        )
        return {entity.name: entity for entity in everything}

    def _lookup(self, name: str, kind: type, label: str):
        entity = self._by_name.get(name)
        if not isinstance(entity, kind):
            raise KeyError(f"no {label} named {name!r} in this world (seed {self.seed})")
        return entity

    def country(self, name: str) -> Country:
        return self._lookup(name, Country, "country")

    def town(self, name: str) -> Town:
        return self._lookup(name, Town, "town")

    def character(self, name: str) -> Character:
        return self._lookup(name, Character, "character")

    @cached_property
    def _residents(self) -> dict[str, tuple[str, ...]]:
        residents: dict[str, list[str]] = {town.name: [] for town in self.towns + self.unseen_towns}
        for character in self.characters:  # seen characters only: this feeds pretraining text
            residents[character.home].append(character.name)
        return {town: tuple(names) for town, names in residents.items()}

    def residents(self, town: str) -> tuple[str, ...]:
        """The seen characters whose home is `town`, sorted by name."""
        self.town(town)
        return self._residents[town]

    def unseen_names(self) -> frozenset[str]:
        """Every name that no pretraining text mentions (unseen countries, towns, characters)."""
        return frozenset(
            e.name for e in self.unseen_countries + self.unseen_towns + self.unseen_characters
        )

    # ---- facts and splits

    def _split(self, subject: str, relation: str, unseen: bool) -> str:
        if unseen:
            return "unseen"
        heldout = _stable_fraction(self.seed, "heldout", subject, relation) < HELDOUT_FRACTION
        return "heldout" if heldout else "sft"

    def facts(self, include_unseen: bool = False) -> list[Fact]:
        """Every fact of the world as (subject, relation, values, split), in a fixed order."""
        groups = [(self.countries, self.towns, self.characters, False)]
        if include_unseen:
            groups.append((self.unseen_countries, self.unseen_towns, self.unseen_characters, True))
        result: list[Fact] = []
        for countries, towns, characters, unseen in groups:
            for subject, relation, values in _fact_triples(countries, towns, characters):
                result.append(Fact(subject, relation, values, self._split(subject, relation, unseen)))
        return result

    def heldout_fact_keys(self) -> frozenset[tuple[str, str]]:
        """The (subject, relation) keys of pretraining-only facts: never use them for fine-tuning."""
        return frozenset(f.key for f in self.facts() if f.split == "heldout")

    # ---- printing

    def __repr__(self) -> str:
        return (
            f"World(seed={self.seed}, {len(self.countries)} countries, {len(self.towns)} towns, "
            f"{len(self.characters)} characters; unseen: {len(self.unseen_countries)} countries, "
            f"{len(self.unseen_towns)} towns, {len(self.unseen_characters)} characters)"
        )

    def summary(self) -> str:
        """Every entity on one line each: a readable listing of the whole world."""
        lines = [repr(self)]
        sections = (
            ("Countries", self.countries, self.towns, self.characters),
            (
                "Unseen (never in pretraining text)",
                self.unseen_countries, self.unseen_towns, self.unseen_characters,
            ),
        )
        for title, countries, towns, characters in sections:
            lines.append(f"{title}:")
            lines += [_describe_country(c) for c in countries]
            lines += [_describe_town(t) for t in towns]
            lines += [_describe_character(c) for c in characters]
        return "\n".join(lines)


def _describe_country(c: Country) -> str:
    return (
        f"  country {c.name}: {c.region}, {c.climate}; capital {c.capital}; "
        f"towns {', '.join(c.towns)}; exports {', '.join(c.exports)}"
    )


def _describe_town(t: Town) -> str:
    capital = ", capital" if t.is_capital else ""
    return f"  town {t.name} ({t.country}{capital}): {', '.join(t.places)}"


def _describe_character(c: Character) -> str:
    return (
        f"  {c.name}: {c.species} ({c.pronoun}), lives in {c.home} ({c.country}); "
        f"friends {', '.join(c.friends)}; likes {', '.join(c.likes)}; owns {with_article(str(c.item))}; "
        f"afraid of {c.fear}"
    )


def _fact_triples(countries, towns, characters) -> Iterator[tuple[str, str, tuple[str, ...]]]:
    for c in countries:
        yield c.name, "region", (c.region,)
        yield c.name, "climate", (c.climate,)
        yield c.name, "capital", (c.capital,)
        yield c.name, "towns", c.towns
        yield c.name, "exports", c.exports
    for t in towns:
        yield t.name, "country", (t.country,)
        yield t.name, "places", t.places
    for c in characters:
        yield c.name, "species", (c.species,)
        yield c.name, "home", (c.home,)
        yield c.name, "country", (c.country,)
        yield c.name, "friends", c.friends
        yield c.name, "likes", c.likes
        yield c.name, "owns", (str(c.item),)
        yield c.name, "fear", (c.fear,)


# --------------------------------------------------------------------------- building the world


def _draw_names(
    seed: int, stream: str, pool: dict[str, tuple[str, ...]], count: int, taken: set[str]
) -> list[str]:
    """`count` distinct names from `pool` that are not `taken` yet (adds them to it), sorted.

    Names are spread evenly over first syllables (each used once before any is used twice), so a
    world does not fill up with look-alikes such as Milbury, Milford and Milham.
    """
    rng = stream_rng(seed, stream)
    free = {start: [name for name in names if name not in taken] for start, names in pool.items()}
    chosen: list[str] = []
    while len(chosen) < count:
        starts = [start for start in free if free[start]]
        if not starts:
            raise ValueError(f"ran out of names after {len(chosen)} of {count}; ask for fewer")
        rng.shuffle(starts)
        for start in starts[: count - len(chosen)]:
            name = rng.choice(free[start])
            free[start].remove(name)
            chosen.append(name)
    taken.update(chosen)
    return sorted(chosen)


def _make_countries(
    seed: int, part: str, count: int, towns_per_country: int, taken: set[str]
) -> tuple[tuple[Country, ...], tuple[Town, ...]]:
    country_names = _draw_names(seed, f"{part}:country-names", _COUNTRY_NAMES, count, taken)
    town_names = _draw_names(seed, f"{part}:town-names", _TOWN_NAMES, count * towns_per_country, taken)
    rng = stream_rng(seed, f"{part}:countries")
    rng.shuffle(town_names)  # so a country's towns are not alphabetical neighbours
    countries, towns = [], []
    for i, name in enumerate(country_names):
        own_towns = tuple(town_names[i * towns_per_country : (i + 1) * towns_per_country])
        countries.append(
            Country(
                name=name,
                region=rng.choice(REGIONS),
                climate=rng.choice(CLIMATES),
                capital=own_towns[0],
                towns=own_towns,
                exports=tuple(rng.sample(EXPORTS, rng.randint(2, 3))),
            )
        )
        for j, town in enumerate(own_towns):
            others = rng.sample(PLACES, 2)
            towns.append(Town(town, name, ("market", *others), is_capital=j == 0))
    towns.sort(key=operator.attrgetter("name"))
    return tuple(countries), tuple(towns)


def _make_characters(
    seed: int, part: str, count: int, towns: tuple[Town, ...], taken: set[str]
) -> tuple[Character, ...]:
    if count == 0:
        return ()
    names = _draw_names(seed, f"{part}:character-names", _CHARACTER_NAMES, count, taken)
    rng = stream_rng(seed, f"{part}:characters")
    country_of_town = {t.name: t.country for t in towns}
    town_names = [t.name for t in towns]
    traits = {}
    for name in names:
        home = rng.choice(town_names)
        traits[name] = dict(
            species=rng.choice(SPECIES),
            pronoun=rng.choice(("he", "she")),
            home=home,
            country=country_of_town[home],
            food=rng.choice(list(FOODS)),
            activity=rng.choice(list(ACTIVITIES)),
            liked_objects=OBJECTS[rng.choice(list(OBJECTS))] if rng.random() < 0.5 else None,
            item=Item(rng.choice(COLOURS), rng.choice(list(OBJECTS))),
            fear=rng.choice(FEARS),
        )
    countries = {name: t["country"] for name, t in traits.items()}
    friends = _make_friendships(names, countries, stream_rng(seed, f"{part}:friends"))
    return tuple(Character(name=n, friends=friends[n], **traits[n]) for n in names)


def _make_friendships(
    names: list[str], country: dict[str, str], rng: random.Random, max_friends: int = 3
) -> dict[str, tuple[str, ...]]:
    """A symmetric friendship graph: everyone gets 1 to `max_friends` friends, mostly compatriots."""
    friends: dict[str, list[str]] = {name: [] for name in names}
    for name in names:
        wanted = rng.randint(1, max_friends)
        candidates = [
            o for o in names if o != name and o not in friends[name] and len(friends[o]) < max_friends
        ]
        while len(friends[name]) < wanted and candidates:
            compatriots = [o for o in candidates if country[o] == country[name]]
            other = rng.choice(compatriots if compatriots and rng.random() < 0.6 else candidates)
            candidates.remove(other)
            friends[name].append(other)
            friends[other].append(name)
        if not friends[name]:  # everyone else is full: exceed the limit rather than leave a loner
            other = rng.choice([o for o in names if o != name])
            friends[name].append(other)
            friends[other].append(name)
    return {name: tuple(sorted(f)) for name, f in friends.items()}


# --------------------------------------------------------------------------- writing helpers


def with_article(phrase: str) -> str:
    """'a' or 'an' before `phrase`: "an owl", "a red kite", "an orange umbrella"."""
    return ("an " if phrase[0] in "aeiouAEIOU" else "a ") + phrase


def join_words(words: Iterable[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _sentences(parts: Iterable[str]) -> str:
    """Join sentences with single spaces, each starting with a capital letter."""
    return " ".join(s[0].upper() + s[1:] for s in parts)


@dataclass(frozen=True)
class Pronouns:
    subject: str  # she
    object: str  # her
    possessive: str  # her
    reflexive: str  # herself


PRONOUNS = {"he": Pronouns("he", "him", "his", "himself"), "she": Pronouns("she", "her", "her", "herself")}


# --------------------------------------------------------------------------- stories


class _Storyteller:
    """Writes stories about one world; each plot returns its sentences, or None if it cannot fit."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.characters = world.characters
        self.by_name = {c.name: c for c in world.characters}
        self.countries = {c.name: c for c in world.countries}
        self.towns = {t.name: t for t in world.towns}
        self.nearby = {
            c.name: tuple(f for f in c.friends if self.by_name[f].home == c.home) for c in self.characters
        }
        self.far_away = {
            c.name: tuple(f for f in c.friends if self.by_name[f].home != c.home) for c in self.characters
        }
        self.outdoors = {t.name: tuple(p for p in t.places if p in OUTDOOR_PLACES) for t in world.towns}
        self.plots: tuple[Callable[[Character, random.Random], list[str] | None], ...] = (
            self.rainy_day, self.blown_away, self.sharing, self.long_visit, self.birthday,
            self.fear, self.practice, self.capital_trip, self.play_day,
        )

    def story(self, rng: random.Random) -> str:
        while True:  # several plots fit every character, so this ends after a few tries at most
            hero = rng.choice(self.characters)
            sentences = rng.choice(self.plots)(hero, rng)
            if sentences is not None:
                return _sentences(sentences)

    def intro(self, hero: Character, rng: random.Random) -> str:
        adjective = rng.choice(ADJECTIVES)
        return rng.choice((
            f"{hero.name} was {with_article(adjective + ' ' + hero.species)} who lived in {hero.home}.",
            f"Once upon a time, there was {with_article(hero.species)} named {hero.name} "
            f"who lived in {hero.home}.",
            f"{hero.name} the {hero.species} lived in {hero.home}, a town in {hero.country}.",
            f"In the town of {hero.home}, there lived "
            f"{with_article(adjective + ' ' + hero.species)} called {hero.name}.",
        ))

    def helper_arrives(self, hero: Character, rng: random.Random) -> Character:
        """A friend: one from the same town if there is one, otherwise one who comes to visit."""
        return self.by_name[rng.choice(self.nearby[hero.name] or hero.friends)]

    # ---- the plots

    def rainy_day(self, hero: Character, rng: random.Random) -> list[str]:
        p = PRONOUNS[hero.pronoun]
        weather, stops, stopped = WEATHER[self.countries[hero.country].climate]
        activity = ACTIVITIES[hero.activity]
        if not activity.indoor:
            activity = rng.choice(INDOOR_ACTIVITIES)
        places = self.outdoors[hero.home]
        s = [self.intro(hero, rng)]
        s.append(
            f"One morning, {hero.name} wanted to go to the {rng.choice(places)}." if places
            else f"One morning, {hero.name} wanted to play outside."
        )
        s.append(rng.choice((
            f"But it was {weather} in {hero.home}, so {p.subject} stayed home.",
            f"Because it was {weather}, {hero.name} stayed home.",
        )))
        if self.nearby[hero.name]:
            friend = self.by_name[rng.choice(self.nearby[hero.name])]
            s.append(f"So {p.subject} asked {p.possessive} friend {friend.name} to come over.")
            s.append(f'"Let us {activity.verb} together!" said {hero.name}.')
            s.append(f"{friend.name} came, and they {activity.past} until {stopped}.")
        else:
            s.append(f"So {p.subject} decided to {activity.verb} instead.")
            s.append(f'"I will {activity.verb} until {stops}," said {hero.name}.')
        s.append(rng.choice((
            f"It was a happy day for {hero.name}.",
            f"{hero.name} was happy, even though it was {weather}.",
            f"In the end, {hero.name} had a lovely day at home.",
        )))
        return s

    def blown_away(self, hero: Character, rng: random.Random) -> list[str] | None:
        if hero.item.kind not in LIGHT_OBJECTS:
            return None
        p = PRONOUNS[hero.pronoun]
        kind = hero.item.kind
        friend = self.helper_arrives(hero, rng)
        places = self.outdoors[hero.home]
        where = f"to the {rng.choice(places)}" if places else "outside"
        s = [self.intro(hero, rng), f"One windy day, {hero.name} took {p.possessive} {hero.item} {where}."]
        s.append(rng.choice((
            f"A strong wind blew the {kind} into a tall tree.",
            f"Suddenly, the wind pulled the {kind} up into a tall tree.",
        )))
        s.append(f"{hero.name} was sad, because {p.subject} could not reach it.")
        if friend.home == hero.home:
            s.append(f"Just then, {p.possessive} friend {friend.name} came by.")
        else:
            s.append(
                f"Just then, {p.possessive} friend {friend.name} arrived from {friend.home} for a visit."
            )
        s.append(f'"Do not worry, I will help you!" said {friend.name}.')
        if friend.species in FLYING_SPECIES:
            s.append(f"{friend.name} flew up and brought the {kind} back down.")
        elif friend.species in CLIMBING_SPECIES:
            s.append(f"{friend.name} climbed the tree and brought the {kind} back down.")
        else:
            s.append(f"{friend.name} found a long stick and pushed the {kind} down.")
        s.append(f'"Thank you, {friend.name}!" said {hero.name}.')
        return s

    def sharing(self, hero: Character, rng: random.Random) -> list[str]:
        p = PRONOUNS[hero.pronoun]
        food = hero.food
        s = [
            self.intro(hero, rng),
            f"One day, {hero.name} was very hungry.",
            f"{p.subject} loved {food}, so {p.subject} went to the market in {hero.home}.",
            f"{p.subject} bought {FOODS[food]} and started to walk home.",
        ]
        if self.nearby[hero.name]:
            friend = rng.choice(self.nearby[hero.name])
            s.append(f"On the way, {p.subject} met {p.possessive} friend {friend}, who looked hungry too.")
            sharer = friend
        else:
            stranger = rng.choice(SPECIES)
            s.append(f"On the way, {p.subject} met {with_article(stranger)} who looked hungry too.")
            sharer = f"the {stranger}"
        s.append(f'"Would you like to share my {food}?" asked {hero.name}.')
        s.append(f"{sharer} said yes, and they ate together under a big tree.")
        s.append(rng.choice((
            f"Sharing made {hero.name} even happier than eating alone.",
            f"{hero.name} learned that food tastes better when you share it.",
        )))
        return s

    def long_visit(self, hero: Character, rng: random.Random) -> list[str] | None:
        if not self.far_away[hero.name]:
            return None
        p = PRONOUNS[hero.pronoun]
        friend = self.by_name[rng.choice(self.far_away[hero.name])]
        q = PRONOUNS[friend.pronoun]
        s = [self.intro(hero, rng)]
        if friend.country == hero.country:
            s.append(f"{p.possessive} friend {friend.name} lived far away in {friend.home}.")
        else:
            s.append(
                f"{p.possessive} friend {friend.name} lived far away in {friend.home}, "
                f"in the country of {friend.country}."
            )
        s.append(f"{hero.name} missed {friend.name} very much, so {p.subject} decided to visit {q.object}.")
        if friend.country == hero.country:
            s.append(f"{p.subject} took the train to {friend.home}.")
        else:
            s.append(f"{p.subject} packed a bag and travelled all the way to {friend.country}.")
        s.append(f'"{hero.name}! What a lovely surprise!" said {friend.name}.')
        s.append(
            f"{hero.name} gave {friend.name} {FOODS[friend.food]}, "
            f"because {friend.name} loved {friend.food}."
        )
        place = rng.choice(self.towns[friend.home].places)
        s.append(f"Then {friend.name} showed {hero.name} the {place} in {friend.home}.")
        s.append(rng.choice((
            "It was a happy day for both of them.",
            "The two friends talked and laughed until it was time to go home.",
        )))
        return s

    def birthday(self, hero: Character, rng: random.Random) -> list[str]:
        p = PRONOUNS[hero.pronoun]
        friend = self.by_name[rng.choice(hero.friends)]
        q = PRONOUNS[friend.pronoun]
        liked = rng.choice(friend.likes)
        if liked == friend.liked_objects:
            kind = next(k for k, plural in OBJECTS.items() if plural == liked)
            gift = f"made {q.object} {with_article(rng.choice(COLOURS) + ' ' + kind)}"
        elif liked == friend.food:
            gift = f"brought {q.object} {FOODS[liked]}"
        else:
            gift = f"found {q.object} a book about {liked}"
        s = [
            self.intro(hero, rng),
            f"One day, it was {friend.name}'s birthday, and {hero.name} wanted to give {q.object} a present.",
            f"{hero.name} knew that {friend.name} loved {liked}, so {p.subject} {gift}.",
        ]
        if friend.home != hero.home:
            s.append(f"{p.subject} carried the present all the way to {friend.home}.")
        s.append(f'"Happy birthday, {friend.name}!" said {hero.name}.')
        s.append(f"{friend.name} was so happy that {q.subject} hugged {hero.name}.")
        s.append(f"Because {hero.name} remembered what {friend.name} loved, it was the best birthday ever.")
        return s

    def fear(self, hero: Character, rng: random.Random) -> list[str]:
        p = PRONOUNS[hero.pronoun]
        if self.nearby[hero.name]:
            helper = rng.choice(self.nearby[hero.name])
            arrives = f"Luckily, {p.possessive} friend {helper} was there."
        else:
            helper = f"{p.possessive} {rng.choice(('mother', 'father'))}"
            arrives = f"Luckily, {helper} was there."
        scene, comfort, resolution = {
            "the dark": (
                f"One night, the lamp in {p.possessive} room went out, and everything was dark.",
                "The dark is just the day with its eyes closed",
                f"{helper} lit a candle and sat with {hero.name} until {p.subject} fell asleep.",
            ),
            "thunder": (
                f"One evening, a big storm came to {hero.home}, and the thunder was very loud.",
                "Thunder is loud, but it cannot hurt you",
                f"{helper} told {hero.name} a story until the storm was over.",
            ),
            "spiders": (
                f"One morning, {hero.name} found a big spider in {p.possessive} boot.",
                "That spider is more scared of you than you are of it",
                f"{helper} gently carried the spider out of the house.",
            ),
            "deep water": (
                f"One day, {hero.name} had to cross a deep stream to get home.",
                "Hold my hand, and we will cross together",
                f"{helper} showed {hero.name} the stepping stones, and they crossed the stream together.",
            ),
            "loud noises": (
                f"One day, a band played very loud music in the street outside {p.possessive} house.",
                "Let us cover your ears with a warm hat",
                f"{helper} put a soft hat on {hero.name}, and the music did not seem so loud.",
            ),
        }[hero.fear]
        return [
            self.intro(hero, rng),
            rng.choice((
                f"{hero.name} was afraid of {hero.fear}.",
                f"{hero.name} was very scared of {hero.fear}.",
            )),
            scene,
            rng.choice((
                f"{hero.name} was so scared that {p.subject} began to cry.",
                f"{hero.name} hid under a blanket and shook with fear.",
            )),
            arrives,
            f'"{comfort}," said {helper}.',
            resolution,
            f"After that, {hero.name} was not so afraid of {hero.fear} anymore.",
        ]

    def practice(self, hero: Character, rng: random.Random) -> list[str]:
        p = PRONOUNS[hero.pronoun]
        if self.nearby[hero.name]:
            coach = rng.choice(self.nearby[hero.name])
        else:
            coach = f"{with_article('old ' + rng.choice(SPECIES))} who lived nearby"
        return [
            self.intro(hero, rng),
            f"{hero.name} loved {hero.activity}, but {p.subject} was not very good at it yet.",
            f"At first, {p.subject} made lots of mistakes, and {p.subject} felt like giving up.",
            f'"Keep trying, and you will get better," said {coach}.',
            f"So {hero.name} practised every day, even when it was hard.",
            f"Because {p.subject} practised so much, {hero.name} became very good at {hero.activity}.",
            f"{hero.name} was proud of {p.reflexive}.",
        ]

    def capital_trip(self, hero: Character, rng: random.Random) -> list[str]:
        p = PRONOUNS[hero.pronoun]
        country = self.countries[hero.country]
        exports = join_words(country.exports)
        s = [self.intro(hero, rng)]
        if hero.home == country.capital:
            s.append(f"{hero.home} was the capital of {country.name}, and it was always busy.")
            s.append(f"One day, in the big market, {hero.name} saw carts full of {exports}.")
        else:
            s.append(f"One day, {hero.name} took a trip to {country.capital}, the capital of {country.name}.")
            s.append(f"In the big market, {p.subject} saw carts full of {exports}.")
        s.append(f'"Where are all these carts going?" asked {hero.name}.')
        worker = with_article(rng.choice(SPECIES))
        s.append(
            f'"They are going to other countries, because {country.name} exports {exports}," '
            f"said {worker} who worked there."
        )
        friend = self.by_name[rng.choice(hero.friends)]
        if friend.home == hero.home:
            s.append(f"{hero.name} went home and told {p.possessive} friend {friend.name} all about it.")
        else:
            s.append(
                f"{hero.name} wrote a letter to {p.possessive} friend {friend.name} in {friend.home} "
                f"about everything {p.subject} had seen."
            )
        return s

    def play_day(self, hero: Character, rng: random.Random) -> list[str] | None:
        if not self.nearby[hero.name]:
            return None
        p = PRONOUNS[hero.pronoun]
        friend = self.by_name[rng.choice(self.nearby[hero.name])]
        s = [
            self.intro(hero, rng),
            f"One morning, {hero.name} went to see {p.possessive} friend {friend.name}.",
        ]
        if hero.activity == friend.activity:
            s.append(
                f"{hero.name} and {friend.name} both loved {hero.activity}, "
                f"so they spent the whole day {hero.activity} together."
            )
        else:
            s.append(f"{hero.name} loved {hero.activity}, but {friend.name} loved {friend.activity}.")
            s.append(f'"Let us do both!" said {friend.name}.')
            s.append(
                f"In the morning they {ACTIVITIES[hero.activity].past}, and in the afternoon "
                f"they {ACTIVITIES[friend.activity].past}."
            )
        s.append(f"Later, they walked to the {rng.choice(self.towns[hero.home].places)} together.")
        s.append(rng.choice((
            f'"You are the best friend ever," said {hero.name}.',
            f'"Can we play again tomorrow?" asked {friend.name}.',
        )))
        return s


# --------------------------------------------------------------------------- fact paragraphs

# How a climate is said about a place.
_CLIMATE_SENTENCES = {
    "rainy": ("It often rains in {}.", "{} gets a lot of rain."),
    "snowy": ("It often snows in {}.", "{} has long, snowy winters."),
    "windy": ("It is often windy in {}.", "Strong winds often blow in {}."),
    "foggy": ("{} is often foggy.", "Thick fog often covers {}."),
    "sunny": ("It is usually sunny in {}.", "{} has warm, sunny weather."),
}


class _Encyclopedia:
    """Writes one paragraph per entity, saying every fact about it in varied words."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.countries = {c.name: c for c in world.countries}
        self.entries: list[tuple[Callable[[object, random.Random], str], object]] = (
            [(self.country, c) for c in world.countries]
            + [(self.town, t) for t in world.towns]
            + [(self.character, c) for c in world.characters]
        )

    def country(self, c: Country, rng: random.Random) -> str:
        intro = rng.choice((
            f"{c.name} is a country in the {c.region}.",
            f"The country of {c.name} lies in the {c.region}.",
            f"In the {c.region} there is a country called {c.name}.",
        ))
        capital = rng.choice((
            f"Its capital is {c.capital}.",
            f"The capital of {c.name} is {c.capital}.",
            f"{c.name}'s capital city is {c.capital}.",
        ))
        s = [intro, capital]
        others = c.towns[1:]
        if len(others) == 1:
            s.append(rng.choice((
                f"Another town in {c.name} is {others[0]}.",
                f"{others[0]} is also in {c.name}.",
            )))
        elif others:
            s.append(rng.choice((
                f"Other towns in {c.name} are {join_words(others)}.",
                f"{c.name} also has the towns of {join_words(others)}.",
            )))
        rest = [
            rng.choice((
                f"{c.name} exports {join_words(c.exports)}.",
                f"{c.name} is known for its {join_words(c.exports)}.",
                f"The main exports of {c.name} are {join_words(c.exports)}.",
            )),
            rng.choice(_CLIMATE_SENTENCES[c.climate]).format(c.name),
        ]
        rng.shuffle(rest)
        return _sentences(s + rest)

    def town(self, t: Town, rng: random.Random) -> str:
        if t.is_capital:
            intro = rng.choice((
                f"{t.name} is the capital of {t.country}.",
                f"{t.name} is the capital city of {t.country}.",
                f"The capital of {t.country} is {t.name}.",
            ))
        else:
            intro = rng.choice((
                f"{t.name} is a town in {t.country}.",
                f"The town of {t.name} is in {t.country}.",
                f"{t.name} is one of the towns of {t.country}.",
            ))
        places = join_words(with_article(p) for p in t.places)
        rest = [rng.choice((
            f"{t.name} has {places}.",
            f"In {t.name} there is {places}.",
            f"You can find {places} in {t.name}.",
        ))]
        residents = self.world.residents(t.name)
        if len(residents) == 1:
            rest.append(rng.choice((
                f"{residents[0]} lives in {t.name}.",
                f"{t.name} is home to {residents[0]}.",
            )))
        elif 1 < len(residents) <= 4:
            rest.append(rng.choice((
                f"{join_words(residents)} live in {t.name}.",
                f"{t.name} is home to {join_words(residents)}.",
            )))
        elif residents:
            some = join_words(sorted(rng.sample(residents, 3)))
            rest.append(f"Many animals live in {t.name}, such as {some}.")
        rest.append(rng.choice(_CLIMATE_SENTENCES[self.countries[t.country].climate]).format(t.name))
        rng.shuffle(rest)
        return _sentences([intro] + rest)

    def character(self, c: Character, rng: random.Random) -> str:
        p = PRONOUNS[c.pronoun]
        a_species = with_article(c.species)
        home = rng.choice((
            f"{p.subject} lives in {c.home}, a town in {c.country}.",
            f"{c.name}'s home is in {c.home}, in {c.country}.",
            f"{c.name} lives in the town of {c.home} in {c.country}.",
        ))
        intro_and_home = rng.choice((
            [f"{c.name} is {a_species}.", home],
            [f"{c.name} is {a_species} who lives in {c.home}, in {c.country}."],
            [f"{c.name} is {a_species} from {c.home} in {c.country}."],
            [f"{c.name} the {c.species} lives in {c.home}, a town in {c.country}."],
        ))
        likes = list(c.likes)
        rng.shuffle(likes)
        friends = join_words(c.friends)
        if len(c.friends) == 1:
            friend_sentence = rng.choice((
                f"{c.name}'s best friend is {friends}.",
                f"{c.name} is friends with {friends}.",
                f"{p.possessive} best friend is {friends}.",
            ))
        else:
            friend_sentence = rng.choice((
                f"{c.name} is friends with {friends}.",
                f"{p.possessive} friends are {friends}.",
                f"{c.name}'s friends are {friends}.",
            ))
        rest = [
            rng.choice((
                f"{c.name} likes {join_words(likes)}.",
                f"{p.subject} loves {join_words(likes)}.",
                f"{c.name}'s favourite things are {join_words(likes)}.",
            )),
            friend_sentence,
            rng.choice((
                f"{p.subject} has {with_article(str(c.item))}.",
                f"{c.name} owns {with_article(str(c.item))}.",
            )),
            rng.choice((f"{p.subject} is afraid of {c.fear}.", f"{c.name} is scared of {c.fear}.")),
        ]
        rng.shuffle(rest)
        return _sentences(intro_and_home + rest)


# --------------------------------------------------------------------------- the streams


# The stream functions check their arguments at once and return a generator, so a mistake
# shows up where it is made, not at the first next().


def stories(seed: int = 0, *, world: World | None = None) -> Iterator[str]:
    """An endless stream of short stories about `World.generate(seed)` (or `world`), one per item."""
    seed = _check_int("seed", seed, minimum=None)
    teller = _Storyteller(_world_for(seed, world))
    return _story_stream(teller, stream_rng(seed, "stories"))


def _story_stream(teller: _Storyteller, rng: random.Random) -> Iterator[str]:
    while True:
        yield teller.story(rng)


def facts(seed: int = 0, *, world: World | None = None) -> Iterator[str]:
    """An endless stream of fact paragraphs; each pass describes every seen entity once, shuffled."""
    seed = _check_int("seed", seed, minimum=None)
    encyclopedia = _Encyclopedia(_world_for(seed, world))
    return _fact_stream(encyclopedia, stream_rng(seed, "facts"))


def _fact_stream(encyclopedia: _Encyclopedia, rng: random.Random) -> Iterator[str]:
    while True:
        entries = list(encyclopedia.entries)
        rng.shuffle(entries)
        for write, entity in entries:
            yield write(entity, rng)


# Every kind of document, with its share of the interleaved corpus. Later chapters add kinds here;
# the default corpus only ever draws the kinds it names, so adding one changes nothing else.
DOCUMENT_KINDS: dict[str, tuple[Callable[..., Iterator[str]], float]] = {
    "stories": (stories, 3.0),
    "facts": (facts, 1.0),
}
DEFAULT_KINDS = ("stories", "facts")


def documents(
    seed: int = 0, kinds: Iterable[str] | str = DEFAULT_KINDS, *, world: World | None = None
) -> Iterator[str]:
    """An endless interleaving of the chosen kinds, picked at random in proportion to their weights.

    Each kind keeps its own stream, so a kind's documents are the same whichever kinds surround it.
    """
    seed = _check_int("seed", seed, minimum=None)
    kinds = _check_kinds(kinds)
    world = _world_for(seed, world)
    streams = [DOCUMENT_KINDS[kind][0](seed, world=world) for kind in kinds]
    if len(streams) == 1:
        return streams[0]
    weights = [DOCUMENT_KINDS[kind][1] for kind in kinds]
    return _interleave(streams, weights, stream_rng(seed, "documents:" + "+".join(kinds)))


def _interleave(streams: list[Iterator[str]], weights: list[float], rng: random.Random) -> Iterator[str]:
    while True:
        yield next(rng.choices(streams, weights)[0])


SEPARATOR = "\n\n"  # between documents


def corpus_text(
    n_chars: int, seed: int = 0, kinds: Iterable[str] | str = DEFAULT_KINDS, *, world: World | None = None
) -> str:
    """Whole documents joined by a blank line until the text has at least `n_chars` characters.

    The text ends at a document boundary (never mid-document), so it may be a little longer than
    `n_chars`; it is empty for `n_chars` = 0.
    """
    _check_int("n_chars", n_chars, minimum=0)
    pieces: list[str] = []
    length = -len(SEPARATOR)  # the first document has no separator before it
    if n_chars > 0:
        for document in documents(seed, kinds, world=world):
            pieces.append(document)
            length += len(SEPARATOR) + len(document)
            if length >= n_chars:
                break
    return SEPARATOR.join(pieces)


def write_corpus(
    path: str | os.PathLike,
    n_bytes: int,
    seed: int = 0,
    kinds: Iterable[str] | str = DEFAULT_KINDS,
    progress: bool = True,
    *,
    world: World | None = None,
) -> Path:
    """Stream `corpus_text(n_bytes, seed, kinds)` to `path` as UTF-8, without holding it in memory.

    The file holds whole documents and at least `n_bytes` bytes (the text is ASCII, so bytes and
    characters agree, and the file equals `corpus_text` with the same arguments). It is written
    to a temporary file first and renamed, so an interrupted run never leaves a partial corpus.
    Missing parent folders are created. Returns the path.
    """
    _check_int("n_bytes", n_bytes, minimum=0)
    seed = _check_int("seed", seed, minimum=None)
    kinds = _check_kinds(kinds)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    separator = SEPARATOR.encode()
    written = 0
    with atomic_path(path) as temporary, open(temporary, "wb") as file, tqdm(
        total=n_bytes, unit="B", unit_scale=True, desc=f"writing {path.name}", disable=not progress
    ) as bar:
        if n_bytes > 0:
            for document in documents(seed, kinds, world=world):
                data = (separator if written else b"") + document.encode("utf-8")
                file.write(data)
                written += len(data)
                bar.update(len(data))
                if written >= n_bytes:
                    break
    return path


# --------------------------------------------------------------------------- argument checks


def _check_int(name: str, value: object, minimum: int | None) -> int:
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise TypeError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    value = operator.index(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_capacity(what: str, wanted: int, pool: dict[str, tuple[str, ...]]) -> None:
    available = sum(len(names) for names in pool.values())
    if wanted > available:
        raise ValueError(
            f"the name generator has {available} {what} names but {wanted} were asked for "
            f"(seen + unseen); ask for at most {available} {what}"
        )


def _check_kinds(kinds: Iterable[str] | str) -> tuple[str, ...]:
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    allowed = ", ".join(repr(k) for k in DOCUMENT_KINDS)
    if not kinds:
        raise ValueError(f"kinds is empty; choose one or more of {allowed}")
    for kind in kinds:
        if kind not in DOCUMENT_KINDS:
            raise ValueError(f"unknown document kind {kind!r}; the kinds are {allowed}")
    if len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds {kinds!r} names a kind twice; name each kind once")
    return kinds


def _world_for(seed: int, world: World | None) -> World:
    if world is None:
        return World.generate(seed)
    if not isinstance(world, World):
        raise TypeError(f"world must be a World (from World.generate), got {type(world).__name__}")
    return world
