"""apply_lora on real architectures: timm ViT (fused qkv), timm EfficientNet (convs), HF ViT."""
import copy

import pytest
import torch
from torch import nn

from cytotune.adapters import (
    LoRAConfig,
    LoRAConv2d,
    LoRALinear,
    apply_lora,
    count_lora_parameters,
    has_lora,
    lora_config,
    lora_modules,
    lora_parameters,
    mark_only_lora_trainable,
    merge_lora,
    remove_lora,
    unmerge_lora,
)
from cytotune.models.card import LoraTarget


def _x(seed=0, dtype=torch.float32, size=32, batch=2):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed),
                       dtype=dtype)


# ------------------------------------------------------------------------------- timm ViT (fused)
def test_vit_init_equivalence_and_wrapper_layout(tiny_vit, vit_targets):
    model = tiny_vit()
    x = _x()
    expected = model(x)
    names = apply_lora(model, LoRAConfig(), vit_targets)
    assert names == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    qkv = model.blocks[0].attn.qkv
    assert isinstance(qkv, LoRALinear)
    assert qkv.lora_slices == {"q": (0, 64), "v": (128, 192)}
    assert qkv.lora_targets == {"q": "q", "v": "v"}
    assert torch.equal(model(x), expected)
    assert lora_config(model) == LoRAConfig()


def test_vit_merge_equivalence_and_exact_restore(tiny_vit, vit_targets, perturb):
    model = tiny_vit().double()
    x = _x(dtype=torch.float64)
    base_out = model(x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoRAConfig(rank=4, alpha=8.0, targets=("q", "v", "o", "fc2")), vit_targets)
    perturb(model)
    unmerged = model(x)
    assert not torch.allclose(unmerged, base_out)
    assert merge_lora(model) == 6 and merge_lora(model) == 0
    torch.testing.assert_close(model(x), unmerged)
    assert unmerge_lora(model) == 6 and unmerge_lora(model) == 0
    torch.testing.assert_close(model(x), unmerged)
    after = {k.replace(".base.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}
    assert after.keys() == before.keys()
    for k in before:
        torch.testing.assert_close(after[k], before[k], rtol=0, atol=1e-12, msg=k)


def test_vit_k_output_untouched_by_q_v_adapters(tiny_vit, vit_targets, perturb):
    model = tiny_vit()
    reference = copy.deepcopy(model)
    apply_lora(model, LoRAConfig(), vit_targets)
    perturb(model, std=1.0)
    qkv, ref_qkv = model.blocks[1].attn.qkv, reference.blocks[1].attn.qkv
    tokens = torch.randn(2, 17, 64)
    out, expected = qkv(tokens), ref_qkv(tokens)
    assert torch.equal(out[..., 64:128], expected[..., 64:128])
    assert not torch.allclose(out[..., :64], expected[..., :64])
    merge_lora(model)
    assert torch.equal(qkv.base.weight[64:128], ref_qkv.weight[64:128])
    assert torch.equal(qkv.base.bias, ref_qkv.bias)


def test_only_lora_and_head_get_gradients(tiny_vit, vit_targets, perturb):
    model = tiny_vit(num_classes=3).train()
    apply_lora(model, LoRAConfig(targets=("q", "v", "fc1")), vit_targets)
    perturb(model)
    n_lora = count_lora_parameters(model)
    n_head = sum(p.numel() for p in model.head.parameters())
    assert mark_only_lora_trainable(model, keep_trainable=("head.*",)) == n_lora + n_head
    model(_x()).logsumexp(-1).sum().backward()
    lora_ids = {id(p) for p in lora_parameters(model)}
    head_ids = {id(p) for p in model.head.parameters()}
    for name, p in model.named_parameters():
        if id(p) in lora_ids or id(p) in head_ids:
            assert p.requires_grad and p.grad is not None, name
            assert torch.count_nonzero(p.grad) > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    # without keep_trainable the head is frozen too
    assert mark_only_lora_trainable(model) == n_lora
    assert not model.head.weight.requires_grad


@pytest.mark.parametrize("rank, targets", [
    (1, ("q",)),
    (2, ("q", "v")),
    (4, ("q", "k", "v", "o")),
    (3, ("v", "fc1", "fc2")),
])
def test_parameter_count_matches_formula(tiny_vit, vit_targets, rank, targets):
    depth, width, mlp = 2, 64, 256
    shapes = {"q": (width, width), "k": (width, width), "v": (width, width),
              "o": (width, width), "fc1": (width, mlp), "fc2": (mlp, width)}  # (in, out part)
    model = tiny_vit()
    apply_lora(model, LoRAConfig(rank=rank, targets=targets), vit_targets)
    expected = sum(depth * rank * (shapes[t][0] + shapes[t][1]) for t in targets)
    assert count_lora_parameters(model) == expected
    assert sum(p.numel() for p in lora_parameters(model)) == expected


def _meta_timm(name, **kwargs):
    import timm

    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, **kwargs)


@pytest.mark.slow
def test_full_size_vit_b16_count_on_meta(vit_targets):
    model = _meta_timm("vit_base_patch16_224")
    names = apply_lora(model, LoRAConfig(rank=2, targets=("q", "v")), vit_targets)
    assert len(names) == 12
    assert count_lora_parameters(model) == 73_728 == 12 * 2 * 2 * (768 + 768)
    assert all(p.is_meta for p in lora_parameters(model))


@pytest.mark.slow
def test_full_size_vit_l14_count_on_meta(vit_targets):
    model = _meta_timm("vit_large_patch14_224")
    assert len(model.blocks) == 24 and model.embed_dim == 1024
    names = apply_lora(model, LoRAConfig(rank=16, targets=("q", "k", "v", "o")), vit_targets)
    assert len(names) == 48
    assert count_lora_parameters(model) == 3_145_728 == 24 * 4 * 16 * (1024 + 1024)


# --------------------------------------------------------------------------------- target errors
def test_unknown_target_names_it_and_lists_choices(tiny_vit, vit_targets):
    model = tiny_vit()
    with pytest.raises(ValueError) as err:
        apply_lora(model, LoRAConfig(targets=("q", "query")), vit_targets)
    msg = str(err.value)
    assert "'query'" in msg
    assert "fc1, fc2, k, o, q, v" in msg
    assert "blocks.0.attn.qkv" in msg
    assert not has_lora(model)  # failed call left the model untouched


def test_card_target_whose_patterns_match_nothing(tiny_vit):
    model = tiny_vit()
    stale = {"q": LoraTarget(("encoder.layer.*.attention.query",))}
    with pytest.raises(ValueError, match=r"'q' matched nothing.*encoder\.layer"):
        apply_lora(model, LoRAConfig(targets=("q",)), stale)


def test_non_linear_match_is_rejected(tiny_vit, vit_targets):
    model = tiny_vit()
    with pytest.raises(TypeError, match=r"'blocks\.0\.attn' of type Attention"):
        apply_lora(model, LoRAConfig(targets=("blocks.*.attn",)), vit_targets)
    assert not has_lora(model)


def test_overlapping_targets_on_one_module_are_rejected(tiny_vit, vit_targets):
    model = tiny_vit()
    with pytest.raises(ValueError, match="overlaps"):
        apply_lora(model, LoRAConfig(targets=("q", "blocks.*.attn.qkv")), vit_targets)
    assert not has_lora(model)


def test_applying_twice_raises(tiny_vit, vit_targets):
    model = tiny_vit()
    apply_lora(model, LoRAConfig(), vit_targets)
    with pytest.raises(ValueError, match="already has 2 LoRA layers"):
        apply_lora(model, LoRAConfig(targets=("o",)), vit_targets)


def test_pattern_targets_without_a_card(tiny_vit):
    model = tiny_vit()
    names = apply_lora(model, LoRAConfig(targets=("blocks.1.mlp.fc?",)))
    assert names == ["blocks.1.mlp.fc1", "blocks.1.mlp.fc2"]
    assert list(model.blocks[1].mlp.fc1.lora_A) == ["blocks_1_mlp_fc"]
    assert lora_config(model).targets == ("blocks.1.mlp.fc?",)


# ------------------------------------------------------------------------------------- remove_lora
def test_remove_lora_merged_or_restored(tiny_vit, vit_targets, perturb):
    model = tiny_vit().double()
    x = _x(dtype=torch.float64)
    base_out = model(x)
    apply_lora(model, LoRAConfig(), vit_targets)
    perturb(model)
    adapted = model(x)
    twin = copy.deepcopy(model)

    assert remove_lora(model, merge=True) == ["blocks.0.attn.qkv", "blocks.1.attn.qkv"]
    assert not has_lora(model) and type(model.blocks[0].attn.qkv) is nn.Linear
    torch.testing.assert_close(model(x), adapted)

    merge_lora(twin)  # merged or not, merge=False gets the original weights back
    remove_lora(twin, merge=False)
    assert not has_lora(twin)
    torch.testing.assert_close(twin(x), base_out)


# ------------------------------------------------------------------------- CNN: tf_EfficientNet
@pytest.fixture(scope="module")
def tf_effnet():
    import timm

    torch.manual_seed(0)
    return timm.create_model("tf_efficientnet_b0", pretrained=False, num_classes=0).double().eval()


def test_efficientnet_pattern_targets(tf_effnet, perturb):
    from timm.layers import Conv2dSame

    model = copy.deepcopy(tf_effnet)
    x = _x(dtype=torch.float64, size=33)  # odd size: asymmetric TF 'same' padding
    expected = model(x)
    assert isinstance(model.conv_stem, Conv2dSame)
    names = apply_lora(model, LoRAConfig(rank=2, targets=("conv_stem", "blocks.*.*.conv_pwl",
                                                           "conv_head")))
    assert names[0] == "conv_stem" and names[-1] == "conv_head"
    assert len(names) == 2 + 15  # blocks.0.0 is a DepthwiseSeparableConv (conv_pw)
    assert all(isinstance(m, LoRAConv2d) for _, m in lora_modules(model))
    assert torch.equal(model(x), expected)
    perturb(model, std=0.05)
    unmerged = model(x)
    assert not torch.allclose(unmerged, expected)
    merge_lora(model)
    torch.testing.assert_close(model(x), unmerged)
    unmerge_lora(model)
    # count: A (r, in, kh, kw) + B (out, r)
    expected_count = sum(2 * (m.in_channels * m.kernel_size[0] * m.kernel_size[1] + m.out_channels)
                         for _, m in lora_modules(model))
    assert count_lora_parameters(model) == expected_count


def test_efficientnet_depthwise_target_is_rejected(tf_effnet):
    model = copy.deepcopy(tf_effnet)
    with pytest.raises(ValueError, match=r"blocks\.1\.0\.conv_dw.*groups"):
        apply_lora(model, LoRAConfig(targets=("blocks.1.0.conv_dw",)))
    assert not has_lora(model)


# ----------------------------------------------------------------------------- Hugging Face ViT
def _hf_vit():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, image_size=32, patch_size=8)
    return ViTModel(cfg, add_pooling_layer=False).eval()


def test_hf_vit_q_v_init_equivalence_and_merge(hf_vit_targets, perturb):
    model = _hf_vit().double()
    x = _x(dtype=torch.float64)
    expected = model(pixel_values=x).last_hidden_state
    names = apply_lora(model, LoRAConfig(), hf_vit_targets)
    assert len(names) == 4 and all(n.endswith(("q_proj", "value", "v_proj", "query")) for n in names)
    assert torch.equal(model(pixel_values=x).last_hidden_state, expected)
    assert count_lora_parameters(model) == 2 * 2 * 2 * (32 + 32)
    perturb(model)
    unmerged = model(pixel_values=x).last_hidden_state
    assert not torch.allclose(unmerged, expected)
    merge_lora(model)
    torch.testing.assert_close(model(pixel_values=x).last_hidden_state, unmerged)


def test_card_pattern_given_as_a_bare_string(tiny_vit):
    model = tiny_vit()
    names = apply_lora(model, LoRAConfig(targets=("o",)),
                       {"o": LoraTarget("blocks.*.attn.proj")})  # type: ignore[arg-type]
    assert names == ["blocks.0.attn.proj", "blocks.1.attn.proj"]
