"""Corpora for the course and the files models train from.

TinyWorld (our generated default) and Python source work offline and are deterministic for a seed
on every platform; `download` fetches TinyShakespeare, TinyStories and FineWeb-edu when online
(cached, checksummed). `tokens` turns any of them into a memory-mapped token file and batches.
"""

from llmcourse.data.chars import CharVocab
# `download` itself stays in its module: exporting the function here would hide the submodule
# `llmcourse.data.download` behind a function of the same name.
from llmcourse.data.download import CORPORA, DownloadError, corpus, resolve_cache_dir
from llmcourse.data.pysource import python_source_files, python_source_text
from llmcourse.data.tinyworld import World, corpus_text, documents, facts, stories, write_corpus
from llmcourse.data.tokens import (
    Batches,
    TokenFile,
    TokenFileError,
    get_batch,
    token_dtype,
    tokenize_to_file,
    tokenizer_sha256,
)

__all__ = [
    "CORPORA",
    "Batches",
    "CharVocab",
    "DownloadError",
    "TokenFile",
    "TokenFileError",
    "World",
    "corpus",
    "corpus_text",
    "documents",
    "facts",
    "get_batch",
    "python_source_files",
    "python_source_text",
    "resolve_cache_dir",
    "stories",
    "token_dtype",
    "tokenize_to_file",
    "tokenizer_sha256",
    "write_corpus",
]
