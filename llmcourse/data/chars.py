"""A character-level vocabulary: every distinct character of a text gets an integer id.

The simplest tokenizer there is, and the one chapter 01 uses: ids are positions in the sorted
list of characters, so `encode` and `decode` are exact inverses for any text over the vocabulary.

    >>> vocab = CharVocab.from_text("hello world")
    >>> vocab.chars
    [' ', 'd', 'e', 'h', 'l', 'o', 'r', 'w']
    >>> vocab.encode("hello").tolist()
    [3, 2, 4, 4, 5]
    >>> vocab.decode([3, 2, 4, 4, 5])
    'hello'
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

import numpy as np
import torch

__all__ = ["CharVocab"]

_PREVIEW_CHARS = 24  # how many characters __repr__ shows


class CharVocab:
    """A fixed list of characters; a character's id is its index in the list.

    Build one with `CharVocab.from_text(text)` (sorted unique characters of `text`) or
    `CharVocab(chars)` for a list you choose. `size` (also `len(vocab)`) is V, the number of ids.
    """

    def __init__(self, chars: Iterable[str]) -> None:
        chars = list(chars)
        for position, char in enumerate(chars):
            if not isinstance(char, str) or len(char) != 1:
                raise ValueError(
                    f"a vocabulary entry must be a single character, got {char!r} at position "
                    f"{position}; build the vocabulary with CharVocab.from_text(text)"
                )
        seen: dict[str, int] = {}
        for position, char in enumerate(chars):
            if char in seen:
                raise ValueError(
                    f"character {char!r} appears twice in the vocabulary (positions {seen[char]} "
                    f"and {position}); each character needs exactly one id"
                )
            seen[char] = position
        if not chars:
            raise ValueError("a vocabulary needs at least one character, got none")
        self.itos: list[str] = chars
        self.stoi: dict[str, int] = seen
        # encode() maps Unicode code points to ids with one array lookup: table[code point] = id,
        # -1 for characters outside the vocabulary.
        codes = np.array([ord(c) for c in chars], dtype=np.int64)
        self._table = np.full(int(codes.max()) + 1, -1, dtype=np.int64)
        self._table[codes] = np.arange(len(chars), dtype=np.int64)

    @classmethod
    def from_text(cls, text: str) -> CharVocab:
        """The vocabulary of `text`: its distinct characters, sorted by code point."""
        if not isinstance(text, str):
            raise TypeError(f"from_text needs a str, got {type(text).__name__}")
        if not text:
            raise ValueError("cannot build a vocabulary from an empty text; pass the training text")
        return cls(sorted(set(text)))

    @property
    def chars(self) -> list[str]:
        """The characters, in id order (`chars[i]` has id i). A copy: the vocabulary is fixed."""
        return list(self.itos)

    @property
    def size(self) -> int:
        """V, the number of distinct ids."""
        return len(self.itos)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, char: object) -> bool:
        return char in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocab) and self.itos == other.itos

    def __hash__(self) -> int:
        return hash(tuple(self.itos))

    def __repr__(self) -> str:
        preview = "".join(self.itos[:_PREVIEW_CHARS])
        more = "..." if self.size > _PREVIEW_CHARS else ""
        return f"CharVocab(size={self.size}, chars={preview!r}{more})"

    def encode(self, text: str) -> torch.Tensor:
        """The ids of `text`, one per character: a `torch.long` tensor of shape (N,), N = len(text).

        Raises ValueError naming the first character that is not in the vocabulary.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode needs a str, got {type(text).__name__}; to decode ids use decode()")
        # UTF-32 stores every character as one 4-byte code point: a vectorised ord().
        codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.int64)
        known = codes < len(self._table)
        ids = np.full(codes.shape, -1, dtype=np.int64)
        ids[known] = self._table[codes[known]]
        unknown = np.flatnonzero(ids < 0)
        if unknown.size:
            position = int(unknown[0])
            char = text[position]
            raise ValueError(
                f"character {char!r} (U+{ord(char):04X}) at position {position} is not in the "
                f"vocabulary of {self.size} characters; build the vocabulary from a text that "
                f"contains it, e.g. CharVocab.from_text(all_of_your_text)"
            )
        return torch.from_numpy(ids)

    def decode(self, ids: Sequence[int] | torch.Tensor | np.ndarray) -> str:
        """The text for a sequence of ids: a list, tuple, 1-D integer tensor or array of shape (N,)."""
        values = self._ids_as_list(ids)
        for position, value in enumerate(values):
            if not 0 <= value < self.size:
                raise ValueError(
                    f"id {value} at position {position} is out of range for a vocabulary of "
                    f"{self.size} characters (valid ids are 0 to {self.size - 1})"
                )
        return "".join([self.itos[value] for value in values])

    @staticmethod
    def _ids_as_list(ids: Sequence[int] | torch.Tensor | np.ndarray) -> list[int]:
        """Check `ids` is a 1-D sequence of integers and return it as a list of Python ints."""
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            shape = tuple(ids.shape)
            if len(shape) != 1:
                raise ValueError(
                    f"decode takes one sequence of ids of shape (N,), got shape {shape}; "
                    f"decode each row separately, e.g. [vocab.decode(row) for row in ids]"
                )
            is_integer = (
                not ids.is_floating_point() and not ids.is_complex() and ids.dtype != torch.bool
                if isinstance(ids, torch.Tensor)
                else np.issubdtype(ids.dtype, np.integer)
            )
            if not is_integer:
                raise TypeError(f"decode needs integer ids, got a {type(ids).__name__} of dtype {ids.dtype}")
            return [int(v) for v in ids.tolist()]
        if isinstance(ids, str) or not isinstance(ids, Sequence):
            raise TypeError(
                f"decode needs a list, tuple or 1-D tensor of ids, got {type(ids).__name__}"
            )
        for position, value in enumerate(ids):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(
                    f"decode needs integer ids, got {value!r} ({type(value).__name__}) at position {position}"
                )
        return [int(v) for v in ids]
