"""Chapter 08: the complete GPT, a decoder-only transformer built from the chapter 03-07 parts.

    ids (B, T) -> token embedding (+ positions) -> n_layer x Block -> final norm -> lm_head -> logits (B, T, V)

Each `Block` is pre-norm (GPT-2, Radford et al. 2019): the residual stream `x` is read through a
norm by attention and then by the MLP, and each adds its result back,

    x = x + attn(norm1(x))
    x = x + mlp(norm2(x))

so the stream itself is never normalised and gradients flow straight down the `+` path.

`GPTConfig` names every architectural choice the course explores (position kind, MLP kind,
norm kind, grouped-query attention, Mixture of Experts, weight tying), so one class covers a
GPT-2-style model (`position="learned", norm="layernorm", mlp="gelu"`) and a Llama-style one
(`position="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads < n_head`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.attention import CausalSelfAttention, KVCache
from llmcourse.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, save_checkpoint
from llmcourse.checks import ArgumentError, check_choice, check_flag, check_int, check_real, check_shape
from llmcourse.embedding import TokenEmbedding
from llmcourse.mlp import MoE, default_hidden, make_mlp
from llmcourse.norm import LayerNorm, make_norm
from llmcourse.position import LearnedPositions, RotaryEmbedding, SinusoidalPositions
from llmcourse.sampling import SamplingSettings, next_token

MLP_KINDS = ("relu", "gelu", "swiglu")
NORM_KINDS = ("layernorm", "rmsnorm")
POSITION_KINDS = ("learned", "sinusoidal", "rope", "none")
INIT_STD = 0.02  # GPT-2's initialisation scale for every weight matrix and embedding
# The linear layers that write into the residual stream; GPT-2 shrinks their initial weights.
RESIDUAL_PROJECTIONS = ("out_proj.weight", "fc_out.weight", "down_proj.weight")


# ---------------------------------------------------------------------------------- config


@dataclass
class GPTConfig:
    """Every number and choice that fixes a GPT's architecture (not how it is trained).

    vocab_size  V: number of token ids (the tokenizer's vocabulary size).
    block_size  the context length: the most positions one forward pass (or a KV cache) can hold.
    n_layer     number of transformer blocks.
    n_head      attention heads per block; head_dim = n_embd // n_head.
    n_embd      C: width of the residual stream.
    n_kv_heads  key/value heads: None = n_head (multi-head), 1 = multi-query, else grouped-query.
    mlp         "relu" | "gelu" | "swiglu"; mlp_hidden its hidden width (None: `default_hidden`).
    norm        "layernorm" | "rmsnorm".
    position    "learned" | "sinusoidal" (added to the token embeddings), "rope" (rotates q and k
                inside attention; rope_base and rope_scale as in `RotaryEmbedding`) or "none".
    n_experts   1 = a dense MLP per block; > 1 = Mixture of Experts choosing top_k experts per token.
    tie_weights the output layer reuses the token embedding matrix (Press & Wolf 2017).
    bias        biases in every linear layer and LayerNorm (GPT-2: True; nanoGPT and Llama: False).
    dropout     dropout probability after the embeddings, in attention and in the MLP (training only).
    """

    vocab_size: int
    block_size: int
    n_layer: int
    n_head: int
    n_embd: int
    n_kv_heads: int | None = None
    mlp: str = "gelu"
    mlp_hidden: int | None = None
    norm: str = "layernorm"
    position: str = "learned"
    rope_base: float = 10000.0
    rope_scale: float = 1.0
    n_experts: int = 1
    top_k: int = 1
    tie_weights: bool = True
    bias: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # Each check returns a plain int or float, which a checkpoint can hold (numpy scalars it cannot).
        for name, hint in [
            ("vocab_size", "use your tokenizer's vocabulary size"),
            ("block_size", "the context length, e.g. 256"),
            ("n_layer", "e.g. 4"),
            ("n_head", "e.g. 4"),
            ("n_embd", "e.g. 128"),
        ]:
            setattr(self, name, check_int(name, getattr(self, name), 1, hint=hint))
        self._check_heads()
        check_choice("mlp", self.mlp, MLP_KINDS)
        check_choice("norm", self.norm, NORM_KINDS)
        check_choice("position", self.position, POSITION_KINDS)
        if self.mlp_hidden is not None:
            self.mlp_hidden = check_int("mlp_hidden", self.mlp_hidden, 1, hint="or None for the default width")
        self._check_positions()
        self._check_experts()
        check_flag("tie_weights", self.tie_weights)
        check_flag("bias", self.bias)
        self.dropout = check_real("dropout", self.dropout, minimum=0.0, below=1.0,
                                  hint="a probability; 0.0 turns it off, 0.1-0.2 is typical for small data")

    def _check_heads(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(
                f"n_embd={self.n_embd} must be divisible by n_head={self.n_head} (try "
                f"n_embd={_next_multiple(self.n_embd, self.n_head)} or "
                f"n_head={_nearest_divisor(self.n_embd, self.n_head)})")
        if self.n_kv_heads is not None:
            self.n_kv_heads = check_int("n_kv_heads", self.n_kv_heads, 1, hint="or None for one per query head")
            if self.n_head % self.n_kv_heads:
                raise ValueError(
                    f"n_kv_heads={self.n_kv_heads} must divide n_head={self.n_head}, so each key/value "
                    f"head serves the same number of query heads (try "
                    f"n_kv_heads={_nearest_divisor(self.n_head, self.n_kv_heads)}, or None for n_head)")

    def _check_positions(self) -> None:
        if self.position == "rope" and self.head_dim % 2:
            raise ValueError(
                f"position='rope' rotates pairs of dimensions, so head_dim = n_embd // n_head must be "
                f"even, got {self.n_embd} // {self.n_head} = {self.head_dim} (change n_embd or n_head)")
        if self.position == "sinusoidal" and self.n_embd % 2:
            raise ValueError(f"position='sinusoidal' pairs sin and cos, so n_embd must be even, "
                             f"got n_embd={self.n_embd} (try n_embd={self.n_embd + 1})")
        self.rope_base = check_real("rope_base", self.rope_base, above=1.0,
                                    hint="10000.0 as in RoFormer; Llama 3 uses 500000.0")
        self.rope_scale = check_real("rope_scale", self.rope_scale, above=0.0,
                                     hint="1.0 = no position interpolation")

    def _check_experts(self) -> None:
        self.n_experts = check_int("n_experts", self.n_experts, 1, hint="1 for a dense MLP")
        self.top_k = check_int("top_k", self.top_k, 1, hint="the number of experts each token uses")
        if self.top_k > self.n_experts:
            raise ValueError(f"top_k={self.top_k} must be at most n_experts={self.n_experts}: each token "
                             f"picks top_k of the n_experts experts (try top_k={self.n_experts}, or "
                             f"n_experts > 1 for a Mixture of Experts)")

    @property
    def head_dim(self) -> int:
        """D: the width of one attention head, n_embd // n_head."""
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads, with None resolved to n_head."""
        return self.n_head if self.n_kv_heads is None else self.n_kv_heads

    @property
    def mlp_hidden_size(self) -> int:
        """The MLP's hidden width, with None resolved to `default_hidden(mlp, n_embd)`."""
        return default_hidden(self.mlp, self.n_embd) if self.mlp_hidden is None else self.mlp_hidden

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the fields (JSON-friendly), the inverse of `from_dict`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GPTConfig:
        """Build a config from `to_dict()` output; an unknown or missing key raises ValueError."""
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s) {unknown}; the fields are {fields}")
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in values]
        if missing:
            raise ValueError(f"GPTConfig is missing required field(s) {missing}")
        return cls(**values)


def _next_multiple(value: int, divisor: int) -> int:
    return -(-value // divisor) * divisor


def _nearest_divisor(value: int, target: int) -> int:
    """The divisor of `value` closest to `target` (the larger one on a tie)."""
    divisors = [d for d in range(1, value + 1) if value % d == 0]
    return min(divisors, key=lambda d: (abs(d - target), -d))


# ---------------------------------------------------------------------------------- model


def default_norm(config: GPTConfig, dim: int) -> nn.Module:
    """The config's norm; as in nanoGPT, `bias=False` drops LayerNorm's shift too."""
    if config.norm == "layernorm":
        return LayerNorm(dim, bias=config.bias)
    return make_norm(config.norm, dim)


def default_mlp(config: GPTConfig) -> nn.Module:
    """A dense MLP of the config's kind, or a Mixture of Experts of them when n_experts > 1."""
    if config.n_experts > 1:
        return MoE(config.n_embd, config.mlp_hidden_size, config.n_experts, top_k=config.top_k,
                   kind=config.mlp, bias=config.bias, dropout=config.dropout)
    return make_mlp(config.mlp, config.n_embd, config.mlp_hidden_size, bias=config.bias,
                    dropout=config.dropout)


class Block(nn.Module):
    """One pre-norm transformer block: `(B, T, C) -> (B, T, C)`.

    `rope` is the model's one RotaryEmbedding (shared by every block) or None; `attention_fn`,
    `norm_cls(dim)` and `mlp_cls(config)` are the swap points described in `GPT`.
    """

    def __init__(
        self,
        config: GPTConfig,
        layer_idx: int,
        *,
        rope: RotaryEmbedding | None = None,
        attention_fn: Callable[..., Tensor] | None = None,
        norm_cls: Callable[[int], nn.Module] | None = None,
        mlp_cls: Callable[[GPTConfig], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        make_norm_layer = norm_cls or (lambda dim: default_norm(config, dim))
        self.norm1 = make_norm_layer(config.n_embd)
        self.attn = CausalSelfAttention(
            config.n_embd, config.n_head, config.n_kv_heads, bias=config.bias, dropout=config.dropout,
            rope=rope, attention_fn=attention_fn, layer_idx=layer_idx)
        self.norm2 = make_norm_layer(config.n_embd)
        self.mlp = (mlp_cls or default_mlp)(config)

    def forward(self, x: Tensor, kv_cache: KVCache | None = None, *, positions: Tensor | None = None,
                attention_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), kv_cache=kv_cache, positions=positions, attention_mask=attention_mask)
        x = x + self.mlp(self.norm2(x))
        return x


class GPT(nn.Module):
    """A decoder-only transformer language model: ids `(B, T)` -> next-token logits `(B, T, V)`.

    Swap points, so a learner's own component can run inside the full model:
      attention_fn(q, k, v, causal) -> out   replaces the attention kernel (see CausalSelfAttention);
      norm_cls(dim) -> nn.Module             builds every norm (norm1, norm2, norm_f);
      mlp_cls(config) -> nn.Module           builds each block's MLP.

    Initialisation (GPT-2, Radford et al. 2019, as in nanoGPT): every weight matrix and embedding
    ~ N(0, 0.02²), biases 0, norm gains 1; the projections that write into the residual stream
    (attention out_proj, MLP fc_out / down_proj) get std 0.02 / √(2·n_layer), because each of the
    2·n_layer residual additions adds its variance to the stream, which would otherwise grow with depth.
    """

    def __init__(
        self,
        config: GPTConfig,
        *,
        attention_fn: Callable[..., Tensor] | None = None,
        norm_cls: Callable[[int], nn.Module] | None = None,
        mlp_cls: Callable[[GPTConfig], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig, got {type(config).__name__} "
                            "(build one with GPTConfig(...) or GPTConfig.from_dict(d))")
        self.config = config
        self.tok_emb = TokenEmbedding(config.vocab_size, config.n_embd)
        self.pos_emb = _position_embedding(config)
        # One rotary table for the whole model: every layer rotates by the same angles.
        self.rope = (RotaryEmbedding(config.head_dim, config.block_size, config.rope_base, config.rope_scale)
                     if config.position == "rope" else None)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(config, i, rope=self.rope, attention_fn=attention_fn, norm_cls=norm_cls, mlp_cls=mlp_cls)
            for i in range(config.n_layer))
        self.norm_f = (norm_cls or (lambda dim: default_norm(config, dim)))(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            # One (V, C) matrix both reads tokens in (row lookup) and scores them out (dot products).
            self.lm_head.weight = self.tok_emb.weight
        self.aux_loss: Tensor = torch.zeros(())
        self._init_weights()

    def _init_weights(self) -> None:
        residual_std = INIT_STD / math.sqrt(2 * self.config.n_layer)
        for name, param in self.named_parameters():  # a tied matrix is listed (and set) once
            if name.endswith(RESIDUAL_PROJECTIONS):
                nn.init.normal_(param, mean=0.0, std=residual_std)
            elif param.dim() >= 2:
                nn.init.normal_(param, mean=0.0, std=INIT_STD)
            elif name.endswith("bias"):
                nn.init.zeros_(param)

    def forward(
        self, ids: Tensor, targets: Tensor | None = None, kv_cache: KVCache | None = None, *,
        positions: Tensor | None = None, attention_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Logits `(B, T, V)` for the token after each position, and the loss if `targets` is given.

        ids: `(B, T)` token ids. targets: `(B, T)` next-token ids (-100 = ignore that position);
        the loss is their mean cross-entropy, the same value as `llmcourse.losses.cross_entropy`.
        kv_cache: a `KVCache(n_layer)`; the ids then continue the cached sequence, at positions
        `kv_cache.length ...`. A Mixture of Experts model also sets `self.aux_loss` (the mean
        load-balancing loss over layers; 0 for a dense model), which training adds to the loss.

        A left-padded batch (chapter 12) gives `positions` `(B, T)`, each token's position in its
        own row (None: `kv_cache.length ...` for every row), and `attention_mask` `(B, T_past + T)`,
        True for real tokens (None: all real), so each row computes what it would alone.
        """
        start = self._check_input(ids, kv_cache)
        if targets is not None and targets.shape != ids.shape:
            raise ValueError(f"targets {tuple(targets.shape)} must have the shape of ids {tuple(ids.shape)}: "
                             "one next-token id per position (-100 to ignore it)")
        if positions is not None:
            check_shape("positions", positions, tuple(ids.shape), hint="one position per token of ids")
        x = self.tok_emb(ids)  # (B, T, C)
        if self.pos_emb is not None:
            # without per-row positions every row continues at `start`: (T,) broadcasts over the batch
            where = torch.arange(start, start + ids.shape[1], device=ids.device) if positions is None else positions
            x = x + self.pos_emb(where)
        x = self.drop(x)
        for block in self.blocks:  # RoPE reads the positions inside attention
            x = block(x, kv_cache=kv_cache, positions=positions, attention_mask=attention_mask)
        logits = self.lm_head(self.norm_f(x))  # (B, T, V)
        self.aux_loss = self._aux_loss(device=logits.device)
        loss = None
        if targets is not None:
            # F.cross_entropy wants classes in dim 1, so flatten (B, T, V) -> (B*T, V). It fuses
            # log-softmax and the lookup, saving a (B, T, V) tensor that the step-by-step
            # llmcourse.losses.cross_entropy keeps for backward; the value is the same.
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        return logits, loss

    def _check_input(self, ids: Tensor, kv_cache: KVCache | None) -> int:
        """Validate ids (B, T) and return the position of its first token."""
        if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.is_floating_point():
            shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
            raise ValueError(f"ids must be an integer tensor of shape (B, T), got {shape}; "
                             "add a batch dimension with ids.unsqueeze(0)")
        start = 0 if kv_cache is None else kv_cache.length
        if start + ids.shape[1] > self.config.block_size:
            cached = f" after {start} cached tokens" if start else ""
            raise ValueError(f"{ids.shape[1]} tokens{cached} exceed block_size={self.config.block_size}; "
                             "feed at most block_size tokens (crop the oldest ones)")
        return start

    def _aux_loss(self, device: torch.device) -> Tensor:
        """Mean of the MoE layers' load-balancing losses: 1 at perfect balance whatever the depth."""
        losses = [block.mlp.aux_loss for block in self.blocks if isinstance(block.mlp, MoE)]
        return torch.stack(losses).mean() if losses else torch.zeros((), device=device)

    @torch.no_grad()
    def generate(self, ids: Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None, *,
                 settings: SamplingSettings | None = None) -> Tensor:
        """Sample `max_new_tokens` tokens after ids `(B, T)` -> `(B, T + max_new_tokens)` (call eval() first).

        temperature 0 is greedy; top_k keeps the k likeliest tokens; `settings` (instead of those
        two) sets every lever of `llmcourse.sampling`. The prompt is run once, then each new token
        alone, reusing cached keys and values (chapter 11 covers decoding, 12 the cache).
        """
        if settings is None:
            settings = SamplingSettings(temperature=temperature, top_k=top_k)
        elif temperature != 1.0 or top_k is not None:
            raise ArgumentError("give either settings or temperature/top_k, not both; "
                                "put them in settings: SamplingSettings(temperature=..., top_k=...)")
        check_int("max_new_tokens", max_new_tokens, 0)
        if ids.shape[1] + max_new_tokens > self.config.block_size:
            raise ArgumentError(f"{ids.shape[1]} prompt tokens + max_new_tokens={max_new_tokens} exceed "
                                f"block_size={self.config.block_size}; shorten the prompt or ask for fewer tokens")
        cache = KVCache(self.config.n_layer)
        logits, _ = self(ids, kv_cache=cache)
        for step in range(max_new_tokens):
            # (B, V): only the last position predicts a new token
            next_id = next_token(logits[:, -1, :], ids, settings, generator)[:, None]
            ids = torch.cat([ids, next_id], dim=1)
            if step < max_new_tokens - 1:  # the last token needs no forward pass
                logits, _ = self(next_id, kv_cache=cache)
        return ids

    def input_major_weights_(self) -> GPT:
        """Lay every linear layer's weight out input-major in memory, in place; returns the model.

        Same shapes `(out, in)`, same values, same state_dict: only the order of the numbers in
        memory changes, to `(in, out)` rows, the layout GPT-2's `Conv1D` uses. A decode step
        multiplies each weight by a single vector, and on a CPU the BLAS library reads this layout
        about 15% faster (bench/bench_generate.py); `runs.load_model` applies it on the CPU. The
        tied output layer is the token embedding, so its lookups become strided, which costs
        nothing at one token per step.
        """
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.weight.is_contiguous():
                module.weight.data = module.weight.data.t().contiguous().t()
        return self

    def num_params(self, non_embedding: bool = False) -> int:
        """Number of parameters (a tied matrix counted once).

        non_embedding=True counts only the transformer blocks and the final norm, leaving out the
        token embedding, learned positions and lm_head (the vocabulary matrices), as Kaplan et al.
        (2020) define model size N: those scale with V, not with depth and width.
        """
        skipped = set()
        if non_embedding:
            tables = [m for m in (self.tok_emb, self.pos_emb, self.lm_head) if m is not None]
            skipped = {id(p) for module in tables for p in module.parameters()}
        unique = {id(p): p for p in self.parameters() if id(p) not in skipped}
        return sum(p.numel() for p in unique.values())

    def save(self, path: str | os.PathLike) -> None:
        """Write config and weights to `path` as an llmcourse checkpoint (`llmcourse.checkpoint`),
        atomically: a temp file renamed over it, so a crash mid-write leaves the previous file intact."""
        save_checkpoint(make_checkpoint(self.config.to_dict(), self.state_dict()), path)

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device | None = None, **swaps: Any) -> GPT:
        """Rebuild the model of any llmcourse checkpoint: one written by `save`, a training run's
        `ckpt.pt` or a `save_weights` file. map_location: where its parameters go (None: the CPU).

        Uses `torch.load(weights_only=True)`, which refuses to run code hidden in a file. `swaps`
        (attention_fn, norm_cls, mlp_cls) are passed to the constructor. A file that is not a
        checkpoint raises CheckpointError.
        """
        model = cls.from_checkpoint(load_checkpoint(path), source=path, **swaps)
        return model if map_location is None else model.to(map_location)

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], source: str | os.PathLike = "checkpoint",
                        **swaps: Any) -> GPT:
        """The model of a checkpoint dict (`load_checkpoint`'s), on the CPU; `source` names it in errors."""
        try:
            model = cls(GPTConfig.from_dict(checkpoint["model_config"]), **swaps)
            model.load_state_dict(checkpoint["model"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{source}: config and weights do not form a valid GPT: "
                                  f"{type(error).__name__}: {error}") from error
        return model


def _position_embedding(config: GPTConfig) -> nn.Module | None:
    """The module adding positions to the token embeddings (None for "rope" and "none")."""
    if config.position == "learned":
        return LearnedPositions(config.block_size, config.n_embd)
    if config.position == "sinusoidal":
        return SinusoidalPositions(config.block_size, config.n_embd)
    return None


# ------------------------------------------------------------------------- counting


def param_breakdown(config: GPTConfig) -> dict[str, int]:
    """Parameters per part of the model, in closed form (no model is built).

    With C = n_embd, V = vocab_size, L = n_layer, D = head_dim, H_kv = kv_heads, h = MLP hidden,
    E = n_experts and b = 1 if bias else 0:
      token_embedding  V·C
      positions        block_size·C for learned positions, else 0 (sinusoidal and RoPE are fixed)
      attention        L·(2·(C·C + b·C) + 2·(C·H_kv·D + b·H_kv·D))   q, out; k, v
      mlp              L·(E·mlp + [E > 1]·C·E)                        experts + router (no bias)
                       mlp = C·h + b·h + h·C + b·C (relu, gelu), plus C·h + b·h more for swiglu's gate
      norms            (2·L + 1)·norm; norm = 2·C for LayerNorm with bias, else C
      lm_head          V·C when untied, else 0 (it is the token embedding)
    """
    c, h, b = config.n_embd, config.mlp_hidden_size, int(config.bias)
    kv_width = config.kv_heads * config.head_dim
    attention = 2 * (c * c + b * c) + 2 * (c * kv_width + b * kv_width)
    one_mlp = (c * h + b * h) + (h * c + b * c)
    if config.mlp == "swiglu":
        one_mlp += c * h + b * h  # the gate projection
    mlp = one_mlp if config.n_experts == 1 else config.n_experts * one_mlp + c * config.n_experts
    norm = 2 * c if config.norm == "layernorm" and config.bias else c
    return {
        "token_embedding": config.vocab_size * c,
        "positions": config.block_size * c if config.position == "learned" else 0,
        "attention": config.n_layer * attention,
        "mlp": config.n_layer * mlp,
        "norms": (2 * config.n_layer + 1) * norm,
        "lm_head": 0 if config.tie_weights else config.vocab_size * c,
    }


def count_params(config: GPTConfig, non_embedding: bool = False) -> int:
    """Closed-form parameter count; equals `GPT(config).num_params(non_embedding)` (tested)."""
    parts = param_breakdown(config)
    if non_embedding:
        parts["token_embedding"] = parts["positions"] = parts["lm_head"] = 0
    return sum(parts.values())


def flops_per_token(config: GPTConfig, seq_len: int | None = None) -> int:
    """Training FLOPs (forward + backward) per token at context length `seq_len` (default block_size).

        6·N_active + 12·L·H·D·T

    6·N: every weight in a matmul costs 2 FLOPs per token forward (multiply + add) and 4 backward
    (gradients for the input and for the weight) (Kaplan et al. 2020, section 2.1). N_active counts
    the matrices a token is multiplied by: attention, MLP (only top_k of the experts, plus the
    router), and the output layer V·C, tied or not (its matmul happens either way); lookups, biases
    and norm gains are left out. 12·L·H·D·T: the two attention matmuls (q·kᵀ and weights·v), each
    2·H·D·T FLOPs per token and layer, times 3 for forward + backward (PaLM, Chowdhery et al. 2022,
    appendix B). The causal mask's skipped half is counted, as PaLM does. Used for MFU.
    """
    seq_len = config.block_size if seq_len is None else seq_len
    check_int("seq_len", seq_len, 1, hint="the context length the model is run at")
    c, h = config.n_embd, config.mlp_hidden_size
    kv_width = config.kv_heads * config.head_dim
    attention = 2 * c * c + 2 * c * kv_width
    one_mlp = (3 if config.mlp == "swiglu" else 2) * c * h
    mlp = one_mlp if config.n_experts == 1 else config.top_k * one_mlp + c * config.n_experts
    active = config.n_layer * (attention + mlp) + config.vocab_size * c
    return 6 * active + 12 * config.n_layer * config.n_head * config.head_dim * seq_len
