"""Checkpoints: safetensors for tensors, JSON for everything else; written atomically, never pickled."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from .model import GPT, GPTConfig
from .tokenizers import CharTokenizer, tokenizer_from_dict
from .train import TrainConfig, Trainer

FORMAT = "minigpt-checkpoint"
VERSION = 1
MANIFEST = "checkpoint.json"
MODEL_FILE = "model.safetensors"
TRAINING_FILE = "training.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, corrupted or of an unknown format."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_atomically(path: Path, write: Any) -> None:
    """Call write(tmp_dir), then swap tmp_dir into place so `path` is never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        for f in tmp.iterdir():
            with open(f, "rb") as handle:
                os.fsync(handle.fileno())
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, state["param_groups"]


def _optimizer_state(tensors: dict[str, torch.Tensor], param_groups: list[dict]) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    return {"state": state, "param_groups": param_groups}


def save_checkpoint(
    path: str | Path,
    model: GPT,
    tokenizer: CharTokenizer | None = None,
    trainer: Trainer | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write `model` (and its tokenizer, and a trainer's full state for resuming) to folder `path`.

    `meta` (default: the trainer's) says what the run is, e.g. {"chat": True} for a chat model.
    """
    meta = meta if meta is not None else getattr(trainer, "meta", None)
    path = Path(path)

    def write(folder: Path) -> None:
        save_model(model, str(folder / MODEL_FILE))
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "model_config": model.config.to_dict(),
            "model_class": type(model).__name__,
            "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
        }
        if meta:
            manifest["meta"] = meta
        if trainer is not None:
            tensors, groups = _optimizer_tensors(trainer.optimizer)
            tensors["rng.torch"] = torch.get_rng_state()
            tensors["rng.sampler"] = trainer.sampler.get_state()
            if torch.cuda.is_available():
                tensors["rng.cuda"] = torch.cuda.get_rng_state()
            save_file(tensors, str(folder / TRAINING_FILE))
            manifest["train_config"] = trainer.config.to_dict()
            manifest["train_state"] = trainer.state()
            manifest["optimizer_param_groups"] = groups
        manifest["sha256"] = {f.name: _sha256(f) for f in sorted(folder.iterdir())}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1), encoding="utf-8")

    _write_atomically(path, write)
    return path


def save_trainer(trainer: Trainer, path: str | Path) -> Path:
    """Checkpoint a trainer so that `resume_trainer` continues exactly where it stands."""
    return save_checkpoint(path, trainer.model, trainer.tokenizer, trainer)


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and verify a checkpoint folder's manifest and the checksums of its files."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(
            f"{path} is not a checkpoint folder (no {MANIFEST}); pass the folder written by "
            "`save_checkpoint` or `python -m minigpt_lib train --out DIR`"
        )
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{manifest_path} is corrupted or truncated ({err}); retrain or restore a copy") from err
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{manifest_path} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise CheckpointError(f"checkpoint version {manifest.get('version')} is not supported (expected {VERSION})")
    for name, digest in manifest.get("sha256", {}).items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is missing {name}")
        if _sha256(file) != digest:
            raise CheckpointError(
                f"{file} is corrupted or truncated (its sha256 does not match the manifest); retrain or restore a copy"
            )
    return manifest


def finished_run(path: str | Path, config: GPTConfig, tokenizer: Any) -> dict[str, Any] | None:
    """The manifest of `path` if it holds a finished training run of this model and tokenizer, else None.

    Finished: its steps or its time budget are used up. A missing or damaged checkpoint gives None,
    so a chapter can reuse an earlier chapter's model when it is there and train its own otherwise.
    """
    try:
        manifest = read_manifest(path)
    except CheckpointError:
        return None
    state = manifest.get("train_state")
    if state is None or manifest.get("tokenizer") is None:
        return None
    trained = TrainConfig.from_dict(manifest["train_config"])
    done = state["step"] >= trained.max_steps or (trained.time_budget or float("inf")) <= state["elapsed"]
    same = manifest["model_config"] == config.to_dict() and tokenizer_from_dict(manifest["tokenizer"]) == tokenizer
    return manifest if done and same else None


def load_checkpoint(
    path: str | Path, device: str | torch.device = "cpu", model_class: type[torch.nn.Module] = GPT
) -> tuple[GPT, CharTokenizer | None, dict[str, Any]]:
    """Load a model (and its tokenizer) from a checkpoint folder; returns (model, tokenizer, manifest).

    `model_class` is built from the GPTConfig in the manifest: GPT, or a model around one (a reward model).
    """
    path = Path(path)
    manifest = read_manifest(path)
    saved_class = manifest.get("model_class", GPT.__name__)
    if saved_class != model_class.__name__:
        raise CheckpointError(f"{path} holds a {saved_class}, not a {model_class.__name__}; load it as what it is")
    model = model_class(GPTConfig.from_dict(manifest["model_config"]))
    try:
        missing, unexpected = load_model(model, str(path / MODEL_FILE), strict=False)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(f"could not read the weights in {path / MODEL_FILE}: {err}") from err
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not fit the config: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    tokenizer = tokenizer_from_dict(manifest["tokenizer"]) if manifest.get("tokenizer") else None
    return model.to(device), tokenizer, manifest


def resume_trainer(
    path: str | Path,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    device: str | torch.device | None = None,
    **config_overrides: Any,
) -> Trainer:
    """Rebuild a trainer from a checkpoint written by `save_trainer`, ready to continue."""
    path = Path(path)
    model, tokenizer, manifest = load_checkpoint(path)
    if "train_state" not in manifest:
        raise CheckpointError(f"{path} holds a model only (no training state), so training cannot resume from it")
    config_dict = dict(manifest["train_config"], **config_overrides)
    trainer = Trainer(model, train_ids, val_ids, TrainConfig.from_dict(config_dict), device=device, tokenizer=tokenizer)
    return restore_training(path, trainer, manifest)


def restore_training(path: str | Path, trainer: Any, manifest: dict[str, Any] | None = None) -> Any:
    """Put the optimiser, random states and progress saved in checkpoint `path` into `trainer` (built on its model)."""
    path = Path(path)
    manifest = manifest or read_manifest(path)
    if "train_state" not in manifest:
        raise CheckpointError(f"{path} holds a model only (no training state), so training cannot resume from it")
    try:
        tensors = load_file(str(path / TRAINING_FILE))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"could not read {path / TRAINING_FILE}: {err}") from err
    trainer.optimizer.load_state_dict(_optimizer_state(tensors, manifest["optimizer_param_groups"]))
    trainer.sampler.set_state(tensors["rng.sampler"])
    torch.set_rng_state(tensors["rng.torch"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    trainer.load_state(manifest["train_state"])
    trainer.meta = dict(manifest.get("meta", {}))
    return trainer
