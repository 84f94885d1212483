"""LoRA wrappers around a frozen ``nn.Linear`` / ``nn.Conv2d``.

A wrapper holds one low-rank adapter per *output part*: the adapter named ``key`` covers the
output rows (channels) ``[start, stop)``, so q and v of a fused qkv layer are adapted while k's
output stays bit-for-bit the base output. For an adapter::

    out[..., start:stop] += scaling * B(A(dropout(x)))        scaling = alpha / rank

Dropout (if any) is sampled separately for each adapter, as if q and v were separate layers.
A is Kaiming-uniform initialised (a = sqrt(5), like ``nn.Linear`` and peft), B is zero, so a
freshly adapted model computes exactly what the base model computes. The forward pass never forms
the dense (out x in) update; :meth:`LoRALayer.merge` does, once, for inference.

The wrapper deliberately has no ``weight`` / ``bias`` attributes: code that reads
``layer.weight`` to call ``F.linear`` itself would silently bypass the adapter, so it fails loudly
instead (the frozen weight is ``layer.base.weight``).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import check_alpha, check_dropout, check_rank

Part = Optional[tuple[int, int]]


def _same_pad_classes() -> tuple[type, ...]:
    """timm's TF-style dynamic 'same' padding convolutions (``tf_`` EfficientNets)."""
    try:
        from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport
    except Exception:  # timm missing or reorganised
        return ()
    return (Conv2dSame, Conv2dSameExport)


def _pad_same(x: torch.Tensor, kernel_size, stride, dilation) -> torch.Tensor:
    """TensorFlow 'SAME' padding, as timm's ``pad_same`` (extra pixel at bottom/right)."""
    pads = []
    for size, k, s, d in zip(x.shape[-2:], kernel_size, stride, dilation):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return F.pad(x, (left, right, top, bottom))


class LoRALayer(nn.Module):
    """Common machinery of :class:`LoRALinear` and :class:`LoRAConv2d`.

    Attributes: ``base`` (the frozen wrapped layer), ``lora_A`` / ``lora_B`` (ParameterDicts
    keyed by adapter name, e.g. "q"), ``lora_slices`` (name -> (start, stop) output rows),
    ``lora_targets`` (name -> the requested target string), ``rank``, ``alpha``, ``scaling``,
    ``lora_dropout_p``, ``merged``.
    """

    out_dim: int  # dimension of the output that parts slice (-1 for Linear, -3 for Conv2d)

    def __init__(self, base: nn.Module, rank: int = 2, alpha: float = 1.0,
                 dropout: float = 0.0, name: str = "") -> None:
        super().__init__()
        self.rank = check_rank(rank)
        self.alpha = check_alpha(alpha)
        self.lora_dropout_p = check_dropout(dropout)
        self.scaling = self.alpha / self.rank
        self.layer_name = name or type(base).__name__
        if not base.weight.is_floating_point():
            raise TypeError(f"cannot add LoRA to {self.layer_name!r}: its weight has dtype "
                            f"{base.weight.dtype} (quantized layers are not supported)")
        self.base = base
        self.base.requires_grad_(False)
        self.lora_dropout = nn.Dropout(self.lora_dropout_p) if self.lora_dropout_p else nn.Identity()
        self.lora_A = nn.ParameterDict()
        self.lora_B = nn.ParameterDict()
        self.lora_slices: dict[str, tuple[int, int]] = {}
        self.lora_targets: dict[str, str] = {}
        self.merged = False

    # -- to be provided by subclasses -------------------------------------------------------
    @property
    def _out_size(self) -> int:
        raise NotImplementedError

    def _new_A(self) -> torch.Tensor:
        raise NotImplementedError

    def _new_B(self, rows: int) -> torch.Tensor:
        raise NotImplementedError

    def _branch(self, x: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _dense_delta(self, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- adapters -----------------------------------------------------------------------------
    def _rows(self, part: Part) -> tuple[int, int]:
        out = self._out_size
        if part is None:
            return 0, out
        try:
            index, count = part
        except (TypeError, ValueError):
            raise ValueError(f"{self.layer_name!r}: part must be (index, count), got {part!r}") from None
        if not (isinstance(index, int) and isinstance(count, int) and 0 <= index < count):
            raise ValueError(f"{self.layer_name!r}: part must be (index, count) with "
                             f"0 <= index < count, got {part!r}")
        if out % count:
            raise ValueError(f"{self.layer_name!r}: output size {out} cannot be split into "
                             f"{count} equal parts (part={part!r})")
        size = out // count
        return index * size, (index + 1) * size

    def add_adapter(self, key: str, part: Part = None, target: Optional[str] = None) -> None:
        """Add an adapter named ``key`` for output part ``part`` ((index, count) or None: all)."""
        if self.merged:
            raise RuntimeError(f"{self.layer_name!r}: unmerge before adding adapters")
        if not key.isidentifier():
            raise ValueError(f"{self.layer_name!r}: adapter name {key!r} must be an identifier")
        if key in self.lora_slices:
            raise ValueError(f"{self.layer_name!r} already has an adapter named {key!r}")
        start, stop = self._rows(part)
        for other, (s, e) in self.lora_slices.items():
            if start < e and s < stop:
                raise ValueError(
                    f"{self.layer_name!r}: adapter {key!r} (output rows {start}:{stop}) overlaps "
                    f"adapter {other!r} (rows {s}:{e}); two targets resolve to the same output")
        self.lora_A[key] = nn.Parameter(self._new_A())
        self.lora_B[key] = nn.Parameter(self._new_B(stop - start))
        self.lora_slices[key] = (start, stop)
        self.lora_targets[key] = target if target is not None else key

    def _factory(self) -> dict:
        return {"device": self.base.weight.device, "dtype": self.base.weight.dtype}

    # -- forward / merge ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.merged:
            return out
        for key, (start, stop) in self.lora_slices.items():
            A, B = self.lora_A[key], self.lora_B[key]
            delta = self._branch(self.lora_dropout(x).to(A.dtype), A, B)
            # in-place add into the slice of a fresh output tensor: autograd-safe, no copy
            out.narrow(self.out_dim, start, stop - start).add_(delta, alpha=self.scaling)
        return out

    def delta_weight(self, key: str) -> torch.Tensor:
        """The dense update ``scaling * B @ A`` of adapter ``key`` (rows of its output part)."""
        A, B = self.lora_A[key], self.lora_B[key]
        return self._dense_delta(A, B) * self.scaling

    @torch.no_grad()
    def merge(self) -> bool:
        """Fold every adapter into the base weight; the forward then skips the LoRA branch.

        Idempotent: returns False (and does nothing) when already merged. While merged the
        adapters get no gradients: unmerge before training again.
        """
        if self.merged:
            return False
        weight = self.base.weight
        for key, (start, stop) in self.lora_slices.items():
            weight[start:stop] += self.delta_weight(key).to(weight.dtype)
        self.merged = True
        return True

    @torch.no_grad()
    def unmerge(self) -> bool:
        """Subtract the adapters from the base weight again (restores it within float rounding).

        Idempotent: returns False (and does nothing) when not merged.
        """
        if not self.merged:
            return False
        weight = self.base.weight
        for key, (start, stop) in self.lora_slices.items():
            weight[start:stop] -= self.delta_weight(key).to(weight.dtype)
        self.merged = False
        return True

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("weight", "bias"):
                raise AttributeError(
                    f"{type(self).__name__} {self.layer_name!r} has no .{name}: code reading it to "
                    f"call F.linear/F.conv2d itself would bypass the LoRA branch; the frozen "
                    f"tensor is .base.{name} (or merge_lora() first)") from None
            raise

    def extra_repr(self) -> str:
        parts = ", ".join(f"{k}[{s}:{e}]" for k, (s, e) in self.lora_slices.items())
        return (f"rank={self.rank}, alpha={self.alpha}, dropout={self.lora_dropout_p}, "
                f"adapters=({parts}), merged={self.merged}")


class LoRALinear(LoRALayer):
    """LoRA around an ``nn.Linear``: A is (r, in), B is (out_part, r)."""

    out_dim = -1

    def __init__(self, base: nn.Linear, rank: int = 2, alpha: float = 1.0,
                 dropout: float = 0.0, name: str = "") -> None:
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear wraps nn.Linear, got {type(base).__name__} "
                            f"at {name or '?'!r}")
        super().__init__(base, rank, alpha, dropout, name)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def _out_size(self) -> int:
        return self.base.out_features

    def _new_A(self) -> torch.Tensor:
        A = torch.empty(self.rank, self.base.in_features, **self._factory())
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        return A

    def _new_B(self, rows: int) -> torch.Tensor:
        return torch.zeros(rows, self.rank, **self._factory())

    def _branch(self, x, A, B):
        return F.linear(F.linear(x, A), B)

    def _dense_delta(self, A, B):
        return B @ A


class LoRAConv2d(LoRALayer):
    """LoRA around an ``nn.Conv2d``: A is an (r, in, kh, kw) kernel with the base's stride,
    padding and dilation; B is a zero-initialised 1x1 (out_part, r, 1, 1) kernel.

    Supports plain ``nn.Conv2d`` (any ``padding_mode``) and timm's TF-'same' ``Conv2dSame`` /
    ``Conv2dSameExport`` (the A branch gets the same dynamic padding, so spatial sizes match).
    Grouped / depthwise convolutions and other ``Conv2d`` subclasses with their own ``forward``
    (e.g. weight-standardised convs, whose merge would not be exact) are rejected.
    """

    out_dim = -3

    def __init__(self, base: nn.Conv2d, rank: int = 2, alpha: float = 1.0,
                 dropout: float = 0.0, name: str = "") -> None:
        label = name or "?"
        if not isinstance(base, nn.Conv2d):
            raise TypeError(f"LoRAConv2d wraps nn.Conv2d, got {type(base).__name__} at {label!r}")
        if base.groups != 1:
            raise ValueError(
                f"cannot add LoRA to grouped/depthwise conv {label!r} (groups={base.groups}); "
                f"target pointwise or full convolutions instead (e.g. 'blocks.*.*.conv_pwl')")
        same_pad = isinstance(base, _same_pad_classes())
        if not same_pad and type(base).forward is not nn.Conv2d.forward:
            raise TypeError(
                f"cannot add LoRA to {label!r}: {type(base).__name__} overrides Conv2d.forward "
                f"in a way LoRA cannot mirror (supported: nn.Conv2d, timm Conv2dSame)")
        super().__init__(base, rank, alpha, dropout, name)
        self._same_pad = same_pad

    @property
    def in_channels(self) -> int:
        return self.base.in_channels

    @property
    def out_channels(self) -> int:
        return self.base.out_channels

    @property
    def kernel_size(self):
        return self.base.kernel_size

    @property
    def stride(self):
        return self.base.stride

    @property
    def padding(self):
        return self.base.padding

    @property
    def dilation(self):
        return self.base.dilation

    @property
    def groups(self) -> int:
        return self.base.groups

    @property
    def _out_size(self) -> int:
        return self.base.out_channels

    def _new_A(self) -> torch.Tensor:
        A = torch.empty(self.rank, self.base.in_channels, *self.base.kernel_size, **self._factory())
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))  # nn.Conv2d's own init (fan_in = in*kh*kw)
        return A

    def _new_B(self, rows: int) -> torch.Tensor:
        return torch.zeros(rows, self.rank, 1, 1, **self._factory())

    def _branch(self, x, A, B):
        base = self.base
        if self._same_pad:
            x = _pad_same(x, base.kernel_size, base.stride, base.dilation)
            h = F.conv2d(x, A, None, base.stride, 0, base.dilation)
        else:  # the base's own padding logic (incl. padding_mode), with groups == 1
            h = nn.Conv2d._conv_forward(base, x, A, None)
        return F.conv2d(h, B)

    def _dense_delta(self, A, B):
        return torch.einsum("or,rikl->oikl", B.flatten(1), A)
