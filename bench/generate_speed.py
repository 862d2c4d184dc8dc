"""Generation-speed benchmark: tokens per second with and without the KV cache.

Generates 500 new tokens (after a one-character prompt) from chapter 5's model, once with the plain
loop (the whole context recomputed at every step) and once with the KV cache, checks that both give
the same tokens, and prints tokens per second for each and their ratio. Each figure is the best of
`--repeats` runs.

Chapter 5's model has learned absolute positions and a context of 128 tokens. Past the first 128
tokens, the window slides by one at every step, every position shifts, and to give exactly the plain
loop's tokens the cache must be rebuilt from the whole window at each step: only the first window
is cheap. The benchmark therefore also reports that first window alone, and the same model shape
with a context long enough for all 500 tokens (untrained weights: the arithmetic, and so the speed,
does not depend on the values of the weights).

    python bench/generate_speed.py                              # notebooks/runs/chapter5
    python bench/generate_speed.py --ckpt runs/cpu --threads 2
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from minigpt_lib import GPT, GPTConfig, get_preset, load_checkpoint
from minigpt_lib.settings import hardware_description

DEFAULT_CKPT = Path(__file__).resolve().parents[1] / "notebooks" / "runs" / "chapter5"


def timed_generate(model: GPT, new_tokens: int, use_cache: bool, repeats: int) -> tuple[float, torch.Tensor]:
    """Best wall time of `repeats` generations of `new_tokens` tokens, and the tokens generated."""
    start_ids = torch.zeros(1, 1, dtype=torch.long)
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = model.generate(start_ids, new_tokens, temperature=0.8, seed=0, use_cache=use_cache)
        best = min(best, time.perf_counter() - start)
    return best, out


def compare(name: str, model: GPT, new_tokens: int, repeats: int) -> float:
    """Print tokens/s without and with the cache for one model; returns the ratio."""
    plain_s, plain_out = timed_generate(model, new_tokens, use_cache=False, repeats=repeats)
    cached_s, cached_out = timed_generate(model, new_tokens, use_cache=True, repeats=repeats)
    same = torch.equal(plain_out, cached_out)
    ratio = plain_s / cached_s
    print(
        f"{name:58} {new_tokens / plain_s:9.0f} {new_tokens / cached_s:9.0f} {ratio:7.2f}x   {'yes' if same else 'NO'}"
    )
    if not same:
        raise SystemExit("error: the cache changed the tokens")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, default=DEFAULT_CKPT, help="checkpoint folder (default: chapter 5's)")
    parser.add_argument("--tokens", type=int, default=500, help="new tokens per generation (default 500)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the best is kept (default 3)")
    parser.add_argument("--threads", type=int, help="PyTorch CPU threads (default: PyTorch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    if (args.ckpt / "checkpoint.json").is_file():
        model, _, _ = load_checkpoint(args.ckpt)
        source = f"checkpoint {args.ckpt}"
    else:
        model = GPT(get_preset("cpu").model_config(vocab_size=65))
        source = f"no checkpoint at {args.ckpt}: an untrained model of the cpu preset's shape"
    model.eval()
    config = model.config
    print(
        f"{source}: {model.num_params():,} parameters, {config.n_layer} layers, width {config.n_embd}, "
        f"context {config.block_size}"
    )
    print(hardware_description())
    print(f"{'':58} {'plain':>9} {'cached':>9} {'ratio':>8}   same tokens")
    print(f"{'':58} {'tokens/s':>9} {'tokens/s':>9}")

    ratio = compare(
        f"{args.tokens} new tokens, context {config.block_size} (the target)", model, args.tokens, args.repeats
    )
    window = config.block_size - 1
    compare(f"{window} new tokens: the first window only", model, window, args.repeats)
    long_context = max(config.block_size, 1 << args.tokens.bit_length())
    torch.manual_seed(0)
    long_model = GPT(GPTConfig(**{**config.to_dict(), "block_size": long_context})).eval()
    compare(f"{args.tokens} new tokens, same shape with context {long_context}", long_model, args.tokens, args.repeats)

    print()
    print(f"KV cache speed-up for {args.tokens} new tokens from this model: {ratio:.2f}x")
    if args.tokens >= config.block_size:
        print(
            f"Past the first {config.block_size} tokens the window slides, so (for the same tokens as the plain "
            "loop) the cache is rebuilt at every step; a context that holds all the tokens keeps every step cheap."
        )


if __name__ == "__main__":
    main()
