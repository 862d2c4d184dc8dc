"""Helpers shared by the test files: the CLI on the tiny preset, small trainers, a look inside checkpoint folders."""

import json

import torch

from minigpt_lib import (
    GPT,
    TrainConfig,
    Trainer,
)
from minigpt_lib.cli import main

LOCK_FILE = ".checkpoint.lock"


def train(corpus, out, *extra):
    """Run `train` on the tiny preset; returns the exit status."""
    return main(["train", "--preset", "tiny", "--data", str(corpus), "--out", str(out), "--quiet", *extra])


def small_train_config(**overrides) -> TrainConfig:
    """A short run for the tiny model: 40 steps of batch 4, evaluated every 10 steps, seed 7 (`overrides` change it)."""
    values = dict(max_steps=40, batch_size=4, learning_rate=3e-3, min_lr=3e-4, warmup_steps=5, eval_interval=10)
    return TrainConfig(**{**values, "eval_batches": 2, "seed": 7, **overrides})


def small_trainer(tiny_config, tokenizer, ids, steps, **overrides):
    config = dict(max_steps=40, batch_size=4, warmup_steps=2, eval_interval=5, eval_batches=1, seed=3)
    config.update(overrides)
    torch.manual_seed(0)
    trainer = Trainer(GPT(tiny_config), ids, ids, TrainConfig(**config), device="cpu", tokenizer=tokenizer)
    trainer.train(steps=steps, progress_bar=False)
    return trainer


def snapshot(folder):
    """Every file under `folder` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def manifest_of(folder):
    return json.loads((folder / "checkpoint.json").read_text())


def model_file(folder):
    return folder / manifest_of(folder).get("files", {}).get("model", "model.safetensors")


def rewrite_manifest(folder, change):
    manifest = manifest_of(folder)
    change(manifest)
    (folder / "checkpoint.json").write_text(json.dumps(manifest))
