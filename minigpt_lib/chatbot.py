"""The one command that builds a mini ChatGPT from nothing: pretrain -> SFT -> reward model -> PPO -> RL.

PPO optimises against the reward model learned from rankings (RLHF); RL then optimises three-number sums,
the family the model is weakest at, against their checker (a verifiable reward). The final report compares
the held-out table of SFT, PPO and RL, each change with its interval.

Every stage trains a fixed number of steps (the chapters' recipes), so every machine builds the same model,
a slow or busy one only later; the pipeline measures this machine's speed first and says how long it will
take. A stage already finished *with the same settings* is kept, an unfinished one resumed, and a folder
holding a run made with other settings is an error (nothing is replaced).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .chat import chat_tokenizer
from .checkpoint import CheckpointError, finished, folder_lock, load_checkpoint, read_manifest
from .evaluation import change_report, evaluate_chat, format_table, row_hits
from .evaluation import score as table_of
from .manifest import matches
from .model import GPT
from .preferences import PREFERENCES
from .presets import get_preset
from .rl import RL_TRAIN
from .sft import SFT_DATA, SFT_TRAIN
from .stages import read_pairs, run_stage
from .tasks import ChatData
from .train import TrainConfig

CHATBOT = {
    "full": dict(
        model={},  # the cpu preset's shape
        pretrain=dict(max_steps=get_preset("cpu").train["max_steps"]),
        sft=dict(max_steps=SFT_TRAIN["max_steps"]),
        sft_data={},
        preferences={},
        reward=dict(max_steps=60),
        ppo=dict(max_steps=100),
        rl=dict(max_steps=RL_TRAIN["max_steps"]),
        eval_per_family=50,
    ),
    "fast": dict(
        model=dict(n_layer=1, n_head=2, n_embd=32),
        pretrain=dict(max_steps=20),
        sft=dict(max_steps=20),
        sft_data=dict(n_train=400, n_val=60),
        preferences=dict(n_prompts=12, n_speakers=2, k=2, n_heldout=1, max_new_tokens=24),
        reward=dict(max_steps=4, batch_size=4),
        ppo=dict(max_steps=2, batch_size=2, group_size=2, max_new_tokens=16),
        rl=dict(max_steps=2, batch_size=2, group_size=2, max_new_tokens=16),
        eval_per_family=1,
    ),
}
# Minutes each stage of the full setting took on a quiet 2-core CPU (2026-12-04: pretraining 7.3, SFT 3.9, reward
# model 1.4, PPO 2.9, RL 6.7), and the seconds of one pretraining step that `seconds_per_step` measured there: the
# ETA scales the minutes by this machine's measured speed.
REFERENCE = dict(step_seconds=0.081, minutes=dict(pretrain=7.3, sft=3.9, reward=1.4, ppo=2.9, rl=6.7))
STAGE_NAMES = {"pretrain": "pretrain", "sft": "SFT", "reward": "reward model", "ppo": "PPO", "rl": "RL"}
TABLE = {"SFT": "sft", "PPO": "ppo", "RL": "rl"}  # the models compared on held-out prompts at the end


def seconds_per_step(model: dict[str, Any], repeats: int = 3) -> float:
    """Seconds of one pretraining step of the cpu preset (of shape `model`) on this machine, now."""
    preset = get_preset("cpu")
    config = TrainConfig(**preset.train)
    gpt = GPT(preset.model_config(chat_tokenizer().vocab_size, **model))
    optimizer = torch.optim.AdamW(gpt.parameters(), lr=1e-4)
    x = torch.randint(0, gpt.config.vocab_size, (config.batch_size, gpt.block_size))
    times = []
    for _ in range(repeats + 1):  # the first step warms up
        start = time.perf_counter()
        _, loss = gpt(x, x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def plan(out: Path, setting: str, time_budget: float | None = None) -> dict[str, dict[str, Any]]:
    """Each stage's folder, run options and the settings a finished run there must have been made with."""
    s = CHATBOT[setting]
    vocab = chat_tokenizer().vocab_size
    model = get_preset("cpu").model_config(vocab, **s["model"]).to_dict()
    base, sft, reward = out / "base", out / "sft", out / "reward"
    steps = {name: dict(max_steps=s[name]["max_steps"]) for name in ("pretrain", "sft")}
    if time_budget:  # the old way: a time budget instead of the fixed steps
        steps = {name: dict(max_steps=None, time_budget=time_budget) for name in steps}
    done_by = {name: {"time_budget": time_budget} if time_budget else s[name] for name in steps}
    return {
        "pretrain": dict(
            out=base,
            options=dict(model=s["model"], **steps["pretrain"]),
            expect={"model_config": model, "train_config": done_by["pretrain"]},
        ),
        "sft": dict(
            out=sft,
            options=dict(base=base, data=s["sft_data"], **steps["sft"]),
            expect={"train_config": done_by["sft"], "meta": {"base": str(base), "data": {**SFT_DATA, **s["sft_data"]}}},
        ),
        "reward": dict(
            out=reward,
            options=dict(train=s["reward"], sft=sft, pairs=out / "pairs.json", preferences=s["preferences"]),
            expect={"train_config": s["reward"], "meta": {"sft": str(sft)}},
        ),
        "ppo": dict(
            out=out / "ppo",
            options=dict(train=s["ppo"], sft=sft, reward=reward),
            expect={"train_config": s["ppo"], "meta": {"sft": str(sft), "reward": str(reward)}},
        ),
        "rl": dict(  # RL on three-number sums against their checker, from PPO's model
            out=out / "rl",
            options=dict(train=s["rl"], sft=out / "ppo", reward="check"),
            expect={"train_config": s["rl"], "meta": {"sft": str(out / "ppo"), "reward": "check"}},
        ),
    }


def _summary(stage: str, trainer: Any) -> str:
    last = trainer.evals[-1]
    if stage in ("pretrain", "sft"):
        return f"{trainer.step} steps, val loss {last['val']:.3f}"
    if stage == "reward":
        return f"{trainer.step} steps, held-out pairwise accuracy {last['val_accuracy']:.1%}"
    if stage == "rl":
        return f"{trainer.step} steps, held-out sampled accuracy {last['score']:.1%}, KL {last['kl']:.2f}"
    return f"{trainer.step} steps, held-out true score {last['score']:.2f}, KL {last['kl']:.2f}"


def build_chatbot(
    out: Path,
    text: str,
    setting: str = "full",
    quiet: bool = False,
    log: Callable[[str], None] = print,
    time_budget: float | None = None,
) -> dict[str, dict[str, float]]:
    """Pretrain -> SFT -> reward model -> PPO into folders under `out`; returns the held-out table of SFT and PPO.

    `time_budget` (seconds) caps pretraining and SFT each, instead of their fixed steps: quicker, but the model
    then depends on the machine's speed (the final report says which stages fell short).
    """
    if setting not in CHATBOT:
        raise ValueError(f"setting must be one of {', '.join(CHATBOT)}, got {setting!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {out} is a file, not a folder; give a new folder (or an earlier chatbot's)")
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):  # one chatbot build per folder at a time (each stage also locks its own folder)
        return _build(out, text, setting, quiet, log, time_budget)


def _build(
    out: Path, text: str, setting: str, quiet: bool, log: Callable[[str], None], time_budget: float | None
) -> dict[str, dict[str, float]]:
    stages = plan(out, setting, time_budget)
    start = time.perf_counter()
    todo = [name for name, stage in stages.items() if not finished(stage["out"], name, stage["expect"])]
    pairs, settings = stages["reward"]["options"]["pairs"], stages["reward"]["options"]["preferences"]
    if "reward" in todo and (pairs.exists() or pairs.is_symlink()):  # checked now, not after pretraining and SFT
        if not pairs.is_file():
            raise ValueError(f"{pairs} is not a file: it is in the way of the pairs this build writes; move it")
        read_pairs(pairs, chat_tokenizer().vocab_size, settings)
    if setting == "full" and todo:
        factor = seconds_per_step(CHATBOT[setting]["model"]) / REFERENCE["step_seconds"]
        minutes = sum(REFERENCE["minutes"][name] for name in todo) * factor
        log(f"this machine runs {1 / factor:.2f}x as fast as the reference (a quiet 2-core CPU): "
            f"about {minutes:.0f} minutes for {', '.join(STAGE_NAMES[n] for n in todo)}")  # fmt: skip
    short = []
    for i, (name, stage) in enumerate(stages.items(), 1):
        folder, label = stage["out"], STAGE_NAMES[name]

        def line(what: str, i: int = i, label: str = label) -> None:
            log(f"[{i}/{len(stages)}] {label}: {what} ({(time.perf_counter() - start) / 60:.1f} min so far)")

        if finished(folder, name, stage["expect"]):
            line(f"already done in {folder}")
            continue
        has_run = (folder / "checkpoint.json").is_file()
        if has_run and not matches(read_manifest(folder), name, stage["expect"]):
            raise CheckpointError(
                f"{folder} holds a {label} run made with other settings (another --setting?); "
                "give another --out for this build, or move that folder away"
            )
        planned = CHATBOT[setting][name]["max_steps"]
        budgeted = time_budget and name in ("pretrain", "sft")
        line(f"resuming {folder}" if has_run else f"{time_budget:.0f} s" if budgeted else f"{planned} steps")
        trainer, _ = run_stage(name, folder, text, resume=has_run, quiet=quiet, log=lambda _: None, **stage["options"])
        line(f"{_summary(name, trainer)}; saved to {folder}")
        if trainer.step < 0.9 * planned:
            short.append(f"{label} ended at step {trainer.step} of its planned {planned} (its time budget ran out)")

    models = {name: load_checkpoint(out / folder) for name, folder in TABLE.items()}
    tokenizer = models["SFT"][1]
    data = ChatData(text, max_tokens=models["SFT"][0].block_size + 1)
    examples = data.heldout_examples(CHATBOT[setting]["eval_per_family"], seed=41)
    replies = {name: evaluate_chat(model, tokenizer, examples)[1] for name, (model, _, _) in models.items()}
    tables = {name: table_of(examples, r) for name, r in replies.items()}
    hits = {name: row_hits(examples, r) for name, r in replies.items()}
    log(format_table(tables))
    for before, after in (("SFT", "PPO"), ("PPO", "RL")):
        log(
            f"{after} against {before}, prompt by prompt (a change inside its interval could be the prompts' luck):\n"
            + change_report(hits[before], hits[after])
        )
    for note in short:
        log(f"note: {note}; the model is weaker than the recipe's (without --time-budget, every machine builds it)")
    minutes = (time.perf_counter() - start) / 60
    log(f"built in {minutes:.1f} min; chat with it: python -m minigpt_lib chat --ckpt {out / 'rl'}")
    return tables


__all__ = ["CHATBOT", "PREFERENCES", "build_chatbot", "plan", "seconds_per_step"]
