"""Plots used across chapters: loss curves, heatmaps, attention maps."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch


def plot_losses(
    runs: dict[str, Sequence[dict[str, float]]],
    ax: plt.Axes | None = None,
    baseline: dict[str, float] | None = None,
    title: str = "Loss during training",
) -> plt.Axes:
    """Plot train (dashed) and val (solid) estimates of one or more runs' evaluation records."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    for i, (name, evals) in enumerate(runs.items()):
        color = f"C{i}"
        steps = [e["step"] for e in evals]
        ax.plot(steps, [e["train"] for e in evals], "--", color=color, alpha=0.7, label=f"{name} train")
        ax.plot(steps, [e["val"] for e in evals], "-", color=color, label=f"{name} val")
    styles = [":", "-.", (0, (5, 2, 1, 2)), (0, (1, 3))]
    for j, (name, value) in enumerate((baseline or {}).items()):
        ax.axhline(value, color=f"C{7 - j % 4}", linestyle=styles[j % 4], lw=1.2, label=f"{name} ({value:.2f})")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def plot_step_losses(losses: Sequence[float], ax: plt.Axes | None = None, smooth: int = 50) -> plt.Axes:
    """Per-step training losses (faint) with a moving average over `smooth` steps."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    values = torch.tensor(list(losses), dtype=torch.float32)
    ax.plot(values, alpha=0.25, color="C0", label="per step")
    if len(values) >= smooth:
        kernel = torch.ones(smooth) / smooth
        avg = torch.nn.functional.conv1d(values.view(1, 1, -1), kernel.view(1, 1, -1)).flatten()
        ax.plot(range(smooth - 1, len(values)), avg, color="C0", label=f"mean of {smooth}")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


def _show(ch: str) -> str:
    return {"\n": "\\n", " ": "␣", "\t": "\\t"}.get(ch, ch)


def plot_heatmap(
    matrix: torch.Tensor,
    labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    ax: plt.Axes | None = None,
    title: str = "",
    cmap: str = "Blues",
    log: bool = False,
    aspect: str = "equal",
) -> plt.Axes:
    """A labelled heatmap of a 2-D tensor (character labels shown with visible whitespace)."""
    data = matrix.detach().float().cpu()
    if log:
        data = torch.log1p(data)
    if ax is None:
        size = min(12, 2 + 0.15 * data.shape[1])
        _, ax = plt.subplots(figsize=(size, size * data.shape[0] / data.shape[1]))
    image = ax.imshow(data, cmap=cmap, aspect=aspect)
    if labels is not None:
        ax.set_yticks(range(len(labels)), [_show(c) for c in labels], fontsize=7)
    cols = col_labels if col_labels is not None else labels
    if cols is not None:
        ax.set_xticks(range(len(cols)), [_show(c) for c in cols], fontsize=7)
    ax.set_title(title)
    plt.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_attention(
    weights: torch.Tensor, tokens: Sequence[str], ax: plt.Axes | None = None, title: str = ""
) -> plt.Axes:
    """Attention weights (T, T): row = the position attending, column = the position attended to."""
    ax = plot_heatmap(weights, labels=tokens, ax=ax, title=title, cmap="viridis")
    ax.set_xlabel("attended to (key)")
    ax.set_ylabel("attending (query)")
    return ax
