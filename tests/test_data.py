import urllib.error

import pytest
import torch

from minigpt_lib import (
    data,
    load_text,
)
from minigpt_lib.data import BatchSampler, CorpusNotFoundError, get_batch, sequential_windows, train_val_split


def test_batches_have_the_asked_shape(ids):
    x, y = get_batch(ids, block_size=8, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 8)
    assert x.dtype == torch.long


def test_targets_are_inputs_shifted_by_one(ids):
    x, y = get_batch(ids, block_size=8, batch_size=16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x[:, 1:], y[:, :-1])
    for row_x, row_y in zip(x, y, strict=True):
        start = next(i for i in range(len(ids) - 8) if torch.equal(ids[i : i + 8], row_x))
        assert ids[start + 8] == row_y[-1]


def test_batches_are_reproducible_with_a_seed(ids):
    a = get_batch(ids, 8, 4, torch.Generator().manual_seed(42))
    b = get_batch(ids, 8, 4, torch.Generator().manual_seed(42))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))


def test_sampler_continues_from_a_saved_position(ids):
    sampler = BatchSampler(ids, 8, 4, seed=3)
    sampler.next()
    state = sampler.get_state()
    expected = sampler.next()
    other = BatchSampler(ids, 8, 4, seed=99)
    other.set_state(state)
    assert torch.equal(other.next()[0], expected[0])


def test_too_short_data_is_a_clear_error():
    with pytest.raises(ValueError, match="too few"):
        get_batch(torch.arange(5), block_size=8, batch_size=2)


def test_split_is_ninety_ten_in_order():
    ids = torch.arange(1000)
    train, val = train_val_split(ids)
    assert len(train) == 900 and len(val) == 100
    assert torch.equal(torch.cat([train, val]), ids)


def test_sequential_windows_cover_every_target_once():
    ids = torch.arange(23)
    x, y = sequential_windows(ids, 5)
    assert x.shape == (4, 5)
    assert torch.equal(y.flatten(), torch.arange(1, 21))


def test_data_dir_without_the_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(CorpusNotFoundError, match="MINIGPT_DATA_DIR"):
        data.load_shakespeare()


def test_offline_without_a_cached_copy_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(data.CACHE_DIR_ENV, str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(data.urllib.request, "urlopen", no_network)
    with pytest.raises(CorpusNotFoundError, match="Offline.*MINIGPT_DATA_DIR"):
        data.load_shakespeare()
    assert list(tmp_path.iterdir()) == []


def test_a_file_with_the_wrong_checksum_is_refused(tmp_path, monkeypatch):
    (tmp_path / data.SHAKESPEARE_FILE).write_text("not shakespeare", encoding="utf-8")
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="sha256"):
        data.load_shakespeare()


def test_non_utf8_text_is_a_clear_error(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        data.load_text(path)


def test_a_byte_order_mark_is_not_read_as_text(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbfHello")
    assert load_text(path) == "Hello"
