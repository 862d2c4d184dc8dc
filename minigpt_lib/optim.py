"""Muon: momentum orthogonalised by Newton-Schulz for weight matrices, AdamW for everything else."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch

# Coefficients of the quintic iteration that pushes every singular value towards 1 in few steps
# (Keller Jordan's Muon: https://kellerjordan.github.io/posts/muon/).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """An approximation of U V^T for each matrix g = U S V^T in g (..., rows, cols): singular values near 1."""
    if g.dim() < 2:
        raise ValueError(f"orthogonalize takes matrices, got a tensor of shape {tuple(g.shape)}")
    a, b, c = NS_COEFFICIENTS
    x = g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the wide side: X X^T is then the smaller product
        x = x.mT
    x = x / (torch.linalg.matrix_norm(x, keepdim=True) + 1e-7)  # singular values at most 1: it converges
    for _ in range(steps):
        xx = x @ x.mT
        x = a * x + (b * xx + c * xx @ xx) @ x
    return (x.mT if tall else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for the parameter groups marked `muon=True` (matrices), AdamW for the others.

    A Muon step keeps a momentum of the gradients, replaces it by its nearest orthogonal matrix
    (every direction moved by the same amount, however small its gradient was), scales it for the
    matrix's shape, and steps by `lr` along it. The AdamW groups are updated as `torch.optim.AdamW`
    does. Each group has its own `lr`, `weight_decay` and `muon` flag.
    """

    def __init__(
        self,
        params: Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        ns_steps: int = 5,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        if lr <= 0 or not 0 <= momentum < 1 or ns_steps < 1:
            raise ValueError(f"need lr > 0, 0 <= momentum < 1 and ns_steps >= 1; got {lr}, {momentum}, {ns_steps}")
        defaults = dict(
            lr=lr, momentum=momentum, ns_steps=ns_steps, betas=betas, eps=eps, weight_decay=weight_decay, muon=False
        )
        super().__init__(params, defaults)
        for group in self.param_groups:
            if group["muon"] and any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon groups may hold only matrices; put vectors and embeddings in AdamW groups")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["muon"]:
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group: dict[str, Any]) -> None:
        lr, momentum = group["lr"], group["momentum"]
        by_shape: dict[torch.Size, list[torch.Tensor]] = {}
        for p in group["params"]:
            if p.grad is not None:
                by_shape.setdefault(p.shape, []).append(p)
        for shape, params in by_shape.items():  # matrices of one shape are orthogonalised together
            updates = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                updates.append(p.grad.lerp(buf, momentum))  # Nesterov momentum
            orthogonal = orthogonalize(torch.stack(updates), group["ns_steps"])
            scale = math.sqrt(max(1.0, shape[0] / shape[1]))  # tall matrices: keep the step's RMS size
            for p, update in zip(params, orthogonal, strict=True):
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * scale)

    def _adamw_step(self, group: dict[str, Any]) -> None:
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if "step" not in state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"].item()
            state["exp_avg"].lerp_(p.grad, 1 - beta1)
            state["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (state["exp_avg_sq"] / (1 - beta2**t)).sqrt_().add_(eps)
            p.mul_(1 - lr * group["weight_decay"])
            p.addcdiv_(state["exp_avg"], denom, value=-lr / (1 - beta1**t))
