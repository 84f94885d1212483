"""Self-attention with real ``nn.Linear`` projections, replacing ``nn.MultiheadAttention``.

open_clip's native ViT blocks use ``nn.MultiheadAttention``, whose q/k/v projection is a bare
``in_proj_weight`` parameter: LoRA cannot wrap it, and PyTorch's fast path bypasses submodules.
:class:`FusedSelfAttention` holds the same weights as ``in_proj: nn.Linear(d, 3d)`` and
``out_proj: nn.Linear(d, d)`` and computes attention with ``F.scaled_dot_product_attention``, so
LoRA can target the q/k/v thirds of ``in_proj`` (``LoraTarget(part=(i, 3))``) and ``out_proj``.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn


class FusedSelfAttention(nn.Module):
    """Multi-head self-attention, numerically equivalent to the ``nn.MultiheadAttention`` it replaces.

    The forward signature follows ``nn.MultiheadAttention`` (as open_clip's
    ``ResidualAttentionBlock`` calls it: ``attn(x, x, x, need_weights=False, attn_mask=mask)``) and
    returns ``(output, None)``. Only self-attention is supported: ``key``/``value`` must be the
    query tensor itself (or None); attention weights are never returned.
    """

    def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, device=None, dtype=None):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        factory = {"device": device, "dtype": dtype}
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.batch_first = batch_first
        self.dropout = dropout
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim, bias=bias, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias, **factory)

    @classmethod
    def from_multihead_attention(cls, mha: nn.MultiheadAttention) -> "FusedSelfAttention":
        """A copy of ``mha``'s weights; raises ValueError for layouts it cannot represent."""
        if not mha._qkv_same_embed_dim:
            raise ValueError("cannot convert nn.MultiheadAttention with kdim/vdim != embed_dim")
        if mha.bias_k is not None or mha.bias_v is not None or mha.add_zero_attn:
            raise ValueError("cannot convert nn.MultiheadAttention with add_bias_kv/add_zero_attn")
        weight = mha.in_proj_weight
        has_bias = mha.in_proj_bias is not None
        new = cls(mha.embed_dim, mha.num_heads, bias=has_bias, batch_first=mha.batch_first,
                  dropout=mha.dropout, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            new.in_proj.weight.copy_(mha.in_proj_weight)
            new.out_proj.weight.copy_(mha.out_proj.weight)
            if has_bias:
                new.in_proj.bias.copy_(mha.in_proj_bias)
                new.out_proj.bias.copy_(mha.out_proj.bias)
        pairs = [(new.in_proj.weight, mha.in_proj_weight), (new.out_proj.weight, mha.out_proj.weight)]
        if has_bias:
            pairs += [(new.in_proj.bias, mha.in_proj_bias), (new.out_proj.bias, mha.out_proj.bias)]
        for p_new, p_old in pairs:
            p_new.requires_grad_(p_old.requires_grad)
        new.train(mha.training)
        return new

    def extra_repr(self) -> str:
        return (f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, "
                f"batch_first={self.batch_first}")

    def _additive_mask(self, mask: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
        if mask is None:
            return None
        if mask.dtype == torch.bool:
            # nn.MultiheadAttention: True = may NOT attend (SDPA's boolean masks mean the opposite)
            return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
                mask, float("-inf"))
        return mask.to(dtype)

    def forward(self, query: torch.Tensor, key: Optional[torch.Tensor] = None,
                value: Optional[torch.Tensor] = None, key_padding_mask: Optional[torch.Tensor] = None,
                need_weights: bool = False, attn_mask: Optional[torch.Tensor] = None,
                average_attn_weights: bool = True, is_causal: bool = False
                ) -> tuple[torch.Tensor, None]:
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise NotImplementedError(
                "FusedSelfAttention only does self-attention (key and value must be the query "
                "tensor itself); keep nn.MultiheadAttention for cross-attention layers")
        if need_weights:
            raise NotImplementedError(
                "FusedSelfAttention uses fused scaled_dot_product_attention and cannot return "
                "attention weights; call it with need_weights=False")
        x = query
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(1 if not self.batch_first else 0)
        if not self.batch_first:
            x = x.transpose(0, 1)  # (L, B, E) -> (B, L, E)
        b, n, _ = x.shape
        qkv = self.in_proj(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, L, Dh)

        mask = self._additive_mask(attn_mask, q.dtype)
        if mask is not None:
            if mask.dim() == 3:  # (B * H, L, S)
                mask = mask.view(b, self.num_heads, mask.shape[-2], mask.shape[-1])
            elif mask.dim() != 2:
                raise ValueError(f"attn_mask must be 2D or 3D, got shape {tuple(mask.shape)}")
        pad = self._additive_mask(key_padding_mask, q.dtype)
        if pad is not None:
            pad = pad.view(b, 1, 1, n)
            mask = pad if mask is None else mask + pad
        causal = is_causal and mask is None
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal)
        out = self.out_proj(out.transpose(1, 2).reshape(b, n, self.embed_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1 if not self.batch_first else 0)
        return out, None


def _is_cross_attention_parent(parent: nn.Module) -> bool:
    # open_clip marks cross-attention blocks with a key/value norm; attentional poolers attend
    # from learned queries to the tokens. Neither can use a self-attention module.
    return hasattr(parent, "ln_1_kv") or type(parent).__name__ == "AttentionalPooler"


def convert_multihead_attention(
        module: nn.Module,
        predicate: Optional[Callable[[str, nn.Module, nn.MultiheadAttention], bool]] = None) -> int:
    """Replace every self-attention ``nn.MultiheadAttention`` under ``module`` in place.

    ``predicate(name, parent, mha)`` decides which ones to convert; by default all except those
    in cross-attention blocks and attentional poolers. Returns how many were replaced.
    """
    targets = []
    for parent_name, parent in module.named_modules():
        for child_name, child in parent.named_children():
            if not isinstance(child, nn.MultiheadAttention):
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            ok = (predicate(name, parent, child) if predicate is not None
                  else not _is_cross_attention_parent(parent))
            if ok:
                targets.append((parent, child_name, child))
    for parent, child_name, child in targets:
        setattr(parent, child_name, FusedSelfAttention.from_multihead_attention(child))
    return len(targets)
