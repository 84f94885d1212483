"""A backbone's repeated blocks in depth order, and gradient checkpointing, read generically.

Full fine-tuning trains only the last N blocks (``--train-blocks``) or gives deeper blocks larger
learning rates (layer-wise decay); both need "the blocks" of any architecture. They are the
outermost modules whose names fully match the card's ``block_pattern`` (default: the naming of
timm, open_clip and transformers), in ``named_modules()`` order, which is depth order for every
supported architecture.
"""
from __future__ import annotations

import re

from torch import nn

from cytotune.models.card import DEFAULT_BLOCK_PATTERN, ModelCard


def block_names(card: ModelCard, model: nn.Module) -> list[str]:
    """Names (in ``model.named_modules()``) of the model's blocks, shallowest first."""
    pattern = re.compile(card.block_pattern or DEFAULT_BLOCK_PATTERN)
    found: list[str] = []
    for name, _ in model.named_modules():
        if name and pattern.fullmatch(name) and not any(name.startswith(f + ".") for f in found):
            found.append(name)
    if not found:
        raise ValueError(f"model card '{card.name}': no module name matches the block pattern "
                         f"{pattern.pattern!r}; set block_pattern in the card to a regular "
                         f"expression matching its repeated blocks (e.g. r'encoder\\.layer\\.\\d+')")
    return found


def parameter_depths(card: ModelCard, model: nn.Module) -> tuple[dict[str, int], int]:
    """Depth of every parameter of ``model`` and the number of blocks N.

    Parameters before the first block (patch or stem embeddings) get depth 0, those of block i
    depth i + 1, those after the last block (final norm, projection, head conv) depth N + 1: the
    numbering layer-wise learning-rate decay uses (BEiT, Bao et al. 2022).
    """
    names = block_names(card, model)
    depth_of_block = {name: i + 1 for i, name in enumerate(names)}
    depths: dict[str, int] = {}
    seen_block = False
    for pname, _ in model.named_parameters():
        block = next((b for b in names if pname.startswith(b + ".")), None)
        if block is not None:
            depths[pname] = depth_of_block[block]
            seen_block = True
        else:
            depths[pname] = len(names) + 1 if seen_block else 0
    return depths, len(names)


def enable_grad_checkpointing(card: ModelCard, model: nn.Module) -> None:
    """Recompute block activations in the backward pass instead of storing them.

    Uses the library's own switch: ``set_grad_checkpointing`` (timm, open_clip) or
    ``gradient_checkpointing_enable`` (transformers); a model with neither is an error.
    """
    if hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    else:
        raise ValueError(f"model card '{card.name}': {type(model).__name__} has no gradient "
                         f"checkpointing switch (set_grad_checkpointing or "
                         f"gradient_checkpointing_enable); train without grad_checkpointing")
