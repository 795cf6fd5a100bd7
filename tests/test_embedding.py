"""llmcourse.embedding against torch.nn.Embedding, one-hot products, torch's cosine similarity, a
brute-force neighbour search, and a hand-built table whose analogies are known."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from llmcourse.embedding import (
    Neighbours,
    TokenEmbedding,
    analogy,
    cosine_similarity,
    nearest_neighbours,
    one_hot_embed,
)


def randn(*shape, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def random_ids(shape, vocab_size: int, seed: int) -> torch.Tensor:
    return torch.randint(vocab_size, shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- lookup


@pytest.mark.parametrize("shape", [(5,), (2, 7), (3, 2, 4)])
def test_one_hot_product_equals_lookup_values_and_gradients(shape):
    vocab_size, n_embd = 11, 6
    ids = random_ids(shape, vocab_size, seed=len(shape))
    weight_a = randn(vocab_size, n_embd, seed=1, dtype=torch.float64).requires_grad_()
    weight_b = weight_a.detach().clone().requires_grad_()
    via_one_hot = one_hot_embed(ids, weight_a)
    via_lookup = weight_b[ids]
    assert via_one_hot.shape == (*shape, n_embd)
    torch.testing.assert_close(via_one_hot, via_lookup)
    upstream = randn(*shape, n_embd, seed=2, dtype=torch.float64)
    (via_one_hot * upstream).sum().backward()
    (via_lookup * upstream).sum().backward()
    torch.testing.assert_close(weight_a.grad, weight_b.grad)
    # Rows never looked up get no gradient at all.
    unused = torch.ones(vocab_size, dtype=torch.bool)
    unused[ids.reshape(-1)] = False
    assert torch.all(weight_a.grad[unused] == 0)


def test_token_embedding_equals_torch_embedding():
    torch.manual_seed(0)
    ours = TokenEmbedding(vocab_size=50, n_embd=8)
    reference = torch.nn.Embedding(50, 8)
    with torch.no_grad():
        reference.weight.copy_(ours.weight)
    ids = random_ids((4, 9), 50, seed=3)
    out = ours(ids)
    assert out.shape == (4, 9, 8)
    torch.testing.assert_close(out, reference(ids))
    upstream = randn(4, 9, 8, seed=4)
    (out * upstream).sum().backward()
    (reference(ids) * upstream).sum().backward()
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad)
    assert list(ours.state_dict()) == ["weight"] and ours.weight.shape == (50, 8)
    assert 0.015 < ours.weight.std().item() < 0.025  # GPT-2's Normal(0, 0.02) initialisation


def test_token_embedding_rejects_bad_ids():
    embedding = TokenEmbedding(10, 4)
    with pytest.raises(ValueError, match=r"ids: 10 at index \(0, 1\) is outside \[0, 10\); the tokenizer"):
        embedding(torch.tensor([[1, 10]]))
    with pytest.raises(ValueError, match="ids: -1 at index 0"):
        embedding(torch.tensor([-1]))
    with pytest.raises(TypeError, match=r"ids must hold integers.*\.long\(\)"):
        embedding(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="vocab_size=0 must be an integer >= 1"):
        TokenEmbedding(0, 4)
    with pytest.raises(ValueError, match="ids: 3 at index 0"):
        one_hot_embed(torch.tensor([3]), torch.zeros(3, 2))


# ---------------------------------------------------------------- cosine similarity


@pytest.mark.parametrize("shape_a, shape_b", [((7,), (7,)), ((4, 7), (4, 7)), ((3, 1, 7), (5, 7)), ((2, 1, 7), (1, 6, 7))])
def test_cosine_similarity_matches_torch_with_broadcasting(shape_a, shape_b):
    a = randn(*shape_a, seed=5, dtype=torch.float64).requires_grad_()
    b = randn(*shape_b, seed=6, dtype=torch.float64).requires_grad_()
    ours = cosine_similarity(a, b)
    expected = F.cosine_similarity(a, b, dim=-1)
    assert ours.shape == expected.shape == torch.broadcast_shapes(shape_a[:-1], shape_b[:-1])
    torch.testing.assert_close(ours, expected)
    grads = torch.autograd.grad(ours.sum(), (a, b))
    expected_grads = torch.autograd.grad(expected.sum(), (a, b))
    for ours_grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(ours_grad, expected_grad)


def test_cosine_similarity_known_values_and_scale_invariance():
    x = torch.tensor([3.0, 4.0])
    candidates = torch.stack([x, -x, torch.tensor([-4.0, 3.0]), 10 * x])
    torch.testing.assert_close(cosine_similarity(x, candidates), torch.tensor([1.0, -1.0, 0.0, 1.0]))


def test_cosine_similarity_of_zero_vectors_is_zero_not_nan():
    zero = torch.zeros(3, requires_grad=True)
    others = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    similarity = cosine_similarity(zero, others)
    assert torch.equal(similarity, torch.zeros(2))
    torch.testing.assert_close(similarity, F.cosine_similarity(zero, others, dim=-1))
    similarity.sum().backward()
    assert torch.isfinite(zero.grad).all()
    with pytest.raises(ValueError, match=r"b must be a tensor of shape \(\.\.\., 3\), got shape \(4,\) \(the same last dimension"):
        cosine_similarity(torch.zeros(3), torch.zeros(4))


# ---------------------------------------------------------------- nearest neighbours


def brute_force_neighbours(query: torch.Tensor, table: torch.Tensor, k: int, exclude=()) -> list[int]:
    similarities = [F.cosine_similarity(query, row, dim=0).item() for row in table]
    ranked = sorted((i for i in range(len(table)) if i not in exclude), key=lambda i: -similarities[i])
    return ranked[:k]


@given(n_queries=st.integers(1, 4), vocab_size=st.integers(1, 30), data=st.data(), seed=st.integers(0, 2**31))
def test_nearest_neighbours_match_brute_force(n_queries, vocab_size, data, seed):
    k = data.draw(st.integers(1, vocab_size), label="k")
    table, queries = randn(vocab_size, 5, seed=seed), randn(n_queries, 5, seed=seed + 1)
    values, indices = nearest_neighbours(queries, table, k)
    assert values.shape == indices.shape == (n_queries, k)
    for query, row_values, row_indices in zip(queries, values, indices):
        assert row_indices.tolist() == brute_force_neighbours(query, table, k)
        torch.testing.assert_close(row_values, cosine_similarity(query, table[row_indices]))
    assert torch.all(values[:, :-1] >= values[:, 1:])  # best first


def test_nearest_neighbours_single_query_and_exclusion():
    table = randn(20, 6, seed=7)
    result = nearest_neighbours(table[3], table, k=4)
    assert isinstance(result, Neighbours) and result.indices.shape == (4,)
    assert result.indices[0] == 3 and result.values[0] == pytest.approx(1.0)  # a row is its own best match
    without_self = nearest_neighbours(table[3], table, k=4, exclude=3)
    assert without_self.indices.tolist() == brute_force_neighbours(table[3], table, 4, exclude={3})
    # A list applies to every query; a (Q, n) tensor gives each query its own exclusions.
    queries = table[[3, 8]]
    shared = nearest_neighbours(queries, table, k=3, exclude=[3, 8])
    per_query = nearest_neighbours(queries, table, k=3, exclude=torch.tensor([[3], [8]]))
    for row, query in enumerate(queries):
        assert shared.indices[row].tolist() == brute_force_neighbours(query, table, 3, exclude={3, 8})
        assert per_query.indices[row].tolist() == brute_force_neighbours(query, table, 3, exclude={[3, 8][row]})
    assert nearest_neighbours(queries, table, k=2, exclude=[]).indices[:, 0].tolist() == [3, 8]


def test_nearest_neighbours_errors():
    table = randn(5, 3, seed=8)
    with pytest.raises(ValueError, match=r"k=6 must be an integer in \[1, 6\) \(the table has V=5 rows"):
        nearest_neighbours(table[0], table, k=6)
    with pytest.raises(ValueError, match=r"k=4 but only 3 of V=5 ids are left"):
        nearest_neighbours(table[0], table, k=4, exclude=[0, 1])
    with pytest.raises(ValueError, match=r"k=0 must be an integer in \[1, 6\)"):
        nearest_neighbours(table[0], table, k=0)
    with pytest.raises(ValueError, match=r"query must be a tensor of shape \(\.\.\., 3\), got shape \(4,\)"):
        nearest_neighbours(torch.zeros(4), table, k=1)
    with pytest.raises(ValueError, match="exclude: 7 at index"):
        nearest_neighbours(table[0], table, k=1, exclude=7)


# ---------------------------------------------------------------- analogies

WORDS = ["man", "woman", "king", "queen", "prince", "princess", "apple"]
ID = {word: i for i, word in enumerate(WORDS)}
# Hand-built 3-D vectors: (royal, male, female). king - man + woman = (1, 0, 1) = queen exactly.
TABLE = torch.tensor([
    [0.0, 1.0, 0.0],  # man
    [0.0, 0.0, 1.0],  # woman
    [1.0, 1.0, 0.0],  # king
    [1.0, 0.0, 1.0],  # queen
    [0.9, 1.0, 0.1],  # prince
    [0.9, 0.1, 1.0],  # princess
    [0.1, 0.1, 0.1],  # apple
])


def test_analogy_on_a_hand_built_table():
    values, indices = analogy(ID["man"], ID["king"], ID["woman"], TABLE)
    assert indices.tolist() == [ID["queen"]] and values.tolist() == pytest.approx([1.0])
    top2 = analogy(ID["man"], ID["king"], ID["woman"], TABLE, k=2)
    assert top2.indices.tolist() == [ID["queen"], ID["princess"]]
    # Several analogies at once: woman -> queen as man -> ?, and king -> queen as prince -> ?
    batch = analogy(torch.tensor([ID["woman"], ID["king"]]), torch.tensor([ID["queen"], ID["queen"]]),
                    torch.tensor([ID["man"], ID["prince"]]), TABLE)
    assert batch.indices.shape == (2, 1)
    assert batch.indices[:, 0].tolist() == [ID["king"], ID["princess"]]


def test_analogy_excludes_its_own_words():
    # man : man :: woman : ? points exactly at woman, which is excluded, so the answer is the
    # next best (queen or princess, both mostly female), never one of the three inputs.
    values, indices = analogy(ID["man"], ID["man"], ID["woman"], TABLE, k=4)
    assert not {ID["man"], ID["woman"]} & set(indices.tolist())
    assert indices[0] in (ID["queen"], ID["princess"])
    expected = brute_force_neighbours(TABLE[ID["woman"]], TABLE, 4, exclude={ID["man"], ID["woman"]})
    assert indices.tolist() == expected
    with pytest.raises(ValueError, match=r"a, b, c: 9 at index 2 is outside \[0, 7\)"):
        analogy(0, 1, 9, TABLE)
