"""llmcourse.tokenizer: round trips, identical ids to tiktoken, training equal to a naive reference."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import regex
import tiktoken
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llmcourse.data import corpus_text, python_source_text
from llmcourse.tokenizer import (
    GPT2_SPLIT_PATTERN,
    GPT4_SPLIT_PATTERN,
    SPECIAL_TOKENS,
    Tokenizer,
    TokenizerFileError,
    bpe_encode,
    count_pairs,
    merge_pair,
)

# Text a tokenizer must survive: every Unicode category (emoji, combining marks, CJK, controls,
# lone surrogates excluded since they cannot be UTF-8 encoded), biased towards whitespace runs.
unicode_text = st.lists(
    st.one_of(
        st.characters(blacklist_categories=("Cs",)),
        st.sampled_from([" ", "  ", "\n", "\r\n", "\t", "'s", "'LL", "123", "😀", "e\u0301", "漢字", "\x00"]),
    ),
    max_size=200,
).map("".join)

# Characters whose class (letter, number, whitespace, other) a regex engine might judge differently.
ODD_CHARS = (
    " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2028\u2029\u202f\u3000\u200b\ufeff"
    "'0١٢³½ⅫéAz漢😀\u0301"
)
odd_text = st.text(alphabet=st.sampled_from(ODD_CHARS), max_size=100)


def _naive_train(texts: list[str], vocab_size: int, special_tokens=SPECIAL_TOKENS, pattern=GPT4_SPLIT_PATTERN):
    """Reference BPE training: recount every pair over every word after each merge."""
    cut = "|".join(regex.escape(s) for s in special_tokens)
    words: Counter[tuple[int, ...]] = Counter()
    for text in texts:
        for part in regex.split(cut, text) if cut else [text]:
            for piece in regex.findall(pattern, part):
                words[tuple(piece.encode("utf-8"))] += 1
    merges = []
    for rank in range(vocab_size - 256 - len(special_tokens)):
        counts: Counter[tuple[int, int]] = Counter()
        for word, freq in words.items():
            for pair in zip(word, word[1:]):
                counts[pair] += freq
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))  # highest count, then smallest pair
        merges.append(best)
        new_words: Counter[tuple[int, ...]] = Counter()
        for word, freq in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(256 + rank)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += freq
        words = new_words
    return merges


def _tiktoken(tok: Tokenizer) -> tiktoken.Encoding:
    ranks = tok.mergeable_ranks()
    assert len(ranks) == 256 + len(tok.merges), "two merges made the same bytes"
    return tiktoken.Encoding(
        name="llmcourse-test", pat_str=tok.pattern, mergeable_ranks=ranks, special_tokens=dict(tok.special_tokens)
    )


@pytest.fixture(scope="module")
def world_text() -> str:
    return corpus_text(120_000, seed=0)


@pytest.fixture(scope="module")
def tok(world_text) -> Tokenizer:
    return Tokenizer.train(world_text, vocab_size=600, progress=False)


@pytest.fixture(scope="module")
def code_tok() -> Tokenizer:
    return Tokenizer.train(python_source_text(120_000), vocab_size=600, progress=False)


@pytest.fixture(scope="module")
def mixed_tok(world_text) -> Tokenizer:
    """Trained on prose, code and random Unicode, so merges exist for exotic bytes and whitespace."""
    rng = random.Random(0)
    odd = ODD_CHARS
    noise = "".join(rng.choice(odd) if rng.random() < 0.7 else chr(rng.randrange(0x20, 0x30000)) for _ in range(30_000))
    noise = noise.encode("utf-8", "replace").decode("utf-8")
    return Tokenizer.train([world_text[:30_000], python_source_text(30_000), noise], vocab_size=1500, progress=False)


# ---------------------------------------------------------------- training


# Small random corpora can run out of pairs before vocab_size: both implementations stop there.
tiny_corpus = pytest.mark.filterwarnings("ignore:the training text ran out of pairs")


@tiny_corpus
@pytest.mark.parametrize("seed", range(6))
def test_training_equals_naive_reference_merge_for_merge(seed):
    rng = random.Random(seed)
    alphabet = rng.choice(["ab ", "abc \n", "aab  xyz.,'s\n", "é😀 漢a1 "])
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300))) for _ in range(rng.randint(1, 4))]
    if seed % 2:
        texts[0] += "<|endoftext|>" + texts[0]  # specials are cut out of training text
    pattern = GPT2_SPLIT_PATTERN if seed == 3 else GPT4_SPLIT_PATTERN
    vocab_size = 256 + len(SPECIAL_TOKENS) + rng.randint(1, 60)
    fast = Tokenizer.train(texts, vocab_size, pattern=pattern, progress=False)
    assert fast.merges == _naive_train(texts, vocab_size, pattern=pattern)


@tiny_corpus
@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.one_of(odd_text, st.text(alphabet="ab c\n'1", max_size=80)), min_size=1, max_size=4),
       extra=st.integers(0, 40))
def test_training_equals_naive_reference_on_hypothesis_corpora(texts, extra):
    vocab_size = 256 + len(SPECIAL_TOKENS) + extra
    assert Tokenizer.train(texts, vocab_size, progress=False).merges == _naive_train(texts, vocab_size)


def test_training_equals_naive_reference_on_tinyworld():
    text = corpus_text(5_000, seed=1)
    assert Tokenizer.train(text, 400, progress=False).merges == _naive_train([text], 400)


def test_training_ties_go_to_the_smallest_pair():
    # "ab" and "cd" occur equally often: (97, 98) < (99, 100), so "ab" is merged first.
    tok = Tokenizer.train("cd\nab\ncd\nab", 256 + 1, special_tokens=(), progress=False)
    assert tok.merges == [(97, 98)]


def test_training_is_deterministic_and_accepts_iterables(world_text):
    a = Tokenizer.train(world_text[:20_000], 400, progress=False)
    b = Tokenizer.train(iter([world_text[:10_000], world_text[10_000:20_000]]), 400, progress=False)
    c = Tokenizer.train(world_text[:20_000], 400, progress=False)
    assert a == c
    assert len(a) == len(b) == 400


def test_training_stops_when_nothing_is_left_to_merge():
    with pytest.warns(UserWarning, match="ran out of pairs to merge after 2 of 743 merges.*259 ids"):
        tok = Tokenizer.train("aaaa", 1000, special_tokens=("<|endoftext|>",), progress=False)
    assert tok.merges == [(97, 97), (256, 256)]
    assert tok.special_tokens == {"<|endoftext|>": 258}


def test_vocab_size_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match=r"vocab_size=260 must be an integer >= 261 \(256 bytes \+ 5 special"):
        Tokenizer.train("hello", 260)
    assert len(Tokenizer.train("hello", 261, progress=False)) == 261


# ---------------------------------------------------------------- exactness of encode / decode


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=unicode_text)
def test_round_trip_arbitrary_unicode(tok, text):
    assert tok.decode(tok.encode_ordinary(text)) == text


def test_round_trip_long_strings(tok, world_text):
    rng = random.Random(0)
    text = "".join(chr(rng.randrange(0x10FFFF)) for _ in range(5000))
    text = text.encode("utf-8", "replace").decode("utf-8")  # lone surrogates become "?"
    long = text + " " * 1000 + "\n\n\t" * 300 + world_text[:30_000]
    assert tok.decode(tok.encode_ordinary(long)) == long


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(unicode_text, odd_text))
def test_same_ids_as_tiktoken_on_arbitrary_text(tok, mixed_tok, text):
    for t in (tok, mixed_tok):
        assert t.encode_ordinary(text) == _tiktoken(t).encode_ordinary(text)
        assert t.decode(t.encode_ordinary(text)) == text


def test_same_ids_as_tiktoken_on_tinyworld_and_python(tok, code_tok, mixed_tok, world_text):
    prose = corpus_text(60_000, seed=7)  # a different sample than the training text
    code = python_source_text(200_000)[-60_000:]
    for t in (tok, code_tok, mixed_tok):
        enc = _tiktoken(t)
        for text in (prose, code, world_text[:20_000]):
            assert t.encode_ordinary(text) == enc.encode_ordinary(text)
    # Code needs fewer tokens with a tokenizer trained on code.
    assert len(code_tok.encode(code)) < len(tok.encode(code))


def test_same_ids_as_tiktoken_with_gpt2_pattern(world_text):
    t = Tokenizer.train(world_text[:40_000], 500, pattern=GPT2_SPLIT_PATTERN, progress=False)
    text = corpus_text(20_000, seed=3) + python_source_text(20_000)
    assert t.encode_ordinary(text) == _tiktoken(t).encode_ordinary(text)


def test_same_ids_as_tiktoken_with_special_tokens(tok):
    text = "<|user|>Hi there<|end|><|assistant|>Hello!<|end|><|endoftext|>"
    assert tok.encode(text, allowed_special="all") == _tiktoken(tok).encode(text, allowed_special="all")


ONCE = "Once upon a time, a fox named Tilly lived by the river. She was 3 years old!\n\n  The end."


def test_a_pattern_that_skips_text_still_encodes_all_of_it(tok, tmp_path):
    """A damaged file whose split pattern is `x` matches almost nothing: the text between its
    matches is encoded too (as pre-tokens of their own), never dropped."""
    path = tmp_path / "tok.json"
    tok.save(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**data, "pattern": "x"}), encoding="utf-8")
    damaged = Tokenizer.load(path)
    ids = damaged.encode(ONCE)
    assert damaged.decode(ids) == ONCE and len(ids) > 0
    assert damaged.decode(damaged.encode(ONCE + "<|endoftext|>", allowed_special="all")) == ONCE + "<|endoftext|>"


@tiny_corpus
@pytest.mark.parametrize("pattern", ["x", "", "(o)n", r"\s", r"(?=e)", "[^a-z]+"])
def test_any_pattern_round_trips(pattern):
    tok = Tokenizer.train(ONCE * 3, 300, pattern=pattern, special_tokens=(), progress=False)
    if pattern:  # training saw the unmatched text too ("" splits between every two characters)
        assert len(tok.merges) > 0
    for text in (ONCE, "", "x", "xx oo xx", "漢字 😀 e\u0301"):
        assert tok.decode(tok.encode(text)) == text


def test_shipped_patterns_cover_any_text_so_their_pretokens_are_the_matches():
    """The gaps rule never fires for the shipped patterns: ids stay tiktoken's (tested above)."""
    text = ONCE + ODD_CHARS + "x" * 5 + "'s 'LL 12345 \r\n\t "
    for pattern in (GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN):
        assert "".join(regex.findall(pattern, text)) == text


# ---------------------------------------------------------------- known cases


def test_any_byte_string_is_encodable():
    tok = Tokenizer([], special_tokens=())
    data = bytes(range(256))
    text = data.decode("latin-1")
    assert tok.decode_bytes(tok.encode(text)) == text.encode("utf-8")
    assert tok.decode_bytes(list(data)) == data  # each byte is its own token
    assert len(tok) == 256


def test_empty_input(tok):
    assert tok.encode("") == []
    assert tok.encode_ordinary("") == []
    assert tok.decode([]) == ""
    assert tok.encode_batch([]) == []


def test_decode_replaces_invalid_utf8(tok):
    ids = tok.encode("😀")
    cut = list(tok.decode_bytes(ids)[:2])  # two of the emoji's four bytes
    assert tok.decode(cut) == "\ufffd"
    with pytest.raises(ValueError, match="token id 99999 is out of range"):
        tok.decode([99999])


def test_special_tokens(tok):
    eot = tok.special_tokens["<|endoftext|>"]
    assert list(tok.special_tokens) == list(SPECIAL_TOKENS)
    assert sorted(tok.special_tokens.values()) == list(range(256 + len(tok.merges), len(tok)))
    text = "The end.<|endoftext|>A new start."
    with pytest.raises(ValueError, match=r"special token '<\|endoftext\|>' at position 8"):
        tok.encode(text)
    ids = tok.encode(text, allowed_special={"<|endoftext|>"})
    assert ids.count(eot) == 1 and tok.decode(ids) == text
    assert tok.encode(text, allowed_special="all") == ids
    # Encoded as ordinary text on request: never the special id.
    plain = tok.encode_ordinary(text)
    assert eot not in plain and tok.decode(plain) == text
    # Allowing one special does not allow another.
    with pytest.raises(ValueError, match="<\\|user\\|>"):
        tok.encode("<|user|>hi<|endoftext|>", allowed_special={"<|endoftext|>"})
    with pytest.raises(ValueError, match="unknown special tokens"):
        tok.encode("hi", allowed_special={"<|nope|>"})
    assert tok.vocab[eot] == "<|endoftext|>"


def test_encode_batch_and_cache(tok):
    texts = ["the cat sat", "", "the cat sat on the mat", "<|endoftext|>"]
    assert tok.encode_batch(texts, allowed_special="all") == [tok.encode(t, allowed_special="all") for t in texts]
    assert " cat" in tok._cache  # repeated pre-tokens are looked up, not re-merged
    tok._cache[" cat"] = tuple(tok._cache[" cat"])
    assert tok.encode("the cat") == _tiktoken(tok).encode("the cat")


def test_vocab_is_readable(tok):
    vocab = tok.vocab
    assert len(vocab) == len(tok)
    assert vocab[ord("a")] == "a"
    assert vocab[0] == "\\x00" and vocab[ord("\n")] == "\\n"
    assert vocab[0xFF] == "\\xff"  # a lone byte that is not UTF-8 is escaped
    assert all(isinstance(s, str) and s for s in vocab.values())
    merged = [vocab[i] for i in range(256, 256 + len(tok.merges))]
    assert any(len(s) > 3 and s.strip().isalpha() for s in merged)


def test_bad_merges_are_rejected():
    with pytest.raises(ValueError, match="does not exist yet"):
        Tokenizer([(97, 300)])
    with pytest.raises(ValueError, match="repeats merge 0"):
        Tokenizer([(97, 98), (97, 98)])
    with pytest.raises(ValueError, match="listed twice"):
        Tokenizer([], special_tokens=("<|a|>", "<|a|>"))


# ---------------------------------------------------------------- files


def test_save_load_round_trip(tok, tmp_path):
    path = tmp_path / "tok.json"
    tok.save(path)
    loaded = Tokenizer.load(path)
    assert loaded == tok
    assert loaded.vocab == tok.vocab and loaded.special_tokens == tok.special_tokens
    text = corpus_text(5_000, seed=5) + "<|endoftext|>"
    assert loaded.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")
    data = json.loads(path.read_text(encoding="utf-8"))  # readable: plain JSON with the token shown
    assert data["format"] == "llmcourse-bpe" and data["version"] == 1
    assert data["merges"][0][2] == tok.vocab[256]
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]  # no temp file left behind
    tok.save(path)  # overwriting is atomic too
    assert Tokenizer.load(path) == tok
    bare = Tokenizer([], pattern=GPT2_SPLIT_PATTERN, special_tokens=())
    bare.save(path)
    assert Tokenizer.load(path) == bare and Tokenizer.load(path).pattern == GPT2_SPLIT_PATTERN


def test_load_bad_files(tok, tmp_path):
    good = tmp_path / "good.json"
    tok.save(good)
    text = good.read_text(encoding="utf-8")
    data = json.loads(text)

    def write(name, content):
        p = tmp_path / name
        p.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
        return p

    with pytest.raises(TokenizerFileError, match="corrupt or truncated"):
        Tokenizer.load(write("trunc.json", text[: len(text) // 2]))
    with pytest.raises(TokenizerFileError, match="corrupt or truncated"):
        Tokenizer.load(write("empty.json", ""))
    with pytest.raises(TokenizerFileError, match="version 99 is not supported"):
        Tokenizer.load(write("v99.json", {**data, "version": 99}))
    with pytest.raises(TokenizerFileError, match="wrong 'format'"):
        Tokenizer.load(write("fmt.json", {**data, "format": "other"}))
    with pytest.raises(TokenizerFileError, match="wrong 'format'"):
        Tokenizer.load(write("list.json", [1, 2]))
    with pytest.raises(TokenizerFileError, match="merges"):
        Tokenizer.load(write("nomerges.json", {k: v for k, v in data.items() if k != "merges"}))
    with pytest.raises(TokenizerFileError, match="does not exist yet"):
        Tokenizer.load(write("badid.json", {**data, "merges": [[97, 9999, "?"]]}))
    with pytest.raises(TokenizerFileError, match="not \\[id, id, token\\]"):
        Tokenizer.load(write("badmerge.json", {**data, "merges": [["a", "b"]]}))
    with pytest.raises(TokenizerFileError, match="invalid tokenizer file"):
        Tokenizer.load(write("badpat.json", {**data, "pattern": "(unclosed"}))
    with pytest.raises(FileNotFoundError):
        Tokenizer.load(tmp_path / "missing.json")


# ----------------------------------------------------------------------------- the BPE building blocks


def test_count_pairs_counts_overlapping_pairs():
    assert count_pairs([1, 1, 1, 2]) == {(1, 1): 2, (1, 2): 1}
    assert count_pairs([7]) == {} and count_pairs([]) == {}


def test_merge_pair_is_left_to_right_without_overlap():
    assert merge_pair([1, 1, 1, 2, 1, 1], (1, 1), 9) == [9, 1, 2, 9]
    assert merge_pair([1, 2, 3], (3, 4), 9) == [1, 2, 3]
    assert merge_pair([], (1, 2), 9) == []


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=30), st.integers(0, 3), st.integers(0, 3))
def test_merge_pair_keeps_the_bytes(ids, a, b):
    """Expanding the new id back into its pair gives the original sequence."""
    merged = merge_pair(ids, (a, b), 99)
    expanded = [x for i in merged for x in ((a, b) if i == 99 else (i,))]
    assert expanded == ids and len(merged) == len(ids) - merged.count(99)


def test_bpe_encode_applies_merges_in_rank_order():
    # "abc" with merges bc -> 256 (learned first) and ab -> 257: bc wins although ab comes first.
    ranks = {(98, 99): 256, (97, 98): 257}
    assert bpe_encode(b"abc", ranks) == [97, 256]
    assert bpe_encode(b"abab", {(97, 98): 256, (256, 256): 257}) == [257]
    assert bpe_encode(b"", ranks) == []
