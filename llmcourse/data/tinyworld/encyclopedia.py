"""The encyclopedia: one paragraph per country, town or character, saying every fact about it.

`facts(seed)` is an endless stream of these paragraphs. Each pass over the seen entities is a
fresh shuffle, so every entity is described once per pass (about 140 paragraphs with the default
sizes), each time in words drawn anew: "Its capital is Brinley." or "The capital of Velora is
Brinley.".
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from llmcourse.checks import check_int
from llmcourse.data.tinyworld.entities import Character, Country, Town
from llmcourse.data.tinyworld.grammar import PRONOUNS, join_sentences, join_words, with_article
from llmcourse.data.tinyworld.streams import stream_rng
from llmcourse.data.tinyworld.world import World, world_for

__all__ = ["facts"]


# `facts` checks its arguments at once and returns a generator, so a mistake shows up where it
# is made, not at the first next().


def facts(seed: int = 0, *, world: World | None = None) -> Iterator[str]:
    """An endless stream of fact paragraphs; each pass describes every seen entity once, shuffled."""
    seed = check_int("seed", seed)
    encyclopedia = _Encyclopedia(world_for(seed, world))
    return _fact_stream(encyclopedia, stream_rng(seed, "facts"))


def _fact_stream(encyclopedia: _Encyclopedia, rng: random.Random) -> Iterator[str]:
    while True:
        entries = list(encyclopedia.entries)
        rng.shuffle(entries)
        for write, entity in entries:
            yield write(entity, rng)


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
        return join_sentences(s + rest)

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
        return join_sentences([intro] + rest)

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
        return join_sentences(intro_and_home + rest)
