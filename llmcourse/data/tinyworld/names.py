"""Invented names: the syllables countries, towns and characters are named from, and the draw.

A name is a first syllable plus an ending ("Mi" + "na" = Mina, "Bran" + "ora" = Branora), minus
the pairs that spell an English word, so a name is never mistaken for ordinary text. `draw_names`
picks a world's names from its own random stream and spreads them over first syllables.
"""

from __future__ import annotations

from collections.abc import Iterable

from llmcourse.checks import ArgumentError
from llmcourse.data.tinyworld.streams import stream_rng

__all__ = ["CHARACTER_NAMES", "COUNTRY_NAMES", "NOT_NAMES", "TOWN_NAMES", "check_capacity", "draw_names"]

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
NOT_NAMES = frozenset(
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
        start: tuple(sorted({start + end for end in ends} - NOT_NAMES)) for start in sorted(set(starts))
    }


CHARACTER_NAMES = _name_pool(_CHARACTER_START, _CHARACTER_END)
COUNTRY_NAMES = _name_pool(_COUNTRY_START, _COUNTRY_END)
TOWN_NAMES = _name_pool(_TOWN_START, _TOWN_END)


def draw_names(
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
            raise ArgumentError(f"ran out of names after {len(chosen)} of {count}; ask for fewer")
        rng.shuffle(starts)
        for start in starts[: count - len(chosen)]:
            name = rng.choice(free[start])
            free[start].remove(name)
            chosen.append(name)
    taken.update(chosen)
    return sorted(chosen)


def check_capacity(what: str, wanted: int, pool: dict[str, tuple[str, ...]]) -> None:
    """Refuse a world that needs more `what` names than `pool` can make."""
    available = sum(len(names) for names in pool.values())
    if wanted > available:
        raise ArgumentError(
            f"the name generator has {available} {what} names but {wanted} were asked for "
            f"(seen + unseen); ask for at most {available} {what}"
        )
