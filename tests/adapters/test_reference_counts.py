"""The study's trainable-parameter figures, on the real CLIP cards built on the meta device."""
import pytest

from cytotune.adapters import LoRAConfig, apply_lora, count_lora_parameters
from cytotune.models import build_backbone


@pytest.mark.parametrize("card, depth, rank, targets, expected", [
    ("clip-vit-b16", 12, 2, ("q", "v"), 73_728),  # Experiment 2 setting
    ("clip-vit-l14", 24, 16, ("q", "k", "v", "o"), 3_145_728),  # Experiment 3: the study's "3.1 M"
    ("biomedclip", 12, 2, ("q", "v"), 73_728),  # timm trunk with a fused qkv
    ("vit-b16", 12, 2, ("q", "v"), 73_728),  # separate query/value layers
    ("uni", 24, 2, ("q", "v"), 24 * 2 * 2 * (1024 + 1024)),
])
def test_lora_trainable_parameters_of_the_full_size_cards(card, depth, rank, targets, expected):
    backbone = build_backbone(card, pretrained=False, device="meta")
    apply_lora(backbone.model, LoRAConfig(rank=rank, targets=targets), backbone.card.lora_targets)
    assert count_lora_parameters(backbone) == expected
    # one A (and one B) per target per block, each of rank r
    a_matrices = [p for n, p in backbone.named_parameters() if ".lora_A." in n]
    assert len(a_matrices) == depth * len(targets)
    assert all(p.shape[0] == rank for p in a_matrices)
