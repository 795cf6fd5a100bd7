"""The storyteller: TinyStories-like short stories about the characters of a world.

`stories(seed)` is an endless stream of stories of 5-8 sentences, each about one character and
usually a friend, following one of nine plots (a rainy day, a lost kite, sharing food, a long
visit, a birthday, a fear overcome, practice, a trip to the capital, a day of play), with cause
and effect and a line of dialogue, and always true to the world: a character shares the food it
likes, visits the town its friend lives in, fears what it fears.

Each plot is a method that returns its sentences, or None when it cannot fit the hero (a lost
kite needs a light object; a long visit needs a friend in another town), and the teller then
draws again.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from llmcourse.checks import check_int
from llmcourse.data.tinyworld.entities import Character
from llmcourse.data.tinyworld.grammar import PRONOUNS, join_sentences, join_words, with_article
from llmcourse.data.tinyworld.streams import stream_rng
from llmcourse.data.tinyworld.vocabulary import (
    ACTIVITIES,
    ADJECTIVES,
    CLIMBING_SPECIES,
    COLOURS,
    FLYING_SPECIES,
    FOODS,
    INDOOR_ACTIVITIES,
    LIGHT_OBJECTS,
    OBJECTS,
    OUTDOOR_PLACES,
    SPECIES,
    WEATHER,
)
from llmcourse.data.tinyworld.world import World, world_for

__all__ = ["stories"]


# `stories` checks its arguments at once and returns a generator, so a mistake shows up where it
# is made, not at the first next().


def stories(seed: int = 0, *, world: World | None = None) -> Iterator[str]:
    """An endless stream of short stories about `World.generate(seed)` (or `world`), one per item."""
    seed = check_int("seed", seed)
    teller = _Storyteller(world_for(seed, world))
    return _story_stream(teller, stream_rng(seed, "stories"))


def _story_stream(teller: _Storyteller, rng: random.Random) -> Iterator[str]:
    while True:
        yield teller.story(rng)


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
                return join_sentences(sentences)

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
