"""Training-speed benchmark: the course's `cpu` preset against the classic small CPU recipe.

On one machine, in one run:
  1. train `classic-cpu` (4 layers, 128 wide, context 64, batch 12, 2000 steps) and time it;
  2. train the `cpu` preset for the same wall time;
  3. print both validation losses (whole validation split, fixed non-overlapping windows),
     tokens per second, estimated FLOP/s and the difference;
  4. compare our training step with a plain PyTorch GPT of the classic shapes (tokens per second).

    python bench/train_speed.py                # the full comparison (about 5 minutes on 2 cores)
    python bench/train_speed.py --budget 600   # also: the cpu preset for 10 minutes
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from minigpt_lib import GPT, CharTokenizer, Trainer, get_preset, load_text, train_val_split
from minigpt_lib.model import flops_per_token
from minigpt_lib.presets import Preset


def run_preset(preset: Preset | str, text: str, time_budget: float | None = None, seed: int = 1337) -> dict[str, float]:
    """Train a preset (for `time_budget` seconds if given); returns its measured figures."""
    if isinstance(preset, str):
        preset = get_preset(preset)
    tokenizer = CharTokenizer.from_text(text)
    train_ids, val_ids = train_val_split(tokenizer.encode_tensor(text))
    torch.manual_seed(seed)
    model = GPT(preset.model_config(tokenizer.vocab_size))
    overrides = {"time_budget": time_budget, "seed": seed}
    if time_budget is not None:
        overrides["max_steps"] = 10**9  # the time budget ends the run and drives the schedule
    trainer = Trainer(model, train_ids, val_ids, preset.train_config(**overrides), device="cpu")
    start = time.perf_counter()
    trainer.train(progress_bar=False)
    wall = time.perf_counter() - start
    tokens = trainer.step * trainer.config.batch_size * trainer.block_size
    return {
        "steps": trainer.step,
        "wall_s": wall,
        "tokens_per_s": tokens / wall,
        "flop_per_s": tokens * flops_per_token(model.config) / wall,
        "val_loss": trainer.evaluate(),
        "params": model.num_params(),
    }


class PlainGPT(nn.Module):
    """A GPT as commonly written in plain PyTorch: separate heads, explicit masked softmax."""

    def __init__(self, vocab: int, block: int, n_layer: int, n_head: int, n_embd: int):
        super().__init__()
        self.tok = nn.Embedding(vocab, n_embd)
        self.pos = nn.Embedding(block, n_embd)
        self.blocks = nn.ModuleList(_PlainBlock(n_embd, n_head, block) for _ in range(n_layer))
        self.ln = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.size(1)))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


class _PlainHead(nn.Module):
    def __init__(self, n_embd: int, head_size: int, block: int):
        super().__init__()
        self.key = nn.Linear(n_embd, head_size, bias=False)
        self.query = nn.Linear(n_embd, head_size, bias=False)
        self.value = nn.Linear(n_embd, head_size, bias=False)
        self.register_buffer("tril", torch.tril(torch.ones(block, block)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.size(1)
        k, q, v = self.key(x), self.query(x), self.value(x)
        w = q @ k.transpose(-2, -1) * k.size(-1) ** -0.5
        w = F.softmax(w.masked_fill(self.tril[:T, :T] == 0, float("-inf")), dim=-1)
        return w @ v


class _PlainBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int, block: int):
        super().__init__()
        self.heads = nn.ModuleList(_PlainHead(n_embd, n_embd // n_head, block) for _ in range(n_head))
        self.proj = nn.Linear(n_embd, n_embd)
        self.ff = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.ReLU(), nn.Linear(4 * n_embd, n_embd))
        self.ln1, self.ln2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.proj(torch.cat([h(self.ln1(x)) for h in self.heads], dim=-1))
        return x + self.ff(self.ln2(x))


def step_throughput(
    model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, batch: int, block: int, steps: int = 60
) -> float:
    """Tokens per second of full training steps (forward, backward, AdamW) on random data."""
    x = torch.randint(65, (batch, block))
    y = torch.randint(65, (batch, block))
    for i in range(steps + 10):
        if i == 10:
            start = time.perf_counter()
        loss = loss_fn(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch * block / (time.perf_counter() - start)


def compare_with_plain_pytorch(train_ids: torch.Tensor, steps: int = 60) -> tuple[float, float]:
    """Tokens/s of our Trainer's steps and of PlainGPT's bare loop at the classic recipe's shapes.

    Ours goes through everything the library does each step (batch sampling, learning-rate schedule,
    NaN check, gradient clipping, history); the plain loop does forward, backward and AdamW only.
    """
    preset = get_preset("classic-cpu")
    m, t = preset.model, preset.train
    torch.manual_seed(0)
    trainer = Trainer(GPT(preset.model_config(65)), train_ids, train_ids[:1000], preset.train_config(), device="cpu")
    for _ in range(10):
        trainer.train_step()
    start = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    ours_tps = steps * t["batch_size"] * m["block_size"] / (time.perf_counter() - start)
    plain = PlainGPT(65, m["block_size"], m["n_layer"], m["n_head"], m["n_embd"])
    plain_opt = torch.optim.AdamW(plain.parameters(), lr=1e-3)
    plain_tps = step_throughput(plain, plain_opt, lambda mod, x, y: mod(x, y), t["batch_size"], m["block_size"], steps)
    return ours_tps, plain_tps


def _verdict(value: float, target: float) -> str:
    return "met" if value <= target else f"missed by {value - target:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="UTF-8 text file (default: Tiny Shakespeare)")
    parser.add_argument(
        "--budget",
        type=float,
        action="append",
        default=[],
        help="also train the cpu preset for this many seconds (repeatable)",
    )
    parser.add_argument("--classic-steps", type=int, help="override the classic recipe's 2000 steps (smoke tests)")
    args = parser.parse_args()
    text = load_text(args.data)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    tokenizer = CharTokenizer.from_text(text)
    ours_tps, plain_tps = compare_with_plain_pytorch(train_val_split(tokenizer.encode_tensor(text))[0])
    print(
        f"classic shapes, tokens/s: ours {ours_tps:,.0f}, plain PyTorch {plain_tps:,.0f}, "
        f"ratio {ours_tps / plain_tps:.2f}"
    )

    classic_preset = get_preset("classic-cpu")
    if args.classic_steps:
        classic_preset = Preset(
            classic_preset.description, classic_preset.model, dict(classic_preset.train, max_steps=args.classic_steps)
        )
    classic = run_preset(classic_preset, text)
    fast = run_preset("cpu", text, time_budget=classic["wall_s"])
    rows = [("classic-cpu", classic), (f"cpu @ {classic['wall_s']:.0f} s", fast)]
    for budget in args.budget:
        rows.append((f"cpu @ {budget:.0f} s", run_preset("cpu", text, time_budget=budget)))
    print(f"\n{'run':18} {'params':>9} {'steps':>6} {'wall s':>7} {'tokens/s':>9} {'GFLOP/s':>8} {'val loss':>9}")
    for name, r in rows:
        print(
            f"{name:18} {r['params']:>9,} {r['steps']:>6} {r['wall_s']:>7.1f} {r['tokens_per_s']:>9,.0f} "
            f"{r['flop_per_s'] / 1e9:>8.1f} {r['val_loss']:>9.4f}"
        )
    print("\ntargets:")
    print(f"  cpu at the classic wall time <= 1.70: {fast['val_loss']:.4f} ({_verdict(fast['val_loss'], 1.70)})")
    for budget, (_, r) in zip(args.budget, rows[2:], strict=True):
        if budget <= 600:
            verdict = _verdict(r["val_loss"], 1.55)
            print(f"  cpu within 10 minutes ({budget:.0f} s) <= 1.55: {r['val_loss']:.4f} ({verdict})")
    print(f"  tokens/s at classic shapes >= plain PyTorch: ratio {ours_tps / plain_tps:.2f}")
    gain = classic["val_loss"] - fast["val_loss"]
    print(
        f"\nat equal wall time ({classic['wall_s']:.0f} s) the cpu preset's validation loss is {gain:.3f} lower "
        f"({fast['val_loss']:.3f} vs {classic['val_loss']:.3f}; {math.exp(gain):.2f}x perplexity ratio)"
    )


if __name__ == "__main__":
    main()
