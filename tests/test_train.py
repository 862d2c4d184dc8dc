import math

import pytest
import torch
from helpers import small_train_config

from minigpt_lib import (
    TrainConfig,
    Trainer,
    TrainingDivergedError,
)
from minigpt_lib.train import evaluate, lr_at


def small_config(**overrides) -> TrainConfig:
    return small_train_config(**{"max_steps": 30, "seed": 0, **overrides})


def test_schedule_warms_up_linearly_then_decays_to_min_lr():
    cfg = TrainConfig(max_steps=100, warmup_steps=10, learning_rate=1.0, min_lr=0.1)
    assert lr_at(cfg, 0) == pytest.approx(0.1)
    assert lr_at(cfg, 9) == pytest.approx(1.0)
    assert lr_at(cfg, 10) == pytest.approx(1.0)
    assert lr_at(cfg, 55) == pytest.approx(0.55)
    assert lr_at(cfg, 100) == pytest.approx(0.1)


def test_training_lowers_the_loss(tiny_model, ids):
    train, val = ids[:2500], ids[2500:]
    trainer = Trainer(tiny_model, train, val, small_config(max_steps=60), device="cpu")
    evals = trainer.train(progress_bar=False)
    assert evals[-1]["train"] < evals[0]["train"] - 0.5
    assert len(trainer.history["loss"]) == 60


def test_a_nan_loss_stops_training_with_a_clear_message(tiny_model, ids):
    with torch.no_grad():
        tiny_model.transformer.wte.weight[0, 0] = float("nan")
    trainer = Trainer(tiny_model, ids, ids, small_config(), device="cpu")
    with pytest.raises(TrainingDivergedError, match="Lower the learning rate"):
        trainer.train_step()


def test_a_time_budget_ends_training_early(tiny_model, ids):
    trainer = Trainer(tiny_model, ids, ids, small_config(max_steps=100_000, time_budget=0.5), device="cpu")
    trainer.train(progress_bar=False)
    assert 0 < trainer.step < 100_000
    assert trainer.elapsed >= 0.5


def test_full_split_evaluation_uses_every_window(tiny_model, ids):
    loss = evaluate(tiny_model, ids[:161], block_size=16)
    x, y = ids[:160].view(10, 16), ids[1:161].view(10, 16)
    tiny_model.eval()
    _, expected = tiny_model(x, y)
    assert loss == pytest.approx(expected.item(), rel=1e-5)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(learning_rate=1e-3, min_lr=1e-2)
    with pytest.raises(ValueError, match="time_budget"):
        TrainConfig(time_budget=-1)


def test_weight_decay_applies_to_matrices_only(tiny_model, ids):
    trainer = Trainer(tiny_model, ids, ids, small_config(), device="cpu")
    decay, no_decay = trainer.optimizer.param_groups
    assert all(p.dim() == 2 for p in decay["params"]) and decay["weight_decay"] > 0
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0
    assert math.isclose(sum(p.numel() for g in (decay, no_decay) for p in g["params"]), tiny_model.num_params())


def test_a_model_without_block_size_needs_one(ids):
    with pytest.raises(ValueError, match="block_size"):
        Trainer(torch.nn.Linear(2, 2), ids, ids, small_config(), device="cpu")


def test_the_trainer_uses_the_models_block_size_unless_given_one(tiny_model, ids):
    assert Trainer(tiny_model, ids, ids, small_config(), device="cpu").block_size == tiny_model.block_size
    assert Trainer(tiny_model, ids, ids, small_config(), block_size=3, device="cpu").block_size == 3


@pytest.mark.parametrize("max_steps", [10**9, 5])  # the clock ends the run, or the step limit does
def test_with_a_time_budget_the_progress_bar_counts_seconds_and_ends_full(tiny_model, ids, monkeypatch, max_steps):
    bars = []

    class Bar:
        def __init__(self, total=None, initial=0, **_):
            self.total, self.n = total, initial
            bars.append(self)

        def update(self, n):
            self.n += n

        def set_postfix(self, **_):
            pass

        def close(self):
            pass

    monkeypatch.setattr("minigpt_lib.train.tqdm", Bar)
    config = small_config(max_steps=max_steps, time_budget=0.3)
    trainer = Trainer(tiny_model, ids[:2500], ids[2500:], config, device="cpu")
    trainer.train()
    assert bars[0].total == 0.3
    assert bars[0].n == pytest.approx(0.3)


def test_zero_eval_interval_or_eval_batches_is_refused():
    for field in ("eval_interval", "eval_batches"):
        with pytest.raises(ValueError, match=field):
            TrainConfig(**{field: 0})
