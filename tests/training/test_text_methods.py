"""Vision-language methods: zero-shot, text-initialised heads, LoRA on the text encoder."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

import cytotune
from cytotune.api import build_config
from cytotune.data import ImageStore
from cytotune.data.prompts import class_prompts
from cytotune.models import tiny_card
from cytotune.models.text import NoTextTowerError, build_text_encoder
from cytotune.training.augment import normalise
from cytotune.training.config import ConfigError, TrainConfig
from cytotune.training.features import FeatureCache
from cytotune.training.methods import METHODS, MethodContext, SplitTensors
from cytotune.training.methods.base import initial_head
from cytotune.training.runner import build_run_backbone, build_run_text_encoder

FAST = dict(steps=4, val_every=2, batch_size=8, linear_epochs=3, pretrained=False, num_workers=0)
MODEL = "clip-vit-b16-tiny"


def _hand_zero_shot(backbone, text, prompts, pixels):
    """CLIP zero-shot written out: class = renormalised mean of normalised prompt embeddings."""
    with torch.no_grad():
        classes = []
        for own in prompts:
            embedded = F.normalize(text.model(text.tokenize(own)), dim=-1)
            classes.append(F.normalize(embedded.mean(0), dim=-1))
        weights = torch.stack(classes)
        pre = backbone.preprocessing
        images = F.normalize(backbone(normalise(pixels, pre.mean, pre.std)), dim=-1)
        return float(text.logit_scale) * images @ weights.T


def _test_pixels(result, backbone):
    pre = backbone.preprocessing
    decoded = ImageStore(None, num_workers=0).get(
        list(result.predictions["path"]), resize_size=pre.effective_resize,
        crop_size=pre.image_size, interpolation=pre.interpolation)
    return torch.as_tensor(np.asarray(decoded.pixels))


def test_zero_shot_equals_a_hand_computation(synthetic_data, tmp_path, monkeypatch):
    decoded = []
    original = ImageStore.get

    def recording_get(self, paths, *args, **kwargs):
        decoded.extend(str(p) for p in paths)
        return original(self, paths, *args, **kwargs)

    monkeypatch.setattr(ImageStore, "get", recording_get)
    out = tmp_path / "zs"
    result = cytotune.train(data=str(synthetic_data), model=MODEL, method="zero-shot", shots=2,
                            seed=3, out=str(out), cache_dir=None, **FAST)
    # only validation and test images were decoded: zero-shot never looks at the training split
    val_and_test = 2 * len(result.class_names) + len(result.predictions)  # 2-shot validation
    assert len(decoded) == val_and_test and set(result.predictions["path"]) <= set(decoded)
    monkeypatch.undo()
    config = result.config
    backbone, text = build_run_backbone(config), build_run_text_encoder(config)
    prompts = class_prompts(result.class_names)
    assert prompts[0][0] == f"a cytology image of {result.class_names[0].replace('_', ' ')}."
    logits = _hand_zero_shot(backbone, text, prompts, _test_pixels(result, backbone))
    probs = result.predictions[[f"prob_{c}" for c in result.class_names]].to_numpy()
    np.testing.assert_allclose(probs, logits.softmax(-1).numpy(), atol=1e-5)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["trainable_parameters"]["total"] == 0 and metrics["steps"] == 0
    assert {p.name for p in out.iterdir()} == {"config.yaml", "metrics.json", "predictions.csv",
                                               "head.safetensors", "train.log", "manifest.json"}
    # the saved run predicts the same through cytotune.load (its head normalises the features)
    model = cytotune.load(out)
    again = model.predict(list(result.predictions["path"]))
    np.testing.assert_allclose(again.probs.numpy(), probs, atol=1e-5)


def test_yaml_prompts_override_the_defaults(synthetic_data, tmp_path):
    names = {"normal": "a very special normal"}  # a class of the generated data set
    templates = ["{}", "an image of {}"]
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"source": str(synthetic_data),
                                             "prompts": {"class_names": names,
                                                         "templates": templates}},
                                    "model": {"name": MODEL, "pretrained": False},
                                    "method": "zero-shot", "shots": 2, "cache_dir": None,
                                    "num_workers": 0, "out": str(tmp_path / "run")}))
    config = TrainConfig.from_yaml(path)
    assert config.data.prompts.templates == templates
    result = cytotune.train(path)
    text = build_run_text_encoder(result.config)
    prompts = class_prompts(result.class_names, None, names, templates)
    assert ["a very special normal", "an image of a very special normal"] in prompts
    with torch.no_grad():
        expected = float(text.logit_scale) * text.class_embeddings(prompts)
        default = float(text.logit_scale) * text.class_embeddings(class_prompts(result.class_names))
    head = load_file(str(tmp_path / "run" / "head.safetensors"))
    torch.testing.assert_close(head["weight"], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(head["weight"], default, atol=1e-3)
    with pytest.raises(Exception, match="HISL"):
        cytotune.train(path, **{"data.prompts.class_names": {"HISL": "typo"}, "out": None})


def _context(encoder: str, method: str = "lora", head_init: str = "random", steps: int = 4):
    """A method context on random pixels with the tiny CLIP's image and text towers."""
    config = TrainConfig.from_dict({"data": {"source": "unused"},
                                    "model": {"name": MODEL, "pretrained": False},
                                    "method": method, "encoder": encoder, "head_init": head_init,
                                    "seed": 2, "optim": {"steps": steps, "val_every": 2,
                                                         "batch_size": 4, "lr": 5e-2}})
    generator = torch.Generator().manual_seed(0)

    def split(n: int) -> SplitTensors:
        return SplitTensors(pixels=torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8,
                                                 generator=generator),
                            labels=torch.arange(n) % 3, paths=[], images_key=f"random{n}",
                            rows=np.arange(n))

    classes = ["benign", "atypical", "malignant"]
    return MethodContext(config=config, backbone=build_run_backbone(config), train=split(9),
                         val=split(6), test=split(6), class_names=classes,
                         device=torch.device("cpu"), feature_cache=FeatureCache(None),
                         steps=steps, prompts=class_prompts(classes),
                         text_encoder=build_run_text_encoder(config))


def _snapshot(module):
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def test_text_lora_changes_only_the_text_towers_lora_weights():
    ctx = _context("text")
    vision_before = _snapshot(ctx.backbone)
    text_before = _snapshot(ctx.text_encoder)
    result = METHODS["lora"](ctx)
    vision_after, text_after = _snapshot(ctx.backbone), _snapshot(ctx.text_encoder)
    assert vision_after.keys() == vision_before.keys()  # no LoRA on the image tower
    assert all(torch.equal(vision_before[n], vision_after[n]) for n in vision_before)
    new = [n for n in text_after if ".lora_" in n]
    base = {n.replace(".base.", "."): p for n, p in text_after.items() if ".lora_" not in n}
    assert new and base.keys() == text_before.keys()  # LoRA wraps layers, adds only A and B
    assert all(torch.equal(text_before[n], base[n]) for n in text_before)  # base frozen
    assert any(not torch.all(text_after[n] == 0) for n in new if ".lora_B." in n)  # B trained
    counts = result.trainable_parameters
    assert counts["backbone"] == 0 and counts["text"] == sum(text_after[n].numel() for n in new)
    assert set(result.tensors_to_save["text_adapter"]) == {
        n[len("model."):] for n in new}


def test_lora_on_both_encoders_trains_and_keeps_the_clip_classifier_as_head():
    ctx = _context("both")
    result = METHODS["lora"](ctx)
    assert result.history.steps == 4 and result.history.evaluations
    for module in (ctx.backbone, ctx.text_encoder):
        b = [p for n, p in module.named_parameters() if ".lora_B." in n]
        assert b and any(not torch.all(p == 0) for p in b)
    assert result.trainable_parameters["backbone"] > 0 and result.trainable_parameters["text"] > 0
    # the saved head is logit_scale x the trained text tower's class embeddings, on unit features
    with torch.no_grad():
        weights = ctx.text_encoder.class_embeddings(ctx.prompts)
        torch.testing.assert_close(result.head.weight,
                                   float(ctx.text_encoder.logit_scale) * weights)
        features = ctx.backbone(normalise(ctx.test.pixels, ctx.backbone.preprocessing.mean,
                                          ctx.backbone.preprocessing.std))
        logits = float(ctx.text_encoder.logit_scale) * F.normalize(features, dim=-1) @ weights.T
    torch.testing.assert_close(result.test.probs, logits.softmax(-1), atol=1e-5, rtol=1e-4)


def test_text_initialised_head_gives_zero_shot_logits_up_to_scale():
    ctx = _context("vision", method="linear", head_init="text")
    dim = ctx.backbone.feature_dim
    head = initial_head(ctx, dim)
    features = torch.randn(5, dim)
    with torch.no_grad():
        logits = head(features)
        weights = ctx.text_encoder.class_embeddings(ctx.prompts)
        zero_shot = float(ctx.text_encoder.logit_scale) * F.normalize(features, dim=-1) @ weights.T
    torch.testing.assert_close(head.weight, weights)
    assert torch.all(head.bias == 0)
    # each image's logits are its zero-shot logits times |feature| / logit_scale
    ratio = features.norm(dim=-1, keepdim=True) / float(ctx.text_encoder.logit_scale)
    torch.testing.assert_close(logits, zero_shot * ratio, atol=1e-5, rtol=1e-5)
    assert torch.equal(logits.argmax(-1), zero_shot.argmax(-1))
    random_ctx = SimpleNamespace(**{**ctx.__dict__, "config": TrainConfig.from_dict(
        {**ctx.config.to_dict(), "head_init": "random"})})
    assert not torch.allclose(initial_head(random_ctx, dim).weight, head.weight)


@pytest.mark.parametrize("method,extra", [("linear", {}), ("lora", {"rank": 2})])
def test_text_initialised_runs_start_from_the_text_head(synthetic_data, tmp_path, method, extra):
    # a learning rate too small to move anything: the saved head is the head the run started from
    out = tmp_path / method
    result = cytotune.train(data=str(synthetic_data), model=MODEL, method=method,
                            head_init="text", shots=2, seed=1, lr=1e-12, cache_dir=None,
                            out=str(out), **FAST, **extra)
    text = build_run_text_encoder(result.config)
    with torch.no_grad():
        weights = text.class_embeddings(class_prompts(result.class_names))
    head = load_file(str(out / "head.safetensors"))
    torch.testing.assert_close(head["weight"], weights, atol=1e-6, rtol=1e-5)
    assert torch.all(head["bias"].abs() < 1e-6)
    assert result.trainable_parameters["head"] == weights.numel() + len(result.class_names)


@pytest.mark.parametrize("precision", ["auto", "bf16"])
def test_text_encoder_runs_load_and_predict(synthetic_data, tmp_path, precision):
    # in bf16 too: the saved head and the test metrics share fp32 class embeddings and an fp32
    # classifier matmul, so predict reproduces predictions.csv
    out = tmp_path / "lt"
    result = cytotune.train(data=str(synthetic_data), model=MODEL, method="lora", encoder="text",
                            rank=2, shots=2, seed=1, out=str(out), cache_dir=None,
                            precision=precision, **FAST)
    assert (out / "text_adapter.safetensors").is_file()
    assert not (out / "adapter.safetensors").exists()  # the image tower was not adapted
    model = cytotune.load(out)
    probs = result.predictions[[f"prob_{c}" for c in result.class_names]].to_numpy()
    np.testing.assert_allclose(model.predict(list(result.predictions["path"])).probs.numpy(),
                               probs, atol=1e-5)
    if precision == "bf16":
        return  # exports compute in fp32
    from cytotune.inference.export import ExportError, export

    with pytest.raises(ExportError, match="onnx"):
        export(out, tmp_path / "export", format="safetensors")
    onnx = export(out, tmp_path / "onnx", format="onnx")  # the graph normalises the features
    assert onnx.info["onnx"]["max_abs_diff_probabilities"] <= 1e-4


def test_configuration_errors_name_the_option(synthetic_data):
    with pytest.raises(ConfigError, match="encoder='text'.*method 'lora'"):
        build_config(data="x", method="linear", encoder="text").validate()
    with pytest.raises(ConfigError, match="head_init"):
        build_config(data="x", head_init="prompts")
    with pytest.raises(NoTextTowerError, match="image-only"):
        cytotune.train(data=str(synthetic_data), model="uni-tiny", method="zero-shot", shots=1,
                       cache_dir=None, **FAST)
    with pytest.raises(NoTextTowerError):
        build_text_encoder(tiny_card("vit-b16"), pretrained=False)


def test_cli_flags_reach_the_config():
    from cytotune.cli import build_parser, train_options

    args = build_parser().parse_args(["train", "--data", "x", "--method", "lora", "--head-init",
                                      "text", "--encoder", "both", "--tokenizer", "/models/bert"])
    config = build_config(**train_options(args))
    assert (config.head_init, config.encoder, config.model.tokenizer) == ("text", "both",
                                                                           "/models/bert")
    assert TrainConfig.from_dict(yaml.safe_load(config.to_yaml())) == config
