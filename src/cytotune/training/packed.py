"""Packed LoRA training: K image-tower LoRA runs on one frozen backbone, one pass per step.

Each run keeps everything that makes it itself: LoRA A matrices drawn from its own seed exactly
as :func:`~cytotune.training.methods.lora.run_lora` draws them, its own head, its own batches
(seeded order, own augmentation generator), its own AdamW parameter group (learning rate, weight
decay, warm-up + cosine over its own number of steps), validation on its own schedule and its
best step kept. Per step, the batches of the runs still training are concatenated and go through
the backbone once (:mod:`cytotune.adapters.packed` routes each row to its run's adapters); the
sum of the runs' losses is back-propagated once, which gives every run exactly its own gradient
because the runs share no trainable tensor. A run with fewer steps drops out when it is done.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable

import torch
from torch import nn

from cytotune.adapters import apply_lora, remove_lora
from cytotune.adapters.io import lora_state_dict
from cytotune.adapters.packed import check_packable, pack_lora, packed_modules, unpacked
from cytotune.training.augment import normalise
from cytotune.training.features import autocast_for, fp32_head
from cytotune.training.loop import (BestState, EvalResult, FitHistory, batch_order,
                                    evaluate_logits, record_evaluation, run_scope)
from cytotune.training.methods.base import (Classifier, MethodContext, MethodResult, SplitTensors,
                                            image_batch_fetcher, initial_head)
from cytotune.training.progress import observer
from cytotune.training.schedule import per_group_warmup_cosine

log = logging.getLogger(__name__)


class PackedClassifier(Classifier):
    """One backbone with packed LoRA layers and one head per run (frozen batch norm kept in eval
    mode in training, as :class:`Classifier` does)."""

    def __init__(self, backbone: nn.Module, heads: list[nn.Linear]):
        super().__init__(backbone, heads[0])
        self.heads = nn.ModuleList(heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - use the routing
        raise RuntimeError("a packed classifier needs its routing: use the packed trainer")


def check_backbone_packable(backbone: nn.Module, config) -> None:
    """Raise :class:`~cytotune.adapters.packed.NotPackable` when the config's LoRA on this
    backbone cannot be packed (convolutional targets, dropout): a group then trains its runs one
    by one without having decoded anything for nothing."""
    with torch.random.fork_rng(devices=[]):
        apply_lora(backbone.model, config.lora.resolve(backbone.card.default_lora_targets),
                   backbone.card.lora_targets)
    try:
        check_packable(backbone.model)
    finally:
        remove_lora(backbone.model, merge=False)


def initial_adapters(ctxs: list[MethodContext]) -> list[dict[str, torch.Tensor]]:
    """Each run's initial LoRA tensors, drawn from its seed as a run alone draws them."""
    bb = ctxs[0].backbone
    states = []
    for ctx in ctxs:
        lora = ctx.config.lora.resolve(bb.card.default_lora_targets)
        rng_state = torch.random.get_rng_state()
        torch.manual_seed(ctx.config.seed)
        apply_lora(bb.model, lora, bb.card.lora_targets)
        torch.random.set_rng_state(rng_state)
        states.append({k: v.clone() for k, v in lora_state_dict(bb.model).items()})
        remove_lora(bb.model, merge=False)
    return states


def run_packed_lora(ctxs: list[MethodContext], timings: dict[str, float]
                    ) -> list[tuple[MethodResult, Callable[[], contextlib.AbstractContextManager]]]:
    """Train the runs of ``ctxs`` (same backbone object, same LoRA settings) packed together.

    Returns, per run, its method result and a context-manager factory within which the backbone
    holds that run's plain LoRA layers (to write its adapter file).
    """
    bb, device = ctxs[0].backbone, ctxs[0].device
    task = ctxs[0].task
    pre = bb.preprocessing
    # adapters are drawn and packed where a run alone draws them (on the CPU, before the model
    # moves: a CUDA generator would draw other numbers), then the packed model moves
    states = initial_adapters(ctxs)
    with torch.random.fork_rng(devices=[]):
        apply_lora(bb.model, ctxs[0].config.lora.resolve(bb.card.default_lora_targets),
                   bb.card.lora_targets)
    probe = normalise(ctxs[0].val.pixels[:1], pre.mean, pre.std).to(_device_of(bb))
    routing = pack_lora(bb.model, states, lambda: bb(probe))
    bb.to(device)
    bb.requires_grad_(False)
    layers = packed_modules(bb.model)
    run_params: list[dict[str, nn.Parameter]] = []
    for k in range(len(ctxs)):
        named = {f"{name}.{key}": p for name, layer in layers
                 for key, p in layer.run_parameters(k).items()}
        for p in named.values():
            p.requires_grad_(True)
        run_params.append(named)
    heads = [initial_head(ctx, bb.feature_dim) for ctx in ctxs]
    model = PackedClassifier(bb, heads).to(device)
    for k, head in enumerate(heads):
        run_params[k].update({f"head.{n}": p for n, p in head.named_parameters()})
    log.info("packed LoRA: %d runs on one %s backbone (%d layers)", len(ctxs), bb.card.name,
             len(layers))

    histories = _fit_packed(model, routing, ctxs, run_params, device, task)

    results = []
    for k, (ctx, history) in enumerate(zip(ctxs, histories)):
        start = time.perf_counter()
        with run_scope(id(ctx.config)):  # the run's key in cytotune.training.group
            test = _evaluate(model, routing, k, ctx, ctx.test)
            val = _evaluate(model, routing, k, ctx, ctx.val)
        lora_params = sum(p.numel() for n, p in run_params[k].items() if not n.startswith("head."))
        head_params = sum(p.numel() for p in heads[k].parameters())
        result = MethodResult(
            head=heads[k], val=val, test=test, history=history,
            trainable_parameters={"backbone": lora_params, "head": head_params,
                                  "total": lora_params + head_params},
            tensors_to_save={"head": {n: v.detach().cpu() for n, v in heads[k].state_dict().items()}},
            timings={**history.timings(), "evaluation_s": time.perf_counter() - start,
                     "packed_runs": float(len(ctxs))})
        results.append((result, lambda k=k: unpacked(bb.model, k)))
    return results


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _logits(model: PackedClassifier, routing, run: int, ctx: MethodContext,
            x: torch.Tensor) -> torch.Tensor:
    pre = ctx.backbone.preprocessing
    with routing.only(run, x.shape[0]), autocast_for(ctx.device, ctx.config.precision):
        return fp32_head(model.heads[run],
                         model.backbone(normalise(x.to(ctx.device), pre.mean, pre.std)))


def _evaluate(model: PackedClassifier, routing, run: int, ctx: MethodContext,
              split: SplitTensors) -> EvalResult:
    return evaluate_logits(lambda x: _logits(model, routing, run, ctx, x),
                           lambda idx: split.pixels[idx], split.labels, 64, ctx.task)


def _fit_packed(model: PackedClassifier, routing, ctxs: list[MethodContext],
                run_params: list[dict[str, nn.Parameter]], device: torch.device,
                task) -> list[FitHistory]:
    groups = [{"params": list(params.values()), "lr": ctx.config.optim.lr,
               "weight_decay": ctx.config.optim.weight_decay}
              for ctx, params in zip(ctxs, run_params)]
    optimizer = torch.optim.AdamW(groups, fused=device.type == "cuda")
    scheduler = per_group_warmup_cosine(
        optimizer, [(c.steps, round(c.config.optim.warmup_fraction * c.steps)) for c in ctxs])
    fetches = [image_batch_fetcher(ctx, ctx.config.optim.augment) for ctx in ctxs]
    orders = [batch_order(len(c.train.labels), min(c.config.optim.batch_size, len(c.train.labels)),
                          torch.Generator().manual_seed(c.config.seed)) for c in ctxs]
    every = [c.config.optim.val_every or max(1, c.steps // 10) for c in ctxs]
    histories = [FitHistory() for _ in ctxs]
    bests = [BestState(lambda p=p: p) for p in run_params]
    start = time.perf_counter()
    total = max(c.steps for c in ctxs)
    progress = observer()
    progress.phase("training", total)
    model.train()
    for step in range(1, total + 1):
        t0 = time.perf_counter()
        active = [k for k, c in enumerate(ctxs) if step <= c.steps]
        batches = [fetches[k](next(orders[k])) for k in active]
        data_s = time.perf_counter() - t0
        x = torch.cat([b[0] for b in batches])
        routing.segments = [(k, len(b[0])) for k, b in zip(active, batches)]
        with autocast_for(device, ctxs[0].config.precision):
            feats = model.backbone(x)
        losses = []
        for (k, _), f, (_, y) in zip(routing.segments, feats.split([n for _, n in
                                                                     routing.segments]), batches):
            losses.append(task.loss(fp32_head(model.heads[k], f), y))
        optimizer.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()
        optimizer.step()
        scheduler.step()
        step_s = time.perf_counter() - t0
        for row, k in enumerate(active):
            history = histories[k]
            history.steps = step
            # the pack's step is shared: each run is charged its share of the time
            history.data_seconds += data_s / len(active)
            history.step_seconds += step_s / len(active)
            if step % every[k] == 0 or step == ctxs[k].steps:
                t1 = time.perf_counter()
                model.eval()
                with run_scope(id(ctxs[k].config)):  # its line goes to its own train.log
                    result = _evaluate(model, routing, k, ctxs[k], ctxs[k].val)
                    record_evaluation(history, step, ctxs[k].steps, float(losses[row].detach()),
                                      result)
                model.train()
                bests[k].offer(history, step, result)
                history.validation_seconds += time.perf_counter() - t1
        progress.step(step, total)
    progress.phase("evaluation")
    model.eval()
    elapsed = time.perf_counter() - start
    for params, history, best in zip(run_params, histories, bests):
        best.restore(history, params)
        history.seconds = elapsed / len(ctxs)
    return histories

