"""The newer pathology models as tiny random-init variants: the real block types train with LoRA
on CPU, and each card pools its tokens as the authors publish."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cytotune.adapters import (LoRAConfig, apply_lora, lora_modules, lora_parameters,
                               mark_only_lora_trainable)
from cytotune.models import build_backbone, get_card, pool, tiny_card

ZOO = ["uni2-h", "virchow2", "h-optimus-0", "h-optimus-1", "prov-gigapath", "phikon-v2", "conch"]


@pytest.mark.parametrize("name", ZOO)
def test_tiny_variant_keeps_the_real_blocks(name):
    real, tiny = get_card(name), tiny_card(name)
    assert tiny.pooling == real.pooling and tiny.preprocessing.mean == real.preprocessing.mean
    model = build_backbone(tiny, pretrained=False).model
    if real.family == "timm":
        block = model.blocks[0]
        assert type(block.mlp).__name__ == "GluMlp" and type(block.mlp.act).__name__ == "SiLU"
        assert type(block.ls1).__name__ == "LayerScale"
        full = build_backbone(real, device="meta").model
        assert model.num_prefix_tokens == full.num_prefix_tokens  # registers kept
        assert model.no_embed_class == full.no_embed_class


@pytest.mark.parametrize("name", ZOO)
def test_lora_training_on_cpu(name, pixels):
    backbone = build_backbone(tiny_card(name), pretrained=False)
    apply_lora(backbone.model, LoRAConfig(rank=2, alpha=2.0, targets=("q", "v")),
               backbone.card.lora_targets)
    head = nn.Linear(backbone.feature_dim, 3)
    mark_only_lora_trainable(backbone)
    frozen = {n: p.detach().clone() for n, p in backbone.named_parameters() if not p.requires_grad}
    before = backbone(pixels).detach()
    params = lora_parameters(backbone) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.5)
    labels = torch.tensor([0, 2])
    backbone.train()
    for _ in range(3):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(head(backbone(pixels)), labels)
        loss.backward()
        optimizer.step()
    backbone.eval()
    assert torch.isfinite(loss)
    assert all(torch.equal(p, frozen[n]) for n, p in backbone.named_parameters() if n in frozen)
    b_matrices = [p for n, p in backbone.named_parameters() if ".lora_B." in n]
    assert len(b_matrices) == 2 * 2  # q and v in each of the 2 blocks
    assert all(p.abs().sum() > 0 for p in b_matrices)  # B starts at zero: every adapter learned
    # the adapted layers now compute something else than their frozen base layer (the features
    # themselves barely move: LayerScale at 1e-5 damps the attention branch of these models)
    for _, layer in lora_modules(backbone):
        probe = torch.randn(3, layer.in_features)
        assert not torch.equal(layer(probe), layer.base(probe))
    assert torch.isfinite(backbone(pixels)).all() and before.shape == (2, backbone.feature_dim)


def test_virchow2_pooling_skips_the_register_tokens():
    """Hand-made tokens: class token, 4 registers, 3 patches (width 2)."""
    cls = torch.tensor([[1.0, -1.0]])
    registers = torch.full((4, 2), 100.0)  # must not reach the patch mean
    patches = torch.tensor([[0.0, 3.0], [3.0, 6.0], [6.0, 9.0]])
    tokens = torch.cat([cls, registers, patches]).unsqueeze(0)
    assert get_card("virchow2").pooling == "cls+mean_patch"
    pooled = pool("cls+mean_patch", tokens, num_prefix_tokens=5)
    assert torch.equal(pooled, torch.tensor([[1.0, -1.0, 3.0, 6.0]]))


def test_virchow2_backbone_features_are_class_token_and_patch_mean(pixels):
    backbone = build_backbone(tiny_card("virchow2"), pretrained=False)
    with torch.no_grad():
        tokens = backbone.model.forward_features(pixels)  # (B, 1 + 4 + 16, 64)
        features = backbone(pixels)
    assert tokens.shape[1] == 1 + 4 + (32 // 8) ** 2
    expected = torch.cat([tokens[:, 0], tokens[:, 5:].mean(dim=1)], dim=-1)
    torch.testing.assert_close(features, expected)


@pytest.mark.parametrize("name", ["uni2-h", "h-optimus-0", "prov-gigapath"])
def test_class_token_cards_return_the_normed_class_token(name, pixels):
    backbone = build_backbone(tiny_card(name), pretrained=False)
    with torch.no_grad():
        tokens = backbone.model.forward_features(pixels)
        torch.testing.assert_close(backbone(pixels), tokens[:, 0])


def test_phikon_v2_pools_the_class_token_of_the_last_hidden_state(pixels):
    backbone = build_backbone(tiny_card("phikon-v2"), pretrained=False)
    with torch.no_grad():
        hidden = backbone.model(pixel_values=pixels).last_hidden_state
        torch.testing.assert_close(backbone(pixels), hidden[:, 0])


def test_conch_features_are_the_unprojected_contrastive_pooler_output(pixels):
    backbone = build_backbone(tiny_card("conch"), pretrained=False)
    tower = backbone.model
    with torch.no_grad():
        tokens = tower.trunk(pixels)
        expected = tower.ln_contrast(tower.attn_pool_contrast(tokens)[:, 0])
        torch.testing.assert_close(backbone(pixels), expected)


@pytest.mark.parametrize("name", ["uni2-h", "h-optimus-0", "h-optimus-1", "prov-gigapath"])
def test_class_token_pooling_on_hand_made_tokens(name):
    """timm's own head pooling of these cards takes token 0, never a register or a patch."""
    model = build_backbone(tiny_card(name), pretrained=False).model
    tokens = torch.randn(2, model.num_prefix_tokens + 16, model.embed_dim)
    tokens[:, 1:] += 100.0  # registers and patches: far from the class token
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(tokens, pre_logits=True), tokens[:, 0])


def test_phikon_v2_pooling_on_hand_made_tokens():
    tokens = torch.cat([torch.zeros(1, 1, 4), torch.ones(1, 196, 4)], dim=1)
    assert get_card("phikon-v2").pooling == "cls"
    assert torch.equal(pool("cls", tokens, num_prefix_tokens=1), torch.zeros(1, 4))
