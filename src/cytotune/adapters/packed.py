"""Packed LoRA: K runs' adapters on one frozen backbone, trained in one forward/backward pass.

A few-shot LoRA run is small (batch 32 or fewer images), so one run leaves an accelerator mostly
idle, while the runs of a sweep (seeds, learning rates, shot counts) share the same frozen
weights. :func:`pack_lora` replaces every :class:`~cytotune.adapters.layers.LoRALinear` of a
model with a :class:`PackedLoRALinear` holding one (A, B) pair per run and adapter. The images of
all runs go through the backbone as one batch; a shared :class:`PackRouting` says which rows
belong to which run, so each row gets only its own run's low-rank update:

    out[rows of run k] = W x + scaling * B_k A_k x

The frozen W x is one large matmul for all runs; the low-rank branch is a batched matmul when the
runs' row counts are equal and a short loop otherwise. Every run keeps its own parameters (so
its own optimiser state, learning rate and schedule), and rows of different runs never meet in a
ViT (attention and layer norm work within an image), so a packed run computes what it would
alone. Only ``nn.Linear`` adapters are packed (ViT attention and MLP layers); convolutional
LoRA is not, and callers fall back to one run at a time.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .inject import _set_submodule, lora_modules
from .layers import LoRALinear


class NotPackable(ValueError):
    """The model's adapters cannot be packed (a non-Linear adapter, dropout, a merged layer)."""


@dataclass
class PackRouting:
    """Which rows of the current batch belong to which packed run: ``(run, rows)`` segments in
    batch order. Set before every forward; shared by all packed layers of one model."""

    segments: list[tuple[int, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(n for _, n in self.segments)

    @contextlib.contextmanager
    def only(self, run: int, rows: int) -> Iterator[None]:
        """Route a whole batch of ``rows`` to one run (evaluation of that run)."""
        saved, self.segments = self.segments, [(run, rows)]
        try:
            yield
        finally:
            self.segments = saved


class PackedLoRALinear(nn.Module):
    """A frozen ``nn.Linear`` with one LoRA adapter set per packed run (see the module doc).

    ``batch_dim`` is where the images are in this layer's input (0 for batch-first layers, 1 for
    open_clip's sequence-first attention); :func:`pack_lora` finds it with a probe pass.
    """

    def __init__(self, template: LoRALinear, states: Sequence[dict[str, torch.Tensor]],
                 routing: PackRouting):
        super().__init__()
        self.base = template.base
        self.layer_name = template.layer_name
        self.rank, self.alpha, self.scaling = template.rank, template.alpha, template.scaling
        self.lora_slices = dict(template.lora_slices)
        self.lora_targets = dict(template.lora_targets)
        self.routing = routing
        self.batch_dim = 0
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        for key in self.lora_slices:
            self.lora_A[key] = nn.ParameterList([nn.Parameter(s[f"lora_A.{key}"].clone())
                                                 for s in states])
            self.lora_B[key] = nn.ParameterList([nn.Parameter(s[f"lora_B.{key}"].clone())
                                                 for s in states])

    def run_parameters(self, run: int) -> dict[str, nn.Parameter]:
        """This layer's parameters of one run, keyed as a plain LoRALinear names them."""
        out = {}
        for key in self.lora_slices:
            out[f"lora_A.{key}"] = self.lora_A[key][run]
            out[f"lora_B.{key}"] = self.lora_B[key][run]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        segments = self.routing.segments
        dim = self.batch_dim
        if x.shape[dim] != self.routing.total:
            raise RuntimeError(f"packed LoRA layer {self.layer_name!r}: input has {x.shape[dim]} "
                               f"rows on dim {dim}, the routing {self.routing.total}")
        sizes = [n for _, n in segments]
        for key, (start, stop) in self.lora_slices.items():
            As, Bs = self.lora_A[key], self.lora_B[key]
            if len(segments) > 1 and len(set(sizes)) == 1:
                delta = self._batched(x, [As[k] for k, _ in segments],
                                      [Bs[k] for k, _ in segments], len(segments))
            else:
                pieces = x.split(sizes, dim=dim)
                delta = torch.cat([F.linear(F.linear(p.to(As[k].dtype), As[k]), Bs[k])
                                   for p, (k, _) in zip(pieces, segments)], dim=dim)
            out.narrow(-1, start, stop - start).add_(delta, alpha=self.scaling)
        return out

    def _batched(self, x: torch.Tensor, As: list[torch.Tensor], Bs: list[torch.Tensor],
                 runs: int) -> torch.Tensor:
        """The low-rank branch of equal-sized segments as two batched matmuls."""
        A = torch.stack(As)  # (K, r, in)
        B = torch.stack(Bs)  # (K, out, r)
        moved = x.movedim(self.batch_dim, 0)  # (N, ..., in), N = K * n
        shape = moved.shape
        grouped = moved.reshape(runs, -1, shape[-1]).to(A.dtype)  # (K, n * ..., in)
        delta = torch.bmm(torch.bmm(grouped, A.transpose(1, 2)), B.transpose(1, 2))
        return delta.reshape(*shape[:-1], B.shape[1]).movedim(0, self.batch_dim)

    def as_lora(self, run: int) -> LoRALinear:
        """A plain LoRALinear with this run's adapters (sharing the frozen base layer)."""
        layer = LoRALinear(self.base, rank=self.rank, alpha=self.alpha, name=self.layer_name)
        for key, (start, stop) in self.lora_slices.items():
            layer.lora_A[key] = nn.Parameter(self.lora_A[key][run].detach().clone())
            layer.lora_B[key] = nn.Parameter(self.lora_B[key][run].detach().clone())
            layer.lora_slices[key] = (start, stop)
            layer.lora_targets[key] = self.lora_targets[key]
        return layer


def packed_modules(model: nn.Module) -> list[tuple[str, PackedLoRALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PackedLoRALinear)]


def check_packable(model: nn.Module) -> list[tuple[str, LoRALinear]]:
    """The model's LoRA layers, or :class:`NotPackable` naming the first that cannot be packed
    (not a Linear, merged, or with dropout, whose random masks packed runs would share)."""
    layers = lora_modules(model)
    if not layers:
        raise NotPackable("model has no LoRA layers to pack")
    for name, layer in layers:
        if not isinstance(layer, LoRALinear):
            raise NotPackable(f"{name!r} is a {type(layer).__name__}: only Linear LoRA layers "
                              f"are packed")
        if layer.merged:
            raise NotPackable(f"{name!r} is merged; unmerge before packing")
        if layer.lora_dropout_p:
            raise NotPackable(f"{name!r} has LoRA dropout {layer.lora_dropout_p}: packed runs "
                              f"would share its random masks, so they are not packed")
    return layers  # type: ignore[return-value]


def pack_lora(model: nn.Module, states: Sequence[dict[str, torch.Tensor]],
              probe: Callable[[], object]) -> PackRouting:
    """Replace the model's LoRA layers with packed ones holding ``states`` (one
    :func:`~cytotune.adapters.io.lora_state_dict` per run, same layers and keys), in place.

    ``probe``: runs a forward pass of one image (1, ...) through the model (or the module that
    wraps it), which finds each layer's batch dimension. Raises :class:`NotPackable` (leaving the
    model unchanged) for non-Linear or dropout adapters. Returns the routing to set before each
    forward.
    """
    layers = check_packable(model)
    routing = PackRouting()
    packed = []
    for name, layer in layers:
        prefix = f"{name}."
        per_run = [{k[len(prefix):]: v for k, v in s.items() if k.startswith(prefix)}
                   for s in states]
        packed.append((name, PackedLoRALinear(layer, per_run, routing)))
    for name, module in packed:
        _set_submodule(model, name, module)
    try:
        _find_batch_dims(model, probe, routing)
    except BaseException:
        for (name, module), (_, layer) in zip(packed, layers):
            _set_submodule(model, name, layer)
        raise
    return routing


def _find_batch_dims(model: nn.Module, probe: Callable[[], object], routing: PackRouting) -> None:
    """A one-image forward: in each packed layer's input the image axis is the axis of size 1
    (the other leading axis counts tokens, always more than one in a ViT)."""
    hooks, seen = [], set()
    for name, module in packed_modules(model):
        def hook(mod, args, name=name):
            x = args[0]
            ones = [d for d in range(x.dim() - 1) if x.shape[d] == 1]
            if not ones:
                raise NotPackable(f"cannot tell the batch axis of {name!r}'s input "
                                  f"{tuple(x.shape)} from a one-image probe")
            mod.batch_dim = ones[0]
            seen.add(name)
        hooks.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), routing.only(0, 1):
            probe()
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    unseen = [name for name, _ in packed_modules(model) if name not in seen]
    if unseen:
        raise NotPackable(f"the probe forward did not reach the LoRA layer(s) {', '.join(unseen)}")


def unpack_lora(model: nn.Module, run: int) -> None:
    """Replace every packed layer with a plain LoRALinear holding run ``run``'s adapters."""
    for name, module in packed_modules(model):
        _set_submodule(model, name, module.as_lora(run))


@contextlib.contextmanager
def unpacked(model: nn.Module, run: int) -> Iterator[nn.Module]:
    """Within the block the model holds plain LoRA layers of one run (to save its adapter, or
    count its parameters); the packed layers are put back afterwards."""
    saved = packed_modules(model)
    unpack_lora(model, run)
    try:
        yield model
    finally:
        for name, module in saved:
            _set_submodule(model, name, module)

