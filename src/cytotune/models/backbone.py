"""The Backbone: a card's model, ready to turn normalised pixels into one feature vector each."""
from __future__ import annotations

import hashlib
import logging
from typing import Optional

import torch
from torch import nn
from torch.func import functional_call

from cytotune.models.card import ModelCard, Preprocessing
from cytotune.models.errors import FeatureDimError
from cytotune.models.families import get_family
from cytotune.models.pooling import MODEL_POOLING, get_pooling

log = logging.getLogger(__name__)

_SAMPLE_ELEMENTS = 256  # elements read from each tensor for the fingerprint


class Backbone(nn.Module):
    """Feature extractor of one model card.

    ``model`` is the inner network that the card's LoRA target patterns refer to
    (``named_modules()`` names); ``forward`` maps normalised pixels (B, 3, H, W) to
    (B, ``feature_dim``) features, pooled as the card says.

    ``channels_last``: feed the model channels-last (NHWC) pixels. On by default for
    convolutional networks (:func:`is_convolutional`): every convolution then keeps that layout,
    which oneDNN runs about twice as fast on a CPU (``scripts/bench_channels_last.py``); the
    weights and their layout are untouched, so saving and merging see no difference.
    """

    def __init__(self, card: ModelCard, model: nn.Module, weights_origin: str = "unknown"):
        super().__init__()
        self.card = card
        self.model = model
        self.family = get_family(card.family)
        self.weights_origin = weights_origin
        self._pool = None if card.pooling == MODEL_POOLING else get_pooling(card.pooling)
        self.channels_last = is_convolutional(model)

    @property
    def feature_dim(self) -> int:
        return self.card.feature_dim

    @property
    def preprocessing(self) -> Preprocessing:
        return self.card.preprocessing

    @property
    def name(self) -> str:
        return self.card.name

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        if self.channels_last and pixels.dim() == 4:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        if self._pool is None:
            return self.family.pooled_features(self.card, self.model, pixels)
        tokens, num_prefix = self.family.token_features(self.card, self.model, pixels)
        return self._pool(tokens, num_prefix)

    def weights_fingerprint(self) -> str:
        """A content hash of the weights (names, shapes, dtypes, sampled values, sums).

        Cheap (a strided sample plus two reductions per tensor) and changed by any realistic
        change of the weights, including LoRA layers added to the model: the feature-cache key.
        The card's architecture settings and pooling are hashed too (quick_gelu, say, changes the
        features without changing a weight).
        """
        h = hashlib.sha256()
        c = self.card
        h.update(f"{c.family}|{c.architecture}|{c.pooling}|{sorted(c.model_kwargs.items())!r}".encode())
        tensors = list(self.model.state_dict(keep_vars=False).items())
        with torch.no_grad():
            for name, t in tensors:
                h.update(f"|{name}|{tuple(t.shape)}|{t.dtype}".encode())
                if t.device.type == "meta" or t.numel() == 0:
                    continue
                flat = t.detach().reshape(-1)
                step = max(1, flat.numel() // _SAMPLE_ELEMENTS)
                sample = flat[::step][:_SAMPLE_ELEMENTS].to("cpu")
                if sample.dtype == torch.bfloat16:
                    sample = sample.float()
                h.update(sample.contiguous().numpy().tobytes())
                if flat.is_floating_point() or flat.is_complex():
                    total = flat.sum(dtype=torch.float64).item()
                    weighted = (flat[1::2].sum(dtype=torch.float64).item() if flat.numel() > 1 else 0.0)
                    h.update(f"{total!r}|{weighted!r}".encode())
                else:
                    h.update(f"{int(flat.to(torch.int64).sum().item())}".encode())
        return h.hexdigest()[:32]

    def extra_repr(self) -> str:
        return (f"card={self.card.name!r}, family={self.card.family!r}, "
                f"feature_dim={self.feature_dim}, pooling={self.card.pooling!r}, "
                f"weights={self.weights_origin!r}")


def is_convolutional(model: nn.Module) -> bool:
    """Whether ``model`` is a convolutional network: more than one ``Conv2d`` (a ViT has one, its
    patch embedding, whose single strided convolution gains nothing from channels-last input)."""
    convolutions = 0
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            convolutions += 1
            if convolutions > 1:
                return True
    return False


def output_dim(backbone: Backbone, image_size: Optional[int] = None) -> int:
    """The width of ``backbone``'s features for a (1, 3, S, S) input, computed without real math.

    The forward runs on the meta device (shapes only); models with an operation that cannot run
    there get a real forward on a zero image instead.
    """
    size = int(image_size or backbone.card.preprocessing.image_size)
    meta = {name: torch.empty_like(t, device="meta")
            for name, t in (*backbone.named_parameters(), *backbone.named_buffers())}
    try:
        with torch.no_grad():
            out = functional_call(backbone, meta, (torch.empty(1, 3, size, size, device="meta"),),
                                  strict=False)
        return int(out.shape[-1])
    except (RuntimeError, NotImplementedError, TypeError, ValueError, AttributeError) as exc:
        log.debug("meta forward of %s failed (%s); running a real forward", backbone.card.name, exc)
    device = next((p.device for p in backbone.parameters()), torch.device("cpu"))
    with torch.no_grad():
        out = backbone(torch.zeros(1, 3, size, size, device=device))
    return int(out.shape[-1])


def check_feature_dim(backbone: Backbone) -> None:
    """Raise :class:`FeatureDimError` unless the model's features are ``card.feature_dim`` wide."""
    size = backbone.card.preprocessing.image_size
    try:
        got = output_dim(backbone, size)
    except (RuntimeError, ValueError, TypeError, NotImplementedError, AssertionError,
            IndexError) as exc:  # the model cannot run at the card's input size at all
        raise FeatureDimError(
            f"model card '{backbone.card.name}': a forward of a (1, 3, {size}, {size}) image "
            f"failed ({type(exc).__name__}: {exc}); check the card's preprocessing.image_size "
            f"and architecture") from exc
    if got != backbone.card.feature_dim:
        raise FeatureDimError(
            f"model card '{backbone.card.name}' declares feature_dim={backbone.card.feature_dim} "
            f"but the model gives {got}-d features (pooling {backbone.card.pooling!r}); set "
            f"feature_dim={got} in the card")
