"""Command line: `python -m minigpt_lib COMMAND`.

Training: `train` (pretraining), `sft`, `reward`, `ppo`, `dpo`, `rl` (PPO on a checker), `chatbot` (all five
stages): declared and run in `train_commands`, with the options every command shares. Here: the parser, the
commands that use models, `sample`, `chat`, `export-web`, the tools `tokenizer train|chat` and `import-gpt2`,
and `main`, which turns every error a user can cause into one line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import web
from .chat import SPECIAL_TOKENS, ChatSession, chat_tokenizer, check_tokenizer, is_chat_checkpoint
from .checkpoint import CheckpointError, load_checkpoint
from .data import CorpusNotFoundError, load_text
from .generate import stream_text
from .sampling import START_TEXT, check_sampling
from .stages import Interrupted
from .tokenizers import BPETokenizer, UnknownCharacterError, load_tokenizer
from .train import TrainingDivergedError
from .train_commands import (
    add_rl,
    add_stages,
    add_train,
    machine,
    machine_options,
    positive_int,
    run_chatbot,
    run_stage_command,
    run_train,
    run_train_parallel,
)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m minigpt_lib", description="Train and sample MiniGPT models.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train(sub)
    add_stages(sub)
    add_rl(sub)

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
    machine_options(sample)

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
    chat.add_argument("--max-new-tokens", type=positive_int, default=200)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 (default) picks the most likely token")
    chat.add_argument("--top-k", type=int, help="sample only among the k most likely tokens")
    chat.add_argument("--top-p", type=float, help="sample only among the most likely tokens that make up p")
    chat.add_argument("--seed", type=int, default=1337)
    machine_options(chat)
    web.add_arguments(sub.add_parser("export-web", help="write a checkpoint's model for the book's pages (JavaScript)"))
    return parser


def _sample(args: argparse.Namespace) -> int:
    device = machine(args)
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
    model, tokenizer, manifest = load_checkpoint(args.ckpt, device=machine(args))
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
    "train": lambda args: run_train_parallel(args) if args.parallel else run_train(args),
    "sft": run_stage_command,
    "reward": run_stage_command,
    "ppo": run_stage_command,
    "dpo": run_stage_command,
    "rl": run_stage_command,
    "chatbot": run_chatbot,
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
