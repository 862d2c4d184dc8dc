"""MiniGPT Book's companion library: every piece of a small ChatGPT, built from scratch."""

from .attention import CausalSelfAttention, Head, MultiHeadAttention, fuse_heads
from .bigram import BigramCounts, BigramLM
from .checkpoint import CheckpointError, load_checkpoint, resume_trainer, save_checkpoint, save_trainer
from .data import BatchSampler, CorpusNotFoundError, get_batch, load_shakespeare, load_text, train_val_split
from .device import pick_device
from .model import GPT, MLP, Block, GPTConfig
from .presets import PRESETS, get_preset
from .settings import RunClock, choose, is_fast, seed_everything
from .tokenizers import BPETokenizer, CharTokenizer, UnknownCharacterError, load_tokenizer
from .train import TrainConfig, Trainer, TrainingDivergedError, evaluate

__version__ = "0.1.0"

__all__ = [
    "BPETokenizer",
    "BatchSampler",
    "BigramCounts",
    "BigramLM",
    "Block",
    "CausalSelfAttention",
    "CharTokenizer",
    "CheckpointError",
    "CorpusNotFoundError",
    "GPT",
    "GPTConfig",
    "Head",
    "MLP",
    "MultiHeadAttention",
    "PRESETS",
    "RunClock",
    "TrainConfig",
    "Trainer",
    "TrainingDivergedError",
    "UnknownCharacterError",
    "choose",
    "evaluate",
    "fuse_heads",
    "get_batch",
    "get_preset",
    "is_fast",
    "load_checkpoint",
    "load_shakespeare",
    "load_text",
    "load_tokenizer",
    "pick_device",
    "resume_trainer",
    "save_checkpoint",
    "save_trainer",
    "seed_everything",
    "train_val_split",
]
