"""Adapter files: LoRA A/B tensors plus string metadata, in safetensors (never pickle)."""
from __future__ import annotations

import os
from typing import Iterable, Mapping, Optional, Union

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .config import FORMAT_KEY, LoRAConfig
from .inject import lora_config, lora_modules

PathLike = Union[str, "os.PathLike[str]"]


def _names(items: Iterable[str], limit: int = 10) -> str:
    items = sorted(items)
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA tensors only, keyed as in ``model.state_dict()`` (e.g.
    ``blocks.0.attn.qkv.lora_A.q``). Tensors are detached but share storage with the model."""
    out: dict[str, torch.Tensor] = {}
    for name, layer in lora_modules(model):
        prefix = f"{name}." if name else ""
        for key in layer.lora_slices:
            out[f"{prefix}lora_A.{key}"] = layer.lora_A[key].detach()
            out[f"{prefix}lora_B.{key}"] = layer.lora_B[key].detach()
    return out


def save_adapter(path: PathLike, model: nn.Module,
                 metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write the model's LoRA tensors to a safetensors file.

    The metadata holds the LoRA config (``rank``, ``alpha``, ``targets`` as a JSON list,
    ``dropout``, format version) plus the caller's entries (e.g. ``{"card": "vit_b16_clip"}``);
    non-string values are converted with ``str``. A caller entry may not contradict the
    config's. Keys are relative to ``model``: load into the same kind of module.
    """
    tensors = lora_state_dict(model)
    if not tensors:
        raise ValueError("model has no LoRA layers: nothing to save")
    meta = lora_config(model).to_metadata()
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            raise TypeError(f"adapter metadata keys must be strings, got {key!r}")
        value = str(value)
        if key in meta and meta[key] != value:
            raise ValueError(f"adapter metadata {key!r}={value!r} contradicts the model's LoRA "
                             f"layers ({key}={meta[key]!r})")
        meta[key] = value
    save_file({k: t.to("cpu").contiguous() for k, t in tensors.items()}, os.fspath(path),
              metadata=meta)


def read_adapter_metadata(path: PathLike) -> dict[str, str]:
    """The string metadata of an adapter file (use ``LoRAConfig.from_metadata`` on it to
    rebuild the config it was trained with)."""
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{os.fspath(path)!r} is not a readable safetensors adapter file: {e}") from e


def load_adapter(path: PathLike, model: nn.Module,
                 expect: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """Load LoRA tensors from ``path`` into the LoRA layers already applied to ``model``.

    Checks, each failing with a ValueError that names expected vs found values:
    ``expect`` entries (e.g. ``{"card": "vit_b16_clip"}``) against the file metadata; rank,
    alpha and targets against the model's LoRA layers; missing / unexpected tensor keys; shapes.
    Merged layers are unmerged, loaded and merged again. Nothing is written unless all checks
    pass. Returns the file metadata.
    """
    path = os.fspath(path)
    meta = read_adapter_metadata(path)
    where = f"adapter {path!r}"
    if FORMAT_KEY not in meta:
        raise ValueError(f"{where} is not a cytotune LoRA adapter (metadata keys: {sorted(meta)})")

    wrong = [f"{k}: expected {str(v)!r}, found {meta[k]!r}" if k in meta
             else f"{k}: expected {str(v)!r}, found nothing (key absent)"
             for k, v in (expect or {}).items() if meta.get(k) != str(v)]
    if wrong:
        raise ValueError(f"{where} does not match: " + "; ".join(wrong))

    layers = lora_modules(model)
    if not layers:
        raise ValueError(f"model has no LoRA layers to load {where} into: call "
                         f"apply_lora(model, LoRAConfig.from_metadata(read_adapter_metadata(path)), "
                         f"card.lora_targets) first")
    file_cfg = LoRAConfig.from_metadata(meta)
    model_cfg = lora_config(model)
    wrong = []
    if file_cfg.rank != model_cfg.rank:
        wrong.append(f"rank: model has {model_cfg.rank}, file has {file_cfg.rank}")
    if file_cfg.alpha != model_cfg.alpha:
        wrong.append(f"alpha: model has {model_cfg.alpha}, file has {file_cfg.alpha}")
    if set(file_cfg.targets) != set(model_cfg.targets):
        wrong.append(f"targets: model has {list(model_cfg.targets)}, file has {list(file_cfg.targets)}")

    tensors = load_file(path, device="cpu")
    own = lora_state_dict(model)
    missing, unexpected = own.keys() - tensors.keys(), tensors.keys() - own.keys()
    if missing:
        wrong.append(f"missing keys (in model, not in file): {_names(missing)}")
    if unexpected:
        wrong.append(f"unexpected keys (in file, not in model): {_names(unexpected)}")
    shapes = [f"{k}: model {tuple(own[k].shape)}, file {tuple(tensors[k].shape)}"
              for k in sorted(own.keys() & tensors.keys()) if own[k].shape != tensors[k].shape]
    if shapes:
        wrong.append(f"shape mismatch: {_names(shapes)}")
    if wrong:
        raise ValueError(f"{where} does not fit the model's LoRA layers: " + "; ".join(wrong))

    merged = [layer for _, layer in layers if layer.merged]
    for layer in merged:
        layer.unmerge()
    with torch.no_grad():
        for k, t in tensors.items():
            own[k].copy_(t)
    for layer in merged:
        layer.merge()
    return meta
