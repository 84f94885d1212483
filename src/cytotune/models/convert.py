"""Translating third-party checkpoint layouts into the key names of the model cytotune builds.

Each converter is ``(name, detect(state_dict) -> bool, convert(state_dict, model) -> state_dict)``;
families run the ones registered for them before strict loading, so a checkpoint in a foreign
layout (here: lukemelas ``efficientnet_pytorch``) loads into the timm architecture.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, NamedTuple

if TYPE_CHECKING:  # only in annotations: importing the converters imports no torch
    import torch
    from torch import nn

StateDict = dict[str, "torch.Tensor"]


class Converter(NamedTuple):
    name: str
    detect: Callable[[StateDict], bool]
    convert: Callable[[StateDict, nn.Module], StateDict]


# --- efficientnet_pytorch (lukemelas) -> timm EfficientNet -------------------------------------

_EP_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
           "_fc": "classifier"}
# inverted residual block (expansion > 1): expand 1x1, depthwise, (SE), project 1x1
_EP_INVERTED_RESIDUAL = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
                         "_bn1": "bn2", "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
                         "_project_conv": "conv_pwl", "_bn2": "bn3"}
# depthwise-separable block (first stage, no expansion): depthwise, (SE), project 1x1
_EP_DEPTHWISE_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1",
                           "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
                           "_project_conv": "conv_pw", "_bn2": "bn2"}
_EP_BLOCK = re.compile(r"^_blocks\.(\d+)\.(_[a-z_0-9]+)\.(.+)$")
_EP_TOP_KEY = re.compile(r"^(_[a-z_0-9]+)\.(.+)$")


def is_efficientnet_pytorch(state_dict: StateDict) -> bool:
    return "_conv_stem.weight" in state_dict and any(k.startswith("_blocks.") for k in state_dict)


def efficientnet_pytorch_to_timm(state_dict: StateDict, model: nn.Module) -> StateDict:
    """Rename lukemelas ``efficientnet_pytorch`` keys to timm ``EfficientNet`` keys.

    The flat block index ``_blocks.N`` is mapped to ``blocks.<stage>.<idx>`` by walking the timm
    model's own ``blocks`` (stage by stage); whether a block is an inverted residual or a
    depthwise-separable block is read from the timm module (does it have ``conv_pwl``). Keys that
    have no translation are kept as they are, so strict loading reports them as unexpected.
    """
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return state_dict
    flat = [(s, i, block) for s, stage in enumerate(blocks) for i, block in enumerate(stage)]
    out: StateDict = {}
    for key, value in state_dict.items():
        m = _EP_BLOCK.match(key)
        if m:
            n, sub, rest = int(m.group(1)), m.group(2), m.group(3)
            if n >= len(flat):
                out[key] = value  # more blocks than the model: reported as unexpected
                continue
            s, i, block = flat[n]
            table = _EP_INVERTED_RESIDUAL if hasattr(block, "conv_pwl") else _EP_DEPTHWISE_SEPARABLE
            if sub in table:
                out[f"blocks.{s}.{i}.{table[sub]}.{rest}"] = value
            else:
                out[key] = value
            continue
        m = _EP_TOP_KEY.match(key)
        if m and m.group(1) in _EP_TOP:
            out[f"{_EP_TOP[m.group(1)]}.{m.group(2)}"] = value
        else:
            out[key] = value
    return out


EFFICIENTNET_PYTORCH = Converter("efficientnet_pytorch", is_efficientnet_pytorch,
                                 efficientnet_pytorch_to_timm)
