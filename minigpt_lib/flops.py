"""Compute: FLOPs of a training step (formula and counter), this machine's matmul peak, utilisation and cost."""

from __future__ import annotations

import time

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from .model import GPTConfig, flops_per_token


def counted_training_flops(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one forward and backward pass on (x, y), as PyTorch's FlopCounterMode counts them.

    Attention runs through PyTorch's plain ("math") kernel here, made of matrix products the counter sees.
    """
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        _, loss = model(x, y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def formula_flops(config: GPTConfig) -> dict[str, int]:
    """Training FLOPs per token by the formula: 6 per weight (2 forward, 4 backward), plus attention."""
    total = flops_per_token(config)
    attention = 12 * config.n_layer * config.block_size * config.n_embd
    return {"weights": total - attention, "attention": attention, "total": total}


def matmul_peak(
    size: int = 1024, dtype: torch.dtype = torch.float32, seconds: float = 2.0, device: str = "cpu"
) -> float:
    """FLOP/s of repeated (size x size) @ (size x size) products: the practical peak of this device."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):  # warm up
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * count / (time.perf_counter() - start)


def mfu(tokens_per_second: float, flops_per_token: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: the share of the peak that the model's useful FLOPs reach."""
    return tokens_per_second * flops_per_token / peak_flops


def training_cost(
    params: float, tokens: float, gpu_flops: float, utilisation: float, dollars_per_gpu_hour: float
) -> dict[str, float]:
    """FLOPs (6 * params * tokens), GPU-days and dollars of a training run at a given utilisation and price."""
    flops = 6 * params * tokens
    gpu_days = flops / (gpu_flops * utilisation) / 86400
    return {"flops": flops, "gpu_days": gpu_days, "dollars": gpu_days * 24 * dollars_per_gpu_hour}
