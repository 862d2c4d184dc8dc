"""The corpus: Tiny Shakespeare (or any text file), the train/val split, and (x, y) batches."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import torch

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_FILE = "tinyshakespeare.txt"
DATA_DIR_ENV = "MINIGPT_DATA_DIR"
CACHE_DIR_ENV = "MINIGPT_CACHE_DIR"


class CorpusNotFoundError(FileNotFoundError):
    """The corpus is neither cached, nor in MINIGPT_DATA_DIR, nor downloadable."""


def cache_dir() -> Path:
    """Folder where downloaded data is kept (MINIGPT_CACHE_DIR, else ~/.cache/minigpt)."""
    return Path(os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "minigpt")


def sha256_of(path: Path) -> str:
    """Hex sha256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path, sha256: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                shutil.copyfileobj(response, tmp)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
    got = sha256_of(tmp_path)
    if got != sha256:
        tmp_path.unlink(missing_ok=True)
        raise ValueError(f"download from {url} has sha256 {got}, expected {sha256}; not using it")
    os.replace(tmp_path, dest)


def shakespeare_path() -> Path:
    """Path to a verified copy of Tiny Shakespeare, downloading it into the cache if needed."""
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        path = Path(data_dir) / SHAKESPEARE_FILE
        if not path.is_file():
            raise CorpusNotFoundError(
                f"{DATA_DIR_ENV} is set to {data_dir!r} but {path} does not exist; put "
                f"{SHAKESPEARE_FILE} there (from {SHAKESPEARE_URL}) or unset {DATA_DIR_ENV}"
            )
        if sha256_of(path) != SHAKESPEARE_SHA256:
            raise ValueError(f"{path} does not have the expected sha256 {SHAKESPEARE_SHA256}")
        return path
    path = cache_dir() / SHAKESPEARE_FILE
    if path.is_file() and sha256_of(path) == SHAKESPEARE_SHA256:
        return path
    try:
        _download(SHAKESPEARE_URL, path, SHAKESPEARE_SHA256)
    except (urllib.error.URLError, OSError) as err:
        raise CorpusNotFoundError(
            f"could not download Tiny Shakespeare from {SHAKESPEARE_URL} ({err}). Offline? "
            f"Download {SHAKESPEARE_FILE} on another machine and either put it at {path} or "
            f"set {DATA_DIR_ENV} to the folder that holds it."
        ) from err
    return path


def load_text(path: str | Path | None = None) -> str:
    """Read a UTF-8 text corpus: the given file, or Tiny Shakespeare when `path` is None."""
    if path is None:
        path = shakespeare_path()
    path = Path(path)
    if not path.is_file():
        raise CorpusNotFoundError(f"no text file at {path}; give the path of a UTF-8 text file")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte order mark at the start is not text: dropped
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err}); convert it to UTF-8 first") from err
    if not text:
        raise ValueError(f"{path} is empty; a corpus needs text to learn from")
    return text


def load_shakespeare() -> str:
    """The Tiny Shakespeare text (about 1.1 million characters)."""
    return load_text(None)


def train_val_split(ids: torch.Tensor, train_fraction: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a 1-D id tensor into its first `train_fraction` (train) and the rest (val)."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be between 0 and 1, got {train_fraction}")
    n = int(train_fraction * len(ids))
    return ids[:n], ids[n:]


def get_batch(
    ids: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows x of `block_size` ids and their targets y, the same windows shifted by one."""
    if len(ids) <= block_size:
        raise ValueError(
            f"the data has {len(ids)} tokens, too few for windows of block_size={block_size}; "
            "use more text or a smaller block_size"
        )
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size)
    x = ids[starts[:, None] + offsets]
    y = ids[starts[:, None] + offsets + 1]
    return x, y


class BatchSampler:
    """Reproducible stream of random (x, y) batches whose position can be saved and restored."""

    def __init__(self, ids: torch.Tensor, block_size: int, batch_size: int, seed: int = 1337):
        self.ids = ids
        self.block_size = block_size
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch of the stream."""
        return get_batch(self.ids, self.block_size, self.batch_size, self.generator)

    def get_state(self) -> torch.Tensor:
        """The stream's position, as a byte tensor."""
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        """Continue the stream from a position returned by `get_state`."""
        self.generator.set_state(state)


def sequential_windows(ids: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All non-overlapping windows of `ids` as (x, y); every id after the first is a target once."""
    n = (len(ids) - 1) // block_size
    if n == 0:
        raise ValueError(f"{len(ids)} tokens do not fill one window of block_size={block_size}")
    x = ids[: n * block_size].view(n, block_size)
    y = ids[1 : n * block_size + 1].view(n, block_size)
    return x, y
