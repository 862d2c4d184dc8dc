"""Each training stage as a run on disk, with one rule for each thing every run needs.

- `claim(out, resume, overwrite)`: the folder rule (nothing the user did not ask to replace is replaced),
  then the folder's lock, held until the run ends: a second run on the same folder stops with an error.
- `limits(max_steps, time_budget, manifest)`: the time-budget rule. A time budget alone trains until the
  clock runs out (no step limit); when resuming, a time budget is that many seconds *more*.
- `train_and_save(trainer, out)`: saves at each evaluation and at the end. Ctrl-C saves first (a second
  Ctrl-C stops without saving); a run that diverges or cannot write keeps its last good checkpoint.
- Whether a folder holds a finished run of a stage, made with given settings: `checkpoint.finished`.
- The stages `pretrain`, `sft`, `reward`, `ppo`, `dpo` and `rl` (PPO against a family's checker, `rl.py`):
  `build_trainer` makes a new or resumed trainer for a claimed folder, and `run_stage` runs a stage from
  start to end.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError

from .chat import chat_tokenizer, check_tokenizer, is_chat_checkpoint, render_prompt, stop_ids
from .checkpoint import (
    MANIFEST,
    CheckpointError,
    folder_lock,
    load_checkpoint,
    other_files,
    read_manifest,
    restore_training,
    resume_trainer,
    save_trainer,
)
from .config import MAX_STEPS
from .dpo import DPOConfig, DPOTrainer
from .model import GPT
from .ppo import PPOConfig, PPOTrainer
from .preferences import Preferences, collect_preferences, curve_examples, ppo_examples, true_scorer
from .presets import get_preset
from .reward import RewardConfig, RewardModel, RewardTrainer, reward_function
from .rl import DEFAULT_FAMILIES, RL_TRAIN, check_families, rl_trainer
from .sft import conversation_windows, finetune_trainer, resume_finetune, sft_config
from .tasks import ChatData
from .train import Trainer, TrainingDivergedError


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a run; the message says what was saved."""


# --- the folder rule, the lock and the time budget ------------------------------------------------


def out_problem(out: Path, resume: bool, overwrite: bool) -> str | None:
    """Why `out` cannot take this run (None if it can): nothing the user did not ask for is ever replaced."""
    if resume and overwrite:
        return "give --resume (continue the run) or --overwrite (start a new one), not both"
    if out.is_symlink():
        return f"--out {out} is a symbolic link; give the folder it points to, or a new folder"
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file, not a folder; give a new folder (or one that holds a run)"
    has_run = (out / MANIFEST).exists()
    if resume and not has_run:
        # Versions before checkpoint format 2 swapped whole folders; a kill mid-swap left the run in .NAME.old-PID.
        moved = [p for p in out.parent.glob(f".{out.name}.old-*") if (p / MANIFEST).is_file()]
        if moved:
            return f"{out} holds no checkpoint, but an interrupted save left it in {moved[0]}; move it to {out}"
        return f"--resume given but {out} holds no checkpoint; drop --resume to start afresh"
    if resume:
        return None
    if has_run and not overwrite:
        try:
            state = read_manifest(out).get("train_state") or {}
            what = f"a training run (step {state.get('step', '?')})"
        except CheckpointError:
            what = "a checkpoint (damaged)"
        return (
            f"{out} already holds {what}; add --resume to continue it, or --overwrite to replace it by a new run "
            "(other files in the folder are kept), or choose another --out"
        )
    if out.is_dir() and not has_run and other_files(out):
        listed = ", ".join(other_files(out)[:3]) + (", ..." if len(other_files(out)) > 3 else "")
        return f"{out} is not empty ({listed}) and holds no checkpoint; choose a new folder for --out (nothing written)"
    return None


@contextlib.contextmanager
def claim(out: Path, resume: bool = False, overwrite: bool = False, lock: bool = True) -> Iterator[dict | None]:
    """Check that `out` can take the run, create it, and hold its lock until the run ends.

    Yields the manifest of the run to resume (None for a new run). A folder this call created is removed
    again if nothing was written into it. `lock=False` (the ranks of torchrun that do not write) skips the lock.
    """
    out = Path(out)
    problem = out_problem(out, resume, overwrite)
    if problem:
        raise CheckpointError(problem)
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"cannot create the folder {out} ({err.strerror}); choose one you can write to") from None
    try:
        with folder_lock(out) if lock else contextlib.nullcontext():  # also checks that the folder is writable
            problem = out_problem(out, resume, overwrite)  # again, now that no one else can write there
            if problem:
                raise CheckpointError(problem)
            yield read_manifest(out) if resume else None
    finally:
        if created:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if nothing was saved: a folder with files is never removed


def limits(max_steps: int | None, time_budget: float | None, manifest: dict | None = None) -> dict[str, Any]:
    """The config overrides that say how long to train: the one time-budget rule of every command.

    A time budget alone trains until the clock runs out (`MAX_STEPS`, no step limit). Resuming (`manifest`
    given), a time budget is that many seconds more on top of the time the run has trained.
    """
    out: dict[str, Any] = {}
    if max_steps is not None:
        out["max_steps"] = max_steps
    if time_budget:
        out["time_budget"] = time_budget + (manifest["train_state"]["elapsed"] if manifest else 0.0)
        if max_steps is None:
            out["max_steps"] = MAX_STEPS
    return out


def train_and_save(
    trainer: Any,
    out: Path,
    quiet: bool = False,
    desc: str = "training",
    write: Callable[[Any], Any] | None = None,
    log: Callable[[str], None] = print,
) -> float:
    """Train until finished, saving at each evaluation and at the end; returns the wall time of training.

    Ctrl-C saves and raises `Interrupted` (a second Ctrl-C while saving stops without saving); a run that
    diverges or cannot write raises with what the folder still holds.
    """
    write = write or (lambda t: save_trainer(t, out))
    saved = [trainer.step if (out / MANIFEST).exists() else None]  # step of the checkpoint in `out`

    def kept() -> str:
        return f"the checkpoint of step {saved[0]} in {out} is intact" if saved[0] is not None else "nothing was saved"

    def save(t: Any) -> None:
        try:
            write(t)
        except (OSError, SafetensorError) as err:
            raise CheckpointError(f"could not write the checkpoint to {out} ({err}); {kept()}") from err
        saved[0] = t.step

    start = time.perf_counter()
    try:
        trainer.train(progress_bar=not quiet, on_eval=save, desc=desc)
    except KeyboardInterrupt:
        log("\ninterrupted: saving (Ctrl-C again stops without saving)")
        try:
            save(trainer)
        except KeyboardInterrupt:
            raise Interrupted(f"interrupted again: not saved; {kept()}") from None
        raise Interrupted(f"interrupted at step {trainer.step}; saved to {out}; continue with --resume") from None
    except TrainingDivergedError as err:
        raise TrainingDivergedError(f"{err}\nNothing non-finite was saved: {kept()}.") from None
    wall = time.perf_counter() - start
    save(trainer)
    return wall


# --- the stages ------------------------------------------------------------------------------------


def _encode_split(tokenizer: Any, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Split `text` 90/10 by characters, then encode each part (the same split for every tokenizer)."""
    n = int(0.9 * len(text))
    return tokenizer.encode_tensor(text[:n]), tokenizer.encode_tensor(text[n:])


def _pretrain(out: Path, manifest: dict | None, text: str, train: dict, device: Any = None, **inputs: Any) -> Trainer:
    """A GPT of a preset's shape (`preset`, default cpu, changed by `model`) on `text` with `tokenizer`."""
    preset = get_preset(inputs.get("preset") or "cpu")
    tokenizer = inputs.get("tokenizer")
    if manifest:
        _, saved, _ = load_checkpoint(out)
        if saved is None:
            raise CheckpointError(f"{out} holds a model without tokenizer; it cannot resume")
        if tokenizer is not None and tokenizer != saved:
            raise CheckpointError(f"the tokenizer given is not the one the run in {out} was trained with")
        if inputs.get("preset") and preset.model_config(saved.vocab_size).to_dict() != manifest["model_config"]:
            raise CheckpointError(
                f"the run in {out} was not trained with --preset {inputs['preset']} (its model has another shape); "
                "drop --preset to continue it with its own settings"
            )
        return resume_trainer(out, *_encode_split(saved, text), device=device, **train)
    tokenizer = tokenizer or chat_tokenizer()
    config = preset.train_config(**train)
    torch.manual_seed(config.seed)
    model = GPT(preset.model_config(tokenizer.vocab_size, **(inputs.get("model") or {})))
    trainer = Trainer(model, *_encode_split(tokenizer, text), config, device=device, tokenizer=tokenizer)
    trainer.meta = {"stage": "pretrain"}
    return trainer


def _sft(out: Path, manifest: dict | None, text: str, train: dict, device: Any = None, **inputs: Any) -> Trainer:
    """Fine-tuning of the pretrained model in `base` on conversations made from `text` (settings: `data`)."""
    if manifest:
        return resume_finetune(out, text, device=device, **train)
    if inputs.get("base") is None:
        raise ValueError("give --base, the pretrained checkpoint to fine-tune")
    model, tokenizer, _ = load_checkpoint(inputs["base"])
    trainer = finetune_trainer(model, tokenizer, text, sft_config(**train), inputs.get("data"), device=device)
    trainer.meta["base"] = str(inputs["base"])
    return trainer


def _chat_model(path: Path, device: Any = None) -> tuple[GPT, Any]:
    """The chat model in checkpoint `path` and its tokenizer; a clear error for anything else."""
    model, tokenizer, manifest = load_checkpoint(path, device=device)
    if tokenizer is None:
        raise CheckpointError(f"{path} has no tokenizer; give a chat checkpoint written by `sft`")
    check_tokenizer(tokenizer)
    if not is_chat_checkpoint(manifest):
        raise CheckpointError(f"{path} was never fine-tuned to chat; fine-tune it first with `sft`, then give that")
    return model, tokenizer


def read_pairs(path: Path, vocab_size: int, settings: dict[str, Any] | None = None) -> Preferences:
    """The pairs in file `path`, which must have been made with `settings` (if given); else a one-line ValueError."""
    prefs = Preferences.load(path, vocab_size=vocab_size)
    if settings and any(prefs.settings.get(k) != v for k, v in settings.items()):
        raise ValueError(f"{path} holds pairs made with other settings than {settings}; move it or give another")
    return prefs


def _pairs(sft: GPT, tokenizer: Any, data: ChatData, inputs: dict, quiet: bool) -> Preferences:
    """The preference pairs: read from `pairs` if that file exists, else sampled and ranked (and saved there)."""
    path, settings = inputs.get("pairs"), inputs.get("preferences")
    if path is not None and path.is_file():
        return read_pairs(path, tokenizer.vocab_size, settings)
    if path is not None:
        if path.is_dir() or not path.parent.is_dir():
            raise ValueError(f"--pairs {path} must be a file in an existing folder")
        path.with_name(f".{path.name}.probe").touch()  # writable, before the long sampling
        path.with_name(f".{path.name}.probe").unlink()
    prefs, _, _ = collect_preferences(sft, tokenizer, data, settings, progress_bar=not quiet)
    if path is not None:
        prefs.save(path)
    return prefs


def _sources(manifest: dict | None, inputs: dict, names: tuple[str, ...]) -> dict[str, Path | None]:
    """The checkpoints a run is built from: given, or (resuming) those its manifest names."""
    if manifest:
        meta = manifest.get("meta") or {}
        if not all(isinstance(meta.get(name), str) for name in names):
            raise CheckpointError(f"the manifest does not name the run's {' and '.join(names)} checkpoints")
        return {name: Path(meta[name]) for name in names}
    missing = [f"--{name}" for name in names if inputs.get(name) is None]
    if missing:
        raise ValueError(f"give {' and '.join(missing)} (or --resume to continue a run)")
    return {name: Path(inputs[name]) for name in names}


def _config(cls: type, manifest: dict | None, train: dict) -> Any:
    """A stage's config: the saved one with `train`'s overrides when resuming, else the defaults with them."""
    values = {**(manifest["train_config"] if manifest else {}), **train}
    try:
        return cls.from_dict(values)
    except (TypeError, ValueError) as err:
        raise (CheckpointError if manifest else ValueError)(f"{cls.__name__}: {err}") from None


def _preference_stage(kind: str, out: Path, manifest: dict | None, text: str, train: dict, **inputs: Any) -> Any:
    """The reward model, PPO or DPO: built from the SFT model (and pairs or a reward model), restored if resuming."""
    quiet, device = inputs.get("quiet", False), inputs.get("device")
    sources = _sources(manifest, inputs, ("sft", "reward") if kind == "ppo" else ("sft",))
    sft, tokenizer = _chat_model(sources["sft"], device)
    data = ChatData(text, max_tokens=sft.block_size + 1)
    meta: dict[str, Any] = {"stage": kind, **{k: str(v) for k, v in sources.items()}}
    if kind in ("reward", "dpo"):
        prefs = _pairs(sft, tokenizer, data, inputs, quiet)
        if manifest and manifest["meta"].get("pairs") != prefs.digest():
            raise CheckpointError(f"the preference pairs differ from those {out} was trained on; give the same --pairs")
        meta["pairs"] = prefs.digest()
    policy = load_checkpoint(out, device=device)[0] if manifest and kind != "reward" else sft
    curve = curve_examples(data)
    policy_inputs = dict(
        held_out=[render_prompt(e.messages, tokenizer) for e in curve],
        true_score=true_scorer(curve, tokenizer),
        tokenizer=tokenizer,
        device=device,
        anchor=conversation_windows(data, tokenizer, sft.block_size),
    )
    if kind == "reward":
        model = load_checkpoint(out, model_class=RewardModel)[0] if manifest else RewardModel.from_gpt(sft)
        config = _config(RewardConfig, manifest, train)
        trainer = RewardTrainer(model, prefs.train, prefs.held_out, config, tokenizer=tokenizer, device=device)
    elif kind == "ppo":
        reward_model, _, _ = load_checkpoint(sources["reward"], model_class=RewardModel, device=device)
        prompts = [render_prompt(e.messages, tokenizer) for e in ppo_examples(data)]
        config = _config(PPOConfig, manifest, train)
        trainer = PPOTrainer(
            policy, sft, reward_function(reward_model), prompts, stop_ids(tokenizer), config, **policy_inputs
        )
    else:
        config = _config(DPOConfig, manifest, train)
        trainer = DPOTrainer(
            policy, sft, prefs.train, config, stop_ids(tokenizer), held_out_pairs=prefs.held_out, **policy_inputs
        )
    if manifest:
        restore_training(out, trainer, manifest)
    trainer.meta = {**meta, "chat": kind != "reward"}
    return trainer


def _rl(out: Path, manifest: dict | None, text: str, train: dict, device: Any = None, **inputs: Any) -> PPOTrainer:
    """PPO on training prompts of `families` (default add3) against their checker (`reward` "check") or a reward model.

    Resuming, the run's own families and reward are used; giving others is an error.
    """
    families = check_families(inputs.get("families") or DEFAULT_FAMILIES)
    reward_source = inputs.get("reward") or "check"
    settings = {"reward": "check" if reward_source == "check" else str(Path(reward_source)), "families": families}
    if manifest:
        saved = {key: manifest["meta"].get(key) for key in settings}
        for key, option in (("reward", "--reward"), ("families", "--family")):
            if inputs.get(key) is not None and settings[key] != saved[key]:
                held = " ".join(saved[key]) if key == "families" else saved[key]
                raise CheckpointError(f"{out} holds a run trained with {option} {held}; drop {option} to continue it")
        settings = saved
    sources = _sources(manifest, inputs, ("sft",))
    sft, tokenizer = _chat_model(sources["sft"], device)
    reward = None
    if settings["reward"] != "check":
        reward = reward_function(load_checkpoint(Path(settings["reward"]), model_class=RewardModel, device=device)[0])
    policy = load_checkpoint(out, device=device)[0] if manifest else sft
    config = _config(PPOConfig, manifest, train if manifest else {**RL_TRAIN, **train})
    data = ChatData(text, max_tokens=sft.block_size + 1)
    trainer = rl_trainer(policy, sft, tokenizer, data, settings["families"], config, reward, device)
    if manifest:
        restore_training(out, trainer, manifest)
    trainer.meta = {"stage": "rl", "sft": str(sources["sft"]), **settings, "chat": True}
    return trainer


STAGES: dict[str, tuple[Callable[..., Any], str]] = {
    "pretrain": (_pretrain, "pretraining"),
    "sft": (_sft, "fine-tuning"),
    "reward": (lambda *a, **k: _preference_stage("reward", *a, **k), "reward model"),
    "ppo": (lambda *a, **k: _preference_stage("ppo", *a, **k), "PPO"),
    "dpo": (lambda *a, **k: _preference_stage("dpo", *a, **k), "DPO"),
    "rl": (_rl, "RL"),
}


def build_trainer(stage: str, out: Path, manifest: dict | None, text: str, train: dict, **inputs: Any) -> Any:
    """A new trainer for `stage` (manifest None), or the run in `out` restored to where it stopped.

    `train` holds config overrides (with `limits`'s rule applied); `inputs` the stage's own: `preset`, `model`,
    `tokenizer` (pretrain), `base`, `data` (sft), `sft`, `pairs`, `preferences`, `reward` (the others), `device`.
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    return STAGES[stage][0](Path(out), manifest, text, {k: v for k, v in train.items() if v is not None}, **inputs)


def run_stage(
    stage: str,
    out: Path,
    text: str,
    *,
    resume: bool = False,
    overwrite: bool = False,
    max_steps: int | None = None,
    time_budget: float | None = None,
    train: dict[str, Any] | None = None,
    quiet: bool = False,
    log: Callable[[str], None] = print,
    **inputs: Any,
) -> tuple[Any, float]:
    """Run `stage` into `out` from start to end (claimed and locked throughout); returns the trainer and wall time."""
    out = Path(out)
    with claim(out, resume, overwrite) as manifest:
        overrides = {**(train or {}), **limits(max_steps, time_budget, manifest)}
        trainer = build_trainer(stage, out, manifest, text, overrides, quiet=quiet, **inputs)
        if manifest:
            log(f"resuming {out} at step {trainer.step}")
        return trainer, train_and_save(trainer, out, quiet, STAGES[stage][1], log=log)
