"""Data-parallel training on several processes under `torchrun`: DDP (copies) or FSDP2 (shards).

Every rank draws the same global batch from the same random stream and trains on its own slice,
so N ranks with batch B see what one process with batch N * B sees, and each rank different data.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from .checkpoint import save_checkpoint
from .data import BatchSampler, get_batch
from .model import GPT
from .train import configure_optimizer

MODES = ("ddp", "fsdp")


def torchrun(nproc: int, *args: str) -> list[str]:
    """The command line that runs `args` (say "-m", "minigpt_lib", "train", ...) on `nproc` local processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]


def backend_for(local_rank: int, local_world_size: int) -> tuple[str, torch.device, str]:
    """(backend, device, reason) for one of `local_world_size` processes on this machine.

    NCCL needs one GPU per process: with fewer GPUs than local processes (two ranks on Colab's one
    GPU, say) every rank falls back to gloo on the CPU, rather than rank 1 asking for a GPU that is not
    there. Every rank sees the same GPU count, so they all choose the same backend.
    """
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus >= local_world_size:
        return "nccl", torch.device("cuda", local_rank), f"NCCL, one GPU per process ({gpus} GPUs)"
    if gpus == 0:
        return "gloo", torch.device("cpu"), "gloo on the CPU (no GPU)"
    gpu_word = f"{gpus} GPU" + ("s" if gpus > 1 else "")
    reason = (
        f"gloo on the CPU: {local_world_size} processes but {gpu_word}, and NCCL needs one GPU per process "
        f"(launch with --nproc_per_node={gpus} to train on the GPU)"
    )
    return "gloo", torch.device("cpu"), reason


def setup() -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes; returns (rank, world size, this rank's device)."""
    if "RANK" not in os.environ:
        raise ValueError(
            "--parallel needs several processes: launch with `torchrun --nproc_per_node=2 -m minigpt_lib train ...`"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", 1)))
    backend, device, reason = backend_for(local_rank, local_world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    elif torch.cuda.is_available() and local_rank == 0:
        print(f"distributed: {reason}", file=sys.stderr)
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size(), device


def teardown() -> None:
    """Leave the process group (if one was joined).

    A model wrapped by DDP or FSDP keeps the group, and gloo's threads, alive after
    `destroy_process_group` until the model is freed. Collecting it first frees them while Python
    still runs: freed during interpreter shutdown instead, they can abort a process that has already
    finished its work (seen once in CI: "terminate called without an active exception" on rank 0).
    """
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


class ShardedBatchSampler(BatchSampler):
    """Slice `rank` of each global batch of `world_size * batch_size` windows, drawn from one seeded stream."""

    def __init__(self, ids: torch.Tensor, block_size: int, batch_size: int, rank: int, world_size: int, seed: int):
        super().__init__(ids, block_size, batch_size, seed)
        self.rank, self.world_size = rank, world_size

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of the next global batch."""
        x, y = get_batch(self.ids, self.block_size, self.batch_size * self.world_size, self.generator)
        part = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return x[part], y[part]


def shard(model: nn.Module) -> nn.Module:
    """Shard each block, then the rest of the model, over the ranks with FSDP2 (in place)."""
    from torch.distributed.fsdp import fully_shard

    for block in model.transformer.h:
        fully_shard(block)
    return fully_shard(model)


def parallelize(trainer: Any, mode: str) -> None:
    """Make a Trainer data-parallel: its own slice of every batch, gradients averaged over the ranks.

    DDP wraps the model and all-reduces its gradients during the backward pass. FSDP2 shards the model
    in place (each rank keeps 1/N of every parameter, gradient and optimizer state), gathers each
    block's weights just before using them and reduce-scatters the gradients; the optimizer is rebuilt
    on the shards, keeping the state of a resumed run.
    """
    if mode not in MODES:
        raise ValueError(f"parallel mode must be one of {', '.join(MODES)}, got {mode!r}")
    if trainer.config.time_budget:
        raise ValueError("--time-budget is not supported with --parallel (ranks must stop together); use --max-steps")
    if mode == "fsdp" and trainer.config.optimizer == "muon":
        raise ValueError(
            "Muon orthogonalises whole matrices, which FSDP splits over the ranks: use --parallel ddp, "
            "or a preset trained by AdamW (classic-cpu, tiny)"
        )
    sampler = ShardedBatchSampler(
        trainer.train_ids,
        trainer.block_size,
        trainer.config.batch_size,
        dist.get_rank(),
        dist.get_world_size(),
        trainer.config.seed,
    )
    sampler.set_state(trainer.sampler.get_state())  # a resumed run continues the stream
    trainer.sampler = sampler
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        trainer.wrap_model(lambda model: DistributedDataParallel(model))
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    resumed = bool(trainer.optimizer.state)  # (asking an optimizer with no state for it would create some)
    for p, values in list(trainer.optimizer.state.items()):  # one key order on every rank: collectives pair up by it
        trainer.optimizer.state[p] = dict(sorted(values.items()))
    state = get_optimizer_state_dict(trainer.model, trainer.optimizer, options=options) if resumed else None
    shard(trainer.model)
    trainer.optimizer = configure_optimizer(trainer.model, trainer.config, trainer.device)
    if state is not None:
        set_optimizer_state_dict(trainer.model, trainer.optimizer, state, options=options)


def full_model_and_optimizer(trainer: Any) -> tuple[nn.Module, torch.optim.Optimizer] | None:
    """On rank 0, an unsharded copy of an FSDP2 trainer's model and optimizer; None on the others.

    Collective: every rank must call it (the shards are gathered onto rank 0's CPU).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(trainer.model, options=options)
    optim = get_optimizer_state_dict(trainer.model, trainer.optimizer, options=options)
    if dist.get_rank() != 0:
        return None
    plain = GPT(trainer.model.config)
    plain.load_state_dict(weights)
    optimizer = configure_optimizer(plain, trainer.config, torch.device("cpu"))
    for name, p in plain.named_parameters():
        if name in optim["state"]:
            optimizer.state[p] = optim["state"][name]
    return plain, optimizer


def save(trainer: Any, out: str | Path, mode: str) -> None:
    """Checkpoint a data-parallel trainer: every rank takes part, rank 0 alone writes."""
    if mode == "fsdp":
        full = full_model_and_optimizer(trainer)
        if full is not None:
            model, optimizer = full
            view = SimpleNamespace(
                optimizer=optimizer, sampler=trainer.sampler, config=trainer.config, state=trainer.state
            )
            save_checkpoint(out, model, trainer.tokenizer, view)
    elif dist.get_rank() == 0:
        save_checkpoint(out, trainer.model, trainer.tokenizer, trainer)
    dist.barrier()


def memory_per_rank(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this rank holds of parameters, gradients and optimizer state (its shard under FSDP)."""

    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    params = {id(p): p for p in model.parameters()}.values()
    return {
        "parameters": sum(local(p).numel() * p.element_size() for p in params),
        "gradients": sum(local(p.grad).numel() * p.grad.element_size() for p in params if p.grad is not None),
        "optimizer": sum(
            local(v).numel() * v.element_size()
            for state in optimizer.state.values()
            for v in state.values()
            if torch.is_tensor(v) and v.dim() > 0
        ),
    }


def print_memory(trainer: Any) -> None:
    """Print, on rank 0, the megabytes each rank holds of parameters, gradients and optimizer state."""
    mine = memory_per_rank(trainer.model, trainer.optimizer)
    everyone: list[dict[str, int] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    if dist.get_rank() == 0:
        for r, memory in enumerate(everyone):
            parts = ", ".join(f"{name} {size / 2**20:.3f} MB" for name, size in memory.items())
            print(f"memory rank {r}: {parts}")
