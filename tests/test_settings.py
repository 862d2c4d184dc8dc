import pytest

from minigpt_lib import choose


def test_full_values_without_fast_mode(monkeypatch):
    monkeypatch.delenv("MINIGPT_FAST", raising=False)
    assert choose(full=dict(steps=1000, lr=0.1), fast=dict(steps=10)).steps == 1000


def test_fast_values_override_in_fast_mode(monkeypatch):
    monkeypatch.setenv("MINIGPT_FAST", "1")
    s = choose(full=dict(steps=1000, lr=0.1), fast=dict(steps=10))
    assert (s.steps, s.lr) == (10, 0.1)


def test_a_fast_value_without_a_full_value_is_an_error():
    with pytest.raises(KeyError, match="no full value"):
        choose(full=dict(steps=1), fast=dict(stpes=2))
