"""Command line: `python -m minigpt_lib` with `train`, `sample`, `tokenizer`, `sft` (fine-tuning) or `chat`."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .chat import SPECIAL_TOKENS, ChatSession, chat_tokenizer, check_tokenizer, is_chat_checkpoint
from .chatbot import add_subcommands, run_subcommand
from .chatdata import ChatData, evaluate_chat, format_table
from .checkpoint import CheckpointError, load_checkpoint, resume_trainer, save_trainer
from .data import CorpusNotFoundError, load_text
from .presets import PRESETS, get_preset
from .sampling import START_TEXT, check_sampling, stream_text
from .sft import SFT_DATA, SFT_TRAIN, finetune_trainer, resume_finetune, sft_config
from .tokenizers import BPETokenizer, CharTokenizer, Tokenizer, UnknownCharacterError, load_tokenizer
from .train import Trainer, TrainingDivergedError


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m minigpt_lib", description="Train and sample MiniGPT models.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a GPT on Tiny Shakespeare or your own text")
    train.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="recipe to use (default: cpu)")
    train.add_argument("--data", type=Path, help="UTF-8 text file to train on (default: Tiny Shakespeare)")
    train.add_argument(
        "--tokenizer", type=Path, help="tokenizer file from `tokenizer train` (default: one token per character)"
    )
    train.add_argument("--out", type=Path, help="checkpoint folder (default: runs/<preset>)")
    train.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    train.add_argument("--time-budget", type=float, help="stop after this many seconds of training")
    train.add_argument("--max-steps", type=int, help="override the preset's number of steps")
    train.add_argument("--seed", type=int, help="override the preset's seed")
    train.add_argument("--device", default="auto", help="cuda, mps, cpu or auto (default)")
    train.add_argument("--threads", type=int, help="CPU threads for PyTorch (default: PyTorch's choice)")
    train.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="use torch.compile")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

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
    bpe.add_argument("--pattern", default="gpt4", help="pre-split regex: gpt4 (default), gpt2, or a regex of your own")
    bpe.add_argument("--special", action="append", default=[], metavar="NAME", help="a special token (repeatable)")
    bpe.add_argument("--quiet", action="store_true", help="no progress bar")
    chat_tok = tokenizer_sub.add_parser("chat", help="save the chat tokenizer (bytes + chat special tokens)")
    chat_tok.add_argument("--out", type=Path, required=True, help="JSON file to write the tokenizer to")

    sft = sub.add_parser("sft", help="fine-tune a pretrained checkpoint into a chat model (chapter 8)")
    sft.add_argument("--base", type=Path, help="pretrained checkpoint (its tokenizer must be the chat tokenizer)")
    sft.add_argument("--out", type=Path, required=True, help="folder for the fine-tuned checkpoint")
    sft.add_argument("--data", type=Path, help="text to take words and names from (default: Shakespeare)")
    sft.add_argument("--resume", action="store_true", help="continue the fine-tuning run in --out")
    sft.add_argument("--time-budget", type=float, help="stop after this many seconds of training")
    sft.add_argument("--max-steps", type=int, help=f"number of steps (default {SFT_TRAIN['max_steps']})")
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
    return parser


def _encode_split(tokenizer: Tokenizer, text: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Split `text` 90/10 by characters, then encode each part (the same split for every tokenizer)."""
    n = int(0.9 * len(text))
    return tokenizer.encode_tensor(text[:n]), tokenizer.encode_tensor(text[n:])


def _train(args: argparse.Namespace) -> int:
    preset = get_preset(args.preset)
    out = args.out or Path("runs") / args.preset
    if args.threads or preset.threads:
        torch.set_num_threads(args.threads or preset.threads)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    text = load_text(args.data)
    # A time budget alone trains until the clock runs out (the preset's step count no longer applies).
    max_steps = args.max_steps or (10**9 if args.time_budget else None)
    overrides = dict(max_steps=max_steps, seed=args.seed, time_budget=args.time_budget, compile=args.compile)
    device = None if args.device == "auto" else args.device
    if args.resume:
        if not (out / "checkpoint.json").is_file():
            print(
                f"error: --resume given but {out} holds no checkpoint; drop --resume to start afresh", file=sys.stderr
            )
            return 2
        probe, tokenizer, _ = load_checkpoint(out)
        del probe
        if args.tokenizer is not None and load_tokenizer(args.tokenizer) != tokenizer:
            print(f"error: {args.tokenizer} is not the tokenizer the run in {out} was trained with", file=sys.stderr)
            return 2
        train_ids, val_ids = _encode_split(tokenizer, text)
        trainer = resume_trainer(
            out, train_ids, val_ids, device=device, **{k: v for k, v in overrides.items() if v is not None}
        )
        print(f"resuming {out} at step {trainer.step}")
    else:
        tokenizer = CharTokenizer.from_text(text) if args.tokenizer is None else load_tokenizer(args.tokenizer)
        train_ids, val_ids = _encode_split(tokenizer, text)
        torch.manual_seed(preset.train_config(**overrides).seed)
        from .model import GPT

        model = GPT(preset.model_config(tokenizer.vocab_size))
        trainer = Trainer(
            model, train_ids, val_ids, preset.train_config(**overrides), device=device, tokenizer=tokenizer
        )
    n_params = trainer.model.num_params()
    print(
        f"preset {args.preset}: {n_params / 1e6:.2f}M parameters on {trainer.device}, "
        f"{len(train_ids):,} training tokens, vocabulary {tokenizer.vocab_size}"
    )
    start = time.perf_counter()
    try:
        trainer.train(progress_bar=not args.quiet, on_eval=lambda t: save_trainer(t, out))
    except KeyboardInterrupt:
        save_trainer(trainer, out)
        print(f"\ninterrupted at step {trainer.step}; saved to {out}; continue with --resume", file=sys.stderr)
        return 130
    wall = time.perf_counter() - start
    save_trainer(trainer, out)
    val_loss = trainer.evaluate()
    tokens = trainer.step * trainer.config.batch_size * trainer.block_size
    print(f"trained {trainer.step} steps in {wall:.1f} s ({tokens / max(wall, 1e-9):,.0f} tokens/s); saved to {out}")
    print(f"val_loss={val_loss:.4f}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    device = torch.device("cpu") if args.device == "auto" and not torch.cuda.is_available() else None
    model, tokenizer, _ = load_checkpoint(
        args.ckpt, device=device or ("cuda" if args.device == "auto" else args.device)
    )
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
    if args.stream:
        print(prompt, end="", flush=True)
        for piece in pieces:
            print(piece, end="", flush=True)
        print()
    else:
        print(prompt + "".join(pieces))
    return 0


def _tokenizer_train(args: argparse.Namespace) -> int:
    text = load_text(args.data)
    start = time.perf_counter()
    tokenizer = BPETokenizer.train(text, args.vocab_size, args.pattern, args.special, progress_bar=not args.quiet)
    seconds = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(args.out)
    n_tokens = len(tokenizer.encode_ordinary(text))
    print(f"learned {len(tokenizer.merges)} merges in {seconds:.1f} s; vocabulary of {tokenizer.vocab_size}")
    print(f"saved to {args.out}")
    print(f"{len(text):,} characters -> {n_tokens:,} tokens ({len(text) / max(n_tokens, 1):.2f} characters per token)")
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
    has_checkpoint = (args.out / "checkpoint.json").is_file()
    max_steps = args.max_steps or (10**9 if args.time_budget else None)
    overrides = dict(max_steps=max_steps, time_budget=args.time_budget, seed=args.seed)
    if args.resume:
        if not has_checkpoint:
            print(f"error: --resume given but {args.out} holds no checkpoint; drop --resume", file=sys.stderr)
            return 2
        trainer = resume_finetune(args.out, text, device=device, **{k: v for k, v in overrides.items() if v})
        print(f"resuming {args.out} at step {trainer.step}")
    else:
        if has_checkpoint:
            print(f"error: {args.out} already holds a checkpoint; pass --resume or another --out", file=sys.stderr)
            return 2
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
    options = dict(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p
    )
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
            return _train(args)
        if args.command == "tokenizer":
            return _tokenizer_train(args) if args.tokenizer_command == "train" else _tokenizer_chat(args)
        if args.command == "sft":
            return _sft(args)
        if args.command == "chat":
            return _chat(args)
        if args.command in ("reward", "ppo", "dpo", "chatbot"):
            return run_subcommand(args, load_text(None))
        return _sample(args)
    except (CorpusNotFoundError, CheckpointError, UnknownCharacterError, TrainingDivergedError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
