"""A checkpoint's manifest, `checkpoint.json`: every field checked before anything is allocated, and what it
says about the run: of which stage, made with which settings, finished or not.

- `validate(manifest, path)`: the manifest's fields, checked one by one; returns the files it names.
- `matches(manifest, stage, expect)` and `is_finished(manifest, stage, expect)`: the one test of "is this run
  finished, and made with these settings?" that every chapter and stage uses, through `checkpoint.finished`
  (which reads the folder first) and `checkpoint.finished_run` (a pretrained model of a given shape and tokenizer).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from .folders import MODEL_FILE, TRAINING_FILE, VERSIONED, CheckpointError
from .model import GPTConfig, check_size
from .tokenizers import tokenizer_from_dict

FORMAT = "minigpt-checkpoint"
VERSION = 2  # version 1 (fixed file names, written by swapping whole folders) is still read
READABLE_VERSIONS = (1, 2)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def validate(manifest: Any, manifest_path: Path) -> dict[str, str]:
    """Check every field of a parsed manifest; returns the files it names (role -> file name)."""

    def fail(problem: str) -> CheckpointError:
        return CheckpointError(
            f"{manifest_path} is damaged: {problem}. Retrain, or restore a copy of the checkpoint folder"
        )

    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{manifest_path} is not a {FORMAT} manifest")
    version = manifest.get("version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        raise CheckpointError(
            f"checkpoint version {version!r} is not supported (this library reads {READABLE_VERSIONS}); "
            "update minigpt_lib or retrain"
        )
    if not isinstance(manifest.get("model_config"), dict):
        raise fail("model_config is missing or not an object")
    if not isinstance(manifest.get("model_class", ""), str) or not isinstance(manifest.get("meta", {}), dict):
        raise fail("model_class must be a string and meta an object")
    try:
        config = GPTConfig.from_dict(manifest["model_config"])
        check_size(config)  # a shape too large to build, refused before anything is allocated
    except (ValueError, TypeError) as err:
        raise fail(f"model_config is invalid ({err})") from None
    tokenizer = manifest.get("tokenizer")
    if tokenizer is not None:
        if not isinstance(tokenizer, dict):
            raise fail("tokenizer is not an object")
        try:
            vocab_size = tokenizer_from_dict(tokenizer).vocab_size
        except (ValueError, TypeError) as err:
            raise fail(f"its tokenizer is invalid ({err})") from None
        if vocab_size > config.vocab_size:
            raise fail(f"its tokenizer has {vocab_size} tokens, more than the model's {config.vocab_size}")
    training = "train_state" in manifest
    if training:
        state = manifest["train_state"]
        if not isinstance(manifest.get("train_config"), dict):
            raise fail("train_config is missing or not an object")
        if not (
            isinstance(state, dict)
            and _is_count(state.get("step"))
            and isinstance(state.get("elapsed"), (int, float))
            and isinstance(state.get("history"), dict)
            and all(isinstance(values, list) for values in state["history"].values())
            and isinstance(state.get("evals"), list)
            and all(isinstance(e, dict) for e in state["evals"])
        ):
            raise fail("train_state is missing a field or has one of the wrong type")
        groups = manifest.get("optimizer_param_groups")
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise fail("optimizer_param_groups is missing or not a list of objects")
    if version == 1:
        files = {"model": MODEL_FILE, **({"training": TRAINING_FILE} if training else {})}
    else:
        files = manifest.get("files")
        roles = {"model", "training"} if training else {"model"}
        if not isinstance(files, dict) or set(files) != roles:
            raise fail(f"files must name the {' and '.join(sorted(roles))} files")
        for name in files.values():
            if not isinstance(name, str) or not VERSIONED.fullmatch(name):
                raise fail(f"file name {name!r} is not one a checkpoint uses (model-<n>.safetensors)")
    digests = manifest.get("sha256")
    if not isinstance(digests, dict) or not all(
        isinstance(d, str) and re.fullmatch(r"[0-9a-f]{64}", d) for d in digests.values()
    ):
        raise fail("sha256 is missing or is not an object of hex digests")
    if set(digests) != set(files.values()):
        raise fail(f"sha256 must hold the checksums of {sorted(files.values())} only, not of {sorted(digests)}")
    return files


def matches(manifest: dict[str, Any], stage: str | None = None, expect: dict[str, Any] | None = None) -> bool:
    """Whether a run's manifest is of `stage` and made with the settings `expect`.

    `expect` maps a manifest section (`train_config`, `model_config`, `meta`) to values it must hold.
    """
    if stage is not None and (manifest.get("meta") or {}).get("stage") != stage:
        return False
    for section, values in (expect or {}).items():
        held = manifest.get(section) or {}
        if any(held.get(key) != value for key, value in values.items()):
            return False
    return True


def is_finished(manifest: dict[str, Any], stage: str | None = None, expect: dict[str, Any] | None = None) -> bool:
    """Whether a manifest holds a finished run (of `stage`, made with `expect`, as `matches`).

    Finished: its steps or its time budget are used up. `checkpoint.finished` reads a folder's manifest and asks this.
    """
    state, config = manifest.get("train_state"), manifest.get("train_config")
    if state is None or not isinstance(config, dict) or not matches(manifest, stage, expect):
        return False
    steps, budget = config.get("max_steps"), config.get("time_budget") or math.inf
    if not isinstance(steps, int) or not isinstance(budget, (int, float)):
        return False
    return state["step"] >= steps or state["elapsed"] >= budget
