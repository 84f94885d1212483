"""The newer pathology foundation models at full size, built on the meta device (no memory, no
download): feature width, parameter count and LoRA trainable counts, against figures computed
here from the published architecture (not by building the model a second time)."""
from __future__ import annotations

import pytest

from cytotune.adapters import LoRAConfig, apply_lora, count_lora_parameters
from cytotune.models import build_backbone, get_card, resolve_targets


def swiglu_vit_params(width: int, depth: int, patch: int, mlp_hidden: int, registers: int,
                      pos_tokens: int, img: int = 224) -> int:
    """A timm ViT with LayerScale and a packed SwiGLU MLP (fc1: D -> H, fc2: H/2 -> D)."""
    d = width
    patches = (img // patch) ** 2
    embed = 3 * patch * patch * d + d  # patch conv
    tokens = d + registers * d + (patches + pos_tokens) * d  # cls, registers, position table
    block = (2 * d  # norm1
             + 3 * d * d + 3 * d  # fused qkv
             + d * d + d  # proj
             + d  # ls1
             + 2 * d  # norm2
             + d * mlp_hidden + mlp_hidden  # fc1 (value and gate packed)
             + (mlp_hidden // 2) * d + d  # fc2
             + d)  # ls2
    return embed + tokens + depth * block + 2 * d  # final norm


def dinov2_params(width: int, depth: int, patch: int, img: int = 224) -> int:
    """transformers Dinov2Model without registers: mask token, separate q/k/v/o, MLP ratio 4."""
    d = width
    patches = (img // patch) ** 2
    embed = 3 * patch * patch * d + d + d + d + (patches + 1) * d  # conv, cls, mask, positions
    block = 2 * d + 4 * (d * d + d) + d + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d) + d
    return embed + depth * block + 2 * d


def conch_tower_params() -> int:
    """CONCH's image tower: timm ViT-B/16 at 448 (no LayerScale, GELU MLP) and two poolers."""
    d, depth, patch, img = 768, 12, 16, 448
    trunk = (3 * patch * patch * d + d + d + ((img // patch) ** 2 + 1) * d
             + depth * (2 * d + 3 * d * d + 3 * d + d * d + d + 2 * d + 8 * d * d + 4 * d + d)
             + 2 * d)
    c, ctx = 512, 768  # contrastive pooler: 1 query, 512 wide, keys/values from 768
    contrast = (c + c * c + 2 * c * ctx + 3 * c + c * c + c + 2 * c + 2 * ctx  # query, attn, ln_q/k
                + 2 * c + c * c)  # ln_contrast, proj_contrast
    q = 768  # captioning pooler: 256 queries, 768 wide (k/v widths equal: fused in_proj)
    caption = 256 * q + 3 * q * q + 3 * q + q * q + q + 2 * q + 2 * ctx + 2 * q
    return trunk + contrast + caption


# name: (expected parameter count, width, depth, tokens before the patches)
FULL_SIZE = {
    # UNI2-h: 1536 wide, 24 blocks, patch 14, 8 registers; no_embed_class: positions only for
    # patches; mlp_ratio 5.33334 -> int(1536 * 5.33334) = 8192
    "uni2-h": (swiglu_vit_params(1536, 24, 14, int(1536 * 5.33334), 8, 0), 1536, 24, 9),
    # Virchow2: ViT-H/14 (1280 wide, 32 blocks), 4 registers with positions for cls + registers
    "virchow2": (swiglu_vit_params(1280, 32, 14, int(1280 * 5.3375), 4, 5), 1280, 32, 5),
    # H-optimus: ViT-g/14 (1536, 40 blocks), 4 registers, no_embed_class
    "h-optimus-0": (swiglu_vit_params(1536, 40, 14, int(1536 * 5.33334), 4, 0), 1536, 40, 5),
    "h-optimus-1": (swiglu_vit_params(1536, 40, 14, int(1536 * 5.33334), 4, 0), 1536, 40, 5),
    # Prov-GigaPath tile encoder: patch 16, no registers, class token with a position
    "prov-gigapath": (swiglu_vit_params(1536, 40, 16, int(1536 * 5.33334), 0, 1), 1536, 40, 1),
    "phikon-v2": (dinov2_params(1024, 24, 16), 1024, 24, 1),
    "conch": (conch_tower_params(), 768, 12, 1),
}


def test_the_formulas_reproduce_the_published_sizes():
    """Independent check of the formulas: the rounded sizes LazySlide's model registry lists
    (681.4M, 631.2M, 1.13B, 1.13B, 303.4M)."""
    published_millions = {"uni2-h": (681.4, 0.05), "virchow2": (631.2, 0.05),
                          "h-optimus-0": (1130, 5), "prov-gigapath": (1130, 5),
                          "phikon-v2": (303.4, 0.05)}
    for name, (millions, tolerance) in published_millions.items():
        assert FULL_SIZE[name][0] / 1e6 == pytest.approx(millions, abs=tolerance), name


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_architecture(name):
    params, width, depth, prefix = FULL_SIZE[name]
    card = get_card(name)
    backbone = build_backbone(card, device="meta")  # also checks card.feature_dim by a forward
    model = backbone.model
    assert sum(p.numel() for p in model.parameters()) == params
    hits = resolve_targets(model, card.lora_targets)
    assert all(len(hits[k]) == depth for k in ("q", "k", "v", "o", "fc1", "fc2")), hits
    pooled = {"virchow2": 2 * width, "conch": 512}.get(name, width)
    assert card.feature_dim == pooled
    trunk = getattr(model, "trunk", model)
    if hasattr(trunk, "num_prefix_tokens"):  # timm trunks: cls + registers before the patches
        assert trunk.num_prefix_tokens == prefix


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
@pytest.mark.parametrize("rank,targets", [(2, ("q", "v")), (16, ("q", "k", "v", "o"))])
def test_lora_trainable_parameters(name, rank, targets):
    _, width, depth, _ = FULL_SIZE[name]
    backbone = build_backbone(name, device="meta")
    apply_lora(backbone.model, LoRAConfig(rank=rank, targets=targets), backbone.card.lora_targets)
    # each target of each block: A (rank x width) and B (width x rank); q/k/v/o are width x width
    assert count_lora_parameters(backbone) == depth * len(targets) * rank * 2 * width


def test_uni2h_architecture_details():
    model = build_backbone("uni2-h", device="meta").model
    block = model.blocks[0]
    assert model.embed_dim == 1536 and block.attn.num_heads == 24
    assert model.patch_embed.patch_size == (14, 14) and model.num_reg_tokens == 8
    assert model.pos_embed.shape == (1, 256, 1536) and model.no_embed_class
    assert type(block.mlp).__name__ == "GluMlp" and type(block.mlp.act).__name__ == "SiLU"
    assert (block.mlp.fc1.out_features, block.mlp.fc2.in_features) == (8192, 4096)
    assert type(block.ls1).__name__ == "LayerScale" and model.dynamic_img_size
    assert model.global_pool == "token" and model.num_classes == 0


def test_virchow2_and_h_optimus_details():
    v2 = build_backbone("virchow2", device="meta").model
    assert v2.embed_dim == 1280 and len(v2.blocks) == 32 and v2.num_reg_tokens == 4
    assert v2.pos_embed.shape == (1, 256 + 5, 1280) and v2.global_pool == ""
    assert (v2.blocks[0].mlp.fc1.out_features, v2.blocks[0].mlp.fc2.in_features) == (6832, 3416)
    ho = build_backbone("h-optimus-0", device="meta").model
    assert ho.num_reg_tokens == 4 and not ho.dynamic_img_size and ho.pos_embed.shape[1] == 256
    assert type(ho.blocks[0].ls1).__name__ == "LayerScale" and ho.global_pool == "token"
    gp = build_backbone("prov-gigapath", device="meta").model
    assert gp.patch_embed.patch_size == (16, 16) and gp.num_reg_tokens == 0
    assert gp.pos_embed.shape == (1, 197, 1536)


def test_phikon_v2_has_separate_attention_projections():
    card = get_card("phikon-v2")
    model = build_backbone(card, device="meta").model
    assert type(model).__name__ == "Dinov2Model" and model.config.patch_size == 16
    hits = resolve_targets(model, card.lora_targets)
    assert hits["q"][0] == "encoder.layer.0.attention.q_proj"
    assert hits["o"][0] == "encoder.layer.0.attention.o_proj"
    assert len({*hits["q"], *hits["k"], *hits["v"], *hits["o"]}) == 4 * 24
