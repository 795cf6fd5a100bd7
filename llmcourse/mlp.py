"""Chapter 07: the feed-forward half of a block. MLPs (ReLU, GELU, SwiGLU) and Mixture of Experts.

Attention moves information between positions; the MLP then works on each position on its own:
widen the C numbers to `hidden` (usually 4C), apply a non-linearity, and project back to C.
Most of a transformer's parameters live here.

- `MLP`: `fc_out(act(fc_in(x)))` with ReLU (Vaswani et al. 2017) or GELU (GPT-2).
- `SwiGLU` (Shazeer 2020): a *gated* MLP, `down(silu(gate(x)) * up(x))`, used by Llama and Mistral.
- `MoE` (Shazeer et al. 2017; Switch, Fedus et al. 2021; Mixtral, Jiang et al. 2024): several
  expert MLPs and a router that sends each token to its top k of them. The parameter count grows
  with the number of experts while the compute per token grows only with k.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from llmcourse.checks import check_choice, check_int, check_real, check_shape

MLP_KINDS = ("relu", "gelu", "swiglu")
DROPOUT_HINT = "the probability of zeroing a unit while training"


# ---------------------------------------------------------------- non-linearities


def gelu(x: Tensor) -> Tensor:
    """GELU, tanh approximation (Hendrycks & Gimpel 2016), as in GPT-2. Elementwise, any shape.

        gelu(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))

    A smooth ReLU: about x for large x, about 0 for very negative x, slightly negative in between.
    Same as `torch.nn.functional.gelu(x, approximate="tanh")`.
    """
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def swiglu(x_gate: Tensor, x_up: Tensor) -> Tensor:
    """The SwiGLU gate: silu(x_gate) * x_up, with silu(z) = z * sigmoid(z). Shapes equal, e.g. (B, T, H).

    One projection decides how much of each hidden unit passes (the gate), the other supplies
    the value (up). Shazeer (2020) found this beats ReLU and GELU at equal parameter count.
    """
    check_shape("x_up", x_up, tuple(x_gate.shape), hint="the shape of x_gate: both are projections of the "
                "same tokens to the hidden size")
    return x_gate * torch.sigmoid(x_gate) * x_up


# The model runs PyTorch's fused kernels; `gelu` above is the same function written out (tested equal).
ACTIVATIONS = {"relu": torch.relu, "gelu": functools.partial(F.gelu, approximate="tanh")}


# ---------------------------------------------------------------- dense MLPs


class MLP(nn.Module):
    """Position-wise feed-forward network: `(B, T, C) -> (B, T, C)`.

        fc_in: C -> hidden,  activation ("relu" or "gelu"),  fc_out: hidden -> C,  dropout

    Parameters: 2·C·hidden weights (+ hidden + C biases when bias=True).
    """

    def __init__(self, n_embd: int, hidden: int, activation: str = "gelu", bias: bool = False,
                 dropout: float = 0.0) -> None:
        super().__init__()
        check_int("n_embd", n_embd, 1)
        check_int("hidden", hidden, 1, hint="usually 4 * n_embd")
        check_choice("activation", activation, ACTIVATIONS, hint="for the gated swiglu, use SwiGLU or make_mlp")
        check_real("dropout", dropout, minimum=0, below=1, hint=DROPOUT_HINT)
        self.activation = activation
        self.fc_in = nn.Linear(n_embd, hidden, bias=bias)
        self.fc_out = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc_out(ACTIVATIONS[self.activation](self.fc_in(x))))

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"


class SwiGLU(nn.Module):
    """Gated feed-forward network (Shazeer 2020): `(B, T, C) -> (B, T, C)`.

        down_proj(silu(gate_proj(x)) * up_proj(x)),  then dropout

    Three matrices instead of two, so at equal parameters hidden is 8C/3 rather than 4C
    (see `default_hidden`). Parameters: 3·C·hidden weights (+ 2·hidden + C biases when bias=True).
    """

    def __init__(self, n_embd: int, hidden: int, bias: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        check_int("n_embd", n_embd, 1)
        check_int("hidden", hidden, 1, hint="see default_hidden")
        check_real("dropout", dropout, minimum=0, below=1, hint=DROPOUT_HINT)
        self.gate_proj = nn.Linear(n_embd, hidden, bias=bias)
        self.up_proj = nn.Linear(n_embd, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.down_proj(swiglu(self.gate_proj(x), self.up_proj(x))))


def make_mlp(kind: str, n_embd: int, hidden: int, bias: bool = False, dropout: float = 0.0) -> nn.Module:
    """Build the feed-forward network named `kind`: "relu" or "gelu" (an `MLP`) or "swiglu"."""
    check_choice("kind", kind, MLP_KINDS)
    if kind == "swiglu":
        return SwiGLU(n_embd, hidden, bias=bias, dropout=dropout)
    return MLP(n_embd, hidden, activation=kind, bias=bias, dropout=dropout)


def default_hidden(kind: str, n_embd: int, multiple_of: int = 64) -> int:
    """The usual hidden width for an MLP of this kind.

    - relu, gelu: 4·C (Vaswani et al. 2017; GPT-2).
    - swiglu: ⌈8C/3⌉ rounded UP to a multiple of `multiple_of` (64 by default). Three C×hidden
      matrices with hidden = 8C/3 hold as many weights as two with 4C; rounding up keeps matrix
      shapes friendly to GPU tiles. C=768 gives exactly 2048. Llama uses multiple_of=256, which for
      C=4096 gives its 11008.
    """
    check_choice("kind", kind, MLP_KINDS)
    check_int("n_embd", n_embd, 1)
    check_int("multiple_of", multiple_of, 1, hint="64 by default, 256 in Llama")
    if kind != "swiglu":
        return 4 * n_embd
    two_thirds_of_4c = -(-8 * n_embd // 3)  # ceil(8C/3) in integers: no float rounding surprises
    return -(-two_thirds_of_4c // multiple_of) * multiple_of


def mlp_param_count(kind: str, n_embd: int, hidden: int, bias: bool = False) -> int:
    """Closed-form number of parameters of `make_mlp(kind, n_embd, hidden, bias)`."""
    check_choice("kind", kind, MLP_KINDS)
    n_in_projections = 2 if kind == "swiglu" else 1  # gate and up, or fc_in
    weights = (n_in_projections + 1) * n_embd * hidden
    biases = n_in_projections * hidden + n_embd if bias else 0
    return weights + biases


# ---------------------------------------------------------------- Mixture of Experts


def top_k_route(router_logits: Tensor, k: int, renormalize: bool = True) -> tuple[Tensor, Tensor]:
    """Pick each token's k experts and how much each one counts.

    renormalize=True (default), Mixtral's convention: keep the k largest logits and softmax over
    those k only, so a token's weights sum to 1. (Mixtral's code takes the softmax over all E and
    renormalises the top k: the same numbers, as the common denominator cancels.) With k=1 the
    weight is then always exactly 1, so the router learns only from the load-balancing loss.
    renormalize=False, Switch's convention (Fedus et al. 2021): each chosen expert is weighted by
    its probability under the softmax over all E, so the weights sum to less than 1 and the router
    gets a gradient from the main loss even with k=1.

    The softmax runs in float32, Switch's "selective precision": routing is sensitive to rounding.
    Shapes: router_logits `(N, E)` -> weights `(N, k)` (dtype of the logits), experts `(N, k)`
    (long, best first).
    """
    check_shape("router_logits", router_logits, ("N", "E"), hint="one row of E expert scores per token; "
                "flatten (B, T, E) with .reshape(-1, E)")
    check_int("k", k, 1, below=router_logits.shape[-1] + 1, hint="a token picks k of the E experts")
    top_logits, experts = router_logits.topk(k, dim=-1)
    if renormalize:
        weights = torch.softmax(_at_least_float32(top_logits), dim=-1)
    else:
        weights = torch.softmax(_at_least_float32(router_logits), dim=-1).gather(-1, experts)
    return weights.to(router_logits.dtype), experts


def load_balancing_loss(router_logits: Tensor, experts: Tensor, n_experts: int) -> Tensor:
    """Switch Transformer's auxiliary loss (Fedus et al. 2021, eq. 4), `E · Σ_e f_e · P_e`.

    f_e: the fraction of token-slots (N tokens × k choices) routed to expert e (counted, no
    gradient). P_e: the router's mean probability for e over the N tokens (softmax over all E;
    the gradient flows through it). Both sum to 1 over e, and the loss is 1 when both are uniform
    (1/E each) and E when every token goes to one expert that the router is sure about.
    Minimising it pushes probability away from overloaded experts.

    We divide the counts by N·k, so perfect balance scores 1 for any k; Hugging Face's
    Mixtral loss divides by N only and scores k.

    Shapes: router_logits `(N, E)`, experts `(N, k)` long -> a scalar (float32; float64 for
    float64 logits).
    """
    check_int("n_experts", n_experts, 1)
    check_shape("router_logits", router_logits, ("N", n_experts), hint="one row of expert scores per token")
    check_shape("experts", experts, (router_logits.shape[0], "k"), hint="the experts top_k_route chose, "
                "one row per row of router_logits")
    mean_probability = torch.softmax(_at_least_float32(router_logits), dim=-1).mean(0)  # P: (E,)
    slots_per_expert = torch.bincount(experts.flatten(), minlength=n_experts)
    fraction_routed = slots_per_expert.to(mean_probability.dtype) / experts.numel()  # f: (E,)
    return n_experts * (fraction_routed * mean_probability).sum()


class MoE(nn.Module):
    """A sparse Mixture-of-Experts feed-forward layer: `(B, T, C) -> (B, T, C)`.

        out(x) = Σ over the token's top k experts e of  w_e(x) · expert_e(x)

    `router` (C -> E, no bias) scores the experts, `top_k_route` picks k and their weights
    (`renormalize` chooses Mixtral's or Switch's weighting, see there), and
    each expert (`make_mlp(kind, n_embd, hidden)`) runs only on the tokens sent to it. Every
    forward stores the load-balancing loss in `self.aux_loss` (a scalar; None before the first
    forward) for the training loop to add, scaled by a small coefficient (Switch uses 0.01).

    With n_experts=1 and top_k=1 this is exactly the dense MLP: one expert, weight 1.
    """

    def __init__(self, n_embd: int, hidden: int, n_experts: int, top_k: int = 2, kind: str = "swiglu",
                 bias: bool = False, dropout: float = 0.0, renormalize: bool = True) -> None:
        super().__init__()
        check_int("n_embd", n_embd, 1)
        check_int("hidden", hidden, 1, hint="each expert's hidden width")
        check_int("n_experts", n_experts, 1)
        check_int("top_k", top_k, 1, below=n_experts + 1, hint="a token cannot use more experts than exist")
        check_choice("kind", kind, MLP_KINDS)
        check_real("dropout", dropout, minimum=0, below=1, hint=DROPOUT_HINT)
        self.n_experts = n_experts
        self.top_k = top_k
        self.renormalize = renormalize
        self.router = nn.Linear(n_embd, n_experts, bias=False)
        self.experts = nn.ModuleList(
            make_mlp(kind, n_embd, hidden, bias=bias, dropout=dropout) for _ in range(n_experts))
        self.aux_loss: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        batch_shape, n_embd = x.shape[:-1], x.shape[-1]
        tokens = x.reshape(-1, n_embd)                                 # (N, C)
        router_logits = self.router(tokens)                            # (N, E)
        weights, experts = top_k_route(router_logits, self.top_k, self.renormalize)  # (N, k), (N, k)
        self.aux_loss = load_balancing_loss(router_logits, experts, self.n_experts)

        # Each of the N·k (token, expert) slots, flattened and grouped by expert with one sort,
        # so the loop below runs over experts (E iterations), never over tokens.
        slot_expert = experts.flatten()                                # (N·k,)
        slot_token = torch.arange(tokens.shape[0], device=x.device).repeat_interleave(self.top_k)
        slot_weight = weights.flatten()
        by_expert = slot_expert.argsort(stable=True)
        # .tolist() copies E counts to the host (one sync on a GPU): split needs Python ints.
        slots_per_expert = torch.bincount(slot_expert, minlength=self.n_experts).tolist()

        out = torch.zeros_like(tokens)
        for expert, slots in zip(self.experts, by_expert.split(slots_per_expert)):
            if slots.numel() == 0:
                continue  # an idle expert does no work and gets no gradient this step
            token_ids = slot_token[slots]
            expert_out = expert(tokens.index_select(0, token_ids))    # (n_e, C)
            weighted = expert_out * slot_weight[slots].unsqueeze(-1)
            # A token picked by several experts receives several rows: index_add_ sums them.
            out.index_add_(0, token_ids, weighted.to(out.dtype))
        return out.reshape(*batch_shape, n_embd)

    def extra_repr(self) -> str:
        return f"n_experts={self.n_experts}, top_k={self.top_k}, renormalize={self.renormalize}"


def moe_param_counts(n_embd: int, hidden: int, n_experts: int, top_k: int = 2, kind: str = "swiglu",
                     bias: bool = False) -> dict[str, int]:
    """Parameters of `MoE(...)`: "total" (all experts + router) and "active" (used per token: top_k
    experts + router), for one layer. Over its 32 layers Mixtral 8x7B's MoE layers hold 45.1B and
    use 11.3B per token; with attention and embeddings that makes its 46.7B total and 12.9B active
    (Jiang et al. 2024)."""
    per_expert = mlp_param_count(kind, n_embd, hidden, bias)
    router = n_embd * n_experts
    return {"total": n_experts * per_expert + router, "active": top_k * per_expert + router}


# ---------------------------------------------------------------- helpers


def _at_least_float32(x: Tensor) -> Tensor:
    """bf16/fp16 -> float32 for a softmax; float32 and float64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


