"""Byte-level byte pair encoding (BPE): pre-splitting, pair counting, merging and training.

The algorithms only; `minigpt_lib.tokenizers.BPETokenizer` wraps them into a tokenizer.

- Text is first cut into chunks by a regular expression (the *split pattern*), so that merges
  never cross from a word into the space or punctuation around it. Each chunk is encoded as
  UTF-8 bytes: the 256 byte values are the first 256 tokens, so any text can be encoded.
- Training repeatedly finds the most frequent adjacent pair of tokens and merges it into a new
  token, until the vocabulary has the requested size. Ties between equally frequent pairs go to
  the smallest pair (compared as tuples of ids), so training is deterministic.
- Encoding applies the learned merges to each chunk in the order they were learned: while some
  adjacent pair is a merge, merge (every occurrence, left to right) the one learned first.
"""

from __future__ import annotations

import heapq
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from itertools import pairwise

import regex
from tqdm.auto import tqdm

GPT2_SPLIT_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|"""
    r"""\s+(?!\S)|\s"""
)
SPLIT_PATTERNS = {"gpt2": GPT2_SPLIT_PATTERN, "gpt4": GPT4_SPLIT_PATTERN}

Pair = tuple[int, int]

# On ASCII text the named patterns' character classes are small sets, and Python's own `re` (which
# has possessive quantifiers since 3.11) splits such text about twice as fast as `regex`.
_ASCII_SPACE = r"\t\n\x0b\x0c\r "  # what `regex` calls \s among ASCII characters (`re` adds \x1c-\x1f)
_ASCII_CLASSES = [
    (r"[^\r\n\p{L}\p{N}]", r"[^\r\nA-Za-z0-9]"),
    (r"[^\s\p{L}\p{N}]", f"[^{_ASCII_SPACE}A-Za-z0-9]"),
    (r"\p{L}", "[A-Za-z]"),
    (r"\p{N}", "[0-9]"),
    (r"\s", f"[{_ASCII_SPACE}]"),
    (r"\S", f"[^{_ASCII_SPACE}]"),
]


def ascii_split_pattern(pattern: str) -> str | None:
    """A pattern for Python's `re` that splits ASCII text exactly as the named `pattern` does, or None.

    Only the built-in GPT-2 and GPT-4 patterns are translated; a regex of your own gets None.
    """
    if pattern not in SPLIT_PATTERNS.values() or sys.version_info < (3, 11):
        return None
    for unicode_class, ascii_class in _ASCII_CLASSES:
        pattern = pattern.replace(unicode_class, ascii_class)
    return pattern


def split_pattern(pattern: str) -> str:
    """The regular expression for a pattern name ('gpt2', 'gpt4') or a regex given as is."""
    if not isinstance(pattern, str):
        raise ValueError(f"a split pattern must be a name (gpt4, gpt2) or a regex as a string, got {pattern!r}")
    if pattern in SPLIT_PATTERNS:
        return SPLIT_PATTERNS[pattern]
    if not pattern:
        raise ValueError("the split pattern is empty; use gpt4 (the default), gpt2, or a regex that matches text")
    if pattern.isidentifier():
        names = ", ".join(SPLIT_PATTERNS)
        raise ValueError(f"unknown split pattern {pattern!r}; choose one of {names} or give a regular expression")
    try:
        regex.compile(pattern)
    except regex.error as err:
        raise ValueError(f"the split pattern {pattern!r} is not a valid regular expression: {err}") from err
    return pattern


def pattern_timeout(text: str) -> float:
    """Seconds a regex of the user's own may take to split `text`: 1 s plus 10 s per million characters."""
    return 1.0 + 1e-5 * len(text)


def split_text(pattern: str | regex.Pattern, text: str) -> list[str]:
    """The chunks of `text`: the matches of the split `pattern`, in order, and the text between them.

    The GPT-2 and GPT-4 patterns match every character. A regex of your own may not (`[a-z]+` skips
    capitals and spaces): what it does not match becomes chunks of its own, so no text is ever dropped.
    It also runs under a time limit (`pattern_timeout`), so a regex that backtracks catastrophically is
    an error instead of a hang.
    """
    compiled = regex.compile(pattern) if isinstance(pattern, str) else pattern
    if compiled.pattern in SPLIT_PATTERNS.values():
        return compiled.findall(text)
    limit = pattern_timeout(text)
    chunks, end = [], 0
    try:
        for match in compiled.finditer(text, timeout=limit):
            if match.start() > end:
                chunks.append(text[end : match.start()])
            if match.end() > match.start():
                chunks.append(match.group())
            end = max(end, match.end())
    except TimeoutError:
        raise ValueError(
            f"the split pattern {compiled.pattern!r} took more than {limit:.0f} s on {len(text):,} characters "
            "(it probably backtracks catastrophically); use gpt4, gpt2 or a simpler regex"
        ) from None
    if end < len(text):
        chunks.append(text[end:])
    return chunks


def pair_counts(ids: Iterable[int], counts: dict[Pair, int] | None = None, weight: int = 1) -> dict[Pair, int]:
    """How often each adjacent pair occurs in `ids` (added, `weight` times, to `counts` if given)."""
    counts = {} if counts is None else counts
    for pair in pairwise(ids):
        counts[pair] = counts.get(pair, 0) + weight
    return counts


def merge_pair(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """`ids` with every occurrence of `pair`, from left to right, replaced by `new_id`."""
    out = []
    i, n = 0, len(ids)
    first, second = pair
    while i < n:
        if i < n - 1 and ids[i] == first and ids[i + 1] == second:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def encode_chunk(chunk: bytes, ranks: dict[Pair, int]) -> list[int]:
    """Token ids of one pre-split chunk: apply the merges (`ranks`: pair -> new id) in learned order."""
    ids = list(chunk)
    while len(ids) >= 2:
        mergeable = [pair for pair in pairwise(ids) if pair in ranks]
        if not mergeable:
            break
        pair = min(mergeable, key=ranks.__getitem__)
        ids = merge_pair(ids, pair, ranks[pair])
    return ids


def train_merges(
    text: str, num_merges: int, pattern: str = "gpt4", progress_bar: bool = False, desc: str = "merges"
) -> list[Pair]:
    """The first `num_merges` BPE merges learned from `text`; merge i creates token 256 + i.

    Incremental: the distinct chunks are counted once; the pair counts and an index from each
    pair to the chunks that hold it are kept up to date, so each merge only revisits those chunks.
    """
    if num_merges < 0:
        raise ValueError(f"num_merges must be >= 0, got {num_merges}")
    chunks = Counter(split_text(split_pattern(pattern), text))
    words = [list(chunk.encode("utf-8")) for chunk in chunks]
    freqs = list(chunks.values())
    counts: dict[Pair, int] = defaultdict(int)
    where: dict[Pair, set[int]] = defaultdict(set)
    for w, (ids, freq) in enumerate(zip(words, freqs, strict=True)):
        for pair in pairwise(ids):
            counts[pair] += freq
            where[pair].add(w)
    heap = [(-count, pair) for pair, count in counts.items()]
    heapq.heapify(heap)  # lazily updated: an entry whose count is no longer current is skipped
    merges: list[Pair] = []
    for new_id in tqdm(range(256, 256 + num_merges), disable=not progress_bar, desc=desc, unit="merge"):
        while heap and counts.get(heap[0][1], 0) != -heap[0][0]:
            heapq.heappop(heap)
        if not heap:
            raise ValueError(
                f"the text only allows {len(merges)} merges (every chunk is a single token by then), "
                f"not {num_merges}; use more text or a smaller vocabulary"
            )
        _, best = heapq.heappop(heap)
        merges.append(best)
        delta: dict[Pair, int] = defaultdict(int)
        for w in where.pop(best):
            ids, freq = words[w], freqs[w]
            merged = merge_pair(ids, best, new_id)
            old_pairs, new_pairs = list(pairwise(ids)), list(pairwise(merged))
            for pair in old_pairs:
                delta[pair] -= freq
            for pair in new_pairs:
                delta[pair] += freq
            for pair in set(old_pairs) - set(new_pairs) - {best}:
                where[pair].discard(w)
            for pair in new_pairs:
                where[pair].add(w)
            words[w] = merged
        for pair, change in delta.items():
            if change:
                counts[pair] += change
                if counts[pair] > 0:
                    heapq.heappush(heap, (-counts[pair], pair))
                else:
                    del counts[pair]
                    where.pop(pair, None)
    return merges
