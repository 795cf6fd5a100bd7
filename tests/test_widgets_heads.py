"""The attention-head explorer of chapter 06 (`llmcourse.widgets.heads`).

The recorded maps are checked against attention recomputed by hand from the layer's own
projections; the scores against their definition on maps built to have a known answer; the
explorer is driven by setting its controls' values, as a learner would.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch

from llmcourse.attention import attention_fast, repeat_kv, split_heads
from llmcourse.data.chars import CharVocab
from llmcourse.model import GPT, GPTConfig
from llmcourse.widgets.heads import (
    HeadExplorer,
    attention_maps,
    head_explorer,
    head_grid,
    head_heatmap,
    head_scores,
    kv_sharing_diagram,
    token_labels,
)

VOCAB = CharVocab("abcdefghijklmnopqrstuvwxyz .,")


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=VOCAB.size, block_size=32, n_layer=2, n_head=4, n_embd=32, n_kv_heads=2)
    return GPT(config).eval()


def test_maps_equal_attention_recomputed_from_the_first_layer(model):
    ids = VOCAB.encode("the cat sat.")
    maps = attention_maps(model, ids)
    assert maps.shape == (2, 4, len(ids), len(ids))
    torch.testing.assert_close(maps.sum(dim=-1), torch.ones(2, 4, len(ids)))
    assert (maps.triu(diagonal=1) == 0).all(), "a causal map has no weight above the diagonal"

    block = model.blocks[0]
    with torch.no_grad():
        x = block.norm1(model.tok_emb(ids[None]) + model.pos_emb(torch.arange(len(ids))))
        attn = block.attn
        q = split_heads(attn.q_proj(x), 4)
        k = repeat_kv(split_heads(attn.k_proj(x), 2), 2)
        scores = q @ k.transpose(-2, -1) / attn.head_dim**0.5
        scores = scores.masked_fill(torch.ones(len(ids), len(ids)).triu(1).bool(), float("-inf"))
    torch.testing.assert_close(maps[0], scores.softmax(dim=-1)[0])


def test_recording_changes_neither_the_output_nor_the_model(model):
    ids = VOCAB.encode("a dog ran")[None]
    model.train()
    originals = [block.attn.attention_fn for block in model.blocks]
    with torch.no_grad():
        before = model.eval()(ids)[0]
    model.train()
    attention_maps(model, ids)
    assert model.training, "the train/eval mode is restored"
    assert [block.attn.attention_fn for block in model.blocks] == originals
    assert originals[0] is attention_fast
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(ids)[0], before)


def test_maps_reject_a_batch_and_a_model_without_attention(model):
    with pytest.raises(ValueError, match="one sequence"):
        attention_maps(model, torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="no CausalSelfAttention"):
        attention_maps(torch.nn.Linear(2, 2), torch.zeros(3, dtype=torch.long))


def test_scores_of_known_maps():
    t = 6
    previous = torch.zeros(t, t)
    previous[0, 0] = 1
    previous[torch.arange(1, t), torch.arange(t - 1)] = 1
    first = torch.zeros(t, t)
    first[:, 0] = 1
    uniform = torch.tril(torch.ones(t, t)) / torch.arange(1, t + 1)[:, None]
    scores = head_scores(torch.stack([previous, first, uniform]))
    torch.testing.assert_close(scores["previous"], torch.tensor([1.0, 0.2, sum(1 / i for i in range(2, t + 1)) / (t - 1)]))
    # query 1 sees only tokens 0 and 1, so there "the previous token" and "the first token" coincide
    torch.testing.assert_close(scores["first"][:2], torch.tensor([0.2, 1.0]))
    torch.testing.assert_close(scores["self"][:2], torch.tensor([0.0, 0.0]))
    torch.testing.assert_close(scores["first"][2], scores["self"][2])
    with pytest.raises(ValueError, match="square"):
        head_scores(torch.ones(3, 4))


def test_token_labels_show_whitespace():
    assert token_labels(VOCAB, VOCAB.encode("a b")) == ["a", "␣", "b"]


def test_pictures_draw_the_data_and_leave_pyplot_alone(model):
    before = plt.get_fignums()
    ids = VOCAB.encode("hello there")
    maps = attention_maps(model, ids)
    labels = token_labels(VOCAB, ids)
    fig = head_heatmap(maps[1, 2], labels, title="layer 1, head 2")
    ax = fig.axes[0]
    torch.testing.assert_close(torch.as_tensor(ax.images[0].get_array().data), maps[1, 2])
    assert [t.get_text() for t in ax.get_xticklabels()] == labels
    assert ax.get_title() == "layer 1, head 2"

    grid = head_grid(maps, labels)
    assert len(grid.axes) == 2 * 4 + 1  # the panels and one colour bar
    torch.testing.assert_close(torch.as_tensor(grid.axes[5].images[0].get_array().data), maps[1, 1])

    diagram = kv_sharing_diagram(8, (8, 2, 1))
    titles = [ax.get_title() for ax in diagram.axes]
    assert titles[0].startswith("MHA") and titles[1].startswith("GQA") and titles[2].startswith("MQA")
    # one line per query head, each ending at its kv head's x position (query h -> kv h // group)
    gqa_lines = diagram.axes[1].lines
    assert len(gqa_lines) == 8
    assert [line.get_xdata()[1] for line in gqa_lines] == [1.5] * 4 + [5.5] * 4
    assert plt.get_fignums() == before
    with pytest.raises(ValueError, match="divide"):
        kv_sharing_diagram(8, (3,))


def test_explorer_follows_its_controls(model):
    sentences = ["the cat sat.", "a dog ran far"]
    explorer = head_explorer(model, VOCAB, sentences)
    assert isinstance(explorer, HeadExplorer)
    expected = attention_maps(model, VOCAB.encode(sentences[0]))
    torch.testing.assert_close(explorer.weights, expected[0, 0])
    assert explorer.figure is not None and bytes(explorer.chart.value).startswith(b"\x89PNG")

    explorer.layer.value, explorer.head.value = 1, 3
    torch.testing.assert_close(explorer.weights, expected[1, 3])
    assert explorer.scores["previous"] == pytest.approx(head_scores(expected[1, 3])["previous"].item())
    assert "previous token" in explorer.message

    explorer.sentence.value = sentences[1]
    torch.testing.assert_close(explorer.weights, attention_maps(model, VOCAB.encode(sentences[1]))[1, 3])
    assert explorer.labels == token_labels(VOCAB, VOCAB.encode(sentences[1]))


def test_explorer_explains_sentences_it_cannot_show(model):
    explorer = HeadExplorer(model, VOCAB, ["abc"], max_tokens=10)
    explorer.sentence.value = "ABC"  # not in the vocabulary
    assert explorer.weights is None and explorer.figure is None and "color: #b00" in explorer.message
    explorer.sentence.value = "a"
    assert "between 2 and 10" in explorer.message
    explorer.sentence.value = "abcdefghijklmnop"
    assert "16 tokens" in explorer.message
    explorer.sentence.value = "abc"  # back to a good one: the picture returns
    assert explorer.weights is not None and explorer.weights.shape == (3, 3)
    with pytest.raises(ValueError, match="at least one"):
        HeadExplorer(model, VOCAB, [])
