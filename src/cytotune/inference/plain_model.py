"""An adapted backbone as the plain library builds it (timm, open_clip, transformers).

A :class:`PlainRecipe` is the construction code the export README shows and that export runs
(on the meta device) to check the saved keys and shapes; :func:`plain_state_dict` renames the
merged backbone's tensors to that library's own key names, with the head under
:data:`HEAD_PREFIX`. Kept apart from :mod:`cytotune.inference.export`, which writes the folder.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from cytotune.inference.model import CytotuneModel
from cytotune.models import FusedSelfAttention

log = logging.getLogger(__name__)

HEAD_PREFIX = "head."


class ExportError(ValueError):
    """The run cannot be exported in the requested format (the message says why)."""



@dataclass
class PlainRecipe:
    """How the plain library rebuilds a backbone, as code for the README (and the export check)."""

    library: str  # "timm" | "open_clip" | "transformers"
    imports: str  # import lines
    build: str  # code that defines ``backbone`` (may read EXPORT_DIR)
    key_prefix: str  # prefix of the backbone's keys in model.safetensors
    features: list[str]  # lines of Classifier.forward computing ``feats`` from ``x``
    rename: Optional[Callable[[str], str]] = None  # our key -> the library's (None: same)
    extra_files: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _pool_lines(pooling: str, tokens: str, prefix: str) -> list[str]:
    if pooling == "cls":
        return [f"tokens = {tokens}", "feats = tokens[:, 0]"]
    if pooling == "mean_patch":
        return [f"tokens = {tokens}", f"feats = tokens[:, {prefix}:].mean(dim=1)"]
    if pooling == "cls+mean_patch":
        return [f"tokens = {tokens}",
                f"feats = torch.cat([tokens[:, 0], tokens[:, {prefix}:].mean(dim=1)], dim=-1)"]
    raise ExportError(f"pooling {pooling!r} has no plain-library equivalent in the safetensors "
                      f"export; use --format onnx")


def library_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return "unknown"


def _timm_recipe(model: CytotuneModel) -> PlainRecipe:
    from cytotune.models.families import get_family

    card = model.card
    arch = get_family(card.family).architecture(card)
    kwargs = dict(card.model_kwargs)
    build = f"backbone = timm.create_model({arch!r}, pretrained=False, **{kwargs!r})"
    if card.pooling == "model":
        features = ["feats = self.backbone(x)"]
    else:
        features = _pool_lines(card.pooling, "self.backbone.forward_features(x)",
                               "self.backbone.num_prefix_tokens")
    notes = []
    if arch.startswith("cytotune_"):
        notes.append(f"`{arch}` is a small test architecture that cytotune registers with timm; "
                     f"plain timm does not know it.")
    return PlainRecipe(library="timm", imports="import timm", build=build, key_prefix="",
                       features=features, notes=notes)


def _open_clip_recipe(model: CytotuneModel) -> PlainRecipe:
    import open_clip

    from cytotune.models.families import get_family

    card = model.card
    if card.pooling != "model":
        raise ExportError(f"open_clip card '{card.name}' with pooling {card.pooling!r}: only the "
                          f"tower's own output can be exported as safetensors")
    tower = get_family(card.family).tower_config(card)
    # any open_clip architecture provides the (unused) text tower; the image tower is given whole
    base = next((a for a in (card.architecture, card.source) if a and ":" not in a
                 and a in open_clip.list_models()), "ViT-B-16")
    build = (f"clip = open_clip.create_model({base!r}, pretrained=None,\n"
             f"                              embed_dim={tower['embed_dim']!r},\n"
             f"                              vision_cfg={tower['vision_cfg']!r},\n"
             f"                              quick_gelu={tower['quick_gelu']!r})\n"
             f"backbone = clip.visual  # the image tower; the text tower is not used")
    fused = {name for name, m in model.backbone.model.named_modules()
             if isinstance(m, FusedSelfAttention)}

    def rename(key: str) -> str:
        module, _, leaf = key.rpartition(".")
        parent, _, proj = module.rpartition(".")
        if proj == "in_proj" and parent in fused and leaf in ("weight", "bias"):
            key = f"{parent}.in_proj_{leaf}"  # nn.MultiheadAttention's parameter names
        return key

    notes = []
    timm_name = str(tower["vision_cfg"].get("timm_model_name") or "")
    if timm_name.startswith("cytotune_"):
        notes.append(f"`{timm_name}` is a small test architecture that cytotune registers with "
                     f"timm; plain open_clip/timm do not know it.")
    return PlainRecipe(library="open_clip", imports="import open_clip", build=build,
                       key_prefix="visual.", features=["feats = self.backbone(x)"],
                       rename=rename, notes=notes)


def _transformers_recipe(model: CytotuneModel) -> PlainRecipe:
    import inspect

    inner = model.backbone.model
    config = inner.config
    cls, config_cls = type(inner).__name__, type(config).__name__  # ViTModel, Dinov2Model, ...
    no_pooler = ("add_pooling_layer" in inspect.signature(type(inner).__init__).parameters
                 and getattr(inner, "pooler", None) is None)
    build = (f'backbone = {cls}({config_cls}.from_json_file(str(EXPORT_DIR / '
             f'"backbone_config.json"))' + (", add_pooling_layer=False)" if no_pooler else ")"))
    run_args = "pixel_values=x"
    if "interpolate_pos_encoding" in inspect.signature(inner.forward).parameters:
        size = config.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        resize = size != (model.preprocessing.image_size,) * 2
        run_args += f", interpolate_pos_encoding={resize}"
    tokens = f"self.backbone({run_args}).last_hidden_state"
    prefix = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
    pooling = model.card.pooling
    features = ([f"feats = {tokens}[:, 0]"] if pooling == "model"
                else _pool_lines(pooling, tokens, str(prefix)))
    return PlainRecipe(library="transformers",
                       imports=f"from transformers import {config_cls}, {cls}",
                       build=build, key_prefix="", features=features,
                       extra_files={"backbone_config.json": config.to_json_string()})


RECIPES: dict[str, Callable[[CytotuneModel], PlainRecipe]] = {
    "timm": _timm_recipe,
    "timm_pypi_weights": _timm_recipe,
    "open_clip": _open_clip_recipe,
    "hf_vit": _transformers_recipe,
}
LIBRARY_PACKAGES = {"timm": "timm", "open_clip": "open_clip_torch", "transformers": "transformers"}


def recipe_for(model: CytotuneModel) -> PlainRecipe:
    family = model.card.family
    if family not in RECIPES:
        raise ExportError(f"model '{model.card.name}' (family '{family}') has no plain-library "
                          f"safetensors export; families supported: {', '.join(sorted(RECIPES))}. "
                          f"Use --format onnx")
    return RECIPES[family](model)


# --------------------------------------------------------------------------------- tensors


def plain_state_dict(model: CytotuneModel, recipe: PlainRecipe) -> dict[str, torch.Tensor]:
    """Merged backbone tensors under the library's key names, plus ``head.weight``/``head.bias``."""
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for key, tensor in model.backbone.model.state_dict().items():
        name = recipe.key_prefix + (recipe.rename(key) if recipe.rename else key)
        t = tensor.detach().to("cpu").contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:  # shared storage (tied weights): safetensors needs separate copies
            t = t.clone()
        seen[ptr] = name
        out[name] = t
    for key, tensor in model.head.state_dict().items():
        name = HEAD_PREFIX + key
        if name in out:
            raise ExportError(f"the backbone has a tensor named {name!r} itself; cannot store "
                              f"the classifier head under that name")
        out[name] = tensor.detach().to("cpu").contiguous().clone()
    return out


def _build_plain(recipe: PlainRecipe, export_dir: Path, device: str = "meta") -> nn.Module:
    """Run the README's construction code (imports + build) and return ``backbone``."""
    namespace: dict[str, Any] = {"EXPORT_DIR": export_dir, "torch": torch}
    code = f"{recipe.imports}\n{recipe.build}\n"
    previous = logging.root.manager.disable
    logging.disable(max(previous, logging.WARNING))  # open_clip: "no pretrained weights loaded"
    try:
        with torch.device(device):
            exec(compile(code, "<cytotune export: README construction code>", "exec"), namespace)
    finally:
        logging.disable(previous)
    return namespace["backbone"]


def check_plain_keys(recipe: PlainRecipe, tensors: dict[str, torch.Tensor], export_dir: Path) -> None:
    """The README's construction code must give a module whose state dict has exactly the
    exported keys and shapes (checked on the meta device: no memory, no weights)."""
    try:
        plain = _build_plain(recipe, export_dir, "meta")
    except Exception as err:  # a library that cannot build on meta: build it for real
        log.info("meta build of the plain %s model failed (%s); building on the CPU",
                 recipe.library, err)
        plain = _build_plain(recipe, export_dir, "cpu")
    expected = {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    ours = {k[len(recipe.key_prefix):]: tuple(v.shape) for k, v in tensors.items()
            if not k.startswith(HEAD_PREFIX)}
    missing, unexpected = expected.keys() - ours.keys(), ours.keys() - expected.keys()
    shapes = [f"{k}: library {expected[k]}, export {ours[k]}"
              for k in sorted(expected.keys() & ours.keys()) if expected[k] != ours[k]]
    if missing or unexpected or shapes:
        raise ExportError(
            f"the plain {recipe.library} model built by the README code does not match the "
            f"exported tensors: missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}, "
            f"shapes {shapes[:5]}")


