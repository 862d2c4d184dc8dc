"""BPE speed benchmark: training time, and encoding throughput against tiktoken on the same merges.

Trains a byte-level BPE tokenizer to `--vocab-size` tokens (default 4096) on Tiny Shakespeare (or
`--data`) and prints the training time. Then builds a `tiktoken.Encoding` from the same merges and
split pattern, checks that it gives exactly our token ids on the whole text, and prints the encoding
throughput in MB/s (of UTF-8 input) of:

- tiktoken (Rust);
- our fast path, `encode_ordinary`, cold (a freshly loaded tokenizer, empty chunk cache) and warm
  (the cache already holds the text's chunks, the steady state when a corpus is encoded in pieces);
- our from-scratch path, `encode_ordinary_reference` (merges applied to every chunk, no cache).

Each encoding figure is the best of `--repeats` runs. Targets: training under 60 s; our warm fast
path within 2x of tiktoken. These are printed figures, not tests: they depend on the machine and
on what else runs on it.

    python bench/bpe_speed.py
    python bench/bpe_speed.py --vocab-size 1024 --pattern gpt2
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import tiktoken

from minigpt_lib import BPETokenizer, load_text
from minigpt_lib.settings import hardware_description


def best_time(run: Callable[[], object], repeats: int, before: Callable[[], object] = lambda: None) -> float:
    """Best wall time of `repeats` calls of `run`, each after a call of `before` (not timed)."""
    best = float("inf")
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="UTF-8 text file (default: Tiny Shakespeare)")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--pattern", default="gpt4")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    text = load_text(args.data)
    megabytes = len(text.encode("utf-8")) / 1e6
    print(hardware_description())
    print(f"text: {len(text):,} characters, {megabytes:.2f} MB")

    start = time.perf_counter()
    tokenizer = BPETokenizer.train(text, args.vocab_size, args.pattern)
    train_seconds = time.perf_counter() - start
    print(f"training to {tokenizer.vocab_size} tokens ({len(tokenizer.merges)} merges): {train_seconds:.2f} s")

    reference = tiktoken.Encoding(
        name="minigpt-bench", pat_str=tokenizer.pattern, mergeable_ranks=tokenizer.mergeable_ranks(), special_tokens={}
    )
    ids = reference.encode_ordinary(text)
    fresh = BPETokenizer(tokenizer.merges, tokenizer.pattern)
    assert fresh.encode_ordinary(text) == ids, "our fast path and tiktoken disagree"
    assert fresh.encode_ordinary_reference(text) == ids, "our from-scratch path and tiktoken disagree"
    print(f"identical ids from tiktoken, our fast path and our from-scratch path: {len(ids):,} tokens")

    timings = {
        "tiktoken": best_time(lambda: reference.encode_ordinary(text), args.repeats),
        "ours, fast path, cold cache": best_time(
            lambda: fresh.encode_ordinary(text), args.repeats, before=fresh.clear_cache
        ),
        "ours, fast path, warm cache": best_time(
            lambda: fresh.encode_ordinary(text), args.repeats, before=lambda: fresh.encode_ordinary(text)
        ),
        "ours, from scratch": best_time(lambda: fresh.encode_ordinary_reference(text), max(1, args.repeats // 2)),
    }
    print(f"\n{'encoder':30} {'seconds':>8} {'MB/s':>7} {'time / tiktoken':>16}")
    for name, seconds in timings.items():
        print(f"{name:30} {seconds:8.3f} {megabytes / seconds:7.2f} {seconds / timings['tiktoken']:15.1f}x")
    print(f"\ntarget: training under 60 s: {'met' if train_seconds < 60 else 'NOT met'} ({train_seconds:.1f} s)")
    ratio = timings["ours, fast path, warm cache"] / timings["tiktoken"]
    print(f"target: warm fast path within 2x of tiktoken: {'met' if ratio <= 2 else 'NOT met'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
