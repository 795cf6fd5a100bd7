"""Byte-level BPE tokenizer (the GPT-2 / GPT-4 family), trained from scratch.

A token id names a byte string:

* ids `0..255` are the 256 single bytes, so *any* text (any byte string) can be encoded and there
  is never an "unknown" token;
* ids `256..256+M-1` are the M learned merges, in the order training learned them: merge `i`
  joins the pair `merges[i] = (a, b)` into the new id `256 + i`;
* the special tokens (`<|endoftext|>`, chat roles) come last. They are never produced from
  ordinary text: see `Tokenizer.encode`.

Text is first split into *pre-tokens* by a regular expression (the GPT-4 pattern by default), so a
merge never crosses a word/number/punctuation/whitespace boundary; BPE then runs inside each piece.
Text that the pattern does not match is a pre-token of its own, so no pattern can make encoding
drop text.

Training counts each distinct pre-token once (with its frequency), and after each merge updates
the pair counts of only the pre-tokens that contain the merged pair (a heap with lazy deletion
finds the next most frequent pair). Ties are broken deterministically: **highest count first,
then the smallest pair of ids** `(a, b)` in lexicographic order.

Note: the GPT-4 pattern needs `\\p{L}`/`\\p{N}` classes and possessive quantifiers, which the
standard `re` module lacks; we use the third-party `regex` module (tiktoken depends on it too).
"""

from __future__ import annotations

import heapq
import json
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import regex
from tqdm.auto import tqdm

from llmcourse.checks import ArgumentError, check_int
from llmcourse.files import atomic_write, read_versioned_json

__all__ = [
    "GPT2_SPLIT_PATTERN",
    "GPT4_SPLIT_PATTERN",
    "SPECIAL_TOKENS",
    "ENDOFTEXT",
    "Tokenizer",
    "TokenizerFileError",
    "bpe_encode",
    "count_pairs",
    "merge_pair",
]

# GPT-2's pre-tokenization (contractions, letters, numbers, other symbols, whitespace), each
# optionally preceded by one space: the "leading-space" convention (" cat" is one token).
GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

# GPT-4's (cl100k): case-insensitive contractions, numbers in groups of at most 3 digits, newlines
# kept apart from other whitespace. Same semantics as the pattern tiktoken ships for cl100k_base.
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)

ENDOFTEXT = "<|endoftext|>"
# The special tokens later chapters use: a document separator for pretraining and the chat roles
# for fine-tuning (a chat template wraps each turn as `<|user|>...<|end|>`).
SPECIAL_TOKENS: tuple[str, ...] = (ENDOFTEXT, "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

FILE_FORMAT = "llmcourse-bpe"
FILE_VERSION = 1
_CACHE_LIMIT = 1 << 18  # pre-tokens kept in the encode cache before it is cleared


class TokenizerFileError(ValueError):
    """A tokenizer file that is corrupt, truncated, of another format or of another version."""


def count_pairs(ids: Sequence[int]) -> dict[tuple[int, int], int]:
    """How often each adjacent pair occurs in `ids` (overlapping: `aaa` has `(a, a)` twice).

    The step the simplest BPE trainer repeats after every merge; `_learn_merges` keeps these
    counts up to date instead of recounting.
    """
    return dict(Counter(_pairs(ids)))


def merge_pair(ids: Sequence[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every occurrence of `pair` in `ids`, left to right without overlap, by `new_id`."""
    a, b = pair
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if i + 1 < n and ids[i] == a and ids[i + 1] == b:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _pairs(ids: Sequence[int]) -> list[tuple[int, int]]:
    """The adjacent pairs of `ids` (overlapping: `aaa` has the pair `(a, a)` twice)."""
    return list(zip(ids, ids[1:]))


def bpe_encode(piece: bytes, ranks: dict[tuple[int, int], int]) -> list[int]:
    """Encode one pre-token: merge the adjacent pair learned earliest until no pair is a merge.

    `ranks` maps a pair to the id of the token it merges into; ids grow with training order, so
    the smallest id is the merge learned first, which is the order training applied them in.
    """
    ids = list(piece)
    while len(ids) >= 2:
        best = min(_pairs(ids), key=lambda p: ranks.get(p, 1 << 62))
        if best not in ranks:
            break
        ids = merge_pair(ids, best, ranks[best])
    return ids


def _pretokens(compiled: regex.Pattern, text: str) -> list[str]:
    """`text` cut into pre-tokens by the split pattern, keeping every character.

    The shipped patterns match all of any text. Another pattern may skip some (a pattern `x`
    matches only the x's): each stretch of text between two matches becomes a pre-token too, so
    `decode(encode(text)) == text` whatever the pattern.
    """
    if not compiled.groups:  # findall returns whole matches only for a pattern without groups
        pieces = compiled.findall(text)
        if sum(map(len, pieces)) == len(text):  # matches never overlap, so they cover the text
            return pieces
    pieces, end = [], 0
    for match in compiled.finditer(text):
        pieces += [piece for piece in (text[end:match.start()], match.group()) if piece]
        end = match.end()
    return pieces + [text[end:]] if end < len(text) else pieces


def _readable(token: bytes) -> str:
    """A token as a readable string: valid UTF-8 shown as text, other bytes and controls escaped."""
    text = token.decode("utf-8", errors="backslashreplace")
    return "".join(c if c.isprintable() or c == " " or c == "\\" else repr(c)[1:-1] for c in text)


class Tokenizer:
    """A byte-level BPE tokenizer: `merges` (in rank order), a split `pattern` and special tokens.

    Build one with `train` or `load`. `len(tok)` (`tok.vocab_size`) is
    `256 + len(merges) + len(special_tokens)`.
    """

    def __init__(
        self,
        merges: Sequence[tuple[int, int]],
        pattern: str = GPT4_SPLIT_PATTERN,
        special_tokens: Sequence[str] = SPECIAL_TOKENS,
    ) -> None:
        self.merges: list[tuple[int, int]] = [(int(a), int(b)) for a, b in merges]
        self.pattern = pattern
        self.special_tokens: dict[str, int] = {}
        self._token_bytes: list[bytes] = [bytes([i]) for i in range(256)]
        self._ranks: dict[tuple[int, int], int] = {}  # pair -> id of the merged token (= its rank)
        for rank, (a, b) in enumerate(self.merges):
            new_id = 256 + rank
            if not (0 <= a < new_id and 0 <= b < new_id):
                raise ArgumentError(f"merge {rank} = {(a, b)} uses an id that does not exist yet (< {new_id})")
            if (a, b) in self._ranks:
                raise ArgumentError(f"merge {rank} = {(a, b)} repeats merge {self._ranks[(a, b)] - 256}")
            self._ranks[(a, b)] = new_id
            self._token_bytes.append(self._token_bytes[a] + self._token_bytes[b])
        for special in special_tokens:
            if not isinstance(special, str) or not special:
                raise ArgumentError(f"special token {special!r} must be a non-empty string")
            if special in self.special_tokens:
                raise ArgumentError(f"special token {special!r} is listed twice")
            self.special_tokens[special] = len(self._token_bytes) + len(self.special_tokens)
        self.special_ids = frozenset(self.special_tokens.values())
        self._compiled = regex.compile(pattern)
        self._cache: dict[str, tuple[int, ...]] = {}
        # Longest first, so a special that is a prefix of another never wins by accident.
        specials = sorted(self.special_tokens, key=len, reverse=True)
        self._special_re = regex.compile("|".join(regex.escape(s) for s in specials)) if specials else None

    # ------------------------------------------------------------------ training

    @classmethod
    def train(
        cls,
        text: str | Iterable[str],
        vocab_size: int,
        special_tokens: Sequence[str] = SPECIAL_TOKENS,
        pattern: str = GPT4_SPLIT_PATTERN,
        progress: bool | None = None,
    ) -> Tokenizer:
        """Learn `vocab_size - 256 - len(special_tokens)` merges from `text` (a string or texts).

        Special-token strings inside the training text are cut out (never learned as ordinary text).
        Ties between equally frequent pairs go to the smallest pair of ids. Training stops early,
        with fewer merges and a warning, if no pre-token has two tokens left to merge. `progress`: show a tqdm
        bar (`None`: only for inputs of a megabyte or more).
        """
        special_tokens = tuple(special_tokens)
        check_int("vocab_size", vocab_size, 256 + len(special_tokens),
                  hint=f"256 bytes + {len(special_tokens)} special tokens, plus the merges to learn")
        n_merges = vocab_size - 256 - len(special_tokens)
        texts = [text] if isinstance(text, str) else text
        words, freqs = cls._count_pretokens(texts, regex.compile(pattern), special_tokens)
        if progress is None:
            progress = sum(len(w) * f for w, f in zip(words, freqs)) >= 1_000_000
        merges = _learn_merges(words, freqs, n_merges, progress)
        if len(merges) < n_merges:  # said aloud: the vocabulary is smaller than asked for
            warnings.warn(
                f"the training text ran out of pairs to merge after {len(merges)} of {n_merges} merges: "
                f"the vocabulary has {256 + len(merges) + len(special_tokens)} ids, not vocab_size={vocab_size} "
                f"(train on more or more varied text for a larger vocabulary)",
                stacklevel=2,
            )
        return cls(merges, pattern, special_tokens)

    @staticmethod
    def _count_pretokens(
        texts: Iterable[str], compiled: regex.Pattern, special_tokens: Sequence[str]
    ) -> tuple[list[list[int]], list[int]]:
        """Distinct pre-tokens as lists of byte ids, with how often each occurs."""
        counts: Counter[str] = Counter()
        specials = sorted(special_tokens, key=len, reverse=True)
        cut = regex.compile("|".join(regex.escape(s) for s in specials)) if specials else None
        for text in texts:
            for part in cut.split(text) if cut else [text]:
                counts.update(_pretokens(compiled, part))
        words = [list(piece.encode("utf-8")) for piece in counts]
        return words, list(counts.values())

    # ------------------------------------------------------------------ encoding

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode `text` treating every character as ordinary text (special strings included)."""
        out: list[int] = []
        cache = self._cache
        for piece in _pretokens(self._compiled, text):
            ids = cache.get(piece)
            if ids is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                ids = cache[piece] = tuple(bpe_encode(piece.encode("utf-8"), self._ranks))
            out.extend(ids)
        return out

    def encode(self, text: str, allowed_special: str | Iterable[str] = ()) -> list[int]:
        """Encode `text` to token ids.

        Special-token strings (e.g. `<|endoftext|>`) in `text` become their special id only if
        listed in `allowed_special` (or `allowed_special="all"`). Any other special string
        found raises `ValueError`: user text must not forge a special token, and silently
        encoding it as plain text would hide the mistake. Call `encode_ordinary` to encode
        such strings as ordinary text on purpose.
        """
        allowed = set(self.special_tokens) if allowed_special == "all" else set(allowed_special)
        unknown = allowed - set(self.special_tokens)
        if unknown:
            raise ArgumentError(
                f"allowed_special names unknown special tokens {sorted(unknown)}; known: {list(self.special_tokens)}"
            )
        if self._special_re is None:
            return self.encode_ordinary(text)
        out: list[int] = []
        start = 0
        for match in self._special_re.finditer(text):
            special = match.group()
            if special not in allowed:
                raise ArgumentError(
                    f"text contains the special token {special!r} at position {match.start()}; pass "
                    f"allowed_special={{{special!r}}} to encode it as the special id, or use "
                    f"encode_ordinary() to encode it as plain text"
                )
            out.extend(self.encode_ordinary(text[start : match.start()]))
            out.append(self.special_tokens[special])
            start = match.end()
        out.extend(self.encode_ordinary(text[start:]))
        return out

    def encode_batch(self, texts: Iterable[str], allowed_special: str | Iterable[str] = ()) -> list[list[int]]:
        """`encode` each text (sharing the pre-token cache)."""
        allowed = allowed_special if isinstance(allowed_special, str) else tuple(allowed_special)
        return [self.encode(text, allowed_special=allowed) for text in texts]

    # ------------------------------------------------------------------ decoding

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes of one token (a special token's UTF-8 string)."""
        if 0 <= token_id < len(self._token_bytes):
            return self._token_bytes[token_id]
        for special, sid in self.special_tokens.items():
            if sid == token_id:
                return special.encode("utf-8")
        raise ArgumentError(f"token id {token_id} is out of range: this vocabulary has ids 0..{self.vocab_size - 1}")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes of a sequence of token ids."""
        table = self._token_bytes
        n = len(table)
        return b"".join(table[i] if 0 <= i < n else self.token_bytes(i) for i in map(int, ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; bytes that are not valid UTF-8 (a cut multi-byte character) become U+FFFD."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    # ------------------------------------------------------------------ inspection

    @property
    def vocab_size(self) -> int:
        """Number of ids: 256 bytes + merges + special tokens."""
        return len(self._token_bytes) + len(self.special_tokens)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def vocab(self) -> dict[int, str]:
        """Every id with its token as a readable string (non-UTF-8 bytes escaped as `\\xNN`)."""
        table = {i: _readable(b) for i, b in enumerate(self._token_bytes)}
        table.update({sid: s for s, sid in self.special_tokens.items()})
        return table

    def mergeable_ranks(self) -> dict[bytes, int]:
        """Token bytes -> id for bytes and merges (the form `tiktoken.Encoding` takes)."""
        return {b: i for i, b in enumerate(self._token_bytes)}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tokenizer):
            return NotImplemented
        return (self.merges, self.pattern, self.special_tokens) == (other.merges, other.pattern, other.special_tokens)

    def __repr__(self) -> str:
        return (
            f"Tokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
            f"special_tokens={list(self.special_tokens)})"
        )

    # ------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> None:
        """Write a readable, versioned JSON file atomically (a temp file renamed over `path`)."""
        path = Path(path)
        header = {
            "format": FILE_FORMAT,
            "version": FILE_VERSION,
            "pattern": self.pattern,
            "special_tokens": list(self.special_tokens),
        }
        # One merge per line, [a, b, "the token it makes"], so the file reads like a merge list.
        merges = [
            json.dumps([a, b, _readable(self._token_bytes[256 + r])], ensure_ascii=False)
            for r, (a, b) in enumerate(self.merges)
        ]
        text = json.dumps(header, indent=1, ensure_ascii=False)[:-2]
        body = "[\n" + ",\n".join("  " + m for m in merges) + "\n ]" if merges else "[]"
        text += ',\n "merges": ' + body + "\n}\n"
        atomic_write(path, lambda file: file.write(text.encode("utf-8")))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Read a file written by `save`; a bad file raises `TokenizerFileError`."""
        path = Path(path)
        data = read_versioned_json(path, FILE_FORMAT, FILE_VERSION, kind="tokenizer file", error=TokenizerFileError)
        try:
            pattern, specials, merges = data["pattern"], data["special_tokens"], data["merges"]
            if not isinstance(pattern, str) or not isinstance(specials, list) or not isinstance(merges, list):
                raise TypeError("'pattern' must be a string, 'special_tokens' and 'merges' lists")
            pairs = []
            for m in merges:
                if not (isinstance(m, list) and len(m) >= 2 and all(type(x) is int for x in m[:2])):
                    raise TypeError(f"merge {m!r} is not [id, id, token]")
                pairs.append((m[0], m[1]))
            return cls(pairs, pattern, specials)
        except (KeyError, TypeError, ValueError, regex.error) as e:
            raise TokenizerFileError(f"{path}: invalid tokenizer file: {type(e).__name__}: {e}") from e


def _learn_merges(words: list[list[int]], freqs: list[int], n_merges: int, progress: bool) -> list[tuple[int, int]]:
    """The BPE training loop with incremental pair counts.

    `words[w]` is a distinct pre-token (token ids), occurring `freqs[w]` times. We keep
    `counts[pair]` (occurrences over the corpus) and `where[pair]` (words that may contain it).
    A merge only touches the words in `where[pair]`: their old pairs are uncounted, the word is
    rewritten, its new pairs are counted. The heap holds `(-count, a, b)` entries; an entry whose
    count is stale (the pair lost occurrences) is pushed back with its current count when popped.
    Entries are never too small, because every increase pushes a fresh entry.
    """
    counts: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for w, (word, freq) in enumerate(zip(words, freqs)):
        for pair in _pairs(word):
            counts[pair] = counts.get(pair, 0) + freq
            where.setdefault(pair, set()).add(w)
    heap = [(-c, a, b) for (a, b), c in counts.items()]
    heapq.heapify(heap)

    merges: list[tuple[int, int]] = []
    bar = tqdm(total=n_merges, desc="BPE merges", disable=not progress)
    while len(merges) < n_merges and heap:
        neg, a, b = heapq.heappop(heap)
        pair = (a, b)
        current = counts.get(pair, 0)
        if current != -neg:  # stale entry: requeue with the true count (if the pair still exists)
            if current > 0:
                heapq.heappush(heap, (-current, a, b))
            continue
        new_id = 256 + len(merges)
        merges.append(pair)
        for w in where.pop(pair):
            word = words[w]
            new_word = merge_pair(word, pair, new_id)
            if len(new_word) == len(word):  # this word lost the pair in an earlier merge
                continue
            freq = freqs[w]
            for p in _pairs(word):
                counts[p] -= freq
                if counts[p] == 0:
                    del counts[p]
            for p in _pairs(new_word):
                counts[p] = counts.get(p, 0) + freq
                heapq.heappush(heap, (-counts[p], p[0], p[1]))
                where.setdefault(p, set()).add(w)
            words[w] = new_word
        counts.pop(pair, None)
        bar.update(1)
    bar.close()
    return merges
