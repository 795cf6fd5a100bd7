"""The words TinyWorld is made of: species, climates, exports, foods, activities, objects, places.

Everything a world can contain, and the few facts about those words that the stories need (an
owl can fly, a kite can blow away, painting can be done indoors, how rain ends). The invented
proper names are in `names`; which of these words a given world uses is decided in `world`.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ACTIVITIES",
    "ADJECTIVES",
    "CLIMATES",
    "CLIMBING_SPECIES",
    "COLOURS",
    "EXPORTS",
    "FEARS",
    "FLYING_SPECIES",
    "FOODS",
    "INDOOR_ACTIVITIES",
    "LIGHT_OBJECTS",
    "OBJECTS",
    "OUTDOOR_PLACES",
    "PLACES",
    "REGIONS",
    "SPECIES",
    "WEATHER",
    "Activity",
]

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
    """Something a character likes doing, in the three forms the stories need."""

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
