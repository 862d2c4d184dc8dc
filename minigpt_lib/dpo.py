"""DPO: learn straight from preference pairs, with no reward model and no sampling, by raising the
log-probability of the chosen answer relative to the rejected one, both measured against the frozen
reference model."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MAX_NEW_TOKENS, check_range
from .reward import Pair
from .rlhf import PolicyConfig, PolicyTrainer, make_completions, sequence_logprob


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float = 0.1,
) -> torch.Tensor:
    """Mean -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))) over pairs of answer log-probabilities."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin).mean()


@dataclass
class DPOConfig(PolicyConfig):
    """How to run DPO: `batch_size` pairs per step, `beta` the strength of the pull towards the reference."""

    max_steps: int = 150
    beta: float = 0.1
    nll_coef: float = 0.0  # weight of the chosen answers' per-token negative log-likelihood, added to the loss
    max_new_tokens: int = 96
    eval_interval: int = 25

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.beta <= 0 or self.nll_coef < 0:
            raise ValueError(f"beta must be positive and nll_coef >= 0, got {self.beta} and {self.nll_coef}")
        check_range(self, "max_new_tokens", 1, MAX_NEW_TOKENS)


def _pair_logprobs(model: nn.Module, pairs: Sequence[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
    n = len(pairs)
    both = make_completions([p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    logp = sequence_logprob(model, both.to(next(model.parameters()).device))
    return logp[:n], logp[n:]


class DPOTrainer(PolicyTrainer):
    """Fine-tunes a policy (a GPT) on preference pairs with the DPO loss."""

    def __init__(
        self,
        policy: nn.Module,
        reference: nn.Module,
        pairs: Sequence[Pair],
        config: DPOConfig,
        stop_ids: Collection[int],
        held_out_pairs: Sequence[Pair] = (),
        **options: Any,
    ):
        """`options`: `PolicyTrainer`'s held_out, reward, true_score, anchor, tokenizer and device."""
        if not pairs:
            raise ValueError("no training pairs: sample more answers per prompt, or more prompts")
        super().__init__(policy, reference, config, stop_ids=stop_ids, **options)
        self.pairs, self.held_out_pairs = list(pairs), list(held_out_pairs)

    def update(self) -> dict[str, float]:
        """One DPO step on a random batch of pairs."""
        picks = torch.randint(len(self.pairs), (self.config.batch_size,), generator=self.sampler.generator).tolist()
        batch = [self.pairs[i] for i in picks]
        with torch.no_grad():
            ref_c, ref_r = _pair_logprobs(self.reference, batch)
        pi_c, pi_r = _pair_logprobs(self.model, batch)
        loss = dpo_loss(pi_c, pi_r, ref_c, ref_r, self.config.beta)
        if self.config.nll_coef:  # keep the chosen answers likely: DPO alone only widens the gap
            lengths = torch.tensor([len(p.chosen) for p in batch], dtype=pi_c.dtype, device=pi_c.device)
            loss = loss + self.config.nll_coef * (-pi_c / lengths).mean()
        anchor = self.anchor_loss()
        if anchor is not None:
            loss = loss + anchor
        grad_norm = self.optimise(loss)
        accuracy = ((pi_c - ref_c) > (pi_r - ref_r)).float().mean().item()
        return {"loss": loss.item(), "accuracy": accuracy, "grad_norm": grad_norm}

    @torch.no_grad()
    def measure(self) -> dict[str, float]:
        """Held-out pair loss and accuracy (implicit reward), and the held-out prompts' reward, score and KL."""
        out: dict[str, float] = {}
        if self.held_out_pairs:
            pi_c, pi_r = _pair_logprobs(self.model, self.held_out_pairs)
            ref_c, ref_r = _pair_logprobs(self.reference, self.held_out_pairs)
            out["val_loss"] = dpo_loss(pi_c, pi_r, ref_c, ref_r, self.config.beta).item()
            out["val_accuracy"] = ((pi_c - ref_c) > (pi_r - ref_r)).float().mean().item()
        out.update(self.measure_answers())
        return out
