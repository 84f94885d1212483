"""Packed LoRA layers: each run's rows get exactly that run's low-rank update and gradient."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from cytotune.adapters import LoRAConfig, apply_lora, remove_lora
from cytotune.adapters.io import lora_state_dict
from cytotune.adapters.layers import LoRALinear
from cytotune.adapters.packed import (NotPackable, PackedLoRALinear, PackRouting, pack_lora,
                                      packed_modules, unpacked)


def _states(layer_in=8, layer_out=12, runs=3):
    states = []
    for k in range(runs):
        torch.manual_seed(100 + k)
        layer = LoRALinear(nn.Linear(layer_in, layer_out), rank=2, alpha=4.0)
        layer.add_adapter("q", (0, 3))
        layer.add_adapter("v", (2, 3))
        with torch.no_grad():  # non-zero B, so the update is visible
            for key in ("q", "v"):
                layer.lora_B[key].normal_()
        states.append(layer)
    return states


@pytest.mark.parametrize("sizes", [[2, 2, 2], [1, 3, 2]], ids=["equal", "unequal"])
@pytest.mark.parametrize("batch_dim", [0, 1])
def test_packed_rows_match_their_runs_layer(sizes, batch_dim):
    plain = _states()
    base = plain[0].base
    for layer in plain:  # one frozen base shared by all runs, as in a packed backbone
        layer.base = base
    routing = PackRouting(segments=list(enumerate(sizes)))
    packed = PackedLoRALinear(plain[0], [{f"{p}.{k}": getattr(layer, p)[k].detach()
                                          for p in ("lora_A", "lora_B") for k in ("q", "v")}
                                         for layer in plain], routing)
    packed.batch_dim = batch_dim
    tokens = 5
    xs = [torch.randn(n, tokens, 8) for n in sizes]
    x = torch.cat(xs)
    if batch_dim == 1:
        x = x.transpose(0, 1).contiguous()
    out = packed(x)
    if batch_dim == 1:
        out = out.transpose(0, 1)
    for k, (chunk, xk) in enumerate(zip(out.split(sizes), xs)):
        torch.testing.assert_close(chunk, plain[k](xk), atol=1e-5, rtol=1e-5)
    # each run's parameters get only the gradient of its own rows
    out.split(sizes)[1].sum().backward()
    assert packed.lora_B["q"][1].grad is not None and packed.lora_B["q"][1].grad.abs().sum() > 0
    for k in (0, 2):
        grad = packed.lora_B["q"][k].grad
        assert grad is None or torch.count_nonzero(grad) == 0


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 4))

    def forward(self, x):  # (B, tokens, 4)
        return self.blocks(x).mean(1)


def test_pack_and_unpack_a_model():
    torch.manual_seed(0)
    model = _Tiny()
    config = LoRAConfig(rank=2, alpha=2.0, targets=("blocks.0", "blocks.2"))
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        apply_lora(model, config)
        for _, p in lora_state_dict(model).items():
            p.normal_()
        states.append({k: v.clone() for k, v in lora_state_dict(model).items()})
        remove_lora(model, merge=False)
    apply_lora(model, config)
    probe = torch.randn(1, 3, 4)
    routing = pack_lora(model, states, lambda: model(probe))
    assert len(packed_modules(model)) == 2
    assert all(m.batch_dim == 0 for _, m in packed_modules(model))
    x = torch.randn(4, 3, 4)
    routing.segments = [(0, 2), (1, 2)]
    out = model(x)
    for run, rows in ((0, slice(0, 2)), (1, slice(2, 4))):
        with unpacked(model, run):
            assert not packed_modules(model)
            saved = lora_state_dict(model)
            for key, value in states[run].items():
                torch.testing.assert_close(saved[key], value)
            torch.testing.assert_close(model(x[rows]), out[rows], atol=1e-5, rtol=1e-5)
        assert len(packed_modules(model)) == 2


def test_conv_and_dropout_adapters_are_not_packed():
    conv = nn.Sequential(nn.Conv2d(3, 4, 1))
    apply_lora(conv, LoRAConfig(rank=1, targets=("0",)))
    with pytest.raises(NotPackable, match="only Linear"):
        pack_lora(conv, [{}], lambda: None)
    model = _Tiny()
    apply_lora(model, LoRAConfig(rank=1, targets=("blocks.0",), dropout=0.1))
    with pytest.raises(NotPackable, match="dropout"):
        pack_lora(model, [lora_state_dict(model)], lambda: None)
    assert not packed_modules(model)  # left unchanged
