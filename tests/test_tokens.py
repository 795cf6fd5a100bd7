"""Token files and batches: `llmcourse.data.tokens`."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from llmcourse.data import corpus_text
from llmcourse.data import tokens as tokens_module
from llmcourse.data.tokens import (
    TOKEN_FILE_VERSION,
    Batches,
    TokenFile,
    TokenFileError,
    get_batch,
    token_dtype,
    tokenize_to_file,
    tokenizer_sha256,
)
from llmcourse.tokenizer import ENDOFTEXT, Tokenizer

DOCUMENTS = [
    "Mina the fox lived in Tobin.",
    "",  # an empty document still gets its separator
    "Héllo wörld: ünïcode 字 and emoji 🙂.",
    "A document that mentions <|endoftext|> as plain text.",
    "The end.",
]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a small text may run out of merges: fine here
        return Tokenizer.train(corpus_text(20_000, seed=3), 400, progress=False)


@pytest.fixture(scope="module")
def other_tokenizer() -> Tokenizer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Tokenizer.train(corpus_text(20_000, seed=4), 400, progress=False)


def expected_ids(tokenizer: Tokenizer, docs: list[str], separator: str | None = ENDOFTEXT) -> list[int]:
    """The naive reference: each document's ids, then the separator id."""
    ids: list[int] = []
    for doc in docs:
        ids += tokenizer.encode_ordinary(doc)
        if separator is not None:
            ids.append(tokenizer.special_tokens[separator])
    return ids


def make_file(tmp_path: Path, tokenizer: Tokenizer, docs=DOCUMENTS, name: str = "t.bin", **kwargs) -> TokenFile:
    return tokenize_to_file(docs, tokenizer, tmp_path / name, progress=False, **kwargs)


# --------------------------------------------------------------------------- writing


def test_file_holds_each_document_then_the_separator(tmp_path, tokenizer):
    tf = make_file(tmp_path, tokenizer, corpus="unit test")
    assert tf.tokens.dtype == np.uint16
    assert tf.tokens.tolist() == expected_ids(tokenizer, DOCUMENTS)
    eot = tokenizer.special_tokens[ENDOFTEXT]
    assert tokenizer.decode(tf.tokens.tolist()) == ENDOFTEXT.join(DOCUMENTS) + ENDOFTEXT
    # The literal string in a document is text, not a forged separator: one separator per document.
    assert int((tf.tokens == eot).sum()) == len(DOCUMENTS)


def test_raw_file_is_flat_little_endian_ids_with_a_sidecar(tmp_path, tokenizer):
    tf = make_file(tmp_path, tokenizer, corpus="unit test")
    raw = np.fromfile(tmp_path / "t.bin", dtype="<u2")
    assert raw.tolist() == tf.tokens.tolist()
    meta = json.loads((tmp_path / "t.bin.json").read_text())
    assert meta["format"] == "llmcourse-tokens" and meta["version"] == TOKEN_FILE_VERSION
    assert meta["dtype"] == "uint16" and meta["n_tokens"] == len(raw) == len(tf)
    assert meta["vocab_size"] == tokenizer.vocab_size and meta["corpus"] == "unit test"
    assert meta["tokenizer_sha256"] == tokenizer_sha256(tokenizer)
    assert meta["n_documents"] == len(DOCUMENTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin", "t.bin.json"]  # no temp files left


def test_no_separator_and_a_generator_of_documents(tmp_path, tokenizer):
    tf = tokenize_to_file((d for d in DOCUMENTS), tokenizer, tmp_path / "t.bin", separator=None, progress=False)
    assert tf.tokens.tolist() == expected_ids(tokenizer, DOCUMENTS, separator=None)


def test_many_chunks_and_worker_processes_give_the_same_file(tmp_path, tokenizer, monkeypatch):
    docs = corpus_text(30_000, seed=5).split("\n\n")
    monkeypatch.setattr(tokens_module, "_CHUNK_CHARS", 2_000)  # many chunks, several in flight
    one = make_file(tmp_path, tokenizer, docs, name="one.bin")
    two = make_file(tmp_path, tokenizer, docs, name="two.bin", workers=2)
    assert one.tokens.tolist() == two.tokens.tolist() == expected_ids(tokenizer, docs)
    assert one.meta["n_documents"] == len(docs)


def test_empty_corpus_gives_an_empty_file(tmp_path, tokenizer):
    tf = make_file(tmp_path, tokenizer, [])
    assert len(tf) == 0 and tf.tokens.dtype == np.uint16


def test_vocab_dtype_boundary():
    assert token_dtype(256) == np.uint16
    assert token_dtype(65_536) == np.uint16  # ids 0..65535 fit in 16 bits
    assert token_dtype(65_537) == np.uint32
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="vocab_size"):
            token_dtype(bad)


def test_large_vocabulary_is_stored_as_uint32(tmp_path):
    # A real Tokenizer with 65,300 (synthetic, valid) merges: its special ids are above 65,535.
    big = Tokenizer([(0, i) for i in range(65_300)])
    assert big.vocab_size > 65_536
    eot = big.special_tokens[ENDOFTEXT]
    assert eot > np.iinfo(np.uint16).max
    tf = make_file(tmp_path, big, ["ab\x00\x00c", "xyz"])
    assert tf.tokens.dtype == np.uint32 and tf.meta["dtype"] == "uint32"
    assert tf.tokens.tolist() == expected_ids(big, ["ab\x00\x00c", "xyz"])
    assert tf.tokens.tolist().count(eot) == 2  # not wrapped around modulo 2**16
    assert (tmp_path / "t.bin").stat().st_size == 4 * len(tf)


def test_bad_arguments_are_named(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="separator '<\\|nope\\|>'"):
        make_file(tmp_path, tokenizer, separator="<|nope|>")
    with pytest.raises(TypeError, match="not one string"):
        make_file(tmp_path, tokenizer, "one long text")
    with pytest.raises(TypeError, match="must be a str"):
        make_file(tmp_path, tokenizer, ["fine", b"bytes"])
    with pytest.raises(ValueError, match="workers"):
        make_file(tmp_path, tokenizer, workers=0)
    assert not (tmp_path / "t.bin").exists()


def test_interrupted_tokenizing_keeps_the_old_file_and_leaves_no_partial_one(tmp_path, tokenizer):
    old = make_file(tmp_path, tokenizer).tokens.tolist()

    def failing_documents():
        yield "a first document"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        make_file(tmp_path, tokenizer, failing_documents())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.bin", "t.bin.json"]
    assert TokenFile.open(tmp_path / "t.bin", tokenizer).tokens.tolist() == old


def test_progress_bar_counts_characters(tmp_path, tokenizer, capsys):
    tokenize_to_file(DOCUMENTS, tokenizer, tmp_path / "t.bin", progress=True)
    assert "tokenizing t.bin" in capsys.readouterr().err


# --------------------------------------------------------------------------- the tokenizer fingerprint


def test_tokenizer_hash_survives_save_and_load_and_sees_every_part(tmp_path, tokenizer):
    tokenizer.save(tmp_path / "tok.json")
    assert tokenizer_sha256(Tokenizer.load(tmp_path / "tok.json")) == tokenizer_sha256(tokenizer)
    variants = [
        Tokenizer(tokenizer.merges[:-1], tokenizer.pattern, list(tokenizer.special_tokens)),
        Tokenizer(tokenizer.merges, r"\S+|\s+", list(tokenizer.special_tokens)),
        Tokenizer(tokenizer.merges, tokenizer.pattern, list(tokenizer.special_tokens)[::-1]),
    ]
    hashes = {tokenizer_sha256(t) for t in [tokenizer, *variants]}
    assert len(hashes) == 4


# --------------------------------------------------------------------------- opening and checking


def test_open_checks_the_tokenizer(tmp_path, tokenizer, other_tokenizer):
    make_file(tmp_path, tokenizer)
    assert len(TokenFile.open(tmp_path / "t.bin", tokenizer)) > 0
    assert len(TokenFile.open(tmp_path / "t.bin")) > 0  # no tokenizer given: not checked
    assert other_tokenizer.vocab_size == tokenizer.vocab_size  # same size, other merges
    with pytest.raises(TokenFileError, match="different tokenizer"):
        TokenFile.open(tmp_path / "t.bin", other_tokenizer)


def test_missing_file_or_sidecar(tmp_path, tokenizer):
    with pytest.raises(TokenFileError, match="no token file.*tokenize_to_file"):
        TokenFile.open(tmp_path / "absent.bin")
    make_file(tmp_path, tokenizer)
    (tmp_path / "t.bin.json").unlink()
    with pytest.raises(TokenFileError, match="no sidecar"):
        TokenFile.open(tmp_path / "t.bin")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda meta: "{not json", "corrupt"),
        (lambda meta: "[1, 2]", "not a llmcourse-tokens sidecar"),
        (lambda meta: {**meta, "format": "numpy"}, "not a llmcourse-tokens sidecar"),
        (lambda meta: {**meta, "version": TOKEN_FILE_VERSION + 1}, "version"),
        (lambda meta: {k: v for k, v in meta.items() if k != "n_tokens"}, "'n_tokens'"),
        (lambda meta: {**meta, "n_tokens": "12"}, "'n_tokens'"),
        (lambda meta: {**meta, "dtype": "float32"}, "invalid dtype"),
        (lambda meta: {**meta, "dtype": "uint32"}, "needs uint16"),
        (lambda meta: {**meta, "n_tokens": meta["n_tokens"] + 1}, "truncated"),
    ],
)
def test_bad_sidecar_is_an_error_naming_the_problem(tmp_path, tokenizer, edit, message):
    make_file(tmp_path, tokenizer)
    sidecar = tmp_path / "t.bin.json"
    new = edit(json.loads(sidecar.read_text()))
    sidecar.write_text(new if isinstance(new, str) else json.dumps(new))
    with pytest.raises(TokenFileError, match=message):
        TokenFile.open(tmp_path / "t.bin")


@pytest.mark.parametrize("change", ["truncate", "append"])
def test_size_mismatch_is_an_error(tmp_path, tokenizer, change):
    make_file(tmp_path, tokenizer)
    path = tmp_path / "t.bin"
    data = path.read_bytes()
    path.write_bytes(data[:-3] if change == "truncate" else data + b"\0\0")
    with pytest.raises(TokenFileError, match="truncated or was overwritten"):
        TokenFile.open(path)


# --------------------------------------------------------------------------- train / validation split


def test_split_is_disjoint_and_covers_everything(tmp_path, tokenizer):
    tf = make_file(tmp_path, tokenizer, corpus_text(5_000, seed=1).split("\n\n"))
    train, val = tf.split(0.25)
    assert len(train) + len(val) == len(tf)
    assert len(val) == round(0.25 * len(tf))
    assert np.concatenate([train, val]).tolist() == tf.tokens.tolist()
    assert np.shares_memory(train, tf.tokens) and not np.shares_memory(train, val)
    assert tf.train.tolist() == tf.split(0.1)[0].tolist()  # properties use the default 0.1
    assert tf.val.tolist() == tf.split(0.1)[1].tolist()


def test_split_rejects_fractions_that_leave_a_part_empty(tmp_path, tokenizer):
    tf = make_file(tmp_path, tokenizer, ["ab"])  # 3 tokens at most
    for bad in (0, 1, -0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="val_fraction"):
            tf.split(bad)
    with pytest.raises(ValueError, match="empty"):
        tf.split(0.01)


def test_batches_from_train_and_val_never_mix(tmp_path):
    # A file of distinct ids 0..N-1 (through the public writer's format): a batch's values tell
    # exactly which positions it read.
    n = 5_000
    path = tmp_path / "ids.bin"
    np.arange(n, dtype=np.uint16).tofile(path)
    meta = {"format": "llmcourse-tokens", "version": TOKEN_FILE_VERSION, "dtype": "uint16", "n_tokens": n,
            "vocab_size": n, "tokenizer_sha256": "0" * 64, "corpus": "arange"}
    (tmp_path / "ids.bin.json").write_text(json.dumps(meta))
    tf = TokenFile.open(path)
    train, val = tf.split(0.2)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x, y = get_batch(train, 16, 32, generator=g)
        assert int(y.max()) < len(train)
        x, y = get_batch(val, 16, 32, generator=g)
        assert int(x.min()) >= len(train) and int(y.max()) < n


# --------------------------------------------------------------------------- get_batch


def reference_batch(tokens: np.ndarray, batch_size: int, block_size: int, seed: int):
    """Naive reference: the same starts from a twin generator, windows sliced one by one."""
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(tokens) - block_size, (batch_size,), generator=g).tolist()
    x = torch.tensor(np.array([tokens[s : s + block_size] for s in starts], dtype=np.int64))
    y = torch.tensor(np.array([tokens[s + 1 : s + block_size + 1] for s in starts], dtype=np.int64))
    return x, y


@given(
    n=st.integers(2, 300),
    block_size=st.integers(1, 64),
    batch_size=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_get_batch_windows_are_inside_and_shifted(n, block_size, batch_size, seed):
    block_size = min(block_size, n - 1)
    tokens = np.arange(n, dtype=np.uint32)  # distinct values: x[b, t] is the position it came from
    x, y = get_batch(tokens, batch_size, block_size, generator=torch.Generator().manual_seed(seed))
    assert x.shape == y.shape == (batch_size, block_size)
    assert x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1)  # the target is the next token
    assert torch.equal(x, x[:, :1] + torch.arange(block_size))  # consecutive tokens
    assert int(x.min()) >= 0 and int(y.max()) <= n - 1  # never past the end
    ref_x, ref_y = reference_batch(tokens, batch_size, block_size, seed)
    assert torch.equal(x, ref_x) and torch.equal(y, ref_y)


def test_get_batch_reaches_both_ends():
    tokens = np.arange(12, dtype=np.uint16)
    x, _ = get_batch(tokens, 2_000, 4, generator=torch.Generator().manual_seed(1))
    assert set(x[:, 0].tolist()) == set(range(12 - 4))  # every start 0..N-T-1, uniform enough to hit all


def test_get_batch_is_reproducible_and_accepts_tensors_and_memmaps(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 60_000, size=10_000).astype(np.uint16)  # values above int16 range too
    path = tmp_path / "raw.bin"
    tokens.tofile(path)
    mapped = np.memmap(path, dtype=np.uint16, mode="r")
    batches = [
        get_batch(source, 4, 16, generator=torch.Generator().manual_seed(7))
        for source in (tokens, mapped, torch.from_numpy(tokens.astype(np.int64)))
    ]
    for x, y in batches[1:]:
        assert torch.equal(x, batches[0][0]) and torch.equal(y, batches[0][1])
    assert int(batches[0][0].max()) > 32_767  # uint16 ids were not read as signed
    other = get_batch(tokens, 4, 16, generator=torch.Generator().manual_seed(8))
    assert not torch.equal(other[0], batches[0][0])


def test_get_batch_errors():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="too few.*block_size=10"):
        get_batch(np.arange(10), 2, 10, generator=g)
    with pytest.raises(ValueError, match="batch_size"):
        get_batch(np.arange(10), 0, 2, generator=g)
    with pytest.raises(ValueError, match="block_size"):
        get_batch(np.arange(10), 2, 2.0, generator=g)
    with pytest.raises(ValueError, match="1-D"):
        get_batch(np.zeros((4, 4), dtype=np.uint16), 2, 2, generator=g)
    with pytest.raises(TypeError, match="numpy array or a torch tensor"):
        get_batch(list(range(10)), 2, 2, generator=g)


def test_batches_iterator_matches_get_batch():
    tokens = np.arange(500, dtype=np.uint16)
    batches = Batches(tokens, 3, 8, generator=torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    for (x, y), _ in zip(batches, range(5)):
        ref_x, ref_y = get_batch(tokens, 3, 8, generator=g)
        assert torch.equal(x, ref_x) and torch.equal(y, ref_y)
    with pytest.raises(ValueError, match="too few"):
        Batches(tokens[:5], 3, 8, generator=g)


@pytest.mark.gpu
def test_get_batch_on_cuda_equals_cpu():
    tokens = np.arange(1_000, dtype=np.uint16)
    x, y = get_batch(tokens, 4, 32, generator=torch.Generator().manual_seed(3), device="cuda")
    ref_x, ref_y = get_batch(tokens, 4, 32, generator=torch.Generator().manual_seed(3))
    assert x.is_cuda and y.is_cuda
    assert torch.equal(x.cpu(), ref_x) and torch.equal(y.cpu(), ref_y)
    on_gpu = torch.from_numpy(tokens.astype(np.int64)).cuda()
    gx, _ = get_batch(on_gpu, 4, 32, generator=torch.Generator().manual_seed(3), device="cuda")
    assert torch.equal(gx.cpu(), ref_x)
