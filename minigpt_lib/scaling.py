"""Scaling laws measured here: models of several sizes trained on the same compute, and power laws fitted."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from .data import get_batch
from .flops import formula_flops
from .model import GPT, GPTConfig, flops_per_token
from .train import TrainConfig, Trainer


@dataclass
class Run:
    """One model of the experiment: its shape, size, and validation loss after each compute budget."""

    config: GPTConfig
    params: int  # without the position table, as in flops_per_token
    flops: list[float]
    loss: list[float]


def ladder(widths: list[int], n_layer: int, block_size: int, vocab_size: int, head_size: int = 16) -> list[GPTConfig]:
    """Models of the same depth and growing width (heads of `head_size` dimensions)."""
    return [
        GPTConfig(vocab_size, block_size, n_layer, n_head=max(1, w // head_size), n_embd=w)
        for w in widths
    ]


def budgets(max_flops: float, count: int) -> list[float]:
    """`count` compute budgets, halving from `max_flops` down."""
    return [max_flops / 2**k for k in reversed(range(count))]


def train_on_budgets(
    config: GPTConfig,
    flop_budgets: list[float],
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    batch_size: int = 32,
    seed: int = 1337,
    eval_batches: int = 8,
) -> Run:
    """Train one model with AdamW at a constant learning rate (after warmup) up to the largest budget,
    measuring the validation loss each time a budget is reached.

    The learning rate shrinks as 1 / width (wider models want smaller steps). The constant rate makes
    the loss after a smaller budget the loss of a run stopped there, so one run serves every budget.
    """
    tokens_per_step = batch_size * config.block_size
    per_step = flops_per_token(config) * tokens_per_step
    stops = [max(1, round(b / per_step)) for b in flop_budgets]
    lr = min(1e-2, 0.4 / config.n_embd)
    train_config = TrainConfig(
        max_steps=stops[-1],
        batch_size=batch_size,
        learning_rate=lr,
        min_lr=lr,
        warmup_steps=max(1, min(20, stops[-1] // 10)),
        seed=seed,
    )
    torch.manual_seed(seed)
    trainer = Trainer(GPT(config), train_ids, val_ids, train_config, device="cpu")
    x, y = get_batch(val_ids, config.block_size, eval_batches * batch_size, torch.Generator().manual_seed(seed))
    losses = []
    for stop in stops:
        while trainer.step < stop:
            trainer.train_step()
        losses.append(validation_loss(trainer.model, x, y, batch_size))
    return Run(config, formula_flops(config)["weights"] // 6, [s * per_step for s in stops], losses)


@torch.no_grad()
def validation_loss(model: GPT, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    """Mean loss of `model` on the windows (x, y), in batches."""
    model.eval()
    losses = [model(x[i : i + batch_size], y[i : i + batch_size])[1].item() for i in range(0, len(x), batch_size)]
    model.train()
    return sum(losses) / len(losses)


def run_experiment(
    configs: list[GPTConfig],
    flop_budgets: list[float],
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    batch_size: int = 32,
    progress_bar: bool = True,
) -> list[Run]:
    """Every model of `configs` trained on every budget (one run each)."""
    runs = []
    for config in tqdm(configs, desc="model sizes", disable=not progress_bar):
        runs.append(train_on_budgets(config, flop_budgets, train_ids, val_ids, batch_size))
    return runs


def fit_power_law(x: list[float], y: list[float]) -> tuple[float, float]:
    """(a, b) of y = a * x ** b, by least squares on log y against log x."""
    lx, ly = torch.tensor(x, dtype=torch.float64).log(), torch.tensor(y, dtype=torch.float64).log()
    b = ((lx - lx.mean()) * (ly - ly.mean())).sum() / ((lx - lx.mean()) ** 2).sum()
    a = (ly.mean() - b * lx.mean()).exp()
    return float(a), float(b)


def isoflop_optimum(params: list[float], losses: list[float]) -> tuple[float, float]:
    """(parameters, loss) at the bottom of a parabola fitted to loss against log(parameters) near its minimum.

    Uses the best size and its neighbours; at an end of the ladder, the best size itself.
    """
    best = min(range(len(losses)), key=losses.__getitem__)
    if best in (0, len(losses) - 1):
        return params[best], losses[best]
    lx = [math.log(params[i]) for i in (best - 1, best, best + 1)]
    ly = [losses[i] for i in (best - 1, best, best + 1)]
    design = torch.tensor([[v * v, v, 1.0] for v in lx], dtype=torch.float64)
    c2, c1, c0 = torch.linalg.solve(design, torch.tensor(ly, dtype=torch.float64)).tolist()
    if c2 <= 0:
        return params[best], losses[best]
    x = -c1 / (2 * c2)
    return math.exp(x), c2 * x * x + c1 * x + c0


def analyse(runs: list[Run]) -> dict[str, Any]:
    """Compute-optimal size and loss at each budget, and power laws fitted through them.

    `loss_fit` (a, b): best loss = a * C ** b; `size_fit` (a, b): best parameter count = a * C ** b.
    """
    n_budgets = len(runs[0].flops)
    flops = [sum(r.flops[k] for r in runs) / len(runs) for k in range(n_budgets)]  # the same up to rounding
    params = [r.params for r in runs]
    optima = [isoflop_optimum(params, [r.loss[k] for r in runs]) for k in range(n_budgets)]
    best_params, best_loss = [o[0] for o in optima], [o[1] for o in optima]
    tokens = [c / (6 * n) for c, n in zip(flops, best_params, strict=True)]
    return {
        "flops": flops,
        "best_params": best_params,
        "best_loss": best_loss,
        "tokens_per_param": [t / n for t, n in zip(tokens, best_params, strict=True)],
        "loss_fit": fit_power_law(flops, best_loss),
        "size_fit": fit_power_law(flops, best_params),
    }


def plot(runs: list[Run], result: dict[str, Any]) -> Any:
    """Three log-log panels: loss against compute per size, loss against size per budget, best size against compute."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    flops = result["flops"]
    for r in runs:
        axes[0].plot(r.flops, r.loss, "o-", ms=3, label=f"{r.params / 1e3:.0f}k params")
    a, b = result["loss_fit"]
    xs = [flops[0], flops[-1] * 10]
    axes[0].plot(xs, [a * x**b for x in xs], "k--", label=f"best: {a:.2f}·C^{b:.3f}")
    axes[0].set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel="validation loss")
    axes[0].set_title("loss against compute")
    colours = plt.cm.viridis([k / max(1, len(flops) - 1) for k in range(len(flops))])
    for k, c in enumerate(flops):
        axes[1].plot([r.params for r in runs], [r.loss[k] for r in runs], "o-", color=colours[k], label=f"C={c:.1e}")
        axes[1].plot(result["best_params"][k], result["best_loss"][k], "*", color=colours[k], ms=12)
    axes[1].set(xscale="log", yscale="log", xlabel="parameters N", ylabel="validation loss")
    axes[1].set_title("same compute, different sizes (stars: fitted optimum)")
    a, b = result["size_fit"]
    axes[2].plot(flops, result["best_params"], "*", ms=12, label="measured optimum")
    axes[2].plot(xs, [a * x**b for x in xs], "k--", label=f"fit: N ∝ C^{b:.2f}")
    scale = result["best_params"][-1] / flops[-1] ** 0.5
    axes[2].plot(xs, [scale * x**0.5 for x in xs], ":", label="Chinchilla: N ∝ C^0.50")
    scale = result["best_params"][-1] / flops[-1] ** 0.73
    axes[2].plot(xs, [scale * x**0.73 for x in xs], ":", label="Kaplan: N ∝ C^0.73")
    axes[2].set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel="compute-optimal N")
    axes[2].set_title("best size against compute")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig
