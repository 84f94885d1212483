"""Resolving a card's LoRA target patterns against a model's ``named_modules()``.

The adapters package does the injection; these helpers only say which modules a target names, so
cards can be checked (every pattern must hit a layer) and listed without touching any weights.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Mapping

from cytotune.models.card import LoraTarget

if TYPE_CHECKING:  # only in annotations: the target maps are plain data
    from torch import nn


def resolve_target(model: nn.Module, target: LoraTarget) -> list[str]:
    """Names of the modules of ``model`` matched by any of ``target.patterns`` (in model order)."""
    return [name for name, _ in model.named_modules()
            if name and any(fnmatchcase(name, p) for p in target.patterns)]


def resolve_targets(model: nn.Module, targets: Mapping[str, LoraTarget]) -> dict[str, list[str]]:
    """Canonical target name -> matched module names."""
    return {key: resolve_target(model, target) for key, target in targets.items()}


def matching_targets(model: nn.Module, targets: Mapping[str, LoraTarget]) -> dict[str, LoraTarget]:
    """The targets that match modules of ``model``, narrowed to their matching patterns."""
    names = [name for name, _ in model.named_modules() if name]
    out = {}
    for key, target in targets.items():
        hits = tuple(p for p in target.patterns if any(fnmatchcase(n, p) for n in names))
        if hits:
            out[key] = LoraTarget(hits, target.part)
    return out


def pick_default_targets(available: Mapping[str, LoraTarget],
                         preferences: tuple[tuple[str, ...], ...] = (("q", "v"), ("pwl", "head"))
                         ) -> tuple[str, ...]:
    """The first preference whose targets all exist in ``available`` (else empty)."""
    for choice in preferences:
        if all(k in available for k in choice):
            return choice
    return ()


def merge_targets(*maps: Mapping[str, LoraTarget]) -> dict[str, LoraTarget]:
    """Union of target maps: the patterns of a name present in several maps are combined.

    A name must select the same ``part`` in every map it appears in.
    """
    out: dict[str, LoraTarget] = {}
    for targets in maps:
        for key, target in targets.items():
            if key not in out:
                out[key] = target
                continue
            if out[key].part != target.part:
                raise ValueError(f"LoRA target {key!r}: part {out[key].part} vs {target.part}")
            patterns = out[key].patterns + tuple(p for p in target.patterns
                                                 if p not in out[key].patterns)
            out[key] = LoraTarget(patterns, out[key].part)
    return out


def vit_targets(prefix: str, qkv: str, proj: str, fc1: str, fc2: str) -> dict[str, LoraTarget]:
    """q/k/v slices of a fused qkv Linear, its output projection and the two MLP layers."""
    block = f"{prefix}*."
    return {
        "q": LoraTarget((block + qkv,), part=(0, 3)),
        "k": LoraTarget((block + qkv,), part=(1, 3)),
        "v": LoraTarget((block + qkv,), part=(2, 3)),
        "o": LoraTarget((block + proj,)),
        "fc1": LoraTarget((block + fc1,)),
        "fc2": LoraTarget((block + fc2,)),
    }


# timm ViTs (VisionTransformer, and open_clip TimmModel trunks under "trunk.")
def timm_vit_targets(prefix: str = "") -> dict[str, LoraTarget]:
    return vit_targets(f"{prefix}blocks.", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


# open_clip native VisionTransformer after convert_multihead_attention()
OPEN_CLIP_VIT_TARGETS = vit_targets("transformer.resblocks.", "attn.in_proj", "attn.out_proj",
                                    "mlp.c_fc", "mlp.c_proj")

# timm EfficientNet / MobileNet style CNNs: LoRA on the 1x1 convolutions
TIMM_CNN_TARGETS = {
    "pw": LoraTarget(("blocks.*.*.conv_pw",)),    # expansion 1x1 (projection in the first DS stage)
    "pwl": LoraTarget(("blocks.*.*.conv_pwl",)),  # linear projection 1x1 of inverted residuals
    "head": LoraTarget(("conv_head",)),           # 1x1 conv before global pooling
}

# every timm naming cytotune knows (cards made on the fly keep the targets that match)
TIMM_TARGETS = merge_targets(timm_vit_targets(), TIMM_CNN_TARGETS)


def _hf_old_layer(suffix: str) -> tuple[str, ...]:
    # "encoder.layer.*.output.dense" would also match "...attention.output.dense" ('*' spans dots),
    # so the layer index is spelled with character classes (up to 99 layers).
    return (f"encoder.layer.[0-9].{suffix}", f"encoder.layer.[0-9][0-9].{suffix}")


# transformers ViTModel: v5 names first, then the names of transformers < 5
HF_VIT_TARGETS = {
    "q": LoraTarget(("layers.*.attention.q_proj", "encoder.layer.*.attention.attention.query")),
    "k": LoraTarget(("layers.*.attention.k_proj", "encoder.layer.*.attention.attention.key")),
    "v": LoraTarget(("layers.*.attention.v_proj", "encoder.layer.*.attention.attention.value")),
    "o": LoraTarget(("layers.*.attention.o_proj", *_hf_old_layer("attention.output.dense"))),
    "fc1": LoraTarget(("layers.*.mlp.fc1", *_hf_old_layer("intermediate.dense"))),
    "fc2": LoraTarget(("layers.*.mlp.fc2", *_hf_old_layer("output.dense"))),
}

# transformers Dinov2Model (encoder.layer.N...): v5 names first, then the names of transformers < 5
# (which the published checkpoints, e.g. owkin/phikon-v2, use)
HF_DINOV2_TARGETS = {
    "q": LoraTarget(("encoder.layer.*.attention.q_proj", "encoder.layer.*.attention.attention.query")),
    "k": LoraTarget(("encoder.layer.*.attention.k_proj", "encoder.layer.*.attention.attention.key")),
    "v": LoraTarget(("encoder.layer.*.attention.v_proj", "encoder.layer.*.attention.attention.value")),
    "o": LoraTarget(("encoder.layer.*.attention.o_proj", *_hf_old_layer("attention.output.dense"))),
    "fc1": LoraTarget(("encoder.layer.*.mlp.fc1",)),
    "fc2": LoraTarget(("encoder.layer.*.mlp.fc2",)),
}
