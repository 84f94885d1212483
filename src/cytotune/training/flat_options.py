"""Flat keyword options (the ``cytotune.api`` shortcuts and the ``train`` flags) -> their dotted
path in :class:`cytotune.training.config.TrainConfig`. A leaf module without torch, so the CLI can
show every flag's default in ``train --help`` without importing the training stack."""
from __future__ import annotations

from typing import Any, Iterable

FLAT_OPTIONS: dict[str, str] = {
    "data": "data.source",
    "layout": "data.layout",
    "split_seed": "data.split_seed",
    "val_fraction": "data.val_fraction",
    "test_fraction": "data.test_fraction",
    "skip_bad_images": "data.skip_bad_images",
    "stain_norm": "data.stain_norm",
    "stain_target": "data.stain_target",
    "model": "model.name",
    "weights": "model.weights",
    "pretrained": "model.pretrained",
    "image_size": "model.image_size",
    "rank": "lora.rank",
    "alpha": "lora.alpha",
    "targets": "lora.targets",
    "lora_dropout": "lora.dropout",
    "lr": "optim.lr",
    "weight_decay": "optim.weight_decay",
    "batch_size": "optim.batch_size",
    "steps": "optim.steps",
    "epochs": "optim.epochs",
    "warmup_fraction": "optim.warmup_fraction",
    "val_every": "optim.val_every",
    "linear_epochs": "optim.linear_epochs",
    "augment": "optim.augment",
    "compile": "optim.compile",
    "tokenizer": "model.tokenizer",
    "templates": "data.prompts.templates",
    "backbone_lr": "finetune.backbone_lr",
    "layer_decay": "finetune.layer_decay",
    "train_blocks": "finetune.train_blocks",
    "grad_checkpointing": "finetune.grad_checkpointing",
    "train_domains": "data.train_domains",
    "test_domains": "data.test_domains",
    "label_columns": "data.options.label_columns",
    "multi_label": "data.options.multi_label",
    "label_names": "data.options.label_names",
    "group_pattern": "data.options.group_pattern",
}


def flat_defaults(names: Iterable[str]) -> dict[str, Any]:
    """Flat option -> its default in a fresh TrainConfig (None where the config has none); a
    name missing from FLAT_OPTIONS is a top-level config field (``seed``, ``method``)."""
    from cytotune.training.config import TrainConfig

    values: Any = TrainConfig().to_dict()
    out: dict[str, Any] = {}
    for flat in names:
        node = values
        for part in FLAT_OPTIONS.get(flat, flat).split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[flat] = node
    return out
