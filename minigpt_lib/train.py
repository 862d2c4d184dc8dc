"""Training: AdamW, warmup + cosine schedule, gradient clipping, loss estimates, time budgets."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from .config import MAX_BATCH, MAX_STEPS, Config, check_field_types, check_range
from .data import BatchSampler, get_batch, sequential_windows
from .device import pick_device
from .optim import Muon

IGNORE_INDEX = -100  # a target F.cross_entropy skips: no loss on that position


class BatchSource(Protocol):
    """Where a Trainer can take its batches from instead of a stream of token ids (chat conversations, say)."""

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training batch (x, y); y may hold IGNORE_INDEX where no loss is wanted."""

    def batch(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A random batch drawn with `generator` (for the loss estimates)."""

    def windows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every window (x, y), for the loss on the whole split."""

    def get_state(self) -> torch.Tensor:
        """The stream's position, as a byte tensor."""

    def set_state(self, state: torch.Tensor) -> None:
        """Continue the stream from a position returned by `get_state`."""


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig(Config):
    """How to train: steps, batch, optimiser, schedule and evaluation."""

    max_steps: int = 2000
    batch_size: int = 32
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float | None = 1.0
    eval_interval: int = 250
    eval_batches: int = 20
    seed: int = 1337
    time_budget: float | None = None
    autocast_dtype: str | None = None
    compile: bool = False
    optimizer: str = "adamw"
    muon_lr: float = 0.02
    muon_momentum: float = 0.95

    def __post_init__(self) -> None:
        check_field_types(self)
        for name in ("max_steps", "eval_interval", "eval_batches"):
            check_range(self, name, 1, MAX_STEPS)
        check_range(self, "batch_size", 1, MAX_BATCH)
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be 0 or more, got {self.warmup_steps}")
        if self.learning_rate <= 0 or self.min_lr < 0 or self.min_lr > self.learning_rate:
            raise ValueError(
                f"need 0 <= min_lr <= learning_rate and learning_rate > 0, got "
                f"learning_rate={self.learning_rate}, min_lr={self.min_lr}"
            )
        if self.grad_clip is not None and self.grad_clip < 0:
            raise ValueError(f"grad_clip must be a positive number, or None or 0 for none; got {self.grad_clip}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ValueError(f"time_budget must be a positive number of seconds, got {self.time_budget}")
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"optimizer must be 'adamw' or 'muon', got {self.optimizer!r}")
        if self.muon_lr <= 0 or not 0 <= self.muon_momentum < 1:
            raise ValueError(f"need muon_lr > 0 and 0 <= muon_momentum < 1, got {self.muon_lr}, {self.muon_momentum}")
        if self.autocast_dtype not in (None, "bfloat16", "float16"):
            raise ValueError(f"autocast_dtype must be None, 'bfloat16' or 'float16', got {self.autocast_dtype!r}")


def lr_at(config: TrainConfig, step: int, progress: float | None = None) -> float:
    """Learning rate: linear warmup over `warmup_steps`, then cosine decay to `min_lr`.

    `progress` (0 to 1) is how far through training we are; by default step / max_steps.
    """
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    if progress is None:
        span = max(1, config.max_steps - config.warmup_steps)
        progress = (step - config.warmup_steps) / span
    progress = min(max(progress, 0.0), 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.min_lr + cosine * (config.learning_rate - config.min_lr)


def configure_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only (not on biases, norms or 1-D parameters).

    With `optimizer="muon"`, the matrices of linear layers (not the embeddings) are trained by Muon
    at `muon_lr`, and everything else by AdamW. Each group's `lr_scale` is its learning rate over
    `learning_rate`: the schedule sets `lr = lr_at(...) * lr_scale`.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    betas = (config.beta1, config.beta2)
    if config.optimizer == "muon":
        embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        linear = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
        matrices = [p for p in params if p.dim() == 2 and id(p) in linear and id(p) not in embeddings]
        chosen = {id(p) for p in matrices}
        others = [p for p in params if p.dim() >= 2 and id(p) not in chosen]
        groups = [
            {"params": matrices, "muon": True, "lr_scale": config.muon_lr / config.learning_rate},
            {"params": others, "weight_decay": config.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
        return Muon(groups, lr=config.learning_rate, momentum=config.muon_momentum, betas=betas)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if device.type in ("cuda", "cpu"):
        try:  # one fused kernel for all parameters: several times faster than a loop over them
            return torch.optim.AdamW(groups, lr=config.learning_rate, betas=betas, fused=True)
        except (RuntimeError, TypeError):  # older PyTorch without a fused kernel for this device
            pass
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=betas)


@torch.no_grad()
def evaluate(
    model: nn.Module, ids: torch.Tensor, block_size: int, batch_size: int = 64, device: torch.device | None = None
) -> float:
    """Mean loss over all of `ids`, cut into fixed non-overlapping windows of `block_size`."""
    return evaluate_windows(model, *sequential_windows(ids, block_size), batch_size, device)


@torch.no_grad()
def evaluate_windows(
    model: nn.Module, x_all: torch.Tensor, y_all: torch.Tensor, batch_size: int = 64, device: torch.device | None = None
) -> float:
    """Mean loss over the targets of windows (x, y); targets of -100 (masked out) are not counted."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(x_all), batch_size):
        x, y = x_all[i : i + batch_size].to(device), y_all[i : i + batch_size].to(device)
        _, loss = model(x, y)
        n = int((y != IGNORE_INDEX).sum())
        if n:
            total += loss.item() * n
            count += n
    model.train(was_training)
    return total / count


class TrainingLoop:
    """What every trainer shares: a step count, a time budget, periodic evaluation, a history and a saved state.

    A subclass sets `config` (with `max_steps`, `eval_interval`, `time_budget`), `model`, `device`,
    `optimizer`, `sampler` (whose `get_state`/`set_state` checkpoints save) and `tokenizer`, and defines
    `update()`, one optimisation step returning the numbers to record, and `measure()`, numbers measured on
    held-out data. The time budget counts training steps only: evaluation time is not part of it.
    """

    def __init__(self, config: Any):
        self.config = config
        self.step = 0
        self.elapsed = 0.0
        self.history: dict[str, list[float]] = {}
        self.evals: list[dict[str, float]] = []
        self.meta: dict[str, Any] = {}  # saved with checkpoints: what the run is, where it came from

    def update(self) -> dict[str, float]:
        """One optimisation step; returns the numbers to record (a loss at least)."""
        raise NotImplementedError

    def measure(self) -> dict[str, float]:
        """Numbers measured on held-out data; a non-finite one stops training."""
        raise NotImplementedError

    def train_step(self) -> dict[str, float]:
        """One step: `update()`, timed, then recorded in the history."""
        start = time.perf_counter()
        self.model.train()
        record = self.update()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.elapsed += time.perf_counter() - start
        for key, value in {"step": self.step, **record}.items():
            self.history.setdefault(key, []).append(float(value))
        self.step += 1
        return record

    def progress(self) -> float:
        """How far through training we are (0 to 1), by steps or by the time budget."""
        done = self.step / self.config.max_steps
        if self.config.time_budget:
            done = max(done, self.elapsed / self.config.time_budget)
        return done

    def finished(self) -> bool:
        """Whether max_steps or the time budget has been reached."""
        return self.progress() >= 1.0

    def _evaluated_now(self) -> bool:
        return bool(self.evals) and self.evals[-1]["step"] == self.step

    def _record_eval(self) -> dict[str, float]:
        numbers = self.measure()
        if not all(math.isfinite(v) for v in numbers.values()):
            raise TrainingDivergedError(
                f"the evaluation gave {numbers} at step {self.step}: the weights are no longer finite. "
                "Lower the learning rate, keep gradient clipping on, or check the data."
            )
        record = {"step": self.step, "time": self.elapsed, **numbers}
        self.evals.append(record)
        return record

    def train(
        self,
        steps: int | None = None,
        progress_bar: bool = True,
        on_eval: Callable[[TrainingLoop], None] | None = None,
        desc: str = "training",
    ) -> list[dict[str, float]]:
        """Train for `steps` more steps (default: until finished); returns the evaluation records.

        Evaluation runs every `eval_interval` steps and at the end. `on_eval(trainer)` is called after each
        periodic evaluation but the first (to save a checkpoint, say).
        """
        target = self.config.max_steps if steps is None else min(self.config.max_steps, self.step + steps)
        budget = self.config.time_budget
        if budget:  # the bar fills with the clock, so a run that stops at its budget ends at 100%
            bar = tqdm(total=budget, initial=min(self.elapsed, budget), disable=not progress_bar, desc=desc,
                       bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of the time budget{postfix}")  # fmt: skip
        else:
            bar = tqdm(total=target, initial=self.step, disable=not progress_bar, desc=desc, unit="step")
        show = lambda record: bar.set_postfix(**{k: f"{v:.3g}" for k, v in record.items() if k not in ("step", "time")})
        try:
            while self.step < target and not self.finished():
                if self.step % self.config.eval_interval == 0 and not self._evaluated_now():
                    show(self._record_eval())
                    if on_eval is not None and self.step > 0:
                        on_eval(self)
                self.train_step()
                bar.update(min(self.elapsed, budget) - bar.n if budget else 1)
            if not self._evaluated_now():
                show(self._record_eval())
            if budget and self.finished():  # also when max_steps came first: the run is complete
                bar.update(bar.total - bar.n)
        finally:
            bar.close()
        return self.evals

    def state(self) -> dict[str, Any]:
        """The training state that is not a tensor, for checkpoints."""
        return {"step": self.step, "elapsed": self.elapsed, "history": self.history, "evals": self.evals}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what `state` returned."""
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.evals = [dict(e) for e in state["evals"]]


class Trainer(TrainingLoop):
    """Trains a language model (any module returning (logits, loss)) on a stream of token ids.

    `train_ids` and `val_ids` may instead be `BatchSource`s that make the batches themselves (chat
    conversations with masked targets, in chapter 8). `meta` is saved with checkpoints: what the run is.
    """

    def __init__(
        self,
        model: nn.Module,
        train_ids: torch.Tensor | BatchSource,
        val_ids: torch.Tensor | BatchSource,
        config: TrainConfig,
        block_size: int | None = None,
        device: str | torch.device | None = None,
        tokenizer: Any = None,
    ):
        super().__init__(config)
        self.device = pick_device(None if device is None else str(device))
        self.model = model.to(self.device)
        self.block_size = block_size or getattr(model, "block_size", None)
        if self.block_size is None:
            raise ValueError("pass block_size: the model does not say how long its context is")
        self.train_ids, self.val_ids = train_ids, val_ids
        self.tokenizer = tokenizer
        self.optimizer = configure_optimizer(self.model, config, self.device)
        if isinstance(train_ids, torch.Tensor):
            self.sampler = BatchSampler(train_ids, self.block_size, config.batch_size, seed=config.seed)
        else:
            self.sampler = train_ids
        self.history = {"step": [], "loss": [], "lr": [], "grad_norm": []}
        self._forward = torch.compile(self.model) if config.compile else self.model

    def wrap_model(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Run training steps through `wrap(model)` (DDP, say); evaluation and checkpoints use the model itself."""
        wrapped = wrap(self.model)
        self._forward = torch.compile(wrapped) if self.config.compile else wrapped

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.config.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=getattr(torch, self.config.autocast_dtype))

    def _schedule_progress(self) -> float | None:
        if not self.config.time_budget:
            return None
        span = max(1, self.config.max_steps - self.config.warmup_steps)
        by_steps = (self.step - self.config.warmup_steps) / span
        return max(by_steps, self.elapsed / self.config.time_budget)

    @torch.no_grad()
    def estimate_loss(self) -> dict[str, float]:
        """Mean loss on the same `eval_batches` random batches of each split every time."""
        self.model.eval()
        out = {}
        for split, ids in (("train", self.train_ids), ("val", self.val_ids)):
            generator = torch.Generator().manual_seed(self.config.seed + 1)
            losses = []
            for _ in range(self.config.eval_batches):
                if isinstance(ids, torch.Tensor):
                    x, y = get_batch(ids, self.block_size, self.config.batch_size, generator)
                else:
                    x, y = ids.batch(generator)
                with self._autocast():
                    _, loss = self.model(x.to(self.device), y.to(self.device))
                losses.append(loss.item())
            out[split] = sum(losses) / len(losses)
        self.model.train()
        return out

    def measure(self) -> dict[str, float]:
        """The estimated train and val losses."""
        return self.estimate_loss()

    def update(self) -> dict[str, float]:
        """One optimisation step on the next batch: its loss, learning rate and gradient norm."""
        lr = lr_at(self.config, self.step, self._schedule_progress())
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        x, y = self.sampler.next()
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        with self._autocast():
            _, loss = self._forward(x, y)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise TrainingDivergedError(
                f"the loss became {loss_value} at step {self.step} (learning rate {lr:.2e}). "
                "Lower the learning rate, keep gradient clipping on, or check the data."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.config.grad_clip or float("inf")
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm).item()
        self.optimizer.step()
        return {"loss": loss_value, "lr": lr, "grad_norm": grad_norm}

    def evaluate(self, ids: torch.Tensor | BatchSource | None = None) -> float:
        """Loss on the whole validation split (or `ids`) in non-overlapping windows."""
        ids = self.val_ids if ids is None else ids
        with self._autocast():
            if not isinstance(ids, torch.Tensor):
                return evaluate_windows(self.model, *ids.windows(), device=self.device)
            return evaluate(self.model, ids, self.block_size, device=self.device)
