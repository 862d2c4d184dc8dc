"""Full and fast settings for notebooks, and seeding."""

from __future__ import annotations

import os
import platform
import random
import time
from types import SimpleNamespace
from typing import Any

import torch

FAST_ENV = "MINIGPT_FAST"


def is_fast() -> bool:
    """Whether the fast setting (used by the test suite) is switched on via MINIGPT_FAST=1."""
    return os.environ.get(FAST_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def choose(full: dict[str, Any], fast: dict[str, Any]) -> SimpleNamespace:
    """Return the full settings, with the fast values laid over them when MINIGPT_FAST=1."""
    unknown = set(fast) - set(full)
    if unknown:
        raise KeyError(f"fast settings {sorted(unknown)} have no full value; add them to `full`")
    values = dict(full)
    if is_fast():
        values.update(fast)
    return SimpleNamespace(**values)


def seed_everything(seed: int) -> None:
    """Seed Python's and PyTorch's random number generators."""
    random.seed(seed)
    torch.manual_seed(seed)


def hardware_description() -> str:
    """A one-line description of this machine: processor, core count and GPU if any."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} CPU cores ({torch.get_num_threads()} PyTorch threads)"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


class RunClock:
    """Times a notebook run and reports it with the hardware it ran on."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def minutes(self) -> float:
        """Minutes since the clock was started."""
        return (time.perf_counter() - self.start) / 60

    def summary(self) -> str:
        """For example: 'full run: 12.3 min on AMD EPYC, 2 CPU cores (PyTorch 2.13.0)'."""
        mode = "fast" if is_fast() else "full"
        minutes = self.minutes()
        took = f"{minutes:.1f} min" if minutes >= 1 else f"{minutes * 60:.0f} s"
        return f"{mode} run: {took} on {hardware_description()} (PyTorch {torch.__version__})"
