"""The serving explorer of chapter 12: what one decode step of a real model costs on a GPU.

A decode step reads every weight once (shared by the whole batch) and every sequence's KV cache,
and does about 2 FLOPs per weight per sequence plus the attention over the cache. `decode_step`
turns that count into a time with the roofline model (Williams et al. 2009): a step takes the
longer of its arithmetic at the peak FLOP rate and its bytes at the peak memory bandwidth. It is
a model, not a measurement: real kernels reach neither peak. `decode_figure` draws the step time
and the throughput against the batch size; `InferenceExplorer` moves through the same numbers
with a model, a batch size and a context length, and says what fills the GPU's memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import ipywidgets as widgets
from matplotlib.figure import Figure

from llmcourse.checks import check_choice, check_int, check_real
from llmcourse.plots import figure_to_png
from llmcourse.widgets.explorer import Explorer

__all__ = ["H100", "MODELS", "Accelerator", "DecodeStep", "InferenceExplorer", "ServedModel", "decode_figure",
           "decode_step", "inference_explorer"]


@dataclass(frozen=True)
class Accelerator:
    """A chip's datasheet peaks: dense FLOP/s at the serving precision, memory bytes/s and bytes."""

    name: str
    peak_flops: float
    bandwidth: float
    memory: float


# NVIDIA H100 SXM datasheet: 989 TFLOP/s dense bf16, 3.35 TB/s HBM3, 80 GB.
H100 = Accelerator("H100 SXM", 989e12, 3.35e12, 80e9)


@dataclass(frozen=True)
class ServedModel:
    """The shape that sets a model's serving cost: parameters, layers, query and key/value heads."""

    name: str
    params: float
    n_layer: int
    n_head: int
    n_kv_heads: int
    head_dim: int

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of keys and values one token adds to the cache, at 2 bytes per value (bf16)."""
        return 2 * self.n_layer * self.n_kv_heads * self.head_dim * 2


# The published configurations (GPT-2: Radford et al. 2019; Llama 2: Touvron et al. 2023;
# Llama 3: Llama team 2024, table 3).
MODELS = {
    model.name: model for model in (
        ServedModel("GPT-2 small", 124e6, 12, 12, 12, 64),
        ServedModel("Llama-2-7B", 6.7e9, 32, 32, 32, 128),
        ServedModel("Llama-3-8B", 8.0e9, 32, 32, 8, 128),
        ServedModel("Llama-3-70B", 70.6e9, 80, 64, 8, 128),
    )
}


@dataclass(frozen=True)
class DecodeStep:
    """One decode step of `batch_size` sequences at `context` cached tokens, by the roofline model."""

    flops: float
    bytes: float
    compute_s: float
    memory_s: float
    weight_bytes: float
    kv_bytes: float

    @property
    def seconds(self) -> float:
        """The step's time: the longer of its arithmetic and its memory traffic."""
        return max(self.compute_s, self.memory_s)

    @property
    def bound(self) -> str:
        return "memory" if self.memory_s >= self.compute_s else "compute"

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved (the roofline's x-axis)."""
        return self.flops / self.bytes


def decode_step(model: ServedModel, batch_size: int, context: int, chip: Accelerator = H100,
                bytes_per_param: float = 2.0) -> DecodeStep:
    """The modelled cost of one decode step: each of `batch_size` sequences adds one token after
    `context` cached tokens. FLOPs: 2 per weight per sequence, plus 4 per cached key per head and
    layer (the scores and the weighted sum). Bytes: every weight once, every cache once."""
    check_int("batch_size", batch_size, 1)
    check_int("context", context, 0)
    check_real("bytes_per_param", bytes_per_param, above=0, hint="2 for bf16, 1 for 8-bit weights")
    attention_flops = 4 * model.n_layer * model.n_head * model.head_dim * context
    flops = batch_size * (2 * model.params + attention_flops)
    weight_bytes = model.params * bytes_per_param
    kv_bytes = batch_size * context * model.kv_bytes_per_token
    moved = weight_bytes + kv_bytes
    return DecodeStep(flops, moved, flops / chip.peak_flops, moved / chip.bandwidth, weight_bytes, kv_bytes)


def decode_figure(model: ServedModel, contexts: Sequence[int] = (1024, 8192, 32768),
                  batch_sizes: Sequence[int] = tuple(2**i for i in range(10)), chip: Accelerator = H100,
                  mark: tuple[int, int] | None = None) -> Figure:
    """Left: the modelled time of one decode step against the batch size, one line per context.
    Right: the tokens per second the whole batch produces. `mark` = (batch size, context) circles one point."""
    fig = Figure(figsize=(9.5, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for context in contexts:
        steps = [decode_step(model, b, context, chip) for b in batch_sizes]
        fits = [s.weight_bytes + s.kv_bytes <= chip.memory for s in steps]
        ms = [s.seconds * 1e3 for s in steps]
        rate = [b / s.seconds for b, s in zip(batch_sizes, steps)]
        line, = left.plot(batch_sizes, ms, "o-", markersize=3, label=f"context {context:,}")
        right.plot(batch_sizes, rate, "o-", markersize=3, color=line.get_color())
        over = [b for b, ok in zip(batch_sizes, fits) if not ok]
        if over:  # the batch no longer fits in the chip's memory
            left.plot(over, [m for m, ok in zip(ms, fits) if not ok], "x", color="0.2", markersize=7)
    if mark is not None:
        step = decode_step(model, mark[0], mark[1], chip)
        left.plot([mark[0]], [step.seconds * 1e3], "o", markersize=12, fillstyle="none", color="crimson")
        right.plot([mark[0]], [mark[0] / step.seconds], "o", markersize=12, fillstyle="none", color="crimson")
    compute_only = [decode_step(model, b, 0, chip).compute_s * 1e3 for b in batch_sizes]
    left.plot(batch_sizes, compute_only, ":", color="0.5", label="arithmetic alone (context 0)")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size (sequences decoded together)")
        ax.grid(alpha=0.3, which="both")
    left.set_ylabel("time of one decode step (ms)")
    right.set_ylabel("tokens per second, whole batch")
    left.legend(fontsize=8)
    fig.suptitle(f"{model.name} on one {chip.name}, bf16, roofline model (x: does not fit in "
                 f"{chip.memory / 1e9:.0f} GB)", fontsize=10)
    return fig


class InferenceExplorer(Explorer):
    """Choose a model, a batch size and a context length; see the KV cache's size beside the
    weights, the modelled time of one decode step, which limit sets it, and the throughput.

    State after any change: `step` (the `DecodeStep`), `figure` and `message`.
    """

    def __init__(self, model: str = "Llama-3-8B", batch_size: int = 8, context: int = 8192,
                 chip: Accelerator = H100) -> None:
        check_choice("model", model, list(MODELS))
        self.chip = chip
        self.step: DecodeStep | None = None
        self.figure: Figure | None = None
        self.model = widgets.Dropdown(options=list(MODELS), value=model, description="model")
        self.batch_size = widgets.SelectionSlider(options=[2**i for i in range(10)], value=batch_size,
                                                  description="batch size")
        self.context = widgets.SelectionSlider(options=[2**i for i in range(7, 18)], value=context,
                                               description="context")
        self.status = widgets.HTML()
        self.chart = widgets.Image(format="png")
        self.watch(self.model, self.batch_size, self.context)
        super().__init__([widgets.HBox([self.model, self.batch_size, self.context]), self.status, self.chart])
        self.refresh()

    def refresh(self) -> None:
        served = MODELS[self.model.value]
        batch, context = self.batch_size.value, self.context.value
        self.step = step = decode_step(served, batch, context, self.chip)
        used = step.weight_bytes + step.kv_bytes
        fits = ("fits" if used <= self.chip.memory
                else f'<b style="color: #b00">does not fit in {self.chip.memory / 1e9:.0f} GB</b>')
        self.status.value = (
            f"Weights {step.weight_bytes / 1e9:.1f} GB + KV cache {step.kv_bytes / 1e9:.1f} GB "
            f"({served.kv_bytes_per_token / 1e3:.0f} kB per token) = {used / 1e9:.1f} GB: {fits}. "
            f"One decode step: {step.flops / 1e12:.2f} TFLOP and {step.bytes / 1e9:.1f} GB read, "
            f"{step.intensity:.0f} FLOP per byte: {step.bound}-bound, {step.seconds * 1e3:.2f} ms. "
            f"Each sequence gets {1 / step.seconds:,.0f} tokens/s; the batch {batch / step.seconds:,.0f} tokens/s.")
        self.figure = decode_figure(served, contexts=sorted({1024, context, 32768}), chip=self.chip,
                                    mark=(batch, context))
        self.chart.value = figure_to_png(self.figure, dpi=80)


# The name the book uses: building the explorer is just constructing it (display it in Jupyter).
inference_explorer = InferenceExplorer
