"""Tokenizers: text to integer ids and back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch


class UnknownCharacterError(ValueError):
    """A character that is not in the tokenizer's vocabulary."""


class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of characters of a text."""

    kind = "char"

    def __init__(self, chars: list[str] | str):
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
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> CharTokenizer:
        """Read a tokenizer written by `save`."""
        return tokenizer_from_dict(json.loads(Path(path).read_text(encoding="utf-8")))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.chars == other.chars


def tokenizer_from_dict(data: dict[str, Any]) -> CharTokenizer:
    """Rebuild a tokenizer from the output of its `to_dict`."""
    kind = data.get("kind")
    if kind == "char":
        return CharTokenizer(list(data["chars"]))
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected 'char'")
