import shutil
import subprocess
import sys
from pathlib import Path

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


ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def book_html(tmp_path_factory) -> Path:
    """The book built once per test run from a copy of the repository; returns its HTML folder."""
    if shutil.which("jupyter-book", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("jupyter-book is not installed; run `make test` (it installs the test extras)")
    out = tmp_path_factory.mktemp("book")
    source = out / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", "_build", ".git", "runs", ".*cache*"))
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "jupyter-book"),
            "build",
            str(source),
            "--warningiserror",
            "--keep-going",
            "--path-output",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return out / "_build" / "html"


@pytest.fixture
def corpus(tmp_path, text):
    path = tmp_path / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def one_thread():
    """For tiny models: one thread is faster, and far faster on a busy machine (`pytestmark` opts a file in)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
