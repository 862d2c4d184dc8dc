import pytest
import torch

from minigpt_lib import GPT, CharTokenizer, GPTConfig

SAMPLE_TEXT = (
    "First, a small corpus for fast tests.\n"
    "It has upper and lower case letters, digits 0123456789, and punctuation: ;,.!?-'\n"
) * 40


@pytest.fixture
def text() -> str:
    return SAMPLE_TEXT


@pytest.fixture
def tokenizer(text) -> CharTokenizer:
    return CharTokenizer.from_text(text)


@pytest.fixture
def ids(tokenizer, text) -> torch.Tensor:
    return tokenizer.encode_tensor(text)


@pytest.fixture
def tiny_config(tokenizer) -> GPTConfig:
    return GPTConfig(vocab_size=tokenizer.vocab_size, block_size=16, n_layer=2, n_head=2, n_embd=32)


@pytest.fixture
def tiny_model(tiny_config) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config)
