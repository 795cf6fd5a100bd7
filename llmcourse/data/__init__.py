"""Corpora for the course and the files models train from.

TinyWorld (our generated default) and Python source work offline and are deterministic for a seed
on every platform; `download` fetches TinyShakespeare, TinyStories and FineWeb-edu when online
(cached, checksummed). `tokens` turns any of them into a memory-mapped token file and batches.

The names below are importable from here (`from llmcourse.data import corpus_text`), but each
is loaded from its module only when first asked for (PEP 562). So chapter 01's
`import llmcourse.data.chars` does not drag in the tokenizer of chapter 02 or the downloader of
chapter 10: a page, and a grader, load only what their chapter has built so far.
"""

from __future__ import annotations

import importlib
from typing import Any

# Public name -> the module it lives in. `download` itself stays in its module: exporting the
# function here would hide the submodule `llmcourse.data.download` behind a function of the same
# name.
_HOMES = {
    "CharVocab": "chars",
    "CORPORA": "download",
    "DownloadError": "download",
    "corpus": "download",
    "resolve_cache_dir": "download",
    "python_source_files": "pysource",
    "python_source_text": "pysource",
    "World": "tinyworld",
    "corpus_text": "tinyworld",
    "documents": "tinyworld",
    "facts": "tinyworld",
    "stories": "tinyworld",
    "write_corpus": "tinyworld",
    "Batches": "tokens",
    "TokenFile": "tokens",
    "TokenFileError": "tokens",
    "get_batch": "tokens",
    "token_dtype": "tokens",
    "tokenize_to_file": "tokens",
    "tokenizer_sha256": "tokens",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    """Load a public name from its module the first time it is asked for."""
    if name not in _HOMES:
        # Submodules (`llmcourse.data.tokens`) are found by the import system, not here.
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value  # later lookups find it directly, without calling __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
