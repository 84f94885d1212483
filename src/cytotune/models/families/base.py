"""What a family (one way of building and loading a kind of model) has to provide."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

from cytotune.models.card import ModelCard
from cytotune.models.errors import UnknownModelError
from cytotune.models.hub import WeightsSource

if TYPE_CHECKING:  # torch is imported where a model is built or run, not here
    import torch
    from torch import nn

# prompts -> (N, context_length) int64 token ids
Tokenizer = Callable[[Sequence[str]], "torch.Tensor"]


@dataclass
class TextTower:
    """What :meth:`Family.build_text_tower` hands back: the encoder module, its tokenizer, scale
    and weight origin (wrapped by ``cytotune.models.text.TextEncoder``; kept here, with the family
    contract, so families need not import the text module, which imports the card catalog)."""

    model: "nn.Module"  # tokens (N, L) -> features (N, D), unnormalised
    tokenizer: Tokenizer
    logit_scale: float  # exp of the checkpoint's learned log-scale
    origin: str


PathLike = Union[str, Path]


class Family:
    """Builds, loads and runs one kind of model; every model-specific value comes from the card.

    Subclasses implement :meth:`create`, :meth:`load_local` and :meth:`load_pretrained`, and
    override :meth:`pooled_features` / :meth:`token_features` as the model type needs.
    ``naming_help`` (None: unsupported) documents ``<family>:<name>`` references that
    :meth:`card_from_name` turns into cards on the fly.
    """

    name: str = ""
    naming_help: Optional[str] = None
    supports_tokens: bool = False  # token_features() implemented: cards may use any pooling

    # -- building -------------------------------------------------------------------------------
    def build(self, card: ModelCard, *, pretrained: bool = True,
              weights: Optional[PathLike] = None) -> tuple[nn.Module, str]:
        """The inner model, ready for inference, and a short description of where its weights came from.

        ``weights`` (a file or a snapshot directory) wins over ``pretrained``.
        """
        if weights is not None:
            model = self.load_local(card, Path(weights).expanduser())
            origin = f"local:{Path(weights).expanduser()}"
        elif pretrained:
            model, origin = self.load_pretrained(card)
        else:
            model = self.create(card)
            origin = "random-init"
        model = self.prepare(card, model)
        return model.eval(), origin

    def create(self, card: ModelCard) -> nn.Module:
        """The architecture with random weights (never touches the network)."""
        raise NotImplementedError

    def load_local(self, card: ModelCard, path: Path) -> nn.Module:
        """The architecture with weights from a file or a directory laid out as on the Hub."""
        raise NotImplementedError

    def load_pretrained(self, card: ModelCard) -> tuple[nn.Module, str]:
        """The architecture with its published weights (downloaded or from the cache)."""
        raise NotImplementedError

    def prepare(self, card: ModelCard, model: nn.Module) -> nn.Module:
        """Structural changes applied after loading (e.g. attention conversion for LoRA)."""
        return model

    def weights_location(self, card: ModelCard) -> Optional[str]:
        """Where :meth:`load_pretrained` gets the weights (hub id, URL, package), for messages."""
        return None

    def weights_source(self, card: ModelCard) -> Optional["WeightsSource"]:
        """Where :meth:`load_pretrained` gets the weights, as a value (None: not known); read by
        ``cytotune.models.availability`` to look for them without touching the network."""
        return None

    def missing_requirement(self, card: ModelCard) -> Optional[str]:
        """How to install an optional package the card needs and that is missing, else None."""
        return None

    def build_text_tower(self, card: ModelCard, *, pretrained: bool = True,
                         weights: Optional[Path] = None, tokenizer: Optional[str] = None):
        """The card's text encoder (a :class:`TextTower`), from the same weights.

        Only vision-language families implement it; ``card.text_tower`` says whether a card has one.
        """
        raise NotImplementedError(f"family '{self.name}' builds no text towers "
                                  f"(card '{card.name}')")

    # -- running --------------------------------------------------------------------------------
    def pooled_features(self, card: ModelCard, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """The model's own pooled output (pooling "model")."""
        out = model(pixels)
        return out[0] if isinstance(out, (tuple, list)) else out

    def token_features(self, card: ModelCard, model: nn.Module,
                       pixels: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(B, T, D) output tokens and how many of them precede the patch tokens."""
        raise NotImplementedError(
            f"family '{self.name}' has no token output; card '{card.name}' must use pooling='model'")

    # -- small variants -------------------------------------------------------------------------
    def tiny_card(self, card: ModelCard) -> ModelCard:
        """The same architecture (classes, block types, target names) at small width and depth.

        Only the architecture fields need changing; ``cytotune.models.tiny`` sets the name, the
        32-pixel preprocessing and the feature width.
        """
        raise NotImplementedError(f"family '{self.name}' has no small variant of card '{card.name}'")

    # -- cards on the fly -----------------------------------------------------------------------
    def card_from_name(self, name: str) -> ModelCard:
        """A card for ``<family>:<name>``; families without such naming raise UnknownModelError."""
        raise UnknownModelError(f"family '{self.name}' cannot build cards from names "
                                f"('{self.name}:{name}')", name=f"{self.name}:{name}")
