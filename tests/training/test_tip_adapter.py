"""Tip-Adapter (training-free, vision-language cards): the head against a hand computation on toy
features, the validation grid choice, and a whole run whose saved head reproduces its test
predictions through ``cytotune.load``."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import cytotune
from cytotune.training.config import ConfigError
from cytotune.training.method_registry import FEATURE_PROBES, is_known_method
from cytotune.training.methods import METHODS
from cytotune.training.methods.probe_heads import PROBE_HEAD_KEYS, tip_adapter_head
from cytotune.training.methods.tip_adapter import ALPHA_GRID, BETA_GRID, choose_alpha_beta
from cytotune.training.task import SINGLE_LABEL

MODEL = "clip-vit-b16-tiny"


def unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def toy(seed: int = 0, n: int = 9, classes: int = 3, dim: int = 5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)), np.arange(n) % classes, rng.normal(size=(classes, dim))


def test_tip_adapter_is_registered_as_a_feature_probe():
    assert is_known_method("tip-adapter") and "tip-adapter" in METHODS
    assert "tip-adapter" in FEATURE_PROBES  # no optimiser steps, no learning-rate grid


@pytest.mark.parametrize("alpha,beta", [(1.0, 5.5), (0.3, 1.0)])
def test_head_equals_the_hand_computed_tip_adapter_logits(alpha, beta):
    keys, labels, text = toy()
    queries = np.random.default_rng(1).normal(size=(4, 5))
    scale = 14.3
    f = unit(queries)
    affinity = np.exp(-beta * (1 - f @ unit(keys).T))
    expected = scale * f @ unit(text).T + alpha * affinity @ np.eye(3)[labels]
    head = tip_adapter_head(torch.from_numpy(keys), torch.from_numpy(labels), 3,
                            torch.from_numpy(text), scale, alpha, beta)
    with torch.no_grad():
        logits = head(torch.from_numpy(queries).float()).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-4)
    assert set(head.state_dict()) == set(PROBE_HEAD_KEYS["tip-adapter"])


def test_alpha_and_beta_are_the_best_validation_pair():
    keys, labels, text = toy(n=12)
    val_x, val_y, _ = toy(seed=2, n=30)
    ctx = SimpleNamespace(val=SimpleNamespace(labels=torch.from_numpy(val_y)), task=SINGLE_LABEL)
    head = tip_adapter_head(torch.from_numpy(keys), torch.from_numpy(labels), 3,
                            torch.from_numpy(text), 10.0)
    f_val = torch.from_numpy(val_x).float()
    (alpha, beta), history = choose_alpha_beta(ctx, head, f_val)
    pairs = [(e["alpha"], e["beta"]) for e in history.evaluations]
    assert pairs == [(a, b) for a in ALPHA_GRID for b in BETA_GRID]
    best = max(e["val_accuracy"] for e in history.evaluations)
    tied = [e for e in history.evaluations if e["val_accuracy"] == best]
    top = min(tied, key=lambda e: e["val_loss"])
    assert (alpha, beta) == (top["alpha"], top["beta"])
    assert (float(head.alpha), float(head.beta)) == pytest.approx((alpha, beta))


def test_run_saves_loads_and_predicts_and_export_refuses(synthetic_data, tmp_path):
    from cytotune.inference import ExportError, export

    out = tmp_path / "tip"
    result = cytotune.train(data=str(synthetic_data), model=MODEL, method="tip-adapter", shots=2,
                            seed=1, pretrained=False, num_workers=0, out=str(out),
                            cache_dir=str(tmp_path / "cache"))
    metrics = json.loads((out / "metrics.json").read_text())
    chosen = metrics["hyperparameters"]
    assert chosen["alpha"] in ALPHA_GRID and chosen["beta"] in BETA_GRID
    assert chosen["select_on"] == "val" and metrics["steps"] == 0
    saved = load_file(str(out / "head.safetensors"))
    assert set(saved) == set(PROBE_HEAD_KEYS["tip-adapter"])
    assert saved["keys"].shape[0] == 2 * len(result.class_names)  # the 2-shot cache
    assert float(saved["alpha"]) == pytest.approx(chosen["alpha"])
    reference = pd.read_csv(out / "predictions.csv")
    columns = [c for c in reference.columns if c.startswith("prob_")]
    predicted = cytotune.load(out).predict(list(reference["path"]))
    np.testing.assert_allclose(predicted.probs.numpy(), reference[columns].to_numpy(), atol=1e-5)
    assert predicted.predicted == list(reference["predicted"])
    with pytest.raises(ExportError, match="tip-adapter"):
        export(out, tmp_path / "export")
    assert not (tmp_path / "export").exists()


def test_cards_without_a_text_tower_and_cross_validation_are_clear_errors(synthetic_data,
                                                                           tiny_model_names):
    with pytest.raises(Exception, match="image-only model.*Tip-Adapter"):
        cytotune.train(data=str(synthetic_data), model=tiny_model_names["uni"],
                       method="tip-adapter", shots=2, pretrained=False, num_workers=0,
                       cache_dir=None)
    with pytest.raises(ConfigError, match="'tip-adapter'"):
        cytotune.train(data=str(synthetic_data), model=MODEL, method="tip-adapter",
                       select_on="train-cv", shots=2, pretrained=False, num_workers=0)
