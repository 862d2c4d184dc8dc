"""Command line: `python -m minigpt_lib` with `train`, `sample`, `tokenizer`, `sft` (fine-tuning) or `chat`."""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
import time
from pathlib import Path

import torch
from safetensors import SafetensorError

from . import web
from .chat import SPECIAL_TOKENS, ChatSession, chat_tokenizer, check_tokenizer, is_chat_checkpoint
from .chatbot import add_subcommands, run_subcommand
from .checkpoint import (
    MANIFEST,
    CheckpointError,
    folder_lock,
    load_checkpoint,
    other_files,
    read_manifest,
    resume_trainer,
    save_trainer,
)
from .data import CorpusNotFoundError, load_text
from .device import pick_device
from .evaluation import evaluate_chat, format_table
from .generate import stream_text
from .presets import PRESETS, Preset, get_preset
from .sampling import START_TEXT, check_sampling
from .sft import SFT_DATA, SFT_TRAIN, finetune_trainer, resume_finetune, sft_config
from .tasks import ChatData
from .tokenizers import BPETokenizer, CharTokenizer, Tokenizer, UnknownCharacterError, load_tokenizer
from .train import Trainer, TrainingDivergedError


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return value


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

    train = sub.add_parser("train", help="train a GPT on Tiny Shakespeare or your own text")
    train.add_argument("--preset", choices=sorted(PRESETS), help="recipe (default: cpu; with --resume: the run's)")
    train.add_argument("--data", type=Path, help="UTF-8 text file to train on (default: Tiny Shakespeare)")
    train.add_argument(
        "--tokenizer", type=Path, help="tokenizer file from `tokenizer train` (default: one token per character)"
    )
    train.add_argument("--out", type=Path, help="checkpoint folder (default: runs/<preset>)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    train.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out by a new one (other files there are kept)"
    )
    train.add_argument(
        "--time-budget", type=_seconds, help="stop after this many seconds of training (with --resume: this many more)"
    )
    train.add_argument("--max-steps", type=_positive_int, help="override the preset's number of steps (in all)")
    train.add_argument("--seed", type=int, help="override the preset's seed")
    train.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (default)")
    train.add_argument("--threads", type=_positive_int, help="CPU threads for PyTorch (default: PyTorch's choice)")
    train.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="use torch.compile")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("--batch-size", type=int, help="override the preset's batch size (per process with --parallel)")
    train.add_argument(
        "--parallel", choices=("ddp", "fsdp"), help="data-parallel over the processes of `torchrun --nproc_per_node=N`"
    )

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
    sample.add_argument("--device", default="auto")

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

    gpt2 = sub.add_parser("import-gpt2", help="turn a Hugging Face GPT-2 folder into a checkpoint of ours")
    gpt2.add_argument("--from", dest="source", type=Path, required=True, help="Hugging Face GPT-2 folder")
    gpt2.add_argument("--out", type=Path, required=True, help="checkpoint folder to write (must not exist yet)")
    chat_tok = tokenizer_sub.add_parser("chat", help="save the chat tokenizer (bytes + chat special tokens)")
    chat_tok.add_argument("--out", type=Path, required=True, help="JSON file to write the tokenizer to")

    sft = sub.add_parser("sft", help="fine-tune a pretrained checkpoint into a chat model (chapter 8)")
    sft.add_argument("--base", type=Path, help="pretrained checkpoint (its tokenizer must be the chat tokenizer)")
    sft.add_argument("--out", type=Path, required=True, help="folder for the fine-tuned checkpoint")
    sft.add_argument("--data", type=Path, help="text to take words and names from (default: Shakespeare)")
    sft.add_argument("--resume", action="store_true", help="continue the fine-tuning run in --out")
    sft.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out by a new one (other files there are kept)"
    )
    sft.add_argument("--time-budget", type=_seconds, help="stop after this many seconds of training")
    sft.add_argument("--max-steps", type=_positive_int, help=f"number of steps (default {SFT_TRAIN['max_steps']})")
    sft.add_argument("--seed", type=int, help="seed of the batch order")
    sft.add_argument("--bare", action="store_true", help="arithmetic answered with the bare number, no working")
    sft.add_argument("--conversations", type=int, help=f"training conversations (default {SFT_DATA['n_train']})")
    sft.add_argument("--eval", type=int, default=50, help="held-out prompts per family scored at the end (0: none)")
    sft.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (default)")
    sft.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: PyTorch's choice)")
    sft.add_argument("--quiet", action="store_true", help="no progress bar")

    chat = sub.add_parser("chat", help="chat with a fine-tuned checkpoint (type /help for commands)")
    chat.add_argument("--ckpt", type=Path, required=True, help="checkpoint folder written by `sft`")
    chat.add_argument("--system", help="system prompt (change it later with /system TEXT)")
    chat.add_argument("--max-new-tokens", type=int, default=200)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 (default) picks the most likely token")
    chat.add_argument("--top-k", type=int, help="sample only among the k most likely tokens")
    chat.add_argument("--top-p", type=float, help="sample only among the most likely tokens that make up p")
    chat.add_argument("--seed", type=int, default=1337)
    chat.add_argument("--device", default="auto")
    add_subcommands(sub)
    web.add_arguments(sub.add_parser("export-web", help="write a checkpoint's model for the book's pages (JavaScript)"))
    return parser


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


def _encode_split(tokenizer: Tokenizer, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Split `text` 90/10 by characters, then encode each part (the same split for every tokenizer)."""
    n = int(0.9 * len(text))
    return tokenizer.encode_tensor(text[:n]), tokenizer.encode_tensor(text[n:])


def _rank() -> int:
    """This process's rank under torchrun (0 when not distributed)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _out_problem(out: Path, resume: bool, overwrite: bool) -> str | None:
    """Why `out` cannot take this run (None if it can): nothing the user did not ask for is ever replaced."""
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


def _train(args: argparse.Namespace) -> int:
    if args.resume and args.overwrite:
        print("error: give --resume (continue the run) or --overwrite (start a new one), not both", file=sys.stderr)
        return 2
    preset = get_preset(args.preset or "cpu")
    out = args.out or Path("runs") / (args.preset or "cpu")
    device = pick_device(None if args.device == "auto" else args.device)
    problem = _out_problem(out, args.resume, args.overwrite)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    text = load_text(args.data)
    tokenizer = None if args.tokenizer is None else load_tokenizer(args.tokenizer)
    if args.threads or preset.threads:
        torch.set_num_threads(args.threads or preset.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"error: cannot create the folder {out} ({err.strerror}); choose one you can write to", file=sys.stderr)
        return 2
    try:
        # Under torchrun only rank 0 writes, so only rank 0 takes the folder's lock.
        lock = folder_lock(out) if _rank() == 0 else contextlib.nullcontext()
        with lock:  # checks that the folder is writable, before any training
            problem = _out_problem(out, args.resume, args.overwrite)  # again, now that no one else can write there
            if problem:
                print(f"error: {problem}", file=sys.stderr)
                return 2
            return _run(args, preset, out, device, text, tokenizer)
    finally:
        if created:
            try:
                out.rmdir()  # only if nothing was saved: a folder with files is never removed
            except OSError:
                pass


def _run(
    args: argparse.Namespace, preset: Preset, out: Path, device: torch.device, text: str, tokenizer: Tokenizer | None
) -> int:
    """Build or resume the trainer, train, and save into the locked folder `out`."""
    # A time budget alone trains until the clock runs out (the preset's step count no longer applies).
    max_steps = args.max_steps if args.max_steps is not None else (10**9 if args.time_budget else None)
    overrides = dict(max_steps=max_steps, seed=args.seed, time_budget=args.time_budget, compile=args.compile)
    overrides["batch_size"] = args.batch_size
    if args.resume:
        _, saved_tokenizer, manifest = load_checkpoint(out)
        if saved_tokenizer is None or "train_state" not in manifest:
            print(f"error: {out} holds a model without tokenizer or training state; it cannot resume", file=sys.stderr)
            return 2
        if tokenizer is not None and tokenizer != saved_tokenizer:
            print(f"error: {args.tokenizer} is not the tokenizer the run in {out} was trained with", file=sys.stderr)
            return 2
        if args.preset and preset.model_config(saved_tokenizer.vocab_size).to_dict() != manifest["model_config"]:
            print(
                f"error: the run in {out} was not trained with --preset {args.preset} (its model has another shape); "
                "drop --preset to continue it with its own settings",
                file=sys.stderr,
            )
            return 2
        tokenizer = saved_tokenizer
        if args.time_budget:  # seconds more, on top of the time the run has already trained
            overrides["time_budget"] = manifest["train_state"]["elapsed"] + args.time_budget
        train_ids, val_ids = _encode_split(tokenizer, text)
        trainer = resume_trainer(
            out, train_ids, val_ids, device=device, **{k: v for k, v in overrides.items() if v is not None}
        )
        print(f"resuming {out} at step {trainer.step} with the run's own settings")
    else:
        tokenizer = CharTokenizer.from_text(text) if tokenizer is None else tokenizer
        train_ids, val_ids = _encode_split(tokenizer, text)
        torch.manual_seed(preset.train_config(**overrides).seed)
        from .model import GPT

        model = GPT(preset.model_config(tokenizer.vocab_size))
        trainer = Trainer(
            model, train_ids, val_ids, preset.train_config(**overrides), device=device, tokenizer=tokenizer
        )
    write = lambda t: save_trainer(t, out)
    if args.parallel:
        from . import distributed

        distributed.parallelize(trainer, args.parallel)
        write = lambda t: distributed.save(t, out, args.parallel)
    n_params = trainer.model.num_params()
    print(
        f"preset {args.preset or 'cpu'}: {n_params / 1e6:.2f}M parameters on {trainer.device}, "
        f"{len(train_ids):,} training tokens, vocabulary {tokenizer.vocab_size}"
    )
    first_step = trainer.step
    saved = [trainer.step if args.resume else None]  # step of the checkpoint in `out`

    def save(t: Trainer) -> None:
        try:
            write(t)
        except (OSError, SafetensorError) as err:
            kept = "nothing was saved yet" if saved[0] is None else f"the checkpoint of step {saved[0]} is intact"
            raise CheckpointError(f"could not write the checkpoint to {out} ({err}); {kept}") from err
        saved[0] = t.step

    def kept() -> str:
        return f"{out} keeps the checkpoint of step {saved[0]}" if saved[0] is not None else "nothing was saved"

    start = time.perf_counter()
    try:
        trainer.train(progress_bar=not args.quiet, on_eval=save)
    except KeyboardInterrupt:
        print("\ninterrupted: saving (Ctrl-C again stops without saving)", file=sys.stderr)
        try:
            save(trainer)
        except KeyboardInterrupt:
            print(f"interrupted again: not saved; {kept()}", file=sys.stderr)
            return 130
        print(f"interrupted at step {trainer.step}; saved to {out}; continue with --resume", file=sys.stderr)
        return 130
    except TrainingDivergedError as err:
        print(f"error: {err}\nNothing non-finite was saved: {kept()}.", file=sys.stderr)
        return 2
    wall = time.perf_counter() - start
    save(trainer)
    if args.parallel:
        distributed.print_memory(trainer)
    val_loss = trainer.evaluate()
    steps = trainer.step - first_step
    tokens = steps * trainer.config.batch_size * trainer.block_size * getattr(trainer.sampler, "world_size", 1)
    this_run = f" ({steps} in this session)" if args.resume else ""
    print(
        f"trained {trainer.step} steps{this_run} in {wall:.1f} s ({tokens / max(wall, 1e-9):,.0f} tokens/s); "
        f"saved to {out}"
    )
    print(f"val_loss={val_loss:.4f}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = pick_device(args.device)
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
    if out.is_dir():
        print(f"error: --out {out} is a folder; give a file name, such as {out / 'tokenizer.json'}", file=sys.stderr)
        return 2
    if (out.exists() or out.is_symlink()) and not args.overwrite and not _is_tokenizer_file(out):
        print(
            f"error: {out} exists and is not a tokenizer file; add --overwrite to replace it, or choose another --out",
            file=sys.stderr,
        )
        return 2
    text = load_text(args.data)
    start = time.perf_counter()
    tokenizer = BPETokenizer.train(text, args.vocab_size, args.pattern, args.special, progress_bar=not args.quiet)
    seconds = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
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


def _tokenizer_chat(args: argparse.Namespace) -> int:
    args.out.parent.mkdir(parents=True, exist_ok=True)
    chat_tokenizer().save(args.out)
    print(f"saved the chat tokenizer ({chat_tokenizer().vocab_size} tokens: 256 bytes + {', '.join(SPECIAL_TOKENS)})")
    print(f"pretrain a base model with it: python -m minigpt_lib train --tokenizer {args.out} --out runs/chat-base")
    return 0


def _sft(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = None if args.device == "auto" else args.device
    text = load_text(args.data)
    problem = _out_problem(args.out, args.resume, args.overwrite)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    created = not args.out.exists()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with folder_lock(args.out):
            return _sft_run(args, text, device)
    finally:
        if created:
            with contextlib.suppress(OSError):
                args.out.rmdir()  # only if nothing was saved: a folder with files is never removed


def _sft_run(args: argparse.Namespace, text: str, device: str | None) -> int:
    max_steps = args.max_steps or (10**9 if args.time_budget else None)
    overrides = dict(max_steps=max_steps, time_budget=args.time_budget, seed=args.seed)
    if args.resume:
        trainer = resume_finetune(args.out, text, device=device, **{k: v for k, v in overrides.items() if v})
        print(f"resuming {args.out} at step {trainer.step}")
    else:
        if args.base is None:
            print("error: give --base, the pretrained checkpoint to fine-tune", file=sys.stderr)
            return 2
        model, tokenizer, _ = load_checkpoint(args.base)
        settings = {"cot": not args.bare, "n_train": args.conversations or SFT_DATA["n_train"]}
        trainer = finetune_trainer(model, tokenizer, text, sft_config(**overrides), settings, device=device)
        trainer.meta["base"] = str(args.base)
    print(
        f"fine-tuning {trainer.model.num_params() / 1e6:.2f}M parameters on {trainer.device}: "
        f"{len(trainer.sampler)} windows of packed conversations"
    )
    start = time.perf_counter()
    try:
        trainer.train(progress_bar=not args.quiet, on_eval=lambda t: save_trainer(t, args.out), desc="fine-tuning")
    except KeyboardInterrupt:
        save_trainer(trainer, args.out)
        print(f"\ninterrupted at step {trainer.step}; saved to {args.out}; continue with --resume", file=sys.stderr)
        return 130
    save_trainer(trainer, args.out)
    print(f"fine-tuned {trainer.step} steps in {time.perf_counter() - start:.1f} s; saved to {args.out}")
    print(f"val_loss={trainer.evaluate():.4f} (assistant tokens of held-out conversations)")
    if args.eval:
        data = ChatData(text, max_tokens=trainer.block_size + 1)
        examples = data.heldout_examples(args.eval, cot=trainer.meta["data"]["cot"])
        table, _ = evaluate_chat(trainer.model, trainer.tokenizer, examples)
        print(format_table({"fine-tuned": table}))
    return 0


def _chat(args: argparse.Namespace) -> int:
    device = "cpu" if args.device == "auto" and not torch.cuda.is_available() else args.device
    model, tokenizer, manifest = load_checkpoint(args.ckpt, device="cuda" if device == "auto" else device)
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
        print("Chat with the model. Commands: /reset, /system TEXT, /quit (or Ctrl-D). Ctrl-C stops an answer.")
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
        if command == "/quit":
            return 0
        if command == "/reset":
            session.reset()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if command == "/system":
            session.set_system(rest.strip() or None)
            print(f"(system prompt: {rest.strip() or 'none'}; conversation cleared)", file=sys.stderr)
            continue
        if command == "/help":
            print("/reset: forget the conversation; /system TEXT: new system prompt; /quit: leave", file=sys.stderr)
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


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "train":
            return _train_parallel(args) if args.parallel else _train(args)
        if args.command == "tokenizer":
            return _tokenizer_train(args) if args.tokenizer_command == "train" else _tokenizer_chat(args)
        if args.command == "import-gpt2":
            return _import_gpt2(args)
        if args.command == "sft":
            return _sft(args)
        if args.command == "chat":
            return _chat(args)
        if args.command == "export-web":
            return web.run(args)
        if args.command in ("reward", "ppo", "dpo", "chatbot"):
            return run_subcommand(args, load_text(None))
        return _sample(args)
    except (CorpusNotFoundError, CheckpointError, UnknownCharacterError, TrainingDivergedError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file or folder that cannot be read or written
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
