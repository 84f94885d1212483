"""Pooling: how a (B, T, D) token tensor becomes one feature vector per image.

Token tensors start with ``num_prefix_tokens`` non-patch tokens: the class token first, then any
register / distillation tokens; patch tokens follow. A card's ``pooling`` names one entry of
:data:`POOLINGS`, or ``"model"`` for the model's own pooled output (``MODEL_POOLING``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # torch is imported when a pooling runs: the names are plain data
    import torch

MODEL_POOLING = "model"

PoolFn = Callable[["torch.Tensor", int], "torch.Tensor"]


def _check(tokens: torch.Tensor, num_prefix_tokens: int, need_cls: bool, need_patches: bool) -> None:
    if tokens.dim() != 3:
        raise ValueError(f"pooling expects tokens of shape (B, T, D), got {tuple(tokens.shape)}")
    if need_cls and num_prefix_tokens < 1:
        raise ValueError("class-token pooling needs a model with a class token (num_prefix_tokens >= 1)")
    if need_patches and tokens.shape[1] <= num_prefix_tokens:
        raise ValueError(f"no patch tokens: {tokens.shape[1]} tokens, {num_prefix_tokens} prefix tokens")


def pool_cls(tokens: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """The class token (the first token)."""
    _check(tokens, num_prefix_tokens, need_cls=True, need_patches=False)
    return tokens[:, 0]


def pool_mean_patch(tokens: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Mean of the patch tokens (class and register tokens excluded)."""
    _check(tokens, num_prefix_tokens, need_cls=False, need_patches=True)
    return tokens[:, num_prefix_tokens:].mean(dim=1)


def pool_cls_mean_patch(tokens: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Class token concatenated with the patch-token mean (as Virchow2 does): width 2 * D."""
    import torch

    return torch.cat([pool_cls(tokens, num_prefix_tokens),
                      pool_mean_patch(tokens, num_prefix_tokens)], dim=-1)


POOLINGS: dict[str, PoolFn] = {
    "cls": pool_cls,
    "mean_patch": pool_mean_patch,
    "cls+mean_patch": pool_cls_mean_patch,
}

# width of the pooled vector as a multiple of the token width
POOLED_WIDTH_FACTOR: dict[str, int] = {"cls": 1, "mean_patch": 1, "cls+mean_patch": 2}


def register_pooling(name: str, fn: PoolFn, width_factor: int = 1) -> None:
    """Add a pooling function (``fn(tokens, num_prefix_tokens) -> (B, width_factor * D)``)."""
    if name == MODEL_POOLING:
        raise ValueError(f"{MODEL_POOLING!r} is reserved for the model's own pooled output")
    POOLINGS[name] = fn
    POOLED_WIDTH_FACTOR[name] = width_factor


def get_pooling(name: str) -> PoolFn:
    """The pooling function called ``name`` (not ``"model"``, which the family implements)."""
    try:
        return POOLINGS[name]
    except KeyError:
        known = ", ".join([MODEL_POOLING, *POOLINGS])
        raise ValueError(f"unknown pooling {name!r}; known: {known}") from None


def pool(name: str, tokens: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Apply the pooling called ``name`` to ``tokens``."""
    return get_pooling(name)(tokens, num_prefix_tokens)


def known_poolings() -> list[str]:
    return [MODEL_POOLING, *POOLINGS]
