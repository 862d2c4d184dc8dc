import torch

from minigpt_lib import Block, CausalSelfAttention, GPTConfig, Head, MultiHeadAttention, fuse_heads


def test_fused_attention_equals_the_step_by_step_heads():
    torch.manual_seed(0)
    mha = MultiHeadAttention(n_embd=32, n_head=4, block_size=16).eval()
    fused = fuse_heads(mha).eval()
    x = torch.randn(3, 16, 32)
    torch.testing.assert_close(fused(x), mha(x))


def test_a_head_attends_only_to_the_past():
    torch.manual_seed(0)
    head = Head(n_embd=8, head_size=4, block_size=6)
    head(torch.randn(1, 6, 8))
    weights = head.last_weights[0]
    assert torch.all(weights.triu(diagonal=1) == 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(6))


def test_attention_keeps_the_shape():
    attn = CausalSelfAttention(n_embd=24, n_head=3)
    assert attn(torch.randn(2, 5, 24)).shape == (2, 5, 24)


def test_block_is_pre_norm_residual():
    torch.manual_seed(0)
    block = Block(GPTConfig(n_embd=16, n_head=2, block_size=8)).eval()
    x = torch.randn(2, 8, 16)
    h = x + block.attn(block.ln_1(x))
    torch.testing.assert_close(block(x), h + block.mlp(block.ln_2(h)))
