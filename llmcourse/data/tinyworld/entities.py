"""The things a TinyWorld is made of: countries, towns, characters, their objects, and facts.

Plain frozen records, compared by value, so two worlds built from one seed are equal. A `Fact`
is one (subject, relation, values) triple with the `split` that says where it may be used.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Character", "Country", "Fact", "Item", "Town"]



@dataclass(frozen=True)
class Item:
    """A coloured object a character owns, e.g. Item("red", "kite")."""

    colour: str
    kind: str

    def __str__(self) -> str:
        return f"{self.colour} {self.kind}"


@dataclass(frozen=True)
class Country:
    """A country: where it lies, its weather, its towns (the capital first) and what it sells."""

    name: str
    region: str  # "north", "south", "east" or "west"
    climate: str  # a key of WEATHER
    capital: str
    towns: tuple[str, ...]  # the capital first
    exports: tuple[str, ...]


@dataclass(frozen=True)
class Town:
    """A town of a country, with its places (every town has a market)."""

    name: str
    country: str
    places: tuple[str, ...]  # "market" first
    is_capital: bool


@dataclass(frozen=True)
class Character:
    """An animal who lives in a town, with friends, likes, an object of its own and a fear."""

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

