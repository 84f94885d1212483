"""`cytotune.load(run_dir)`: a ready nn.Module; bad or mixed-up run directories fail clearly."""
from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import cytotune
from cytotune.adapters import has_lora
from cytotune.inference import CytotuneModel, RunDirError, load
from cytotune.models import get_card, unregister_card

from inference_helpers import prob_columns


@pytest.mark.parametrize("card", ["clip-vit-b16", "vit-b16"])
def test_load_gives_a_merged_module_that_reproduces_the_run(card, trained_run):
    run = trained_run(card)
    model = cytotune.load(run)
    assert isinstance(model, torch.nn.Module) and isinstance(model, CytotuneModel)
    assert not model.training and not has_lora(model)  # adapters merged into plain layers
    assert model.class_names == ["carcinoma", "high_grade", "low_grade", "normal"]
    assert model.preprocessing == get_card(f"{card}-tiny").preprocessing
    reference = pd.read_csv(run / "predictions.csv")
    expected = reference[prob_columns(reference)].to_numpy()

    # paths, PIL images and uint8 tensors, one at a time or as a batch: all the same numbers
    paths = list(reference["path"])
    from_paths = model.predict(paths)
    np.testing.assert_allclose(from_paths.probs.numpy(), expected, rtol=0, atol=1e-5)
    assert from_paths.predicted == list(reference["predicted"])
    pil = [Image.open(p) for p in paths[:3]]
    np.testing.assert_allclose(model.predict(pil).probs.numpy(), expected[:3], atol=1e-5)
    pixels = model.preprocess(paths[:3])
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 3, 32, 32)
    np.testing.assert_allclose(model.predict(pixels).probs.numpy(), expected[:3], atol=1e-5)
    chw = torch.from_numpy(np.array(Image.open(paths[0]).convert("RGB"))).permute(2, 0, 1)
    np.testing.assert_allclose(model.predict(chw).probs.numpy(), expected[:1], atol=1e-5)
    frame = model.predict(paths[0]).to_frame()
    assert list(frame.columns) == ["predicted", *prob_columns(reference)]

    # forward is the plain module: normalised floats in, logits out
    pre = model.preprocessing
    x = (pixels.float() / 255 - torch.tensor(pre.mean).view(1, 3, 1, 1)) / torch.tensor(pre.std).view(1, 3, 1, 1)
    with torch.no_grad():
        np.testing.assert_allclose(model(x).softmax(-1).numpy(), expected[:3], atol=1e-5)
    with pytest.raises(TypeError, match="uint8"):
        model.predict(x)


def test_the_adapter_matters(trained_run):
    """Guard for the test above: the trained LoRA really changes the outputs."""
    run = trained_run("clip-vit-b16")
    adapter = load_file(str(run / "adapter.safetensors"))
    assert max(t.abs().max().item() for k, t in adapter.items() if ".lora_B." in k) > 1e-3
    merged = load(run)
    plain = load(run)
    from cytotune.training.runner import build_run_backbone
    plain.backbone = build_run_backbone(plain.config)  # the backbone without the adapter
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (merged(x) - plain(x)).abs().max() > 1e-4


def test_load_resolves_a_tiny_card_unknown_to_a_fresh_process(trained_run):
    run = trained_run("uni")
    unregister_card("uni-tiny")  # as in a new process that never resolved it
    model = load(run)
    assert model.card.name == "uni-tiny"


def _copy(run, tmp_path, name="run", manifest=True):
    """A copy of ``run``; ``manifest=False``: as a run written before manifest.json, whose files
    are checked only against each other (the checks these tests are about, which a digest
    mismatch would otherwise answer first: see test_run_integrity.py)."""
    dest = tmp_path / name
    shutil.copytree(run, dest)
    if not manifest:
        (dest / "manifest.json").unlink()
    return dest


def test_tampered_head_is_named(trained_run, tmp_path):
    run = _copy(trained_run("uni"), tmp_path, manifest=False)
    head = load_file(str(run / "head.safetensors"))
    meta = {"model": "uni-tiny", "classes": "carcinoma\nhigh_grade\nlow_grade\nnormal"}
    save_file({"weight": torch.zeros(5, head["weight"].shape[1]), "bias": torch.zeros(5)},
              str(run / "head.safetensors"), metadata=meta)
    with pytest.raises(RunDirError, match=r"head\.safetensors.*5 classes.*4 class names"):
        load(run)
    # a head of another backbone: its feature width does not fit
    save_file({"weight": torch.zeros(4, 7), "bias": torch.zeros(4)}, str(run / "head.safetensors"),
              metadata=meta)
    with pytest.raises(RunDirError, match=r"head\.safetensors.*7-d features.*gives 64-d"):
        load(run)
    (run / "head.safetensors").write_bytes(b"garbage")
    with pytest.raises(RunDirError, match=r"head\.safetensors is not a readable safetensors"):
        load(run)


def test_adapter_of_another_model_is_named(trained_run, tmp_path):
    run = _copy(trained_run("clip-vit-b16"), tmp_path, manifest=False)
    shutil.copy(trained_run("uni") / "adapter.safetensors", run / "adapter.safetensors")
    with pytest.raises(RunDirError, match=r"adapter\.safetensors was trained on model 'uni-tiny' "
                                          r"but config.yaml names 'clip-vit-b16-tiny'"):
        load(run)
    # the right model name but changed shapes: load_adapter's own check, naming the file
    tensors = load_file(str(trained_run("clip-vit-b16") / "adapter.safetensors"))
    from safetensors import safe_open
    with safe_open(str(trained_run("clip-vit-b16") / "adapter.safetensors"), "pt") as f:
        meta = f.metadata()
    key = next(k for k in tensors if ".lora_A." in k)
    tensors[key] = torch.zeros(2, 10)
    save_file(tensors, str(run / "adapter.safetensors"), metadata=meta)
    with pytest.raises(RunDirError, match=r"adapter\.safetensors.*shape mismatch"):
        load(run)


def test_incomplete_or_mixed_run_directories(trained_run, tmp_path):
    run = _copy(trained_run("uni"), tmp_path)
    (run / "metrics.json").unlink()
    with pytest.raises(RunDirError, match=r"not a complete run: it has no metrics\.json"):
        load(run)
    with pytest.raises(RunDirError, match="does not exist"):
        load(tmp_path / "nothing")
    run = _copy(trained_run("uni"), tmp_path, "no_adapter")
    (run / "adapter.safetensors").unlink()
    with pytest.raises(RunDirError, match=r"LoRA run .* has no adapter\.safetensors"):
        load(run)
    run = _copy(trained_run("uni", method="linear"), tmp_path, "linear")
    assert load(run).config.method == "linear"
    shutil.copy(trained_run("uni") / "adapter.safetensors", run / "adapter.safetensors")
    with pytest.raises(RunDirError, match=r"adapter\.safetensors: a LoRA adapter in a 'linear' run"):
        load(run)
