"""The configuration explorer of chapter 08: how a GPT's size, compute and cache follow from its config.

Move the sliders (layers, width, heads, vocabulary, context) and see where the parameters sit
(embeddings, attention, MLP, norms, output layer), where the training FLOPs of one token go, and
how many bytes the KV cache of one sequence needs. Everything is closed form: no model is built,
so a GPT-3-sized config is as quick to explore as a toy.

The pictures are plain functions returning a matplotlib Figure (`architecture_figure`,
`config_figure`, `share_bars_figure`), which the page also calls for its static figures.
"""

from __future__ import annotations

import html
from collections.abc import Mapping

import ipywidgets as widgets
from matplotlib.figure import Figure
from matplotlib.patches import FancyBboxPatch

from llmcourse.attention import kv_cache_bytes
from llmcourse.model import GPTConfig, count_params, flops_per_token, param_breakdown
from llmcourse.plots import figure_to_png
from llmcourse.widgets.explorer import Explorer

__all__ = [
    "FLOP_PARTS",
    "PARAM_PARTS",
    "GPTConfigExplorer",
    "architecture_figure",
    "config_explorer",
    "config_figure",
    "config_summary",
    "flops_breakdown",
    "human_bytes",
    "human_count",
    "share_bars_figure",
]

# Readable names for the keys of `param_breakdown` and `flops_breakdown`, in drawing order.
PARAM_PARTS = {
    "token_embedding": "token embedding",
    "positions": "positions",
    "attention": "attention",
    "mlp": "MLP",
    "norms": "norms",
    "lm_head": "lm_head (untied)",
}
FLOP_PARTS = {
    "attention_projections": "attention q, k, v, out",
    "attention_scores": "attention scores (QKᵀ, AV)",
    "mlp": "MLP",
    "lm_head": "lm_head",
}
PART_COLORS = {
    "token_embedding": "tab:blue", "positions": "tab:cyan", "attention": "tab:orange",
    "attention_projections": "tab:orange", "attention_scores": "tab:red", "mlp": "tab:green",
    "norms": "tab:gray", "lm_head": "tab:purple",
}


def flops_breakdown(config: GPTConfig, seq_len: int | None = None) -> dict[str, int]:
    """Training FLOPs per token (forward + backward) by part; the parts sum to `flops_per_token`.

    Each weight a token is multiplied by costs 6 FLOPs (2 forward, 4 backward); the attention
    scores cost 12·L·H·D·T (two matmuls over the T keys, forward + backward). The MLP counts
    top_k experts plus the router for a Mixture of Experts. seq_len defaults to block_size.
    """
    seq_len = config.block_size if seq_len is None else seq_len
    c, h, layers = config.n_embd, config.mlp_hidden_size, config.n_layer
    kv_width = config.kv_heads * config.head_dim
    one_mlp = (3 if config.mlp == "swiglu" else 2) * c * h
    mlp = one_mlp if config.n_experts == 1 else config.top_k * one_mlp + c * config.n_experts
    return {
        "attention_projections": 6 * layers * (2 * c * c + 2 * c * kv_width),
        "attention_scores": 12 * layers * config.n_head * config.head_dim * seq_len,
        "mlp": 6 * layers * mlp,
        "lm_head": 6 * config.vocab_size * c,
    }


def config_summary(config: GPTConfig, seq_len: int | None = None, bytes_per_element: int = 2) -> dict[str, int]:
    """The headline numbers of a config: parameters, training FLOPs per token, KV-cache bytes.

    The KV cache holds keys and values for one sequence of `seq_len` tokens (default block_size)
    at `bytes_per_element` bytes each (2 for bf16/fp16).
    """
    seq_len = config.block_size if seq_len is None else seq_len
    return {
        "params": count_params(config),
        "non_embedding_params": count_params(config, non_embedding=True),
        "flops_per_token": flops_per_token(config, seq_len),
        "kv_cache_bytes": kv_cache_bytes(config.n_layer, config.kv_heads, config.head_dim, seq_len,
                                         bytes_per_element=bytes_per_element),
    }


def human_count(n: float) -> str:
    """12_345_678 -> '12.3M' (K, M, B, T: thousands to trillions)."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def human_bytes(n: float) -> str:
    """Bytes in binary units: 2_097_152 -> '2.00 MiB'."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


def share_bars_figure(parts_by_model: Mapping[str, Mapping[str, float]], names: Mapping[str, str],
                      *, title: str, xlabel: str = "share of the total (%)") -> Figure:
    """One horizontal bar per model, split into its parts as percentages of the model's total.

    parts_by_model: `{model name: {part key: amount}}`; names: `{part key: legend label}` (its
    order is the stacking order; parts that are 0 in every model are left out of the legend).
    """
    models = list(parts_by_model)
    fig = Figure(figsize=(8.0, 0.8 + 0.75 * len(models)), layout="constrained")
    ax = fig.add_subplot()
    left = [0.0] * len(models)
    for key, label in names.items():
        shares = [100 * parts_by_model[m].get(key, 0) / sum(parts_by_model[m].values()) for m in models]
        if not any(shares):
            continue
        bars = ax.barh(models, shares, left=left, label=label, color=PART_COLORS.get(key))
        for bar, share in zip(bars, shares, strict=True):
            if share >= 6:  # a label only where it fits inside the bar
                ax.text(bar.get_x() + bar.get_width() / 2, bar.get_y() + bar.get_height() / 2,
                        f"{share:.0f}%", ha="center", va="center", fontsize=8, color="white")
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.set_xlim(0, 100)
    ax.invert_yaxis()  # the first model on top
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(models) < 3 else -0.2),
              ncol=3, fontsize=8, frameon=False)
    return fig


def config_figure(config: GPTConfig, seq_len: int | None = None, *, title: str | None = None) -> Figure:
    """Two panels for one config: parameters per part, and training FLOPs per token per part.

    The text under the title gives the totals, FLOPs per token and the KV cache of one sequence.
    """
    seq_len = config.block_size if seq_len is None else seq_len
    summary = config_summary(config, seq_len)
    params = {k: v for k, v in param_breakdown(config).items() if k in PARAM_PARTS}
    flops = flops_breakdown(config, seq_len)
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    for ax, parts, names, unit in ((left, params, PARAM_PARTS, "parameters"),
                                   (right, flops, FLOP_PARTS, "training FLOPs per token")):
        labels = [names[k] for k in names]
        values = [parts[k] for k in names]
        bars = ax.barh(labels, values, color=[PART_COLORS[k] for k in names])
        total = sum(values)
        for bar, value in zip(bars, values, strict=True):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2,
                    f" {human_count(value)} ({100 * value / total:.0f}%)", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.45 * max(values))
        ax.set_xlabel(unit)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    left.set_title(f"parameters: {human_count(summary['params'])} in all", fontsize=10)
    right.set_title(f"FLOPs/token: {human_count(summary['flops_per_token'])} at T = {seq_len}", fontsize=10)
    heading = title or (f"L={config.n_layer}, C={config.n_embd}, H={config.n_head}, "
                        f"V={config.vocab_size}, T={config.block_size}")
    fig.suptitle(f"{heading}\nKV cache of one {seq_len}-token sequence in bf16: "
                 f"{human_bytes(summary['kv_cache_bytes'])}", fontsize=10)
    return fig


def architecture_figure(config: GPTConfig, batch: int = 1, seq_len: int | None = None) -> Figure:
    """The decoder-only stack drawn bottom to top, each box with the shape of what it outputs."""
    seq_len = config.block_size if seq_len is None else seq_len
    b, t, c, v = batch, seq_len, config.n_embd, config.vocab_size
    h, d, hid = config.n_head, config.head_dim, config.mlp_hidden_size
    norm = "LayerNorm" if config.norm == "layernorm" else "RMSNorm"
    tied = " (tied to the token embedding)" if config.tie_weights else ""
    rows = [  # (label, output shape, colour, inside the block?)
        ("token ids", f"(B, T) = ({b}, {t})", "white", False),
        (f"token embedding  V×C = {v}×{c}" + (f"  +  {config.position} positions" if config.position in
                                              ("learned", "sinusoidal") else ""),
         f"(B, T, C) = ({b}, {t}, {c})", PART_COLORS["token_embedding"], False),
        (f"norm1: {norm}", f"({b}, {t}, {c})", PART_COLORS["norms"], True),
        (f"causal self-attention: {h} heads of D = {d}" + (", RoPE" if config.position == "rope" else ""),
         f"q, k, v ({b}, {h}, {t}, {d}) → ({b}, {t}, {c})", PART_COLORS["attention"], True),
        ("x = x + attention", f"({b}, {t}, {c})", "white", True),
        (f"norm2: {norm}", f"({b}, {t}, {c})", PART_COLORS["norms"], True),
        (f"MLP ({config.mlp}): C → {hid} → C" + (f", {config.n_experts} experts" if config.n_experts > 1 else ""),
         f"({b}, {t}, {hid}) → ({b}, {t}, {c})", PART_COLORS["mlp"], True),
        ("x = x + MLP", f"({b}, {t}, {c})", "white", True),
        (f"final norm: {norm}", f"({b}, {t}, {c})", PART_COLORS["norms"], False),
        (f"lm_head  C → V{tied}", f"logits (B, T, V) = ({b}, {t}, {v})", PART_COLORS["lm_head"], False),
    ]
    fig = Figure(figsize=(8.0, 7.4), layout="constrained")
    ax = fig.add_subplot()
    step = 1.0
    for i, (label, shape, color, _) in enumerate(rows):
        y = i * step
        ax.add_patch(FancyBboxPatch((0.05, y + 0.12), 0.6, 0.62, boxstyle="round,pad=0.02",
                                    facecolor=color, alpha=0.35 if color != "white" else 1.0, edgecolor="0.3"))
        ax.text(0.35, y + 0.43, label, ha="center", va="center", fontsize=8.5)
        ax.text(0.72, y + 0.43, shape, ha="left", va="center", fontsize=8.5, family="monospace")
        if i < len(rows) - 1:
            ax.annotate("", (0.35, y + step + 0.1), (0.35, y + 0.76), arrowprops={"arrowstyle": "->", "color": "0.3"})
    inside = [i for i, row in enumerate(rows) if row[3]]
    low, high = inside[0] * step - 0.05, inside[-1] * step + 0.95
    ax.add_patch(FancyBboxPatch((0.0, low), 0.7, high - low, boxstyle="round,pad=0.01",
                                facecolor="none", edgecolor="tab:red", linestyle="--"))
    ax.text(-0.03, (low + high) / 2, f"Block × {config.n_layer}  (pre-norm: the residual stream x goes straight up)",
            color="tab:red", fontsize=8.5, rotation=90, ha="right", va="center")
    ax.set_xlim(-0.08, 1.3)
    ax.set_ylim(-0.2, len(rows) * step + 0.2)
    ax.axis("off")
    ax.set_title("A decoder-only GPT, bottom to top, with the shape each step outputs")
    return fig


class GPTConfigExplorer(Explorer):
    """Sliders for a GPT config; see its parameters, FLOPs per token and KV cache, all closed form.

    Controls: `n_layer`, `n_embd`, `n_head`, `vocab_size`, `block_size` (sliders) and
    `tie_weights` (checkbox); the rest of the config (MLP kind, norm, positions, bias) is the
    `base` config's. State after any change: `config` (the GPTConfig, None if the sliders do not
    form a valid one), `summary` (`config_summary`), `params` (`param_breakdown`), `flops`
    (`flops_breakdown`), `figure` and `message` (the totals, or why the config is invalid).
    """

    def __init__(self, base: GPTConfig | None = None) -> None:
        base = base or GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768, bias=True)
        self.base = base
        self.config: GPTConfig | None = None
        self.summary: dict[str, int] = {}
        self.params: dict[str, int] = {}
        self.flops: dict[str, int] = {}
        self.figure: Figure | None = None

        def slider(value: int, low: int, high: int, step: int, description: str) -> widgets.IntSlider:
            return widgets.IntSlider(value=value, min=min(low, value), max=max(high, value), step=step,
                                     description=description, continuous_update=False,
                                     style={"description_width": "7em"})

        self.n_layer = slider(base.n_layer, 1, 96, 1, "n_layer (L)")
        self.n_embd = slider(base.n_embd, 64, 12288, 64, "n_embd (C)")
        self.n_head = slider(base.n_head, 1, 128, 1, "n_head (H)")
        self.vocab_size = slider(base.vocab_size, 256, 262144, 1, "vocab (V)")
        self.block_size = slider(base.block_size, 64, 131072, 64, "block_size (T)")
        self.tie_weights = widgets.Checkbox(value=base.tie_weights, description="tie embedding and lm_head")
        self.status = widgets.HTML()
        self.chart = widgets.Image(format="png")
        controls = [self.n_layer, self.n_embd, self.n_head, self.vocab_size, self.block_size, self.tie_weights]
        self.watch(*controls)
        super().__init__([widgets.HBox([widgets.VBox(controls[:3]), widgets.VBox(controls[3:])]),
                          self.status, self.chart])
        self.refresh()


    def refresh(self) -> None:
        """Rebuild the config from the controls and redraw (or explain why it is invalid)."""
        values = {**self.base.to_dict(), "n_layer": self.n_layer.value, "n_embd": self.n_embd.value,
                  "n_head": self.n_head.value, "vocab_size": self.vocab_size.value,
                  "block_size": self.block_size.value, "tie_weights": self.tie_weights.value}
        if values["n_kv_heads"] is not None and values["n_head"] % values["n_kv_heads"]:
            values["n_kv_heads"] = None  # the base's grouping does not fit the new head count
        try:
            config = GPTConfig.from_dict(values)
        except ValueError as error:
            self.config, self.summary, self.params, self.flops, self.figure = None, {}, {}, {}, None
            self.chart.value = b""
            self.status.value = f'<span style="color: #b00">{html.escape(str(error))}</span>'
            return
        self.config = config
        self.summary = config_summary(config)
        self.params = param_breakdown(config)
        self.flops = flops_breakdown(config)
        self.figure = config_figure(config)
        self.chart.value = figure_to_png(self.figure, dpi=80)
        s = self.summary
        self.status.value = (
            f"<b>{s['params']:,}</b> parameters ({s['non_embedding_params']:,} outside the embeddings); "
            f"<b>{human_count(s['flops_per_token'])}</b> training FLOPs per token at T = {config.block_size} "
            f"(6N = {human_count(6 * s['params'])}); KV cache of one full sequence in bf16: "
            f"<b>{human_bytes(s['kv_cache_bytes'])}</b>")


# The name the book uses.
config_explorer = GPTConfigExplorer
