"""Model cards: everything model-specific about a backbone, in one registry entry.

A card says where the weights come from, how to build the network, how images must be
preprocessed, how tokens are pooled into one feature vector, and where LoRA may go. Code outside
``cytotune.models`` never branches on a model's name or family; it reads the card.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Optional

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The repeated blocks of the architectures cytotune builds (see ModelCard.block_pattern).
DEFAULT_BLOCK_PATTERN = r"(?:.*\.)?(?:blocks|resblocks|layer|layers)\.\d+|(?:.*\.)?layer\d+"


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the model's input tensor.

    Images are resized so the shorter side is ``resize_size`` with ``interpolation``, then
    center-cropped to ``image_size``, scaled to [0, 1] and normalised with ``mean``/``std``.
    """

    image_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bicubic"  # "bilinear" | "bicubic" | "nearest"
    resize_size: Optional[int] = None  # None: same as image_size (no crop margin)

    @property
    def effective_resize(self) -> int:
        return self.resize_size or self.image_size

    def fingerprint(self) -> str:
        return (f"{self.image_size}-{self.effective_resize}-{self.interpolation}-"
                f"{','.join(f'{m:.6f}' for m in self.mean)}-{','.join(f'{s:.6f}' for s in self.std)}")


@dataclass(frozen=True)
class LoraTarget:
    """Where one canonical LoRA target (e.g. "q") lives in a model.

    ``patterns`` are fnmatch patterns over ``named_modules()`` names (several, to cover renamed
    layers across library versions); every match is adapted. ``part`` = (index, count) selects an
    equal slice of a fused layer's output: q of a fused qkv is (0, 3), k is (1, 3), v is (2, 3).
    """

    patterns: tuple[str, ...]
    part: Optional[tuple[int, int]] = None


@dataclass(frozen=True)
class ModelCard:
    """One backbone as cytotune knows it.

    family      which loader builds it: "timm", "open_clip", "hf_vit", "timm_pypi_weights" ...
    source      hub id or architecture name the family loader understands
    architecture the family's name for the network when it must be built without the hub (timm
                model name for a ``hf-hub:`` source, open_clip model config, transformers class);
                None when ``source`` already is one
    model_kwargs constructor keyword arguments (e.g. timm ``init_values=1e-5``)
    pretrained  the pretrained tag for families that need one (open_clip "openai")
    feature_dim size of the pooled feature vector
    pooling     name of a pooling function in ``cytotune.models.pooling`` ("model" = the model's own)
    lora_targets canonical name -> LoraTarget; ``default_lora_targets`` used when none are given
    licence, gated, gated_note  shown by ``cytotune models``; gated models need a hub token
    block_pattern regular expression (full match) over ``named_modules()`` names selecting the
                network's repeated blocks in depth order, for ``--train-blocks`` and layer-wise
                learning-rate decay; None: :data:`DEFAULT_BLOCK_PATTERN`, which covers timm ViTs
                and EfficientNets (``blocks.N``), open_clip (``transformer.resblocks.N``),
                transformers ViTs (``encoder.layer.N`` / ``layers.N``) and ResNets (``layerN``)
    """

    name: str
    family: str
    source: str
    feature_dim: int
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    pooling: str = "model"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: Optional[str] = None
    architecture: Optional[str] = None
    lora_targets: dict[str, LoraTarget] = field(default_factory=dict)
    default_lora_targets: tuple[str, ...] = ("q", "v")
    licence: str = "unknown"
    gated: bool = False
    description: str = ""
    homepage: str = ""
    block_pattern: Optional[str] = None

    def with_overrides(self, **changes: Any) -> "ModelCard":
        """A copy with some fields changed (tests build tiny random-init variants this way)."""
        return replace(self, **changes)
