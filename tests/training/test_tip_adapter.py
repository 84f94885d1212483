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


# ---- Tip-Adapter-F ------------------------------------------------------------------------------
def test_tip_adapter_f_is_a_registered_feature_probe_with_the_same_head_tensors():
    assert is_known_method("tip-adapter-f") and "tip-adapter-f" in METHODS
    assert "tip-adapter-f" in FEATURE_PROBES  # its own fixed schedule, no learning-rate grid
    assert PROBE_HEAD_KEYS["tip-adapter-f"] == PROBE_HEAD_KEYS["tip-adapter"]


def test_fine_tuning_the_keys_follows_an_independent_adamw_loop():
    """fine_tune_keys against a loop written here from the paper's description (keys a free
    weight matrix, AdamW lr 1e-3 eps 1e-4, cosine over all steps, cross-entropy), same seed."""
    from cytotune.training.methods.tip_adapter import fine_tune_keys

    keys, labels, text = toy(n=12, dim=6)
    x = torch.from_numpy(keys).float()
    y = torch.from_numpy(labels).long()
    head = tip_adapter_head(x, y, 3, torch.from_numpy(text), 10.0, alpha=2.0, beta=3.0)
    start = head.keys.clone()
    losses = fine_tune_keys(head, x, y, seed=7, epochs=5, batch_size=5)

    w = torch.nn.Parameter(torch.nn.functional.normalize(x, dim=-1).clone())
    opt = torch.optim.AdamW([w], lr=1e-3, eps=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 5 * 3)  # 12 rows in batches of 5
    gen = torch.Generator().manual_seed(7)
    unit_text = torch.nn.functional.normalize(torch.from_numpy(text).float(), dim=-1)
    values = torch.eye(3)[y]
    expected_losses = []
    for _ in range(5):
        order, total = torch.randperm(12, generator=gen), 0.0
        for s in range(0, 12, 5):
            rows = order[s:s + 5]
            f = torch.nn.functional.normalize(x[rows], dim=-1)
            logits = 10.0 * f @ unit_text.T + 2.0 * torch.exp(-3.0 * (1 - f @ w.T)) @ values
            loss = torch.nn.functional.cross_entropy(logits, y[rows])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(rows)
        expected_losses.append(total / 12)
    assert not torch.allclose(head.keys, start)  # the keys moved
    torch.testing.assert_close(head.keys, w.detach(), rtol=1e-5, atol=1e-6)
    assert losses == pytest.approx(expected_losses, rel=1e-5)
    assert losses[-1] < losses[0]


def test_tip_adapter_f_run_saves_its_tuned_keys_and_reproduces_predictions(synthetic_data,
                                                                           tmp_path):
    cache = str(tmp_path / "cache")
    common = dict(data=str(synthetic_data), model=MODEL, shots=2, seed=1, pretrained=False,
                  num_workers=0, cache_dir=cache)
    cytotune.train(method="tip-adapter", out=str(tmp_path / "tip"), **common)
    cytotune.train(method="tip-adapter-f", out=str(tmp_path / "tipf"), **common)
    plain = load_file(str(tmp_path / "tip" / "head.safetensors"))
    tuned = load_file(str(tmp_path / "tipf" / "head.safetensors"))
    assert set(tuned) == set(PROBE_HEAD_KEYS["tip-adapter-f"])
    assert tuned["keys"].shape == plain["keys"].shape
    assert not torch.allclose(tuned["keys"], plain["keys"])  # fine-tuned from the same cache
    torch.testing.assert_close(tuned["values"], plain["values"])
    metrics = json.loads((tmp_path / "tipf" / "metrics.json").read_text())
    chosen = metrics["hyperparameters"]
    assert chosen["alpha"] in ALPHA_GRID and chosen["beta"] in BETA_GRID
    assert chosen["fine_tune_steps"] == 20 and len(chosen["fine_tune_losses"]) == 20
    assert metrics["trainable_parameters"]["head"] == tuned["keys"].numel()
    reference = pd.read_csv(tmp_path / "tipf" / "predictions.csv")
    columns = [c for c in reference.columns if c.startswith("prob_")]
    predicted = cytotune.load(tmp_path / "tipf").predict(list(reference["path"]))
    np.testing.assert_allclose(predicted.probs.numpy(), reference[columns].to_numpy(), atol=1e-5)
    assert predicted.predicted == list(reference["predicted"])


def test_tip_adapter_f_chooses_alpha_and_beta_again_on_the_fine_tuned_cache(synthetic_data,
                                                                            tmp_path, monkeypatch):
    """Issue 31: the (alpha, beta) a Tip-Adapter-F run keeps are chosen on validation with the
    fine-tuned keys, not the training-free choice carried over: the search runs once before
    fine-tuning (on the unit training features) and once after (on exactly the tuned keys that
    are saved), and the run records the second choice."""
    from cytotune.training.methods import tip_adapter

    searches, tuned = [], []
    real_search, real_tune = tip_adapter.choose_alpha_beta, tip_adapter.fine_tune_keys

    def search(ctx, head, f_val):
        keys = head.keys.detach().clone()
        pair, history = real_search(ctx, head, f_val)
        searches.append((keys, pair))
        return pair, history

    def tune(head, *args, **kwargs):
        losses = real_tune(head, *args, **kwargs)
        tuned.append(head.keys.detach().clone())
        return losses

    monkeypatch.setattr(tip_adapter, "choose_alpha_beta", search)
    monkeypatch.setattr(tip_adapter, "fine_tune_keys", tune)
    out = tmp_path / "tipf"
    cytotune.train(data=str(synthetic_data), model=MODEL, method="tip-adapter-f", shots=2, seed=1,
                   pretrained=False, num_workers=0, out=str(out), cache_dir=str(tmp_path / "c"))
    assert len(tuned) == 1 and len(searches) == 2
    (before_keys, before_pair), (after_keys, after_pair) = searches
    torch.testing.assert_close(before_keys.norm(dim=-1), torch.ones(len(before_keys)))
    assert not torch.allclose(before_keys, tuned[0])  # the first search saw the untuned cache
    assert torch.equal(after_keys, tuned[0])  # the second, the fine-tuned one
    saved = load_file(str(out / "head.safetensors"))
    torch.testing.assert_close(saved["keys"], tuned[0].cpu())
    chosen = json.loads((out / "metrics.json").read_text())["hyperparameters"]
    assert (chosen["alpha"], chosen["beta"]) == after_pair
    assert (float(saved["alpha"]), float(saved["beta"])) == pytest.approx(after_pair)
    assert (chosen["fine_tune_from"]["alpha"], chosen["fine_tune_from"]["beta"]) == before_pair
