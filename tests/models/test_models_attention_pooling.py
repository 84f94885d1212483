"""FusedSelfAttention equals nn.MultiheadAttention; pooling functions on hand-made tokens."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cytotune.models import FusedSelfAttention, convert_multihead_attention, get_pooling, pool
from cytotune.models.pooling import MODEL_POOLING, POOLINGS


def _mha(batch_first: bool) -> nn.MultiheadAttention:
    torch.manual_seed(3)
    mha = nn.MultiheadAttention(32, 4, batch_first=batch_first)
    with torch.no_grad():  # non-zero biases so they are checked too
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    return mha.eval()


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mask", [None, "float", "bool", "3d"])
def test_fused_attention_equals_multihead_attention(batch_first, mask):
    mha = _mha(batch_first)
    fused = FusedSelfAttention.from_multihead_attention(mha).eval()
    b, n = 3, 7
    x = torch.randn((b, n, 32) if batch_first else (n, b, 32))
    attn_mask = None
    if mask == "float":
        attn_mask = torch.randn(n, n)
    elif mask == "bool":
        attn_mask = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)  # causal
    elif mask == "3d":
        attn_mask = torch.randn(b * 4, n, n)
    with torch.no_grad():
        expected = mha(x, x, x, need_weights=False, attn_mask=attn_mask)[0]
        got, weights = fused(x, x, x, need_weights=False, attn_mask=attn_mask)
    assert weights is None
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_fused_attention_key_padding_mask_and_training_path():
    mha = _mha(True)
    fused = FusedSelfAttention.from_multihead_attention(mha)
    x = torch.randn(2, 5, 32)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    mha.train()
    fused.train()  # dropout 0: the training path must match too
    expected = mha(x, x, x, key_padding_mask=pad, need_weights=False)[0]
    got = fused(x, x, x, key_padding_mask=pad)[0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    got.sum().backward()
    assert fused.in_proj.weight.grad is not None


def test_fused_attention_refuses_cross_attention_and_weights():
    fused = FusedSelfAttention(32, 4, batch_first=True)
    x, y = torch.randn(1, 3, 32), torch.randn(1, 3, 32)
    with pytest.raises(NotImplementedError, match="self-attention"):
        fused(x, y, y)
    with pytest.raises(NotImplementedError, match="need_weights"):
        fused(x, x, x, need_weights=True)
    assert fused(x)[0].shape == x.shape  # key/value default to the query


def test_convert_multihead_attention_in_an_open_clip_tower():
    from open_clip.model import _build_vision_tower

    tower = _build_vision_tower(16, dict(image_size=32, layers=2, width=64, head_width=32,
                                         patch_size=8), quick_gelu=True).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = tower(x)
        assert convert_multihead_attention(tower) == 2
        after = tower(x)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
    assert convert_multihead_attention(tower) == 0
    block = tower.transformer.resblocks[0]
    assert isinstance(block.attn, FusedSelfAttention)
    assert {"attn.in_proj.weight", "attn.in_proj.bias", "attn.out_proj.weight"} <= set(block.state_dict())


def test_convert_skips_attentional_poolers():
    from open_clip.transformer import AttentionalPooler

    holder = nn.Module()
    holder.pool = AttentionalPooler(16, 16, n_head=2, n_queries=4)
    holder.self_attn = nn.MultiheadAttention(16, 2, batch_first=True)
    assert convert_multihead_attention(holder) == 1
    assert isinstance(holder.pool.attn, nn.MultiheadAttention)
    assert isinstance(holder.self_attn, FusedSelfAttention)


def _tokens(num_prefix: int) -> torch.Tensor:
    """Batch of 2: token t of image b is filled with 100 * b + t (D = 3)."""
    t = torch.arange(num_prefix + 4, dtype=torch.float32)
    rows = torch.stack([t, t + 100.0])  # (2, T)
    return rows[:, :, None].expand(2, num_prefix + 4, 3).clone()


def test_poolings_on_hand_made_tokens():
    tokens = _tokens(num_prefix=1)  # cls + 4 patches
    torch.testing.assert_close(pool("cls", tokens, 1), torch.tensor([[0.0] * 3, [100.0] * 3]))
    torch.testing.assert_close(pool("mean_patch", tokens, 1), torch.tensor([[2.5] * 3, [102.5] * 3]))
    both = pool("cls+mean_patch", tokens, 1)
    assert both.shape == (2, 6)
    torch.testing.assert_close(both[0], torch.tensor([0.0] * 3 + [2.5] * 3))


def test_mean_patch_skips_register_tokens():
    tokens = _tokens(num_prefix=5)  # cls + 4 registers (Virchow2-style) + 4 patches: 5..8
    torch.testing.assert_close(pool("mean_patch", tokens, 5)[0], torch.tensor([6.5] * 3))
    torch.testing.assert_close(pool("cls+mean_patch", tokens, 5)[1],
                               torch.tensor([100.0] * 3 + [106.5] * 3))


def test_pooling_registry_and_errors():
    assert set(POOLINGS) == {"cls", "mean_patch", "cls+mean_patch"} and MODEL_POOLING == "model"
    with pytest.raises(ValueError, match="unknown pooling"):
        get_pooling("max")
    with pytest.raises(ValueError, match="class token"):
        pool("cls", _tokens(0), 0)
    with pytest.raises(ValueError, match="no patch tokens"):
        pool("mean_patch", torch.zeros(1, 2, 3), 2)
