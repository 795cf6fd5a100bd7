"""Chapter 12 benchmark: how fast `GPT.generate` decodes, against `transformers` and against itself.

Run from the repository root:  .venv/bin/python bench/bench_generate.py   (--quick: a smaller run)
Prints four tables from one run; compare the ratios (machines are noisy, absolute times are not
the point). Every model has random weights (nothing is downloaded); greedy, float32, on the CPU.

1. `GPT.generate` against `transformers`' `GPT2LMHeadModel.generate`, both GPT-2 small's shape
   (12 layers, 12 heads, width 768, vocabulary 50257, 1024 positions), KV cache on, batch 1.
2. The same decoding without a cache (a full forward over the whole sequence for every token).
3. Batched decoding on the `cpu-tiny` shape: batch 16 against batch 1 (`GPT.generate`, prompts
   of equal length; the padded engine `llmcourse.generate` takes text and stops at end-of-text,
   so it is not timed here).
4. Speculative decoding (`llmcourse.speculative`): the GPT-2-shape target with a small random
   draft, and with itself as the draft (every token accepted: the method's pure overhead).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable

import torch

from llmcourse.model import GPT, GPTConfig
from llmcourse.sampling import SamplingSettings
from llmcourse.speculative import speculative_generate
from llmcourse.train_config import CONFIGS

from timing import alternate  # bench/timing.py (python puts the script's folder on sys.path)

GREEDY = SamplingSettings(temperature=0)
GPT2_SMALL = {"vocab_size": 50257, "block_size": 1024, "n_layer": 12, "n_head": 12, "n_embd": 768}


# ---------------------------------------------------------------------------------- models and prompts


def seeded(config: GPTConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(config).eval()


def gpt2_like(**changes: int) -> GPTConfig:
    """Our config closest to GPT-2: biases, GELU, learned positions, LayerNorm, tied output."""
    return GPTConfig(**{**GPT2_SMALL, **changes}, bias=True, mlp="gelu", position="learned",
                     norm="layernorm", tie_weights=True)


def prompt(batch: int, length: int, vocab: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------- 1 and 2


def hf_gpt2():
    """`transformers`' GPT-2 with random weights, set to produce exactly the requested tokens."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=12, n_head=12, n_embd=768, vocab_size=50257,
                                       n_positions=1024)).eval()
    # no end-of-text stop: a random model could emit it and end early, timing fewer tokens
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def no_cache_generate(model: GPT, ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy decoding the slow way: every step runs the whole sequence `(B, T + step)` again."""
    for _ in range(max_new_tokens):
        logits, _ = model(ids)
        ids = torch.cat([ids, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
    return ids


@torch.no_grad()
def against_transformers(new_tokens: int, prompt_length: int, repeats: int, no_cache: bool) -> GPT:
    ours = seeded(gpt2_like())
    # The same model with its weights laid out input-major (GPT.input_major_weights_), as
    # `runs.load_model` does on a CPU and as GPT-2's Conv1D stores them: same values, same tokens.
    relaid = seeded(gpt2_like()).input_major_weights_()
    theirs = hf_gpt2()
    ids = prompt(1, prompt_length, GPT2_SMALL["vocab_size"])
    outputs = {}
    runs = {
        "llmcourse GPT.generate": lambda: outputs.__setitem__("ours", ours.generate(ids, new_tokens, temperature=0)),
        "  input-major weights": lambda: outputs.__setitem__("relaid", relaid.generate(ids, new_tokens, temperature=0)),
        "transformers generate": lambda: outputs.__setitem__("theirs", theirs.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False,
            use_cache=True)),
    }
    times = alternate(runs, repeats)
    assert outputs["ours"].shape == outputs["theirs"].shape == (1, prompt_length + new_tokens)
    assert torch.equal(outputs["relaid"], outputs["ours"])
    print(f"1. greedy decoding, GPT-2 small shape ({ours.num_params() / 1e6:.1f}M params; transformers "
          f"{theirs.num_parameters() / 1e6:.1f}M), float32, batch 1, {prompt_length}-token prompt, "
          f"{new_tokens} new tokens, KV cache on; best of {repeats}")
    print(f"{'':<26} {'time (s)':>9} {'tokens/s':>9}")
    for name, seconds in times.items():
        print(f"{name:<26} {seconds:>9.2f} {new_tokens / seconds:>9.1f}")
    ratio = times["transformers generate"] / times["llmcourse GPT.generate"]
    relaid_ratio = times["transformers generate"] / times["  input-major weights"]
    print(f"llmcourse / transformers tokens/s: {ratio:.2f}x, with input-major weights {relaid_ratio:.2f}x "
          "(goal >= 1.0)\n")
    if no_cache:
        without_cache(ours, ids, new_tokens, times["llmcourse GPT.generate"], outputs["ours"])
    return ours


def without_cache(model: GPT, ids: torch.Tensor, new_tokens: int, cached_seconds: float,
                  cached_output: torch.Tensor) -> None:
    model(ids)  # warm-up: the first forward pays for allocations
    start = time.perf_counter()
    output = no_cache_generate(model, ids, new_tokens)
    seconds = time.perf_counter() - start
    print(f"2. the same decoding without a KV cache (one run; the cached time is section 1's)")
    print(f"{'':<26} {'time (s)':>9} {'tokens/s':>9}")
    print(f"{'KV cache':<26} {cached_seconds:>9.2f} {new_tokens / cached_seconds:>9.1f}")
    print(f"{'no cache':<26} {seconds:>9.2f} {new_tokens / seconds:>9.1f}")
    same = "identical" if torch.equal(output, cached_output) else "DIFFERENT"
    print(f"cache / no cache tokens/s: {seconds / cached_seconds:.1f}x; tokens {same}\n")


# ---------------------------------------------------------------------------------- 3


@torch.no_grad()
def batched(batch: int, new_tokens: int, prompt_length: int, repeats: int) -> None:
    setup = CONFIGS["cpu-tiny"]
    model = seeded(setup.gpt_config(setup.vocab_size))
    runs = {f"GPT.generate, batch {size}": (lambda ids=prompt(size, prompt_length, setup.vocab_size):
                                            model.generate(ids, new_tokens, temperature=0))
            for size in (1, batch)}
    times = alternate(runs, repeats)
    sizes = {name: int(name.rsplit(" ", 1)[1]) for name in runs}
    print(f"3. batched greedy decoding, cpu-tiny shape ({model.num_params() / 1e6:.2f}M params), "
          f"{prompt_length}-token prompts of equal length, {new_tokens} new tokens each; best of {repeats}")
    print(f"{'':<34} {'time (s)':>9} {'tokens/s':>9} {'vs batch 1':>11}")
    single = new_tokens / times["GPT.generate, batch 1"]
    for name, seconds in times.items():
        rate = sizes[name] * new_tokens / seconds
        print(f"{name:<34} {seconds:>9.3f} {rate:>9.0f} {rate / single:>10.2f}x")
    print(f"(goal: batch {batch} >= 4x the tokens/s of batch 1)\n")


# ---------------------------------------------------------------------------------- 4


@torch.no_grad()
def speculative(target: GPT, new_tokens: int, prompt_length: int, k: int, repeats: int) -> None:
    draft = seeded(gpt2_like(n_layer=2, n_head=4, n_embd=256), seed=1)
    ids = prompt(1, prompt_length, GPT2_SMALL["vocab_size"])
    stats = {}

    def run_with(name: str, draft_model: GPT) -> Callable[[], object]:
        def run() -> None:
            output, stats[name] = speculative_generate(target, draft_model, ids, new_tokens, k=k, settings=GREEDY)
            assert torch.equal(output, reference), "speculative greedy output differs from GPT.generate"
        return run

    reference = target.generate(ids, new_tokens, temperature=0)
    runs = {"GPT.generate (target alone)": lambda: target.generate(ids, new_tokens, temperature=0),
            f"speculative, 2x256 draft, k={k}": run_with("draft", draft),
            f"speculative, self-draft, k={k}": run_with("self", target)}
    times = alternate(runs, repeats)
    print(f"4. speculative greedy decoding, GPT-2-shape target ({target.num_params() / 1e6:.1f}M) and a "
          f"2-layer width-256 draft ({draft.num_params() / 1e6:.1f}M), both random; {new_tokens} new "
          f"tokens; best of {repeats}; every output checked equal to the target's own")
    print(f"{'':<34} {'time (s)':>9} {'tokens/s':>9} {'speed-up':>9} {'accepted':>9} {'target fwd':>11}")
    alone = times["GPT.generate (target alone)"]
    for (name, seconds), key in zip(times.items(), (None, "draft", "self")):
        accepted = f"{stats[key].acceptance_rate:>9.0%}" if key else f"{'':>9}"
        forwards = stats[key].target_forwards if key else new_tokens
        print(f"{name:<34} {seconds:>9.2f} {new_tokens / seconds:>9.1f} {alone / seconds:>8.2f}x "
              f"{accepted} {forwards:>11}")
    print()


# ---------------------------------------------------------------------------------- profile


def profile(model: GPT, new_tokens: int, prompt_length: int, top: int) -> None:
    """cProfile of `GPT.generate`: where the Python side spends the time, by own time."""
    ids = prompt(1, prompt_length, model.config.vocab_size)
    model.generate(ids, 4, temperature=0)
    profiler = cProfile.Profile()
    profiler.enable()
    model.generate(ids, new_tokens, temperature=0)
    profiler.disable()
    print(f"profile of GPT.generate, {new_tokens} new tokens (cProfile, sorted by own time)")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer tokens and one timed round each")
    parser.add_argument("--new-tokens", type=int, default=200)
    parser.add_argument("--prompt", type=int, default=16, help="prompt length in tokens")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--k", type=int, default=4, help="draft tokens per round (section 4)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["transformers", "no-cache", "batch", "speculative"])
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also print the top N functions of a cProfile of GPT.generate")
    args = parser.parse_args()
    if args.quick:
        args.new_tokens, args.repeats = min(args.new_tokens, 50), 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    target = None
    if "transformers" not in args.skip:
        target = against_transformers(args.new_tokens, args.prompt, args.repeats, "no-cache" not in args.skip)
    if "batch" not in args.skip:
        batched(args.batch, min(args.new_tokens, 100), args.prompt, args.repeats)
    target = target or seeded(gpt2_like())
    if "speculative" not in args.skip:
        speculative(target, args.new_tokens, args.prompt, args.k, args.repeats)
    if args.profile:
        profile(target, args.new_tokens, args.prompt, args.profile)


if __name__ == "__main__":
    main()
