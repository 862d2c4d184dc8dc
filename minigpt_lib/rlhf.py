"""What the stages of learning from preferences share: answers sampled in groups, prompt + answer
batches, per-token log-probabilities, the KL estimate, and a training loop with a time budget.

A *completion* is a prompt's token ids followed by an answer's token ids. Logits at position t
predict token t + 1, so the answer's log-probabilities sit at positions len(prompt) - 1 onward.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .device import pick_device
from .sampling import stream_ragged


@dataclass
class Completions:
    """Prompts followed by answers, right-padded into one batch."""

    ids: torch.Tensor  # (B, T) prompt + answer + padding
    prompt_lens: torch.Tensor  # (B,)
    lengths: torch.Tensor  # (B,) prompt + answer

    def answer_mask(self) -> torch.Tensor:
        """(B, T - 1) float mask, 1 where the *next* token (the target of that position) is part of the answer."""
        target_pos = torch.arange(1, self.ids.size(1), device=self.ids.device)[None, :]
        inside = (target_pos >= self.prompt_lens[:, None]) & (target_pos < self.lengths[:, None])
        return inside.float()

    def to(self, device: torch.device | str) -> Completions:
        """The same batch on `device`."""
        return Completions(self.ids.to(device), self.prompt_lens.to(device), self.lengths.to(device))


def make_completions(
    prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_id: int = 0
) -> Completions:
    """Put each prompt in front of its answer and right-pad them to one length (`pad_id` is never read)."""
    if len(prompts) != len(answers) or not prompts:
        raise ValueError(f"need as many prompts as answers (at least one), got {len(prompts)} and {len(answers)}")
    rows = [list(p) + list(a) for p, a in zip(prompts, answers, strict=True)]
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (the model predicts the answer from it)")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    prompt_lens = torch.tensor([len(p) for p in prompts], dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    return Completions(ids, prompt_lens, lengths)


def token_logprobs(model: nn.Module, batch: Completions, temperature: float = 1.0) -> torch.Tensor:
    """(B, T - 1) log-probability the model gives each answer token; 0 at prompt and padding positions.

    `temperature` divides the logits first: the probabilities of the distribution answers were sampled from.
    """
    logits, _ = model(batch.ids[:, :-1])
    logits = logits.float() / temperature if temperature != 1.0 else logits.float()
    logp = torch.gather(F.log_softmax(logits, dim=-1), 2, batch.ids[:, 1:, None]).squeeze(2)
    return logp * batch.answer_mask()


def sequence_logprob(model: nn.Module, batch: Completions) -> torch.Tensor:
    """(B,) log-probability of each whole answer given its prompt: the sum over its tokens."""
    return token_logprobs(model, batch).sum(dim=1)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """(B,) estimate of KL(policy || reference) per answer from tokens sampled from the policy.

    Per token, with r = ref_logp - logp: "k1" is -r (unbiased, can be negative), "k3" is
    exp(r) - 1 - r (also unbiased, never negative, lower variance). Summed over the answer's tokens.
    """
    r = ref_logp - logp
    if kind == "k1":
        per_token = -r
    elif kind == "k3":
        per_token = torch.exp(r) - 1 - r
    else:
        raise ValueError(f"kind must be 'k1' or 'k3', got {kind!r}")
    return (per_token * mask).sum(dim=1)


def anchor_kl(policy: nn.Module, reference: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean KL(reference || policy) of the next-token distributions at the learned positions of `y` (not -100).

    Read on chapter 8's conversations (teacher-forced), this keeps the policy's answers to *those* prompts close
    to the SFT model's, including families the preference stage never samples.
    """
    keep = y != -100
    if not keep.any():
        return torch.zeros((), device=x.device)
    with torch.no_grad():
        ref_logits, _ = reference(x)
        ref_logp = F.log_softmax(ref_logits.float()[keep], dim=-1)
    logits, _ = policy(x)
    logp = F.log_softmax(logits.float()[keep], dim=-1)
    return (ref_logp.exp() * (ref_logp - logp)).sum(dim=-1).mean()


@torch.no_grad()
def sample_answers(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    n: int,
    stop_ids: Collection[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    batch_size: int = 128,
) -> list[list[list[int]]]:
    """`n` sampled answers to each prompt; each ends at its first token of `stop_ids` (or at the limit).

    The n * len(prompts) rows are sorted by prompt length and sampled `batch_size` at a time, prompts of
    different lengths together (`stream_ragged`).
    """
    rows = sorted((len(p), i) for i, p in enumerate(prompts) for _ in range(n))
    answers: list[list[list[int]]] = [[] for _ in prompts]
    for start in range(0, len(rows), batch_size):
        chunk = [i for _, i in rows[start : start + batch_size]]
        new: list[list[int]] = [[] for _ in chunk]
        done = [False] * len(chunk)
        for next_ids, fresh in stream_ragged(
            model, [prompts[i] for i in chunk], max_new_tokens, temperature, generator=generator
        ):
            for r, (token, is_new) in enumerate(zip(next_ids.tolist(), fresh.tolist(), strict=True)):
                if is_new and not done[r]:
                    new[r].append(token)
                    done[r] = token in stop_ids or len(new[r]) == max_new_tokens
            if all(done):
                break
        for i, answer in zip(chunk, new, strict=True):
            answers[i].append(answer)
    return answers


@torch.no_grad()
def evaluate_policy(
    policy: nn.Module,
    reference: nn.Module,
    prompts: Sequence[Sequence[int]],
    stop_ids: Collection[int],
    max_new_tokens: int,
    seed: int = 0,
    reward: Callable[[list[list[int]], list[list[int]]], torch.Tensor] | None = None,
    true_score: Callable[[int, list[int]], float] | None = None,
) -> dict[str, float]:
    """One sampled answer per held-out prompt: mean learned reward, mean true score and KL to the reference.

    `reward(prompts, answers)` is the reward model; `true_score(i, answer)` the labelling function's
    score of an answer to prompt i. KL is the k1 estimate summed over each answer, averaged over prompts.
    """
    was_training = policy.training
    policy.eval()
    generator = torch.Generator(device=next(policy.parameters()).device).manual_seed(seed)
    answers = [group[0] for group in sample_answers(policy, prompts, 1, stop_ids, max_new_tokens, generator=generator)]
    prompts = [list(p) for p in prompts]
    out: dict[str, float] = {}
    kls = []
    for i in range(0, len(prompts), 64):
        batch = make_completions(prompts[i : i + 64], answers[i : i + 64]).to(next(policy.parameters()).device)
        logp, ref_logp = token_logprobs(policy, batch), token_logprobs(reference, batch)
        kls.append(kl_estimate(logp, ref_logp, batch.answer_mask()).cpu())
    out["kl"] = torch.cat(kls).mean().item()
    if reward is not None:
        out["reward"] = reward(prompts, answers).float().mean().item()
    if true_score is not None:
        out["score"] = sum(true_score(i, a) for i, a in enumerate(answers)) / len(answers)
    out["length"] = sum(len(a) for a in answers) / len(answers)
    policy.train(was_training)
    return out


def freeze(model: nn.Module) -> nn.Module:
    """A frozen copy of `model` (the reference a policy is compared with): eval mode, no gradients."""
    ref = copy.deepcopy(model).eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref


class RandomState:
    """The one random-number generator a preference trainer draws from, saved with its checkpoints."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def get_state(self) -> torch.Tensor:
        """The generator's state, for a checkpoint."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        """Restore what `get_state` returned."""
        self.generator.set_state(state)


@dataclass
class LoopConfig:
    """What every preference trainer needs: steps, batch, learning rate, time budget, evaluation."""

    max_steps: int = 100
    batch_size: int = 16
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    eval_interval: int = 25
    seed: int = 1337
    time_budget: float | None = None

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.batch_size < 1 or self.eval_interval < 1:
            raise ValueError("max_steps, batch_size and eval_interval must be at least 1")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate}")
        if self.time_budget is not None and not (math.isfinite(self.time_budget) and self.time_budget > 0):
            raise ValueError(f"time_budget must be a positive number of seconds, got {self.time_budget}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy of the config."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoopConfig:
        """Config from `to_dict` output; unknown keys are an error."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
        return cls(**data)


class LoopTrainer:
    """A training loop with AdamW, a time budget, periodic evaluation and checkpointable state.

    Subclasses define `train_step()` (returns a dict of numbers to record) and `evaluate()` (a dict
    of numbers measured on held-out data). The attributes `model`, `tokenizer`, `optimizer`,
    `sampler`, `config`, `meta` and `state()` are what `save_trainer` stores.
    """

    def __init__(self, model: nn.Module, config: LoopConfig, tokenizer: Any = None, device: str | None = None):
        self.config = config
        self.device = pick_device(device)
        self.model = model.to(self.device)
        self.tokenizer = tokenizer
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
        self.sampler = RandomState(config.seed)
        self.step = 0
        self.elapsed = 0.0
        self.history: dict[str, list[float]] = {}
        self.evals: list[dict[str, float]] = []
        self.meta: dict[str, Any] = {}  # saved with checkpoints: what the run is, where its reference came from

    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns the numbers to record (a loss at least)."""
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        """Numbers measured on held-out data."""
        raise NotImplementedError

    def optimise(self, loss: torch.Tensor) -> float:
        """Backpropagate `loss`, clip the gradient, take an AdamW step; returns the gradient norm."""
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"the loss became {loss.item()} at step {self.step}; lower the learning rate")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.requires_grad]
        norm = nn.utils.clip_grad_norm_(params, self.config.grad_clip or float("inf")).item()
        self.optimizer.step()
        return norm

    def finished(self) -> bool:
        """Whether max_steps or the time budget has been reached."""
        return self.step >= self.config.max_steps or self.elapsed >= (self.config.time_budget or math.inf)

    def _evaluated_now(self) -> bool:
        return bool(self.evals) and self.evals[-1]["step"] == self.step

    @staticmethod
    def _postfix(record: dict[str, float]) -> dict[str, str]:
        return {k: f"{v:.3g}" for k, v in record.items() if k not in ("step", "time")}

    def _record_eval(self) -> dict[str, float]:
        record = {"step": self.step, "time": self.elapsed, **self.evaluate()}
        self.evals.append(record)
        return record

    def train(
        self,
        steps: int | None = None,
        progress_bar: bool = True,
        on_eval: Callable[[LoopTrainer], None] | None = None,
        desc: str = "training",
    ) -> list[dict[str, float]]:
        """Train for `steps` more steps (default: until finished); returns the evaluation records.

        Evaluation runs every `eval_interval` steps and at the end; its time is not counted in the
        budget. `on_eval(trainer)` is called after each evaluation but the first (to save a checkpoint).
        """
        target = self.config.max_steps if steps is None else min(self.config.max_steps, self.step + steps)
        total = None if self.config.time_budget and target >= 10**6 else target
        bar = tqdm(total=total, initial=self.step, disable=not progress_bar, desc=desc, unit="step")
        try:
            while self.step < target and not self.finished():
                if self.step % self.config.eval_interval == 0 and not self._evaluated_now():
                    bar.set_postfix(self._postfix(self._record_eval()))
                    if on_eval is not None and self.step > 0:
                        on_eval(self)
                start = time.perf_counter()
                self.model.train()
                record = self.train_step()
                self.elapsed += time.perf_counter() - start
                for key, value in {"step": self.step, **record}.items():
                    self.history.setdefault(key, []).append(float(value))
                self.step += 1
                bar.update(1)
            if not self._evaluated_now():
                bar.set_postfix(self._postfix(self._record_eval()))
        finally:
            bar.close()
        return self.evals

    def state(self) -> dict[str, Any]:
        """The training state that is not a tensor, for checkpoints."""
        return {
            "step": self.step,
            "elapsed": self.elapsed,
            "history": self.history,
            "evals": self.evals,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what `state` returned."""
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.evals = [dict(e) for e in state["evals"]]


@dataclass
class PolicyConfig(LoopConfig):
    """What PPO and DPO share besides the loop: the anchor, a KL to the reference on chapter 8's conversations.

    `anchor_coef` weighs `anchor_kl` on `anchor_batch` windows a step; it acts only when the trainer is given
    windows (`anchor=`), and 0 turns it off.
    """

    anchor_coef: float = 5.0
    anchor_batch: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.anchor_batch < 1:
            raise ValueError(f"anchor_batch must be at least 1, got {self.anchor_batch}")
        if not (math.isfinite(self.anchor_coef) and self.anchor_coef >= 0):
            raise ValueError(f"anchor_coef must be a number >= 0, got {self.anchor_coef}")


class PolicyTrainer(LoopTrainer):
    """A loop that trains a policy (a GPT) away from a frozen reference, optionally anchored on SFT conversations.

    `anchor` is (x, y): windows of chapter 8's conversations with their masked targets (`sft.conversation_windows`).
    """

    def __init__(
        self,
        policy: nn.Module,
        reference: nn.Module,
        config: PolicyConfig,
        anchor: tuple[torch.Tensor, torch.Tensor] | None = None,
        tokenizer: Any = None,
        device: str | None = None,
    ):
        super().__init__(policy, config, tokenizer, device)
        self.reference = freeze(reference).to(self.device)
        self.anchor = anchor

    def anchor_loss(self) -> torch.Tensor | None:
        """`anchor_coef` times `anchor_kl` on a random batch of the anchor windows (None when there is no anchor)."""
        if self.anchor is None or not self.config.anchor_coef:
            return None
        x, y = self.anchor
        rows = torch.randint(len(x), (self.config.anchor_batch,), generator=self.sampler.generator)
        kl = anchor_kl(self.model, self.reference, x[rows].to(self.device), y[rows].to(self.device))
        return self.config.anchor_coef * kl
