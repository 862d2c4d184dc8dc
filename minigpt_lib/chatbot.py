"""Learning from preferences as runs on disk, and the one command that builds a mini ChatGPT from nothing.

Each stage writes a checkpoint folder the way pretraining does (atomic saves, exact resume):
- `reward_run`: sample and rank answers of the SFT model, then train a reward model on the pairs;
- `ppo_run`: optimise the SFT model against the reward model, with a KL leash to the SFT model;
- `dpo_run`: fine-tune the SFT model on the same pairs with DPO;
- `build_chatbot`: pretrain -> SFT -> reward model -> PPO, skipping stages already finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .chat import chat_tokenizer, render_prompt, stop_ids
from .checkpoint import CheckpointError, load_checkpoint, read_manifest, restore_training, resume_trainer, save_trainer
from .dpo import DPOConfig, DPOTrainer
from .evaluation import change_report, evaluate_chat, format_table, row_hits
from .evaluation import score as table_of
from .model import GPT, GPTConfig
from .ppo import PPOConfig, PPOTrainer
from .preferences import (
    distinct_pairs,
    preference_examples,
    ranking_pairs,
    request_examples,
    sample_rankings,
    speaker_examples,
    true_scorer,
)
from .presets import get_preset
from .reward import Pair, RewardConfig, RewardModel, RewardTrainer, score
from .rlhf import PreferenceConfig, PreferenceTrainer
from .sft import conversation_windows, finetune_trainer, finished_sft, resume_finetune, sft_config
from .tasks import FAMILIES, ChatData, Example
from .train import Trainer

PREFERENCES = dict(
    n_prompts=2000,
    n_speakers=400,  # "two lines as X" prompts with training speakers, and as many with invented ones
    k=4,
    n_heldout=40,
    max_new_tokens=96,
    temperature=1.0,
    min_gap=0.1,
    per_prompt=6,
    rl_requests=0.5,
)
HELDOUT_FAMILIES = FAMILIES  # held-out prompts for preference pairs and PPO curves: every family
N_CURVE = 4  # held-out prompts per family for the curves measured during PPO and DPO
N_PPO_PROMPTS = 2000


@dataclass
class Preferences:
    """Preference pairs from rankings of sampled answers: for training, and from held-out prompts (each distinct
    pair once, so that accuracy counts every preference once)."""

    train: list[Pair]
    held_out: list[Pair]
    settings: dict[str, Any]

    def digest(self) -> str:
        """A short hash of the pairs, to check that regenerated pairs are the same."""
        data = json.dumps([[p.prompt, p.chosen, p.rejected] for p in self.train + self.held_out])
        return hashlib.sha256(data.encode()).hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        """Write the pairs as JSON (atomically)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        rows = {
            k: [[p.prompt, p.chosen, p.rejected] for p in v]
            for k, v in (("train", self.train), ("held_out", self.held_out))
        }
        tmp.write_text(json.dumps({"settings": self.settings, **rows}), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> Preferences:
        """Read pairs written by `save`."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        pairs = {k: [Pair(*row) for row in data[k]] for k in ("train", "held_out")}
        return cls(pairs["train"], pairs["held_out"], data["settings"])


def collect_preferences(
    model: GPT, tokenizer: Any, data: ChatData, settings: dict[str, Any] | None = None, progress_bar: bool = True
) -> tuple[Preferences, list, list]:
    """Sample and rank answers of `model` on training and held-out prompts; returns the pairs and both rankings."""
    s = {**PREFERENCES, **(settings or {})}
    train_examples = preference_examples(data, s["n_prompts"], seed=11, rl_requests=s["rl_requests"])
    held_examples = data.heldout_examples(s["n_heldout"], seed=12, families=HELDOUT_FAMILIES)
    options = dict(max_new_tokens=s["max_new_tokens"], temperature=s["temperature"], progress_bar=progress_bar)
    taught, invented = speaker_examples(data, s["n_speakers"], seed=5)
    train_rankings = sample_rankings(model, tokenizer, train_examples, s["k"], seed=13, **options)
    taught_rankings = sample_rankings(model, tokenizer, taught, s["k"], seed=51, **options)
    invented_rankings = sample_rankings(model, tokenizer, invented, s["k"], seed=52, **options)
    held_rankings = sample_rankings(model, tokenizer, held_examples, s["k"], seed=14, **options)
    gap, most = s["min_gap"], s["per_prompt"]
    prefs = Preferences(
        ranking_pairs(train_rankings, gap, most, seed=15)
        + ranking_pairs(taught_rankings, gap, most, seed=53)
        + ranking_pairs(invented_rankings, gap, most, seed=54),
        distinct_pairs(ranking_pairs(held_rankings, gap, most, seed=16)),
        s,
    )
    return prefs, train_rankings + taught_rankings + invented_rankings, held_rankings


def ppo_examples(data: ChatData) -> list[Example]:
    """PPO's training prompts: requests, mostly in this stage's phrasings (where SFT is weakest)."""
    return request_examples(data, N_PPO_PROMPTS, seed=31)


def curve_examples(data: ChatData) -> list[Example]:
    """The held-out prompts on which PPO and DPO are measured while they train."""
    return data.heldout_examples(N_CURVE, seed=21, families=FAMILIES)


def reward_function(model: RewardModel) -> Callable[[list[list[int]], list[list[int]]], torch.Tensor]:
    """The reward model as a function of (prompts, answers) token ids."""
    return lambda prompts, answers: score(model, prompts, answers)


def _preferences(
    sft: GPT, tokenizer: Any, data: ChatData, pairs_file: Path | None, quiet: bool, settings: dict | None = None
) -> Preferences:
    if pairs_file is not None and pairs_file.is_file():
        return Preferences.load(pairs_file)
    prefs, _, _ = collect_preferences(sft, tokenizer, data, settings, progress_bar=not quiet)
    if pairs_file is not None:
        prefs.save(pairs_file)
    return prefs


def _config(
    cls: type[PreferenceConfig], manifest: dict[str, Any] | None, overrides: dict[str, Any]
) -> PreferenceConfig:
    values = dict(manifest["train_config"]) if manifest else {}
    overrides = _budgeted(overrides)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return cls.from_dict(values) if manifest else cls(**values)


def _existing(out: Path, resume: bool) -> dict[str, Any] | None:
    has_checkpoint = (out / "checkpoint.json").is_file()
    if resume and not has_checkpoint:
        raise CheckpointError(f"--resume given but {out} holds no checkpoint; drop --resume to start afresh")
    if has_checkpoint and not resume:
        raise CheckpointError(f"{out} already holds a checkpoint; pass --resume to continue it, or another --out")
    return read_manifest(out) if resume else None


def _train(trainer: PreferenceTrainer, out: Path, quiet: bool, desc: str, log: Callable[[str], None]) -> float:
    """Train until finished, saving at each evaluation and at the end; returns the wall time."""
    start = time.perf_counter()
    try:
        trainer.train(progress_bar=not quiet, on_eval=lambda t: save_trainer(t, out), desc=desc)
    except KeyboardInterrupt:
        save_trainer(trainer, out)
        log(f"interrupted at step {trainer.step}; saved to {out}; continue with --resume")
        raise
    save_trainer(trainer, out)
    return time.perf_counter() - start


def reward_run(
    sft_path: Path,
    out: Path,
    text: str,
    pairs_file: Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    preference_settings: dict[str, Any] | None = None,
    **overrides: Any,
) -> RewardTrainer:
    """Rank sampled answers of the SFT model and train a reward model on the pairs (resumable)."""
    manifest = _existing(out, resume)
    if manifest:
        sft_path = Path(manifest["meta"]["sft"])
    sft, tokenizer, _ = load_checkpoint(sft_path)
    data = ChatData(text, max_tokens=sft.block_size + 1)
    prefs = _preferences(sft, tokenizer, data, pairs_file, quiet, preference_settings)
    if manifest and manifest["meta"]["pairs"] != prefs.digest():
        raise CheckpointError(f"the preference pairs differ from those {out} was trained on; pass the same --pairs")
    config = _config(RewardConfig, manifest, overrides)
    if manifest:
        model, _, _ = load_checkpoint(out, model_class=RewardModel)
    else:
        model = RewardModel.from_gpt(sft)
    trainer = RewardTrainer(model, prefs.train, prefs.held_out, config, tokenizer=tokenizer)
    if manifest:
        restore_training(out, trainer, manifest)
        log(f"resuming {out} at step {trainer.step}")
    trainer.meta = {"stage": "reward", "sft": str(sft_path), "pairs": prefs.digest()}
    log(f"reward model: {len(prefs.train)} training pairs, {len(prefs.held_out)} distinct held-out pairs")
    wall = _train(trainer, out, quiet, "reward model", log)
    log(f"trained {trainer.step} steps in {wall:.1f} s; saved to {out}")
    log(f"held-out pairwise accuracy={trainer.evals[-1]['val_accuracy']:.4f}")
    return trainer


def ppo_run(
    sft_path: Path,
    reward_path: Path,
    out: Path,
    text: str,
    resume: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    **overrides: Any,
) -> PPOTrainer:
    """Optimise the SFT model against the reward model with PPO (resumable); the result chats like SFT's."""
    manifest = _existing(out, resume)
    if manifest:
        sft_path, reward_path = Path(manifest["meta"]["sft"]), Path(manifest["meta"]["reward"])
    sft, tokenizer, _ = load_checkpoint(sft_path)
    reward_model, _, _ = load_checkpoint(reward_path, model_class=RewardModel)
    data = ChatData(text, max_tokens=sft.block_size + 1)
    prompts = [render_prompt(e.messages, tokenizer) for e in ppo_examples(data)]
    curve = curve_examples(data)
    config = _config(PPOConfig, manifest, overrides)
    policy = load_checkpoint(out)[0] if manifest else sft
    trainer = PPOTrainer(
        policy,
        sft,
        reward_function(reward_model),
        prompts,
        stop_ids(tokenizer),
        config,
        held_out=[render_prompt(e.messages, tokenizer) for e in curve],
        true_score=true_scorer(curve, tokenizer),
        tokenizer=tokenizer,
        anchor=conversation_windows(data, tokenizer, sft.block_size),
    )
    if manifest:
        restore_training(out, trainer, manifest)
        log(f"resuming {out} at step {trainer.step}")
    trainer.meta = {"chat": True, "stage": "ppo", "sft": str(sft_path), "reward": str(reward_path)}
    wall = _train(trainer, out, quiet, "PPO", log)
    last = trainer.evals[-1]
    log(f"PPO: {trainer.step} steps in {wall:.1f} s; saved to {out}")
    log(f"held-out reward={last['reward']:.3f} true score={last['score']:.3f} KL={last['kl']:.2f}")
    return trainer


def dpo_run(
    sft_path: Path,
    out: Path,
    text: str,
    pairs_file: Path | None = None,
    resume: bool = False,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    **overrides: Any,
) -> DPOTrainer:
    """Fine-tune the SFT model on ranked pairs with DPO (resumable); the result chats like SFT's."""
    manifest = _existing(out, resume)
    if manifest:
        sft_path = Path(manifest["meta"]["sft"])
    sft, tokenizer, _ = load_checkpoint(sft_path)
    data = ChatData(text, max_tokens=sft.block_size + 1)
    prefs = _preferences(sft, tokenizer, data, pairs_file, quiet)
    if manifest and manifest["meta"]["pairs"] != prefs.digest():
        raise CheckpointError(f"the preference pairs differ from those {out} was trained on; pass the same --pairs")
    curve = curve_examples(data)
    config = _config(DPOConfig, manifest, overrides)
    policy = load_checkpoint(out)[0] if manifest else sft
    trainer = DPOTrainer(
        policy,
        sft,
        prefs.train,
        config,
        stop_ids(tokenizer),
        held_out_pairs=prefs.held_out,
        held_out=[render_prompt(e.messages, tokenizer) for e in curve],
        true_score=true_scorer(curve, tokenizer),
        tokenizer=tokenizer,
        anchor=conversation_windows(data, tokenizer, sft.block_size),
    )
    if manifest:
        restore_training(out, trainer, manifest)
        log(f"resuming {out} at step {trainer.step}")
    trainer.meta = {"chat": True, "stage": "dpo", "sft": str(sft_path), "pairs": prefs.digest()}
    wall = _train(trainer, out, quiet, "DPO", log)
    last = trainer.evals[-1]
    log(f"DPO: {trainer.step} steps in {wall:.1f} s; saved to {out}")
    log(f"held-out pair accuracy={last['val_accuracy']:.3f} true score={last['score']:.3f} KL={last['kl']:.2f}")
    return trainer


def finished_stage(path: Path) -> dict[str, Any] | None:
    """The manifest of `path` if it holds a finished run (its steps or its time budget used up), else None."""
    try:
        manifest = read_manifest(path)
    except CheckpointError:
        return None
    state, config = manifest.get("train_state"), manifest.get("train_config")
    if state is None or config is None:
        return None
    budget = config.get("time_budget") or math.inf
    return manifest if state["step"] >= config["max_steps"] or state["elapsed"] >= budget else None


def _budgeted(overrides: dict[str, Any]) -> dict[str, Any]:
    """A time budget alone trains until the clock runs out: no step limit then."""
    if overrides.get("time_budget") and not overrides.get("max_steps"):
        return {**overrides, "max_steps": 10**9}
    return overrides


def pretrain_stage(
    out: Path, text: str, model: dict[str, Any] | None = None, quiet: bool = False, **overrides: Any
) -> Trainer:
    """Pretrain (or resume) a GPT of the cpu preset's shape (changed by `model`) on `text`'s bytes, chat tokenizer."""
    tokenizer = chat_tokenizer()
    preset = get_preset("cpu")
    n = int(0.9 * len(text))
    train_ids, val_ids = tokenizer.encode_tensor(text[:n]), tokenizer.encode_tensor(text[n:])
    if (out / "checkpoint.json").is_file():
        trainer = resume_trainer(out, train_ids, val_ids)
    else:
        torch.manual_seed(1337)
        config = GPTConfig(vocab_size=tokenizer.vocab_size, **{**preset.model, **(model or {})})
        train_config = preset.train_config(**_budgeted(overrides))
        trainer = Trainer(GPT(config), train_ids, val_ids, train_config, tokenizer=tokenizer)
    trainer.train(progress_bar=not quiet, on_eval=lambda t: save_trainer(t, out), desc="pretraining")
    save_trainer(trainer, out)
    return trainer


def sft_stage(
    base: Path, out: Path, text: str, data: dict[str, Any] | None = None, quiet: bool = False, **overrides: Any
) -> Trainer:
    """Fine-tune (or resume fine-tuning) the pretrained model in `base` on generated conversations."""
    if (out / "checkpoint.json").is_file():
        trainer = resume_finetune(out, text)
    else:
        model, tokenizer, _ = load_checkpoint(base)
        trainer = finetune_trainer(model, tokenizer, text, sft_config(**_budgeted(overrides)), data)
        trainer.meta["base"] = str(base)
    trainer.train(progress_bar=not quiet, on_eval=lambda t: save_trainer(t, out), desc="fine-tuning")
    save_trainer(trainer, out)
    return trainer


CHATBOT = {
    "full": dict(
        model=None,  # the cpu preset's shape
        pretrain=dict(time_budget=600.0),
        sft=dict(time_budget=300.0),
        sft_data={},
        preferences={},
        reward={},
        ppo=dict(max_steps=100),
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
        eval_per_family=1,
    ),
}


def build_chatbot(
    out: Path, text: str, setting: str = "full", quiet: bool = False, log: Callable[[str], None] = print
) -> dict[str, dict[str, float]]:
    """Pretrain -> SFT -> reward model -> PPO into folders under `out`; finished stages are kept, unfinished resumed.

    Returns the held-out table of the SFT and PPO models (as `evaluation.score` gives it).
    """
    if setting not in CHATBOT:
        raise ValueError(f"setting must be one of {', '.join(CHATBOT)}, got {setting!r}")
    s = CHATBOT[setting]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = chat_tokenizer()
    stages = ("pretrain", "sft", "reward", "ppo")
    start = time.perf_counter()

    def line(i: int, name: str, what: str) -> None:
        log(f"[{i}/{len(stages)}] {name}: {what} ({(time.perf_counter() - start) / 60:.1f} min so far)")

    # 1. pretraining on Tiny Shakespeare's bytes, with the chat tokenizer so that SFT can add its tokens
    base = out / "base"
    if finished_stage(base):
        line(1, "pretrain", f"already done in {base}")
    else:
        line(1, "pretrain", "a GPT on Tiny Shakespeare's bytes")
        trainer = pretrain_stage(base, text, s["model"], quiet, **s["pretrain"])
        line(1, "pretrain", f"{trainer.step} steps, val loss {trainer.evals[-1]['val']:.3f}; saved to {base}")

    # 2. supervised fine-tuning on generated conversations
    sft = out / "sft"
    if finished_sft(sft):
        line(2, "SFT", f"already done in {sft}")
    else:
        line(2, "SFT", "fine-tuning on generated conversations")
        trainer = sft_stage(base, sft, text, s["sft_data"], quiet, **s["sft"])
        line(2, "SFT", f"{trainer.step} steps, val loss {trainer.evals[-1]['val']:.3f}; saved to {sft}")

    # 3. preference pairs from ranked answers, and the reward model
    reward = out / "reward"
    if finished_stage(reward):
        line(3, "reward model", f"already done in {reward}")
    else:
        line(3, "reward model", "sampling and ranking answers, then Bradley-Terry training")
        trainer = reward_run(
            sft,
            reward,
            text,
            out / "pairs.json",
            (reward / "checkpoint.json").is_file(),
            quiet,
            lambda _: None,
            preference_settings=s["preferences"],
            **s["reward"],
        )
        line(
            3, "reward model", f"held-out pairwise accuracy {trainer.evals[-1]['val_accuracy']:.1%}; saved to {reward}"
        )

    # 4. PPO against the reward model, on a KL leash to the SFT model
    ppo = out / "ppo"
    if finished_stage(ppo):
        line(4, "PPO", f"already done in {ppo}")
    else:
        line(4, "PPO", "sampling groups of answers, scoring them with the reward model")
        trainer = ppo_run(
            sft, reward, ppo, text, (ppo / "checkpoint.json").is_file(), quiet, lambda _: None, **s["ppo"]
        )
        last = trainer.evals[-1]
        line(
            4,
            "PPO",
            f"{trainer.step} steps, held-out true score {last['score']:.2f}, KL {last['kl']:.2f}; saved to {ppo}",
        )

    sft_model, _, _ = load_checkpoint(sft)
    ppo_model, _, _ = load_checkpoint(ppo)
    data = ChatData(text, max_tokens=sft_model.block_size + 1)
    examples = data.heldout_examples(s["eval_per_family"], seed=41)
    replies = {name: evaluate_chat(m, tokenizer, examples)[1] for name, m in (("SFT", sft_model), ("PPO", ppo_model))}
    tables = {name: table_of(examples, r) for name, r in replies.items()}
    hits = {name: row_hits(examples, r) for name, r in replies.items()}
    log(format_table(tables))
    log(
        "PPO against SFT, prompt by prompt (a change inside its interval could be the prompts' luck):\n"
        + change_report(hits["SFT"], hits["PPO"])
    )
    log(f"built in {(time.perf_counter() - start) / 60:.1f} min; chat with it: python -m minigpt_lib chat --ckpt {ppo}")
    return tables


def add_subcommands(sub: Any) -> None:
    """The command line's `reward`, `ppo`, `dpo` and `chatbot` subcommands."""

    def common(parser: Any) -> None:
        parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
        parser.add_argument("--resume", action="store_true", help="continue the run in --out")
        parser.add_argument("--time-budget", type=float, help="stop after this many seconds of training")
        parser.add_argument("--max-steps", type=int, help="number of steps")
        parser.add_argument("--seed", type=int, help="seed of the run's random choices")
        parser.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: PyTorch's choice)")
        parser.add_argument("--quiet", action="store_true", help="no progress bar")

    reward = sub.add_parser("reward", help="rank sampled answers of a chat model and train a reward model (chapter 9)")
    reward.add_argument("--sft", type=Path, help="the fine-tuned chat checkpoint (from `sft`)")
    reward.add_argument("--pairs", type=Path, help="JSON file of preference pairs: read if it exists, else written")
    common(reward)
    ppo = sub.add_parser("ppo", help="optimise a chat model against a reward model with PPO (chapter 9)")
    ppo.add_argument("--sft", type=Path, help="the fine-tuned chat checkpoint (from `sft`)")
    ppo.add_argument("--reward", type=Path, help="the reward model's checkpoint (from `reward`)")
    ppo.add_argument("--kl-coef", type=float, help=f"weight of the KL penalty (default {PPOConfig.kl_coef}; 0: none)")
    common(ppo)
    dpo = sub.add_parser("dpo", help="fine-tune a chat model on ranked pairs with DPO (chapter 9)")
    dpo.add_argument("--sft", type=Path, help="the fine-tuned chat checkpoint (from `sft`)")
    dpo.add_argument("--pairs", type=Path, help="JSON file of preference pairs: read if it exists, else written")
    dpo.add_argument("--beta", type=float, help=f"DPO's beta (default {DPOConfig.beta})")
    common(dpo)
    chatbot = sub.add_parser("chatbot", help="build a mini ChatGPT from nothing: pretrain, SFT, reward model, PPO")
    chatbot.add_argument("--out", type=Path, required=True, help="folder for the stages' checkpoints")
    chatbot.add_argument("--setting", default="full", choices=sorted(CHATBOT), help="full (default) or fast (a test)")
    chatbot.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: PyTorch's choice)")
    chatbot.add_argument("--quiet", action="store_true", help="no progress bars")


def run_subcommand(args: Any, text: str) -> int:
    """Run a subcommand added by `add_subcommands`; returns the exit status."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.command == "chatbot":
        build_chatbot(args.out, text, args.setting, args.quiet)
        return 0
    missing = [f"--{name}" for name in ("sft", "reward") if hasattr(args, name) and getattr(args, name) is None]
    if missing and not args.resume:
        raise ValueError(f"give {' and '.join(missing)} (or --resume to continue the run in {args.out})")
    options = dict(resume=args.resume, quiet=args.quiet, time_budget=args.time_budget, max_steps=args.max_steps)
    options["seed"] = args.seed
    try:
        if args.command == "reward":
            reward_run(args.sft, args.out, text, args.pairs, **options)
        elif args.command == "ppo":
            ppo_run(args.sft, args.reward, args.out, text, kl_coef=args.kl_coef, **options)
        else:
            dpo_run(args.sft, args.out, text, args.pairs, beta=args.beta, **options)
    except KeyboardInterrupt:
        return 130
    return 0
