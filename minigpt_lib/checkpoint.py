"""Checkpoints: safetensors for tensors, JSON for everything else; never pickled, and loadable at every instant.

A checkpoint folder holds a manifest, `checkpoint.json`, and the tensor files it names: the n-th save
writes `model-<n>.safetensors` (and `training-<n>.safetensors`) beside the previous save's files,
then replaces the manifest in one atomic rename, then deletes the previous save's files. Whenever a
save is interrupted (Ctrl-C, a kill, a full disk, a power cut), the manifest names complete files:
the folder holds the new checkpoint or the previous one, never neither. Nothing else in the folder
is ever touched, and a lock keeps two processes from writing into the same folder at once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file, save_model

from .folders import (
    LOCK_FILE,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    VERSIONED,
    CheckpointError,
    FolderInUseError,
    check_folder,
    folder_lock,
    fsync_file,
    fsync_folder,
    is_checkpoint_file,
    named_files,
    other_files,
    remove_file,
    remove_leftovers,
)
from .manifest import FORMAT, VERSION, is_finished, matches, validate
from .model import GPT, GPTConfig, param_count_formula
from .tokenizers import CharTokenizer, tokenizer_from_dict
from .train import TrainConfig, Trainer

__all__ = [  # the folder rules and the manifest's checks are used through this module too
    "LOCK_FILE",
    "CheckpointError",
    "FolderInUseError",
    "is_checkpoint_file",
    "matches",
    "other_files",
]

# --- writing ----------------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return tensors, state["param_groups"]


def _optimizer_state(tensors: dict[str, torch.Tensor], param_groups: list[dict]) -> dict:
    entries = []
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            entries.append((int(index), key, value))
    # A fixed order (safetensors' is not): FSDP's collective loading pairs state entries by position across ranks.
    state: dict[int, dict[str, torch.Tensor]] = {}
    for index, key, value in sorted(entries, key=lambda entry: entry[:2]):
        state.setdefault(index, {})[key] = value
    return {"state": state, "param_groups": param_groups}


def _non_finite(model: torch.nn.Module) -> list[str]:
    return [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def _current_manifest(path: Path) -> dict[str, Any] | None:
    """The folder's manifest as JSON if it can be parsed (its files unchecked), else None."""
    try:
        data = json.loads(_read_regular(path / MANIFEST, MAX_MANIFEST_BYTES))
    except (OSError, CheckpointError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save_checkpoint(
    path: str | Path,
    model: GPT,
    tokenizer: CharTokenizer | None = None,
    trainer: Trainer | None = None,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Write `model` (and its tokenizer, and a trainer's full state for resuming) to folder `path`.

    `meta` (default: the trainer's) says what the run is, e.g. {"chat": True} for a chat model.
    The previous checkpoint in `path` stays loadable until the new one is complete; other files in
    the folder are left alone. A model with NaN or infinite weights is not saved (CheckpointError).
    """
    meta = meta if meta is not None else getattr(trainer, "meta", None)
    path = Path(path)
    bad = _non_finite(model)
    if bad:
        raise CheckpointError(
            f"not saving to {path}: the model's weights hold NaN or infinite values ({', '.join(bad[:3])}); "
            "training diverged. The last good checkpoint there is kept."
        )
    check_folder(path)
    path.mkdir(parents=True, exist_ok=True)
    with folder_lock(path):
        old = _current_manifest(path)
        old_files = named_files(old)
        if old is not None:
            remove_leftovers(path, old_files)
        numbers = [int(n.split("-")[1].split(".")[0]) for n in os.listdir(path) if VERSIONED.fullmatch(n)]
        generation = max([0, *numbers]) + 1
        old_generation = old.get("generation") if old is not None else None
        if isinstance(old_generation, int) and not isinstance(old_generation, bool):
            generation = max(generation, old_generation + 1)
        files = {"model": f"model-{generation}.safetensors"}
        if trainer is not None:
            files["training"] = f"training-{generation}.safetensors"
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "generation": generation,
            "files": files,
            "model_config": model.config.to_dict(),
            "model_class": type(model).__name__,
            "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
        }
        if meta:
            manifest["meta"] = meta
        written: list[Path] = []
        committed = False
        try:
            staged = path / (files["model"] + ".tmp")
            written.append(staged)
            save_model(model, str(staged))
            if trainer is not None:
                tensors, groups = _optimizer_tensors(trainer.optimizer)
                tensors["rng.torch"] = torch.get_rng_state()
                tensors["rng.sampler"] = trainer.sampler.get_state()
                if torch.cuda.is_available():
                    tensors["rng.cuda"] = torch.cuda.get_rng_state()
                staged = path / (files["training"] + ".tmp")
                written.append(staged)
                save_file(tensors, str(staged))
                manifest["train_config"] = trainer.config.to_dict()
                manifest["train_state"] = trainer.state()
                manifest["optimizer_param_groups"] = groups
            manifest["sha256"] = {}
            for name in files.values():
                manifest["sha256"][name] = _sha256(fsync_file(path / (name + ".tmp")))
                written.append(path / name)
                os.replace(path / (name + ".tmp"), path / name)
            staged = path / (MANIFEST + ".tmp")
            written.append(staged)
            staged.write_text(json.dumps(manifest, indent=1), encoding="utf-8")
            fsync_file(staged)
            fsync_folder(path)  # the tensor files are in place before the manifest names them
            os.replace(staged, path / MANIFEST)  # the commit: from here on the new checkpoint is the one
            committed = True
            fsync_folder(path)
        finally:
            if not committed:
                for file in written:
                    remove_file(file)
        for name in old_files - set(files.values()):
            remove_file(path / name)
    return path


def save_trainer(trainer: Trainer, path: str | Path) -> Path:
    """Checkpoint a trainer so that `resume_trainer` continues exactly where it stands."""
    return save_checkpoint(path, trainer.model, trainer.tokenizer, trainer)


# --- reading ----------------------------------------------------------------------------------


def _read_regular(file: Path, limit: int) -> bytes:
    """The bytes of `file`, which must be a regular file (not a link, pipe or device) of at most `limit` bytes."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(file, flags)
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError as err:
        kind = "a symbolic link" if file.is_symlink() else err.strerror
        raise CheckpointError(f"cannot read {file} ({kind}); a checkpoint holds plain files only") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{file} is not a regular file (but a folder, pipe or device)")
        if info.st_size > limit:
            raise CheckpointError(
                f"{file} is {info.st_size:,} bytes, more than the {limit:,} its manifest allows; "
                "the checkpoint is damaged or was not written by this library"
            )
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise CheckpointError(f"{file} is larger than the {limit:,} bytes its manifest allows")
    return data


def _read_once(path: Path) -> tuple[dict[str, Any], dict[str, bytes], bytes]:
    manifest_path = path / MANIFEST
    try:
        raw = _read_regular(manifest_path, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} is not a checkpoint folder (no {MANIFEST}); pass the folder written by "
            "`save_checkpoint` or `python -m minigpt_lib train --out DIR`"
        ) from None
    except NotADirectoryError:
        raise CheckpointError(f"{path} is a file, not a checkpoint folder") from None
    try:
        manifest = json.loads(raw.decode("utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{manifest_path} is corrupted or truncated ({err}); retrain or restore a copy") from err
    files = validate(manifest, manifest_path)
    n_params = param_count_formula(GPTConfig.from_dict(manifest["model_config"]))
    # float64 at most, twice the GPT's parameters (room for extra heads), plus headers
    limits = {"model": 16 * n_params + 2**26, "training": 48 * n_params + 2**26}
    blobs = {}
    for role, name in files.items():
        try:
            data = _read_regular(path / name, limits[role])
        except FileNotFoundError:
            blobs[role] = None
            continue
        if _sha256(data) != manifest["sha256"][name]:
            raise CheckpointError(
                f"{path / name} is corrupted or truncated (its sha256 does not match the manifest); "
                "retrain or restore a copy"
            )
        blobs[role] = data
    return manifest, blobs, raw


def _read(path: str | Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The verified manifest and the bytes of the files it names (read again if a save replaced them meanwhile)."""
    path = Path(path)
    for _ in range(3):
        manifest, blobs, raw = _read_once(path)
        missing = [role for role, data in blobs.items() if data is None]
        if not missing:
            return manifest, blobs
        with contextlib.suppress(OSError, CheckpointError):
            if _read_regular(path / MANIFEST, MAX_MANIFEST_BYTES) != raw:
                continue  # a save committed a new checkpoint while we read: read that one
        break
    name = validate(manifest, path / MANIFEST)[missing[0]]
    raise CheckpointError(f"checkpoint {path} is missing {name}")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """Read and verify a checkpoint folder's manifest, its fields and the checksums of its files."""
    return _read(path)[0]


def finished(path: str | Path, stage: str | None = None, expect: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The manifest of `path` if it holds a finished run (`manifest.is_finished`), else None.

    A missing or damaged checkpoint gives None (reading verifies its files), so a chapter can reuse an earlier
    chapter's model when it is there and train its own otherwise.
    """
    try:
        manifest = read_manifest(path)
    except CheckpointError:
        return None
    return manifest if is_finished(manifest, stage, expect) else None


def finished_run(path: str | Path, config: GPTConfig, tokenizer: Any) -> dict[str, Any] | None:
    """`finished` for a run of a model of shape `config` with `tokenizer`, else None."""
    manifest = finished(path, expect={"model_config": config.to_dict()})
    if manifest is None or manifest.get("tokenizer") is None:
        return None
    return manifest if tokenizer_from_dict(manifest["tokenizer"]) == tokenizer else None


def _model_from(manifest: dict[str, Any], data: bytes, file: Path, model_class: type[torch.nn.Module]) -> GPT:
    saved_class = manifest.get("model_class", GPT.__name__)
    if saved_class != model_class.__name__:
        raise CheckpointError(f"{file.parent} holds a {saved_class}, not a {model_class.__name__}; load it as such")
    model = model_class(GPTConfig.from_dict(manifest["model_config"]))
    try:
        state = load_tensors(data)
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (SafetensorError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"could not read the weights in {file}: {err}") from err
    params = model.state_dict()
    loaded = {params[name].data_ptr() for name in state if name in params}
    missing = [name for name in missing if params[name].data_ptr() not in loaded]  # tied weights are saved once
    if missing or unexpected:
        raise CheckpointError(
            f"weights do not fit the config: missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    bad = _non_finite(model)
    if bad:
        raise CheckpointError(
            f"the weights in {file} hold NaN or infinite values ({', '.join(bad[:3])}): the run diverged "
            "before this save; retrain with a lower learning rate"
        )
    return model


def _load(
    path: Path, model_class: type[torch.nn.Module] = GPT
) -> tuple[GPT, CharTokenizer | None, dict[str, Any], dict[str, bytes]]:
    manifest, blobs = _read(path)
    model = _model_from(manifest, blobs["model"], path / validate(manifest, path / MANIFEST)["model"], model_class)
    tokenizer = tokenizer_from_dict(manifest["tokenizer"]) if manifest.get("tokenizer") else None
    return model, tokenizer, manifest, blobs


def load_checkpoint(
    path: str | Path, device: str | torch.device | None = "cpu", model_class: type[torch.nn.Module] = GPT
) -> tuple[GPT, CharTokenizer | None, dict[str, Any]]:
    """Load a model (and its tokenizer) from a checkpoint folder; returns (model, tokenizer, manifest).

    `model_class` is built from the GPTConfig in the manifest: GPT, or a model around one (a reward model).
    """
    model, tokenizer, manifest, _ = _load(Path(path), model_class)
    return model.to(device or "cpu"), tokenizer, manifest


def _restore(path: Path, trainer: Any, manifest: dict[str, Any], blobs: dict[str, bytes]) -> Any:
    if "train_state" not in manifest:
        raise CheckpointError(f"{path} holds a model only (no training state), so training cannot resume from it")
    try:
        tensors = load_tensors(blobs["training"])
        trainer.optimizer.load_state_dict(_optimizer_state(tensors, manifest["optimizer_param_groups"]))
        trainer.sampler.set_state(tensors["rng.sampler"])
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and torch.cuda.is_available():
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        trainer.load_state(manifest["train_state"])
    except (SafetensorError, KeyError, ValueError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path / MANIFEST} is damaged: could not restore the training state ({err!r})") from err
    trainer.meta = dict(manifest.get("meta", {}))
    return trainer


def resume_trainer(
    path: str | Path,
    train_ids: torch.Tensor,
    val_ids: torch.Tensor,
    device: str | torch.device | None = None,
    **config_overrides: Any,
) -> Trainer:
    """Rebuild a trainer from a checkpoint written by `save_trainer`, ready to continue."""
    path = Path(path)
    model, tokenizer, manifest, blobs = _load(path)
    if "train_state" not in manifest:
        raise CheckpointError(f"{path} holds a model only (no training state), so training cannot resume from it")
    try:
        config = TrainConfig.from_dict(dict(manifest["train_config"], **config_overrides))
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path / MANIFEST} is damaged, or an override invalid: train_config: {err}") from None
    trainer = Trainer(model, train_ids, val_ids, config, device=device, tokenizer=tokenizer)
    return _restore(path, trainer, manifest, blobs)


def restore_training(path: str | Path, trainer: Any, manifest: dict[str, Any] | None = None) -> Any:
    """Put the optimiser, random states and progress saved in checkpoint `path` into `trainer` (built on its model).

    `manifest`, if given, is the one read before building the trainer: a checkpoint saved since is an error.
    """
    path = Path(path)
    current, blobs = _read(path)
    if manifest is not None and manifest.get("generation") != current.get("generation"):
        raise CheckpointError(f"the checkpoint in {path} changed while the run was being resumed; resume again")
    return _restore(path, trainer, current, blobs)
