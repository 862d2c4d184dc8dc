"""GPT-2's weights in our GPT: read a Hugging Face GPT-2 folder (config.json, model.safetensors, tokenizer files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .model import GPT, GPTConfig
from .tokenizers import BPETokenizer

# Hugging Face's GPT-2 stores these four weights as Conv1D, (in_features, out_features): ours are nn.Linear, transposed.
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}

# The one-liner that fetches OpenAI's GPT-2 (124M) in this layout where the Hugging Face hub is reachable.
DOWNLOAD_GPT2 = "hf download openai-community/gpt2 config.json model.safetensors vocab.json merges.txt --local-dir gpt2"


def config_from_hf(hf: dict[str, Any]) -> GPTConfig:
    """Our GPTConfig for a Hugging Face GPT2Config (as read from its config.json); ValueError for anything else."""
    if not isinstance(hf, dict):
        raise ValueError("config.json must hold a JSON object (a GPT2Config)")
    missing = [k for k in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd") if type(hf.get(k)) is not int]
    if missing:
        raise ValueError(f"config.json has no whole-number {', '.join(missing)}: is this a GPT-2 folder?")
    if not isinstance(hf.get("layer_norm_epsilon", 1e-5), (int, float)):
        raise ValueError(f"config.json: layer_norm_epsilon must be a number, got {hf['layer_norm_epsilon']!r}")
    activation = hf.get("activation_function", "gelu_new")
    if not isinstance(activation, str) or activation not in ACTIVATIONS:
        raise ValueError(f"GPT-2 activation {activation!r} is not supported; expected one of {', '.join(ACTIVATIONS)}")
    n_embd = hf["n_embd"]
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise ValueError(f"n_inner={hf['n_inner']}: our MLP is 4 * n_embd = {4 * n_embd} wide")
    if abs(hf.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        raise ValueError(f"layer_norm_epsilon={hf['layer_norm_epsilon']}: our LayerNorm uses 1e-5")
    if not hf.get("scale_attn_weights", True) or hf.get("scale_attn_by_inverse_layer_idx", False):
        raise ValueError("our attention scales scores by 1/sqrt(head_size) only, as GPT-2 does by default")
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        block_size=hf["n_positions"],
        n_layer=hf["n_layer"],
        n_head=hf["n_head"],
        n_embd=n_embd,
        bias=True,
        position="learned",
        activation=ACTIVATIONS[activation],
    )


def state_dict_from_hf(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our GPT's state dict from GPT-2's tensors (`transformer.h.0.attn.c_attn.weight`... or `h.0...`)."""
    ours = {}
    for name, tensor in weights.items():
        name = name.removeprefix("transformer.")
        if name.endswith((".attn.bias", ".attn.masked_bias")) or name == "lm_head.weight":
            continue  # causal-mask buffers of old checkpoints; the head is tied to wte
        if name.endswith(CONV1D):
            tensor = tensor.t()
        ours[name if name.startswith("lm_head") else f"transformer.{name}"] = tensor.contiguous()
    if "transformer.wte.weight" not in ours:
        raise ValueError("no token embedding (wte.weight) among the tensors: is this a GPT-2 checkpoint?")
    ours["lm_head.weight"] = ours["transformer.wte.weight"]
    return ours


def load_gpt2(folder: str | Path) -> GPT:
    """Our GPT holding the weights of a Hugging Face GPT-2 folder, in GPT-2's token order."""
    folder = Path(folder)
    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder / name} not found: pass a folder written by GPT2LMHeadModel.save_pretrained, "
                f"or fetch OpenAI's GPT-2 with `{DOWNLOAD_GPT2}`"
            )
    try:
        config = config_from_hf(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    except ValueError as err:  # also JSON and UTF-8 errors
        raise ValueError(f"{folder / 'config.json'}: {err}") from None
    try:
        weights = load_file(str(folder / "model.safetensors"))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{folder / 'model.safetensors'} is not a readable safetensors file ({err})") from None
    model = GPT(config)
    try:
        model.load_state_dict(state_dict_from_hf(weights))
    except RuntimeError as err:
        raise ValueError(f"{folder} does not hold the GPT-2 its config.json describes: {err}") from None
    return model.eval()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each of the 256 bytes (how vocab.json spells bytes)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def tokenizer_from_hf(folder: str | Path) -> tuple[BPETokenizer, torch.Tensor]:
    """Our BPETokenizer for GPT-2's vocab.json and merges.txt, and `order`: GPT-2's id of each of our ids.

    Ours numbers the 256 bytes 0..255, then the merges, then the special tokens; GPT-2 numbers its
    bytes in another order. Encoding the same text gives ids with `order[ours] == gpt2's`.
    """
    folder = Path(folder)
    vocab: dict[str, int] = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
    pairs = [line.split(" ") for line in lines if line and not line.startswith("#version")]
    spelled = bytes_to_unicode()
    ours = {spelled[b]: b for b in range(256)}  # vocab.json's spelling -> our id
    if not isinstance(vocab, dict) or not set(ours) <= set(vocab):
        raise ValueError(f"{folder / 'vocab.json'} does not spell all 256 bytes as GPT-2's vocab.json does")
    merges = []
    for i, pair in enumerate(pairs):
        if len(pair) != 2 or pair[0] not in ours or pair[1] not in ours:
            raise ValueError(f"{folder / 'merges.txt'}, merge {i + 1}: {' '.join(pair)!r} is not two known tokens")
        a, b = pair
        merges.append((ours[a], ours[b]))
        ours[a + b] = 256 + i
    specials = [name for name in vocab if name not in ours]
    tokenizer = BPETokenizer(merges, "gpt2", specials)
    order = torch.empty(tokenizer.vocab_size, dtype=torch.long)
    for name, our_id in {**ours, **tokenizer.special_tokens}.items():
        if type(vocab.get(name)) is not int or not 0 <= vocab[name] < tokenizer.vocab_size:
            raise ValueError(f"{folder / 'vocab.json'}: the id of {name!r} is missing or out of range")
        order[our_id] = vocab[name]
    return tokenizer, order


def reorder_vocabulary(model: GPT, order: torch.Tensor) -> GPT:
    """Permute the token embedding (and tied head) rows so that row i is the token `order[i]` of before."""
    if len(order) != model.config.vocab_size:
        raise ValueError(f"the tokenizer has {len(order)} tokens but the model {model.config.vocab_size}")
    with torch.no_grad():
        model.transformer.wte.weight.copy_(model.transformer.wte.weight[order])
    return model


def import_gpt2(folder: str | Path) -> tuple[GPT, BPETokenizer | None]:
    """GPT-2 as our GPT and tokenizer (numbered our way), or with GPT-2's numbering and no tokenizer files."""
    model = load_gpt2(folder)
    folder = Path(folder)
    if not ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()):
        return model, None
    tokenizer, order = tokenizer_from_hf(folder)
    return reorder_vocabulary(model, order), tokenizer
