"""Layer-level behaviour of LoRALinear / LoRAConv2d (peft-style invariants)."""
import math

import pytest
import torch
from torch import nn

from cytotune.adapters import LoRAConv2d, LoRALinear


def _randomise(layer, seed=1, std=0.1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(layer.lora_A.values()) + list(layer.lora_B.values()):
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)


def _fused(dim=12, parts=(("q", (0, 3)), ("v", (2, 3))), rank=2, dtype=torch.float64, **kw):
    torch.manual_seed(0)
    base = nn.Linear(dim, 3 * dim).to(dtype)
    ref = nn.Linear(dim, 3 * dim).to(dtype)
    ref.load_state_dict(base.state_dict())
    layer = LoRALinear(base, rank=rank, name="attn.qkv", **kw)
    for key, part in parts:
        layer.add_adapter(key, part)
    return layer, ref


# ---------------------------------------------------------------------- init equivalence (B = 0)
def test_linear_init_is_identity_and_shapes():
    torch.manual_seed(0)
    base = nn.Linear(10, 7)
    x = torch.randn(4, 5, 10)
    expected = base(x)
    layer = LoRALinear(base, rank=3, alpha=6.0)
    layer.add_adapter("o")
    assert layer.scaling == 2.0
    assert layer.lora_A["o"].shape == (3, 10) and layer.lora_B["o"].shape == (7, 3)
    assert torch.count_nonzero(layer.lora_B["o"]) == 0
    assert torch.count_nonzero(layer.lora_A["o"]) > 0
    # Kaiming-uniform with a=sqrt(5): bound = 1/sqrt(fan_in), as nn.Linear's weight init
    assert layer.lora_A["o"].abs().max() <= 1 / math.sqrt(10)
    assert torch.equal(layer(x), expected)
    assert layer.in_features == 10 and layer.out_features == 7


def test_fused_qkv_init_is_identity():
    layer, ref = _fused(dtype=torch.float32)
    x = torch.randn(2, 5, 12)
    assert torch.equal(layer(x), ref(x))
    assert layer.lora_slices == {"q": (0, 12), "v": (24, 36)}
    assert layer.lora_B["q"].shape == (12, 2)


def test_base_is_frozen_and_weight_attribute_fails_loudly():
    layer, _ = _fused()
    assert not any(p.requires_grad for p in layer.base.parameters())
    assert all(p.requires_grad for p in layer.lora_A.values())
    with pytest.raises(AttributeError, match=r"base\.weight"):
        layer.weight
    with pytest.raises(AttributeError, match="bias"):
        layer.bias
    with pytest.raises(AttributeError):
        layer.no_such_thing


# ------------------------------------------------------------------------------ merge / unmerge
def test_merge_equals_unmerged_and_unmerge_restores_weights():
    layer, ref = _fused()
    _randomise(layer)
    x = torch.randn(3, 4, 12, dtype=torch.float64)
    unmerged = layer(x)
    assert not torch.allclose(unmerged, ref(x))  # the adapters do something
    original = layer.base.weight.clone()
    assert layer.merge() is True
    assert layer.merged
    assert not torch.allclose(layer.base.weight, original)
    torch.testing.assert_close(layer(x), unmerged)
    assert layer.merge() is False  # idempotent
    torch.testing.assert_close(layer(x), unmerged)
    assert layer.unmerge() is True and not layer.merged
    assert layer.unmerge() is False
    torch.testing.assert_close(layer.base.weight, original, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer(x), unmerged)


def test_delta_weight_matches_dense_formula():
    layer, _ = _fused(rank=3, alpha=1.5)
    _randomise(layer)
    for key in ("q", "v"):
        A, B = layer.lora_A[key], layer.lora_B[key]
        torch.testing.assert_close(layer.delta_weight(key), 0.5 * B @ A)


# ----------------------------------------------------------------- fused qkv: k stays untouched
def test_k_slice_untouched_with_random_adapters():
    layer, ref = _fused(dtype=torch.float32)
    _randomise(layer, std=1.0)
    x = torch.randn(2, 6, 12, requires_grad=True)
    out, expected = layer(x), ref(x)
    assert torch.equal(out[..., 12:24], expected[..., 12:24])  # k bit-for-bit
    assert not torch.allclose(out[..., :12], expected[..., :12])  # q changed
    assert not torch.allclose(out[..., 24:], expected[..., 24:])  # v changed
    # k's output does not depend on any LoRA parameter
    grads = torch.autograd.grad(out[..., 12:24].sum(), list(layer.lora_A.values())
                                + list(layer.lora_B.values()), allow_unused=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)
    # merging touches only the q and v rows of the fused weight
    k_rows = layer.base.weight[12:24].clone()
    k_bias = layer.base.bias.clone()
    layer.merge()
    assert torch.equal(layer.base.weight[12:24], k_rows)
    assert torch.equal(layer.base.bias, k_bias)
    assert torch.equal(layer(x)[..., 12:24], expected[..., 12:24])


def test_backward_reaches_only_lora_parameters():
    layer, _ = _fused(dtype=torch.float32)
    _randomise(layer)
    x = torch.randn(2, 6, 12, requires_grad=True)
    layer(x).pow(2).sum().backward()
    assert layer.base.weight.grad is None and layer.base.bias.grad is None
    for p in list(layer.lora_A.values()) + list(layer.lora_B.values()):
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0
    assert x.grad is not None


def test_gradient_of_b_at_init_is_nonzero():
    layer, _ = _fused(dtype=torch.float32)
    layer(torch.randn(2, 12)).sum().backward()
    assert torch.count_nonzero(layer.lora_B["q"].grad) > 0
    assert torch.count_nonzero(layer.lora_A["q"].grad) == 0  # B = 0 blocks A's gradient


# ------------------------------------------------------------------------------- part checking
def test_overlapping_and_invalid_parts_are_rejected():
    layer, _ = _fused()
    with pytest.raises(ValueError, match="overlaps adapter 'q'"):
        layer.add_adapter("all", None)
    with pytest.raises(ValueError, match="already has an adapter named 'v'"):
        layer.add_adapter("v", (1, 3))
    with pytest.raises(ValueError, match=r"cannot be split into 5 equal parts"):
        layer.add_adapter("k", (1, 5))
    with pytest.raises(ValueError, match="0 <= index < count"):
        layer.add_adapter("k", (3, 3))
    layer.add_adapter("k", (1, 3))  # the remaining third is fine
    layer.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.add_adapter("x", None)


def test_dropout_only_touches_the_lora_branch():
    torch.manual_seed(0)
    base = nn.Linear(8, 8)
    x = torch.randn(16, 8)
    expected = base(x)
    layer = LoRALinear(base, dropout=0.5)
    layer.add_adapter("o")
    layer.train()
    assert torch.equal(layer(x), expected)  # B = 0: dropout cannot leak into the base path
    _randomise(layer)
    layer.eval()
    a, b = layer(x), layer(x)
    assert torch.equal(a, b)  # no dropout in eval
    layer.train()
    assert not torch.allclose(layer(x), a)


def test_adapters_follow_base_dtype_and_device_including_meta():
    base = nn.Linear(4, 6, dtype=torch.float64)
    layer = LoRALinear(base)
    layer.add_adapter("q", (0, 2))
    assert layer.lora_A["q"].dtype == torch.float64
    with torch.device("meta"):
        meta_base = nn.Linear(1024, 3072)
    layer = LoRALinear(meta_base, rank=16)
    layer.add_adapter("q", (0, 3))
    assert layer.lora_A["q"].is_meta and layer.lora_A["q"].shape == (16, 1024)
    layer.merge()
    layer.unmerge()


def test_wrong_types_are_rejected():
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv2d(3, 3, 1), name="stem")
    with pytest.raises(TypeError, match="nn.Conv2d"):
        LoRAConv2d(nn.Linear(3, 3), name="head")


# ---------------------------------------------------------------------------------------- Conv2d
def _same_pad_conv(*args, **kwargs):
    from timm.layers import Conv2dSame

    return Conv2dSame(*args, **kwargs)


CONV_CASES = {
    "1x1": lambda: nn.Conv2d(6, 8, 1),
    "3x3_s2_p1": lambda: nn.Conv2d(6, 8, 3, stride=2, padding=1),
    "5x3_dilated": lambda: nn.Conv2d(6, 8, (5, 3), padding=(4, 2), dilation=2, bias=False),
    "same_string": lambda: nn.Conv2d(6, 8, 3, padding="same"),
    "reflect": lambda: nn.Conv2d(6, 8, 3, padding=1, padding_mode="reflect"),
    "timm_Conv2dSame_s2": lambda: _same_pad_conv(6, 8, 3, stride=2),
    "timm_Conv2dSame_k4": lambda: _same_pad_conv(6, 8, 4, stride=1),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv_init_identity_and_merge_equivalence(case):
    torch.manual_seed(0)
    base = CONV_CASES[case]().double()
    x = torch.randn(2, 6, 15, 13, dtype=torch.float64)  # odd sizes: asymmetric 'same' padding
    expected = base(x)
    original = base.weight.detach().clone()
    layer = LoRAConv2d(base, rank=3, alpha=2.0, name=case)
    layer.add_adapter("conv")
    assert layer.lora_A["conv"].shape == (3, 6, *base.kernel_size)
    assert layer.lora_B["conv"].shape == (8, 3, 1, 1)
    assert torch.equal(layer(x), expected)
    _randomise(layer, std=0.3)
    unmerged = layer(x)
    assert unmerged.shape == expected.shape
    assert not torch.allclose(unmerged, expected)
    layer.merge()
    torch.testing.assert_close(layer(x), unmerged)
    layer.unmerge()
    torch.testing.assert_close(layer.base.weight, original, rtol=0, atol=1e-12)


def test_conv_parts_and_unbatched_input():
    torch.manual_seed(0)
    base = nn.Conv2d(4, 6, 3, padding=1).double()
    layer = LoRAConv2d(base, name="c")
    layer.add_adapter("a", (0, 3))
    layer.add_adapter("c", (2, 3))
    _randomise(layer)
    x = torch.randn(4, 7, 7, dtype=torch.float64)  # unbatched (C, H, W)
    out = layer(x)
    expected = base(x)
    assert torch.equal(out[2:4], expected[2:4])
    assert not torch.allclose(out[0:2], expected[0:2])
    batched = layer(x[None])[0]
    torch.testing.assert_close(out, batched)
    layer.merge()
    torch.testing.assert_close(layer(x), out)


def test_grouped_and_custom_convs_are_rejected_naming_the_layer():
    with pytest.raises(ValueError, match=r"blocks\.1\.0\.conv_dw.*groups=6"):
        LoRAConv2d(nn.Conv2d(6, 6, 3, groups=6), name="blocks.1.0.conv_dw")

    class Standardised(nn.Conv2d):
        def forward(self, x):
            w = (self.weight - self.weight.mean()) / (self.weight.std() + 1e-5)
            return self._conv_forward(x, w, self.bias)

    with pytest.raises(TypeError, match="stem.conv.*Standardised"):
        LoRAConv2d(Standardised(3, 4, 3), name="stem.conv")
