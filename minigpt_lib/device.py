"""Pick the fastest available device."""

from __future__ import annotations

import torch


def pick_device(preferred: str | None = None) -> torch.device:
    """Return `preferred` if given, else cuda, then mps, then cpu, whichever is available.

    A device name PyTorch does not know, or a GPU that is not there, is a ValueError saying so.
    """
    if preferred not in (None, "auto"):
        try:
            device = torch.device(preferred)
        except (RuntimeError, TypeError):
            raise ValueError(f"unknown device {preferred!r}; use cpu, cuda, mps or auto") from None
        if device.type not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device {preferred!r} is not supported here; use cpu, cuda, mps or auto")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but no CUDA GPU is available; use 'cpu'")
        mps = getattr(torch.backends, "mps", None)
        if device.type == "mps" and not (mps is not None and mps.is_available()):
            raise ValueError("device 'mps' was asked for but this machine has no Apple GPU; use 'cpu'")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
