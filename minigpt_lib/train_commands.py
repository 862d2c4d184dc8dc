"""The training commands of the command line (`train`, `sft`, `reward`, `ppo`, `dpo`, `rl`, `chatbot`) and the
options every command shares.

Each command is an `add_<command>` that declares its options and a `run_<command>` that runs it, with one rule
for what they share: the device (`--device`, default auto: cuda, then mps, then cpu), `--threads`, the output
folder (`stages.claim`) and the time budget (`stages.limits`).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .chatbot import CHATBOT, build_chatbot
from .data import load_text
from .device import pick_device
from .dpo import DPOConfig
from .evaluation import evaluate_chat, format_table
from .ppo import PPOConfig
from .presets import PRESETS
from .rl import DEFAULT_FAMILIES, RL_TRAIN
from .sft import SFT_DATA, SFT_TRAIN
from .stages import build_trainer, claim, limits, run_stage, train_and_save
from .tasks import ChatData
from .tokenizers import CharTokenizer, load_tokenizer


def _whole(low: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be a whole number of at least {low}, got {text!r}")
        return value

    return parse


positive_int, count = _whole(1), _whole(0)


def seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def finite(text: str) -> float:
    """argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def machine_options(parser: argparse.ArgumentParser) -> None:
    """The options every command that runs a model has: where and on how many CPU threads."""
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (default: cuda, then mps, then cpu)")
    parser.add_argument("--threads", type=positive_int, help="CPU threads for PyTorch (default: PyTorch's choice)")


def machine(args: argparse.Namespace, threads: int | None = None) -> torch.device:
    """The one device rule of every command (`device.pick_device`), after setting --threads (or `threads`)."""
    if getattr(args, "threads", None) or threads:
        torch.set_num_threads(args.threads or threads)
    return pick_device(args.device)


def run_options(parser: argparse.ArgumentParser, steps_help: str) -> None:
    """The options of every training command: the folder, resuming, how long, the seed, the machine."""
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out by a new one (other files there are kept)"
    )
    parser.add_argument(
        "--time-budget",
        type=seconds,
        help="train for this many seconds instead of a fixed number of steps (with --resume: this many more)",
    )
    parser.add_argument("--max-steps", type=positive_int, help=f"number of steps in all ({steps_help})")
    parser.add_argument("--seed", type=int, help="seed of the run's random choices")
    machine_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def add_train(sub: Any) -> None:
    train = sub.add_parser("train", help="train a GPT on Tiny Shakespeare or your own text")
    train.add_argument("--preset", choices=sorted(PRESETS), help="recipe (default: cpu; with --resume: the run's)")
    train.add_argument("--data", type=Path, help="UTF-8 text file to train on (default: Tiny Shakespeare)")
    train.add_argument(
        "--tokenizer", type=Path, help="tokenizer file from `tokenizer train` (default: one token per character)"
    )
    train.add_argument("--out", type=Path, help="checkpoint folder (default: runs/<preset>)")
    run_options(train, "default: the preset's")
    train.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="use torch.compile")
    train.add_argument(
        "--batch-size", type=positive_int, help="override the preset's batch size (per process with --parallel)"
    )
    train.add_argument(
        "--parallel", choices=("ddp", "fsdp"), help="data-parallel over the processes of `torchrun --nproc_per_node=N`"
    )


SOURCES = {
    "pairs": "JSON file of preference pairs: read if it exists, else written",
    "reward": "the reward model's checkpoint (from `reward`)",
}


def _preference_parser(sub: Any, name: str, what: str, source: str = "pairs") -> argparse.ArgumentParser:
    """A chapter 9 command: the chat model it starts from, its other input (`source`), its output folder."""
    parser = sub.add_parser(name, help=f"{what} (chapter 9)")
    parser.add_argument("--sft", type=Path, help="the fine-tuned chat checkpoint (from `sft`)")
    parser.add_argument(f"--{source}", type=Path, help=SOURCES[source])
    parser.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    return parser


def add_stages(sub: Any) -> None:
    sft = sub.add_parser("sft", help="fine-tune a pretrained checkpoint into a chat model (chapter 8)")
    sft.add_argument("--base", type=Path, help="pretrained checkpoint (its tokenizer must be the chat tokenizer)")
    sft.add_argument("--out", type=Path, required=True, help="folder for the fine-tuned checkpoint")
    sft.add_argument("--data", type=Path, help="text to take words and names from (default: Shakespeare)")
    run_options(sft, f"default {SFT_TRAIN['max_steps']}")
    sft.add_argument("--bare", action="store_true", help="arithmetic answered with the bare number, no working")
    sft.add_argument(
        "--conversations", type=positive_int, help=f"training conversations (default {SFT_DATA['n_train']})"
    )
    sft.add_argument("--eval", type=count, default=50, help="held-out prompts per family scored at the end (0: none)")

    reward = _preference_parser(sub, "reward", "rank sampled answers of a chat model and train a reward model")
    run_options(reward, "default 60")
    ppo = _preference_parser(sub, "ppo", "optimise a chat model against a reward model with PPO", "reward")
    ppo.add_argument("--kl-coef", type=finite, help=f"weight of the KL penalty (default {PPOConfig.kl_coef}; 0: none)")
    run_options(ppo, f"default {PPOConfig.max_steps}")
    dpo = _preference_parser(sub, "dpo", "fine-tune a chat model on ranked pairs with DPO")
    dpo.add_argument("--beta", type=finite, help=f"DPO's beta (default {DPOConfig.beta})")
    run_options(dpo, f"default {DPOConfig.max_steps}")

    chatbot = sub.add_parser("chatbot", help="build a mini ChatGPT from nothing: pretrain, SFT, reward model, PPO")
    chatbot.add_argument("--out", type=Path, required=True, help="folder for the stages' checkpoints")
    chatbot.add_argument("--setting", default="full", choices=sorted(CHATBOT), help="full (default) or fast (a test)")
    chatbot.add_argument(
        "--time-budget",
        type=seconds,
        help="seconds for pretraining and for SFT each, instead of their fixed steps (the model then depends on "
        "the machine's speed)",
    )
    machine_options(chatbot)
    chatbot.add_argument("--quiet", action="store_true", help="no progress bars")


def add_rl(sub: Any) -> None:
    rl = sub.add_parser("rl", help="optimise a chat model with PPO against a checker or a reward model (chapter 9)")
    rl.add_argument("--sft", type=Path, help="the fine-tuned chat checkpoint (from `sft`)")
    rl.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    rl.add_argument(
        "--reward",
        help="check (default): 1 for an answer the family's checker accepts, else 0; or a reward model's folder",
    )
    rl.add_argument(
        "--family",
        dest="families",
        nargs="+",
        action="extend",
        metavar="F",
        help=f"task families to train on (default: {' '.join(DEFAULT_FAMILIES)})",
    )
    kl_help = f"weight of the KL penalty (default {RL_TRAIN['kl_coef']}; 0: none)"
    rl.add_argument("--kl-coef", type=finite, help=kl_help)
    run_options(rl, f"default {RL_TRAIN['max_steps']}")


def run_train_parallel(args: argparse.Namespace) -> int:
    """`train` on every process of torchrun; rank 0 alone prints, shows progress and writes checkpoints."""
    from . import distributed

    rank, _, device = distributed.setup()
    args.device = str(device)
    args.quiet = args.quiet or rank > 0
    try:
        with contextlib.redirect_stdout(sys.stdout if rank == 0 else io.StringIO()):
            return run_train(args)
    finally:
        distributed.teardown()


def _rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _preset_of(manifest: dict[str, Any]) -> str:
    """The name of the preset whose model a saved run has (for resumed runs), or 'custom'."""
    vocab = manifest["model_config"].get("vocab_size", 0)
    names = [n for n, p in PRESETS.items() if p.model_config(vocab).to_dict() == manifest["model_config"]]
    return names[0] if names else "custom"


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def run_train(args: argparse.Namespace) -> int:
    preset = PRESETS.get(args.preset or "cpu")
    out = args.out or Path("runs") / (args.preset or "cpu")
    device = machine(args, preset.threads)
    text = load_text(args.data)
    tokenizer = None if args.tokenizer is None else load_tokenizer(args.tokenizer)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    # Under torchrun only rank 0 writes, so only rank 0 takes the folder's lock.
    with claim(out, args.resume, args.overwrite, lock=_rank() == 0) as manifest:
        if tokenizer is None and manifest is None:
            tokenizer = CharTokenizer.from_text(text)
        train = dict(seed=args.seed, compile=args.compile, batch_size=args.batch_size)
        train.update(limits(args.max_steps, args.time_budget, manifest))
        inputs = dict(preset=args.preset, tokenizer=tokenizer, device=device)
        trainer = build_trainer("pretrain", out, manifest, text, train, **inputs)
        name = _preset_of(manifest) if manifest else args.preset or "cpu"
        if manifest:
            print(f"resuming {out} at step {trainer.step} with the run's own settings")
        write = None
        if args.parallel:
            from . import distributed

            distributed.parallelize(trainer, args.parallel)
            write = lambda t: distributed.save(t, out, args.parallel)  # noqa: E731
        print(
            f"preset {name}: {trainer.model.num_params() / 1e6:.2f}M parameters on {trainer.device}, "
            f"{len(trainer.train_ids):,} training tokens, vocabulary {trainer.tokenizer.vocab_size}"
        )
        first_step = trainer.step
        wall = train_and_save(trainer, out, args.quiet, "training", write, log=_err)
    if args.parallel:
        distributed.print_memory(trainer)
    steps = trainer.step - first_step
    tokens = steps * trainer.config.batch_size * trainer.block_size * getattr(trainer.sampler, "world_size", 1)
    this_run = f" ({steps} in this session)" if manifest else ""
    print(
        f"trained {trainer.step} steps{this_run} in {wall:.1f} s ({tokens / max(wall, 1e-9):,.0f} tokens/s); "
        f"saved to {out}"
    )
    print(f"val_loss={trainer.evaluate():.4f}")
    return 0


def run_stage_command(args: argparse.Namespace) -> int:
    """`sft`, `reward`, `ppo`, `dpo` or `rl`: run that stage into --out (`stages.run_stage`) and print its result."""
    device = machine(args)
    text = load_text(getattr(args, "data", None))
    train = dict(seed=args.seed, kl_coef=getattr(args, "kl_coef", None), beta=getattr(args, "beta", None))
    if args.command == "sft":
        inputs = dict(base=args.base, data={"cot": not args.bare, "n_train": args.conversations or SFT_DATA["n_train"]})
    else:
        inputs = {name: getattr(args, name) for name in ("sft", "reward", "pairs", "families") if hasattr(args, name)}
    trainer, wall = run_stage(
        args.command,
        args.out,
        text,
        resume=args.resume,
        overwrite=args.overwrite,
        max_steps=args.max_steps,
        time_budget=args.time_budget,
        train={k: v for k, v in train.items() if v is not None},
        quiet=args.quiet,
        device=device,
        **inputs,
    )
    last = trainer.evals[-1]
    print(f"{args.command}: {trainer.step} steps in {wall:.1f} s; saved to {args.out}")
    if args.command == "sft":
        print(f"val_loss={trainer.evaluate():.4f} (assistant tokens of held-out conversations)")
        if args.eval:
            data = ChatData(text, max_tokens=trainer.block_size + 1)
            examples = data.heldout_examples(args.eval, cot=trainer.meta["data"]["cot"])
            table, _ = evaluate_chat(trainer.model, trainer.tokenizer, examples)
            print(format_table({"fine-tuned": table}))
    elif args.command == "reward":
        print(f"held-out pairwise accuracy={last['val_accuracy']:.4f}")
    elif args.command == "ppo":
        print(f"held-out reward={last['reward']:.3f} true score={last['score']:.3f} KL={last['kl']:.2f}")
    elif args.command == "rl":
        sampled = f"held-out pass@1={last['score']:.3f} (one answer sampled per prompt)"
        print(f"{sampled} reward={last['reward']:.3f} KL={last['kl']:.2f}")
    else:
        print(f"held-out pair accuracy={last['val_accuracy']:.3f} true score={last['score']:.3f} KL={last['kl']:.2f}")
    return 0


def run_chatbot(args: argparse.Namespace) -> int:
    machine(args)
    build_chatbot(args.out, load_text(None), args.setting, args.quiet, time_budget=args.time_budget)
    return 0
