"""Generation-speed benchmark: tokens per second with and without the KV cache.

Generates 500 new tokens (after a one-character prompt) from chapter 5's model, once with the plain
loop (the whole text recomputed at every step) and once with the KV cache, checks that both give
the same tokens, and prints tokens per second for each and their ratio (target: at least 5x).
Each figure is the best of `--repeats` runs.

Chapter 5's model (the `cpu` preset) uses rotary positions and sliding-window attention: every layer
looks back at most `block_size` positions, so its cache keeps only those and every cached step costs
the same, however long the text. For contrast, the benchmark also times the same shape with learned
absolute positions (the GPT-2 design of chapters 4 and 5's first model): once the text is longer than
its window, every position shifts at every step, and to give the plain loop's tokens the cache must
be rebuilt from the whole window each time. That model is untrained: the arithmetic, and so the speed,
does not depend on the values of the weights.

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
        f"{config.position} positions, attention window {config.block_size}"
    )
    print(hardware_description())
    print(f"{'':58} {'plain':>9} {'cached':>9} {'ratio':>8}   same tokens")
    print(f"{'':58} {'tokens/s':>9} {'tokens/s':>9}")

    ratio = compare(f"{args.tokens} new tokens, this model (the target)", model, args.tokens, args.repeats)
    torch.manual_seed(0)
    learned = GPT(GPTConfig(**{**config.to_dict(), "position": "learned"})).eval()
    compare(
        f"{args.tokens} new tokens, learned positions, context {config.block_size}",
        learned,
        args.tokens,
        args.repeats,
    )
    print()
    verdict = "met" if ratio >= 5 else f"missed by {5 - ratio:.2f}x"
    print(f"KV cache speed-up for {args.tokens} new tokens from this model: {ratio:.2f}x (target >= 5x: {verdict})")


if __name__ == "__main__":
    main()
