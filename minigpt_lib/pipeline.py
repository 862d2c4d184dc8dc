"""Model (pipeline) parallelism: a GPT's layers split over processes, fed micro-batch after micro-batch.

Run under torchrun, each rank keeping one stage:
`torchrun --nproc_per_node=2 -m minigpt_lib.pipeline --out result.json`
checks that the pipeline's output, loss and gradients equal one process running the whole model.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .attention import rotary_tables
from .model import GPT, GPTConfig


class Stage(nn.Module):
    """Blocks `start` to `end` of a GPT; the first stage also embeds tokens, the last also predicts them."""

    def __init__(self, model: GPT, start: int, end: int):
        super().__init__()
        self.config = model.config
        self.first, self.last = start == 0, end == model.config.n_layer
        self.start = start
        if self.first:
            self.wte = model.transformer.wte
            self.wpe = model.transformer.wpe if self.config.position == "learned" else None
        self.h = nn.ModuleList(model.transformer.h[start:end])
        if self.last:
            self.ln_f = model.transformer.ln_f
            self.lm_head = model.lm_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Token ids (first stage) or activations (B, T, C) in; activations or logits (last stage) out."""
        T = x.size(1)
        if self.first:
            positions = torch.arange(T, device=x.device)
            x = self.wte(x) + (self.wpe(positions) if self.wpe is not None else 0)
        rotary = None
        if self.config.position == "rope":
            rotary = rotary_tables(T, self.config.n_embd // self.config.n_head, device=x.device)
        for i, block in enumerate(self.h):
            x = block(x, None, self.start + i, rotary)
        return self.lm_head(self.ln_f(x)) if self.last else x


def split(model: GPT, n_stages: int) -> list[Stage]:
    """The model cut into `n_stages` stages of consecutive blocks, as even as the layer count allows."""
    if not 1 <= n_stages <= model.config.n_layer:
        raise ValueError(f"cannot split {model.config.n_layer} layers into {n_stages} stages")
    bounds = [round(i * model.config.n_layer / n_stages) for i in range(n_stages + 1)]
    return [Stage(model, bounds[i], bounds[i + 1]) for i in range(n_stages)]


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the next-token predictions."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def bubble_fraction(n_stages: int, n_microbatches: int) -> float:
    """Share of a GPipe step each stage spends idle: (p - 1) / (m + p - 1)."""
    return (n_stages - 1) / (n_microbatches + n_stages - 1)


def gpipe_timeline(n_stages: int, n_microbatches: int) -> list[tuple[int, int, int, str]]:
    """(stage, time slot, micro-batch, 'F' or 'B') of a GPipe step, a backward counted as two forward slots."""
    slots = []
    for s in range(n_stages):
        for m in range(n_microbatches):
            slots.append((s, s + m, m, "F"))
    forward_end = n_microbatches + n_stages - 1
    for s in range(n_stages):
        for m in range(n_microbatches):
            start = forward_end + 2 * (n_stages - 1 - s + m)
            slots.append((s, start, m, "B"))
    return slots


def check(config: GPTConfig, batch_size: int, n_microbatches: int, seed: int = 0) -> dict[str, float] | None:
    """Run one forward and backward pass as a pipeline over the ranks and on one process; rank 0 gets the errors."""
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(seed)
    reference = GPT(config)
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(config.vocab_size, (batch_size, config.block_size), generator=generator)
    y = torch.randint(config.vocab_size, (batch_size, config.block_size), generator=generator)

    torch.manual_seed(seed)
    stage_module = split(GPT(config), world)[rank]  # every rank builds the same model and keeps its stage
    stage = PipelineStage(stage_module, rank, world, torch.device("cpu"))
    schedule = ScheduleGPipe(stage, n_microbatches, loss_fn=loss_fn)
    start = time.perf_counter()
    losses: list[torch.Tensor] = []
    if rank == 0:
        schedule.step(x)
        output = None
    else:
        output = schedule.step(target=y, losses=losses) if rank == world - 1 else schedule.step()
    seconds = time.perf_counter() - start

    logits, loss = reference(x, y)
    loss.backward()
    errors = {"output": 0.0, "loss": 0.0, "gradients": 0.0}
    tied = reference.transformer.wte.weight  # wte on the first stage, lm_head on the last: its gradient is the sum
    tied_grad = torch.zeros_like(tied)
    for p, q in zip(stage_module.parameters(), split(reference, world)[rank].parameters(), strict=True):
        if q is tied:
            tied_grad += p.grad
        else:
            errors["gradients"] = max(errors["gradients"], (p.grad - q.grad).abs().max().item())
    dist.all_reduce(tied_grad)
    errors["gradients"] = max(errors["gradients"], (tied_grad - tied.grad).abs().max().item())
    if rank == world - 1:
        errors["output"] = (output - logits).abs().max().item()
        errors["loss"] = abs(torch.stack(losses).mean().item() - loss.item())
    gathered: list[dict[str, float] | None] = [None] * world
    dist.all_gather_object(gathered, errors)
    if rank != 0:
        return None
    result = {key: max(e[key] for e in gathered) for key in errors}
    result.update(seconds=seconds, reference_loss=loss.item(), stages=world, microbatches=n_microbatches)
    return result


def main(argv: list[str] | None = None) -> int:
    """Under torchrun: check the pipeline against one process and write the errors (JSON) to --out."""
    parser = argparse.ArgumentParser(prog="torchrun --nproc_per_node=2 -m minigpt_lib.pipeline")
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the measured errors")
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=64)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--vocab-size", type=int, default=65)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--microbatches", type=int, default=4)
    args = parser.parse_args(argv)
    config = GPTConfig(
        vocab_size=args.vocab_size,
        block_size=args.block_size,
        n_layer=args.n_layer,
        n_head=args.n_head,
        n_embd=args.n_embd,
    )
    dist.init_process_group("gloo")
    try:
        result = check(config, args.batch_size, args.microbatches)
        if result is not None:
            args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
            print(json.dumps(result))
    finally:
        gc.collect()  # free the stages' references to the group before leaving it (see distributed.teardown)
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
