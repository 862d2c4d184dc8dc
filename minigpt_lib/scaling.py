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
    return [GPTConfig(vocab_size, block_size, n_layer, n_head=max(1, w // head_size), n_embd=w) for w in widths]


def budgets(max_flops: float, count: int, ratio: float = 2.0) -> list[float]:
    """`count` compute budgets, each `ratio` times the one before, the largest `max_flops`."""
    if count < 1 or ratio <= 1:
        raise ValueError(f"need count >= 1 and ratio > 1, got count={count}, ratio={ratio}")
    return [max_flops / ratio**k for k in reversed(range(count))]


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


def fit_line(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """(slope, intercept, slope's standard error) of the least-squares line y = slope * x + intercept."""
    if len(x) < 2:
        raise ValueError(f"a line needs at least 2 points, got {len(x)}")
    xs, ys = torch.tensor(x, dtype=torch.float64), torch.tensor(y, dtype=torch.float64)
    dx = xs - xs.mean()
    slope = (dx * (ys - ys.mean())).sum() / (dx**2).sum()
    intercept = ys.mean() - slope * xs.mean()
    residuals = ys - (slope * xs + intercept)
    spread = (residuals**2).sum() / (len(x) - 2) if len(x) > 2 else torch.tensor(math.nan)
    return float(slope), float(intercept), float((spread / (dx**2).sum()).sqrt())


def fit_power_law(x: list[float], y: list[float]) -> tuple[float, float]:
    """(a, b) of y = a * x ** b: the least-squares line of log y against log x."""
    b, log_a, _ = fit_line([math.log(v) for v in x], [math.log(v) for v in y])
    return math.exp(log_a), b


def t_quantile(p: float, df: int) -> float:
    """The p-quantile (p > 0.5) of Student's t distribution with `df` degrees of freedom, by numerical integration."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"need 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def upper_cdf(t: float, n: int = 2000) -> float:  # P(0 < T < t), Simpson's rule
        h = t / n
        f = [math.exp(log_norm - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(n + 1)]
        return h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    low, high = 0.0, 1.0
    while upper_cdf(high) < p - 0.5:
        low, high = high, 2 * high
    for _ in range(50):
        mid = (low + high) / 2
        low, high = (mid, high) if upper_cdf(mid) < p - 0.5 else (low, mid)
    return (low + high) / 2


def exponent_interval(x: list[float], y: list[float], level: float = 0.95) -> tuple[float, float]:
    """Interval for b of y = a * x ** b at `level`, from the slope's standard error (needs 3 points or more)."""
    if len(x) < 3:
        raise ValueError(f"an interval needs at least 3 points, got {len(x)}")
    b, _, error = fit_line([math.log(v) for v in x], [math.log(v) for v in y])
    half = t_quantile(0.5 + level / 2, len(x) - 2) * error
    return b - half, b + half


def fit_parabola(x: list[float], y: list[float]) -> tuple[float, float, float]:
    """(c2, c1, c0) of the least-squares parabola y = c2 * x**2 + c1 * x + c0."""
    if len(x) < 3:
        raise ValueError(f"a parabola needs at least 3 points, got {len(x)}")
    design = torch.tensor([[v * v, v, 1.0] for v in x], dtype=torch.float64)
    solution = torch.linalg.lstsq(design, torch.tensor(y, dtype=torch.float64)[:, None]).solution
    c2, c1, c0 = solution[:, 0].tolist()
    return c2, c1, c0


def isoflop_optimum(params: list[float], losses: list[float], reach: int = 2) -> tuple[float, float, bool]:
    """(parameters, loss, interior) at the bottom of a parabola in log(parameters) through the best size and
    up to `reach` neighbours on each side (least squares).

    `interior` is False when the best size is the smallest or the largest of the ladder: the true optimum
    may then lie beyond it, and the best measured size itself is returned.
    """
    best = min(range(len(losses)), key=losses.__getitem__)
    if best in (0, len(losses) - 1):
        return params[best], losses[best], False
    near = range(max(0, best - reach), min(len(losses), best + reach + 1))
    c2, c1, c0 = fit_parabola([math.log(params[i]) for i in near], [losses[i] for i in near])
    x = -c1 / (2 * c2) if c2 > 0 else math.log(params[best])
    low, high = math.log(params[best - 1]), math.log(params[best + 1])
    x = min(max(x, low), high)  # the bottom stays between the best size's neighbours
    return math.exp(x), c2 * x * x + c1 * x + c0, True


def analyse(runs: list[Run]) -> dict[str, Any]:
    """Compute-optimal size, loss and tokens at each budget, and power laws fitted through the interior optima.

    An optimum at an end of the ladder (`interior` False) only bounds the true one, so the fits leave it out.
    `loss_fit` (a, b): best loss = a * C ** b; `size_fit` (a, b): best parameter count = a * C ** b, and
    `size_interval`: an interval for its exponent b (95%, needs three interior optima).
    """
    n_budgets = len(runs[0].flops)
    flops = [sum(r.flops[k] for r in runs) / len(runs) for k in range(n_budgets)]  # the same up to rounding
    params = [r.params for r in runs]
    optima = [isoflop_optimum(params, [r.loss[k] for r in runs]) for k in range(n_budgets)]
    best_params, best_loss, interior = ([o[i] for o in optima] for i in range(3))
    tokens = [optimal_tokens(runs, k, n) for k, n in enumerate(best_params)]
    fitted = [k for k in range(n_budgets) if interior[k]]
    if len(fitted) < 2:
        raise ValueError(
            f"only {len(fitted)} of {n_budgets} budgets have their best size inside the ladder: "
            "add smaller models (if the smallest wins) or larger ones, or change the budgets"
        )
    c, n, loss = ([v[k] for k in fitted] for v in (flops, best_params, best_loss))
    return {
        "flops": flops,
        "best_params": best_params,
        "best_loss": best_loss,
        "interior": interior,
        "tokens": tokens,
        "tokens_per_param": [t / n for t, n in zip(tokens, best_params, strict=True)],
        "loss_fit": fit_power_law(c, loss),
        "size_fit": fit_power_law(c, n),
        "size_interval": exponent_interval(c, n) if len(fitted) >= 3 else (math.nan, math.nan),
    }


def optimal_tokens(runs: list[Run], budget: int, params: float) -> float:
    """Training tokens of a model of `params` parameters at budget number `budget`, interpolated in log-log
    between the ladder's models (whose tokens are exact: attention makes them fewer than C / 6N)."""
    points = sorted((r.params, r.flops[budget] / flops_per_token(r.config)) for r in runs)
    lx = [math.log(n) for n, _ in points]
    ly = [math.log(t) for _, t in points]
    x = min(max(math.log(params), lx[0]), lx[-1])
    i = max(j for j in range(len(lx) - 1) if lx[j] <= x) if x < lx[-1] else len(lx) - 2
    share = (x - lx[i]) / (lx[i + 1] - lx[i])
    return math.exp(ly[i] + share * (ly[i + 1] - ly[i]))


def plot(runs: list[Run], result: dict[str, Any]) -> Any:
    """Three log-log panels: loss against compute per size, loss against size per budget, best size against compute.

    Stars are interior optima (fitted); an optimum at an end of the ladder is drawn hollow and left out of the fits.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    flops, interior = result["flops"], result["interior"]
    inside = [k for k in range(len(flops)) if interior[k]]
    for r in runs:
        axes[0].plot(r.flops, r.loss, "o-", ms=3, label=f"{r.params / 1e3:.0f}k params")
    a, b = result["loss_fit"]
    xs = [flops[inside[0]], flops[-1] * 10]
    axes[0].plot(xs, [a * x**b for x in xs], "k--", label=f"best: {a:.2f}·C^{b:.3f}")
    axes[0].set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel="validation loss")
    axes[0].set_title("loss against compute")
    colours = plt.cm.viridis([k / max(1, len(flops) - 1) for k in range(len(flops))])
    for k, c in enumerate(flops):
        axes[1].plot(
            [r.params for r in runs], [r.loss[k] for r in runs], "o-", ms=3, color=colours[k], label=f"C={c:.1e}"
        )
        style = dict(ms=12, color=colours[k]) if interior[k] else dict(ms=10, mfc="none", mec=colours[k])
        axes[1].plot(result["best_params"][k], result["best_loss"][k], "*" if interior[k] else "v", **style)
    axes[1].set(xscale="log", yscale="log", xlabel="parameters N", ylabel="validation loss")
    axes[1].set_title("same compute, different sizes (stars: fitted optimum)")
    a, b = result["size_fit"]
    edge = [k for k in range(len(flops)) if not interior[k]]
    for ks, style in (
        (inside, dict(marker="*", ms=12, label="interior optimum (fitted)")),
        (edge, dict(marker="v", ms=10, mfc="none", label="at the ladder's end (not fitted)")),
    ):
        if ks:
            axes[2].plot([flops[k] for k in ks], [result["best_params"][k] for k in ks], ls="none", **style)
    axes[2].plot(xs, [a * x**b for x in xs], "k--", label=f"fit: N ∝ C^{b:.2f}")
    anchor_c, anchor_n = flops[inside[-1]], result["best_params"][inside[-1]]
    for name, slope in (("Chinchilla", 0.5), ("Kaplan", 0.73)):
        axes[2].plot(xs, [anchor_n * (x / anchor_c) ** slope for x in xs], ":", label=f"{name}: N ∝ C^{slope:.2f}")
    axes[2].set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)", ylabel="compute-optimal N")
    axes[2].set_title("best size against compute")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig
