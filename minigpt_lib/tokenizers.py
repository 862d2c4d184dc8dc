"""Tokenizers: text to integer ids and back, one token per character or byte-level BPE."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Collection, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import regex
import torch

from .bpe import SPLIT_PATTERNS, ascii_split_pattern, encode_chunk, split_pattern, split_text, train_merges


class UnknownCharacterError(ValueError):
    """A character that is not in the tokenizer's vocabulary."""


def _write_text(path: str | Path, text: str) -> None:
    """Write `text` to `path` through a temporary file renamed over it, so `path` is never half-written."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name for the tokenizer, such as {path / 'tokenizer.json'}")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of characters of a text."""

    kind = "char"

    def __init__(self, chars: list[str] | str):
        if not isinstance(chars, (str, list, tuple)):
            raise ValueError(f"the vocabulary must be a string or a list of characters, got {type(chars).__name__}")
        chars = list(chars)
        if len(set(chars)) != len(chars):
            raise ValueError("the vocabulary has repeated characters")
        if any(len(c) != 1 for c in chars):
            raise ValueError("every vocabulary entry of a CharTokenizer must be one character")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Build the vocabulary from every distinct character of `text`."""
        if not text:
            raise ValueError("cannot build a vocabulary from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        """Number of distinct tokens."""
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`."""
        try:
            return [self.stoi[c] for c in text]
        except KeyError as err:
            char = err.args[0]
            position = text.index(char)
            raise UnknownCharacterError(
                f"character {char!r} (U+{ord(char):04X}) at position {position} is not in the "
                f"vocabulary of {self.vocab_size} characters; remove it from the text or build "
                "the tokenizer from text that contains it"
            ) from None

    def encode_tensor(self, text: str) -> torch.Tensor:
        """Token ids of `text` as a 1-D long tensor."""
        return torch.tensor(self.encode(text), dtype=torch.long)

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of a sequence of token ids."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        for i in ids:
            if not isinstance(i, int) or not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i!r} is outside the vocabulary 0..{self.vocab_size - 1}")
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description of the tokenizer."""
        return {"kind": self.kind, "chars": "".join(self.chars)}

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as readable JSON."""
        _write_text(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        """Read a tokenizer written by `save`."""
        return tokenizer_from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.chars == other.chars


class BPETokenizer:
    """Byte-level BPE: 256 byte tokens, then the learned merges, then the special tokens.

    `encode` never turns text that looks like a special token into that token unless its name is
    in `allowed_special` (or `allowed_special="all"`): text typed by a user cannot become a control
    token by accident. `decode` accepts any sequence of ids in the vocabulary: bytes that are not
    valid UTF-8 (a sequence cut in the middle of a character, say) become U+FFFD, '�'.
    """

    kind = "bpe"
    CACHE_SIZE = 1 << 16
    MAX_VOCAB = 1 << 20  # tokens in all; GPT-4's tokenizer has about 100,000
    MAX_TOKEN_BYTES = 1 << 16  # longest token, in bytes
    MAX_TOTAL_BYTES = 1 << 28  # all tokens' bytes together

    def __init__(self, merges: Sequence[Sequence[int]], pattern: str = "gpt4", special_tokens: Sequence[str] = ()):
        self.pattern = split_pattern(pattern)
        self._split = regex.compile(self.pattern)
        ascii_pattern = ascii_split_pattern(self.pattern)
        self._split_ascii = None if ascii_pattern is None else re.compile(ascii_pattern)
        if isinstance(special_tokens, str) or not isinstance(special_tokens, Sequence):
            raise ValueError(f"special_tokens must be a list of names, got {special_tokens!r}")
        if not isinstance(merges, Sequence) or 256 + len(merges) + len(special_tokens) > self.MAX_VOCAB:
            raise ValueError(f"merges must be a list of at most {self.MAX_VOCAB - 256} pairs of token ids")
        self.merges: list[tuple[int, int]] = []
        self._bytes = [bytes([i]) for i in range(256)]
        total = 256
        for i, merge in enumerate(merges):
            new_id = 256 + i
            if (
                not isinstance(merge, Sequence)
                or len(merge) != 2
                or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < new_id for t in merge)
            ):
                raise ValueError(f"merge {i} is {merge!r}; it must be a pair of existing token ids below {new_id}")
            a, b = merge
            size = len(self._bytes[a]) + len(self._bytes[b])
            total += size
            if size > self.MAX_TOKEN_BYTES or total > self.MAX_TOTAL_BYTES:
                raise ValueError(
                    f"merge {i} makes a token of {size:,} bytes (all tokens so far: {total:,} bytes), more than a "
                    f"tokenizer may hold ({self.MAX_TOKEN_BYTES:,} per token, {self.MAX_TOTAL_BYTES:,} in all); "
                    "the tokenizer file is damaged or crafted"
                )
            self.merges.append((a, b))
            self._bytes.append(self._bytes[a] + self._bytes[b])
        self.ranks = {pair: 256 + i for i, pair in enumerate(self.merges)}
        self.special_tokens: dict[str, int] = {}
        for name in special_tokens:
            if not isinstance(name, str) or not name:
                raise ValueError(f"a special token name must be a non-empty string, got {name!r}")
            if name in self.special_tokens:
                raise ValueError(f"special token {name!r} is given twice")
            self.special_tokens[name] = len(self._bytes)
            self._bytes.append(name.encode("utf-8"))
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def train(
        cls,
        text: str,
        vocab_size: int,
        pattern: str = "gpt4",
        special_tokens: Sequence[str] = (),
        progress_bar: bool = False,
    ) -> BPETokenizer:
        """Learn merges from `text` until the vocabulary (bytes, merges, specials) has `vocab_size` tokens."""
        smallest = 256 + len(special_tokens)
        if vocab_size < smallest:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: the 256 byte tokens and {len(special_tokens)} special "
                f"tokens alone need {smallest}; ask for at least {smallest}"
            )
        if not text:
            raise ValueError("cannot learn merges from empty text")
        merges = train_merges(text, vocab_size - smallest, pattern, progress_bar=progress_bar)
        return cls(merges, pattern, special_tokens)

    @property
    def vocab_size(self) -> int:
        """Number of distinct tokens: 256 bytes, the merges and the special tokens."""
        return len(self._bytes)

    def with_special_tokens(self, names: Sequence[str]) -> BPETokenizer:
        """A copy with the special tokens `names` added after the existing ones (new ids at the end)."""
        return BPETokenizer(self.merges, self.pattern, [*self.special_tokens, *names])

    def special_id(self, name: str) -> int:
        """Id of the special token called `name`."""
        try:
            return self.special_tokens[name]
        except KeyError:
            known = ", ".join(self.special_tokens) or "none"
            raise ValueError(f"unknown special token {name!r}; this tokenizer has: {known}") from None

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (for a special token: the UTF-8 of its name)."""
        return self._bytes[token_id]

    def mergeable_ranks(self) -> dict[bytes, int]:
        """Bytes of every ordinary token -> its id: the form in which tiktoken takes merges."""
        ranks = {b: i for i, b in enumerate(self._bytes[: 256 + len(self.merges)])}
        if len(ranks) != 256 + len(self.merges):
            raise ValueError("two merges make the same bytes; this vocabulary has no tiktoken equivalent")
        return ranks

    def encode_ordinary_reference(self, text: str) -> list[int]:
        """Token ids of `text` from scratch, chunk by chunk, special-looking text as ordinary text; no cache."""
        ids: list[int] = []
        for chunk in split_text(self._split, text):
            ids.extend(encode_chunk(chunk.encode("utf-8"), self.ranks))
        return ids

    def encode_ordinary(self, text: str) -> list[int]:
        """The ids of `encode_ordinary_reference`, fast: each distinct chunk is encoded once and cached.

        ASCII text is pre-split with Python's `re` and an ASCII-only twin of the pattern (same chunks).
        """
        if self._split_ascii is not None and text.isascii():
            chunks = self._split_ascii.findall(text)
        elif self.pattern in SPLIT_PATTERNS.values():
            chunks = self._split.findall(text)
        else:  # a regex of the user's own: the text between its matches is kept, and it runs under a time limit
            chunks = split_text(self._split, text)
        cache = self._cache
        new_chunks = set(chunks).difference(cache)
        if len(cache) + len(new_chunks) > self.CACHE_SIZE:
            cache.clear()
            new_chunks = set(chunks)
        for chunk in new_chunks:
            cache[chunk] = encode_chunk(chunk.encode("utf-8"), self.ranks)
        return list(chain.from_iterable(map(cache.__getitem__, chunks)))

    def clear_cache(self) -> None:
        """Forget the cached chunk encodings (`encode_ordinary` then starts cold)."""
        self._cache.clear()

    def encode(self, text: str, allowed_special: Collection[str] | Literal["all"] = ()) -> list[int]:
        """Token ids of `text`; only special tokens named in `allowed_special` ('all': any) become control tokens."""
        if allowed_special == "all":
            allowed = list(self.special_tokens)
        else:
            allowed = list(allowed_special)
            for name in allowed:
                self.special_id(name)
        if not allowed:
            return self.encode_ordinary(text)
        specials = regex.compile("(" + "|".join(regex.escape(n) for n in sorted(allowed, key=len, reverse=True)) + ")")
        ids: list[int] = []
        for i, piece in enumerate(specials.split(text)):
            if i % 2:
                ids.append(self.special_tokens[piece])
            elif piece:
                ids.extend(self.encode_ordinary(piece))
        return ids

    def encode_tensor(self, text: str, allowed_special: Collection[str] | Literal["all"] = ()) -> torch.Tensor:
        """Token ids of `text` as a 1-D long tensor."""
        return torch.tensor(self.encode(text, allowed_special), dtype=torch.long)

    def decode_bytes(self, ids: list[int] | torch.Tensor) -> bytes:
        """The bytes of a sequence of token ids."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        vocab_size = len(self._bytes)
        for i in ids:
            if not isinstance(i, int) or not 0 <= i < vocab_size:
                raise ValueError(f"token id {i!r} is outside the vocabulary 0..{vocab_size - 1}")
        return b"".join(self._bytes[i] for i in ids)

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        """Text of a sequence of token ids; bytes that are not valid UTF-8 become U+FFFD ('�')."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: split pattern, special tokens, and each merge with the text it makes."""
        return {
            "kind": self.kind,
            "pattern": self.pattern,
            "special_tokens": list(self.special_tokens),
            "merges": [
                [a, b, self._bytes[256 + i].decode("utf-8", errors="backslashreplace")]
                for i, (a, b) in enumerate(self.merges)
            ],
        }

    def save(self, path: str | Path) -> None:
        """Write the tokenizer as readable JSON, one merge (two ids and the text they make) per line."""
        data = self.to_dict()
        merges = ",\n  ".join(json.dumps(m, ensure_ascii=False) for m in data.pop("merges"))
        head = json.dumps(data, ensure_ascii=False, indent=1)[:-2]
        _write_text(path, f'{head},\n "merges": [\n  {merges}\n ]\n}}\n')

    @classmethod
    def load(cls, path: str | Path) -> BPETokenizer:
        """Read a tokenizer written by `save`."""
        tokenizer = load_tokenizer(path)
        if not isinstance(tokenizer, cls):
            raise ValueError(f"{path} holds a {tokenizer.kind!r} tokenizer, not a BPE one")
        return tokenizer

    def __repr__(self) -> str:
        specials = len(self.special_tokens)
        return f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, special_tokens={specials})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, BPETokenizer)
            and self.merges == other.merges
            and self.pattern == other.pattern
            and self.special_tokens == other.special_tokens
        )


Tokenizer = CharTokenizer | BPETokenizer
MAX_FILE_BYTES = 256 * 2**20  # largest tokenizer file read


def tokenizer_from_dict(data: dict[str, Any]) -> Tokenizer:
    """Rebuild a tokenizer from the output of its `to_dict`."""
    kind = data.get("kind") if isinstance(data, dict) else None
    try:
        if kind == "char":
            if not isinstance(data["chars"], str):
                raise ValueError(f"'chars' must be a string of the vocabulary's characters, got {data['chars']!r:.60}")
            return CharTokenizer(list(data["chars"]))
        if kind == "bpe":
            merges = data["merges"]
            if not isinstance(merges, list) or not all(isinstance(m, list) for m in merges):
                raise ValueError("'merges' must be a list of [id, id, text] entries")
            return BPETokenizer([m[:2] for m in merges], data["pattern"], data.get("special_tokens", []))
    except (KeyError, TypeError) as err:
        raise ValueError(f"the {kind!r} tokenizer description is missing or has a malformed field ({err!r})") from None
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'char' or 'bpe'")


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a tokenizer file written by the `save` of either tokenizer."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no tokenizer file at {path}; write one with `python -m minigpt_lib tokenizer train`")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise ValueError(f"{path} is {path.stat().st_size:,} bytes, too large for a tokenizer file")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a tokenizer file (not readable JSON: {err})") from None
    return tokenizer_from_dict(data)
