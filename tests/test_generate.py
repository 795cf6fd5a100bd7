"""llmcourse.generate: the batched, cached engine against plain uncached decoding and against each
prompt decoded alone; stopping, streaming and seeds on a scripted model whose output is known."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from llmcourse.attention import KVCache
from llmcourse.generate import (
    FINISH_REASONS,
    Completion,
    StaticKVCache,
    generate,
    left_pad,
    padded_positions,
    stream,
)
from llmcourse.model import GPT, GPTConfig
from llmcourse.sampling import SamplingSettings
from llmcourse.tokenizer import ENDOFTEXT, Tokenizer

TOKENIZER = Path(__file__).resolve().parents[1] / "book" / "runs" / "cpu-tiny" / "tokenizer.json"
GREEDY = SamplingSettings(temperature=0)
PROMPTS = ["Once upon a time", "The", "Mira went to the market and bought"]


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer.load(TOKENIZER)


def tiny_model(tokenizer: Tokenizer, seed: int = 0, **overrides) -> GPT:
    """A random GPT in float64, so that batch shape cannot flip a near-tie between two tokens.

    At GPT-2's initialisation q·k and the logits are near 0 (attention and the next-token
    distribution near uniform), and tied embeddings make a random model repeat its last token:
    both would hide a wrong position or mask. Untied, with larger query, key and output weights,
    the model writes varied text that depends on every position it sees.
    """
    values = dict(vocab_size=tokenizer.vocab_size, block_size=48, n_layer=2, n_head=4, n_embd=32,
                  tie_weights=False)
    values.update(overrides)
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**values))
    with torch.no_grad():
        for block in model.blocks:
            block.attn.q_proj.weight.normal_(std=1.0)
            block.attn.k_proj.weight.normal_(std=1.0)
        model.lm_head.weight.normal_(std=0.5)
    return model.double().eval()


def uncached_greedy(model: GPT, tokenizer: Tokenizer, prompt: str, steps: int) -> list[int]:
    """The whole sequence through the model at every step, no cache, no padding, no engine."""
    eot = tokenizer.special_tokens[ENDOFTEXT]
    ids = torch.tensor([[eot] + tokenizer.encode_ordinary(prompt)])
    new: list[int] = []
    with torch.no_grad():
        while len(new) < steps and (not new or new[-1] != eot):
            new.append(int(model(ids)[0][0, -1].argmax()))
            ids = torch.cat([ids, torch.tensor([[new[-1]]])], dim=1)
    return new


# ---------------------------------------------------------------------------------- padding


def test_left_pad_right_aligns_and_masks():
    ids, mask = left_pad([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert ids.dtype == torch.int64 and mask.dtype == torch.bool
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert mask.tolist() == [[True] * 3, [False, False, True], [False, True, True]]
    assert padded_positions(mask).tolist() == [[0, 1, 2], [0, 0, 0], [0, 0, 1]]
    with pytest.raises(ValueError, match="prompt 1 has no tokens"):
        left_pad([[1], []], pad_id=0)
    with pytest.raises(ValueError, match="non-empty list"):
        left_pad([], pad_id=0)
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        padded_positions(mask.long())


# ---------------------------------------------------------------------------------- the static cache


def test_static_cache_has_the_kv_cache_interface():
    cache = StaticKVCache(2, 1, 2, 6, 4)
    assert cache.length == 0 and cache.nbytes == 2 * 2 * 1 * 2 * 6 * 4 * 4  # preallocated: all of it
    k, v = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    k_all, v_all = cache.update(0, k, v)
    assert torch.equal(k_all, k) and torch.equal(v_all, v) and cache.length == 4 and cache.seq_len(1) == 0
    k_all, _ = cache.update(0, k[..., :1, :], v[..., :1, :])
    assert k_all.shape == (1, 2, 5, 4) and torch.equal(k_all[..., 4, :], k[..., 0, :])
    assert k_all.data_ptr() == cache.keys.data_ptr()  # a view of the buffer, not a copy
    cache.truncate(2)
    assert cache.length == 2
    assert torch.equal(cache.update(0, v[..., :1, :], k[..., :1, :])[0][..., 2, :], v[..., 0, :])
    cache.reset()
    assert cache.length == 0


def test_static_cache_errors():
    cache = StaticKVCache(1, 2, 2, 4, 8)
    with pytest.raises(ValueError, match="past max_len=4; build the cache with max_len >= 5"):
        cache.update(0, torch.zeros(2, 2, 5, 8), torch.zeros(2, 2, 5, 8))
    with pytest.raises(ValueError, match=r"k must be a tensor of shape \(2, 2, T, 8\)"):
        cache.update(0, torch.zeros(1, 2, 1, 8), torch.zeros(1, 2, 1, 8))
    with pytest.raises(ValueError, match="dtype=torch.float64"):
        cache.update(0, torch.zeros(2, 2, 1, 8, dtype=torch.float64), torch.zeros(2, 2, 1, 8, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"layer=1 must be an integer in \[0, 1\)"):
        cache.seq_len(1)


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_static_cache_gives_the_logits_of_the_concatenating_cache(tokenizer, position):
    model = tiny_model(tokenizer, position=position, n_kv_heads=2).float()
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    static = StaticKVCache(2, 2, 2, 16, model.config.head_dim)
    concatenating = KVCache(2)
    for start, end in [(0, 7), (7, 8), (8, 9), (9, 12)]:
        chunk = ids[:, start:end]
        torch.testing.assert_close(model(chunk, kv_cache=static)[0], model(chunk, kv_cache=concatenating)[0],
                                   rtol=1e-6, atol=1e-6)
    assert static.length == concatenating.length == 12


def test_static_cache_keep_rows_drops_the_others():
    cache = StaticKVCache(1, 3, 1, 4, 2)
    k = torch.arange(3.0)[:, None, None, None].expand(3, 1, 2, 2).contiguous()
    cache.update(0, k, k)
    cache.keep_rows(torch.tensor([2, 0]))
    assert cache.keys[0, :, 0, 0, 0].tolist() == [2.0, 0.0] and cache.length == 2
    assert cache.update(0, k[:2, :, :1], k[:2, :, :1])[0].shape == (2, 1, 3, 2)


# ---------------------------------------------------------------------------------- against plain decoding


@pytest.mark.parametrize("overrides", [
    dict(position="learned"), dict(position="learned", n_kv_heads=2), dict(position="sinusoidal", n_kv_heads=1),
    dict(position="rope"), dict(position="rope", n_kv_heads=1),
], ids=["learned-MHA", "learned-GQA", "sinusoidal-MQA", "rope-MHA", "rope-MQA"])
def test_cached_greedy_equals_uncached_greedy(tokenizer, overrides):
    model = tiny_model(tokenizer, **overrides)
    [completion] = generate(model, tokenizer, [PROMPTS[0]], 20, GREEDY)
    assert completion.token_ids == uncached_greedy(model, tokenizer, PROMPTS[0], 20)
    assert completion.prompt_tokens == 1 + len(tokenizer.encode_ordinary(PROMPTS[0]))


SETTINGS = {
    "greedy": GREEDY,
    "sampled": SamplingSettings(temperature=1.2, top_p=0.95),
    "penalised": SamplingSettings(temperature=0.9, top_k=50, repetition_penalty=1.3),
}


@pytest.mark.parametrize("position", ["learned", "rope"])
@pytest.mark.parametrize("name", SETTINGS)
def test_a_left_padded_batch_equals_each_prompt_alone(tokenizer, position, name):
    """Prompt i in a batch with seed s writes what it writes alone with seed s + i."""
    model = tiny_model(tokenizer, position=position, n_kv_heads=2)
    batch = generate(model, tokenizer, PROMPTS, 12, SETTINGS[name], seed=7)
    alone = [generate(model, tokenizer, [prompt], 12, SETTINGS[name], seed=7 + i)[0]
             for i, prompt in enumerate(PROMPTS)]
    assert batch == alone
    if name == "greedy":
        assert [c.token_ids for c in batch] == [uncached_greedy(model, tokenizer, p, 12) for p in PROMPTS]


@pytest.mark.parametrize("position", ["learned", "rope"])
def test_rows_that_stop_early_leave_the_batch_and_the_others_go_on_unchanged(tokenizer, position):
    """The stop "e" ends the rows at different steps; each finished row leaves the batch (and the
    cache) while the others carry on as if they were alone."""
    model = tiny_model(tokenizer, position=position)
    settings = SamplingSettings(temperature=1.0)
    batch = generate(model, tokenizer, PROMPTS, 16, settings, stop=["e"], seed=3)
    alone = [generate(model, tokenizer, [prompt], 16, settings, stop=["e"], seed=3 + i)[0]
             for i, prompt in enumerate(PROMPTS)]
    assert batch == alone
    lengths = [len(c.token_ids) for c in batch]
    assert len(set(lengths)) == 3 and max(lengths) > 3, f"pick a seed that ends rows at different steps: {lengths}"


def test_same_seed_same_text_and_another_seed_another(tokenizer):
    model = tiny_model(tokenizer)
    settings = SamplingSettings(temperature=1.0)
    first = generate(model, tokenizer, PROMPTS, 16, settings, seed=11)
    assert generate(model, tokenizer, PROMPTS, 16, settings, seed=11) == first
    assert generate(model, tokenizer, PROMPTS, 16, settings, seed=12) != first


def test_generation_restores_training_mode(tokenizer):
    model = tiny_model(tokenizer).train()
    generate(model, tokenizer, ["a"], 3, GREEDY)
    assert model.training
    assert "".join(stream(model, tokenizer, "a", 3, GREEDY)) == generate(model.eval(), tokenizer, ["a"], 3, GREEDY)[0].text


# ---------------------------------------------------------------------------------- context and arguments


def test_a_prompt_longer_than_the_context_is_a_clear_error(tokenizer):
    model = tiny_model(tokenizer, block_size=16)
    long_prompt = "a b c d e f g h i j k l m n o p q r"
    with pytest.raises(ValueError, match=r"a prompt of \d+ tokens .* exceed the model's block_size=16; shorten the prompt"):
        generate(model, tokenizer, ["x", long_prompt], 4)
    with pytest.raises(ValueError, match="exceed the model's block_size=16; ask for at most 14 new tokens"):
        generate(model, tokenizer, ["x"], 15)  # the end-of-text token and x: 2 tokens
    assert len(generate(model, tokenizer, ["x"], 14, GREEDY)[0].token_ids) <= 14


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompts="hello"), "prompts must be a non-empty list of strings.*pass \\[prompt\\]"),
    (dict(prompts=[]), "prompts must be a non-empty list"),
    (dict(stop="."), "stop must be a list of non-empty strings"),
    (dict(stop=[""]), "stop must be a list of non-empty strings"),
    (dict(max_new_tokens=0), "max_new_tokens=0 must be an integer >= 1"),
    (dict(seed=-1), "seed=-1 must be an integer >= 0"),
])
def test_bad_arguments_are_explained(tokenizer, kwargs, message):
    arguments = dict(prompts=["a"], max_new_tokens=4, stop=(), seed=None) | kwargs
    with pytest.raises(ValueError, match=message):
        generate(tiny_model(tokenizer), tokenizer, arguments.pop("prompts"), **arguments)


# ---------------------------------------------------------------------------------- a scripted model


class ChainModel(nn.Module):
    """Writes a known text: the next token is `chain[last token]` (certain), so a row's output
    depends only on the last token of its prompt. It uses no cache; what is tested is the engine."""

    def __init__(self, tokenizer: Tokenizer, chain: dict[int, int]) -> None:
        super().__init__()
        self.config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=1, n_head=1, n_embd=2)
        table = torch.arange(tokenizer.vocab_size)  # any other token repeats itself
        for token, following in chain.items():
            table[token] = following
        self.register_buffer("table", table)
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, ids, targets=None, kv_cache=None, *, positions=None, attention_mask=None):
        logits = torch.nn.functional.one_hot(self.table[ids], self.config.vocab_size).float() * 20
        return logits, None


def byte_chain(tokenizer: Tokenizer, *texts: str) -> dict[int, int]:
    """A chain that continues the first byte of each text with its other bytes; the end-of-text
    token where a text ends with "|", else the text loops."""
    chain = {}
    for text in texts:
        data = text.rstrip("|").encode("utf-8")  # byte b is token b in a byte-level BPE
        assert all(tokenizer.token_bytes(b) == bytes([b]) for b in data)
        for here, following in zip(data, data[1:]):
            chain[here] = following
        chain[data[-1]] = tokenizer.special_tokens[ENDOFTEXT] if text.endswith("|") else data[0]
    return chain


@pytest.fixture(scope="module")
def chain_model(tokenizer) -> ChainModel:
    # prompt ending "A" -> "BCD" then end-of-text; "p" -> "qSTuv" looping; "x" -> "yz" looping;
    # "k" -> "l" + "é" in two byte tokens + "m" then end-of-text
    return ChainModel(tokenizer, byte_chain(tokenizer, "ABCD|", "pqSTuv", "xyz", "klém|"))


def test_each_row_stops_on_its_own(tokenizer, chain_model):
    rows = generate(chain_model, tokenizer, ["A", "p", "x", "k"], 7, GREEDY, stop=["Tu"])
    assert [(row.text, row.finish_reason) for row in rows] == [
        ("BCD", "eos"), ("qS", "stop"), ("yzxyzxy", "length"), ("lém", "eos")]
    eot = tokenizer.special_tokens[ENDOFTEXT]
    assert rows[0].token_ids == [ord("B"), ord("C"), ord("D"), eot]
    assert rows[1].token_ids == [ord(c) for c in "qSTu"]  # the stop spans the tokens "T" and "u"
    assert [row.prompt_tokens for row in rows] == [2, 2, 2, 2]
    assert all(isinstance(row, Completion) for row in rows)


def test_the_earliest_of_several_stops_ends_the_row(tokenizer, chain_model):
    [row] = generate(chain_model, tokenizer, ["p"], 12, GREEDY, stop=["vp", "uv"])
    assert (row.text, row.finish_reason) == ("qST", "stop")


@pytest.mark.parametrize("prompt, stop", [("p", ["Tu"]), ("p", ["TX", "ST"]), ("p", ["STv"]), ("k", ["é"]),
                                          ("k", []), ("x", ["zq"])])
def test_stream_joins_into_the_text_and_never_shows_a_stop(tokenizer, chain_model, prompt, stop):
    pieces = list(stream(chain_model, tokenizer, prompt, 9, GREEDY, stop=stop))
    [row] = generate(chain_model, tokenizer, [prompt], 9, GREEDY, stop=stop)
    assert "".join(pieces) == row.text
    assert all(pieces) and not any("\ufffd" in piece for piece in pieces)  # no half character shown


def test_stream_holds_back_a_possible_stop_until_it_is_settled(tokenizer, chain_model):
    """"S" could start "SX": it waits, and comes out with "T" once "ST" cannot be "SX"."""
    pieces = list(stream(chain_model, tokenizer, "p", 5, GREEDY, stop=["SX"]))
    assert pieces == ["q", "ST", "u", "v"]
    pieces = list(stream(chain_model, tokenizer, "k", 5, GREEDY))
    assert pieces == ["l", "é", "m"]  # the two bytes of é come out together


def test_stream_of_a_real_model_equals_generate(tokenizer):
    model = tiny_model(tokenizer, position="rope")
    settings = SamplingSettings(temperature=1.0)
    pieces = list(stream(model, tokenizer, PROMPTS[2], 20, settings, stop=["e "], seed=5))
    assert "".join(pieces) == generate(model, tokenizer, [PROMPTS[2]], 20, settings, stop=["e "], seed=5)[0].text
