"""Shared pytest set-up: headless plotting, hypothesis without deadlines, GPU marker, and the
script that records chapter 10's runs as a fixture."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import matplotlib
import pytest
import torch
from hypothesis import settings

matplotlib.use("Agg")  # tests never open windows

# Two shared CPU cores make wall-clock deadlines flaky; correctness does not depend on speed.
settings.register_profile("llmcourse", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "llmcourse"))

# With pytest-xdist each core runs its own worker; torch's own threads on top of that
# oversubscribe the cores and make small tensor ops many times slower.
# The same holds for the processes tests start (the book's and the grader's Jupyter kernels):
# they inherit OMP_NUM_THREADS, and one thread each keeps a page's training cells from slowing
# down tenfold while another worker runs beside them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


@pytest.fixture(scope="session")
def record_script():
    """book/runs/record.py (a script, not part of the package), imported as a module."""
    path = Path(__file__).resolve().parents[1] / "book" / "runs" / "record.py"
    spec = importlib.util.spec_from_file_location("book_runs_record", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config, items):
    """Skip tests marked `gpu` on machines without CUDA (they run on the GPU machines)."""
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip_gpu)


# A micro "pretrained" model for the fine-tuning tests (chapters 13-14): random weights, a small
# BPE tokenizer, and a context that holds TinyWorld's chats with that tokenizer (up to ~180 tokens).
MICRO_BLOCK = 192


@pytest.fixture(scope="session")
def micro_tokenizer(tmp_path_factory):
    from llmcourse.data.tinyworld import corpus_text
    from llmcourse.tokenizer import Tokenizer

    path = tmp_path_factory.mktemp("micro-tokenizer") / "tokenizer.json"
    Tokenizer.train(corpus_text(40_000), vocab_size=400).save(path)
    return Tokenizer.load(path)


@pytest.fixture(scope="session")
def micro_base(tmp_path_factory, micro_tokenizer) -> str:
    """The path of a micro checkpoint with its tokenizer beside it (what `init_from` takes)."""
    from llmcourse.checkpoint import make_checkpoint, save_checkpoint, tokenizer_entry
    from llmcourse.model import GPT, GPTConfig

    folder = tmp_path_factory.mktemp("micro-base")
    micro_tokenizer.save(folder / "tokenizer.json")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=micro_tokenizer.vocab_size, block_size=MICRO_BLOCK, n_layer=1, n_head=2,
                          n_embd=16))
    checkpoint = make_checkpoint(model.config.to_dict(), model.state_dict(), tokenizer_entry(folder / "tokenizer.json"))
    return str(save_checkpoint(checkpoint, folder / "model.pt"))
