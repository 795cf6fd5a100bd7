"""Downloads and corpora (`llmcourse.data.download`), on local fixtures only: no network."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import types
from dataclasses import replace
from itertools import islice
from pathlib import Path

import pytest

from llmcourse.data import documents
from llmcourse.data import download as dl
from llmcourse.data.download import (
    CACHE_ENV_VAR,
    SOURCES,
    DownloadError,
    HFDataset,
    corpus,
    download,
    resolve_cache_dir,
)
from llmcourse.data.tokens import TokenFile, tokenize_to_file
from llmcourse.tokenizer import Tokenizer

PLAY = (
    "FIRST CITIZEN:\nBefore we proceed any further, hear me speak.\n\n"
    "ALL:\nSpeak, speak.\n\n"
    "FIRST CITIZEN:\nYou are all resolved rather to die than to famish?\n"
)
STORIES = [f"Story {i}: once upon a time, the {i}th cat said \"hi\".\nThe end." for i in range(50)]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture()
def cache(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture()
def shakespeare(tmp_path, monkeypatch) -> bytes:
    """TinyShakespeare's source pointed at a small local file (a file:// URL) with its checksum."""
    fixture = tmp_path / "input.txt"
    fixture.write_text(PLAY, encoding="utf-8")
    data = fixture.read_bytes()
    local = replace(SOURCES["tinyshakespeare"], url=fixture.as_uri(), sha256=sha256(data))
    monkeypatch.setitem(SOURCES, "tinyshakespeare", local)
    return data


def forbid_network(monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("the download was attempted although the file is cached")

    monkeypatch.setattr(dl, "_open_url", no_network)


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------- the cache folder


def test_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "from-env"))
    assert resolve_cache_dir(tmp_path / "given") == tmp_path / "given"
    assert resolve_cache_dir() == tmp_path / "from-env"
    monkeypatch.delenv(CACHE_ENV_VAR)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_cache_dir() == tmp_path / "home" / ".cache" / "llmcourse"


def test_unknown_names_list_the_choices(cache):
    with pytest.raises(ValueError, match="name='shakespeare' must be one of 'tinyshakespeare'"):
        download("shakespeare", cache)
    with pytest.raises(ValueError, match="offline corpora 'tinyworld'"):
        download("tinyworld", cache)
    with pytest.raises(ValueError, match="name='wiki' must be one of 'tinyworld', 'python'"):
        corpus("wiki")


def test_pinned_tinyshakespeare_source():
    source = SOURCES["tinyshakespeare"]
    assert source.url.startswith("https://raw.githubusercontent.com/karpathy/char-rnn/")
    assert len(source.sha256) == 64 and int(source.sha256, 16) >= 0


# --------------------------------------------------------------------------- a raw file


def test_download_then_cache_hit_skips_the_network(shakespeare, cache, monkeypatch):
    path = download("tinyshakespeare", cache, progress=False)
    assert path.parent == cache and path.read_bytes() == shakespeare
    forbid_network(monkeypatch)
    assert download("tinyshakespeare", cache) == path
    assert files_in(cache) == ["tinyshakespeare.txt"]


def test_environment_variable_chooses_the_cache(shakespeare, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV_VAR, str(tmp_path / "env-cache"))
    assert download("tinyshakespeare", progress=False).parent == tmp_path / "env-cache"


def test_checksum_mismatch_raises_and_leaves_no_file(shakespeare, cache, monkeypatch):
    source = replace(SOURCES["tinyshakespeare"], sha256="0" * 64)
    monkeypatch.setitem(SOURCES, "tinyshakespeare", source)
    with pytest.raises(DownloadError, match="expected 0000.*nothing was saved"):
        download("tinyshakespeare", cache, progress=False)
    assert files_in(cache) == []


class BrokenResponse(io.BytesIO):
    """A response that delivers one block, then fails the way a dropped connection or Ctrl-C does."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(b"x" * 100)
        self.headers = {"Content-Length": "1000000"}
        self.error = error
        self.calls = 0

    def read(self, size: int = -1) -> bytes:
        self.calls += 1
        if self.calls > 1:
            raise self.error
        return super().read(size)


@pytest.mark.parametrize("error", [ConnectionResetError("reset by peer"), KeyboardInterrupt()])
def test_interrupted_download_leaves_no_partial_file(shakespeare, cache, monkeypatch, error):
    monkeypatch.setattr(dl, "_open_url", lambda url, timeout: BrokenResponse(error))
    with pytest.raises(type(error)):
        download("tinyshakespeare", cache, progress=False)
    assert files_in(cache) == []


def test_damaged_cached_file_is_downloaded_again(shakespeare, cache):
    path = download("tinyshakespeare", cache, progress=False)
    path.write_bytes(shakespeare[:-10])
    with pytest.warns(UserWarning, match="fails its checksum"):
        assert download("tinyshakespeare", cache, progress=False).read_bytes() == shakespeare


def test_tinyshakespeare_documents_are_speeches(shakespeare, cache):
    speeches = list(corpus("tinyshakespeare", cache_dir=cache))
    assert speeches == [part for part in PLAY.split("\n\n") if part.strip()]
    assert speeches[1] == "ALL:\nSpeak, speak."


# --------------------------------------------------------------------------- a Hugging Face dataset


@pytest.fixture()
def fake_datasets(monkeypatch) -> types.ModuleType:
    """A stand-in for the `datasets` package that streams STORIES and records each call."""
    module = types.ModuleType("datasets")
    module.calls = []

    def load_dataset(repo, name=None, split=None, streaming=False):
        module.calls.append({"repo": repo, "name": name, "split": split, "streaming": streaming})
        return iter([{"text": text, "id": i} for i, text in enumerate(STORIES)])

    module.load_dataset = load_dataset
    monkeypatch.setitem(sys.modules, "datasets", module)
    return module


def test_hf_download_streams_documents_once(fake_datasets, cache):
    path = download("tinystories", cache, progress=False)
    call = {"repo": "roneneldan/TinyStories", "name": None, "split": "train", "streaming": True}
    assert fake_datasets.calls == [call]
    assert list(corpus("tinystories", cache_dir=cache)) == STORIES  # newlines and quotes survive
    manifest = json.loads((cache / "tinystories.jsonl.json").read_text())
    assert manifest["sha256"] == sha256(path.read_bytes()) and manifest["n_documents"] == len(STORIES)
    assert len(fake_datasets.calls) == 1  # the corpus() call above read the cache


def test_hf_cache_hit_needs_neither_network_nor_datasets(fake_datasets, cache, monkeypatch):
    path = download("tinystories", cache, progress=False)
    monkeypatch.setitem(sys.modules, "datasets", None)  # importing it would now fail
    assert download("tinystories", cache) == path


def test_hf_download_stops_at_its_character_cap(fake_datasets, cache, monkeypatch):
    monkeypatch.setitem(SOURCES, "fineweb-edu", replace(SOURCES["fineweb-edu"], max_chars=200))
    download("fineweb-edu", cache, progress=False)
    assert fake_datasets.calls[0]["repo"] == "HuggingFaceFW/fineweb-edu"
    assert fake_datasets.calls[0]["name"] == "sample-10BT"
    kept = list(corpus("fineweb-edu", cache_dir=cache))
    assert sum(map(len, kept[:-1])) < 200 <= sum(map(len, kept))  # whole documents, just past the cap
    assert kept == STORIES[: len(kept)]


def test_hf_edited_cache_or_changed_source_is_downloaded_again(fake_datasets, cache, monkeypatch):
    path = download("tinystories", cache, progress=False)
    path.write_text('"tampered"\n')
    with pytest.warns(UserWarning, match="does not match its manifest"):
        download("tinystories", cache, progress=False)
    assert list(corpus("tinystories", cache_dir=cache)) == STORIES
    monkeypatch.setitem(SOURCES, "tinystories", replace(SOURCES["tinystories"], max_chars=100))
    with pytest.warns(UserWarning):
        download("tinystories", cache, progress=False)
    assert len(fake_datasets.calls) == 3


def test_missing_datasets_package_gives_the_install_command(cache, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match="pip install datasets"):
        download("fineweb-edu", cache)
    with pytest.raises(ImportError, match="pip install datasets"):
        corpus("tinystories", 1_000, cache_dir=cache)
    assert files_in(cache) == []


def test_interrupted_hf_download_leaves_no_partial_file(cache, monkeypatch):
    def rows():
        yield {"text": "one"}
        raise ConnectionError("stream dropped")

    module = types.ModuleType("datasets")
    module.load_dataset = lambda *args, **kwargs: rows()
    monkeypatch.setitem(sys.modules, "datasets", module)
    with pytest.raises(ConnectionError):
        download("tinystories", cache, progress=False)
    assert files_in(cache) == []


def test_hf_source_is_a_dataclass_with_the_known_repos():
    assert isinstance(SOURCES["tinystories"], HFDataset) and SOURCES["tinystories"].column == "text"
    assert SOURCES["fineweb-edu"].max_chars == 100_000_000


# --------------------------------------------------------------------------- offline corpora


def test_tinyworld_corpus_is_documents_up_to_n_chars():
    docs = list(corpus("tinyworld", 3_000, seed=2))
    assert docs == list(islice(documents(2), len(docs)))
    assert sum(map(len, docs[:-1])) < 3_000 <= sum(map(len, docs))
    assert list(corpus("tinyworld", 0)) == []
    with pytest.raises(ValueError, match="endless; pass n_chars"):
        corpus("tinyworld")
    for bad in (-1, 2.5, True):
        with pytest.raises(ValueError, match="n_chars"):
            corpus("tinyworld", bad)


def test_python_corpus_yields_source_files():
    files = list(corpus("python", 20_000))
    assert files and all(isinstance(f, str) and f for f in files)
    assert any("def " in f or "import " in f for f in files)


def test_downloaded_corpus_tokenizes_end_to_end(shakespeare, cache, tmp_path):
    tokenizer = Tokenizer.train(PLAY, 270, progress=False)
    tf = tokenize_to_file(corpus("tinyshakespeare", cache_dir=cache), tokenizer, tmp_path / "s.bin",
                          progress=False, corpus="tinyshakespeare")
    assert TokenFile.open(tmp_path / "s.bin", tokenizer).meta["corpus"] == "tinyshakespeare"
    assert tokenizer.decode(tf.tokens.tolist()).split("<|endoftext|>")[:-1] == list(
        corpus("tinyshakespeare", cache_dir=cache)
    )
