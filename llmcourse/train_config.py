"""Chapters 09-10: what to train. One `TrainConfig` fixes a run; `CONFIGS` names the course's runs.

A config is plain data (a dataclass), so a checkpoint keeps it as a dict and the command line sets
any field with `key=value` (`from_overrides`):

    python -m llmcourse pretrain --config cpu-tiny max_steps=200 model.n_layer=6 out_dir=runs/deeper
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from llmcourse.checks import check_choice, check_flag, check_int, check_real
from llmcourse.model import GPTConfig

DTYPES = ("auto", "float32", "bfloat16")


@dataclass
class TrainConfig:
    """Everything that fixes a training run. `model` holds `GPTConfig` fields except `vocab_size`
    (the tokenizer's) and `block_size` (this config's); `dataclasses.asdict` of it is the record
    a checkpoint keeps.

    One optimizer step sees batch_size x block_size x grad_accum_steps x world_size tokens.
    """

    # data
    corpus: str = "tinyworld"
    corpus_chars: int = 1_000_000
    vocab_size: int = 512
    tokenizer_chars: int = 2_000_000  # the tokenizer learns its merges from this much of the corpus
    val_fraction: float = 0.05  # the corpus's tail, never trained on
    data_dir: str = ""  # cache of tokenizers and token files ("": $LLMCOURSE_CACHE or ~/.cache/llmcourse)
    # model
    model: dict[str, Any] = field(default_factory=lambda: {"n_layer": 2, "n_head": 2, "n_embd": 64})
    # optimization
    batch_size: int = 16
    block_size: int = 64
    grad_accum_steps: int = 1
    max_steps: int = 100
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 10
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # max global gradient norm (a huge value turns clipping off)
    aux_loss_weight: float = 0.01  # Mixture-of-Experts load balancing (ignored by dense models)
    # bookkeeping
    eval_every: int = 50
    eval_batches: int = 10
    sample_every: int = 0  # 0: never
    checkpoint_every: int = 100  # a checkpoint is also written when training ends
    log_every: int = 10
    out_dir: str = "runs/default"
    seed: int = 1337
    # hardware
    device: str = "auto"
    dtype: str = "auto"  # auto: bfloat16 autocast on a CUDA GPU that supports it, else float32
    compile: bool = False

    def __post_init__(self) -> None:
        # Each check returns the value as a plain int or float, which is what a checkpoint can hold
        # (`torch.load(weights_only=True)` refuses numpy scalars).
        for name in ("corpus_chars", "vocab_size", "tokenizer_chars", "batch_size", "block_size",
                     "grad_accum_steps", "max_steps", "eval_batches", "log_every"):
            setattr(self, name, check_int(name, getattr(self, name), 1))
        for name in ("warmup_steps", "eval_every", "sample_every", "checkpoint_every", "seed"):
            setattr(self, name, check_int(name, getattr(self, name), 0))
        if self.warmup_steps > self.max_steps:
            raise ValueError(f"warmup_steps={self.warmup_steps} must be at most max_steps={self.max_steps} "
                             f"(a tenth of the run is common: warmup_steps={self.max_steps // 10})")
        self.grad_clip = check_real("grad_clip", self.grad_clip, above=0, hint="1.0 is usual")
        for name in ("lr", "min_lr", "weight_decay", "aux_loss_weight"):
            setattr(self, name, check_real(name, getattr(self, name), minimum=0))
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} must be at most lr={self.lr} (lr / 10 is common)")
        self.val_fraction = check_real("val_fraction", self.val_fraction, above=0, below=1, hint="e.g. 0.05")
        check_choice("dtype", self.dtype, DTYPES)
        check_flag("compile", self.compile)
        self.gpt_config(vocab_size=self.vocab_size)  # raises on a bad model setting

    def gpt_config(self, vocab_size: int) -> GPTConfig:
        """The model's GPTConfig for a tokenizer of `vocab_size` ids."""
        for fixed in ("vocab_size", "block_size"):
            if fixed in self.model:
                raise ValueError(f"model.{fixed} is set by the trainer (the tokenizer's vocabulary and "
                                 f"the config's block_size); remove it from model and set {fixed} instead")
        return GPTConfig(vocab_size=vocab_size, block_size=self.block_size, **self.model)

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimizer step on one process (times the world size under torchrun)."""
        return self.batch_size * self.block_size * self.grad_accum_steps


def from_overrides(base: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """A copy of `base` (a TrainConfig or a subclass, e.g. chapter 13's FinetuneConfig) with `key=value` settings applied, e.g. ["max_steps=20", "model.n_layer=6"].

    Values are parsed by the field's type (ints accept 1e3, bools true/false/1/0). An unknown key
    (with the closest known one suggested) or a value of the wrong type raises ValueError naming it.
    """
    values = dataclasses.asdict(base)
    types = {f.name: f.type for f in dataclasses.fields(base) if f.name != "model"}
    model_types = {f.name: f.type for f in dataclasses.fields(GPTConfig)}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"override {item!r} is not key=value (e.g. max_steps=200)")
        if key.startswith("model."):
            name = key.removeprefix("model.")
            if name not in model_types:
                raise ValueError(f"unknown model setting {key!r}; "
                                 f"{_suggest(name, model_types, prefix='model.')}")
            values["model"][name] = _parse_value(key, text, model_types[name])
        elif key in types:
            values[key] = _parse_value(key, text, types[key])
        elif key in model_types:
            raise ValueError(f"unknown setting {key!r}; model settings take a prefix: model.{key}={text}")
        else:
            raise ValueError(f"unknown setting {key!r}; {_suggest(key, types)}")
    return type(base)(**values)


def _suggest(key: str, known: Sequence[str], prefix: str = "") -> str:
    """"did you mean X?" for the known name closest to a misspelled `key`, else the list of names."""
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        return f"did you mean {prefix}{close[0]}?"
    return f"known: {', '.join(prefix + name for name in known)}"


def _parse_value(key: str, text: str, annotation: str) -> Any:
    """`text` as the type named by a dataclass annotation ("int", "float | None", ...)."""
    text = text.strip()
    if not isinstance(annotation, str):  # a real type, where a module has no `from __future__ import annotations`
        annotation = getattr(annotation, "__name__", str(annotation))
    kinds = [part.strip() for part in annotation.split("|")]
    if "None" in kinds and text.lower() in ("none", "null"):
        return None
    if "bool" in kinds:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ValueError(f"{key}={text!r}: expected true or false")
    try:
        if "int" in kinds:
            number = float(text)  # accepts 1e3
            if not number.is_integer():
                raise ValueError
            return int(number)
        if "float" in kinds:
            return float(text)
    except ValueError:
        raise ValueError(f"{key}={text!r}: expected {' or '.join(kinds)}") from None
    return text


# Readable TinyWorld stories within minutes on 2 CPU cores (book/runs/cpu-tiny/run.json has the
# recorded run: its time, machine and losses).
_CPU_TINY = TrainConfig(
    corpus_chars=16_000_000, vocab_size=1024,
    model={"n_layer": 4, "n_head": 4, "n_embd": 128},
    batch_size=32, block_size=128, max_steps=1500, lr=2e-3, min_lr=2e-4, warmup_steps=100,
    eval_every=100, eval_batches=10, sample_every=500, checkpoint_every=500, log_every=10,
    out_dir="runs/cpu-tiny",
)

CONFIGS: dict[str, TrainConfig] = {
    "cpu-tiny": _CPU_TINY,
    # cpu-tiny with rotary positions, whose context chapter 16 extends (book/runs/cpu-rope); the
    # same data settings, so it reuses cpu-tiny's tokenizer and token file.
    "cpu-rope": dataclasses.replace(_CPU_TINY, model={**_CPU_TINY.model, "position": "rope"},
                                    out_dir="runs/cpu-rope"),
    # GPT-2 small's shape (12 layers, 12 heads, width 768, 1024 positions) on one GPU, bf16.
    "gpu-small": TrainConfig(
        corpus_chars=200_000_000, vocab_size=1536,  # TinyWorld has about 1700 useful tokens
        model={"n_layer": 12, "n_head": 12, "n_embd": 768},
        batch_size=16, block_size=1024, grad_accum_steps=2, max_steps=5000, lr=6e-4, min_lr=6e-5,
        warmup_steps=200, eval_every=250, eval_batches=20, sample_every=1000, checkpoint_every=1000,
        log_every=10, out_dir="runs/gpu-small", compile=True,
    ),
}


def get_config(name: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """The named config from CONFIGS with `overrides` applied."""
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose one of {', '.join(CONFIGS)}")
    return from_overrides(CONFIGS[name], overrides)
