"""The scaling experiment of chapter 10: models of several widths trained on the same FLOPs; fits and figure.

    python bench/scaling.py --max-flops 2e12 --out scaling.png

Each size is trained once, up to the largest budget; the fits use only the budgets whose best size
is inside the ladder (an optimum at the smallest or the largest model only bounds the true one).
"""

from __future__ import annotations

import argparse
import time

import torch

from minigpt_lib import CharTokenizer, load_shakespeare, train_val_split
from minigpt_lib.scaling import analyse, budgets, ladder, plot, run_experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="12,16,24,32,48,64,96", help="model widths, comma-separated")
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-flops", type=float, default=2e12, help="the largest compute budget")
    parser.add_argument("--budgets", type=int, default=7, help="how many budgets, up to --max-flops")
    parser.add_argument("--ratio", type=float, default=2**0.5, help="each budget is this times the one before")
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch")
    parser.add_argument("--out", default="scaling.png", help="figure file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    text = load_shakespeare()
    tokenizer = CharTokenizer.from_text(text)
    train_ids, val_ids = train_val_split(tokenizer.encode_tensor(text))
    configs = ladder([int(w) for w in args.widths.split(",")], args.n_layer, args.block_size, tokenizer.vocab_size)
    flop_budgets = budgets(args.max_flops, args.budgets, args.ratio)
    start = time.perf_counter()
    runs = run_experiment(configs, flop_budgets, train_ids, val_ids, args.batch_size)
    print(f"{len(runs)} sizes trained in {time.perf_counter() - start:.0f} s")
    result = analyse(runs)
    print("params   " + "  ".join(f"C={c:.1e}" for c in result["flops"]))
    for r in runs:
        print(f"{r.params:>8,} " + "  ".join(f"{v:9.4f}" for v in r.loss))
    a, b = result["loss_fit"]
    na, nb = result["size_fit"]
    low, high = result["size_interval"]
    print(f"best loss = {a:.3f} * C^{b:.4f}; best size N = {na:.3g} * C^{nb:.3f}", end=" ")
    print(f"(95% interval of the exponent {low:.2f} to {high:.2f})")
    print("fitted (interior) optima: " + ", ".join("yes" if ok else "no" for ok in result["interior"]))
    print("tokens per parameter at the optimum: " + ", ".join(f"{t:.0f}" for t in result["tokens_per_param"]))
    plot(runs, result).savefig(args.out, dpi=120)
    print(f"figure saved to {args.out}")


if __name__ == "__main__":
    main()
