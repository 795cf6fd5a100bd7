"""The embedding explorer of chapter 03 and its drawing functions, driven without a kernel.

The explorer is checked against neighbours computed independently (a double loop of dot products
over normalised rows), PCA against numpy's own SVD, and the figures against the data they draw.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from llmcourse.widgets.embeddings import (
    EmbeddingExplorer, categorised_words, embedding_explorer, pca_2d, projection_figure, similarity_heatmap,
)

VOCAB = ["the", "a", "fox", "owl", "cat", "Vel", "Kor", "Ost", "honey", "nuts", "."]
CATEGORIES = {"animal": ["fox", "owl", "cat"], "country": ["Vel", "Kor", "Ost", "Atlantis"], "food": ["honey", "nuts"]}


def clustered_table(seed: int = 0) -> torch.Tensor:
    """A (V, 8) table whose rows for each category lie near one shared direction."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 8, generator=generator) * 3
    group = {"fox": 0, "owl": 0, "cat": 0, "Vel": 1, "Kor": 1, "Ost": 1, "honey": 2, "nuts": 2}
    rows = [centres[group.get(w, 3)] + torch.randn(8, generator=generator) * 0.3 for w in VOCAB]
    return torch.stack(rows)


def brute_force_neighbours(table: torch.Tensor, query: int, k: int) -> list[tuple[int, float]]:
    scores = []
    for i in range(table.shape[0]):
        if i == query:
            continue
        a, b = table[query].double(), table[i].double()
        scores.append((i, float(a @ b / (a.norm() * b.norm()))))
    return sorted(scores, key=lambda pair: -pair[1])[:k]


def test_explorer_lists_the_brute_force_nearest_neighbours():
    table = clustered_table()
    explorer = embedding_explorer(table, VOCAB, CATEGORIES, word="fox", k=3)
    assert isinstance(explorer, EmbeddingExplorer)
    expected = brute_force_neighbours(table, VOCAB.index("fox"), 3)
    assert [w for w, _ in explorer.neighbours] == [VOCAB[i] for i, _ in expected]
    assert [v for _, v in explorer.neighbours] == pytest.approx([v for _, v in expected], abs=1e-5)
    assert {w for w, _ in explorer.neighbours[:2]} == {"owl", "cat"}  # the other animals come first
    assert "owl" in explorer.message and "cat" in explorer.message
    assert bytes(explorer.chart.value).startswith(b"\x89PNG")


def test_explorer_reacts_to_a_new_word_and_k():
    table = clustered_table(1)
    explorer = embedding_explorer(table, VOCAB, CATEGORIES, word="fox", k=2)
    before = bytes(explorer.chart.value)
    explorer.word.value = "Kor"
    assert {w for w, _ in explorer.neighbours} == {"Vel", "Ost"}
    assert "Kor" in explorer.figure.axes[0].get_title()
    assert bytes(explorer.chart.value) != before
    explorer.k.value = 5
    expected = brute_force_neighbours(table, VOCAB.index("Kor"), 5)
    assert [w for w, _ in explorer.neighbours] == [VOCAB[i] for i, _ in expected]


def test_explorer_marks_the_query_and_the_plotted_neighbours():
    explorer = embedding_explorer(clustered_table(), VOCAB, CATEGORIES, word="honey", k=1)
    ax = explorer.figure.axes[0]
    labels = {text.get_text() for text in ax.texts}
    assert labels == {"honey", "nuts"}
    # 3 category scatters + 1 ring for the neighbour + 1 star for the query
    assert len(ax.collections) == 5


def test_explorer_accepts_a_word_outside_the_categories_and_says_so():
    explorer = embedding_explorer(clustered_table(), VOCAB, CATEGORIES, word="fox")
    explorer.word.value = "the"
    assert "not one of the plotted categories" in explorer.message
    assert len(explorer.neighbours) == explorer.k.value
    assert "the" not in [w for w, _ in explorer.neighbours]


def test_explorer_rejects_a_table_that_does_not_match_the_vocabulary():
    with pytest.raises(ValueError, match="one row per word"):
        embedding_explorer(torch.randn(3, 4), VOCAB, CATEGORIES)


def test_categorised_words_skips_unknown_words_and_keeps_order():
    stoi = {w: i for i, w in enumerate(VOCAB)}
    words, labels = categorised_words(CATEGORIES, stoi)
    assert "Atlantis" not in words
    assert words[:4] == ["fox", "owl", "cat", "Vel"]
    assert labels == ["animal"] * 3 + ["country"] * 3 + ["food"] * 2
    with pytest.raises(ValueError, match="fewer than 2"):
        categorised_words({"x": ["Atlantis"]}, stoi)


def test_pca_matches_numpy_svd_up_to_sign_and_fixes_the_sign():
    generator = torch.Generator().manual_seed(3)
    vectors = torch.randn(30, 6, generator=generator) * torch.tensor([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    points = pca_2d(vectors).numpy()
    centred = vectors.double().numpy() - vectors.double().numpy().mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    reference = centred @ vt[:2].T
    for axis in range(2):
        assert np.allclose(np.abs(points[:, axis]), np.abs(reference[:, axis]), atol=1e-8)
        assert points[np.abs(points[:, axis]).argmax(), axis] > 0
    assert points[:, 0].var() >= points[:, 1].var()
    assert torch.equal(pca_2d(-vectors), pca_2d(vectors))  # the sign rule makes it deterministic
    with pytest.raises(ValueError, match="at least 2"):
        pca_2d(torch.randn(1, 5))


def test_projection_figure_draws_each_category_and_rejects_mismatched_input():
    points = torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5]])
    fig = projection_figure(points, ["a", "b", "c"], ["x", "y", "x"], label_every=True)
    ax = fig.axes[0]
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["x", "y"]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), [[0.0, 0.0], [2.0, 0.5]])
    assert {text.get_text() for text in ax.texts} == {"a", "b", "c"}
    with pytest.raises(ValueError, match="one word and one category"):
        projection_figure(points, ["a", "b"], ["x", "y"])


def test_similarity_heatmap_shows_the_cosine_matrix():
    table = clustered_table()
    stoi = {w: i for i, w in enumerate(VOCAB)}
    words = ["fox", "owl", "Vel"]
    fig = similarity_heatmap(table, words, stoi)
    drawn = np.asarray(fig.axes[0].images[0].get_array())
    rows = table[[stoi[w] for w in words]].double()
    rows = rows / rows.norm(dim=1, keepdim=True)
    np.testing.assert_allclose(drawn, (rows @ rows.T).numpy(), atol=1e-5)
    assert drawn[0, 1] > drawn[0, 2]  # the two animals are closer than animal and country
    with pytest.raises(ValueError, match="'unicorn'"):
        similarity_heatmap(table, ["fox", "unicorn"], stoi)
