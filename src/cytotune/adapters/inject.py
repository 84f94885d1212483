"""Put LoRA wrappers into a model, and manage them (trainability, counting, merging, removal)."""
from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Mapping, Optional, Sequence

from torch import nn

from cytotune.models.card import LoraTarget

from .config import LoRAConfig
from .layers import LoRAConv2d, LoRALayer, LoRALinear, Part

_EXAMPLES = 8


def lora_modules(model: nn.Module) -> list[tuple[str, LoRALayer]]:
    """``(name, layer)`` for every LoRA wrapper in ``model``, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoRALayer)]


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALayer) for m in model.modules())


def _adapter_key(target: str) -> str:
    """A ParameterDict key for a target: canonical names stay, patterns are sanitised."""
    key = re.sub(r"\W", "_", target).strip("_") or "lora"
    return key if key.isidentifier() else f"t_{key}"


def _describe_choices(model: nn.Module, target_map: Mapping[str, LoraTarget]) -> str:
    canonical = ", ".join(sorted(target_map)) or "none (empty target map)"
    examples = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    shown = ", ".join(examples[:_EXAMPLES]) + (", ..." if len(examples) > _EXAMPLES else "")
    return (f"Canonical targets available: {canonical}. Example Linear/Conv2d module names: "
            f"{shown or 'none'}")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def apply_lora(model: nn.Module, config: LoRAConfig,
               target_map: Optional[Mapping[str, LoraTarget]] = None) -> list[str]:
    """Replace every module matched by ``config.targets`` with a LoRA wrapper, in place.

    Each target is looked up in ``target_map`` (a card's ``lora_targets``: canonical name ->
    fnmatch patterns + optional fused-output part); a target not in the map is itself an fnmatch
    pattern over ``named_modules()`` names, adapting the whole output. Several targets on one
    module (q and v of a fused qkv) share one wrapper, one adapter per part. Matched modules must
    be ``nn.Linear`` or ``nn.Conv2d``. All checks run before the model is touched, so a failing
    call leaves it unchanged. Returns the adapted module names, in module order.

    Raises ValueError for a target matching nothing (naming it, the canonical targets and example
    module names), overlapping parts, or a model that already has LoRA layers; TypeError for a
    match that is not a Linear/Conv2d.
    """
    if not isinstance(config, LoRAConfig):
        raise TypeError(f"config must be a LoRAConfig, got {type(config).__name__}")
    target_map = dict(target_map or {})
    existing = lora_modules(model)
    if existing or isinstance(model, LoRALayer):
        raise ValueError(f"model already has {len(existing)} LoRA layers (e.g. "
                         f"{existing[0][0] if existing else 'the model itself'!r}); "
                         f"call remove_lora(model) before applying LoRA again")

    named = [(n, m) for n, m in model.named_modules() if n]
    plan: dict[str, list[tuple[str, Part, str]]] = {}  # module -> [(key, part, target)]
    for target in config.targets:
        if target in target_map:
            spec = target_map[target]
            patterns = (spec.patterns,) if isinstance(spec.patterns, str) else tuple(spec.patterns)
            part, key = spec.part, target
            if not key.isidentifier():
                key = _adapter_key(target)
        else:
            patterns, part, key = (target,), None, _adapter_key(target)
        matched = [(n, m) for n, m in named if any(fnmatchcase(n, p) for p in patterns)]
        if not matched:
            how = (f"its patterns {list(patterns)} match no module" if target in target_map else
                   "it is not a canonical target of this model and, as an fnmatch pattern, "
                   "matches no module name")
            raise ValueError(f"LoRA target {target!r} matched nothing: {how}. "
                             f"{_describe_choices(model, target_map)}")
        for n, m in matched:
            if not isinstance(m, (nn.Linear, nn.Conv2d)):
                raise TypeError(
                    f"LoRA target {target!r} matched module {n!r} of type {type(m).__name__}; "
                    f"only nn.Linear and nn.Conv2d can be adapted (make the pattern match the "
                    f"layer itself, e.g. '{n}.<linear name>')")
            entries = plan.setdefault(n, [])
            if any(k == key for k, _, _ in entries):
                raise ValueError(f"LoRA targets {target!r} and {[t for k, _, t in entries if k == key][0]!r} "
                                 f"give module {n!r} two adapters named {key!r}")
            entries.append((key, part, target))

    modules = dict(named)
    wrappers: list[tuple[str, LoRALayer]] = []
    for n, m in named:  # module order; build everything before swapping anything in
        if n not in plan:
            continue
        cls = LoRALinear if isinstance(m, nn.Linear) else LoRAConv2d
        wrapper = cls(modules[n], rank=config.rank, alpha=config.alpha,
                      dropout=config.dropout, name=n)
        for key, part, target in plan[n]:
            wrapper.add_adapter(key, part, target=target)
        wrappers.append((n, wrapper))
    for n, wrapper in wrappers:
        _set_submodule(model, n, wrapper)
    return [n for n, _ in wrappers]


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """All LoRA A/B parameters of ``model`` (trainable or not)."""
    params: list[nn.Parameter] = []
    for _, layer in lora_modules(model):
        params.extend(layer.lora_A.values())
        params.extend(layer.lora_B.values())
    return params


def count_lora_parameters(model: nn.Module) -> int:
    """Number of LoRA parameter elements (works on the meta device)."""
    return sum(p.numel() for p in lora_parameters(model))


def mark_only_lora_trainable(model: nn.Module, keep_trainable: Sequence[str] = ()) -> int:
    """Freeze every parameter except the LoRA A/B ones and those whose ``named_parameters``
    name matches one of the fnmatch patterns ``keep_trainable`` (e.g. ``("head.*",)``).

    Returns the number of trainable parameter elements.
    """
    if not has_lora(model):
        raise ValueError("model has no LoRA layers: call apply_lora(model, ...) first")
    lora_ids = {id(p) for p in lora_parameters(model)}
    if isinstance(keep_trainable, str):
        keep_trainable = (keep_trainable,)
    total = 0
    for name, p in model.named_parameters():
        train = id(p) in lora_ids or any(fnmatchcase(name, pat) for pat in keep_trainable)
        p.requires_grad_(train)
        total += p.numel() if train else 0
    return total


def merge_lora(model: nn.Module) -> int:
    """Fold all adapters into their base weights (for inference). Idempotent: layers already
    merged are skipped. Returns the number of layers merged by this call."""
    return sum(layer.merge() for _, layer in lora_modules(model))


def unmerge_lora(model: nn.Module) -> int:
    """Undo :func:`merge_lora`. Idempotent. Returns the number of layers unmerged by this call."""
    return sum(layer.unmerge() for _, layer in lora_modules(model))


def remove_lora(model: nn.Module, merge: bool = True) -> list[str]:
    """Put the plain base layers back in place of the LoRA wrappers.

    ``merge=True`` (default) keeps the adapted function: adapters are merged into the base
    weights first. ``merge=False`` restores the original weights (unmerging if needed) and drops
    the adapters. Returns the names of the layers restored. Base layers stay frozen.
    """
    restored = []
    for name, layer in lora_modules(model):
        layer.merge() if merge else layer.unmerge()
        _set_submodule(model, name, layer.base)
        restored.append(name)
    return restored


def lora_config(model: nn.Module) -> LoRAConfig:
    """The :class:`LoRAConfig` the model's LoRA layers were built with (targets in first-seen
    order). Raises ValueError when the model has no LoRA layers or they disagree."""
    layers = lora_modules(model)
    if not layers:
        raise ValueError("model has no LoRA layers")
    settings = {(l.rank, l.alpha, l.lora_dropout_p) for _, l in layers}
    if len(settings) > 1:
        raise ValueError(f"LoRA layers disagree on (rank, alpha, dropout): {sorted(settings)}")
    rank, alpha, dropout = settings.pop()
    targets: dict[str, None] = {}
    for _, layer in layers:
        targets.update(dict.fromkeys(layer.lora_targets.values()))
    return LoRAConfig(rank=rank, alpha=alpha, targets=tuple(targets), dropout=dropout)

