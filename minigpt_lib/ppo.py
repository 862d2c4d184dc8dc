"""PPO for a chat model: sample a group of answers per prompt, score them with the reward model,
and push up the answers that beat their group's average, with a clipped objective and a per-token
KL penalty that keeps the policy near the frozen SFT model.

The baseline is the group's mean reward (as in GRPO), not a learned value head: every prompt gets
several answers anyway, their mean reward is a good baseline for free, and there is no second
network to train, which matters on a CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .config import MAX_NEW_TOKENS, check_range
from .rlhf import PolicyConfig, PolicyTrainer, make_completions, sample_answers, token_logprobs

MAX_GROUP = 1024  # answers per prompt: far above what a step can afford


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(P, G) rewards of G answers to each of P prompts -> how much better each is than its group, in group stds."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


def ppo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    kl_coef: float = 0.05,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped PPO objective plus kl_coef times a per-token KL penalty, averaged over answer tokens.

    `logp`, `old_logp` (when the answers were sampled) and `ref_logp` (the frozen reference) are
    (B, T) per-token log-probabilities; `advantages` is (B,), one per answer; `mask` (B, T) marks
    answer tokens. Per token: -min(ratio * A, clip(ratio, 1 - clip, 1 + clip) * A) with
    ratio = exp(logp - old_logp), plus kl_coef * (exp(ref - logp) - (ref - logp) - 1), the k3
    estimate of KL(policy || reference), which is never negative.
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    policy_term = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - clip, 1 + clip) * adv)
    log_ratio_ref = ref_logp - logp
    kl = torch.exp(log_ratio_ref) - log_ratio_ref - 1
    n = mask.sum().clamp(min=1)
    loss = ((policy_term + kl_coef * kl) * mask).sum() / n
    clipped = ((ratio - 1).abs() > clip).float()
    stats = {
        "policy_loss": ((policy_term * mask).sum() / n).item(),
        "kl_token": ((kl * mask).sum() / n).item(),
        "clip_fraction": ((clipped * mask).sum() / n).item(),
    }
    return loss, stats


@dataclass
class PPOConfig(PolicyConfig):
    """How to run PPO: `batch_size` prompts per step, `group_size` answers to each, `epochs` updates per batch."""

    max_steps: int = 60
    anchor_batch: int = 32
    batch_size: int = 8
    group_size: int = 8
    epochs: int = 2
    clip: float = 0.2
    kl_coef: float = 0.1
    max_new_tokens: int = 96
    temperature: float = 1.0
    eval_interval: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 2:
            raise ValueError(f"group_size must be at least 2 (the group's mean is the baseline), got {self.group_size}")
        check_range(self, "group_size", 2, MAX_GROUP)
        check_range(self, "epochs", 1, 100)
        check_range(self, "max_new_tokens", 1, MAX_NEW_TOKENS)
        if self.clip <= 0 or self.kl_coef < 0 or self.temperature <= 0:
            raise ValueError("need clip > 0, kl_coef >= 0 and temperature > 0")


class PPOTrainer(PolicyTrainer):
    """Optimises a policy (a GPT) against a reward, measured on held-out prompts."""

    def __init__(
        self,
        policy: nn.Module,
        reference: nn.Module,
        reward: Callable[[list[list[int]], list[list[int]]], torch.Tensor],
        prompts: Sequence[Sequence[int]],
        stop_ids: Collection[int],
        config: PPOConfig,
        **options: Any,
    ):
        """`options`: `PolicyTrainer`'s held_out, true_score, anchor, tokenizer and device."""
        if not prompts:
            raise ValueError("no training prompts")
        super().__init__(policy, reference, config, stop_ids=stop_ids, reward=reward, **options)
        self.prompts = [list(p) for p in prompts]

    def rollout(self) -> tuple[list[list[int]], list[list[int]]]:
        """`batch_size` random training prompts, `group_size` sampled answers to each (prompts repeated)."""
        c = self.config
        picks = torch.randint(len(self.prompts), (c.batch_size,), generator=self.sampler.generator).tolist()
        prompts = [self.prompts[i] for i in picks]
        groups = sample_answers(
            self.model, prompts, c.group_size, self.stop_ids, c.max_new_tokens, c.temperature, self.sampler.generator
        )
        prompts = [p for p in prompts for _ in range(c.group_size)]
        answers = [a for group in groups for a in group]
        return prompts, answers

    def update(self) -> dict[str, float]:
        """Sample, score, then `epochs` clipped updates on that one batch of answers."""
        c = self.config
        prompts, answers = self.rollout()
        batch = make_completions(prompts, answers).to(self.device)
        mask = batch.answer_mask()
        with torch.no_grad():
            rewards = self.reward(prompts, answers).float().to(self.device)
            ref_logp = token_logprobs(self.reference, batch, c.temperature)
        advantages = group_advantages(rewards.view(c.batch_size, c.group_size)).view(-1)
        old_logp = None
        for _ in range(c.epochs):
            logp = token_logprobs(self.model, batch, c.temperature)
            if old_logp is None:  # the policy that sampled the answers is the one before the first update
                old_logp = logp.detach()
            loss, stats = ppo_loss(logp, old_logp, ref_logp, advantages, mask, c.clip, c.kl_coef)
            anchor = self.anchor_loss()
            if anchor is not None:
                stats["anchor"] = anchor.item()
                loss = loss + anchor
            grad_norm = self.optimise(loss)
        kl = ((old_logp - ref_logp) * mask).sum(dim=1).mean().item()
        length = mask.sum(dim=1).mean().item()
        return {
            "loss": loss.item(),
            "reward": rewards.mean().item(),
            "kl": kl,
            "length": length,
            "grad_norm": grad_norm,
            **stats,
        }

    def measure(self) -> dict[str, float]:
        """Learned reward, true score and KL to the reference of one sampled answer per held-out prompt."""
        return self.measure_answers()
