"""The book's models in the reader's browser: the weights file that the page reads, and the page's sampler in Python.

`python -m minigpt_lib export-web --ckpt DIR --out FILE` writes a checkpoint's model for `book/web/gpt.js`, the
JavaScript GPT of the appendix "A GPT in 200 lines of JavaScript": the weights as safetensors bytes, float16 by
default, with the model's shape, its tokenizer and whether it chats in the header's metadata. The tied matrix is
stored once, as `lm_head.weight`. A FILE ending in `.js` is a script that sets `MINIGPT_WEIGHTS[name]` to those
bytes in base64: a page loads it with a `<script>` tag, which works from `file://`, where `fetch()` is blocked.
Any other FILE gets the bare bytes; the book keeps those in `book/web/models/`, and its build wraps each in
such a script (`weights_script`).

`torch.multinomial` cannot be reproduced in JavaScript, so the page samples with its own small random-number
generator, mulberry32. `Mulberry32`, `sample_like_page` and `generate_like_page` do here exactly what the page
does, so a seed gives the same tokens in Python and in the browser (greedy decoding needs no generator: it is
the library's `generate` with `temperature=0`).
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors

from .checkpoint import load_checkpoint
from .generate import stream_ragged
from .model import GPT, GPTConfig
from .tokenizers import Tokenizer, tokenizer_from_dict

FORMAT = "minigpt-web/1"
DTYPES = {"float16": torch.float16, "float32": torch.float32}
SAFETENSORS_DTYPES = {torch.float16: "F16", torch.float32: "F32"}
TIED = "transformer.wte.weight"  # stored once, as lm_head.weight
SCRIPT = 'window.MINIGPT_WEIGHTS = window.MINIGPT_WEIGHTS || {{}};\nwindow.MINIGPT_WEIGHTS[{name}] = "{data}";\n'
SCRIPT_DATA = re.compile(r'MINIGPT_WEIGHTS\[[^\]]*\] = "([A-Za-z0-9+/=]*)"')


def check_exportable(config: GPTConfig, tokenizer: Tokenizer) -> None:
    """Raise ValueError, saying what to do, unless the page's GPT can run this model and tokenizer."""
    if config.position != "rope" or config.bias:
        raise ValueError(
            f"the page's GPT runs models with rotary positions and no biases (the cpu preset); this one has "
            f"position={config.position!r}, bias={config.bias}: train it with --preset cpu"
        )
    data = tokenizer.to_dict()
    if data["kind"] == "bpe" and data["merges"]:
        raise ValueError(
            f"the page encodes text by characters or by bytes; this tokenizer has {len(data['merges'])} BPE merges: "
            "use the character tokenizer or the chat tokenizer (`python -m minigpt_lib tokenizer chat`)"
        )


def web_bytes(model: GPT, tokenizer: Tokenizer, meta: dict[str, Any], dtype: str = "float16") -> bytes:
    """The weights file's bytes: `model`'s weights in `dtype` (tied matrix once), shape and tokenizer as metadata."""
    check_exportable(model.config, tokenizer)
    tensors = {}
    for name, p in model.state_dict().items():
        if name == TIED:
            continue
        if dtype == "float16" and p.abs().max() > torch.finfo(torch.float16).max:
            raise ValueError(f"{name} holds values too large for float16; export with --dtype float32")
        tensors[name] = p.detach().to("cpu", DTYPES[dtype]).contiguous()
    metadata = {
        "format": FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "tokenizer": json.dumps(tokenizer.to_dict(), ensure_ascii=False),
        "tied": f"{TIED}=lm_head.weight",
        **{key: json.dumps(value, ensure_ascii=False) for key, value in meta.items()},
    }
    return _safetensors(tensors, metadata)


def _safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Safetensors bytes with the header's keys in order, so that the same weights always give the same file."""
    header: dict[str, Any] = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        blob = tensors[name].numpy().tobytes()  # little-endian, as safetensors stores numbers
        header[name] = dict(
            dtype=SAFETENSORS_DTYPES[tensors[name].dtype],
            shape=list(tensors[name].shape),
            data_offsets=[offset, offset + len(blob)],
        )
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the tensors start on an 8-byte boundary
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


def weights_script(name: str, data: bytes) -> str:
    """A script that sets `MINIGPT_WEIGHTS[name]` to `data` in base64 (what a page loads from file:// as well)."""
    return SCRIPT.format(name=json.dumps(name), data=base64.b64encode(data).decode("ascii"))


def read_weights_file(path: str | Path) -> bytes:
    """The safetensors bytes of a weights file: a `.js` script from `weights_script`, or the bare bytes."""
    path = Path(path)
    if path.suffix != ".js":
        return path.read_bytes()
    found = SCRIPT_DATA.search(path.read_text(encoding="ascii"))
    if found is None:
        raise ValueError(f"{path} is not a weights script written by export-web")
    return base64.b64decode(found.group(1))


def load_web(data: bytes) -> tuple[GPT, Tokenizer, dict[str, str]]:
    """The GPT (float32), tokenizer and metadata of a weights file's bytes: what the page computes with."""
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    metadata = header.get("__metadata__", {})
    if metadata.get("format") != FORMAT:
        raise ValueError(f"not a weights file of export-web (format {metadata.get('format')!r}, expected {FORMAT!r})")
    model = GPT(GPTConfig.from_dict(json.loads(metadata["config"])))
    state = {name: t.float() for name, t in load_tensors(data).items()}
    state[TIED] = state["lm_head.weight"]
    model.load_state_dict(state)
    return model.eval(), tokenizer_from_dict(json.loads(metadata["tokenizer"])), metadata


def export_web(ckpt: str | Path, out: str | Path, dtype: str = "float16", name: str | None = None) -> dict[str, Any]:
    """Write checkpoint `ckpt`'s model as a weights file `out` (a script if it ends in .js); returns a summary."""
    model, tokenizer, manifest = load_checkpoint(ckpt)
    if tokenizer is None:
        raise ValueError(f"{ckpt} has no tokenizer; the page needs one to turn text into tokens")
    meta = {"chat": bool((manifest.get("meta") or {}).get("chat")), "source": Path(ckpt).name}
    if "train_state" in manifest:
        meta["step"] = manifest["train_state"]["step"]
    data = web_bytes(model, tokenizer, meta, dtype)
    out = Path(out)
    name = name or out.stem
    text = weights_script(name, data).encode("ascii") if out.suffix == ".js" else data
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(text)
    tmp.replace(out)
    return dict(
        name=name,
        bytes=len(text),
        weights_bytes=len(data),
        params=model.num_params(),
        **compare_dtype(model, load_web(data)[0], tokenizer),
    )


@torch.no_grad()
def compare_dtype(model: GPT, exported: GPT, tokenizer: Tokenizer, tokens: int = 300) -> dict[str, Any]:
    """What the export changed: max |Δlogit| along the original's greedy text, and how many greedy tokens agree."""
    try:
        start = torch.tensor([tokenizer.encode("\n")])
    except ValueError:  # a character tokenizer of a text without line breaks
        start = torch.tensor([[0]])
    original = model.generate(start, tokens, temperature=0)
    copy = exported.generate(start, tokens, temperature=0)
    same = int((original[0] == copy[0]).cumprod(0).sum()) - start.size(1)
    change = (model(original)[0] - exported(original)[0]).abs().max().item()
    return dict(max_logit_change=change, same_greedy_tokens=same, greedy_tokens=tokens)


class Mulberry32:
    """The page's random numbers: mulberry32, a 32-bit generator small enough to write the same in any language."""

    def __init__(self, seed: int):
        self.state = seed & 0xFFFFFFFF

    def random(self) -> float:
        """The next number in [0, 1), as `Math.random` would give it (a multiple of 2**-32)."""
        self.state = (self.state + 0x6D2B79F5) & 0xFFFFFFFF
        t = self.state
        t = _imul(t ^ (t >> 15), t | 1)
        t = (t + _imul(t ^ (t >> 7), t | 61)) & 0xFFFFFFFF ^ t
        return (t ^ (t >> 14)) / 4294967296


def _imul(a: int, b: int) -> int:
    """JavaScript's Math.imul on unsigned 32-bit values: the low 32 bits of the product."""
    return (a * b) & 0xFFFFFFFF


def _softmax(z: Sequence[float]) -> list[float]:
    top = max(z)
    e = [math.exp(v - top) for v in z]
    total = sum(e)
    return [v / total for v in e]


def sample_like_page(
    logits: Sequence[float], temperature: float, top_k: int | None, top_p: float | None, random: Callable[[], float]
) -> int:
    """The token the page picks from `logits`: the library's filters (temperature, top-k, top-p), a draw of `random`."""
    if temperature == 0:
        return max(range(len(logits)), key=lambda i: (logits[i], -i))
    top = max(logits)
    z = [(v - top) / temperature for v in logits]  # the same probabilities as logits / T, without overflow
    if top_k is not None and top_k < len(z):
        kth = sorted(z, reverse=True)[top_k - 1]
        z = [v if v >= kth else -math.inf for v in z]
    if top_p is not None and top_p < 1:
        order = sorted(range(len(z)), key=lambda i: (-z[i], i))
        probs = _softmax([z[i] for i in order])
        mass = 0.0
        for rank, i in enumerate(order):
            if mass >= top_p:
                z[i] = -math.inf
            mass += probs[rank]
    probs = _softmax(z)
    target, total = random() * sum(probs), 0.0
    for i, p in enumerate(probs):
        total += p
        if p > 0 and total > target:
            return i
    return max(i for i, p in enumerate(probs) if p > 0)


@torch.no_grad()
def generate_like_page(
    model: GPT,
    ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
) -> tuple[list[int], list[list[float]]]:
    """The page's generation in Python: the new tokens, and the logits each was picked from.

    As the library's `generate`: the prompt is cropped to the model's receptive field and the KV cache
    keeps the attention window; each token is picked by `sample_like_page` with `Mulberry32(seed)`.
    """
    rng, steps = Mulberry32(seed), []

    def pick(logits: torch.Tensor) -> torch.Tensor:
        steps.append(logits[0].tolist())
        return torch.tensor([sample_like_page(steps[-1], temperature, top_k, top_p, rng.random)])

    tokens = [int(t) for t, _ in stream_ragged(model, [list(ids)], max_new_tokens, pick=pick)]
    return tokens, steps


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `export-web`."""
    parser.add_argument("--ckpt", type=Path, required=True, help="checkpoint folder (train, sft, ppo, dpo)")
    parser.add_argument("--out", type=Path, required=True, help="weights file: NAME.js (a script) or NAME.safetensors")
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float16",
        help="float16 (default) halves the file; float32 keeps the weights exactly",
    )
    parser.add_argument("--name", help="the model's name in MINIGPT_WEIGHTS for a .js file (default: the file's stem)")


def run(args: argparse.Namespace) -> int:
    """`export-web`: write the weights file and say what it holds and what float16 changed."""
    info = export_web(args.ckpt, args.out, args.dtype, args.name)
    print(f"wrote {args.out}: {info['bytes']:,} bytes ({info['params']:,} parameters in {args.dtype})")
    print(
        f"{args.dtype} against the checkpoint, along {info['greedy_tokens']} greedy tokens: largest logit change "
        f"{info['max_logit_change']:.1e}, the same first {info['same_greedy_tokens']} greedy tokens"
    )
    return 0
