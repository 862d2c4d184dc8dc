"""Muon: orthogonalised momentum for matrices, AdamW for the rest."""

import pytest
import torch

from minigpt_lib import GPT, GPTConfig, TrainConfig, Trainer
from minigpt_lib.optim import Muon, orthogonalize
from minigpt_lib.train import configure_optimizer


@pytest.mark.parametrize("shape", [(32, 32), (16, 48), (48, 16)])
def test_orthogonalize_pushes_every_singular_value_near_one(shape):
    u, _, vt = torch.linalg.svd(torch.randn(shape), full_matrices=False)
    g = u @ torch.diag(torch.linspace(0.1, 5.0, min(shape))) @ vt  # singular values 50 times apart
    s = torch.linalg.svdvals(orthogonalize(g))
    assert s.min() > 0.6 and s.max() < 1.25


def test_orthogonalize_keeps_the_directions_of_its_input():
    u, _, vt = torch.linalg.svd(torch.randn(20, 20))
    g = u @ torch.diag(torch.linspace(1, 3, 20)) @ vt
    o = orthogonalize(g)  # the iteration trades exactness for speed: singular values end in about [0.7, 1.2]
    assert torch.nn.functional.cosine_similarity(o.flatten(), (u @ vt).flatten(), dim=0) > 0.95


def test_orthogonalize_treats_a_stack_as_separate_matrices():
    g = torch.randn(3, 8, 24)
    torch.testing.assert_close(orthogonalize(g)[1], orthogonalize(g[1]), rtol=1e-5, atol=1e-5)


def test_muon_groups_take_only_matrices():
    with pytest.raises(ValueError, match="only matrices"):
        Muon([{"params": [torch.nn.Parameter(torch.zeros(3))], "muon": True}])


def test_the_muon_optimizer_gives_matrices_to_muon_and_embeddings_to_adamw(tiny_model):
    optimizer = configure_optimizer(tiny_model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    muon = {id(p) for g in optimizer.param_groups if g["muon"] for p in g["params"]}
    assert id(tiny_model.transformer.h[0].attn.c_attn.weight) in muon
    assert id(tiny_model.transformer.h[0].mlp.c_fc.weight) in muon
    assert id(tiny_model.transformer.wte.weight) not in muon
    assert id(tiny_model.transformer.ln_f.weight) not in muon


def test_each_muon_group_follows_the_schedule_at_its_own_scale(tiny_model, ids):
    config = TrainConfig(optimizer="muon", learning_rate=1e-2, muon_lr=0.04, warmup_steps=1, max_steps=10)
    trainer = Trainer(tiny_model, ids[:2000], ids[2000:], config, device="cpu")
    trainer.train_step()
    trainer.train_step()
    lrs = {g["muon"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs[True] == pytest.approx(4 * lrs[False])


def test_muon_training_lowers_the_loss(tiny_config, ids):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**dict(tiny_config.to_dict(), position="rope")))
    config = TrainConfig(max_steps=60, batch_size=8, learning_rate=1e-2, warmup_steps=5, optimizer="muon")
    trainer = Trainer(model, ids[:2500], ids[2500:], config, device="cpu")
    before = trainer.evaluate()
    trainer.train(progress_bar=False)
    assert trainer.evaluate() < before - 0.5


def test_an_unknown_optimizer_is_a_clear_error():
    with pytest.raises(ValueError, match="optimizer must be"):
        TrainConfig(optimizer="sgd")
