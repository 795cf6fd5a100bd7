"""Chapter 03: turning token ids into vectors, and measuring what the vectors say.

A token id is just a row number. The model gives every id a trainable vector of C numbers, the
rows of a `(V, C)` matrix, and the first layer simply looks the rows up. Looking up row i is the
same as multiplying the one-hot vector of i (V zeros with a single 1) by the matrix, so an
embedding is an ordinary linear layer applied to one-hot inputs, minus the wasted multiplications
by zero. Gradients reach only the rows that were looked up.

Training moves tokens that are used alike towards the same direction, so directions carry meaning:
cosine similarity (the angle between two vectors, ignoring their lengths) finds a token's nearest
neighbours, and differences of vectors can encode relations, as in the famous
king - man + woman ~ queen (Mikolov et al. 2013, "Linguistic Regularities in Continuous Space Word
Representations").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.checks import ArgumentError, check_id_range, check_int, check_real, check_shape

__all__ = [
    "TokenEmbedding",
    "one_hot_embed",
    "cosine_similarity",
    "Neighbours",
    "nearest_neighbours",
    "analogy",
]

# Said by every range check on token ids: an id past the table means the two vocabularies differ.
_SAME_VOCABULARY = "the tokenizer and the embedding table must agree on the vocabulary size"


class TokenEmbedding(nn.Module):
    """A table of one trainable vector per token: `.weight` `(V, C)`; forward is a row lookup."""

    def __init__(self, vocab_size: int, n_embd: int):
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size, 1)
        self.n_embd = check_int("n_embd", n_embd, 1, hint="the length C of each token's vector")
        # Normal(0, 0.02) as in GPT-2: small random rows, so tokens start out unrelated
        # (random directions in high dimension are nearly orthogonal) and no row dominates.
        self.weight = nn.Parameter(torch.randn(self.vocab_size, self.n_embd) * 0.02)

    def forward(self, ids: Tensor) -> Tensor:
        """Token vectors: ids `(B, T)` (or any shape of integers) -> `(B, T, C)`, row ids[b, t] of the table."""
        check_id_range("ids", ids, self.vocab_size, hint=_SAME_VOCABULARY)
        return F.embedding(ids, self.weight)

    def extra_repr(self) -> str:
        return f"vocab_size={self.vocab_size}, n_embd={self.n_embd}"


def one_hot_embed(ids: Tensor, weight: Tensor) -> Tensor:
    """The lookup written as a matrix product: one_hot(ids) `(..., V)` @ weight `(V, C)` -> `(..., C)`.

    Gives the same values and gradients as `weight[ids]`, at the cost of V multiply-adds per number
    instead of a copy: this is why real models look rows up instead.
    """
    check_shape("weight", weight, ("V", "C"), hint="one row of C numbers per token")
    check_id_range("ids", ids, weight.shape[0], hint=_SAME_VOCABULARY)
    return F.one_hot(ids.long(), weight.shape[0]).to(weight.dtype) @ weight


def cosine_similarity(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine of the angle between vectors along the last dimension: `(..., C)`, `(..., C)` -> `(...)`.

        cos(a, b) = a . b / (max(|a|, eps) * max(|b|, eps))

    1 for the same direction, 0 for orthogonal, -1 for opposite; the leading shapes broadcast, so
    `(Q, 1, C)` against `(V, C)` gives all `(Q, V)` pairs. A zero vector has similarity 0 to
    everything (eps keeps the division finite) instead of nan.
    """
    check_shape("a", a, (..., "C"))
    check_shape("b", b, (..., a.shape[-1]), hint=f"the same last dimension C as a {tuple(a.shape)}")
    check_real("eps", eps, above=0, hint="a small length, such as 1e-8, that keeps the division finite")
    return (_unit(a, eps) * _unit(b, eps)).sum(dim=-1)


class Neighbours(NamedTuple):
    """The k best matches, best first: `values` (cosine similarities) and `indices` (token ids)."""

    values: Tensor
    indices: Tensor


def nearest_neighbours(
    query: Tensor,
    table: Tensor,
    k: int,
    exclude: int | Sequence[int] | Tensor | None = None,
    eps: float = 1e-8,
) -> Neighbours:
    """The k rows of `table` most similar (by cosine) to each query: `(values, indices)`.

    Shapes: query `(C,)` or `(Q, C)`, table `(V, C)` -> values, indices `(k,)` or `(Q, k)`, best
    first. `exclude` removes ids from the candidates, typically the query's own id: an id or list
    of ids `(n,)` applies to every query, a `(Q, n)` tensor gives each query its own ids.
    """
    check_shape("table", table, ("V", "C"), hint="one row of C numbers per token")
    _check_query(query, table)
    vocab_size = table.shape[0]
    check_int("k", k, 1, below=vocab_size + 1, hint=f"the table has V={vocab_size} rows to choose from")
    check_real("eps", eps, above=0, hint="a small length, such as 1e-8, that keeps the division finite")
    queries = query.unsqueeze(0) if query.dim() == 1 else query  # (Q, C)
    # Normalise once and take every query-row cosine with one matrix product: (Q, C) @ (C, V).
    similarity = _unit(queries, eps) @ _unit(table, eps).T  # (Q, V)
    if exclude is not None:
        excluded = _exclusion_mask(exclude, queries.shape[0], vocab_size, similarity.device)
        candidates_left = vocab_size - int(excluded.sum(dim=1).max())
        if k > candidates_left:
            raise ArgumentError(f"k={k} but only {candidates_left} of V={vocab_size} ids are left after "
                             f"the exclusions; ask for fewer neighbours")
        similarity = similarity.masked_fill(excluded, float("-inf"))
    values, indices = similarity.topk(k, dim=-1)
    if query.dim() == 1:
        values, indices = values[0], indices[0]
    return Neighbours(values, indices)


def analogy(
    a: int | Tensor,
    b: int | Tensor,
    c: int | Tensor,
    table: Tensor,
    k: int = 1,
) -> Neighbours:
    """"a is to b as c is to ?": the k ids nearest to table[b] - table[a] + table[c].

    The offset b - a captures the relation (man -> king); adding it to c (woman) should land near
    the answer (queen). a, b and c themselves are excluded, as the word2vec analogy benchmark of
    Mikolov et al. (2013) does, since the target is usually still closest to b or c. Ids are ints (-> values, indices `(k,)`) or
    LongTensors `(N,)` for N analogies at once (-> `(N, k)`).
    """
    columns = [torch.as_tensor(i, device=table.device) for i in (a, b, c)]
    ids = torch.stack(torch.broadcast_tensors(*columns), dim=-1)  # (3,) or (N, 3): a, b, c side by side
    check_id_range("a, b, c", ids, table.shape[0], hint=_SAME_VOCABULARY)
    a_ids, b_ids, c_ids = ids.unbind(dim=-1)
    target = table[b_ids] - table[a_ids] + table[c_ids]  # (C,) or (N, C)
    return nearest_neighbours(target, table, k, exclude=ids)


# ------------------------------------------------------------------ helpers


def _unit(x: Tensor, eps: float) -> Tensor:
    """x scaled to length 1 along the last dimension (a zero vector stays zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def _exclusion_mask(exclude: int | Sequence[int] | Tensor, n_queries: int, vocab_size: int,
                    device: torch.device) -> Tensor:
    """Boolean `(Q, V)`, True at the ids each query must not return."""
    ids = torch.as_tensor(exclude, device=device)
    if ids.numel() == 0:
        return torch.zeros(n_queries, vocab_size, dtype=torch.bool, device=device)
    if ids.dim() == 2 and ids.shape[0] == n_queries:
        per_query = ids  # (Q, n): each query its own ids
    elif ids.dim() <= 1:
        per_query = ids.reshape(1, -1).expand(n_queries, -1)  # the same ids for every query
    else:
        raise ArgumentError(f"exclude must be an id, a list of ids (n,) or a tensor (Q={n_queries}, n), "
                            f"got shape {tuple(ids.shape)}")
    check_id_range("exclude", per_query, vocab_size, hint=_SAME_VOCABULARY)
    mask = torch.zeros(n_queries, vocab_size, dtype=torch.bool, device=device)
    return mask.scatter_(1, per_query.long(), True)


def _check_query(query: Tensor, table: Tensor) -> None:
    """Raise a clear error unless `query` is one vector `(C,)` or a batch `(Q, C)` of the table's C."""
    check_shape("query", query, (..., table.shape[1]), hint=f"vectors of the table's C={table.shape[1]}")
    if query.dim() > 2:
        raise ArgumentError(f"query must be one vector (C,) or a batch (Q, C), got shape {tuple(query.shape)}; "
                            "flatten the leading dimensions with query.reshape(-1, C)")
