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
from typing import TYPE_CHECKING

from cytotune._lazy import lazy_exports

if TYPE_CHECKING:  # the real imports, for type checkers; at run time each name is
    # imported on first use, so a light part does not pull in torch through the rest
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

_EXPORTS = {
    "LoRAConfig": "cytotune.adapters.config",
    "apply_lora": "cytotune.adapters.inject",
    "count_lora_parameters": "cytotune.adapters.inject",
    "has_lora": "cytotune.adapters.inject",
    "lora_config": "cytotune.adapters.inject",
    "lora_modules": "cytotune.adapters.inject",
    "lora_parameters": "cytotune.adapters.inject",
    "mark_only_lora_trainable": "cytotune.adapters.inject",
    "merge_lora": "cytotune.adapters.inject",
    "remove_lora": "cytotune.adapters.inject",
    "unmerge_lora": "cytotune.adapters.inject",
    "load_adapter": "cytotune.adapters.io",
    "lora_state_dict": "cytotune.adapters.io",
    "read_adapter_metadata": "cytotune.adapters.io",
    "save_adapter": "cytotune.adapters.io",
    "LoRAConv2d": "cytotune.adapters.layers",
    "LoRALayer": "cytotune.adapters.layers",
    "LoRALinear": "cytotune.adapters.layers",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

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
