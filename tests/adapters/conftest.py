"""Shared fixtures for the LoRA adapter tests (offline, CPU, random-init tiny models)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cytotune.adapters import lora_modules
from cytotune.models.card import LoraTarget

# Where LoRA goes in a timm VisionTransformer (fused qkv), as a model card would say it.
TIMM_VIT_TARGETS = {
    "q": LoraTarget(("blocks.*.attn.qkv",), part=(0, 3)),
    "k": LoraTarget(("blocks.*.attn.qkv",), part=(1, 3)),
    "v": LoraTarget(("blocks.*.attn.qkv",), part=(2, 3)),
    "o": LoraTarget(("blocks.*.attn.proj",)),
    "fc1": LoraTarget(("blocks.*.mlp.fc1",)),
    "fc2": LoraTarget(("blocks.*.mlp.fc2",)),
}

# Hugging Face ViT: transformers 5 names, plus the transformers 4 names (several patterns).
HF_VIT_TARGETS = {
    "q": LoraTarget(("layers.*.attention.q_proj", "encoder.layer.*.attention.attention.query")),
    "k": LoraTarget(("layers.*.attention.k_proj", "encoder.layer.*.attention.attention.key")),
    "v": LoraTarget(("layers.*.attention.v_proj", "encoder.layer.*.attention.attention.value")),
    "o": LoraTarget(("layers.*.attention.o_proj", "encoder.layer.*.attention.output.dense")),
}


@pytest.fixture
def vit_targets() -> dict[str, LoraTarget]:
    return dict(TIMM_VIT_TARGETS)


@pytest.fixture
def hf_vit_targets() -> dict[str, LoraTarget]:
    return dict(HF_VIT_TARGETS)


@pytest.fixture
def tiny_vit():
    """Factory for a tiny random-init timm ViT (embed 64, 2 blocks) in eval mode."""
    import timm

    def make(seed: int = 0, num_classes: int = 0, **kwargs) -> nn.Module:
        torch.manual_seed(seed)
        args = dict(pretrained=False, img_size=32, patch_size=8, embed_dim=64, depth=2,
                    num_heads=2, num_classes=num_classes)
        args.update(kwargs)
        return timm.create_model("vit_base_patch16_224", **args).eval()

    return make


@pytest.fixture
def perturb():
    """Give every LoRA A and B random values (B is zero at init, which hides bugs)."""

    def run(model: nn.Module, seed: int = 1, std: float = 0.1) -> None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for _, layer in lora_modules(model):
                for params in (layer.lora_A, layer.lora_B):
                    for p in params.values():
                        p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)

    return run
