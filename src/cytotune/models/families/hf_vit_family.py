"""Hugging Face transformers vision transformers: ``ViTModel`` (google/vit-base-patch16-224),
``Dinov2Model`` (owkin/phikon-v2), and any other transformers model class with the same shape.

Card fields used: ``source`` (the hub repo id), ``architecture`` (the transformers class name,
e.g. ``"Dinov2Model"``; default ``"ViTModel"``), ``model_kwargs`` (arguments of that class's
config class, used for random init and for bare weight files; a ``config.json`` next to the
weights is authoritative). A pooler is left out where the class makes it optional. Tokens are
``last_hidden_state`` (after the final layer norm): the class token first, then the model's
register tokens (``config.num_register_tokens``, if any), then the patches.

Checkpoints in either naming load: transformers >= 5 renames the published (4.x) keys
(``vit.encoder.layer.N.attention.attention.query`` ...) itself, and strips the ``vit.`` prefix of
``ViTForImageClassification`` checkpoints; its classifier (and a pooler) are ignored.
"""
from __future__ import annotations

import contextlib
import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional

from cytotune.models import hub
from cytotune.models.card import ModelCard
from cytotune.models.checkpoint import config_file, read_state_dict_file, read_weights
from cytotune.models.errors import CheckpointError, CheckpointMismatchError
from cytotune.models.families.base import Family

if TYPE_CHECKING:
    import torch
    from torch import nn

CONFIG_NAME = "config.json"
DEFAULT_ARCHITECTURE = "ViTModel"
# heads of the published checkpoints that the feature extractor does not have
IGNORED_PREFIXES = ("classifier.", "pooler.", "vit.pooler.")


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No load report / progress bar from transformers while cytotune does its own checks."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


class HFViTFamily(Family):
    name = "hf_vit"
    supports_tokens = True
    weight_files = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                    "pytorch_model.bin.index.json")
    hub_weight_files = ("model.safetensors", "pytorch_model.bin")

    def model_class(self, card: ModelCard) -> type:
        """The transformers class named by ``card.architecture``."""
        import transformers

        name = card.architecture or DEFAULT_ARCHITECTURE
        cls = getattr(transformers, name, None)
        if not (isinstance(cls, type) and hasattr(cls, "config_class")):
            raise CheckpointError(f"card '{card.name}': architecture {name!r} is not a transformers "
                                  f"model class (e.g. 'ViTModel', 'Dinov2Model')")
        return cls

    def _init_kwargs(self, cls: type) -> dict:
        """``add_pooling_layer=False`` for classes that take it: features never use the pooler."""
        params = inspect.signature(cls.__init__).parameters
        return {"add_pooling_layer": False} if "add_pooling_layer" in params else {}

    def config(self, card: ModelCard, config_path: Optional[Path] = None):
        config_class = self.model_class(card).config_class
        if config_path is not None:
            try:
                return config_class.from_json_file(str(config_path))
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"cannot read {config_path}: {exc}") from exc
        return config_class(**card.model_kwargs)

    def create(self, card: ModelCard, config=None) -> nn.Module:
        cls = self.model_class(card)
        return cls(config if config is not None else self.config(card), **self._init_kwargs(cls))

    def _load(self, card: ModelCard, state_dict: dict, source: str, config) -> nn.Module:
        import torch

        cls = self.model_class(card)
        with _quiet_transformers():
            model, info = cls.from_pretrained(
                None, config=config, state_dict=state_dict, output_loading_info=True,
                ignore_mismatched_sizes=True, dtype=torch.float32, **self._init_kwargs(cls))
        order = list(model.state_dict())
        missing = sorted(info.get("missing_keys", ()), key=lambda k: order.index(k) if k in order else 0)
        unexpected = sorted(k for k in info.get("unexpected_keys", ()) if not k.startswith(IGNORED_PREFIXES))
        mismatched = [f"{k} (checkpoint {tuple(a)}, model {tuple(b)})"
                      for k, a, b in info.get("mismatched_keys", ())]
        if missing or unexpected or mismatched or info.get("error_msgs"):
            raise CheckpointMismatchError(card.name, source, missing, unexpected, mismatched,
                                          "; ".join(map(str, info.get("error_msgs", ()))))
        return model

    def load_local(self, card: ModelCard, path: Path) -> nn.Module:
        config = self.config(card, config_file(path, CONFIG_NAME))
        state_dict, file = read_weights(path, self.weight_files)
        return self._load(card, state_dict, str(file), config)

    def weights_location(self, card: ModelCard) -> Optional[str]:
        return card.source

    def weights_source(self, card: ModelCard) -> Optional[hub.WeightsSource]:
        return hub.WeightsSource("hf-hub", card.source, self.hub_weight_files)

    def load_pretrained(self, card: ModelCard) -> tuple[nn.Module, str]:
        config_path = hub.fetch_file(card, card.source, (CONFIG_NAME,), required=False)
        file = hub.fetch_file(card, card.source, self.hub_weight_files)
        return (self._load(card, read_state_dict_file(file), str(file), self.config(card, config_path)),
                f"hf-hub:{card.source}")

    def tiny_card(self, card: ModelCard) -> ModelCard:
        kwargs = {**card.model_kwargs, "hidden_size": 64, "num_hidden_layers": 2,
                  "num_attention_heads": 2, "image_size": 32, "patch_size": 8}
        if "intermediate_size" in card.model_kwargs:  # ViTConfig; Dinov2Config uses mlp_ratio
            kwargs["intermediate_size"] = 128
        return card.with_overrides(model_kwargs=kwargs)

    @staticmethod
    def _run(model: nn.Module, pixels: torch.Tensor):
        if "interpolate_pos_encoding" not in inspect.signature(model.forward).parameters:
            return model(pixel_values=pixels)  # e.g. Dinov2Model interpolates by itself
        size = model.config.image_size
        size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        # other input sizes (an image-size override) need the position embeddings interpolated
        resize = tuple(pixels.shape[-2:]) != size
        return model(pixel_values=pixels, interpolate_pos_encoding=resize)

    def token_features(self, card: ModelCard, model: nn.Module,
                       pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
        registers = int(getattr(model.config, "num_register_tokens", 0) or 0)
        return self._run(model, pixels).last_hidden_state, 1 + registers

    def pooled_features(self, card: ModelCard, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        out = self._run(model, pixels)
        pooled = getattr(out, "pooler_output", None)
        return pooled if pooled is not None else out.last_hidden_state[:, 0]
