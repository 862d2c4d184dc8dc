"""Command line: `python -m minigpt_lib COMMAND`. Each command is an `_add_<command>` that declares its options and
a `_<command>` that runs it, with one rule for what they share: the device (`--device`, default auto: cuda, then
mps, then cpu), `--threads`, the output folder (`stages.claim`) and the time budget (`stages.limits`).

Training: `train` (pretraining), `sft`, `reward`, `ppo`, `dpo`, `rl` (PPO on a checker), `chatbot` (all four
stages). Using models: `sample`, `chat`, `export-web`. Tools: `tokenizer train|chat`, `import-gpt2`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from . import web
from .chat import SPECIAL_TOKENS, ChatSession, chat_tokenizer, check_tokenizer, is_chat_checkpoint
from .chatbot import CHATBOT, build_chatbot
from .checkpoint import CheckpointError, load_checkpoint
from .data import CorpusNotFoundError, load_text
from .device import pick_device
from .dpo import DPOConfig
from .evaluation import evaluate_chat, format_table
from .generate import stream_text
from .ppo import PPOConfig
from .presets import PRESETS
from .rl import DEFAULT_FAMILIES, RL_TRAIN
from .sampling import START_TEXT, check_sampling
from .sft import SFT_DATA, SFT_TRAIN
from .stages import Interrupted, build_trainer, claim, limits, run_stage, train_and_save
from .tasks import ChatData
from .tokenizers import BPETokenizer, CharTokenizer, UnknownCharacterError, load_tokenizer
from .train import TrainingDivergedError


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


_positive_int, _count = _whole(1), _whole(0)


def _seconds(text: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m minigpt_lib", description="Train and sample MiniGPT models.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_stages(sub)
    _add_rl(sub)

    sample = sub.add_parser("sample", help="generate text from a trained checkpoint")
    sample.add_argument("--ckpt", type=Path, required=True, help="checkpoint folder written by `train`")
    sample.add_argument(
        "--prompt", default=START_TEXT, help="text to continue (default, and for an empty prompt: a newline)"
    )
    sample.add_argument("--max-new-tokens", type=int, default=500)
    sample.add_argument("--temperature", type=float, default=1.0, help="0 picks the most likely token (greedy)")
    sample.add_argument("--top-k", type=int, help="sample only among the k most likely tokens")
    sample.add_argument("--top-p", type=float, help="sample only among the most likely tokens that make up p")
    sample.add_argument("--seed", type=int, default=1337)
    sample.add_argument("--stream", action="store_true", help="print each token as soon as it is generated")
    sample.add_argument(
        "--no-cache", dest="use_cache", action="store_false", help="plain loop without the KV cache (same text, slower)"
    )
    _machine_options(sample)

    tokenizer = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    tokenizer_sub = tokenizer.add_subparsers(dest="tokenizer_command", required=True)
    bpe = tokenizer_sub.add_parser("train", help="learn BPE merges from a text file and save the tokenizer")
    bpe.add_argument("--data", type=Path, help="UTF-8 text file to learn from (default: Tiny Shakespeare)")
    bpe.add_argument("--vocab-size", type=int, required=True, help="tokens in all: 256 bytes + merges + specials")
    bpe.add_argument("--out", type=Path, required=True, help="JSON file to write the tokenizer to")
    bpe.add_argument(
        "--overwrite", action="store_true", help="replace --out even if it is not a tokenizer file (one is replaced)"
    )
    bpe.add_argument("--pattern", default="gpt4", help="pre-split regex: gpt4 (default), gpt2, or a regex of your own")
    bpe.add_argument("--special", action="append", default=[], metavar="NAME", help="a special token (repeatable)")
    bpe.add_argument("--quiet", action="store_true", help="no progress bar")
    chat_tok = tokenizer_sub.add_parser("chat", help="save the chat tokenizer (bytes + chat special tokens)")
    chat_tok.add_argument("--out", type=Path, required=True, help="JSON file to write the tokenizer to")
    chat_tok.add_argument(
        "--overwrite", action="store_true", help="replace --out even if it is not a tokenizer file (one is replaced)"
    )

    gpt2 = sub.add_parser("import-gpt2", help="turn a Hugging Face GPT-2 folder into a checkpoint of ours")
    gpt2.add_argument("--from", dest="source", type=Path, required=True, help="Hugging Face GPT-2 folder")
    gpt2.add_argument("--out", type=Path, required=True, help="checkpoint folder to write (must not exist yet)")

    chat = sub.add_parser("chat", help="chat with a fine-tuned checkpoint (type /help for commands)")
    chat.add_argument("--ckpt", type=Path, required=True, help="checkpoint folder written by `sft`")
    chat.add_argument("--system", help="system prompt (change it later with /system TEXT)")
    chat.add_argument("--max-new-tokens", type=_positive_int, default=200)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 (default) picks the most likely token")
    chat.add_argument("--top-k", type=int, help="sample only among the k most likely tokens")
    chat.add_argument("--top-p", type=float, help="sample only among the most likely tokens that make up p")
    chat.add_argument("--seed", type=int, default=1337)
    _machine_options(chat)
    web.add_arguments(sub.add_parser("export-web", help="write a checkpoint's model for the book's pages (JavaScript)"))
    return parser


def _finite(text: str) -> float:
    """argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _machine_options(parser: argparse.ArgumentParser) -> None:
    """The options every command that runs a model has: where and on how many CPU threads."""
    parser.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (default: cuda, then mps, then cpu)")
    parser.add_argument("--threads", type=_positive_int, help="CPU threads for PyTorch (default: PyTorch's choice)")


def _machine(args: argparse.Namespace, threads: int | None = None) -> torch.device:
    """The one device rule of every command (`device.pick_device`), after setting --threads (or `threads`)."""
    if getattr(args, "threads", None) or threads:
        torch.set_num_threads(args.threads or threads)
    return pick_device(args.device)


def _run_options(parser: argparse.ArgumentParser, steps_help: str) -> None:
    """The options of every training command: the folder, resuming, how long, the seed, the machine."""
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out by a new one (other files there are kept)"
    )
    parser.add_argument(
        "--time-budget",
        type=_seconds,
        help="train for this many seconds instead of a fixed number of steps (with --resume: this many more)",
    )
    parser.add_argument("--max-steps", type=_positive_int, help=f"number of steps in all ({steps_help})")
    parser.add_argument("--seed", type=int, help="seed of the run's random choices")
    _machine_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_train(sub: Any) -> None:
    train = sub.add_parser("train", help="train a GPT on Tiny Shakespeare or your own text")
    train.add_argument("--preset", choices=sorted(PRESETS), help="recipe (default: cpu; with --resume: the run's)")
    train.add_argument("--data", type=Path, help="UTF-8 text file to train on (default: Tiny Shakespeare)")
    train.add_argument(
        "--tokenizer", type=Path, help="tokenizer file from `tokenizer train` (default: one token per character)"
    )
    train.add_argument("--out", type=Path, help="checkpoint folder (default: runs/<preset>)")
    _run_options(train, "default: the preset's")
    train.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="use torch.compile")
    train.add_argument(
        "--batch-size", type=_positive_int, help="override the preset's batch size (per process with --parallel)"
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


def _add_stages(sub: Any) -> None:
    sft = sub.add_parser("sft", help="fine-tune a pretrained checkpoint into a chat model (chapter 8)")
    sft.add_argument("--base", type=Path, help="pretrained checkpoint (its tokenizer must be the chat tokenizer)")
    sft.add_argument("--out", type=Path, required=True, help="folder for the fine-tuned checkpoint")
    sft.add_argument("--data", type=Path, help="text to take words and names from (default: Shakespeare)")
    _run_options(sft, f"default {SFT_TRAIN['max_steps']}")
    sft.add_argument("--bare", action="store_true", help="arithmetic answered with the bare number, no working")
    sft.add_argument(
        "--conversations", type=_positive_int, help=f"training conversations (default {SFT_DATA['n_train']})"
    )
    sft.add_argument("--eval", type=_count, default=50, help="held-out prompts per family scored at the end (0: none)")

    reward = _preference_parser(sub, "reward", "rank sampled answers of a chat model and train a reward model")
    _run_options(reward, "default 60")
    ppo = _preference_parser(sub, "ppo", "optimise a chat model against a reward model with PPO", "reward")
    ppo.add_argument("--kl-coef", type=_finite, help=f"weight of the KL penalty (default {PPOConfig.kl_coef}; 0: none)")
    _run_options(ppo, f"default {PPOConfig.max_steps}")
    dpo = _preference_parser(sub, "dpo", "fine-tune a chat model on ranked pairs with DPO")
    dpo.add_argument("--beta", type=_finite, help=f"DPO's beta (default {DPOConfig.beta})")
    _run_options(dpo, f"default {DPOConfig.max_steps}")

    chatbot = sub.add_parser("chatbot", help="build a mini ChatGPT from nothing: pretrain, SFT, reward model, PPO")
    chatbot.add_argument("--out", type=Path, required=True, help="folder for the stages' checkpoints")
    chatbot.add_argument("--setting", default="full", choices=sorted(CHATBOT), help="full (default) or fast (a test)")
    chatbot.add_argument(
        "--time-budget",
        type=_seconds,
        help="seconds for pretraining and for SFT each, instead of their fixed steps (the model then depends on "
        "the machine's speed)",
    )
    _machine_options(chatbot)
    chatbot.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_rl(sub: Any) -> None:
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
    rl.add_argument("--kl-coef", type=_finite, help=kl_help)
    _run_options(rl, f"default {RL_TRAIN['max_steps']}")


def _train_parallel(args: argparse.Namespace) -> int:
    """`train` on every process of torchrun; rank 0 alone prints, shows progress and writes checkpoints."""
    from . import distributed

    rank, _, device = distributed.setup()
    args.device = str(device)
    args.quiet = args.quiet or rank > 0
    try:
        with contextlib.redirect_stdout(sys.stdout if rank == 0 else io.StringIO()):
            return _train(args)
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


def _train(args: argparse.Namespace) -> int:
    preset = PRESETS.get(args.preset or "cpu")
    out = args.out or Path("runs") / (args.preset or "cpu")
    device = _machine(args, preset.threads)
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


def _stage(args: argparse.Namespace) -> int:
    """`sft`, `reward`, `ppo`, `dpo` or `rl`: run that stage into --out (`stages.run_stage`) and print its result."""
    device = _machine(args)
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


def _chatbot(args: argparse.Namespace) -> int:
    _machine(args)
    build_chatbot(args.out, load_text(None), args.setting, args.quiet, time_budget=args.time_budget)
    return 0


def _sample(args: argparse.Namespace) -> int:
    device = _machine(args)
    model, tokenizer, _ = load_checkpoint(args.ckpt, device=device)
    if tokenizer is None:
        print(f"error: {args.ckpt} has no tokenizer, so text cannot be encoded", file=sys.stderr)
        return 2
    prompt = args.prompt or START_TEXT
    tokenizer.encode(prompt)  # bad input is an error before anything is printed
    check_sampling(args.temperature, args.top_k, args.top_p)
    pieces = stream_text(
        model,
        tokenizer,
        prompt,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        use_cache=args.use_cache,
    )
    generated: list[str] = []
    if args.stream:
        print(prompt, end="", flush=True)
    try:
        for piece in pieces:
            generated.append(piece)
            if args.stream:
                print(piece, end="", flush=True)
    except KeyboardInterrupt:
        print("" if args.stream else prompt + "".join(generated), flush=True)
        print(f"interrupted after {len(generated)} pieces; the text above is what was generated", file=sys.stderr)
        return 130
    print("" if args.stream else prompt + "".join(generated))
    return 0


def _is_tokenizer_file(path: Path) -> bool:
    """Whether `path` holds a tokenizer (which a new one may replace without --overwrite)."""
    try:
        load_tokenizer(path)
    except (ValueError, OSError):
        return False
    return not path.is_symlink()


def _tokenizer_train(args: argparse.Namespace) -> int:
    out: Path = args.out
    _writable_tokenizer_file(out, args.overwrite)
    text = load_text(args.data)
    start = time.perf_counter()
    tokenizer = BPETokenizer.train(text, args.vocab_size, args.pattern, args.special, progress_bar=not args.quiet)
    seconds = time.perf_counter() - start
    tokenizer.save(out)
    n_tokens = len(tokenizer.encode_ordinary(text))
    print(f"learned {len(tokenizer.merges)} merges in {seconds:.1f} s; vocabulary of {tokenizer.vocab_size}")
    print(f"saved to {args.out}")
    print(f"{len(text):,} characters -> {n_tokens:,} tokens ({len(text) / max(n_tokens, 1):.2f} characters per token)")
    return 0


def _import_gpt2(args: argparse.Namespace) -> int:
    from .checkpoint import save_checkpoint
    from .gpt2 import import_gpt2

    if args.out.exists():
        print(f"error: {args.out} exists; choose a new folder for the imported model", file=sys.stderr)
        return 2
    try:
        model, tokenizer = import_gpt2(args.source)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    save_checkpoint(args.out, model, tokenizer)
    print(f"GPT-2 with {model.num_params() / 1e6:.1f}M parameters saved to {args.out}")
    if tokenizer is None:
        print("no vocab.json and merges.txt beside it: the checkpoint has no tokenizer and keeps GPT-2's token ids")
    return 0


def _writable_tokenizer_file(out: Path, overwrite: bool) -> None:
    """Refuse an --out that is a folder, or a file other than a tokenizer without --overwrite; check it is writable."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give a file name, such as {out / 'tokenizer.json'}")
    if (out.exists() or out.is_symlink()) and not overwrite and not _is_tokenizer_file(out):
        raise ValueError(f"{out} exists and is not a tokenizer file; add --overwrite to replace it, or another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    probe = out.with_name(f".{out.name}.probe")
    probe.touch()  # writable, before any long work
    probe.unlink()


def _tokenizer_chat(args: argparse.Namespace) -> int:
    _writable_tokenizer_file(args.out, args.overwrite)
    chat_tokenizer().save(args.out)
    print(f"saved the chat tokenizer ({chat_tokenizer().vocab_size} tokens: 256 bytes + {', '.join(SPECIAL_TOKENS)})")
    print(f"pretrain a base model with it: python -m minigpt_lib train --tokenizer {args.out} --out runs/chat-base")
    return 0


CHAT_HELP = (
    "Commands, typed or piped: /reset forgets the conversation, /system TEXT sets a new system prompt, /quit leaves, "
    "/help; a line starting with // is sent as a message starting with /."
)


def _chat(args: argparse.Namespace) -> int:
    model, tokenizer, manifest = load_checkpoint(args.ckpt, device=_machine(args))
    check_sampling(args.temperature, args.top_k, args.top_p)
    check_tokenizer(tokenizer)
    if not is_chat_checkpoint(manifest):
        print(
            f"note: {args.ckpt} was never taught to chat: it is a pretrained model that only continues text. "
            "Its replies will not be answers. Fine-tune it first: python -m minigpt_lib sft --base "
            f"{args.ckpt} --out runs/chat",
            file=sys.stderr,
        )
    session = ChatSession(model, tokenizer, system=args.system)
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"Chat with the model. {CHAT_HELP} Ctrl-D leaves; Ctrl-C stops an answer.")
    turn = 0
    while True:
        try:
            line = input("you> ") if interactive else sys.stdin.readline()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        if not interactive and not line:
            return 0
        line = line.rstrip("\n")
        command, _, rest = line.strip().partition(" ")
        if line.startswith("//"):  # a message that begins with a slash
            line = line[1:]
        elif command == "/quit":
            return 0
        elif command == "/reset":
            session.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        elif command == "/system":
            session.set_system(rest.strip() or None)
            print(f"(system prompt: {rest.strip() or 'none'}; conversation cleared)", file=sys.stderr)
            continue
        elif command == "/help":
            print(CHAT_HELP, file=sys.stderr)
            continue
        elif line.startswith("/"):
            print(f"unknown command {command}; {CHAT_HELP}", file=sys.stderr)
            continue
        if not line.strip():
            continue
        if interactive:
            print("bot> ", end="", flush=True)
        try:
            for piece in session.send(line, seed=args.seed + turn, **options):
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            session.undo()
            print("\n(answer stopped; that turn was forgotten)", file=sys.stderr)
            continue
        except ValueError as err:  # a message too long for the model's context
            print(f"error: {err}", file=sys.stderr)
            print(flush=True)  # still one (empty) answer line per turn
            continue
        finally:
            turn += 1
        print(flush=True)
        if session.dropped:
            print(f"(the oldest {session.dropped} messages no longer fit in the context)", file=sys.stderr)


COMMANDS = {
    "train": lambda args: _train_parallel(args) if args.parallel else _train(args),
    "sft": _stage,
    "reward": _stage,
    "ppo": _stage,
    "dpo": _stage,
    "rl": _stage,
    "chatbot": _chatbot,
    "sample": _sample,
    "chat": _chat,
    "tokenizer": lambda args: _tokenizer_train(args) if args.tokenizer_command == "train" else _tokenizer_chat(args),
    "import-gpt2": _import_gpt2,
    "export-web": web.run,
}


def _say(message: str) -> None:
    """Print an error once: under torchrun, only rank 0 does (every rank meets the same error)."""
    if os.environ.get("RANK", "0") == "0":
        print(message, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _build_parser().parse_args(argv)
    world = os.environ.get("WORLD_SIZE", "1")
    if world != "1" and not (args.command == "train" and args.parallel):
        what = "add --parallel ddp (or fsdp) to train on all of them" if args.command == "train" else "run it alone"
        _say(f"error: started by torchrun with {world} processes, but `{args.command}` would run {world} times: {what}")
        return 2
    try:
        return COMMANDS[args.command](args)
    except (CorpusNotFoundError, CheckpointError, UnknownCharacterError, TrainingDivergedError, ValueError) as err:
        _say(f"error: {err}")
        return 2
    except OSError as err:  # a file or folder that cannot be read or written
        _say(f"error: {err}")
        return 2
    except Interrupted as err:
        _say(str(err))
        return 130
    except KeyboardInterrupt:
        _say("\ninterrupted")
        return 130
