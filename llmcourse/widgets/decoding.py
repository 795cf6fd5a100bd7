"""The decoding explorer of chapter 11: one real next-token distribution, reshaped by the levers.

Type a prompt, move the temperature, top-k, top-p and min-p sliders, and see the model's own
next-token distribution (grey) beside what `llmcourse.sampling.process` makes of it (coloured),
with a continuation sampled under the same settings.
"""

from __future__ import annotations

import html

import ipywidgets as widgets
import torch
from matplotlib.figure import Figure

from llmcourse.checks import check_int
from llmcourse.model import GPT
from llmcourse.plots import BAR_COLOR, char_label, figure_to_png
from llmcourse.sampling import SamplingSettings, process
from llmcourse.tokenizer import ENDOFTEXT, Tokenizer
from llmcourse.widgets.explorer import Explorer

__all__ = ["DecodingExplorer", "decoding_explorer", "distribution_figure", "next_token_logits",
           "prompt_ids"]


def prompt_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The ids a document starting with `prompt` begins with: end-of-text, then the prompt's
    tokens (the model was trained on documents separated by end-of-text)."""
    return [tokenizer.special_tokens[ENDOFTEXT], *tokenizer.encode_ordinary(prompt)]


@torch.no_grad()
def next_token_logits(model: GPT, tokenizer: Tokenizer, prompt: str) -> torch.Tensor:
    """The model's logits `(V,)` for the token after `prompt` (float32, on the CPU)."""
    ids = prompt_ids(tokenizer, prompt)[-model.config.block_size:]
    device = next(model.parameters()).device
    logits, _ = model(torch.tensor([ids], device=device))
    return logits[0, -1].float().cpu()


def distribution_figure(logits: torch.Tensor, settings: SamplingSettings, labels: list[str], *,
                        bars: int = 15, title: str | None = None,
                        figsize: tuple[float, float] = (7.5, 3.0)) -> Figure:
    """The `bars` likeliest tokens of `logits` `(V,)`: their probability at temperature 1 (grey)
    and after `process(logits, settings)` (coloured; a removed token has none).

    `labels` are the V tokens as text. The title says how many tokens the settings keep."""
    check_int("bars", bars, 1)
    original = torch.softmax(logits.float(), dim=-1)
    processed = torch.softmax(process(logits[None], None, settings)[0], dim=-1)
    order = original.argsort(descending=True, stable=True)[:bars]
    x = torch.arange(len(order)).float().numpy()  # matplotlib wants arrays, not tensors
    fig = Figure(figsize=figsize, layout="constrained")
    ax = fig.add_subplot()
    ax.bar(x - 0.2, original[order].numpy(), width=0.4, color="0.75", label="the model (T = 1)")
    ax.bar(x + 0.2, processed[order].numpy(), width=0.4, color=BAR_COLOR, label="after the settings")
    ax.set_xticks(x.tolist(), [char_label(labels[i]) for i in order.tolist()], rotation=45, ha="right")
    ax.set_ylabel("probability")
    ax.set_ylim(0, 1.05 * max(float(original[order].max()), float(processed.max())))
    kept = int((processed > 0).sum())
    ax.set_title(title or f"{kept} of {len(logits)} tokens can be drawn", fontsize=10)
    ax.legend(frameon=False, fontsize=8)
    return fig


def _describe(settings: SamplingSettings) -> str:
    parts = [f"T = {settings.temperature:g}"]
    if settings.top_k is not None:
        parts.append(f"top-k {settings.top_k}")
    if settings.top_p < 1:
        parts.append(f"top-p {settings.top_p:g}")
    if settings.min_p > 0:
        parts.append(f"min-p {settings.min_p:g}")
    return ", ".join(parts)


class DecodingExplorer(Explorer):
    """Type a prompt; see the model's next-token distribution before and after the levers, and a
    continuation sampled with them.

    Controls: `prompt` (text), `temperature`, `top_k` (0 is off), `top_p`, `min_p` (sliders) and
    `resample` (a button that draws with the next seed). State a caller or a test can read after
    any change: `settings` (the `SamplingSettings` shown), `probs` (the `(V,)` processed
    distribution), `kept` (how many tokens can be drawn), `continuation` (the sampled text),
    `figure` and `message`.
    """

    def __init__(self, model: GPT, tokenizer: Tokenizer, *, prompt: str = "Once upon a time, there was a",
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 bars: int = 15, continuation_length: int = 40, seed: int = 0) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.bars = check_int("bars", bars, 1)
        self.continuation_length = check_int("continuation_length", continuation_length, 1)
        self.seed = seed
        self.labels = [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]
        self._logits_of: dict[str, torch.Tensor] = {}
        self.settings: SamplingSettings | None = None
        self.probs: torch.Tensor | None = None
        self.kept = 0
        self.continuation = ""
        self.figure: Figure | None = None

        slider = dict(continuous_update=False, style={"description_width": "6em"})
        self.prompt = widgets.Text(value=prompt, description="prompt", layout=widgets.Layout(width="40em"))
        self.temperature = widgets.FloatSlider(value=temperature, min=0.0, max=3.0, step=0.05,
                                               description="temperature", readout_format=".2f", **slider)
        self.top_k = widgets.IntSlider(value=top_k, min=0, max=50, description="top-k (0 off)", **slider)
        self.top_p = widgets.FloatSlider(value=top_p, min=0.05, max=1.0, step=0.05, description="top-p",
                                         readout_format=".2f", **slider)
        self.min_p = widgets.FloatSlider(value=min_p, min=0.0, max=0.5, step=0.01, description="min-p",
                                         readout_format=".2f", **slider)
        self.resample = widgets.Button(description="new sample", tooltip="sample with the next seed")
        self.status = widgets.HTML()
        self.chart = widgets.Image(format="png")
        self.sample_view = widgets.HTML()
        self.watch(self.prompt, self.temperature, self.top_k, self.top_p, self.min_p)
        self.resample.on_click(self._on_resample)
        super().__init__([
            widgets.HBox([self.prompt, self.resample]),
            widgets.HBox([self.temperature, self.top_k]), widgets.HBox([self.top_p, self.min_p]),
            self.status, self.chart, self.sample_view,
        ])
        self.refresh()

    def _on_resample(self, button: widgets.Button) -> None:
        self.seed += 1
        self.refresh()

    def _logits(self, prompt: str) -> torch.Tensor:
        if prompt not in self._logits_of:
            self._logits_of[prompt] = next_token_logits(self.model, self.tokenizer, prompt)
        return self._logits_of[prompt]

    def refresh(self) -> None:
        """Recompute the distribution, the chart and the continuation from the controls."""
        prompt = self.prompt.value
        self.settings = SamplingSettings(temperature=self.temperature.value, top_k=self.top_k.value or None,
                                         top_p=self.top_p.value, min_p=self.min_p.value)
        logits = self._logits(prompt)
        self.probs = torch.softmax(process(logits[None], None, self.settings)[0], dim=-1)
        self.kept = int((self.probs > 0).sum())
        self.figure = distribution_figure(logits, self.settings, self.labels, bars=self.bars,
                                          title=f"{_describe(self.settings)}: {self.kept} of "
                                                f"{len(logits)} tokens can be drawn")
        self.chart.value = figure_to_png(self.figure, dpi=90)
        ids = prompt_ids(self.tokenizer, prompt)
        room = self.model.config.block_size - self.continuation_length
        device = next(self.model.parameters()).device
        out = self.model.generate(torch.tensor([ids[-room:]], device=device), self.continuation_length,
                                  settings=self.settings, generator=torch.Generator().manual_seed(self.seed))
        self.continuation = self.tokenizer.decode(out[0, len(ids[-room:]):].tolist())
        top = self.probs.max().item()
        self.status.value = (f"{self.kept} of {len(logits)} tokens can be drawn; the likeliest now has "
                             f"probability {top:.2f} (it had {torch.softmax(logits, -1).max().item():.2f})")
        self.sample_view.value = (
            '<div style="white-space: pre-wrap; font-family: monospace">'
            f'<span style="color: #888">{html.escape(prompt)}</span>'
            f"<b>{html.escape(self.continuation)}</b></div>")


# The name the book uses: building the explorer is just constructing it (display it in Jupyter).
decoding_explorer = DecodingExplorer
