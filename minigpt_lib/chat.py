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
- `stop_ids(tokenizer)`: the tokens that end an answer; `to_reply(tokenizer, ids)`: answer ids -> `Reply`;
- `stream_reply(...)` / `reply(...)`: one assistant answer, streamed, stopping at `<|end|>`;
- `generate_replies(model, tokenizer, conversations, ...)` -> list of `Reply`: many answers at once
  (greedy or sampled), through `generate.generate_answers`;
- `is_chat_checkpoint(manifest)`: whether a checkpoint was fine-tuned to chat.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .generate import generate_answers, stream_pieces, stream_ragged
from .sampling import check_sampling, make_generator
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

    A turn is a user message and the assistant's answer to it; the newest user message is always kept. Messages
    are measured from the newest back, so the work does not grow with the length of the whole history.
    """
    conversation = list(conversation)
    check_conversation(conversation)
    system = conversation[:1] if conversation and conversation[0]["role"] == "system" else []
    rest = conversation[len(system) :]
    cost = lambda msg: len(tokenizer.encode(msg["content"])) + 2  # role token, text, <|end|>
    used = 1 + sum(cost(msg) for msg in system)  # the final <|assistant|>
    start = len(rest)
    while start > 0:
        extra = cost(rest[start - 1])
        if used + extra > max_tokens and start < len(rest):
            break
        used += extra
        start -= 1
    if start > 0:  # something was dropped: never start on an answer without its question
        while start < len(rest) - 1 and rest[start]["role"] != "user":
            start += 1
    if used > max_tokens:
        raise ValueError(
            f"the system prompt and the last message alone take {used} tokens, more than the {max_tokens} "
            "the model can see; write a shorter message (or system prompt)"
        )
    return system + rest[start:]


@dataclass
class Reply:
    """One generated answer: its text, whether it ended its turn, and whether it wrote another role's token."""

    text: str
    ended: bool
    role_break: bool
    tokens: int


def stop_ids(tokenizer: BPETokenizer) -> set[int]:
    """The tokens that end an answer: `<|end|>`, or another role's token (a broken answer)."""
    return {tokenizer.special_id(name) for name in (END, SYSTEM, USER, ASSISTANT)}


def to_reply(tokenizer: BPETokenizer, ids: Sequence[int], extra_stops: Collection[int] = ()) -> Reply:
    """An answer's token ids (as `generate_answers` returns them) -> its `Reply`.

    It ended its turn if its last token is `<|end|>` or one of `extra_stops`; a role token ends it broken.
    """
    stops = stop_ids(tokenizer) | set(extra_stops)
    last = ids[-1] if ids else None
    body = list(ids[:-1]) if last in stops else list(ids)
    ended = last in stops and (last == tokenizer.special_id(END) or last in extra_stops)
    return Reply(tokenizer.decode(body), ended, last in stops and not ended, len(body))


def answer_ids(tokenizer: BPETokenizer, text: str) -> list[int]:
    """An answer written as text -> its token ids, ending with `<|end|>`."""
    return tokenizer.encode(text) + [tokenizer.special_id(END)]


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

    With `max_context`, the oldest turns are dropped first (see `fit_context`).
    """
    check_sampling(temperature, top_k, top_p)
    if max_context is not None:
        conversation = fit_context(conversation, tokenizer, max_context)
    prompt = render_prompt(conversation, tokenizer)
    stops = stop_ids(tokenizer)
    generator = make_generator(seed, None, next(model.parameters()).device)

    def tokens() -> Iterator[int]:
        for next_ids, _ in stream_ragged(model, [prompt], max_new_tokens, temperature, top_k, generator, top_p):
            token = int(next_ids[0])
            if token in stops:
                return
            yield token

    yield from stream_pieces(tokenizer, tokens())


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
    extra_stops: Collection[int] = (),
) -> list[Reply]:
    """Answers to many conversations at once (`generate_answers`); greedy by default, `seed` for repeatable sampling.

    An answer ends at `<|end|>` (or at one of `extra_stops`: a newline for plain-text prompts, say) and is cut
    short at another role's token. `prompts` (token ids) replaces the rendered conversations when given
    (few-shot prompts in plain text, say).
    """
    check_sampling(temperature, top_k, top_p)
    if prompts is None:
        prompts = [render_prompt(c, tokenizer) for c in conversations]
    generator = make_generator(seed, None, next(model.parameters()).device)
    stops = stop_ids(tokenizer) | set(extra_stops)
    answers = generate_answers(model, prompts, max_new_tokens, stops, temperature, top_k, top_p, generator, batch_size)
    return [to_reply(tokenizer, a, extra_stops) for a in answers]


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
