"""Model cards: everything model-specific about a backbone, in one registry entry.

A card says where the weights come from, how to build the network, how images must be
preprocessed, how tokens are pooled into one feature vector, and where LoRA may go. Code outside
``cytotune.models`` never branches on a model's name or family; it reads the card.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The repeated blocks of the architectures cytotune builds (see ModelCard.block_pattern).
DEFAULT_BLOCK_PATTERN = r"(?:.*\.)?(?:blocks|resblocks|layer|layers)\.\d+|(?:.*\.)?layer\d+"


@dataclass(frozen=True)
class PyRef:
    """A Python object named by its dotted path, for constructor arguments that are classes.

    Some published configurations pass classes to the constructor (timm
    ``mlp_layer=timm.layers.SwiGLUPacked, act_layer=torch.nn.SiLU``). A card holds them as
    ``PyRef("timm.layers.SwiGLUPacked")`` so cards stay printable, comparable and hashable, and
    importing the card module imports no library. Families call :func:`resolve_kwargs` before
    building. ``repr`` is the dotted path itself: Python source that names the object once its
    top-level package is imported (the exported README's construction code relies on that).
    """

    path: str

    def __post_init__(self) -> None:
        module, _, attr = self.path.rpartition(".")
        if not module or not attr:
            raise ValueError(f"PyRef needs a dotted path 'package.module.name', got {self.path!r}")

    def resolve(self) -> Any:
        """Import the module and return the object (ImportError/AttributeError name the path)."""
        module_name, _, attr = self.path.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ImportError(f"cannot import {module_name!r} for {self.path!r}: {exc}") from exc
        try:
            return getattr(module, attr)
        except AttributeError:
            raise AttributeError(f"module {module_name!r} has no attribute {attr!r} "
                                 f"(needed for {self.path!r})") from None

    def __repr__(self) -> str:
        return self.path


def resolve_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``kwargs`` with every :class:`PyRef` (also inside dicts and lists) replaced by its object."""
    def resolve(value: Any) -> Any:
        if isinstance(value, PyRef):
            return value.resolve()
        if isinstance(value, Mapping):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(resolve(v) for v in value)
        return value

    return {k: resolve(v) for k, v in kwargs.items()}


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
    model_kwargs constructor keyword arguments (e.g. timm ``init_values=1e-5``); classes are given
                as :class:`PyRef` (``PyRef("torch.nn.SiLU")``), resolved by the family
    pretrained  the pretrained tag for families that need one (open_clip "openai")
    feature_dim size of the pooled feature vector
    pooling     name of a pooling function in ``cytotune.models.pooling`` ("model" = the model's own)
    lora_targets canonical name -> LoraTarget; ``default_lora_targets`` used when none are given
    licence, gated, gated_note  shown by ``cytotune models``; gated models need a hub token
    text_tower  the checkpoint also holds a text encoder (vision-language models): the family
                builds it with ``build_text_tower`` (zero-shot, text-initialised heads, text LoRA)
    tokenizer   where a Hugging Face tokenizer comes from (hub id or local directory) for text
                towers that use one; None: the one the model config names
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
    text_tower: bool = False
    tokenizer: Optional[str] = None
    block_pattern: Optional[str] = None

    def with_overrides(self, **changes: Any) -> "ModelCard":
        """A copy with some fields changed (tests build tiny random-init variants this way)."""
        return replace(self, **changes)
