"""The corpus: the document kinds interleaved into one stream, as text or as a file.

`documents(seed, kinds)` mixes the streams of the chosen kinds (each keeps its own stream, so a
kind's documents are the same whichever kinds surround it); `corpus_text` joins whole documents
with a blank line up to a size, and `write_corpus` streams the same text to a file of any size.
A new kind of document is one entry in `DOCUMENT_KINDS`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tqdm.auto import tqdm

from llmcourse.checks import ArgumentError, check_choice, check_int
from llmcourse.data.tinyworld.encyclopedia import facts
from llmcourse.data.tinyworld.storyteller import stories
from llmcourse.data.tinyworld.streams import stream_rng
from llmcourse.data.tinyworld.world import World, world_for
from llmcourse.files import atomic_path

__all__ = ["DEFAULT_KINDS", "DOCUMENT_KINDS", "SEPARATOR", "corpus_text", "documents", "write_corpus"]

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
    seed = check_int("seed", seed)
    kinds = _check_kinds(kinds)
    world = world_for(seed, world)
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
    check_int("n_chars", n_chars, 0)
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
    check_int("n_bytes", n_bytes, 0)
    seed = check_int("seed", seed)
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


def _check_kinds(kinds: Iterable[str] | str) -> tuple[str, ...]:
    """`kinds` as a tuple of known, distinct kinds (a single kind may be given as a string)."""
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds:
        allowed = ", ".join(repr(kind) for kind in DOCUMENT_KINDS)
        raise ArgumentError(f"kinds=() is empty; choose one or more of {allowed}")
    for kind in kinds:
        check_choice("kind", kind, DOCUMENT_KINDS, hint="a document kind of TinyWorld")
    if len(set(kinds)) != len(kinds):
        raise ArgumentError(f"kinds={kinds!r} names a kind twice; name each kind once")
    return kinds
