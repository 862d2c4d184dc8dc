"""The chat template: conversations to token ids and a loss mask, prompts, context overflow, answers.

A conversation is a list of messages, each `{"role": "system" | "user" | "assistant", "content": str}`.
It is rendered as one token sequence in which every message is a role token, its text, and `<|end|>`:

    <|system|>Answer in capitals.<|end|><|user|>Hi!<|end|><|assistant|>HELLO!<|end|>

The role and end tokens are special tokens of a byte-level tokenizer (`chat_tokenizer()`): any text a
user types encodes as bytes, and text that spells a special token (say "<|end|>") stays ordinary bytes.

What later chapters use:
- `chat_tokenizer()`, `SPECIAL_TOKENS`, `SYSTEM`, `USER`, `ASSISTANT`, `END`, `message`;
- `render(conversation, tokenizer)` -> (ids, mask): mask 1 on the assistant's tokens (its `<|end|>` too);
- `render_prompt(conversation, tokenizer)` -> ids ending with `<|assistant|>`, ready for generation;
- `fit_context(conversation, tokenizer, max_tokens)`: drop the oldest turns, keep the system prompt;
- `stream_reply(...)` / `reply(...)`: one assistant answer, streamed, stopping at `<|end|>`;
- `generate_replies(model, tokenizer, conversations, ...)` -> list of `Reply`: many answers at once
  (greedy or sampled), prompts of equal token length batched together;
- `is_chat_checkpoint(manifest)`: whether a checkpoint was fine-tuned to chat.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .sampling import check_sampling, make_generator, sample_next
from .tokenizers import BPETokenizer

SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = (SYSTEM, USER, ASSISTANT, END)
ROLE_TOKENS = {"system": SYSTEM, "user": USER, "assistant": ASSISTANT}

Message = dict[str, str]
Conversation = list[Message]


def chat_tokenizer() -> BPETokenizer:
    """The chat tokenizer: the 256 bytes (any text encodes) followed by the four chat special tokens."""
    return BPETokenizer(merges=[], special_tokens=SPECIAL_TOKENS)


def message(role: str, content: str) -> Message:
    """One message of a conversation."""
    return {"role": role, "content": content}


def check_tokenizer(tokenizer: Any) -> None:
    """Raise ValueError, saying what to do, unless `tokenizer` has the four chat special tokens."""
    names = getattr(tokenizer, "special_tokens", {})
    missing = [name for name in SPECIAL_TOKENS if name not in names]
    if missing:
        raise ValueError(
            f"the tokenizer has no chat special tokens {missing}; build it with minigpt_lib.chat.chat_tokenizer() "
            "(or BPETokenizer.with_special_tokens(SPECIAL_TOKENS)) and pretrain the model with it"
        )


def check_conversation(conversation: Sequence[Message]) -> None:
    """Raise ValueError unless every message has a known role and text, and a system message comes first only."""
    for i, msg in enumerate(conversation):
        if not isinstance(msg, dict) or msg.get("role") not in ROLE_TOKENS or not isinstance(msg.get("content"), str):
            raise ValueError(
                f"message {i} is {msg!r}; each message must be {{'role': 'system'|'user'|'assistant', 'content': str}}"
            )
        if msg["role"] == "system" and i != 0:
            raise ValueError(f"message {i} is a system message; only the first message may be one")


def render(conversation: Sequence[Message], tokenizer: BPETokenizer) -> tuple[list[int], list[int]]:
    """Token ids of a whole conversation and its loss mask: 1 on the assistant's text and its `<|end|>`, else 0."""
    check_tokenizer(tokenizer)
    check_conversation(conversation)
    end = tokenizer.special_id(END)
    ids: list[int] = []
    mask: list[int] = []
    for msg in conversation:
        text = tokenizer.encode(msg["content"])  # ordinary text: a typed "<|end|>" stays bytes
        learn = 1 if msg["role"] == "assistant" else 0
        ids += [tokenizer.special_id(ROLE_TOKENS[msg["role"]]), *text, end]
        mask += [0] + [learn] * (len(text) + 1)
    return ids, mask


def render_prompt(conversation: Sequence[Message], tokenizer: BPETokenizer) -> list[int]:
    """Token ids of a conversation followed by `<|assistant|>`: the prompt the model answers."""
    ids, _ = render(conversation, tokenizer)
    return ids + [tokenizer.special_id(ASSISTANT)]


def fit_context(conversation: Sequence[Message], tokenizer: BPETokenizer, max_tokens: int) -> Conversation:
    """The conversation with its oldest turns dropped until its prompt fits in `max_tokens`; the system prompt stays.

    A turn is a user message and the assistant's answer to it; the newest user message is always kept.
    """
    conversation = list(conversation)
    system = conversation[:1] if conversation and conversation[0]["role"] == "system" else []
    rest = conversation[len(system) :]
    while len(render_prompt(system + rest, tokenizer)) > max_tokens and len(rest) > 1:
        rest = rest[1:]
        while len(rest) > 1 and rest[0]["role"] != "user":  # never start on an answer without its question
            rest = rest[1:]
    fitted = system + rest
    length = len(render_prompt(fitted, tokenizer))
    if length > max_tokens:
        raise ValueError(
            f"the system prompt and the last message alone take {length} tokens, more than the {max_tokens} "
            "the model can see; write a shorter message (or system prompt)"
        )
    return fitted


@dataclass
class Reply:
    """One generated answer: its text, whether it ended with `<|end|>`, and whether it wrote another role's token."""

    text: str
    ended: bool
    role_break: bool
    tokens: int


def _stop_ids(tokenizer: BPETokenizer) -> tuple[int, set[int]]:
    end = tokenizer.special_id(END)
    return end, {tokenizer.special_id(name) for name in (SYSTEM, USER, ASSISTANT)}


@torch.no_grad()
def _stream_ids(
    model: torch.nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> Iterator[torch.Tensor]:
    """Yield the next token of every row of `idx` (B, 1), using the KV cache; the caller stops it."""
    block = getattr(model, "max_context", None)
    was_training = model.training
    model.eval()
    try:
        cache = model.new_kv_cache()
        context = idx if block is None else idx[:, -block:]
        logits = model(context, kv_cache=cache)[0]
        for step in range(max_new_tokens):
            next_id = sample_next(logits[:, -1, :], temperature, top_k, generator, top_p)
            yield next_id
            idx = torch.cat([idx, next_id], dim=1)
            if step + 1 == max_new_tokens:
                break
            if block is not None and idx.size(1) > block:  # learned positions: slide the window, recompute
                cache = model.new_kv_cache()
                logits = model(idx[:, -block:], kv_cache=cache)[0]
            else:
                logits = model(next_id, kv_cache=cache)[0]
    finally:
        model.train(was_training)


def stream_reply(
    model: torch.nn.Module,
    tokenizer: BPETokenizer,
    conversation: Sequence[Message],
    max_new_tokens: int = 200,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    max_context: int | None = None,
) -> Iterator[str]:
    """Yield the assistant's answer to `conversation` piece by piece, stopping at `<|end|>` (greedy by default).

    With `max_context`, the oldest turns are dropped first (see `fit_context`). A character split across
    byte tokens is held back until it is complete.
    """
    check_sampling(temperature, top_k, top_p)
    if max_context is not None:
        conversation = fit_context(conversation, tokenizer, max_context)
    device = next(model.parameters()).device
    idx = torch.tensor([render_prompt(conversation, tokenizer)], dtype=torch.long, device=device)
    end, others = _stop_ids(tokenizer)
    generator = make_generator(seed, None, device)
    new_ids: list[int] = []
    shown = ""
    for next_id in _stream_ids(model, idx, max_new_tokens, temperature, top_k, top_p, generator):
        token = int(next_id[0, 0])
        if token == end or token in others:
            break
        new_ids.append(token)
        text = tokenizer.decode(new_ids)
        if text.endswith("\ufffd"):
            continue
        yield text[len(shown) :]
        shown = text
    text = tokenizer.decode(new_ids)
    if len(text) > len(shown):
        yield text[len(shown) :]


def reply(model: torch.nn.Module, tokenizer: BPETokenizer, conversation: Sequence[Message], **options: Any) -> str:
    """The assistant's whole answer to `conversation`; options as `stream_reply`."""
    return "".join(stream_reply(model, tokenizer, conversation, **options))


def generate_replies(
    model: torch.nn.Module,
    tokenizer: BPETokenizer,
    conversations: Sequence[Sequence[Message]],
    max_new_tokens: int = 64,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    batch_size: int = 64,
    prompts: Sequence[Sequence[int]] | None = None,
    stop_ids: Collection[int] = (),
) -> list[Reply]:
    """Answers to many conversations at once: prompts of equal token length run as one batch with the KV cache.

    An answer ends at `<|end|>` (or at one of `stop_ids`: a newline for plain-text prompts, say) and is cut
    short at another role's token. `prompts` (token ids) replaces the rendered conversations when given
    (few-shot prompts in plain text, say). Greedy by default; a `seed` makes sampling repeatable.
    """
    check_sampling(temperature, top_k, top_p)
    if prompts is None:
        prompts = [render_prompt(c, tokenizer) for c in conversations]
    device = next(model.parameters()).device
    end, others = _stop_ids(tokenizer)
    generator = make_generator(seed, None, device)
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(len(p), []).append(i)
    replies: list[Reply | None] = [None] * len(prompts)
    for length in sorted(by_length):
        members = by_length[length]
        for start in range(0, len(members), batch_size):
            rows = members[start : start + batch_size]
            idx = torch.tensor([list(prompts[i]) for i in rows], dtype=torch.long, device=device)
            new: list[list[int]] = [[] for _ in rows]
            stopped = [0] * len(rows)  # 0: still writing, 1: wrote <|end|>, 2: wrote another role's token
            for next_id in _stream_ids(model, idx, max_new_tokens, temperature, top_k, top_p, generator):
                for r, token in enumerate(next_id[:, 0].tolist()):
                    if stopped[r]:
                        continue
                    if token == end or token in stop_ids:
                        stopped[r] = 1
                    elif token in others:
                        stopped[r] = 2
                    else:
                        new[r].append(token)
                if all(stopped):
                    break
            for r, i in enumerate(rows):
                replies[i] = Reply(tokenizer.decode(new[r]), stopped[r] == 1, stopped[r] == 2, len(new[r]))
    return [r for r in replies if r is not None]


def is_chat_checkpoint(manifest: dict[str, Any]) -> bool:
    """Whether a checkpoint's manifest says its model was fine-tuned on chat conversations."""
    return bool((manifest.get("meta") or {}).get("chat"))


class ChatSession:
    """A conversation with a model: the history, a system prompt, and the next answer streamed.

    The prompt sent each turn keeps the system prompt and as many recent turns as fit in `max_context`
    tokens (default: the model's window less `answer_room` tokens left for the answer).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: BPETokenizer,
        system: str | None = None,
        max_context: int | None = None,
        answer_room: int = 32,
    ):
        check_tokenizer(tokenizer)
        self.model, self.tokenizer = model, tokenizer
        self.max_context = max_context or max(16, model.block_size - answer_room)
        self.system = system
        self.history: Conversation = []
        self.dropped = 0  # messages of the history left out of the last prompt

    def messages(self) -> Conversation:
        """The whole conversation so far, with the system prompt first."""
        return ([message("system", self.system)] if self.system else []) + self.history

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.history = []
        self.dropped = 0

    def set_system(self, system: str | None) -> None:
        """A new system prompt (None: none); the conversation starts afresh."""
        self.system = system
        self.reset()

    def undo(self) -> None:
        """Forget the last user message and its (possibly unfinished) answer."""
        while self.history and self.history[-1]["role"] == "assistant":
            self.history.pop()
        if self.history:
            self.history.pop()

    def send(self, text: str, **options: Any) -> Iterator[str]:
        """Add the user's message and yield the answer piece by piece; options as `stream_reply`."""
        self.history.append(message("user", text))
        try:
            fitted = fit_context(self.messages(), self.tokenizer, self.max_context)
        except ValueError:
            self.history.pop()
            raise
        self.dropped = len(self.messages()) - len(fitted)
        self.history.append(message("assistant", ""))
        for piece in stream_reply(self.model, self.tokenizer, fitted, **options):
            self.history[-1]["content"] += piece
            yield piece
