"""LoRA adapters for cytotune backbones.

Own implementation rather than peft because the reference study adapts only q and v of attention,
and many backbones fuse q, k, v into one Linear (timm ``attn.qkv``, open_clip ``in_proj``): a
:class:`LoRALinear` holds one adapter per slice of the fused output, so k's output is untouched.
Where LoRA goes comes from a model card's ``lora_targets`` (see ``cytotune.models.card``).

Typical use::

    config = LoRAConfig(rank=2, alpha=1.0, targets=card.default_lora_targets)
    apply_lora(backbone, config, card.lora_targets)
    mark_only_lora_trainable(model, keep_trainable=("head.*",))
    ...train...
    save_adapter("adapter.safetensors", backbone, {"card": card.name})
    load_adapter("adapter.safetensors", backbone, expect={"card": card.name})
    merge_lora(backbone)  # optional, for inference speed
"""
from .config import LoRAConfig
from .inject import (
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
from .io import load_adapter, lora_state_dict, read_adapter_metadata, save_adapter
from .layers import LoRAConv2d, LoRALayer, LoRALinear

__all__ = [
    "LoRAConfig",
    "LoRALayer",
    "LoRALinear",
    "LoRAConv2d",
    "apply_lora",
    "has_lora",
    "lora_modules",
    "lora_config",
    "lora_parameters",
    "count_lora_parameters",
    "mark_only_lora_trainable",
    "merge_lora",
    "unmerge_lora",
    "remove_lora",
    "lora_state_dict",
    "save_adapter",
    "load_adapter",
    "read_adapter_metadata",
]
