"""The embedding explorer of chapter 03: pick a word, see its nearest neighbours and where they sit.

The pictures are plain functions (`pca_2d`, `projection_figure`, `similarity_heatmap`), so the
page draws its static figures with the same code the explorer uses.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure

from llmcourse.embedding import cosine_similarity, nearest_neighbours
from llmcourse.plots import figure_to_png
from llmcourse.widgets.explorer import Explorer

# One colour per category, in the order the categories are given (matplotlib's qualitative "tab10").
CATEGORY_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
                   "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")


def pca_2d(vectors: torch.Tensor) -> torch.Tensor:
    """Project `(N, C)` vectors onto their two directions of largest variance -> `(N, 2)`.

    Principal component analysis: centre the points, and the top two right singular vectors of
    the centred matrix are the directions along which the points spread most. The sign of each
    axis is arbitrary (an SVD may flip it); we fix it so that the largest coordinate is positive,
    which keeps the picture the same from run to run.
    """
    if vectors.dim() != 2 or vectors.shape[0] < 2 or vectors.shape[1] < 2:
        raise ValueError(f"need at least 2 vectors of at least 2 numbers, (N, C), got {tuple(vectors.shape)}")
    centred = vectors.detach().double().cpu()
    centred = centred - centred.mean(dim=0)
    _, _, right = torch.linalg.svd(centred, full_matrices=False)  # rows of `right`: directions, by variance
    points = centred @ right[:2].T  # (N, 2)
    largest = points.abs().argmax(dim=0)
    signs = points[largest, torch.arange(2)].sign()
    return points * torch.where(signs == 0, 1.0, signs)


def categorised_words(categories: Mapping[str, Sequence[str]], stoi: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """Flatten `{category: words}` into parallel lists (word, category), keeping only known words."""
    words, labels = [], []
    for category, members in categories.items():
        for word in members:
            if word in stoi and word not in words:
                words.append(word)
                labels.append(category)
    if len(words) < 2:
        raise ValueError("fewer than 2 of the categorised words are in the vocabulary; check the categories")
    return words, labels


def projection_figure(
    points: torch.Tensor,
    words: Sequence[str],
    categories: Sequence[str],
    *,
    highlight: str | None = None,
    neighbours: Sequence[str] = (),
    label_every: bool = False,
    title: str = "Embeddings projected on their first two principal components",
) -> Figure:
    """Scatter `(N, 2)` points coloured by category; optionally ring a query word and its neighbours.

    Args:
        points: `(N, 2)` coordinates, e.g. from `pca_2d`.
        words: the N words, for labels.
        categories: the N category names, one per point (the legend lists them in first-seen order).
        highlight: a word drawn as a black star, labelled.
        neighbours: words ringed in black and labelled (its nearest neighbours).
        label_every: write every word next to its point (readable for a few dozen points).
    """
    points = torch.as_tensor(points).detach().double().cpu()
    if points.dim() != 2 or points.shape[1] != 2 or not len(words) == len(categories) == points.shape[0]:
        raise ValueError(f"need (N, 2) points with one word and one category each, got points "
                         f"{tuple(points.shape)}, {len(words)} words, {len(categories)} categories")
    fig = Figure(figsize=(7.2, 5.4), layout="constrained")
    ax = fig.add_subplot()
    order = list(dict.fromkeys(categories))
    for i, category in enumerate(order):
        rows = [j for j, c in enumerate(categories) if c == category]
        ax.scatter(points[rows, 0], points[rows, 1], s=22, alpha=0.75,
                   color=CATEGORY_COLORS[i % len(CATEGORY_COLORS)], label=category)
    index = {w: j for j, w in enumerate(words)}
    for word in neighbours:
        j = index[word]
        ax.scatter(points[j, 0], points[j, 1], s=110, facecolors="none", edgecolors="black", linewidths=1.4)
    if highlight is not None:
        j = index[highlight]
        ax.scatter(points[j, 0], points[j, 1], s=260, marker="*", color="black", zorder=3)
    labelled = words if label_every else [w for w in (*neighbours, highlight) if w is not None]
    for word in labelled:
        j = index[word]
        ax.annotate(word, (points[j, 0], points[j, 1]), xytext=(4, 3), textcoords="offset points",
                    fontsize=8 if label_every else 9, fontweight="normal" if word != highlight else "bold")
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8, framealpha=0.8)
    return fig


def similarity_heatmap(table: torch.Tensor, words: Sequence[str], stoi: Mapping[str, int],
                       title: str = "Cosine similarity of learned embeddings") -> Figure:
    """A `(K, K)` heatmap of the cosine similarities between the rows of `table` for `words`."""
    missing = [w for w in words if w not in stoi]
    if missing:
        raise ValueError(f"{missing[0]!r} is not in the vocabulary; pick words the table has a row for")
    vectors = table.detach().float().cpu()[[stoi[w] for w in words]]  # (K, C)
    similarity = cosine_similarity(vectors.unsqueeze(1), vectors.unsqueeze(0))  # (K, K)
    fig = Figure(figsize=(7.0, 6.0), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(similarity.numpy(), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(words)), words, rotation=90, fontsize=8)
    ax.set_yticks(range(len(words)), words, fontsize=8)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label="cosine similarity")
    return fig


class EmbeddingExplorer(Explorer):
    """Pick a word; see its k nearest neighbours (by cosine) and where they sit in a PCA projection.

    Controls: `word` (a dropdown of the vocabulary, categorised words first) and `k` (slider).
    State after any change: `neighbours` (a list of (word, cosine similarity), best first),
    `figure` (the current projection) and `message` (the text above the picture).

    Args:
        table: the `(V, C)` embedding matrix.
        vocab: the V words, in id order.
        categories: `{category: words}`; these words are drawn in the projection, coloured.
        word: the word selected at the start.
        k: how many neighbours to show at the start.
    """

    def __init__(self, table: torch.Tensor, vocab: Sequence[str], categories: Mapping[str, Sequence[str]],
                 *, word: str | None = None, k: int = 8) -> None:
        if table.dim() != 2 or table.shape[0] != len(vocab):
            raise ValueError(f"table {tuple(table.shape)} needs one row per word of the vocabulary ({len(vocab)} words)")
        self.table = table.detach().float().cpu()
        self.vocab = list(vocab)
        self.stoi = {w: i for i, w in enumerate(self.vocab)}
        self.words, self.categories = categorised_words(categories, self.stoi)
        self.points = pca_2d(self.table[[self.stoi[w] for w in self.words]])
        self.neighbours: list[tuple[str, float]] = []
        self.figure: Figure | None = None

        others = sorted(set(self.vocab) - set(self.words))
        self.word = widgets.Dropdown(options=self.words + others, value=word or self.words[0], description="word")
        self.k = widgets.IntSlider(value=k, min=1, max=min(20, len(self.vocab) - 1), description="neighbours",
                                   continuous_update=False)
        self.status = widgets.HTML()
        self.chart = widgets.Image(format="png")
        self.watch(self.word, self.k)
        super().__init__([widgets.HBox([self.word, self.k]), self.status, self.chart])
        self.refresh()


    def refresh(self) -> None:
        """Recompute the neighbours and redraw the projection for the current word and k."""
        query = self.stoi[self.word.value]
        values, indices = nearest_neighbours(self.table[query], self.table, self.k.value, exclude=query)
        self.neighbours = [(self.vocab[i], v) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]
        drawn = [w for w, _ in self.neighbours if w in self.words]
        highlight = self.word.value if self.word.value in self.words else None
        self.figure = projection_figure(
            self.points, self.words, self.categories, highlight=highlight, neighbours=drawn,
            title=f"“{self.word.value}” (star) and its nearest neighbours (rings)",
        )
        self.chart.value = figure_to_png(self.figure, dpi=80)
        rows = "".join(f"<tr><td>{html.escape(w)}</td><td>{v:+.3f}</td></tr>" for w, v in self.neighbours)
        note = "" if highlight else " (not one of the plotted categories, so it has no star)"
        hidden = len(self.neighbours) - len(drawn)
        if hidden:
            note += f"; {hidden} neighbour(s) are outside the plotted categories"
        self.status.value = (
            f"<b>{html.escape(self.word.value)}</b>{html.escape(note)}"
            f"<table><tr><th>neighbour</th><th>cosine</th></tr>{rows}</table>"
        )


# The name the book uses.
embedding_explorer = EmbeddingExplorer
