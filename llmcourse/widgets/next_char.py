"""The next-character explorer of chapter 01: a bigram model's predictions, one step at a time."""

from __future__ import annotations

import html

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure

from llmcourse import sampling
from llmcourse.bigram import CountingBigram, NeuralBigram, sample_bigram
from llmcourse.checks import check_int, check_real
from llmcourse.data.chars import CharVocab
from llmcourse.plots import char_label, figure_to_png, next_token_bars
from llmcourse.widgets.explorer import Explorer

def bigram_table(model: CountingBigram | NeuralBigram | torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The `(V, V)` next-character probabilities of a bigram model: row a is P(next | current = a).

    Accepts a fitted `CountingBigram`, a `NeuralBigram` (its logits table, softmaxed) or a
    probability table itself.
    """
    if isinstance(model, torch.Tensor):
        table = model.detach().float().cpu()
    elif isinstance(model, NeuralBigram):
        with torch.no_grad():
            # Row a of the logits table is what the model outputs after character a.
            logits = model(torch.arange(vocab_size, device=next(model.parameters()).device))
        table = torch.softmax(logits.float().cpu(), dim=-1)
    elif isinstance(model, CountingBigram):
        table = model.probs.detach().float().cpu()
    else:
        raise TypeError(
            f"expected a CountingBigram, a NeuralBigram or a (V, V) probability tensor, "
            f"got {type(model).__name__}"
        )
    if table.shape != (vocab_size, vocab_size):
        raise ValueError(
            f"the model's table has shape {tuple(table.shape)} but the vocabulary has {vocab_size} "
            "characters; pass the vocabulary the model was trained with"
        )
    return table

def apply_temperature(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sharpen (T < 1) or flatten (T > 1) distributions over the last dimension: p^(1/T), renormalised.

    Args:
        probs: `(..., V)` probabilities.
        temperature: T > 0; T = 1 leaves `probs` unchanged.

    Returns:
        `(..., V)` probabilities, `softmax(log(probs) / T)`; zeros stay zero.
    """
    check_real("temperature", temperature, above=0, hint="use a small value such as 0.1 for near-greedy")
    # Log-probabilities are logits up to a constant, which softmax cancels.
    return torch.softmax(sampling.apply_temperature(torch.log(probs), temperature), dim=-1)

class NextCharExplorer(Explorer):
    """Type a context; see the bigram model's next-character distribution and a sampled continuation.

    Controls: `context` (text), `temperature` (slider) and `resample` (button, draws a new seed).
    State a caller (or a test) can read after any change: `probs` (the `(V,)` distribution shown),
    `conditioning_char` (the one character a bigram model actually uses), `continuation` (the
    sampled text), `figure` (the current bar chart) and `message` (explains an unusable context).

    Args:
        model: a fitted `CountingBigram`, a trained `NeuralBigram`, or a `(V, V)` probability table.
        vocab: the character vocabulary the model was trained with.
        context: the initial text in the box.
        top_k: how many of the most probable next characters the bar chart shows.
        continuation_length: how many characters to sample after the context.
        seed: the seed of the first sample (the "new sample" button moves to the next seed).
    """

    def __init__(
        self,
        model: CountingBigram | NeuralBigram | torch.Tensor,
        vocab: CharVocab,
        *,
        context: str = "Once upon a time, ",
        top_k: int = 20,
        continuation_length: int = 120,
        seed: int = 0,
    ) -> None:
        check_int("continuation_length", continuation_length, 1, hint="the characters sampled after the context")
        self.vocab = vocab
        self.table = bigram_table(model, vocab.size)
        self.top_k = top_k
        self.continuation_length = continuation_length
        self.seed = seed
        self.probs: torch.Tensor | None = None
        self.conditioning_char: str | None = None
        self.continuation = ""
        self.figure: Figure | None = None

        self.context = widgets.Text(value=context, description="context", layout=widgets.Layout(width="36em"))
        self.temperature = widgets.FloatSlider(
            value=1.0, min=0.1, max=3.0, step=0.1, description="temperature",
            continuous_update=False, readout_format=".1f",
        )
        self.resample = widgets.Button(description="new sample", tooltip="sample another continuation")
        self.status = widgets.HTML()
        self.chart = widgets.Image(format="png")
        self.sample_view = widgets.HTML()

        self.watch(self.context, self.temperature)
        self.resample.on_click(self._on_resample)
        super().__init__([
            widgets.HBox([self.context, self.temperature, self.resample]),
            self.status, self.chart, self.sample_view,
        ])
        self.refresh()

    def _on_resample(self, button: widgets.Button) -> None:
        self.seed += 1
        self.refresh()

    def refresh(self) -> None:
        """Recompute the distribution, the chart and the continuation from the current controls."""
        text = self.context.value
        if not text:
            self._show_problem("Type at least one character: the bigram model predicts from the last one.")
            return
        try:
            self.vocab.encode(text)
        except ValueError as error:
            self._show_problem(html.escape(str(error)))
            return
        last = text[-1]
        last_id = self.vocab.stoi[last]
        tempered = apply_temperature(self.table, self.temperature.value)
        self.conditioning_char = last
        self.probs = tempered[last_id]
        self.figure = next_token_bars(
            self.probs, self.vocab.itos, top_k=self.top_k, xlabel="next character",
            title=f"P(next | last character “{char_label(last)}”), temperature {self.temperature.value:.1f}",
        )
        self.chart.value = figure_to_png(self.figure, dpi=90)
        generator = torch.Generator().manual_seed(self.seed)
        ids = sample_bigram(tempered, last_id, self.continuation_length, generator=generator)
        self.continuation = self.vocab.decode(ids)
        self.status.value = (
            f"Only the last character, “{html.escape(char_label(last))}”, matters to a bigram model: "
            "everything before it is ignored."
        )
        self.sample_view.value = (
            '<div style="white-space: pre-wrap; font-family: monospace">'
            f'<span style="color: #888">{html.escape(text)}</span>'
            f"<b>{html.escape(self.continuation)}</b></div>"
        )

    def _show_problem(self, message: str) -> None:
        self.probs = None
        self.conditioning_char = None
        self.continuation = ""
        self.figure = None
        self.chart.value = b""
        self.sample_view.value = ""
        self.status.value = f'<span style="color: #b00">{message}</span>'

# The name the book uses: building the explorer is just constructing it (display it in Jupyter).
next_char_explorer = NextCharExplorer
