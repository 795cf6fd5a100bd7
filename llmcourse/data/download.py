"""Real corpora when online: TinyShakespeare, TinyStories and FineWeb-edu, cached and checked.

The course runs offline on TinyWorld; these downloads are for learners with a network (and a GPU)
who want real text. Every download goes to a cache folder (`$LLMCOURSE_CACHE`, else
`~/.cache/llmcourse`), is written to a temporary file and renamed only when complete and
verified, so an interrupted or corrupted download never looks like a finished one, and a second
call finds the file in the cache and downloads nothing.

* `"tinyshakespeare"`: the 1.1 MB of Shakespeare plays from Karpathy's char-rnn, checked
  against a pinned SHA-256 (the one TensorFlow Datasets records for the same URL).
* `"tinystories"`: `roneneldan/TinyStories` (Eldan & Li, 2023), short stories written by
  GPT-3.5/4 with a small vocabulary.
* `"fineweb-edu"`: `HuggingFaceFW/fineweb-edu` (Penedo et al., 2024), web pages filtered for
  educational value, streamed from its `sample-10BT` config and capped at 100 M characters.

The Hugging Face sources need the `datasets` package (not a dependency of the course); they are
stored as JSON lines (one document a line) with a manifest holding the file's SHA-256, which is
checked on every later use. `corpus` yields documents from any of them, or from the
offline corpora `"tinyworld"` and `"python"`.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from llmcourse.checks import ArgumentError, check_choice, check_int
from llmcourse.data.pysource import python_source_files, read_source
from llmcourse.data.tinyworld import documents
from llmcourse.files import atomic_path, sha256_file

__all__ = [
    "CACHE_ENV_VAR",
    "CORPORA",
    "SOURCES",
    "DownloadError",
    "HFDataset",
    "RawText",
    "corpus",
    "download",
    "resolve_cache_dir",
]

CACHE_ENV_VAR = "LLMCOURSE_CACHE"
_BLOCK = 1 << 16  # bytes read from the network at a time


class DownloadError(RuntimeError):
    """A download that failed its checksum or could not be completed."""


@dataclass(frozen=True)
class RawText:
    """One text file at a URL, with the SHA-256 it must have."""

    url: str
    filename: str
    sha256: str


@dataclass(frozen=True)
class HFDataset:
    """A Hugging Face dataset streamed into a JSON-lines file of its `column` texts."""

    repo: str
    config: str | None
    split: str
    column: str
    max_chars: int | None  # stop after the document that reaches this many characters (None: all)


SOURCES: dict[str, RawText | HFDataset] = {
    "tinyshakespeare": RawText(
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        filename="tinyshakespeare.txt",
        # 1,115,394 bytes; the checksum TensorFlow Datasets pins for this URL (url_checksums/tiny_shakespeare.txt).
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
    "tinystories": HFDataset("roneneldan/TinyStories", None, "train", "text", max_chars=None),
    "fineweb-edu": HFDataset("HuggingFaceFW/fineweb-edu", "sample-10BT", "train", "text", max_chars=100_000_000),
}
CORPORA = ("tinyworld", "python", *SOURCES)


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder downloads go to: `cache_dir`, else `$LLMCOURSE_CACHE`, else `~/.cache/llmcourse`."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "llmcourse"
    return Path(cache_dir).expanduser()


def download(
    name: str, cache_dir: str | os.PathLike | None = None, *, progress: bool | None = None
) -> Path:
    """The path of corpus `name` in the cache, downloading (and checking) it first if needed.

    `name` is a key of `SOURCES`. A cached file is re-checked against its checksum; one
    that fails (damaged since) is downloaded again. `progress`: show a tqdm bar (`None`: only
    if it takes more than a second).
    """
    offline = ", ".join(repr(c) for c in CORPORA if c not in SOURCES)
    check_choice("name", name, SOURCES, hint=f"the offline corpora {offline} need no download: use corpus()")
    folder = resolve_cache_dir(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    source = SOURCES[name]
    if isinstance(source, RawText):
        return _download_raw(source, folder, progress)
    return _download_hf(name, source, folder, progress)


# --------------------------------------------------------------------------- a file at a URL

_open_url = urllib.request.urlopen  # tests replace it to serve fixtures without a network


def _download_raw(source: RawText, folder: Path, progress: bool | None) -> Path:
    path = folder / source.filename
    if path.is_file():
        if sha256_file(path) == source.sha256:
            return path
        warnings.warn(f"cached {str(path)!r} fails its checksum (damaged?); downloading it again", stacklevel=3)
    with atomic_path(path) as temporary:
        digest = _fetch(source.url, temporary, progress)
        if digest != source.sha256:
            raise DownloadError(
                f"{source.url} downloaded with SHA-256 {digest}, expected {source.sha256}: the file "
                f"changed upstream or the download was corrupted; nothing was saved. Try again, or "
                f"update the checksum in llmcourse.data.download.SOURCES if the file changed on purpose"
            )
    return path


def _fetch(url: str, destination: Path, progress: bool | None) -> str:
    """Stream `url` into `destination`; the SHA-256 of what was written."""
    digest = hashlib.sha256()
    with _open_url(url, timeout=60) as response, open(destination, "wb") as file:
        size = getattr(response, "headers", {}).get("Content-Length")
        with _bar(progress, f"downloading {url.rsplit('/', 1)[-1]}", "B", int(size) if size else None) as bar:
            while block := response.read(_BLOCK):
                file.write(block)
                digest.update(block)
                bar.update(len(block))
    return digest.hexdigest()


# --------------------------------------------------------------------------- a Hugging Face dataset


def _download_hf(name: str, source: HFDataset, folder: Path, progress: bool | None) -> Path:
    path = folder / f"{name}.jsonl"
    manifest_path = folder / f"{name}.jsonl.json"
    wanted = _manifest_source(source)
    if path.is_file() and manifest_path.is_file():
        manifest = _read_json(manifest_path)
        if manifest.get("source") == wanted and manifest.get("sha256") == sha256_file(path):
            return path
        warnings.warn(f"cached {str(path)!r} does not match its manifest; downloading it again", stacklevel=3)
    datasets = _import_datasets(name)
    rows = datasets.load_dataset(source.repo, name=source.config, split=source.split, streaming=True)
    digest = hashlib.sha256()
    n_documents = n_chars = 0
    with atomic_path(manifest_path) as temporary_manifest, atomic_path(path) as temporary:
        with open(temporary, "wb") as file, _bar(progress, f"downloading {name}", "char", source.max_chars) as bar:
            for row in rows:
                text = row[source.column]
                line = (json.dumps(text, ensure_ascii=False) + "\n").encode("utf-8")
                file.write(line)
                digest.update(line)
                n_documents += 1
                n_chars += len(text)
                bar.update(len(text))
                if source.max_chars is not None and n_chars >= source.max_chars:
                    break
        manifest = {"source": wanted, "sha256": digest.hexdigest(), "n_documents": n_documents, "n_chars": n_chars}
        temporary_manifest.write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        manifest_path.unlink(missing_ok=True)  # never let an old manifest vouch for the new file
    return path


def _manifest_source(source: HFDataset) -> dict[str, Any]:
    return {"repo": source.repo, "config": source.config, "split": source.split,
            "column": source.column, "max_chars": source.max_chars}


def _import_datasets(name: str) -> Any:
    """The `datasets` package, imported only when a Hugging Face download needs it."""
    try:
        import datasets
    except ImportError as error:
        raise ImportError(
            f"downloading {name!r} needs the Hugging Face 'datasets' package, which the course does "
            f"not install by default: pip install datasets (or use corpus('tinyworld'), which needs no download)"
        ) from error
    return datasets


# --------------------------------------------------------------------------- documents


def corpus(
    name: str = "tinyworld",
    n_chars: int | None = None,
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> Iterator[str]:
    """The documents of corpus `name`, until at least `n_chars` characters (`None`: all of them).

    `"tinyworld"` (offline, generated from `seed`; endless, so it needs `n_chars`),
    `"python"` (this interpreter's standard library, one file a document), or a download:
    `"tinyshakespeare"` (one speech a document: the text between blank lines), `"tinystories"`,
    `"fineweb-edu"`. Documents are whole: the last one may take the total past `n_chars`.
    """
    check_choice("name", name, CORPORA)
    if n_chars is not None:
        check_int("n_chars", n_chars, 0, hint="or None for everything")
    elif name == "tinyworld":
        raise ArgumentError("n_chars=None cannot read the tinyworld corpus, which is endless; "
                            "pass n_chars, e.g. corpus('tinyworld', 5_000_000)")
    return _take_chars(_documents_of(name, seed, cache_dir), n_chars)


def _documents_of(name: str, seed: int, cache: str | os.PathLike | None) -> Iterator[str]:
    if name == "tinyworld":
        return documents(seed)
    if name == "python":
        return (text for text in map(read_source, python_source_files()) if text)
    path = download(name, cache)
    if isinstance(SOURCES[name], RawText):
        return _paragraphs(path)
    return _json_lines(path)


def _paragraphs(path: Path) -> Iterator[str]:
    """The non-empty blank-line-separated parts of a (small) text file."""
    for part in path.read_text(encoding="utf-8").split("\n\n"):
        if part.strip():
            yield part


def _json_lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8") as file:
        for line in file:
            yield json.loads(line)


def _take_chars(texts: Iterator[str], n_chars: int | None) -> Iterator[str]:
    if n_chars is None:
        yield from texts
        return
    total = 0
    for text in texts:
        if total >= n_chars:
            return
        yield text
        total += len(text)


# --------------------------------------------------------------------------- small helpers


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _bar(progress: bool | None, desc: str, unit: str, total: int | None) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True,
                disable=progress is False, delay=1.0 if progress is None else 0.0)
