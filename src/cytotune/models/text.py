"""The text tower of a vision-language card: prompts in, normalised embeddings out.

Zero-shot classification, text-initialised heads and LoRA on the text encoder all need the same
three things from a CLIP-style checkpoint: its tokenizer, its text encoder and its logit scale.
:class:`TextEncoder` bundles them, built by the card's family from the same weights as the image
tower (``build_text_encoder``), so image-only cards are untouched and the training layer never
branches on a model's name.

    text = build_text_encoder("clip-vit-b16")                 # the card's published weights
    text = build_text_encoder("biomedclip", tokenizer="/models/BiomedBERT")  # offline tokenizer
    weights = text.class_embeddings([["a cell", "an image of a cell"], ...])  # (C, D), unit norm
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from cytotune.models.card import LoraTarget, ModelCard
from cytotune.models.errors import ModelError
from cytotune.models.families import get_family
from cytotune.models.families.base import TextTower
from cytotune.models.catalog import get_card, list_cards
from cytotune.models.targets import OPEN_CLIP_VIT_TARGETS, matching_targets

log = logging.getLogger(__name__)

# open_clip's TextTransformer after convert_multihead_attention() has the same block names as its
# native ViT; Hugging Face BERT text towers (BiomedCLIP) sit under HFTextEncoder.transformer.
_BERT_LAYER = ("transformer.encoder.layer.[0-9].", "transformer.encoder.layer.[0-9][0-9].")
BERT_TARGETS = {
    "q": LoraTarget(tuple(p + "attention.self.query" for p in _BERT_LAYER)),
    "k": LoraTarget(tuple(p + "attention.self.key" for p in _BERT_LAYER)),
    "v": LoraTarget(tuple(p + "attention.self.value" for p in _BERT_LAYER)),
    "o": LoraTarget(tuple(p + "attention.output.dense" for p in _BERT_LAYER)),
    "fc1": LoraTarget(tuple(p + "intermediate.dense" for p in _BERT_LAYER)),
    "fc2": LoraTarget(tuple(p + "output.dense" for p in _BERT_LAYER)),
}
TEXT_TARGET_MAPS = (OPEN_CLIP_VIT_TARGETS, BERT_TARGETS)  # the first that matches a tower is used


class NoTextTowerError(ModelError, ValueError):
    """A method needs a text encoder but the card is an image-only model."""


class TextEncoder(nn.Module):
    """A card's text encoder with its own tokenizer and logit scale.

    ``model`` is the module the LoRA target map :attr:`lora_targets` refers to (q, k, v, o of every
    attention block, fc1, fc2). :meth:`encode` returns L2-normalised embeddings on the module's
    device; gradients flow through it when LoRA layers are trained.
    """

    def __init__(self, card: ModelCard, tower: TextTower):
        super().__init__()
        self.card = card
        self.model = tower.model
        self.tokenizer = tower.tokenizer
        self.weights_origin = tower.origin
        self.register_buffer("logit_scale", torch.tensor(float(tower.logit_scale)))
        self.lora_targets: dict[str, LoraTarget] = next(
            (found for found in (matching_targets(self.model, m) for m in TEXT_TARGET_MAPS)
             if found), {})

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        return self.tokenizer(list(prompts))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = self.model(tokens.to(self.device))
        return out[0] if isinstance(out, (tuple, list)) else out

    def encode(self, prompts: Sequence[str]) -> torch.Tensor:
        """(N, D) unit-norm embeddings of ``prompts``."""
        return F.normalize(self(self.tokenize(prompts)).float(), dim=-1)

    def class_embeddings(self, prompts: Sequence[Sequence[str]]) -> torch.Tensor:
        """(C, D) unit-norm class embeddings: the mean of each class's normalised prompt
        embeddings, renormalised (CLIP's prompt ensembling over templates)."""
        counts = [len(p) for p in prompts]
        if not counts or min(counts) == 0:
            raise ValueError("every class needs at least one prompt")
        flat = [text for class_prompts in prompts for text in class_prompts]
        embedded = self.encode(flat)
        means = torch.stack([chunk.mean(0) for chunk in embedded.split(counts)])
        return F.normalize(means, dim=-1)

    def extra_repr(self) -> str:
        return (f"card={self.card.name!r}, logit_scale={float(self.logit_scale):.4g}, "
                f"weights={self.weights_origin!r}")


def text_cards() -> list[str]:
    """Names of the registered cards that have a text tower."""
    return [c.name for c in list_cards() if c.text_tower]


def build_text_encoder(card_or_name: Union[ModelCard, str],
                       weights: Optional[Union[str, Path]] = None, pretrained: bool = True,
                       tokenizer: Optional[str] = None,
                       device: Union[str, torch.device] = "cpu") -> TextEncoder:
    """The text encoder of a vision-language card, from the same weights as its image tower.

    ``weights``: a local checkpoint (file or directory) holding the full model; ``pretrained``:
    the published weights, else random init. ``tokenizer``: a Hugging Face tokenizer (hub id or
    local directory) for cards whose text tower uses one, instead of the card's.
    """
    card = card_or_name if isinstance(card_or_name, ModelCard) else get_card(card_or_name)
    if not card.text_tower:
        raise NoTextTowerError(
            f"model card '{card.name}' is an image-only model (no text tower), so it cannot do "
            f"zero-shot, Tip-Adapter, text-initialised heads or text-encoder LoRA; "
            f"vision-language cards: "
            f"{', '.join(text_cards()) or 'none'}")
    family = get_family(card.family)
    tower = family.build_text_tower(card, pretrained=pretrained,
                                    weights=Path(weights).expanduser() if weights else None,
                                    tokenizer=tokenizer)
    encoder = TextEncoder(card, tower).eval().to(device)
    log.info("built the text tower of %s (%s weights)", card.name, tower.origin)
    return encoder
