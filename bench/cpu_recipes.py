"""The experiments behind the `cpu` preset: candidate recipes trained for the same wall time.

    python bench/cpu_recipes.py --budget 128          # every candidate for 128 s (about 2.5 min each)
    python bench/cpu_recipes.py --budget 88 --only rope --only muon

Each line trains one candidate with the time-driven schedule (warmup, then cosine decay over the
budget) and prints its validation loss on the whole validation split.
"""

from __future__ import annotations

import argparse

import torch
from train_speed import run_preset

from minigpt_lib import load_text
from minigpt_lib.presets import PRESETS, Preset

BASE_TRAIN = dict(
    max_steps=10**9,
    batch_size=32,
    learning_rate=2e-3,
    min_lr=2e-4,
    warmup_steps=100,
    beta2=0.99,
    eval_interval=200,
    eval_batches=10,
)
WIDE = dict(n_layer=4, n_head=4, n_embd=192, block_size=128, dropout=0.0)
CLASSIC = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0)
ROPE = dict(CLASSIC, position="rope")
MUON = dict(optimizer="muon", muon_lr=0.02)
SHORT = dict(BASE_TRAIN, learning_rate=1e-2, min_lr=1e-3, warmup_steps=30, **MUON)  # for short runs

CANDIDATES: dict[str, Preset] = {
    "classic shape, lr 1e-3, batch 12": Preset(
        "", CLASSIC, dict(BASE_TRAIN, batch_size=12, learning_rate=1e-3, min_lr=1e-4)
    ),
    "classic shape, lr 3e-3, batch 32": Preset("", CLASSIC, dict(BASE_TRAIN, learning_rate=3e-3, min_lr=3e-4)),
    "classic shape, lr 3e-3, batch 12": Preset(
        "", CLASSIC, dict(BASE_TRAIN, batch_size=12, learning_rate=3e-3, min_lr=3e-4)
    ),
    "classic shape, ctx 128, lr 3e-3, batch 16": Preset(
        "", dict(CLASSIC, block_size=128), dict(BASE_TRAIN, batch_size=16, learning_rate=3e-3, min_lr=3e-4)
    ),
    "classic shape, ctx 128, lr 5e-3, batch 16": Preset(
        "", dict(CLASSIC, block_size=128), dict(BASE_TRAIN, batch_size=16, learning_rate=5e-3, min_lr=5e-4)
    ),
    "classic shape, lr 6e-3, batch 12": Preset(
        "", CLASSIC, dict(BASE_TRAIN, batch_size=12, learning_rate=6e-3, min_lr=6e-4)
    ),
    "classic shape, lr 1e-2, batch 12": Preset(
        "", CLASSIC, dict(BASE_TRAIN, batch_size=12, learning_rate=1e-2, min_lr=1e-3)
    ),
    "classic shape, ctx 256, lr 5e-3, batch 4": Preset(
        "", dict(CLASSIC, block_size=256), dict(BASE_TRAIN, batch_size=4, learning_rate=5e-3, min_lr=5e-4)
    ),
    "classic shape, ctx 512, lr 5e-3, batch 2": Preset(
        "", dict(CLASSIC, block_size=512), dict(BASE_TRAIN, batch_size=2, learning_rate=5e-3, min_lr=5e-4)
    ),
    "classic shape, lr 1e-2, batch 12, warmup 30": Preset(
        "", CLASSIC, dict(BASE_TRAIN, batch_size=12, learning_rate=1e-2, min_lr=1e-3, warmup_steps=30)
    ),
    "classic shape, ctx 128, lr 1e-2, batch 16, warmup 30": Preset(
        "",
        dict(CLASSIC, block_size=128),
        dict(BASE_TRAIN, batch_size=16, learning_rate=1e-2, min_lr=1e-3, warmup_steps=30),
    ),
    "classic shape, lr 1e-2, batch 12, warmup 30, rope": Preset(
        "",
        dict(CLASSIC, position="rope"),
        dict(BASE_TRAIN, batch_size=12, learning_rate=1e-2, min_lr=1e-3, warmup_steps=30),
    ),
    "classic shape, lr 1e-2, batch 12, warmup 30, muon": Preset(
        "", CLASSIC, dict(BASE_TRAIN, batch_size=12, learning_rate=1e-2, min_lr=1e-3, warmup_steps=30, **MUON)
    ),
    "classic shape, lr 1e-2, batch 12, warmup 30, rope + muon": Preset("", ROPE, dict(SHORT, batch_size=12)),
    "rope + muon, ctx 128, batch 8": Preset("", dict(ROPE, block_size=128), dict(SHORT, batch_size=8)),
    "rope + muon, ctx 128, batch 8, lr 5e-3": Preset(
        "", dict(ROPE, block_size=128), dict(SHORT, batch_size=8, learning_rate=5e-3, min_lr=5e-4)
    ),
    "rope + muon, ctx 256, batch 4": Preset("", dict(ROPE, block_size=256), dict(SHORT, batch_size=4)),
    "rope + muon, ctx 512, batch 2": Preset("", dict(ROPE, block_size=512), dict(SHORT, batch_size=2)),
    "rope + muon, ctx 512, batch 4": Preset("", dict(ROPE, block_size=512), dict(SHORT, batch_size=4)),
    "192 wide, ctx 128, lr 2e-3, batch 32": Preset("", WIDE, BASE_TRAIN),
    "192 wide, ctx 512, lr 2e-3, batch 8": Preset("", dict(WIDE, block_size=512), dict(BASE_TRAIN, batch_size=8)),
    "preset cpu": PRESETS["cpu"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=128.0, help="seconds of training per candidate")
    parser.add_argument("--only", action="append", help="run only candidates whose name contains this")
    parser.add_argument("--data", help="UTF-8 text file (default: Tiny Shakespeare)")
    args = parser.parse_args()
    text = load_text(args.data)
    print(f"budget {args.budget:.0f} s per candidate, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'candidate':54} {'params':>9} {'steps':>6} {'tokens/s':>9} {'val loss':>9}", flush=True)
    for name, preset in CANDIDATES.items():
        if args.only and not any(part in name for part in args.only):
            continue
        r = run_preset(preset, text, time_budget=args.budget)
        print(
            f"{name:54} {r['params']:>9,} {r['steps']:>6} {r['tokens_per_s']:>9,.0f} {r['val_loss']:>9.4f}", flush=True
        )


if __name__ == "__main__":
    main()
