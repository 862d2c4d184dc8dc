import pytest
import torch
import torch.nn.functional as F

from minigpt_lib import GPT, GPTConfig, load_shakespeare, save_checkpoint, save_trainer
from minigpt_lib.chat import chat_tokenizer, message, render
from minigpt_lib.sft import (
    finetune_trainer,
    finished_sft,
    masked_targets,
    pack,
    pack_conversations,
    resume_finetune,
    sft_config,
)
from minigpt_lib.tasks import Example
from minigpt_lib.train import IGNORE_INDEX

TOKENIZER = chat_tokenizer()
SMALL_DATA = {"n_train": 300, "n_val": 26}


def tiny_chat_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    config = GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16, position="rope")
    return GPT(config)


@pytest.fixture(scope="module")
def text() -> str:
    return load_shakespeare()


def test_targets_outside_the_mask_are_ignored():
    x, y = masked_targets([1, 2, 3, 4, 5], [0, 0, 1, 1, 0])
    assert x == [1, 2, 3, 4]
    assert y == [IGNORE_INDEX, 3, 4, IGNORE_INDEX]


def test_packing_puts_every_item_in_exactly_one_bin_within_capacity():
    lengths = [70, 60, 50, 40, 30, 20, 10, 129, 1, 64, 65]
    bins = pack(lengths, 129)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 129 for b in bins)
    assert len(bins) == -(-sum(lengths) // 129)  # as few bins as the total length allows, here
    with pytest.raises(ValueError, match="does not fit"):
        pack([130], 129)


def test_packed_windows_learn_exactly_the_assistants_tokens():
    examples = [Example("t", [message("user", f"q{i}")], f"answer {i}") for i in range(30)]
    x, y = pack_conversations(examples, TOKENIZER, block_size=40)
    assert x.shape[1] == y.shape[1] == 40
    learned = TOKENIZER.decode([t for t in y.flatten().tolist() if t != IGNORE_INDEX])
    assert sorted(learned.split("<|end|>")[:-1]) == sorted(f"answer {i}" for i in range(30))
    assert torch.equal(x[:, 1:], y[:, :-1].where(y[:, :-1] != IGNORE_INDEX, x[:, 1:]))  # y is x shifted by one


def test_the_masked_loss_is_the_mean_over_the_assistants_tokens_only():
    model = tiny_chat_model()
    ids, mask = render([message("user", "Hi"), message("assistant", "Hello!")], TOKENIZER)
    x, y = (torch.tensor([v]) for v in masked_targets(ids, mask))
    logits, loss = model(x, y)
    keep = y[0] != IGNORE_INDEX
    expected = F.cross_entropy(logits[0][keep], y[0][keep])
    torch.testing.assert_close(loss, expected)
    assert int(keep.sum()) == len("Hello!") + 1


def test_resumed_fine_tuning_equals_uninterrupted_fine_tuning(tmp_path, text):
    config = sft_config(max_steps=10, batch_size=4, eval_interval=5, eval_batches=2, warmup_steps=2)
    straight = finetune_trainer(tiny_chat_model(), TOKENIZER, text, config, SMALL_DATA, device="cpu")
    straight.train(progress_bar=False)

    first = finetune_trainer(tiny_chat_model(), TOKENIZER, text, config, SMALL_DATA, device="cpu")
    first.train(steps=4, progress_bar=False)
    save_trainer(first, tmp_path / "sft")
    torch.manual_seed(999)
    resumed = resume_finetune(tmp_path / "sft", text, device="cpu")
    assert resumed.step == 4 and resumed.meta == straight.meta
    resumed.train(progress_bar=False)
    assert resumed.history["loss"] == straight.history["loss"]
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)

    assert finished_sft(tmp_path / "sft") is None  # saved at step 4 of 10: not finished
    save_trainer(resumed, tmp_path / "sft")
    assert finished_sft(tmp_path / "sft")["meta"]["chat"] is True


def test_a_pretrained_checkpoint_is_not_a_finished_fine_tuning_run(tmp_path):
    save_checkpoint(tmp_path / "base", tiny_chat_model(), TOKENIZER)
    assert finished_sft(tmp_path / "base") is None
    assert finished_sft(tmp_path / "missing") is None


def test_fine_tuning_a_model_without_the_chat_tokens_is_a_clear_error(text):
    from minigpt_lib import BPETokenizer

    with pytest.raises(ValueError, match="chat_tokenizer"):
        finetune_trainer(tiny_chat_model(), BPETokenizer([]), text, sft_config(max_steps=1))


def test_resuming_rebuilds_the_conversations_with_the_checkpoints_own_tokenizer(tmp_path, text):
    from minigpt_lib.chat import SPECIAL_TOKENS
    from minigpt_lib.tokenizers import BPETokenizer

    own = BPETokenizer([], "gpt4", ["<|extra|>", *SPECIAL_TOKENS])  # the chat tokens at other ids
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=own.vocab_size, block_size=128, n_layer=1, n_head=2, n_embd=16, position="rope")
    base = GPT(config)
    straight = finetune_trainer(base, own, text, sft_config(max_steps=4, batch_size=4, eval_interval=2), SMALL_DATA)
    split = finetune_trainer(GPT(config), own, text, sft_config(max_steps=4, batch_size=4, eval_interval=2), SMALL_DATA)
    split.model.load_state_dict(straight.model.state_dict())
    straight.train(progress_bar=False)
    split.train(steps=2, progress_bar=False)
    save_trainer(split, tmp_path / "sft")
    resumed = resume_finetune(tmp_path / "sft", text, device="cpu")
    resumed.train(progress_bar=False)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key


def test_a_crafted_number_of_conversations_is_refused_before_generating(tmp_path, text):
    import json

    from minigpt_lib.checkpoint import CheckpointError

    trainer = finetune_trainer(tiny_chat_model(), TOKENIZER, text, sft_config(max_steps=2, batch_size=4), SMALL_DATA)
    folder = save_trainer(trainer, tmp_path / "sft")
    manifest = json.loads((folder / "checkpoint.json").read_text())
    manifest["meta"]["data"]["n_train"] = 10**12
    (folder / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="conversation settings"):
        resume_finetune(folder, text)
