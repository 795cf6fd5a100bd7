"""Small English helpers the stories and fact paragraphs share: articles, lists, pronouns."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["PRONOUNS", "Pronouns", "join_sentences", "join_words", "with_article"]


def with_article(phrase: str) -> str:
    """'a' or 'an' before `phrase`: "an owl", "a red kite", "an orange umbrella"."""
    return ("an " if phrase[0] in "aeiouAEIOU" else "a ") + phrase


def join_words(words: Iterable[str]) -> str:
    """"a", "a and b", "a, b and c"."""
    words = list(words)
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def join_sentences(parts: Iterable[str]) -> str:
    """Join sentences with single spaces, each starting with a capital letter."""
    return " ".join(s[0].upper() + s[1:] for s in parts)


@dataclass(frozen=True)
class Pronouns:
    """The four forms of "he" or "she" a sentence may need."""

    subject: str  # she
    object: str  # her
    possessive: str  # her
    reflexive: str  # herself


PRONOUNS = {"he": Pronouns("he", "him", "his", "himself"), "she": Pronouns("she", "her", "her", "herself")}
