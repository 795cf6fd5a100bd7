"""The seeded world: `World.generate(seed)` builds it, and a `World` answers questions about it.

A world holds invented countries (a region, a climate, a capital, other towns and exports), towns
with places, and animal characters with a species, a pronoun, a home town, symmetric
friendships, likes, an object and a fear. It also holds the *unseen* entities, built the same way
from their own streams but never mentioned in pretraining text, and it splits its facts into
"sft", "heldout" and "unseen" (see the package docstring).

Building draws each part from its own named stream (`streams`): the names of countries, towns
and characters, the countries' traits, the characters' traits and the friendships, first for the
seen part of the world and then for the unseen part.
"""

from __future__ import annotations

import operator
import random
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from llmcourse.checks import ArgumentError, check_int
from llmcourse.data.tinyworld.entities import Character, Country, Fact, Item, Town
from llmcourse.data.tinyworld.grammar import with_article
from llmcourse.data.tinyworld.names import (
    CHARACTER_NAMES,
    COUNTRY_NAMES,
    TOWN_NAMES,
    check_capacity,
    draw_names,
)
from llmcourse.data.tinyworld.streams import stable_fraction, stream_rng
from llmcourse.data.tinyworld.vocabulary import (
    ACTIVITIES,
    CLIMATES,
    COLOURS,
    EXPORTS,
    FEARS,
    FOODS,
    OBJECTS,
    PLACES,
    REGIONS,
    SPECIES,
)

__all__ = ["HELDOUT_FRACTION", "World", "world_for"]

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
        seed = check_int("seed", seed)
        check_int("n_countries", n_countries, 1)
        check_int("towns_per_country", towns_per_country, 1)
        check_int("n_characters", n_characters, 2, hint="each character needs a friend")
        check_int("n_unseen_countries", n_unseen_countries, 0)
        check_int("n_unseen_characters", n_unseen_characters, 0)
        if n_unseen_characters == 1:
            raise ArgumentError("n_unseen_characters=1 must be 0 or >= 2 (each character needs a friend)")
        check_capacity("countries", n_countries + n_unseen_countries, COUNTRY_NAMES)
        check_capacity("towns", (n_countries + n_unseen_countries) * towns_per_country, TOWN_NAMES)
        check_capacity("characters", n_characters + n_unseen_characters, CHARACTER_NAMES)

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
        heldout = stable_fraction(self.seed, "heldout", subject, relation) < HELDOUT_FRACTION
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


def _make_countries(
    seed: int, part: str, count: int, towns_per_country: int, taken: set[str]
) -> tuple[tuple[Country, ...], tuple[Town, ...]]:
    country_names = draw_names(seed, f"{part}:country-names", COUNTRY_NAMES, count, taken)
    town_names = draw_names(seed, f"{part}:town-names", TOWN_NAMES, count * towns_per_country, taken)
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
    names = draw_names(seed, f"{part}:character-names", CHARACTER_NAMES, count, taken)
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


def world_for(seed: int, world: World | None) -> World:
    """`world` if one is given (checked), else the world of `seed`: what every generator writes about."""
    if world is None:
        return World.generate(seed)
    if not isinstance(world, World):
        raise ArgumentError(f"world must be a World (from World.generate), got {type(world).__name__}")
    return world
